"""The complexity ladder beyond the paper: one seed-paired comparison per rung, the page from the records.

    python experiments/ladder/run.py [--rungs NAME,NAME…] [--seeds 5] [--workers 2] [--page-only]

Every rung is ``stablebptt compare`` (:func:`stablebptt.compare`) of the same variants — R, M,
C, S, truncated BPTT and gradient decay, with one truncation length and one decay for all rungs
(nothing tuned per mode or per rung) — over ``--seeds`` seeds with the problem's quick settings,
into ``experiments/ladder/records/<rung>/``: one run folder per (variant, seed), resumable (a
rerun computes nothing, an interrupted one continues), with ``comparison.json`` and the figures.
The diagnosis (gradient explosion of an untrained controller) is recorded beside each rung.
Afterwards ``docs/beyond-the-paper.md`` is written from the records of the finished rungs by
``docs/make_beyond.py`` alone.

Rungs run in the order of :data:`RUNGS` (each ladder easy to hard); a rung whose problem needs a
package that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORDS = HERE / "records"
PAGE = REPO / "docs" / "beyond-the-paper.md"

#: the variants of every rung: the paper's modes, truncated BPTT (the state stopped every 10
#: steps) and gradient decay (α = 0.9 per step)
VARIANTS = ("R", "M", "C", "S", "R:truncate=10", "R:decay=0.9")

#: (rung folder name, problem, parameters), each ladder from easy to hard
RUNGS: list[tuple[str, str, dict]] = (
    [(f"cart-chain-links={n}", "cart-chain", {"links": n}) for n in (1, 2, 3, 4, 5, 6)]
    + [(f"ks-L={L}", "ks", {"L": L}) for L in (22, 36, 60, 100)]
    + [("burgers", "burgers", {}), ("kolmogorov", "kolmogorov", {}), ("hopper", "hopper", {})]
)


def run_rung(name: str, problem: str, params: dict, seeds: int, workers: int) -> bool:
    """Compare the variants on one rung (a fresh process per rung, so one rung's failure or
    memory does not touch the next). Returns whether the rung finished."""
    import stablebptt as sb
    from stablebptt import problems

    try:
        problems.param_spec(problem)
    except (ValueError, ImportError) as e:
        print(f"skip {name}: {e}", flush=True)
        return False
    t0 = time.time()
    cmd = [
        sys.executable,
        "-m",
        "stablebptt",
        "compare",
        problem,
        "--modes",
        ",".join(VARIANTS),
        "--seeds",
        str(seeds),
        "--quick",
        "--workers",
        str(workers),
        "--diagnose",
        "--out",
        str(RECORDS / name),
    ]
    for k, v in params.items():
        cmd += ["-p", f"{k}={v}"]
    print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
    done = subprocess.run(cmd).returncode == 0
    print(f"== {name}: {'finished' if done else 'FAILED'} in {time.time() - t0:.0f} s", flush=True)
    del sb
    return done


def write_page() -> None:
    folders = [RECORDS / name for name, _, _ in RUNGS if (RECORDS / name / "comparison.json").is_file()]
    if not folders:
        print("no finished rung yet: no page", flush=True)
        return
    subprocess.run(
        [sys.executable, str(REPO / "docs" / "make_beyond.py"), *map(str, folders), "--out", str(PAGE)], check=True
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rungs", help="comma-separated rung names (default: all, in order)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--page-only", action="store_true", help="only write the page from the finished rungs")
    a = ap.parse_args(argv)
    names = [n for n, _, _ in RUNGS]
    want = names if not a.rungs else a.rungs.split(",")
    unknown = [n for n in want if n not in names]
    if unknown:
        ap.error(f"unknown rungs {unknown}; allowed: {', '.join(names)}")
    if not a.page_only:
        for name, problem, params in RUNGS:
            if name in want:
                run_rung(name, problem, params, a.seeds, a.workers)
    write_page()
    return 0


if __name__ == "__main__":
    sys.exit(main())
