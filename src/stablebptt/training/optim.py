r"""Optimizers and clipping as in the paper, built from optax pieces.

The update handed to the optimizer is first clipped (for C: *after* combination):

* ``"none"``  — unchanged;
* ``"value"`` — element-wise to [-t, t] (paper: t = 1.0);
* ``"norm"``  — rescaled to global L2 norm ≤ t (paper: t = 1.0).

Optimizers (Keras defaults where the authors used Keras):

* ``"adam"`` — **Keras' Adam**, the paper preset: lr 1e-3, β = (0.9, 0.999), ε = 1e-7 added
  to √v (not to the bias-corrected √v̂)::

      θ ← θ − lr · √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)
        = θ − lr · m̂ / (√v̂ + ε/√(1−β₂ᵗ))

  The difference from optax/PyTorch matters where updates are tiny (mode S on cart-pole:
  the first step moves the last layer by 7.9e-4 instead of 1e-3).
* ``"adam_optax"`` — ``optax.adam`` with ε = 1e-7 (ε added to √v̂).
* ``"sgd"``, ``"momentum"`` (SGD with momentum; 0.8/0.9/0.95 in the paper, default 0.9),
  ``"adagrad"``, ``"adadelta"``, ``"rmsprop"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("adam", "adam_optax", "sgd", "momentum", "adagrad", "adadelta", "rmsprop")
CLIPPING = ("none", "value", "norm")


class KerasAdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's own states do
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Adam's direction with Keras' ε placement: m̂ / (√v̂ + ε/√(1−β₂ᵗ)) (no learning rate)."""

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return KerasAdamState(jnp.zeros([], jnp.int32), zeros, jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        out = jax.tree_util.tree_map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
        return out, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def keras_adam(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Keras' Adam (the paper's optimizer), see module docstring."""
    return optax.chain(scale_by_keras_adam(b1, b2, eps), optax.scale(-learning_rate))


def clipping(kind: str = "none", threshold: float = 1.0) -> optax.GradientTransformation:
    """``"none" | "value" | "norm"`` clipping of the update (threshold t ≥ 0)."""
    kind = str(kind).lower()
    if kind not in CLIPPING:
        raise ValueError(f"unknown clipping {kind!r}; allowed: {', '.join(CLIPPING)}")
    if not (threshold >= 0):
        raise ValueError(f"clip threshold={threshold!r}; must be a number ≥ 0")
    if kind == "none":
        return optax.identity()
    if kind == "value":
        return optax.clip(threshold)
    return optax.clip_by_global_norm(threshold)


def _check_learning_rate(learning_rate) -> None:
    if not (learning_rate > 0):
        raise ValueError(f"learning rate={learning_rate!r}; must be > 0")


def optimizer(
    name: str = "adam", learning_rate: float = 1e-3, *, momentum: float = 0.9, eps: float = 1e-7
) -> optax.GradientTransformation:
    """One of :data:`OPTIMIZERS` with the given learning rate (Keras defaults otherwise)."""
    _check_learning_rate(learning_rate)
    return _optimizer(str(name).lower(), learning_rate, momentum=momentum, eps=eps)


def _optimizer(name: str, learning_rate, *, momentum: float = 0.9, eps: float = 1e-7):
    """:func:`optimizer` without checks (``learning_rate`` may be traced)."""
    if name == "adam":
        return keras_adam(learning_rate, eps=eps)
    if name == "adam_optax":
        return optax.adam(learning_rate, eps=eps)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        if not (0 <= momentum < 1):
            raise ValueError(f"momentum={momentum!r}; must be in [0, 1) (paper: 0.8, 0.9, 0.95)")
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adagrad":
        return optax.adagrad(learning_rate, initial_accumulator_value=0.1, eps=eps)
    if name == "adadelta":
        return optax.adadelta(learning_rate, rho=0.95, eps=eps)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate, decay=0.9, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def make(
    name: str = "adam", learning_rate: float = 1e-3, clip: str = "none", clip_threshold: float = 1.0, **kw
) -> optax.GradientTransformation:
    """Clipping followed by the optimizer: the transformation the trainer applies to updates."""
    return optax.chain(clipping(clip, clip_threshold), optimizer(name, learning_rate, **kw))


# ----------------------------------------------------------------------------- as data
def hyperparams(learning_rate: float = 1e-3, clip: str = "none", clip_threshold: float = 1.0) -> dict:
    """The run's hyperparameters as data (float32 scalars): ``learning_rate``, ``clip_value``
    and ``clip_norm`` (``inf``: that clipping is off). Runs that differ only in these share one
    program (:func:`injected`)."""
    clipping(clip, clip_threshold)  # validates kind and threshold
    _check_learning_rate(learning_rate)
    kind = str(clip).lower()
    f = lambda v: np.asarray(v, np.float32)
    return {
        "learning_rate": f(learning_rate),
        "clip_value": f(clip_threshold if kind == "value" else np.inf),
        "clip_norm": f(clip_threshold if kind == "norm" else np.inf),
    }


def injected(name: str = "adam", *, momentum: float = 0.9) -> Callable[..., optax.GradientTransformation]:
    """``tx(**hyperparams(...))``: clipping by value at ``clip_value``, then by global norm at
    ``clip_norm`` (an ``inf`` threshold changes nothing), then the optimizer at
    ``learning_rate`` — :func:`make`'s arithmetic with the hyperparameters held in the
    optimizer state (``optax.inject_hyperparams``), so they can differ per run under ``vmap``."""
    name = str(name).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")

    def chain(learning_rate, clip_value, clip_norm):
        return optax.chain(
            optax.clip(clip_value),
            optax.clip_by_global_norm(clip_norm),
            _optimizer(name, learning_rate, momentum=momentum),
        )

    return optax.inject_hyperparams(chain)


def fixed(
    name: str = "adam", *, momentum: float = 0.9, learning_rate, clip_value, clip_norm
) -> optax.GradientTransformation:
    """:func:`injected` for hyperparameters known when the program is built (one run, or seeds
    that share them): ``init`` is ``injected(name)(**hyper).init`` (the same state, so
    checkpoints read alike), but ``update`` takes the hyperparameters from here, not from the
    state: the learning rate is a constant of the program and a clipping at ``inf`` (off) is
    left out of it. The arithmetic is :func:`injected`'s (clipping at ``inf`` is the identity)."""
    lr, cv, cn = float(learning_rate), float(clip_value), float(clip_norm)
    init = injected(name, momentum=momentum)(learning_rate=lr, clip_value=cv, clip_norm=cn).init
    inner = optax.chain(
        optax.clip(cv) if np.isfinite(cv) else optax.identity(),
        optax.clip_by_global_norm(cn) if np.isfinite(cn) else optax.identity(),
        _optimizer(str(name).lower(), lr, momentum=momentum),
    )

    def update(updates, state, params=None):
        out, inner_state = inner.update(updates, state.inner_state, params)
        return out, state._replace(count=optax.safe_increment(state.count), inner_state=inner_state)

    return optax.GradientTransformation(init, update)


@dataclass(frozen=True)
class Optimizer:
    """One run's optimizer as plain values: the update is clipped (``clip``: ``"none" | "value" |
    "norm"`` at ``clip_threshold``), then handed to the optimizer ``name`` (:data:`OPTIMIZERS`)
    with ``learning_rate`` (and ``momentum`` for ``"momentum"``). Invalid values raise ValueError
    naming them."""

    name: str = "adam"
    learning_rate: float = 1e-3
    clip: str = "none"
    clip_threshold: float = 1.0
    momentum: float = 0.9

    def __post_init__(self):
        if str(self.name).lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; allowed: {', '.join(OPTIMIZERS)}")
        self.hyper()  # validates the learning rate and the clipping
        if str(self.name).lower() == "momentum" and not (0 <= self.momentum < 1):
            raise ValueError(f"momentum={self.momentum!r}; must be in [0, 1) (paper: 0.8, 0.9, 0.95)")

    def hyper(self) -> dict:
        """The hyperparameters as data (:func:`hyperparams`)."""
        return hyperparams(self.learning_rate, self.clip, self.clip_threshold)

    def transform(self) -> optax.GradientTransformation:
        """:func:`fixed`: the transformation with this run's hyperparameters as constants."""
        return fixed(self.name, momentum=self.momentum, **self.hyper())

    def injected(self) -> Callable[..., optax.GradientTransformation]:
        """:func:`injected`: ``tx(**hyper)`` with the hyperparameters in the state (lanes)."""
        return injected(self.name, momentum=self.momentum)
