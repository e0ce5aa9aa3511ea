r"""2-D Kolmogorov flow control: reduce the energy dissipation of a turbulent shear flow with a
vorticity force field.

Physics (dimensionless, domain (0, 2π)² periodic)
-------------------------------------------------
The vorticity form of the forced, damped incompressible Navier–Stokes equations, solved by
exponax's ``KolmogorovFlowVorticity`` (pseudo-spectral, ETDRK2, 2/3 dealiasing)::

    ω_t + (u·∇)ω = ν Δω + λ ω + f_K + f,     u = ∇^⊥ Δ^{-1} ω

ν = ``nu`` = 0.01, drag λ = −0.1, Kolmogorov forcing f_K = −κγ cos(κ x₁) with κ = 4 (injection
mode 4), γ = 1, on n × n points (n = 32 on a CPU; 64² and larger for a GPU). One control step
is Δt = ``dt`` = 0.05, the control force f held over it (u_{n+1} = KF(ω_n + Δt f_n), exponax's
``ForcedStepper``). From random initial vorticity the flow becomes turbulent (enstrophy
fluctuating around ≈ 7 at n = 32), far from the laminar state ω_lam = −κγ cos(κ x₁)/(νκ² − λ).

Loss: the energy dissipation rate relative to the laminar flow's
----------------------------------------------------------------
    D(ω) = ν ⟨ω²⟩ (= ν ⟨|∇u|²⟩ on a periodic domain),  D_lam = ν (κγ)² / (2 (νκ² − λ)²)

    L = (1/T) Σ_{n=1}^T mean_b D(ω_n)/D_lam  +  rc · (1/T) Σ_n mean(f_n²)

D/D_lam is the standard normalised dissipation of Kolmogorov-flow studies (≈ 0.25 on the
uncontrolled turbulent attractor at n = 32, ν = 0.01).

Data: exponax ``DiffusedNoise`` vorticity (max |ω| = 1) advanced ``spin_up`` uncontrolled steps
onto the turbulent attractor, in ``sample_data`` (seeded, deterministic).

Controller: a :class:`~stablebptt.problems.adapters.exponax.PeriodicCNN` ω → f (2-D periodic
convolutions).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax.numpy as jnp

from .adapters import _common
from .base import Problem

WHO = "kolmogorov"
KAPPA, GAMMA, DRAG = 4, 1.0, -0.1

PARAMS: dict[str, tuple[Any, str]] = {
    "n": (32, "grid points per axis (32 on a CPU; 64 and larger on a GPU)"),
    "nu": (0.01, "viscosity ν"),
    "dt": (0.05, "time step Δt of one controlled step"),
    "steps": (40, "controlled steps per trajectory (horizon T)"),
    "rc": (0.01, "weight of the control cost mean(f²)"),
    "spin_up": (200, "uncontrolled steps from random vorticity to the turbulent attractor"),
}


def laminar_dissipation(nu: float) -> float:
    """D_lam = ν (κγ)² / (2 (νκ² − λ)²) of the laminar Kolmogorov flow."""
    return nu * (KAPPA * GAMMA) ** 2 / (2 * (nu * KAPPA**2 - DRAG) ** 2)


def make(
    n: int = PARAMS["n"][0],
    nu: float = PARAMS["nu"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    rc: float = PARAMS["rc"][0],
    spin_up: int = PARAMS["spin_up"][0],
) -> Problem:
    """Build the Kolmogorov-flow control problem (see the module docstring)."""
    from .adapters.exponax import _import_exponax, exponax_problem

    n = _common.positive_int(n, "n", WHO)
    if n < 16:
        raise ValueError(f"{WHO}: n={n!r}; must be an integer ≥ 16 (injection mode {KAPPA} needs the resolution)")
    nu, dt = _common.positive_float(nu, "nu", WHO), _common.positive_float(dt, "dt", WHO)
    steps, spin_up = _common.positive_int(steps, "steps", WHO), _common.check_count(spin_up, "spin_up", WHO)
    if isinstance(rc, bool) or not isinstance(rc, numbers.Real) or not rc >= 0:
        raise ValueError(f"{WHO}: rc={rc!r}; must be a number ≥ 0")
    ex = _import_exponax()
    stepper = ex.stepper.KolmogorovFlowVorticity(
        2, 2 * math.pi, n, dt, diffusivity=nu, drag=DRAG, injection_mode=KAPPA, injection_scale=GAMMA
    )
    scale = nu / laminar_dissipation(nu)

    def dissipation(w):
        """D(ω)/D_lam of one state (1, n, n) -> scalar."""
        return scale * jnp.mean(jnp.square(w))

    return exponax_problem(
        stepper,
        horizon=steps,
        state_loss=dissipation,
        on="every",
        control_weight=float(rc),
        ic=ex.ic.DiffusedNoise(2, max_one=True),
        spin_up=spin_up,
        widths=(8, 8),
        kernel_size=5,
        name="kolmogorov",
        params=dict(n=n, nu=nu, dt=dt, steps=steps, rc=float(rc), spin_up=spin_up),
        defaults=dict(epochs=100, lr=1e-3, batch_size=8, n_train=128, n_test=32),
        description=f"2-D Kolmogorov flow {n}² (ν = {nu:g}, κ = {KAPPA}), T = {steps} × Δt {dt:g}, vorticity force "
        f"field: mean dissipation D/D_lam + {float(rc):g}·⟨f²⟩",
    )


__all__ = ["PARAMS", "make", "laminar_dissipation"]
