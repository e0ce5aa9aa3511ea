"""Sweeps: validation, idempotence, resume after SIGKILL, results table, local pool vs Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, paper_module
from stablebptt.analysis import results
from stablebptt.experiments import sweep
from stablebptt.training.config import QUICK_SETTINGS, run_id

#: the repository's sweep specs: the paper's figures and the complexity ladder, each full and quick
SPEC_FILES = {
    "cartpole": "paper",
    "guidance": "paper",
    "quantum": "paper",
    "toys": "paper",
    "cart-chain": "ladder",
    "pde": "ladder",
    "hopper": "ladder",
}


def spec_file(name: str, quick: bool = False) -> Path:
    return REPO / "experiments" / SPEC_FILES[name] / "specs" / f"{name}{'-quick' if quick else ''}.toml"


def small_spec(seeds=2, epochs=3, modes=("R", "C"), clips=("none", "value")):
    return {
        "name": "small",
        "seeds": seeds,
        "experiment": [
            {
                "problem": "linear",
                "level": {"theta0": [-0.5, -1.0]},
                "modes": list(modes),
                "clips": list(clips),
                "optimizers": [{"optimizer": "adam", "lr": 0.01}],
                "config": {"epochs": epochs},
            }
        ],
    }


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"experiment": [{"problem": "linear", "modes": ["R", "Q"]}]}, "experiment[0].modes[1]: unknown mode 'Q'"),
        ({"experiment": [{"problem": "linear", "clips": ["soft"]}]}, "clips[0] = 'soft'"),
        ({"experiment": [{"problem": "cartpole", "level": {"polez": [1]}}]}, "no parameter 'polez'"),
        ({"experiment": [{"problem": "cartpole", "level": {"poles": [1, 0]}}]}, "poles=0"),
        ({"experiment": [{"problem": "pendulum"}]}, "unknown problem 'pendulum'"),
        ({"experiment": [{"problem": "linear", "config": {"epochs": 0}}]}, "experiment[0].config.epochs: epochs=0"),
        (
            {"experiment": [{"problem": "linear", "colour": "red"}]},
            "experiment[0]: unknown field 'colour'; allowed: clips",
        ),
        ({"seeds": 0, "experiment": [{"problem": "linear"}]}, "seeds=0"),
    ],
)
def test_spec_validation_names_the_bad_field(bad, msg):
    with pytest.raises(sweep.SpecError) as e:
        sweep.load_spec(bad)
    assert msg in str(e.value)


def test_spec_files_toml_and_yaml(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "t"\nseeds = [3, 4]\n[[experiment]]\nproblem = "linear"\nmodes = ["R", "C"]\n'
        "[experiment.config]\nepochs = 2\n"
    )
    yaml = tmp_path / "s.yaml"
    yaml.write_text(
        "name: t\nseeds: [3, 4]\nexperiment:\n  - problem: linear\n    modes: [R, C]\n    config: {epochs: 2}\n"
    )
    a, b = sweep.expand(sweep.load_spec(toml)), sweep.expand(sweep.load_spec(yaml))
    assert [(c.to_dict(), s) for c, s in a] == [(c.to_dict(), s) for c, s in b]
    assert len(a) == 4 and {s for _, s in a} == {3, 4} and all(c.epochs == 2 for c, _ in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEC_FILES)
@pytest.mark.parametrize("quick", [False, True])
def test_spec_files_expand(name, quick):
    spec = sweep.load_spec(spec_file(name, quick))
    assert spec.name == name + ("-quick" if quick else "")
    jobs = sweep.expand(spec)
    if quick:  # the quick sweeps train with the problems' quick settings (toy-rotation: Fig. 2's 200 epochs)
        for c, _ in jobs:
            assert {k: getattr(c, k) for k in QUICK_SETTINGS[c.problem]} == QUICK_SETTINGS[c.problem], c.problem
    assert len({run_id(c, s) for c, s in jobs}) == len(jobs)
    if name != "toys":
        assert {c.mode for c, _ in jobs} == {"R", "M", "C", "S"}
    if name not in ("toys", "pde"):
        assert {c.clip for c, _ in jobs} == (
            {"none"} if name in ("cart-chain", "hopper") else {"none", "value", "norm"}
        )
    if name == "pde":
        assert {c.problem_params["L"] for c, _ in jobs if c.problem == "ks"} == {22, 36, 60, 100}
        assert {c.problem for c, _ in jobs} == {"ks", "burgers", "kolmogorov"}
    if name == "cartpole":
        assert {c.problem_params["poles"] for c, _ in jobs} == {1, 2, 3, 4}
        assert all(c.epochs == (60 if quick else 1000) for c, _ in jobs)
    if name == "guidance":
        assert {c.problem_params["rc"] for c, _ in jobs} == {1.0, 0.1, 0.01, 0.001}
    if name == "quantum":
        assert {c.problem_params["target"] for c, _ in jobs} == {3, 4, 5}
    if name == "hopper":  # R, M, C, S, truncated and decayed BPTT, the same budget for each
        assert {(c.mode, c.truncate, c.decay) for c, _ in jobs} == {
            ("R", 0, 1.0),
            ("M", 0, 1.0),
            ("C", 0, 1.0),
            ("S", 0, 1.0),
            ("R", 10, 1.0),
            ("R", 0, 0.9),
        }
        assert {(c.epochs, c.n_train) for c, _ in jobs} == {(10, 32) if quick else (100, 64)}


def folder_state(root):
    return {
        p.name: (p / "result.json").stat().st_mtime_ns
        for p in Path(root).iterdir()
        if p.is_dir() and (p / "result.json").exists()
    }


@pytest.mark.slow
def test_sweep_is_idempotent_and_results_table(tmp_path):
    spec = sweep.load_spec(small_spec(clips=("none",)))
    r1 = sweep.run_sweep(spec, tmp_path, executor="serial")
    assert (r1.jobs, r1.computed, r1.skipped) == (8, 8, 0)
    before = folder_state(tmp_path)
    r2 = sweep.run_sweep(spec, tmp_path, executor="serial")
    assert (r2.computed, r2.skipped) == (0, 8)
    assert folder_state(tmp_path) == before
    df = results.collect(tmp_path)
    assert len(df) == 8 * 3 and df["run_id"].nunique() == 8
    for col in ("seed", "status", "problem", "mode", "clip", "lr", "param_theta0", "epoch", "test_loss", "update_norm"):
        assert col in df.columns, col
    assert set(df["mode"]) == {"R", "C"} and set(df["param_theta0"]) == {-0.5, -1.0}
    df.to_csv(tmp_path / "x.csv")
    results.collect(tmp_path, parquet=tmp_path / "all.parquet")
    assert pd.read_parquet(tmp_path / "all.parquet").shape == df.shape
    table = results.summary_table(tmp_path)
    assert "| clip | R | C | epochs |" in table and "± " in table
    rows = [line for line in table.splitlines() if line.startswith("| -")]
    assert len(rows) == 2 and all(line.endswith("| 3 |") for line in rows)  # 3 epochs done in every row

    # the readable index: one row per finished run, what each hash folder holds, sorted
    index = pd.read_csv(tmp_path / "index.csv")
    assert sorted(index["run_id"]) == sorted(df["run_id"].unique())
    assert list(index.columns[:6]) == ["run_id", "problem", "level", "mode", "clip", "seed"]
    last = df.sort_values("epoch").groupby("run_id").tail(1).set_index("run_id")
    for _, row in index.iterrows():
        want = last.loc[row["run_id"]]
        assert (row["mode"], row["clip"], row["seed"]) == (want["mode"], want["clip"], want["seed"])
        assert row["level"] == f"theta0={want['param_theta0']}" and row["final_test_loss"] == want["test_loss"]
    keys = list(zip(index["level"], index["mode"], index["seed"]))
    assert keys == sorted(keys) and len(set(keys)) == 8


CHILD = r"""
import sys
from stablebptt.experiments import sweep

if __name__ == "__main__":  # spawned workers re-import this file
    spec = sweep.load_spec({spec!r})
    sweep.run_sweep(spec, sys.argv[1], executor="local", workers=2)
"""


def children(pid):
    """Pids of the live processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path):
    spec_dict = small_spec(seeds=3, epochs=40)  # 24 jobs
    jobs = sweep.expand(sweep.load_spec(spec_dict))
    root = tmp_path / "sw"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(spec=spec_dict))
    log = open(tmp_path / "child.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)], start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    workers = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if root.is_dir() and len(folder_state(root)) >= 3:
                break
            time.sleep(0.2)
        workers = [c for c in children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process only: its workers must die with it
        proc.wait()
        deadline = time.time() + 30
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert workers and not any(alive(w) for w in workers), "workers outlived the killed sweep"
    finally:
        if proc.poll() is None or any(alive(w) for w in workers):  # only on failure: our own process group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    first = folder_state(root) if root.is_dir() else {}
    assert 3 <= len(first) < len(jobs), (len(first), (tmp_path / "child.log").read_text()[-3000:])
    contents = {k: (root / k / "metrics.csv").read_text() for k in first}
    report = sweep.run_sweep(sweep.load_spec(spec_dict), root, executor="serial")
    assert report.skipped == len(first) and report.computed == len(jobs) - len(first)
    after = folder_state(root)
    assert set(after) == {run_id(c, s) for c, s in jobs}
    assert not list(root.glob(".tmp-*"))
    assert all(after[k] == first[k] for k in first)  # finished results untouched
    assert all((root / k / "metrics.csv").read_text() == contents[k] for k in first)
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == len(jobs)


@pytest.mark.slow
def test_vmapped_seed_groups_match_one_by_one(tmp_path):
    spec = sweep.load_spec(small_spec(seeds=3, modes=("C",), clips=("norm",)))
    sweep.run_sweep(spec, tmp_path / "a", executor="serial")
    rep = sweep.run_sweep(spec, tmp_path / "b", executor="serial", vmap_seeds=True)
    assert rep.computed == 6
    a = results.collect(tmp_path / "a").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    b = results.collect(tmp_path / "b").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    assert list(a["run_id"]) == list(b["run_id"])
    np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-5)


@pytest.mark.slow
def test_local_pool_and_ray_cluster_give_identical_metrics(tmp_path):
    import ray  # a dev dependency: this test must run, not skip

    spec = sweep.load_spec(
        {
            "name": "lr",
            "seeds": 2,
            "experiment": [{"problem": "toy-field", "modes": ["R", "C"], "config": {"epochs": 5}}],
        }
    )
    r_local = sweep.run_sweep(spec, tmp_path / "local", executor="local", workers=2)
    try:  # a real local cluster (ray.init(num_cpus=2, include_dashboard=False)), shut down by run_sweep
        r_ray = sweep.run_sweep(spec, tmp_path / "ray", executor="ray", workers=2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
            pytest.fail("run_sweep left Ray running")
    assert r_local.computed == r_ray.computed == 4 and not r_local.failed and not r_ray.failed
    assert not ray.is_initialized()
    metrics = ["epoch", "loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree"]
    a = results.collect(tmp_path / "local").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    b = results.collect(tmp_path / "ray").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    assert list(a["run_id"]) == list(b["run_id"])
    pd.testing.assert_frame_equal(a[metrics], b[metrics])
    man = json.loads(next((tmp_path / "ray").glob("*/manifest.json")).read_text())
    assert "xla_cpu_multi_thread_eigen=false" in man["xla_flags"]


def _table_column(output: str, name: str) -> list[str]:
    """The cells of column ``name`` in a rich table printed by the CLI (box-drawing borders)."""
    lines = [line for line in output.splitlines() if line.count("│") + line.count("┃") >= 3]
    header = [c.strip() for c in lines[0].replace("┃", "│").split("│")]
    k = header.index(name)
    rows = [[c.strip() for c in line.split("│")] for line in lines[1:]]
    return [r[k] for r in rows if r[1]]  # r[1] (problem) is empty on a wrapped row's continuation lines


@pytest.mark.slow
def test_cli_sweep_results_and_the_paper_reproduce_script(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stablebptt.cli.app import app

    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "t"\nseeds = 2\n[[experiment]]\nproblem = "toy-field"\nmodes = ["R", "C"]\n'
        'clips = ["none", "norm"]\n[experiment.config]\nepochs = 4\n'
    )
    res = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--executor", "serial"])
    assert res.exit_code == 0, res.output
    assert "8 jobs: 8 computed, 0 already done" in res.output
    res = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--executor", "serial"])
    assert "8 jobs: 0 computed, 8 already done" in res.output
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["name"] == "t"
    res = runner.invoke(
        app,
        ["results", str(tmp_path / "sw"), "--csv", str(tmp_path / "a.csv"), "--parquet", str(tmp_path / "a.parquet")],
    )
    assert res.exit_code == 0, res.output
    assert "toy-field" in res.output and "±" in res.output and "8 runs, 32 rows" in res.output
    assert (
        pd.read_csv(tmp_path / "a.csv").shape
        == pd.read_parquet(tmp_path / "a.parquet").shape
        == (32, len(results.collect(tmp_path / "sw").columns))
    )
    s = results.summary_frame(tmp_path / "sw")
    assert len(s) == 4 and set(s["n"]) == {2} and list(s["mode"][:2]) == ["R", "C"]
    # the epoch each row's values come from: a column of the frame and of the printed table
    assert set(s["epochs"]) == {"4"} and set(s["epoch_min"]) == set(s["epoch_max"]) == {4}
    assert _table_column(res.output, "epochs") == ["4"] * 4
    res = runner.invoke(app, ["results", str(tmp_path / "sw"), "--epoch", "2"])
    assert res.exit_code == 0, res.output
    assert _table_column(res.output, "epochs") == ["2"] * 4
    assert set(results.summary_frame(tmp_path / "sw", epoch=2)["epochs"]) == {"2"}
    for bad, msg in (("-1", "--epoch -1: must be ≥ 0"), ("0", "no run under")):
        res = runner.invoke(app, ["results", str(tmp_path / "sw"), "--epoch", bad])
        assert res.exit_code != 0 and msg in res.output, res.output
    # runs of one row that stopped at different epochs (one run lost its last two): a range
    full = results.collect(tmp_path / "sw")
    short = sorted(full["run_id"].unique())[0]
    with monkeypatch.context() as m:
        m.setattr(results, "collect", lambda root, **kw: full[(full["run_id"] != short) | (full["epoch"] <= 2)])
        s2 = results.summary_frame(tmp_path / "sw")
        row = s2[
            (s2["mode"] == full.loc[full["run_id"] == short, "mode"].iloc[0])
            & (s2["clip"] == full.loc[full["run_id"] == short, "clip"].iloc[0])
        ]
        assert list(row["epochs"]) == ["2–4"] and list(row["epoch_min"]) == [2] and list(row["epoch_max"]) == [4]
        assert sorted(s2["epochs"]) == ["2–4", "4", "4", "4"]
        assert "| 2–4 |" in results.summary_table(tmp_path / "sw")
        res = runner.invoke(app, ["results", str(tmp_path / "sw")])
        assert sorted(_table_column(res.output, "epochs")) == ["2–4", "4", "4", "4"]
    # errors name the field; unknown executor is refused before any work
    res = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sw2"), "--executor", "slurm"])
    assert res.exit_code != 0 and "executor='slurm'" in res.output
    # experiments/paper/reproduce.py = sweep + figures + SUMMARY.md (a tiny spec for a figure's)
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(
        'name = "tiny"\nseeds = 2\n[[experiment]]\nproblem = "linear"\nlevel = { theta0 = [-0.5, -1.0] }\n'
        'modes = ["R", "C"]\n[experiment.config]\nepochs = 3\n'
    )
    reproduce = paper_module("reproduce")
    assert reproduce.main([str(tiny), "--out", str(tmp_path / "rep"), "--executor", "serial"]) == 0
    md = (tmp_path / "rep" / "SUMMARY.md").read_text()
    assert "| param_theta0 | clip | R | C |" in md and " ± " in md
    assert reproduce.spec_path("cartpole", quick=True) == spec_file("cartpole", True)
    with pytest.raises(ValueError, match="neither a figure"):
        reproduce.spec_path("nosuchfigure")
    with pytest.raises(ValueError, match="--quick applies"):
        reproduce.spec_path(str(tiny), quick=True)


def test_jobs_are_queued_seed_major_and_vmap_groups_hold_all_seeds():
    jobs = sweep.expand(sweep.load_spec(small_spec(seeds=3)))
    assert [s for _, s in jobs][:3] == [0, 1, 2]  # expansion: config-major
    groups = sweep._groups(jobs, vmap_seeds=False)
    seeds = [s for _, (s,), _ in groups]
    assert seeds == sorted(seeds) and len(groups) == len(jobs)  # queue: seed-major (cache hits)
    assert {(run_id(c, s)) for c, (s,), _ in groups} == {run_id(c, s) for c, s in jobs}
    vm = sweep._groups(jobs, vmap_seeds=True)
    assert len(vm) == len(jobs) // 3 and all(s == [0, 1, 2] and lanes is None for _, s, lanes in vm)


def test_the_pool_initializer_sets_the_workers_environment(monkeypatch):
    """The pool initializer turns GPU memory preallocation off and sets the XLA flags (the
    float32 precision of the programs no longer depends on the process: test_train)."""
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "")  # restored (to unset) at teardown
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")
    monkeypatch.setenv("XLA_FLAGS", "")
    sweep._init_worker("--some-flag")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert os.environ["XLA_FLAGS"] == "--some-flag"
