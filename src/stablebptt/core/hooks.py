r"""What the engine may know about a controller beyond ``control = model(x)``.

A controller is any equinox module mapping a batched state (B, …) to a batched control
(B, …). Two optional properties let the reverse sweep work on all T·B rows of a trajectory at
once instead of step by step:

1. **Independent rows** (``rows_independent = True`` on the class): control row i depends on
   state row i only. Then the parameter gradients Σ_n G_θ,nᵀ ac_n are one vjp of one call on
   the T·B rows, and the input Jacobian K_n = ∂c_n/∂x_n is block diagonal, so it can be formed
   row by row for every step at once. The claim is *verified*, never trusted:
   :func:`verify_rows_independent` pushes a tangent into row 0 of a random batch through a
   copy of the controller with random weights and requires exactly zero tangent in the other
   rows.
2. **Hooks** (:class:`RowwiseController`, on top of 1.): the controller computes its own
   residuals, input Jacobian and parameter vjps with a few large matrix products. Their values
   must equal autodiff's (the library's MLP and quantum CNN are tested for it); the engine
   checks that the methods exist and that their outputs have the documented shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@runtime_checkable
class RowwiseController(Protocol):
    """Hooks of a controller with independent rows (N rows: any leading count, e.g. T·B).

    ``forward_with_residuals(x) -> (c, res)``
        x (N, *state) → the control (N, *control) and residuals (a pytree of (N, …) arrays).
    ``param_vjps_from_residuals(x, res, cts) -> [grads]``
        for each cotangent ct (N, *control): Σ_rows (∂c/∂θ)ᵀ·ct, shaped like the controller
        (only its array leaves are read).
    ``jacobian_from_residuals(x, res) -> (J, deltas)``
        J (N, m, *state) = ∂c/∂x per row (m = controls per row) and ``deltas``, whatever the
        parameter vjps below reuse (e.g. ∂c/∂(pre-activations), (N, m, width) per layer).
    ``param_vjps_from_jacobian(x, res, deltas, cts) -> [grads]``
        as ``param_vjps_from_residuals``, reusing the backward products of the Jacobian.
    """

    rows_independent: ClassVar[bool]

    def forward_with_residuals(self, x): ...

    def param_vjps_from_residuals(self, x, res, cts: Sequence) -> list: ...

    def jacobian_from_residuals(self, x, res): ...

    def param_vjps_from_jacobian(self, x, res, deltas, cts: Sequence) -> list: ...


def is_param(a) -> bool:
    """A floating-point array leaf, concrete or abstract (``jax.ShapeDtypeStruct``): a parameter."""
    if isinstance(a, jax.ShapeDtypeStruct):
        return bool(jnp.issubdtype(a.dtype, jnp.inexact))
    return eqx.is_inexact_array(a)


def split(model):
    """``(params, static)`` of a controller, concrete or abstract."""
    return eqx.partition(model, is_param)


def claims_rows_independent(model) -> bool:
    """Does the controller's class declare ``rows_independent = True``?"""
    return bool(getattr(type(model), "rows_independent", False))


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def verify_rows_independent(model, x0, rows: int = 3) -> None:
    """Raise ValueError unless the controller's rows are independent (see module docstring).

    The controller's structure with random weights (normal, scale 0.5) and a random batch of
    ``rows`` states shaped like ``x0``'s rows; a tangent (all ones) on row 0 only must leave
    every other row's control tangent exactly 0. Works on abstract controllers and inside
    traces (only shapes and static fields are used).
    """
    x_row = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct((rows,) + tuple(np.shape(a))[1:], jnp.result_type(a)), x0
    )
    leak = _leak(model, x_row)
    if leak:
        raise ValueError(
            f"{type(model).__name__} declares rows_independent = True, but a change in batch row 0 "
            f"changes the control of row(s) {leak}; remove the declaration (the engine then keeps "
            "every step's batch together) or make the rows independent"
        )


def _leak(model, x_row) -> list[int]:
    """Rows other than 0 whose control tangent is not exactly 0 (see verify_rows_independent)."""
    params, static = split(model)
    p_abs = _abstract(params)
    rng = np.random.default_rng(0)
    rand = lambda s: np.asarray(0.5 * rng.standard_normal(s.shape), s.dtype)
    p, x = jax.tree_util.tree_map(rand, p_abs), jax.tree_util.tree_map(rand, x_row)
    t = jax.tree_util.tree_map(lambda a: np.zeros_like(a), x)
    for a in jax.tree_util.tree_leaves(t):
        a[0] = 1.0
    key: tuple | None
    try:
        key = (
            jax.tree_util.tree_structure(static),
            tuple(jax.tree_util.tree_leaves(static)),
            jax.tree_util.tree_structure(p_abs),
            tuple(jax.tree_util.tree_leaves(p_abs)),
            jax.tree_util.tree_structure(x_row),
            tuple(jax.tree_util.tree_leaves(x_row)),
        )
        program = _LEAK_PROGRAMS.get(key)
    except TypeError:  # a static field that cannot be hashed: compile for this call only
        key = program = None
    if program is None:
        program = _leak_program(static, p_abs, x_row)
        if key is not None:
            _LEAK_PROGRAMS[key] = program
    leaks = np.any(np.stack([np.asarray(a) for a in program(p, x, t)]), axis=0)
    return [int(i) + 1 for i in np.flatnonzero(leaks)]


#: compiled checks by controller structure (static fields, parameter and state shapes)
_LEAK_PROGRAMS: dict = {}


def _leak_program(static, p_abs, x_row):
    """The compiled check for one controller structure, at XLA's lowest optimisation level
    (it runs once per structure, on a batch of three rows)."""

    def leak(p, x, t):
        _, dc = jax.jvp(lambda x_: eqx.combine(p, static)(x_), (x,), (t,))
        return [jnp.any(jnp.reshape(a, (a.shape[0], -1))[1:] != 0, axis=1) for a in jax.tree_util.tree_leaves(dc)]

    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(leak).lower(p_abs, x_row, x_row).compile(opts)


def has_hooks(model) -> bool:
    """Does the controller implement :class:`RowwiseController` (and declare independent rows)?"""
    return claims_rows_independent(model) and isinstance(model, RowwiseController)


def controls_per_row(model, x0) -> int | None:
    """m, the controls per batch row when the control is one array (B, …); else None."""
    c = eqx.filter_eval_shape(lambda mdl, x: mdl(x), model, x0)
    if not isinstance(c, jax.ShapeDtypeStruct) or len(c.shape) < 1:
        return None
    return int(np.prod(c.shape[1:])) if len(c.shape) > 1 else 1


def residual_bytes_per_row(model, x0) -> int:
    """Bytes per batch row of what ``forward_with_residuals`` returns as residuals."""
    x_row = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct((1,) + tuple(np.shape(a))[1:], jnp.result_type(a)), x0
    )
    res = eqx.filter_eval_shape(lambda mdl, x: mdl.forward_with_residuals(x)[1], model, x_row)
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(res)))


def check_hook_shapes(model, x0) -> None:
    """Raise ValueError unless the hooks return what :class:`RowwiseController` documents
    (abstract evaluation on ``x0``: nothing runs)."""
    name = type(model).__name__
    c = eqx.filter_eval_shape(lambda mdl, x: mdl(x), model, x0)
    ctrl = lambda mdl, x: mdl.forward_with_residuals(x)
    c2, res = eqx.filter_eval_shape(ctrl, model, x0)
    if _abstract(c2) != _abstract(c):
        raise ValueError(f"{name}.forward_with_residuals returns a control shaped {c2}; its call returns {c}")
    n = jax.tree_util.tree_leaves(x0)[0].shape[0]
    m = controls_per_row(model, x0) or 1
    jac, _ = eqx.filter_eval_shape(lambda mdl, x, r: mdl.jacobian_from_residuals(x, r), model, x0, res)
    want = [(n, m) + tuple(a.shape[1:]) for a in jax.tree_util.tree_leaves(x0)]
    got = [tuple(a.shape) for a in jax.tree_util.tree_leaves(jac)]
    if got != want:
        raise ValueError(
            f"{name}.jacobian_from_residuals returns J shaped {got}; expected {want} (rows, controls, state)"
        )
