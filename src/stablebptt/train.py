r"""Training as pure functions (purejaxrl style): :func:`make_train` turns a problem and a run
configuration into jit-able functions; :mod:`stablebptt.runner` calls them epoch by epoch.

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

from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import core, optim
from .config import RunConfig
from .core import backward as backward_mod
from .problems import Problem

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
    settings(run_config) -> dict: what one run brings as data (host side): its optimizer
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


def make_data(problem: Problem, config: RunConfig, seed: int):
    """(train, test) numpy arrays: the authors' seed-42 data for ``data="paper"``, else drawn from ``seed``."""
    src = "paper" if config.data == "paper" else int(seed)
    return problem.sample_data(src, config.n_train, config.n_test)


def zero_last(problem: Problem, config: RunConfig) -> bool:
    """Does the controller start with a zero last kernel (the config's choice, else the problem's)?"""
    return problem.zero_last_default if config.zero_last is None else config.zero_last


#: what a controller factory raises when it needs concrete values (it cannot be traced)
_NOT_TRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


def controller_parts(problem: Problem, config: RunConfig, key=None):
    """``(params, static)`` of the problem's controller: abstract (``jax.ShapeDtypeStruct``
    leaves, nothing runs) from the factory's shapes, or — for a factory that needs concrete
    values, or with ``key`` — the real controller built from ``key`` (default seed 0)."""
    make = lambda k: problem.make_controller(k, zero_last=zero_last(problem, config))
    if key is None:
        try:
            return core.hooks.split(eqx.filter_eval_shape(make, jax.random.PRNGKey(0)))
        except _NOT_TRACEABLE:
            key = jax.random.PRNGKey(0)
    return eqx.partition(make(key), eqx.is_inexact_array)


def make_train(problem: Problem, config: RunConfig, *, lanes: Sequence[RunConfig] | None = None,
               n_runs: int = 1, verify_rows: bool = True, probe=None, backward=None) -> Trainer:
    """The pure functions that train ``config`` on ``problem`` (see :class:`Trainer`).

    ``lanes``: runs that share this program differ in mode, learning rate or clipping
    (:data:`stablebptt.runner.LANE_FIELDS`); their gates are then data in the state (every
    lane computes two fields). ``n_runs``: how many runs one call carries (the memory budget
    of ``checkpoint_every="auto"`` is shared by them). ``verify_rows=False``: the caller
    checks a controller's claim of independent rows itself (:func:`verify_controller`),
    before the functions run. ``probe``: states (k, batch_size, …) on which the candidate
    strategies of ``backward="auto"`` are timed (e.g. the first minibatches of the training set).
    ``backward``: a strategy object (or name) instead of ``config.backward``.
    """
    flow = config.flow()
    T = problem.horizon
    lane_gates = [c.flow().gates(T, diagnostics=True) for c in lanes] if lanes else None
    gates = None if lanes else flow.gates(T, diagnostics=config.diagnostics)
    fields = np.stack([g.fields for g in lane_gates]) if lanes else gates.fields
    params_abs, static = controller_parts(problem, config)
    x_probe = jax.ShapeDtypeStruct((config.batch_size,) + tuple(problem.state_shape), jnp.float32)
    model_abs = eqx.combine(params_abs, static)
    core.check_problem_inputs(model_abs, x_probe, problem.step, T)
    budget = max(int(config.memory_budget or backward_mod.default_memory_budget()) // max(n_runs, 1), 1)
    if flow.and_mask:  # the fields are computed per batch member, all at once
        budget = max(budget // config.batch_size, 1)
    strategy, choice = core.choose_backward(
        config.backward if backward is None else backward, model_abs, x_probe, step=problem.step, loss=problem.loss, horizon=T, gates=fields,
        checkpoint_every=config.checkpoint_every if backward is None or isinstance(backward, str) else None,
        memory_budget=budget if backward is None or isinstance(backward, str) else None, verify_rows=verify_rows,
        per_sample=bool(flow.and_mask), probe=probe,
        updates=config.epochs * (config.n_train // config.batch_size) * max(n_runs, 1))
    flow_plan = core.plan(flow, fields)
    tx = optim.injected(config.optimizer, momentum=config.momentum)
    hyper = optim.hyperparams(config.lr, config.clip, config.clip_threshold)
    # lanes read their hyperparameters from the state; one configuration's are constants
    tx_update = tx(**hyper) if lanes else optim.fixed(config.optimizer, momentum=config.momentum, **hyper)
    kw = dict(step=problem.step, loss=problem.loss, horizon=T)
    nb, bs = config.n_train // config.batch_size, config.batch_size

    def settings(run: RunConfig) -> dict:
        return {"hyper": optim.hyperparams(run.lr, run.clip, run.clip_threshold),
                "gates": run.flow().gates(T, diagnostics=True) if lanes else None}

    def init(params, settings: dict) -> TrainState:
        return TrainState(params, tx(**settings["hyper"]).init(params), settings["gates"], jnp.bool_(True))

    def update(state: TrainState, xb):
        model = eqx.combine(state.params, static)
        g = state.gates if lanes else gates
        val, upd, info, _ = core.flow_update(model, xb, gates=g, plan=flow_plan, backward=strategy, **kw)
        steps, opt = tx_update.update(upd, state.opt, state.params)
        params = eqx.apply_updates(state.params, steps)
        ok = state.alive & jnp.isfinite(val) & _all_finite(upd) & _all_finite(params)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        stats = jnp.stack([val, info["update_norm"], info.get("cos_mg", jnp.float32(jnp.nan)),
                           info.get("sign_agree", jnp.float32(jnp.nan))])
        return TrainState(keep(params, state.params), keep(opt, state.opt), state.gates, ok), stats

    def updates(state: TrainState, train, key):
        batches = (train[jax.random.permutation(key, train.shape[0])] if config.shuffle else train)
        batches = batches[: nb * bs].reshape((nb, bs) + train.shape[1:])

        def body(carry, xb):
            s, bad, i = carry
            s2, stats = update(s, xb)
            bad = jnp.where(s.alive & ~s2.alive, i, bad)
            return (s2, bad, i + 1), stats

        (state, bad, _), stats = jax.lax.scan(body, (state, jnp.int32(-1), jnp.int32(0)), batches)
        metrics = {k: jnp.mean(stats[:, i]) for i, k in enumerate(TRAIN_METRICS)}
        return state, metrics | {"bad": bad}

    return Trainer(init_params_fn(problem, config), settings, init, updates, make_evaluate(problem, static), static,
                   _shapes(params_abs), strategy, choice)


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def verify_controller(trainer: Trainer, problem: Problem, config: RunConfig) -> None:
    """Raise ValueError if the strategy merges rows but the controller's rows are not
    independent (:func:`stablebptt.core.hooks.verify_rows_independent`)."""
    if getattr(trainer.backward, "merge_rows", False):
        x = jax.ShapeDtypeStruct((config.batch_size,) + tuple(problem.state_shape), jnp.float32)
        core.hooks.verify_rows_independent(eqx.combine(trainer.params_shape, trainer.static), x)


def init_params_fn(problem: Problem, config: RunConfig) -> Callable:
    """``init_params(key) -> params``: a new controller's parameters (its float32 arrays)."""
    def init_params(key):
        return eqx.filter(problem.make_controller(key, zero_last=zero_last(problem, config)), eqx.is_inexact_array)

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
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)
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
            return jnp.mean(losses[: a.shape[0]]), jnp.mean(losses[a.shape[0]:])
        return (jnp.mean(jax.lax.map(lambda x: one(params, x), a)),
                jnp.mean(jax.lax.map(lambda x: one(params, x), b)))

    return evaluate
