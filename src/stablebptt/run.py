"""A run is a pure function of (config, seed) that writes exactly one result folder.

Folder layout (``<root>/<run_id>/``, ``run_id`` = hash of config and seed)::

    config.json     the RunConfig and the seed
    metrics.csv     one row per finished epoch (see stablebptt.train for the columns)
    result.json     summary: status (finished | diverged), diverged_epoch, final losses, times
    weights.npz     the trained controller (Keras layout, see stablebptt.controllers)
    manifest.json   versions, device, precision, XLA flags, the exact command, host, date

Writes are atomic: everything goes to a temporary sibling folder that is renamed into
place at the end, so a folder with ``result.json`` is always complete and an interrupted
run leaves nothing that looks finished. A finished run is never recomputed.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import shutil
import socket
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from .config import RunConfig, run_id

RESULT_FILE = "result.json"


def source_commit() -> str | None:
    """The git commit of the stablebptt source that runs: ``$STABLEBPTT_COMMIT`` when set (a
    copy of the tree without its ``.git``), else ``git rev-parse HEAD`` of the checkout this
    package is imported from (with ``-dirty`` when it has uncommitted changes), else None."""
    import subprocess

    if os.environ.get("STABLEBPTT_COMMIT"):
        return os.environ["STABLEBPTT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def manifest() -> dict:
    """Versions, device and precision of this process (recorded next to every result)."""
    import jax

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    dev = jax.devices()[0]
    return {
        "versions": {n: ver(n) for n in ("stablebptt", "jax", "jaxlib", "optax", "equinox", "numpy")}
        | {"python": platform.python_version()},
        "commit": source_commit(),
        "device": {"platform": dev.platform, "kind": getattr(dev, "device_kind", str(dev)),
                   "count": jax.device_count()},
        "precision": {"dtype": "float32", "x64": bool(jax.config.jax_enable_x64),
                      "matmul_precision": "highest (the training programs are traced at full float32 precision)"},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "command": " ".join(sys.argv),
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def is_done(folder: Path) -> bool:
    return (Path(folder) / RESULT_FILE).is_file()


def read_result(folder: Path) -> dict:
    return json.loads((Path(folder) / RESULT_FILE).read_text())


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))


def write_result(folder: Path, config: RunConfig, seed: int, result, extra_manifest: dict | None = None) -> Path:
    """Atomically write one TrainResult into ``folder`` (temp folder + rename)."""
    from . import controllers

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", {"config": config.to_dict(), "seed": int(seed), "run_id": folder.name})
        cols = list(result.history)
        with open(tmp / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for i in range(len(result.history["epoch"])):
                w.writerow([result.history[c][i] for c in cols])
        controllers.save_weights(result.model, tmp / "weights.npz")
        _write_json(tmp / "manifest.json", manifest() | {"ran": result.ran} | (extra_manifest or {}))
        summary = {
            "run_id": folder.name,
            "seed": int(seed),
            "status": "diverged" if result.diverged else "finished",
            "diverged_epoch": result.diverged_epoch,
            "epochs_done": result.epochs_done,
            "initial": result.initial,
            "final": {k: (result.history[k][-1] if result.history[k] else None)
                      for k in result.history if k not in ("epoch", "wall_s")},
            "compile_s": result.compile_s,
            "train_s": result.train_s,
        }
        _write_json(tmp / RESULT_FILE, summary)
        if folder.exists():
            if is_done(folder):  # someone else finished it meanwhile: keep theirs
                shutil.rmtree(tmp)
                return folder
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def run(config: RunConfig, seed: int, root: str | Path = "runs", *, on_epoch: Callable | None = None,
        extra_manifest: dict | None = None, overlap_eval: bool = False) -> Path:
    """Train (config, seed) unless its result exists; return the result folder.
    ``overlap_eval``: see :func:`stablebptt.runner.train`."""
    from . import problems
    from .runner import train

    folder = Path(root) / run_id(config, seed)
    if is_done(folder):
        return folder
    problem = problems.get(config.problem, **config.problem_params)
    (result,) = train(problem, config, int(seed), on_epoch=on_epoch, overlap_eval=overlap_eval)
    return write_result(folder, config, seed, result, extra_manifest)


def run_seeds(config: RunConfig, seeds: Sequence[int], root: str | Path = "runs", *,
              on_epoch: Callable | None = None) -> list[Path]:
    """Like :func:`run` for several seeds, the missing ones trained together (one program)."""
    return run_lanes([(config, s) for s in seeds], root, on_epoch=on_epoch)


def run_lanes(lanes: Sequence[tuple[RunConfig, int]], root: str | Path = "runs", *,
              on_epoch: Callable | None = None) -> list[Path]:
    """Like :func:`run` for several (config, seed) pairs that share one program: the same
    config (seeds, :func:`stablebptt.runner.train`'s ``batching="auto"``), or configs that
    differ only in :data:`stablebptt.runner.LANE_FIELDS` (lanes of one vmapped program; each
    equals its own run up to float32 round-off). Each result goes to the folder its own
    :func:`run` would write; the manifest names the runs trained together."""
    from . import problems
    from .runner import train

    lanes = [(c, int(s)) for c, s in lanes]
    folders = [Path(root) / run_id(c, s) for c, s in lanes]
    todo = [(c, s, f) for (c, s), f in zip(lanes, folders) if not is_done(f)]
    if todo:
        configs, seeds = [c for c, _, _ in todo], [s for _, s, _ in todo]
        same = all(c == configs[0] for c in configs)
        problem = problems.get(configs[0].problem, **configs[0].problem_params)
        results = train(problem, configs[0], seeds, on_epoch=on_epoch, lane_configs=None if same else configs)
        names = [f.name for _, _, f in todo]
        for (c, s, f), r in zip(todo, results):
            write_result(f, c, s, r, {"trained_together": names} if len(names) > 1 else None)
    return folders


def clean_stale_temps(root: str | Path) -> int:
    """Remove temp folders left by killed runs; returns how many were removed."""
    root = Path(root)
    n = 0
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n
