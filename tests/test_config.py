"""RunConfig: one configuration has one form and one run id, whichever way it was written."""

import json
from pathlib import Path

import pytest

from stablebptt.experiments import sweep
from stablebptt.training.config import RunConfig, run_id

REPO = Path(__file__).resolve().parents[1]


def test_a_schedule_string_and_its_letters_are_one_config_and_one_run_id():
    as_string = RunConfig(problem="cartpole", mode="RRMMSN")
    as_letters = RunConfig(problem="cartpole", mode=list("RRMMSN"))
    assert as_string == as_letters
    assert as_string.mode == list("RRMMSN")
    assert run_id(as_string, 3) == run_id(as_letters, 3)
    # a sweep file's schedule string gives the run the command line gives
    spec = sweep.load_spec(
        {
            "name": "sched",
            "seeds": 1,
            "experiment": [{"problem": "cartpole", "modes": ["RRMMSN", list("RRMMSN")], "config": {"epochs": 2}}],
        }
    )
    (a, sa), (b, sb) = sweep.expand(spec)
    assert a == b and run_id(a, sa) == run_id(b, sb)
    assert a.mode == list("RRMMSN")


@pytest.mark.parametrize("mode", ["R", "M", "S", "N", "C"])
def test_a_single_letter_mode_stays_a_string(mode):
    cfg = RunConfig(problem="cartpole", mode=mode)
    assert cfg.mode == mode and cfg.to_dict()["mode"] == mode


def test_a_bad_schedule_string_names_its_bad_letters():
    with pytest.raises(ValueError, match="'Q'"):
        RunConfig(problem="cartpole", mode="RRQ")


def test_every_committed_record_keeps_its_run_id():
    """The folder name of every committed record under results/ is the run id of its
    config.json, read back through RunConfig (so normalising a field must not change it)."""
    folders = sorted(p.parent for p in (REPO / "results").rglob("config.json"))
    assert folders
    for folder in folders:
        blob = json.loads((folder / "config.json").read_text())
        cfg = RunConfig(**blob["config"])
        assert run_id(cfg, blob["seed"]) == folder.name, folder


def test_the_train_command_takes_its_defaults_from_run_config():
    """``stablebptt train``'s options default to RunConfig's values (one place sets a default):
    every option named like a RunConfig field either has RunConfig's default or defers to the
    problem's preset (None)."""
    import inspect

    from stablebptt.cli.app import train

    fields = RunConfig.model_fields
    checked = 0
    for name, p in inspect.signature(train).parameters.items():
        if name in fields and name != "problem":
            default = p.default.default  # typer's OptionInfo
            assert default is None or default == fields[name].default, (name, default, fields[name].default)
            checked += default is not None
    assert checked >= 15
