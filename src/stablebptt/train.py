"""The training loop: one jit-compiled epoch (a scan over minibatches), metrics, a
divergence guard, and K seeds at once with ``vmap`` — or K runs of different modes, learning
rates and clippings as the lanes of one program (``lane_configs``).

Protocol (paper): minibatches in fixed data order (``shuffle=False``), the remainder of
``n_train / batch_size`` dropped; after each epoch the loss of the full training and test
sets is evaluated with the updated controller.

Per-epoch metrics (one row per epoch, epochs counted from 1):
  ``loss``        mean minibatch loss during the epoch
  ``train_loss``  loss of the full training set after the epoch
  ``test_loss``   loss of the full test set after the epoch
  ``update_norm`` mean L2 norm of the update before clipping (after combination for C)
  ``cos_mg``, ``sign_agree``  mean cos(M, G) and fraction of entries with equal signs
                  (C runs, or any mode with ``diagnostics=True``)
  ``wall_s``      wall time of the epoch (compile time is reported separately)

With ``eval_every = k > 1`` the full sets are evaluated only after every k-th and the last
epoch, and only those epochs are recorded as rows (the others train normally; their
minibatch losses and updates are still checked for divergence).

A non-finite loss or update stops that run: its parameters are frozen at the last finite
state, it is marked ``diverged`` with the epoch where it happened, and no row is written for
that epoch (all recorded metrics are finite).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import core
from .core import backward as backward_mod
from . import controllers, optim
from .config import RunConfig
from .problems import Problem

METRICS = ("loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree")
#: the metrics that need the evaluation of the full sets (absent on skipped epochs)
EVAL_METRICS = ("train_loss", "test_loss")


@dataclass
class TrainResult:
    """Outcome of one seed's run."""

    seed: int
    history: dict[str, list]  # metric name -> list over recorded epochs (+ "epoch", "wall_s")
    diverged: bool
    diverged_epoch: int | None
    initial: dict[str, float]  # train/test loss of the untrained controller
    model: Any  # trained controller (last finite parameters)
    compile_s: float
    train_s: float

    @property
    def epochs_done(self) -> int:
        return len(self.history["epoch"])

    def final(self, key: str = "test_loss") -> float:
        vals = self.history.get(key) or []
        return float(vals[-1]) if vals else float(self.initial.get(key, float("nan")))


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))


def make_data(problem: Problem, config: RunConfig, seed: int):
    """(train, test) numpy arrays: the authors' seed-42 data for ``data="paper"``, else seeded."""
    src = "paper" if config.data == "paper" else int(seed)
    return problem.sample_data(src, config.n_train, config.n_test)


#: compiled controller initialisers, (id(factory), zero_last) -> (factory, program); the
#: factory is kept so that its id cannot be reused while the entry lives
_INIT_PROGRAMS: dict = {}
_INIT_PROGRAMS_MAX = 16


#: XLA options for the controller-initialisation program on the CPU. It runs once per seed,
#: but at LLVM's default level 3 its random-number code (threefry) took ~1 s to compile for
#: the quantum CNN, ~0.6 s for the MLPs; level 1 takes ~0.4 s and gives the same bits (tested
#: against the eager factory for every problem).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


class _CompiledInit:
    """``key -> controller``: the factory traced once, its arrays computed by one program
    (compiled at the first call, with :data:`INIT_COMPILER_OPTIONS` on the CPU), the rest
    of the controller (static fields, non-array leaves) taken from that one trace."""

    def __init__(self, factory: Callable, zero_last: bool):
        self.factory, self.zero_last = factory, zero_last
        self.compiled = self.rest = None

    def _arrays(self, key):
        arrays, self.rest = eqx.partition(self.factory(key, zero_last=self.zero_last), eqx.is_array)
        return arrays

    def __call__(self, key):
        if self.compiled is None:
            opts = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
            self.compiled = jax.jit(self._arrays).lower(key).compile(compiler_options=dict(opts))
        return eqx.combine(self.compiled(key), self.rest)


def _init_program(factory: Callable, zero_last: bool) -> Callable:
    """``key -> controller`` compiled once per factory: K seeds of one problem compile it
    once (a fresh jit per call compiled it K times, ~0.5 s each on CPU, more on a GPU)."""
    k = (id(factory), bool(zero_last))
    hit = _INIT_PROGRAMS.get(k)
    if hit is None or hit[0] is not factory:
        while len(_INIT_PROGRAMS) >= _INIT_PROGRAMS_MAX:
            _INIT_PROGRAMS.pop(next(iter(_INIT_PROGRAMS)))
        hit = _INIT_PROGRAMS[k] = (factory, _CompiledInit(factory, zero_last))
    return hit[1]


def _zero_last(problem: Problem, config: RunConfig) -> bool:
    """Does the controller start with a zero last kernel (the config's choice, else the problem's)?"""
    return problem.zero_last_default if config.zero_last is None else config.zero_last


def make_model(problem: Problem, config: RunConfig, seed: int):
    zero_last = _zero_last(problem, config)
    key = jax.random.PRNGKey(int(seed))
    try:  # one compiled program instead of one per initialiser op (saves ~1 s at start-up)
        model = _init_program(problem.make_controller, zero_last)(key)
    except Exception:  # noqa: BLE001 - a factory that cannot be traced runs eagerly
        model = problem.make_controller(key, zero_last=zero_last)
    if config.init_weights:
        model = controllers.load_weights(model, config.init_weights)
    return model


def _abstract_split(problem: Problem, config: RunConfig):
    """``(abstract params, static)`` of one controller from its factory's shapes (nothing is
    compiled or run); None when the factory cannot be traced abstractly or the controller
    holds arrays that are not floating point (they would belong to the static part of a real
    controller)."""
    zero_last = _zero_last(problem, config)
    try:
        model = jax.eval_shape(lambda k: problem.make_controller(k, zero_last=zero_last), jax.random.PRNGKey(0))
    except Exception:  # noqa: BLE001 - the factory needs concrete values: no early compile
        return None
    is_float = lambda a: isinstance(a, jax.ShapeDtypeStruct) and jnp.issubdtype(a.dtype, jnp.inexact)
    params, static = eqx.partition(model, is_float)
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(static)):
        return None
    return params, static


def _same_controller(static, params, static_abs, params_abs) -> bool:
    """Does a real controller (static part, parameters) have the static part and parameter
    shapes that the programs were compiled for from :func:`_abstract_split`?"""
    ls, ts = jax.tree_util.tree_flatten(static)
    la, ta = jax.tree_util.tree_flatten(static_abs)
    if ts != ta or not all(x is y or x == y for x, y in zip(ls, la)):
        return False
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(params_abs):
        return False
    return all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params_abs)))


def _checkpoint_kw(config: RunConfig, n_programs: int = 1) -> dict:
    """checkpoint_every / memory_budget for the engine; with ``"auto"`` the budget is shared
    by the ``n_programs`` vmapped seeds."""
    ce = config.checkpoint_every
    kw = {"checkpoint_every": ce}
    if isinstance(ce, str):
        budget = getattr(config, "memory_budget", None) or backward_mod.default_memory_budget()
        kw["memory_budget"] = int(budget) // max(int(n_programs), 1)
    return kw


class _LaneState(NamedTuple):
    """The optimizer state of a lane (``train(..., lane_configs=...)``): the lane's mode as
    data and its optimizer state, whose settings hold the learning rate and clipping."""

    flow: core.Gates
    opt: optim.LaneOptState


def _make_update(problem: Problem, config: RunConfig, static, tx, n_programs: int = 1, lanes: bool = False):
    """``update(params, opt_state, alive, bad, idx, xb) -> (params, opt_state, ok, bad, stats)``:
    one minibatch update with the divergence guard (stats = [loss, update_norm, cos_mg, sign_agree]).
    ``lanes``: the mode, learning rate and clipping come from ``opt_state`` (a :class:`_LaneState`)."""
    flow = config.flow()
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon, **_checkpoint_kw(config, n_programs))

    def update(params, opt_state, alive, bad, idx, xb):
        model = eqx.combine(params, static)
        if lanes:
            val, upd, info, _ = core.update_from_gates(
                model, xb, gates=opt_state.flow, live_ctrl=(True, True), combine=config.flow().combine_fn(),
                backward=core.engine.resolve_backward("auto", model, xb, gates=np.ones((2, problem.horizon, 2)), **kw),
                **{k: kw[k] for k in ("step", "loss", "horizon")})
            steps, new_inner = tx.update(upd, opt_state.opt, params)
            new_opt = _LaneState(opt_state.flow, new_inner)
        else:
            val, upd, info = core.value_and_update(
                model, xb, flow=flow, diagnostics=config.diagnostics, validate=False, **kw)
            steps, new_opt = tx.update(upd, opt_state, params)
        ok = alive & jnp.isfinite(val) & _all_finite(upd)
        new_params = eqx.apply_updates(params, steps)
        ok = ok & _all_finite(new_params)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        params = keep(new_params, params)
        opt_state = keep(new_opt, opt_state)
        bad = jnp.where(alive & ~ok, idx, bad)
        stats = jnp.stack([val, info["update_norm"],
                           info.get("cos_mg", jnp.float32(0.0)), info.get("sign_agree", jnp.float32(0.0))])
        return params, opt_state, ok, bad, stats

    return update


#: states per chunk of the evaluation rollout on CPU when the problem sets no ``eval_chunk``
EVAL_CHUNK = 128


def _eval_chunk(n: int, preferred: int | None = None) -> int:
    """Chunk length for evaluating ``n`` states: on CPU the largest divisor of n ≤ the
    preferred chunk (the problem's ``eval_chunk``, else :data:`EVAL_CHUNK`), at least 32,
    else no chunking; on accelerators all n at once."""
    want = int(preferred or EVAL_CHUNK)
    if jax.default_backend() != "cpu" or n <= want:
        return n
    for c in range(want, 31, -1):
        if n % c == 0:
            return c
    return n


def _make_evaluate(problem: Problem, static):
    """``evaluate(params, train, test) -> (train_loss, test_loss)``.

    On CPU the states are rolled out in chunks (one ``lax.map`` over the chunks of both sets)
    of the problem's ``eval_chunk`` (default :data:`EVAL_CHUNK`): each step's intermediates
    then stay in cache. Measured here (benchmarks/results.md): guidance, elementwise-heavy,
    is fastest at 32–64 states (~2x faster than one 512-wide rollout), the quantum CNN at 256,
    cart-pole does not care. The loss is a batch mean (problem contract), so the mean over
    equal chunks is the loss of the whole set.
    """
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)

    def one(params, xs):
        return core.evaluate_loss(eqx.combine(params, static), xs, **kw)

    def chunks(xs):
        c = _eval_chunk(xs.shape[0], problem.eval_chunk)
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


def _metrics(stats, tr, te, bad):
    return {
        "loss": jnp.mean(stats[:, 0]),
        "train_loss": tr,
        "test_loss": te,
        "update_norm": jnp.mean(stats[:, 1]),
        "cos_mg": jnp.mean(stats[:, 2]),
        "sign_agree": jnp.mean(stats[:, 3]),
        "bad": bad,
    }


#: a copy of every array of a pytree as one program (compiled once per structure and shapes)
_copy_tree = jax.jit(lambda t: jax.tree_util.tree_map(jnp.copy, t))


def _minibatches(train, key, shuffle: bool, nb: int, bs: int):
    """(nb, bs, …) minibatches of ``train`` in its order, or in a permutation drawn from
    ``key`` when ``shuffle``; the last ``n_train mod bs`` states are left out."""
    if shuffle:
        train = train[jax.random.permutation(key, train.shape[0])]
    return train[: nb * bs].reshape((nb, bs) + train.shape[1:])


def _unused_key(key) -> np.ndarray:
    """A key of ``key``'s shape and dtype for the minibatch program when it does not shuffle
    (the key is then unused)."""
    return np.zeros(key.shape, key.dtype)


def build_epoch(problem: Problem, config: RunConfig, static, n_train: int):
    """Return ``epoch(params, opt_state, alive, train, test, key) -> (params, opt_state, alive, metrics)``.

    ``alive`` is a bool scalar; once False the parameters no longer change. Metrics are
    per-epoch scalars plus ``bad`` (index of the first non-finite minibatch or -1).

    (One program: a scan over the minibatches, then the evaluation. :func:`train` runs the
    same computation as one program scanning the minibatch updates plus one evaluation program,
    which XLA:CPU runs faster, see docs/performance.md.)
    """
    tx = optim.make(config.optimizer, config.lr, config.clip, config.clip_threshold, momentum=config.momentum)
    bs = config.batch_size
    nb = n_train // bs
    want_stats = config.flow().combined or config.diagnostics
    update = _make_update(problem, config, static, tx)
    evaluate = _make_evaluate(problem, static)

    def one_update(carry, xb):
        params, opt_state, alive, bad, idx = carry
        params, opt_state, ok, bad, stats = update(params, opt_state, alive, bad, idx, xb)
        return (params, opt_state, ok, bad, idx + 1), stats

    def epoch(params, opt_state, alive, train, test, key):
        batches = _minibatches(train, key, config.shuffle, nb, bs)
        (params, opt_state, alive, bad, _), stats = jax.lax.scan(
            one_update, (params, opt_state, alive, jnp.int32(-1), jnp.int32(0)), batches)
        tr, te = evaluate(params, train, test)
        alive = alive & jnp.isfinite(tr) & jnp.isfinite(te)
        return params, opt_state, alive, _metrics(stats, tr, te, bad)

    return epoch, tx, want_stats


class _Stepper:
    """The epoch as one call of a jit-compiled program that scans the ``nb`` minibatch updates,
    plus one call of the evaluation program (K seeds: both vmapped). Parameters and optimizer
    state are donated from call to call, so no copies are made.

    Why the updates are one program: dispatching one compiled update per minibatch cost
    ~0.2 ms per update (measured, interleaved: 32 cart-pole updates 39.5 → 33.1 ms for R,
    53.3 → 43.8 ms for C, quantum R −5 %; the same numbers bit for bit). Why the evaluation
    is a separate program: it can then run on the second core while the next epoch trains
    (:class:`_OverlappedEvaluation`) or be skipped (``eval_every``). (Before the convolutions
    became matrix products, loops nested in the minibatch loop made the quantum CNN's
    gradients ~8x slower; that is no longer so.)
    """

    def __init__(self, problem: Problem, config: RunConfig, static, n_train: int, K: int,
                 lanes: Sequence[RunConfig] | None = None):
        if lanes is None:
            self.tx = optim.make(config.optimizer, config.lr, config.clip, config.clip_threshold,
                                 momentum=config.momentum)
        else:  # K lanes: mode, learning rate and clipping per lane, as data in the optimizer state
            self.tx = optim.lane_optimizer(config.optimizer, momentum=config.momentum)
            self._lanes = [(c.flow().gates(problem.horizon, diagnostics=True),
                            optim.lane_settings(c.lr, c.clip, c.clip_threshold)) for c in lanes]
        self.lanes = lanes
        self.bs = config.batch_size
        self.nb = n_train // self.bs
        self.shuffle = config.shuffle
        self.K = K
        update = _make_update(problem, config, static, self.tx, n_programs=K, lanes=lanes is not None)
        evaluate = _make_evaluate(problem, static)
        nb, bs = self.nb, self.bs

        def upd(carry, batches, i):
            params, opt_state, alive, bad, stats = carry
            xb = jax.lax.dynamic_index_in_dim(batches, i, keepdims=False)
            params, opt_state, ok, bad, row = update(params, opt_state, alive, bad, i, xb)
            return params, opt_state, ok, bad, stats.at[i].set(row)

        def batches(train, key):
            return _minibatches(train, key, self.shuffle, nb, bs)

        def end_epoch(carry, tr, te):
            params, opt_state, alive, bad, stats = carry
            return (params, opt_state, alive, jnp.full_like(bad, -1), stats), _metrics(stats, tr, te, bad)

        def finish(carry, train, test):
            params, opt_state, alive, bad, stats = carry
            tr, te = evaluate(params, train, test)
            alive = alive & jnp.isfinite(tr) & jnp.isfinite(te)
            return end_epoch((params, opt_state, alive, bad, stats), tr, te)

        def finish_unevaluated(carry):
            """End of an epoch without evaluation (eval_every > 1, or evaluated elsewhere):
            train_loss/test_loss NaN."""
            nan = jnp.float32(jnp.nan)
            return end_epoch(carry, nan, nan)

        if K > 1:
            upd = jax.vmap(upd, in_axes=(0, 0, None))
            batches = jax.vmap(batches)
            finish = jax.vmap(finish)
            finish_unevaluated = jax.vmap(finish_unevaluated)

        def updates(carry, batches_):
            """All nb minibatch updates of an epoch, in order."""
            return jax.lax.scan(lambda c, i: (upd(c, batches_, i), None), carry,
                                jnp.arange(nb, dtype=jnp.int32))[0]

        self._updates, self._batches, self._finish = updates, batches, finish
        self._finish_unevaluated = finish_unevaluated

    def init_opt(self, params, k: int):
        """The optimizer state of seed (or lane) k with parameters ``params``."""
        if self.lanes is None:
            return self.tx.init(params)
        lane_flow, settings = self._lanes[k]
        return _LaneState(lane_flow, self.tx.init(params, settings))

    def init_carry(self, params, opt_state):
        lead = () if self.K == 1 else (self.K,)
        return (params, opt_state, jnp.ones(lead, bool), jnp.full(lead, -1, jnp.int32),
                jnp.zeros(lead + (self.nb, 4), jnp.float32))

    def compile(self, carry, train, test, key, evaluate: bool = True):
        """AOT-compile the programs: each is traced here and compiled on a pool of two threads
        as soon as it is traced (XLA releases the GIL), so the update program, the largest,
        compiles while the others are traced; returns the seconds it took, tracing included.
        ``key`` may be abstract (its shape and dtype are all that is needed: an eager key
        computation would compile a program of its own at a cold start). ``evaluate=False``:
        no program that evaluates (every evaluation runs elsewhere, see
        :class:`_OverlappedEvaluation`); :meth:`epoch` then only runs with ``evaluate=False``."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        b_abs = jax.eval_shape(self._batches, train, key)
        programs = [  # the largest first: each compiles while the next ones are traced
            lambda: jax.jit(self._updates, donate_argnums=0).lower(carry, b_abs),
            lambda: jax.jit(self._batches).lower(train, key),
            # the end of an epoch without evaluation (eval_every > 1 or overlapped evaluation)
            lambda: jax.jit(self._finish_unevaluated, donate_argnums=0).lower(carry),
        ]
        if evaluate:
            programs.insert(1, lambda: jax.jit(self._finish, donate_argnums=0).lower(carry, train, test))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(lower().compile) for lower in programs]
            compiled = [f.result() for f in futures]
        self.finish = compiled.pop(1) if evaluate else None
        self.updates, self.batches, self.finish_unevaluated = compiled
        self.fixed = None if self.shuffle else self.batches(train, _unused_key(key))
        return time.perf_counter() - t0

    def epoch(self, carry, train, test, key, evaluate: bool = True):
        b = self.fixed if self.fixed is not None else self.batches(train, key)
        carry = self.updates(carry, b)
        if not evaluate:
            return self.finish_unevaluated(carry)
        if self.finish is None:
            raise RuntimeError("compiled with evaluate=False: this stepper has no evaluating program")
        return self.finish(carry, train, test)

    @staticmethod
    def alive(carry):
        return carry[2]

    @staticmethod
    def params(carry):
        return carry[0]


#: how K > 1 seeds run: "vmap" (one vmapped program), "loop" (the one-seed programs called
#: for each seed in turn) or "auto" (loop on CPU, vmap on accelerators)
SEED_STRATEGY = "auto"


def _seed_strategy() -> str:
    if SEED_STRATEGY != "auto":
        return SEED_STRATEGY
    return "loop" if jax.default_backend() == "cpu" else "vmap"


class _SeedLoop:
    """K seeds with the one-seed programs, seed after seed (same interface as _Stepper with
    stacked inputs). On XLA:CPU this is faster than the vmapped program: each seed's matmuls
    are already as large as they get (the weights differ per seed), vmapping only turns them
    into batched matmuls with a slower kernel and a K-times larger working set (measured:
    +11 % seed-updates/s at K = 8 and +46 % at K = 64 on cart-pole, +86 % at K = 8 on quantum)."""

    def __init__(self, problem: Problem, config: RunConfig, static, n_train: int, K: int):
        self.one = _Stepper(problem, config, static, n_train, 1)
        self.tx, self.K, self.nb = self.one.tx, K, self.one.nb

    def init_opt(self, params, k: int):
        return self.one.init_opt(params, 0)

    @staticmethod
    def _split(tree, K):
        return [jax.tree_util.tree_map(lambda a: a[k], tree) for k in range(K)]

    def init_carry(self, params, opt_state):
        return [self.one.init_carry(p, o) for p, o in zip(self._split(params, self.K), self._split(opt_state, self.K))]

    def _per_seed(self, train, test):
        key = (id(train), id(test))
        if getattr(self, "_data_key", None) != key:
            self._data = (self._split(train, self.K), self._split(test, self.K))
            self._data_key = key
        return self._data

    def compile(self, carry, train, test, key, evaluate: bool = True):
        tr, te = self._per_seed(train, test)
        key_one = jax.ShapeDtypeStruct(key.shape[1:], key.dtype)  # one seed's key
        t = self.one.compile(carry[0], tr[0], te[0], key_one, evaluate=evaluate)
        if self.one.fixed is not None:  # data order is fixed: each seed's minibatches once
            self.fixed = [self.one.batches(tr[k], _unused_key(key_one)) for k in range(self.K)]
        return t

    def _stack(self, ms):
        return {name: jnp.stack([m[name] for m in ms]) for name in ms[0]}

    def finish(self, carry, train, test):
        tr, te = self._per_seed(train, test)
        out = [self.one.finish(c, tr[k], te[k]) for k, c in enumerate(carry)]
        return [c for c, _ in out], self._stack([m for _, m in out])

    def epoch(self, carry, train, test, key, evaluate: bool = True):
        tr, te = self._per_seed(train, test)
        keys = self._split(key, self.K) if self.one.fixed is None else [None] * self.K
        new, ms = [], []
        for k, c in enumerate(carry):
            b = self.fixed[k] if self.one.fixed is not None else self.one.batches(tr[k], keys[k])
            c = self.one.updates(c, b)
            c, m = self.one.finish(c, tr[k], te[k]) if evaluate else self.one.finish_unevaluated(c)
            new.append(c)
            ms.append(m)
        return new, self._stack(ms)

    @staticmethod
    def alive(carry):
        return jnp.stack([c[2] for c in carry])

    @staticmethod
    def params(carry):
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[c[0] for c in carry])


#: evaluate on a second CPU device while the next epoch trains: "auto" (one seed on CPU with
#: at least two CPU devices, e.g. after ``jax.config.update("jax_num_cpu_devices", 2)``, which
#: ``stablebptt train`` does on multi-core machines), True (whenever two CPU devices exist) or
#: False. Same numbers either way; only the wall time changes.
OVERLAP_EVAL: bool | str = "auto"


class _OverlappedEvaluation:
    """Pipelined evaluation for one seed on CPU: after epoch e's updates, the parameters are
    copied to the second CPU device and evaluated there by a worker thread (XLA releases the
    GIL) while epoch e+1 trains on the first (the untrained controller: while epoch 1
    trains; the evaluation program compiles on that thread while the training programs
    compile). Measured on the 2-core machine: the cart-pole
    evaluation (17 ms) disappears from the 90 ms epoch. Epoch e's row is completed when its
    evaluation is collected (one epoch later, or after the last epoch); a non-finite
    evaluation marks the run diverged at e with the parameters that were evaluated, as the
    sequential loop does (the epoch trained meanwhile is discarded)."""

    def __init__(self, problem, static, device, train, test, params):
        from concurrent.futures import ThreadPoolExecutor

        from jax.sharding import SingleDeviceSharding

        self.device = device
        self.train, self.test = jax.device_put((train, test), device)
        sh = SingleDeviceSharding(device)
        p_abs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), params)
        ev = jax.jit(_make_evaluate(problem, static))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="stablebptt-eval")
        # compiles on the worker thread while the training programs compile on this one
        self.compiled = self.pool.submit(lambda: ev.lower(p_abs, self.train, self.test).compile())
        self.pending = None

    @staticmethod
    def device(K: int):
        """The second CPU device when :data:`OVERLAP_EVAL` applies to a run of K seeds, else None."""
        setting = OVERLAP_EVAL
        if setting is False or K != 1 or jax.default_backend() != "cpu":
            return None
        cpus = jax.devices("cpu")
        if len(cpus) < 2 or (setting == "auto" and (os.cpu_count() or 1) < 2):
            return None
        return cpus[1]

    def _submit(self, params):
        """Copy ``params`` to the second device and queue their evaluation there:
        ``(params there, future of (train_loss, test_loss))``."""
        p = jax.device_put(params, self.device)
        jax.block_until_ready(p)  # copied before the next update donates the buffers

        def run():
            tr, te = jax.device_get(self.compiled.result()(p, self.train, self.test))
            return float(tr), float(te)

        return p, self.pool.submit(run)

    def evaluate_untrained(self, params):
        """Future of (train_loss, test_loss) of the untrained ``params``: queued before epoch
        1's evaluation, it runs while epoch 1 trains."""
        return self._submit(params)[1]

    def launch(self, epoch: int, vals: dict, wall: float, params) -> None:
        p, fut = self._submit(params)
        self.pending = ((epoch, vals, wall, p), fut)

    def collect(self):
        """``((epoch, train-metrics, wall, params on the second device), (train_loss,
        test_loss))`` of the pending evaluation (waits for it), or None."""
        if self.pending is None:
            return None
        meta, fut = self.pending
        self.pending = None
        return meta, fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


#: the RunConfig fields in which the lanes of one program may differ (``train``'s
#: ``lane_configs``): the gradient flow (a :class:`stablebptt.flow.LaneFlow`), the learning
#: rate and the clipping (a :class:`stablebptt.optim.LaneSettings`); ``diagnostics`` changes
#: nothing there (lanes always compute cos/sign).
LANE_FIELDS = ("mode", "truncate", "decay", "lr", "clip", "clip_threshold", "diagnostics")


def lane_key(config: RunConfig) -> str:
    """Configs with the same key can be lanes of one program (see :data:`LANE_FIELDS`)."""
    import json

    d = config.to_dict()
    return json.dumps({k: v for k, v in d.items() if k not in LANE_FIELDS}, sort_keys=True, default=str)


def _lane_mismatch(a: RunConfig, b: RunConfig) -> list[str]:
    """The fields outside :data:`LANE_FIELDS` in which ``a`` and ``b`` differ (sorted)."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if k not in LANE_FIELDS and da[k] != db[k])


def check_lanes(lane_configs: Sequence[RunConfig], n: int) -> None:
    """Raise ValueError unless ``lane_configs`` are ``n`` configs that can share one program."""
    if len(lane_configs) != n:
        raise ValueError(f"lane_configs has {len(lane_configs)} configs for {n} seeds; give one config per seed")
    for i, c in enumerate(lane_configs):
        if c.and_mask:
            raise ValueError(f"lane_configs[{i}] has and_mask={c.and_mask}; lanes allow and_mask=0 only "
                             "(the AND-mask needs per-sample updates)")
    for i, c in enumerate(lane_configs[1:], 1):
        diff = _lane_mismatch(lane_configs[0], c)
        if diff:
            raise ValueError(f"lane_configs[{i}] differs from lane_configs[0] in {diff}; lanes of one program "
                             f"may differ only in {', '.join(LANE_FIELDS)}")


def train(problem: Problem, config: RunConfig, seeds: int | Sequence[int] = 0, *,
          on_epoch: Callable[[int, list[dict]], None] | None = None,
          data: tuple | None = None,
          lane_configs: Sequence[RunConfig] | None = None) -> list[TrainResult]:
    """Train one controller per seed; K > 1 seeds run as one ``vmap``-ed program on
    accelerators and seed after seed with the one-seed programs on CPU (faster there, see
    :data:`SEED_STRATEGY`); the results are the same either way.

    Args:
      problem: from :func:`stablebptt.problems.get`.
      config: the run configuration (its ``problem`` field is informational here).
      seeds: an int or a list of ints. A seed sets the initial weights and, with
        ``config.data == "seeded"``, the data.
      on_epoch: called after each epoch with (epoch, [per-seed metric dicts]); a dict is None
        for a seed that has diverged, and lacks train_loss/test_loss on epochs that were not
        evaluated (``config.eval_every``).
      data: optional ``(train, test)`` arrays overriding the sampler (same for all seeds).
      lane_configs: one config per seed, differing only in :data:`LANE_FIELDS` (mode,
        learning rate, clipping): all (config, seed) pairs then train as *lanes* of one
        vmapped program, the mode and settings of each as data (on CPU too). Made for
        accelerators, where a whole figure's configurations cost little more than one
        (docs/performance.md "Lanes"). Each lane's numbers equal its own run's up to float32
        round-off, not bit for bit (:func:`stablebptt.flow.lane_value_and_update`).
        ``config`` must share the lanes' other settings.

    Returns: one :class:`TrainResult` per seed (per lane), in order.
    """
    single = isinstance(seeds, (int, np.integer))
    seeds = [int(seeds)] if single else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    K = len(seeds)
    if lane_configs is not None:
        lane_configs = list(lane_configs)
        check_lanes(lane_configs, K)
        diff = _lane_mismatch(config, lane_configs[0])
        if diff:
            raise ValueError(f"config differs from lane_configs[0] in {diff}; the lanes' shared settings must "
                             "be config's (they may differ only in " + ", ".join(LANE_FIELDS) + ")")
        config = lane_configs[0]
    if config.init_weights and not os.path.isfile(config.init_weights):
        raise FileNotFoundError(f"init_weights={config.init_weights!r}: no such file (an .npz of controller weights)")
    datasets = [data if data is not None else make_data(problem, config, s) for s in seeds]
    for tr, te in datasets:
        for name, arr in (("train", tr), ("test", te)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} data contain non-finite values")
    n_train = datasets[0][0].shape[0]
    if config.batch_size > n_train:
        raise ValueError(f"batch_size={config.batch_size} is larger than the training set ({n_train})")
    x_probe = jnp.asarray(datasets[0][0][: config.batch_size])
    train_x = [jnp.asarray(d[0]) for d in datasets]
    test_x = [jnp.asarray(d[1]) for d in datasets]
    keys = [jax.random.PRNGKey(s + 1_000_003) for s in seeds]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    if K == 1:
        TR, TE, KEY = train_x[0], test_x[0], keys[0]
    else:
        TR, TE, KEY = stack(train_x), stack(test_x), stack(keys)
    epoch_key = lambda e: (jax.random.fold_in(KEY, e) if K == 1 else jax.vmap(lambda k: jax.random.fold_in(k, e))(KEY))
    shuffle_key = lambda e: epoch_key(e) if config.shuffle else None  # unused in fixed order
    if lane_configs is not None:
        make_stepper = lambda static: _Stepper(problem, config, static, n_train, K, lanes=lane_configs)
    else:
        make_stepper = lambda static: (_SeedLoop if K > 1 and _seed_strategy() == "loop" else _Stepper)(
            problem, config, static, n_train, K)

    # The controllers' initialisation compiles a program too (~0.3-0.7 s cold): it runs on a
    # worker thread while the training programs are traced and compiled from the controller's
    # abstract shapes (XLA releases the GIL, so both cores compile).
    from concurrent.futures import ThreadPoolExecutor

    def build_carry(ps):  # per-seed parameters -> the stepper's carry (with optimizer states)
        opt = [stepper.init_opt(p, k) for k, p in enumerate(ps)]
        return stepper.init_carry(ps[0], opt[0]) if K == 1 else stepper.init_carry(stack(ps), stack(opt))

    # With the evaluation overlapped on a second CPU device, every evaluation (the untrained
    # controller's included) runs there: its program compiles on its own thread beside the
    # training programs, and this device compiles no evaluating program.
    eval_device = _OverlappedEvaluation.device(K)
    overlap = None

    def prepare(static_, params_abs, carry_abs):  # carry_abs: () -> the carry's abstract shapes
        nonlocal stepper, overlap
        stepper = make_stepper(static_)
        if eval_device is not None:
            if overlap is not None:
                overlap.close()
            overlap = _OverlappedEvaluation(problem, static_, eval_device, TR, TE, params_abs)
        stepper.compile(carry_abs(), TR, TE, jax.eval_shape(lambda: epoch_key(1)), evaluate=overlap is None)

    try:  # the overlapped evaluator's thread is shut down however the run ends
        t0 = time.perf_counter()
        stepper = p_abs = static_abs = None
        with ThreadPoolExecutor(1) as pool:
            models_f = pool.submit(lambda: [make_model(problem, config, s) for s in seeds])
            early = _abstract_split(problem, config)
            if early is not None:
                p_abs, static_abs = early
                core.check_problem_inputs(eqx.combine(p_abs, static_abs), x_probe, problem.step, problem.horizon)
                prepare(static_abs, p_abs, lambda: jax.eval_shape(lambda p: build_carry([p] * K), p_abs))
            models = models_f.result()

        split = [eqx.partition(m, eqx.is_inexact_array) for m in models]
        static = split[0][1]
        params = [p for p, _ in split]
        if stepper is None or not _same_controller(static, params[0], static_abs, p_abs):
            # no abstract shapes, or the real controller differs from them (when it matches, the
            # check above on its abstract twin already covered it)
            core.check_problem_inputs(models[0], x_probe, problem.step, problem.horizon)
            prepare(static, params[0], lambda: jax.eval_shape(build_carry, params))
        compile_s = time.perf_counter() - t0  # tracing and compilation, the initialisation beside them
        want_stats = [c.flow().combined or c.diagnostics for c in (lane_configs or [config] * K)]
        # the carry as one small program (as eager ops, each distinct shape compiled its own
        # program: ~0.2 s at a cold start)
        carry = jax.jit(build_carry)(params)

        # loss of the untrained controllers: the evaluation program on the initial parameters
        # (overlapped: on the second device, while epoch 1 trains)
        if overlap is not None:
            initial_f = overlap.evaluate_untrained(params[0])
        else:
            probe = _copy_tree(carry)  # the finish program consumes its input
            _, M0 = jax.device_get(stepper.finish(probe, TR, TE))
            initial_f = None
            initial = [{"train_loss": float(np.atleast_1d(M0["train_loss"])[k]),
                        "test_loss": float(np.atleast_1d(M0["test_loss"])[k])} for k in range(K)]

        histories = [{k: [] for k in ("epoch", *METRICS, "wall_s")} for _ in range(K)]
        diverged_epoch: list[int | None] = [None] * K
        final_params = None  # set when an overlapped evaluation finds a divergence

        def row_values(M, k, names):
            return {name: float(np.atleast_1d(M[name])[k]) for name in names}

        def finite(vals):
            return all(np.isfinite(list(vals.values())))

        def published(vals, k=0):  # cos_mg / sign_agree are only meaningful when computed
            return vals if want_stats[k] else vals | {"cos_mg": float("nan"), "sign_agree": float("nan")}

        def record(k, e, vals, wall):
            h = histories[k]
            h["epoch"].append(e)
            for name in METRICS:
                h[name].append(vals[name])
            h["wall_s"].append(wall)

        train_names = tuple(m for m in METRICS if m not in EVAL_METRICS)

        def finish_overlapped() -> bool:
            """Complete the row of the pending overlapped evaluation; False if it diverged."""
            nonlocal final_params
            done = overlap.collect()
            if done is None:
                return True
            (pe, pvals, pwall, pparams), (tr_l, te_l) = done
            pvals = pvals | {"train_loss": tr_l, "test_loss": te_l}
            ok = finite(pvals)
            if ok:
                pvals = published(pvals)
                record(0, pe, pvals, pwall)
            else:
                diverged_epoch[0] = pe
                final_params = jax.device_put(pparams, jax.devices("cpu")[0])
            if on_epoch is not None:
                on_epoch(pe, [pvals if ok else None])
            return ok

        t_train = time.perf_counter()
        for e in range(1, config.epochs + 1):
            t = time.perf_counter()
            evaluated = e % config.eval_every == 0 or e == config.epochs
            if overlap is not None:
                # train epoch e on this device while epoch e-1 is evaluated on the other; the
                # epoch is dispatched first, so epoch e-1's row is completed (and on_epoch
                # called) as soon as its evaluation ends, while epoch e still trains
                carry, M = stepper.epoch(carry, TR, TE, shuffle_key(e), evaluate=False)
                if not finish_overlapped():
                    break
                M, alive_np = jax.device_get((M, stepper.alive(carry)))
                wall = time.perf_counter() - t
                vals = row_values(M, 0, train_names)
                if not bool(np.atleast_1d(alive_np)[0]) or not finite(vals):
                    diverged_epoch[0] = e
                    if on_epoch is not None:
                        on_epoch(e, [None])
                    break
                if evaluated:
                    overlap.launch(e, vals, wall, stepper.params(carry))
                elif on_epoch is not None:
                    on_epoch(e, [published(vals)])
                continue

            carry, M = stepper.epoch(carry, TR, TE, shuffle_key(e), evaluate=evaluated)
            M, alive_np = jax.device_get((M, stepper.alive(carry)))
            alive_np = np.atleast_1d(np.asarray(alive_np))
            wall = time.perf_counter() - t
            rows = []
            for k in range(K):
                if diverged_epoch[k] is not None:
                    rows.append(None)
                    continue
                vals = row_values(M, k, METRICS if evaluated else train_names)
                if not alive_np[k] or not finite(vals):
                    diverged_epoch[k] = e
                    rows.append(None)
                    continue
                vals = published(vals, k)
                if evaluated:
                    record(k, e, vals, wall)
                rows.append(vals)
            if on_epoch is not None:
                on_epoch(e, rows)
            if all(d is not None for d in diverged_epoch):
                break
        if overlap is not None and diverged_epoch[0] is None:
            finish_overlapped()  # the last epoch's evaluation
    finally:
        if overlap is not None:
            overlap.close()
    train_s = time.perf_counter() - t_train
    if initial_f is not None:  # done: the pool ran it before any epoch's evaluation
        tr0, te0 = initial_f.result()
        initial = [{"train_loss": tr0, "test_loss": te0}]

    P = stepper.params(carry) if final_params is None else final_params
    results = []
    for k, s in enumerate(seeds):
        pk = P if K == 1 else jax.tree_util.tree_map(lambda a: a[k], P)
        h = histories[k]
        if not want_stats[k]:
            h.pop("cos_mg")
            h.pop("sign_agree")
        results.append(TrainResult(
            seed=s, history=h, diverged=diverged_epoch[k] is not None, diverged_epoch=diverged_epoch[k],
            initial=initial[k], model=eqx.combine(pk, static), compile_s=compile_s, train_s=train_s))
    return results
