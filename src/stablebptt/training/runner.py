r"""The host loop: :func:`train` runs the pure functions of :func:`stablebptt.training.trainer.make_train`
epoch by epoch for one or more runs and turns their metrics into rows.

Runs are (config, seed) pairs. Those that differ only in their seed, or — as *lanes* — in mode,
learning rate or clipping (:data:`LANE_FIELDS`) share one program. How they execute is an
explicit choice (``batching``), recorded with the result:

* ``"vmap"``: one call per epoch for all runs, their states stacked (what accelerators want);
* ``"loop"``: the one-run program called for each run in turn (on a CPU each run's products
  are already as large as they get, and vmapping makes them batched products with a larger
  working set);
* ``"auto"``: vmap for lanes and on accelerators, loop for seeds on a CPU.

``overlap_eval=True`` evaluates on the second CPU device while the next epoch trains on the
first (JAX dispatches asynchronously; no threads): the same numbers, a row completed one epoch
later. It needs two CPU devices (``jax.config.update("jax_num_cpu_devices", 2)`` before JAX
starts; ``stablebptt train`` does this on multi-core machines).

An untrained controller whose loss is not finite stops ``train`` before it trains (with
overlapped evaluation: once the first epoch's updates are dispatched): a ValueError says at
which step its rollout first gives NaN or Inf (:func:`nonfinite_start_message`).

Rows. Every epoch ends with the mean minibatch ``loss``, ``update_norm``, ``cos_mg`` and
``sign_agree`` (the last two only where two fields are computed: C, diagnostics, lanes), and
with ``eval_every = k`` every k-th and the last epoch also with ``train_loss`` and
``test_loss``; only those are recorded. A non-finite loss, update or evaluation stops that run:
its parameters stay at the last finite state (for a non-finite evaluation: the parameters
evaluated), it is marked ``diverged`` at that epoch, and no row is written for the epoch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import problems
from ..core import backward as backward_mod
from ..core import rollout
from ..core.engine import MEASURE_BATCHES
from ..problems import Problem, controllers
from .config import RunConfig
from .trainer import TRAIN_METRICS, Trainer, init_params_fn, make_data, make_train, verify_controller, zero_last

METRICS = ("loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree")
#: the RunConfig fields in which runs sharing one program (lanes) may differ; ``diagnostics``
#: changes nothing there (lanes always compute both fields)
LANE_FIELDS = ("mode", "truncate", "decay", "lr", "clip", "clip_threshold", "diagnostics")
BATCHING = ("auto", "vmap", "loop")
#: XLA options of the controller-initialisation program on the CPU: it runs once per run,
#: and at LLVM's default level its random-number code takes longer to compile than to run
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1}


@dataclass
class TrainResult:
    """One run's outcome."""

    seed: int
    history: dict[str, list]  # metric -> values over recorded epochs (+ "epoch", "wall_s")
    diverged: bool
    diverged_epoch: int | None
    initial: dict[str, float]  # train/test loss of the untrained controller
    model: Any  # the trained controller (last finite parameters)
    compile_s: float  # this session's
    train_s: float  # seconds training, summed over the sessions of a resumed run (up to each one's checkpoint)
    ran: dict = field(default_factory=dict)  # what executed: backward strategy, batching, evaluation

    @property
    def epochs_done(self) -> int:
        return len(self.history["epoch"])

    def final(self, key: str = "test_loss") -> float:
        vals = self.history.get(key) or []
        return float(vals[-1]) if vals else float(self.initial.get(key, float("nan")))


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often the host loop saves its state, so that an interrupted training
    continues where it stopped and ends with the same numbers, bit for bit on the CPU.

    path: the ``.npz`` file (written atomically: a temporary sibling, then renamed). It holds
      the training state of every run (parameters, optimizer state, the divergence guard),
      the rows so far, the last complete epoch and the seconds spent training up to it (a
      resumed run's ``train_s`` adds them); the per-epoch keys are derived from the seed and
      the epoch, so nothing else is needed.
    every_s: seconds between saves (0: after every epoch).
    metrics: one CSV path per run, rewritten at every save (the rows so far), or None.
    """

    path: Path
    every_s: float = 30.0
    metrics: Sequence[Path] | None = None
    #: the strategy the runs use (``strategy_spec``), set by ``train``; saved with the state
    backward: dict | None = None
    #: what identifies the problem's code (:func:`stablebptt.problems.code_identity`), saved with
    #: the state: a checkpoint saved with other code is refused (None: not checked)
    code: dict | None = None


def lane_key(config: RunConfig) -> str:
    """Configs with the same key can be lanes of one program (see :data:`LANE_FIELDS`)."""
    d = config.to_dict()
    return json.dumps({k: v for k, v in d.items() if k not in LANE_FIELDS}, sort_keys=True, default=str)


def check_lanes(config: RunConfig, lane_configs: Sequence[RunConfig], n: int) -> None:
    """Raise ValueError unless ``lane_configs`` are ``n`` configs that can share ``config``'s program."""
    if len(lane_configs) != n:
        raise ValueError(f"lane_configs has {len(lane_configs)} configs for {n} seeds; give one config per seed")
    for i, c in enumerate(lane_configs):
        if c.and_mask:
            raise ValueError(
                f"lane_configs[{i}] has and_mask={c.and_mask}; lanes allow and_mask=0 only "
                "(the AND-mask needs per-sample updates)"
            )
    for i, c in enumerate(lane_configs):
        diff = sorted(k for k, v in c.to_dict().items() if k not in LANE_FIELDS and v != config.to_dict()[k])
        if diff:
            who = "config" if i == 0 else f"lane_configs[{i}]"
            raise ValueError(
                f"{who} differs from {'lane_configs[0]' if i == 0 else 'config'} in {diff}; lanes of "
                f"one program may differ only in {', '.join(LANE_FIELDS)}"
            )


@dataclass
class _Run:
    """Host-side record of one run."""

    config: RunConfig
    seed: int
    train: Any
    test: Any
    key: Any
    history: dict = field(default_factory=lambda: {k: [] for k in ("epoch", *METRICS, "wall_s")})
    initial: dict = field(default_factory=dict)
    diverged_epoch: int | None = None
    final_params: Any = None  # set when a non-finite evaluation stopped the run


@dataclass
class _Group:
    """Runs executed by one program call: ``idx`` into the runs, their state (stacked if vmapped)."""

    idx: list[int]
    state: Any
    vmapped: bool
    train: Any
    test: Any
    eval_data: Any  # (train, test) on the evaluating device
    metrics: Any = None
    pending: list = field(default_factory=list)  # evaluations dispatched, not yet collected


def train(
    problem: Problem,
    config: RunConfig,
    seeds: int | Sequence[int] = 0,
    *,
    on_epoch: Callable[[int, list], None] | None = None,
    data: tuple | None = None,
    lane_configs: Sequence[RunConfig] | None = None,
    batching: str = "auto",
    overlap_eval: bool = False,
    checkpoint: Checkpoint | None = None,
) -> list[TrainResult]:
    """Train one controller per seed (or per lane) and return one :class:`TrainResult` each.

    Args:
      problem: from :func:`stablebptt.problems.get`; it must be the problem ``config`` names, with
        its parameters (:func:`stablebptt.problems.check_matches`: a clear error otherwise).
      config: the run configuration.
      seeds: an int or a list; a seed sets the initial weights and, with ``data="seeded"``, the data.
      on_epoch: called after each epoch as ``on_epoch(epoch, rows)``: one dict per run (None for a
        run that has diverged; without train_loss/test_loss on epochs not evaluated).
      data: ``(train, test)`` arrays for every run instead of the problem's sampler.
      lane_configs: one config per seed, differing from ``config`` only in :data:`LANE_FIELDS`:
        the runs train as lanes of one program. A lane equals its own run up to float32
        round-off (its flow is data and it always computes two fields).
      batching: ``"auto"``, ``"vmap"`` or ``"loop"`` (module docstring).
      overlap_eval: evaluate on the second CPU device while the next epoch trains.
      checkpoint: save the state periodically (:class:`Checkpoint`); if its file exists and
        belongs to these runs, training continues from it (``ran["resumed_from_epoch"]``).
    """
    problems.check_matches(problem, config.problem, config.problem_params)
    runs = _runs(problem, config, seeds, data, lane_configs)
    if batching not in BATCHING:
        raise ValueError(f"batching={batching!r}; allowed: {', '.join(BATCHING)}")
    vmapped = batching == "vmap" or (
        batching == "auto" and (lane_configs is not None or jax.default_backend() != "cpu")
    )
    eval_device = _eval_device(overlap_eval)
    t0 = time.perf_counter()
    if checkpoint is not None:
        _check_checkpoint_code(checkpoint)
    # a resumed run continues with the strategy that ran (backward="auto" is not measured again)
    resumed_backward = _checkpoint_backward(checkpoint) if checkpoint is not None else None
    # The trainer and its programs, traced from abstract shapes (float32 matmuls at full precision
    # on every backend) and compiled on two threads (XLA compiles without the GIL), each as soon as
    # it is traced: init_params first (it compiles while make_train chooses a backward strategy),
    # then updates on a thread of its own (the largest), evaluate and init — the last three vmapped
    # over the runs of a vmapped group.
    lead = (len(runs),) if vmapped else ()
    v = jax.vmap if vmapped else (lambda f: f)
    key = runs[0].key
    ev = jax.sharding.SingleDeviceSharding(eval_device) if eval_device is not None else None
    cpu_opts = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    n_runs = len(runs) if vmapped else 1
    probe = _probe(runs[0].train, config.batch_size)
    compile_s_of: dict[str, float] = {}

    def updates_args(trainer, settings):  # the abstract arguments of the epoch program
        state = jax.eval_shape(trainer.init, trainer.params_shape, settings)
        return _abstract(state, lead), _abstract(runs[0].train, lead), _abstract(key, lead)

    def timed_compile(lowered):  # its seconds count in compile_s_of (a choice after epoch 1 reads them)
        t = time.perf_counter()
        out = lowered.compile()
        compile_s_of["updates"] += time.perf_counter() - t
        return out

    with jax.default_matmul_precision("highest"), ThreadPoolExecutor(1) as main, ThreadPoolExecutor(1) as side:
        futures = {
            "init_params": side.submit(
                jax.jit(init_params_fn(problem, zero_last(problem, config))).lower(key).compile, cpu_opts
            )
        }
        trainer = make_trainer(
            problem, config, lane_configs, n_runs=n_runs, backward=resumed_backward, probe=probe, verify_rows=False
        )
        settings = trainer.settings(runs[0].config.flow(), runs[0].config.optimizer_setting())
        t_lower = time.perf_counter()
        lowered = jax.jit(v(trainer.updates), donate_argnums=0).lower(*updates_args(trainer, settings))
        compile_s_of["updates"] = time.perf_counter() - t_lower
        futures["updates"] = main.submit(timed_compile, lowered)
        verified = side.submit(verify_controller, trainer, problem, config.batch_size)  # before any run starts
        futures["evaluate"] = side.submit(
            jax.jit(v(trainer.evaluate))
            .lower(
                _abstract(trainer.params_shape, lead, ev),
                _abstract(runs[0].train, lead, ev),
                _abstract(runs[0].test, lead, ev),
            )
            .compile
        )
        futures["init"] = side.submit(
            jax.jit(v(trainer.init)).lower(_abstract(trainer.params_shape, lead), _abstract(settings, lead)).compile,
            cpu_opts,
        )
        verified.result()
        programs = {k: f.result() for k, f in futures.items()}
    groups = _initial_groups(trainer, programs, runs, vmapped, eval_device)
    if checkpoint is not None:
        checkpoint = dataclasses.replace(checkpoint, backward=strategy_spec(trainer.backward))
    start, train_s_before = _restore(checkpoint, groups, runs, trainer) if checkpoint is not None else (0, 0.0)
    try:
        for g in groups if start == 0 else ():  # the untrained controllers (overlapped: while epoch 1 trains)
            _dispatch_eval(g, programs, 0, {}, t0, eval_device)
            if eval_device is None:
                _collect(g, runs, False)
        compile_s = time.perf_counter() - t0
        t_train = time.perf_counter()
        first = start + 1
        if trainer.settle is not None:  # backward="auto" chooses once its first candidate has run an epoch
            timings: list[float] = []
            _loop(
                config,
                programs,
                groups,
                runs,
                eval_device is not None,
                eval_device,
                on_epoch,
                first,
                None,
                train_s_before,
                stop=first,
                timings=timings,
            )
            per_update = timings[0] / max(len(runs) * (config.n_train // config.batch_size), 1) if timings else 0.0
            left = (config.epochs - first) * (config.n_train // config.batch_size) * len(runs) / n_runs
            if timings:
                strategy, choice = trainer.settle(per_update, compile_s_of["updates"], left)
            else:  # every run diverged before an epoch was timed: the first candidate stays, nothing is cached
                strategy, choice = trainer.backward, trainer.backward_choice | {"pending": False}
            if strategy != trainer.backward:
                t_switch = time.perf_counter()
                choice = choice | {"first_epoch": repr(trainer.backward)}
                trainer = make_trainer(
                    problem, config, lane_configs, n_runs=n_runs, backward=strategy, probe=probe, verify_rows=False
                )
                with jax.default_matmul_precision("highest"):
                    programs["updates"] = (
                        jax.jit(v(trainer.updates), donate_argnums=0).lower(*updates_args(trainer, settings)).compile()
                    )
                choice["switch_s"] = round(time.perf_counter() - t_switch, 3)
            trainer = trainer._replace(backward_choice=choice, settle=None)
            if checkpoint is not None:
                checkpoint = dataclasses.replace(checkpoint, backward=strategy_spec(trainer.backward))
            first += 1
        _loop(
            config,
            programs,
            groups,
            runs,
            eval_device is not None,
            eval_device,
            on_epoch,
            first,
            checkpoint,
            train_s_before + time.perf_counter() - t_train,
        )
    except _NonFiniteStart as e:
        raise ValueError(
            nonfinite_start_message(problem, eqx.combine(e.params, trainer.static), runs[e.index], config.batch_size)
        ) from None
    train_s = train_s_before + time.perf_counter() - t_train
    choice = trainer.backward_choice | ({"from_checkpoint": True} if resumed_backward is not None else {})
    ran = {
        "backward": repr(trainer.backward),
        "backward_choice": choice,
        "batching": "vmap" if vmapped else "loop",
        "evaluation": "second CPU device" if eval_device is not None else "after the updates",
        "lanes": lane_configs is not None,
    } | ({"resumed_from_epoch": start} if start else {})
    return _results(trainer, groups, runs, compile_s, train_s, ran)


def _runs(problem, config, seeds, data, lane_configs) -> list[_Run]:
    """Validated runs with their data and keys."""
    seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if lane_configs is not None:
        check_lanes(config, list(lane_configs), len(seeds))
    if config.init_weights:
        controllers.weights_file(config.init_weights)  # a missing file or folder: named before anything compiles
    runs = []
    for i, s in enumerate(seeds):
        tr, te = data if data is not None else make_data(problem, config, s)
        for name, arr in (("train", tr), ("test", te)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} data contain non-finite values")
        if config.batch_size > tr.shape[0]:
            raise ValueError(f"batch_size={config.batch_size} is larger than the training set ({tr.shape[0]})")
        runs.append(
            _Run(
                lane_configs[i] if lane_configs is not None else config,
                s,
                np.asarray(tr),
                np.asarray(te),
                jax.random.PRNGKey(s + 1_000_003),
            )
        )
    return runs


def _eval_device(overlap: bool):
    """The second CPU device for an overlapped evaluation, or None."""
    if not overlap:
        return None
    cpus = jax.devices("cpu") if jax.default_backend() == "cpu" else []
    if len(cpus) < 2:
        found = f"{len(cpus)} CPU device(s)" if cpus else f"a {jax.default_backend()} backend"
        raise ValueError(
            "overlap_eval=True needs two CPU devices: call jax.config.update('jax_num_cpu_devices', 2) "
            f"before JAX starts (found {found})"
        )
    return cpus[1]


def _stack(trees):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def _abstract(tree, lead=(), sharding=None):
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(lead + tuple(np.shape(a)), jnp.result_type(a), sharding=sharding), tree
    )


def make_trainer(
    problem: Problem,
    config: RunConfig,
    lane_configs: Sequence[RunConfig] | None = None,
    *,
    n_runs: int = 1,
    backward=None,
    probe=None,
    verify_rows: bool = True,
) -> Trainer:
    """:func:`~stablebptt.training.trainer.make_train` with the values of a run configuration (and its
    lanes, which differ from it in :data:`LANE_FIELDS` only). ``n_runs``: runs that one call
    carries (they share the memory budget); ``backward``: a strategy that replaces
    ``config.backward`` (a resumed run's); ``probe``: states (k, batch_size, …) on which
    ``backward="auto"`` times its candidates."""
    return make_train(
        problem,
        config.flow(),
        config.optimizer_setting(),
        batch_size=config.batch_size,
        backward=config.backward if backward is None else backward,
        shuffle=config.shuffle,
        diagnostics=config.diagnostics,
        zero_last=zero_last(problem, config),
        lanes=[(c.flow(), c.optimizer_setting()) for c in lane_configs] if lane_configs else None,
        checkpoint_every=config.checkpoint_every,
        memory_budget=config.memory_budget,
        n_runs=n_runs,
        updates=config.epochs * (config.n_train // config.batch_size),
        verify_rows=verify_rows,
        probe=probe,
    )


def _probe(train: np.ndarray, batch_size: int) -> np.ndarray:
    """The first minibatches of a training set, (k, batch_size, …): what the candidate
    strategies of ``backward="auto"`` are timed on (k = ``core.engine.MEASURE_BATCHES`` or fewer)."""

    k = max(min(MEASURE_BATCHES, train.shape[0] // batch_size), 1)
    return train[: k * batch_size].reshape((k, batch_size) + train.shape[1:])


def _initial_groups(trainer: Trainer, programs: dict, runs: list[_Run], vmapped: bool, eval_device) -> list[_Group]:
    """The groups with their initial states (each run's controller from the compiled
    initialiser, its optional weights, its optimizer) and data on the devices."""
    params = []
    for r in runs:
        p = programs["init_params"](jax.random.PRNGKey(r.seed))
        if r.config.init_weights:
            model = controllers.load_weights(
                eqx.combine(p, trainer.static), controllers.weights_file(r.config.init_weights)
            )
            p = eqx.filter(model, eqx.is_inexact_array)
        params.append(p)
    settings = [trainer.settings(r.config.flow(), r.config.optimizer_setting()) for r in runs]
    groups = []
    for idx in [list(range(len(runs)))] if vmapped else [[i] for i in range(len(runs))]:
        pick = (lambda xs: _stack([xs[i] for i in idx])) if vmapped else (lambda xs: xs[idx[0]])
        data = tuple(jnp.asarray(pick([getattr(r, name) for r in runs])) for name in ("train", "test"))
        groups.append(
            _Group(  # type: ignore[misc]  # data is (train, test): eval_data is not among them
                idx,
                programs["init"](pick(params), pick(settings)),
                vmapped,
                *data,  # type: ignore[arg-type]
                eval_data=jax.device_put(data, eval_device) if eval_device is not None else data,
            )
        )
    return groups


def _dispatch_eval(g: _Group, programs: dict, epoch: int, rows: dict, t_start: float, eval_device) -> None:
    """Queue the evaluation of the group's current parameters (a copy: the next update donates them)."""
    if eval_device is not None:
        params = jax.block_until_ready(jax.device_put(g.state.params, eval_device))
    else:
        params = jax.tree_util.tree_map(jnp.copy, g.state.params)
    g.pending.append((epoch, rows, t_start, params, programs["evaluate"](params, *g.eval_data)))


class _NonFiniteStart(Exception):
    """The untrained controller of run ``index`` (parameters ``params``) has a non-finite loss."""

    def __init__(self, index: int, params):
        super().__init__(index)
        self.index, self.params = index, params


def first_nonfinite(model, states: np.ndarray, problem: Problem, batch_size: int) -> dict | None:
    """Where a forward rollout of ``model`` on ``states`` first gives a non-finite value,
    minibatch by minibatch (``batch_size`` states each, in order): ``{"batch": k (1-based),
    "step": n (1 … horizon), "what": "state" | "control", "value": "NaN" | "Inf"}``, or None
    when every state and control is finite. Step n's control is the controller's output on the
    state after step n−1; its state is the simulator's output on that state and control."""

    def scan(x0):
        xs, cs = rollout(model, x0, step=problem.step, horizon=problem.horizon)

        def per_step(tree):  # (finite, any NaN) per step
            leaves = [a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(tree)]
            return (
                jnp.stack([jnp.all(jnp.isfinite(a), 1) for a in leaves]).all(0),
                jnp.stack([jnp.any(jnp.isnan(a), 1) for a in leaves]).any(0),
            )

        (fx, nx), (fc, nc) = per_step(xs), per_step(cs)
        return fx[1:], nx[1:], fc, nc  # index n-1: step n

    with jax.default_matmul_precision("highest"):
        fn = jax.jit(scan)
        for k in range(max(states.shape[0] // batch_size, 1)):
            fx, nx, fc, nc = jax.device_get(fn(jnp.asarray(states[k * batch_size : (k + 1) * batch_size])))
            bad_x = int(np.argmin(fx)) if not fx.all() else None
            bad_c = int(np.argmin(fc)) if not fc.all() else None
            if bad_x is None and bad_c is None:
                continue
            if bad_c is not None and (bad_x is None or bad_c <= bad_x):
                return {"batch": k + 1, "step": bad_c + 1, "what": "control", "value": "NaN" if nc[bad_c] else "Inf"}
            return {"batch": k + 1, "step": bad_x + 1, "what": "state", "value": "NaN" if nx[bad_x] else "Inf"}  # type: ignore[operator]  # not None here
    return None


def nonfinite_start_message(problem: Problem, model, run: _Run, batch_size: int) -> str:
    """One line for an untrained controller whose loss is not finite: its losses and the first
    step at which the rollout of the training set (minibatch by minibatch), else of the test
    set, is not finite (:func:`first_nonfinite`)."""
    head = (
        f"the untrained controller's loss is {run.initial['train_loss']:.4g} on the training set and "
        f"{run.initial['test_loss']:.4g} on the test set (seed {run.seed}), nothing was trained"
    )
    for name, states in (("training", run.train), ("test", run.test)):
        hit = first_nonfinite(model, states, problem, batch_size)
        if hit is None:
            continue
        where = f"of {problem.horizon}, minibatch {hit['batch']} of the {name} set"
        if hit["what"] == "control":
            return (
                f"{head}: the controller first produced {hit['value']} at step {hit['step']} {where} (from a "
                "finite state); check the states the problem's data and step produce"
            )
        return (
            f"{head}: the simulator first produced {hit['value']} at step {hit['step']} {where} (from a finite "
            "state and control); check the problem's step function"
        )
    return (
        f"{head}: every state and control of the rollout is finite, the loss is not; check the problem's "
        "loss (TrajectoryLoss)"
    )


def _collect(g: _Group, runs: list[_Run], overlap: bool) -> dict[int, dict]:
    """Complete the rows of the group's pending evaluations: {epoch: {run index: row or None}};
    an epoch 0 evaluation sets the runs' untrained losses (a non-finite one raises
    :class:`_NonFiniteStart`). A non-finite loss stops the run at that epoch with the
    parameters evaluated."""
    out: dict[int, dict] = {}
    while g.pending:
        epoch, rows, t_start, params, (tr, te) = g.pending.pop(0)
        tr, te = np.atleast_1d(np.asarray(tr)), np.atleast_1d(np.asarray(te))
        for j, i in enumerate(g.idx):
            run, row = runs[i], rows.get(i)
            if epoch == 0:
                run.initial = {"train_loss": float(tr[j]), "test_loss": float(te[j])}
                if not (np.isfinite(tr[j]) and np.isfinite(te[j])):
                    raise _NonFiniteStart(i, jax.tree_util.tree_map(lambda a: a[j], params) if g.vmapped else params)
            elif row is not None:
                row = {k: v for k, v in row.items() if k != "_wall"} | {
                    "train_loss": float(tr[j]),
                    "test_loss": float(te[j]),
                }
                if np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"]):
                    _record(run, epoch, row, rows[i]["_wall"] if overlap else time.perf_counter() - t_start)
                else:
                    run.diverged_epoch, row = epoch, None
                    run.final_params = jax.tree_util.tree_map(lambda a: a[j], params) if g.vmapped else params
                    alive = g.state.alive.at[j].set(False) if g.vmapped else jnp.bool_(False)
                    g.state = g.state._replace(alive=alive)
                out.setdefault(epoch, {})[i] = row
            elif i in rows:  # diverged in this epoch's training
                out.setdefault(epoch, {})[i] = None
    return out


def _record(run: _Run, epoch: int, row: dict, wall: float) -> None:
    h = run.history
    h["epoch"].append(epoch)
    for name in METRICS:
        h[name].append(row[name])
    h["wall_s"].append(wall)


def _train_rows(g: _Group, runs: list[_Run], metrics: dict, alive, epoch: int, t_start: float) -> dict:
    """{run index: the epoch's training metrics, or None where the run diverged in this epoch}."""
    out: dict[int, dict[str, float] | None] = {}
    alive = np.atleast_1d(np.asarray(alive))
    for j, i in enumerate(g.idx):
        run = runs[i]
        if run.diverged_epoch is not None:
            continue
        row = {k: float(np.atleast_1d(metrics[k])[j]) for k in TRAIN_METRICS}
        if not alive[j] or not all(np.isfinite(v) for k, v in row.items() if k in ("loss", "update_norm")):
            run.diverged_epoch = epoch
            out[i] = None
            continue
        out[i] = row | {"_wall": time.perf_counter() - t_start}
    return out


def _loop(
    config: RunConfig,
    programs: dict,
    groups: list[_Group],
    runs: list[_Run],
    overlap: bool,
    eval_device,
    on_epoch,
    start: int = 1,
    checkpoint: Checkpoint | None = None,
    train_s_before: float = 0.0,
    stop: int | None = None,
    timings: list | None = None,
) -> None:
    """Epochs ``start`` … ``stop`` (default E): every group's updates dispatched, then its rows
    (``timings``: gets the seconds of each epoch's updates, all groups). With ``overlap``
    the evaluation of epoch e runs on the second device while epoch e+1 trains, so an evaluated
    epoch's rows are completed (and reported) one epoch later. A checkpoint is saved after an
    epoch whose rows are all complete (a pending evaluation is waited for first), with the
    training time so far (``train_s_before``: of the sessions before this one)."""

    def report(done: dict[int, dict]) -> None:
        for e in sorted(done):
            if e > 0 and on_epoch is not None:
                on_epoch(e, [_published(runs[i], done[e].get(i)) for i in range(len(runs))])

    saved = t_loop = time.perf_counter()
    for e in range(start, (config.epochs if stop is None else min(stop, config.epochs)) + 1):
        t_start = time.perf_counter()
        evaluated = e % config.eval_every == 0 or e == config.epochs
        live = [g for g in groups if any(runs[i].diverged_epoch is None for i in g.idx)]
        if not live:
            break
        for g in live:
            keys = [jax.random.fold_in(runs[i].key, e) if config.shuffle else runs[i].key for i in g.idx]
            g.state, g.metrics = programs["updates"](g.state, g.train, _stack(keys) if g.vmapped else keys[0])
        done: dict[int, dict] = {}
        for g in live:
            if overlap:  # the rows evaluated while this epoch trained
                _merge(done, _collect(g, runs, overlap))
            metrics, alive = jax.device_get((g.metrics, g.state.alive))
            if timings is not None and g is live[-1]:
                timings.append(time.perf_counter() - t_start)
            rows = _train_rows(g, runs, metrics, alive, e, t_start)
            if evaluated:
                _dispatch_eval(g, programs, e, rows, t_start, eval_device)
                if not overlap:
                    _merge(done, _collect(g, runs, overlap))
            else:
                _merge(done, {e: {i: r and {k: v for k, v in r.items() if k != "_wall"} for i, r in rows.items()}})
        if checkpoint is not None and e < config.epochs and time.perf_counter() - saved >= checkpoint.every_s:
            for g in live:  # complete every row up to epoch e first
                _merge(done, _collect(g, runs, overlap))
            _save(checkpoint, e, groups, runs, train_s_before + time.perf_counter() - t_loop)
            saved = time.perf_counter()
        report(done)
    done = {}
    for g in groups:  # the last evaluation (overlapped)
        _merge(done, _collect(g, runs, overlap))
    report(done)


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C (SIGINT) while the block runs and raise :class:`KeyboardInterrupt` after it.

    Files are written to a temporary name and renamed, so an interrupt cannot leave a torn file;
    but ``np.savez`` interrupted inside its zip writer raises ``ValueError`` ("Can't close the
    ZIP file while there is an open writing handle") instead of ``KeyboardInterrupt``, which a
    command would report as bad input. Writes of checkpoints and results run in this block.
    Only the main thread can receive signals, and only Python's default handler is replaced:
    elsewhere, or with SIGINT ignored or handled by someone else, the block runs unchanged.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def write_metrics(path: Path, history: dict) -> None:
    """One run's rows as CSV (columns: the history's keys), written atomically."""

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    cols = list(history)
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(len(history["epoch"])):
            w.writerow([history[c][i] for c in cols])
    os.replace(tmp, path)


def _signature(groups: list[_Group], runs: list[_Run]) -> str:
    """What a checkpoint belongs to: the runs (config, seed) and how they are grouped."""

    blob = json.dumps(
        {
            "runs": [[r.config.to_dict(), r.seed] for r in runs],
            "groups": [g.idx for g in groups],
            "vmapped": [g.vmapped for g in groups],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def strategy_spec(strategy) -> dict:
    """A backward strategy as JSON-able data: ``{"type": class name, "options": fields}``."""

    return {"type": type(strategy).__name__, "options": dataclasses.asdict(strategy)}


def strategy_from_spec(spec: dict):
    """The strategy of :func:`strategy_spec`'s data."""

    cls = {c.__name__: c for c in (backward_mod.Autodiff, backward_mod.ReverseSweep)}.get(spec.get("type"))  # type: ignore[arg-type]  # None: no class
    if cls is None:
        raise ValueError(f"unknown backward strategy {spec.get('type')!r} in a checkpoint")
    return cls(**spec.get("options", {}))


def _checkpoint_meta(ck: Checkpoint) -> dict | None:
    """The metadata saved in the checkpoint file, or None (no file, or one that cannot be read:
    :func:`_restore` names the problem with it)."""
    path = Path(ck.path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError):
        return None


def _check_checkpoint_code(ck: Checkpoint) -> None:
    """Raise ValueError when the checkpoint was saved with other problem code than ``ck.code``."""
    meta = _checkpoint_meta(ck)
    change = problems.describe_code_change((meta or {}).get("code"), ck.code, f"the checkpoint {ck.path} was saved")
    if change:
        raise ValueError(
            f"{change}; --restart (restart=True) starts the run over with the new code, or choose another --out"
        )


def _checkpoint_backward(ck: Checkpoint):
    """The strategy saved in the checkpoint file, or None (no file, or a file without one)."""
    path = Path(ck.path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            spec = json.loads(str(f["meta"])).get("backward")
    except (OSError, ValueError, KeyError):
        return None  # _restore names the problem with the file
    return strategy_from_spec(spec) if spec else None


def _save(ck: Checkpoint, epoch: int, groups: list[_Group], runs: list[_Run], train_s: float = 0.0) -> None:
    """Write the checkpoint after ``epoch`` (all its rows complete), with the seconds spent
    training epochs 1 … ``epoch`` (``train_s``, summed over sessions), atomically."""
    arrays = {}
    for k, g in enumerate(groups):
        for i, leaf in enumerate(jax.tree_util.tree_leaves(jax.device_get(g.state))):
            arrays[f"state{k}_{i}"] = np.asarray(leaf)
    for j, r in enumerate(runs):
        for i, leaf in enumerate(
            jax.tree_util.tree_leaves(jax.device_get(r.final_params if r.final_params is not None else {}))
        ):
            arrays[f"final{j}_{i}"] = np.asarray(leaf)
    meta = {
        "epoch": epoch,
        "train_s": float(train_s),
        "signature": _signature(groups, runs),
        "backward": ck.backward,
        "code": ck.code,
        "runs": [
            {
                "history": r.history,
                "initial": r.initial,
                "diverged_epoch": r.diverged_epoch,
                "final": r.final_params is not None,
            }
            for r in runs
        ],
    }
    path = Path(ck.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    with sigint_deferred():
        np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)  # type: ignore[arg-type]  # numpy's stub: a ** dict might hold allow_pickle
        os.replace(tmp, path)
        for r, m in zip(runs, ck.metrics or ()):
            write_metrics(m, r.history)


def _restore(ck: Checkpoint, groups: list[_Group], runs: list[_Run], trainer: Trainer) -> tuple[int, float]:
    """Load a checkpoint of these runs into the groups and runs; (the last complete epoch, the
    seconds spent training up to it), (0, 0.0) without one."""
    path = Path(ck.path)
    if not path.is_file():
        return 0, 0.0
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        if meta["signature"] != _signature(groups, runs):
            raise ValueError(
                f"checkpoint {path} belongs to other runs or another grouping; remove it (or "
                "use --restart) to start these runs over"
            )
        for k, g in enumerate(groups):
            leaves, treedef = jax.tree_util.tree_flatten(g.state)
            g.state = jax.tree_util.tree_unflatten(
                treedef, [jnp.asarray(f[f"state{k}_{i}"], dtype=leaf.dtype) for i, leaf in enumerate(leaves)]
            )
        p_leaves, p_def = jax.tree_util.tree_flatten(trainer.params_shape)
        for j, (r, m) in enumerate(zip(runs, meta["runs"])):
            r.history, r.initial, r.diverged_epoch = m["history"], m["initial"], m["diverged_epoch"]
            if m["final"]:
                r.final_params = jax.tree_util.tree_unflatten(
                    p_def, [jnp.asarray(f[f"final{j}_{i}"]) for i in range(len(p_leaves))]
                )
    return int(meta["epoch"]), float(meta.get("train_s", 0.0))


def _merge(into: dict, more: dict) -> None:
    for e, rows in more.items():
        into.setdefault(e, {}).update(rows)


def _published(run: _Run, row: dict | None) -> dict | None:
    """A row as on_epoch sees it (cos/sign only where computed)."""
    if row is None:
        return None
    return row if _two_fields(run.config) else row | {"cos_mg": float("nan"), "sign_agree": float("nan")}


def _two_fields(config: RunConfig) -> bool:
    return config.flow().combined or config.diagnostics


def _results(
    trainer: Trainer, groups: list[_Group], runs: list[_Run], compile_s: float, train_s: float, ran: dict
) -> list[TrainResult]:
    out: list = [None] * len(runs)  # each entry set below
    for g in groups:
        params = g.state.params
        for j, i in enumerate(g.idx):
            run = runs[i]
            p = (
                run.final_params
                if run.final_params is not None
                else (jax.tree_util.tree_map(lambda a: a[j], params) if g.vmapped else params)
            )
            h = dict(run.history)
            if not _two_fields(run.config):
                h.pop("cos_mg")
                h.pop("sign_agree")
            out[i] = TrainResult(
                run.seed,
                h,
                run.diverged_epoch is not None,
                run.diverged_epoch,
                run.initial,
                eqx.combine(p, trainer.static),
                compile_s,
                train_s,
                dict(ran),
            )
    return out
