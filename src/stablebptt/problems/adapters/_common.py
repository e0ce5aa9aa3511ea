"""What the adapters share: seeds, checks of sampled states, the batch loss of a per-state
function, observation features, the controller factory."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import controllers

#: the seed that ``sample_data("paper", …)`` stands for: an adapter's problem has no published data
#: set, so "paper" (the trainer's default ``data="paper"``) is the fixed draw of this seed
PAPER_SEED = 42


def rng_for(seed, who: str) -> np.random.Generator:
    """``np.random.default_rng`` of an int seed; ``"paper"`` is :data:`PAPER_SEED`."""
    if isinstance(seed, str):
        if seed != "paper":
            raise ValueError(f"{who}: seed={seed!r}; allowed: 'paper' or an int")
        seed = PAPER_SEED
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"{who}: seed={seed!r}; allowed: 'paper' or an int")
    return np.random.default_rng(int(seed))


def check_count(n, name: str, who: str) -> int:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{who}: {name}={n!r}; must be an integer ≥ 0")
    return int(n)


def positive_int(v, name: str, who: str) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{who}: {name}={v!r}; must be an integer ≥ 1")
    return int(v)


def positive_float(v, name: str, who: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (np.isfinite(v) and v > 0):  # type: ignore[call-overload,operator]  # numpy's and typeshed's stubs know no numbers.Real
        raise ValueError(f"{who}: {name}={v!r}; must be a finite number > 0")
    return float(v)


def checked_states(arr, n: int, state_shape: tuple[int, ...], who: str) -> np.ndarray:
    """``arr`` as float32 (n, *state_shape); a wrong shape or a non-finite value raises ValueError."""
    out = np.asarray(arr, dtype=np.float32)
    if out.shape != (n,) + tuple(state_shape):
        raise ValueError(
            f"{who}: sample_states returned shape {out.shape}; expected {(n,) + tuple(state_shape)} "
            "(n states of the problem's state_shape)"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{who}: sample_states returned non-finite values")
    return out


def data_sampler(sample_states: Callable, state_shape: tuple[int, ...], who: str) -> Callable:
    """``sample_data(seed, n_train, n_test) -> (train, test)``, float32 (n, *state_shape): one
    generator of ``seed`` (:func:`rng_for`), train drawn first, each draw checked
    (:func:`checked_states`)."""

    def sample_data(seed, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        n_train = check_count(n_train, "n_train", who)
        n_test = check_count(n_test, "n_test", who)
        rng = rng_for(seed, who)
        train = checked_states(sample_states(rng, n_train), n_train, state_shape, who)
        test = checked_states(sample_states(rng, n_test), n_test, state_shape, who)
        return train, test

    return sample_data


def mean_row_loss(row_loss: Callable, label: str, who: str, sign: float = 1.0) -> Callable:
    """ℓ(x) = sign · mean_b row_loss(x_b) for a batch x (B, *state_shape) -> scalar float32.

    ``row_loss`` maps ONE state row to a scalar (``label`` names it in the error raised, at trace
    time, when it returns another shape); ``sign`` = −1 turns a reward into a loss.
    """

    def row_value(x_row):
        v = jnp.asarray(row_loss(x_row))
        if v.shape != ():
            raise ValueError(f"{who}: {label} returned shape {v.shape} for one state; expected a scalar")
        return v.astype(jnp.float32)

    def batch_loss(x: jax.Array) -> jax.Array:
        return sign * jnp.mean(jax.vmap(row_value)(x))

    return batch_loss


def row_features(observe: Callable | None, state_shape: tuple[int, ...]) -> tuple[Callable | None, int | None]:
    """``(features, k)``: the controller's input of one state row, ``observe(row)`` flattened to
    float32 (k,), and k found by tracing it once; ``(None, None)`` when ``observe`` is None (the
    controller sees the flattened state)."""
    if observe is None:
        return None, None

    def features(x_row):
        return jnp.ravel(jnp.asarray(observe(x_row), jnp.float32))

    return features, int(jax.eval_shape(features, jax.ShapeDtypeStruct(state_shape, jnp.float32)).shape[0])


class ObservationMLP(eqx.Module):
    """An :class:`~stablebptt.problems.controllers.MLP` on features of each state row:
    control_i = MLP(features(x_i)) for every row i of a batch (B, *state_shape).

    ``features`` maps ONE state row (*state_shape) to a 1-D feature vector (k,) and has no
    parameters (it is a static field). Rows are independent by construction (the features are
    vmapped over rows); the engine verifies the claim. The module has no hooks: the reverse sweep
    differentiates it by autodiff (cheap next to a physics engine's step).
    """

    mlp: controllers.MLP
    features: Callable = eqx.field(static=True)
    rows_independent: ClassVar[bool] = True

    def __call__(self, x):
        return self.mlp(jax.vmap(self.features)(x))


def controller_factory(
    state_shape: tuple[int, ...],
    control_shape: tuple[int, ...],
    widths: Sequence[int],
    features: Callable | None = None,
    feature_size: int | None = None,
) -> Callable:
    """``make_controller(key, zero_last=True)``: an MLP on the flattened state, or on
    ``features(row)`` (k = ``feature_size`` entries) when ``features`` is given."""
    in_size = int(np.prod(state_shape)) if features is None else int(feature_size)  # type: ignore[arg-type]  # given with features

    def make_controller(key, zero_last: bool = True):
        mlp = controllers.MLP(
            key, in_size=in_size, control_shape=control_shape, widths=tuple(widths), zero_last=zero_last
        )
        return mlp if features is None else ObservationMLP(mlp, features)

    return make_controller


def check_widths(widths, who: str) -> tuple[int, ...]:
    try:
        ws = tuple(widths)
    except TypeError:
        ws = None
    if ws is None or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in ws):  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__/__ge__
        raise ValueError(f"{who}: widths={widths!r}; must be a sequence of integers ≥ 1 (hidden layer widths)")
    return tuple(int(w) for w in ws)


def callable_name(f) -> str | None:
    """A JSON-able record of a user function: its qualified name (None for None)."""
    if f is None:
        return None
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"
