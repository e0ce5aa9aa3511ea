"""Throughput of K seeds trained as one vmapped program (``train(problem, config, seeds=[...])``).

    python benchmarks/bench_seeds.py [--problems cartpole,guidance,quantum] [--ks 1,8,64]

For each K: the compiled minibatch update that :func:`stablebptt.train.train` runs (K seeds
vmapped, batch 8 each, paper settings) is timed, giving seed-updates per second; the full
epoch (32 updates + evaluation of 2 x 256 states per seed) gives seconds per seed-epoch.
One process, single-threaded XLA.
"""
from __future__ import annotations

import argparse

import _common
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from stablebptt import problems
from stablebptt import train as T
from stablebptt.config import RunConfig


def setup(name: str, mode: str, K: int):
    prob = problems.get(name)
    cfg = RunConfig(problem=name, mode=mode, epochs=1, data="seeded")
    seeds = list(range(K))
    models = [T.make_model(prob, cfg, s) for s in seeds]
    data = [T.make_data(prob, cfg, s) for s in seeds]
    static = eqx.partition(models[0], eqx.is_inexact_array)[1]
    params = [eqx.partition(m, eqx.is_inexact_array)[0] for m in models]
    st = T._Stepper(prob, cfg, static, data[0][0].shape[0], K)
    opt = [st.tx.init(p) for p in params]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    if K == 1:
        P, O, TR, TE, KEY = params[0], opt[0], jnp.asarray(data[0][0]), jnp.asarray(data[0][1]), jax.random.PRNGKey(0)
    else:
        P, O = stack(params), stack(opt)
        TR = jnp.stack([jnp.asarray(d[0]) for d in data])
        TE = jnp.stack([jnp.asarray(d[1]) for d in data])
        KEY = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    carry = st.init_carry(P, O)
    compile_s = st.compile(carry, TR, TE, KEY)
    state = {"carry": carry}
    b = st.batches(TR, KEY)

    def update():
        state["carry"] = st.update(state["carry"], b, st.idx[0])
        return state["carry"][2]

    def epoch():
        state["carry"], m = st.epoch(state["carry"], TR, TE, KEY)
        return m

    return update, epoch, compile_s, st.nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--ks", default="1,8,64")
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        for mode in args.modes.split(","):
            for K in map(int, args.ks.split(",")):
                update, epoch, cs, nb = setup(name, mode, K)
                reps = max(1, int(8 / K)) if name != "quantum" else 1
                t = _common.interleaved_min({"update": update}, rounds=args.rounds, reps=reps, min_round_s=0.2)
                te = _common.interleaved_min({"epoch": epoch}, rounds=2 if (name == "quantum" and K > 8) else 3)
                row = {"problem": name, "mode": mode, "K": K, "update_s": t["update"],
                       "seed_updates_per_s": K / t["update"], "epoch_s": te["epoch"],
                       "seed_epoch_s": te["epoch"] / K, "compile_s": cs}
                rows.append(row)
                print(f"{name:9s} {mode} K={K:3d}: {t['update'] * 1e3:8.2f} ms/update -> "
                      f"{row['seed_updates_per_s']:8.0f} seed-updates/s; epoch {te['epoch']:.3f} s = "
                      f"{row['seed_epoch_s'] * 1e3:7.1f} ms per seed-epoch (compile {cs:.1f} s)", flush=True)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
