"""How many cores an epoch program keeps busy, and what a second process on the other core
costs it (the sweep's 2 workers on this 2-core machine).

    python benchmarks/bench_cores.py [--problems cartpole,guidance,quantum] [--modes R]
                                     [--seconds 8] [--no-pinned] [--json out.json]
    python benchmarks/bench_cores.py --problems cartpole --seconds 1 --no-pinned   # dry run, ~1 min

For each problem and mode, fresh worker processes (this script with ``--worker``) build the
paper-setting epoch of ``bench_epoch.setup`` (the programs of ``stablebptt.training.trainer.make_train``:
32 updates of batch 8, then the evaluation of 2 × 256 states, one seed), wait until all are
ready, then time steady epochs for ``--seconds`` (medians, milliseconds):

* ``solo``: one process. Its CPU time ÷ wall time is the number of cores the program keeps
  busy: XLA:CPU runs matrix products (YNNPACK) and large fused loops as tasks on an intra-op
  thread pool with one thread per core, whatever ``XLA_FLAGS`` says
  (``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` does not make it
  single-threaded);
* ``duo``: two identical processes at once (what a 2-worker sweep does); throughput with the
  second process = 2 · solo ÷ duo;
* ``pinned`` (Linux): the same with each process and all its threads confined to one core
  (``sched_setaffinity`` before JAX starts, so XLA's pool has one thread): solo on core 0,
  duo on cores 0 and 1. ``pinned duo ÷ pinned solo`` is what one core's work costs a
  program confined to the other.

Reference: a NumPy 512 × 512 float32 product loop, solo and duo (a pure multiply-add load).
Every worker is a fresh process. Needs at least 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _common

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(kind: str, mode: str, seconds: float, pin: int) -> None:
    """Build the program, print ``ready``, wait for ``go`` on stdin, time it, print JSON."""
    if pin >= 0:
        os.sched_setaffinity(0, {pin})  # before any thread starts: XLA's pool inherits it
    if kind == "numpy":
        os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        import numpy as np

        a = np.random.default_rng(0).random((512, 512), dtype=np.float32)

        def call():
            for _ in range(20):
                a @ a

        block = lambda out: out
    else:
        import bench_epoch
        import jax

        epoch, _, _, _ = bench_epoch.setup(kind, mode)
        call, block = epoch, jax.block_until_ready
    for _ in range(2):
        block(call())
    print("ready", flush=True)
    sys.stdin.readline()
    times, r0, t_end = [], resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() + seconds
    t_start = time.perf_counter()
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        block(call())
        times.append(time.perf_counter() - t0)
    wall, r1 = time.perf_counter() - t_start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "epochs": len(times), "cores": cpu / wall}), flush=True)


def _together(kind: str, mode: str, seconds: float, pins: list[int]) -> list[dict]:
    """Run one worker per entry of ``pins`` (-1 = not pinned), started on the same signal."""
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind, mode, str(seconds), str(p)],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in pins
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bench_cores worker for {kind} {mode} did not start (printed {line!r})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for p in procs:
            res, _ = p.communicate(timeout=600)
            if p.returncode:
                raise RuntimeError(f"bench_cores worker for {kind} {mode} failed (exit {p.returncode})")
            out.append(json.loads(res.strip().splitlines()[-1]))
        return out
    finally:  # a worker that failed must not leave its twin waiting for "go"
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def measure(kind: str, mode: str, seconds: float, pinned: bool) -> dict:
    """One row: solo, duo and (``pinned``) the pinned settings of the module docstring, epoch
    medians in ms, ``*_cores`` = CPU time ÷ wall time, ``two_process_throughput`` = 2 · solo ÷ duo."""
    solo = _together(kind, mode, seconds, [-1])[0]
    duo = _together(kind, mode, seconds, [-1, -1])
    duo_s = sum(d["median_s"] for d in duo) / 2
    row = {
        "problem": kind,
        "mode": mode,
        "solo_ms": solo["median_s"] * 1e3,
        "solo_cores": solo["cores"],
        "duo_ms": duo_s * 1e3,
        "duo_cores": sum(d["cores"] for d in duo),
        "two_process_throughput": 2 * solo["median_s"] / duo_s,
    }
    if pinned:
        ps = _together(kind, mode, seconds, [0])[0]
        pd = _together(kind, mode, seconds, [0, 1])
        pd_s = sum(d["median_s"] for d in pd) / 2
        row.update(
            pinned_solo_ms=ps["median_s"] * 1e3,
            pinned_duo_ms=pd_s * 1e3,
            pinned_duo_over_solo=pd_s / ps["median_s"],
            pool_speedup=ps["median_s"] / solo["median_s"],
        )
    print(
        f"{kind:9s} {mode}: solo {row['solo_ms']:7.1f} ms on {row['solo_cores']:.2f} cores; two processes "
        f"{row['duo_ms']:7.1f} ms each (throughput ×{row['two_process_throughput']:.2f})"
        + (
            f"; pinned to one core {row['pinned_solo_ms']:7.1f} ms, beside a pinned twin "
            f"{row['pinned_duo_ms']:7.1f} ms (×{row['pinned_duo_over_solo']:.2f})"
            if pinned
            else ""
        ),
        flush=True,
    )
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--modes", default="R")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per process and setting")
    ap.add_argument("--no-pinned", action="store_true", help="skip the pinned (one core per process) settings")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "MODE", "SECONDS", "PIN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, mode, seconds, pin = args.worker
        return _worker(kind, mode, float(seconds), int(pin))
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_cores: needs at least 2 CPU cores")
    from stablebptt import problems
    from stablebptt.core import MODES

    names, modes = args.problems.split(","), args.modes.split(",")
    bad = [n for n in names if n not in problems.names()] + [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(
            f"bench_cores: unknown {', '.join(map(repr, bad))}; problems: "
            f"{', '.join(problems.names())}; modes: {', '.join(MODES)}"
        )
    pinned = hasattr(os, "sched_setaffinity") and not args.no_pinned
    rows = [measure("numpy", "-", args.seconds / 2, pinned)]
    for name in names:
        for mode in modes:
            rows.append(measure(name, mode, args.seconds, pinned))
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
