"""Copy finished run folders into the committed records of the full-scale reproduction.

    python experiments/paper/archive.py SWEEP_FOLDER results/paper/FIGURE

Every finished run folder (one with ``result.json``) under SWEEP_FOLDER that is not yet under
the destination is copied there as a compact record: ``config.json``, ``result.json``,
``manifest.json`` and ``metrics.csv.gz`` (the metrics gzipped; the weights are left out).
``stablebptt results``, the claims and the figures read these records as they read run
folders, and a sweep pointed at the destination skips them (it looks for ``result.json``).
Copies are written to a temporary sibling and renamed, so an interrupted archive leaves no
half record. Prints how many records were added, and rewrites the destination's index.csv
(the readable list of its runs: problem, level, mode, clip, seed, final test loss).
"""
from __future__ import annotations

import gzip
import os
import shutil
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = archive(Path(sys.argv[1]), Path(sys.argv[2]))
    from stablebptt.run import write_index

    write_index(Path(sys.argv[2]))
    print(f"{n} record(s) added to {sys.argv[2]}")
