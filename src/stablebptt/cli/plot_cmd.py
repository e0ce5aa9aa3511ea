"""``stablebptt plot``: the figures of a sweep (test loss per epoch, mean ± spread over seeds).
The logic lives in :mod:`stablebptt.analysis.plots`."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, check_out_folder, fail, out


@app.command("plot")
def plot_command(
    sweep_dir: Path = typer.Argument(..., help="folder with finished run folders (searched recursively)"),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="folder for the figures (default SWEEP_DIR/figures)"),
    smooth: bool = typer.Option(True, "--smooth/--raw", help="30-epoch trailing moving average (paper) or raw curves"),
    window: int = typer.Option(30, help="moving-average window in epochs"),
    band: str = typer.Option(
        "std",
        help="shaded band, in log space: std (geometric mean ×/÷ one geometric std over seeds) | ci (bootstrap 95% CI of the geometric mean)",
    ),
    fmt: str = typer.Option("png,pdf", "--format", help="comma-separated file formats, e.g. png,pdf,svg"),
):
    """Test loss per epoch for every problem of a sweep, one panel per complexity level."""
    if not sweep_dir.is_dir():
        raise fail(f"{sweep_dir}: no such folder")
    check_out_folder("--out", out_dir)
    if band not in ("std", "ci"):
        raise fail(f"--band {band!r}: allowed std, ci")
    if window < 1:
        raise fail(f"--window {window}: must be ≥ 1")
    formats = [f.strip().lower().lstrip(".") for f in fmt.split(",") if f.strip()]
    if not formats:
        raise fail("--format: give at least one format, e.g. png,pdf")

    from ..analysis import plots

    try:
        paths = plots.plot_sweep(sweep_dir, out_dir, smooth=smooth, window=window, band=band, formats=formats)
    except ValueError as e:
        raise fail(str(e))
    for p in paths:
        out.print(str(p))
