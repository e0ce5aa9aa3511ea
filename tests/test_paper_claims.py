"""The paper's acceptance claims (``experiments/paper/claims.py``) on synthetic result folders
with known answers, and the Fig. 2 claim against the numbers printed in the paper."""

import numpy as np
import pytest

from conftest import fake_run, paper_module
from stablebptt.analysis import results, stats

claims = paper_module("claims")


def test_cartpole_claims_known_answers(tmp_path):
    ep = 40
    for seed in range(5):
        for clip in ("none", "value"):
            fake_run(tmp_path, "cartpole", {"poles": 4}, "R", clip, seed, np.full(ep, 0.5 * (seed + 1)))
            fake_run(tmp_path, "cartpole", {"poles": 4}, "C", clip, seed, np.full(ep, 0.01 * (seed + 1)))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "R", clip, seed, np.full(ep, 0.05))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "S", clip, seed, np.full(ep, 1.8))
    c4, c1, cs = claims.cartpole_claims(results.collect(tmp_path))
    assert c4.verdict == stats.HELD
    assert [t.setting for t in c4.tests] == ["4 poles, clip none", "4 poles, clip value"]
    for t in c4.tests:  # every seed has R/C = 50: a degenerate interval at 50
        np.testing.assert_allclose(t.per_seed, 50.0, rtol=1e-6)
        assert t.lo == pytest.approx(50.0, rel=1e-6) and t.hi == pytest.approx(50.0, rel=1e-6)
    assert c1.verdict == stats.NOT_HELD  # 0.05 is not below 1e-2
    assert cs.verdict == stats.HELD and [t.setting for t in cs.tests] == ["1 pole, clip none", "1 pole, clip value"]


def test_cartpole_S_claim_and_mixed_seeds(tmp_path):
    ratios = [100.0, 1.0, 100.0, 1.0, 100.0]
    for seed, r in enumerate(ratios):
        fake_run(tmp_path, "cartpole", {"poles": 4}, "R", "norm", seed, np.full(10, 1e-2 * r))
        fake_run(tmp_path, "cartpole", {"poles": 4}, "C", "norm", seed, np.full(10, 1e-2))
        fake_run(tmp_path, "cartpole", {"poles": 4}, "S", "norm", seed, np.full(10, 1.8))
    c4, c1, cs = claims.cartpole_claims(results.collect(tmp_path))
    assert c4.verdict == "undecided at 5 seeds"
    assert c4.tests[0].fraction == pytest.approx(0.6)
    assert c1.verdict == stats.NOT_MEASURED and "1 pole" in c1.note
    assert cs.verdict == stats.HELD


def test_quantum_claims(tmp_path):
    for seed in range(3):
        for mode, upd, loss in (("R", np.logspace(-5, 2, 10), 120.0), ("C", np.logspace(-1, 0, 10), 100.0)):
            fake_run(tmp_path, "quantum", {"target": 5}, mode, "none", seed, np.full(10, loss), upd)
    below, span = claims.quantum_claims(results.collect(tmp_path))
    assert below.verdict == stats.HELD and below.tests[0].estimate == pytest.approx(1.2, rel=1e-6)
    assert span.verdict == stats.HELD and span.tests[0].estimate == pytest.approx(6.0, rel=1e-9)


def test_quantum_without_C_is_not_measured(tmp_path):
    fake_run(tmp_path, "quantum", {"target": 5}, "R", "none", 0, np.full(10, 110.0))
    below, span = claims.quantum_claims(results.collect(tmp_path))
    assert below.verdict == span.verdict == stats.NOT_MEASURED
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
    assert c.verdict == stats.HELD
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
    assert c.verdict == stats.NOT_HELD and c.tests[0].estimate == pytest.approx(-0.4, rel=1e-6)


def test_c_vs_m_counts_settings(tmp_path):
    # poles 1: C better in every seed; poles 4: M better in every seed; poles 2: one seed only
    for poles, c, m, seeds in ((1, 0.1, 0.2, 3), (4, 0.3, 0.2, 3), (2, 0.1, 0.2, 1)):
        for seed in range(seeds):
            fake_run(tmp_path, "cartpole", {"poles": poles}, "C", "none", seed, np.full(5, c))
            fake_run(tmp_path, "cartpole", {"poles": poles}, "M", "none", seed, np.full(5, m))
    claim = claims.c_vs_m({"cartpole": results.collect(tmp_path)})
    assert [t.verdict for t in claim.tests] == [stats.HELD, "undecided at 1 seed", stats.NOT_HELD]
    assert claim.verdict == "undecided at 1 seed"  # 1 of 3 held; the open one decides the majority
    assert claim.counts() == "1 held, 1 not held, 1 undecided of 3"


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
    assert claims.fig2_claim(good).verdict == stats.HELD
    bad = dict(good, C=series(["0.49", "0.13", "0.057", "0.031", "0.019"], "0.067"))
    c = claims.fig2_claim(bad)
    assert c.verdict == stats.NOT_HELD and "0.031" in c.note
    late = dict(good, R=np.concatenate([np.full(70, 1.0), np.full(131, 1e-3)]))
    assert claims.fig2_claim(late).verdict == stats.NOT_HELD
