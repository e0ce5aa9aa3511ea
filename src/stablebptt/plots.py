r"""Figures: the paper's sweep figures (mean ± spread over seeds) and the two toy figures.

Sweep figures (:func:`plot_sweep`)
----------------------------------
One figure per problem in a sweep folder, in the paper's layout: one panel per complexity
level (cart-pole: number of poles; guidance: the control regulariser rc, from easy 1 to
hard 0.001; quantum: the target eigenstate; any other problem: one panel per combination of
the problem parameters that vary in the sweep, or a single panel). Each panel shows the
**test loss per epoch** on a log y axis:

* one curve per gradient-flow mode and clipping variant: the mean over seeds, with a shaded
  band (± one standard deviation over seeds, or a bootstrap 95% confidence interval of the
  mean with ``band="ci"``);
* raw, or smoothed like the authors: a 30-epoch trailing moving average left-padded with
  the first value (:func:`smooth_curve`), applied to each run before averaging;
* colours are the authors' (R #ef476f, M #ffd166, C #06d6a0, S #073b4c; other mode labels get
  other colours); clipping is the line style (none solid, value dashed, norm dotted);
* a run that diverged is drawn up to its last finite epoch and marked with an ``x`` there
  (the mean at later epochs is over the seeds still alive);
* the y range is the authors' (guidance 0.4–6, cart-pole 1e-6–3, quantum 16.5–135) when the
  curves lie inside it, otherwise matplotlib's autoscaling.

The quantum figure gets one more panel: the per-epoch mean update size (``update_norm``, the
global L2 norm of the update handed to the optimizer, averaged over the epoch's minibatches)
for the highest target, on a log y axis, which shows how many orders of magnitude R's
update spans compared with C's.

Toy figures
-----------
* :func:`fig1_fields` (paper Fig. 1): the gradient field G (mode R) and the modified field M
  (mode M) of the scalar toy ``toy-field`` over θ ∈ [-4, 4]², each computed by the engine
  (``value_and_update`` of mode R and M, vmapped over θ). Heat map of log10 ‖field‖ with streamlines of the
  negative field (the direction a plain descent step moves), side by side; the dashed curve
  bounds the region L < 10. G's magnitude varies
  by three orders of magnitude across the low-loss region, M's far less: the returned
  95th/5th percentile ratios quantify that (method.md: ≈ 1.8e3 vs ≈ 68).
* :func:`fig2_rotation` (paper Fig. 2): Keras-form Adam, lr 0.1, 200 iterations from
  θ = (2, 4) on L = ‖θ‖² under (a) the gradient g (mode R), (b) the rotating field
  r = 2θ − 4Rθ (mode M) and (c) the sign-combined field (mode C) of ``toy-rotation``, all
  through the engine. Panels (a)–(c): the trajectory in θ space over loss contours with
  arrows of the negative field; panel (d): the loss per iteration on a log axis. Adam
  follows g straight in, orbits the minimum under r with a growing radius, and under the
  combined field converges (slowly, in damped loops).

All drawing uses matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

#: the authors' mode colours
MODE_COLORS = {"R": "#ef476f", "M": "#ffd166", "C": "#06d6a0", "S": "#073b4c"}
#: colours for every other mode label (assigned in sorted order of the labels)
EXTRA_COLORS = ("#118ab2", "#8338ec", "#fb8500", "#6a994e", "#9d4edd", "#bc6c25", "#e5383b",
                "#3a86ff", "#8d99ae", "#2a9d8f")
#: clipping variant -> line style
CLIP_STYLES = {"none": "-", "value": "--", "norm": ":"}
#: problem -> the results column that holds its complexity level
LEVEL_PARAMS = {"cartpole": "param_poles", "guidance": "param_rc", "quantum": "param_target"}
#: problem -> (ymin, ymax) the authors used (applied only when the curves lie inside)
AUTHOR_YLIM = {"guidance": (0.4, 6.0), "cartpole": (1e-6, 3.0), "quantum": (16.5, 135.0)}
#: order of modes in legends
MODE_ORDER = ("R", "M", "C", "S", "N")
#: config columns that never split curves (they do not change results or are the axes)
_NOT_VARIANT = {"problem", "mode", "clip", "epochs", "diagnostics", "checkpoint_every", "init_weights"}


# ----------------------------------------------------------------------------- helpers
def smooth_curve(y: Sequence[float], window: int = 30) -> np.ndarray:
    """Trailing moving average over ``window`` points, left-padded with the first value.

    ``out[i] = mean(y[i-window+1 .. i])`` where indices below 0 read ``y[0]`` (the authors'
    smoothing): ``smooth_curve([1, 2, 3, 4], 3) == [1, 4/3, 2, 3]``. Same length as ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"smooth_curve expects a 1-d array, got shape {y.shape}")
    if int(window) < 1:
        raise ValueError(f"window={window!r}; must be an int ≥ 1")
    if y.size == 0 or window == 1:
        return y.copy()
    w = int(window)
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    c = np.concatenate([[0.0], np.cumsum(padded)])
    return (c[w:] - c[:-w]) / w


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


def _mode_sort_key(label: str):
    base = str(label).split(" ")[0]
    return (MODE_ORDER.index(base) if base in MODE_ORDER else len(MODE_ORDER), str(label))


def _clip_style(clip: str) -> str:
    return CLIP_STYLES.get(str(clip), "-.")


def _band(values: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lower, upper) over seeds of an (epochs, seeds) array with NaN for missing."""
    n = np.sum(np.isfinite(values), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=1)
        if kind == "std":
            sd = np.where(n > 1, np.nanstd(values, axis=1, ddof=1) if values.shape[1] > 1 else 0.0, 0.0)
            return mean, mean - sd, mean + sd
        if kind == "ci":
            if values.shape[1] < 2:
                return mean, mean, mean
            B = 2000
            idx = rng.integers(0, values.shape[1], size=(B, values.shape[1]))
            boots = np.nanmean(values[:, idx], axis=2)  # (epochs, B)
            lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=1)
            lo = np.where(n > 1, lo, mean)
            hi = np.where(n > 1, hi, mean)
            return mean, lo, hi
    raise ValueError(f"band={kind!r}; allowed: std, ci")


def _level_columns(df: pd.DataFrame, problem: str) -> list[str]:
    col = LEVEL_PARAMS.get(problem)
    if col is not None and col in df.columns and df[col].notna().any():
        return [col]
    params = [c for c in df.columns if c.startswith("param_")]
    return [c for c in params if df[c].astype(str).nunique(dropna=False) > 1]


def _variant_columns(df: pd.DataFrame, level_cols: Sequence[str]) -> list[str]:
    from .config import RunConfig

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
        return problem
    if problem == "cartpole" and cols == ["param_poles"]:
        n = int(value)
        return f"cart-pole, {n} pole{'s' if n != 1 else ''}"
    if problem == "guidance" and cols == ["param_rc"]:
        return f"guidance, rc = {value:g}"
    if problem == "quantum" and cols == ["param_target"]:
        return f"quantum, target {int(value)}"
    vals = value if isinstance(value, tuple) else (value,)
    return f"{problem}: " + ", ".join(f"{c[len('param_'):]}={_fmt(v)}" for c, v in zip(cols, vals))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


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


def _draw_group(ax, runs, *, color, ls, band, rng, label=None):
    """Mean ± band of a list of (epochs, values, diverged); returns the plotted mean's (min, max)."""
    epochs = np.unique(np.concatenate([r[0] for r in runs]))
    pos = {e: i for i, e in enumerate(epochs)}
    vals = np.full((len(epochs), len(runs)), np.nan)
    for j, (e, y, _) in enumerate(runs):
        vals[[pos[k] for k in e], j] = y
    mean, lo, hi = _band(vals, band, rng)
    finite_pos = mean[np.isfinite(mean) & (mean > 0)]
    floor = float(np.min(finite_pos)) * 1e-3 if finite_pos.size else 1e-30
    lo = np.maximum(lo, floor)  # keep the band drawable on a log axis
    line = "-" if len(epochs) > 1 else ""
    ax.plot(epochs, mean, color=color, ls=ls if line else "", marker=None if line else "o", lw=1.6,
            label=label, zorder=3)
    if len(runs) > 1:
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.22, lw=0, zorder=2)
    for e, y, div in runs:
        if div:
            ax.plot([e[-1]], [y[-1]], marker="x", ms=8, mew=2, color=color, ls="", zorder=4)
    return (float(np.nanmin(mean)), float(np.nanmax(mean))) if np.isfinite(mean).any() else None


def _legend_handles(labels: Sequence[str], clips: Sequence[str], colors: dict, diverged: bool):
    h = [Line2D([], [], color=colors[lab], lw=3, label=lab) for lab in labels]
    if len(clips) > 1 or (clips and clips[0] != "none"):
        h += [Line2D([], [], color="0.25", ls=_clip_style(c), lw=1.6, label=f"clip {c}") for c in clips]
    if diverged:
        h.append(Line2D([], [], color="0.25", marker="x", ls="", mew=2, label="diverged"))
    return h


def _apply_ylim(ax, problem: str, ranges: list) -> None:
    lim = AUTHOR_YLIM.get(problem)
    if lim is None or not ranges:
        return
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    if lim[0] <= lo and hi <= lim[1]:
        ax.set_ylim(*lim)


# ----------------------------------------------------------------------------- sweep figures
def problem_figure(df: pd.DataFrame, problem: str, *, smooth: bool = True, window: int = 30,
                   band: str = "std", seed: int = 0) -> plt.Figure:
    """The figure of one problem (see the module docstring) from a :func:`results.collect` table."""
    if band not in ("std", "ci"):
        raise ValueError(f"band={band!r}; allowed: std, ci")
    sub = df[df["problem"] == problem].copy()
    if sub.empty:
        raise ValueError(f"no runs of problem {problem!r} in the table")
    rng = np.random.default_rng(seed)
    level_cols = _level_columns(sub, problem)
    variants = _variant_columns(sub, level_cols)
    sub["_label"] = sub["mode"].astype(str)
    if variants:
        sub["_label"] = sub["_label"] + " (" + sub[variants].astype(str).agg(
            lambda r: ", ".join(f"{c.removeprefix('param_')}={v}" for c, v in zip(variants, r)), axis=1) + ")"
    if level_cols:
        keys = sub[level_cols].apply(lambda r: tuple(r) if len(level_cols) > 1 else r.iloc[0], axis=1)
        sub["_level"] = keys
        levels = _level_sort(problem, list(pd.unique(keys)))
    else:
        sub["_level"] = 0
        levels = [0]
    labels = sorted(sub["_label"].unique(), key=_mode_sort_key)
    clips = [c for c in CLIP_STYLES if c in set(sub["clip"])] + sorted(set(sub["clip"]) - set(CLIP_STYLES))
    colors = mode_colors(labels)
    extra = problem == "quantum" and "update_norm" in sub.columns
    npan = len(levels) + int(extra)
    fig, axes = plt.subplots(1, npan, figsize=(4.2 * npan + 1.8, 3.8), squeeze=False)
    axes = axes[0]
    any_div = False
    for ax, level in zip(axes, levels):
        ranges = []
        part = sub[sub["_level"].apply(lambda v: v == level)]
        for lab in labels:
            for clip in clips:
                grp = part[(part["_label"] == lab) & (part["clip"] == clip)]
                if grp.empty:
                    continue
                runs = _curves(grp, "test_loss", smooth, window)
                if not runs:
                    continue
                any_div |= any(r[2] for r in runs)
                rg = _draw_group(ax, runs, color=colors[lab], ls=_clip_style(clip), band=band, rng=rng)
                if rg is not None:
                    ranges.append(rg)
        ax.set_yscale("log")
        _apply_ylim(ax, problem, ranges)
        ax.set_title(_level_title(problem, level_cols, level), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("test loss" + (f" ({window}-epoch moving avg.)" if smooth else ""))
    if extra:
        ax = axes[-1]
        top = levels[-1]
        part = sub[sub["_level"].apply(lambda v: v == top)]
        for lab in labels:
            for clip in clips:
                grp = part[(part["_label"] == lab) & (part["clip"] == clip)]
                runs = _curves(grp, "update_norm", smooth, window) if not grp.empty else []
                runs = [(e, y, d) for e, y, d in runs if np.all(y > 0)] or runs
                if runs:
                    _draw_group(ax, runs, color=colors[lab], ls=_clip_style(clip), band=band, rng=rng)
        ax.set_yscale("log")
        ax.set_title(f"update size, {_level_title(problem, level_cols, top).split(', ', 1)[-1]}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean update norm per epoch")
        ax.grid(True, which="major", alpha=0.3)
    nseeds = sub.groupby(["_level", "_label", "clip"])["seed"].nunique()
    seeds_txt = f"{nseeds.min()}" if nseeds.min() == nseeds.max() else f"{nseeds.min()}–{nseeds.max()}"
    band_txt = "± 1 std" if band == "std" else "bootstrap 95% CI of the mean"
    fig.suptitle(f"{problem}: test loss, mean over {seeds_txt} seed(s) {band_txt}"
                 f"{'' if smooth else ' (raw)'}", fontsize=11)
    fig.legend(handles=_legend_handles(labels, clips, colors, any_div), loc="center right",
               frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 0.95))
    return fig


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
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


def plot_frame(df: pd.DataFrame, out_dir: str | Path, *, smooth: bool = True, window: int = 30,
               band: str = "std", formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """:func:`problem_figure` for every problem of a results table, saved to ``out_dir``."""
    if df.empty:
        raise ValueError("the results table is empty (no finished runs)")
    out_dir = Path(out_dir)
    paths = []
    for problem in sorted(df["problem"].unique()):
        fig = problem_figure(df, problem, smooth=smooth, window=window, band=band)
        stem = f"{problem}-test-loss" + ("" if smooth else "-raw") + ("-ci" if band == "ci" else "")
        paths += _save(fig, out_dir, stem, formats)
    return paths


def plot_sweep(sweep_dir: str | Path, out_dir: str | Path | None = None, *, smooth: bool = True,
               window: int = 30, band: str = "std", formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Draw the paper's figures for every problem of a sweep folder; return the files written.

    Reads the finished runs under ``sweep_dir`` (:func:`stablebptt.results.collect`) and
    writes ``<problem>-test-loss[-raw][-ci].<fmt>`` for each problem into ``out_dir``
    (default ``<sweep_dir>/figures``). See the module docstring for what a figure shows.
    """
    from . import results

    if band not in ("std", "ci"):
        raise ValueError(f"band={band!r}; allowed: std, ci")
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


# ----------------------------------------------------------------------------- Fig. 1
def toy_field_grid(n: int = 401, lim: float = 4.0, **problem_params) -> dict[str, np.ndarray]:
    """L, G (mode R) and M (mode M) of ``toy-field`` on an n×n grid over θ ∈ [-lim, lim]².

    Each field comes from the engine (``value_and_update`` on a :class:`PolyController`), vmapped
    over θ. Arrays are indexed ``[i2, i1]`` (rows θ2, columns θ1), fields have a last axis of 2.
    """
    import jax
    import jax.numpy as jnp

    from . import problems
    from .core import value_and_update
    from .problems.toys import PolyController

    prob = problems.get("toy-field", **problem_params)
    x0 = jnp.asarray(prob.sample_data(0, 1, 1)[0])
    axis = np.linspace(-lim, lim, int(n), dtype=np.float32)
    T1, T2 = np.meshgrid(axis, axis, indexing="xy")
    thetas = jnp.asarray(np.stack([T1.ravel(), T2.ravel()], -1))

    def one(theta, mode):
        L, fld, _ = value_and_update(PolyController(theta), x0, step=prob.step, loss=prob.loss,
                                     horizon=prob.horizon, flow=mode, validate=False)
        return L, fld.theta

    L, G = jax.jit(jax.vmap(lambda t: one(t, "R")))(thetas)
    _, M = jax.jit(jax.vmap(lambda t: one(t, "M")))(thetas)
    shape = (len(axis), len(axis))
    axis64 = np.linspace(-lim, lim, int(n))  # exactly spaced, for matplotlib's streamplot
    return {"theta1": axis64, "theta2": axis64, "L": np.asarray(L).reshape(shape),
            "G": np.asarray(G).reshape(shape + (2,)), "M": np.asarray(M).reshape(shape + (2,))}


def spread(norms: np.ndarray, mask: np.ndarray | None = None) -> float:
    """95th / 5th percentile ratio of ``norms`` (over ``mask`` if given)."""
    v = np.asarray(norms, np.float64)
    v = v[mask] if mask is not None else v.ravel()
    p5, p95 = np.percentile(v, [5, 95])
    return float(p95 / p5)


def fig1_fields(out_dir: str | Path, *, n: int = 401, loss_below: float = 10.0,
                formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Paper Fig. 1: gradient field G vs modified field M of the scalar toy, side by side.

    Heat map: log10 of the field norm (one colour scale for both panels); streamlines: the
    negative field (where plain descent moves θ); dashed: the boundary of the region
    L < ``loss_below``. The colour scale spans the 1st–99th percentile of log10 ‖field‖
    over that region (both fields); larger values saturate. The spread of the field norm over
    that region (95th / 5th percentile) is the paper's measure of how badly scaled a field
    is: G's spans about three orders of magnitude, M's under two.

    Returns ``{"spread_G", "spread_M", "fraction", "paths"}`` (``fraction``: share of grid
    points with L < ``loss_below``).
    """
    d = toy_field_grid(n)
    L = d["L"]
    nG = np.linalg.norm(d["G"], axis=-1)
    nM = np.linalg.norm(d["M"], axis=-1)
    mask = L < loss_below
    sG, sM = spread(nG, mask), spread(nM, mask)

    t1, t2 = d["theta1"], d["theta2"]
    logs = {k: np.log10(np.maximum(v, 1e-12)) for k, v in (("G", nG), ("M", nM))}
    vmin, vmax = (float(v) for v in np.percentile(np.concatenate([logs["G"][mask], logs["M"][mask]]), [1, 99]))
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.0), constrained_layout=True)
    for ax, key, title, s in ((axes[0], "G", "gradient G (mode R)", sG), (axes[1], "M", "modified M (mode M)", sM)):
        im = ax.pcolormesh(t1, t2, logs[key], shading="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                           rasterized=True)
        f = -d[key]
        ax.streamplot(t1, t2, f[..., 0], f[..., 1], color="white", linewidth=0.6, density=1.3, arrowsize=0.8)
        ax.contour(t1, t2, L, levels=[loss_below], colors="k", linestyles="--", linewidths=1.0)
        ax.set_title(f"{title}\nspread over L<{loss_below:g}: {s:.3g}", fontsize=10)
        ax.set_xlabel("θ1")
        ax.set_aspect("equal")
        ax.set_xlim(t1[0], t1[-1])
        ax.set_ylim(t2[0], t2[-1])
    axes[0].set_ylabel("θ2")
    fig.colorbar(im, ax=axes, label="log10 ‖field‖", shrink=0.9, extend="both")
    fig.suptitle("Fig. 1: N(x;θ) = θ1x² + θ2x, P(x,c) = x + c, x0 = -0.3, y = 2, T = 4", fontsize=11)
    paths = _save(fig, Path(out_dir), "fig1-fields", formats)
    return {"spread_G": sG, "spread_M": sM, "fraction": float(mask.mean()), "paths": paths}


# ----------------------------------------------------------------------------- Fig. 2
def rotation_run(mode: str, *, iterations: int = 200, lr: float = 0.1,
                 theta0: Sequence[float] = (2.0, 4.0)) -> tuple[np.ndarray, np.ndarray]:
    """Keras-form Adam on ``toy-rotation`` under engine mode ``mode`` (R, M or C).

    Returns ``(losses, thetas)`` with ``losses[i] = L(θ_i)`` for i = 0 … iterations and
    ``thetas`` of shape (iterations + 1, 2).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from . import optim, problems
    from .core import evaluate_loss, value_and_update

    prob = problems.get("toy-rotation")
    model = prob.make_controller(None, theta=tuple(float(t) for t in theta0))
    x0 = jnp.zeros((1,) + tuple(prob.state_shape), jnp.float32)
    opt = optim.make("adam", lr)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        m = eqx.combine(params, static)
        val, upd, _ = value_and_update(m, x0, step=prob.step, loss=prob.loss, horizon=prob.horizon,
                                            flow=mode, validate=False)
        u, state = opt.update(upd, state, params)
        return eqx.apply_updates(params, u), state, val

    @jax.jit
    def loss_of(params):
        return evaluate_loss(eqx.combine(params, static), x0, step=prob.step, loss=prob.loss,
                                  horizon=prob.horizon)

    losses, thetas = [], [np.asarray(params.theta)]
    for _ in range(int(iterations)):
        params, state, val = step(params, state)
        losses.append(float(val))
        thetas.append(np.asarray(params.theta))
    losses.append(float(loss_of(params)))
    return np.asarray(losses), np.stack(thetas)


def fig2_rotation(out_dir: str | Path, *, iterations: int = 200, lr: float = 0.1,
                  theta0: Sequence[float] = (2.0, 4.0), formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Paper Fig. 2: Adam under a gradient, a rotating and a combined field on L = ‖θ‖².

    Panels (a) g = 2θ (mode R), (b) r = 2θ − 4Rθ (mode M), (c) the sign combination (mode C):
    the Adam trajectory from θ0 over loss contours, with arrows of the negative field;
    panel (d): L per iteration (log y). Returns ``{"losses": {mode: L[0..iterations]},
    "thetas": {mode: (iterations+1, 2)}, "paths"}``.
    """
    from .problems.toys import rotation_fields

    modes = {"R": "(a) gradient g (R)", "M": "(b) rotating r (M)", "C": "(c) combined (C)"}
    field_key = {"R": "g", "M": "r", "C": "k"}
    runs = {m: rotation_run(m, iterations=iterations, lr=lr, theta0=theta0) for m in modes}
    losses = {m: r[0] for m, r in runs.items()}
    thetas = {m: r[1] for m, r in runs.items()}

    lim = max(6.0, float(np.max(np.abs(np.concatenate(list(thetas.values()))))) * 1.08)
    ax_ = np.linspace(-lim, lim, 201)
    T1, T2 = np.meshgrid(ax_, ax_)
    Lgrid = T1**2 + T2**2
    q = np.linspace(-lim, lim, 15)
    Q1, Q2 = np.meshgrid(q, q)
    fields = rotation_fields(np.stack([Q1, Q2], -1))
    levels = np.geomspace(1e-2, Lgrid.max(), 12)

    fig, axes = plt.subplots(1, 4, figsize=(18.5, 4.6), constrained_layout=True)
    for ax, (m, title) in zip(axes[:3], modes.items()):
        ax.contour(T1, T2, Lgrid, levels=levels, colors="0.75", linewidths=0.7)
        f = -fields[field_key[m]]
        nrm = np.linalg.norm(f, axis=-1, keepdims=True)
        f = np.where(nrm > 0, f / np.maximum(nrm, 1e-12), 0.0)
        ax.quiver(Q1, Q2, f[..., 0], f[..., 1], color="0.55", angles="xy", scale=28, width=0.003)
        th = thetas[m]
        ax.plot(th[:, 0], th[:, 1], "-", color=MODE_COLORS[m], lw=1.6,
                path_effects=[patheffects.withStroke(linewidth=2.6, foreground="0.35")] if m == "M" else None)
        ax.plot(*th[0], "o", color="k", ms=5)
        ax.plot(*th[-1], "*", color=MODE_COLORS[m], ms=12, mec="k")
        ax.plot(0, 0, "+", color="k", ms=10)
        ax.set_title(f"{title}: L(200) = {losses[m][-1]:.3g}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("θ1")
    axes[0].set_ylabel("θ2")
    ax = axes[3]
    for m in modes:
        ax.plot(np.arange(len(losses[m])), losses[m], color=MODE_COLORS[m], lw=1.6, label=modes[m])
    ax.set_yscale("log")
    ax.set_xlabel("Adam iteration")
    ax.set_ylabel("L(θ)")
    ax.set_title(f"(d) loss (Adam, lr {lr:g}, from θ = ({theta0[0]:g}, {theta0[1]:g}))", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    paths = _save(fig, Path(out_dir), "fig2-rotation", formats)
    return {"losses": losses, "thetas": thetas, "paths": paths}


def toy_figures(out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Both toy figures into ``out_dir``; returns ``{"fig1": ..., "fig2": ...}``."""
    return {"fig1": fig1_fields(out_dir, formats=formats), "fig2": fig2_rotation(out_dir, formats=formats)}


__all__ = ["smooth_curve", "plot_sweep", "plot_frame", "problem_figure", "fig1_fields", "fig2_rotation",
           "rotation_run", "toy_field_grid", "spread", "toy_figures", "MODE_COLORS", "CLIP_STYLES"]
