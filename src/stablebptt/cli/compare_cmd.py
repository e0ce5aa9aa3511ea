"""``stablebptt compare``: does stopping the gradient help on my simulator? (the logic lives in
:mod:`stablebptt.analysis.comparison`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .app import app, check_out_folder, collect_problem_params, console, fail, out, parse_value, setup_jax


def config_options(problem: str, params: dict, items: list[str]) -> dict:
    """``--config KEY=VALUE`` items as RunConfig fields shared by every run of the comparison;
    one line naming a bad key or value and what is allowed."""
    from pydantic import ValidationError

    from ..analysis.comparison import NOT_SHARED
    from ..training.config import RunConfig, describe_errors

    allowed = [k for k in RunConfig.model_fields if k not in NOT_SHARED]
    cfg = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise fail(f"--config {item!r}: expected KEY=VALUE")
        if key not in allowed:
            why = " (give it per variant, e.g. R:truncate=4)" if key in NOT_SHARED else ""
            raise fail(f"--config {key}: not a setting shared by the runs{why}; allowed: {', '.join(allowed)}")
        cfg[key] = parse_value(text)
    try:
        RunConfig(problem=problem, problem_params=params, **cfg)
    except ValidationError as e:
        raise fail(f"--config: {describe_errors(e, RunConfig)}")
    return cfg


@app.command("compare")
def compare_cmd(
    problem: str = typer.Argument(
        ..., help="a problem name (see `stablebptt problems`), FILE.py:FUNCTION or module:FUNCTION"
    ),
    modes: str = typer.Option(
        "R,M,C,S",
        "--modes",
        "-m",
        help="comma-separated variants: a mode letter (R M S N C), optionally with flow options "
        "as :KEY=VALUE (truncate, decay, combiner, and_mask), e.g. R,C,R:truncate=4,R:decay=0.9",
    ),
    seeds: int = typer.Option(
        5, help="seeds 0 … n−1 (a seed fixes data and initial weights: variants are paired by seed)"
    ),
    param: list[str] = typer.Option([], "--param", "-p", help="problem parameter as KEY=VALUE (repeatable)"),
    config: list[str] = typer.Option(
        [],
        "--config",
        "-c",
        help="a run setting shared by every variant as KEY=VALUE (lr, clip, n_train, batch_size, …; repeatable)",
    ),
    epochs: int | None = typer.Option(None, help="training epochs (default: the problem's; with --quick a short run)"),
    quick: bool = typer.Option(False, help="short training (the problem's quick settings)"),
    reference: str = typer.Option("R", help="the variant every other one is paired against"),
    window: int | None = typer.Option(
        None, help="moving-average window of the final test loss (default: a tenth of the epochs, 1 … 30)"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="folder of the runs and results (default comparisons/PROBLEM[-KEY=VALUE…])"
    ),
    executor: str = typer.Option("local", help="local (spawn pool) | serial | ray"),
    workers: int | None = typer.Option(None, help="worker processes (default: one per core)"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start a local one)"),
    vmap_seeds: bool = typer.Option(False, help="train the seeds of one variant in one vmapped program"),
    vmap_configs: bool = typer.Option(
        False, help="train all variants and seeds as lanes of vmapped programs (for GPUs)"
    ),
    checkpoint_seconds: float = typer.Option(30.0, help="seconds between the checkpoints of each run"),
    diagnose: bool = typer.Option(
        False,
        "--diagnose",
        help="also measure the gradient explosion (stablebptt diagnose) and say whether its recommendation won",
    ),
):
    """Does stopping the gradient help on PROBLEM? Train the variants on the same seeds (resumable,
    parallel), then print the final losses, the ratios against the reference paired by seed with
    bootstrap intervals and verdicts, and a one-line answer; write figures and comparison.json."""
    from .. import problems
    from ..analysis import comparison
    from ..experiments import sweep

    problems.param_spec(problem)  # an unknown source: one line naming it and what is allowed
    if seeds < 1:
        raise fail(f"--seeds {seeds}: must be ≥ 1")
    if epochs is not None and epochs < 1:
        raise fail(f"--epochs {epochs}: must be ≥ 1")
    if window is not None and window < 1:
        raise fail(f"--window {window}: must be ≥ 1")
    if workers is not None and workers < 1:
        raise fail(f"--workers {workers}: must be ≥ 1 (default: one per core, here {os.cpu_count()})")
    if not checkpoint_seconds >= 0:
        raise fail(f"--checkpoint-seconds {checkpoint_seconds:g}: must be ≥ 0")
    if executor not in sweep.EXECUTORS:
        raise fail(f"--executor {executor}: allowed: {', '.join(sweep.EXECUTORS)}")
    try:
        names = [v.name for v in comparison.parse_variants(modes)]
    except ValueError as e:
        raise fail(f"--modes: {e}")
    try:
        ref = comparison.parse_variant(reference).name
    except ValueError as e:
        raise fail(f"--reference: {e}")
    if ref not in names:
        raise fail(f"--reference {reference}: not one of the variants ({', '.join(names)}); add it to --modes")
    params = collect_problem_params(problem, {}, param)
    cfg = config_options(problem, params, config)
    root = out_dir or comparison.default_folder(problem, params)
    check_out_folder("--out" if out_dir else "the comparison folder (--out)", root)
    setup_jax()
    import jax

    from .sweep_cmd import sweep_progress

    try:
        with sweep_progress(f"compare {problems.file_stem(problem)}") as on_progress:
            c = comparison.compare(
                problem,
                modes,
                seeds,
                params,
                root,
                epochs=epochs,
                quick=quick,
                config=cfg,
                reference=reference,
                window=window,
                workers=workers,
                executor=executor,
                address=address,
                vmap_seeds=vmap_seeds,
                vmap_configs=vmap_configs,
                cache_dir=jax.config.jax_compilation_cache_dir,  # type: ignore[attr-defined]  # jax's stub lists no options
                checkpoint_seconds=checkpoint_seconds,
                progress=on_progress,
                diagnose=diagnose,
            )
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished runs are kept in {root}, unfinished ones continue from "
            "their checkpoints: run the same command to resume"
        )
        raise typer.Exit(code=130)
    print_comparison(c)
    if c.report is not None and c.report.failed:
        for f in c.report.failed:
            console.print(f"[red]failed[/] {f['config']['mode']} seeds {f['seeds']}: {f['error']}")
        raise typer.Exit(code=1)


def print_comparison(c) -> None:
    """The comparison's tables, its answer and where its files are, on stdout."""
    from rich.table import Table

    from ..analysis.comparison import _fmt, final_text, fmt_ratio

    r = c.report
    if r is not None:
        out.print(
            f"{r.jobs} runs: {r.computed} computed"
            + (f" ({r.resumed} resumed)" if r.resumed else "")
            + f", {r.skipped} already done, {r.diverged} diverged, {len(r.failed)} failed, {r.wall_s:.1f} s",
            highlight=False,
        )
    t = Table(
        title=f"{c.label()}: final test loss over {len(c.seeds)} seeds, {c.epochs} epochs",
        caption=f"final: {final_text(c.window)}; gm ×/÷ gsd: geometric mean and std over the seeds that did "
        "not diverge",
        pad_edge=False,
    )
    for col in ("variant", "final test loss (gm ×/÷ gsd)", "min – max", "seeds", "diverged"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for row in c.table:
        cell = "–" if row["n"] == 0 or row["gm"] != row["gm"] else f"{_fmt(row['gm'])} ×/÷ {row['gsd']:.2g}"
        span = "–" if row["min"] != row["min"] else f"{_fmt(row['min'])} – {_fmt(row['max'])}"
        name = row["variant"] + (" (best)" if row["variant"] == c.best else "")
        t.add_row(name, cell, span, str(row["n"]), str(row["diverged"] or ""))
    out.print(t)
    if c.ratios:
        rt = Table(
            title=f"paired by seed: {c.reference}'s final loss / the variant's (> 1: the variant ends lower)",
            pad_edge=False,
        )
        for col in ("ratio", "gm", "95 % CI", "seeds", "verdict"):
            rt.add_column(col, justify="left" if col in ("ratio", "verdict") else "right")
        for x in c.ratios.values():
            ci = f"[{fmt_ratio(x.lo)}, {fmt_ratio(x.hi)}]" if x.n > 1 else "–"
            rt.add_row(f"{x.reference}/{x.variant}", fmt_ratio(x.estimate), ci, str(x.n), x.verdict)
        out.print(rt)
    out.print(c.answer(), highlight=False, markup=False, soft_wrap=True)
    if c.diagnosis:
        out.print(c.diagnosis_summary(), highlight=False, markup=False, soft_wrap=True)
    files = [Path(c.folder) / "comparison.json", Path(c.folder) / "COMPARISON.md"] + list(c.figures)
    out.print("wrote " + ", ".join(str(f) for f in files), highlight=False, markup=False, soft_wrap=True)
