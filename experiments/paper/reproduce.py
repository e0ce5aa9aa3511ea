"""One of the paper's figures end to end: its sweep, the figures and a Markdown summary table.

    python experiments/paper/reproduce.py FIGURE [--quick] [--seeds N] [--out DIR]
        [--executor local|serial|ray] [--workers N] [--address ADDR] [--vmap-seeds] [--vmap-configs]

``FIGURE`` is one of :data:`FIGURES` — its sweep is ``specs/FIGURE.toml`` beside this script,
``specs/FIGURE-quick.toml`` with ``--quick`` (minutes on 2 CPU cores) — or the path of any
sweep spec file. The sweep runs as ``stablebptt sweep SPEC`` (resumable: finished runs are never
recomputed) into ``--out`` (default ``sweeps/NAME``, NAME from the spec). Then, in that folder:

* ``figures/``: the sweep's figures (:func:`stablebptt.analysis.plots.plot_sweep`), and for
  ``toys`` also Fig. 1 and Fig. 2 (:mod:`figures`);
* ``SUMMARY.md``: the final test loss per setting, mean ± std over seeds
  (:func:`stablebptt.analysis.results.summary_table`; for ``guidance`` also at epoch 10), and
  the list of figures.

Exit status: the sweep's (1 when a job failed; the figures and the table are still written).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = HERE / "specs"
#: the paper's figures with a sweep spec in ``specs/``
FIGURES = ("cartpole", "guidance", "quantum", "toys")


def spec_path(figure: str, quick: bool = False) -> Path:
    """The sweep spec of ``figure`` (one of :data:`FIGURES`, or a spec file's path)."""
    if figure in FIGURES:
        return SPECS / f"{figure}{'-quick' if quick else ''}.toml"
    if quick:
        raise ValueError(f"--quick applies to the figures ({', '.join(FIGURES)}), not to the spec file {figure}")
    path = Path(figure)
    if not path.is_file():
        raise ValueError(f"{figure!r}: neither a figure ({', '.join(FIGURES)}) nor a sweep spec file")
    return path


def summary(root: Path, figure: str) -> tuple[str, list[Path]]:
    """The figures of the sweep under ``root`` and the text of its SUMMARY.md."""
    from stablebptt.analysis import plots, results

    figs: list[Path] = []
    try:
        figs = list(plots.plot_sweep(root))
        if figure == "toys":
            import figures

            figs += list(figures.fig1_fields(root / "figures")["paths"])
            figs += list(figures.fig2_rotation(root / "figures")["paths"])
    except Exception as e:  # a plotting problem must not lose the table
        print(f"figures failed: {type(e).__name__}: {e}", file=sys.stderr)
    text = f"# {root.name}\n\n" + results.summary_table(root)
    if figure == "guidance":
        text += "\n" + results.summary_table(root, epoch=10)
    if figs:
        text += (
            "\nFigures:\n\n"
            + "\n".join(f"- {f.relative_to(root) if f.is_relative_to(root) else f}" for f in map(Path, figs))
            + "\n"
        )
    return text, figs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("figure", help=f"{' | '.join(FIGURES)} | a sweep spec file")
    ap.add_argument("--quick", action="store_true", help="the figure's quick sweep (minutes on 2 CPU cores)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the spec)")
    ap.add_argument("--out", "-o", type=Path, default=None, help="sweep folder (default sweeps/NAME)")
    ap.add_argument("--executor", default="local", help="local | serial | ray")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    ap.add_argument("--address", default=None, help="Ray cluster address")
    ap.add_argument("--vmap-seeds", action="store_true", help="the seeds of a config in one vmapped program")
    ap.add_argument("--vmap-configs", action="store_true", help="lanes: see `stablebptt sweep --help`")
    args = ap.parse_args(argv)

    from stablebptt.experiments import sweep

    try:
        spec = spec_path(args.figure, args.quick)
        name = sweep.load_spec(spec, seeds=args.seeds).name
    except (ValueError, sweep.SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.out if args.out is not None else Path("sweeps") / name
    cmd = [sys.executable, "-m", "stablebptt", "sweep", str(spec), "--out", str(root), "--executor", args.executor]
    for flag, value in (("--seeds", args.seeds), ("--workers", args.workers), ("--address", args.address)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--vmap-seeds"] * args.vmap_seeds + ["--vmap-configs"] * args.vmap_configs
    rc = subprocess.call(cmd)
    if rc not in (0, 1) or not root.is_dir():
        return rc or 1
    from stablebptt.analysis import results

    if not results.run_folders(root):
        return rc or 1
    text, _ = summary(root, args.figure if args.figure in FIGURES else "")
    (root / "SUMMARY.md").write_text(text)
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
