r"""The engine's entry point: loss and update of any gradient-flow mode for a batch of initial
states (Schnell & Thuerey, ICLR 2024).

    value, update, info = value_and_update(model, x0, step=step, loss=loss, horizon=T, flow="C")

* ``model``: an equinox controller, batched state (B, …) → batched control (B, …).
* ``x0``: a batch of initial states (a pytree with a leading batch axis B).
* ``step(x, c) -> x'``: the simulator, batched and JAX-traceable.
* ``loss``: a :class:`~stablebptt.losses.TrajectoryLoss`; ``horizon``: T ≥ 1 steps.
* ``flow``: a mode letter, a per-step schedule or a :class:`~stablebptt.core.gates.Flow`.
* ``backward``: ``"auto"`` (:func:`~stablebptt.core.backward.select_backward`), ``"autodiff"``,
  ``"batched"``, ``"per_step"`` or a strategy object (:mod:`stablebptt.core.backward`).

The update is a gradient to *descend* (hand it to an optimizer as the gradient): the true
gradient G for R, the modified field M for M, and for C, entry by entry, M_j where
sign(M_j) = sign(G_j), else 0. It is a pytree shaped like the controller's array leaves
(``eqx.filter(model, eqx.is_inexact_array)``). The loss is the same number for every mode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from ..losses import TrajectoryLoss
from .backward import Autodiff, ReverseSweep, default_memory_budget, select_backward
from .gates import Flow, Gates, as_flow, live_ctrl
from .unroll import check_problem_inputs

PyTree = Any
Backward = Autodiff | ReverseSweep


def _flat(t) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(t)
    return jnp.concatenate([jnp.ravel(a) for a in leaves]) if leaves else jnp.zeros((0,))


def tree_norm(t: PyTree) -> jax.Array:
    """Global L2 norm of a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(t)))


def field_stats(m: PyTree, g: PyTree) -> dict[str, jax.Array]:
    """cos(M, G) over all parameter entries, and the fraction of entries with sign(M_j) == sign(G_j)."""
    fm, fg = _flat(m), _flat(g)
    denom = jnp.linalg.norm(fm) * jnp.linalg.norm(fg)
    cos = jnp.where(denom > 0, jnp.dot(fm, fg) / jnp.where(denom > 0, denom, 1.0), 0.0)
    agree = jnp.mean((jnp.sign(fm) == jnp.sign(fg)).astype(jnp.float32))
    return {"cos_mg": cos, "sign_agree": agree}


def update_from_gates(model, x0, *, step, loss: TrajectoryLoss, horizon: int, gates: Gates,
                      live_ctrl: Sequence[bool], backward: Backward, combine: Callable):
    """``(L, update, info, fields)`` of a flow given as :class:`Gates` (data: traced gates
    make one program serve runs of different modes) and a concrete strategy.

    ``live_ctrl`` (static, one bool per field) says which fields need the controller's input
    Jacobian. With two fields the update is ``combine(a, b)`` where ``gates.combined``, else
    a; ``info`` then also holds cos(a, b) and the sign agreement (:func:`field_stats`).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    val, fields = backward.fields(params, static, x0, step=step, loss=loss, horizon=horizon, gates=gates,
                                  live_ctrl=live_ctrl)
    if len(fields) == 1:
        update, info = fields[0], {}
    else:
        a, b = fields
        update = jax.tree_util.tree_map(lambda c, u: jnp.where(gates.combined, c, u), combine(a, b), a)
        info = field_stats(a, b)
    info["update_norm"] = tree_norm(update)
    return val, update, info, fields


def resolve_backward(backward: "str | Backward", model, x0, *, step, loss: TrajectoryLoss, horizon: int,
                     gates, checkpoint_every: "int | str | None" = None,
                     memory_budget: int | None = None, verify_rows: bool = True) -> Backward:
    """A strategy object as given, or the one :func:`select_backward` picks for a name
    (``checkpoint_every`` and ``memory_budget`` apply to names only; ``gates``: concrete gate
    fields (…, F, T, 2))."""
    if isinstance(backward, str):
        return select_backward(model, x0, step=step, loss=loss, horizon=horizon, gates=gates, prefer=backward,
                               checkpoint_every=checkpoint_every, memory_budget=memory_budget,
                               verify_rows=verify_rows)
    if checkpoint_every not in (None, "auto") or memory_budget is not None:
        raise ValueError("checkpoint_every / memory_budget apply to a backward given by name; set them on the "
                         f"strategy object instead (got backward={backward!r})")
    return backward


def value_and_update(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: "Flow | str" = "C",
                     backward: "str | Backward" = "auto", diagnostics: bool = False,
                     checkpoint_every: "int | str | None" = None, memory_budget: int | None = None,
                     validate: bool = True):
    """Loss and update of one gradient-flow mode for a batch of initial states (module docstring).

    Args:
      diagnostics: also compute G for a single-field mode, for the cos/sign statistics.
      checkpoint_every: for a backward given by name: remat segments of this many steps,
        ``"auto"`` (only when the update would exceed ``memory_budget`` bytes, default
        :func:`default_memory_budget`) or None.
      validate: check the inputs' shapes and values first (abstract evaluation only).

    Returns:
      ``(loss, update, info)``: the scalar loss, the update, and ``info`` with
      ``update_norm`` and, for C or with ``diagnostics``, ``cos_mg`` and ``sign_agree``.
    """
    return _value_update_fields(model, x0, step=step, loss=loss, horizon=horizon, flow=flow, backward=backward,
                                diagnostics=diagnostics, checkpoint_every=checkpoint_every,
                                memory_budget=memory_budget, validate=validate)[:3]


def _value_update_fields(model, x0, *, step, loss, horizon, flow, backward, diagnostics=False,
                         checkpoint_every=None, memory_budget=None, validate=True):
    flow = as_flow(flow)
    if validate:
        check_problem_inputs(model, x0, step, horizon)
    kw = dict(step=step, loss=loss, horizon=horizon)
    if flow.and_mask:
        if isinstance(checkpoint_every, str) and memory_budget is None:  # the budget is shared by the samples
            memory_budget = default_memory_budget() // max(jax.tree_util.tree_leaves(x0)[0].shape[0], 1)
        return _and_masked(model, x0, flow=flow, backward=backward, diagnostics=diagnostics,
                           checkpoint_every=checkpoint_every, memory_budget=memory_budget, **kw)
    gates = flow.gates(horizon, diagnostics)
    strategy = resolve_backward(backward, model, x0, gates=gates.fields, checkpoint_every=checkpoint_every,
                                memory_budget=memory_budget, **kw)
    return update_from_gates(model, x0, gates=gates, live_ctrl=live_ctrl(gates.fields), backward=strategy,
                             combine=flow.combine_fn(), **kw)


def and_mask(per_sample: PyTree, tau: float) -> PyTree:
    """AND-mask: the mean over the leading (sample) axis, entry j kept where |mean_i sign| ≥ τ."""
    def one(u):
        agree = jnp.abs(jnp.mean(jnp.sign(u), axis=0))
        return jnp.where(agree >= tau - 1e-6, jnp.mean(u, axis=0), 0.0)

    return jax.tree_util.tree_map(one, per_sample)


def _and_masked(model, x0, *, flow: Flow, **kw):
    """Per-sample updates of ``flow`` (a batch of one each, vmapped), then :func:`and_mask`."""
    inner = dataclasses.replace(flow, and_mask=0.0)
    per = jax.tree_util.tree_map(lambda a: a[:, None], x0)

    def one(xi):
        return _value_update_fields(model, xi, flow=inner, validate=False, **kw)

    vals, ups, infos, fields = jax.vmap(one)(per)
    update = and_mask(ups, float(flow.and_mask))
    info = {k: jnp.mean(v) for k, v in infos.items()}
    info["update_norm"] = tree_norm(update)
    return jnp.mean(vals), update, info, [jax.tree_util.tree_map(lambda a: jnp.mean(a, 0), f) for f in fields]


def naive_combined(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: Flow | None = None):
    """C the authors' way, for verification: each field by its own complete forward and
    backward pass (:class:`~stablebptt.core.backward.Autodiff`). Returns
    ``(loss, update, (field_a, field_b))``."""
    flow = flow or Flow("C")
    if not flow.combined:
        raise ValueError(f"naive_combined needs a combined flow (mode 'C'); got mode {flow.mode!r}")
    val, update, _, (a, b) = _value_update_fields(model, x0, step=step, loss=loss, horizon=horizon, flow=flow,
                                                  backward=Autodiff())
    return val, update, (a, b)
