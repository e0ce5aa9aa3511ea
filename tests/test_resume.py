"""Nothing lost, nothing computed twice: checkpoints and resume, claims on runs,
faults injected at random moments (SIGINT, SIGKILL), two sweeps on one folder."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest

from conftest import overflowing_linear
from stablebptt import problems
from stablebptt.experiments import leases
from stablebptt.experiments import run as R
from stablebptt.training.config import RunConfig, run_id
from stablebptt.training.runner import Checkpoint, sigint_deferred, train


def same_runs(a, b):
    """Two TrainResults equal bit for bit (all but the wall times)."""
    assert a.initial == b.initial and a.diverged_epoch == b.diverged_epoch
    for k in a.history:
        if k != "wall_s":
            assert a.history[k] == b.history[k], k
    for x, y in zip(
        jax.tree_util.tree_leaves(eqx.filter(a.model, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(eqx.filter(b.model, eqx.is_inexact_array)),
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_an_interrupted_training_continues_bit_for_bit(tmp_path, batching):
    """Interrupted after epoch 4 (the callback raises KeyboardInterrupt as Ctrl-C would), the
    same call with the same checkpoint continues at epoch 5 and ends with the numbers of an
    uninterrupted training; a diverging run's stop survives the interruption."""
    prob = problems.get("cartpole", steps=10)
    cfg = RunConfig(
        problem="cartpole", problem_params={"steps": 10}, mode="C", epochs=7, n_train=32, n_test=16, data="seeded"
    )
    ref = train(prob, cfg, [0, 1], batching=batching)
    ck = Checkpoint(tmp_path / "c.npz", every_s=0)

    def stop(e, rows):
        if e == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(prob, cfg, [0, 1], batching=batching, checkpoint=ck, on_epoch=stop)
    got = train(prob, cfg, [0, 1], batching=batching, checkpoint=ck)
    assert got[0].ran["resumed_from_epoch"] == 4
    for a, b in zip(ref, got):
        same_runs(a, b)
    # another run's checkpoint is refused with a clear error
    other = cfg.model_copy(update={"mode": "R"})
    with pytest.raises(ValueError, match="belongs to other runs"):
        train(prob, other, [0, 1], batching=batching, checkpoint=ck)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_strategy_that_ran(tmp_path, monkeypatch):
    """The checkpoint holds the backward strategy; the resumed run uses it without measuring,
    even where a new measurement (an empty decision cache) could pick another one."""
    from stablebptt.core import choose

    prob = problems.get("cartpole", steps=6)
    cfg = RunConfig(problem="cartpole", problem_params={"steps": 6}, mode="C", epochs=3, n_train=16, n_test=8)
    ck = Checkpoint(tmp_path / "c.npz", every_s=0)

    def stop(e, rows):
        if e == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(prob, cfg, 0, checkpoint=ck, on_epoch=stop)
    with np.load(ck.path) as f:
        saved = json.loads(str(f["meta"]))["backward"]
    monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(tmp_path / "empty-cache"))
    choose.forget()  # as in a new process
    (got,) = train(prob, cfg, 0, checkpoint=ck)
    assert got.ran["resumed_from_epoch"] == 2 and got.ran["backward_choice"]["from_checkpoint"]
    assert got.ran["backward"] == repr(R_strategy(saved))
    assert not (tmp_path / "empty-cache").exists()  # nothing was measured


def R_strategy(spec):
    from stablebptt.training.runner import strategy_from_spec

    return strategy_from_spec(spec)


@pytest.fixture
def default_sigint():
    """SIGINT at Python's default (KeyboardInterrupt) for the test, the previous handler after it
    (a suite started in the background by a non-interactive shell inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_file_write_waits_for_its_end(default_sigint):
    """Ctrl-C inside :func:`sigint_deferred` lets the block finish (the file complete, the code
    after it run) and only then raises KeyboardInterrupt; the handler is restored after it."""
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered here
            finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with sigint_deferred():  # no signal: nothing raised
        finished.append(True)
    assert finished == [True, True]


def test_ctrl_c_while_a_checkpoint_is_written_leaves_it_whole(tmp_path, monkeypatch, default_sigint):
    """Ctrl-C arriving while the checkpoint of epoch 3 is being written (here: sent just before
    ``np.savez``) ends training with KeyboardInterrupt only after that checkpoint is complete,
    and the next call continues from epoch 3 to the uninterrupted numbers. Without the deferral
    the write was cut off (or np.savez's zip writer turned the interrupt into a ValueError)."""
    prob = problems.get("cartpole", steps=10)
    cfg = RunConfig(
        problem="cartpole", problem_params={"steps": 10}, mode="C", epochs=5, n_train=32, n_test=16, data="seeded"
    )
    ref = train(prob, cfg, [0])
    ck = Checkpoint(tmp_path / "c.npz", every_s=0)
    savez, epochs = np.savez, []

    def interrupted_savez(*args, **kwargs):
        epochs.append(len(epochs) + 1)
        if len(epochs) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        train(prob, cfg, [0], checkpoint=ck)
    monkeypatch.setattr(np, "savez", savez)
    with np.load(ck.path) as f:
        assert json.loads(str(f["meta"]))["epoch"] == 3
    got = train(prob, cfg, [0], checkpoint=ck)
    assert got[0].ran["resumed_from_epoch"] == 3
    same_runs(ref[0], got[0])


def test_divergence_survives_a_resume(tmp_path):
    """Two lanes: lr 0.3 overflows in epoch 4 (the float64 reference_divergence_epoch), lr 0.01 trains
    on; interrupted after epoch 6 and resumed, both end as without the interruption."""
    prob, bad = overflowing_linear(epochs=9)
    lanes = [bad, overflowing_linear(epochs=9, lr=0.01)[1]]
    ref = train(prob, lanes[0], [0, 0], lane_configs=lanes)
    ck = Checkpoint(tmp_path / "c.npz", every_s=0)

    def stop(e, rows):
        if e == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(prob, lanes[0], [0, 0], lane_configs=lanes, checkpoint=ck, on_epoch=stop)
    got = train(prob, lanes[0], [0, 0], lane_configs=lanes, checkpoint=ck)
    assert ref[0].diverged_epoch == got[0].diverged_epoch == 4 and not got[1].diverged
    for a, b in zip(ref, got):
        same_runs(a, b)


@pytest.mark.slow
def test_the_command_says_it_resumed_and_counts_every_sessions_training_time(tmp_path, monkeypatch):
    """A run interrupted after epoch 4 — its first session slept 0.5 s after each of epochs 1-3,
    inside the training time — and continued by `stablebptt train`: the command says where it
    resumed, and result.json's train_s covers both sessions."""
    import shlex

    from typer.testing import CliRunner

    from stablebptt.cli.app import app, command_for

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = RunConfig(problem="cartpole", problem_params={"steps": 6}, mode="C", epochs=6, n_train=16, n_test=8)

    def slow_then_stop(e, rows):
        if e == 4:
            raise KeyboardInterrupt
        time.sleep(0.5)

    with pytest.raises(KeyboardInterrupt):
        R.run(cfg, 0, "runs", on_epoch=slow_then_stop, checkpoint_seconds=0)
    res = CliRunner().invoke(app, shlex.split(command_for(cfg, 0, Path("runs")))[1:])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "resuming: epochs 1-4 of 6 are saved in" in text and "resumed from epoch 4 of 6" in text
    result = json.loads((Path("runs") / run_id(cfg, 0) / "result.json").read_text())
    assert result["epochs_done"] == 6 and result["train_s"] >= 1.5


@pytest.mark.slow
def test_a_run_from_initial_weights_says_so_in_its_summary(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stablebptt.cli.app import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["train", "cartpole", "--param", "steps=6", "--epochs", "1", "--n-train", "16", "--n-test", "8"]
    first = CliRunner().invoke(app, [*args, "--out", "runs"])
    assert first.exit_code == 0 and "│ untrained" in first.output, first.output
    (folder,) = [p for p in Path("runs").iterdir() if (p / "result.json").is_file()]
    res = CliRunner().invoke(app, [*args, "--init-weights", str(folder), "--out", "next"])
    assert res.exit_code == 0, res.output
    assert f"initial weights ({folder})" in res.output and "untrained" not in res.output


# ------------------------------------------------------------------ claims
def test_a_live_claim_is_respected_and_a_dead_or_stale_one_taken_over(tmp_path, monkeypatch):
    folder = tmp_path / "p"
    mine = leases.Lease(folder).acquire()
    with pytest.raises(leases.Claimed, match=f"pid {os.getpid()}"):
        leases.Lease(folder).acquire()  # this (live) process holds it
    mine.release()
    assert not (folder / leases.LEASE_FILE).exists()
    # a dead owner on this host: taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / leases.LEASE_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "x"}))
    leases.Lease(folder).acquire().release()
    # another host: only a stale heartbeat lets it go
    (folder / leases.LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    with pytest.raises(leases.Claimed, match="elsewhere"):
        leases.Lease(folder).acquire()
    old = time.time() - leases.LEASE_STALE_S - 5
    os.utime(folder / leases.LEASE_FILE, (old, old))
    taken = leases.Lease(folder).acquire()
    assert json.loads((folder / leases.LEASE_FILE).read_text())["token"] == taken.token


CLAIM_RACE = r"""
import sys, time
from stablebptt.experiments import leases
t0 = float(sys.argv[2])
while time.time() < t0:
    pass
try:
    leases.Lease(sys.argv[1]).acquire()
    print("got", flush=True)
    time.sleep(1.0)
except leases.Claimed:
    print("claimed", flush=True)
"""


@pytest.mark.slow
def test_processes_racing_for_an_abandoned_claim_get_it_once(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / leases.LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "z"}))
    old = time.time() - leases.LEASE_STALE_S - 5
    os.utime(folder / leases.LEASE_FILE, (old, old))
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIM_RACE, str(folder), str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["claimed"] * 3 + ["got"], outs


# ------------------------------------------------------------------ the command line, killed
TRAIN = [
    "train",
    "cartpole",
    "--param",
    "steps=10",
    "--epochs",
    "300",
    "--n-train",
    "32",
    "--n-test",
    "16",
    "--checkpoint-seconds",
    "0",
]


def cli(args, **kw):
    return subprocess.Popen([sys.executable, "-c", "from stablebptt.cli import app; app()", *args], **kw)


def checkpoint_epoch(out: Path) -> int:
    for ck in out.glob(".partial/*/checkpoint.npz"):
        try:
            with np.load(ck) as f:
                return json.loads(str(f["meta"]))["epoch"]
        except (OSError, ValueError, KeyError, EOFError):
            pass
    return 0


def interrupt_at(out: Path, sig, epoch: int, env) -> subprocess.CompletedProcess:
    """Start TRAIN in ``out`` and send ``sig`` once its checkpoint has reached ``epoch``. The
    child starts with Ctrl-C's default action, as in a terminal: a test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and the run would finish."""
    proc = cli(
        [*TRAIN, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while checkpoint_epoch(out) < epoch and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before its checkpoint reached epoch {epoch}: nothing to interrupt"
    proc.send_signal(sig)
    text = proc.communicate(timeout=120)[0]
    return subprocess.CompletedProcess(proc.args, proc.returncode, text)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    env = dict(os.environ, STABLEBPTT_CACHE_DIR=str(out / "cache"))
    assert cli([*TRAIN, "--out", str(out)], env=env).wait(timeout=600) == 0
    (folder,) = [p for p in out.iterdir() if (p / "result.json").is_file()]
    return folder, env


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_a_killed_train_command_continues_to_the_uninterrupted_numbers(tmp_path, uninterrupted, sig):
    """`stablebptt train` interrupted at a random moment after some checkpoint (Ctrl-C: one
    line and exit code 130; SIGKILL: no warning at all) continues when run again and ends with
    the uninterrupted run's rows and weights, bit for bit (evaluation overlapped on a second
    core, as the command runs it)."""
    ref, env = uninterrupted
    at = random.Random(int(sig)).randint(2, 40)
    res = interrupt_at(tmp_path, sig, at, env)
    if sig == signal.SIGINT:
        assert res.returncode == 130, res.stdout[-2000:]
        assert "interrupted: epochs 1-" in res.stdout and "run the same command to continue" in res.stdout
        assert "Traceback" not in res.stdout
    else:
        assert res.returncode == -signal.SIGKILL
    assert not any(p.is_dir() and (p / "result.json").exists() for p in tmp_path.iterdir())
    assert cli([*TRAIN, "--out", str(tmp_path)], env=env).wait(timeout=600) == 0
    folder = tmp_path / ref.name
    assert json.loads((folder / "manifest.json").read_text())["ran"]["resumed_from_epoch"] >= at
    cols = ["epoch", "loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree"]
    pd.testing.assert_frame_equal(pd.read_csv(folder / "metrics.csv")[cols], pd.read_csv(ref / "metrics.csv")[cols])
    with np.load(folder / "weights.npz") as a, np.load(ref / "weights.npz") as b:
        assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not (tmp_path / ".partial").exists()


# ------------------------------------------------------------------ sweeps
def sweep_spec(epochs=30):
    return {
        "name": "faults",
        "seeds": 2,
        "experiment": [
            {
                "problem": "cartpole",
                "problem_params": {"steps": 8},
                "modes": ["R", "C"],
                "clips": ["none", "value"],
                "config": {"epochs": epochs, "n_train": 16, "n_test": 8},
            }
        ],
    }


def sweep_cli(root, spec_file, *extra):
    return cli(
        ["sweep", str(spec_file), "--out", str(root), "--executor", "serial", "--checkpoint-seconds", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished_metrics(root):
    cols = ["epoch", "loss", "train_loss", "test_loss", "update_norm"]
    return {p.name: pd.read_csv(p / "metrics.csv")[cols] for p in Path(root).iterdir() if (p / "result.json").is_file()}


@pytest.mark.slow
def test_two_sweeps_on_one_folder_compute_each_run_once(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(sweep_spec(epochs=10)))
    spec_toml = tmp_path / "s.toml"
    import tomllib  # noqa: F401 - the CLI reads TOML; write the same spec as TOML

    spec_toml.write_text(
        'name = "faults"\nseeds = 2\n[[experiment]]\nproblem = "cartpole"\n'
        'problem_params = { steps = 8 }\nmodes = ["R", "C"]\nclips = ["none", "value"]\n'
        "[experiment.config]\nepochs = 10\nn_train = 16\nn_test = 8\n"
    )
    a, b = sweep_cli(tmp_path / "sw", spec_toml), sweep_cli(tmp_path / "sw", spec_toml)
    outs = [p.communicate(timeout=600)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    computed = [int(o.split(" computed")[0].split()[-1]) for o in outs]
    assert sum(computed) == 8, outs  # every job once; the other sweep skipped it or found it claimed
    assert len(finished_metrics(tmp_path / "sw")) == 8


@pytest.mark.slow
def test_a_sweep_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path):
    """SIGKILL the sweep (serial executor: the worker is the process) at three random moments,
    each after a checkpoint; the sweep run again each time; finally every run equals the
    uninterrupted sweep's, none is missing and none was computed twice."""
    spec_toml = tmp_path / "s.toml"
    spec_toml.write_text(
        'name = "faults"\nseeds = 2\n[[experiment]]\nproblem = "cartpole"\n'
        'problem_params = { steps = 8 }\nmodes = ["R", "C"]\nclips = ["none", "value"]\n'
        "[experiment.config]\nepochs = 30\nn_train = 16\nn_test = 8\n"
    )
    ref = tmp_path / "ref"
    plain = sweep_cli(ref, spec_toml)
    assert plain.wait(timeout=900) == 0
    root = tmp_path / "sw"
    rng = random.Random(19)
    for _ in range(3):
        proc = sweep_cli(root, spec_toml)
        target = rng.randint(1, 25)
        deadline = time.time() + 300
        while checkpoint_epoch(root) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = sweep_cli(root, spec_toml)
    out = final.communicate(timeout=900)[0]
    assert final.returncode == 0, out
    want, got = finished_metrics(ref), finished_metrics(root)
    assert set(got) == set(want) and len(got) == 8
    resumed = [json.loads((root / k / "manifest.json").read_text())["ran"].get("resumed_from_epoch") for k in got]
    assert any(resumed), "no run was interrupted mid-training"
    for k in want:
        pd.testing.assert_frame_equal(got[k], want[k])
    assert not (root / ".partial").exists() and not list(root.glob(".tmp-*"))


# ------------------------------------------------------------------ leftovers of killed processes
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_progress_left_by_a_kill_after_the_results_is_removed(tmp_path):
    """A process killed between writing its results and removing its progress folder leaves
    ``.partial/<id>`` with a dead owner's claim: the next run of the same config (which has
    nothing to compute) removes it; a group's folder goes once all its runs have finished, and
    a folder claimed by a live process, or with an unfinished run, stays."""
    import socket

    cfg = RunConfig(problem="cartpole", problem_params={"steps": 4}, epochs=2, n_train=8, n_test=8)
    ids = [run_id(cfg, s) for s in range(3)]
    for i in ids[:2]:  # two finished runs (only result.json decides "finished")
        (tmp_path / i).mkdir()
        (tmp_path / i / "result.json").write_text("{}")
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "start": None, "token": "x", "since": "then"}

    def leftover(names, owner=dead):
        d = R.partial_folder(tmp_path, names)
        d.mkdir(parents=True)
        for n in names:
            (d / f"{n}.metrics.csv").write_text("epoch\n1\n")
        (d / leases.LEASE_FILE).write_text(json.dumps(owner))
        return d

    single = leftover([ids[0]])
    assert R.run(cfg, 0, tmp_path) == tmp_path / ids[0]  # nothing to compute ...
    assert not single.exists()  # ... and the leftover is gone
    group, unfinished = leftover(ids[:2]), leftover([ids[1], ids[2]])
    live = leftover([ids[1]], owner=dict(dead, pid=os.getpid(), start=leases.proc_start(os.getpid())))
    assert R.clean_finished_partials(tmp_path) == 1
    assert not group.exists() and unfinished.exists() and live.exists()


def test_only_temp_folders_of_dead_writers_are_removed(tmp_path):
    import socket

    host = socket.gethostname()
    dead = tmp_path / f".tmp-aaaa-0123abcd-{_dead_pid()}@{host}"
    mine = tmp_path / f".tmp-bbbb-0123abcd-{os.getpid()}@{host}"
    elsewhere_new = tmp_path / ".tmp-cccc-0123abcd-1@another-host"
    unnamed_old = tmp_path / ".tmp-dddd-0123abcd"
    for d in (dead, mine, elsewhere_new, unnamed_old):
        d.mkdir()
    os.utime(unnamed_old, (time.time() - 2 * R.TEMP_STALE_S,) * 2)
    assert R.clean_stale_temps(tmp_path) == 2
    assert not dead.exists() and not unnamed_old.exists() and mine.exists() and elsewhere_new.exists()


def test_a_sweep_says_which_runs_it_resumed(tmp_path):
    """A run interrupted inside run() and finished by a sweep: its result.json says from which
    epoch it resumed, and the sweep's report counts it as resumed."""
    from stablebptt.experiments import sweep

    spec = sweep.load_spec(
        {
            "name": "r",
            "seeds": 1,
            "experiment": [
                {
                    "problem": "linear",
                    "level": {"theta0": [-0.5]},
                    "modes": ["C"],
                    "clips": ["none"],
                    "optimizers": [{"optimizer": "adam", "lr": 0.01}],
                    "config": {"epochs": 4},
                }
            ],
        }
    )
    ((cfg, seed),) = sweep.expand(spec)

    def stop(e, rows):
        if e == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        R.run(cfg, seed, tmp_path, on_epoch=stop, checkpoint_seconds=0)
    report = sweep.run_sweep(spec, tmp_path, executor="serial")
    assert (report.computed, report.resumed) == (1, 1)
    assert R.read_result(tmp_path / run_id(cfg, seed))["resumed_from_epoch"] == 2
