"""`stablebptt results` on a narrow console: whole problem names, never `heat.py:m…`."""

import pandas as pd
from rich.console import Console

from conftest import pointmass_source
from stablebptt.analysis import results


def summary(problems, level="steps=16, nx=64"):
    rows = []
    for p in problems:
        for clip in ("none", "value"):
            for mode, mean in (("R", 1.2345e-5), ("C", 0.012345)):
                rows.append(
                    dict(
                        problem=p,
                        level=level,
                        clip=clip,
                        mode=mode,
                        mean=mean,
                        std=mean / 7,
                        n=5,
                        diverged=1 if mode == "R" else 0,
                        epoch_min=1000,
                        epoch_max=1000,
                        epochs="1000",
                    )
                )
    return pd.DataFrame(rows)


def render(table, width=80):
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def cells(text, k):
    """Column k of a printed rich table, a cell's wrapped lines joined (rows split at the
    separator-free continuation lines: a row's first line has its mode column filled)."""
    lines = [line for line in text.splitlines() if line.count("│") >= 8]  # the rows (the header has ┃)
    out = []
    for line in lines:
        parts = [c.strip() for c in line.split("│")[1:-1]]
        if parts[3]:  # a new row (the mode column is never wrapped)
            out.append(parts[k])
        elif parts[k]:
            out[-1] += parts[k]
    return out


def test_whole_problem_names_at_80_columns():
    names = [
        "/home/someone/projects/simulators/heat.py:make",
        "sims/heat_equation_with_sources.py:make_problem",
        "cartpole",
    ]
    text = render(results.console_table(summary(names), title="t"))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    shown = cells(text, 0)
    # a path source is shown as its file and function (the folder is in the run's config) ...
    assert "heat.py:make" in shown and "heat_equation_with_sources.py:make_problem" in shown
    assert "cartpole" in shown
    # ... and every other cell is whole too
    nospace = lambda xs: {x.replace(" ", "") for x in xs}  # a cell wrapped at a space
    assert nospace(cells(text, 4)) == nospace(f"{m:.4g} ± {m / 7:.2g}" for m in (1.2345e-5, 0.012345))
    assert nospace(cells(text, 1)) == {"steps=16,nx=64"}


def test_sources_with_the_same_file_name_keep_their_folders():
    names = ["a/heat.py:make", "b/heat.py:make"]
    shown = cells(render(results.console_table(summary(names), title="t")), 0)
    assert set(shown) == {"a/heat.py:make", "b/heat.py:make"}


def test_a_very_long_name_wraps_whole():
    name = "package_with_a_long_name.subpackage.simulators_of_heat:make_the_heat_equation_problem"
    text = render(results.console_table(summary([name]), title="t"))
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert set(cells(text, 0)) == {name}


def test_cli_results_at_80_columns(monkeypatch, tmp_path):
    """`stablebptt results` on a real run folder of a problem given by a long file path,
    printed to an 80-column terminal: the table fits and the name is whole (``heat.py:make``)."""
    from typer.testing import CliRunner

    from stablebptt.cli.app import app
    from stablebptt.experiments.run import run
    from stablebptt.training.config import RunConfig

    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    sim = tmp_path / "home" / "someone" / "projects" / "simulators" / "heat.py"
    sim.parent.mkdir(parents=True)
    sim.write_text(pointmass_source(steps=4, width=8))
    name = f"{sim}:make"
    assert len(name) > 80
    run(RunConfig(problem=name, epochs=1, n_train=8, n_test=8), 0, tmp_path / "runs")
    monkeypatch.setenv("COLUMNS", "80")  # the width rich gives a console that is not a terminal
    res = CliRunner().invoke(app, ["results", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "heat.py:make" in cells(text, 0)
