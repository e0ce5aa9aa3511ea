"""Start-up cost: the first epoch including compilation, with JAX's persistent compilation
cache cold (first process ever) and warm (a second process start), per problem.

    python benchmarks/bench_compile.py [--problems cartpole,guidance,quantum] [--mode C]
                                       [--cpu-devices 2,1] [--min-compile-s 0] [--json out.json]
    python benchmarks/bench_compile.py --problems cartpole --cpu-devices 1   # dry run, ~1 min

Each measurement is a fresh Python process that imports the library, sets JAX up the way
``stablebptt train`` does (``stablebptt.cli.setup_jax``: the persistent cache, here in a fresh
temporary folder per problem and setting, and the CPU devices) and runs
``stablebptt.training.runner.train(problem, RunConfig(mode, epochs=2), 0, overlap_eval=devices > 1)``.
Reported per process, in seconds: import time, time from calling ``train`` to the end of
epoch 1 (``first_epoch_s``: data, controller, tracing, compilation or cache load, the
untrained controller's evaluation, epoch 1), the part ``train`` reports as ``compile_s``, the
steady epoch 2 and the whole process wall time.

``--cpu-devices 2`` = what ``stablebptt train`` runs for one seed on a multi-core machine:
every evaluation on the second CPU device, overlapped with training, and epoch 1 counts as
ended when its evaluation has; ``1`` = the evaluation after the updates (sweep workers).
``--min-compile-s`` overrides the cache's ``jax_persistent_cache_min_compile_time_secs``
(``setup_jax`` uses 0: every program is cached); a comma list measures each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import _common

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
import _common
import jax
from stablebptt.cli import setup_jax
setup_jax(cache=True, cpu_devices={devices})  # the cache folder: $STABLEBPTT_CACHE_DIR
jax.config.update("jax_persistent_cache_min_compile_time_secs", {min_s})
from stablebptt import problems
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train
t_import = time.perf_counter() - t0
marks = []
t1 = time.perf_counter()
(res,) = train(problems.get({name!r}), RunConfig(problem={name!r}, mode={mode!r}, epochs=2), 0,
               on_epoch=lambda e, rows: marks.append(time.perf_counter() - t1), overlap_eval={devices} > 1)
print(json.dumps(dict(import_s=t_import, first_epoch_s=marks[0], compile_s=res.compile_s,
                      steady_epoch_s=res.history["wall_s"][-1], process_s=time.perf_counter() - t0, ran=res.ran)))
"""


def one(name: str, mode: str, cache: str, min_s: float, devices: int = 1) -> dict:
    """One fresh process (see the module docstring) with the cache folder ``cache``."""
    code = CHILD.format(bench=str(_common.HERE), cache=cache, min_s=min_s, name=name, mode=mode, devices=devices)
    env = dict(os.environ, STABLEBPTT_CACHE_DIR=cache)
    env.pop("STABLEBPTT_NO_CACHE", None)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.stderr.write(p.stderr[-2000:])
        raise RuntimeError(f"{name}: child failed")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = wall  # including interpreter start
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--mode", default="C")
    ap.add_argument("--min-compile-s", default="0")
    ap.add_argument(
        "--cpu-devices",
        default="2,1",
        help="comma list: 1 = the evaluation runs after each epoch's updates (sweep workers); "
        "2 = on a second CPU device, overlapped (what `stablebptt train` does for one seed)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    settings = itertools.product(
        map(int, args.cpu_devices.split(",")), map(float, args.min_compile_s.split(",")), args.problems.split(",")
    )
    for devices, min_s, name in settings:
        with tempfile.TemporaryDirectory(prefix="jaxcache-") as cache:
            cold = one(name, args.mode, cache, min_s, devices)
            warm = one(name, args.mode, cache, min_s, devices)
        for kind, r in (("cold", cold), ("warm", warm)):
            rows.append(dict(problem=name, mode=args.mode, cache=kind, min_compile_s=min_s, cpu_devices=devices, **r))
        print(
            f"{name:9s} {args.mode} {devices} cpu device(s) (cache min {min_s:g}s): first epoch incl. compile cold "
            f"{cold['first_epoch_s']:5.2f} s (compile {cold['compile_s']:4.2f}) | warm {warm['first_epoch_s']:5.2f} s "
            f"(compile {warm['compile_s']:4.2f}) | process start to end of epoch 1: cold "
            f"{cold['wall_s'] - cold['process_s'] + cold['import_s'] + cold['first_epoch_s']:5.2f} s, warm "
            f"{warm['wall_s'] - warm['process_s'] + warm['import_s'] + warm['first_epoch_s']:5.2f} s",
            flush=True,
        )
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
