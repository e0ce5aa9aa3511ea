"""GPU checks and timings (run on a machine with a GPU; ``--allow-cpu`` dry-runs them here).

    python benchmarks/gpu_check.py [--parts precision,throughput,epochs] [--problems ...]
                                   [--modes ...] [--cases "problem:mode:K,K;..."] [--json out.json]
    python benchmarks/gpu_check.py --allow-cpu --json /tmp/gpu.json   # dry run on a CPU, ~2 min

1. ``precision``: float32 loss and update of every paper problem (``stablebptt.
   value_and_update``, the automatic backward strategy), modes R and C, on the GPU vs the
   CPU, traced with ``jax.default_matmul_precision`` at the default (TF32 on Ampere and newer)
   and at "highest". Reported as max |gpu - cpu| / max |cpu| over the update pytree, for
   one simulator step (``horizon=1``: no amplification, expected <= 1e-5 at "highest") and
   for the paper horizon. A long rollout amplifies any difference in summation order, and
   the quantum update is ill-conditioned even over one step, so each result is put next to
   its *floor*: the same CPU update with x0 moved by one ulp (CPU vs CPU). "highest" passes
   when each difference is <= 1e-5 or within 10x its floor.
2. ``throughput``: seed-updates per second for K vmapped seeds (``batching="vmap"``, what
   ``runner.train`` picks on an accelerator), batch 8 per seed, an epoch's 32 updates per
   call (``bench_seeds.setup``).
3. ``epochs``: the steady epoch (32 updates + evaluation of 2 x 256 states per seed) with
   the paper's 5 seeds vmapped, per problem and mode, its scanned updates alone, and its
   compile time (seconds): the inputs of the whole-paper GPU estimate
   (``bench_paper.gpu_measured``).

The timed programs are traced at full float32 precision ("highest"), as ``runner.train``
traces its programs on every backend. The JSON is rewritten after every part, so a run cut
short keeps what it measured. On a CPU without ``--allow-cpu`` it writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import stablebptt as sb

PROBLEMS = ("cartpole", "guidance", "quantum")
MODES = ("R", "M", "S", "C")


def rel_diff(a, b) -> float:
    """max over the leaves of max |a - b| / max |b| (b: the reference)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(float(np.max(np.abs(np.asarray(y)))), 1e-30))
        for x, y in zip(la, lb)
    )


def next_ulp(tree):
    """Every float entry moved up by one ulp."""
    return jax.tree_util.tree_map(
        lambda x: jnp.nextafter(x, jnp.asarray(jnp.inf, x.dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def passes(row: dict) -> bool:
    """float32 on the GPU at "highest" matches the CPU: each difference (one step, paper
    horizon) within 1e-5 or within 10x what one ulp in x0 does to the CPU's own result."""
    step_floor = row.get("step_floor_ulp_x0", 0.0)
    return bool(
        row["step_update_highest"] <= max(1e-5, 10 * step_floor)
        and row["horizon_update_highest"] <= max(1e-5, 10 * row["floor_ulp_x0"])
    )


def precision_check(problems=PROBLEMS, modes=MODES) -> list[dict]:
    """Rows of relative differences GPU vs CPU (module docstring, part 1)."""
    cpu, acc = jax.devices("cpu")[0], jax.devices()[0]
    rows = []
    for name in problems:
        _, prob, model, x0 = _common.paper_case(name)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        # the parts on their own: the controller's forward pass, one simulator step
        parts = {}
        c_cpu = jax.jit(lambda m, x: m(x))(jax.device_put(model, cpu), jax.device_put(x0, cpu))
        for prec in ("default", "highest"):
            with jax.default_matmul_precision(prec):
                c_acc = jax.jit(lambda m, x: m(x))(jax.device_put(model, acc), jax.device_put(x0, acc))
                s_acc = jax.jit(prob.step)(jax.device_put(x0, acc), jax.device_put(c_cpu, acc))
            parts[f"controller_{prec}"] = rel_diff(c_acc, c_cpu)
            parts[f"simulator_step_{prec}"] = rel_diff(s_acc, jax.jit(prob.step)(jax.device_put(x0, cpu), c_cpu))
        print(
            f"{name:9s} parts, GPU vs CPU: controller default {parts['controller_default']:.1e} highest "
            f"{parts['controller_highest']:.1e} | simulator step default {parts['simulator_step_default']:.1e} "
            f"highest {parts['simulator_step_highest']:.1e}",
            flush=True,
        )
        for mode in modes:
            row = {"problem": name, "mode": mode, **parts}
            for label, horizon in (("step", 1), ("horizon", prob.horizon)):

                def f(p, x, mode=mode, horizon=horizon):
                    return sb.value_and_update(
                        eqx.combine(p, static),
                        x,
                        flow=mode,
                        validate=False,
                        step=prob.step,
                        loss=prob.loss,
                        horizon=horizon,
                    )[:2]

                pc, xc = jax.device_put(params, cpu), jax.device_put(x0, cpu)
                ref = jax.jit(f)(pc, xc)
                row["floor_ulp_x0" if label == "horizon" else "step_floor_ulp_x0"] = rel_diff(
                    jax.jit(f)(pc, next_ulp(xc))[1], ref[1]
                )
                for prec in ("default", "highest"):
                    with jax.default_matmul_precision(prec):
                        out = jax.jit(f)(jax.device_put(params, acc), jax.device_put(x0, acc))
                    row[f"{label}_loss_{prec}"] = abs(float(out[0]) - float(ref[0])) / max(abs(float(ref[0])), 1e-30)
                    row[f"{label}_update_{prec}"] = rel_diff(out[1], ref[1])
            row["ok_highest"] = passes(row)
            rows.append(row)
            print(
                f"{name:9s} {mode}: GPU vs CPU, one step: default {row['step_update_default']:.1e} "
                f"highest {row['step_update_highest']:.1e} (1-ulp floor {row['step_floor_ulp_x0']:.1e}) | horizon: default {row['horizon_update_default']:.1e} "
                f"highest {row['horizon_update_highest']:.1e} (1-ulp floor {row['floor_ulp_x0']:.1e})  "
                f"{'ok' if row['ok_highest'] else 'CHECK'}",
                flush=True,
            )
    return rows


def throughput(cases, rounds: int = 3, rows: list | None = None, saved=lambda: None) -> list[dict]:
    """Rows of seconds per update and seed-updates per second for K vmapped seeds (part 2).
    ``rows`` is filled as it goes and ``saved()`` called after each row (a cut-short run
    keeps what it measured)."""
    import bench_seeds

    rows = [] if rows is None else rows
    for name, mode, ks in cases:
        for K in ks:
            updates, _, cs, nb = bench_seeds.setup(name, mode, K, "vmap")
            t = _common.interleaved_min({"u": updates}, rounds=rounds)["u"] / nb
            rows.append(
                {"problem": name, "mode": mode, "K": K, "update_s": t, "seed_updates_per_s": K / t, "compile_s": cs}
            )
            print(
                f"{name:9s} {mode} K={K:5d}: {t * 1e3:7.2f} ms/update, {K / t:9.0f} seed-updates/s "
                f"(compile {cs:.1f} s)",
                flush=True,
            )
            saved()
    return rows


def epochs(
    problems=PROBLEMS, modes=MODES, seeds: int = 5, rounds: int = 3, rows: list | None = None, saved=lambda: None
) -> list[dict]:
    """Rows of the steady epoch with ``seeds`` vmapped seeds (part 3), filled as they are
    measured (``saved()`` after each)."""
    import bench_seeds

    rows = [] if rows is None else rows
    for name in problems:
        for mode in modes:
            updates, epoch, cs, nb = bench_seeds.setup(name, mode, seeds, "vmap")
            ts = _common.interleaved_min({"e": epoch, "u": updates}, rounds=rounds)
            t = ts["e"]
            # the epoch minus its scanned updates: the evaluation of 2 x 256 states per seed
            # (plus the parameter copy and the dispatch)
            share = max(t - ts["u"], 0.0) / t
            rows.append(
                {
                    "problem": name,
                    "mode": mode,
                    "seeds": seeds,
                    "epoch_s": t,
                    "updates_s": ts["u"],
                    "eval_share": share,
                    "compile_s": cs,
                }
            )
            print(
                f"{name:9s} {mode}: epoch with {seeds} vmapped seeds {t * 1e3:7.1f} ms, its updates "
                f"{ts['u'] * 1e3:7.1f} ms (evaluation and the rest {share:.0%}; compile {cs:.1f} s)",
                flush=True,
            )
            saved()
    return rows


THROUGHPUT_CASES = [
    ("cartpole", "C", (1, 8, 64, 512, 4096)),
    ("cartpole", "R", (1, 64, 4096)),
    ("guidance", "C", (1, 8, 64, 512)),
    ("quantum", "C", (1, 8, 64, 512)),
]


def cases_text(cases) -> str:
    """[(problem, mode, (K, ...)), ...] -> "problem:mode:K,K;..." (the --cases syntax)."""
    return ";".join(f"{p}:{m}:{','.join(map(str, ks))}" for p, m, ks in cases)


def parse_cases(text: str):
    """The inverse of :func:`cases_text`."""
    out = []
    for item in filter(None, text.split(";")):
        p, m, ks = item.split(":")
        out.append((p, m, tuple(int(k) for k in ks.split(","))))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="precision,throughput,epochs")
    ap.add_argument("--problems", default=",".join(PROBLEMS), help="for the precision and epochs parts")
    ap.add_argument("--modes", default=",".join(MODES), help="for the epochs part")
    ap.add_argument(
        "--cases",
        default=None,
        help='throughput cases "problem:mode:K,K;..." (default: ' + cases_text(THROUGHPUT_CASES) + ")",
    )
    ap.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU (tiny sizes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dry = jax.default_backend() == "cpu"
    if dry and not args.allow_cpu:
        print("no GPU: nothing to check (--allow-cpu dry-runs it)")
        return
    out = {"machine": _common.machine(), "device": str(jax.devices()[0]), "backend": jax.default_backend()}
    parts = args.parts.split(",")
    unknown = set(parts) - {"precision", "throughput", "epochs"}
    if unknown:
        ap.error(f"--parts: unknown {sorted(unknown)}; allowed: precision, throughput, epochs")
    problems, modes = args.problems.split(","), args.modes.split(",")
    cases = parse_cases(args.cases) if args.cases else THROUGHPUT_CASES

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2, default=float)

    for part in parts:
        t0 = time.perf_counter()
        try:
            if part == "precision":
                # R and C cover both gate patterns (M's field is C's first; S's has no controller path)
                out["precision"] = precision_check(("cartpole",) if dry else problems, ("R", "C"))
                continue
            out["matmul_precision_for_timings"] = "highest (traced as runner.train traces its programs)"
            if part == "throughput":
                out["throughput"] = []
                throughput(
                    [("cartpole", "C", (1, 2))] if dry else cases,
                    rounds=1 if dry else 3,
                    rows=out["throughput"],
                    saved=save,
                )
            elif part == "epochs":
                out["epochs"] = []
                epochs(
                    ("cartpole",) if dry else problems,
                    ("R",) if dry else modes,
                    seeds=2 if dry else 5,
                    rounds=1 if dry else 3,
                    rows=out["epochs"],
                    saved=save,
                )
        except Exception:  # keep the other parts
            out.setdefault("errors", {})[part] = traceback.format_exc()
            traceback.print_exc()
        finally:
            out.setdefault("part_s", {})[part] = time.perf_counter() - t0
            print(f"[{part}: {out['part_s'][part]:.0f} s]", flush=True)
            save()


if __name__ == "__main__":
    main()
