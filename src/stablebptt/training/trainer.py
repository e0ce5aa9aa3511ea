r"""Training as pure functions (purejaxrl style): :func:`make_train` turns a problem and a run
configuration into jit-able functions; :mod:`stablebptt.training.runner` calls them epoch by epoch.

One run's state is a :class:`TrainState` (controller parameters, optimizer state with the
learning rate and clipping thresholds as data, the flow's gates where they are data, and the
divergence guard). Runs that differ only in mode, learning rate, clipping or seed share one
program: their states are stacked on a leading axis and every function is ``jax.vmap``-ed —
seeds and lanes are the same vmap.

Protocol (the paper's): minibatches of ``batch_size`` in data order (``shuffle=False``; else a
permutation drawn per epoch), the last ``n_train mod batch_size`` states left out; after each
epoch the loss of the full training and test sets. The update of a minibatch is the flow's
(:func:`stablebptt.core.engine.flow_update`, the path :func:`stablebptt.value_and_update` takes too); it is clipped and handed to the optimizer.

The divergence guard: a non-finite loss, update or new parameter vector stops the run — its
parameters and optimizer state stay at the last finite values (``alive`` becomes False) and
``bad`` names the first bad minibatch of the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import core
from ..core import backward as backward_mod
from ..problems import Problem
from . import optim
from .config import RunConfig

#: per-epoch metrics of the training programs (the runner adds train_loss and test_loss)
TRAIN_METRICS = ("loss", "update_norm", "cos_mg", "sign_agree")
#: states per chunk of the evaluation rollout on CPU when the problem sets no ``eval_chunk``
EVAL_CHUNK = 128


class TrainState(NamedTuple):
    """One run's training state (a pytree; leading run axes under ``vmap``).

    params: the controller's array leaves; opt: the optimizer state (its hyperparameters
    included); gates: the flow's :class:`~stablebptt.core.gates.Gates` for lanes, None when
    the program's gates are constants; alive: bool scalar (False once the run diverged)."""

    params: Any
    opt: Any
    gates: Any
    alive: Any


class Trainer(NamedTuple):
    """The pure functions of a training configuration (see :func:`make_train`).

    init_params(key) -> params: a new controller's parameters (float32 arrays).
    settings(flow, optimizer) -> dict: what one run brings as data (host side): its optimizer
        hyperparameters and, for lanes, its gates.
    init(params, settings) -> TrainState: the state of one run.
    updates(state, train, key) -> (state, metrics): one epoch's minibatch updates (a scan);
        metrics: mean ``loss``, ``update_norm``, ``cos_mg``, ``sign_agree`` over the epoch's
        minibatches and ``bad`` (the first non-finite minibatch, or -1).
    evaluate(params, train, test) -> (train_loss, test_loss): the losses of the full sets.
    static: the controller's non-array part (``eqx.combine(params, static)`` is the controller).
    params_shape: the controller's parameters as ``jax.ShapeDtypeStruct`` leaves.
    backward: the backward strategy the updates use (:mod:`stablebptt.core.backward`).
    backward_choice: how it was chosen: the candidates with their measured seconds per call,
        the cost of measuring and whether the decision came from the cache
        (:func:`stablebptt.core.engine.choose_backward`).
    settle: for a choice still ``pending`` (``backward="auto"`` with a known number of updates
        and no cached decision), ``settle(seconds per update, compile seconds, updates left) ->
        (strategy, record)``: the choice once the first strategy has been timed in the run
        itself; else None.
    """

    init_params: Callable
    settings: Callable
    init: Callable
    updates: Callable
    evaluate: Callable
    static: Any
    params_shape: Any
    backward: Any
    backward_choice: dict
    settle: Callable | None = None


def make_data(problem: Problem, config: RunConfig, seed: int):
    """(train, test) numpy arrays: the authors' seed-42 data for ``data="paper"``, else drawn from ``seed``."""
    src = "paper" if config.data == "paper" else int(seed)
    return problem.sample_data(src, config.n_train, config.n_test)


def zero_last(problem: Problem, config: RunConfig) -> bool:
    """Does the controller start with a zero last kernel (the config's choice, else the problem's)?"""
    return problem.zero_last_default if config.zero_last is None else config.zero_last


#: what a controller factory raises when it needs concrete values (it cannot be traced)
_NOT_TRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def controller_parts(problem: Problem, zero_last: bool, key=None):
    """``(params, static)`` of the problem's controller: abstract (``jax.ShapeDtypeStruct``
    leaves, nothing runs) from the factory's shapes, or — for a factory that needs concrete
    values, or with ``key`` — the real controller built from ``key`` (default seed 0)."""
    make = lambda k: problem.make_controller(k, zero_last=zero_last)
    if key is None:
        try:
            return core.hooks.split(eqx.filter_eval_shape(make, jax.random.PRNGKey(0)))
        except _NOT_TRACEABLE:
            key = jax.random.PRNGKey(0)
    return eqx.partition(make(key), eqx.is_inexact_array)


def make_train(
    problem: Problem,
    flow: core.Flow | str,
    optimizer: optim.Optimizer,
    *,
    batch_size: int,
    backward: str | core.Strategy = "auto",
    shuffle: bool = False,
    diagnostics: bool = False,
    zero_last: bool | None = None,
    lanes: Sequence[tuple[core.Flow, optim.Optimizer]] | None = None,
    checkpoint_every: int | str | None = "auto",
    memory_budget: int | None = None,
    n_runs: int = 1,
    updates: int | None = None,
    verify_rows: bool = True,
    probe=None,
) -> Trainer:
    """The pure functions that train a controller on ``problem`` (see :class:`Trainer`).

    Args:
      flow: the gradient flow (:class:`~stablebptt.core.gates.Flow` or a mode letter).
      optimizer: the optimizer and clipping (:class:`stablebptt.training.optim.Optimizer`).
      batch_size: states per minibatch; an epoch makes ``n_train // batch_size`` updates.
      backward: a strategy object, or a name for :func:`stablebptt.core.engine.choose_backward`
        (``"auto"``: the fastest candidate, measured on ``probe`` states (k, batch_size, …), e.g.
        the first minibatches of the training set; ``updates``: how many minibatch updates the
        run will make, which bounds what measuring may cost; with it the choice is made after
        the run has timed the first candidate: :attr:`Trainer.settle`); ``checkpoint_every`` /
        ``memory_budget`` (bytes, shared by ``n_runs`` runs of one call) apply to a name.
      shuffle: a permutation of the training set per epoch (else data order).
      diagnostics: also compute G in single-field modes (cos/sign statistics).
      zero_last: start with a zero last kernel (None: the problem's default).
      lanes: (flow, optimizer) of each run that shares this program (they may differ in mode,
        learning rate and clipping, not in combiner or AND-mask): their gates and
        hyperparameters are then data in the state (every lane computes two fields).
      verify_rows: False: the caller checks a controller's claim of independent rows itself
        (:func:`verify_controller`), before the functions run.
    """
    flow = core.as_flow(flow)
    T = problem.horizon
    if lanes:
        for f, _ in lanes:
            f = core.as_flow(f)
            if (f.combiner, f.and_mask) != (flow.combiner, flow.and_mask):
                raise ValueError(
                    f"lanes share one program: each lane's combiner and AND-mask must be the flow's "
                    f"({flow.combiner!r}, {flow.and_mask:g}); got ({f.combiner!r}, {f.and_mask:g})"
                )
        lane_gates = [core.as_flow(f).gates(T, diagnostics=True) for f, _ in lanes]
        live = core.gates.live_ctrl(np.stack([g.fields for g in lane_gates]))
        program_gates = core.Gates(
            np.stack([g.fields for g in lane_gates]), np.stack([g.combined for g in lane_gates]), live
        )
    else:
        program_gates = flow.gates(T, diagnostics=diagnostics)
    zero_last = problem.zero_last_default if zero_last is None else bool(zero_last)
    params_abs, static = controller_parts(problem, zero_last)
    x_probe = jax.ShapeDtypeStruct((batch_size,) + tuple(problem.state_shape), jnp.float32)
    model_abs = eqx.combine(params_abs, static)
    core.check_problem_inputs(model_abs, x_probe, problem.step, T)
    by_name = isinstance(backward, str)
    budget = max(int(memory_budget or backward_mod.default_memory_budget()) // max(n_runs, 1), 1)
    if flow.and_mask:  # the fields are computed per batch member, all at once
        budget = max(budget // batch_size, 1)
    decide = core.engine.prepare_backward(
        backward,
        model_abs,
        x_probe,
        step=problem.step,
        loss=problem.loss,
        horizon=T,
        flow=flow,
        gates=program_gates,
        checkpoint_every=checkpoint_every if by_name else None,
        memory_budget=budget if by_name else None,
        verify_rows=verify_rows,
        probe=probe,
    )

    def choose(updates_left, timed=None):
        return decide(None if updates_left is None else updates_left * max(n_runs, 1), timed)

    strategy, choice = choose(updates)
    settle = None
    if choice.get("pending"):

        def settle(per_update_s: float, compile_s: float, updates_left: int):
            return choose(updates_left, (per_update_s, compile_s))

    # lanes read their hyperparameters from the state; one run's are constants of the program
    tx = optimizer.injected()
    tx_update = tx(**optimizer.hyper()) if lanes else optimizer.transform()
    kw = dict(step=problem.step, loss=problem.loss, horizon=T)

    def settings(run_flow: core.Flow, run_optimizer: optim.Optimizer) -> dict:
        gates = core.as_flow(run_flow).gates(T, diagnostics=True) if lanes else None
        return {
            "hyper": run_optimizer.hyper(),
            "gates": None if gates is None else core.Gates(gates.fields, gates.combined, program_gates.live),
        }

    def init(params, settings: dict) -> TrainState:
        return TrainState(params, tx(**settings["hyper"]).init(params), settings["gates"], jnp.bool_(True))

    def updates_fn(state: TrainState, train, key):
        nb = train.shape[0] // batch_size
        batches = train[jax.random.permutation(key, train.shape[0])] if shuffle else train
        batches = batches[: nb * batch_size].reshape((nb, batch_size) + train.shape[1:])

        def body(carry, xb):  # one minibatch update under the divergence guard
            s, bad, i = carry
            val, upd, info, _ = core.flow_update(
                eqx.combine(s.params, static),
                xb,
                flow=flow,
                gates=s.gates if lanes else program_gates,
                backward=strategy,
                **kw,
            )
            steps, opt = tx_update.update(upd, s.opt, s.params)
            params = eqx.apply_updates(s.params, steps)
            ok = s.alive & jnp.isfinite(val) & _all_finite(upd) & _all_finite(params)
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
            stats = jnp.stack(
                [
                    val,
                    info["update_norm"],
                    info.get("cos_mg", jnp.float32(jnp.nan)),
                    info.get("sign_agree", jnp.float32(jnp.nan)),
                ]
            )
            bad = jnp.where(s.alive & ~ok, i, bad)
            return (TrainState(keep(params, s.params), keep(opt, s.opt), s.gates, ok), bad, i + 1), stats

        (state, bad, _), stats = jax.lax.scan(body, (state, jnp.int32(-1), jnp.int32(0)), batches)
        metrics = {k: jnp.mean(stats[:, i]) for i, k in enumerate(TRAIN_METRICS)}
        return state, metrics | {"bad": bad}

    return Trainer(
        init_params_fn(problem, zero_last),
        settings,
        init,
        updates_fn,
        make_evaluate(problem, static),
        static,
        _shapes(params_abs),
        strategy,
        choice,
        settle,
    )


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def verify_controller(trainer: Trainer, problem: Problem, batch_size: int) -> None:
    """Raise ValueError if the strategy merges rows but the controller's rows are not
    independent (:func:`stablebptt.core.hooks.verify_rows_independent`)."""
    if getattr(trainer.backward, "merge_rows", False):
        x = jax.ShapeDtypeStruct((batch_size,) + tuple(problem.state_shape), jnp.float32)
        core.hooks.verify_rows_independent(eqx.combine(trainer.params_shape, trainer.static), x)


def init_params_fn(problem: Problem, zero_last: bool) -> Callable:
    """``init_params(key) -> params``: a new controller's parameters (its float32 arrays)."""

    def init_params(key):
        return eqx.filter(problem.make_controller(key, zero_last=zero_last), eqx.is_inexact_array)

    return init_params


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]))


def eval_chunk(n: int, preferred: int | None = None) -> int:
    """States per chunk when evaluating ``n`` states: on CPU the largest divisor of n up to the
    problem's ``eval_chunk`` (else :data:`EVAL_CHUNK`), at least 32, else n; on accelerators n."""
    want = int(preferred or EVAL_CHUNK)
    if jax.default_backend() != "cpu" or n <= want:
        return n
    for c in range(want, 31, -1):
        if n % c == 0:
            return c
    return n


def make_evaluate(problem: Problem, static) -> Callable:
    """``evaluate(params, train, test) -> (train_loss, test_loss)``: forward rollouts of both
    sets, on CPU in chunks of :func:`eval_chunk` states (one ``lax.map``; the loss is a batch
    mean, so the mean over equal chunks is the loss of the set)."""
    kw: dict[str, Any] = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)
    one = lambda params, xs: core.evaluate_loss(eqx.combine(params, static), xs, **kw)

    def chunks(xs):
        c = eval_chunk(xs.shape[0], problem.eval_chunk)
        return xs.reshape((xs.shape[0] // c, c) + xs.shape[1:])

    def evaluate(params, train, test):
        a, b = chunks(train), chunks(test)
        if a.shape[0] == 1 and b.shape[0] == 1:
            return one(params, train), one(params, test)
        if a.shape[1:] == b.shape[1:]:
            losses = jax.lax.map(lambda x: one(params, x), jnp.concatenate([a, b]))
            return jnp.mean(losses[: a.shape[0]]), jnp.mean(losses[a.shape[0] :])
        return (jnp.mean(jax.lax.map(lambda x: one(params, x), a)), jnp.mean(jax.lax.map(lambda x: one(params, x), b)))

    return evaluate
