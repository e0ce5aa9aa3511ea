"""CLI: ``stablebptt sweep``, ``stablebptt results``."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import typer

from .app import app, check_out_file, check_out_folder, console, fail, out, setup_jax


@contextmanager
def sweep_progress(name: str):
    """A progress bar on stderr for a sweep; yields the ``progress`` callback of
    :func:`stablebptt.experiments.sweep.run_sweep` (jobs done of all, running, diverged, skipped, ETA)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as progress:
        task = progress.add_task(name, total=None, info="")

        def on_progress(s):
            eta = "?" if s["eta_s"] is None else f"{s['eta_s'] / 60:.1f} min"
            progress.update(
                task,
                total=s["total"],
                completed=s["done"] + s["skipped"],
                info=f"running {s['running']}  diverged {s['diverged']}  skipped {s['skipped']}  ETA {eta}",
            )

        yield on_progress


def _progress_runner(spec, root, **kw):
    from ..experiments import sweep

    with sweep_progress(spec.name) as on_progress:
        return sweep.run_sweep(spec, root, progress=on_progress, **kw)


def _run(
    spec_source,
    seeds,
    out_dir,
    executor,
    workers,
    address,
    vmap_seeds,
    vmap_configs=False,
    checkpoint_seconds=30.0,
):
    from ..experiments import sweep

    if workers is not None and workers < 1:
        raise fail(f"--workers {workers}: must be ≥ 1 (default: one per core, here {os.cpu_count()})")
    if not checkpoint_seconds >= 0:
        raise fail(
            f"--checkpoint-seconds {checkpoint_seconds:g}: must be ≥ 0 (seconds between checkpoints; 0: after every epoch)"
        )
    if seeds is not None and seeds < 1:
        raise fail(f"--seeds {seeds}: must be ≥ 1")
    try:
        spec = sweep.load_spec(spec_source, seeds=seeds)
    except sweep.SpecError as e:
        raise fail(str(e))
    root = out_dir or Path("sweeps") / spec.name
    check_out_folder("--out" if out_dir else f"the sweep folder (--out, default sweeps/{spec.name})", root)
    setup_jax()
    check_problems(spec)
    import jax

    cache_dir = jax.config.jax_compilation_cache_dir  # the workers share this process's cache folder
    try:
        report = _progress_runner(
            spec,
            root,
            executor=executor,
            workers=workers,
            address=address,
            vmap_seeds=vmap_seeds,
            vmap_configs=vmap_configs,
            cache_dir=cache_dir,
            checkpoint_seconds=checkpoint_seconds,
        )
    except sweep.SpecError as e:
        raise fail(str(e))
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished runs are kept in {root}, unfinished ones continue from "
            "their checkpoints: run the same command to resume"
        )
        raise typer.Exit(code=130)
    out.print(
        f"{report.jobs} jobs: {report.computed} computed"
        + (f" ({report.resumed} resumed from their checkpoints)" if report.resumed else "")
        + f", {report.skipped} already done, "
        + (f"{report.claimed} being computed by other processes, " if report.claimed else "")
        + f"{report.diverged} diverged, {len(report.failed)} failed, {report.wall_s:.1f} s -> {root}"
    )
    for f in report.failed:
        console.print(f"[red]failed[/] {f['config']['problem']} {f['config']['mode']} seeds {f['seeds']}: {f['error']}")
    return root, report


def check_problems(spec) -> None:
    """Every problem of the sweep (each source with each set of parameters, once) against its
    contract with the first job's config and seed (:func:`stablebptt.problems.check_for_training`),
    before any worker starts: a broken problem file is one line, not a failed job per run."""
    import json

    from .. import problems
    from ..experiments import sweep

    seen = set()
    for cfg, seed in sweep.expand(spec):
        key = (cfg.problem, json.dumps(cfg.problem_params, sort_keys=True, default=str), cfg.init_weights)
        if key in seen:
            continue
        seen.add(key)
        problems.check_for_training(problems.get(cfg.problem, **cfg.problem_params), cfg, seed)


@app.command("sweep")
def sweep_cmd(
    spec: str = typer.Argument(
        ...,
        help="a .toml/.yaml/.yml sweep spec file (in the repository: experiments/paper/specs/ holds the paper's "
        "figures', experiments/ladder/specs/ the complexity ladder's)",
    ),
    seeds: int | None = typer.Option(None, help="number of seeds (overrides the spec)"),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="sweep folder (default sweeps/NAME)"),
    executor: str = typer.Option("local", help="local (spawn pool) | serial | ray"),
    workers: int | None = typer.Option(None, help="worker processes (default: one per core)"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start a local one)"),
    vmap_seeds: bool = typer.Option(False, help="train the seeds of one config in one vmapped program"),
    vmap_configs: bool = typer.Option(
        False,
        help="train the runs that differ only in seed, mode, lr or clipping as lanes of one vmapped program (for GPUs)",
    ),
    checkpoint_seconds: float = typer.Option(30.0, help="seconds between the checkpoints of each job"),
):
    """Run (or resume) a sweep; finished runs are never recomputed, interrupted ones continue."""
    _, report = _run(spec, seeds, out_dir, executor, workers, address, vmap_seeds, vmap_configs, checkpoint_seconds)
    if report.failed:
        raise typer.Exit(code=1)


@app.command("results")
def results_cmd(
    sweep_dir: Path = typer.Argument(..., help="a sweep (or runs) folder"),
    csv: Path | None = typer.Option(None, help="write all rows (run × epoch) as CSV"),
    parquet: Path | None = typer.Option(None, help="write all rows as Parquet"),
    epoch: int | None = typer.Option(
        None, help="report the test loss at this epoch (each run's last recorded epoch ≤ EPOCH) instead of the last"
    ),
):
    """Collect finished runs into one table; print mean ± std of the final test loss and the
    epoch it comes from (a range when the runs of a row stopped at different epochs)."""
    from ..analysis import results

    if not sweep_dir.is_dir():
        raise fail(f"{sweep_dir} is not a folder")
    check_out_file("--csv", csv)
    check_out_file("--parquet", parquet)
    if epoch is not None and epoch < 0:
        raise fail(f"--epoch {epoch}: must be ≥ 0 (0 = the untrained controller)")
    df = results.collect(sweep_dir, csv=csv, parquet=parquet)
    if df.empty:
        raise fail(f"no finished runs under {sweep_dir}")
    s = results.summary_frame(sweep_dir, epoch=epoch)
    if s.empty:
        raise fail(
            f"--epoch {epoch}: no run under {sweep_dir} has a recorded epoch ≤ {epoch} "
            f"(recorded epochs: {int(df['epoch'].min())} … {int(df['epoch'].max())})"
        )
    t = results.console_table(
        s,
        title=f"{sweep_dir}: test loss "
        + (f"at epoch ≤ {epoch}" if epoch is not None else "at the last epoch")
        + ", mean ± std over seeds",
        caption="epochs: the epoch the values come from (min–max where the runs of a row differ)",
    )
    out.print(t)
    out.print(
        f"{df['run_id'].nunique()} runs, {len(df)} rows (run × epoch)"
        + (f"; wrote {csv}" if csv else "")
        + (f"; wrote {parquet}" if parquet else "")
    )
