"""The command line and the run folder it writes; learning smoke tests on the paper problems;
bad input as one line."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stablebptt import problems
from stablebptt.cli.app import app
from stablebptt.problems import controllers
from stablebptt.training.config import RunConfig, run_id
from stablebptt.training.runner import train

runner = CliRunner()


@pytest.mark.slow
def test_train_cli_writes_a_complete_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    res = runner.invoke(
        app,
        [
            "train",
            "cartpole",
            "--epochs",
            "3",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--poles",
            "2",
            "--clip",
            "value",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert res.exit_code == 0, res.output
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    for f in ("config.json", "metrics.csv", "result.json", "weights.npz", "manifest.json"):
        assert (folder / f).is_file(), f
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["config"]["problem_params"] == {"poles": 2} and cfg["config"]["clip"] == "value"
    m = pd.read_csv(folder / "metrics.csv")
    assert list(m["epoch"]) == [1, 2, 3]
    assert np.all(np.isfinite(m[["loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree"]]))
    man = json.loads((folder / "manifest.json").read_text())
    assert man["versions"]["jax"] and man["device"]["platform"] == "cpu"
    assert man["precision"]["dtype"] == "float32"
    assert man["cli_command"].startswith("stablebptt train cartpole") and "--param poles=2" in man["cli_command"]
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "finished" and result["epochs_done"] == 3
    assert "after 3 epochs" in res.output
    # weights load back into the problem's controller and reproduce the stored test loss
    prob = problems.get("cartpole", poles=2)
    model = controllers.load_weights(prob.make_controller(__import__("jax").random.PRNGKey(9)), folder / "weights.npz")
    from stablebptt import evaluate_loss

    _, test = prob.sample_data("paper", 16, 8)
    loss = float(evaluate_loss(model, test, step=prob.step, loss=prob.loss, horizon=prob.horizon))
    assert loss == pytest.approx(m["test_loss"].iloc[-1], rel=1e-5)
    # a second identical call computes nothing and reuses the folder
    res2 = runner.invoke(
        app,
        [
            "train",
            "cartpole",
            "--epochs",
            "3",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--poles",
            "2",
            "--clip",
            "value",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert res2.exit_code == 0 and len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_train_cli_eval_every_records_evaluated_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    res = runner.invoke(
        app,
        [
            "train",
            "cartpole",
            "--epochs",
            "5",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--eval-every",
            "2",
            "--param",
            "steps=10",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert res.exit_code == 0, res.output
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    m = pd.read_csv(folder / "metrics.csv")
    assert list(m["epoch"]) == [2, 4, 5]
    assert np.all(np.isfinite(m[["loss", "train_loss", "test_loss"]]))
    man = json.loads((folder / "manifest.json").read_text())
    assert "--eval-every 2" in man["cli_command"]


def parse_train_command(command: str):
    """(RunConfig, seed, run folder) that ``stablebptt train …`` builds from ``command``: the
    CLI's own parsing and config construction, as ``--dry-run`` prints them (nothing trains)."""
    import shlex

    argv = shlex.split(command)
    assert argv[:2] == ["stablebptt", "train"], command
    res = runner.invoke(app, [*argv[1:], "--dry-run"])
    assert res.exit_code == 0, f"{command}\n{res.output}"
    got = json.loads(res.stdout)
    return RunConfig(**got["config"]), got["seed"], Path(got["folder"])


REPRODUCED_CONFIGS = {
    "memory budget 1.5 GiB": dict(problem="cartpole", memory_budget=3 * 2**29),
    "memory budget odd bytes": dict(problem="cartpole", memory_budget=123_456_789, checkpoint_every=4),
    "checkpoint none": dict(problem="cartpole", checkpoint_every=None),
    "checkpoint int": dict(problem="cartpole", checkpoint_every=7),
    "checkpoint auto": dict(problem="cartpole", checkpoint_every="auto", epochs=3),
    "schedule": dict(problem="cartpole", problem_params={"poles": 2}, mode=list("RRMMSSNN")),
    "toy sets of 256": dict(problem="toy-field", n_train=256, n_test=256, batch_size=8, lr=0.01),
    "quantum params": dict(problem="quantum", problem_params={"target": 3, "dt": 0.25, "weighting": 7}, mode="M"),
    "zero last on": dict(problem="guidance", zero_last=True, problem_params={"rc": 1.0}),
    "everything else": dict(
        problem="cartpole",
        mode="C",
        combiner="sign_g",
        truncate=3,
        decay=0.9,
        and_mask=0.5,
        optimizer="sgd",
        lr=0.01,
        momentum=0.5,
        clip="norm",
        clip_threshold=0.5,
        batch_size=4,
        epochs=9,
        n_train=32,
        n_test=16,
        data="seeded",
        shuffle=True,
        zero_last=False,
        diagnostics=True,
        eval_every=2,
        backward="autodiff",
        init_weights="WEIGHTS",
    ),
}


@pytest.mark.parametrize("fields", REPRODUCED_CONFIGS.values(), ids=REPRODUCED_CONFIGS.keys())
def test_the_recorded_command_reproduces_the_config(fields, tmp_path):
    from stablebptt.cli.app import command_for

    if fields.get("init_weights") == "WEIGHTS":  # weights of the problem's controller (checked before training)
        shapes = problems.weight_shapes(problems.check_problem(problems.get(fields["problem"]), n_train=0, n_test=0))
        np.savez(tmp_path / "w.npz", **{k: np.zeros(v, np.float32) for k, v in shapes.items()})
        fields = fields | {"init_weights": str(tmp_path / "w.npz")}
    cfg = RunConfig(**fields)
    command = command_for(cfg, 5, tmp_path / "runs")
    got_cfg, got_seed, got_folder = parse_train_command(command)
    assert got_cfg == cfg, command
    assert (got_seed, got_folder) == (5, tmp_path / "runs" / run_id(cfg, 5))
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    "args, msg",
    [
        (["train", "cartpole", "--mode", "Q"], "unknown mode 'Q'"),
        (["train", "cartpole", "--poles", "0"], "poles"),
        (["train", "cartpole", "--rc", "0.1"], "--rc does not apply"),
        (["train", "pendulum"], "unknown problem 'pendulum'"),
        (["train", "quantum", "--target", "0"], "target"),
        (["train", "cartpole", "--clip", "sometimes"], "clip"),
        (["train", "cartpole", "--lr", "-1"], "lr"),
        (["train", "cartpole", "--eval-every", "0"], "eval_every=0"),
    ],
)
def test_cli_errors_name_the_bad_value(args, msg):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert msg in " ".join(res.output.split())


@pytest.mark.slow
def test_problems_command_lists_every_problem():
    res = runner.invoke(app, ["problems"])
    assert res.exit_code == 0
    for name in problems.names():
        assert name in res.output
    assert "poles" in res.output and "rc" in res.output and "weighting" in res.output


@pytest.mark.slow
def test_combined_mode_learns_cartpole_in_a_few_dozen_updates():
    prob = problems.get("cartpole", poles=1)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=3, n_train=128, n_test=64, data="seeded")
    (r,) = train(prob, cfg, 0)  # 3 epochs x 16 updates = 48 updates
    assert not r.diverged
    assert r.history["test_loss"][-1] < 0.9 * r.initial["test_loss"]
    assert r.history["test_loss"][-1] < r.history["test_loss"][0]


@pytest.mark.slow
def test_C_learns_guidance_and_S_gets_a_zero_update():
    prob = problems.get("guidance")
    for mode in "CS":
        cfg = RunConfig(problem="guidance", mode=mode, epochs=2, n_train=128, n_test=32, data="seeded")
        (r,) = train(prob, cfg, 0)
        if mode == "C":
            assert r.history["test_loss"][-1] < r.initial["test_loss"]
        else:  # S gets an exactly zero update at the zero-initialised controller: its one-step credit
            # reaches only driver velocities, the loss sees only evader positions, the penalty is 0 at c = 0
            assert r.history["update_norm"] == [0.0, 0.0]
            assert r.history["test_loss"][-1] == pytest.approx(r.initial["test_loss"])


def _spec(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


BAD_INPUTS = [  # (arguments, with a spec file written first: (name, text) or None, words the line must hold)
    (["train", "cartpole", "--epochs", "0"], None, ["epochs=0", "≥ 1"]),
    (["train", "cartpole", "--epochs", "-3"], None, ["epochs=-3"]),
    (["train", "cartpole", "--init-weights", "/no/such/w.npz"], None, ["/no/such/w.npz", "no such file"]),
    (["train", "cartpole", "--clip", "foo"], None, ["'foo'", "'none', 'value' or 'norm'"]),
    (["train", "cartpole", "--backward", "fast"], None, ["'fast'", "auto, autodiff, batched, per_step"]),
    (["train", "cartpole", "--batch-size", "300"], None, ["batch_size=300", "n_train=256"]),
    (["train", "cartpole", "--param", "polez=2"], None, ["polez", "poles"]),
    (["train", "cartpole", "--data", "mine"], None, ["'mine'", "'paper' or 'seeded'"]),
    (
        ["sweep", "SPEC"],
        ("bad.toml", 'name = "x"\n[[experiment]\nproblem = "linear"\n'),
        ["bad.toml", "not valid TOML"],
    ),
    (["sweep", "SPEC"], ("bad.yaml", "name: [unclosed\n"), ["bad.yaml", "not valid YAML"]),
    (
        ["sweep", "SPEC"],
        ("typo.toml", 'name = "x"\n[[experiment]]\nproblem = "linear"\nmodez = ["R"]\n'),
        ["'modez'", "allowed: clips, config, level, modes"],
    ),
    (
        ["sweep", "SPEC"],
        ("clip.toml", 'name = "x"\n[[experiment]]\nproblem = "linear"\nclips = ["foo"]\n'),
        ["'foo'", "none, value, norm"],
    ),
    (
        ["sweep", "SPEC"],
        ("cfg.toml", 'name = "x"\n[[experiment]]\nproblem = "linear"\n[experiment.config]\nepoch = 3\n'),
        ["'epoch'", "epochs"],
    ),
    (["sweep", "/no/such/spec.toml"], None, ["/no/such/spec.toml"]),
    (["results", "/no/such/folder"], None, ["/no/such/folder"]),
    (["diagnose", "pendulum"], None, ["'pendulum'"]),
]


@pytest.mark.parametrize("args, spec, words", BAD_INPUTS, ids=lambda v: None)
def test_every_bad_input_is_one_line_naming_the_value(tmp_path, args, spec, words):
    """Exit code 2, one line on the terminal, the bad value and what is allowed named, no
    traceback, no pydantic prefix."""
    if spec is not None:
        args = [a if a != "SPEC" else _spec(tmp_path, *spec) for a in args]
    res = runner.invoke(app, args + (["--out", str(tmp_path / "o")] if args[0] in ("train", "sweep") else []))
    text = res.output.strip()
    assert res.exit_code == 2, text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ") and "Traceback" not in text and "Value error," not in text, text
    for w in words:
        assert w in text, (w, text)


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("STABLEBPTT_DEBUG", "0")  # restored after the test (--debug sets it to 1)
    args = ["train", "cartpole", "--mode", "RRM", "--out", "/tmp/unused"]  # a schedule of 3 steps for T = 100
    plain = runner.invoke(app, args)
    assert plain.exit_code == 2 and "3 entries; the horizon is 100" in plain.output
    res = runner.invoke(app, ["--debug", *args])
    assert isinstance(res.exception, ValueError)  # raised with its traceback, not turned into one line


def test_a_finished_run_is_shown_not_recompiled(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    args = [
        "train",
        "cartpole",
        "--epochs",
        "2",
        "--n-train",
        "16",
        "--n-test",
        "8",
        "--param",
        "steps=5",
        "--out",
        str(tmp_path / "runs"),
    ]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already trained" in again.output and "compiling" not in again.output


@pytest.mark.slow
@pytest.mark.parametrize("module", ["stablebptt", "stablebptt.cli"])
def test_python_dash_m_runs_every_command(module):
    """``python -m stablebptt`` and ``python -m stablebptt.cli`` know the commands that live in
    ``stablebptt.cli`` (registered on the package's app, not on a second copy)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "sweep", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Usage" in out.stdout, out.stdout + out.stderr
