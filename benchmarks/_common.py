"""Shared helpers for the benchmark scripts: timing, the machine's description, the paper
problems, compiled update functions and the trainer's programs without the host loop.

Timing on a shared, noisy machine: every script measures the variants it compares
*interleaved* in rounds (A B C, A B C, ...) and keeps the minimum per variant, so a burst of
load from another process hits all variants alike and the ratios stay meaningful. Absolute
numbers are the best observed, i.e. what the machine does when it is not disturbed.

Importing this module sets ``XLA_FLAGS`` (unless already set) before JAX starts.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: asks XLA for one thread per process, as the sweep's worker processes do. XLA:CPU still runs
#: matrix products and large fused loops on its intra-op pool (one thread per core), so one
#: process keeps more than one core busy: bench_cores.py measures how many
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.setdefault("XLA_FLAGS", SINGLE_THREAD_XLA)

HERE = Path(__file__).resolve().parent

#: the authors' TensorFlow code on this 2-core machine (issue 5): seconds per steady epoch
#: (32 updates of batch 8 + evaluation of 256 train and 256 test states)
TF_EPOCH_S = {
    ("cartpole", "R"): 0.54,
    ("cartpole", "C"): 1.13,
    ("guidance", "R"): 2.45,
    ("guidance", "C"): 3.74,
    ("quantum", "R"): 6.6,
    ("quantum", "C"): 9.8,
}
#: the authors' first-epoch tracing time range (s)
TF_TRACE_S = (17, 150)


def interleaved_min(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    reps: int = 1,
    min_round_s: float = 0.0,
    block: Callable | None = None,
) -> dict[str, float]:
    """Seconds per call of each function: min over ``rounds`` of the mean over ``reps`` calls,
    the functions interleaved within each round. ``block`` waits for results (JAX is async)."""
    import jax

    block = block or jax.block_until_ready
    for f in fns.values():  # warm-up (compile, caches)
        block(f())
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            n, t0 = 0, time.perf_counter()
            while True:
                out = f()
                n += 1
                if n >= reps and time.perf_counter() - t0 >= min_round_s:
                    break
            block(out)
            best[k] = min(best[k], (time.perf_counter() - t0) / n)
    return best


def machine() -> dict:
    """CPU, cores, versions, date, load: the header of results.md."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {}
    for name in ("jax", "jaxlib", "equinox", "optax", "numpy"):
        try:
            from importlib import metadata

            vers[name] = metadata.version(name)
        except Exception:
            vers[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": vers,
        "device": str(jax.devices()[0]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "commit": commit,
    }


def paper_case(name: str, batch: int = 8, **params):
    """(label, problem, controller, x0 batch) at the paper settings (controller not zeroed,
    so every path carries signal)."""
    import jax
    import jax.numpy as jnp

    from stablebptt import problems

    prob = problems.get(name, **params)
    model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(prob.sample_data("paper", batch, batch)[0])
    label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    return label, prob, model, x0


def write_json(path: str | None, obj) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=2, default=float))


def run_script(script: str, args: list[str], timeout: float, env: dict | None = None) -> dict | None:
    """Run ``benchmarks/<script>`` in a fresh process; return its --json output (or None)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    e = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args, "--json", out],
            env=e,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
    except subprocess.TimeoutExpired:
        print(f"{script}: timed out after {timeout:.0f}s", file=sys.stderr)
        return None
    sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
    sys.stdout.write(proc.stdout)
    if proc.returncode:
        print(f"{script} failed (rc {proc.returncode})", file=sys.stderr)
        return None
    text = Path(out).read_text()
    if not text.strip():  # the script had nothing to measure here (e.g. gpu_check.py on a CPU)
        return None
    data = json.loads(text)
    data["_wall_s"] = time.perf_counter() - t0
    return data


def backend() -> str:
    """JAX's default backend ("cpu", "gpu", ...), asked in a child process so that this one
    does not start (and, on a GPU, preallocate) a backend of its own."""
    proc = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True, timeout=300
    )
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "cpu"


# ----------------------------------------------------------------------------- engine
def compile_update(model, x0, *, step, loss, horizon: int, flow, backward, what: str = "update"):
    """``f(params) -> update`` (or ``-> (loss, update)`` with ``what="both"``): one jitted,
    AOT-compiled :func:`stablebptt.value_and_update` of the batch ``x0`` with this flow and
    backward strategy, traced at full float32 precision as the trainer's programs are.

    ``backward``: a strategy object (``stablebptt.core.Autodiff()``, ``ReverseSweep(...)``)
    or a name (``"auto"``, ...). Returns the compiled function and ``params`` (the
    controller's array leaves) to call it with."""
    import equinox as eqx
    import jax

    import stablebptt as sb

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(p):
        out = sb.value_and_update(
            eqx.combine(p, static),
            x0,
            step=step,
            loss=loss,
            horizon=horizon,
            flow=flow,
            backward=backward,
            validate=False,
        )
        return out[1] if what == "update" else out[:2]

    with jax.default_matmul_precision("highest"):
        return jax.jit(f).lower(params).compile(), params


def default_strategy(model, x0, *, step, loss, horizon: int, flow, checkpoint_every=None):
    """The backward strategy ``backward="auto"`` (:func:`stablebptt.select_backward`, measured) picks for
    this controller, simulator and flow (no remat segments unless ``checkpoint_every``)."""
    import stablebptt as sb

    return sb.select_backward(
        model, x0, step=step, loss=loss, horizon=horizon, flow=flow, checkpoint_every=checkpoint_every
    )


# ----------------------------------------------------------------------------- trainer
@dataclasses.dataclass
class TrainerPrograms:
    """The compiled programs of :func:`stablebptt.training.runner.make_trainer` for a set of runs, with
    their state, called without :func:`stablebptt.training.runner.train`'s host loop.

    updates(): one epoch's minibatch updates of every run (one scanned program per call;
        ``batching="vmap"``: one call for all runs, ``"loop"``: the one-run program called run
        after run); returns the metrics (to block on).
    evaluate(): the loss of the full train and test sets of every run (forward rollouts).
    epoch(): updates, then the evaluation of a copy of the new parameters (what
        ``runner.train`` does per epoch without ``overlap_eval``).
    compile_s: seconds from ``make_train`` to the compiled updates and evaluation programs
        (traced and compiled one after the other; ``runner.train`` compiles on two threads).
    updates_per_epoch: minibatch updates per run and epoch.
    runs: how many runs; batching: ``"vmap"`` or ``"loop"``; backward: ``repr`` of the
    strategy the updates use.
    """

    updates: Callable[[], Any]
    evaluate: Callable[[], Any]
    epoch: Callable[[], Any]
    compile_s: float
    updates_per_epoch: int
    runs: int
    batching: str
    backward: str


def trainer_programs(
    problem,
    config,
    seeds: Sequence[int],
    *,
    lane_configs=None,
    batching: str = "vmap",
    distinct: int | None = None,
    backward=None,
) -> TrainerPrograms:
    """:class:`TrainerPrograms` for the runs ``(config, seed)`` — or, with ``lane_configs``
    (one config per seed, differing only in ``stablebptt.training.runner.LANE_FIELDS``), the lanes of
    one vmapped program.

    ``batching``: ``"vmap"`` (the runs' states stacked, one vmapped program; a single run is
    not vmapped) or ``"loop"`` (the one-run program for each run; not for lanes).
    ``distinct``: build the initial parameters and data of at most this many different
    seeds and repeat them (the time does not depend on the values; building thousands of
    controllers one by one would dominate a GPU run). Data: ``make_data(problem, config,
    seed)`` (``config.data="paper"``: the same for every seed). ``backward``: a strategy
    object or name instead of ``config.backward``."""
    import jax
    import jax.numpy as jnp

    from stablebptt.training.runner import check_lanes, make_trainer
    from stablebptt.training.trainer import make_data

    seeds = [int(s) for s in seeds]
    K = len(seeds)
    if batching not in ("vmap", "loop"):
        raise ValueError(f"batching={batching!r}; allowed: 'vmap', 'loop'")
    if lane_configs is not None:
        lane_configs = list(lane_configs)
        check_lanes(config, lane_configs, K)
        if batching != "vmap":
            raise ValueError("lanes are one vmapped program: batching='vmap'")
    configs = lane_configs if lane_configs is not None else [config] * K
    vmapped = batching == "vmap" and (K > 1 or lane_configs is not None)
    src = [seeds[i % distinct] if distinct else s for i, s in enumerate(seeds)]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)

    t0 = time.perf_counter()
    trainer = make_trainer(problem, config, lane_configs, n_runs=K if vmapped else 1, backward=backward)
    v = jax.vmap if vmapped else (lambda f: f)
    with jax.default_matmul_precision("highest"):  # as runner.train traces its programs
        init_params = jax.jit(trainer.init_params)
        init = jax.jit(v(trainer.init))
        upd = jax.jit(v(trainer.updates), donate_argnums=0)
        ev = jax.jit(v(trainer.evaluate))
        built = {s: (init_params(jax.random.PRNGKey(s)), make_data(problem, configs[0], s)) for s in dict.fromkeys(src)}
        params = [built[s][0] for s in src]
        data = [tuple(jnp.asarray(a) for a in built[s][1]) for s in src]
        settings = [trainer.settings(c.flow(), c.optimizer_setting()) for c in configs]
        keys = [jax.random.PRNGKey(s + 1_000_003) for s in seeds]
        if vmapped:
            states = [init(stack(params), stack(settings))]
            args = [(stack([d[0] for d in data]), stack([d[1] for d in data]), stack(keys))]
        else:
            states = [init(p, st) for p, st in zip(params, settings)]
            args = [(d[0], d[1], k) for d, k in zip(data, keys)]
        upd_c = upd.lower(states[0], args[0][0], args[0][2]).compile()
        ev_c = ev.lower(states[0].params, args[0][0], args[0][1]).compile()
    compile_s = time.perf_counter() - t0

    def updates():
        out = []
        for i, (tr, _, key) in enumerate(args):
            states[i], metrics = upd_c(states[i], tr, key)
            out.append(metrics)
        return out

    def evaluate():
        return [ev_c(s.params, tr, te) for s, (tr, te, _) in zip(states, args)]

    def epoch():
        metrics = updates()
        copies = [jax.tree_util.tree_map(jnp.copy, s.params) for s in states]  # the next update donates them
        return metrics, [ev_c(p, tr, te) for p, (tr, te, _) in zip(copies, args)]

    nb = config.n_train // config.batch_size
    return TrainerPrograms(
        updates, evaluate, epoch, compile_s, nb, K, "vmap" if vmapped else "loop", repr(trainer.backward)
    )
