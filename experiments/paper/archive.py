"""Copy finished run folders into the committed records of the full-scale reproduction.

    python experiments/paper/archive.py SWEEP_FOLDER results/paper/FIGURE [--commit REV]

Every finished run folder (one with ``result.json``) under SWEEP_FOLDER that is not yet under
the destination is copied there as a compact record: ``config.json``, ``result.json``,
``manifest.json`` and ``metrics.csv.gz`` (the metrics gzipped; the weights are left out).
``stablebptt results``, the claims and the figures read these records as they read run
folders, and a sweep pointed at the destination skips them (it looks for ``result.json``).
Copies are written to a temporary sibling and renamed, so an interrupted archive leaves no
half record. Prints how many records were added, and rewrites the destination's index.csv
(the readable list of its runs: problem, level, mode, clip, seed, final test loss).

``--commit REV``: a sweep run from a non-editable install cannot see its git commit, so its
manifests say ``"commit": null``; with ``--commit`` every record of the destination without a
commit gets REV's full hash (and ``"commit_from": "archive --commit"``, so it is visible that
the commit was stated, not detected). Give the commit the sweep's worktree was pinned at.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

KEEP = ("config.json", "result.json", "manifest.json")


def archive(src: Path, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    added = 0
    for res in sorted(src.rglob("result.json")):
        run = res.parent
        if run.name.startswith(".tmp-") or (dest / run.name / "result.json").is_file():
            continue
        tmp = dest / f".tmp-{run.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        for name in KEEP:
            shutil.copy2(run / name, tmp / name)
        csv = run / "metrics.csv"
        if csv.is_file():
            with open(csv, "rb") as f, gzip.GzipFile(tmp / "metrics.csv.gz", "wb", mtime=0) as g:
                shutil.copyfileobj(f, g)
        else:
            shutil.copy2(run / "metrics.csv.gz", tmp / "metrics.csv.gz")
        os.replace(tmp, dest / run.name)
        added += 1
    return added


def fill_commit(dest: Path, rev: str) -> int:
    """Set the commit of every record under ``dest`` whose manifest has none; returns how many."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    filled = 0
    for man in sorted(dest.glob("*/manifest.json")):
        m = json.loads(man.read_text())
        if not m.get("commit"):
            m["commit"], m["commit_from"] = full, "archive --commit"
            tmp = man.with_name(f".manifest-{uuid.uuid4().hex[:8]}.json")
            tmp.write_text(json.dumps(m, indent=2, sort_keys=True, default=float))  # as run.py writes it
            os.replace(tmp, man)
            filled += 1
    return filled


if __name__ == "__main__":
    args = sys.argv[1:]
    rev = None
    if "--commit" in args:
        i = args.index("--commit")
        rev = args[i + 1] if i + 1 < len(args) else sys.exit("--commit needs a revision")
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    n = archive(Path(args[0]), Path(args[1]))
    if rev is not None:
        print(f"{fill_commit(Path(args[1]), rev)} record(s) got commit {rev}")
    from stablebptt.experiments.run import write_index

    write_index(Path(args[1]))
    print(f"{n} record(s) added to {args[1]}")
