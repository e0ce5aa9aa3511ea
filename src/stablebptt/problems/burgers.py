r"""Burgers control in the setting of Holl, Koltun & Thuerey, "Learning to control PDEs with
differentiable physics" (ICLR 2020): steer a 1-D viscous Burgers flow to a target state with a
force field.

Physics (dimensionless, domain (0, 1) periodic)
-----------------------------------------------
    u_t + u u_x = ν u_xx + f(x, t),   ν = ``nu`` = 0.003,   N = 128 cells

solved by exponax's ``Burgers`` (pseudo-spectral, ETDRK2, 2/3 dealiasing) in ``substeps`` equal
substeps per control step of Δt = ``dt`` = 0.03 (the explicit nonlinear term needs
|u| Δt/substeps ≤ Δx: 16 substeps keep the Courant number of |u| ≤ 3 below 0.75); T = ``steps``
= 32 control steps (0.96 time units). The force is held over a control step and applied as
exponax's ``ForcedStepper`` does: u_{n+1} = Burgers_{Δt}(u_n + Δt f_n). (The paper used
PhiFlow's semi-Lagrangian advection; the physics and the setting are theirs, the scheme is
exponax's.)

State, control, loss
--------------------
A state is (2, N): channel 0 the velocity u, channel 1 the target u* (carried unchanged by the
step, so the controller sees it). The control is the force field f (1, N). The loss is the
paper's: the final state's distance to the target plus a force regulariser::

    L = mean_b mean_x (u_T − u*)²  +  rc · (1/T) Σ_n mean(f_n²)

Data (the paper's generators)
-----------------------------
u_0 is a "Gaussian clash": A_l exp(−(x − x_l)²/(2σ_l²)) + A_r exp(−(x − x_r)²/(2σ_r²)) with
x_l ~ U(0.2, 0.4), A_l ~ U(0, 3), x_r ~ U(0.6, 0.8), A_r ~ U(−3, 0), σ ~ U(0.05, 0.15). The
target u* is u_0 advanced T steps under a constant random Gaussian force
A exp(−(x − x_f)²/(2σ_f²)), x_f ~ U(0.4, 0.6), A ~ U(−1.6, 1.6), σ_f ~ U(0.1, 0.4), so every
target is reachable. 1000 training scenes by default.

Controller: a :class:`~stablebptt.problems.adapters.exponax.PeriodicCNN` (u, u*) → f.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .adapters import _common
from .base import Problem

WHO = "burgers"

PARAMS: dict[str, tuple[Any, str]] = {
    "n": (128, "grid cells on the periodic domain (0, 1)"),
    "nu": (0.003, "viscosity ν"),
    "dt": (0.03, "time step Δt of one controlled step"),
    "steps": (32, "controlled steps per trajectory (horizon T)"),
    "substeps": (16, "solver substeps per controlled step (the explicit advection's CFL limit)"),
    "rc": (0.01, "weight of the force regulariser mean(f²)"),
}


def distance(x) -> jnp.ndarray:
    """mean_x (u − u*)² of one state (2, N) (channel 0: u, channel 1: the target u*) -> scalar."""
    return jnp.mean(jnp.square(x[0] - x[1]))


def _gaussian(x, centre, amp, sigma):
    return amp * np.exp(-0.5 * (x - centre) ** 2 / sigma**2)


def make(
    n: int = PARAMS["n"][0],
    nu: float = PARAMS["nu"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    substeps: int = PARAMS["substeps"][0],
    rc: float = PARAMS["rc"][0],
) -> Problem:
    """Build the Burgers control problem (see the module docstring)."""
    from .adapters.exponax import _import_exponax, exponax_problem, exponax_step, grid

    n = _common.positive_int(n, "n", WHO)
    if n < 8:
        raise ValueError(f"{WHO}: n={n!r}; must be an integer ≥ 8")
    nu, dt = _common.positive_float(nu, "nu", WHO), _common.positive_float(dt, "dt", WHO)
    steps, substeps = _common.positive_int(steps, "steps", WHO), _common.positive_int(substeps, "substeps", WHO)
    if isinstance(rc, bool) or not isinstance(rc, numbers.Real) or not rc >= 0:
        raise ValueError(f"{WHO}: rc={rc!r}; must be a number ≥ 0")
    ex = _import_exponax()
    sub = ex.stepper.Burgers(1, 1.0, n, dt / substeps, diffusivity=nu, single_channel=True)
    stepper = ex.RepeatedStepper(sub, substeps) if substeps > 1 else sub
    x = grid(stepper)[0].astype(np.float64)  # (N,)
    push = exponax_step(stepper)  # the uncontrolled physics with a force field, for the targets

    @jax.jit
    def targets(u0, force):
        return jax.lax.fori_loop(0, steps, lambda _, u: push(u, force), u0)

    def sample_states(rng: np.random.Generator, count: int) -> np.ndarray:
        u = lambda lo, hi: rng.uniform(lo, hi, (count, 1))
        u0 = _gaussian(x, u(0.2, 0.4), u(0.0, 3.0), u(0.05, 0.15)) + _gaussian(
            x, u(0.6, 0.8), u(-3.0, 0.0), u(0.05, 0.15)
        )
        force = _gaussian(x, u(0.4, 0.6), u(-1.6, 1.6), u(0.1, 0.4))
        u0, force = u0[:, None].astype(np.float32), force[:, None].astype(np.float32)
        target = (
            np.concatenate([np.asarray(targets(u0[i : i + 64], force[i : i + 64])) for i in range(0, count, 64)])
            if count
            else u0
        )
        return np.concatenate([u0, target], axis=1)

    return exponax_problem(
        stepper,
        horizon=steps,
        state_loss=distance,
        on="final",
        control_weight=float(rc),
        sample_states=sample_states,
        aux_channels=1,
        name="burgers",
        params=dict(n=n, nu=nu, dt=dt, steps=steps, substeps=substeps, rc=float(rc)),
        defaults=dict(epochs=100, lr=1e-3, batch_size=8, n_train=1000, n_test=100),
        description=f"Burgers (Holl et al. 2020): N = {n}, ν = {nu:g}, T = {steps} × Δt {dt:g} ({substeps} substeps), "
        f"force field to a target: mean (u_T − u*)² + {float(rc):g}·⟨f²⟩",
    )


__all__ = ["PARAMS", "make", "distance"]
