"""Whole-paper cost: an estimate of running all three paper figures with 5 seeds, on this
CPU (from measured epoch times) and on one GPU (from stated H100 figures), and a measured
run of the cart-pole figure's quick variant on this CPU (or, ``--quick-only``, on a GPU).

    python benchmarks/bench_paper.py [--epoch-json results-of-bench_epoch.json] [--compile-json ...]
                                     [--cores-json ...] [--no-quick] [--vmap-configs] [--json out.json]
    python benchmarks/bench_paper.py --quick-only --workers 8      # on a GPU machine
    python benchmarks/bench_paper.py --epoch-json E.json --no-quick          # dry run: the estimate only
    python benchmarks/bench_paper.py --quick-only --workers 1 --poles 1 --modes R --clips none \
        --seeds 1 --epochs 2                                       # dry run of the figure, ~1 min

Hours (``*_h``) per figure and in total; the measured figure run in wall seconds.
The figure's options ``--poles/--modes/--clips/--seeds/--epochs`` trim its sweep spec (for dry
runs; the JSON records the trimmed spec).

A GPU estimate from *measured* epochs: :func:`gpu_measured` with ``gpu_check.py``'s JSON
(run_all.py renders it when ``gpu.json`` is in its folder).

The grid is experiments.md's: guidance 4 rc x 4 modes x 3 clippings (100 epochs, our
default; the authors' script ran 10), cart-pole 4 pole counts x 4 x 3 (1000 epochs), quantum
3 targets x 4 x 3 (1000 epochs); 32 updates + evaluation of 2 x 256 states per epoch.

CPU: epoch time per (problem, mode) at the first complexity level (assumed: every level
costs the same), clipping free, seeds linear in cost (runs one after another), plus one
cold compilation per configuration (``--compile-json``, else 4 s). 2 worker processes on 2
cores (the sweep's default executor): the throughput gain per problem as measured by
``bench_cores.py`` (``--cores-json``; one XLA process already keeps more than one core busy,
so a second adds less than 2x), else the ideal 2x (flagged in the JSON).

GPU (an *estimate*, not measured here): an H100 takes ~3-4 ms per update whatever the batch
(latency-bound: T sequential small steps), and ~80,000 seed-updates/s for cart-pole with
4096 vmapped seeds. Two bounds: "serial configs" runs the configurations one after another
with the 5 seeds vmapped (epoch = 32 x 3.5 ms + evaluation, taken as 2 updates' worth);
"throughput" assumes all seed-updates of a figure could be batched at 80,000/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common

#: the sweep specs of the paper's figures
PAPER_SPECS = Path(__file__).resolve().parents[1] / "experiments" / "paper" / "specs"

#: problem -> (configurations, epochs) of its figure
GRID = {
    "guidance": (4 * 4 * 3, 100),
    "cartpole": (4 * 4 * 3, 1000),
    "quantum": (3 * 4 * 3, 1000),
}
SEEDS = 5
UPDATES_PER_EPOCH = 32
#: the GPU estimate's assumptions (stated H100 figures, see the module docstring): seconds per
#: update, the evaluation's cost in updates, seed-updates per second at full batching
GPU_UPDATE_S = 3.5e-3
GPU_EVAL_UPDATES = 2
GPU_SEED_UPDATES_PER_S = 80_000


def _mean_over_modes(prob: str, table: dict, cost) -> float | None:
    """Mean of ``cost(table[(prob, mode)])`` over the modes measured for ``prob`` (None if
    none): a figure's configurations split evenly over the 4 modes, and a configuration of a
    mode not measured costs the mean of those measured."""
    modes = [m for m in ("R", "M", "S", "C") if (prob, m) in table]
    return sum(cost(table[(prob, m)]) for m in modes) / len(modes) if modes else None


def estimate(
    epoch_rows: list[dict],
    compile_rows: list[dict] | None = None,
    workers: int = 2,
    core_rows: list[dict] | None = None,
) -> dict:
    """Hours per figure. ``core_rows`` (``bench_cores.py``): the measured throughput of two
    worker processes over one, per problem (mean over the modes measured); without it, or for
    a problem it lacks, ``workers`` processes are assumed to divide the time by ``workers``."""
    ep = {(r["problem"], r["mode"]): r["epoch_s"] for r in epoch_rows}
    two = {}
    for r in core_rows or []:
        two.setdefault(r["problem"], []).append(r["two_process_throughput"])
    comp = {r["problem"]: r["compile_s"] for r in (compile_rows or []) if r.get("cache") == "cold"}
    out = {}
    for prob, (configs, epochs) in GRID.items():
        per_config = _mean_over_modes(prob, ep, lambda epoch_s: SEEDS * epochs * epoch_s)
        if per_config is None:
            continue
        cpu = configs * per_config + configs * comp.get(prob, 4.0)
        gpu_serial = configs * epochs * (UPDATES_PER_EPOCH + GPU_EVAL_UPDATES) * GPU_UPDATE_S
        gpu_thru = configs * SEEDS * epochs * UPDATES_PER_EPOCH / GPU_SEED_UPDATES_PER_S
        measured = prob in two and workers == 2
        speedup = sum(two[prob]) / len(two[prob]) if measured else float(workers)
        out[prob] = {
            "configs": configs,
            "epochs": epochs,
            "seeds": SEEDS,
            "cpu_1proc_h": cpu / 3600,
            "cpu_2proc_h": cpu / speedup / 3600,
            "two_process_speedup": speedup,
            "two_process_measured": measured,
            "gpu_serial_h": gpu_serial / 3600,
            "gpu_throughput_h": gpu_thru / 3600,
        }
    tot = {
        k: sum(v[k] for v in out.values()) for k in ("cpu_1proc_h", "cpu_2proc_h", "gpu_serial_h", "gpu_throughput_h")
    }
    out["total"] = tot
    return out


def gpu_measured(gpu_epoch_rows: list[dict]) -> dict:
    """Hours per figure on the GPU from *measured* steady epochs with the 5 seeds vmapped
    (``gpu_check.py`` part "epochs"): configurations one after another in one process, each
    ``epochs`` x its mode's epoch time + its cold compile time."""
    ep = {(r["problem"], r["mode"]): (r["epoch_s"], r["compile_s"]) for r in gpu_epoch_rows}
    out = {}
    for prob, (configs, epochs) in GRID.items():
        per_config = _mean_over_modes(prob, ep, lambda ec: epochs * ec[0] + ec[1])
        if per_config is not None:
            out[prob] = configs * per_config / 3600
    if out:
        out["total"] = sum(out.values())
    return out


def figure_spec(quick: bool = True, *, poles=None, modes=None, clips=None, seeds=None, epochs=None):
    """The cart-pole figure's sweep spec (``experiments/paper/specs/cartpole[-quick].toml``), with
    the pole counts, modes, clippings, seed count or epochs replaced where given."""
    from stablebptt.experiments import sweep

    raw = sweep.load_spec(PAPER_SPECS / f"cartpole{'-quick' if quick else ''}.toml").model_dump(mode="json")
    ex = raw["experiment"][0]
    if poles:
        ex["level"] = {"poles": [int(p) for p in poles]}
    if modes:
        ex["modes"] = list(modes)
    if clips:
        ex["clips"] = list(clips)
    if epochs:
        ex["config"]["epochs"] = int(epochs)
    if seeds:
        raw["seeds"] = int(seeds)
    return sweep.load_spec(raw)


def quick_cartpole(
    workers: int = 2, vmap_configs: bool = False, quick: bool = True, root: str | None = None, **trim
) -> dict:
    """Run the cart-pole figure's sweep (the quick one, or the full one with ``quick=False``;
    ``trim``: :func:`figure_spec`'s replacements) with the local executor: seeds vmapped per
    config, or with ``vmap_configs`` every pole count's runs as lanes of one program.
    ``root``: keep (and resume) the runs there instead of a temporary folder. Returns the
    sweep report with ``wall_s`` (seconds), ``workers``, ``device`` and ``spec``."""
    import contextlib

    from stablebptt.experiments import sweep

    spec = figure_spec(quick, **trim)
    jobs = sweep.expand(spec)
    where = contextlib.nullcontext(root) if root else tempfile.TemporaryDirectory(prefix="cartpole-figure-")
    with where as root:
        t = time.perf_counter()
        seen = {"done": -1}

        def progress(st: dict) -> None:  # a line per change of the finished count: partial runs stay readable
            if st["done"] != seen["done"]:
                seen["done"] = st["done"]
                print(f"  {st['done']}/{st['total']} runs done, {time.perf_counter() - t:.0f} s", flush=True)

        rep = sweep.run_sweep(
            spec, root, executor="local", workers=workers, vmap_seeds=True, vmap_configs=vmap_configs, progress=progress
        )
        wall = time.perf_counter() - t
        d = rep.as_dict()
    d["wall_s"] = wall
    d["workers"] = workers
    d["vmap_configs"] = vmap_configs
    d["device"] = _common.machine().get("device")
    cfg = jobs[0][0]
    n_seeds = spec.seeds if isinstance(spec.seeds, int) else len(spec.seeds)
    d["spec"] = {
        "configs": len(jobs) // n_seeds,
        "seeds": n_seeds,
        "epochs": cfg.epochs,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "quick": quick,
        "trimmed": {k: v for k, v in trim.items() if v},
    }
    print(
        f"cart-pole {'quick ' if quick else ''}figure ({d['jobs']} runs{', lanes' if vmap_configs else ''}) on "
        f"{d['device']} with {workers} workers: {wall:.0f} s wall "
        f"({d['computed']} computed, {d['diverged']} diverged, {len(d['failed'])} failed)",
        flush=True,
    )
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epoch-json", default=None, help="bench_epoch.py --json output (else measured now)")
    ap.add_argument("--compile-json", default=None, help="bench_compile.py --json output (compile seconds)")
    ap.add_argument("--cores-json", default=None, help="bench_cores.py --json output (two-process throughput)")
    ap.add_argument("--no-quick", action="store_true", help="skip the quick cart-pole figure run")
    ap.add_argument("--quick-only", action="store_true", help="only the quick cart-pole figure (e.g. on a GPU)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--vmap-configs", action="store_true", help="the figure's runs as lanes (one program per pole count)"
    )
    ap.add_argument("--full", action="store_true", help="with --quick-only: the full cart-pole figure (1000 epochs)")
    ap.add_argument("--root", default=None, help="keep the figure's runs here (resumable) instead of a temp folder")
    ap.add_argument(
        "--poles", default=None, help="figure: comma list of pole counts (default: the figure's sweep spec)"
    )
    ap.add_argument("--modes", default=None, help="figure: comma list of modes (default: the figure's sweep spec)")
    ap.add_argument("--clips", default=None, help="figure: comma list of clippings (default: the figure's sweep spec)")
    ap.add_argument("--seeds", type=int, default=None, help="figure: seeds (default: the figure's sweep spec)")
    ap.add_argument("--epochs", type=int, default=None, help="figure: epochs (default: the figure's sweep spec)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    split = lambda v: v.split(",") if v else None
    trim = dict(
        poles=split(args.poles), modes=split(args.modes), clips=split(args.clips), seeds=args.seeds, epochs=args.epochs
    )
    if args.quick_only:
        _common.write_json(
            args.json,
            {
                "machine": _common.machine(),
                "quick": quick_cartpole(args.workers, args.vmap_configs, quick=not args.full, root=args.root, **trim),
            },
        )
        return
    if args.epoch_json:
        epoch_rows = json.loads(Path(args.epoch_json).read_text())["rows"]
    else:
        import bench_epoch

        epoch_rows = bench_epoch.main(["--rounds", "3"])
    compile_rows = json.loads(Path(args.compile_json).read_text())["rows"] if args.compile_json else None
    core_rows = json.loads(Path(args.cores_json).read_text())["rows"] if args.cores_json else None
    est = estimate(epoch_rows, compile_rows, args.workers, core_rows)
    for k, v in est.items():
        print(
            f"{k:9s} CPU {v['cpu_1proc_h']:7.1f} h (1 process) / {v['cpu_2proc_h']:7.1f} h (2 processes) | "
            f"GPU estimate {v['gpu_throughput_h']:5.2f}-{v['gpu_serial_h']:5.1f} h",
            flush=True,
        )
    quick = None if args.no_quick else quick_cartpole(args.workers, args.vmap_configs, **trim)
    _common.write_json(args.json, {"machine": _common.machine(), "estimate": est, "quick": quick})


if __name__ == "__main__":
    main()
