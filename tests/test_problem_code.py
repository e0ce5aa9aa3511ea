"""A run's identity includes its problem's code: a finished or interrupted run of a file or
module problem whose code has changed since is refused with one line naming the file, never
shown as "already trained" (train) or counted as done (sweep) with its old numbers."""

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import pointmass_source
from stablebptt import problems
from stablebptt.cli.app import app
from stablebptt.experiments.run import run
from stablebptt.training.config import RunConfig

POINTMASS = pointmass_source()
runner = CliRunner()
TRAIN = ["--epochs", "2", "--n-train", "16", "--n-test", "8", "--out", "runs"]
#: the edit a user makes to the physics: the velocity update twice as strong
EDIT = ("vel = x[:, 1] + dt * c[:, 0]", "vel = x[:, 1] + 2 * dt * c[:, 0]")


@pytest.fixture
def pm(workdir_tmp):
    (workdir_tmp / "pointmass.py").write_text(POINTMASS)
    return workdir_tmp / "pointmass.py"


def edit(path: Path) -> None:
    text = path.read_text()
    assert EDIT[0] in text
    path.write_text(text.replace(*EDIT))


def one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.slow
def test_train_after_the_problem_file_changed_refuses_the_old_result(pm):
    first = runner.invoke(app, ["train", "pointmass.py:make", *TRAIN])
    assert first.exit_code == 0, first.output
    (folder,) = [p for p in Path("runs").iterdir() if (p / "result.json").is_file()]
    old = json.loads((folder / "result.json").read_text())["final"]["test_loss"]
    again = runner.invoke(app, ["train", "pointmass.py:make", *TRAIN])
    assert again.exit_code == 0 and "already trained" in again.output  # unchanged: the result is shown

    before = hashlib.sha256(pm.read_bytes()).hexdigest()
    edit(pm)
    after = hashlib.sha256(pm.read_bytes()).hexdigest()
    res = runner.invoke(app, ["train", "pointmass.py:make", *TRAIN])
    text = one_line(res.output)
    assert "already trained" not in text and f"{old:.5g}" not in text
    assert res.exit_code == 2, res.output
    assert f"error: problem file {pm.resolve()} changed since the run in {folder} was made" in text
    assert f"(sha256 {before[:8]} → {after[:8]})" in text and "--restart" in text and "--out" in text
    man = json.loads((folder / "manifest.json").read_text())
    assert man["problem_code"] == {"file": str(pm.resolve()), "sha256": before}
    # a record made before problem_code existed: its problem file's hash decides
    man.pop("problem_code")
    (folder / "manifest.json").write_text(json.dumps(man))
    assert runner.invoke(app, ["train", "pointmass.py:make", *TRAIN]).exit_code == 2
    # --restart recomputes it with the new physics
    res = runner.invoke(app, ["train", "pointmass.py:make", *TRAIN, "--restart"])
    assert res.exit_code == 0, res.output
    new = json.loads((folder / "result.json").read_text())
    assert new["final"]["test_loss"] != old
    assert json.loads((folder / "manifest.json").read_text())["problem_code"]["sha256"] == after
    from stablebptt.experiments.run import code_change

    assert code_change(folder, RunConfig(problem="pointmass.py:make", epochs=2, n_train=16, n_test=8)) is None


@pytest.mark.slow
def test_a_sweep_after_the_problem_file_changed_does_not_count_the_old_runs(pm, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "own"\nseeds = 1\n[[experiment]]\nproblem = "pointmass.py:make"\nmodes = ["C"]\n'
        "[experiment.config]\nepochs = 2\nn_train = 16\nn_test = 8\n"
    )
    cmd = ["sweep", str(spec), "--out", "sw", "--executor", "serial"]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0 and "1 jobs: 1 computed" in res.output, res.output
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0 and "1 jobs: 0 computed, 1 already done" in res.output, res.output
    edit(pm)
    res = runner.invoke(app, cmd)
    text = one_line(res.output)
    assert res.exit_code == 2, res.output
    assert "already done" not in text and f"problem file {pm.resolve()} changed since" in text
    assert "1 finished run(s) under sw were made with the old code" in text and "another --out" in text
    res = runner.invoke(app, [*cmd[:3], "sw2", *cmd[4:]])
    assert res.exit_code == 0 and "1 jobs: 1 computed" in res.output, res.output


def test_an_interrupted_run_is_not_continued_with_other_code(pm):
    cfg = RunConfig(problem="pointmass.py:make", epochs=4, n_train=16, n_test=8)

    def stop(e, rows):
        if e == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, 0, "runs", on_epoch=stop, checkpoint_seconds=0)
    edit(pm)
    with pytest.raises(
        ValueError,
        match=r"problem file .*pointmass.py changed since the checkpoint .* was saved "
        r"\(sha256 \w{8} → \w{8}\); --restart",
    ):
        run(cfg, 0, "runs")
    folder = run(cfg, 0, "runs", restart=True)
    assert json.loads((folder / "result.json").read_text())["epochs_done"] == 4
    assert "resumed_from_epoch" not in json.loads((folder / "manifest.json").read_text())["ran"]


@pytest.mark.slow
def test_a_module_problem_is_identified_by_its_file_or_its_installed_version(workdir_tmp, monkeypatch):
    import sys

    tmp_path = workdir_tmp
    for name in ("mypm", "simpkg", "simpkg.pmmod"):  # modules of the same names imported by other tests
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "simpkg").mkdir()
    (tmp_path / "simpkg" / "__init__.py").write_text("")
    mod = tmp_path / "simpkg" / "pmmod.py"
    mod.write_text(POINTMASS)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = "simpkg.pmmod:make"
    cfg = RunConfig(problem=src, epochs=1, n_train=16, n_test=8)
    folder = run(cfg, 0, "runs")
    assert run(cfg, 0, "runs") == folder  # unchanged: the finished run
    edit(mod)
    with pytest.raises(
        ValueError,
        match=rf"problem module simpkg.pmmod \({mod.resolve()}\) changed since the run in "
        rf".* was made \(sha256 \w{{8}} → \w{{8}}\); its result is not used",
    ):
        run(cfg, 0, "runs")
    ident = problems.code_identity(src)
    assert ident == {
        "module": "simpkg.pmmod",
        "file": str(mod.resolve()),
        "sha256": hashlib.sha256(mod.read_bytes()).hexdigest(),
    }
    # a module installed from a distribution (listed in its RECORD): the distribution's version
    site = tmp_path / "site"
    (site / "mypm-0.1.dist-info").mkdir(parents=True)
    (site / "mypm-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mypm\nVersion: 0.1\n")
    (site / "mypm-0.1.dist-info" / "RECORD").write_text("mypm.py,,\nmypm-0.1.dist-info/METADATA,,\n")
    (site / "mypm.py").write_text(POINTMASS)
    monkeypatch.syspath_prepend(str(site))
    assert problems.code_identity("mypm:make") == {"module": "mypm", "distribution": "mypm", "version": "0.1"}
    old, new = problems.code_identity("mypm:make"), dict(problems.code_identity("mypm:make"), version="0.2")
    assert (
        problems.describe_code_change(old, new, "then")
        == "problem module mypm changed since then (mypm==0.1 → mypm==0.2)"
    )
    # built-in problems are part of the library: nothing extra (their run ids and records stay)
    assert problems.code_identity("cartpole") is None
