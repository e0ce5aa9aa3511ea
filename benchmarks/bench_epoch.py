"""Steady epoch time at the paper's settings, per problem and mode, as run by
:func:`stablebptt.train.train` (32 updates of batch 8 + evaluation of 256 train and 256 test
states), against the authors' TensorFlow code on this machine, and the share of the epoch
spent in the evaluation.

    python benchmarks/bench_epoch.py [--problems cartpole,guidance,quantum] [--modes R,M,S,C]

One seed, one process (XLA keeps 1.2-1.8 cores busy, see bench_cores.py). The modes of one problem are timed interleaved.

Two ways an epoch runs: ``sequential`` = the updates, then the evaluation on the same core
(the epoch program as timed by the first columns); ``overlapped`` = what ``train()`` does for
one seed when JAX has two CPU devices (``stablebptt train`` sets that up): the evaluation of
epoch e runs on the second core while epoch e+1 trains. Those two are measured as steady
epochs of real ``train()`` calls (median of the epochs' wall times, excluding the first and
the last), alternating overlap off/on.
"""
from __future__ import annotations

import argparse

import _common
import equinox as eqx
import jax

jax.config.update("jax_num_cpu_devices", 2)  # before the backend starts: for the overlapped runs
import numpy as np
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


def measure_train(name: str, modes: list[str], rounds: int, epochs: int) -> dict:
    """Steady-epoch seconds of ``train()`` with the evaluation sequential and overlapped."""
    prob = problems.get(name)
    out = {}
    for m in modes:
        cfg = RunConfig(problem=name, mode=m, epochs=epochs)
        best = {}
        for _ in range(rounds):
            for ov in (False, "auto"):
                T.OVERLAP_EVAL = ov
                (r,) = T.train(prob, cfg, 0)
                w = float(np.median(r.history["wall_s"][1:-1]))
                key = "overlapped" if ov else "sequential"
                best[key] = min(best.get(key, float("inf")), w)
        T.OVERLAP_EVAL = "auto"
        out[m] = best
        tf = _common.TF_EPOCH_S.get((name, m))
        print(f"{name:9s} {m}: train() epoch sequential {best['sequential'] * 1e3:7.1f} ms, overlapped "
              f"{best['overlapped'] * 1e3:7.1f} ms" + (f" = {tf / best['overlapped']:5.1f}x faster than TF" if tf else ""),
              flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--modes", default="R,M,S,C")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--train-rounds", type=int, default=2, help="rounds of the train() measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        rounds = max(3, args.rounds // 2) if name == "quantum" else args.rounds
        got = measure(name, args.modes.split(","), rounds)
        tr = measure_train(name, [r["mode"] for r in got], args.train_rounds, 6 if name == "quantum" else 10)
        for r in got:
            t = tr[r["mode"]]
            r["train_sequential_s"], r["train_overlapped_s"] = t["sequential"], t["overlapped"]
            # what the evaluation still adds to a train() epoch when overlapped: the overlapped
            # epoch minus the sequential train() epoch without its evaluation (same method)
            upd_only = t["sequential"] - r["eval_s"]
            r["overlapped_eval_share"] = max(0.0, t["overlapped"] - upd_only) / t["overlapped"]
            r["overlapped_speedup_vs_tf"] = (r["tf_epoch_s"] / t["overlapped"]) if r["tf_epoch_s"] else None
        rows += got
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
