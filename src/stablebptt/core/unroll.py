r"""The forward problem: one simulator step with its loss term, the rollout, the gated unrolled
loss (the autodiff reference of every field) and input checks.

A trajectory starts from a batch of states x_0 (a pytree with a leading batch axis B) and runs
T steps, c_n = N(x_n), x_{n+1} = P(x_n, c_n). Its loss (a :class:`~stablebptt.core.losses.TrajectoryLoss`)
is a sum of per-step terms ℓ_n (the state loss of x_{n+1} for every-state losses, the control
penalty of c_n) plus, for final-state losses, the state loss of x_T::

    L = Σ_{n=0}^{T-1} ℓ_n(x_{n+1}, c_n) + [final] state_loss(x_T)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .losses import TrajectoryLoss

PyTree = Any


def step_loss(loss: TrajectoryLoss, n1, x1, c, horizon: int) -> jax.Array:
    """ℓ_n for the step n → n+1 = ``n1``: the weighted state loss of x_{n+1} (every-state losses)
    plus the control penalty of c_n. A float32 scalar."""
    val = loss.control_term(c, horizon)
    if loss.on == "every":
        val = val + loss.step_weight(n1, horizon) * loss.state_loss(x1)
    return val


def physics(step: Callable, loss: TrajectoryLoss, horizon: int) -> Callable:
    """``phys(n, x_n, c_n) -> (x_{n+1}, ℓ_n)``: one simulator step and its loss term."""

    def phys(n, x, c):
        x1 = step(x, c)
        return x1, step_loss(loss, n + 1, x1, c, horizon)

    return phys


def terminal_loss(loss: TrajectoryLoss, xT) -> jax.Array:
    """The loss term of x_T outside the per-step terms: state_loss(x_T) for final-state losses, else 0."""
    return loss.state_loss(xT) if loss.on == "final" else jnp.zeros((), jnp.float32)


def gate(x: PyTree, g) -> PyTree:
    """Forward value x; backward g·(cotangent). ``g`` is a scalar (traced or not)."""
    return jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) + g * (a - jax.lax.stop_gradient(a)), x)


class Forward(NamedTuple):
    """What a forward loop stacks over its steps n (leaves (T, …); None where not kept).

    xs: x_n, the state each step starts from; cs: c_n; ls: ℓ_n (T,) float32; res: the
    controller's residuals (``forward_with_residuals``); lin: the leaves of the simulator's vjp
    at (x_n, c_n); kvjp: the leaves of the controller's vjp at x_n (and θ)."""

    xs: Any = None
    cs: Any = None
    ls: Any = None
    res: Any = None
    lin: Any = None
    kvjp: Any = None


def forward_loop(control: Callable, phys: Callable, x0, ns, keep: Collection[str] = ("ls",)):
    """The forward loop of every computation in the engine: over steps ``ns``,

        c_n, extra = control(n, x_n);   x_{n+1}, ℓ_n, lin_n = phys(n, x_n, c_n)

    (``extra``: a dict with ``res`` and/or ``kvjp``; ``lin`` may be None). Returns ``(x_end,
    Forward)`` with the fields named in ``keep`` stacked over the steps (the others None).
    """
    keep = frozenset(keep)

    def body(x, n):
        c, extra = control(n, x)
        x1, l, lin = phys(n, x, c)
        rec = dict(xs=x, cs=c, ls=l, lin=lin, **extra)
        return x1, Forward(**{k: (v if k in keep else None) for k, v in rec.items()})

    return jax.lax.scan(body, x0, ns)


def _plain_phys(phys):
    return lambda n, x, c: (*phys(n, x, c), None)


def unrolled_loss(params, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gates) -> jax.Array:
    """L(θ) of one field: the unroll with the field's gates on x_n's two edges at every step.

    ``gates`` (T, 2) holds (g_ctrl, g_phys) per step. The gradient of this scalar with respect
    to ``params`` is the field (:class:`~stablebptt.core.backward.Autodiff` computes it so).
    """
    g_arr = jnp.asarray(gates, jnp.float32)
    phys = physics(step, loss, horizon)
    model = eqx.combine(params, static)
    control: Callable = lambda n, x: (model(gate(x, g_arr[n, 0])), {})
    gated = lambda n, x, c: (*phys(n, gate(x, g_arr[n, 1]), c), None)
    xT, fwd = forward_loop(control, gated, x0, jnp.arange(horizon))
    return jnp.sum(fwd.ls) + terminal_loss(loss, xT)


def rollout(model, x0, *, step, horizon: int):
    """Forward trajectory without gradients: ``(states (T+1, B, …), controls (T, B, …))``."""
    phys = lambda n, x, c: (step(x, c), jnp.zeros((), jnp.float32), None)
    xT, fwd = forward_loop(lambda n, x: (model(x), {}), phys, x0, jnp.arange(horizon), keep=("xs", "cs"))
    xs = jax.tree_util.tree_map(lambda a, aT: jnp.concatenate([a, aT[None]]), fwd.xs, xT)
    return xs, fwd.cs


def evaluate_loss(model, x0, *, step, loss: TrajectoryLoss, horizon: int) -> jax.Array:
    """The trajectory loss L of the batch x0, forward only (train/test evaluation)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    ctrl = eqx.combine(jax.lax.stop_gradient(params), static)
    phys = _plain_phys(physics(step, loss, horizon))
    xT, fwd = forward_loop(lambda n, x: (ctrl(x), {}), phys, x0, jnp.arange(horizon))
    return jnp.sum(fwd.ls) + terminal_loss(loss, xT)


# ----------------------------------------------------------------------------- checks
def _tree_shapes(t):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), t)


#: what a controller or a step raises when it cannot take the shapes it is given
_SHAPE_ERRORS = (TypeError, ValueError, IndexError)


def check_problem_inputs(model, x0, step, horizon) -> None:
    """Check the horizon, the initial state and that the controller and the step take each
    other's shapes, by abstract evaluation only (nothing compiles or runs). Raises ValueError
    naming the bad value; an error that is not about shapes propagates unchanged."""
    if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon <= 0:
        raise ValueError(f"horizon={horizon!r}; must be an int ≥ 1 (number of simulator steps)")
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("initial state x0 has no arrays")
    for a in leaves:
        if isinstance(a, (jax.core.Tracer, jax.ShapeDtypeStruct)):
            continue
        arr = np.asarray(a)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            raise ValueError(
                f"initial state x0 contains {bad} non-finite value(s) (NaN/inf); all entries must be finite"
            )
    try:  # the model as an argument: its arrays may be abstract (ShapeDtypeStruct) too
        c = eqx.filter_eval_shape(lambda m, x: m(x), model, x0)
    except _SHAPE_ERRORS as e:
        raise ValueError(
            f"the controller cannot take the state: x0 has shapes {_tree_shapes(x0)} ({type(e).__name__}: {e})"
        ) from e
    try:
        x1 = jax.eval_shape(step, x0, c)
    except _SHAPE_ERRORS as e:
        raise ValueError(
            f"step(state, control) fails for state {_tree_shapes(x0)} and the controller's output "
            f"{_tree_shapes(c)} ({type(e).__name__}: {e})"
        ) from e
    shapes0 = [tuple(a.shape) for a in leaves]
    shapes1 = [tuple(a.shape) for a in jax.tree_util.tree_leaves(x1)]
    if jax.tree_util.tree_structure(x0) != jax.tree_util.tree_structure(x1) or shapes0 != shapes1:  # type: ignore[operator]  # jaxlib ships no stub for PyTreeDef
        raise ValueError(
            f"step(state, control) returns shapes {shapes1} but the state has shapes {shapes0}; "
            f"the controller's output was {_tree_shapes(c)}; step must map a state to a state of the same shapes"
        )
