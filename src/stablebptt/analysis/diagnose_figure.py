"""The four-panel figure of a :class:`~stablebptt.analysis.diagnose.Diagnosis`:
(a) adjoint norms of R and M per step, (b) each step's contribution to the update, (c) the
Jacobian spectra per step, (d) the agreement of M with the true gradient G. Drawn on a
matplotlib ``Figure`` without pyplot state."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .diagnose import _TINY, MAX_ORDERS, orders_spanned

if TYPE_CHECKING:
    from .diagnose import Diagnosis


def diagnosis_figure(d: Diagnosis, title: str | None = None) -> Figure:
    """The four-panel figure (a matplotlib ``Figure``; no pyplot state is touched).

    Pairs of curves that may coincide (R and M in (a) and (b), the physics and closed-loop
    singular values in (c), cos(M, G) and the sign agreement in (d)) are drawn so that both
    stay visible: the first as a wide solid line, the second dashed on top of it. A pair
    equal to within :data:`SAME_RTOL` everywhere is drawn once, in black, with one legend
    entry saying so (e.g. "R = M"); where a pair only partly coincides (within
    :data:`CLOSE_RTOL`) the first curve's legend entry says over which steps.
    """
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    ax = fig.subplots(2, 2)
    _panel_adjoints(d, ax[0, 0])
    _panel_credit(d, ax[0, 1])
    _panel_spectra(d, ax[1, 0])
    _panel_agreement(d, ax[1, 1])
    head = title or d.label or "gradient diagnosis"
    if d.verdict is not None:
        head += f"  →  mode {d.verdict.mode}, clip {d.verdict.clip}"
    for axis in ax.ravel():
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(head)
    return fig


def _panel_adjoints(d: Diagnosis, a) -> None:
    """(a) Adjoint norms ‖λ_n‖ of R and M per sample (thin) and their medians, log scale."""
    T, n_adj, colors = d.horizon, np.arange(d.horizon + 1), PANEL_COLORS
    med = {m: np.median(arr, 1) for m, arr in (("R", d.adjoint_R), ("M", d.adjoint_M))}
    same = _same(med["R"], med["M"]) and _same(d.adjoint_R, d.adjoint_M)
    for mode, arr in (("R", d.adjoint_R),) if same else (("R", d.adjoint_R), ("M", d.adjoint_M)):
        for i in range(arr.shape[1]):
            a.plot(n_adj, _pos(arr[:, i]), color="k" if same else colors[mode], alpha=0.15, lw=0.8)
    _draw_pair(
        a,
        n_adj,
        _pos(med["R"]),
        _pos(med["M"]),
        colors=(colors["R"], colors["M"]),
        labels=(
            f"R: ‖λ_n‖ (median; spans {orders_spanned(med['R']):.1f} orders)",
            f"M: ‖λ_n‖ (median; spans {orders_spanned(med['M']):.1f} orders)",
        ),
        same_label=f"R = M: ‖λ_n‖ (median; spans {orders_spanned(med['R']):.1f} orders)",
        names=("M", "n"),
    )
    a.set_yscale("log")
    a.set_xlabel("step n")
    a.set_title("(a) adjoint norm ‖∂L/∂x_n‖ along each gradient path")
    if d.verdict and d.verdict.flagged_horizons:
        k = d.verdict.max_safe_horizon
        a.axvspan(0, T - k, color="0.85", zorder=0, label=f"R spans > {MAX_ORDERS:g} orders beyond {k} steps")
    a.legend(fontsize=8)


def _panel_credit(d: Diagnosis, b) -> None:
    """(b) Contribution ‖G_θ,nᵀ B_nᵀ λ_{n+1}‖ of each step n to the update, R and M, log scale."""
    n_step, colors = np.arange(d.horizon), PANEL_COLORS
    credit = r"$\|G_{\theta,n}^T B_n^T \lambda_{n+1}\|$"
    _draw_pair(
        b,
        n_step,
        _pos(d.contrib_R),
        _pos(d.contrib_M),
        colors=(colors["R"], colors["M"]),
        labels=(r"R: $\|G_{\theta,n}^T B_n^T \lambda^R_{n+1}\|$", r"M: $\|G_{\theta,n}^T B_n^T \lambda^M_{n+1}\|$"),
        same_label=f"R = M: {credit}",
        names=("M", "n"),
    )
    b.set_yscale("log")
    b.set_xlabel("step n")
    b.set_title("(b) contribution of step n to the update")
    b.legend(fontsize=8)


def _panel_spectra(d: Diagnosis, c) -> None:
    """(c) Largest (and smallest) singular values of ∂P/∂x and of the closed loop per step."""
    n_step = np.arange(d.horizon)
    _draw_pair(
        c,
        n_step,
        d.sv_phys[:, 0],
        d.sv_closed[:, 0],
        colors=("tab:green", "tab:purple"),
        labels=(
            f"σ_max(∂P/∂x); Lyapunov {d.lyap_phys:+.3g}",
            f"σ_max(∂P/∂x + ∂P/∂c·∂N/∂x); Lyapunov {d.lyap_closed:+.3g}",
        ),
        same_label=f"σ_max(∂P/∂x) = σ_max(closed loop); Lyapunov {d.lyap_phys:+.3g}",
        names=("closed loop", "n"),
    )
    if d.sv_phys.shape[1] > 1:
        _draw_pair(
            c,
            n_step,
            d.sv_phys[:, -1],
            d.sv_closed[:, -1],
            colors=("tab:green", "tab:purple"),
            labels=("σ_min(∂P/∂x)", "σ_min(closed loop)"),
            same_label="σ_min(∂P/∂x) = σ_min(closed loop)",
            names=("closed loop", "n"),
            thin=True,
        )
    c.axhline(1.0, color="k", lw=0.6)
    c.set_yscale("log")
    c.set_xlabel("step n")
    c.set_title("(c) Jacobian spectra per step (sample 0)")
    c.legend(fontsize=8, loc="best")


def _panel_agreement(d: Diagnosis, ax) -> None:
    """(d) cos(M, G) and the sign agreement of M with G; cos(R_n, M_n) per step as dots."""
    T, n_step = d.horizon, np.arange(d.horizon)
    ones = np.ones(2)
    span = np.array([-0.5, max(T - 0.5, 0.5)])
    _draw_pair(
        ax,
        span,
        d.cos_mg * ones,
        d.sign_agree * ones,
        colors=("tab:orange", "tab:cyan"),
        labels=(f"cos(M, G) = {d.cos_mg:+.3f}", f"sign agreement = {100 * d.sign_agree:.1f}%"),
        same_label=f"cos(M, G) = sign agreement = {d.cos_mg:+.3f}",
        names=("sign agreement", None),
    )
    every = max(1, math.ceil(T / 40))
    finite = np.isfinite(d.contrib_cos)
    if finite.any():  # no legend entry for a curve that is not drawn
        bad = "" if finite.all() else f" (not finite at {int((~finite).sum())} of {T} steps)"
        ax.plot(
            n_step,
            d.contrib_cos,
            color="0.3",
            lw=1.0,
            marker="o",
            ms=3.5,
            markevery=every,
            zorder=5,
            label="cos(R_n, M_n) per step" + bad,
        )
    else:
        ax.text(
            0.98,
            0.04,
            f"cos(R_n, M_n) per step: not finite at all {T} steps",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlim(span)
    ax.set_ylim(-1.05, 1.08)
    ax.set_xlabel("step n")
    ax.set_title("(d) agreement of M with the true gradient G")
    ax.legend(fontsize=8, loc="lower left")


#: colours of the R and M curves in the figure's panels (a) and (b)
PANEL_COLORS = {"R": "tab:red", "M": "tab:blue"}

#: two curves equal to within this relative difference everywhere are drawn as one ("R = M")
SAME_RTOL = 1e-6
#: points of two curves within this relative difference are "coinciding" (indistinguishable
#: in the figure); the legend says over which steps
CLOSE_RTOL = 1e-3


def _close(a, b, rtol: float) -> np.ndarray:
    """Elementwise: |a − b| ≤ rtol·max(|a|, |b|), or both NaN (both not drawn)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))
    return close | both_nan


def _same(a, b) -> bool:
    return bool(np.all(_close(a, b, SAME_RTOL)))


def _where_close(x: np.ndarray, close: np.ndarray, var: str | None) -> str:
    """Words for the steps where two curves coincide: "for n ≥ 12", "for n ≤ 3", "everywhere",
    "at 7 of 30 steps"; "" when they coincide at fewer than 2 points (or 10 % of them)."""
    k = int(close.sum())
    if k < max(2, math.ceil(0.1 * close.size)):
        return ""
    if k == close.size or var is None:
        return "everywhere" if k == close.size else f"at {k} of {close.size} points"
    idx = np.flatnonzero(close)
    contiguous = idx[-1] - idx[0] + 1 == k
    if contiguous and idx[-1] == close.size - 1:
        return f"for {var} ≥ {x[idx[0]]:g}"
    if contiguous and idx[0] == 0:
        return f"for {var} ≤ {x[idx[-1]]:g}"
    if contiguous:
        return f"for {x[idx[0]]:g} ≤ {var} ≤ {x[idx[-1]]:g}"
    return f"at {k} of {close.size} steps"


def _draw_pair(ax, x, first, second, *, colors, labels, same_label: str, names, thin: bool = False):
    """Draw two curves that may coincide so that neither hides the other.

    ``first`` is drawn wide and solid, ``second`` narrower and dashed on top of it, so where
    they coincide both colours show. If they are equal within :data:`SAME_RTOL` at every
    point, one black line labelled ``same_label`` is drawn instead. ``names = (name of the
    second curve, step variable or None)`` words the note on the first curve's label where the
    two coincide within :data:`CLOSE_RTOL` (e.g. "≈ M for n ≥ 12").
    """
    lw_wide, lw_thin = (2.6, 1.2) if thin else (3.4, 1.6)
    if _same(first, second):
        ax.plot(x, first, color="k", lw=lw_thin + 0.4, ls=":" if thin else "-", label=same_label, zorder=3)
        return
    note = _where_close(np.asarray(x), _close(first, second, CLOSE_RTOL), names[1])
    label = labels[0]
    if note:  # a pair of constants (no step variable) that coincide: just "≈ name"
        label += f" (≈ {names[0]})" if names[1] is None and note == "everywhere" else f" (≈ {names[0]} {note})"
    ax.plot(
        x, first, color=colors[0], lw=lw_wide, alpha=0.55 if thin else 0.9, solid_capstyle="butt", label=label, zorder=3
    )
    ax.plot(
        x, second, color=colors[1], lw=lw_thin, ls=(0, (4, 3)) if not thin else (0, (1.5, 2)), label=labels[1], zorder=4
    )


def _pos(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.where(v > _TINY, v, np.nan)
