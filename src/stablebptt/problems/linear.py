r"""The linear (LQR-style) system where the combined update stalls (``docs/why-stop-the-gradient.md``,
"When M and C do not help: the linear stall").

    x_{n+1} = a·x_n + b·c_n,   c_n = θ·x_n,   x_0 given,   L = ½ mean(x_T²)

Closed forms (scalar state, one sample; let ρ = a + bθ so x_n = ρⁿ x_0)::

    G = x_T · ∂x_T/∂θ = x_T · T ρ^{T−1} b x_0
    M = x_T · b Σ_{n<T} a^{T−1−n} x_n           (feedback along the physics path only)

With a = 1.1, b = 1, T = 4, x_0 = 1 and ρ = −0.5 (θ = −1.6): G < 0 < M, so C = 0.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core.losses import TrajectoryLoss
from .base import Problem

PARAMS = {
    "a": (1.1, "state coefficient a"),
    "b": (1.0, "control coefficient b"),
    "steps": (4, "horizon T"),
    "x0": (1.0, "initial state"),
    "theta0": (-1.6, "initial gain θ (ρ = a + bθ = −0.5 is the stall point)"),
}


class GainController(eqx.Module):
    """c = θ·x (scalar gain)."""

    theta: jax.Array  # shape ()

    def __call__(self, x):  # x (B, 1)
        return self.theta * x


def make(a: float = 1.1, b: float = 1.0, steps: int = 4, x0: float = 1.0, theta0: float = -1.6) -> Problem:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r}; must be an int ≥ 1")
    a32, b32 = np.float32(a), np.float32(b)

    def step(x, c):
        return a32 * x + b32 * c

    def sample(seed, n_train=1, n_test=1):
        del seed
        return (np.full((n_train, 1), x0, np.float32), np.full((n_test, 1), x0, np.float32))

    def ctrl(key, zero_last=False, theta=None):
        del key, zero_last
        return GainController(jnp.asarray(theta0 if theta is None else theta, jnp.float32))

    return Problem(
        name="linear",
        params=dict(a=a, b=b, steps=steps, x0=x0, theta0=theta0),
        step=step,
        loss=TrajectoryLoss(lambda x: 0.5 * jnp.mean(x[:, 0] ** 2), on="final"),
        horizon=int(steps),
        sample_data=sample,
        make_controller=ctrl,
        state_shape=(1,),
        control_shape=(1,),
        defaults=dict(epochs=50, lr=0.01, batch_size=1, n_train=1, n_test=1),
        description="x' = a x + b c with c = θ x: the case where M points away and C stalls",
    )


def closed_form_fields(a: float, b: float, steps: int, x0: float, theta: float) -> tuple[float, float]:
    """(G, M) of ½ x_T² by the formulas in the module docstring (float64)."""
    rho = a + b * theta
    xs = [x0 * rho**n for n in range(steps + 1)]
    xT = xs[-1]
    G = xT * steps * rho ** (steps - 1) * b * x0
    M = xT * b * sum(a ** (steps - 1 - n) * xs[n] for n in range(steps))
    return G, M
