"""The default backward (``auto``) against ``--backward autodiff`` as a user meets them: whole
``stablebptt train`` commands on users' problems (``user_problems.py``) and the paper's, timed
from process start to exit, the two interleaved in every round, each with a fresh decision cache
(a first run on a new machine) and no compilation cache.

    python benchmarks/bench_default.py [--problems NAME,...] [--modes R,C] [--epochs 3] [--rounds 2] [--json FILE]

Prints one row per (problem, mode): the minimum over rounds of each command's wall time, the
ratio auto ÷ autodiff, and the strategy ``auto`` ran (from the run's manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
USER = ("burgers_conv1d", "heat2d_conv2d", "field_mlp", "large_state_few_controls", "implicit_solve")
PAPER = ("cartpole", "guidance")


def run(problem: str, mode: str, epochs: int, backward: str) -> tuple[float, str]:
    """Seconds of one ``stablebptt train`` command and the strategy its manifest records."""
    source = f"{HERE / 'user_problems.py'}:{problem}" if problem in USER else problem
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, STABLEBPTT_NO_CACHE="1", STABLEBPTT_BACKWARD_CACHE=str(Path(tmp) / "decisions"))
        cmd = [
            sys.executable,
            "-m",
            "stablebptt",
            "train",
            source,
            "--mode",
            mode,
            "--epochs",
            str(epochs),
            "--backward",
            backward,
            "--out",
            str(Path(tmp) / "runs"),
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        manifest = next(Path(tmp, "runs").rglob("manifest.json"))
        return wall, json.loads(manifest.read_text())["ran"]["backward"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default=",".join(USER + PAPER))
    ap.add_argument("--modes", default="R,C")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = []
    for problem in a.problems.split(","):
        for mode in a.modes.split(","):
            times: dict[str, list[float]] = {"auto": [], "autodiff": []}
            ran = ""
            for _ in range(a.rounds):
                for b in times:
                    wall, strategy = run(problem, mode, a.epochs, b)
                    times[b].append(wall)
                    ran = strategy if b == "auto" else ran
            row = {
                "problem": problem,
                "mode": mode,
                "epochs": a.epochs,
                "auto_s": min(times["auto"]),
                "autodiff_s": min(times["autodiff"]),
                "auto_ran": ran,
                "all": times,
            }
            row["ratio"] = row["auto_s"] / row["autodiff_s"]
            rows.append(row)
            print(
                f"{problem:26s} {mode}: auto {row['auto_s']:6.1f} s  autodiff {row['autodiff_s']:6.1f} s  "
                f"ratio {row['ratio']:.2f}  auto ran {ran}",
                flush=True,
            )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
