"""A figure's runs as lanes of one program vs one program per run.

    python benchmarks/bench_lanes.py [--problem cartpole] [--params poles=1] [--seeds 1]
                                     [--modes R,M,S,C] [--clips none,value,norm] [--json out.json]

The lanes are modes × clips × seeds (the paper's cart-pole figure per pole count: 4 × 3 × 5
= 60). Timed interleaved (``_common.interleaved_min``), one steady epoch each (32 minibatch
updates of batch 8 per run + the evaluation of 2 × 256 states per run):

* ``lanes``: ``train``'s stepper with ``lane_configs``: one vmapped program for all runs
  (mode, clipping and seed as data);
* ``one by one``: ``--per-config runs`` (the CPU default): the one-run programs (one per mode
  and clipping, every seed reusing its config's program), called run after run: what a
  sweep worker does; ``--per-config seeds`` (the accelerator default): one program per
  config with its seeds vmapped (``--vmap-seeds``), config after config.

Reported: ms per epoch of all runs together, the ratio, and run-epochs per second. On a CPU
the one-by-one programs are expected to win (vmapping only turns each run's matmuls into
batched ones, and an R lane pays for C's two fields); on a GPU, where one update costs about
the same for 1 or 64 runs, the lanes are the point.
"""
from __future__ import annotations

import argparse
import json

import _common
import equinox as eqx
import jax
import jax.numpy as jnp

from stablebptt import problems
from stablebptt import train as T
from stablebptt.config import RunConfig


def _stepper(prob, cfgs, seeds, lanes: bool):
    """(epoch() callable, compile seconds) for these runs as lanes or for one run (len 1)."""
    models = [T.make_model(prob, c, s) for c, s in zip(cfgs, seeds)]
    data = [T.make_data(prob, c, s) for c, s in zip(cfgs, seeds)]
    static = eqx.partition(models[0], eqx.is_inexact_array)[1]
    params = [eqx.partition(m, eqx.is_inexact_array)[0] for m in models]
    K = len(cfgs)
    st = T._Stepper(prob, cfgs[0], static, data[0][0].shape[0], K, lanes=cfgs if lanes else None)
    opt = [st.init_opt(p, k) for k, p in enumerate(params)]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    if K == 1:
        P, O, TR, TE, KEY = params[0], opt[0], jnp.asarray(data[0][0]), jnp.asarray(data[0][1]), jax.random.PRNGKey(0)
    else:
        P, O = stack(params), stack(opt)
        TR, TE = jnp.stack([jnp.asarray(d[0]) for d in data]), jnp.stack([jnp.asarray(d[1]) for d in data])
        KEY = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    state = {"carry": st.init_carry(P, O)}
    compile_s = st.compile(state["carry"], TR, TE, KEY)

    def epoch():
        state["carry"], m = st.epoch(state["carry"], TR, TE, KEY)
        return m["test_loss"]

    return epoch, compile_s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="cartpole")
    ap.add_argument("--params", default="", help="problem parameters, e.g. poles=4")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--modes", default="R,M,S,C")
    ap.add_argument("--clips", default="none,value,norm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-config", choices=("runs", "seeds", "auto"), default="auto",
                    help="the baseline: one program per run, or per config with its seeds vmapped "
                         "(auto: runs on CPU, seeds elsewhere)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    params = {k: json.loads(v) for k, v in (kv.split("=") for kv in a.params.split(",") if kv)}
    prob = problems.get(a.problem, **params)
    base = dict(problem=a.problem, problem_params=params, epochs=1, data="seeded")
    configs = [RunConfig(mode=m, clip=c, **base) for m in a.modes.split(",") for c in a.clips.split(",")]
    runs = [(c, s) for c in configs for s in range(a.seeds)]
    lanes, lanes_compile = _stepper(prob, [c for c, _ in runs], [s for _, s in runs], lanes=True)
    per = a.per_config if a.per_config != "auto" else ("runs" if jax.default_backend() == "cpu" else "seeds")
    ones = []
    one_compile = 0.0
    for c in configs:
        if per == "seeds":  # one program per config, its seeds vmapped
            f, t = _stepper(prob, [c] * a.seeds, list(range(a.seeds)), lanes=False)
            ones.append(f)
            one_compile += t
            continue
        for s in range(a.seeds):  # one program per config; its seeds reuse it
            f, t = _stepper(prob, [c], [s], lanes=False)
            ones.append(f)
            one_compile += t if s == 0 else 0.0

    def one_by_one():
        return [f() for f in ones]

    t = _common.interleaved_min({"lanes": lanes, "one by one": one_by_one}, rounds=a.rounds)
    out = {
        "machine": _common.machine(), "problem": a.problem, "params": params, "runs": len(runs),
        "modes": a.modes, "clips": a.clips, "seeds": a.seeds, "per_config": per,
        "lanes_epoch_ms": t["lanes"] * 1e3, "one_by_one_epoch_ms": t["one by one"] * 1e3,
        "one_by_one_over_lanes": t["one by one"] / t["lanes"],
        "lanes_run_epochs_per_s": len(runs) / t["lanes"], "one_by_one_run_epochs_per_s": len(runs) / t["one by one"],
        "lanes_compile_s": lanes_compile, "one_by_one_compile_s": one_compile,
    }
    print(f"{a.problem} {params} {len(runs)} runs ({a.modes} x {a.clips} x {a.seeds} seeds), "
          f"{jax.devices()[0].platform}: one epoch of all runs: lanes {out['lanes_epoch_ms']:.1f} ms, "
          f"one by one ({per}) {out['one_by_one_epoch_ms']:.1f} ms (x{out['one_by_one_over_lanes']:.2f}); "
          f"compile {lanes_compile:.1f} s vs {one_compile:.1f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
