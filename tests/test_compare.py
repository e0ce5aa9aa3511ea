"""The seed-paired comparison (``stablebptt compare``): variants, the statistics against a hand
computation from the run records, verdicts on constructed records, resuming, the command line,
loading a comparison folder and the page generator over comparison folders."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import stablebptt
from conftest import pointmass_source
from stablebptt.analysis import comparison
from stablebptt.cli.app import app
from stablebptt.experiments import sweep

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

#: a point mass pushed to the origin: per-seed data and initial weights, compiles in seconds
POINTMASS = pointmass_source(name="pm", steps=6, width=8, defaults="dict(epochs=3, n_train=8, n_test=8, lr=0.05)")

VARIANTS = "R,C:truncate=2"  # a mode letter and a variant with options: two sweep blocks
SETTINGS = dict(backward="autodiff", batch_size=8)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One comparison, computed in two calls (seed 0, then seeds 0 and 1) and called a third time."""
    d = tmp_path_factory.mktemp("compare")
    (d / "pm.py").write_text(POINTMASS)
    sweep.enable_compile_cache(str(d / "cache"))
    src, root = f"{d / 'pm.py'}:make", d / "cmp"
    kw = dict(root=root, executor="serial", config=SETTINGS, window=2, n_boot=4000)
    first = comparison.compare(src, VARIANTS, [0], **kw, figures=False)
    before = {p.name: (p / "result.json").stat().st_mtime_ns for p in root.iterdir() if (p / "result.json").exists()}
    second = comparison.compare(src, VARIANTS, 2, **kw)
    third = comparison.compare(src, VARIANTS, 2, **kw)
    return dict(src=src, root=root, first=first, second=second, third=third, before=before, dir=d)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize(
    "text, name",
    [
        ("R", "R"),
        ("c", "C"),
        ("R:truncate=0", "R"),
        ("R:truncate=4", "R:truncate=4"),
        ("R:decay=0.9:truncate=4", "R:truncate=4:decay=0.9"),
        ("C:combiner=sign_g", "C:combiner=sign_g"),
        ("C:combiner=sign", "C"),
        ("M:and_mask=1", "M:and_mask=1"),
        (" S ", "S"),
    ],
)
def test_variant_names(text, name):
    v = comparison.parse_variant(text)
    assert v.name == name
    cfg = stablebptt.RunConfig(problem="linear", **v.config)
    assert comparison.variant_of(cfg) == name


@pytest.mark.parametrize(
    "text, msg",
    [
        ("Q", "variant 'Q': unknown mode 'Q'; allowed: R, M, S, N, C"),
        ("R:trunc=2", "variant 'R:trunc=2': unknown option 'trunc'; allowed: truncate, decay, combiner, and_mask"),
        ("R:truncate", "'truncate' is not KEY=VALUE"),
        ("R:truncate=x", "truncate='x'; takes an integer"),
        ("R:truncate=-1", "truncate=-1; must be an int ≥ 0"),
        ("R:decay=1.5", "decay=1.5; must be in (0, 1]"),
        ("R:decay=nan", "decay='nan'; takes a finite number"),
        ("R:combiner=sign_g", "combiner applies to mode C only"),
        ("C:combiner=max", "unknown combiner 'max'; allowed: sign, sign_g"),
        ("R:truncate=2:truncate=3", "option 'truncate' given twice"),
    ],
)
def test_variant_errors_name_the_bad_part(text, msg):
    with pytest.raises(ValueError) as e:
        comparison.parse_variant(text)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_variant_lists():
    assert [v.name for v in comparison.parse_variants("R, M,C:combiner=sign_g")] == ["R", "M", "C:combiner=sign_g"]
    with pytest.raises(ValueError, match="'R' and 'R:truncate=0' are the same"):
        comparison.parse_variants(["R", "R:truncate=0"])
    with pytest.raises(ValueError, match="no variants given"):
        comparison.parse_variants(" , ")


def test_quick_settings_of_the_built_in_problems(monkeypatch):
    from stablebptt.training import config

    assert comparison.quick_config("cartpole") == {"epochs": 60, "n_train": 64, "n_test": 64}  # QUICK_SETTINGS
    assert comparison.quick_config("linear") == {"epochs": 60}
    monkeypatch.setitem(config.QUICK_EPOCHS, "pointmass.py:make", 7)  # stablebptt train's quick epochs
    assert comparison.quick_config("pointmass.py:make") == {"epochs": 7}
    monkeypatch.delitem(config.QUICK_EPOCHS, "pointmass.py:make")
    assert comparison.quick_config("toy-field") == {"epochs": 60}
    assert comparison.quick_config("cartpole", {"poles": 3}) == {"epochs": 60, "n_train": 64, "n_test": 64}


@pytest.mark.slow
def test_quick_settings_of_a_problem_without_quick_settings(done):
    # the point mass has no quick settings and no quick epochs: 20 epochs, its own 8 states (fewer than 64)
    assert comparison.quick_config(done["src"]) == {"epochs": 20, "n_train": 8, "n_test": 8}


def test_spec_has_one_block_per_set_of_options():
    vs = comparison.parse_variants("R,M,R:truncate=4,C:truncate=4")
    spec = comparison.comparison_spec("linear", vs, 2, {"steps": 5}, {"epochs": 3, "clip": "norm"})
    assert [(e.modes, e.config.get("truncate", 0), e.clips) for e in spec.experiment] == [
        (["R", "M"], 0, ["norm"]),
        (["R", "C"], 4, ["norm"]),
    ]
    ids = comparison.run_ids(spec)
    assert list(ids) == ["R", "M", "R:truncate=4", "C:truncate=4"] and all(set(s) == {0, 1} for s in ids.values())
    # every shared setting reaches every run (the optimizer and clipping included)
    shared = dict(optimizer="momentum", momentum=0.5, lr=0.2, clip="value", n_train=4, batch_size=2, epochs=2)
    spec = comparison.comparison_spec("linear", vs, [3], {}, shared)
    for cfg, seed in sweep.expand(spec):
        assert {k: getattr(cfg, k) for k in shared} == shared and seed == 3
    with pytest.raises(sweep.SpecError, match="config sets truncate"):
        comparison.comparison_spec("linear", vs, 2, {}, {"truncate": 3})


# ----------------------------------------------------------------------------- verdicts
def finals(data: dict) -> pd.DataFrame:
    """{variant: [final per seed]} -> the table of final losses the statistics read."""
    return pd.DataFrame(
        [
            dict(variant=v, seed=s, run_id=f"{v}-{s}", status="diverged" if np.isinf(x) else "finished", final=float(x))
            for v, xs in data.items()
            for s, x in enumerate(xs)
        ]
    )


def test_verdicts_on_constructed_records():
    R = np.array([1.0, 2.0, 0.5, 4.0, 1.5])
    noise = np.array([1.1, 0.9, 1.2, 0.8, 1.0])
    f = finals(
        {
            "R": R,
            "C": R / 10 * noise,
            "M": R * 3 * noise,
            "S": R * np.array([2, 0.5, 2, 0.5, 1.0]),
            "N": R,
            "D": np.full(5, np.inf),
        }
    )
    r = {v: comparison.ratio(f, v, "R", n_boot=2000) for v in "CMSND"}
    assert r["C"].verdict == "C better" and r["C"].estimate == pytest.approx(10 / np.exp(np.mean(np.log(noise))))
    assert r["M"].verdict == "R better" and r["M"].estimate == pytest.approx(1 / 3 / np.exp(np.mean(np.log(noise))))
    assert r["S"].verdict == "undecided at 5 seeds"
    assert r["N"].verdict == "undecided at 5 seeds" and (r["N"].lo, r["N"].hi) == (1.0, 1.0)  # equal: never decided
    assert r["D"].verdict == "R better" and r["D"].estimate == 0.0  # diverged everywhere: ratio 0
    assert comparison.best_variant(f, list("RCMSND")) == "C"
    # one seed gives a point, not an interval
    one = comparison.ratio(f[f["seed"] == 0], "C", "R")
    assert one.n == 1 and one.verdict == "undecided at 1 seed"
    # a variant with a diverged seed ranks behind every variant without one, however low its others
    g = finals({"R": [1.0, 1.0], "C": [1e-6, np.inf]})
    assert comparison.best_variant(g, ["R", "C"]) == "R"
    row = comparison.variant_table(g, ["R", "C"])[1]
    assert (row["n"], row["diverged"], row["gm"], row["gsd"]) == (2, 1, pytest.approx(1e-6), 1.0)


def constructed(data: dict, reference: str = "R"):
    f = finals(data)
    return comparison.from_finals(
        f,
        variants=list(data),
        reference=reference,
        problem="x",
        params={},
        seeds=sorted(f["seed"].unique()),
        epochs=1,
        window=1,
        config={},
        runs={},
        folder=Path("."),
    )


def test_the_answer_on_constructed_records():
    R = np.array([1.0, 2.0, 0.5, 4.0, 1.5])
    c = constructed({"R": R, "M": R * 2, "C": R / 3})
    assert c.best == "C" and c.answer().startswith("answer: C beats R — C has the lowest final loss, 3× below R's")
    c = constructed({"R": R, "M": R * 2, "C": R * np.array([0.5, 2, 0.5, 2, 0.9])})
    assert c.best == "C" and c.answer().startswith("answer: undecided at 5 seeds — C has the lowest final loss")
    c = constructed({"R": R, "M": R * 2, "C": R * np.array([1.5, 0.9, 1.5, 0.9, 1.0])})
    assert c.answer() == (
        f"answer: no variant beats R — it has the lowest final loss (gm "
        f"{np.exp(np.mean(np.log(R))):.3g} over 5 seeds); M decidedly worse; C undecided against it"
    )
    c = constructed({"M": R, "R": R * 2}, reference="M")  # any variant can be the reference
    assert c.best == "M" and list(c.ratios) == ["R"] and c.ratios["R"].verdict == "M better"


# ----------------------------------------------------------------------------- records
def hand_final(folder: Path, window: int) -> float:
    """The last point of the window-epoch trailing mean of the run's test loss (left-padded
    with the first value), from metrics.csv."""
    y = pd.read_csv(folder / "metrics.csv")["test_loss"].to_numpy(float)
    y = np.concatenate([np.full(window - 1, y[0]), y])
    return float(y[-window:].mean())


def test_table_and_ratios_equal_a_hand_computation(done):
    c, root = done["second"], done["root"]
    rec = json.loads((root / "comparison.json").read_text())
    assert rec["variants"] == ["R", "C:truncate=2"] and rec["seeds"] == [0, 1] and rec["window"] == 2
    L = {v: np.array([hand_final(root / rec["runs"][v][str(s)], 2) for s in (0, 1)]) for v in rec["variants"]}
    for v in rec["variants"]:  # every run folder is the variant it claims to be
        cfg = json.loads((root / rec["runs"][v]["0"] / "config.json").read_text())["config"]
        assert comparison.variant_of(cfg) == v
    assert not np.allclose(L["R"][0], L["R"][1])  # the seeds differ (data and initial weights)
    for row in c.table:
        x = L[row["variant"]]
        assert row["gm"] == pytest.approx(np.exp(np.mean(np.log(x))), rel=1e-12)
        assert row["gsd"] == pytest.approx(np.exp(np.std(np.log(x), ddof=1)), rel=1e-12)
        assert (row["min"], row["max"], row["n"], row["diverged"]) == (x.min(), x.max(), 2, 0)
        assert rec["table"][[t["variant"] for t in rec["table"]].index(row["variant"])]["gm"] == row["gm"]
    for v in ("C:truncate=2",):
        r = L["R"] / L[v]
        got = c.ratios[v]
        assert got.test.per_seed == pytest.approx(r, rel=1e-12)
        assert got.estimate == pytest.approx(np.exp(np.mean(np.log(r))), rel=1e-12)
        # two seeds: the 4 resamples are equally likely, so the 2.5 % and 97.5 % points are the
        # smaller and the larger ratio (4000 resamples hit each with certainty for practical purposes)
        assert (got.lo, got.hi) == pytest.approx((r.min(), r.max()), rel=1e-12)
        want = f"{v} better" if r.min() > 1 else "R better" if r.max() < 1 else "undecided at 2 seeds"
        assert got.verdict == want == rec["ratios"][v]["verdict"]
    best = min(rec["variants"], key=lambda v: np.exp(np.mean(np.log(L[v]))))
    assert c.best == best == rec["best"]


def test_resume_computes_only_what_is_new(done):
    first, second, third = done["first"], done["second"], done["third"]
    assert (first.report.jobs, first.report.computed) == (2, 2)
    assert (second.report.jobs, second.report.computed, second.report.skipped) == (4, 2, 2)
    assert (third.report.computed, third.report.skipped) == (0, 4)
    after = {
        p.name: (p / "result.json").stat().st_mtime_ns for p in done["root"].iterdir() if (p / "result.json").exists()
    }
    assert {k: after[k] for k in done["before"]} == done["before"]  # the first seed's runs were not rewritten
    assert len(after) == 4


def test_load_rebuilds_the_comparison_from_the_records(done):
    c, loaded = done["third"], comparison.load(done["root"])
    assert loaded.variants == c.variants and loaded.best == c.best and loaded.answer() == c.answer()
    assert loaded.table == c.table
    # the same ratios (with two seeds the interval is [min, max] for any number of resamples)
    assert {v: (r.estimate, r.lo, r.hi, r.verdict) for v, r in loaded.ratios.items()} == {
        v: (r.estimate, r.lo, r.hi, r.verdict) for v, r in c.ratios.items()
    }
    # a table across comparisons: one row per (folder, variant)
    t = comparison.collect([done["root"], done["root"]])
    assert len(t) == 4 and list(t["variant"][:2]) == ["R", "C:truncate=2"] and set(t["folder"]) == {str(done["root"])}
    row = t.iloc[1]
    r = c.ratios["C:truncate=2"]
    assert (row["ratio"], row["lo"], row["hi"], row["verdict"]) == (r.estimate, r.lo, r.hi, r.verdict)
    assert not [col for col in t if col.startswith("param_")]  # compared at the problem's defaults
    assert t["best"].sum() == 2 and t.loc[t["best"], "variant"].iloc[0] == c.best
    assert stablebptt.load_comparison is comparison.load and stablebptt.compare is comparison.compare
    with pytest.raises(FileNotFoundError, match="no comparison.json"):
        comparison.load(done["dir"])


def test_cli_prints_the_table_and_writes_the_figures(done, monkeypatch):
    monkeypatch.chdir(done["dir"])
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(done["dir"] / "cache"))
    args = [
        "compare",
        done["src"],
        "--modes",
        VARIANTS,
        "--seeds",
        "2",
        "--window",
        "2",
        "--executor",
        "serial",
        "-c",
        "backward=autodiff",
        "-c",
        "batch_size=8",
        "--out",
        str(done["root"]),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out, c = res.output, done["third"]
    assert "4 runs: 0 computed, 4 already done" in out
    for v in ("C:truncate=2 (best)" if c.best == "C:truncate=2" else "R (best)", "R/C:truncate=2"):
        assert v in out
    assert c.answer() in " ".join(out.split()) or c.answer()[:40] in out
    assert f"{c.table[0]['gm']:.3g}" in out
    figs = sorted(p.name for p in (done["root"] / "figures").glob("*.png"))
    assert figs == ["pm-make-compare-ratios.png", "pm-make-compare-test-loss.png"]
    assert all((done["root"] / "figures" / f).stat().st_size > 10_000 for f in figs)
    md = (done["root"] / "COMPARISON.md").read_text()
    assert "| R/C:truncate=2 |" in md and "figures/pm-make-compare-ratios.png" in md


@pytest.mark.slow
def test_cli_diagnose_says_whether_its_recommendation_won(done, monkeypatch):
    monkeypatch.chdir(done["dir"])
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(done["dir"] / "cache"))
    res = runner.invoke(
        app,
        [
            "compare",
            done["src"],
            "--modes",
            VARIANTS,
            "--seeds",
            "2",
            "--window",
            "2",
            "--executor",
            "serial",
            "-c",
            "backward=autodiff",
            "-c",
            "batch_size=8",
            "--out",
            str(done["root"]),
            "--diagnose",
        ],
    )
    assert res.exit_code == 0, res.output
    out, c = res.output, comparison.load(done["root"])
    d = json.loads((done["root"] / "comparison.json").read_text())["diagnosis"]
    assert d["recommended_mode"] in ("R", "C") and (done["root"] / "diagnosis.png").is_file()
    assert d["picked_winner"] == (d["recommended_mode"] == c.best)
    assert f"recommends {d['recommended_mode']}" in out and ("picked the winner" in out) == d["picked_winner"]


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--modes", "R,Q"], "--modes: variant 'Q': unknown mode 'Q'"),
        (["--modes", "R,R:trunc=3"], "unknown option 'trunc'; allowed: truncate, decay, combiner, and_mask"),
        (["--modes", "M,C"], "--reference R: not one of the variants (M, C)"),
        (["--reference", "C:combiner=x"], "--reference: variant 'C:combiner=x': unknown combiner 'x'"),
        (["-c", "truncate=3"], "--config truncate: not a setting shared by the runs (give it per variant"),
        (["-c", "lr=-1"], "--config: lr: lr=-1.0; must be > 0"),
        (["-p", "stepz=3"], "no such parameter; allowed: dt, steps"),
        (["--seeds", "0"], "--seeds 0: must be ≥ 1"),
        (["--executor", "dask"], "--executor dask: allowed: local, serial, ray"),
    ],
)
def test_cli_bad_input_is_one_line(done, args, msg, monkeypatch):
    monkeypatch.chdir(done["dir"])
    res = runner.invoke(app, ["compare", done["src"], "--out", "nowhere", *args])
    assert res.exit_code == 2 and msg in " ".join(res.output.split()), res.output
    assert not (done["dir"] / "nowhere").exists()


def make_beyond():
    """docs/make_beyond.py imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_beyond", REPO / "docs" / "make_beyond.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_beyond_writes_a_page_from_comparison_folders(done, tmp_path, capsys):
    page = tmp_path / "beyond.md"
    assert make_beyond().main([str(done["root"]), "--out", str(page)]) == 0
    text = page.read_text()
    c = comparison.load(done["root"])
    assert "pm.py:make" in text and "| R/C:truncate=2 | diagnose |" in text
    for r in c.ratios.values():
        assert (
            f"{comparison.fmt_ratio(r.estimate)} [{comparison.fmt_ratio(r.lo)}, {comparison.fmt_ratio(r.hi)}] "
            f"*{r.verdict}*" in text
        )
    assert f"| **{c.best}** |" in text and "(img/beyond/cmp-pm-make-compare-ratios.png)" in text
    # the figures are copied beside the page (a docs site serves only its own folder)
    assert (page.parent / "img" / "beyond" / "cmp-pm-make-compare-ratios.png").read_bytes() == (
        done["root"] / "figures" / "pm-make-compare-ratios.png"
    ).read_bytes()
    capsys.readouterr()
    assert make_beyond().main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no comparison.json" in err and err.count("\n") == 1
