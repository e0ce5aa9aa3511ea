"""Trajectory losses: what a problem asks the engine to minimise.

A trajectory is x_0 (the initial batch of states), controls c_0 … c_{T-1} and states
x_1 … x_T. A :class:`TrajectoryLoss` reduces it to one scalar:

    L = Σ_n w_n · state_loss(x_n)            on="every": n = 1 … T, w_n = 1/T ("mean") or 1 ("sum")
                                            on="final": only n = T, w_T = 1
      + control_weight · (1/T) Σ_n mean(c_n²)   (mean over every control entry and the time axis)

``state_loss`` maps one *batched* state (leading batch axis) to a scalar that already
averages over the batch; the engine never looks inside a state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp

State = Any
Control = Any


@dataclass(frozen=True)
class TrajectoryLoss:
    """Loss on a trajectory (see module docstring).

    Attributes:
      state_loss: batched state pytree -> scalar (batch-averaged).
      on: ``"final"`` (only x_T) or ``"every"`` (x_1 … x_T).
      time_reduce: for ``on="every"``: ``"mean"`` over time or ``"sum"`` over time.
      control_weight: rc ≥ 0, weight of mean(c²) over all control entries and steps.
    """

    state_loss: Callable[[State], jax.Array]
    on: Literal["final", "every"] = "final"
    time_reduce: Literal["mean", "sum"] = "mean"
    control_weight: float = 0.0

    def __post_init__(self):
        if self.on not in ("final", "every"):
            raise ValueError(f"TrajectoryLoss.on={self.on!r}; allowed: 'final', 'every'")
        if self.time_reduce not in ("mean", "sum"):
            raise ValueError(f"TrajectoryLoss.time_reduce={self.time_reduce!r}; allowed: 'mean', 'sum'")
        if not (self.control_weight >= 0.0):
            raise ValueError(f"TrajectoryLoss.control_weight={self.control_weight!r}; must be a number ≥ 0")

    def step_weight(self, n: jax.Array | int, horizon: int) -> jax.Array:
        """Weight w_n of state_loss(x_n) for n = 1 … T (n may be traced)."""
        if self.on == "final":
            return jnp.where(n == horizon, 1.0, 0.0)
        return jnp.asarray(1.0 / horizon if self.time_reduce == "mean" else 1.0)

    def control_term(self, control: Control, horizon: int) -> jax.Array:
        """Contribution of one step's control c_n: control_weight · mean(c_n²) / T."""
        if self.control_weight == 0.0:
            return jnp.zeros((), jnp.float32)
        leaves = jax.tree_util.tree_leaves(control)
        total = sum(jnp.sum(jnp.square(c)) for c in leaves)
        count = sum(c.size for c in leaves)
        return self.control_weight * total / (count * horizon)
