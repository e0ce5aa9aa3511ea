"""Bring your own simulator: a problem written in the test, outside the library, used
everywhere a problem is accepted; loading and evaluating a run; TensorBoard events."""

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import pointmass_source
from stablebptt import problems
from stablebptt.analysis import results
from stablebptt.cli.app import app, command_for
from stablebptt.experiments.run import load_run, run
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train

runner = CliRunner()

POINTMASS = pointmass_source()


@pytest.fixture
def pm(workdir_tmp):
    (workdir_tmp / "pointmass.py").write_text(POINTMASS)
    return "pointmass.py:make"


def small(**kw):
    return dict(epochs=3, n_train=16, n_test=8) | kw


def test_a_file_is_a_problem_everywhere(pm, tmp_path):
    assert problems.param_spec(pm) == {"dt": (0.1, "time step [s]"), "steps": (12, "horizon T")}
    prob = problems.get(pm, steps=6)
    assert prob.name == pm and prob.horizon == 6
    origin = problems.origin(pm)
    assert origin["kind"] == "file" and origin["path"] == str(tmp_path / "pointmass.py") and len(origin["sha256"]) == 64
    # the command line, -p KEY=VALUE, and the manifest names the file and its hash
    res = runner.invoke(
        app, ["train", pm, "-p", "steps=6", "--epochs", "3", "--n-train", "16", "--n-test", "8", "--out", "runs"]
    )
    assert res.exit_code == 0, res.output
    (folder,) = [p for p in Path("runs").iterdir() if (p / "result.json").is_file()]
    man = json.loads((folder / "manifest.json").read_text())
    assert man["problem_source"] == origin
    assert json.loads((folder / "config.json").read_text())["config"]["problem_params"] == {"steps": 6}
    listed = runner.invoke(app, ["problems", pm])
    assert listed.exit_code == 0 and "time step" in listed.output
    bad = runner.invoke(app, ["train", pm, "-p", "stepz=3", "--out", "runs"])
    assert bad.exit_code == 2 and "stepz" in bad.output and "steps" in bad.output
    missing = runner.invoke(app, ["train", "nowhere.py:make", "--out", "runs"])
    assert missing.exit_code == 2 and "no such file 'nowhere.py'" in missing.output


@pytest.mark.slow
def test_a_sweep_file_with_it_then_results_and_plots(pm, tmp_path):
    """The problem given by a path in a subfolder (its source has '/' and ':'): sweep, results,
    plots (file names made from the source's file and function)."""
    (tmp_path / "sims").mkdir()
    (tmp_path / "pointmass.py").rename(tmp_path / "sims" / "pointmass.py")
    pm = "sims/pointmass.py:make"
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "own"\nseeds = 2\n[[experiment]]\nproblem = "{pm}"\nlevel = {{ steps = [4, 8] }}\n'
        'modes = ["R", "C"]\n[experiment.config]\nepochs = 3\nn_train = 16\nn_test = 8\n'
    )
    res = runner.invoke(app, ["sweep", str(spec), "--out", "sw", "--executor", "local", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "8 jobs: 8 computed" in res.output
    df = results.collect("sw")
    assert set(df["problem"]) == {pm} and set(df["param_steps"]) == {4, 8}
    table = runner.invoke(app, ["results", "sw"])
    assert table.exit_code == 0 and "steps=4" in table.output
    shown = runner.invoke(app, ["plot", "sw", "--out", "figs"])
    assert shown.exit_code == 0, shown.output
    assert {p.name for p in Path("figs").glob("*.png")} == {
        "pointmass-make-test-loss.png",
        "pointmass-make-paired-R-C.png",
    }


@pytest.mark.slow
def test_register_and_entry_points(pm, tmp_path, monkeypatch):
    mod = problems._file_module(tmp_path / "pointmass.py")
    problems.register("pm", mod.make, mod.PARAMS)
    try:
        cfg = RunConfig(problem="pm", problem_params={"steps": 5}, **small())
        (r,) = train(problems.get("pm", steps=5), cfg, 0)
        assert r.epochs_done == 3 and "pm" in problems.names()
        with pytest.raises(ValueError, match="'cartpole' is a built-in problem"):
            problems.register("cartpole", mod.make)
    finally:
        problems.unregister("pm")
    with pytest.raises(ValueError, match="unknown problem 'pm'"):
        RunConfig(problem="pm")
    # an installed package's entry point (a distribution on sys.path)
    site = tmp_path / "site"
    (site / "mypm-0.1.dist-info").mkdir(parents=True)
    (site / "mypm-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mypm\nVersion: 0.1\n")
    (site / "mypm-0.1.dist-info" / "entry_points.txt").write_text("[stablebptt.problems]\npointmass = mypm:make\n")
    (site / "mypm.py").write_text(POINTMASS)
    monkeypatch.syspath_prepend(str(site))
    assert "pointmass" in problems.names()
    assert problems.param_spec("pointmass")["steps"] == (12, "horizon T")
    assert problems.origin("pointmass") == {"kind": "entry_point", "name": "pointmass", "value": "mypm:make"}
    cfg = RunConfig(problem="pointmass", problem_params={"steps": 4}, **small())
    assert run(cfg, 0, "ep").is_dir()


def test_a_problem_that_is_not_the_configs_is_refused(pm):
    cart = RunConfig(problem="cartpole", **small())
    own = problems.get(pm, steps=6)
    with pytest.raises(ValueError, match=r"the problem given is 'pointmass.py:make' but the config names 'cartpole'"):
        train(own, cart, 0)
    with pytest.raises(ValueError, match="the config names 'cartpole'"):
        run(cart, 0, "runs", problem=own)
    assert not Path("runs").exists()  # nothing written
    cfg = RunConfig(problem=pm, problem_params={"steps": 8}, **small())
    with pytest.raises(ValueError, match="built with steps=6 but the config says steps=8"):
        train(own, cfg, 0)


@pytest.mark.parametrize("record", ["np.float32(dt)", "float(np.float32(dt))"])
def test_a_problem_that_records_its_parameters_as_float32_is_the_configs(record, workdir_tmp):
    """A make() that stores dt as float32 (or its float64 widening) builds the problem the config
    names; a value that differs by more than float32 rounding is still refused."""
    (workdir_tmp / "pm32.py").write_text(POINTMASS.replace("params=dict(dt=dt,", f"params=dict(dt={record},"))
    src = "pm32.py:make"
    cfg = RunConfig(problem=src, problem_params={"dt": 0.05, "steps": 6}, **small())
    problems.check_matches(problems.get(src, dt=0.05, steps=6), src, cfg.problem_params)
    folder = run(cfg, 0, "runs", problem=problems.get(src, dt=0.05, steps=6))
    assert json.loads((folder / "config.json").read_text())["config"]["problem_params"] == {"dt": 0.05, "steps": 6}
    for other in (0.06, 0.0501, 0.05 + 1e-7):
        with pytest.raises(ValueError, match=r"built with dt=.* but the config says dt=0.05"):
            problems.check_matches(problems.get(src, dt=other, steps=6), src, cfg.problem_params)


def test_numpy_scalars_in_problem_params_are_stored_as_plain_json(pm):
    """Problem parameters given as NumPy scalars are held (and written to config.json and the
    manifest) as the Python numbers of the same value, with the run id of those."""
    cfg = RunConfig(problem=pm, problem_params={"dt": np.float32(0.05), "steps": np.int64(6)}, **small())
    plain = RunConfig(problem=pm, problem_params={"dt": float(np.float32(0.05)), "steps": 6}, **small())
    assert cfg == plain and cfg.to_dict() == plain.to_dict()
    assert type(cfg.problem_params["dt"]) is float and type(cfg.problem_params["steps"]) is int
    folder = run(cfg, 0, "runs", extra_manifest={"built_with": {"dt": np.float32(0.05), "steps": np.int64(6)}})
    stored = json.loads((folder / "config.json").read_text())["config"]["problem_params"]
    man = json.loads((folder / "manifest.json").read_text())
    assert man["built_with"] == stored and type(man["built_with"]["steps"]) is int
    assert stored == {"dt": float(np.float32(0.05)), "steps": 6} and type(stored["steps"]) is int
    assert "--param steps=6" in command_for(cfg, 0, Path("runs"))
    assert load_run(folder).config == cfg


@pytest.mark.slow
def test_load_evaluate_and_start_from_a_run(pm, tmp_path, monkeypatch):
    cfg = RunConfig(problem=pm, problem_params={"steps": 6}, **small())
    folder = run(cfg, 3, "runs")
    loaded = load_run(folder)
    assert loaded.config == cfg and loaded.seed == 3 and list(loaded.history["epoch"]) == [1, 2, 3]
    loss, each = loaded.evaluate()
    stored = json.loads((folder / "result.json").read_text())["final"]["test_loss"]
    assert loss == pytest.approx(stored, rel=1e-6) and each.shape == (8,)
    np.testing.assert_allclose(each.mean(), loss, rtol=1e-6)  # the loss is a batch mean
    res = runner.invoke(app, ["evaluate", str(folder), "--per-state", "per.csv"])
    assert res.exit_code == 0 and f"{stored:.6g}" in res.output
    assert pd.read_csv("per.csv")["loss"].to_numpy() == pytest.approx(each, rel=1e-6)
    np.savez("states.npz", x=loaded.data("train")[:5])
    res = runner.invoke(app, ["evaluate", str(folder), "--data", "states.npz"])
    assert res.exit_code == 0 and "(5 states)" in res.output
    res = runner.invoke(app, ["evaluate", str(folder), "--data", "nope"])
    assert res.exit_code == 2 and "allowed: test, train" in res.output
    # from another folder: the problem file is found through the manifest
    absolute = folder.resolve()
    monkeypatch.chdir(tmp_path / "runs")
    again = load_run(absolute)
    assert again.evaluate()[0] == loss and any("recorded path" in n for n in again.notes)
    monkeypatch.chdir(tmp_path)
    # --init-weights takes the run folder: the untrained loss of the new run is the old final one
    res = runner.invoke(
        app,
        [
            "train",
            pm,
            "-p",
            "steps=6",
            "--epochs",
            "1",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--seed",
            "3",
            "--init-weights",
            str(folder),
            "--out",
            "next",
        ],
    )
    assert res.exit_code == 0, res.output
    (nxt,) = [p for p in Path("next").iterdir() if (p / "result.json").is_file()]
    assert json.loads((nxt / "result.json").read_text())["initial"]["test_loss"] == pytest.approx(stored, rel=1e-6)
    # diagnose and animate take it too (by its source, and as the run folder)
    res = runner.invoke(
        app, ["diagnose", pm, "-p", "steps=6", "--states", "2", "--weights", str(folder), "--out", "dg"]
    )
    assert res.exit_code == 0, res.output
    assert (Path("dg") / f"pointmass-make-{folder.name}.png").is_file()
    res = runner.invoke(app, ["animate", str(folder), "--states", "1", "--out", "pm.gif"])
    assert res.exit_code == 0 and Path("pm.gif").stat().st_size > 0, res.output


def read_scalars(logdir: Path) -> dict:
    """Every scalar of the TensorBoard event files under ``logdir``: {tag: [(step, value)]},
    parsed from the TFRecord framing (length, crc, Event protobuf, crc)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_events_read_back(pm, tmp_path):
    res = runner.invoke(
        app, ["train", pm, "--epochs", "3", "--n-train", "16", "--n-test", "8", "--out", "runs", "--tensorboard", "tb"]
    )
    assert res.exit_code == 0, res.output
    (folder,) = [p for p in Path("runs").iterdir() if (p / "result.json").is_file()]
    m = pd.read_csv(folder / "metrics.csv")
    got = read_scalars(tmp_path / "tb")
    for name in ("loss", "train_loss", "test_loss", "update_norm", "cos_mg"):
        steps, vals = zip(*got[name])
        assert list(steps) == [1, 2, 3]
        np.testing.assert_allclose(vals, m[name].to_numpy(), rtol=1e-6)  # stored as float32
