"""Old vs new source tree, measured in one interleaved run: time per update (each mode, each
problem), steady epoch of ``train()`` and first epoch including compilation.

    python benchmarks/bench_ab.py --old /path/to/old/checkout --new . [--rounds 3] [--json out.json]

Every measurement runs in a fresh process with ``PYTHONPATH=<tree>/src`` (the same
interpreter and packages for both trees); old and new alternate within each round, so load
from other processes hits both alike; each figure is the minimum over rounds (per update:
of the mean over ``--reps`` calls); the last column is the median over rounds of each round's
new/old pair. Ratios new/old < 1 mean the new tree is faster.

* ``update``: ``value_and_update`` of one batch of 8 paper states, jitted (the modes of one
  problem interleaved in one process).
* ``epoch``: the median steady epoch (epochs 3 … E) of ``train()`` for one seed, with one CPU
  device (evaluation after the updates) and with two (``stablebptt train``'s setting on a
  multi-core CPU, where the tree evaluates on the second device).
* ``first``: from calling ``train()`` to the end of epoch 1, with no compilation cache and no
  cached backward decision (a fresh machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBLEMS = {"cartpole": {}, "cartpole-4": {"poles": 4}, "guidance": {}, "quantum": {}}
UPDATE_MODES = ("R", "M", "S", "C")
EPOCH_MODES = ("R", "M", "C")

WORKER = r"""
import json, os, sys, time
kind, problem, params, modes, reps, epochs, devices = json.loads(sys.argv[1])
import jax
if devices > 1:
    jax.config.update("jax_num_cpu_devices", devices)
import jax.numpy as jnp
import stablebptt as sb
from stablebptt import problems
out = {"file": sb.__file__}
prob = problems.get(problem, **params)
if kind == "update":
    model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(prob.sample_data("paper", 8, 8)[0])
    fns = {m: jax.jit(lambda md, m=m: sb.value_and_update(md, x0, step=prob.step, loss=prob.loss,
                                                          horizon=prob.horizon, flow=m, validate=False)[1])
           for m in modes}
    for f in fns.values():
        jax.block_until_ready(f(model))
    best = {m: float("inf") for m in modes}
    for _ in range(5):
        for m, f in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                r = f(model)
            jax.block_until_ready(r)
            best[m] = min(best[m], (time.perf_counter() - t) / reps)
    out["ms"] = {m: 1e3 * v for m, v in best.items()}
else:
    try:
        from stablebptt.training.runner import train
        kw = {"overlap_eval": devices > 1}  # the new tree: an explicit option
    except ImportError:
        from stablebptt.training.trainer import train
        kw = {}  # the old tree: overlapped whenever two CPU devices exist
    (mode,) = modes
    cfg = sb.RunConfig(problem=prob.name, problem_params=params, mode=mode, epochs=epochs)
    marks = {}
    t0 = time.perf_counter()
    res, = train(prob, cfg, 0, on_epoch=lambda e, rows: marks.setdefault(e, time.perf_counter()), **kw)
    out["first_s"] = marks[1] - t0
    out["epoch_ms"] = 1e3 * sorted(res.history["wall_s"][2:])[len(res.history["wall_s"][2:]) // 2]
print("RESULT " + json.dumps(out))
"""


def run_worker(tree: Path, args: list, decisions: str | None = None) -> dict:
    """One measurement in a fresh process on ``tree``; ``decisions``: the folder of the backward
    decision cache (the new tree's ``STABLEBPTT_BACKWARD_CACHE``; None: none on disk)."""
    env = dict(
        os.environ, PYTHONPATH=str(tree / "src"), STABLEBPTT_NO_CACHE="1", STABLEBPTT_BACKWARD_CACHE=decisions or "off"
    )
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(args)], env=env, capture_output=True, text=True, timeout=900
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            assert Path(out.pop("file")).resolve().is_relative_to(tree.resolve()), out
            return out
    raise RuntimeError(f"worker failed in {tree}: {proc.stderr[-3000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, type=Path)
    ap.add_argument("--new", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--parts", default="update,epoch,first")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    parts = a.parts.split(",")
    trees = {"old": a.old, "new": a.new}
    rows: dict = {}

    def record(key, which, value):
        rows.setdefault(key, {}).setdefault(which, []).append(value)

    t0 = time.time()
    for r in range(a.rounds):
        for name in a.problems.split(","):
            prob = "cartpole" if name.startswith("cartpole") else name
            params = PROBLEMS[name]
            for which, tree in trees.items():
                if "update" in parts:
                    out = run_worker(tree, ["update", prob, params, list(UPDATE_MODES), a.reps, 0, 1])
                    for m, v in out["ms"].items():
                        record(("update", name, m), which, v)
                for mode in EPOCH_MODES if {"epoch", "first"} & set(parts) else ():
                    for dev in (1, 2) if "epoch" in parts else (2,):
                        with tempfile.TemporaryDirectory() as decisions:  # a fresh machine: no decision cached
                            out = run_worker(tree, ["epoch", prob, params, [mode], 0, a.epochs, dev], decisions)
                        if "epoch" in parts:
                            record(("epoch", name, f"{mode} dev{dev}"), which, out["epoch_ms"])
                        if "first" in parts and dev == 2:
                            record(("first", name, mode), which, 1e3 * out["first_s"])
            print(f"round {r + 1}/{a.rounds} {name} done at {time.time() - t0:.0f} s", flush=True)
    table = []
    for (part, name, what), v in rows.items():
        old, new = min(v["old"]), min(v["new"])
        med = statistics.median(n / o for o, n in zip(v["old"], v["new"]))
        table.append(
            {
                "part": part,
                "problem": name,
                "case": what,
                "old_ms": old,
                "new_ms": new,
                "new_over_old": new / old,
                "median_pair_ratio": med,
                "old_all": v["old"],
                "new_all": v["new"],
            }
        )
    print("| part | problem | case | old ms | new ms | new ÷ old | median of the rounds' new ÷ old |")
    print("|---|---|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['part']} | {t['problem']} | {t['case']} | {t['old_ms']:.2f} | {t['new_ms']:.2f} | "
            f"{t['new_over_old']:.3f} | {t['median_pair_ratio']:.3f} |"
        )
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "rows": table,
                    "old": str(a.old),
                    "new": str(a.new),
                    "rounds": a.rounds,
                    "median_ratio": statistics.median(t["new_over_old"] for t in table),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
