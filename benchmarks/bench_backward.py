"""Backward strategies on users' kinds of problems and the paper's: time per update, time per
epoch and compile time of each strategy, after checking that its update equals autodiff's.

    python benchmarks/bench_backward.py [--problems burgers_conv1d,heat2d_conv2d,...] [--modes R,M,C]
                                        [--repeats 5] [--strategies auto,per_step,...] [--extra NAME]
                                        [--out DIR | --json FILE]
    python benchmarks/bench_backward.py --quick --problems burgers_conv1d,field_mlp   # dry run, a few min

Problems: ``user_problems.SUITE`` — the paper's (cartpole, cartpole4, guidance, quantum; by
``stablebptt.problems.get``) and six user problems (``user_problems.py``: conv controllers on
PDE fields, an MLP on a field, a 512-state chain with 2 controls, an implicit solve, a diffrax
ODE). Default: all of them (quantum is slow on a CPU: minutes).

Strategies (the columns; :func:`candidates`, extended by :data:`EXTRA_CANDIDATES` and ``--extra``):
``autodiff`` (the reference, ``stablebptt.core.Autodiff``: one complete pass per field),
``auto`` (the engine's measured choice; the JSON records which), and every strategy the engine
considers for the controller (``stablebptt.core.candidates``, named by :func:`label`). A column
is a name (passed as ``backward=NAME`` to ``value_and_update`` and to the trainer) or a
strategy object; a name the engine does not know shows as ``error``.

Per (problem, mode) cell, for each strategy:

1. **Correctness** first: the update of one batch (8 initial states of the "paper" data, the
   controller not zeroed so that every path carries signal) against autodiff's, as
   ``‖u − u_ref‖ / ‖u_ref‖`` over the whole update pytree. Tolerance :data:`TOL` = 1e-4: the
   strategies differ only in the order of float32 operations (sums over T·B rows reassociated,
   J formed per step or on all rows), so a correct strategy differs by round-off amplified by the
   problem's conditioning — a few float32 ε (1.2e-7) on the user problems (observed 1.4e-7 to
   3.2e-7); 1e-4 (≈ 840 ε) leaves room for long horizons and chaotic problems while a missing
   or wrongly gated term gives errors of 1e-2 or more. For C, an entry whose true gradient G_j is
   within round-off of zero may flip the sign test legitimately; when a C update fails the plain
   check, entries with |G_ref,j| ≤ TOL·‖G_ref‖ are set aside and counted (``sign_ambiguous``).
   A strategy above the tolerance is marked ``wrong`` and not timed.
2. **Per update**: the jitted, AOT-compiled ``stablebptt.value_and_update`` of that batch
   (``_common.compile_update``; loss and update, no optimizer step), min over ``--repeats``
   rounds of the mean over ``--reps`` calls, strategies interleaved (``_common.interleaved_min``).
   Compile time: lowering and compiling that program.
3. **Per epoch**: the trainer's epoch program (``stablebptt.training.trainer.make_train``'s ``updates``:
   the epoch's minibatch updates with the optimizer, one scanned program) as
   ``bench_epoch.py`` times it (``_common.trainer_programs``, one seed, evaluation not
   included), n_train / batch_size updates (the problem's n_train; ``--quick``: 2 updates).
   Compile time: ``trainer_programs``' ``compile_s`` (make_train, initialisation, compiling the
   updates and the evaluation programs; the evaluation is the same for every strategy). The
   strategy is handed to ``make_train(..., backward=)``.

Output: JSON (machine, settings, one row per problem × mode with every strategy's numbers) in
``benchmarks/data/backward-<date>/backward.json`` (``--quick``: ``backward-quick-<date>``;
``--out DIR`` or ``--json FILE`` elsewhere) and Markdown tables (also ``table.md`` next to the
JSON): rows problem × mode, columns strategies, each cell the time and its ratio to the fastest
correct strategy of the row (bold). Numbers on a shared machine are noisy: the interleaving
keeps the ratios of one row comparable, absolute times are best-case.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _common  # sets XLA_FLAGS before jax is imported
import jax
import jax.numpy as jnp
import numpy as np
import user_problems

from stablebptt.core import Flow, ReverseSweep, hooks
from stablebptt.core import candidates as engine_candidates
from stablebptt.training.config import RunConfig

MODES = ("R", "M", "C")
#: relative error ‖u − u_autodiff‖ / ‖u_autodiff‖ up to which a strategy's update is correct
TOL = 1e-4
#: the reference every strategy is checked against
REFERENCE = "autodiff"


# ----------------------------------------------------------------------------- strategies
def label(strategy) -> str:
    """A short column name of a strategy: ``autodiff``, or the sweep's jacobian with
    ``+keep`` (activations kept), ``+save`` (linearisation saved), ``+insweep`` (parameter
    gradients in the sweep), ``-rows`` (rows not merged although they could be)."""
    if not isinstance(strategy, ReverseSweep):
        return "autodiff"
    return (
        strategy.jacobian
        + ("+keep" if strategy.keep_activations else "")
        + ("+save" if strategy.save_linearization else "")
        + ("+insweep" if strategy.param_grads == "in_sweep" else "")
    )


def candidates(model, x0, problem, mode="C") -> dict[str, object]:
    """Column name -> backward for this controller: the reference, ``auto`` and every strategy
    the engine considers (:func:`stablebptt.core.candidates`, no remat segments)."""
    out: dict[str, object] = {"autodiff": "autodiff", "auto": "auto"}
    for c in engine_candidates(
        model,
        x0,
        step=problem.step,
        loss=problem.loss,
        horizon=problem.horizon,
        gates=Flow(mode).gates(problem.horizon).fields,
        checkpoint_every=None,
    ):
        out.setdefault(label(c), c)
    return out


#: more candidate functions ``f(model, x0, problem) -> {column: backward}`` (e.g. strategies the
#: engine grows later); their columns are added after :func:`candidates`'
EXTRA_CANDIDATES: list[Callable] = []


def all_candidates(model, x0, problem, extra_names=(), only=None, mode="C") -> dict[str, object]:
    """:func:`candidates`, then :data:`EXTRA_CANDIDATES`, then ``extra_names`` (backward names
    passed as they are); ``only``: keep these columns (the reference is always kept)."""
    out = candidates(model, x0, problem, mode)
    for f in EXTRA_CANDIDATES:
        out |= f(model, x0, problem)
    out |= {n: n for n in extra_names}
    if only:
        out = {k: v for k, v in out.items() if k in only or k == REFERENCE}
    return out


def describe(spec) -> str:
    return spec if isinstance(spec, str) else repr(spec)


# ----------------------------------------------------------------------------- correctness
def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)])


def rel_error(u, ref, mask=None) -> float:
    """‖u − ref‖ / ‖ref‖ over all entries (``mask``: only where True); inf if u is not finite."""
    a, b = _flat(u), _flat(ref)
    if mask is not None:
        a, b = a[mask], b[mask]
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(update, ref, *, mode: str, g_ref: Callable | None = None) -> dict:
    """``{"ok", "rel_err", "sign_ambiguous"}`` of one strategy's update against the reference
    (module docstring, point 1). ``g_ref()``: autodiff's G, asked only when a C update fails."""
    err = rel_error(update, ref)
    out = {"ok": err <= TOL, "rel_err": err, "sign_ambiguous": 0}
    if out["ok"] or mode != "C" or g_ref is None or not np.isfinite(err):
        return out
    g = _flat(g_ref())
    ambiguous = np.abs(g) <= TOL * np.linalg.norm(g)
    masked = rel_error(update, ref, ~ambiguous)
    return {"ok": masked <= TOL, "rel_err": masked, "rel_err_unmasked": err, "sign_ambiguous": int(ambiguous.sum())}


# ----------------------------------------------------------------------------- one cell
def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def measure_cell(
    name: str, problem, model, x0, mode: str, cands: dict, *, repeats: int, reps: int, n_train: int, epochs: bool = True
) -> dict:
    """Every strategy of one (problem, mode): correctness, per-update and per-epoch times, compile
    times (module docstring). Returns the JSON row."""
    kw = dict(step=problem.step, loss=problem.loss, horizon=problem.horizon)
    cells: dict[str, dict] = {col: {"backward": describe(spec)} for col, spec in cands.items()}
    programs, updates = {}, {}
    for col, spec in cands.items():
        t0 = time.perf_counter()
        try:
            f, params = _common.compile_update(model, x0, flow=mode, backward=spec, **kw)
            updates[col] = jax.block_until_ready(f(params))
        except Exception as e:  # a strategy that cannot run is a cell, not a crash
            cells[col]["error"] = _error(e)
            continue
        cells[col]["update_compile_s"] = time.perf_counter() - t0
        programs[col] = (f, params)
    if "auto" in cells and "error" not in cells["auto"]:
        cells["auto"]["resolved"] = repr(_common.default_strategy(model, x0, flow=mode, **kw))

    if REFERENCE not in updates:
        raise RuntimeError(f"{name} {mode}: the reference ({REFERENCE}) failed: {cells[REFERENCE].get('error')}")
    g_cache = {}

    def g_ref():
        if "g" not in g_cache:
            f, params = _common.compile_update(model, x0, flow="R", backward=REFERENCE, **kw)
            g_cache["g"] = f(params)
        return g_cache["g"]

    ok = []
    for col, u in updates.items():
        cells[col] |= check(u, updates[REFERENCE], mode=mode, g_ref=g_ref)
        if cells[col]["ok"]:
            ok.append(col)
        else:
            cells[col]["wrong"] = True

    fns = {col: (lambda f=programs[col][0], p=programs[col][1]: f(p)) for col in ok}
    times = _common.interleaved_min(fns, rounds=repeats, reps=reps, min_round_s=0.05 if reps > 1 else 0.0)
    for col, t in times.items():
        cells[col]["update_ms"] = t * 1e3
    del programs, fns

    if epochs:
        source, params = user_problems.source(name), user_problems.SUITE[name][1]
        bs = x0.shape[0]
        epoch_fns, nb = {}, None
        for col in ok:
            try:
                cfg = RunConfig(
                    problem=source,
                    problem_params=params,
                    mode=mode,
                    epochs=1,
                    batch_size=bs,
                    n_train=n_train,
                    n_test=bs,
                    zero_last=False,
                )
                p = _common.trainer_programs(problem, cfg, [0], backward=cands[col])
            except Exception as e:
                cells[col]["epoch_error"] = _error(e)
                continue
            cells[col]["epoch_compile_s"] = p.compile_s
            cells[col]["trainer_backward"] = p.backward
            epoch_fns[col], nb = p.updates, p.updates_per_epoch
        times = _common.interleaved_min(epoch_fns, rounds=repeats) if epoch_fns else {}
        for col, t in times.items():
            cells[col]["epoch_ms"] = t * 1e3
            cells[col]["epoch_update_ms"] = t * 1e3 / nb
    else:
        nb = None

    for key in ("update_ms", "epoch_ms"):
        best = min((c[key] for c in cells.values() if key in c), default=None)
        for c in cells.values():
            if key in c:
                c[key.replace("_ms", "_ratio")] = c[key] / best
    return {
        "problem": name,
        "mode": mode,
        "horizon": problem.horizon,
        "batch": int(x0.shape[0]),
        "state_shape": list(problem.state_shape),
        "control_shape": list(problem.control_shape),
        "controller": type(model).__name__,
        "rows_independent": hooks.claims_rows_independent(model),
        "hooks": hooks.has_hooks(model),
        "updates_per_epoch": nb,
        "strategies": cells,
    }


def measure_problem(
    name: str, modes, *, repeats: int, reps: int, quick: bool, extra=(), only=None, epochs: bool = True
) -> list[dict]:
    problem = user_problems.build(name)
    model = problem.make_controller(jax.random.PRNGKey(0), zero_last=False)
    bs = int(problem.defaults.get("batch_size", 8))
    x0 = jnp.asarray(problem.sample_data("paper", bs, bs)[0])
    cands = all_candidates(model, x0, problem, extra, only)
    n_train = 2 * bs if quick else int(problem.defaults.get("n_train", 256))
    rows = []
    for mode in modes:
        t0 = time.perf_counter()
        row = measure_cell(
            name, problem, model, x0, mode, cands, repeats=repeats, reps=reps, n_train=n_train, epochs=epochs
        )
        row["wall_s"] = time.perf_counter() - t0
        print(line(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output
def line(row: dict) -> str:
    """One progress line: per strategy the update and epoch times in ms."""
    parts = []
    for col, c in row["strategies"].items():
        if "error" in c:
            parts.append(f"{col} error")
        elif c.get("wrong"):
            parts.append(f"{col} WRONG({c['rel_err']:.1e})")
        else:
            ep = f"/{c['epoch_ms']:.0f}" if "epoch_ms" in c else ""
            parts.append(f"{col} {c.get('update_ms', float('nan')):.2f}{ep}")
    return f"{row['problem']:26s} {row['mode']}: " + "  ".join(parts) + f"   (ms update/epoch; {row['wall_s']:.0f}s)"


def _cell(c: dict | None, key: str) -> str:
    if c is None:
        return "–"
    if "error" in c:
        return "error"
    if c.get("wrong"):
        return f"wrong ({c['rel_err']:.1e})"
    if key not in c:
        return "error" if c.get("epoch_error") and key == "epoch_ms" else "–"
    ratio = c[key.replace("_ms", "_ratio")]
    text = f"{c[key]:.2f} ({ratio:.2f}×)" if c[key] < 100 else f"{c[key]:.0f} ({ratio:.2f}×)"
    return f"**{text}**" if ratio == 1.0 else text


def _compile_cell(c: dict | None) -> str:
    if c is None:
        return "–"
    if "error" in c:
        return "error"
    u, e = c.get("update_compile_s"), c.get("epoch_compile_s")
    return " / ".join("–" if v is None else f"{v:.1f}" for v in (u, e))


def markdown(rows: list[dict]) -> str:
    """Tables per update, per epoch, compile times, and what ``auto`` resolved to."""
    cols = list(dict.fromkeys(col for r in rows for col in r["strategies"]))
    head = "| problem | mode | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols)
    out = []
    for title, fn in (
        ("Per update: ms (ratio to the fastest correct strategy of the row)", lambda c: _cell(c, "update_ms")),
        ("Per epoch (trainer's updates program): ms (ratio to the fastest)", lambda c: _cell(c, "epoch_ms")),
        ("Compile: s, update program / trainer programs", _compile_cell),
    ):
        out += [f"### {title}", "", head]
        for r in rows:
            out.append(
                f"| {r['problem']} | {r['mode']} | " + " | ".join(fn(r["strategies"].get(col)) for col in cols) + " |"
            )
        out.append("")
    out += ["### What `auto` picked", ""]
    for r in rows:
        a = r["strategies"].get("auto", {})
        epoch_pick = a.get("trainer_backward")
        out.append(
            f"* {r['problem']} {r['mode']}: {a.get('resolved', a.get('error', '–'))}"
            + (f"; trainer: {epoch_pick}" if epoch_pick and epoch_pick != a.get("resolved") else "")
        )
    worst = max(
        (c["rel_err"] for r in rows for c in r["strategies"].values() if "rel_err" in c and c.get("ok")), default=None
    )
    if worst is not None:
        out += ["", f"Largest relative error of a correct strategy against autodiff: {worst:.1e} (tolerance {TOL:g})."]
    return "\n".join(out) + "\n"


def default_out(quick: bool) -> Path:
    date = _dt.datetime.now(_dt.UTC).date().isoformat()
    return _common.HERE / "data" / (f"backward-quick-{date}" if quick else f"backward-{date}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--problems",
        default=",".join(user_problems.SUITE),
        help=f"comma-separated, from: {', '.join(user_problems.SUITE)}",
    )
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5; --quick: 2)")
    ap.add_argument(
        "--reps", type=int, default=None, help="calls per round of the update timing (default 3; --quick: 1)"
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 call per round, 2 updates per epoch")
    ap.add_argument("--strategies", default=None, help="only these columns (autodiff is always kept)")
    ap.add_argument(
        "--extra",
        default="",
        help="comma-separated backward names to add as columns (passed as "
        "backward=NAME; for strategies the engine grows later)",
    )
    ap.add_argument("--no-epoch", action="store_true", help="skip the per-epoch timing")
    ap.add_argument(
        "--out",
        default=None,
        help="folder for backward.json and table.md (default benchmarks/data/backward[-quick]-<date>)",
    )
    ap.add_argument("--json", default=None, help="write the JSON to this file instead (no table.md)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    reps = args.reps or (1 if args.quick else 3)
    names = [n for n in args.problems.split(",") if n]
    bad = [n for n in names if n not in user_problems.SUITE]
    if bad:
        ap.error(f"unknown problem(s) {bad}; allowed: {', '.join(user_problems.SUITE)}")
    modes = [m for m in args.modes.split(",") if m]
    only = set(args.strategies.split(",")) if args.strategies else None
    extra = [n for n in args.extra.split(",") if n]

    rows = []
    for name in names:
        try:
            rows += measure_problem(
                name,
                modes,
                repeats=repeats,
                reps=reps,
                quick=args.quick,
                extra=extra,
                only=only,
                epochs=not args.no_epoch,
            )
        except Exception as e:  # report and continue with the others
            print(f"{name}: unavailable ({_error(e)})", file=sys.stderr, flush=True)
    table = markdown(rows)
    print("\n" + table)
    data = {
        "machine": _common.machine(),
        "tol": TOL,
        "quick": args.quick,
        "repeats": repeats,
        "reps": reps,
        "rows": rows,
    }
    if args.json:
        _common.write_json(args.json, data)
    else:
        out = Path(args.out) if args.out else default_out(args.quick)
        out.mkdir(parents=True, exist_ok=True)
        _common.write_json(str(out / "backward.json"), data)
        (out / "table.md").write_text(table)
        print(f"wrote {out / 'backward.json'} and {out / 'table.md'}")
    return rows


if __name__ == "__main__":
    main()
