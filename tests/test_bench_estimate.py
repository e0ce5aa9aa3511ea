"""The whole-paper estimate of benchmarks/bench_paper.py: the second worker's measured gain
(bench_cores.py) replaces the ideal ×2 where it was measured, and only there."""

import pytest


@pytest.fixture()
def bench_paper(bench_module):
    return bench_module("bench_paper")


def test_two_worker_estimate_uses_the_measured_gain(bench_paper):
    epochs = [
        {"problem": p, "mode": m, "epoch_s": s} for p, s in (("cartpole", 0.05), ("quantum", 0.45)) for m in ("R", "C")
    ]
    compile_rows = [{"problem": p, "cache": "cold", "compile_s": 3.0} for p in ("cartpole", "quantum")]
    cores = [
        {"problem": "quantum", "mode": "R", "two_process_throughput": 1.08},
        {"problem": "quantum", "mode": "C", "two_process_throughput": 1.16},
    ]
    est = bench_paper.estimate(epochs, compile_rows, 2, cores)
    configs, ep = bench_paper.GRID["quantum"]
    one = configs * (bench_paper.SEEDS * ep * 0.45 + 3.0) / 3600
    assert est["quantum"]["cpu_1proc_h"] == pytest.approx(one)
    assert est["quantum"]["cpu_2proc_h"] == pytest.approx(one / 1.12)
    assert est["quantum"]["two_process_measured"]
    # cart-pole has no measurement: the ideal two workers, flagged as such
    assert est["cartpole"]["cpu_2proc_h"] == pytest.approx(est["cartpole"]["cpu_1proc_h"] / 2)
    assert not est["cartpole"]["two_process_measured"]
    assert "guidance" not in est  # no epochs measured: no estimate
    assert est["total"]["cpu_2proc_h"] == pytest.approx(est["quantum"]["cpu_2proc_h"] + est["cartpole"]["cpu_2proc_h"])
    # without core rows every problem gets the ideal factor
    plain = bench_paper.estimate(epochs, compile_rows, 2)
    assert plain["quantum"]["cpu_2proc_h"] == pytest.approx(one / 2)
