r"""The paper's two toy examples as problems the engine trains like any other.

``toy-field`` (Fig. 1, gradient vs modified field)::

    N(x; θ) = θ1·x² + θ2·x,   P(x, c) = x + c,   x0 = -0.3,   T = 4,   L = ½ (x_4 − y)²,  y = 2

``toy-rotation`` (Fig. 2, Adam under a rotating field). The paper defines three fields on
L(θ) = θ1² + θ2² directly: (a) g = 2θ, (b) r = 2θ − 4Rθ with Rθ = (−θ2, θ1), (c) their
sign combination. We realise them as a genuine two-step control problem whose R field is g
and whose M field is r, so the engine's own modes R, M and C produce (a), (b), (c)::

    state x ∈ ℝ², x0 = 0, T = 2,   N(x; θ) = θ + W x,   P(x, c) = x + c,   L = 1.25 ‖x_2‖²
    W = (I − 2R)/2.5 − 2I

Derivation: x_2 = (2I + W) θ = Bθ with B = (I − 2R)/2.5, and BᵀB = I·5/6.25, so
L = 1.25·0.8‖θ‖² = ‖θ‖² and G = 2θ. M drops the path x_1 → N, so ∂x_2/∂θ|_M = 2I and
M = 2·2.5·Bθ = (I − 2R)·2θ = 2θ − 4Rθ.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core.losses import TrajectoryLoss
from .base import Problem

PARAMS = {
    "toy-field": {
        "x0": (-0.3, "initial state"),
        "target": (2.0, "target y of the final state"),
        "steps": (4, "number of steps T"),
    },
    "toy-rotation": {},
}


class PolyController(eqx.Module):
    """c = θ1·x² + θ2·x (per sample). theta shape (2,)."""

    theta: jax.Array

    def __call__(self, x):  # x (B, 1)
        return self.theta[0] * x**2 + self.theta[1] * x


class AffineController(eqx.Module):
    """c = θ + W x with a fixed (non-trainable) W. theta (2,), W (2, 2)."""

    theta: jax.Array
    W: tuple = eqx.field(static=True)  # nested tuples (hashable, not trained)

    def __call__(self, x):  # x (B, 2)
        return self.theta[None, :] + x @ jnp.asarray(self.W, jnp.float32).T


_R = np.array([[0.0, -1.0], [1.0, 0.0]], np.float32)  # Rθ = (−θ2, θ1)
ROTATION_W = ((np.eye(2, dtype=np.float32) - 2 * _R) / 2.5 - 2 * np.eye(2, dtype=np.float32)).astype(np.float32)


def _step_add(x, c):
    return x + c


def _const_data(x0, shape):
    def sample(seed, n_train=1, n_test=1):
        del seed  # deterministic problems
        tr = np.full((n_train,) + shape, x0, np.float32)
        te = np.full((n_test,) + shape, x0, np.float32)
        return tr, te

    return sample


def make(name: str = "toy-field", x0: float = -0.3, target: float = 2.0, steps: int = 4) -> Problem:
    if name == "toy-rotation":

        def ctrl(key, zero_last=False, theta=(2.0, 4.0)):
            del key, zero_last
            return AffineController(jnp.asarray(theta, jnp.float32), tuple(map(tuple, ROTATION_W.tolist())))

        return Problem(
            name="toy-rotation",
            params={},
            step=_step_add,
            loss=TrajectoryLoss(lambda x: 1.25 * jnp.mean(jnp.sum(x**2, axis=-1)), on="final"),
            horizon=2,
            sample_data=_const_data(0.0, (2,)),
            make_controller=ctrl,
            state_shape=(2,),
            control_shape=(2,),
            defaults=dict(epochs=200, lr=0.1, batch_size=1, n_train=1, n_test=1),
            description="Fig. 2 rotating field: R gives g = 2θ, M gives r = 2θ − 4Rθ on L = ‖θ‖²",
        )
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r}; must be an int ≥ 1")

    def ctrl(key, zero_last=False, theta=None):  # type: ignore[no-redef]  # the other ctrl is toy-rotation's (returned above)
        del zero_last
        th = jax.random.uniform(key, (2,), jnp.float32, -4.0, 4.0) if theta is None else jnp.asarray(theta, jnp.float32)
        return PolyController(th)

    y = float(target)
    return Problem(
        name="toy-field",
        params=dict(x0=x0, target=target, steps=steps),
        step=_step_add,
        loss=TrajectoryLoss(lambda x: 0.5 * jnp.mean((x[:, 0] - y) ** 2), on="final"),
        horizon=int(steps),
        sample_data=_const_data(float(x0), (1,)),
        make_controller=ctrl,
        state_shape=(1,),
        control_shape=(1,),
        defaults=dict(epochs=100, lr=0.01, batch_size=1, n_train=1, n_test=1),
        description="Fig. 1 scalar toy: N = θ1 x² + θ2 x, P = x + c, L = ½(x_T − y)²",
    )


# ---------------------------------------------------------------- field helpers for figures
def rotation_fields(theta: np.ndarray) -> dict[str, np.ndarray]:
    """The three Fig. 2 fields at θ (shape (..., 2)): ``g``, ``r`` and ``k`` (sign-combined)."""
    theta = np.asarray(theta, np.float32)
    rt = np.stack([-theta[..., 1], theta[..., 0]], -1)
    g = 2 * theta
    r = 2 * theta - 4 * rt
    k = np.where(np.sign(r) == np.sign(g), r, 0.0)
    return {"g": g, "r": r, "k": k}
