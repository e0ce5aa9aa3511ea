"""Time per update of each gradient-flow mode, as ratios to R measured in the same run.

    python benchmarks/bench_modes.py [--problems pendulum,cartpole,...] [--rounds 9]

"pendulum" is the nonlinear toy of the test suite (MLP 100-100, T = 100, batch 8);
the others are the paper's problems at their paper settings (batch 8). Every variant is
jit-compiled once; the variants of one problem are timed interleaved (see ``_common``).
"C naive" is the authors' way (two complete passes, :func:`stablebptt.flow.naive_combined`),
"C" the engine's fused one-forward-pass C. "R per-step" / "C per-step": the same modes with the
controller's input vjp run at every step of the reverse sweep instead of the batched input
Jacobian (``flow.JACOBIAN_MAX_CONTROLS = 0``), compiled and timed in the same rounds.
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (sets XLA_FLAGS before jax is imported)
import equinox as eqx
import jax
import jax.numpy as jnp

from stablebptt import flow as F
from stablebptt.losses import TrajectoryLoss
from stablebptt.nets import MLP

MODES = ("R", "M", "S", "C naive", "C")


def pendulum():
    def step(x, c):
        th, om = x[:, 0], x[:, 1]
        om1 = om + 0.05 * (-jnp.sin(th) - 0.1 * om + c[:, 0])
        return jnp.stack([th + 0.05 * om1, om1], axis=1)

    model = MLP(jax.random.PRNGKey(0), 2, (1,), widths=(100, 100))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    return "pendulum (T=100)", step, TrajectoryLoss(lambda x: jnp.mean(x**2), on="every"), 100, model, x0


def paper(name, **params):
    label, prob, model, x0 = _common.paper_case(name, **params)
    return label, prob.step, prob.loss, prob.horizon, model, x0


CASES = {
    "pendulum": pendulum,
    "cartpole": lambda: paper("cartpole"),
    "cartpole4": lambda: paper("cartpole", poles=4),
    "guidance": lambda: paper("guidance"),
    "quantum": lambda: paper("quantum"),
}


def make_fns(model, x0, step, loss, T):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(step=step, loss=loss, horizon=T)

    def single(mode):
        f = lambda p, x: F.value_and_update(eqx.combine(p, static), x, flow=mode, validate=False, **kw)[1]
        return jax.jit(f).lower(params, x0).compile()

    fns = {m: single(m) for m in ("R", "M", "S")}
    fns["C naive"] = jax.jit(lambda p, x: F.naive_combined(eqx.combine(p, static), x, **kw)[1]).lower(
        params, x0).compile()
    fns["C"] = single("C")
    # the same R and C with the controller's input vjp at every step of the reverse sweep
    # (the engine's path before the batched input Jacobian; flow.JACOBIAN_MAX_CONTROLS = 0)
    default = F.JACOBIAN_MAX_CONTROLS
    F.JACOBIAN_MAX_CONTROLS = 0
    try:
        fns["R per-step"], fns["C per-step"] = single("R"), single("C")
    finally:
        F.JACOBIAN_MAX_CONTROLS = default
    return {k: (lambda f=f: f(params, x0)) for k, f in fns.items()}


def measure(name: str, rounds: int) -> dict:
    label, step, loss, T, model, x0 = CASES[name]()
    fns = make_fns(model, x0, step, loss, T)
    slow = name == "quantum"
    times = _common.interleaved_min(fns, rounds=rounds, reps=2 if slow else 10, min_round_s=0.05)
    r = times["R"]
    return {"problem": name, "label": label, "ms": {k: v * 1e3 for k, v in times.items()},
            "ratio": {k: v / r for k, v in times.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="pendulum,cartpole,cartpole4,guidance,quantum")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        try:
            row = measure(name, args.rounds)
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            print(f"{name}: unavailable ({e})", file=sys.stderr)
            continue
        rows.append(row)
        print(f"{row['label']:28s} R {row['ms']['R']:7.2f} ms/update | " +
              "  ".join(f"{m} {row['ratio'][m]:4.2f}x" for m in MODES if m != "R"), flush=True)
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
