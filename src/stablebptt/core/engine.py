r"""The engine's entry point: loss and update of any gradient-flow mode for a batch of initial
states (Schnell & Thuerey, ICLR 2024).

    value, update, info = value_and_update(model, x0, step=step, loss=loss, horizon=T, flow="C")

* ``model``: an equinox controller, batched state (B, …) → batched control (B, …).
* ``x0``: a batch of initial states (a pytree with a leading batch axis B).
* ``step(x, c) -> x'``: the simulator, batched and JAX-traceable.
* ``loss``: a :class:`~stablebptt.core.losses.TrajectoryLoss`; ``horizon``: T ≥ 1 steps.
* ``flow``: a mode letter, a per-step schedule or a :class:`~stablebptt.core.gates.Flow`.
* ``backward``: ``"auto"`` (the fastest strategy, measured: :func:`choose_backward`),
  ``"autodiff"``, ``"batched"``, ``"per_step"`` or a strategy object (:mod:`stablebptt.core.backward`).

The update is a gradient to *descend* (hand it to an optimizer as the gradient): the true
gradient G for R, the modified field M for M, and for C, entry by entry, M_j where
sign(M_j) = sign(G_j), else 0. It is a pytree shaped like the controller's array leaves
(``eqx.filter(model, eqx.is_inexact_array)``). The loss is the same number for every mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import backward as backward_mod
from . import choose, hooks
from .backward import Autodiff, Strategy, default_memory_budget
from .gates import Flow, Gates, as_flow
from .losses import TrajectoryLoss
from .unroll import check_problem_inputs, physics, terminal_loss

PyTree = Any


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


def flow_update(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: Flow, gates: Gates, backward: Strategy):
    """``(L, update, info, fields)`` of ``flow`` with its :class:`Gates` (data: traced gates make
    one program serve runs of different modes), computed by a concrete strategy. The one path
    into the engine: :func:`value_and_update` and the trainer both call it.

    ``flow`` supplies what shapes the program: the combiner and the AND-mask (runs that share a
    program agree in both); ``gates`` what may differ per run. With two fields the update is
    ``flow.combine_fn()(a, b)`` where ``gates.combined``, else a; ``info`` then also holds
    cos(a, b) and the sign agreement (:func:`field_stats`). With ``flow.and_mask`` the fields are
    computed per batch member (a batch of one each, vmapped) and the update is :func:`and_mask`
    of the members' updates.
    """
    if flow.and_mask:
        per = jax.tree_util.tree_map(lambda a: a[:, None], x0)
        inner = dataclasses.replace(flow, and_mask=0.0)

        def one(xi):
            return flow_update(
                model, xi, step=step, loss=loss, horizon=horizon, flow=inner, gates=gates, backward=backward
            )

        vals, ups, infos, fields = jax.vmap(one)(per)
        update = and_mask(ups, flow.and_mask)
        info = {k: jnp.mean(v) for k, v in infos.items()}
        info["update_norm"] = tree_norm(update)
        return jnp.mean(vals), update, info, [jax.tree_util.tree_map(lambda a: jnp.mean(a, 0), f) for f in fields]
    params, static = eqx.partition(model, eqx.is_inexact_array)
    val, fields = backward.fields(params, static, x0, step=step, loss=loss, horizon=horizon, gates=gates)
    if len(fields) == 1:
        update, info = fields[0], {}
    else:
        a, b = fields
        update = jax.tree_util.tree_map(lambda c, u: jnp.where(gates.combined, c, u), flow.combine_fn()(a, b), a)
        info = field_stats(a, b)
    info["update_norm"] = tree_norm(update)
    return val, update, info, fields


#: minibatches in one timed program call of :func:`choose_backward` (a scan over them, as in a
#: training epoch)
MEASURE_BATCHES = 4


def choose_backward(
    backward: str | Strategy,
    model,
    x0,
    *,
    updates: int | None = None,
    timed: tuple[float, float] | None = None,
    **options,
) -> tuple[Strategy, dict]:
    """The strategy for ``backward`` and the record of how it was chosen.

    A strategy object is used as given. A name (``"auto"``, ``"autodiff"``, ``"batched"``,
    ``"per_step"``) selects :func:`~stablebptt.core.backward.candidates`; where there are
    several, each is compiled into a program that computes the updates (:func:`flow_update`) of
    :data:`MEASURE_BATCHES` minibatches in a scan (as a training epoch does) and the fastest is
    kept (:func:`stablebptt.core.choose.choose`, in two rounds: one candidate of each family
    (:func:`~stablebptt.core.backward.first_round`), then the best beside its one-option
    :func:`~stablebptt.core.backward.neighbours`; the decision is cached per signature).

    Args:
      options: the keyword arguments of :func:`prepare_backward` (``step``, ``loss``, ``horizon``,
        ``flow``, ``gates`` required; ``checkpoint_every``, ``memory_budget``, ``verify_rows``,
        ``probe``), described here.
      flow / gates: the flow and its concrete :class:`Gates` (``fields`` (…, F, T, 2); leading
        axes: runs sharing the program; the first run's gates are timed). With an AND-mask the
        candidates are planned on batches of one and timed as :func:`flow_update` runs them
        (vmapped over the batch members).
      checkpoint_every / memory_budget: for a name (see ``candidates``).
      updates: how many minibatch updates the run will make (None: unknown, measure now). With
        a number and no decision cached, the first candidate (:func:`~stablebptt.core.backward.prior`)
        is returned at once with a ``pending`` record: the caller runs it, then calls again with
        ``timed`` and the updates that remain. Timing the candidates is skipped when it would
        cost more than :data:`~stablebptt.core.choose.WORTH` of the run's time with the first
        (``calls``, ``timed`` of :func:`~stablebptt.core.choose.choose`).
      timed: ``(seconds per minibatch update, compile seconds)`` of the first candidate as the
        caller measured them.
      probe: concrete initial states (k, B, …) to time on (e.g. the first minibatches of the
        training set); default: ``x0`` repeated where it is concrete, else random normal
        states. ``model`` may be abstract; its parameters are then random for the timing.

    Returns:
      ``(strategy, record)``: record ``{"chosen", "candidates": {name: s per call or None},
      "measure_s", "cached"}``.
    """
    return prepare_backward(backward, model, x0, **options)(updates, timed)


def prepare_backward(
    backward: str | Strategy,
    model,
    x0,
    *,
    step,
    loss: TrajectoryLoss,
    horizon: int,
    flow: Flow,
    gates: Gates,
    checkpoint_every: int | str | None = "auto",
    memory_budget: int | None = None,
    verify_rows: bool = True,
    probe=None,
):
    """:func:`choose_backward` in two parts: the candidates, their programs and the signature
    are prepared here once; the returned ``decide(updates=None, timed=None) -> (strategy,
    record)`` chooses (as :func:`choose_backward` with those two arguments) and may be called
    again — a run calls it before its first epoch and, when that was ``pending``, after it."""
    if not isinstance(backward, str):
        if checkpoint_every not in (None, "auto") or memory_budget is not None:
            raise ValueError(
                "checkpoint_every / memory_budget apply to a backward given by name; set them on the "
                f"strategy object instead (got backward={backward!r})"
            )
        record = {"chosen": repr(backward), "candidates": {repr(backward): None}, "measure_s": 0.0, "cached": False}
        return lambda updates=None, timed=None: (backward, dict(record))
    fields = np.asarray(gates.fields)
    one_fields = np.asarray(fields.reshape((-1,) + fields.shape[-3:])[0], np.float32)
    one_combined = np.bool_(np.asarray(gates.combined).reshape(-1)[0])
    x_plan = x0
    if flow.and_mask:  # planned per batch member
        x_plan = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct((1,) + tuple(np.shape(a))[1:], jnp.result_type(a)), x0
        )
    cands = backward_mod.candidates(
        model,
        x_plan,
        step=step,
        loss=loss,
        horizon=horizon,
        gates=fields,
        prefer=backward,
        checkpoint_every=checkpoint_every,
        memory_budget=memory_budget,
        verify_rows=verify_rows,
    )
    params, static = hooks.split(model)
    g = Gates(one_fields, one_combined, gates.live)  # numpy: no tracer of a caller's trace

    def program(strategy):
        def run(p, xs):
            def body(acc, x):
                val, upd, _, _ = flow_update(
                    eqx.combine(p, static),
                    x,
                    step=step,
                    loss=loss,
                    horizon=horizon,
                    flow=flow,
                    gates=g,
                    backward=strategy,
                )
                return jax.tree_util.tree_map(jnp.add, acc, (val, upd)), None

            acc0 = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, p))
            return jax.lax.scan(body, acc0, xs)[0]

        return run

    args = (_concrete_params(params), _probe_states(x0, probe))
    key_parts = [
        _jaxpr_text(model, x0, step, loss, horizon),
        horizon,
        one_fields,
        gates.live,
        bool(one_combined),
        flow.label(),
        MEASURE_BATCHES,
        str(jax.tree_util.tree_map(lambda a: (np.shape(a), str(a.dtype)), args[1])),
    ]
    k = len(jax.tree_util.tree_leaves(args[1])[0])  # minibatch updates per program call
    first = backward_mod.first_round(cands)

    def decide(updates: int | None = None, timed: tuple[float, float] | None = None):
        return choose.choose(
            cands,
            program,
            args,
            key_parts,
            first=first,
            neighbours=backward_mod.neighbours,
            calls=None if updates is None else updates / k,
            timed=None if timed is None else (timed[0] * k, timed[1]),
        )

    return decide


def select_backward(
    model,
    x0,
    *,
    step,
    loss: TrajectoryLoss,
    horizon: int,
    flow: Flow | str = "C",
    backward: str = "auto",
    diagnostics: bool = False,
    checkpoint_every: int | str | None = "auto",
    memory_budget: int | None = None,
    verify_rows: bool = True,
) -> Strategy:
    """The strategy :func:`value_and_update` would use for this controller, simulator, horizon
    and flow (:func:`choose_backward` without its record)."""
    flow = as_flow(flow)
    return choose_backward(
        backward,
        model,
        x0,
        step=step,
        loss=loss,
        horizon=horizon,
        flow=flow,
        gates=flow.gates(horizon, diagnostics),
        checkpoint_every=checkpoint_every,
        memory_budget=memory_budget,
        verify_rows=verify_rows,
    )[0]


def _jaxpr_text(model, x0, step, loss, horizon) -> str:
    """The jaxprs of one controller call and one simulator step with its loss term at these
    shapes: what the cost of a strategy depends on (:func:`choose_backward`'s signature). Traced
    at the matmul precision the candidates are measured at ("highest"), whatever the caller's
    context: ``value_and_update`` and the trainer (which traces at "highest") share decisions."""
    xa = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), x0)
    params, static = hooks.split(model)
    pa = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), params)
    phys = physics(step, loss, horizon)
    with jax.default_matmul_precision("highest"):
        ctrl = jax.make_jaxpr(lambda p, x: eqx.combine(p, static)(x))(pa, xa)
        c = jax.eval_shape(lambda p, x: eqx.combine(p, static)(x), pa, xa)
        sim = jax.make_jaxpr(lambda x, c_: (phys(jnp.int32(0), x, c_), terminal_loss(loss, x)))(xa, c)
    return f"{ctrl}\n{sim}\n{loss.on}"


def _concrete_params(params):
    """The parameters as numpy arrays (abstract or traced leaves become random normal × 0.1, a
    fixed draw): the measurement runs outside any trace its caller is in."""
    rng = np.random.default_rng(0)

    def one(a):
        if isinstance(a, (jax.ShapeDtypeStruct, jax.core.Tracer)):
            return np.asarray(0.1 * rng.standard_normal(np.shape(a)), a.dtype)
        return np.asarray(a)

    return jax.tree_util.tree_map(one, params)


def _probe_states(x0, probe):
    """(k, B, …) numpy states to time on: ``probe``, or ``x0`` repeated k = MEASURE_BATCHES
    times (random normal states where ``x0`` is abstract or traced)."""
    if probe is not None and not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(probe)):
        return jax.tree_util.tree_map(np.asarray, probe)
    rng = np.random.default_rng(1)

    def one(a):
        if isinstance(a, (jax.ShapeDtypeStruct, jax.core.Tracer)):
            a = np.asarray(rng.standard_normal(np.shape(a)), jnp.result_type(a))
        return np.broadcast_to(np.asarray(a), (MEASURE_BATCHES,) + tuple(np.shape(a))).copy()

    return jax.tree_util.tree_map(one, x0)


def value_and_update(
    model,
    x0,
    *,
    step,
    loss: TrajectoryLoss,
    horizon: int,
    flow: Flow | str = "C",
    backward: str | Strategy = "auto",
    diagnostics: bool = False,
    checkpoint_every: int | str | None = None,
    memory_budget: int | None = None,
    validate: bool = True,
):
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
    return _value_update_fields(
        model,
        x0,
        step=step,
        loss=loss,
        horizon=horizon,
        flow=flow,
        backward=backward,
        diagnostics=diagnostics,
        checkpoint_every=checkpoint_every,
        memory_budget=memory_budget,
        validate=validate,
    )[:3]


def _value_update_fields(
    model,
    x0,
    *,
    step,
    loss,
    horizon,
    flow,
    backward,
    diagnostics=False,
    checkpoint_every=None,
    memory_budget=None,
    validate=True,
):
    flow = as_flow(flow)
    if validate:
        check_problem_inputs(model, x0, step, horizon)
    gates = flow.gates(horizon, diagnostics)
    if flow.and_mask and isinstance(checkpoint_every, str) and memory_budget is None:
        memory_budget = default_memory_budget() // max(jax.tree_util.tree_leaves(x0)[0].shape[0], 1)
    strategy, _ = choose_backward(
        backward,
        model,
        x0,
        step=step,
        loss=loss,
        horizon=horizon,
        flow=flow,
        gates=gates,
        checkpoint_every=checkpoint_every,
        memory_budget=memory_budget,
    )
    return flow_update(model, x0, step=step, loss=loss, horizon=horizon, flow=flow, gates=gates, backward=strategy)


def and_mask(per_sample: PyTree, tau: float) -> PyTree:
    """AND-mask: the mean over the leading (sample) axis, entry j kept where |mean_i sign| ≥ τ."""

    def one(u):
        agree = jnp.abs(jnp.mean(jnp.sign(u), axis=0))
        return jnp.where(agree >= tau - 1e-6, jnp.mean(u, axis=0), 0.0)

    return jax.tree_util.tree_map(one, per_sample)


def naive_combined(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: Flow | None = None):
    """C the authors' way, for verification: each field by its own complete forward and
    backward pass (:class:`~stablebptt.core.backward.Autodiff`). Returns
    ``(loss, update, (field_a, field_b))``."""
    flow = flow or Flow("C")
    if not flow.combined:
        raise ValueError(f"naive_combined needs a combined flow (mode 'C'); got mode {flow.mode!r}")
    val, update, _, (a, b) = _value_update_fields(
        model, x0, step=step, loss=loss, horizon=horizon, flow=flow, backward=Autodiff()
    )
    return val, update, (a, b)
