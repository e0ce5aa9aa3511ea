"""Collect finished result folders into one table (analysis reads result folders only).

:func:`collect` returns a pandas DataFrame with one row per (run, epoch):

* run columns: ``run_id, seed, status, diverged_epoch, epochs_done``;
* config columns: every :class:`~stablebptt.training.config.RunConfig` field except
  ``problem_params``, flattened (``mode`` as its label, e.g. ``C`` or ``schedule:RRMM``),
  plus ``param_<name>`` for each problem parameter;
* per-epoch metrics: ``epoch, loss, train_loss, test_loss, update_norm, cos_mg, sign_agree, wall_s``.

:func:`summary_frame` summarises a sweep folder per configuration (mean ± std of the final test
loss over seeds, with divergences counted), :func:`summary_table` writes it as Markdown and
:func:`console_table` prints it as the rich table of ``stablebptt results``.

A run that diverged before its first epoch contributes one row with ``epoch = 0`` and its
untrained losses, so it is never silently missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..experiments.run import RESULT_FILE
from ..training.config import RunConfig


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
    """The rich table of ``stablebptt results`` from a :func:`summary_frame`.

    Columns: problem, level, clip, mode, test loss (mean ± std; where a run's value is not
    finite, how many are not instead of a spread: :func:`loss_cell`), epochs,
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


LEVEL_PARAM = {
    "cartpole": "param_poles",
    "guidance": "param_rc",
    "quantum": "param_target",
    "cart-chain": "param_links",
    "ks": "param_L",
}


def _level_cols(problem: str, d) -> list[str]:
    """The complexity-axis columns of ``problem`` in table ``d``: the paper's axis, plus every
    other ``param_*`` column that varies (so different levels are never averaged together)."""
    cols = [c for c in d.columns if c.startswith("param_") and d[c].nunique(dropna=False) > 1]
    main = LEVEL_PARAM.get(problem)
    if main in d.columns:
        cols = [main] + [c for c in cols if c != main]
    return cols


def summary_frame(root: str | Path, epoch: int | None = None):
    """Mean ± std over seeds of the final (or epoch-``epoch``) test loss as a DataFrame.

    One row per (problem, level, clip, mode) with columns ``problem, level, clip, mode,
    mean, std, n, diverged, nonfinite, epoch_min, epoch_max, epochs`` (``nonfinite``: runs whose
    value is NaN or Inf — records of runs whose untrained loss was not finite, which training
    now refuses); ``level`` is e.g. ``poles=4``
    (empty for problems without a complexity axis). A run that diverged before ``epoch``
    counts with its last finite value. ``epoch_min`` / ``epoch_max`` are the smallest and
    largest epoch the cell's values come from (the last recorded epoch of each run, at most
    ``epoch``; 0 = the untrained controller) and ``epochs`` shows them as text: ``"60"`` when
    all runs agree, ``"12–60"`` when they differ (e.g. a run that diverged at epoch 13).
    """
    import numpy as np
    import pandas as pd

    df = collect(root)
    rows = []
    columns = [
        "problem",
        "level",
        "clip",
        "mode",
        "mean",
        "std",
        "n",
        "diverged",
        "nonfinite",
        "epoch_min",
        "epoch_max",
        "epochs",
    ]
    if df.empty:
        return pd.DataFrame(columns=columns)
    for problem, d in df.groupby("problem", sort=False):
        if epoch is not None:
            d = d[d["epoch"] <= epoch]
        last = d.sort_values("epoch").groupby("run_id").tail(1)
        lvls = _level_cols(problem, last)
        for keys, g in last.groupby([*lvls, "clip", "mode"], sort=True):
            levels, (clip, mode) = keys[: len(lvls)], keys[len(lvls) :]
            x = g["test_loss"].to_numpy(float)
            e_lo, e_hi = int(g["epoch"].min()), int(g["epoch"].max())
            rows.append(
                dict(
                    problem=problem,
                    level=", ".join(
                        f"{c[6:]}={v:g}" if isinstance(v, float) else f"{c[6:]}={v}" for c, v in zip(lvls, levels)
                    ),
                    _lv=tuple(levels),
                    clip=clip,
                    mode=mode,
                    mean=float(np.mean(x)),
                    std=float(np.std(x, ddof=1)) if len(x) > 1 else 0.0,
                    n=len(x),
                    diverged=int((g["status"] == "diverged").sum()),
                    nonfinite=int((~np.isfinite(x)).sum()),
                    epoch_min=e_lo,
                    epoch_max=e_hi,
                    epochs=_epoch_range(g["epoch"]),
                )
            )
    if not rows:  # no run has a recorded epoch ≤ epoch
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate("RMCSN")}
    out["_m"] = out["mode"].map(lambda m: order.get(m, 9))
    out = out.sort_values(["problem", "_lv", "clip", "_m"], kind="stable")
    return out.drop(columns=["_m", "_lv"]).reset_index(drop=True)


def loss_cell(mean: float, std: float, n: int, diverged: int, nonfinite: int, digits: int = 4) -> str:
    """A table cell for a mean ± std over ``n`` runs: ``"0.123 ± 0.01"``; where some values are
    not finite, the mean says so instead of a spread: ``"nan (diverged; 1/1 runs non-finite)"``."""
    if not nonfinite:
        return f"{mean:.{digits}g} ± {std:.2g}"
    return f"{mean:.{digits}g} ({'diverged; ' if diverged else ''}{nonfinite}/{n} runs non-finite)"


def _epoch_range(epochs) -> str:
    """``"60"`` if all the given epochs are equal, else ``"12–60"`` (min–max); ``""`` if none."""
    import numpy as np

    e = np.asarray(epochs, dtype=float)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return ""
    lo, hi = int(e.min()), int(e.max())
    return str(hi) if lo == hi else f"{lo}–{hi}"


def summary_table(root: str | Path, epoch: int | None = None) -> str:
    """Markdown: final (or given-epoch) test loss per problem, level, clipping and mode, mean ± std
    over seeds; the last column, ``epochs``, is the epoch (or min–max range) the row's values
    come from (see :func:`summary_frame`)."""
    import numpy as np

    df = collect(root)
    if df.empty:
        return "_no finished runs_\n"
    out = []
    for problem, d in df.groupby("problem", sort=False):
        if epoch is not None:
            d = d[d["epoch"] <= epoch]
        last = d.sort_values("epoch").groupby("run_id").tail(1)
        if last.empty:
            out += [f"### {problem}", "", f"_no run has a recorded epoch ≤ {epoch}_", ""]
            continue
        keys = _level_cols(problem, last) + ["clip"]
        modes = sorted(last["mode"].unique(), key=lambda m: ("RMCSN".find(m) if m in "RMCSN" else 9, m))
        title = f"### {problem}" + (f" (test loss at epoch {epoch})" if epoch is not None else " (final test loss)")
        out += [
            title,
            "",
            "| " + " | ".join(keys + list(modes) + ["epochs"]) + " |",
            "|" + "---|" * (len(keys) + len(modes) + 1),
        ]
        for vals, g in last.groupby(keys, sort=True) if keys else [((), last)]:
            vals = vals if isinstance(vals, tuple) else (vals,)
            cells = []
            for m in modes:
                x = g[g["mode"] == m]["test_loss"].to_numpy(float)
                div = int((g[g["mode"] == m]["status"] == "diverged").sum())
                if len(x) == 0:
                    cells.append("–")
                    continue
                sd = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
                bad = int((~np.isfinite(x)).sum())
                cells.append(
                    loss_cell(float(np.mean(x)), sd, len(x), div, bad, digits=3)
                    if bad
                    else f"{np.mean(x):.3g} ± {sd:.2g}" + (f" ({div} div.)" if div else "")
                )
            out.append("| " + " | ".join([str(v) for v in vals] + cells + [_epoch_range(g["epoch"])]) + " |")
        n_seeds = last.groupby(["mode"] + keys)["seed"].nunique().min()
        out += ["", f"mean ± std over {n_seeds} seed(s) per cell.", ""]
    return "\n".join(out) + "\n"
