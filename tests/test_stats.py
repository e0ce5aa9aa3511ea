"""The seed-paired statistics on synthetic result folders and samples with known answers."""

import numpy as np
import pytest

from conftest import fake_run
from stablebptt.analysis import results, stats

EPS64 = np.finfo(np.float64).eps


# ------------------------------------------------------------------ per-run values
def test_smoothing_uses_the_last_30_epochs(tmp_path):
    curve = np.concatenate([np.full(30, 1.0), np.full(30, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 0, curve)
    last = stats.final_losses(results.collect(tmp_path))
    assert last["final"].iloc[0] == pytest.approx(0.1, rel=1e-12)
    curve2 = np.concatenate([np.full(45, 1.0), np.full(15, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 1, curve2)
    last = stats.final_losses(results.collect(tmp_path)).sort_values("seed")
    assert last["final"].iloc[1] == pytest.approx(0.55, rel=1e-12)


def test_final_value_at_an_epoch_diverged_and_missing():
    e = np.arange(1, 41)
    y = np.linspace(2.0, 1.0, 40)
    # epoch 10 of a 30-epoch window: 20 padding copies of y[0], then y[0..9]
    want = (20 * y[0] + y[:10].sum()) / 30
    assert stats.final_value(e, y, epoch=10) == pytest.approx(want, rel=1e-12)
    assert stats.final_value(e, y, epoch=10, window=1) == y[9]
    assert stats.final_value(e, y, epoch=50) != stats.final_value(e, y, epoch=50)  # NaN: run ended at 40
    assert stats.final_value(e, y, diverged_at=41) == np.inf
    assert stats.final_value(e, y, diverged_at=41, epoch=10) == pytest.approx(want, rel=1e-12)
    assert stats.final_value(e, np.where(e % 2 == 0, y, np.nan), window=1) == y[-1]  # unevaluated epochs skipped


def test_diverged_run_is_infinitely_bad_in_a_pair(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "cartpole", {"poles": 1}, "C", "none", seed, np.full(20, 0.1))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "M", "none", 0, np.full(20, 0.2))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "M", "none", 1, np.full(12, 0.2), diverged_epoch=13)
    p = stats.paired(stats.final_losses(results.collect(tmp_path)), "M", "C", ["clip"])
    assert list(p["seed"]) == [0, 1]
    assert p["M"].iloc[0] == pytest.approx(0.2) and p["M"].iloc[1] == np.inf


def test_paired_drops_seeds_without_both_modes(tmp_path):
    for seed in (0, 1, 2):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "none", seed, np.full(5, 1.0 + seed))
    for seed in (1, 2, 3):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "none", seed, np.full(5, 0.1))
    p = stats.paired(stats.final_losses(results.collect(tmp_path)), "R", "C", [])
    assert list(p["seed"]) == [1, 2]
    np.testing.assert_allclose(p["R"], [2.0, 3.0])
    assert stats.paired(stats.final_losses(results.collect(tmp_path)), "R", "S", []).empty


def test_update_span():
    assert stats.update_span(np.logspace(-5, 2, 10)) == pytest.approx(7.0, rel=1e-12)
    assert stats.update_span([0.0, 1.0, 10.0]) == pytest.approx(1.0)  # the zero has no logarithm
    assert np.isnan(stats.update_span([0.0, np.nan]))


# ------------------------------------------------------------------ bootstrap and verdicts
def test_bootstrap_identical_values_give_a_degenerate_interval():
    x = np.full(5, np.log10(50.0))
    m, lo, hi = stats.bootstrap_mean(x)
    assert m == pytest.approx(np.log10(50.0), rel=8 * EPS64)
    assert lo == pytest.approx(m, rel=8 * EPS64) and hi == pytest.approx(m, rel=8 * EPS64)


def test_bootstrap_matches_the_normal_interval_and_is_reproducible():
    x = np.random.default_rng(3).normal(10.0, 1.0, size=400)
    m, lo, hi = stats.bootstrap_mean(x, seed=1)
    assert lo < m < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size), rel=0.1)
    assert stats.bootstrap_mean(x, seed=1) == (m, lo, hi)
    assert stats.bootstrap_mean(x, seed=2) != (m, lo, hi)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        stats.bootstrap_mean([])
    with pytest.raises(ValueError, match="confidence=1.5"):
        stats.bootstrap_mean([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="side='=>'"):
        stats.make_test("s", "q", "=>", 1.0, [0], [1.0], geometric=False)
    with pytest.raises(ValueError, match="2 seeds but 1 values"):
        stats.make_test("s", "q", ">", 1.0, [0, 1], [1.0], geometric=False)


def test_verdict_follows_the_interval():
    same = stats.make_test("s", "R/C", ">=", 10.0, range(5), [50.0] * 5, geometric=True)
    assert same.verdict == stats.HELD and same.fraction == 1.0
    assert same.lo == pytest.approx(50.0, rel=1e-12) and same.hi == pytest.approx(50.0, rel=1e-12)
    low = stats.make_test("s", "R/C", ">=", 10.0, range(5), [2.0] * 5, geometric=True)
    assert low.verdict == stats.NOT_HELD and low.fraction == 0.0
    # three seeds at 100, two at 1: gm 10**1.2, and the interval reaches from 10**0.4 to 100
    mixed = stats.make_test("s", "R/C", ">=", 10.0, range(5), [100, 1, 100, 1, 100], geometric=True)
    assert mixed.estimate == pytest.approx(10**1.2, rel=1e-12)
    assert mixed.lo < 10.0 < mixed.hi
    assert mixed.verdict == "undecided at 5 seeds" and mixed.fraction == pytest.approx(0.6)
    one = stats.make_test("s", "R/C", ">=", 10.0, [0], [50.0], geometric=True)
    assert one.verdict == "undecided at 1 seed"
    # strict against non-strict at the threshold itself
    eq = [1.0] * 4
    assert stats.make_test("s", "M/C", ">=", 1.0, range(4), eq, geometric=True).verdict == stats.HELD
    assert stats.make_test("s", "R/C", ">", 1.0, range(4), eq, geometric=True).verdict == stats.NOT_HELD
    # one infinite ratio (a diverged run) pulls the upper end to infinity
    inf = stats.make_test("s", "M/C", ">=", 1.0, range(5), [0.5, 0.5, 0.5, 0.5, np.inf], geometric=True)
    assert inf.hi == np.inf and inf.verdict == "undecided at 5 seeds"


def test_claim_rules():
    held = stats.make_test("a", "q", ">", 0.0, range(3), [1.0] * 3, geometric=False)
    fail = stats.make_test("b", "q", ">", 0.0, range(3), [-1.0] * 3, geometric=False)
    open_ = stats.make_test("c", "q", ">", 0.0, range(3), [1.0, -1.0, 2.0], geometric=False)
    single = stats.make_test("d", "q", ">", 0.0, [0], [1.0], geometric=False)
    assert open_.verdict == "undecided at 3 seeds"
    mk = lambda tests, rule="all": stats.Claim("k", "s", "q", tuple(tests), rule=rule).verdict
    assert mk([held, held]) == stats.HELD
    assert mk([held, fail, open_]) == stats.NOT_HELD
    assert mk([held, open_, single]) == "undecided at 1–3 seeds"
    assert mk([]) == stats.NOT_MEASURED
    assert mk([held, held, fail], "majority") == stats.HELD
    assert mk([held, fail, fail], "majority") == stats.NOT_HELD
    assert mk([held, fail, open_, open_], "majority") == "undecided at 3 seeds"
    with pytest.raises(ValueError, match="rule='most'"):
        mk([held], "most")


# ------------------------------------------------------------------ Markdown
def test_markdown_tables(tmp_path):
    t = stats.make_test(
        "4 poles, clip none", "R/C", ">=", 10.0, [0, 1], [20.0, 40.0], ["0.2/0.01", "0.4/0.01"], geometric=True
    )
    md = stats.tests_table([t])
    assert "R/C ≥ 10" in md and "s0: 20 (0.2/0.01)<br>s1: 40 (0.4/0.01)" in md and "2/2" in md
    c = stats.Claim("k", "statement", "what it stands for", (t,))
    assert "| statement | what it stands for | **held** |" in stats.claims_summary([c])
    assert "stands for: *what it stands for*. Verdict: **held**" in stats.claim_details(c)
    for seed, v in enumerate((0.1, 1.0)):
        fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", seed, np.full(5, v))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "C", "none", 0, np.full(5, 0.2), diverged_epoch=3)
    runs = stats.final_losses(results.collect(tmp_path))
    table = stats.final_loss_table(runs, "param_poles", "cartpole")
    gm, gsd = np.sqrt(0.1), np.exp(np.std(np.log([0.1, 1.0]), ddof=1))
    assert f"| 1 pole | none | {gm:.3g} ×/÷ {gsd:.2g} (n=2) | diverged (1/1) |" in table


def test_pairing_refuses_runs_that_differ_elsewhere(tmp_path):
    fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "none", 0, np.full(5, 1.0))
    fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "norm", 0, np.full(5, 2.0))
    fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "none", 0, np.full(5, 0.1))
    runs = stats.final_losses(results.collect(tmp_path))
    with pytest.raises(ValueError, match=r"several runs per \(mode, seed\)"):
        stats.paired(runs, "R", "C", [])
    assert len(stats.paired(runs, "R", "C", ["clip"])) == 1
