"""The problem contract: a problem is data, the engine knows none by name.

A :class:`Problem` bundles a batched simulator step, a :class:`~stablebptt.core.losses.TrajectoryLoss`,
a data sampler, a controller factory and the paper's default training settings.

Conventions (all problems):
  * states and controls carry a leading batch axis B; ``step(x, c)`` maps a batch to a batch;
  * the controller is an equinox module mapping a batched state to a batched control;
  * float32 everywhere (complex64 only inside solvers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ..core.losses import TrajectoryLoss

State = Any
Control = Any


@dataclass(frozen=True)
class Problem:
    """Everything the engine and trainer need to train a controller on one task.

    Attributes:
      name: registry name, e.g. ``"cartpole"``.
      params: the problem parameters it was built with (plain JSON-able values).
      step: ``step(x, c) -> x'``, batched, JAX-traceable.
      loss: the trajectory loss.
      horizon: number of simulator steps T per trajectory.
      sample_data: ``sample_data(seed, n_train, n_test) -> (train, test)`` numpy float32 arrays
        with a leading batch axis. ``seed="paper"`` reproduces the authors' data sets
        (NumPy legacy seed 42, their draw order); an int seed uses a modern generator.
      make_controller: ``make_controller(key, zero_last=...) -> eqx.Module`` mapping a batched
        state to a batched control.
      state_shape / control_shape: per-sample shapes (without batch axis).
      defaults: the paper's training settings (epochs, lr, batch_size, n_train, n_test, ...).
      zero_last_default: whether the paper preset zero-initialises the last kernel.
      description: one line for ``stablebptt problems``.
      eval_chunk: states per chunk when the trainer evaluates the full train/test sets on CPU
        (a speed knob only: the loss is a batch mean, so it does not change the numbers);
        None uses ``train.EVAL_CHUNK``. Small chunks keep an elementwise-heavy simulator's
        intermediates in cache; large ones suit matmul-bound controllers.
    """

    name: str
    params: Mapping[str, Any]
    step: Callable[[State, Control], State]
    loss: TrajectoryLoss
    horizon: int
    sample_data: Callable[..., tuple[np.ndarray, np.ndarray]]
    make_controller: Callable[..., Any]
    state_shape: tuple[int, ...]
    control_shape: tuple[int, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    zero_last_default: bool = False
    description: str = ""
    eval_chunk: int | None = None

    def zero_control(self, batch: int) -> jax.Array:
        import jax.numpy as jnp

        return jnp.zeros((batch,) + tuple(self.control_shape), jnp.float32)
