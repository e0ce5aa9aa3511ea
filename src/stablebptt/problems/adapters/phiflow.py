r"""A PhiFlow simulation as a :class:`~stablebptt.problems.Problem` (``pip install stablebptt[phiflow]``).

    from stablebptt.problems.adapters.phiflow import flow, phiflow_problem

    velocity = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=128, bounds=flow.Box(x=2))

    def burgers(u, force):                       # ONE sample: PhiFlow fields in, a field out
        u = flow.diffuse.explicit(u, 0.003, 0.03)
        return flow.advect.semi_lagrangian(u, u, 0.03) + 0.03 * force

    problem = phiflow_problem(burgers, state=velocity, control=velocity, horizon=32,
                              state_loss=lambda u: flow.math.l2_loss(u.values), sample_states=draw)

Importing PhiFlow without switching JAX to float64
--------------------------------------------------
Importing PhiFlow's JAX backend (``phi.jax``, ``phi.jax.flow``) runs
``jax.config.update("jax_enable_x64", True)`` for the whole process, so every JAX program after
it — a scan's carry, ``jnp.zeros(3)`` — computes in float64. :func:`import_phiflow` imports
``phi.jax.flow`` and then restores ``jax_enable_x64`` to the value it had before; the module
attribute ``flow`` (``from stablebptt.problems.adapters.phiflow import flow``) is that import.
PhiFlow's module is imported once per process, so a later ``from phi.jax.flow import *`` in the
user's code switches nothing. Every call of the user's functions runs inside
``phiml.math.precision(32)``, so PhiFlow computes in float32 whatever its global precision is,
and never asks for float64.

State and control
-----------------
The library carries one float32 vector per sample. ``state`` and ``control`` are *templates*:
a PhiFlow ``Field`` (a ``CenteredGrid``, a ``StaggeredGrid``, …) or a phiml ``Tensor``, or a
tuple / list / dict of them, without batch dimensions. Their geometry, boundary conditions and
dimension names are kept; their values only fix the sizes. A :class:`FieldLayout` maps between
the two forms: the vector is the concatenation of every leaf's values, each flattened in the
order of the template's dimensions (a staggered grid's components one after the other, each
with its own face counts), so ``state_shape = (N,)`` with N the number of values. One step is,
per row,

    s  = layout.unpack(x_b),   u = control_layout.unpack(c_b)
    x'_b = layout.pack(step(s, u))

vmapped over the batch (the rows are independent by construction). The step returns the
state's structure; a returned value may omit a dimension it is constant along (it is expanded).

Loss, data, controller
----------------------
``state_loss(s)``: a scalar of ONE state (a phiml tensor without dimensions or a JAX scalar);
ℓ(x_n) is its batch mean, and the trajectory loss a :class:`~stablebptt.core.losses.TrajectoryLoss`
of ℓ (``on="final"``: ℓ(x_T); ``"every"``: (1/T) Σ ℓ(x_n)) plus ``control_weight`` · mean c².
``sample_states(rng, n)`` returns n states as an array (n, N) or as PhiFlow objects of the
state's structure with a batch dimension of size n (packed by :meth:`FieldLayout.pack_batch`).
The controller is the library's MLP on the vector, or on ``observe(s)`` (one state → a 1-D
feature vector) when given.

Caches
------
PhiFlow computes some derived quantities lazily and caches them on its objects (a grid's cell
centres). A cache filled while JAX traces a program holds a tracer, and the next program that
reads it fails (``UnexpectedTracerError``). The adapter therefore runs ``step``, ``state_loss``
and ``observe`` once eagerly, on the templates, when the problem is built, so that the caches of
the templates and of the PhiFlow objects the functions keep at module level hold concrete
values before anything is traced.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ...core.losses import TrajectoryLoss
from ..base import Problem
from . import _common

WHO = "phiflow_problem"
ON = ("every", "final")
#: the module whose import switches jax_enable_x64 on
_PHIML_JAX = "phiml.backend.jax._jax_backend"


@functools.cache
def import_phiflow():
    """``phi.jax.flow``, imported with ``jax_enable_x64`` restored to its value before the import.

    Idempotent: later calls return the same module and switch nothing. A one-line ImportError
    names the extra when PhiFlow is missing. When PhiFlow's JAX backend was imported before (by
    other code) and float64 is on, the previous value is unknown: a warning says so.
    """
    x64 = bool(jax.config.jax_enable_x64)
    earlier = sys.modules.get(_PHIML_JAX) is not None
    try:
        import phi.jax.flow as flow
    except ImportError as e:
        raise ImportError("the PhiFlow adapter needs PhiFlow: pip install 'stablebptt[phiflow]'") from e
    finally:
        jax.config.update("jax_enable_x64", x64)
    if earlier and x64:
        warnings.warn(
            "PhiFlow's JAX backend was imported before stablebptt's PhiFlow adapter and jax_enable_x64 is "
            "on (JAX computes in float64); import PhiFlow through stablebptt.problems.adapters.phiflow, or "
            "call jax.config.update('jax_enable_x64', False)",
            stacklevel=2,
        )
    return flow


def _math():
    import_phiflow()
    from phiml import math

    return math


def __getattr__(name: str):
    if name == "flow":
        return import_phiflow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- layout
def _is_leaf(obj) -> bool:
    from phi.field import Field
    from phiml.math import Tensor

    return isinstance(obj, (Field, Tensor))


def _values(leaf):
    """A leaf's values tensor (a Field's ``values``, a Tensor itself)."""
    from phi.field import Field

    return leaf.values if isinstance(leaf, Field) else leaf


class _Spec:
    """How one values tensor is laid out: ``shape`` (uniform: its dims, in order) or
    ``stack`` (a non-uniform tensor, e.g. a staggered grid's values: one dim along which
    uniform ``parts`` are stacked)."""

    parts: tuple[_Spec, ...]

    def __init__(self, t, where: str):
        math = _math()
        shape = t.shape
        if shape.batch_rank:
            raise ValueError(
                f"{WHO}: the template {where} has batch dimensions {shape.batch}; give one sample (no batch dims)"
            )
        if shape.is_uniform:
            self.shape, self.stack, self.parts = shape, None, ()
            self.size = int(shape.volume)
            return
        stack = shape.non_uniform_shape
        if stack.rank != 1:
            raise ValueError(
                f"{WHO}: the template {where} is stacked along {stack}; one stacking dim is "
                "supported (as a staggered grid's vector dim)"
            )
        self.shape, self.stack = None, stack
        self.parts = tuple(_Spec(p, where) for p in math.unstack(t, stack))
        self.size = sum(p.size for p in self.parts)

    def unpack(self, v: jax.Array):
        """A tensor of this layout from a flat JAX vector (size,)."""
        math = _math()
        if self.stack is None:
            return math.wrap(jnp.reshape(v, self.shape.sizes), self.shape)
        parts, o = [], 0
        for p in self.parts:
            parts.append(p.unpack(v[o : o + p.size]))
            o += p.size
        return math.stack(parts, self.stack)

    def natives(self, t, batch, where: str, to_numpy: bool) -> list:
        """[(*batch sizes, size)] native arrays of ``t`` in this layout (``batch``: a phiml
        Shape of batch dims to keep in front, possibly empty)."""
        math = _math()
        if self.stack is None:
            extra = t.shape.without(self.shape.names).without(batch.names)
            if extra.rank:
                raise ValueError(f"{WHO}: {where} has values of shape {t.shape}; expected {self.shape}")
            wrong = [
                (n, t.shape.get_size(n), self.shape.get_size(n))
                for n in self.shape.names
                if n in t.shape and t.shape.get_size(n) != self.shape.get_size(n)
            ]
            if wrong:
                raise ValueError(f"{WHO}: {where} has values of shape {t.shape}; expected {self.shape}")
            full = math.expand(t, batch & self.shape)
            order = ([batch] if batch.rank else []) + list(self.shape.names)
            arr = full.numpy(order) if to_numpy else full.native(order)
            return [arr.reshape(arr.shape[:1] + (-1,) if batch.rank else (-1,))]
        if self.stack.name not in t.shape:
            raise ValueError(
                f"{WHO}: {where} has values of shape {t.shape}; expected them stacked along "
                f"{self.stack} (as the template)"
            )
        parts = math.unstack(t, self.stack.name)
        if len(parts) != len(self.parts):
            raise ValueError(
                f"{WHO}: {where} has {len(parts)} entries along {self.stack.name}; expected {len(self.parts)}"
            )
        return [a for s, p in zip(self.parts, parts) for a in s.natives(p, batch, where, to_numpy)]


class FieldLayout:
    """The float32 vector of a PhiFlow state and back (module docstring).

    ``template``: a Field or Tensor, or a tuple / list / dict of them, for ONE sample.
    ``size`` = N, the vector's length; :meth:`unpack` (N,) → PhiFlow objects; :meth:`pack`
    PhiFlow objects → (N,) float32 JAX; :meth:`pack_batch` objects with a batch dim → (n, N)
    float32 NumPy.
    """

    def __init__(self, template, what: str = "state"):
        _math()
        self.what = what
        leaves, self.treedef = jax.tree_util.tree_flatten(template, is_leaf=_is_leaf)
        bad = [type(x).__name__ for x in leaves if not _is_leaf(x)]
        if not leaves or bad:
            raise ValueError(
                f"{WHO}: {what}= must be a PhiFlow Field or a phiml Tensor, or a tuple / list / "
                f"dict of them; got {type(template).__name__}" + (f" holding {', '.join(bad)}" if bad else "")
            )
        self.leaves = leaves
        self.specs = [_Spec(_values(x), f"{what}[{i}]") for i, x in enumerate(leaves)]
        self.size = sum(s.size for s in self.specs)

    def unpack(self, v: jax.Array):
        """PhiFlow objects of the template's structure, values from the vector v (N,)."""
        from phi.field import Field

        out, o = [], 0
        for leaf, spec in zip(self.leaves, self.specs):
            t = spec.unpack(v[o : o + spec.size])
            out.append(leaf.with_values(t) if isinstance(leaf, Field) else t)
            o += spec.size
        return jax.tree_util.tree_unflatten(self.treedef, out)

    def _leaves_of(self, obj, where: str) -> list:
        leaves, treedef = jax.tree_util.tree_flatten(obj, is_leaf=_is_leaf)
        if treedef != self.treedef or not all(_is_leaf(x) for x in leaves):  # type: ignore[operator]  # jaxlib ships no stub for PyTreeDef
            raise ValueError(
                f"{WHO}: {where} has the structure {treedef}; expected the {self.what} "
                f"template's {self.treedef} (PhiFlow Fields or Tensors)"
            )
        return [_values(x) for x in leaves]

    def _label(self, where: str, i: int) -> str:
        return f"{where} (entry {i})" if len(self.specs) > 1 else where

    def pack(self, obj, where: str | None = None) -> jax.Array:
        """The vector (N,) float32 of ONE sample's PhiFlow objects (no batch dims)."""
        where = where or f"the {self.what}"
        math = _math()
        parts = [
            a
            for i, (s, t) in enumerate(zip(self.specs, self._leaves_of(obj, where)))
            for a in s.natives(t, math.EMPTY_SHAPE, self._label(where, i), to_numpy=False)
        ]
        return jnp.concatenate([jnp.ravel(jnp.asarray(a, jnp.float32)) for a in parts])

    def pack_batch(self, obj, where: str | None = None) -> np.ndarray:
        """(n, N) float32 NumPy of PhiFlow objects with batch dims (their product n; flattened in
        order), e.g. a ``CenteredGrid`` of values with a ``batch(b=n)`` dim."""
        where = where or f"the {self.what}s"
        math = _math()
        values = self._leaves_of(obj, where)
        batch = math.merge_shapes(*[t.shape.batch for t in values])
        if batch.rank == 0:
            raise ValueError(
                f"{WHO}: {where} have no batch dimension; give n samples along a batch dim "
                "(e.g. math.batch(b=n)) or an array (n, N)"
            )
        parts = [
            a
            for i, (s, t) in enumerate(zip(self.specs, values))
            for a in s.natives(t, batch, self._label(where, i), to_numpy=True)
        ]
        return np.concatenate([np.asarray(a, np.float32) for a in parts], axis=1)


# ----------------------------------------------------------------------------- problem
def _scalar(v, label: str):
    """A JAX scalar of a user function's result (a phiml tensor without dims or a JAX scalar)."""
    from phiml.math import Tensor

    if isinstance(v, Tensor):
        if v.shape.rank:
            raise ValueError(
                f"{WHO}: {label} returned a tensor of shape {v.shape} for one state; expected a scalar "
                "(reduce it, e.g. math.l2_loss or math.mean)"
            )
        v = v.native()
    return jnp.asarray(v)


def _in_float32(fn: Callable) -> Callable:
    """``fn`` called inside ``phiml.math.precision(32)``."""
    math = _math()

    @functools.wraps(fn)
    def call(*args):
        with math.precision(32):
            return fn(*args)

    return call


def _sampler(sample_states: Callable, layout: FieldLayout) -> Callable:
    def sample(rng, n):
        out = sample_states(rng, n)
        with _math().precision(32):
            return out if isinstance(out, np.ndarray) or not _is_structured(out) else layout.pack_batch(out)

    return sample


def _is_structured(obj) -> bool:
    return any(_is_leaf(x) for x in jax.tree_util.tree_leaves(obj, is_leaf=_is_leaf))


def phiflow_step(step: Callable, *, state, control) -> tuple[Callable, FieldLayout, FieldLayout]:
    """``(batched_step, state_layout, control_layout)``: ``batched_step(x, c) -> x'`` with x (B, N)
    and c (B, M) float32, the user's ``step(s, u) -> s'`` of ONE sample applied to each row
    (module docstring). ``state`` and ``control`` are the templates."""
    if not callable(step):
        raise ValueError(f"{WHO}: step={step!r} is not callable (step(state, control) -> state)")
    layout, c_layout = FieldLayout(state, "state"), FieldLayout(control, "control")

    @_in_float32
    def row_step(x_row, c_row):
        return layout.pack(step(layout.unpack(x_row), c_layout.unpack(c_row)), "the state step returned")

    def batched(x: jax.Array, c: jax.Array) -> jax.Array:
        """(B, N) float32 state vectors, (B, M) control vectors -> (B, N) one step later."""
        x = jnp.asarray(x, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if x.ndim != 2 or x.shape[1] != layout.size:
            raise ValueError(f"{WHO} step: state shape {x.shape}; expected (B, {layout.size})")
        if c.shape != (x.shape[0], c_layout.size):
            raise ValueError(f"{WHO} step: control shape {c.shape}; expected ({x.shape[0]}, {c_layout.size})")
        return jax.vmap(row_step)(x, c)

    batched.row_step = row_step  # type: ignore[attr-defined]  # a function attribute
    return batched, layout, c_layout


def phiflow_problem(
    step: Callable,
    *,
    state,
    control,
    horizon: int,
    state_loss: Callable,
    sample_states: Callable,
    on: Literal["every", "final"] = "final",
    control_weight: float = 0.0,
    observe: Callable | None = None,
    widths: Sequence[int] = (64, 64),
    zero_last: bool = True,
    name: str = "phiflow",
    params: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> Problem:
    """A PhiFlow simulation as a problem (module docstring: import, layout, loss, data, caches).

    Args:
      step: ``step(state, control) -> state`` for ONE sample, in PhiFlow objects.
      state / control: templates (a Field or Tensor, or a tuple / list / dict of them, one sample).
      horizon: T, simulator steps per trajectory.
      state_loss: ``state_loss(state) -> scalar`` for one state; the batch mean is ℓ.
      sample_states: ``(rng, n) ->`` an array (n, N) or PhiFlow objects with a batch dim of size n.
      on: ``"final"`` (x_T) or ``"every"`` (mean over x_1 … x_T); control_weight: ≥ 0.
      observe: ``observe(state) -> (k,)`` features (phiml tensor or JAX), the controller's input.
      widths / zero_last: the MLP controller's hidden widths and last-kernel initialisation.
      name / params / description: the problem's record (params: JSON-able values).
      defaults: training settings the CLI shows (epochs, lr, batch_size, n_train, n_test).
    """
    horizon = _common.positive_int(horizon, "horizon", WHO)
    widths = _common.check_widths(widths, WHO)
    if on not in ON:
        raise ValueError(f"{WHO}: on={on!r}; allowed: {', '.join(map(repr, ON))}")
    for label, f in (("state_loss", state_loss), ("sample_states", sample_states)):
        if not callable(f):
            raise ValueError(f"{WHO}: {label}={f!r} is not callable")
    if observe is not None and not callable(observe):
        raise ValueError(f"{WHO}: observe={observe!r} is not callable (one state -> 1-D features)")
    batched, layout, c_layout = phiflow_step(step, state=state, control=control)
    state_shape, control_shape = (layout.size,), (c_layout.size,)

    row_loss = _in_float32(lambda x_row: _scalar(state_loss(layout.unpack(x_row)), "state_loss"))
    row_observe = (
        None
        if observe is None
        else _in_float32(lambda x_row: jnp.ravel(_scalar_or_vector(observe(layout.unpack(x_row)))))
    )

    # warm PhiFlow's lazy caches with concrete values before anything is traced (module docstring)
    x_t = layout.pack(state, "the state template")
    c_t = c_layout.pack(control, "the control template")
    batched.row_step(x_t, c_t)  # type: ignore[attr-defined]  # set by _steps
    row_loss(x_t)
    if row_observe is not None:
        row_observe(x_t)

    batch_loss = _common.mean_row_loss(row_loss, "state_loss", WHO)
    features, feature_size = _common.row_features(row_observe, state_shape)
    sample_data = _common.data_sampler(_sampler(sample_states, layout), state_shape, WHO)
    record = dict(
        step=_common.callable_name(step),
        state_size=layout.size,
        control_size=c_layout.size,
        horizon=horizon,
        on=on,
        control_weight=float(control_weight),
        widths=list(widths),
    )
    return Problem(
        name=name,
        params=record | dict(params or {}),
        step=batched,
        loss=TrajectoryLoss(state_loss=batch_loss, on=on, control_weight=float(control_weight)),
        horizon=horizon,
        sample_data=sample_data,
        make_controller=_common.controller_factory(state_shape, control_shape, widths, features, feature_size),
        state_shape=state_shape,
        control_shape=control_shape,
        defaults=dict(defaults or dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64)),
        zero_last_default=bool(zero_last),
        description=description
        or (
            f"PhiFlow {record['step']} ({layout.size} state values, "
            f"{c_layout.size} control values), T = {horizon} steps: "
            f"{'final' if on == 'final' else 'mean'} state loss"
        ),
    )


def _scalar_or_vector(v):
    """A JAX array of a phiml tensor (its dims flattened in order) or of a JAX value."""
    from phiml.math import Tensor

    return v.native(v.shape.names) if isinstance(v, Tensor) else jnp.asarray(v)


__all__ = ["FieldLayout", "import_phiflow", "phiflow_problem", "phiflow_step"]
