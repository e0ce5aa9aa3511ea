"""Throughput of K seeds trained together, vmapped or looped.

    python benchmarks/bench_seeds.py [--problems cartpole,guidance,quantum] [--modes R,C]
                                     [--ks 1,8,64] [--strategies loop,vmap] [--rounds 4] [--json out.json]
    python benchmarks/bench_seeds.py --problems cartpole --modes C --ks 1,2 --rounds 1   # dry run, ~1 min

The two ways :func:`stablebptt.training.runner.train` runs the seeds of one config (its ``batching=``
option): ``"vmap"``, one vmapped program for all K seeds (what ``batching="auto"`` picks on an
accelerator), and ``"loop"``, the one-seed program called seed after seed (``"auto"`` on a
CPU). The programs are those of :func:`stablebptt.training.trainer.make_train` (``_common.
trainer_programs``), paper settings, ``data="seeded"``, batch 8 per seed. For each K:

* ``update_s``: seconds per minibatch update of all K seeds (one call = an epoch's 32 updates,
  scanned, divided by 32), hence ``seed_updates_per_s`` = K / update_s;
* ``epoch_s``: one epoch of all K seeds (the updates, then the evaluation of 2 × 256 states
  per seed), hence ``seed_epoch_s`` = epoch_s / K;
* ``compile_s``: seconds to build and compile the programs (``TrainerPrograms.compile_s``).

K = 1 is the one-seed program (strategy "-"). At most 64 distinct seeds are built and
repeated up to K. One process (XLA keeps more than one core busy, see bench_cores.py).
"""

from __future__ import annotations

import argparse

import _common

from stablebptt import problems
from stablebptt.training.config import RunConfig

#: at most this many different seeds' parameters and data, repeated up to K
DISTINCT = 64


def setup(name: str, mode: str, K: int, strategy: str = "vmap"):
    """``(updates, epoch, compile_s, updates_per_epoch)`` for K seeds of (problem, mode) with
    ``batching=strategy`` (see ``_common.TrainerPrograms``)."""
    prob = problems.get(name)
    cfg = RunConfig(problem=name, mode=mode, epochs=1, data="seeded")
    p = _common.trainer_programs(prob, cfg, range(K), batching=strategy if K > 1 else "loop", distinct=DISTINCT)
    return p.updates, p.epoch, p.compile_s, p.updates_per_epoch


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
                for strategy in args.strategies.split(",") if K > 1 else ["loop"]:
                    updates, epoch, cs, nb = setup(name, mode, K, strategy)
                    t = _common.interleaved_min({"update": updates}, rounds=args.rounds)["update"] / nb
                    epoch_rounds = 1 if (name == "quantum" and K > 8) or args.rounds < 2 else 2
                    te = _common.interleaved_min({"epoch": epoch}, rounds=epoch_rounds)["epoch"]
                    row = {
                        "problem": name,
                        "mode": mode,
                        "K": K,
                        "strategy": strategy if K > 1 else "-",
                        "update_s": t,
                        "seed_updates_per_s": K / t,
                        "epoch_s": te,
                        "seed_epoch_s": te / K,
                        "compile_s": cs,
                    }
                    rows.append(row)
                    print(
                        f"{name:9s} {mode} K={K:3d} {row['strategy']:4s}: {t * 1e3:8.2f} ms/update -> "
                        f"{row['seed_updates_per_s']:8.0f} seed-updates/s; epoch {te:.3f} s = "
                        f"{row['seed_epoch_s'] * 1e3:7.1f} ms per seed-epoch (compile {cs:.1f} s)",
                        flush=True,
                    )
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
