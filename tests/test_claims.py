"""The acceptance-claim checks on synthetic result folders (known answers)."""
import json

import numpy as np

from stablebptt import claims
from stablebptt.config import RunConfig, run_id


def fake_run(root, problem, params, mode, clip, seed, curve, update=None):
    cfg = RunConfig(problem=problem, problem_params=params, mode=mode, clip=clip, epochs=len(curve))
    d = root / run_id(cfg, seed)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "seed": seed}))
    upd = update if update is not None else np.ones(len(curve))
    rows = ["epoch,loss,train_loss,test_loss,update_norm,wall_s"]
    rows += [f"{i + 1},{v},{v},{v},{u},0.1" for i, (v, u) in enumerate(zip(curve, upd))]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "result.json").write_text(json.dumps({
        "run_id": d.name, "seed": seed, "status": "finished", "diverged_epoch": None, "epochs_done": len(curve),
        "initial": {"train_loss": 2.0, "test_loss": 2.0}, "final": {}, "compile_s": 0.0, "train_s": 0.0}))


def test_cartpole_claims_known_answers(tmp_path):
    ep = 40
    for seed in (0, 1):
        for clip in ("none", "value"):
            fake_run(tmp_path, "cartpole", {"poles": 4}, "R", clip, seed, np.full(ep, 0.5))
            fake_run(tmp_path, "cartpole", {"poles": 4}, "C", clip, seed, np.full(ep, 0.01))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "R", clip, seed, np.full(ep, 0.05))
            fake_run(tmp_path, "cartpole", {"poles": 1}, "S", clip, seed, np.full(ep, 1.8))
    c4, c1, cs = claims.cartpole_claims(tmp_path)
    assert c4.status == "held" and "R/C = 50" in c4.evidence
    assert c1.status == "not held"  # 0.05 is not below 1e-2
    assert cs.status == "held"


def test_smoothing_uses_the_last_30_epochs(tmp_path):
    curve = np.concatenate([np.full(30, 1.0), np.full(30, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 0, curve)
    last = claims.final_smoothed(__import__("stablebptt").results.collect(tmp_path))
    assert np.isclose(last["final"].iloc[0], 0.1)
    curve2 = np.concatenate([np.full(45, 1.0), np.full(15, 0.1)])
    fake_run(tmp_path, "cartpole", {"poles": 1}, "R", "none", 1, curve2)
    last = claims.final_smoothed(__import__("stablebptt").results.collect(tmp_path))
    assert np.isclose(sorted(last["final"])[1], 0.55)


def test_quantum_update_span(tmp_path):
    for mode, upd in (("R", np.logspace(-5, 2, 10)), ("C", np.logspace(-1, 0, 10))):
        fake_run(tmp_path, "quantum", {"target": 5}, mode, "none", 0, np.full(10, 100.0 if mode == "C" else 120.0), upd)
    below, span = claims.quantum_claims(tmp_path)
    assert below.status == "held"
    assert span.status == "held" and "R 7.00" in span.evidence and "C 1.00" in span.evidence
