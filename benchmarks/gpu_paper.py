"""The paper's figures at full scale on one accelerator: every lane group of a figure (the runs
that differ only in mode, clipping and seed, see ``stablebptt.training.trainer.LANE_FIELDS``) as one
vmapped program, each group in its own process, all groups of all figures at once.

    python benchmarks/gpu_paper.py --out /tmp/paper --figure cartpole --figure guidance \
        --figure quantum:target=5:seeds=3 --deadline 480

A figure is a sweep spec of ``experiments/paper/specs/`` (cartpole, guidance, quantum), optionally with
one level value and a seed count (``quantum:target=5:seeds=3``). Run folders are written to
``OUT/<figure>/`` under the same names a ``stablebptt sweep`` of the spec would use, so the
sweep (or ``stablebptt results``) resumes from or reads them. A group writes its runs when
all its lanes have finished; ``--deadline`` seconds after the start, unfinished groups are
stopped (their runs are not written). Each group prints a progress line every
``--log-every`` epochs (epoch, wall time, the lanes' median test loss) and a JSON line at the
end, which are the measurements reported in benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

#: the sweep specs of the paper's figures
PAPER_SPECS = Path(__file__).resolve().parents[1] / "experiments" / "paper" / "specs"


def _figure_spec(text: str, quick: bool = False) -> tuple[str, dict]:
    """``"quantum:target=5:seeds=3"`` -> (name, spec dict of the figure's sweep with that level and seeds)."""
    from stablebptt.experiments import sweep

    name, *opts = text.split(":")
    spec = sweep.load_spec(PAPER_SPECS / f"{name}{'-quick' if quick else ''}.toml").model_dump(mode="json")
    for opt in opts:
        k, v = opt.split("=", 1)
        if k == "seeds":
            spec["seeds"] = int(v)
        else:
            spec["experiment"][0]["level"] = {k: [type(spec["experiment"][0]["level"][k][0])(v)]}
    return name, spec


def _group(label: str, lane_dicts: list[dict], seeds: list[int], root: str, log_every: int, queue) -> None:
    """One lane group in its own process: train, write the run folders, report."""
    from stablebptt.experiments.run import run_lanes
    from stablebptt.training.config import RunConfig

    t0 = time.perf_counter()
    last = {"e": 0, "t": t0}

    def on_epoch(e, rows):
        if e % log_every == 0 or e == 1:
            import numpy as np

            te = [r["test_loss"] for r in rows if r is not None and "test_loss" in r]
            now = time.perf_counter()
            per = (now - last["t"]) / max(e - last["e"], 1)
            last.update(e=e, t=now)
            print(
                f"[{label}] epoch {e} at {now - t0:.1f} s ({per * 1e3:.0f} ms/epoch), "
                f"{len(te)} lanes alive, median test loss {np.median(te) if te else float('nan'):.4g}",
                flush=True,
            )

    lanes = [(RunConfig(**d), s) for d, s in zip(lane_dicts, seeds)]
    folders = run_lanes(lanes, root, on_epoch=on_epoch)
    queue.put(json.dumps({"group": label, "runs": len(folders), "wall_s": time.perf_counter() - t0}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--figure", action="append", required=True)
    ap.add_argument("--deadline", type=float, default=480.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="the figures' quick sweeps (a dry run)")
    a = ap.parse_args(argv)

    from stablebptt.experiments import sweep
    from stablebptt.experiments.run import clean_stale_temps, is_done
    from stablebptt.training.config import run_id

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    t0 = time.perf_counter()
    for text in a.figure:
        name, raw = _figure_spec(text, a.quick)
        spec = sweep.load_spec(raw)
        root = Path(a.out) / name
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(root)
        todo = [(c, s) for c, s in sweep.expand(spec) if not is_done(root / run_id(c, s))]
        for c, seeds, lanes in sweep._groups(todo, vmap_seeds=True, vmap_configs=True):
            level = ",".join(f"{k}={v}" for k, v in c.problem_params.items())
            label = f"{name} {level} ({len(seeds)} lanes)"
            lane_dicts = lanes if lanes is not None else [c.to_dict()] * len(seeds)
            p = ctx.Process(target=_group, args=(label, lane_dicts, seeds, str(root), a.log_every, queue))
            p.start()
            procs.append((label, p))
            print(f"started {label}", flush=True)
    done = []
    while any(p.is_alive() for _, p in procs) and time.perf_counter() - t0 < a.deadline:
        time.sleep(1.0)
        while not queue.empty():
            done.append(json.loads(queue.get()))
            print("finished", json.dumps(done[-1]), flush=True)
    for label, p in procs:
        if p.is_alive():
            print(f"deadline: stopping {label}", flush=True)
            p.kill()
    time.sleep(0.5)
    while not queue.empty():
        done.append(json.loads(queue.get()))
        print("finished", json.dumps(done[-1]), flush=True)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "groups": len(procs), "finished": done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
