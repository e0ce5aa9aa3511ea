"""A figure's runs as lanes of one program vs one program per configuration.

    python benchmarks/bench_lanes.py [--problem cartpole] [--params poles=1] [--seeds 1]
                                     [--modes R,M,S,C] [--clips none,value,norm]
                                     [--per-config runs|seeds|auto] [--rounds 5] [--json out.json]
    python benchmarks/bench_lanes.py --modes R,C --clips none --rounds 1   # dry run, ~1 min

The runs are modes × clips × seeds (the paper's cart-pole figure per pole count: 4 × 3 × 5
= 60), ``data="seeded"``. Timed interleaved (``_common.interleaved_min``), one steady epoch
of every run (32 minibatch updates of batch 8 per run + the evaluation of 2 × 256 states per
run), in milliseconds for all runs together:

* ``lanes``: ``make_trainer(problem, config, lane_configs)`` — one vmapped program for all runs (mode,
  clipping and seed as data), what ``runner.train(..., lane_configs=...)`` and ``stablebptt
  sweep --vmap-configs`` run;
* ``one by one``: one program per configuration (mode and clipping), with its seeds
  ``--per-config runs``: run after run (``batching="loop"``, what a sweep worker does on a
  CPU) or ``seeds``: vmapped (``batching="vmap"``, what it does on an accelerator);
  ``auto``: runs on a CPU, seeds elsewhere.

Also reported: the ratio one by one ÷ lanes, run-epochs per second and the compile seconds
(``TrainerPrograms.compile_s``: one program for the lanes, the sum over the configurations
one by one). A lane computes two fields whatever its mode, and vmapping turns each run's
matrix products into batched ones; on an accelerator an update costs about the same for 1
or 64 runs.
"""

from __future__ import annotations

import argparse
import json

import _common
import jax

from stablebptt import problems
from stablebptt.training.config import RunConfig


def _programs(prob, config, seeds, lane_configs=None, batching: str = "vmap"):
    """(epoch() callable, compile seconds) for these runs (see ``_common.trainer_programs``)."""
    p = _common.trainer_programs(prob, config, seeds, lane_configs=lane_configs, batching=batching)
    return p.epoch, p.compile_s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="cartpole")
    ap.add_argument("--params", default="", help="problem parameters, e.g. poles=4")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--modes", default="R,M,S,C")
    ap.add_argument("--clips", default="none,value,norm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--per-config",
        choices=("runs", "seeds", "auto"),
        default="auto",
        help="the baseline: one program per run, or per config with its seeds vmapped "
        "(auto: runs on CPU, seeds elsewhere)",
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    params = {k: json.loads(v) for k, v in (kv.split("=") for kv in a.params.split(",") if kv)}
    prob = problems.get(a.problem, **params)
    base = dict(problem=a.problem, problem_params=params, epochs=1, data="seeded")
    configs = [RunConfig(mode=m, clip=c, **base) for m in a.modes.split(",") for c in a.clips.split(",")]
    runs = [(c, s) for c in configs for s in range(a.seeds)]
    lanes, lanes_compile = _programs(prob, runs[0][0], [s for _, s in runs], lane_configs=[c for c, _ in runs])
    per = a.per_config if a.per_config != "auto" else ("runs" if jax.default_backend() == "cpu" else "seeds")
    ones = []
    one_compile = 0.0
    for c in configs:  # one program per config: its seeds vmapped ("seeds") or run after run ("runs")
        f, t = _programs(prob, c, list(range(a.seeds)), batching="vmap" if per == "seeds" else "loop")
        ones.append(f)
        one_compile += t

    def one_by_one():
        return [f() for f in ones]

    t = _common.interleaved_min({"lanes": lanes, "one by one": one_by_one}, rounds=a.rounds)
    out = {
        "machine": _common.machine(),
        "problem": a.problem,
        "params": params,
        "runs": len(runs),
        "modes": a.modes,
        "clips": a.clips,
        "seeds": a.seeds,
        "per_config": per,
        "lanes_epoch_ms": t["lanes"] * 1e3,
        "one_by_one_epoch_ms": t["one by one"] * 1e3,
        "one_by_one_over_lanes": t["one by one"] / t["lanes"],
        "lanes_run_epochs_per_s": len(runs) / t["lanes"],
        "one_by_one_run_epochs_per_s": len(runs) / t["one by one"],
        "lanes_compile_s": lanes_compile,
        "one_by_one_compile_s": one_compile,
    }
    print(
        f"{a.problem} {params} {len(runs)} runs ({a.modes} x {a.clips} x {a.seeds} seeds), "
        f"{jax.devices()[0].platform}: one epoch of all runs: lanes {out['lanes_epoch_ms']:.1f} ms, "
        f"one by one ({per}) {out['one_by_one_epoch_ms']:.1f} ms (x{out['one_by_one_over_lanes']:.2f}); "
        f"compile {lanes_compile:.1f} s vs {one_compile:.1f} s"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
