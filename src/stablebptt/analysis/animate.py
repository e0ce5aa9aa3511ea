r"""Animations of trained controllers: ``animate(run_dir) -> path of a GIF or MP4``.

The run folder's ``config.json`` and ``weights.npz`` are loaded (see
:func:`stablebptt.analysis.diagnose.load_problem_and_controller`), the controller is rolled out on the
first ``states`` test states of the run's own data, and every frame is drawn with matplotlib
(Agg, no display needed). Each picture is framed on the problem's *objective*:

* **cartpole** — one panel per rollout: the cart, its n poles, the force as an arrow; the view
  follows the cart (the ground ticks show how far it moved);
* **cart-chain** — the same, with link k drawn from the tip of link k − 1 (a chain) and the
  view sized to the chain's length;
* **guidance** — one column per rollout. Top: the view is framed on what the loss measures,
  the evaders and their target (the origin, black ⊕): the square box holding every evader
  position of the whole rollout and the origin, with a margin, fixed over the clip. Evaders
  are blue dots, drivers red triangles, each with a fading trail of its last
  ``GUIDANCE_TRAIL`` steps. A driver outside the view is drawn as a hollow triangle on the
  frame's edge, pointing towards it; the panel's top right lists such drivers' distances from
  the target. (The drivers roam far from the herd; a view that held them too made the herd a
  dot.) Bottom: the
  evaders' mean squared distance to the target, mean_e ‖x_e(t)‖², drawn up to the current time
  (the state term of the loss is half of it);
* **quantum** — one column per rollout. Top: |ψ_j(t)|² (probability per grid point, Σ_j = 1)
  as an image over position x and time t, filled in up to the current step, with the target
  eigenstate's |ψ_target,j|² as a strip at its right in the same colours and a colour bar per
  row of panels. Below it the overlap |⟨ψ_target, ψ(t)⟩|² (the quantity the loss maximises,
  0 … 1) drawn up to the current step, and the control u(t);
* anything else (the toys, ``linear``, your own problems) — the state entries (flattened)
  against the step n, drawn up to the current step, each in its own colour: all of them up to
  ``SERIES_MAX_COMPONENTS`` (24); of a longer state the first 24, and the picture (and a
  warning) says which are drawn and how to choose others (``components``, ``--components``).

:func:`build_scene` returns the figure with its named axes and an ``update(n)`` that draws
step n, so a picture can be inspected (or saved) without writing a clip.

Frames
------
Frames show the states x_n at n = 0, s, 2s, … and always the final state x_T, where s is the
``stride`` (default ``ceil(T / 100)``, so at most ~100 frames). The number of frames is
therefore **ceil(T / s) + 1** (T + 1 with the default stride for T ≤ 100): cart-pole 101,
guidance 61, quantum (T = 128, s = 2) 65, the 4-step toys 5. :func:`frame_indices` returns
the steps shown. Every frame carries the step number, so no two consecutive frames are equal
(GIF writers merge identical frames).

Output: ``.gif`` (Pillow, through imageio) or ``.mp4`` (needs the ``imageio-ffmpeg``
package). Default file: ``<run_dir>/animation.gif``. Default ``fps``: n_frames / 4 clipped to
2 … 25 (a ~4 s clip).
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the scene builders by problem name; others use :func:`_scene_series`
RENDERERS: dict[str, Callable] = {}


class PictureNote(UserWarning):
    """What a picture leaves out (e.g. state entries not drawn), warned when frames are drawn;
    ``stablebptt animate`` prints it as a note."""


#: the generic picture (state entries against the step) draws at most this many entries unless
#: told which (``components``); 16 entries, say, are all drawn
SERIES_MAX_COMPONENTS = 24
#: guidance: number of past steps in the fading trails (15 steps = 1 time unit at dt = 1/15)
GUIDANCE_TRAIL = 15
#: guidance: the view's half-width is at least this (length units), so a tight herd is not a dot
GUIDANCE_MIN_HALF_WIDTH = 1.0


def frame_indices(horizon: int, stride: int | None = None) -> list[int]:
    """Steps n shown in the frames: 0, s, 2s, … < T, then T (``ceil(T / s) + 1`` frames)."""
    T = int(horizon)
    s = default_stride(T) if stride is None else int(stride)
    if s < 1:
        raise ValueError(f"stride={stride!r}; must be an int ≥ 1")
    return list(range(0, T, s)) + [T]


def default_stride(horizon: int) -> int:
    return max(1, math.ceil(int(horizon) / 100))


def default_fps(n_frames: int) -> float:
    return float(min(25, max(2, round(n_frames / 4))))


@dataclass
class Scene:
    """A figure that can be drawn at any step of a rollout.

    Attributes:
      fig: the matplotlib ``Figure`` (Agg canvas attached; no pyplot state).
      update: ``update(n)`` sets every artist to step n (0 … T); then :meth:`grab` or
        ``fig.savefig``.
      panels: one dict per rollout naming its axes, e.g. guidance ``{"view", "distance"}``,
        quantum ``{"density", "target", "overlap", "control"}``, cart-pole and the generic
        renderer ``{"view"}``.
      colorbars: the colour-bar axes (quantum: one per row of panels; empty elsewhere).
      horizon: T.
      info: renderer-specific numbers and artists: guidance ``"limits"`` (per rollout
        ``(x0, x1, y0, y1)`` of the view), ``"distance2"`` ((T+1, S) mean_e ‖x_e‖²),
        ``"trails"`` (per rollout one ``LineCollection`` per object) and ``"edge_markers"``
        (per rollout one ``Line2D`` per driver, empty while the driver is in view); quantum
        ``"overlap"`` ((T+1, S) |⟨ψ_target, ψ_n⟩|²), ``"target"`` and ``"overlap_lines"``.
    """

    fig: Any
    update: Callable[[int], None]
    panels: list[dict[str, Any]]
    horizon: int
    colorbars: list[Any] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def grab(self) -> np.ndarray:
        """The current picture as an (H, W, 3) uint8 array."""
        canvas = self.fig.canvas
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def frame(self, n: int) -> np.ndarray:
        """Draw step ``n`` and return the picture (see :meth:`grab`)."""
        if not 0 <= int(n) <= self.horizon:
            raise ValueError(f"n={n!r}; must be a step in 0 … {self.horizon}")
        self.update(int(n))
        return self.grab()


# ----------------------------------------------------------------------------- drawing helpers
def _canvas(width_px: int, height_px: int, dpi: int = 80):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # multiples of 16 px keep video encoders happy (no resizing)
    w = max(16, int(round(width_px / 16)) * 16)
    h = max(16, int(round(height_px / 16)) * 16)
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _ncols(n: int) -> int:
    return min(n, 4)


def _grid(
    fig,
    n: int,
    rows_per: int = 1,
    height_ratios=None,
    top_px: float = 36,
    right: float = 0.98,
    left: float = 0.06,
    bottom: float = 0.08,
    wspace: float = 0.25,
    hspace: float = 0.45,
):
    """Axes for n rollouts, ``rows_per`` stacked axes each, at most 4 rollouts per row; the
    first row starts ``top_px`` pixels below the figure's top edge (room for the titles)."""
    cols = _ncols(n)
    rows = math.ceil(n / cols)
    top = 1.0 - top_px / (fig.get_figheight() * fig.dpi)
    bottom = bottom / rows
    gs = fig.add_gridspec(
        rows * rows_per,
        cols,
        height_ratios=(height_ratios or [1] * rows_per) * rows,
        left=left,
        right=right,
        bottom=bottom,
        top=top,
        wspace=wspace,
        hspace=hspace,
    )
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        axes.append([fig.add_subplot(gs[r * rows_per + k, c]) for k in range(rows_per)])
    return axes


def _size(n: int, panel_w: int, panel_h: int, head: int = 48) -> tuple[int, int]:
    cols = _ncols(n)
    rows = math.ceil(n / cols)
    return cols * panel_w, rows * panel_h + head


def _fading(rgb: str, k: int) -> np.ndarray:
    """(k, 4) RGBA rows of one colour, alpha rising from 0.1 (oldest) to 0.9 (newest)."""
    from matplotlib.colors import to_rgba

    c = np.tile(np.asarray(to_rgba(rgb)), (max(k, 1), 1))
    c[:, 3] = np.linspace(0.1, 0.9, max(k, 1))
    return c


# ----------------------------------------------------------------------------- scenes
def _scene_cartpole(problem, xs, cs, chained: bool = False):
    """xs (T+1, S, 1+n, 2), cs (T, S). ``chained``: link k hangs from the tip of link k − 1
    (``cart-chain``), else every pole from the cart."""
    from matplotlib.patches import Rectangle

    S = xs.shape[1]
    poles = xs.shape[2] - 1
    T = xs.shape[0] - 1
    dt = float(problem.params.get("dt", 0.01))
    length = float(problem.params.get("link_length", 1.0))  # drawn pole length 2l (l = 0.5 is the half-length)
    reach = length * (poles if chained else 1)  # how far the tip can get from the cart
    half_width = max(2.0, 1.1 * reach)
    force = np.asarray(cs, np.float64).reshape(cs.shape[0], S)
    fmax = max(float(np.max(np.abs(force))), 1e-6)
    fig = _canvas(*_size(S, 320, 230))
    axes = [a[0] for a in _grid(fig, S)]
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    arts = []
    for i, ax in enumerate(axes):
        ax.set_aspect("equal")
        ax.set_ylim(-1.25 * reach, 1.25 * reach)
        ax.set_yticks([])
        ax.axhline(0, color="0.5", lw=1)
        ax.set_title(f"rollout {i}", fontsize=9)
        cart = ax.add_patch(Rectangle((0, -0.1), 0.4, 0.2, color="0.25", zorder=3))
        lines = [
            ax.plot([], [], lw=3, color=colors[k % len(colors)], solid_capstyle="round", zorder=4)[0]
            for k in range(poles)
        ]
        arrow = ax.plot([], [], color="k", lw=2, zorder=5)[0]
        arts.append((cart, lines, arrow))
    title = fig.suptitle("")

    def update(n):
        for i, ax in enumerate(axes):
            cart, lines, arrow = arts[i]
            x = float(xs[n, i, 0, 0])
            ax.set_xlim(x - half_width, x + half_width)
            ax.set_xticks(np.arange(math.floor(x - half_width), math.ceil(x + half_width) + 1))
            cart.set_xy((x - 0.2, -0.1))
            bx, by = x, 0.0
            for k, line in enumerate(lines):
                th = float(xs[n, i, 1 + k, 0])
                tx, ty = bx + length * math.sin(th), by + length * math.cos(th)
                line.set_data([bx, tx], [by, ty])
                if chained:
                    bx, by = tx, ty
            f = float(force[min(n, force.shape[0] - 1), i])
            arrow.set_data([x, x + 0.8 * f / fmax], [-0.2, -0.2])
        what = (
            f"cart-chain ({poles} link{'s' if poles > 1 else ''})"
            if chained
            else f"cart-pole ({poles} pole{'s' if poles > 1 else ''})"
        )
        title.set_text(f"{what}   t = {n * dt:.2f} s   step {n}/{T}")

    return Scene(fig=fig, update=update, panels=[{"view": ax} for ax in axes], horizon=T)


def guidance_view(
    evaders: np.ndarray, min_half_width: float = GUIDANCE_MIN_HALF_WIDTH, margin: float = 0.25
) -> tuple[np.ndarray, float]:
    """The square view of one guidance rollout: ``(centre (2,), half-width)`` in length units.

    It holds every evader position of the rollout (``evaders`` of shape (T+1, n_e, 2)) and the
    target (the origin), widened by ``margin`` (a fraction of the half-width) and to at least
    ``min_half_width``.
    """
    p = np.concatenate([np.asarray(evaders, np.float64).reshape(-1, 2), np.zeros((1, 2))])
    p = p[np.all(np.isfinite(p), axis=1)]
    lo, hi = p.min(0), p.max(0)
    centre = (lo + hi) / 2
    half = max(float(np.max(hi - lo)) / 2 * (1 + margin), min_half_width)
    return centre, half


def _scene_guidance(problem, xs, cs, trail: int = GUIDANCE_TRAIL):
    """xs (T+1, S, n_d + n_e, 2, 2)."""
    from matplotlib.collections import LineCollection

    T1, S = xs.shape[0], xs.shape[1]
    T = T1 - 1
    n_d = int(problem.control_shape[0])
    pos = np.asarray(xs[:, :, :, 0, :], np.float64)  # (T+1, S, n, 2)
    n_obj = pos.shape[2]
    dist2 = np.mean(np.sum(pos[:, :, n_d:] ** 2, -1), -1)  # (T+1, S): mean_e ‖x_e‖²
    dt = float(problem.params.get("dt", 1.0))
    t = np.arange(T1) * dt
    fig = _canvas(*_size(S, 320, 440, head=72))
    axes = _grid(fig, S, rows_per=2, height_ratios=[3, 1], top_px=72, hspace=0.35)
    red, blue = "tab:red", "tab:blue"
    trail_cols = [_fading(red if k < n_d else blue, trail) for k in range(n_obj)]
    arts, panels, limits = [], [], []
    for i, (ax, bot) in enumerate(axes):
        c, r = guidance_view(pos[:, i, n_d:])
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        limits.append((c[0] - r, c[0] + r, c[1] - r, c[1] + r))
        ax.set_aspect("equal")
        ax.set_title(f"rollout {i}", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.plot([0], [0], "o", ms=14, mfc="none", mec="k", mew=1.5, zorder=2)
        ax.plot([0], [0], "k+", ms=14, mew=1.5, zorder=2)
        trails = [ax.add_collection(LineCollection([], lw=2 if k >= n_d else 1.5, zorder=3)) for k in range(n_obj)]
        drv = ax.plot([], [], "^", color=red, ms=10, mec="k", mew=0.6, zorder=5)[0]
        eva = ax.plot([], [], "o", color=blue, ms=8, mec="k", mew=0.6, zorder=6)[0]
        edge = [
            ax.plot([], [], marker=(3, 0, 0), ms=11, mfc="white", mec=red, mew=1.8, ls="none", zorder=7)[0]
            for _ in range(n_d)
        ]
        edge_txt = ax.text(1.0, 1.02, "", transform=ax.transAxes, color=red, fontsize=7, ha="right", va="bottom")
        top = max(float(np.nanmax(dist2[:, i])), 1e-6)
        curve = bot.plot([], [], color=blue, lw=1.8)[0]
        now = bot.plot([], [], "o", color=blue, ms=4)[0]
        bot.set_xlim(t[0], t[-1])
        bot.set_ylim(0, 1.08 * top)
        bot.set_xlabel("t", fontsize=8)
        bot.set_ylabel("mean ‖x_e‖²", fontsize=8)
        bot.tick_params(labelsize=7)
        arts.append((trails, drv, eva, edge, edge_txt, curve, now, c, r))
        panels.append({"view": ax, "distance": bot})
    _guidance_legend(fig, red, blue)
    title = fig.suptitle("", y=0.995)

    def update(n):
        lo = max(0, n - trail)
        for i in range(S):
            trails, drv, eva, edge, edge_txt, curve, now, c, r = arts[i]
            for k, lc in enumerate(trails):
                seg = pos[lo : n + 1, i, k]
                segs = np.stack([seg[:-1], seg[1:]], 1) if len(seg) > 1 else np.zeros((0, 2, 2))
                lc.set_segments(list(segs))
                lc.set_color(trail_cols[k][-len(segs) :] if len(segs) else trail_cols[k][:0])
            p_d = pos[n, i, :n_d]
            off = _place_edge_markers(edge, edge_txt, p_d, c, r)
            drv.set_data(p_d[~off, 0], p_d[~off, 1])
            eva.set_data(pos[n, i, n_d:, 0], pos[n, i, n_d:, 1])
            curve.set_data(t[: n + 1], dist2[: n + 1, i])
            now.set_data([t[n]], [dist2[n, i]])
        title.set_text(f"guidance by repulsion   t = {n * dt:.2f}   step {n}/{T}")

    return Scene(
        fig=fig,
        update=update,
        panels=panels,
        horizon=T,
        info={
            "limits": limits,
            "distance2": dist2,
            "drivers": n_d,
            "trails": [a[0] for a in arts],
            "edge_markers": [a[3] for a in arts],
        },
    )


def _guidance_legend(fig, red: str, blue: str) -> None:
    """The guidance animation's legend: evaders, drivers, drivers outside the view, target."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="none", marker="o", color=blue, mec="k", mew=0.6, ms=8, label="evaders"),
        Line2D([], [], ls="none", marker="^", color=red, mec="k", mew=0.6, ms=9, label="drivers"),
        Line2D(
            [],
            [],
            ls="none",
            marker="^",
            mfc="white",
            mec=red,
            mew=1.8,
            ms=9,
            label="driver outside the view (on the edge, pointing to it)",
        ),
        Line2D([], [], ls="none", marker="$\\oplus$", color="k", ms=11, label="target (origin)"),
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.955),
        ncol=4,
        fontsize=8,
        frameon=False,
        handletextpad=0.3,
        columnspacing=1.2,
    )


def _place_edge_markers(edge, edge_txt, p_d: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    """Drivers outside the square view (centre ``c`` (2,), half-width ``r``) as hollow triangles
    on its edge pointing towards them, and their distances from the target in ``edge_txt``.

    ``p_d`` (n_d, 2) are the drivers' positions; returns the mask (n_d,) of those outside.
    """
    off = np.max(np.abs(p_d - c), axis=1) > r
    far = []
    for k in range(len(p_d)):
        if not off[k]:
            edge[k].set_data([], [])
            continue
        d = p_d[k] - c
        q = c + d * (0.93 * r / float(np.max(np.abs(d))))
        edge[k].set_data([q[0]], [q[1]])
        edge[k].set_marker((3, 0, math.degrees(math.atan2(d[1], d[0])) - 90.0))
        far.append(f"{float(np.hypot(*p_d[k])):.1f}")
    edge_txt.set_text(f"outside: {', '.join(far)} from target" if far else "")
    return off


def _quantum_target(problem, nx: int) -> tuple[int, np.ndarray]:
    from ..problems.quantum import eigenstate

    target = problem.params.get("target")
    if target is None or not 1 <= int(target) <= nx:
        raise ValueError(
            f"quantum animation: problem parameter target={target!r}; must be an eigenstate "
            f"index in 1..{nx} (the state has {nx} grid points)"
        )
    return int(target), np.asarray(eigenstate(int(target), nx), np.float64)


def _scene_quantum(problem, xs, cs):
    """xs (T+1, S, nx, 2) = (Re ψ, Im ψ) on the interior grid points, cs (T, S, 1)."""
    import matplotlib

    T1, S, nx = xs.shape[0], xs.shape[1], xs.shape[2]
    T = T1 - 1
    dt = float(problem.params.get("dt", 1.0))
    re, im = np.asarray(xs[..., 0], np.float64), np.asarray(xs[..., 1], np.float64)
    prob = re**2 + im**2  # (T+1, S, nx)
    target, tvec = _quantum_target(problem, nx)
    overlap = np.einsum("tsj,j->ts", re, tvec) ** 2 + np.einsum("tsj,j->ts", im, tvec) ** 2  # (T+1, S)
    u = np.asarray(cs, np.float64).reshape(T, S)
    dx = 2.0 / (nx + 1)  # the box [0, 2], interior points x_j = j·dx
    fig = _canvas(*_size(S, 340, 520))
    axes = _grid(fig, S, rows_per=3, height_ratios=[2.4, 1, 1], top_px=64, right=0.90, wspace=0.42, hspace=0.5)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    vmax = float(max(np.nanmax(prob), np.max(tvec**2)))
    extent = (-dt / 2, T * dt + dt / 2, dx / 2, 2.0 - dx / 2)  # cells centred on (n·dt, x_j)
    tt_state = np.arange(T1) * dt
    tt_ctrl = np.arange(T) * dt
    arts, panels = [], []
    for i, (top, mid, bot) in enumerate(axes):
        img = top.imshow(
            np.full((nx, T1), np.nan),
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=0,
            vmax=vmax,
            extent=extent,
            interpolation="nearest",
        )
        top.set_ylim(0.0, 2.0)
        top.set_title(f"rollout {i}: |ψ(x, t)|²", fontsize=9)
        top.set_ylabel("x", fontsize=8)
        top.tick_params(labelsize=7)
        cur = top.axvline(0, color="w", lw=1)
        strip = _target_strip(top, tvec**2, f"ψ_{target}", cmap, vmax, dx)
        mid.axhline(1.0, color="0.6", lw=0.6, ls=":")
        ov = mid.plot([], [], color="tab:green", lw=1.8)[0]
        ov_now = mid.plot([], [], "o", color="tab:green", ms=4)[0]
        ov_txt = mid.text(0.02, 0.9, "", transform=mid.transAxes, fontsize=7, va="top")
        mid.set_xlim(extent[0], extent[1])
        mid.set_ylim(-0.03, 1.05)
        mid.set_ylabel(f"|⟨ψ_{target}, ψ⟩|²", fontsize=8)
        mid.tick_params(labelsize=7)
        bot.plot(tt_ctrl, u[:, i], color="0.85", lw=1)
        line = bot.plot([], [], color="tab:red", lw=1.5)[0]
        bot.set_xlim(extent[0], extent[1])
        span = max(float(np.max(np.abs(u[:, i]))), 1e-6)
        bot.set_ylim(-1.1 * span, 1.1 * span)
        bot.set_xlabel("t", fontsize=8)
        bot.set_ylabel("u(t)", fontsize=8)
        bot.tick_params(labelsize=7)
        arts.append((img, cur, ov, ov_now, ov_txt, line))
        panels.append({"density": top, "target": strip, "overlap": mid, "control": bot})
    colorbars = [_row_colorbar(fig, axes[r0][0], arts[r0][0]) for r0 in range(0, S, _ncols(S))]
    title = fig.suptitle("")

    def update(n):
        for i in range(S):
            img, cur, ov, ov_now, ov_txt, line = arts[i]
            data = np.full((nx, T1), np.nan)
            data[:, : n + 1] = prob[: n + 1, i].T
            img.set_data(data)
            cur.set_xdata([n * dt, n * dt])
            ov.set_data(tt_state[: n + 1], overlap[: n + 1, i])
            ov_now.set_data([tt_state[n]], [overlap[n, i]])
            ov_txt.set_text(f"overlap {overlap[n, i]:.3f}")
            line.set_data(tt_ctrl[: min(n + 1, T)], u[: min(n + 1, T), i])
        title.set_text(f"quantum control into eigenstate {target}   t = {n * dt:.3f}   step {n}/{T}")

    return Scene(
        fig=fig,
        update=update,
        panels=panels,
        horizon=T,
        colorbars=colorbars,
        info={"overlap": overlap, "target": target, "overlap_lines": [a[2] for a in arts]},
    )


def _target_strip(top, density: np.ndarray, name: str, cmap, vmax: float, dx: float):
    """A narrow image right of the density panel ``top``: the target's |ψ_j|² (nx,) on the same
    x axis [0, 2] and colour scale, titled ``name``."""
    strip = top.inset_axes([1.02, 0.0, 0.07, 1.0])
    strip.imshow(
        density[:, None],
        origin="lower",
        aspect="auto",
        cmap=cmap,
        vmin=0,
        vmax=vmax,
        extent=(0, 1, dx / 2, 2.0 - dx / 2),
        interpolation="nearest",
    )
    strip.set_ylim(0.0, 2.0)
    strip.set_xticks([])
    strip.set_yticks([])
    strip.set_title(name, fontsize=7, pad=2)
    return strip


def _row_colorbar(fig, first, image):
    """One colour bar for a row of density panels, right of the figure at the height of the
    row's first panel ``first``; returns its axes."""
    box = first.get_position()
    cax = fig.add_axes([0.925, box.y0, 0.014, box.height])
    cb = fig.colorbar(image, cax=cax)
    cb.set_label("|ψ_j|²  (Σ_j = 1)", fontsize=8)
    cax.tick_params(labelsize=7)
    return cax


def parse_components(text: str, n: int) -> list[int]:
    """State entries to draw from text such as ``"8-15"``, ``"0,3,5"`` or ``"0-3,10"`` (ranges
    include both ends), for a state of ``n`` entries; raises ValueError naming ``components``."""
    out: list[int] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError(f"components={text!r}: give entries such as 8-15 or 0,3,5 (0 … {n - 1})")
    for part in parts:
        try:
            if "-" in part[1:]:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                out += list(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"components={text!r}: {part!r} is not an entry (k) or a range (a-b)") from None
    return _check_components(out, n)


def _check_components(components, n: int) -> list[int]:
    comps = list(dict.fromkeys(int(k) for k in components))
    bad = [k for k in comps if not 0 <= k < n]
    if not comps or bad:
        raise ValueError(
            f"components={list(components)!r}: the state has {n} entries (0 … {n - 1})"
            + (f"; {bad} are not among them" if bad else "")
        )
    return comps


def _entries_text(comps: list[int]) -> str:
    """``x[0]–x[23]`` for a contiguous run of entries, else ``x[3], x[7], …``."""
    if len(comps) > 2 and comps == list(range(comps[0], comps[-1] + 1)):
        return f"x[{comps[0]}]–x[{comps[-1]}]"
    return ", ".join(f"x[{k}]" for k in comps)


def _series_colors(d: int) -> list:
    import matplotlib

    if d <= 10:
        return [f"C{k}" for k in range(d)]
    if d <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(k) for k in range(d)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(v) for v in np.linspace(0.05, 0.95, d)]


def _scene_series(problem, xs, cs, components=None):
    """Any state: its (flattened) entries against the step n, every entry up to
    :data:`SERIES_MAX_COMPONENTS` of them (else the first that many, or ``components``). When
    not all are drawn, the picture says which are and how to choose others (``info["note"]``)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    T1, S = xs.shape[0], xs.shape[1]
    everything = np.asarray(xs, np.float64).reshape(T1, S, -1)
    n = everything.shape[2]
    comps = list(range(min(n, SERIES_MAX_COMPONENTS))) if components is None else _check_components(components, n)
    flat = everything[:, :, comps]
    d = flat.shape[2]
    note = ""
    if d < n:
        note = f"drawn: {_entries_text(comps)} of the {n} state entries"
        if components is None:
            note += (
                f"; choose others with --components (e.g. --components {d}-{min(2 * d, n) - 1}) "
                "or animate(..., components=[...])"
            )
    names = [f"x[{k}]" if n > 1 else "x" for k in comps]
    big_legend = d > 8  # a legend below the panels instead of inside the first
    w, h = _size(S, 320, 260)
    legend_cols = max(1, min(d, 8, w // 60))  # an entry is about 55 px wide at 7 pt
    note_lines = textwrap.wrap(note, max(30, int(w / 4.6))) if note else []  # 7 pt: about 4.5 px a character
    note_px = 11 * len(note_lines) + 6 if note else 0
    extra = (math.ceil(d / legend_cols) * 14 + 8 if big_legend else 0) + note_px
    fig = _canvas(w, h + extra)
    height = fig.get_figheight() * fig.dpi
    rows = math.ceil(S / _ncols(S))
    # _grid divides ``bottom`` by the rows: the usual margin (0.13 of a row's share) plus the legend and note
    axes = [a[0] for a in _grid(fig, S, bottom=rows * (0.13 * (height - extra) / rows + extra) / height)]
    steps = np.arange(T1)
    arts = []
    colors = _series_colors(d)
    for i, ax in enumerate(axes):
        lo, hi = float(flat[:, i].min()), float(flat[:, i].max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(-0.2, T1 - 0.8)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("step n")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"rollout {i}", fontsize=9)
        for k in range(d):
            ax.plot(steps, flat[:, i, k], color=colors[k], alpha=0.2, lw=1, label="_trace")
        lines = [
            ax.plot(
                [], [], color=colors[k], lw=2 if d <= 8 else 1.4, marker="o", ms=3 if d <= 8 else 2, label=names[k]
            )[0]
            for k in range(d)
        ]
        dots = ax.plot([], [], "ko", ms=5 if d <= 8 else 3, label="_now")[0]
        if i == 0 and not big_legend:
            ax.legend(fontsize=7)
        arts.append((lines, dots))
    if big_legend:
        handles = [Line2D([], [], color=colors[k], lw=1.6, label=names[k]) for k in range(d)]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=legend_cols,
            fontsize=7,
            frameon=False,
            bbox_to_anchor=(0.5, note_px / height),
            handlelength=1.5,
            columnspacing=1.0,
        )
    if note:
        fig.text(
            0.5, 4 / height, "\n".join(note_lines), ha="center", va="bottom", fontsize=7, color="0.25", linespacing=1.2
        )
    title = fig.suptitle("")

    def update(n_):
        for i in range(S):
            lines, dots = arts[i]
            for k, line in enumerate(lines):
                line.set_data(steps[: n_ + 1], flat[: n_ + 1, i, k])
            dots.set_data(np.full(d, n_), flat[n_, i])
        title.set_text(f"{problem.name}   step {n_}/{T1 - 1}")

    return Scene(
        fig=fig,
        update=update,
        panels=[{"view": ax} for ax in axes],
        horizon=T1 - 1,
        info={"components": comps, "note": note, "entries": n, "cut": components is None and d < n},
    )


RENDERERS.update(cartpole=_scene_cartpole, guidance=_scene_guidance, quantum=_scene_quantum)
RENDERERS["cart-chain"] = functools.partial(_scene_cartpole, chained=True)


# ----------------------------------------------------------------------------- public API
def rollout(problem, model, x0) -> tuple[np.ndarray, np.ndarray]:
    """Roll ``model`` out from the batch ``x0`` on ``problem``: numpy ``(xs, cs)`` with
    xs of shape (T+1, S, *state_shape) (x_0 … x_T) and cs of shape (T, S, *control_shape)."""
    import jax

    from ..core import unroll

    xs, cs = jax.device_get(unroll.rollout(model, x0, step=problem.step, horizon=problem.horizon))
    return np.asarray(xs), np.asarray(cs)


def build_scene(problem, xs, cs, components=None) -> Scene:
    """The :class:`Scene` of a rollout (``xs`` (T+1, S, …), ``cs`` (T, S, …), see :func:`rollout`)
    drawn by the problem's renderer (by ``problem.name``; the generic one otherwise).

    ``components``: for the generic picture, the (flattened) state entries to draw (default:
    all, up to :data:`SERIES_MAX_COMPONENTS`; the picture and ``info["note"]`` say when some
    are left out)."""
    xs, cs = np.asarray(xs), np.asarray(cs)
    if xs.ndim < 2 or xs.shape[0] != cs.shape[0] + 1 or xs.shape[1] != cs.shape[1]:
        raise ValueError(
            f"xs shape {xs.shape} and cs shape {cs.shape}: expected xs (T+1, S, …) and "
            f"cs (T, S, …) from the same rollout"
        )
    if problem.name in RENDERERS:
        if components is not None:
            raise ValueError(
                f"components: {problem.name} has its own picture; choosing state entries applies "
                "to the generic one (state entries against the step)"
            )
        return RENDERERS[problem.name](problem, xs, cs)
    return _scene_series(problem, xs, cs, components=components)


def render_frames(problem, model, x0, *, stride: int | None = None, components=None) -> list[np.ndarray]:
    """Roll ``model`` out from the batch ``x0`` on ``problem`` and draw the frames
    (a list of (H, W, 3) uint8 arrays, ``ceil(T / stride) + 1`` of them). ``components``: see
    :func:`build_scene`; when the picture leaves state entries out it says so, and, unless
    ``components`` chose them, so does a :class:`PictureNote` warning."""
    xs, cs = rollout(problem, model, x0)
    idx = frame_indices(problem.horizon, stride)
    scene = build_scene(problem, xs, cs, components=components)
    if scene.info.get("cut"):  # entries left out without being asked
        import warnings

        warnings.warn(scene.info["note"], PictureNote, stacklevel=2)
    return [scene.frame(n) for n in idx]


def write_frames(frames: list[np.ndarray], out: str | Path, fps: float) -> Path:
    """Write frames as ``.gif`` (loops forever) or ``.mp4`` (needs ``imageio-ffmpeg``)."""
    import imageio.v3 as iio

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"out={str(out)!r}: the file must end in .gif or .mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack(frames)
    if suffix == ".gif":
        iio.imwrite(out, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "writing .mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); or write a .gif"
            ) from e
        iio.imwrite(out, arr, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=16)
    return out


def animate(
    run_dir: str | Path,
    out: str | Path | None = None,
    states: int = 4,
    fps: float | None = None,
    stride: int | None = None,
    components=None,
) -> Path:
    """Animate the trained controller of a run folder.

    Args:
      run_dir: a run folder (``config.json`` + ``weights.npz``, as written by
        :func:`stablebptt.experiments.run.run`).
      out: ``.gif`` or ``.mp4`` path (default ``<run_dir>/animation.gif``).
      states: number of rollouts (the first test states of the run's data; fewer if the
        run has fewer).
      fps: frames per second (default: n_frames / 4 clipped to 2 … 25).
      stride: draw every ``stride``-th step (default ``ceil(T / 100)``); the final state is
        always drawn, so there are ``ceil(T / stride) + 1`` frames.
      components: for problems drawn as state entries against the step (your own, the toys):
        which (flattened) entries, a list of indices or text such as ``"8-15"``
        (:func:`parse_components`); default all, up to :data:`SERIES_MAX_COMPONENTS` (when some
        are left out the picture says which are drawn, and a :class:`PictureNote` warning too).

    Returns:
      the path written.
    """
    from ..training.trainer import make_data
    from .diagnose import load_problem_and_controller

    run_dir = Path(run_dir)
    if int(states) < 1:
        raise ValueError(f"states={states!r}; must be ≥ 1")
    problem, model, config, seed = load_problem_and_controller(run_dir)
    _, test = make_data(problem, config, seed)
    x0 = test[: int(states)]
    if isinstance(components, str):
        components = parse_components(components, int(np.prod(problem.state_shape)))
    frames = render_frames(problem, model, x0, stride=stride, components=components)
    out = Path(out) if out is not None else run_dir / "animation.gif"
    return write_frames(frames, out, fps if fps is not None else default_fps(len(frames)))


__all__ = [
    "animate",
    "render_frames",
    "write_frames",
    "frame_indices",
    "default_stride",
    "default_fps",
    "rollout",
    "build_scene",
    "Scene",
    "guidance_view",
    "parse_components",
    "PictureNote",
    "GUIDANCE_TRAIL",
    "SERIES_MAX_COMPONENTS",
]
