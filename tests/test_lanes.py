"""Lanes: runs that differ in mode, learning rate or clipping as one vmapped program.

Each lane must give what its own run gives: the engine's update of its mode (checked against
``value_and_update``, itself checked against jax.grad and finite differences in test_engine),
the optimizer's step (against ``optim.make``), and the trainer's and the sweep's results
(against one run per config).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close, overflowing_linear, reference_divergence_epoch
from stablebptt import core as F
from stablebptt import problems
from stablebptt.experiments import run, sweep
from stablebptt.training import optim
from stablebptt.training import runner as T
from stablebptt.training.config import RunConfig, run_id

FLOWS = [
    F.Flow("R"),
    F.Flow("M"),
    F.Flow("S"),
    F.Flow("N"),
    F.Flow("C"),
    F.Flow("R", truncate=3),
    F.Flow("M", decay=0.9),
    F.Flow(["R"] * 5 + ["M"] * 5),
    F.Flow(["R", "M", "R", "M"]),
    F.Flow("C", c_fields=("S", "R")),
]


EPS = float(np.finfo(np.float32).eps)


def _rel(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("cartpole", 10), ("toy-field", 4), ("guidance", 10)])
def test_lanes_of_one_program_give_each_modes_update(name, steps):
    """All FLOWS as lanes of one vmapped program (traced gates; batched-Jacobian path for
    the MLPs, the two-adjoint cell for the toy's controller) vs value_and_update per mode."""
    pr = problems.get(name, steps=steps)
    model = pr.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(pr.sample_data(0, 4, 4)[0])
    kw = dict(step=pr.step, loss=pr.loss, horizon=pr.horizon)
    flows = [f for f in FLOWS if isinstance(f.mode, str) or len(f.mode) == pr.horizon]
    each = [f.gates(pr.horizon, diagnostics=True) for f in flows]
    lanes = F.Gates(np.stack([g.fields for g in each]), np.stack([g.combined for g in each]))
    # the batched Jacobian where rows are independent (the MLPs), else the per-step one
    strategy = [c for c in F.candidates(model, x0, gates=lanes.fields, **kw) if isinstance(c, F.ReverseSweep)][0]
    vals, ups, infos, _ = jax.jit(
        jax.vmap(lambda l: F.flow_update(model, x0, flow=F.Flow("C"), gates=l, backward=strategy, **kw))
    )(lanes)
    for i, f in enumerate(flows):
        v, u, info = F.value_and_update(model, x0, flow=f, diagnostics=True, backward=F.Autodiff(), **kw)
        lane_u = jax.tree_util.tree_map(lambda a: a[i], ups)
        assert float(vals[i]) == pytest.approx(float(v), rel=1e-5), f.label()
        assert _rel(lane_u, u) < 2e-5, f.label()
        for k in ("cos_mg", "sign_agree", "update_norm"):
            assert float(infos[k][i]) == pytest.approx(float(info[k]), rel=1e-4, abs=1e-6), (f.label(), k)
    # the lanes really differ (a lane that ignored its gates would pass only for R)
    r, m = [flows.index(F.Flow(x)) for x in ("R", "M")]
    assert _rel(jax.tree_util.tree_map(lambda a: a[r], ups), jax.tree_util.tree_map(lambda a: a[m], ups)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_hyperparameters_as_data_are_make_s_arithmetic(name):
    """optim.injected (learning rate and clipping thresholds in the optimizer state, so lanes
    can differ in them) against optim.make with constants: the same bits op by op for the
    paper's Adam; otherwise, and compiled (XLA may fold a constant learning rate), within the
    rounding of the operations of four updates. optim.fixed (one configuration's
    hyperparameters as constants of the program, the state laid out as injected's) likewise."""
    key = jax.random.PRNGKey(0)
    params = {"a": jax.random.normal(key, (5, 3)), "b": jnp.zeros(3)}
    grads = [
        jax.tree_util.tree_map(lambda p: 3 * jax.random.normal(jax.random.fold_in(key, i), p.shape), params)
        for i in range(4)
    ]
    for clip in optim.CLIPPING:
        for lr, t in ((1e-3, 1.0), (3e-2, 0.5)):
            tx = optim.make(name, lr, clip, t)
            lane = optim.injected(name)(**optim.hyperparams(lr, clip, t))
            fix = optim.fixed(name, **optim.hyperparams(lr, clip, t))
            s1, s2, s4 = tx.init(params), lane.init(params), fix.init(params)
            s3 = s2
            p1 = p2 = p3 = p4 = params
            for g in grads:
                u1, s1 = tx.update(g, s1, p1)
                u2, s2 = lane.update(g, s2, p2)
                u3, s3 = jax.jit(lane.update)(g, s3, p3)
                u4, s4 = jax.jit(fix.update)(g, s4, p4)
                p1, p2, p3, p4 = (
                    jax.tree_util.tree_map(jnp.add, p, u) for p, u in ((p1, u1), (p2, u2), (p3, u3), (p4, u4))
                )
            assert jax.tree_util.tree_structure(s4) == jax.tree_util.tree_structure(s2)
            assert int(s4.count) == int(s2.count) == len(grads)
            for a, b, c, d in zip(*(jax.tree_util.tree_leaves(p) for p in (p1, p2, p3, p4))):
                if name == "adam":
                    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
                    np.testing.assert_array_equal(np.asarray(d), np.asarray(c))  # both compiled
                # 4 updates of ~16 float32 operations, each rounded at most 1 ulp differently when
                # XLA folds or reassociates them: at most 64 ulps of the largest entry
                bound = 64 * EPS * float(np.max(np.abs(np.asarray(a))))
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=bound)
                np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=0, atol=bound)
                np.testing.assert_allclose(np.asarray(d), np.asarray(a), rtol=0, atol=bound)
    with pytest.raises(ValueError, match="unknown clipping 'soft'"):
        optim.hyperparams(1e-3, "soft")


def _base(**kw):
    return dict(problem="cartpole", problem_params={"steps": 20}, epochs=3, n_train=32, n_test=32, data="seeded") | kw


@pytest.mark.slow
def test_trained_lanes_match_one_run_per_config():
    pr = problems.get("cartpole", steps=20)
    cfgs = [
        RunConfig(mode="R", **_base()),
        RunConfig(mode="C", clip="value", **_base()),
        RunConfig(mode="M", clip="norm", clip_threshold=0.5, lr=2e-3, **_base()),
        RunConfig(mode="S", **_base()),
    ]
    seeds = [0, 1, 0, 2]
    lanes = T.train(pr, cfgs[0], seeds, lane_configs=cfgs)
    for c, s, lane in zip(cfgs, seeds, lanes):
        (one,) = T.train(pr, c, s)
        assert lane.seed == s and lane.initial == one.initial
        assert list(lane.history) == list(one.history)  # cos/sign columns only where C (or diagnostics)
        for k in one.history:
            if k != "wall_s":
                # a lane sums in another order than its run (~1e-7 per update); 3 epochs of
                # training amplify it, measured against each metric's scale
                assert_close(lane.history[k], one.history[k], 1e-4, f"{c.mode} {k}")
    # different modes/settings really trained differently
    assert lanes[0].history["test_loss"][-1] != lanes[2].history["test_loss"][-1]


def test_lane_configs_are_checked():
    pr = problems.get("cartpole", steps=20)
    a, b = RunConfig(**_base()), RunConfig(**_base(epochs=4))
    with pytest.raises(ValueError, match=r"lane_configs\[1\] differs from config in \['epochs'\]"):
        T.train(pr, a, [0, 1], lane_configs=[a, b])
    with pytest.raises(ValueError, match=r"config differs from lane_configs\[0\] in \['epochs'\]"):
        T.train(pr, b, [0, 1], lane_configs=[a, RunConfig(**_base(mode="R"))])
    with pytest.raises(ValueError, match="lane_configs has 1 configs for 2 seeds"):
        T.train(pr, a, [0, 1], lane_configs=[a])
    with pytest.raises(ValueError, match=r"lane_configs\[1\] has and_mask=0.5"):
        T.train(pr, a, [0, 1], lane_configs=[a, RunConfig(**_base(and_mask=0.5))])


@pytest.mark.slow
def test_sweep_with_vmapped_configs_matches_one_run_per_job(tmp_path):
    spec = sweep.load_spec(
        {
            "name": "lanes",
            "seeds": 2,
            "experiment": [
                {
                    "problem": "linear",
                    "level": {"theta0": [-0.5, -1.0]},
                    "modes": ["R", "M", "C"],
                    "clips": ["none", "value"],
                    "optimizers": [{"optimizer": "adam", "lr": 0.01}],
                    "config": {"epochs": 4},
                }
            ],
        }
    )
    jobs = sweep.expand(spec)
    groups = sweep._groups(jobs, vmap_seeds=False, vmap_configs=True)
    assert len(groups) == 2 and sorted(len(s) for _, s, _ in groups) == [12, 12]  # one program per level
    masked = RunConfig(problem="linear", mode="C", and_mask=1.0)  # not a lane: a run of its own
    assert sweep._groups([(masked, 0), (masked, 1)], vmap_seeds=False, vmap_configs=True) == [
        (masked, [0], None),
        (masked, [1], None),
    ]
    sweep.run_sweep(spec, tmp_path / "a", executor="serial")
    rep = sweep.run_sweep(spec, tmp_path / "b", executor="serial", vmap_configs=True)
    assert rep.computed == len(jobs) == 24 and not rep.failed
    for c, s in jobs:
        fa, fb = tmp_path / "a" / run_id(c, s), tmp_path / "b" / run_id(c, s)
        ra, rb = run.read_result(fa), run.read_result(fb)
        assert ra["status"] == rb["status"] and ra["initial"] == rb["initial"]
        for k, v in ra["final"].items():
            assert rb["final"][k] == pytest.approx(v, rel=1e-4, abs=1e-7), (c.mode, c.clip, s, k)
        man = json.loads((fb / "manifest.json").read_text())
        assert len(man["trained_together"]) == 12 and man["ran"]["lanes"] and man["ran"]["batching"] == "vmap"
    again = sweep.run_sweep(spec, tmp_path / "b", executor="serial", vmap_configs=True)
    assert again.computed == 0 and again.skipped == 24


def test_one_lane_is_its_run():
    """One lane (e.g. the last missing run of a group): the lane program with one run."""
    pr = problems.get("cartpole", steps=20)
    c = RunConfig(mode="C", clip="norm", **_base(epochs=2, n_train=16, n_test=16))
    (lane,) = T.train(pr, c, [3], lane_configs=[c])
    (one,) = T.train(pr, c, 3)
    assert list(lane.history) == list(one.history) and lane.initial == one.initial
    assert_close(lane.history["test_loss"], one.history["test_loss"], 1e-5)


def test_a_diverging_lane_stops_alone_at_its_runs_epoch():
    """The divergence guard per lane: the lane with lr 0.3 overflows in epoch 4 (the float64
    reference_divergence_epoch), the lane with lr 0.01 trains on; both as their own runs."""
    prob, bad_cfg = overflowing_linear(epochs=8)
    cfgs = [bad_cfg, overflowing_linear(epochs=8, lr=0.01)[1]]
    bad, good = T.train(prob, cfgs[0], [0, 0], lane_configs=cfgs)
    assert bad.diverged and bad.diverged_epoch == reference_divergence_epoch(1.0, 1.0, 4, 1.0, 0.1, 0.3, 8) == 4
    assert bad.epochs_done == 3 and all(np.all(np.isfinite(v)) for v in bad.history.values())
    assert not good.diverged and good.epochs_done == 8
    (alone,) = T.train(prob, cfgs[1], 0)
    assert_close(good.history["test_loss"], alone.history["test_loss"], 1e-5)
