"""``stablebptt diagnose`` (which gradient-flow mode suits a problem?) and ``stablebptt animate``
(a GIF/MP4 of a trained controller). The logic lives in :mod:`stablebptt.analysis.diagnose` and
:mod:`stablebptt.analysis.animate`."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer

from .app import (
    _read_weights,
    app,
    check_out_file,
    check_out_folder,
    collect_problem_params,
    console,
    fail,
    out,
    setup_jax,
)


@app.command("diagnose")
def diagnose_command(
    problem: str = typer.Argument(..., help="problem name (see `stablebptt problems`)"),
    param: list[str] = typer.Option([], "--param", "-p", help="problem parameter as KEY=VALUE (repeatable)"),
    weights: Path | None = typer.Option(
        None, help="a run folder or a weights .npz to diagnose (default: an untrained controller)"
    ),
    states: int = typer.Option(8, help="number of rollouts (initial states) to measure along"),
    out_dir: Path = typer.Option(Path("diagnostics"), "--out", "-o", help="folder for <name>.png/.json/.txt"),
    zero_last: bool = typer.Option(
        False,
        "--zero-last/--no-zero-last",
        help="untrained controller: zero last kernel (then K = 0 and R = M; default off)",
    ),
    seed: int = typer.Option(0, help="seed of the untrained controller"),
):
    """Which gradient-flow mode suits PROBLEM? Adjoint norms, credit per step, Jacobian spectra, cos(M, G); writes a 4-panel figure."""
    from .. import problems as problems_mod

    problems_mod.param_spec(problem)  # an unknown source: one line naming it and what is allowed
    if states < 1:
        raise fail(f"--states {states}: must be ≥ 1")
    check_out_folder("--out", out_dir)
    pparams = collect_problem_params(problem, {}, param)
    arrays = _read_weights("--weights", weights) if weights is not None else None
    setup_jax()
    import jax

    from ..analysis import diagnose as diag
    from ..problems import controllers

    t0 = time.perf_counter()
    name = problems_mod.file_stem(problem)
    try:
        if weights is not None and weights.is_dir():
            prob, model, cfg, _ = diag.load_problem_and_controller(weights)
            if cfg.problem != problem:
                raise fail(f"--weights {weights} is a {cfg.problem!r} run, not {problem!r}")
            if pparams and pparams != {k: v for k, v in cfg.problem_params.items() if k in pparams}:
                raise fail(f"--param {pparams} differs from the run's problem parameters {cfg.problem_params}")
            label = f"{problem} — trained run {weights.name} (mode {cfg.mode_label()}, {cfg.epochs} epochs)"
            name = f"{problems_mod.file_stem(problem)}-{weights.name}"
        else:
            prob = problems_mod.get(problem, **pparams)
            model, label = None, None
            abstract = problems_mod.check_problem(
                prob, n_train=states, n_test=states, data=0, zero_last=zero_last, seed=seed
            )
            if weights is not None:
                assert arrays is not None  # read above whenever --weights is given
                problems_mod.check_weights(prob, abstract, arrays, f"--weights {weights}")
                model = controllers.load_weights(
                    prob.make_controller(jax.random.PRNGKey(seed), zero_last=False), arrays
                )
                label = f"{problem} — weights {weights.name}"
                name = f"{problems_mod.file_stem(problem)}-{weights.stem}"
        d = diag.diagnose_problem(prob, model=model, n=states, zero_last=zero_last, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e))
    if label:
        d.label = label
    paths = d.save(out_dir, name)
    elapsed = time.perf_counter() - t0
    out.print(d.text(), markup=False, highlight=False)
    if weights is None and not zero_last and prob.zero_last_default:
        console.print(
            "[dim]note: the paper preset starts this controller with a zero last kernel (K = 0, so R = M); "
            "diagnosed with a random last layer instead (--zero-last to use the preset)[/]"
        )
    out.print(
        f"figure: {paths['png']}\nnumbers: {paths['json']}\ndiagnosed in {elapsed:.1f} s", markup=False, highlight=False
    )


@app.command("animate")
def animate_command(
    run_dir: Path = typer.Argument(..., help="a run folder (config.json + weights.npz)"),
    states: int = typer.Option(4, help="number of test states to roll out"),
    out_file: Path | None = typer.Option(
        None, "--out", "-o", help="output .gif or .mp4 (default RUN_DIR/animation.gif)"
    ),
    fps: float | None = typer.Option(None, help="frames per second (default: a ~4 s clip, 2…25 fps)"),
    stride: int | None = typer.Option(None, help="draw every k-th step (default ceil(T/100)); frames = ceil(T/k) + 1"),
    components: str | None = typer.Option(
        None,
        help="problems drawn as state entries against the step (your own, "
        "the toys): which entries, e.g. 8-15 or 0,3,5 (default: all, "
        "up to 24)",
    ),
):
    """Roll out a trained controller on a few test states and write a GIF or MP4."""
    if states < 1:
        raise fail(f"--states {states}: must be ≥ 1")
    if fps is not None and not fps > 0:
        raise fail(f"--fps {fps}: must be > 0")
    if stride is not None and stride < 1:
        raise fail(f"--stride {stride}: must be ≥ 1")
    if out_file is not None and out_file.suffix.lower() not in (".gif", ".mp4"):
        raise fail(f"--out {out_file}: must end in .gif or .mp4")
    check_out_file("--out", out_file)
    setup_jax()
    from rich.markup import escape

    from ..analysis.animate import PictureNote, animate

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", PictureNote)
            path = animate(run_dir, out=out_file, states=states, fps=fps, stride=stride, components=components)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise fail(str(e).replace("components=", "--components ", 1))
    for note in notes:
        if issubclass(note.category, PictureNote):
            console.print(f"[yellow]note[/]: {escape(str(note.message))}", highlight=False)
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    out.print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", markup=False, highlight=False)
