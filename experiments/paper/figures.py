r"""The paper's toy figures, computed through the library's engine and training program.

* :func:`fig1_fields` (paper Fig. 1): the gradient field G (mode R) and the modified field M
  (mode M) of the scalar toy ``toy-field`` over θ ∈ [-4, 4]², each computed by the engine
  (``value_and_update`` of mode R and M, vmapped over θ). Heat map of log10 ‖field‖ with streamlines of the
  negative field (the direction a plain descent step moves), side by side; the dashed curve
  bounds the region L < 10. G's magnitude varies
  by three orders of magnitude across the low-loss region, M's far less: the returned
  95th/5th percentile ratios over L < 10 quantify that: ≈ 1.8e3 for ‖G‖ against ≈ 68 for ‖M‖.
* :func:`fig2_rotation` (paper Fig. 2): Keras-form Adam, lr 0.1, 200 iterations from
  θ = (2, 4) on L = ‖θ‖² under (a) the gradient g (mode R), (b) the rotating field
  r = 2θ − 4Rθ (mode M) and (c) the sign-combined field (mode C) of ``toy-rotation``, all
  through the engine. Panels (a)–(c): the trajectory in θ space over loss contours with
  arrows of the negative field; panel (d): the loss per iteration on a log axis. Adam
  follows g straight in, orbits the minimum under r with a growing radius, and under the
  combined field converges (slowly, in damped loops).

Not part of the installed package: scripts in this folder import it as ``figures``
(``python experiments/paper/reproduce.py toys`` draws both).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects

import stablebptt as sb
from stablebptt import problems
from stablebptt.analysis import plots
from stablebptt.problems.toys import PolyController, rotation_fields


# ----------------------------------------------------------------------------- Fig. 1
def toy_field_grid(n: int = 401, lim: float = 4.0, **problem_params) -> dict[str, np.ndarray]:
    """L, G (mode R) and M (mode M) of ``toy-field`` on an n×n grid over θ ∈ [-lim, lim]².

    Each field comes from the engine (``value_and_update`` on a :class:`PolyController`), vmapped
    over θ. Arrays are indexed ``[i2, i1]`` (rows θ2, columns θ1), fields have a last axis of 2.
    """
    import jax
    import jax.numpy as jnp

    prob = problems.get("toy-field", **problem_params)
    x0 = jnp.asarray(prob.sample_data(0, 1, 1)[0])
    axis = np.linspace(-lim, lim, int(n), dtype=np.float32)
    T1, T2 = np.meshgrid(axis, axis, indexing="xy")
    thetas = jnp.asarray(np.stack([T1.ravel(), T2.ravel()], -1))

    def one(theta, mode):
        L, fld, _ = sb.value_and_update(
            PolyController(theta), x0, step=prob.step, loss=prob.loss, horizon=prob.horizon, flow=mode, validate=False
        )
        return L, fld.theta

    L, G = jax.jit(jax.vmap(lambda t: one(t, "R")))(thetas)
    _, M = jax.jit(jax.vmap(lambda t: one(t, "M")))(thetas)
    shape = (len(axis), len(axis))
    axis64 = np.linspace(-lim, lim, int(n))  # exactly spaced, for matplotlib's streamplot
    return {
        "theta1": axis64,
        "theta2": axis64,
        "L": np.asarray(L).reshape(shape),
        "G": np.asarray(G).reshape(shape + (2,)),
        "M": np.asarray(M).reshape(shape + (2,)),
    }


def spread(norms: np.ndarray, mask: np.ndarray | None = None) -> float:
    """95th / 5th percentile ratio of ``norms`` (over ``mask`` if given)."""
    v = np.asarray(norms, np.float64)
    v = v[mask] if mask is not None else v.ravel()
    p5, p95 = np.percentile(v, [5, 95])
    return float(p95 / p5)


def fig1_fields(
    out_dir: str | Path, *, n: int = 401, loss_below: float = 10.0, formats: Sequence[str] = ("png", "pdf")
) -> dict:
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
        im = ax.pcolormesh(t1, t2, logs[key], shading="auto", cmap="viridis", vmin=vmin, vmax=vmax, rasterized=True)
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
    paths = plots.save_figure(fig, out_dir, "fig1-fields", formats)
    return {"spread_G": sG, "spread_M": sM, "fraction": float(mask.mean()), "paths": paths}


# ----------------------------------------------------------------------------- Fig. 2
def rotation_run(
    mode: str, *, iterations: int = 200, lr: float = 0.1, theta0: Sequence[float] = (2.0, 4.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Keras-form Adam on ``toy-rotation`` under engine mode ``mode`` (R, M or C), one update per
    epoch of the library's training program (:func:`stablebptt.make_train`: one state, batch 1,
    the reference backward pass), from the controller θ = ``theta0``.

    Returns ``(losses, thetas)`` with ``losses[i] = L(θ_i)`` for i = 0 … iterations and
    ``thetas`` of shape (iterations + 1, 2).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    prob = problems.get("toy-rotation")
    optimizer = sb.Optimizer("adam", lr)
    trainer = sb.make_train(prob, mode, optimizer, batch_size=1, backward="autodiff")
    params = eqx.filter(prob.make_controller(None, theta=tuple(float(t) for t in theta0)), eqx.is_inexact_array)
    state = trainer.init(params, trainer.settings(sb.Flow(mode=mode), optimizer))
    data = jnp.zeros((1,) + tuple(prob.state_shape), jnp.float32)
    updates, evaluate, key = jax.jit(trainer.updates), jax.jit(trainer.evaluate), jax.random.PRNGKey(0)
    losses, thetas = [], [np.asarray(state.params.theta)]
    for _ in range(int(iterations)):
        state, metrics = updates(state, data, key)  # metrics["loss"]: L before the epoch's update
        losses.append(float(metrics["loss"]))
        thetas.append(np.asarray(state.params.theta))
    losses.append(float(evaluate(state.params, data, data)[0]))
    return np.asarray(losses), np.stack(thetas)


def fig2_rotation(
    out_dir: str | Path,
    *,
    iterations: int = 200,
    lr: float = 0.1,
    theta0: Sequence[float] = (2.0, 4.0),
    formats: Sequence[str] = ("png", "pdf"),
) -> dict:
    """Paper Fig. 2: Adam under a gradient, a rotating and a combined field on L = ‖θ‖².

    Panels (a) g = 2θ (mode R), (b) r = 2θ − 4Rθ (mode M), (c) the sign combination (mode C):
    the Adam trajectory from θ0 over loss contours, with arrows of the negative field;
    panel (d): L per iteration (log y). Returns ``{"losses": {mode: L[0..iterations]},
    "thetas": {mode: (iterations+1, 2)}, "paths"}``.
    """
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
        ax.plot(
            th[:, 0],
            th[:, 1],
            "-",
            color=plots.MODE_COLORS[m],
            lw=1.6,
            path_effects=[patheffects.withStroke(linewidth=2.6, foreground="0.35")] if m == "M" else None,
        )
        ax.plot(*th[0], "o", color="k", ms=5)
        ax.plot(*th[-1], "*", color=plots.MODE_COLORS[m], ms=12, mec="k")
        ax.plot(0, 0, "+", color="k", ms=10)
        ax.set_title(f"{title}: L(200) = {losses[m][-1]:.3g}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("θ1")
    axes[0].set_ylabel("θ2")
    ax = axes[3]
    for m in modes:
        ax.plot(np.arange(len(losses[m])), losses[m], color=plots.MODE_COLORS[m], lw=1.6, label=modes[m])
    ax.set_yscale("log")
    ax.set_xlabel("Adam iteration")
    ax.set_ylabel("L(θ)")
    ax.set_title(f"(d) loss (Adam, lr {lr:g}, from θ = ({theta0[0]:g}, {theta0[1]:g}))", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    paths = plots.save_figure(fig, out_dir, "fig2-rotation", formats)
    return {"losses": losses, "thetas": thetas, "paths": paths}


def toy_figures(out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Both toy figures into ``out_dir``; returns ``{"fig1": ..., "fig2": ...}``."""
    return {"fig1": fig1_fields(out_dir, formats=formats), "fig2": fig2_rotation(out_dir, formats=formats)}


__all__ = ["toy_field_grid", "spread", "fig1_fields", "rotation_run", "fig2_rotation", "toy_figures"]
