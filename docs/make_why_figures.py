"""Regenerate the figures and numbers of ``docs/why-stop-the-gradient.md`` with the library.

    python docs/make_why_figures.py            # everything (≈ 4 min on a 2-core CPU)
    python docs/make_why_figures.py --quick    # toys only (seconds)

Writes ``docs/img/*.png``, ``docs/img/diagnose-*.txt`` (the text reports quoted in the page)
and ``docs/img/why-numbers.json`` (every number the page quotes). Training runs for the
"trained controller" diagnoses go to a temporary folder (``--runs DIR`` to keep them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import stablebptt as sb
from stablebptt import problems
from stablebptt.analysis.diagnose import diagnose_problem, load_problem_and_controller
from stablebptt.training import optim

IMG = Path(__file__).resolve().parent / "img"
#: the paper's figure code (experiments/paper/, not installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "paper"))
NUMBERS: dict = {}


# ----------------------------------------------------------------------------- helpers
def adam_descent(problem, model, x0, mode: str, lr: float, iters: int):
    """Adam (Keras form, the paper's) on ``mode``'s update through the engine; returns the
    loss before every update (iters + 1 values, the last after the final update) and the
    parameter trajectory."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    tx = optim.make("adam", lr)
    state = tx.init(params)
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)

    @jax.jit
    def one(params, state):
        val, upd, _ = sb.value_and_update(eqx.combine(params, static), x0, flow=mode, validate=False, **kw)
        steps, state = tx.update(upd, state, params)
        return eqx.apply_updates(params, steps), state, val

    losses, traj = [], []
    for _ in range(iters):
        traj.append(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(params)]))
        params, state, val = one(params, state)
        losses.append(float(val))
    final = sb.evaluate_loss(eqx.combine(params, static), x0, **kw)
    losses.append(float(final))
    traj.append(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(params)]))
    return np.array(losses), np.array(traj)


def local_minima(v: np.ndarray, k: int = 6) -> list[tuple[int, float]]:
    """First k strict local minima (iteration, value) of a curve."""
    out = [(i, float(v[i])) for i in range(1, len(v) - 1) if v[i] < v[i - 1] and v[i] <= v[i + 1]]
    return out[:k]


# ----------------------------------------------------------------------------- Fig. 2 rotation
def rotation():
    import figures  # experiments/paper/figures.py: Fig. 2's Adam runs through the library's training program

    res = {mode: figures.rotation_run(mode, iterations=200, lr=0.1, theta0=(2.0, 4.0)) for mode in ("R", "M", "C")}
    nums = {}
    for mode, (L, _) in res.items():
        below = np.nonzero(L < 2e-3)[0]
        nums[mode] = {
            "first_below_2e-3": int(below[0]) if below.size else None,
            "local_minima": local_minima(L, 5),
            "L_200": float(L[200]),
        }
    NUMBERS["rotation"] = nums

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    a, b = fig.subplots(1, 2)
    g = np.linspace(-5, 5, 21)
    T1, T2 = np.meshgrid(g, g)
    r1, r2 = 2 * T1 + 4 * T2, 2 * T2 - 4 * T1  # r = 2θ − 4Rθ, Rθ = (−θ2, θ1)
    a.streamplot(g, g, -r1, -r2, color="0.75", density=0.9, linewidth=0.7)
    a.contour(T1, T2, T1**2 + T2**2, levels=[1, 4, 9, 16, 25], colors="0.85", linewidths=0.6)
    colors = {"R": "tab:red", "M": "tab:blue", "C": "tab:green"}
    names = {"R": "(a) R: gradient g = 2θ", "M": "(b) M: rotating r = 2θ − 4Rθ", "C": "(c) C: sign-combined"}
    for mode, (L, tr) in res.items():
        a.plot(tr[:, 0], tr[:, 1], color=colors[mode], lw=1.3, label=names[mode])
        b.semilogy(np.arange(len(L)), L, color=colors[mode], lw=1.5, label=f"{mode}: L(200) = {L[200]:.3g}")
    a.plot([2], [4], "ko", ms=5)
    a.plot([0], [0], "k*", ms=10)
    a.set_xlim(-5, 5)
    a.set_ylim(-5, 5)
    a.set_aspect("equal")
    a.set_xlabel("θ1")
    a.set_ylabel("θ2")
    a.set_title("Adam (lr 0.1) from θ = (2, 4); streamlines of −r")
    a.legend(fontsize=8, loc="lower left")
    b.set_xlabel("iteration")
    b.set_ylabel("L = θ1² + θ2²")
    b.set_title("loss: M orbits, C spirals in, R converges")
    b.legend(fontsize=8)
    fig.savefig(IMG / "rotation.png", dpi=100)


# ----------------------------------------------------------------------------- linear stall
def linear_stall():
    a, b, T, x0 = 1.1, 1.0, 4, 1.0
    p = problems.get("linear", a=a, b=b, steps=T, x0=x0)
    xb = jnp.full((1, 1), x0, jnp.float32)
    kw = dict(step=p.step, loss=p.loss, horizon=T)
    thetas = np.linspace(-2.4, 0.0, 241)

    @jax.jit
    def fields(th):
        m = p.make_controller(None, theta=th)
        _, g = sb.value_and_update(m, xb, flow="R", validate=False, **kw)[:2]
        _, mm = sb.value_and_update(m, xb, flow="M", validate=False, **kw)[:2]
        _, c, _ = sb.value_and_update(m, xb, flow="C", validate=False, **kw)
        return g.theta, mm.theta, c.theta

    G, M, C = (np.array(v) for v in jax.vmap(fields)(jnp.asarray(thetas, jnp.float32)))
    m0 = p.make_controller(None, theta=-1.6)
    _, g0 = sb.value_and_update(m0, xb, flow="R", validate=False, **kw)[:2]
    _, mm0 = sb.value_and_update(m0, xb, flow="M", validate=False, **kw)[:2]
    _, c0, info0 = sb.value_and_update(m0, xb, flow="C", **kw)
    runs = {
        mode: adam_descent(p, p.make_controller(None, theta=-1.6), xb, mode, lr=0.01, iters=300)
        for mode in ("R", "M", "C")
    }
    disagree = thetas[np.sign(G) != np.sign(M)]
    NUMBERS["linear_stall"] = {
        "G(-1.6)": float(g0.theta),
        "M(-1.6)": float(mm0.theta),
        "C(-1.6)": float(c0.theta),
        "cos_mg(-1.6)": float(info0["cos_mg"]),
        "disagree_interval": [float(disagree.min()), float(disagree.max())] if disagree.size else None,
        "final": {mode: {"loss": float(L[-1]), "theta": float(tr[-1, 0])} for mode, (L, tr) in runs.items()},
    }

    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(thetas, G, color="tab:red", label="G (true gradient)")
    ax1.plot(thetas, M, color="tab:blue", label="M (physics path only)")
    ax1.plot(thetas, C, color="tab:green", lw=2.5, alpha=0.7, label="C (= M where signs agree, else 0)")
    ax1.axhline(0, color="k", lw=0.6)
    if disagree.size:
        ax1.axvspan(disagree.min(), disagree.max(), color="0.9", zorder=0, label="sign(M) ≠ sign(G): C = 0")
    ax1.axvline(-1.6, color="k", ls=":", lw=1)
    ax1.set_yscale("symlog", linthresh=1e-4)
    ax1.set_xlabel("θ  (ρ = a + bθ)")
    ax1.set_title("x' = 1.1 x + c, c = θx, T = 4, L = ½x_T²: fields")
    ax1.legend(fontsize=8)
    for mode, color in (("R", "tab:red"), ("M", "tab:blue"), ("C", "tab:green")):
        L, tr = runs[mode]
        ax2.semilogy(L, color=color, label=f"{mode}: θ → {tr[-1, 0]:.3f}, L = {L[-1]:.2e}")
    ax2.set_xlabel("Adam iteration (lr 0.01) from θ = −1.6")
    ax2.set_ylabel("L")
    ax2.set_title("C stalls where M and G disagree")
    ax2.legend(fontsize=8)
    fig.savefig(IMG / "linear-stall.png", dpi=100)


# ----------------------------------------------------------------------------- diagnostics
def _save_diag(d, name: str):
    d.save(IMG, f"diagnose-{name}")
    (IMG / f"diagnose-{name}.json").unlink()  # the page quotes the text; keep the repo small
    NUMBERS.setdefault("diagnose", {})[name] = {
        "mode": d.verdict.mode,
        "clip": d.verdict.clip,
        "span_R": d.span("R"),
        "span_M": d.span("M"),
        "lyap_phys": d.lyap_phys,
        "lyap_closed": d.lyap_closed,
        "cos_mg": d.cos_mg,
        "sign_agree": d.sign_agree,
        "flagged_from": (d.verdict.flagged_horizons or [None])[0],
        "wall_s": d.wall_s,
        "loss": d.loss,
    }
    print(d.text(), "\n", file=sys.stderr)


def diagnose_toys():
    _save_diag(diagnose_problem("linear", n=1), "linear-stall")
    _save_diag(diagnose_problem("linear", n=1, steps=8, theta0=48.9), "linear-rho50")
    _save_diag(diagnose_problem("toy-field", n=1, seed=0), "toy-field")


def diagnose_paper(runs_dir: Path, quick_train: bool):
    from stablebptt.experiments.run import run
    from stablebptt.training.config import RunConfig

    avail = []
    for name in ("cartpole", "guidance", "quantum"):
        try:
            problems.get(name)
            avail.append(name)
        except Exception as e:  # a problem still being written
            print(f"skipping {name}: {e}", file=sys.stderr)
    for name in avail:
        d = diagnose_problem(name, n=8)
        _save_diag(d, f"{name}-untrained")
    # controllers trained for a while with regular BPTT (R): how has feedback through N changed?
    trained = [
        ("cartpole-4poles", RunConfig(problem="cartpole", problem_params={"poles": 4}, mode="R", epochs=300)),
        ("guidance", RunConfig(problem="guidance", mode="R", epochs=20)),
        ("guidance-rc0.001", RunConfig(problem="guidance", problem_params={"rc": 0.001}, mode="R", epochs=40)),
        ("quantum", RunConfig(problem="quantum", mode="R", epochs=5)),
    ]
    for tag, cfg in trained:
        if cfg.problem not in avail:
            continue
        if quick_train:
            cfg = cfg.model_copy(update={"epochs": 2})
        t0 = time.perf_counter()
        folder = run(cfg, 0, runs_dir)
        train_s = time.perf_counter() - t0
        prob, model, cfg, _ = load_problem_and_controller(folder)
        d = diagnose_problem(prob, model=model, n=8)
        res = json.loads((folder / "result.json").read_text())
        ptxt = ", ".join(f"{k}={v}" for k, v in cfg.problem_params.items())
        d.label = (
            f"{cfg.problem}{f' ({ptxt})' if ptxt else ''} — trained with R for {cfg.epochs} epochs "
            f"(test loss {res['initial']['test_loss']:.3g} → {res['final']['test_loss']:.3g})"
        )
        _save_diag(d, f"{tag}-trained-R")
        NUMBERS["diagnose"][f"{tag}-trained-R"]["train_s"] = train_s
        NUMBERS["diagnose"][f"{tag}-trained-R"]["test_loss"] = [res["initial"]["test_loss"], res["final"]["test_loss"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toys only")
    ap.add_argument("--quick-train", action="store_true", help="train the paper problems for 2 epochs only")
    ap.add_argument("--runs", type=Path, default=None, help="keep the training runs here")
    args = ap.parse_args(argv)
    IMG.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rotation()
    linear_stall()
    diagnose_toys()
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            diagnose_paper(args.runs or Path(tmp), args.quick_train)
    NUMBERS["total_s"] = time.perf_counter() - t0
    path = IMG / "why-numbers.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    for k, v in NUMBERS.items():  # --quick keeps the paper problems' numbers of an earlier full run
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k].update(v)
        else:
            merged[k] = v
    path.write_text(json.dumps(merged, indent=1, default=float))
    print(json.dumps(NUMBERS, indent=1, default=float))


if __name__ == "__main__":
    main()
