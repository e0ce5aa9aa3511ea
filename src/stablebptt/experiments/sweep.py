"""Sweeps: problems × complexity levels × modes × clipping × optimizer settings × seeds.

A sweep is plain data, written as TOML or YAML (the paper's figures: ``experiments/paper/specs/``
in the repository; the complexity ladder: ``experiments/ladder/specs/``)::

    name = "my-cartpole"
    seeds = 5                      # or a list: [0, 1, 2]

    [[experiment]]
    problem = "cartpole"
    level = { poles = [1, 2, 3, 4] }          # the complexity axis (one panel per value)
    modes = ["R", "M", "C", "S"]
    clips = ["none", "value", "norm"]
    optimizers = [{ optimizer = "adam", lr = 1e-3 }]
    problem_params = {}                        # fixed problem parameters
    [experiment.config]                        # any other RunConfig field
    epochs = 1000
    data = "seeded"                            # the default in sweeps ("paper": the authors' seed-42 data)

The whole spec is validated before any work starts; a bad field names itself.
:func:`expand` turns it into jobs ``(RunConfig, seed)``; :func:`run_sweep` runs the missing
ones with an executor and returns a report. Each job is ``stablebptt.experiments.run.run(config, seed,
root)``: it writes exactly one folder named by the hash of (config, seed), atomically, so a
sweep that is interrupted (Ctrl-C, SIGKILL) resumes with nothing lost and nothing
duplicated, and a finished job is never recomputed. Diverged runs are results too. A finished
job whose problem code has changed since (an edited problem file,
:func:`stablebptt.experiments.run.code_change`) stops the sweep before any work, with one line naming the
file: its old numbers are not counted as done.

Executors:

* ``local`` (default): a ``spawn`` process pool, one XLA process per core (an XLA:CPU process
  keeps more than one core busy through its intra-op pool, so a second worker adds less than
  ×2; benchmarks/bench_cores.py measures it). Workers share the persistent compilation cache
  folder they are given (``cache_dir``; the CLI passes ``stablebptt train``'s), and jobs are
  queued seed-major, so the seeds after the first of a config load its compiled programs
  instead of compiling them again. Killed sweep -> killed workers (``PR_SET_PDEATHSIG``);
  Ctrl-C stops at once.
* ``serial``: everything in this process (multi-threaded XLA).
* ``ray``: the same ``run(config, seed, root)`` as Ray tasks (``pip install "stablebptt[ray]"``;
  ``address=None`` starts a local cluster, ``"auto"`` or ``"ray://…"`` joins one).

``vmap_seeds=True`` batches jobs that differ only in their seed into one vmapped program;
``vmap_configs=True`` also those that differ in mode, learning rate or clipping (lanes, for
accelerators: the cart-pole figure's 60 runs per pole count as one program).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import problems
from ..training.config import RunConfig, describe_errors, run_id
from ..training.optim import CLIPPING
from ..training.runner import lane_key
from .leases import Claimed
from .run import clean_finished_partials, clean_stale_temps, code_change, is_done, read_result, train_runs

if TYPE_CHECKING:
    from pydantic_core import InitErrorDetails

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
#: environment of a Ray worker (the local pool's initializer sets the same)
WORKER_ENV = {"XLA_FLAGS": SINGLE_THREAD_XLA, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
EXECUTORS = ("local", "serial", "ray")


class OptimizerSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9


class Experiment(BaseModel):
    """One problem's block of the grid."""

    model_config = ConfigDict(extra="forbid")
    problem: str
    level: dict[str, list[Any]] = Field(default_factory=dict)
    modes: list[str | list[str]] = Field(default_factory=lambda: ["R", "M", "C", "S"])  # type: ignore[arg-type]  # mypy infers list[str] here
    clips: list[str] = Field(default_factory=lambda: ["none"])
    optimizers: list[OptimizerSetting] = Field(default_factory=lambda: [OptimizerSetting()])
    problem_params: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("clips")
    @classmethod
    def _clips(cls, v):
        for i, c in enumerate(v):
            if c not in CLIPPING:
                raise ValueError(f"clips[{i}] = {c!r}; allowed: {', '.join(CLIPPING)}")
        return v

    @field_validator("level")
    @classmethod
    def _level(cls, v):
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"level.{k} is empty; give at least one value")
        return v


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    seeds: int | list[int] = 5
    experiment: list[Experiment]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"seeds={v}; must be ≥ 1 or a list of ints")
        if isinstance(v, list) and not v:
            raise ValueError("seeds is an empty list")
        return v

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class SpecError(ValueError):
    """The sweep spec is invalid; the message names every bad field."""


def _fmt_errors(e: ValidationError, prefix: str = "") -> str:
    return describe_errors(e, SweepSpec, prefix) or "spec"


def load_spec(source: str | Path | dict, *, seeds: int | None = None) -> SweepSpec:
    """A TOML/YAML spec file path or a dict -> validated :class:`SweepSpec` (``seeds``: overrides
    the spec's seeds with ``range(seeds)``)."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"{str(source)!r}: no such spec file (a .toml, .yaml or .yml sweep spec)")
        raw = _read_spec_file(path)
    if seeds is not None:
        raw = dict(raw) | {"seeds": int(seeds)}
    try:
        spec = SweepSpec(**raw)
    except ValidationError as e:
        raise SpecError(_fmt_errors(e)) from None
    expand(spec)  # validates every job's RunConfig now, before any work
    return spec


def _read_spec_file(path: Path) -> dict:
    """The mapping in a TOML or YAML file; SpecError naming the file and the problem otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise SpecError(f"{path}: unknown spec format {path.suffix!r}; use .toml, .yaml or .yml")
    import tomllib

    import yaml

    text = path.read_text()
    try:
        raw = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        kind = "TOML" if suffix == ".toml" else "YAML"
        raise SpecError(f"{path}: not valid {kind}: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping (name, seeds, [[experiment]] …), got {type(raw).__name__}")
    return raw


def expand(spec: SweepSpec) -> list[tuple[RunConfig, int]]:
    """All jobs (config, seed) of the spec, in a stable order; raises SpecError on a bad field."""
    jobs = []
    for i, ex in enumerate(spec.experiment):
        where = f"experiment[{i}]"
        try:
            problems.param_spec(ex.problem)
        except ValueError as e:
            raise SpecError(f"{where}.problem: {e}") from None
        defaults = dict(problems.get(ex.problem, **ex.problem_params).defaults) if _params_ok(ex, where) else {}
        base = {k: defaults[k] for k in ("lr", "batch_size", "n_train", "n_test", "epochs") if k in defaults}
        level_items = list(ex.level.items())
        level_grid = list(itertools.product(*[vals for _, vals in level_items])) or [()]
        for j, m in enumerate(ex.modes):
            try:
                RunConfig(problem=ex.problem, problem_params=ex.problem_params, mode=m)
            except ValidationError as e:
                raise SpecError(_fmt_errors(e, f"{where}.modes[{j}]")) from None
        for values in level_grid:
            pparams = dict(ex.problem_params) | {k: v for (k, _), v in zip(level_items, values)}
            for mode, clip, opt in itertools.product(ex.modes, ex.clips, ex.optimizers):
                fields: dict[str, Any] = (
                    {"data": "seeded"}
                    | base
                    | ex.config
                    | dict(
                        problem=ex.problem,
                        problem_params=pparams,
                        mode=mode,
                        clip=clip,
                        optimizer=opt.optimizer,
                        momentum=opt.momentum,
                    )
                )
                if "lr" in opt.model_fields_set or "lr" not in fields:
                    fields["lr"] = opt.lr  # an explicit optimizer setting wins over the problem default
                fields["batch_size"] = min(fields.get("batch_size", 8), fields.get("n_train", 256))
                try:
                    cfg = RunConfig(**fields)
                except ValidationError as e:
                    raise SpecError(_config_errors(e, ex, where)) from None
                try:
                    problems.get(ex.problem, **pparams)
                except ValueError as e:
                    raise SpecError(f"{where}.level: {e}") from None
                for s in spec.seed_list():
                    jobs.append((cfg, int(s)))
    return jobs


def _config_errors(e: ValidationError, ex: Experiment, where: str) -> str:
    """RunConfig errors located in the spec: ``experiment[0].config.epochs: …``."""
    parts = []
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        sub = "config" if name in ex.config else "optimizers" if name in OptimizerSetting.model_fields else ""
        one = ValidationError.from_exception_data(e.title, [_line_error(err)])
        parts.append(describe_errors(one, RunConfig, f"{where}.{sub}" if sub else where))
    return "; ".join(parts)


def _line_error(err: Mapping[str, Any]) -> InitErrorDetails:
    """A pydantic error dict as ``ValidationError.from_exception_data`` takes it."""
    out = {k: err[k] for k in ("type", "loc", "input") if k in err}
    if err["type"] == "value_error":
        out["ctx"] = {"error": err["msg"].removeprefix("Value error, ")}
    elif err.get("ctx"):
        out["ctx"] = err["ctx"]
    return cast("InitErrorDetails", out)


def _params_ok(ex: Experiment, where: str) -> bool:
    spec = problems.param_spec(ex.problem)
    for name in list(ex.problem_params) + list(ex.level):
        if name not in spec:
            raise SpecError(f"{where}: problem {ex.problem!r} has no parameter {name!r}; allowed: {', '.join(spec)}")
    try:
        problems.get(ex.problem, **ex.problem_params)
    except ValueError as e:
        raise SpecError(f"{where}.problem_params: {e}") from None
    return True


# ----------------------------------------------------------------------------- execution
_CACHE: dict = {}


def enable_compile_cache(cache_dir: str | None) -> None:
    """Turn on JAX's persistent compilation cache in this process (once; None: leave as is).

    Jobs that differ only in their seed compile the same programs, so with a shared cache
    folder every worker after the first loads them instead of compiling (cart-pole, 2 poles,
    mode C: 3.1 s compile -> 0.4 s).
    """
    if not cache_dir or _CACHE.get("dir") == cache_dir:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _CACHE["dir"] = cache_dir


def _job(
    config_dict: dict,
    seeds: list[int],
    root: str,
    cache_dir: str | None = None,
    lanes: list[dict] | None = None,
    checkpoint_seconds: float = 30.0,
) -> list[dict]:
    """Worker entry (picklable): run one config for the given seeds, or with ``lanes`` (one
    config dict per seed) the (config, seed) lanes of one program; return their summaries."""
    enable_compile_cache(cache_dir)
    cfg = RunConfig(**config_dict)
    pairs = [(RunConfig(**d), s) for d, s in zip(lanes, seeds)] if lanes is not None else [(cfg, s) for s in seeds]
    try:
        folders, computed = train_runs(pairs, root, checkpoint_seconds=checkpoint_seconds)
    except Claimed as e:
        return [{"status": "claimed", "run_id": run_id(c, s), "owner": str(e)} for c, s in pairs]
    return [read_result(f) | {"computed_here": f.name in computed} for f in folders]


def _init_worker(xla_flags: str, parent_pid: int | None = None) -> None:
    """Pool initializer, run in each fresh (spawned) worker before its first job.

    Sets ``XLA_FLAGS`` (JAX reads them when it creates its CPU backend, i.e. at the first
    computation, not at import), turns off GPU memory preallocation (the workers share the
    device) and, on Linux, asks the kernel to SIGKILL the worker when
    the sweep process dies: a killed sweep leaves no orphan that could still write results
    while it is being resumed.
    """
    os.environ["XLA_FLAGS"] = xla_flags
    # on a GPU the workers share one device: without this each would reserve 75 % of its memory
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if parent_pid is not None and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - no libc: workers just finish their current job
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)


@dataclass
class SweepReport:
    root: Path
    jobs: int
    skipped: int = 0  # finished by earlier calls or other processes
    computed: int = 0  # by this call
    diverged: int = 0  # of those computed
    claimed: int = 0  # being computed by another live process (not waited for)
    resumed: int = 0  # of those computed: continued from an interrupted run's checkpoint
    failed: list = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(
            root=str(self.root),
            jobs=self.jobs,
            skipped=self.skipped,
            computed=self.computed,
            diverged=self.diverged,
            claimed=self.claimed,
            resumed=self.resumed,
            failed=self.failed,
            wall_s=self.wall_s,
        )


def _groups(
    todo: list[tuple[RunConfig, int]], vmap_seeds: bool, vmap_configs: bool = False
) -> list[tuple[RunConfig, list[int], list[dict] | None]]:
    """Jobs as (config, seeds, lanes): one job per (config, seed), per config with
    ``vmap_seeds``, or with ``vmap_configs`` per set of configs that can be lanes of one
    program (:func:`stablebptt.training.runner.lane_key`; lanes = one config dict per seed)."""
    if vmap_configs:
        lanes: dict[str, list[tuple[RunConfig, int]]] = {}
        # the AND-mask cannot be a lane; a group of one is a plain run
        single: list[tuple[RunConfig, list[int], list[dict] | None]] = []
        for c, s in todo:
            if c.and_mask:
                single.append((c, [s], None))
            else:
                lanes.setdefault(lane_key(c), []).append((c, s))
        return [
            (g[0][0], [s for _, s in g], [c.to_dict() for c, _ in g]) if len(g) > 1 else (g[0][0], [g[0][1]], None)
            for g in lanes.values()
        ] + single
    if not vmap_seeds:
        # seed-major order: the seeds of one config never compile side by side, so all but the
        # first find its programs in the shared compilation cache
        order = {s: i for i, s in enumerate(dict.fromkeys(s for _, s in todo))}
        return [(c, [s], None) for c, s in sorted(todo, key=lambda cs: order[cs[1]])]
    grouped: dict[str, tuple[RunConfig, list[int], None]] = {}
    for c, s in todo:
        key = json.dumps(c.to_dict(), sort_keys=True)
        grouped.setdefault(key, (c, [], None))[1].append(s)
    return list(grouped.values())


def _run_local(groups, root: Path, n: int, cache_dir, checkpoint_seconds, finished, state, report) -> None:
    """The sweep's groups on a pool of ``n`` spawned worker processes (single-threaded XLA each)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = SINGLE_THREAD_XLA  # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(
            max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(SINGLE_THREAD_XLA, os.getpid())
        ) as pool:
            try:
                pending = {
                    pool.submit(_job, c.to_dict(), seeds, str(root), cache_dir, lanes, checkpoint_seconds): (c, seeds)
                    for c, seeds, lanes in groups
                }
                while pending:
                    state["running"] = min(n, len(pending))
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done:
                        c, seeds = pending.pop(fut)
                        try:
                            finished(fut.result())
                        except Exception as e:  # recorded, the sweep goes on
                            report.failed.append({"config": c.to_dict(), "seeds": seeds, "error": repr(e)})
            except BaseException:
                # Ctrl-C (or an error here): stop at once instead of waiting for the queued
                # jobs. A killed worker leaves at most a .tmp-* folder, removed at the next start.
                procs = list((pool._processes or {}).values())  # private, but the only handle
                pool.shutdown(wait=False, cancel_futures=True)
                for proc in procs:
                    proc.kill()
                raise
    finally:
        if old is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = old


def _run_ray(groups, root: Path, workers, address, cache_dir, checkpoint_seconds, finished, state, report) -> None:
    """The sweep's groups as Ray tasks (a local Ray started for the sweep, or the cluster at ``address``)."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise SpecError('executor "ray" needs Ray: pip install "stablebptt[ray]"') from e
    started = False
    if not ray.is_initialized():
        kw = dict(address=address) if address else dict(num_cpus=workers or os.cpu_count(), include_dashboard=False)
        ray.init(runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False, **kw)
        started = True
    try:
        # per task as well, so an already initialised Ray gets the flags too
        remote = ray.remote(num_cpus=1)(_job).options(runtime_env={"env_vars": WORKER_ENV})
        refs = {
            remote.remote(c.to_dict(), seeds, str(root.resolve()), cache_dir, lanes, checkpoint_seconds): (c, seeds)
            for c, seeds, lanes in groups
        }
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            while refs:
                state["running"] = min(len(refs), cpus)
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    c, seeds = refs.pop(ref)
                    try:
                        finished(ray.get(ref))
                    except Exception as e:
                        report.failed.append({"config": c.to_dict(), "seeds": seeds, "error": repr(e)})
        except BaseException:
            for ref in refs:  # Ctrl-C: stop the remaining tasks (a killed task leaves a .tmp-* folder)
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def _check_code(jobs: list[tuple[RunConfig, int]], root: Path) -> None:
    """Raise :class:`SpecError` when a finished job under ``root`` was made with problem code
    that has changed since (one line: the file, old → new hash, how many runs, what to do)."""
    current: dict[str, dict | None] = {}
    stale, first = [], None
    for c, s in jobs:
        folder = root / run_id(c, s)
        if not is_done(folder):
            continue
        if c.problem not in current:
            current[c.problem] = problems.code_identity(c.problem)
        change = code_change(folder, c, current[c.problem])
        if change:
            stale.append(folder.name)
            first = first or change
    if stale:
        raise SpecError(
            f"{first}: {len(stale)} finished run(s) under {root} were made with the old code and are not "
            f"counted as done; sweep into another --out, or remove those run folders ({', '.join(stale[:3])}"
            f"{', …' if len(stale) > 3 else ''}) to recompute them"
        )


def run_sweep(
    spec: SweepSpec,
    root: str | Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    vmap_seeds: bool = False,
    vmap_configs: bool = False,
    progress: Callable[[dict], None] | None = None,
    cache_dir: str | None = None,
    checkpoint_seconds: float = 30.0,
) -> SweepReport:
    """Run every missing job of ``spec`` under ``root``; return counts (computed / skipped / diverged).

    ``cache_dir``: a persistent compilation cache folder for the worker processes (local and
    Ray; ``stablebptt sweep`` passes the one ``stablebptt train`` uses). The serial executor
    runs in this process and leaves its JAX configuration alone.

    ``progress`` receives a dict ``{done, running, diverged, skipped, total, eta_s}`` after
    every change.

    ``checkpoint_seconds``: how often each job saves its training state; an interrupted sweep
    resumes its unfinished runs from their checkpoints (:mod:`stablebptt.experiments.run`). Every job is
    claimed before it runs, so concurrent sweeps on one folder compute each run once (a job
    claimed by another live process is counted in ``claimed`` and not waited for).

    ``vmap_configs``: the jobs that differ only in seed, mode, learning rate or clipping
    (:data:`stablebptt.training.runner.LANE_FIELDS`) train as the lanes of one vmapped program (for
    accelerators, where they cost little more than one run; on a CPU they compile once
    instead of once per config but train a little slower, benchmarks/bench_lanes.py). A lane
    equals its own run up to float32 round-off per update, which long training amplifies like any
    change of summation order: compare statistics over seeds, and do not mix runs computed
    with and without lanes in one comparison (each run's manifest says which).
    """
    if executor not in EXECUTORS:
        raise SpecError(f"executor={executor!r}; allowed: {', '.join(EXECUTORS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(root)
    (root / "sweep.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    jobs = expand(spec)
    _check_code(jobs, root)
    todo = [(c, s) for c, s in jobs if not is_done(root / run_id(c, s))]
    report = SweepReport(root=root, jobs=len(jobs), skipped=len(jobs) - len(todo))
    groups = _groups(todo, vmap_seeds, vmap_configs)
    t0 = time.perf_counter()
    state: dict = {"done": 0, "running": 0, "diverged": 0, "skipped": report.skipped, "total": len(jobs), "eta_s": None}

    def finished(summaries: list[dict]) -> None:
        state["done"] += len(summaries)
        report.computed += sum(1 for r in summaries if r.get("computed_here"))
        report.resumed += sum(1 for r in summaries if r.get("computed_here") and r.get("resumed_from_epoch"))
        report.claimed += sum(1 for r in summaries if r["status"] == "claimed")
        report.skipped += sum(1 for r in summaries if r["status"] != "claimed" and not r.get("computed_here"))
        d = sum(1 for r in summaries if r["status"] == "diverged" and r.get("computed_here"))
        state["diverged"] += d
        report.diverged += d
        elapsed = time.perf_counter() - t0
        left = len(todo) - state["done"]
        state["eta_s"] = elapsed / state["done"] * left if state["done"] else None
        if progress:
            progress(dict(state))

    if progress:
        progress(dict(state))
    if executor == "serial":
        for c, seeds, lanes in groups:
            state["running"] = len(seeds)
            finished(_job(c.to_dict(), seeds, str(root), None, lanes, checkpoint_seconds))
        state["running"] = 0
    elif executor == "local":
        _run_local(groups, root, workers or os.cpu_count() or 1, cache_dir, checkpoint_seconds, finished, state, report)
    else:
        _run_ray(groups, root, workers, address, cache_dir, checkpoint_seconds, finished, state, report)
    clean_finished_partials(root)  # progress left by runs killed after their results were written
    state["running"] = 0
    if progress:
        progress(dict(state))
    report.wall_s = time.perf_counter() - t0
    return report
