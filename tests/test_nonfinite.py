"""A simulator that returns NaN or Inf is named: the untrained controller's non-finite loss stops
training with one line saying at which step the rollout first went non-finite (ValueError in
Python, ``error: …`` and exit code 2 on the command line); old records of such runs show as
diverged in ``results`` and as a note in ``plot``, not as ``nan ± 0`` and empty axes."""

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from typer.testing import CliRunner

from stablebptt import problems
from stablebptt.analysis import plots, results
from stablebptt.cli.app import app
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train

matplotlib.use("Agg")
runner = CliRunner()

#: a point mass with a clock t; from step AT on, NaN ("nans") or Inf ("infs") is added to the
#: position, or the loss takes the log of a negative number ("loss")
BLOWUP = textwrap.dedent("""
    import jax.numpy as jnp
    import numpy as np
    from stablebptt import TrajectoryLoss
    from stablebptt.problems.controllers import MLP
    from stablebptt.problems import Problem

    PARAMS = {"blow": ("none", "nans | infs | loss | none"), "at": (3, "first bad step"), "steps": (6, "horizon")}

    def make(blow="none", at=3, steps=6):
        bad = {"nans": jnp.nan, "infs": jnp.inf}.get(blow, 0.0)

        def step(x, c):
            t = x[:, 2] + 1.0
            vel = x[:, 1] + 0.1 * c[:, 0]
            pos = x[:, 0] + 0.1 * vel + jnp.where(t > at - 0.5, bad, 0.0)
            return jnp.stack([pos, vel, t], axis=1)

        def state_loss(x):
            return jnp.mean(x[:, 0] ** 2) + (jnp.log(-1.0 - jnp.mean(x[:, 2] ** 2)) if blow == "loss" else 0.0)

        def sample(seed, n_train, n_test):
            rng = np.random.default_rng(0)
            return tuple(np.concatenate([rng.uniform(-1, 1, (n, 2)), np.zeros((n, 1))], 1).astype(np.float32)
                         for n in (n_train, n_test))

        return Problem(name="blowup", params=dict(blow=blow, at=at, steps=steps), step=step,
                       loss=TrajectoryLoss(state_loss, on="every"), horizon=steps, sample_data=sample,
                       state_shape=(3,), control_shape=(1,), defaults=dict(epochs=2),
                       make_controller=lambda key, zero_last=False: MLP(key, 3, (1,), widths=(8,), zero_last=zero_last))
""")


@pytest.fixture
def blowup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "blowup.py").write_text(BLOWUP)
    return "blowup.py:make"


def cfg(src, **params):
    return RunConfig(problem=src, problem_params=params, epochs=2, n_train=16, n_test=8)


def test_the_command_names_the_step_where_the_simulator_produced_nan(blowup):
    res = runner.invoke(
        app,
        [
            "train",
            blowup,
            "-p",
            "blow=nans",
            "-p",
            "at=4",
            "--epochs",
            "2",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--out",
            "runs",
        ],
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "error: the untrained controller's loss is nan on the training set" in text
    assert "the simulator first produced NaN at step 4 of 6, minibatch 1 of the training set" in text
    assert "diverged" not in text and not list(Path("runs").glob("*/result.json"))


@pytest.mark.slow
def test_python_raises_the_same_line_for_inf_and_for_a_nonfinite_loss(blowup):
    with pytest.raises(
        ValueError,
        match=r"loss is inf on the training set and inf on the test set \(seed 0\), "
        r"nothing was trained: the simulator first produced Inf at step 2 of 6",
    ):
        train(problems.get(blowup, blow="infs", at=2), cfg(blowup, blow="infs", at=2), 0)
    with pytest.raises(ValueError, match="every state and control of the rollout is finite, the loss is not"):
        train(problems.get(blowup, blow="loss"), cfg(blowup, blow="loss"), [0, 1], batching="vmap")
    (ok,) = train(problems.get(blowup), cfg(blowup), 0)  # the same problem without the fault trains
    assert ok.epochs_done == 2 and np.isfinite(ok.initial["train_loss"])


def old_nan_record(root: Path, src: str) -> Path:
    """A run folder as recorded before the check: untrained losses nan, diverged in epoch 1, no rows."""
    from stablebptt.experiments.run import write_result
    from stablebptt.training.runner import TrainResult

    c = cfg(src, blow="nans")
    history = {
        k: [] for k in ("epoch", "loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree", "wall_s")
    }
    model = problems.get(src).make_controller(__import__("jax").random.PRNGKey(0))
    r = TrainResult(0, history, True, 1, {"train_loss": float("nan"), "test_loss": float("nan")}, model, 1.0, 0.1)
    from stablebptt.training.config import run_id

    return write_result(root / run_id(c, 0), c, 0, r)


def test_results_of_a_nan_run_say_it_diverged(blowup):
    old_nan_record(Path("sw"), blowup)
    res = runner.invoke(app, ["results", "sw"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert "nan ± 0" not in text and "nan (diverged;" in text and "non-finite)" in text  # a wrapped cell
    s = results.summary_table("sw")
    assert "nan ± 0" not in s and "nan (diverged; 1/1 runs non-finite)" in s


def test_the_plot_of_a_nan_run_says_there_is_nothing_finite(blowup):
    old_nan_record(Path("sw"), blowup)
    fig = plots.problem_figure(results.collect("sw"), blowup)
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no finite values" in n for n in notes), notes
