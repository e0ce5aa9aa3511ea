"""Time per update of each gradient-flow mode and backward strategy, as ratios to R measured
in the same run.

    python benchmarks/bench_modes.py [--problems pendulum,cartpole,cartpole4,guidance,quantum]
                                     [--rounds 9] [--reps 10] [--json out.json]
    python benchmarks/bench_modes.py --problems pendulum --rounds 1 --reps 1   # dry run, ~1 min

What one call is: ``stablebptt.value_and_update`` of one batch of 8 initial states (loss and
update; no optimizer step), jitted and compiled ahead of time, in milliseconds. "pendulum" is
the nonlinear toy of the test suite (MLP 100-100, T = 100, batch 8); the others are the
paper's problems at their paper settings (batch 8). The variants of one problem are timed
interleaved (see ``_common``); each figure is the minimum over ``--rounds`` of the mean over
``--reps`` calls (quantum: at most 2).

Variants (each a mode and a backward strategy object, recorded in the JSON):

* ``R``, ``M``, ``S``, ``C``: the strategy the automatic rule picks
  (:func:`stablebptt.select_backward`, no remat segments): one forward loop and one reverse
  sweep (:class:`stablebptt.core.ReverseSweep`); C carries both fields' adjoints in it.
* ``C naive``: C by :class:`stablebptt.core.Autodiff` — one complete forward and backward
  pass per field, the authors' way (``stablebptt.naive_combined``).
* ``R autodiff``: R by ``Autodiff`` (``jax.grad`` of the unrolled loss), the reference.
* ``R per-step`` / ``C per-step``: the automatic strategy with ``jacobian="per_step"`` (the
  controller's input vjp at every reverse step instead of the input Jacobian formed once on
  all T·B rows); everything else equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import _common  # sets XLA_FLAGS before jax is imported
import jax
import jax.numpy as jnp

from stablebptt.core import Autodiff
from stablebptt.core.losses import TrajectoryLoss
from stablebptt.problems.controllers import MLP

#: the variants in the order of the printed line and the results table
VARIANTS = ("R", "M", "S", "C naive", "C", "R autodiff", "R per-step", "C per-step")


def pendulum():
    """(label, step, loss, T, controller, x0): a damped pendulum with a torque, T = 100."""

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


def strategies(model, x0, step, loss, T) -> dict[str, tuple[str, object]]:
    """variant -> (mode, backward strategy object)."""
    kw = dict(step=step, loss=loss, horizon=T)
    auto = {m: _common.default_strategy(model, x0, flow=m, **kw) for m in ("R", "M", "S", "C")}
    out = {m: (m, s) for m, s in auto.items()}
    out["C naive"] = ("C", Autodiff())
    out["R autodiff"] = ("R", Autodiff())
    for m in ("R", "C"):
        if getattr(auto[m], "jacobian", None) == "batched":
            out[f"{m} per-step"] = (m, dataclasses.replace(auto[m], jacobian="per_step"))
    return out


def measure(name: str, rounds: int, reps: int) -> dict:
    label, step, loss, T, model, x0 = CASES[name]()
    kw = dict(step=step, loss=loss, horizon=T)
    plan = strategies(model, x0, step, loss, T)
    fns = {}
    for variant, (mode, backward) in plan.items():
        f, params = _common.compile_update(model, x0, flow=mode, backward=backward, **kw)
        fns[variant] = lambda f=f, params=params: f(params)
    times = _common.interleaved_min(
        fns, rounds=rounds, reps=min(reps, 2) if name == "quantum" else reps, min_round_s=0.05 if reps > 1 else 0.0
    )
    r = times["R"]
    return {
        "problem": name,
        "label": label,
        "ms": {k: v * 1e3 for k, v in times.items()},
        "ratio": {k: v / r for k, v in times.items()},
        "strategies": {k: repr(b) for k, (_, b) in plan.items()},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=10, help="calls per variant and round (quantum: at most 2)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    rows = []
    for name in args.problems.split(","):
        if name not in CASES:
            ap.error(f"unknown problem {name!r}; allowed: {', '.join(CASES)}")
        try:
            row = measure(name, args.rounds, args.reps)
        except Exception as e:  # report and continue with the others
            print(f"{name}: unavailable ({e})", file=sys.stderr)
            continue
        rows.append(row)
        print(
            f"{row['label']:28s} R {row['ms']['R']:7.2f} ms/update | "
            + "  ".join(f"{m} {row['ratio'][m]:4.2f}x" for m in VARIANTS if m != "R" and m in row["ratio"]),
            flush=True,
        )
    _common.write_json(args.json, {"machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
