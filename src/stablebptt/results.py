"""Collect finished result folders into one table (analysis reads result folders only).

:func:`collect` returns a pandas DataFrame with one row per (run, epoch):

* run columns: ``run_id, seed, status, diverged_epoch, epochs_done``;
* config columns: every :class:`~stablebptt.config.RunConfig` field except
  ``problem_params``, flattened (``mode`` as its label, e.g. ``C`` or ``schedule:RRMM``),
  plus ``param_<name>`` for each problem parameter;
* per-epoch metrics: ``epoch, loss, train_loss, test_loss, update_norm, cos_mg, sign_agree, wall_s``.

:func:`console_table` prints the summary of :func:`stablebptt.sweep.summary_frame` as the
rich table of ``stablebptt results``.

A run that diverged before its first epoch contributes one row with ``epoch = 0`` and its
untrained losses, so it is never silently missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .config import RunConfig
from .run import RESULT_FILE


def run_folders(root: str | Path) -> list[Path]:
    """Finished result folders under ``root`` (searched recursively), sorted by path."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(RESULT_FILE) if not p.parent.name.startswith(".tmp-"))


def config_columns(config: dict) -> dict:
    """A run's config as table columns (nothing is resolved: the problem's source need not be
    importable where the table is read)."""
    cfg = RunConfig.model_construct(**config)
    cols = {k: v for k, v in config.items() if k != "problem_params"}
    cols["mode"] = cfg.mode_label()
    for k, v in sorted(config.get("problem_params", {}).items()):
        cols[f"param_{k}"] = v
    return cols


def run_rows(folder: str | Path) -> pd.DataFrame:
    """One run's per-epoch rows with its run and config columns."""
    folder = Path(folder)
    res = json.loads((folder / RESULT_FILE).read_text())
    cfg = json.loads((folder / "config.json").read_text())
    csv = folder / "metrics.csv"
    metrics = pd.read_csv(csv if csv.is_file() else folder / "metrics.csv.gz")  # .gz: archived records
    if metrics.empty:
        metrics = pd.DataFrame(
            [{"epoch": 0, "train_loss": res["initial"]["train_loss"], "test_loss": res["initial"]["test_loss"]}]
        )
    head = {
        "run_id": res["run_id"],
        "seed": res["seed"],
        "status": res["status"],
        "diverged_epoch": res["diverged_epoch"],
        "epochs_done": res["epochs_done"],
    }
    head |= config_columns(cfg["config"])
    front = pd.DataFrame({k: [v] * len(metrics) for k, v in head.items()})
    return pd.concat([front, metrics.reset_index(drop=True)], axis=1)


def collect(root: str | Path, *, parquet: str | Path | None = None, csv: str | Path | None = None) -> pd.DataFrame:
    """All finished runs under ``root`` as one DataFrame; optionally write Parquet / CSV."""
    frames = [run_rows(f) for f in run_folders(root)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if parquet is not None:
        df.to_parquet(parquet, index=False)
    if csv is not None:
        df.to_csv(csv, index=False)
    return df


def summary(df: pd.DataFrame, metric: str = "test_loss", by=("problem", "mode", "clip")) -> pd.DataFrame:
    """Final value of ``metric`` per run, then mean ± std over seeds per group."""
    if df.empty:
        return df
    by = [c for c in by if c in df.columns]
    last = df.sort_values("epoch").groupby("run_id").tail(1)
    g = last.groupby(by, dropna=False)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    return out


def problem_label(source: str, others=()) -> str:
    """A problem's name in a table: a file source ``dir/sim.py:make`` as ``sim.py:make`` (its
    folder is in each run's config), unless another of ``others`` has the same file name and
    function; every other name as it is."""
    where, sep, fn = str(source).rpartition(":")
    if not (sep and where.endswith(".py")):
        return str(source)
    short = f"{Path(where).name}:{fn}"
    clash = any(o != source and problem_label(o) == short for o in others)
    return str(source) if clash else short


#: the problem column of :func:`console_table` is at least this wide (or as wide as its longest
#: name), so that on an 80-column console the other columns wrap before a short name does
PROBLEM_COLUMN_MIN = 12


def console_table(summary: pd.DataFrame, title: str | None = None, caption: str | None = None):
    """The rich table of ``stablebptt results`` from a :func:`stablebptt.sweep.summary_frame`.

    Columns: problem, level, clip, mode, test loss (mean ± std; where a run's value is not
    finite, how many are not instead of a spread: :func:`stablebptt.sweep.loss_cell`), epochs,
    seeds, div. (runs that diverged). No cell is ever cut short: on a narrow console a long cell wraps (at its
    spaces, or within a word where it has none), and the table fits 80 columns. A file source
    shows as ``sim.py:make`` (:func:`problem_label`).
    """
    from rich.table import Table

    problems = list(dict.fromkeys(map(str, summary["problem"]))) if len(summary) else []
    labels = {p: problem_label(p, problems) for p in problems}
    note = "div.: runs that diverged (counted in seeds)"
    t = Table(title=title, caption=f"{caption}; {note}" if caption else note, pad_edge=False)
    longest = max((len(v) for v in labels.values()), default=7)
    for col in ("problem", "level", "clip", "mode", "test loss", "epochs", "seeds", "div."):
        right = col in ("test loss", "epochs", "seeds", "div.")
        t.add_column(
            col,
            justify="right" if right else "left",
            overflow="fold",
            no_wrap=col == "epochs",
            min_width=min(longest, PROBLEM_COLUMN_MIN) if col == "problem" else None,
        )
    from .sweep import loss_cell

    for r in summary.itertuples():
        cell = loss_cell(r.mean, r.std, r.n, r.diverged, getattr(r, "nonfinite", 0) or 0)
        t.add_row(
            labels[str(r.problem)],
            r.level,
            r.clip,
            r.mode,
            cell,
            r.epochs,
            str(r.n),
            str(r.diverged) if r.diverged else "",
        )
    return t
