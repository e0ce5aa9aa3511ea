"""Shared helpers for the benchmark scripts (timing, machine description, paper problems).

Timing on a shared, noisy machine: every script measures the variants it compares
*interleaved* in rounds (A B C, A B C, ...) and keeps the minimum per variant, so a burst of
load from another process hits all variants alike and the ratios stay meaningful. Absolute
numbers are the best observed, i.e. what the machine does when it is not disturbed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

#: asks XLA for one thread per process; XLA:CPU still uses its intra-op pool (one thread per
#: core) for products and large loops, see bench_cores.py and docs/performance.md item 29
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.setdefault("XLA_FLAGS", SINGLE_THREAD_XLA)

HERE = Path(__file__).resolve().parent

#: the authors' TensorFlow code on this 2-core machine (issue 5): seconds per steady epoch
#: (32 updates of batch 8 + evaluation of 256 train and 256 test states)
TF_EPOCH_S = {
    ("cartpole", "R"): 0.54, ("cartpole", "C"): 1.13,
    ("guidance", "R"): 2.45, ("guidance", "C"): 3.74,
    ("quantum", "R"): 6.6, ("quantum", "C"): 9.8,
}
#: the authors' first-epoch tracing time range (s)
TF_TRACE_S = (17, 150)


def interleaved_min(fns: dict[str, Callable[[], object]], *, rounds: int = 7, reps: int = 1,
                    min_round_s: float = 0.0, block: Callable | None = None) -> dict[str, float]:
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
        except Exception:  # noqa: BLE001
            vers[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = ""
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": vers,
        "device": str(jax.devices()[0]), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None, "commit": commit,
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
        proc = subprocess.run([sys.executable, str(HERE / script), *args, "--json", out], env=e,
                              timeout=timeout, capture_output=True, text=True)
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
    proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                          capture_output=True, text=True, timeout=300)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "cpu"
