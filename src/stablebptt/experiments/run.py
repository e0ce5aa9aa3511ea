"""A run is a pure function of (config, seed) that writes exactly one result folder.

Folder layout (``<root>/<run_id>/``, ``run_id`` = hash of config and seed)::

    config.json     the RunConfig and the seed
    metrics.csv     one row per recorded epoch (see stablebptt.training.runner for the columns)
    result.json     summary: status (finished | diverged), diverged_epoch, final losses, times
    weights.npz     the trained controller (Keras layout, see stablebptt.problems.controllers)
    manifest.json   versions, commit, device, precision, what ran, the exact command, host, date

Folder names are hashes (so that a config always finds its folder); ``<root>/index.csv`` is
what a person reads: one row per finished run — run_id, problem, level (the problem's
parameters as ``k=v``), mode, clip, seed, status, epochs_done, final test loss — sorted by
those columns and rewritten (atomically, under a lock) whenever a run finishes.

Writes are atomic: everything goes to a temporary sibling folder that is renamed into
place at the end, so a folder with ``result.json`` is always complete and an interrupted
run leaves nothing that looks finished. A finished run is never recomputed. The run id does not
include the problem's code: a run of a file or module problem records its code identity
(``manifest.json``'s ``problem_code``, :func:`stablebptt.problems.code_identity`, also saved in
its checkpoints), and a finished or interrupted run whose code has changed since is refused
with one line naming the file (:func:`code_change`), never shown or continued.

While runs train, ``<root>/.partial/<id>/`` holds their progress (``id``: the run id, or
``group-…`` for runs trained together): ``checkpoint.npz`` (saved every
``checkpoint_seconds``; an interrupted run continues from it and ends with the numbers of an
uninterrupted one), ``<run_id>.metrics.csv`` (the rows so far) and ``lease.json`` — the
claim of the process computing them (host, pid, start), so that concurrent sweeps on one
folder compute each run once (:mod:`stablebptt.experiments.leases`). What a run records
about the process that made it is :func:`stablebptt.experiments.manifest.manifest`.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import ValidationError

from .. import problems
from ..core import evaluate_loss
from ..problems import controllers
from ..problems.controllers import weights_file  # run folders hold weights.npz; re-exported
from ..training.config import RunConfig, run_id
from ..training.runner import Checkpoint, sigint_deferred, train, write_metrics
from ..training.trainer import make_data, zero_last
from .leases import LEASE_FILE, Claimed, Lease
from .manifest import manifest

RESULT_FILE = "result.json"


def recorded_code(folder: Path) -> dict | None:
    """The problem code identity a run folder was made with (its manifest's ``problem_code``;
    for a run recorded before that key existed, its problem file's SHA-256), or None."""
    path = Path(folder) / "manifest.json"
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if "problem_code" in man:
        return man["problem_code"]
    src = man.get("problem_source") or {}
    return (
        {"file": src.get("path"), "sha256": src["sha256"]} if src.get("kind") == "file" and src.get("sha256") else None
    )


_CURRENT = object()


def code_change(folder: Path, config: RunConfig, current=_CURRENT) -> str | None:
    """None when the run in ``folder`` was made with the problem code that ``config`` names now
    (or either is unknown: built-in problems); else one line naming the file and its old and new
    hash (:func:`stablebptt.problems.describe_code_change`). ``current``: the present
    :func:`~stablebptt.problems.code_identity`, if already known."""
    now = problems.code_identity(config.problem) if current is _CURRENT else current
    return problems.describe_code_change(recorded_code(folder), now, f"the run in {folder} was made")


def is_done(folder: Path) -> bool:
    return (Path(folder) / RESULT_FILE).is_file()


def read_result(folder: Path) -> dict:
    return json.loads((Path(folder) / RESULT_FILE).read_text())


def _json_value(o):
    """A value ``json`` cannot write as the JSON one of the same value: a NumPy/JAX scalar as its
    Python number (an int stays an int), an array as a list, anything else as a float."""
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__array__") and hasattr(o, "shape"):
        return np.asarray(o).tolist()
    return float(o)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_value))


def write_result(folder: Path, config: RunConfig, seed: int, result, extra_manifest: dict | None = None) -> Path:
    """Atomically write one TrainResult into ``folder`` (temp folder + rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"
    tmp.mkdir()
    with sigint_deferred():  # a result is written whole or not at all
        try:
            _write_json(tmp / "config.json", {"config": config.to_dict(), "seed": int(seed), "run_id": folder.name})
            write_metrics(tmp / "metrics.csv", result.history)
            controllers.save_weights(result.model, tmp / "weights.npz")
            _write_json(tmp / "manifest.json", manifest() | {"ran": result.ran} | (extra_manifest or {}))
            summary = {
                "run_id": folder.name,
                "seed": int(seed),
                "status": "diverged" if result.diverged else "finished",
                "diverged_epoch": result.diverged_epoch,
                "epochs_done": result.epochs_done,
                "initial": result.initial,
                "final": {
                    k: (result.history[k][-1] if result.history[k] else None)
                    for k in result.history
                    if k not in ("epoch", "wall_s")
                },
                "compile_s": result.compile_s,
                "train_s": result.train_s,
            } | (
                {"resumed_from_epoch": result.ran["resumed_from_epoch"]} if result.ran.get("resumed_from_epoch") else {}
            )
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


INDEX_FILE = "index.csv"
INDEX_COLUMNS = ("run_id", "problem", "level", "mode", "clip", "seed", "status", "epochs_done", "final_test_loss")


def _index_row(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    res = read_result(folder)
    c = RunConfig.model_construct(**cfg["config"])
    level = " ".join(f"{k}={v}" for k, v in sorted(cfg["config"].get("problem_params", {}).items()))
    return dict(
        run_id=folder.name,
        problem=c.problem,
        level=level,
        mode=c.mode_label(),
        clip=c.clip,
        seed=cfg["seed"],
        status=res["status"],
        epochs_done=res["epochs_done"],
        final_test_loss=(res.get("final") or {}).get("test_loss"),
    )


def write_index(root: str | Path) -> Path:
    """Rewrite ``<root>/index.csv`` from the finished run folders directly under ``root``
    (columns :data:`INDEX_COLUMNS`, sorted by problem, level, mode, clip, seed). Concurrent
    writers take turns on ``<root>/.index.lock``, and each reads the folders after taking it, so
    the last one to write has seen every run finished before it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".index.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [
            _index_row(f)
            for f in root.iterdir()
            if f.is_dir() and not f.name.startswith(".") and is_done(f) and (f / "config.json").is_file()
        ]
        rows.sort(key=lambda r: (r["problem"], r["level"], r["mode"], r["clip"], r["seed"], r["run_id"]))
        tmp = root / f".{INDEX_FILE}.{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, INDEX_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, root / INDEX_FILE)
    return root / INDEX_FILE


def partial_folder(root: str | Path, names: Sequence[str]) -> Path:
    """The progress folder of the runs ``names`` trained together (see the module docstring)."""
    names = sorted(names)
    key = names[0] if len(names) == 1 else "group-" + hashlib.sha256(" ".join(names).encode()).hexdigest()[:16]
    return Path(root) / ".partial" / key


def run(
    config: RunConfig,
    seed: int,
    root: str | Path = "runs",
    *,
    problem=None,
    on_epoch: Callable | None = None,
    extra_manifest: dict | None = None,
    overlap_eval: bool = False,
    checkpoint_seconds: float = 30.0,
    restart: bool = False,
) -> Path:
    """Train (config, seed) unless its result exists; return the result folder.

    ``problem``: the :class:`~stablebptt.problems.Problem` to train (default: the one the config
    names, built from its source); one that is not what the config names is refused. An
    interrupted earlier call is continued from its checkpoint (``restart=True``: from scratch);
    a live process computing the same run makes this call raise :class:`Claimed`. A finished
    run or a checkpoint made with other problem code (:func:`code_change`) raises ValueError.
    ``overlap_eval``: see :func:`stablebptt.training.runner.train`."""
    return train_runs(
        [(config, int(seed))],
        root,
        problem=problem,
        on_epoch=on_epoch,
        extra_manifest=extra_manifest,
        overlap_eval=overlap_eval,
        checkpoint_seconds=checkpoint_seconds,
        restart=restart,
    )[0][0]


def run_seeds(config: RunConfig, seeds: Sequence[int], root: str | Path = "runs", **kw) -> list[Path]:
    """Like :func:`run` for several seeds, the missing ones trained together (one program)."""
    return run_lanes([(config, s) for s in seeds], root, **kw)


def run_lanes(lanes: Sequence[tuple[RunConfig, int]], root: str | Path = "runs", **kw) -> list[Path]:
    """Like :func:`run` for several (config, seed) pairs that share one program: the same
    config (seeds, :func:`stablebptt.training.runner.train`'s ``batching="auto"``), or configs that
    differ only in :data:`stablebptt.training.runner.LANE_FIELDS` (lanes of one vmapped program; each
    equals its own run up to float32 round-off). Each result goes to the folder its own
    :func:`run` would write; the manifest names the runs trained together."""
    return train_runs([(c, int(s)) for c, s in lanes], root, **kw)[0]


def train_runs(
    pairs: Sequence[tuple[RunConfig, int]],
    root: str | Path = "runs",
    *,
    problem=None,
    on_epoch: Callable | None = None,
    extra_manifest: dict | None = None,
    overlap_eval: bool = False,
    checkpoint_seconds: float = 30.0,
    restart: bool = False,
) -> tuple[list[Path], list[str]]:
    """Train the missing runs of ``pairs`` ((config, seed) pairs that share one program, as for
    :func:`run_lanes`) together under a claim, with checkpoints; write each finished run's
    folder and remove the progress folder. Returns (all folders, the names of the runs this
    call computed). The keywords are :func:`run`'s."""
    folders = [Path(root) / run_id(c, s) for c, s in pairs]
    todo = [(c, s, f) for (c, s), f in zip(pairs, folders) if not is_done(f)]
    code = problems.code_identity(pairs[0][0].problem)
    for (c, _), f in zip(pairs, folders):
        change = is_done(f) and code_change(f, c, code)
        if change:
            raise ValueError(f"{change}; its result is not used: remove {f} to recompute it, or use another root")
    if not todo:
        clean_finished_partials(root)
        return folders, []
    if problem is not None:
        problems.check_matches(problem, pairs[0][0].problem, pairs[0][0].problem_params)
    names = [f.name for _, _, f in todo]
    partial = partial_folder(root, names)
    lease = Lease(partial).acquire()
    try:
        if all(is_done(f) for _, _, f in todo):  # finished by another process meanwhile
            return folders, []
        if restart:
            for p in partial.glob("*"):
                if p.name != LEASE_FILE:
                    p.unlink()
        configs, seeds = [c for c, _, _ in todo], [s for _, s, _ in todo]
        same = all(c == configs[0] for c in configs)
        if problem is None:
            problem = problems.get(configs[0].problem, **configs[0].problem_params)
        source = {"problem_source": problems.origin(configs[0].problem), "problem_code": code}
        ck = Checkpoint(
            partial / "checkpoint.npz", checkpoint_seconds, [partial / f"{n}.metrics.csv" for n in names], code=code
        )

        def beat(e, rows):
            lease.refresh()
            if on_epoch is not None:
                on_epoch(e, rows)

        results = train(
            problem,
            configs[0],
            seeds,
            on_epoch=beat,
            lane_configs=None if same else configs,
            overlap_eval=overlap_eval,
            checkpoint=ck,
        )
        together = {"trained_together": names} if len(names) > 1 else {}
        for (c, s, f), r in zip(todo, results):
            write_result(f, c, s, r, together | source | (extra_manifest or {}))
        write_index(root)
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        lease.release()
        for empty in (partial, partial.parent):  # nothing left to continue from
            try:
                empty.rmdir()
            except OSError:
                pass
    return folders, names


@dataclass
class LoadedRun:
    """A finished run, read back (:func:`load_run`).

    folder: the run folder; config, seed: what it ran; problem: the problem, rebuilt from the
    config's source (a moved problem file is found again through the manifest's path); model:
    the trained controller; history: the per-epoch rows (pandas DataFrame); result: the
    summary (result.json); notes: anything noticed while loading (e.g. a problem file whose
    content changed since the run)."""

    folder: Path
    config: RunConfig
    seed: int
    problem: Any
    model: Any
    history: Any
    result: dict
    notes: list

    def data(self, which: str = "test"):
        """The run's ``"train"`` or ``"test"`` states (numpy, (N, *state_shape))."""
        if which not in ("train", "test"):
            raise ValueError(f"data={which!r}; allowed: train, test, or an .npz file of states")
        tr, te = make_data(self.problem, self.config, self.seed)
        return tr if which == "train" else te

    def evaluate(self, states=None) -> tuple[float, np.ndarray]:
        """``(loss, per-state losses)`` of the trained controller on ``states`` (default: the
        test set): the trajectory loss of the whole batch, and of each state alone (N,). For the
        library's batch-mean losses the first is the mean of the second."""
        x = np.asarray(self.data() if states is None else states, np.float32)
        kw = dict(step=self.problem.step, loss=self.problem.loss, horizon=self.problem.horizon)
        with jax.default_matmul_precision("highest"):
            total = jax.jit(lambda xs: evaluate_loss(self.model, xs, **kw))(jnp.asarray(x))
            each = jax.jit(jax.vmap(lambda xi: evaluate_loss(self.model, xi[None], **kw)))(jnp.asarray(x))
        return float(total), np.asarray(each)


def load_run(folder: str | Path) -> LoadedRun:
    """Read a finished run folder back: its config, problem, trained controller and rows."""
    import pandas as pd  # here, not at the top: importing the package (and the CLI) stays free of pandas

    folder = Path(folder)
    if not is_done(folder):
        raise FileNotFoundError(f"{folder} is not a finished run folder (no {RESULT_FILE})")
    blob = json.loads((folder / "config.json").read_text())
    man = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    notes = []
    try:
        config = RunConfig(**blob["config"])
    except (ValidationError, ValueError):
        src = man.get("problem_source", {})
        if src.get("kind") != "file" or not Path(src.get("path", "")).is_file():
            raise
        func = blob["config"]["problem"].rsplit(":", 1)[1]
        config = RunConfig(**(blob["config"] | {"problem": f"{src['path']}:{func}"}))
        notes.append(f"problem file found at its recorded path {src['path']}")
    src = man.get("problem_source", {})
    if src.get("kind") == "file" and problems.origin(config.problem).get("sha256") != src.get("sha256"):
        notes.append(f"the problem file changed since this run ({config.problem})")
    if config.init_weights and not Path(config.init_weights).exists():
        config = config.model_copy(update={"init_weights": None})
    seed = int(blob.get("seed", 0))
    problem = problems.get(config.problem, **config.problem_params)
    model = problem.make_controller(jax.random.PRNGKey(seed), zero_last=zero_last(problem, config))
    model = controllers.load_weights(model, weights_file(folder))
    csv = folder / "metrics.csv"
    history = pd.read_csv(csv if csv.is_file() else folder / "metrics.csv.gz")
    return LoadedRun(folder, config, seed, problem, model, history, read_result(folder), notes)


#: seconds after which a ``.tmp-*`` folder of a writer on another host (or of unknown owner)
#: counts as abandoned (a live writer renames it within milliseconds)
TEMP_STALE_S = 120.0


def _temp_abandoned(p: Path) -> bool:
    """Whether the temp folder ``.tmp-<run>-<hex>-<pid>@<host>`` has no live writer: its pid is
    dead on this host; for another host or an unnamed owner, it is older than TEMP_STALE_S."""
    left, _, host = p.name.rpartition("@")
    pid = left.rsplit("-", 1)[-1]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - p.stat().st_mtime > TEMP_STALE_S
    except OSError:
        return False


def clean_stale_temps(root: str | Path) -> int:
    """Remove temp folders left by killed writers (a live writer's is left alone), and progress
    folders whose runs have all finished (:func:`clean_finished_partials`); returns how many
    were removed."""
    root = Path(root)
    n = 0
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            if _temp_abandoned(p):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n + clean_finished_partials(root)


def clean_finished_partials(root: str | Path) -> int:
    """Remove every ``<root>/.partial/<id>/`` whose runs (its ``<run_id>.metrics.csv`` files, or
    the folder's own name for a single run) all have a finished folder — left behind when a
    process was killed between writing the results and removing its progress — unless a live
    process holds its claim. Returns how many were removed."""
    base = Path(root) / ".partial"
    n = 0
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        names = {f.name[: -len(".metrics.csv")] for f in d.glob("*.metrics.csv")}
        if not d.name.startswith("group-"):
            names.add(d.name)
        if not names or not all(is_done(Path(root) / name) for name in names):
            continue
        try:
            lease = Lease(d).acquire()
        except Claimed:
            continue
        shutil.rmtree(d, ignore_errors=True)
        lease.release()
        n += 1
    try:
        base.rmdir()
    except OSError:
        pass
    return n
