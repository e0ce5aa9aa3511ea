"""Long horizons: memory and time per update vs horizon, with and without remat segments,
and a long-horizon cart-pole training run.

    python benchmarks/bench_remat.py [--horizons 100,1000,3000,10000] [--modes R,C]
                                     [--rounds 3] [--train-steps 10000] [--json out.json]
    python benchmarks/bench_remat.py --horizons 100 --modes C --rounds 1 \
        --train-steps 100 --train-modes none                   # dry run, ~1 min

Per update (cart-pole with T = ``--horizons`` steps, batch 8, paper controller), three backward
strategies, compiled and timed interleaved in one process:

* ``none``: the strategy of :func:`stablebptt.select_backward` without segments;
* ``remat``: the same with ``checkpoint_every`` ≈ √T (a divisor of T): the forward loop keeps
  only each segment's initial state, the sweep recomputes one segment at a time;
* ``remat_per_step``: the same segments with ``jacobian="per_step"`` (the controller's input
  vjp at every reverse step instead of each segment's batched input Jacobian).

Memory is XLA's buffer assignment of the compiled update (``memory_analysis()``:
temporaries + arguments + outputs, bytes), exact for the program and independent of machine
load; ``estimate_bytes_none`` is :func:`stablebptt.core.backward.memory_estimate`'s T ·
per-step bytes, the figure ``checkpoint_every="auto"`` compares with the memory budget, and
``auto_segment`` what ``"auto"`` picks with the default budget (None: no segments).

The training run (``--train-steps``; 0 skips it): one epoch of mode C (32 updates + the
evaluation of 2 × 256 states) with ``checkpoint_every`` = "auto", √T and None
(``--train-modes``), each in a fresh process via :func:`stablebptt.training.runner.train`; its peak
resident memory (``ru_maxrss``, bytes) includes the Python interpreter and JAX itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys

import _common

from stablebptt.core.backward import memory_estimate
from stablebptt.core.gates import Flow


def compiled_bytes(c) -> int:
    """Bytes of a compiled program's buffers: temporaries + arguments + outputs."""
    m = c.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def sqrt_segment(T: int) -> int:
    """The smallest divisor of T that is at least √T (rounded)."""
    want = max(1, int(round(math.sqrt(T))))
    for s in range(want, T + 1):
        if T % s == 0:
            return s
    return T


def measure(steps: int, mode: str, rounds: int) -> dict:
    """Memory and time per update of the three strategies (module docstring) at T = ``steps``."""
    label, prob, model, x0 = _common.paper_case("cartpole", steps=steps)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    none = _common.default_strategy(model, x0, flow=mode, **kw)
    auto = _common.default_strategy(model, x0, flow=mode, checkpoint_every="auto", **kw).checkpoint_every
    est = memory_estimate(none, model, x0, live_ctrl=Flow(mode).gates(steps).live, **kw)
    seg = sqrt_segment(steps)
    variants = {
        "none": none,
        "remat": dataclasses.replace(none, checkpoint_every=seg),
        "remat_per_step": dataclasses.replace(none, checkpoint_every=seg, jacobian="per_step"),
    }
    out = {
        "steps": steps,
        "mode": mode,
        "auto_segment": auto,
        "remat_segment": seg,
        "estimate_bytes_per_step": est["per_step"],
        "estimate_bytes_none": steps * est["per_step"],
        "strategies": {k: repr(v) for k, v in variants.items()},
    }
    fns = {}
    for name, backward in variants.items():
        c, params = _common.compile_update(model, x0, flow=mode, backward=backward, **kw)
        out[f"bytes_{name}"] = compiled_bytes(c)
        fns[name] = lambda c=c, params=params: c(params)
    t = _common.interleaved_min(fns, rounds=rounds, reps=1, min_round_s=0.1 if rounds > 1 else 0.0)
    for name in variants:
        out[f"ms_{name}"] = t[name] * 1e3
    out["remat_time_ratio"] = t["remat"] / t["none"]
    out["per_step_remat_time_ratio"] = t["remat_per_step"] / t["none"]
    out["memory_ratio"] = out["bytes_none"] / out["bytes_remat"]
    print(
        f"cartpole T={steps:6d} {mode}: no remat {out['bytes_none'] / 2**20:8.1f} MiB {t['none'] * 1e3:8.1f} ms | "
        f"remat(seg {seg}) {out['bytes_remat'] / 2**20:7.1f} MiB {t['remat'] * 1e3:8.1f} ms "
        f"({out['remat_time_ratio']:.2f}x time, {out['memory_ratio']:.0f}x less memory) | per-step remat "
        f"{out['bytes_remat_per_step'] / 2**20:7.1f} MiB {t['remat_per_step'] * 1e3:8.1f} ms "
        f"({out['per_step_remat_time_ratio']:.2f}x) | estimate {out['estimate_bytes_none'] / 2**20:.1f} MiB, "
        f"auto -> {auto}",
        flush=True,
    )
    return out


TRAIN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {bench!r})
import _common
from stablebptt import problems
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train
steps, ce, mode, epochs = {steps}, {ce!r}, {mode!r}, {epochs}
prob = problems.get("cartpole", steps=steps)
cfg = RunConfig(problem="cartpole", problem_params=dict(steps=steps), mode=mode, epochs=epochs, checkpoint_every=ce)
t = time.perf_counter()
(res,) = train(prob, cfg, 0)
print(json.dumps(dict(wall_s=time.perf_counter() - t, compile_s=res.compile_s, epoch_s=res.history["wall_s"],
                      test_loss=res.history["test_loss"], backward=res.ran["backward"],
                      peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def train_run(steps: int, ce, mode: str, epochs: int, timeout: float) -> dict | None:
    """One training run in a fresh process (module docstring); None if it failed or timed out."""
    code = TRAIN_CHILD.format(bench=str(_common.HERE), steps=steps, ce=ce, mode=mode, epochs=epochs)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode:
        sys.stderr.write(p.stderr[-2000:])
        return None
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(steps=steps, checkpoint_every=ce, mode=mode)
    print(
        f"train cartpole T={steps} {mode} checkpoint_every={ce!r}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB, "
        f"epochs {[round(e, 1) for e in r['epoch_s']]} s, compile {r['compile_s']:.1f} s",
        flush=True,
    )
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizons", default="100,1000,3000,10000")
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=10000)
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument(
        "--train-modes",
        default="auto,sqrt,none",
        help="checkpoint_every of the training runs: auto, sqrt (segments of about sqrt(T)), none",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = [measure(T, m, args.rounds) for T in map(int, args.horizons.split(",")) for m in args.modes.split(",")]
    runs = []
    if args.train_steps:
        choice = {"auto": "auto", "sqrt": sqrt_segment(args.train_steps), "none": None}
        for ce in (choice[k] for k in args.train_modes.split(",")):
            r = train_run(args.train_steps, ce, "C", args.train_epochs, timeout=1800)
            if r:
                runs.append(r)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows, "train": runs})
    return rows, runs


if __name__ == "__main__":
    main()
