r"""Kuramoto–Sivashinsky control: damp spatio-temporal chaos with a few actuators or a force field.

Physics (dimensionless KS units)
--------------------------------
The conservative KS equation on the periodic domain (0, L), solved by exponax's
``KuramotoSivashinskyConservative`` (pseudo-spectral, ETDRK2, 2/3 dealiasing)::

    u_t + u u_x + u_xx + u_xxxx = f(x, t)

The mean of u is conserved; the flat state u = 0 is unstable for L > 2π and the dynamics are
chaotic from L ≈ 22 on, more so (more unstable modes, a larger Lyapunov dimension) as L grows:
L ∈ {22, 36, 60, 100} is the ladder. One simulator step is Δt = ``dt`` with the forcing held
(:mod:`stablebptt.problems.adapters.exponax`: u_{n+1} = KS(u_n + Δt f_n)).

Control
-------
``actuators`` = K > 0: K periodic Gaussian bumps of width σ = ``width`` at x_k = k L / K, the
control is their K amplitudes (the setting of Bucci et al., "Control of chaotic systems by
deep reinforcement learning", Proc. R. Soc. A 2019: L = 22, 4 actuators, σ = 0.4);
``actuators`` = 0: a force field, the control is f itself (N values).

Loss (the standard KS-control objective: kinetic energy plus actuation power)
-----------------------------------------------------------------------------
    L = (1/T) Σ_{n=1}^T mean_b E(u_n)  +  rc · (1/T) Σ_n mean(c_n²),    E(u) = ½ mean_x u²

rc = ``rc`` (mean over the control entries). u = 0 gives E = 0; the uncontrolled attractor
has E ≈ 0.7–0.9.

Data
----
Initial states lie on the attractor: a random truncated Fourier series (exponax
``RandomTruncatedFourierSeries``, cutoff 5) advanced ``spin_up`` uncontrolled steps, all in
``sample_data`` (seeded: the same seed gives the same states; ``"paper"`` is seed 42).

Controller: the library's MLP on u (64, 64 tanh) → K amplitudes, or for a force field a
:class:`~stablebptt.problems.adapters.exponax.PeriodicCNN` (u → f).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp

from .adapters import _common
from .base import Problem

WHO = "ks"
LENGTHS = (22, 36, 60, 100)

PARAMS: dict[str, tuple[Any, str]] = {
    "L": (22, f"domain length (one of {', '.join(map(str, LENGTHS))}; chaos grows with L)"),
    "n": (0, "grid points (0: 64 for L ≤ 36, 128 above, keeping Δx ≤ 0.8)"),
    "dt": (0.5, "time step Δt of one controlled step (KS time units)"),
    "steps": (40, "controlled steps per trajectory (horizon T)"),
    "actuators": (4, "number of Gaussian actuators (0: a force field, one value per grid point)"),
    "width": (0.4, "actuator width σ (length units)"),
    "rc": (0.1, "weight of the control cost mean(c²)"),
    "spin_up": (400, "uncontrolled steps from the random initial state to the attractor"),
}


def energy(u) -> jnp.ndarray:
    """E = ½ mean_x u² of one state (1, N) -> scalar."""
    return 0.5 * jnp.mean(jnp.square(u))


def make(
    L: int = PARAMS["L"][0],
    n: int = PARAMS["n"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    actuators: int = PARAMS["actuators"][0],
    width: float = PARAMS["width"][0],
    rc: float = PARAMS["rc"][0],
    spin_up: int = PARAMS["spin_up"][0],
) -> Problem:
    """Build the KS control problem (see the module docstring)."""
    from .adapters.exponax import _import_exponax, exponax_problem, gaussian_actuators

    if isinstance(L, bool) or not isinstance(L, numbers.Real) or float(L) not in LENGTHS:
        raise ValueError(f"{WHO}: L={L!r}; allowed: {', '.join(map(str, LENGTHS))}")
    L = int(L)
    n_given = _common.check_count(n, "n", WHO)
    n = n_given or (64 if L <= 36 else 128)
    if n < 8:
        raise ValueError(f"{WHO}: n={n!r}; must be 0 (automatic) or an integer ≥ 8")
    dt = _common.positive_float(dt, "dt", WHO)
    steps = _common.positive_int(steps, "steps", WHO)
    k = _common.check_count(actuators, "actuators", WHO)
    width = _common.positive_float(width, "width", WHO)
    if isinstance(rc, bool) or not isinstance(rc, numbers.Real) or not rc >= 0:
        raise ValueError(f"{WHO}: rc={rc!r}; must be a number ≥ 0")
    spin_up = _common.check_count(spin_up, "spin_up", WHO)
    ex = _import_exponax()
    stepper = ex.stepper.KuramotoSivashinskyConservative(1, float(L), n, dt)
    control = f"{k} actuators (σ = {width:g})" if k else "a force field"
    return exponax_problem(
        stepper,
        horizon=steps,
        state_loss=energy,
        on="every",
        control_weight=float(rc),
        ic=ex.ic.RandomTruncatedFourierSeries(1, cutoff=5),
        spin_up=spin_up,
        actuators=gaussian_actuators(stepper, k, width=width) if k else None,
        name="ks",
        params=dict(L=L, n=n_given, dt=dt, steps=steps, actuators=k, width=width, rc=float(rc), spin_up=spin_up),
        defaults=dict(epochs=200, lr=1e-3, batch_size=16, n_train=256, n_test=64),
        description=f"Kuramoto–Sivashinsky L = {L} (N = {n}), T = {steps} × Δt {dt:g}, {control}: mean energy "
        f"½⟨u²⟩ + {float(rc):g}·⟨c²⟩",
    )


__all__ = ["PARAMS", "LENGTHS", "make", "energy"]
