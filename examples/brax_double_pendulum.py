r"""Brax's inverted double pendulum held upright: a problem file for stablebptt.

    stablebptt train examples/brax_double_pendulum.py:make --mode C -p horizon=40
    stablebptt sweep examples/brax_double_pendulum.toml --vmap-configs

The cart slides on a rail (q_0 = x in m) and carries two hinged poles (q_1 = θ_1, the lower
pole's angle from upright, q_2 = θ_2, the upper pole's angle relative to the lower one, in
rad); the action is the force on the cart (one entry, clipped to the motor's range [−1, 1]).
One simulator step is Brax's ``env.dt`` = 2 × 0.05 s of the ``generalized`` pipeline
(``backend``: generalized, positional or spring). The state the library carries is (q, q̇) ∈ R⁶.

Loss per state (batch mean, averaged over the T steps of a trajectory):

    ℓ = (1 − cos θ_1) + (1 − cos(θ_1 + θ_2)) + 0.01 x² + 10⁻³ (θ̇_1² + θ̇_2²)

the two poles' angles from upright (0 when both are vertical), a weak pull of the cart to the
centre and a small velocity penalty — Brax's reward for this environment written as a loss on
angles. Initial states: x, θ_1, θ_2 uniform in ±``tilt`` (rad; the cart in metres), q̇ uniform in
±0.1. The controller sees (x, sin θ_1, cos θ_1, sin θ_2, cos θ_2, q̇).
"""

from __future__ import annotations

import jax.numpy as jnp

from stablebptt.problems.adapters import brax_problem

PARAMS = {
    "horizon": (40, "simulator steps per trajectory (each env.dt = 0.1 s)"),
    "tilt": (0.3, "half-width of the initial cart position [m] and pole angles [rad]"),
    "backend": ("generalized", "Brax pipeline: generalized, positional or spring"),
}


def upright_loss(ps) -> jnp.ndarray:
    """ℓ of one pipeline state (module docstring)."""
    x, t1, t2 = ps.q[0], ps.q[1], ps.q[2]
    return (1 - jnp.cos(t1)) + (1 - jnp.cos(t1 + t2)) + 0.01 * x**2 + 1e-3 * (ps.qd[1] ** 2 + ps.qd[2] ** 2)


def observe(ps) -> jnp.ndarray:
    """(x, sin θ_1, cos θ_1, sin θ_2, cos θ_2, ẋ, θ̇_1, θ̇_2): the controller's input (8,)."""
    return jnp.concatenate([ps.q[:1], jnp.sin(ps.q[1:]), jnp.cos(ps.q[1:]), ps.qd])


def make(horizon: int = 40, tilt: float = 0.3, backend: str = "generalized"):
    """The problem (module docstring) with T = ``horizon`` steps."""
    return brax_problem(
        "inverted_double_pendulum",
        horizon=horizon,
        state_loss=upright_loss,
        observe=observe,
        q_noise=tilt,
        qd_noise=0.1,
        backend=backend,
        widths=(32, 32),
        name="brax-double-pendulum",
        defaults=dict(epochs=100, lr=1e-3, batch_size=8, n_train=64, n_test=64),
    )
