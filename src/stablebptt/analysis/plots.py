r"""Figures of sweeps: the test loss per epoch over seeds (in log space), the paired picture, the ratios.

Sweep figures (:func:`problem_figure`, :func:`plot_sweep`)
---------------------------------------------------------
One figure per problem, in the paper's layout: one panel column per complexity level
(cart-pole: number of poles; guidance: the control regulariser rc, from easy 1 to hard
0.001; quantum: the target eigenstate; any other problem: one column per combination of the
problem parameters that vary, or a single column) and **one panel row per clipping mode**
(none, value, norm). Rows rather than line styles: with four modes × three clippings one
panel would hold twelve curves and twelve overlapping bands; a row keeps the comparison the
paper makes (modes under one setting) readable, and the shared y axis lets clippings be
compared down a column. Each panel shows the **test loss per epoch** on a log y axis:

* one curve per gradient-flow mode: the geometric mean over seeds (losses span decades, so
  seeds are averaged in log space), with a band ×/÷ one geometric standard deviation
  (e^(μ ± σ) of ln L over seeds), or a bootstrap 95 % interval of the geometric mean with
  ``band="ci"`` (:func:`log_band`); a curve from one run has no band;
* smoothed like the authors: a 30-epoch trailing moving average left-padded with the first
  value (:func:`smooth_curve`), applied to each run before averaging; or raw;
* colours are the authors' (R #ef476f, M #ffd166, C #06d6a0, S #073b4c; other mode labels get
  other colours); every mode also has its own marker, placed at staggered epochs
  (:func:`markevery`), and modes are drawn R, M, C, S with falling line width and marker size
  (:func:`mode_styles`), so a curve lying exactly on another still shows; a curve equal to one
  drawn before it in the panel (to 1e-5 relative at every epoch, e.g. M and S on the toys) is
  dashed, each with its own dash pattern, and the legend says which modes coincide
  (``M = S (S dashed)``, with ``in k of n panels`` where they coincide in some panels only);
* a run that diverged is drawn up to its last finite epoch and marked with an ``x`` there
  (the mean at later epochs is over the seeds still alive);
* the y range is the authors' (guidance 0.4–6, cart-pole 1e-6–3, quantum 16.5–135) when all
  curves and bands lie inside it, otherwise matplotlib's autoscaling;
* the title says what a line is: the geometric mean over n seeds, or one run (seed s); a
  panel with fewer seeds than the rest says so in its title;
* a figure's title takes at most two lines (down to 8 pt for long problem names; what still
  does not fit goes below), panel titles fit their panel (smaller, or without the problem's
  name), and details are a footnote below the panels (which levels have fewer seeds; in the
  paired figure, which point of the moving average is the final loss).

The quantum figure gets one more column: the per-epoch update size (``update_norm``, the
global L2 norm of the update handed to the optimizer, averaged over the epoch's minibatches;
raw, not smoothed) at the highest target, which shows how many orders of magnitude R's
update spans compared with C's.

The paired picture (:func:`paired_figure`): per seed and clipping mode, R's final loss
against C's, log–log, with the diagonal, one panel per level; coinciding points share one
seed label, and a log axis spanning under two decades labels 2, 3, 5 × 10^k only where the
labels fit.

All drawing uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Formatter, MaxNLocator

from ..problems import file_stem
from . import stats
from .stats import LEVEL_PARAMS, smooth_curve  # the statistics own them; plots re-exports smooth_curve

#: the authors' mode colours
MODE_COLORS = {"R": "#ef476f", "M": "#ffd166", "C": "#06d6a0", "S": "#073b4c"}
#: colours for every other mode label (assigned in sorted order of the labels)
EXTRA_COLORS = (
    "#118ab2",
    "#8338ec",
    "#fb8500",
    "#6a994e",
    "#9d4edd",
    "#bc6c25",
    "#e5383b",
    "#3a86ff",
    "#8d99ae",
    "#2a9d8f",
)
#: a marker per mode (the authors told modes apart by colour only)
MODE_MARKERS = {"R": "o", "M": "s", "C": "^", "S": "v", "N": "D"}
#: markers for every other mode label
EXTRA_MARKERS = ("P", "X", "*", "h", "<", ">", "d", "p")
#: clipping modes in panel-row order, and their row labels
CLIP_ORDER = ("none", "value", "norm")
CLIP_NAMES = {"none": "no clipping", "value": "clip value", "norm": "clip norm"}
#: paired picture: clipping mode -> (marker, colour)
PAIR_STYLES = {"none": ("o", "#222222"), "value": ("s", "#3a86ff"), "norm": ("^", "#fb8500")}
#: band kinds of the sweep figures (see log_band)
BANDS = ("std", "ci")
#: problem -> name in titles
PROBLEM_NAMES = {"cartpole": "cart-pole", "guidance": "guidance by repulsion", "quantum": "quantum control"}
#: problem -> (ymin, ymax) the authors used (applied only when the curves lie inside)
AUTHOR_YLIM = {"guidance": (0.4, 6.0), "cartpole": (1e-6, 3.0), "quantum": (16.5, 135.0)}
#: order of modes in legends
MODE_ORDER = ("R", "M", "C", "S", "N")
#: curves whose geometric means agree to this relative tolerance at every epoch are equal (up to rounding)
COINCIDE_RTOL = 1e-5
#: dash patterns of the 2nd, 3rd, … of coinciding curves (the first stays solid)
COINCIDE_DASHES = ((0, (4, 2)), (0, (1.5, 1.5)), (0, (6, 1.5, 1.5, 1.5)), (0, (1, 3)))
#: config columns that never split curves (they do not change results or are the axes)
#: configuration fields that never make a separate line: the mode and clipping are drawn anyway, and
#: how the gradient is computed (backward strategy, remat, memory) does not change it
_NOT_VARIANT = {
    "problem",
    "mode",
    "clip",
    "epochs",
    "diagnostics",
    "checkpoint_every",
    "init_weights",
    "backward",
    "memory_budget",
}


# ----------------------------------------------------------------------------- helpers
def mode_colors(labels: Iterable[str]) -> dict[str, str]:
    """Colour per mode label: the authors' for R/M/C/S, distinct others for the rest."""
    labels = sorted(set(labels), key=_mode_sort_key)
    out, k = {}, 0
    for lab in labels:
        if lab in MODE_COLORS:
            out[lab] = MODE_COLORS[lab]
        else:
            out[lab] = EXTRA_COLORS[k % len(EXTRA_COLORS)]
            k += 1
    return out


def mode_styles(labels: Iterable[str]) -> dict[str, dict]:
    """Line style per mode label, in drawing order (R, M, C, S, then the rest).

    Each entry: ``color``, ``marker`` and, falling with the drawing order, ``lw`` (line width,
    points), ``ms`` (marker size, points) and rising ``zorder``: a curve drawn later is thinner
    and sits on top, so where two modes coincide (M and S on the toys, R under M in some
    panels) the earlier one still shows as a wider rim and a larger marker around the later one.
    ``k``/``of``: the position in the drawing order, used to stagger the markers along x.
    """
    labels = sorted(set(labels), key=_mode_sort_key)
    colors = mode_colors(labels)
    return {
        lab: {
            "color": colors[lab],
            "marker": MODE_MARKERS.get(lab, EXTRA_MARKERS[k % len(EXTRA_MARKERS)]),
            "lw": max(2.6 - 0.5 * k, 0.8),
            "ms": max(6.0 - 1.0 * k, 3.0),
            "zorder": 3 + k,
            "k": k,
            "of": len(labels),
        }
        for k, lab in enumerate(labels)
    }


def _mode_sort_key(label: str):
    base = str(label).split(" ")[0]
    return (MODE_ORDER.index(base) if base in MODE_ORDER else len(MODE_ORDER), str(label))


def _clip_order(clips: Iterable[str]) -> list[str]:
    have = set(clips)
    return [c for c in CLIP_ORDER if c in have] + sorted(have - set(CLIP_ORDER))


def markevery(n_points: int, k: int, of: int, marks: int = 6) -> tuple[int, int]:
    """``(start, step)`` for matplotlib's ``markevery``: about ``marks`` markers per curve, with
    curve ``k`` of ``of`` starting ``k/of`` of a step later than curve 0, so coinciding curves
    put their markers at different epochs (whenever ``step ≥ of``)."""
    step = max(1, int(n_points) // int(marks))
    return (k * step) // max(int(of), 1), step


def log_band(
    values: np.ndarray, kind: str, rng: np.random.Generator, n_boot: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, lower, upper) per row of an (epochs, seeds) array, computed in log space.

    Entries that are NaN or ≤ 0 are missing. Per row with mean μ and sample std σ of ln v over
    the present seeds: centre = e^μ (the geometric mean); ``kind="std"``: the band e^(μ∓σ)
    (×/÷ the geometric std); ``kind="ci"``: a percentile bootstrap 95 % interval of e^μ
    (``n_boot`` resamples of the seeds). Rows with one seed get a zero-width band.
    """
    if kind not in BANDS:
        raise ValueError(f"band={kind!r}; allowed: {', '.join(BANDS)}")
    v = np.asarray(values, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lv = np.log(np.where(v > 0, v, np.nan))
        n = np.sum(np.isfinite(lv), axis=1)
        mu = np.nanmean(lv, axis=1)
        if kind == "std":
            sd = np.where(n > 1, np.nanstd(lv, axis=1, ddof=1), 0.0) if v.shape[1] > 1 else np.zeros_like(mu)
            return np.exp(mu), np.exp(mu - sd), np.exp(mu + sd)
        if v.shape[1] < 2:
            return np.exp(mu), np.exp(mu), np.exp(mu)
        idx = rng.integers(0, v.shape[1], size=(n_boot, v.shape[1]))
        boots = np.nanmean(lv[:, idx], axis=2)  # (epochs, n_boot)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=1)
    return np.exp(mu), np.exp(np.where(n > 1, lo, mu)), np.exp(np.where(n > 1, hi, mu))


def _level_columns(df: pd.DataFrame, problem: str) -> list[str]:
    col = LEVEL_PARAMS.get(problem)
    if col is not None and col in df.columns and df[col].notna().any():
        return [col]
    params = [c for c in df.columns if c.startswith("param_")]
    return [c for c in params if df[c].astype(str).nunique(dropna=False) > 1]


def _variant_columns(df: pd.DataFrame, level_cols: Sequence[str]) -> list[str]:
    from ..training.config import RunConfig

    cand = [c for c in RunConfig.model_fields if c not in _NOT_VARIANT and c != "problem_params"]
    cand += [c for c in df.columns if c.startswith("param_") and c not in level_cols]
    return [c for c in cand if c in df.columns and df[c].astype(str).nunique(dropna=False) > 1]


def _level_sort(problem: str, values: list) -> list:
    def key(v):
        try:
            return (0, float(v))
        except (TypeError, ValueError):
            return (1, str(v))

    vals = sorted(values, key=key)
    if problem == "guidance":  # complexity grows as rc shrinks
        vals = vals[::-1]
    return vals


def _level_title(problem: str, cols: Sequence[str], value) -> str:
    if not cols:
        return _display(problem)
    if problem == "cartpole" and cols == ["param_poles"]:
        n = int(value)
        return f"cart-pole, {n} pole{'s' if n != 1 else ''}"
    if problem == "guidance" and cols == ["param_rc"]:
        return f"guidance, rc = {value:g}"
    if problem == "quantum" and cols == ["param_target"]:
        return f"quantum, target {int(value)}"
    vals = value if isinstance(value, tuple) else (value,)
    return f"{_display(problem)}: " + ", ".join(f"{c[len('param_') :]}={_fmt(v)}" for c, v in zip(cols, vals))


def _short_level_title(problem: str, cols: Sequence[str], value) -> str:
    """:func:`_level_title` without the problem's name where there is more (``1 pole``,
    ``rc = 1``, ``steps=4, n=3``): for panels too narrow for the full title."""
    full = _level_title(problem, cols, value)
    if not cols:
        return full
    if problem in PROBLEM_NAMES or problem in LEVEL_PARAMS:
        return full.split(", ", 1)[-1]
    return full[len(f"{_display(problem)}: ") :]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _clip_name(clip: str) -> str:
    return CLIP_NAMES.get(str(clip), f"clip {clip}")


def _curves(sub: pd.DataFrame, metric: str, smooth: bool, window: int):
    """Per run: (epochs, values, diverged) of ``metric``, smoothed if asked, sorted by epoch."""
    out = []
    for _, run in sub.groupby("run_id", sort=True):
        run = run.sort_values("epoch")
        if metric not in run.columns:
            continue
        y = run[metric].to_numpy(dtype=np.float64)
        e = run["epoch"].to_numpy()
        ok = np.isfinite(y)
        e, y = e[ok], y[ok]
        if y.size == 0:
            continue
        if smooth:
            y = smooth_curve(y, window)
        out.append((e, y, str(run["status"].iloc[0]) == "diverged"))
    return out


def _group_curve(runs, band: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, centre, lower, upper) of a list of (epochs, values, diverged) runs: the geometric
    mean and log-space band over the runs at every epoch any of them has."""
    epochs = np.unique(np.concatenate([r[0] for r in runs]))
    pos = {e: i for i, e in enumerate(epochs)}
    vals = np.full((len(epochs), len(runs)), np.nan)
    for j, (e, y, _) in enumerate(runs):
        vals[[pos[k] for k in e], j] = y
    centre, lo, hi = log_band(vals, band, rng)
    return epochs, centre, lo, hi


def _draw_group(ax, runs, curve, style: dict, ls="-") -> tuple[float, float] | None:
    """Draw the geometric mean and band ``curve`` (:func:`_group_curve`) of ``runs`` with line
    style ``ls``. Diverged runs get an ``x`` at their last finite point. Returns the (min, max)
    of what was drawn (band included), or None when nothing positive was drawn.
    """
    epochs, centre, lo, hi = curve
    start, step = markevery(len(epochs), style["k"], style["of"])
    line = len(epochs) > 1
    ax.plot(
        epochs,
        centre,
        color=style["color"],
        lw=style["lw"],
        ls=ls if line else "",
        marker=style["marker"],
        ms=style["ms"],
        markevery=(start, step) if line else None,
        mec="white" if line else style["color"],
        mew=0.6,
        zorder=style["zorder"],
    )
    if len(runs) > 1:
        ax.fill_between(epochs, lo, hi, color=style["color"], alpha=0.2, lw=0, zorder=1)
    for e, y, div in runs:
        if div:
            ax.plot([e[-1]], [y[-1]], marker="x", ms=8, mew=2, color=style["color"], ls="", zorder=10)
    drawn = np.concatenate([lo, hi, centre])
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    return (float(drawn.min()), float(drawn.max())) if drawn.size else None


def _same_curve(a, b) -> bool:
    """Whether two curves (:func:`_group_curve`) coincide: the same epochs and geometric means
    equal to within :data:`COINCIDE_RTOL` at each of them."""
    return (
        len(a[0]) == len(b[0])
        and np.array_equal(a[0], b[0])
        and np.allclose(a[1], b[1], rtol=COINCIDE_RTOL, atol=0.0, equal_nan=True)
    )


def _coincidence_notes(panels: list[tuple[set, list]]) -> list[str]:
    """Legend notes on coinciding curves from each panel's (labels drawn, coinciding groups):
    ``"M = S (S dashed)"``, followed by ``" in k of n panels"`` when the group coincides in only
    k of the n panels that draw all its modes."""
    groups = []
    for _, gs in panels:
        groups += [g for g in gs if g not in groups]
    notes = []
    for g in groups:
        k = sum(g in gs for _, gs in panels)
        n = sum(set(g) <= drawn for drawn, _ in panels)
        notes.append(f"{' = '.join(g)} ({', '.join(g[1:])} dashed)" + (f" in {k} of {n} panels" if k < n else ""))
    return notes


def _apply_ylim(ax, problem: str, ranges: list) -> None:
    """The authors' y range when everything drawn lies inside it; else matplotlib's autoscale."""
    lim = AUTHOR_YLIM.get(problem)
    if lim is None or not ranges:
        return
    if lim[0] <= min(r[0] for r in ranges) and max(r[1] for r in ranges) <= lim[1]:
        ax.set_ylim(*lim)


def _seed_text(counts: pd.Series, sub: pd.DataFrame, level) -> str:
    """How many seeds the curves of ``level`` have (``counts``: :func:`_seed_counts` of ``sub``)."""
    n, most = _level_seeds(counts, level), _level_seeds(counts, level, most=True)
    seeds = _seeds_at(sub, level)
    if n == 1 and len(seeds) == 1:
        return f"one run, seed {seeds[0]}"
    if most > n:
        return f"{n}–{most} seeds per curve"
    return f"{n} seed{'s' if n != 1 else ''}"


# ----------------------------------------------------------------------------- sweep figures
def _prepare(df: pd.DataFrame, problem: str) -> tuple[pd.DataFrame, list, list[str], list[str], list[str]]:
    """(runs of ``problem`` with ``_label``/``_level`` columns, levels, level columns, labels, clips)."""
    sub = df[df["problem"] == problem].copy()
    if sub.empty:
        raise ValueError(
            f"no runs of problem {problem!r} in the table; problems there: "
            f"{', '.join(sorted(map(str, df['problem'].unique()))) if len(df) else 'none'}"
        )
    level_cols = _level_columns(sub, problem)
    variants = _variant_columns(sub, level_cols)
    sub["_label"] = sub["mode"].astype(str)
    if variants:
        sub["_label"] = (
            sub["_label"]
            + " ("
            + sub[variants]
            .astype(str)
            .agg(lambda r: ", ".join(f"{c.removeprefix('param_')}={v}" for c, v in zip(variants, r)), axis=1)
            + ")"
        )
    if level_cols:
        sub["_level"] = sub[level_cols].apply(lambda r: tuple(r) if len(level_cols) > 1 else r.iloc[0], axis=1)
        levels = _level_sort(problem, list(pd.unique(sub["_level"])))
    else:
        sub["_level"] = 0
        levels = [0]
    labels = sorted(sub["_label"].unique(), key=_mode_sort_key)
    return sub, levels, level_cols, labels, _clip_order(sub["clip"].astype(str))


def _panel(ax, part: pd.DataFrame, labels, styles, metric, smooth, window, band, rng):
    """One panel: every mode's curve in ``part``. A curve equal to one drawn before it
    (:func:`_same_curve`) is dashed, each with its own dash pattern (:data:`COINCIDE_DASHES`),
    so both stay visible. Runs without a finite value leave a note in the panel instead of empty
    axes. Returns (drawn ranges, any run diverged, labels drawn, coinciding
    groups: tuples of labels in drawing order)."""
    ranges, diverged = [], False
    drawn: list[tuple[str, tuple]] = []
    groups: list[list[str]] = []
    for lab in labels:
        runs = _curves(part[part["_label"] == lab], metric, smooth, window)
        if not runs:
            continue
        diverged |= any(r[2] for r in runs)
        curve = _group_curve(runs, band, rng)
        ls: str | tuple[float, tuple[float, ...]] = "-"
        twin = next((other for other, c in drawn if _same_curve(curve, c)), None)
        if twin is not None:
            group = next((g for g in groups if twin in g), None)
            if group is None:
                group = [twin]
                groups.append(group)
            group.append(lab)
            ls = COINCIDE_DASHES[(len(group) - 2) % len(COINCIDE_DASHES)]
        drawn.append((lab, curve))
        rg = _draw_group(ax, runs, curve, styles[lab], ls)
        if rg is not None:
            ranges.append(rg)
    if not drawn and len(part):
        n = part["run_id"].nunique()
        diverged = diverged or bool((part["status"] == "diverged").any())
        ax.text(
            0.5,
            0.5,
            f"no finite values of {metric.replace('_', ' ')}\n({n} run{'s' if n != 1 else ''}"
            f"{', diverged' if diverged else ''})",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            color="0.35",
        )
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    return ranges, diverged, {lab for lab, _ in drawn}, [tuple(g) for g in groups]


def _seed_counts(sub: pd.DataFrame) -> pd.Series:
    """Seeds per (level, label, clip) curve."""
    return sub.groupby(["_level", "_label", "clip"])["seed"].nunique()


def _description(
    problem: str, sub: pd.DataFrame, levels, level_cols, smooth: bool, window: int, band: str
) -> tuple[str, str]:
    """What is drawn: a title of two lines (the quantity; what a line and a band are) and a
    footnote (levels with fewer seeds than the rest; empty if none)."""
    counts = _seed_counts(sub)
    top = int(counts.max())
    what = f"test loss, {window}-epoch moving average" if smooth else "test loss, raw per epoch"
    note = ""
    if top == 1:
        seeds = sorted(sub["seed"].unique())
        line = f"each line is one run (seed {seeds[0]})" if len(seeds) == 1 else "each line is one run"
    else:
        fewest = int(counts.min())
        over = f"{top} seeds" if fewest == top or len(levels) > 1 else f"a curve's seeds ({fewest}–{top})"
        line = f"line: geometric mean over {over}; band: " + (
            "×/÷ geometric std" if band == "std" else "bootstrap 95 % CI of the geometric mean"
        )
        fewer = [lv for lv in levels if _level_seeds(counts, lv) < top]
        if fewer and len(levels) > 1:
            note = "fewer seeds: " + ", ".join(
                f"{_level_title(problem, level_cols, lv).split(', ', 1)[-1]} ({_seed_text(counts, sub, lv)})"
                for lv in fewer
            )
    return f"{_display(problem)}: {what}\n{line}", note


def _seeds_at(sub: pd.DataFrame, level) -> list:
    return sorted(sub.loc[sub["_level"].apply(lambda v: v == level), "seed"].unique())


def _level_seeds(counts: pd.Series, level, most: bool = False) -> int:
    """The fewest (``most``: the most) seeds of any curve at ``level``."""
    at = counts[counts.index.get_level_values(0).map(lambda v: v == level)]
    return int(at.max() if most else at.min())


def _display(problem: str) -> str:
    """A problem's name in titles: the paper's names for ours; a source ``dir/sim.py:make`` as
    ``sim.py:make`` (the folder is in the run's config)."""
    if problem in PROBLEM_NAMES:
        return PROBLEM_NAMES[problem]
    where, sep, fn = problem.rpartition(":")
    return f"{Path(where).name}:{fn}" if sep and where.endswith(".py") else problem


#: the figure title's font sizes (points), tried largest first until the title fits in two lines
TITLE_SIZES = (10, 9, 8)
#: font size of the footnote under the panels (details that do not fit in the title)
FOOTNOTE_SIZE = 8


def _chars_per_line(width_in: float, size: float) -> int:
    """About how many characters of a ``size``-point text fit in ``width_in`` inches (an
    average character is taken 0.58 em wide, and 4 % of the width is kept free)."""
    return max(24, int(0.96 * width_in * 72 / (size * 0.58)))


def _fit_title(title: str, width_in: float, footnote: str = "") -> tuple[str, float, str]:
    """Fit a figure title into at most two lines of ``width_in`` inches.

    Each ``\\n``-separated line of ``title`` is wrapped; the largest size of
    :data:`TITLE_SIZES` at which all of it takes two lines wins. If none does, the title keeps
    the lines that fit at the smallest size and the rest goes in front of ``footnote``.
    Returns ``(title, size, footnote)``.
    """
    lines = [line for line in title.split("\n") if line]
    for size in TITLE_SIZES:
        rows = [r for line in lines for r in textwrap.wrap(line, _chars_per_line(width_in, size))]
        if len(rows) <= 2:
            return "\n".join(rows), size, footnote
    size = TITLE_SIZES[-1]
    chars = _chars_per_line(width_in, size)
    keep: list[str] = []
    rest: list[str] = []
    for line in lines:
        rows = textwrap.wrap(line, chars)
        if not rest and len(keep) + len(rows) <= 2:
            keep += rows
        else:
            rest.append(line)
    if not keep:  # the first line alone wraps to more than two rows: its first two, the rest below
        rows = textwrap.wrap(lines[0], chars)
        keep, rest[0] = rows[:2], "… " + " ".join(rows[2:])
    return "\n".join(keep), size, "; ".join(rest + ([footnote] if footnote else []))


def _fit_panel_title(ax, text: str, short: str | None = None, size: float = 10) -> None:
    """Set a panel's title so that each of its lines fits the panel's width (about the figure's
    width over its number of columns): at ``size`` points, else smaller (down to 8), else the
    ``short`` form, else wrapped."""
    ncols = ax.get_subplotspec().get_gridspec().ncols if ax.get_subplotspec() is not None else 1
    width_in = ax.figure.get_figwidth() / ncols * 0.92
    for cand in (text, short):
        if not cand:
            continue
        for sz in (size, size - 1, size - 2):
            if all(len(line) <= _chars_per_line(width_in, sz) for line in cand.split("\n")):
                ax.set_title(cand, fontsize=sz)
                return
    cand = short or text
    ax.set_title(
        "\n".join(r for line in cand.split("\n") for r in textwrap.wrap(line, _chars_per_line(width_in, size - 2))),
        fontsize=size - 2,
    )


def _legend(fig, handles, title: str, footnote: str = "") -> None:
    """One compact legend above the panels (as many columns as fit, measured), titled with what
    the figure shows in at most two lines (:func:`_fit_title`); details that do not fit, and
    ``footnote``, go in a footnote below the panels."""
    title, size, footnote = _fit_title(title, fig.get_figwidth(), footnote)
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):  # as many columns as fit the figure's width
        legend = fig.legend(
            handles=handles,
            loc="outside upper center",
            ncol=ncol,
            frameon=False,
            fontsize=9,
            handlelength=2.2,
            columnspacing=1.4,
            title=title,
            title_fontsize=size,
        )
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            break
        legend.remove()
    if footnote:
        text = "\n".join(textwrap.wrap(footnote, _chars_per_line(fig.get_figwidth(), FOOTNOTE_SIZE)))
        note = fig.legend(
            handles=[], loc="outside lower center", frameon=False, title=text, title_fontsize=FOOTNOTE_SIZE
        )
        note.get_title().set_color("0.3")


def _mode_handles(labels, styles, band: str, multi_seed: bool, diverged: bool) -> list:
    h: list[Line2D | Patch] = [
        Line2D(
            [],
            [],
            color=styles[lab]["color"],
            lw=styles[lab]["lw"],
            marker=styles[lab]["marker"],
            ms=styles[lab]["ms"],
            mec="white",
            mew=0.6,
            label=lab,
        )
        for lab in labels
    ]
    if multi_seed:
        h.append(Patch(color="0.5", alpha=0.3, label="×/÷ geometric std" if band == "std" else "95 % CI"))
    if diverged:
        h.append(Line2D([], [], color="0.25", marker="x", ls="", mew=2, label="diverged"))
    return h


def _plain_log_labels(ax, axis: str = "y") -> None:
    """On a log axis spanning under two decades, label ticks as plain numbers (0.5, 1, 2, …) at
    the densest of 1-2-3-5, 1-2-5, 1-3 or 1 × 10^k whose labels do not collide at the axis's
    drawn length (:class:`_FittingLogFormatter`); the other minor ticks stay unlabelled."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if not (lo > 0 and hi / lo < 100):
        return
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_formatter(_FittingLogFormatter())
    a.set_minor_formatter(_FittingLogFormatter())


#: mantissas labelled on a short log axis, densest first (see _FittingLogFormatter)
LOG_LABEL_SETS = ((1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))


class _FittingLogFormatter(Formatter):
    """Plain-number tick labels on a log axis at m × 10^k for the densest mantissa set of
    :data:`LOG_LABEL_SETS` whose neighbouring labels keep apart at the axis's drawn size
    (measured when the ticks are drawn: a narrow panel gets fewer labels than a wide one)."""

    def __call__(self, v, pos=None) -> str:
        return _plain_tick(v, self._mantissas())

    def format_ticks(self, values):
        keep = self._mantissas()
        return [_plain_tick(v, keep) for v in values]

    def _mantissas(self) -> tuple:
        axis = getattr(self, "axis", None)
        if axis is None or axis.axes is None:
            return LOG_LABEL_SETS[0]
        ax = axis.axes
        horizontal = axis.axis_name == "x"
        lo, hi = sorted(ax.get_xlim() if horizontal else ax.get_ylim())
        if not (lo > 0 and hi > lo):
            return LOG_LABEL_SETS[0]
        box = ax.get_window_extent()
        length = box.width if horizontal else box.height  # pixels
        px_per_decade = length / np.log10(hi / lo)
        size = axis.get_major_ticks()[0].label1.get_fontsize() if axis.get_major_ticks() else 10.0
        pt = ax.figure.dpi / 72.0
        for keep in LOG_LABEL_SETS:
            vals = [
                m * 10.0**k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1) for m in keep
            ]
            vals = [v for v in vals if lo <= v <= hi]
            fits = True
            for a, b in zip(vals, vals[1:]):
                gap = px_per_decade * np.log10(b / a)
                if horizontal:  # digits are about 0.62 em wide, plus half an em between labels
                    need = (0.62 * size * (len(f"{a:g}") + len(f"{b:g}")) / 2 + 0.5 * size) * pt
                else:
                    need = 1.3 * size * pt
                if gap < need:
                    fits = False
                    break
            if fits:
                return keep
        return LOG_LABEL_SETS[-1]


def _plain_tick(v: float, keep=(1, 2, 3, 5)) -> str:
    if v <= 0:
        return ""
    mantissa = v / 10 ** np.floor(np.log10(v) + 1e-9)
    return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in keep) else ""


def problem_figure(
    df: pd.DataFrame,
    problem: str,
    *,
    smooth: bool = True,
    window: int = 30,
    band: str = "std",
    seed: int = 0,
    author_ylim: bool = True,
) -> plt.Figure:
    """The figure of one problem (see the module docstring) from a :func:`results.collect` table.

    Rows: clipping modes (none, value, norm, others); columns: complexity levels, easy to hard
    (plus, for quantum, the update size at the highest target). All test-loss panels share one
    log y axis. ``band``: ``"std"`` (×/÷ geometric std) or ``"ci"``; ``seed``: the bootstrap's;
    ``author_ylim``: use the authors' y range where everything fits in it (else autoscale always).
    """
    if band not in BANDS:
        raise ValueError(f"band={band!r}; allowed: {', '.join(BANDS)}")
    sub, levels, level_cols, labels, clips = _prepare(df, problem)
    rng = np.random.default_rng(seed)
    styles = mode_styles(labels)
    extra = problem == "quantum" and "update_norm" in sub.columns and sub["update_norm"].notna().any()
    ncol = len(levels) + int(extra)
    fig, axes = plt.subplots(
        len(clips),
        ncol,
        figsize=(max(5.0, 2.9 * ncol + 0.9), 2.25 * len(clips) + 0.9),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    counts = _seed_counts(sub)
    top = int(counts.max())
    ranges, any_div, coincide = [], False, []
    for i, clip in enumerate(clips):
        for j, level in enumerate(levels):
            ax = axes[i, j]
            if (i, j) != (0, 0):
                ax.sharey(axes[0, 0])
            part = sub[(sub["clip"] == clip) & sub["_level"].apply(lambda v: v == level)]
            rg, div, drawn, same = _panel(ax, part, labels, styles, "test_loss", smooth, window, band, rng)
            coincide.append((drawn, same))
            ranges += rg
            any_div |= div
            if i == 0:
                n = _level_seeds(counts, level)
                seeds_note = f"\n{_seed_text(counts, sub, level)}" if n < top else ""
                _fit_panel_title(
                    ax,
                    _level_title(problem, level_cols, level) + seeds_note,
                    _short_level_title(problem, level_cols, level) + seeds_note,
                )
            if j == 0:
                ax.set_ylabel(f"{_clip_name(clip)}\ntest loss", fontsize=9)
            if i == len(clips) - 1:
                ax.set_xlabel("epoch")
        if extra:
            ax = axes[i, -1]
            part = sub[(sub["clip"] == clip) & sub["_level"].apply(lambda v: v == levels[-1])]
            _panel(ax, part, labels, styles, "update_norm", False, 1, band, rng)
            if i == 0:
                ax.set_title(
                    f"update size, {_level_title(problem, level_cols, levels[-1]).split(', ', 1)[-1]}", fontsize=10
                )
            ax.set_ylabel("update norm\n(raw, per epoch)", fontsize=9)
            if i == len(clips) - 1:
                ax.set_xlabel("epoch")
    if author_ylim:
        _apply_ylim(axes[0, 0], problem, ranges)
    for ax in axes[:, : len(levels)].ravel():
        _plain_log_labels(ax)
    handles = _mode_handles(labels, styles, band, top > 1, any_div)
    handles += [
        Line2D([], [], color="0.3", lw=1.2, ls=COINCIDE_DASHES[0], label=note) for note in _coincidence_notes(coincide)
    ]
    _legend(fig, handles, *_description(problem, sub, levels, level_cols, smooth, window, band))
    return fig


def paired_figure(
    df: pd.DataFrame, problem: str, *, x: str = "R", y: str = "C", epoch: int | None = None, window: int = 30
) -> plt.Figure:
    """Per seed: mode ``x``'s final loss (horizontal) against mode ``y``'s (vertical), log–log.

    Final loss as in :mod:`stablebptt.analysis.stats` (the last point of the ``window``-epoch moving
    average, at ``epoch`` if given; a diverged run is drawn at the panel's edge with a hollow
    marker). One panel per level, one marker per (seed, clipping mode): the clipping mode is
    the marker (and its colour), the seed the number beside it (points at the same spot share
    one label, e.g. ``0,2``; labels are moved around their points so none overlaps another).
    Solid diagonal: equal loss
    (below it ``y`` is lower); dotted: ``y`` 10× lower. Each panel has square limits around
    its own points (the levels' losses differ by decades).
    Raises ValueError when no seed has both modes.
    """
    sub, levels, level_cols, _, clips = _prepare(df, problem)
    runs = stats.final_losses(sub.drop(columns=["_label"]), epoch=epoch, window=window)
    pairs = stats.paired(runs, x, y, ["_level", "clip"])
    if pairs.empty:
        raise ValueError(f"{problem}: no seed has both a {x} and a {y} run; nothing to pair")
    levels = [lv for lv in levels if (pairs["_level"].apply(lambda v: v == lv)).any()]
    fig, axes = plt.subplots(
        1, len(levels), figsize=(max(5.0, 3.1 * len(levels) + 0.6), 3.7), squeeze=False, layout="constrained"
    )
    tenfold_shown, seed_points = False, []
    for ax, level in zip(axes[0], levels):
        p = pairs[pairs["_level"].apply(lambda v: v == level)]
        tenfold, pts = _paired_panel(ax, p, x, y)
        tenfold_shown |= tenfold
        seed_points.append(pts)
        n = p["seed"].nunique()
        seeds_note = f" ({n} seed{'s' if n != 1 else ''})"
        _fit_panel_title(
            ax,
            _level_title(problem, level_cols, level) + seeds_note,
            _short_level_title(problem, level_cols, level) + seeds_note,
        )
        ax.set_xlabel(f"{x}: final test loss")
    axes[0, 0].set_ylabel(f"{y}: final test loss")
    h = [
        Line2D([], [], marker=_pair_style(c)[0], color=_pair_style(c)[1], ls="", label=_clip_name(c))
        for c in _clip_order(pairs["clip"])
    ]
    h.append(Line2D([], [], color="0.35", lw=1.0, label=f"{y} = {x}"))
    if tenfold_shown:
        h.append(Line2D([], [], color="0.35", lw=0.9, ls=":", label=f"{y} = {x}/10"))
    if not np.isfinite(pairs[[x, y]].to_numpy(float)).all():
        h.append(Line2D([], [], marker="o", mfc="none", mec="0.3", ls="", label="diverged (at the edge)"))
    when = f"at epoch {epoch}" if epoch is not None else "final"
    _legend(
        fig,
        h,
        f"{_display(problem)}: {when} test loss, {y} against {x}, paired by seed\n"
        f"numbers: seeds; below the solid diagonal {y} is lower",
        f"{when} test loss: "
        + ("the last point" if epoch is None else f"the point at epoch {epoch}")
        + f" of the {window}-epoch moving average of each run",
    )
    fig.draw_without_rendering()  # the layout, so the seed labels can be placed in pixels
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg's canvas has it; stubs type the base
    for ax, pts in zip(axes[0], seed_points):
        _seed_labels(ax, pts, renderer)
    return fig


def _pair_style(clip: str) -> tuple[str, str]:
    return PAIR_STYLES.get(str(clip), ("D", "0.4"))


def _paired_panel(ax, p: pd.DataFrame, x: str, y: str) -> tuple[bool, list[tuple[float, float, int]]]:
    """One level of :func:`paired_figure`: square log–log limits around its own points.

    Returns whether the dotted line ``y = x/10`` crosses the panel (it does when the limits
    span more than one decade) and the points' ``(x, y, seed)`` for :func:`_seed_labels`."""
    seeds = []
    vals = p[[x, y]].to_numpy(float)
    fin = vals[np.isfinite(vals) & (vals > 0)]
    lo, hi = (np.log10(fin.min()) - 0.3, np.log10(fin.max()) + 0.3) if fin.size else (-1.0, 1.0)
    edge = 10 ** (hi - 0.1)
    g = np.logspace(lo, hi, 2)
    ax.plot(g, g, color="0.35", lw=1.0, zorder=1)
    ax.plot(g, g / 10, color="0.35", lw=0.9, ls=":", zorder=1)
    for clip in _clip_order(p["clip"]):
        c = p[p["clip"] == clip]
        px, py = c[x].to_numpy(float), c[y].to_numpy(float)
        div = ~np.isfinite(px) | ~np.isfinite(py)
        px, py = np.where(np.isfinite(px), px, edge), np.where(np.isfinite(py), py, edge)
        marker, color = _pair_style(clip)
        ax.scatter(px[~div], py[~div], marker=marker, color=color, s=34, zorder=3, edgecolor="white", lw=0.5)
        ax.scatter(px[div], py[div], marker=marker, facecolor="none", edgecolor=color, s=34, zorder=3)
        seeds += [(float(sx), float(sy), int(s)) for sx, sy, s in zip(px, py, c["seed"])]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(10**lo, 10**hi)
    ax.set_ylim(10**lo, 10**hi)
    ax.set_aspect("equal")
    ax.grid(True, which="major", alpha=0.3)
    _plain_log_labels(ax, "x")
    _plain_log_labels(ax, "y")
    return hi - lo > 1, seeds


#: seed labels: where a label may sit relative to its point, in points (dx, dy, ha, va), first choice first
_LABEL_SPOTS = tuple(
    (f * dx, f * dy, ha, va)
    for f in (1, 2.2, 3.5)
    for dx, dy, ha, va in (
        (3, 2, "left", "bottom"),
        (3, -2, "left", "top"),
        (-3, 2, "right", "bottom"),
        (-3, -2, "right", "top"),
        (5, 0, "left", "center"),
        (-5, 0, "right", "center"),
        (0, 4, "center", "bottom"),
        (0, -4, "center", "top"),
    )
)
#: seed labels: points closer than this (in points) share one label
_SAME_SPOT_PT = 3.0


def _seed_labels(ax, points, renderer) -> list:
    """Label the paired panel's points with their seeds, readable: points at (nearly) the same
    spot (closer than :data:`_SAME_SPOT_PT`) share one label ("0,2"), and each label goes to the
    first spot around its point (:data:`_LABEL_SPOTS`) where it overlaps no other label, no
    other point and stays in the panel (the least overlap if none is free). Needs the figure's
    layout done (positions in pixels). Returns the texts."""
    if not points:
        return []
    pt = ax.figure.dpi / 72.0
    xy = ax.transData.transform(np.array([(x, y) for x, y, _ in points]))
    n = len(points)
    group = list(range(n))  # union-find of points at the same spot

    def root(i):
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if np.hypot(*(xy[i] - xy[j])) < _SAME_SPOT_PT * pt:
                group[root(j)] = root(i)
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(root(i), []).append(i)
    frame = ax.get_window_extent(renderer)
    r = 3.2 * pt  # a marker's half-width (s = 34 pt²)
    marks = [(x - r, y - r, x + r, y + r) for x, y in xy]

    def overlap(b, o):
        return max(0.0, min(b.x1, o[2]) - max(b.x0, o[0])) * max(0.0, min(b.y1, o[3]) - max(b.y0, o[1]))

    placed: list[tuple[float, float, float, float]] = []
    texts = []
    order = sorted(clusters.values(), key=lambda m: (xy[m[0], 0], xy[m[0], 1]))
    for members in order:
        seeds = sorted({points[i][2] for i in members})
        anchor = points[members[0]][:2]
        t = ax.annotate(
            ",".join(map(str, seeds)),
            anchor,
            xytext=_LABEL_SPOTS[0][:2],
            textcoords="offset points",
            fontsize=7,
            color="0.3",
            ha="left",
            va="bottom",
            annotation_clip=False,
        )
        others = [m for k, m in enumerate(marks) if k not in members]
        best: tuple[float, float, float, str, str, tuple[float, float, float, float]] | None = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            t.xyann = (dx, dy)
            t.set_ha(ha)
            t.set_va(va)
            b = t.get_window_extent(renderer)
            outside = (
                max(0.0, frame.x0 - b.x0)
                + max(0.0, b.x1 - frame.x1)
                + max(0.0, frame.y0 - b.y0)
                + max(0.0, b.y1 - frame.y1)
            ) * 100
            cost = outside + sum(overlap(b, o) for o in placed) + sum(overlap(b, o) for o in others)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, (b.x0, b.y0, b.x1, b.y1))
            if cost == 0:
                break
        assert best is not None  # _LABEL_SPOTS is not empty
        _, dx, dy, ha, va, box = best
        t.xyann = (dx, dy)
        t.set_ha(ha)
        t.set_va(va)
        placed.append(box)
        texts.append(t)
    return texts


def ratio_figure(ratios: Sequence, *, title: str = "", window: int = 30) -> plt.Figure:
    """Paired per-seed ratios of final losses, ``reference / variant``, one row per variant.

    ``ratios``: objects with ``variant``, ``reference``, ``verdict`` and ``test`` (a
    :class:`stablebptt.analysis.stats.Test` of the per-seed ratios with their geometric mean and
    bootstrap interval), e.g. :class:`stablebptt.analysis.comparison.Ratio`. Log x axis; the solid
    vertical line is 1 (right of it the variant ends lower). Per row: one small marker per seed
    (spread vertically in seed order; a ratio of 0 or ∞ — one side diverged — sits hollow at
    the edge), the geometric mean as a large marker with its 95 % interval as a bar, and the
    verdict at the right.
    """
    ratios = list(ratios)
    if not ratios:
        raise ValueError("no ratios to draw")
    styles = mode_styles([r.variant for r in ratios])
    vals = np.concatenate(
        [np.asarray(r.test.per_seed, float) for r in ratios]
        + [np.asarray([r.test.lo, r.test.hi, r.test.estimate], float) for r in ratios]
    )
    fin = vals[np.isfinite(vals) & (vals > 0)]
    lo, hi = (np.log10(min(fin.min(), 1.0)) - 0.25, np.log10(max(fin.max(), 1.0)) + 0.25) if fin.size else (-1.0, 1.0)
    left, right = 10 ** (lo + 0.05), 10 ** (hi - 0.05)
    fig, ax = plt.subplots(figsize=(7.5, 0.75 * len(ratios) + 1.9), layout="constrained")
    ax.axvline(1.0, color="0.3", lw=1.0, zorder=1)
    any_edge = False
    for i, r in enumerate(ratios):
        y = len(ratios) - 1 - i
        st = styles[r.variant]
        v = np.asarray(r.test.per_seed, float)
        ys = y + (np.linspace(-0.22, 0.22, v.size) if v.size > 1 else np.zeros(1))
        edge = ~np.isfinite(v) | (v <= 0)
        any_edge |= bool(edge.any())
        x = np.where(np.isfinite(v) & (v > 0), v, np.where(v > 1, right, left))
        ax.scatter(x[~edge], ys[~edge], s=22, color=st["color"], edgecolor="0.2", lw=0.4, zorder=3)
        ax.scatter(x[edge], ys[edge], s=22, facecolor="none", edgecolor=st["color"], lw=1.0, zorder=3)
        est, a, b = (
            float(np.clip(t, left, right)) if np.isfinite(t) or np.isinf(t) else np.nan
            for t in (r.test.estimate, r.test.lo, r.test.hi)
        )
        if r.test.n > 1 and np.isfinite(a) and np.isfinite(b):
            ax.plot([a, b], [y, y], color="0.15", lw=2.2, solid_capstyle="butt", zorder=4)
        if np.isfinite(est):
            ax.plot([est], [y], marker="D", ms=8, color=st["color"], mec="0.1", mew=1.0, ls="", zorder=5)
        ax.text(1.01, y, r.verdict, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(10**lo, 10**hi)
    ax.set_ylim(-0.6, len(ratios) - 0.4)
    ax.set_yticks(range(len(ratios)), [f"{r.reference}/{r.variant}" for r in ratios][::-1])
    ax.grid(True, axis="x", which="major", alpha=0.3)
    _plain_log_labels(ax, "x")
    ref = ratios[0].reference
    ax.set_xlabel(f"{ref}'s final test loss / the variant's, per seed (> 1: the variant ends lower)")
    h = [
        Line2D([], [], marker="o", color="0.5", mec="0.2", ls="", ms=5, label="one seed"),
        Line2D([], [], marker="D", color="0.5", mec="0.1", ls="", ms=7, label="geometric mean"),
        Line2D([], [], color="0.15", lw=2.2, label="bootstrap 95 % interval"),
    ]
    if any_edge:
        h.append(
            Line2D([], [], marker="o", mfc="none", mec="0.3", ls="", label="0 or ∞: one side diverged (at the edge)")
        )
    n = max(r.test.n for r in ratios)
    head = title or "final test loss, paired by seed"
    what = "the test loss at the last epoch" if window == 1 else f"last point of the {window}-epoch moving average"
    _legend(fig, h, f"{head}\n{n} seeds; final loss: {what}")
    return fig


def save_figure(fig, out_dir: str | Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``out_dir/<stem>.<fmt>`` for every format (png at 150 dpi), close it,
    and return the files written (``out_dir`` is created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = str(fmt).strip().lower().lstrip(".")
        if not fmt:
            continue
        p = out_dir / f"{stem}.{fmt}"
        fig.savefig(p, dpi=150 if fmt == "png" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def plot_frame(
    df: pd.DataFrame,
    out_dir: str | Path,
    *,
    smooth: bool = True,
    window: int = 30,
    band: str = "std",
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """For every problem of a results table: :func:`problem_figure`, saved as
    ``<stem>-test-loss[-raw][-ci].<fmt>`` (``stem``: :func:`stablebptt.problems.file_stem` of the problem), and, where some seed has both R and C,
    :func:`paired_figure` as ``<stem>-paired-R-C.<fmt>``. Returns the files written."""
    if df.empty:
        raise ValueError("the results table is empty (no finished runs)")
    out_dir = Path(out_dir)
    paths = []
    for problem in sorted(df["problem"].unique()):
        fig = problem_figure(df, problem, smooth=smooth, window=window, band=band)
        stem = f"{file_stem(problem)}-test-loss" + ("" if smooth else "-raw") + ("-ci" if band == "ci" else "")
        paths += save_figure(fig, out_dir, stem, formats)
        modes = set(df.loc[df["problem"] == problem, "mode"])
        if {"R", "C"} <= modes:
            try:
                fig = paired_figure(df, problem, window=window)
            except ValueError:  # R and C never share a seed
                continue
            paths += save_figure(fig, out_dir, f"{file_stem(problem)}-paired-R-C", formats)
    return paths


def plot_sweep(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    smooth: bool = True,
    window: int = 30,
    band: str = "std",
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw the paper's figures for every problem of a sweep folder; return the files written.

    Reads the finished runs under ``sweep_dir`` (:func:`stablebptt.analysis.results.collect`) and
    writes the files of :func:`plot_frame` into ``out_dir`` (default ``<sweep_dir>/figures``).
    See the module docstring for what a figure shows.
    """
    from . import results

    if band not in BANDS:
        raise ValueError(f"band={band!r}; allowed: {', '.join(BANDS)}")
    if int(window) < 1:
        raise ValueError(f"window={window!r}; must be ≥ 1")
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep folder {sweep_dir} does not exist")
    df = results.collect(sweep_dir)
    if df.empty:
        raise ValueError(f"no finished runs under {sweep_dir}")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "figures"
    return plot_frame(df, out, smooth=smooth, window=window, band=band, formats=formats)


__all__ = [
    "smooth_curve",
    "log_band",
    "markevery",
    "mode_styles",
    "plot_sweep",
    "plot_frame",
    "problem_figure",
    "paired_figure",
    "ratio_figure",
    "save_figure",
    "MODE_COLORS",
    "MODE_MARKERS",
    "CLIP_ORDER",
]
