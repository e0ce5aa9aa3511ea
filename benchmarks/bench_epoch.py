"""Steady epoch time at the paper's settings, per problem and mode, as run by
:func:`stablebptt.train.train` (32 updates of batch 8 + evaluation of 256 train and 256 test
states), against the authors' TensorFlow code on this machine, and the share of the epoch
spent in the evaluation.

    python benchmarks/bench_epoch.py [--problems cartpole,guidance,quantum] [--modes R,M,S,C]

One seed, one process, single-threaded XLA. The modes of one problem are timed interleaved.
"""
from __future__ import annotations

import argparse

import _common
import equinox as eqx
import jax
import jax.numpy as jnp

from stablebptt import problems
from stablebptt import train as T
from stablebptt.config import RunConfig


def setup(name: str, mode: str):
    prob = problems.get(name)
    cfg = RunConfig(problem=name, mode=mode, epochs=1)
    model = T.make_model(prob, cfg, 0)
    tr, te = (jnp.asarray(a) for a in T.make_data(prob, cfg, 0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    st = T._Stepper(prob, cfg, static, tr.shape[0], 1)
    carry = st.init_carry(params, st.tx.init(params))
    key = jax.random.PRNGKey(0)
    compile_s = st.compile(carry, tr, te, key)
    state = {"carry": carry}

    def epoch():
        state["carry"], m = st.epoch(state["carry"], tr, te, key)
        return m

    ev = T._make_evaluate(prob, static)
    ev_c = jax.jit(ev).lower(params, tr, te).compile()
    evaluate = lambda: ev_c(state["carry"][0], tr, te)
    return epoch, evaluate, compile_s, st.nb


def measure(name: str, modes: list[str], rounds: int) -> list[dict]:
    fns, meta = {}, {}
    for m in modes:
        ep, ev, cs, nb = setup(name, m)
        fns[f"{m}/epoch"], fns[f"{m}/eval"] = ep, ev
        meta[m] = (cs, nb)
    t = _common.interleaved_min(fns, rounds=rounds)
    rows = []
    for m in modes:
        e, v = t[f"{m}/epoch"], t[f"{m}/eval"]
        tf = _common.TF_EPOCH_S.get((name, m))
        rows.append({"problem": name, "mode": m, "epoch_s": e, "eval_s": v, "eval_share": v / e,
                     "update_ms": (e - v) / meta[m][1] * 1e3, "compile_s": meta[m][0],
                     "tf_epoch_s": tf, "speedup_vs_tf": (tf / e) if tf else None})
        print(f"{name:9s} {m}: epoch {e * 1e3:7.1f} ms (eval {v * 1e3:6.1f} ms = {v / e:4.0%}), "
              f"{(e - v) / meta[m][1] * 1e3:6.2f} ms/update" + (f", {tf / e:5.1f}x faster than TF" if tf else ""),
              flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--modes", default="R,M,S,C")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        rounds = max(3, args.rounds // 2) if name == "quantum" else args.rounds
        rows += measure(name, args.modes.split(","), rounds)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
