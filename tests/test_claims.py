"""The acceptance-claim tests on synthetic result folders and samples with known answers."""

import json

import numpy as np
import pytest

from stablebptt.analysis import claims, results
from stablebptt.training.config import RunConfig, run_id

EPS64 = np.finfo(np.float64).eps


def fake_run(root, problem, params, mode, clip, seed, curve, update=None, diverged_epoch=None):
    """A result folder as the runner writes it; ``curve`` is the test loss per epoch."""
    cfg = RunConfig(problem=problem, problem_params=params, mode=mode, clip=clip, epochs=len(curve))
    d = root / run_id(cfg, seed)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "seed": seed}))
    upd = update if update is not None else np.ones(len(curve))
    rows = ["epoch,loss,train_loss,test_loss,update_norm,wall_s"]
    rows += [f"{i + 1},{v},{v},{v},{u},0.1" for i, (v, u) in enumerate(zip(curve, upd))]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "result.json").write_text(
        json.dumps(
            {
                "run_id": d.name,
                "seed": seed,
                "status": "diverged" if diverged_epoch else "finished",
                "diverged_epoch": diverged_epoch,
                "epochs_done": len(curve),
                "initial": {"train_loss": 2.0, "test_loss": 2.0},
                "final": {},
                "compile_s": 0.0,
                "train_s": 0.0,
            }
        )
    )


# ------------------------------------------------------------------ per-run values
def test_smoothing_uses_the_last_30_epochs(tmp_path):
    curve = np.concatenate([np.full(30, 1.0), np.full(30, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 0, curve)
    last = claims.final_losses(results.collect(tmp_path))
    assert last["final"].iloc[0] == pytest.approx(0.1, rel=1e-12)
    curve2 = np.concatenate([np.full(45, 1.0), np.full(15, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 1, curve2)
    last = claims.final_losses(results.collect(tmp_path)).sort_values("seed")
    assert last["final"].iloc[1] == pytest.approx(0.55, rel=1e-12)


def test_final_value_at_an_epoch_diverged_and_missing():
    e = np.arange(1, 41)
    y = np.linspace(2.0, 1.0, 40)
    # epoch 10 of a 30-epoch window: 20 padding copies of y[0], then y[0..9]
    want = (20 * y[0] + y[:10].sum()) / 30
    assert claims.final_value(e, y, epoch=10) == pytest.approx(want, rel=1e-12)
    assert claims.final_value(e, y, epoch=10, window=1) == y[9]
    assert claims.final_value(e, y, epoch=50) != claims.final_value(e, y, epoch=50)  # NaN: run ended at 40
    assert claims.final_value(e, y, diverged_at=41) == np.inf
    assert claims.final_value(e, y, diverged_at=41, epoch=10) == pytest.approx(want, rel=1e-12)
    assert claims.final_value(e, np.where(e % 2 == 0, y, np.nan), window=1) == y[-1]  # unevaluated epochs skipped


def test_diverged_run_is_infinitely_bad_in_a_pair(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "cartpole", {"poles": 1}, "C", "none", seed, np.full(20, 0.1))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "M", "none", 0, np.full(20, 0.2))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "M", "none", 1, np.full(12, 0.2), diverged_epoch=13)
    p = claims.paired(claims.final_losses(results.collect(tmp_path)), "M", "C", ["clip"])
    assert list(p["seed"]) == [0, 1]
    assert p["M"].iloc[0] == pytest.approx(0.2) and p["M"].iloc[1] == np.inf


def test_paired_drops_seeds_without_both_modes(tmp_path):
    for seed in (0, 1, 2):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "none", seed, np.full(5, 1.0 + seed))
    for seed in (1, 2, 3):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "none", seed, np.full(5, 0.1))
    p = claims.paired(claims.final_losses(results.collect(tmp_path)), "R", "C", [])
    assert list(p["seed"]) == [1, 2]
    np.testing.assert_allclose(p["R"], [2.0, 3.0])
    assert claims.paired(claims.final_losses(results.collect(tmp_path)), "R", "S", []).empty


def test_update_span():
    assert claims.update_span(np.logspace(-5, 2, 10)) == pytest.approx(7.0, rel=1e-12)
    assert claims.update_span([0.0, 1.0, 10.0]) == pytest.approx(1.0)  # the zero has no logarithm
    assert np.isnan(claims.update_span([0.0, np.nan]))


# ------------------------------------------------------------------ bootstrap and verdicts
def test_bootstrap_identical_values_give_a_degenerate_interval():
    x = np.full(5, np.log10(50.0))
    m, lo, hi = claims.bootstrap_mean(x)
    assert m == pytest.approx(np.log10(50.0), rel=8 * EPS64)
    assert lo == pytest.approx(m, rel=8 * EPS64) and hi == pytest.approx(m, rel=8 * EPS64)


def test_bootstrap_matches_the_normal_interval_and_is_reproducible():
    x = np.random.default_rng(3).normal(10.0, 1.0, size=400)
    m, lo, hi = claims.bootstrap_mean(x, seed=1)
    assert lo < m < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size), rel=0.1)
    assert claims.bootstrap_mean(x, seed=1) == (m, lo, hi)
    assert claims.bootstrap_mean(x, seed=2) != (m, lo, hi)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        claims.bootstrap_mean([])
    with pytest.raises(ValueError, match="confidence=1.5"):
        claims.bootstrap_mean([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="side='=>'"):
        claims.make_test("s", "q", "=>", 1.0, [0], [1.0], geometric=False)
    with pytest.raises(ValueError, match="2 seeds but 1 values"):
        claims.make_test("s", "q", ">", 1.0, [0, 1], [1.0], geometric=False)


def test_verdict_follows_the_interval():
    same = claims.make_test("s", "R/C", ">=", 10.0, range(5), [50.0] * 5, geometric=True)
    assert same.verdict == claims.HELD and same.fraction == 1.0
    assert same.lo == pytest.approx(50.0, rel=1e-12) and same.hi == pytest.approx(50.0, rel=1e-12)
    low = claims.make_test("s", "R/C", ">=", 10.0, range(5), [2.0] * 5, geometric=True)
    assert low.verdict == claims.NOT_HELD and low.fraction == 0.0
    # three seeds at 100, two at 1: gm 10**1.2, and the interval reaches from 10**0.4 to 100
    mixed = claims.make_test("s", "R/C", ">=", 10.0, range(5), [100, 1, 100, 1, 100], geometric=True)
    assert mixed.estimate == pytest.approx(10**1.2, rel=1e-12)
    assert mixed.lo < 10.0 < mixed.hi
    assert mixed.verdict == "undecided at 5 seeds" and mixed.fraction == pytest.approx(0.6)
    one = claims.make_test("s", "R/C", ">=", 10.0, [0], [50.0], geometric=True)
    assert one.verdict == "undecided at 1 seed"
    # strict against non-strict at the threshold itself
    eq = [1.0] * 4
    assert claims.make_test("s", "M/C", ">=", 1.0, range(4), eq, geometric=True).verdict == claims.HELD
    assert claims.make_test("s", "R/C", ">", 1.0, range(4), eq, geometric=True).verdict == claims.NOT_HELD
    # one infinite ratio (a diverged run) pulls the upper end to infinity
    inf = claims.make_test("s", "M/C", ">=", 1.0, range(5), [0.5, 0.5, 0.5, 0.5, np.inf], geometric=True)
    assert inf.hi == np.inf and inf.verdict == "undecided at 5 seeds"


def test_claim_rules():
    held = claims.make_test("a", "q", ">", 0.0, range(3), [1.0] * 3, geometric=False)
    fail = claims.make_test("b", "q", ">", 0.0, range(3), [-1.0] * 3, geometric=False)
    open_ = claims.make_test("c", "q", ">", 0.0, range(3), [1.0, -1.0, 2.0], geometric=False)
    single = claims.make_test("d", "q", ">", 0.0, [0], [1.0], geometric=False)
    assert open_.verdict == "undecided at 3 seeds"
    mk = lambda tests, rule="all": claims.Claim("k", "s", "q", tuple(tests), rule=rule).verdict
    assert mk([held, held]) == claims.HELD
    assert mk([held, fail, open_]) == claims.NOT_HELD
    assert mk([held, open_, single]) == "undecided at 1–3 seeds"
    assert mk([]) == claims.NOT_MEASURED
    assert mk([held, held, fail], "majority") == claims.HELD
    assert mk([held, fail, fail], "majority") == claims.NOT_HELD
    assert mk([held, fail, open_, open_], "majority") == "undecided at 3 seeds"
    with pytest.raises(ValueError, match="rule='most'"):
        mk([held], "most")


# ------------------------------------------------------------------ the claims on synthetic records
def test_cartpole_claims_known_answers(tmp_path):
    ep = 40
    for seed in range(5):
        for clip in ("none", "value"):
            fake_run(tmp_path, "cartpole", {"poles": 4}, "R", clip, seed, np.full(ep, 0.5 * (seed + 1)))
            fake_run(tmp_path, "cartpole", {"poles": 4}, "C", clip, seed, np.full(ep, 0.01 * (seed + 1)))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "R", clip, seed, np.full(ep, 0.05))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "S", clip, seed, np.full(ep, 1.8))
    c4, c1, cs = claims.cartpole_claims(results.collect(tmp_path))
    assert c4.verdict == claims.HELD
    assert [t.setting for t in c4.tests] == ["4 poles, clip none", "4 poles, clip value"]
    for t in c4.tests:  # every seed has R/C = 50: a degenerate interval at 50
        np.testing.assert_allclose(t.per_seed, 50.0, rtol=1e-6)
        assert t.lo == pytest.approx(50.0, rel=1e-6) and t.hi == pytest.approx(50.0, rel=1e-6)
    assert c1.verdict == claims.NOT_HELD  # 0.05 is not below 1e-2
    assert cs.verdict == claims.HELD and [t.setting for t in cs.tests] == ["1 pole, clip none", "1 pole, clip value"]


def test_cartpole_S_claim_and_mixed_seeds(tmp_path):
    ratios = [100.0, 1.0, 100.0, 1.0, 100.0]
    for seed, r in enumerate(ratios):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "norm", seed, np.full(10, 1e-2 * r))
        fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "norm", seed, np.full(10, 1e-2))
        fake_run(tmp_path, "cartpole", {"poles": 4}, "S", "norm", seed, np.full(10, 1.8))
    c4, c1, cs = claims.cartpole_claims(results.collect(tmp_path))
    assert c4.verdict == "undecided at 5 seeds"
    assert c4.tests[0].fraction == pytest.approx(0.6)
    assert c1.verdict == claims.NOT_MEASURED and "1 pole" in c1.note
    assert cs.verdict == claims.HELD


def test_quantum_claims(tmp_path):
    for seed in range(3):
        for mode, upd, loss in (("R", np.logspace(-5, 2, 10), 120.0), ("C", np.logspace(-1, 0, 10), 100.0)):
            fake_run(tmp_path, "quantum", {"target": 5}, mode, "none", seed, np.full(10, loss), upd)
    below, span = claims.quantum_claims(results.collect(tmp_path))
    assert below.verdict == claims.HELD and below.tests[0].estimate == pytest.approx(1.2, rel=1e-6)
    assert span.verdict == claims.HELD and span.tests[0].estimate == pytest.approx(6.0, rel=1e-9)


def test_quantum_without_C_is_not_measured(tmp_path):
    fake_run(tmp_path, "quantum", {"target": 5}, "R", "none", 0, np.full(10, 110.0))
    below, span = claims.quantum_claims(results.collect(tmp_path))
    assert below.verdict == span.verdict == claims.NOT_MEASURED
    assert "R none seed 0" in below.note


def guidance_records(root, gap_easy, gap_hard, seeds=4):
    for seed in range(seeds):
        for clip in ("none", "norm"):
            for rc, gap in ((1.0, gap_easy), (0.1, (gap_easy + gap_hard) / 2), (0.001, gap_hard)):
                fake_run(root, "guidance", {"rc": rc}, "C", clip, seed, np.full(20, 1.0))
                fake_run(root, "guidance", {"rc": rc}, "R", clip, seed, np.full(20, 1.0 + gap))


def test_guidance_gap_widens(tmp_path):
    guidance_records(tmp_path, 0.0, 0.5)
    c = claims.guidance_claim(results.collect(tmp_path))
    assert c.verdict == claims.HELD
    (t,) = c.tests
    assert t.estimate == pytest.approx(0.5, rel=1e-6) and t.lo == pytest.approx(t.hi, rel=1e-6)
    assert [x.setting for x in c.context] == [
        "clip none",
        "clip norm",
        "rc 1, mean over clippings",
        "rc 0.1, mean over clippings",
        "rc 0.001, mean over clippings",
    ]
    assert "raw" in claims.guidance_claim(results.collect(tmp_path), epoch=10, window=1).statement


def test_guidance_gap_narrows(tmp_path):
    guidance_records(tmp_path, 0.5, 0.1)
    c = claims.guidance_claim(results.collect(tmp_path), epoch=10)
    assert c.verdict == claims.NOT_HELD and c.tests[0].estimate == pytest.approx(-0.4, rel=1e-6)


def test_c_vs_m_counts_settings(tmp_path):
    # poles 1: C better in every seed; poles 4: M better in every seed; poles 2: one seed only
    for poles, c, m, seeds in ((1, 0.1, 0.2, 3), (4, 0.3, 0.2, 3), (2, 0.1, 0.2, 1)):
        for seed in range(seeds):
            fake_run(tmp_path, "cartpole", {"poles": poles}, "C", "none", seed, np.full(5, c))
            fake_run(tmp_path, "cartpole", {"poles": poles}, "M", "none", seed, np.full(5, m))
    claim = claims.c_vs_m({"cartpole": results.collect(tmp_path)})
    assert [t.verdict for t in claim.tests] == [claims.HELD, "undecided at 1 seed", claims.NOT_HELD]
    assert claim.verdict == "undecided at 1 seed"  # 1 of 3 held; the open one decides the majority
    assert claim.counts() == "1 held, 1 not held, 1 undecided of 3"


# ------------------------------------------------------------------ Markdown
def test_markdown_tables(tmp_path):
    t = claims.make_test(
        "4 poles, clip none", "R/C", ">=", 10.0, [0, 1], [20.0, 40.0], ["0.2/0.01", "0.4/0.01"], geometric=True
    )
    md = claims.tests_table([t])
    assert "R/C ≥ 10" in md and "s0: 20 (0.2/0.01)<br>s1: 40 (0.4/0.01)" in md and "2/2" in md
    c = claims.Claim("k", "statement", "what it stands for", (t,))
    assert "| statement | what it stands for | **held** |" in claims.claims_summary([c])
    assert "stands for: *what it stands for*. Verdict: **held**" in claims.claim_details(c)
    for seed, v in enumerate((0.1, 1.0)):
        fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", seed, np.full(5, v))
    fake_run(tmp_path, "cartpole", {"poles": 1}, "C", "none", 0, np.full(5, 0.2), diverged_epoch=3)
    runs = claims.final_losses(results.collect(tmp_path))
    table = claims.final_loss_table(runs, "param_poles", "cartpole")
    gm, gsd = np.sqrt(0.1), np.exp(np.std(np.log([0.1, 1.0]), ddof=1))
    assert f"| 1 pole | none | {gm:.3g} ×/÷ {gsd:.2g} (n=2) | diverged (1/1) |" in table


def test_fig2_claim_against_the_printed_numbers():
    assert claims.matches_printed(0.02993, "0.030") and not claims.matches_printed(0.0306, "0.030")
    assert claims.local_minima([3, 1, 2, 0.5, 4]) == [1.0, 0.5]

    def series(minima, final, n=201):
        out = np.full(n, 10.0)
        for k, m in enumerate(minima):
            out[10 + 20 * k] = float(m)
        out[-1] = float(final)
        return out

    R = np.concatenate([np.full(59, 1.0), np.full(142, 1e-3)])
    good = {"R": R, **{m: series(mins, fin) for m, (mins, fin) in claims.FIG2_PRINTED.items()}}
    assert claims.fig2_claim(good).verdict == claims.HELD
    bad = dict(good, C=series(["0.49", "0.13", "0.057", "0.031", "0.019"], "0.067"))
    c = claims.fig2_claim(bad)
    assert c.verdict == claims.NOT_HELD and "0.031" in c.note
    late = dict(good, R=np.concatenate([np.full(70, 1.0), np.full(131, 1e-3)]))
    assert claims.fig2_claim(late).verdict == claims.NOT_HELD


def test_pairing_refuses_runs_that_differ_elsewhere(tmp_path):
    fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "none", 0, np.full(5, 1.0))
    fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "norm", 0, np.full(5, 2.0))
    fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "none", 0, np.full(5, 0.1))
    runs = claims.final_losses(results.collect(tmp_path))
    with pytest.raises(ValueError, match=r"several runs per \(mode, seed\)"):
        claims.paired(runs, "R", "C", [])
    assert len(claims.paired(runs, "R", "C", ["clip"])) == 1
