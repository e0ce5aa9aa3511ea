"""The command-line application: :data:`app` with ``stablebptt train``, ``evaluate`` and
``problems``, and what every command module shares (option checks, one-line errors, consoles).
The other commands live in the modules beside this one (``*_cmd.py``); each registers its
commands on :data:`app`, and :mod:`stablebptt.cli` imports them all.

The CLI holds no logic: it parses, validates through :class:`~stablebptt.training.config.RunConfig`,
and calls library functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..training.config import QUICK_EPOCHS, RunConfig, describe_errors, run_id

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train controllers through differentiable simulators with stabilised BPTT (Schnell & Thuerey, ICLR 2024).",
)
console = Console(stderr=True)
out = Console()


def setup_jax(cache: bool = True, cpu_devices: int = 1) -> int:
    """Turn on the persistent compilation cache (a second process start reuses compiled
    programs) and ask for ``cpu_devices`` CPU devices (possible only before JAX's backend
    starts). Returns the number of CPU devices JAX has (on a CPU backend; 0 otherwise)."""
    import jax

    if cpu_devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", int(cpu_devices))
        except RuntimeError:  # the backend already started (the CLI called in-process): what it has counts
            pass
    if cache and os.environ.get("STABLEBPTT_NO_CACHE") != "1":
        cache_dir = os.environ.get("STABLEBPTT_CACHE_DIR", str(Path.home() / ".cache" / "stablebptt" / "jax"))
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return len(jax.devices("cpu")) if jax.default_backend() == "cpu" else 0


def fail(msg: str) -> typer.Exit:
    """Print ``error: msg`` on one line (stderr) and return the exit (code 2) to raise."""
    console.print(f"[bold red]error:[/] {' '.join(str(msg).split())}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def _debug() -> bool:
    return os.environ.get("STABLEBPTT_DEBUG") == "1"


def _one_line(e: BaseException) -> str:
    """A bad input as one line: the exception's message (file errors: the path and why)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return describe_errors(e, RunConfig)
    if isinstance(e, FileNotFoundError) and e.filename and not str(e).startswith(str(e.args[0]) if e.args else "~"):
        return f"{e.filename}: no such file or folder"
    return str(e) if str(e) else type(e).__name__


def cli_errors(fn):
    """Wrap a command: bad input (ValueError and its kinds, missing files, a run claimed by
    another process, any exception raised in a user's problem file: named by its file and line)
    becomes one line and exit code 2; Ctrl-C one line and exit code 130. The traceback is
    printed instead with ``--debug`` or ``STABLEBPTT_DEBUG=1``."""
    import functools

    from pydantic import ValidationError

    from ..experiments.leases import Claimed

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            if _debug():
                raise
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130)
        except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, Claimed, ValidationError) as e:
            if _debug():
                raise
            raise fail(_one_line(e))
        except Exception as e:  # raised in a user's problem file: named there, one line
            from ..problems import user_code_error

            err = user_code_error(e)
            if err is None or _debug():
                raise
            raise fail(str(err))

    return wrapper


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks instead of one-line errors")):
    """Train controllers through differentiable simulators with stabilised BPTT (Schnell &
    Thuerey, ICLR 2024)."""
    if debug:
        os.environ["STABLEBPTT_DEBUG"] = "1"


def parse_value(text: str):
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, other -> str."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _int_option(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise fail(f"{name}={text!r}; allowed: an int ≥ 1, 'auto' or 'none'")


def _write_probe(option: str, value, folder: Path, missing: bool) -> None:
    """Fail unless files can be created in ``folder`` (tried: a temporary folder made and removed)."""
    import errno
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".stablebptt-write-test-", dir=folder))
    except OSError as e:
        why = {
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on the device",
            errno.ENOENT: "no files or folders can be created there",
        }.get(e.errno, e.strerror or str(e))  # type: ignore[arg-type]  # errno may be None: get() gives the default
        what = f"cannot create {value} in {folder}" if missing else f"cannot write in {folder}"
        raise fail(f"{option} {value}: {what} ({why}); give a folder you can write to")


def check_out_folder(option: str, value: Path | None) -> None:
    """An output folder option, checked before any work: ``value`` is a writable folder, or one
    that can be created (its nearest existing parent is a writable folder). Fails (exit 2) with
    one line naming the option, the value and what is wrong."""
    if value is None:
        return
    _check_folder(option, value, Path(value))


def _check_folder(option: str, value, p: Path) -> None:
    """:func:`check_out_folder` of folder ``p``, the message naming ``option`` and ``value``."""
    try:
        if p.is_dir():
            return _write_probe(option, value, p, missing=False)
        if p.exists() and p == Path(value):
            raise fail(f"{option} {value}: is a file, not a folder; give a folder (it is created if missing)")
        if p.exists():
            raise fail(f"{option} {value}: {p} is a file, so no file can be created in it; give a path in a folder")
        parent = p.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    except OSError as e:
        raise fail(f"{option} {value}: cannot be checked ({e.strerror or e}); give a folder you can write to")
    if not parent.is_dir():
        raise fail(f"{option} {value}: {parent} is a file, so no folder can be created in it; give a folder path")
    _write_probe(option, value, parent, missing=True)


def check_out_file(option: str, value: Path | None) -> None:
    """An output file option, checked before any work: not a folder, and its folder writable or
    creatable (:func:`check_out_folder`)."""
    if value is None:
        return
    p = Path(value)
    if p.is_dir():
        raise fail(f"{option} {value}: is a folder; give a file name")
    _check_folder(option, value, p.parent)


def _read_weights(option: str, value: Path, what: str = "controller weights") -> dict:
    """The arrays of the .npz file (weights: or run folder) of ``option``; one line naming it otherwise."""
    from ..problems import read_weights

    try:
        return read_weights(value, option, what)
    except ValueError as e:
        raise fail(str(e))


def _typed_param(problem: str, key: str, text: str, default):
    """``-p KEY=VALUE``'s value: a number where the parameter's default is a number, true/false
    where it is a bool; one line naming the parameter and what it takes otherwise."""
    import numbers

    value = parse_value(text)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail(
                f"--param {key}={text!r}: parameter {key} of problem {problem!r} takes true or false "
                f"(default {str(default).lower()})"
            )
    elif (
        isinstance(default, numbers.Real)
        and not isinstance(value, numbers.Real)
        or isinstance(default, numbers.Real)
        and isinstance(value, bool)
    ):
        kind = "an integer" if isinstance(default, numbers.Integral) else "a number"
        raise fail(f"--param {key}={text!r}: parameter {key} of problem {problem!r} takes {kind} (default {default!r})")
    return value


def collect_problem_params(problem: str, given: dict, extra: list[str]) -> dict:
    from .. import problems

    spec = problems.param_spec(problem)
    params = {}
    for k, v in given.items():
        if v is None:
            continue
        if k not in spec:
            raise fail(f"--{k} does not apply to problem {problem!r}; its parameters: {', '.join(spec) or '(none)'}")
        params[k] = v
    for item in extra:
        if "=" not in item:
            raise fail(f"--param {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if k not in spec:
            raise fail(
                f"--param {k}: problem {problem!r} has no such parameter; allowed: {', '.join(spec) or '(none)'}"
            )
        params[k] = _typed_param(problem, k, v, spec[k][0])
    return params


#: RunConfig's defaults: the options of ``stablebptt train`` show and use them
_DEFAULT = {k: f.default for k, f in RunConfig.model_fields.items()}


@app.command()
def train(
    problem: str = typer.Argument(
        "cartpole", help="a problem name (see `stablebptt problems`), FILE.py:FUNCTION or module:FUNCTION"
    ),
    mode: str = typer.Option(
        _DEFAULT["mode"],
        "--mode",
        "-m",
        help="R, M, S, N, C, or a per-step schedule like 'RRMM…' (one letter per step)",
    ),
    clip: str = typer.Option(_DEFAULT["clip"], help="none | value | norm"),
    clip_threshold: float = typer.Option(_DEFAULT["clip_threshold"], help="clipping threshold"),
    optimizer: str = typer.Option(
        _DEFAULT["optimizer"],
        help="adam (Keras form, paper) | adam_optax | sgd | momentum | adagrad | adadelta | rmsprop",
    ),
    lr: float = typer.Option(_DEFAULT["lr"], help="learning rate"),
    momentum: float = typer.Option(_DEFAULT["momentum"], help="momentum for --optimizer momentum"),
    batch_size: int = typer.Option(_DEFAULT["batch_size"], help="minibatch size"),
    epochs: int | None = typer.Option(None, help="epochs (default: a short run per problem; the paper used 1000)"),
    n_train: int | None = typer.Option(None, help="training states (default 256)"),
    n_test: int | None = typer.Option(None, help="test states (default 256)"),
    seed: int = typer.Option(0, help="seed for the initial weights (and the data with --data seeded)"),
    data: str = typer.Option(_DEFAULT["data"], help="paper (the authors' seed-42 data) | seeded"),
    shuffle: bool = typer.Option(_DEFAULT["shuffle"], help="shuffle minibatches each epoch (paper: no)"),
    zero_last: bool | None = typer.Option(
        None,
        "--zero-last/--no-zero-last",
        help="zero-initialise the last kernel (default: the paper preset of the problem)",
    ),
    combiner: str = typer.Option(_DEFAULT["combiner"], help="combiner for C: sign | sign_g"),
    truncate: int = typer.Option(_DEFAULT["truncate"], help="truncated BPTT: stop the state every k steps (0 = off)"),
    decay: float = typer.Option(_DEFAULT["decay"], help="temporal gradient decay α per step (1 = off)"),
    and_mask: float = typer.Option(
        _DEFAULT["and_mask"],
        help="AND-mask across batch members: keep entries whose per-sample signs agree in at least this fraction (0 = off)",
    ),
    diagnostics: bool = typer.Option(
        _DEFAULT["diagnostics"], help="also compute G for cos(M,G) / sign agreement in any mode"
    ),
    checkpoint_every: str = typer.Option(
        _DEFAULT["checkpoint_every"],
        help="remat: checkpoint the unroll every k steps, 'auto' (from --memory-budget) or 'none'",
    ),
    memory_budget: float | None = typer.Option(
        None,
        help="memory budget in GiB for checkpoint_every=auto (default: 512 MiB on CPU, 1/4 of device memory on accelerators; see stablebptt.core.backward.default_memory_budget)",
    ),
    init_weights: Path | None = typer.Option(None, help="start from these weights: an .npz file or a run folder"),
    eval_every: int = typer.Option(
        _DEFAULT["eval_every"], help="evaluate the full train/test sets every k epochs and after the last (paper: 1)"
    ),
    backward: str = typer.Option(
        _DEFAULT["backward"], help="backward strategy: auto | autodiff (the reference) | batched | per_step"
    ),
    overlap_eval: bool | None = typer.Option(
        None,
        "--overlap-eval/--no-overlap-eval",
        help="evaluate on a second CPU core while the next epoch trains (default: on, with two or more cores)",
    ),
    checkpoint_seconds: float = typer.Option(
        30.0, help="seconds between checkpoints (an interrupted run continues from the last)"
    ),
    restart: bool = typer.Option(
        False, "--restart", help="start over: ignore a checkpoint or an earlier result of the same run"
    ),
    tensorboard: Path | None = typer.Option(
        None, help="write the per-epoch metrics as TensorBoard events into this folder"
    ),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o", help="folder that receives the run folder"),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="check the problem and the options, print the run as JSON (its folder, seed and config) and train nothing",
    ),
    poles: int | None = typer.Option(None, help="cartpole: number of poles"),
    drivers: int | None = typer.Option(None, help="guidance: drivers"),
    evaders: int | None = typer.Option(None, help="guidance: evaders"),
    rc: float | None = typer.Option(None, help="guidance: control regulariser"),
    nx: int | None = typer.Option(None, help="quantum: interior grid points"),
    dt: float | None = typer.Option(None, help="time step"),
    steps: int | None = typer.Option(None, help="simulator steps per trajectory"),
    target: float | None = typer.Option(None, help="quantum: target eigenstate (1-based); toy-field: target y"),
    weighting: int | None = typer.Option(None, help="quantum: weighting of c1 (1/3/7/15)"),
    param: list[str] = typer.Option([], "--param", "-p", help="any problem parameter as KEY=VALUE"),
):
    """Train a controller on PROBLEM and write one run folder (config, metrics, weights, manifest)."""
    from pydantic import ValidationError

    from .. import problems as problems_mod

    check_out_folder("--out", out_dir)
    check_out_folder("--tensorboard", tensorboard)
    if not checkpoint_seconds >= 0:
        raise fail(
            f"--checkpoint-seconds {checkpoint_seconds:g}: must be ≥ 0 (seconds between checkpoints; 0: after every epoch)"
        )
    if memory_budget is not None and not memory_budget > 0:
        raise fail(f"--memory-budget {memory_budget:g}: must be > 0 (GiB)")
    problems_mod.param_spec(problem)  # an unknown source: one line naming it and what is allowed
    given = dict(
        poles=poles,
        drivers=drivers,
        evaders=evaders,
        rc=rc,
        nx=nx,
        dt=dt,
        steps=steps,
        target=target,
        weighting=weighting,
    )
    if target is not None and problem == "quantum":
        given["target"] = int(target)
    pparams = collect_problem_params(problem, given, param)
    try:
        prob = problems_mod.get(problem, **pparams)
    except (ValueError, TypeError) as e:
        raise fail(str(e))
    d = dict(prob.defaults)
    try:
        cfg = RunConfig(
            problem=problem,
            problem_params=pparams,
            mode=mode,
            combiner=combiner,
            truncate=truncate,
            decay=decay,
            and_mask=and_mask,
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            clip=clip,  # type: ignore[arg-type]  # a str that RunConfig validates (ValidationError below)
            clip_threshold=clip_threshold,
            batch_size=batch_size,
            epochs=QUICK_EPOCHS.get(problem, d.get("epochs", 10)) if epochs is None else epochs,
            n_train=d.get("n_train", 256) if n_train is None else n_train,
            n_test=d.get("n_test", 256) if n_test is None else n_test,
            data=data,  # type: ignore[arg-type]  # a str that RunConfig validates (ValidationError below)
            shuffle=shuffle,
            zero_last=zero_last,
            diagnostics=diagnostics,
            checkpoint_every=None
            if checkpoint_every.lower() == "none"
            else "auto"
            if checkpoint_every.lower() == "auto"
            else _int_option("--checkpoint-every", checkpoint_every),
            memory_budget=int(memory_budget * 2**30) if memory_budget else None,
            init_weights=str(init_weights) if init_weights else None,
            eval_every=eval_every,
            backward=backward,
        )
    except ValidationError as e:
        raise fail(describe_errors(e, RunConfig))
    weights = _read_weights("--init-weights", init_weights) if cfg.init_weights and init_weights is not None else None

    from ..experiments.run import clean_finished_partials, code_change, is_done

    folder = Path(out_dir) / run_id(cfg, seed)
    if dry_run:
        problems_mod.check_for_training(prob, cfg, seed, weights=weights, weights_label="--init-weights")
        typer.echo(json.dumps({"folder": str(folder), "seed": seed, "config": cfg.to_dict()}))
        return
    if is_done(folder) and not restart:
        change = code_change(folder, cfg)
        if change:
            raise fail(
                f"{change}; its result is not shown: --restart recomputes it with the new code, or choose another --out"
            )
        clean_finished_partials(out_dir)
        console.print(
            f"already trained: {folder} (the same command ran before; its result is shown, nothing "
            "was recomputed; --restart trains it again)",
            soft_wrap=True,
        )
        _print_summary(folder)
        return
    if is_done(folder):
        shutil.rmtree(folder)

    want_overlap = (os.cpu_count() or 1) >= 2 if overlap_eval is None else overlap_eval
    cpus = setup_jax(cpu_devices=2 if want_overlap else 1)
    if want_overlap and cpus < 2:
        if overlap_eval:
            raise fail(
                "--overlap-eval needs two CPU devices, but JAX had already started with "
                f"{cpus or 'no'} CPU device(s) in this process"
            )
        want_overlap = False
    # the problem's data, controller, step and loss against its contract, and the weights against
    # the controller: one line naming the user's file and line, before anything compiles
    problems_mod.check_for_training(prob, cfg, seed, weights=weights, weights_label="--init-weights")
    console.print(
        f"[bold]{problem}[/] {pparams or ''} mode={cfg.mode_label()} clip={cfg.clip} "
        f"opt={cfg.optimizer} lr={cfg.lr:g} epochs={cfg.epochs} seed={seed} data={cfg.data}"
    )
    from ..experiments.run import partial_folder, train_runs

    saved = 0 if restart else checkpoint_epoch(partial_folder(out_dir, [folder.name]) / "checkpoint.npz")
    if saved:
        console.print(
            f"resuming: epochs 1-{saved} of {cfg.epochs} are saved in {partial_folder(out_dir, [folder.name])}",
            soft_wrap=True,
        )
    try:
        with _progress_bar(cfg.epochs, saved, tensorboard) as on_epoch:
            train_runs(
                [(cfg, seed)],
                out_dir,
                on_epoch=on_epoch,
                overlap_eval=want_overlap,
                extra_manifest={"cli_command": command_for(cfg, seed, out_dir)},
                checkpoint_seconds=checkpoint_seconds,
                restart=restart,
            )
    except KeyboardInterrupt:
        raise fail_interrupted(partial_folder(out_dir, [folder.name]) / "checkpoint.npz", cfg.epochs)
    _print_summary(folder)


@contextlib.contextmanager
def _progress_bar(epochs: int, saved: int, tensorboard: Path | None):
    """A progress bar over ``epochs`` (``saved`` of them done) and, with ``tensorboard``, event
    files; yields the ``on_epoch(epoch, rows)`` callback that feeds both. The bar stops before an
    exception (Ctrl-C) leaves."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("compiling…", total=epochs, info="", completed=saved)
        board = None
        if tensorboard is not None:
            from ..experiments.tracking import TensorBoard

            board = TensorBoard(tensorboard)

        def on_epoch(e, rows):
            if board is not None:
                board(e, rows)
            row = rows[0]
            if row is None:
                info = "diverged"
            elif "test_loss" in row:
                info = f"train {row['train_loss']:.4g}  test {row['test_loss']:.4g}"
            else:  # an epoch without evaluation (--eval-every)
                info = f"minibatch loss {row['loss']:.4g}"
            progress.update(task, completed=e, description="training", info=info)

        try:
            yield on_epoch
        except BaseException:
            progress.stop()
            raise
        if board is not None:
            board.close()
        progress.update(task, completed=epochs)


def checkpoint_epoch(checkpoint: Path) -> int:
    """The last epoch saved in a checkpoint file (0: no file, or one that cannot be read)."""

    import numpy as np

    try:
        with np.load(checkpoint) as f:
            return int(json.loads(str(f["meta"]))["epoch"])
    except (OSError, ValueError, KeyError, EOFError):
        return 0


def fail_interrupted(checkpoint: Path, epochs: int) -> typer.Exit:
    """The one-line message of an interrupted ``stablebptt train`` (exit code 130)."""
    done = checkpoint_epoch(checkpoint)
    if done:
        console.print(
            f"[yellow]interrupted[/]: epochs 1-{done} of {epochs} are saved in {checkpoint.parent}; run the "
            "same command to continue (--restart to start over)",
            soft_wrap=True,
        )
    else:
        console.print("[yellow]interrupted[/] before the first checkpoint; nothing to continue from", soft_wrap=True)
    return typer.Exit(code=130)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    data: str = typer.Option("test", help="test | train (the run's own sets) | FILE.npz (its array of states)"),
    per_state: Path | None = typer.Option(None, help="write each state's loss to this CSV"),
):
    """The trained controller's loss on the run's test or training set, or on states from a file."""
    import numpy as np

    from .. import problems as problems_mod
    from ..experiments.run import load_run

    check_out_file("--per-state", per_state)
    arrays = None
    if data not in ("train", "test"):
        if not Path(data).is_file():
            raise fail(f"--data {data!r}: allowed: test, train, or an existing .npz file of states")
        arrays = _read_weights("--data", Path(data), "states")  # named arrays, read without pickles
        if len(arrays) != 1:
            raise fail(f"--data {data}: holds arrays {sorted(arrays)}; give a file with one array of states")
    r = load_run(run_dir)
    for note in r.notes:
        console.print(f"note: {note}")
    problems_mod.check_problem(r.problem, n_train=0, n_test=0, model=r.model)  # controller, step, loss
    if arrays is None:
        states = problems_mod.check_states(r.problem, r.data(data), what=f"{data} states")
    else:
        states = problems_mod.check_states(
            r.problem, next(iter(arrays.values())), what="states", where=f"--data {data}: the file holds"
        )
    loss, each = r.evaluate(states)
    out.print(
        f"{r.config.problem} {r.config.mode_label()} seed {r.seed}: loss on {data} ({len(each)} states) = {loss:.6g}"
    )
    if per_state is not None:
        per_state.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(
            per_state,
            np.stack([np.arange(len(each)), each], 1),
            delimiter=",",
            header="state,loss",
            comments="",
            fmt=["%d", "%.9g"],
        )
        out.print(f"per-state losses: {per_state}")


def command_for(cfg, seed: int, out_dir: Path) -> str:
    """A ``stablebptt train`` command line that reproduces (cfg, seed): parsed by :func:`train`,
    it builds a RunConfig equal to ``cfg``.

    Options whose value is the RunConfig default are left out, except ``--mode`` and those
    whose CLI default depends on the problem (``--epochs``, ``--n-train``, ``--n-test``).
    ``--memory-budget`` is written in GiB (the option's unit; the config holds bytes) as the
    float that converts back to the same number of bytes; ``checkpoint_every=None`` is
    ``--checkpoint-every none``."""
    import shlex

    default = RunConfig(problem=cfg.problem)
    always = ("mode", "epochs", "n_train", "n_test")
    parts = ["stablebptt", "train", cfg.problem]
    for k, v in cfg.to_dict().items():
        if k in ("problem", "problem_params") or v == getattr(default, k) and k not in always:
            continue
        flag = k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(f"--{flag}" if v else f"--no-{flag}")
            continue
        if k == "checkpoint_every" and v is None:
            v = "none"
        elif k == "memory_budget":
            v = repr(v / 2**30)  # exact: the CLI multiplies by 2**30 again
        elif isinstance(v, list):
            v = "".join(v)
        parts += [f"--{flag}", str(v)]
    for k, v in cfg.problem_params.items():
        parts += ["--param", f"{k}={v}"]
    parts += ["--seed", str(seed), "--out", str(out_dir)]
    return shlex.join(parts)


def _print_summary(folder: Path) -> None:
    """The run's losses before and after training (the first row: ``untrained``, or ``initial
    weights (FILE)`` for a run started from ``--init-weights``), its times (training summed
    over the sessions of a resumed run) and, for a resumed run, the epoch it resumed from."""
    from ..experiments.run import read_result

    res = read_result(folder)
    config = json.loads((folder / "config.json").read_text())["config"]
    ran: dict[str, Any] = {}
    if (folder / "manifest.json").is_file():
        ran = json.loads((folder / "manifest.json").read_text()).get("ran") or {}
    t = Table(title=f"run {res['run_id']}  ({res['status']})")
    for col in ("", "train loss", "test loss"):
        t.add_column(col)
    first = f"initial weights ({config['init_weights']})" if config.get("init_weights") else "untrained"
    t.add_row(first, f"{res['initial']['train_loss']:.5g}", f"{res['initial']['test_loss']:.5g}")
    fin = res["final"]
    if fin.get("test_loss") is not None:
        t.add_row(f"after {res['epochs_done']} epochs", f"{fin['train_loss']:.5g}", f"{fin['test_loss']:.5g}")
    out.print(t)
    extra = f"compile {res['compile_s']:.1f}s, train {res['train_s']:.1f}s"
    if ran.get("resumed_from_epoch"):
        extra += f" (all sessions); resumed from epoch {ran['resumed_from_epoch']} of {config['epochs']}"
    if res["status"] == "diverged":
        extra += f"; diverged in epoch {res['diverged_epoch']}"
    out.print(f"{extra}\nresults: {folder}")


@app.command("problems")
def list_problems(
    sources: list[str] = typer.Argument(
        None, help="problems to show (default: the built-in, registered and installed ones), also FILE.py:FUNCTION"
    ),
):
    """List problems and their parameters."""
    from .. import problems as problems_mod

    t = Table(title="problems")
    t.add_column("name")
    t.add_column("parameters (default)")
    t.add_column("description")
    for name in sources or problems_mod.names():
        try:
            spec = problems_mod.param_spec(name)
            desc = problems_mod.get(name).description
        except Exception as e:  # a broken problem module must not hide the others
            if sources:
                raise
            spec, desc = {}, f"(unavailable: {e})"
        t.add_row(name, "\n".join(f"{k} ({v[0]!r}): {v[1]}" for k, v in spec.items()) or "-", desc)
    out.print(t)
