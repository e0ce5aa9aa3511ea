"""GPU recipe check (run on a machine with a GPU; does nothing useful without one).

    python benchmarks/gpu_check.py [--ks 1,64,512,4096] [--json out.json]

1. Precision: float32 updates of every paper problem and mode on the GPU vs the CPU, with
   ``jax_default_matmul_precision`` at the default (TF32 on Ampere and newer: ~1e-3 relative
   differences) and at "highest" (expected ≤ 1e-5, like CPU vs CPU with a different
   summation order). Reported as max |gpu - cpu| / max |cpu| per update pytree.
2. Throughput: seed-updates per second for K vmapped seeds (``SEED_STRATEGY = "vmap"``, the
   accelerator default) on cart-pole, mode C, batch 8 per seed.

Recipe (docs/performance.md): ``pip install -U "jax[cuda12]"``; ``stablebptt.cli.setup_jax``
sets ``jax_default_matmul_precision="highest"`` when a GPU is present; the run manifest
records it under ``precision.matmul_precision``; train many seeds per program
(``train(problem, config, seeds=range(K))`` or ``sweep ... vmap_seeds=True``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def rel_diff(a, b) -> float:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(float(np.max(np.abs(np.asarray(y)))), 1e-30))
               for x, y in zip(la, lb))


def precision_check() -> list[dict]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common
    from stablebptt import flow as F

    cpu, gpu = jax.devices("cpu")[0], jax.devices()[0]
    rows = []
    for name in ("cartpole", "guidance", "quantum"):
        _, prob, model, x0 = _common.paper_case(name)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
        for mode in ("R", "M", "S", "C"):
            f = jax.jit(lambda p, x, mode=mode: F.value_and_update(eqx.combine(p, static), x, flow=mode,
                                                                     validate=False, **kw)[:2])
            ref = f(jax.device_put(params, cpu), jax.device_put(x0, cpu))
            row = {"problem": name, "mode": mode}
            for prec in ("default", "highest"):
                with jax.default_matmul_precision(prec):
                    g = jax.jit(lambda p, x, mode=mode: F.value_and_update(eqx.combine(p, static), x, flow=mode,
                                                                             validate=False, **kw)[:2])
                    out = g(jax.device_put(params, gpu), jax.device_put(x0, gpu))
                row[f"loss_{prec}"] = abs(float(out[0]) - float(ref[0])) / max(abs(float(ref[0])), 1e-30)
                row[f"update_{prec}"] = rel_diff(out[1], ref[1])
            row["ok_highest"] = row["update_highest"] <= 1e-5 and row["loss_highest"] <= 1e-5
            rows.append(row)
            print(f"{name:9s} {mode}: rel. diff GPU vs CPU  default {row['update_default']:.1e}  "
                  f"highest {row['update_highest']:.1e}  {'ok' if row['ok_highest'] else 'CHECK'}", flush=True)
    return rows


def throughput(ks) -> list[dict]:
    import bench_seeds
    from stablebptt import train as T

    T.SEED_STRATEGY = "vmap"
    rows = []
    for K in ks:
        update, _, cs, _ = bench_seeds.setup("cartpole", "C", K, "vmap")
        jax.block_until_ready(update())
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10):
                out = update()
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - t) / 10)
        rows.append({"K": K, "update_s": best, "seed_updates_per_s": K / best, "compile_s": cs})
        print(f"cart-pole C, K={K:5d}: {best * 1e3:7.2f} ms/update, {K / best:9.0f} seed-updates/s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="1,64,512,4096")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if jax.default_backend() == "cpu":
        print("no GPU: nothing to check (see docs/performance.md for the recipe)")
        return
    prec = precision_check()
    jax.config.update("jax_default_matmul_precision", "highest")  # what cli.setup_jax does on a GPU
    thr = throughput([int(k) for k in args.ks.split(",")])
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "precision": prec, "throughput": thr}, f, indent=2)


if __name__ == "__main__":
    main()
