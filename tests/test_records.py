"""The committed records of the full-scale reproduction (results/paper/): the archive format
reads back as the run folders it came from."""

import importlib.util
from pathlib import Path

import pandas as pd

from stablebptt.analysis import results
from stablebptt.experiments import sweep
from stablebptt.experiments.run import run
from stablebptt.training.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


def _archive_module():
    spec = importlib.util.spec_from_file_location("archive", REPO / "experiments" / "paper" / "archive.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_archived_records_read_back_as_the_run_folders(tmp_path):
    cfg = RunConfig(problem="linear", mode="C", epochs=3, n_train=8, n_test=8)
    for s in (0, 1):
        run(cfg, s, tmp_path / "runs")
    archive = _archive_module()
    assert archive.archive(tmp_path / "runs", tmp_path / "rec") == 2
    assert archive.archive(tmp_path / "runs", tmp_path / "rec") == 0  # nothing twice
    rec = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert not any(n.startswith(".tmp-") for n in rec)
    for name in rec:
        assert sorted(f.name for f in (tmp_path / "rec" / name).iterdir()) == [
            "config.json",
            "manifest.json",
            "metrics.csv.gz",
            "result.json",
        ]
    a, b = results.collect(tmp_path / "runs"), results.collect(tmp_path / "rec")
    pd.testing.assert_frame_equal(
        a.sort_values(["run_id", "epoch"]).reset_index(drop=True),
        b.sort_values(["run_id", "epoch"]).reset_index(drop=True),
    )


def test_committed_records_are_the_figures_sweep_runs():
    """Every committed record is a job of its figure's sweep spec (``experiments/paper/specs/``,
    so a sweep of the spec resumes from them), finished or diverged, with its source commit in the manifest."""
    import json

    for figure in ("cartpole", "guidance", "quantum"):
        root = REPO / "results" / "paper" / figure
        if not root.is_dir():
            continue
        from stablebptt.training.config import run_id

        jobs = {
            run_id(c, s)
            for c, s in sweep.expand(sweep.load_spec(REPO / "experiments" / "paper" / "specs" / f"{figure}.toml"))
        }
        names = {p.name for p in root.iterdir() if (p / "result.json").is_file()}
        assert names and names <= jobs, figure
        for name in sorted(names)[:5]:
            res = json.loads((root / name / "result.json").read_text())
            assert res["status"] in ("finished", "diverged") and res["run_id"] == name
            assert json.loads((root / name / "manifest.json").read_text()).get("commit")
