r"""Animations of trained controllers: ``animate(run_dir) -> path of a GIF or MP4``.

The run folder's ``config.json`` and ``weights.npz`` are loaded (see
:func:`stablebptt.diagnose.load_run`), the controller is rolled out on the first ``states``
test states of the run's own data, and every frame is drawn with matplotlib (Agg, no
display needed):

* **cartpole** — one panel per rollout: the cart, its n poles, the force as an arrow; the view
  follows the cart (the ground ticks show how far it moved);
* **guidance** — one panel per rollout: drivers (red triangles), evaders (blue dots), their
  paths so far and the origin (the evaders' target, black +);
* **quantum** — one column per rollout: |ψ(x, t)|² as an image over x and time, filled in up
  to the current step, and below it the control signal u(t);
* anything else (the toys, ``linear``, your own problems) — the state components against the
  step n, drawn up to the current step.

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

import math
from pathlib import Path
from typing import Callable

import numpy as np

#: the renderers by problem name; others use :func:`_render_series`
RENDERERS: dict[str, Callable] = {}


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


# ----------------------------------------------------------------------------- drawing helpers
def _canvas(width_px: int, height_px: int, dpi: int = 80):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # multiples of 16 px keep video encoders happy (no resizing)
    w = max(16, int(round(width_px / 16)) * 16)
    h = max(16, int(round(height_px / 16)) * 16)
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    return fig, canvas


def _grab(canvas) -> np.ndarray:
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _ncols(n: int) -> int:
    return min(n, 4)


def _grid(fig, n: int, rows_per: int = 1, height_ratios=None):
    cols = _ncols(n)
    rows = math.ceil(n / cols)
    gs = fig.add_gridspec(rows * rows_per, cols, height_ratios=(height_ratios or [1] * rows_per) * rows,
                          left=0.06, right=0.98, bottom=0.08, top=0.88, wspace=0.25, hspace=0.45)
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        axes.append([fig.add_subplot(gs[r * rows_per + k, c]) for k in range(rows_per)])
    return axes


def _size(n: int, panel_w: int, panel_h: int) -> tuple[int, int]:
    cols = _ncols(n)
    rows = math.ceil(n / cols)
    return cols * panel_w, rows * panel_h + 48


# ----------------------------------------------------------------------------- renderers
def _render_cartpole(problem, xs, cs, idx):
    """xs (T+1, S, 1+n, 2), cs (T, S)."""
    from matplotlib.patches import Rectangle

    S = xs.shape[1]
    poles = xs.shape[2] - 1
    dt = float(problem.params.get("dt", 0.01))
    length = 1.0  # drawn pole length 2l (l = 0.5 is the half-length)
    force = np.asarray(cs, np.float64).reshape(cs.shape[0], S)
    fmax = max(float(np.max(np.abs(force))), 1e-6)
    fig, canvas = _canvas(*_size(S, 320, 230))
    axes = [a[0] for a in _grid(fig, S)]
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    arts = []
    for i, ax in enumerate(axes):
        ax.set_aspect("equal")
        ax.set_ylim(-1.25 * length, 1.25 * length)
        ax.set_yticks([])
        ax.axhline(0, color="0.5", lw=1)
        ax.set_title(f"rollout {i}", fontsize=9)
        cart = ax.add_patch(Rectangle((0, -0.1), 0.4, 0.2, color="0.25", zorder=3))
        lines = [ax.plot([], [], lw=3, color=colors[k % len(colors)], solid_capstyle="round", zorder=4)[0]
                 for k in range(poles)]
        arrow = ax.plot([], [], color="k", lw=2, zorder=5)[0]
        arts.append((cart, lines, arrow))
    title = fig.suptitle("")
    frames = []
    for n in idx:
        for i, ax in enumerate(axes):
            cart, lines, arrow = arts[i]
            x = float(xs[n, i, 0, 0])
            ax.set_xlim(x - 2.0, x + 2.0)
            ax.set_xticks(np.arange(math.floor(x - 2.0), math.ceil(x + 2.0) + 1))
            cart.set_xy((x - 0.2, -0.1))
            for k, line in enumerate(lines):
                th = float(xs[n, i, 1 + k, 0])
                line.set_data([x, x + length * math.sin(th)], [0.0, length * math.cos(th)])
            f = float(force[min(n, force.shape[0] - 1), i])
            arrow.set_data([x, x + 0.8 * f / fmax], [-0.2, -0.2])
        title.set_text(f"cart-pole ({poles} pole{'s' if poles > 1 else ''})   t = {n * dt:.2f} s   step {n}/{xs.shape[0] - 1}")
        frames.append(_grab(canvas))
    return frames


def _render_guidance(problem, xs, cs, idx):
    """xs (T+1, S, n_d + n_e, 2, 2)."""
    S = xs.shape[1]
    n_d = int(problem.control_shape[0])
    pos = np.asarray(xs[:, :, :, 0, :], np.float64)  # (T+1, S, n, 2)
    n_obj = pos.shape[2]
    fig, canvas = _canvas(*_size(S, 320, 320))
    axes = [a[0] for a in _grid(fig, S)]
    arts = []
    for i, ax in enumerate(axes):
        p = pos[:, i].reshape(-1, 2)
        lo, hi = p.min(0), p.max(0)
        c, r = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2, 0.5) * 1.1
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_aspect("equal")
        ax.plot([0], [0], "k+", ms=12, mew=2)
        ax.set_title(f"rollout {i}", fontsize=9)
        paths = [ax.plot([], [], lw=1, color="tab:red" if k < n_d else "tab:blue", alpha=0.6)[0]
                 for k in range(n_obj)]
        drv = ax.plot([], [], "^", color="tab:red", ms=9, label="drivers")[0]
        eva = ax.plot([], [], "o", color="tab:blue", ms=6, label="evaders")[0]
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
        arts.append((paths, drv, eva))
    title = fig.suptitle("")
    dt = float(problem.params.get("dt", 1.0))
    frames = []
    for n in idx:
        for i in range(S):
            paths, drv, eva = arts[i]
            for k, line in enumerate(paths):
                line.set_data(pos[: n + 1, i, k, 0], pos[: n + 1, i, k, 1])
            drv.set_data(pos[n, i, :n_d, 0], pos[n, i, :n_d, 1])
            eva.set_data(pos[n, i, n_d:, 0], pos[n, i, n_d:, 1])
        title.set_text(f"guidance by repulsion   t = {n * dt:.2f}   step {n}/{xs.shape[0] - 1}")
        frames.append(_grab(canvas))
    return frames


def _render_quantum(problem, xs, cs, idx):
    """xs (T+1, S, nx, 2), cs (T, S, 1)."""
    T1, S, nx = xs.shape[0], xs.shape[1], xs.shape[2]
    T = T1 - 1
    dt = float(problem.params.get("dt", 1.0))
    prob = np.asarray(xs[..., 0], np.float64) ** 2 + np.asarray(xs[..., 1], np.float64) ** 2  # (T+1, S, nx)
    u = np.asarray(cs, np.float64).reshape(T, S)
    fig, canvas = _canvas(*_size(S, 320, 420))
    axes = _grid(fig, S, rows_per=2, height_ratios=[2, 1])
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    arts = []
    t_edges = (0.0, T * dt)
    vmax = float(prob.max())
    for i, (top, bot) in enumerate(axes):
        im = top.imshow(np.full((nx, T1), np.nan), origin="lower", aspect="auto", cmap=cmap, vmin=0, vmax=vmax,
                        extent=(t_edges[0], t_edges[1], 0.0, 2.0), interpolation="nearest")
        top.set_title(f"rollout {i}: |ψ(x, t)|²", fontsize=9)
        top.set_ylabel("x")
        cur = top.axvline(0, color="w", lw=1)
        tt = np.arange(T) * dt
        bot.plot(tt, u[:, i], color="0.8", lw=1)
        line = bot.plot([], [], color="tab:red", lw=1.5)[0]
        bot.set_xlim(*t_edges)
        span = max(float(np.max(np.abs(u[:, i]))), 1e-6)
        bot.set_ylim(-1.1 * span, 1.1 * span)
        bot.set_xlabel("t")
        bot.set_ylabel("u(t)")
        arts.append((im, cur, line, tt))
    title = fig.suptitle("")
    frames = []
    for n in idx:
        for i in range(S):
            im, cur, line, tt = arts[i]
            img = np.full((nx, T1), np.nan)
            img[:, : n + 1] = prob[: n + 1, i].T
            im.set_data(img)
            cur.set_xdata([n * dt, n * dt])
            line.set_data(tt[: min(n + 1, T)], u[: min(n + 1, T), i])
        title.set_text(f"quantum control   t = {n * dt:.3f}   step {n}/{T}")
        frames.append(_grab(canvas))
    return frames


def _render_series(problem, xs, cs, idx, max_components: int = 8):
    """Any state: its (flattened) components against the step n."""
    T1, S = xs.shape[0], xs.shape[1]
    flat = np.asarray(xs, np.float64).reshape(T1, S, -1)[:, :, :max_components]
    d = flat.shape[2]
    fig, canvas = _canvas(*_size(S, 320, 260))
    axes = [a[0] for a in _grid(fig, S)]
    steps = np.arange(T1)
    arts = []
    colors = [f"C{k}" for k in range(10)]
    for i, ax in enumerate(axes):
        lo, hi = float(flat[:, i].min()), float(flat[:, i].max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(-0.2, T1 - 0.8)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("step n")
        ax.set_title(f"rollout {i}", fontsize=9)
        for k in range(d):
            ax.plot(steps, flat[:, i, k], color=colors[k % 10], alpha=0.2, lw=1)
        lines = [ax.plot([], [], color=colors[k % 10], lw=2, marker="o", ms=3,
                         label=f"x[{k}]" if d > 1 else "x")[0] for k in range(d)]
        dots = ax.plot([], [], "ko", ms=5)[0]
        if i == 0:
            ax.legend(fontsize=7)
        arts.append((lines, dots))
    title = fig.suptitle("")
    frames = []
    for n in idx:
        for i in range(S):
            lines, dots = arts[i]
            for k, line in enumerate(lines):
                line.set_data(steps[: n + 1], flat[: n + 1, i, k])
            dots.set_data(np.full(d, n), flat[n, i])
        title.set_text(f"{problem.name}   step {n}/{T1 - 1}")
        frames.append(_grab(canvas))
    return frames


RENDERERS.update(cartpole=_render_cartpole, guidance=_render_guidance, quantum=_render_quantum)


# ----------------------------------------------------------------------------- public API
def render_frames(problem, model, x0, *, stride: int | None = None) -> list[np.ndarray]:
    """Roll ``model`` out from the batch ``x0`` on ``problem`` and draw the frames
    (a list of (H, W, 3) uint8 arrays, ``ceil(T / stride) + 1`` of them)."""
    import jax

    from .core import unroll

    xs, cs = jax.device_get(unroll.rollout(model, x0, step=problem.step, horizon=problem.horizon))
    xs, cs = np.asarray(xs), np.asarray(cs)
    idx = frame_indices(problem.horizon, stride)
    render = RENDERERS.get(problem.name, _render_series)
    return render(problem, xs, cs, idx)


def write_frames(frames: list[np.ndarray], out: str | Path, fps: float) -> Path:
    """Write frames as ``.gif`` (loops forever) or ``.mp4`` (needs ``imageio-ffmpeg``)."""
    import imageio.v3 as iio

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    arr = np.stack(frames)
    if suffix == ".gif":
        iio.imwrite(out, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise RuntimeError("writing .mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                               "or write a .gif") from e
        iio.imwrite(out, arr, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=16)
    else:
        raise ValueError(f"out={str(out)!r}: the file must end in .gif or .mp4")
    return out


def animate(run_dir: str | Path, out: str | Path | None = None, states: int = 4, fps: float | None = None,
            stride: int | None = None) -> Path:
    """Animate the trained controller of a run folder.

    Args:
      run_dir: a run folder (``config.json`` + ``weights.npz``, as written by
        :func:`stablebptt.run.run`).
      out: ``.gif`` or ``.mp4`` path (default ``<run_dir>/animation.gif``).
      states: number of rollouts (the first test states of the run's data; fewer if the
        run has fewer).
      fps: frames per second (default: n_frames / 4 clipped to 2 … 25).
      stride: draw every ``stride``-th step (default ``ceil(T / 100)``); the final state is
        always drawn, so there are ``ceil(T / stride) + 1`` frames.

    Returns:
      the path written.
    """
    from .diagnose import load_run
    from .train import make_data

    run_dir = Path(run_dir)
    if int(states) < 1:
        raise ValueError(f"states={states!r}; must be ≥ 1")
    problem, model, config, seed = load_run(run_dir)
    _, test = make_data(problem, config, seed)
    x0 = test[: int(states)]
    frames = render_frames(problem, model, x0, stride=stride)
    out = Path(out) if out is not None else run_dir / "animation.gif"
    return write_frames(frames, out, fps if fps is not None else default_fps(len(frames)))


__all__ = ["animate", "render_frames", "write_frames", "frame_indices", "default_stride", "default_fps"]
