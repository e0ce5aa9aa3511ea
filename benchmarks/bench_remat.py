"""Long horizons: memory and time per update vs horizon, with and without remat
(``jax.checkpoint`` over segments of the unroll), and a 10,000-step cart-pole training run.

    python benchmarks/bench_remat.py [--horizons 100,1000,3000,10000] [--train-steps 10000]

Memory is XLA's buffer assignment of the compiled update (``memory_analysis()``: temporaries
+ arguments + outputs), exact for the program and independent of machine load. "auto" is
``checkpoint_every="auto"`` with the default budget (no remat while the estimate fits);
"remat" forces segments of ≈ √T steps (what "auto" picks when the budget is small). The
training run happens in a fresh process; its peak resident memory (ru_maxrss) includes the
Python interpreter and JAX itself (~0.3–0.4 GB).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import _common
import equinox as eqx
import jax

from stablebptt import flow as F


def compiled_bytes(c) -> int:
    m = c.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def sqrt_segment(T: int) -> int:
    want = max(1, int(round(math.sqrt(T))))
    for s in range(want, T + 1):
        if T % s == 0:
            return s
    return T


def measure(steps: int, mode: str, rounds: int) -> dict:
    label, prob, model, x0 = _common.paper_case("cartpole", steps=steps)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    est = F.memory_model(model, x0, flow=mode, **kw)
    auto = F.plan_checkpointing(model, x0, flow=mode, **kw)
    seg = sqrt_segment(steps)
    # "remat_per_step": the same segments on the per-step controller vjp (the engine before
    # the batched-Jacobian path learnt segments), for the time and memory ratios in one run
    variants = {"none": None, "remat": seg, "remat_per_step": seg}
    out = {"steps": steps, "mode": mode, "auto_segment": auto, "remat_segment": seg,
           "estimate_bytes_per_step": max(est["loop"], est["post"]) + est["fixed"]}
    fns = {}
    for name, ce in variants.items():
        f = jax.jit(lambda p, x, ce=ce: F.value_and_update(eqx.combine(p, static), x, flow=mode, validate=False,
                                                             checkpoint_every=ce, **kw)[1])
        saved = F.JACOBIAN_MAX_CONTROLS
        F.JACOBIAN_MAX_CONTROLS = 0 if name == "remat_per_step" else saved  # read while tracing
        try:
            c = f.lower(params, x0).compile()
        finally:
            F.JACOBIAN_MAX_CONTROLS = saved
        out[f"bytes_{name}"] = compiled_bytes(c)
        fns[name] = lambda c=c: c(params, x0)
    t = _common.interleaved_min(fns, rounds=rounds, reps=1, min_round_s=0.1)
    for name in variants:
        out[f"ms_{name}"] = t[name] * 1e3
    out["remat_time_ratio"] = t["remat"] / t["none"]
    out["per_step_remat_time_ratio"] = t["remat_per_step"] / t["none"]
    out["memory_ratio"] = out["bytes_none"] / out["bytes_remat"]
    print(f"cartpole T={steps:6d} {mode}: no remat {out['bytes_none'] / 2**20:8.1f} MiB {t['none'] * 1e3:8.1f} ms | "
          f"remat(seg {seg}) {out['bytes_remat'] / 2**20:7.1f} MiB {t['remat'] * 1e3:8.1f} ms "
          f"({out['remat_time_ratio']:.2f}x time, {out['memory_ratio']:.0f}x less memory) | per-step remat "
          f"{out['bytes_remat_per_step'] / 2**20:7.1f} MiB {t['remat_per_step'] * 1e3:8.1f} ms "
          f"({out['per_step_remat_time_ratio']:.2f}x) | auto -> {auto}",
          flush=True)
    return out


TRAIN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {bench!r})
import _common
from stablebptt import problems
from stablebptt.config import RunConfig
from stablebptt.train import train
steps, ce, mode, epochs = {steps}, {ce!r}, {mode!r}, {epochs}
prob = problems.get("cartpole", steps=steps)
cfg = RunConfig.model_construct(**(RunConfig(problem="cartpole", mode=mode, epochs=epochs).model_dump()
                                   | dict(checkpoint_every=ce)))
t = time.perf_counter()
(res,) = train(prob, cfg, 0)
print(json.dumps(dict(wall_s=time.perf_counter() - t, compile_s=res.compile_s, epoch_s=res.history["wall_s"],
                      test_loss=res.history["test_loss"], peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def train_run(steps: int, ce, mode: str, epochs: int, timeout: float) -> dict | None:
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
    print(f"train cartpole T={steps} {mode} checkpoint_every={ce!r}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB, "
          f"epochs {[round(e, 1) for e in r['epoch_s']]} s, compile {r['compile_s']:.1f} s", flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizons", default="100,1000,3000,10000")
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=10000)
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = [measure(T, m, args.rounds) for T in map(int, args.horizons.split(",")) for m in args.modes.split(",")]
    runs = []
    if args.train_steps:
        for ce in ("auto", sqrt_segment(args.train_steps), None):
            r = train_run(args.train_steps, ce, "C", args.train_epochs, timeout=1800)
            if r:
                runs.append(r)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows, "train": runs})
    return rows, runs


if __name__ == "__main__":
    main()
