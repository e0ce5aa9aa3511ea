"""Steady epoch time at the paper's settings, per problem and mode, against the authors'
TensorFlow code on this machine, and the share of the epoch spent in the evaluation.

    python benchmarks/bench_epoch.py [--problems cartpole,guidance,quantum] [--modes R,M,S,C]
                                     [--rounds 6] [--train-rounds 2] [--json out.json]
    python benchmarks/bench_epoch.py --problems cartpole --modes R --rounds 1 \\
        --train-rounds 1 --train-epochs 3                       # dry run, ~1 min

An epoch = 32 minibatch updates of batch 8 + the loss of 256 train and 256 test states
(forward rollouts), one seed, one process (XLA keeps 1.2-1.8 cores busy, see bench_cores.py).
Reported in seconds per epoch:

* the programs of :func:`stablebptt.training.trainer.make_train` timed directly (``_common.
  trainer_programs``): ``updates`` (the 32 updates, one scanned program) and ``evaluate``,
  interleaved over the modes of a problem; ``epoch_s`` = one call of each in turn
  (sequential: the evaluation after the updates, on the same core), ``eval_share`` its
  evaluation's part, ``update_ms`` per update;
* steady epochs of real :func:`stablebptt.training.runner.train` calls (median of the epochs' wall
  times without the first and the last, best of ``--train-rounds``), alternating
  ``overlap_eval=False`` (sequential) and ``overlap_eval=True`` (the evaluation of epoch e on
  the second CPU device while epoch e+1 trains; what ``stablebptt train`` runs for one seed
  on a multi-core machine). ``overlapped_eval_share`` = what the evaluation still adds to an
  overlapped epoch: overlapped − (sequential − evaluation), a difference of two medians.

TF: the authors' code on the 2-core development machine (``_common.TF_EPOCH_S``, R and C).
"""

from __future__ import annotations

import argparse

import _common
import jax

jax.config.update("jax_num_cpu_devices", 2)  # before the backend starts: for the overlapped runs
import numpy as np  # noqa: E402

from stablebptt import problems  # noqa: E402
from stablebptt.training.config import RunConfig  # noqa: E402
from stablebptt.training.runner import train  # noqa: E402


def setup(name: str, mode: str):
    """``(epoch, evaluate, compile_s, updates_per_epoch)`` of one seed at the paper settings:
    ``epoch()`` runs the 32 updates then the evaluation, ``evaluate()`` the evaluation alone
    (see ``_common.TrainerPrograms``)."""
    prob = problems.get(name)
    cfg = RunConfig(problem=name, mode=mode, epochs=1)
    p = _common.trainer_programs(prob, cfg, [0])
    return p.epoch, p.evaluate, p.compile_s, p.updates_per_epoch


def measure(name: str, modes: list[str], rounds: int) -> list[dict]:
    """Per mode: the updates and the evaluation programs, timed interleaved."""
    prob = problems.get(name)
    fns, meta = {}, {}
    for m in modes:
        p = _common.trainer_programs(prob, RunConfig(problem=name, mode=m, epochs=1), [0])
        fns[f"{m}/updates"], fns[f"{m}/eval"] = p.updates, p.evaluate
        meta[m] = (p.compile_s, p.updates_per_epoch, p.backward)
    t = _common.interleaved_min(fns, rounds=rounds)
    rows = []
    for m in modes:
        u, v = t[f"{m}/updates"], t[f"{m}/eval"]
        e = u + v
        cs, nb, backward = meta[m]
        tf = _common.TF_EPOCH_S.get((name, m))
        rows.append(
            {
                "problem": name,
                "mode": m,
                "epoch_s": e,
                "updates_s": u,
                "eval_s": v,
                "eval_share": v / e,
                "update_ms": u / nb * 1e3,
                "compile_s": cs,
                "backward": backward,
                "tf_epoch_s": tf,
                "speedup_vs_tf": (tf / e) if tf else None,
            }
        )
        print(
            f"{name:9s} {m}: epoch {e * 1e3:7.1f} ms (eval {v * 1e3:6.1f} ms = {v / e:4.0%}), "
            f"{u / nb * 1e3:6.2f} ms/update" + (f", {tf / e:5.1f}x faster than TF" if tf else ""),
            flush=True,
        )
    return rows


def measure_train(name: str, modes: list[str], rounds: int, epochs: int) -> dict:
    """Steady-epoch seconds of ``runner.train()`` with the evaluation sequential and overlapped."""
    prob = problems.get(name)
    out = {}
    for m in modes:
        cfg = RunConfig(problem=name, mode=m, epochs=epochs)
        best = {}
        for _ in range(rounds):
            for overlap in (False, True):
                (r,) = train(prob, cfg, 0, overlap_eval=overlap)
                walls = r.history["wall_s"][1:-1] or r.history["wall_s"]
                key = "overlapped" if overlap else "sequential"
                best[key] = min(best.get(key, float("inf")), float(np.median(walls)))
        out[m] = best
        tf = _common.TF_EPOCH_S.get((name, m))
        print(
            f"{name:9s} {m}: train() epoch sequential {best['sequential'] * 1e3:7.1f} ms, overlapped "
            f"{best['overlapped'] * 1e3:7.1f} ms"
            + (f" = {tf / best['overlapped']:5.1f}x faster than TF" if tf else ""),
            flush=True,
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="cartpole,guidance,quantum")
    ap.add_argument("--modes", default="R,M,S,C")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of the program timings (quantum: half, at least 3)")
    ap.add_argument("--train-rounds", type=int, default=2, help="rounds of the train() measurement (0: skip it)")
    ap.add_argument(
        "--train-epochs", type=int, default=None, help="epochs per train() call (default 10, quantum 6; at least 3)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        rounds = max(min(3, args.rounds), args.rounds // 2) if name == "quantum" else args.rounds
        got = measure(name, args.modes.split(","), rounds)
        if args.train_rounds:
            epochs = max(3, args.train_epochs or (6 if name == "quantum" else 10))
            tr = measure_train(name, [r["mode"] for r in got], args.train_rounds, epochs)
            for r in got:
                t = tr[r["mode"]]
                r["train_sequential_s"], r["train_overlapped_s"] = t["sequential"], t["overlapped"]
                upd_only = t["sequential"] - r["eval_s"]
                r["overlapped_eval_share"] = max(0.0, t["overlapped"] - upd_only) / t["overlapped"]
                r["overlapped_speedup_vs_tf"] = (r["tf_epoch_s"] / t["overlapped"]) if r["tf_epoch_s"] else None
        rows += got
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
