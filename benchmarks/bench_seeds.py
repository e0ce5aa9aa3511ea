"""Throughput of K seeds trained together (``train(problem, config, seeds=[...])``).

    python benchmarks/bench_seeds.py [--problems cartpole,guidance,quantum] [--ks 1,8,64]

Two strategies (``stablebptt.train.SEED_STRATEGY``): "vmap", one vmapped program for all K
seeds (what an accelerator wants), and "loop", the one-seed programs called seed after seed
(the CPU default). For each K the minibatch update is timed (K seeds, batch 8 each, paper
settings), giving seed-updates per second, and a full epoch (32 updates + evaluation of
2 x 256 states per seed) gives seconds per seed-epoch. One process (XLA keeps more than one core busy, see bench_cores.py).
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


DISTINCT = 64


def setup(name: str, mode: str, K: int, strategy: str = "vmap"):
    prob = problems.get(name)
    cfg = RunConfig(problem=name, mode=mode, epochs=1, data="seeded")
    # at most DISTINCT different seeds, repeated up to K (the time does not depend on the values;
    # building thousands of models one by one would dominate a GPU run)
    seeds = [s % DISTINCT for s in range(K)]
    models = [T.make_model(prob, cfg, s) for s in range(min(K, DISTINCT))]
    data = [T.make_data(prob, cfg, s) for s in range(min(K, DISTINCT))]
    models, data = [models[s] for s in seeds], [data[s] for s in seeds]
    static = eqx.partition(models[0], eqx.is_inexact_array)[1]
    params = [eqx.partition(m, eqx.is_inexact_array)[0] for m in models]
    cls = T._SeedLoop if (strategy == "loop" and K > 1) else T._Stepper
    st = cls(prob, cfg, static, data[0][0].shape[0], K)
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
    # one call = the nb minibatch updates of an epoch (one scanned program per seed)
    if cls is T._Stepper:
        b = st.batches(TR, KEY)

        def updates():
            state["carry"] = st.updates(state["carry"], b)
            return state["carry"][2]
    else:
        def updates():
            c = state["carry"]
            for k in range(K):
                c[k] = st.one.updates(c[k], st.fixed[k])
            return c[-1][2]

    def epoch():
        state["carry"], m = st.epoch(state["carry"], TR, TE, KEY)
        return m

    return updates, epoch, compile_s, st.nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--ks", default="1,8,64")
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--strategies", default="loop,vmap")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        for mode in args.modes.split(","):
            for K in map(int, args.ks.split(",")):
              for strategy in (args.strategies.split(",") if K > 1 else ["loop"]):
                updates, epoch, cs, nb = setup(name, mode, K, strategy)
                t = _common.interleaved_min({"update": updates}, rounds=args.rounds, reps=1)
                t = {"update": t["update"] / nb}
                te = _common.interleaved_min({"epoch": epoch}, rounds=1 if (name == "quantum" and K > 8) else 2)
                row = {"problem": name, "mode": mode, "K": K, "strategy": strategy if K > 1 else "-",
                       "update_s": t["update"], "seed_updates_per_s": K / t["update"], "epoch_s": te["epoch"],
                       "seed_epoch_s": te["epoch"] / K, "compile_s": cs}
                rows.append(row)
                print(f"{name:9s} {mode} K={K:3d} {row['strategy']:4s}: {t['update'] * 1e3:8.2f} ms/update -> "
                      f"{row['seed_updates_per_s']:8.0f} seed-updates/s; epoch {te['epoch']:.3f} s = "
                      f"{row['seed_epoch_s'] * 1e3:7.1f} ms per seed-epoch (compile {cs:.1f} s)", flush=True)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
