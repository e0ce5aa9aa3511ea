"""Training: the Fig. 2 toy, determinism, the divergence guard, seeds batched or in turn, the
pure functions of make_train against the host loop, the overlapped evaluation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stablebptt as sb
from conftest import assert_close, local_minima, overflowing_linear, reference_divergence_epoch
from stablebptt import problems
from stablebptt.training import trainer as T
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import make_trainer, train


@pytest.fixture(scope="module")
def fig2():
    prob = problems.get("toy-rotation")
    out = {}
    for mode in "RMC":
        cfg = RunConfig(problem="toy-rotation", mode=mode, lr=0.1, batch_size=1, n_train=1, n_test=1, epochs=200)
        (res,) = train(prob, cfg, 0)
        # history[k] is L(θ_{k+1}); prepend L(θ_0) so index i is iteration i
        out[mode] = np.array([res.initial["train_loss"]] + res.history["train_loss"])
    return out


def test_fig2_gradient_field_converges(fig2):
    L = fig2["R"]
    assert L[0] == pytest.approx(20.0)
    first = int(np.argmax(L < 2e-3))
    assert 58 <= first <= 60, first
    assert L[-1] < 1e-6


def test_fig2_rotating_field_orbits(fig2):
    L = fig2["M"]
    mins = local_minima(L)
    want = [(35, 0.84), (None, 1.13), (None, 1.65), (None, 2.49)]
    assert len(mins) >= 4
    assert mins[0][0] == 35
    for (i, v), (_, w) in zip(mins, want):
        assert v == pytest.approx(w, abs=0.01), (i, v, w)
    assert L[-1] == pytest.approx(6.2, abs=0.05)


def test_fig2_combined_field_converges_slowly(fig2):
    L = fig2["C"]
    mins = [v for _, v in local_minima(L)]
    for got, want in zip(mins, [0.49, 0.13, 0.057, 0.030, 0.019]):
        assert got == pytest.approx(want, rel=0.03)
    assert len(mins) >= 5
    assert L[200] == pytest.approx(0.067, abs=0.001)


def toy_field_cfg(**kw):
    base = dict(problem="toy-field", mode="C", lr=0.05, batch_size=1, n_train=1, n_test=1, epochs=15)
    return RunConfig(**(base | kw))


def test_same_seed_is_bit_identical():
    prob = problems.get("toy-field")
    a = train(prob, toy_field_cfg(), 7)[0].history
    b = train(prob, toy_field_cfg(), 7)[0].history
    for k in a:
        if k != "wall_s":
            assert a[k] == b[k], k
    c = train(prob, toy_field_cfg(), 8)[0].history
    assert a["train_loss"] != c["train_loss"]


def test_diverging_run_is_marked_at_the_right_epoch():
    prob, cfg = overflowing_linear()
    (res,) = train(prob, cfg, 0)
    want = reference_divergence_epoch(1.0, 1.0, 4, 1.0, 0.1, 0.3, 20)
    assert want == 4  # the float64 reference overflows float32 in epoch 4
    assert res.diverged and res.diverged_epoch == want
    assert res.epochs_done == want - 1
    for k, v in res.history.items():
        assert len(v) == want - 1
        assert np.all(np.isfinite(v)), k
    assert np.all(np.isfinite(np.asarray(res.model.theta)))


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_seeds_batched_or_in_turn_match_individual_runs(batching):
    """Several seeds as one vmapped program or one after another: each equals its own run
    (vmapped: up to round-off; in turn: the same program, the same bits)."""
    prob = problems.get("cartpole", steps=10)
    cfg = RunConfig(
        problem="cartpole", mode="C", epochs=2, n_train=16, n_test=8, data="seeded", problem_params={"steps": 10}
    )
    many = train(prob, cfg, [0, 1], batching=batching)
    for r in many:
        assert r.ran["batching"] == batching
        (single,) = train(prob, cfg, r.seed)
        for k in ("test_loss", "update_norm", "cos_mg"):
            if batching == "loop":
                assert r.history[k] == single.history[k], k
            else:
                assert_close(r.history[k], single.history[k], 1e-5, k)  # vmapped products sum in another order


def test_vmapped_seed_divergence_is_per_seed():
    prob = problems.get("linear", a=1.0, theta0=0.5)
    cfg = RunConfig(
        problem="linear",
        problem_params=dict(a=1.0, theta0=0.5),
        mode="R",
        optimizer="sgd",
        lr=3.0,
        batch_size=1,
        n_train=1,
        n_test=1,
        epochs=8,
    )
    # same init for every seed (deterministic problem) => all diverge at the same epoch
    res = train(prob, cfg, [0, 1])
    assert all(r.diverged for r in res)
    assert res[0].diverged_epoch == res[1].diverged_epoch


def test_diagnostics_metrics_for_any_mode():
    prob = problems.get("toy-field")
    (r,) = train(prob, toy_field_cfg(mode="M", diagnostics=True, epochs=3), 0)
    assert "cos_mg" in r.history and len(r.history["cos_mg"]) == 3
    (r2,) = train(prob, toy_field_cfg(mode="M", epochs=3), 0)
    assert "cos_mg" not in r2.history
    assert r.history["train_loss"] == r2.history["train_loss"]


def test_config_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown mode 'Z'"):
        RunConfig(mode="Z")
    with pytest.raises(ValidationError, match="clip_threshold=-1"):
        RunConfig(clip="value", clip_threshold=-1.0)
    with pytest.raises(ValidationError, match="unknown problem 'pendulum'"):
        RunConfig(problem="pendulum")
    with pytest.raises(ValidationError, match="clip"):
        RunConfig(clip="sometimes")
    with pytest.raises(ValidationError, match="poles"):
        RunConfig(problem="linear", problem_params={"poles": 2})
    with pytest.raises(ValidationError, match="backward='fast'; allowed: auto, autodiff, batched, per_step"):
        RunConfig(backward="fast")


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [5, [5, 6]])
def test_eval_every_records_only_evaluated_epochs_with_the_same_numbers(seeds):
    prob = problems.get("cartpole", steps=10)
    base = dict(problem="cartpole", problem_params={"steps": 10}, mode="C", epochs=7, n_train=32, n_test=16)
    every = train(prob, RunConfig(**base), seeds)
    sparse = train(prob, RunConfig(**base, eval_every=3), seeds)
    for a, b in zip(every, sparse):
        assert b.history["epoch"] == [3, 6, 7]  # every 3rd epoch and the last
        for k in b.history:
            if k != "wall_s":
                assert b.history[k] == [a.history[k][e - 1] for e in (3, 6, 7)], k
        assert b.initial == a.initial
        for p, q in zip(
            jax.tree_util.tree_leaves(eqx.filter(a.model, eqx.is_inexact_array)),
            jax.tree_util.tree_leaves(eqx.filter(b.model, eqx.is_inexact_array)),
        ):
            assert np.array_equal(np.asarray(p), np.asarray(q))


def test_eval_every_still_stops_a_diverging_run():
    prob, cfg = overflowing_linear(eval_every=3)
    (res,) = train(prob, cfg, 0)
    assert res.diverged and res.diverged_epoch in (4, 5)  # 4 with every-epoch evaluation
    assert res.history["epoch"] == [3]
    assert all(np.all(np.isfinite(v)) for v in res.history.values())
    assert np.all(np.isfinite(np.asarray(res.model.theta)))


def test_eval_every_validation_and_run_ids():
    from pydantic import ValidationError

    from stablebptt.training.config import run_id

    with pytest.raises(ValidationError, match="eval_every=0"):
        RunConfig(eval_every=0)
    cfg = RunConfig(problem="cartpole", mode="R")
    # the default is not hashed: result folders written before the field existed keep their id
    d = cfg.to_dict()
    d.pop("eval_every")
    d.pop("backward")  # added later too, hashed only when not at its default
    import hashlib
    import json

    old = hashlib.sha256(json.dumps({"config": d, "seed": 3}, sort_keys=True).encode()).hexdigest()[:16]
    assert run_id(cfg, 3) == old
    assert run_id(RunConfig(problem="cartpole", mode="R", eval_every=2), 3) != old
    assert run_id(RunConfig(problem="cartpole", mode="R", backward="autodiff"), 3) != run_id(cfg, 3)


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_eval_every_with_several_seeds(batching):
    prob = problems.get("cartpole", steps=10)
    base = dict(problem="cartpole", problem_params={"steps": 10}, mode="R", epochs=4, n_train=32, n_test=16)
    every = train(prob, RunConfig(**base), [1, 2])
    sparse = train(prob, RunConfig(**base, eval_every=2), [1, 2], batching=batching)
    for a, b in zip(every, sparse):
        assert b.history["epoch"] == [2, 4]
        assert_close(b.history["test_loss"], [a.history["test_loss"][e - 1] for e in (2, 4)], 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cartpole", "guidance", "quantum", "toy-field", "linear"])
def test_the_compiled_initialiser_gives_the_eager_factorys_bits(name):
    """init_params compiles at a lower LLVM level on the CPU (runner.INIT_COMPILER_OPTIONS):
    the weights must still be those of the factory run eagerly, bit for bit."""
    from stablebptt.training.runner import INIT_COMPILER_OPTIONS

    prob = problems.get(name)
    for zero_last in (False, True):
        cfg = RunConfig(problem=name, zero_last=zero_last)
        trainer = make_trainer(prob, cfg)
        init = jax.jit(trainer.init_params).lower(jax.random.PRNGKey(0)).compile(INIT_COMPILER_OPTIONS)
        for s in (0, 7):
            key = jax.random.PRNGKey(s)
            eager = eqx.filter(prob.make_controller(key, zero_last=zero_last), eqx.is_inexact_array)
            fast = init(key)
            assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(eager)
            for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(eager)):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def hand_loop(prob, cfg, seed):
    """The pure functions of make_train driven by a plain Python loop (the reference for the host loop)."""
    trainer = make_trainer(prob, cfg)
    tr, te = (jnp.asarray(a) for a in T.make_data(prob, cfg, seed))
    with jax.default_matmul_precision("highest"):
        updates, evaluate = jax.jit(trainer.updates), jax.jit(trainer.evaluate)
        params = jax.jit(trainer.init_params)(jax.random.PRNGKey(seed))
        state = trainer.init(params, trainer.settings(cfg.flow(), cfg.optimizer_setting()))
        key = jax.random.PRNGKey(seed + 1_000_003)
        rows = []
        for e in range(1, cfg.epochs + 1):
            state, m = updates(state, tr, jax.random.fold_in(key, e) if cfg.shuffle else key)
            rows.append(
                {k: float(v) for k, v in m.items()}
                | dict(zip(("train_loss", "test_loss"), map(float, evaluate(state.params, tr, te))))
            )
    return rows, state


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
def test_the_host_loop_runs_the_pure_functions(shuffle):
    """train() equals make_train's functions driven by hand, bit for bit; shuffling draws
    another order per epoch from the seed's key (reproducibly)."""
    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(
        problem="cartpole", mode="C", epochs=3, n_train=32, n_test=16, shuffle=shuffle, problem_params={"steps": 8}
    )
    (res,) = train(prob, cfg, 0)
    rows, state = hand_loop(prob, cfg, 0)
    for k in ("loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree"):
        assert res.history[k] == [r[k] for r in rows], k
    for a, b in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(eqx.filter(res.model, eqx.is_inexact_array))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if shuffle:
        (fixed,) = train(prob, cfg.model_copy(update={"shuffle": False}), 0)
        assert res.history["loss"][1] != fixed.history["loss"][1]
        (again,) = train(prob, cfg, 0)
        assert again.history["loss"] == res.history["loss"]


def test_the_minibatch_order():
    """Data order (the paper): minibatch i is rows i·bs … (i+1)·bs − 1, the remainder left out —
    checked through the loss of the first minibatch of an untrained, frozen controller."""
    prob = problems.get("cartpole", steps=4)
    cfg = RunConfig(
        problem="cartpole",
        mode="S",
        epochs=1,
        n_train=10,
        n_test=4,
        batch_size=4,
        lr=1e-30,
        problem_params={"steps": 4},
        optimizer="sgd",
    )
    trainer = make_trainer(prob, cfg)
    tr, _ = T.make_data(prob, cfg, 0)
    params = trainer.init_params(jax.random.PRNGKey(0))
    state = trainer.init(params, trainer.settings(cfg.flow(), cfg.optimizer_setting()))
    _, m = jax.jit(trainer.updates)(state, jnp.asarray(tr), jax.random.PRNGKey(0))
    model = eqx.combine(params, trainer.static)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    want = np.mean([float(sb.evaluate_loss(model, jnp.asarray(tr[i : i + 4]), **kw)) for i in (0, 4)])
    assert float(m["loss"]) == pytest.approx(want, rel=1e-6)


def test_a_factory_that_needs_concrete_values_is_built_eagerly_and_other_errors_propagate():
    """Only a factory that cannot be traced is built eagerly (not one that raises any other
    exception); a factory's own error reaches the caller."""
    import dataclasses

    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=2, n_train=16, n_test=8, problem_params={"steps": 8})

    def concrete_factory(key, zero_last=False):
        np.asarray(key)  # needs a concrete key
        return prob.make_controller(key, zero_last=zero_last)

    params, _ = T.controller_parts(dataclasses.replace(prob, make_controller=concrete_factory), T.zero_last(prob, cfg))
    assert all(isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(params))
    params, _ = T.controller_parts(prob, T.zero_last(prob, cfg))
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree_util.tree_leaves(params))

    def broken_factory(key, zero_last=False):
        raise KeyError("a bug in the factory")

    with pytest.raises(KeyError, match="a bug in the factory"):
        train(dataclasses.replace(prob, make_controller=broken_factory), cfg, 0)


def test_missing_init_weights_file_fails_before_any_compilation(tmp_path):
    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(
        problem="cartpole",
        mode="C",
        epochs=1,
        n_train=16,
        n_test=8,
        problem_params={"steps": 8},
        init_weights=str(tmp_path / "missing.npz"),
    )
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        train(prob, cfg, 0)


def test_training_programs_use_full_float32_matmuls_on_any_backend(tmp_path):
    """train() traces its programs at matmul precision "highest" (a GPU would otherwise run
    TF32): checked on the StableHLO of every program compiled while it runs (JAX dumps each
    module it compiles into ``jax_dump_ir_to``), which is what a GPU would compile."""
    prob = problems.get("cartpole", steps=4)
    cfg = RunConfig(
        problem="cartpole", mode="C", epochs=1, n_train=16, n_test=8, problem_params={"steps": 4}, backward="autodiff"
    )
    dump = tmp_path / "ir"
    jax.config.update("jax_dump_ir_to", str(dump))
    try:
        train(prob, cfg, 0)
    finally:
        jax.config.update("jax_dump_ir_to", "")
    modules = {p.name: p.read_text() for p in dump.glob("*.mlir")}
    for program in ("init_params", "updates_fn", "evaluate", "init"):
        assert any(f"_jit_{program}_compile" in name for name in modules), (program, sorted(modules))
    dots = [line for m in modules.values() for line in m.splitlines() if "= stablehlo.dot_general" in line]
    assert any("precision = [HIGHEST, HIGHEST]" in d for d in dots)
    assert [d for d in dots if "precision = [HIGHEST, HIGHEST]" not in d] == []


OVERLAP_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
import equinox as eqx, numpy as np
from stablebptt import problems
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train

def run(overlap, prob, cfg):
    calls = []
    (r,) = train(prob, cfg, 0, overlap_eval=overlap, on_epoch=lambda e, rows: calls.append([e, rows[0] is None]))
    leaves = jax.tree_util.tree_leaves(eqx.filter(r.model, eqx.is_inexact_array))
    return {"history": {k: v for k, v in r.history.items() if k != "wall_s"}, "diverged_epoch": r.diverged_epoch,
            "params": [np.asarray(a).tolist() for a in leaves], "calls": calls, "initial": r.initial,
            "evaluation": r.ran["evaluation"]}

cases = {
    "cartpole_C": (problems.get("cartpole", steps=10),
                   RunConfig(problem="cartpole", problem_params={"steps": 10}, mode="C", epochs=5, n_train=32, n_test=16)),
    "cartpole_R_every2": (problems.get("cartpole", steps=10),
                          RunConfig(problem="cartpole", problem_params={"steps": 10}, mode="R", epochs=5,
                                    n_train=32, n_test=16, eval_every=2)),
    "linear_diverges": (problems.get("linear", a=1.0, theta0=0.1),
                        RunConfig(problem="linear", problem_params=dict(a=1.0, theta0=0.1), mode="R",
                                  optimizer="sgd", lr=0.3, batch_size=1, n_train=1, n_test=1, epochs=20)),
}
print(json.dumps({name: {str(ov): run(ov, *c) for ov in (False, True)} for name, c in cases.items()}))
"""


@pytest.mark.slow
def test_overlapped_evaluation_gives_the_sequential_numbers():
    """The evaluation on a second CPU device while the next epoch trains gives exactly the
    numbers of the sequential loop, including divergence and the on_epoch calls. JAX's CPU
    device count is fixed when its backend starts, so this runs in a fresh process."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", OVERLAP_SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, runs in out.items():
        seq, ov = runs["False"], runs["True"]
        assert seq["evaluation"] == "after the updates" and ov["evaluation"] == "second CPU device", name
        for k in ("history", "diverged_epoch", "params", "calls", "initial"):
            assert ov[k] == seq[k], (name, k)
        assert all(np.isfinite(v) for v in ov["initial"].values()), name
    assert out["linear_diverges"]["True"]["diverged_epoch"] == 4
    assert out["cartpole_R_every2"]["True"]["history"]["epoch"] == [2, 4, 5]
    assert out["cartpole_C"]["True"]["history"]["epoch"] == [1, 2, 3, 4, 5]


def test_overlap_needs_two_cpu_devices():
    prob = problems.get("cartpole", steps=4)
    cfg = RunConfig(problem="cartpole", epochs=1, n_train=8, n_test=8, problem_params={"steps": 4})
    if len(jax.devices("cpu")) >= 2:  # a process started with two CPU devices overlaps
        assert train(prob, cfg, 0, overlap_eval=True)[0].ran["evaluation"] == "second CPU device"
    else:  # the suite's processes have one: a clear error, not a silent sequential run
        with pytest.raises(ValueError, match="overlap_eval=True needs two CPU devices"):
            train(prob, cfg, 0, overlap_eval=True)
    with pytest.raises(ValueError, match="batching='sometimes'"):
        train(prob, cfg, 0, batching="sometimes")


#: every flow option of a run configuration (clipping is the optimizer's, after the flow)
FLOW_OPTIONS = [dict(mode=m) for m in ("R", "M", "S", "N", "C")] + [
    dict(mode=["R", "R", "M", "M", "S", "N"]),
    dict(mode="R", truncate=2),
    dict(mode="M", decay=0.5),
    dict(mode="C", combiner="sign_g"),
    dict(mode="R", and_mask=1.0),
    dict(mode="C", and_mask=0.5),
    dict(mode="C", clip="value", clip_threshold=1e-3),
    dict(mode="R", clip="norm", clip_threshold=1e-3),
    dict(mode="M", and_mask=1.0, clip="value", clip_threshold=1e-3),
]


@pytest.mark.parametrize(
    "strategy",
    [sb.Autodiff(), sb.ReverseSweep("batched", keep_activations=True), sb.ReverseSweep("per_step")],
    ids=["autodiff", "batched", "per_step"],
)
@pytest.mark.slow
def test_every_flow_option_trains_with_value_and_updates_update(strategy):
    """The trainer and value_and_update take one path into the engine: for every flow option
    the parameter change of one SGD step (lr 1) is minus value_and_update's update (clipped as
    configured), and the AND-mask changes the update (it was once ignored in training)."""
    import optax

    prob = problems.get("cartpole", steps=6)
    base = dict(
        problem="cartpole",
        problem_params={"steps": 6},
        epochs=1,
        n_train=4,
        n_test=4,
        batch_size=4,
        optimizer="sgd",
        lr=1.0,
    )
    deltas = {}
    for opts in FLOW_OPTIONS:
        cfg = RunConfig(**base, **opts)
        trainer = make_trainer(prob, cfg, backward=strategy)
        assert trainer.backward == strategy
        tr, _ = T.make_data(prob, cfg, 0)
        params = trainer.init_params(jax.random.PRNGKey(3))
        state = trainer.init(params, trainer.settings(cfg.flow(), cfg.optimizer_setting()))
        new, _ = jax.jit(trainer.updates)(state, jnp.asarray(tr), jax.random.PRNGKey(0))
        delta = jax.tree_util.tree_map(lambda a, b: a - b, new.params, params)
        _, upd, _ = sb.value_and_update(
            eqx.combine(params, trainer.static),
            jnp.asarray(tr[:4]),
            step=prob.step,
            loss=prob.loss,
            horizon=prob.horizon,
            flow=cfg.flow(),
            backward=strategy,
        )
        clip = {
            "none": optax.identity(),
            "value": optax.clip(cfg.clip_threshold),
            "norm": optax.clip_by_global_norm(cfg.clip_threshold),
        }[cfg.clip]
        want = jax.tree_util.tree_map(jnp.negative, clip.update(upd, clip.init(upd))[0])
        # new − old carries the round-off of the parameters (scale |θ|) besides the update's own
        flat = lambda t: np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(t)])
        tol = 4 * np.finfo(np.float32).eps * np.max(np.abs(flat(params))) + 1e-5 * np.max(np.abs(flat(want)))
        assert np.max(np.abs(flat(delta) - flat(want))) <= tol, opts
        deltas[str(opts)] = delta
    unmasked = deltas[str(dict(mode="R"))]
    masked = deltas[str(dict(mode="R", and_mask=1.0))]
    assert any(
        not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(unmasked))
    )


@pytest.mark.slow
def test_make_train_takes_plain_values():
    """make_train from plain values (problem, flow, optimizer, batch size, strategy) builds the
    program that a run configuration builds (make_trainer): one epoch, bit for bit."""
    prob = problems.get("cartpole", steps=6)
    cfg = RunConfig(
        problem="cartpole",
        problem_params={"steps": 6},
        mode="C",
        clip="norm",
        clip_threshold=0.5,
        optimizer="momentum",
        lr=0.01,
        momentum=0.8,
        n_train=16,
        n_test=8,
        epochs=1,
        batch_size=4,
    )
    plain = sb.make_train(
        prob,
        sb.Flow("C"),
        sb.Optimizer("momentum", 0.01, "norm", 0.5, momentum=0.8),
        batch_size=4,
        backward=sb.Autodiff(),
    )
    from_config = make_trainer(prob, cfg, backward=sb.Autodiff())
    tr, _ = (jnp.asarray(a) for a in T.make_data(prob, cfg, 0))
    out = []
    for trainer in (plain, from_config):
        params = trainer.init_params(jax.random.PRNGKey(0))
        state = trainer.init(params, trainer.settings(sb.Flow("C"), sb.Optimizer("momentum", 0.01, "norm", 0.5, 0.8)))
        out.append(jax.jit(trainer.updates)(state, tr, jax.random.PRNGKey(1)))
    for a, b in zip(jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(out[0][1]["update_norm"]) > 0
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        sb.Optimizer("adamw")
    with pytest.raises(ValueError, match="momentum=1.5"):
        sb.Optimizer("momentum", momentum=1.5)
    with pytest.raises(ValueError, match="learning rate=0"):
        sb.Optimizer(learning_rate=0)


def _short_cartpole_c():
    """(problem, config, prior): cart-pole C for 3 short epochs and the strategy ``backward="auto"``
    starts it with (the first of the engine's candidates)."""
    prob = problems.get("cartpole")
    cfg = RunConfig(problem="cartpole", mode="C", epochs=3, n_train=16, n_test=8, batch_size=8)
    model = eqx.filter_eval_shape(prob.make_controller, jax.random.PRNGKey(0))
    prior = sb.candidates(
        model,
        jnp.zeros((8, *prob.state_shape)),
        step=prob.step,
        loss=prob.loss,
        horizon=prob.horizon,
        gates=cfg.flow().gates(prob.horizon).fields,
    )[0]
    return prob, cfg, prior


@pytest.mark.slow
def test_auto_chooses_once_its_first_strategy_has_run_an_epoch(tmp_path, monkeypatch):
    """backward="auto" in a run of known length starts with the prior (nothing compiled for the
    choice), times it in epoch 1, then keeps it when timing the others would cost over WORTH of
    the rest of the run (the skip is cached: a rerun decides without compiling), else measures
    every candidate and continues with the fastest from epoch 2. Either way epoch 1 equals the
    short run's (the prior's) bit for bit, and the manifest names what ran."""
    from stablebptt.core import choose

    prob, cfg, prior = _short_cartpole_c()
    short = None
    for name, worth in (("short", choose.WORTH), ("long", 1e9)):
        cache = tmp_path / name
        monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(cache))
        monkeypatch.setattr(choose, "WORTH", worth)
        choose.forget()
        res = train(prob, cfg, 0)[0]
        rec = res.ran["backward_choice"]
        assert res.ran["backward"] == rec["chosen"] and not rec.get("pending")
        if name == "short":
            assert "skipped" in rec and rec["chosen"] == repr(prior) and rec["compile_s"] > 0
            short = res.history
        else:
            assert "skipped" not in rec and len(rec["candidates"]) > 2
            assert rec["chosen"] == min(rec["candidates"], key=rec["candidates"].get)
            assert ("first_epoch" in rec) == (rec["chosen"] != repr(prior))
            assert rec.get("first_epoch", repr(prior)) == repr(prior)
            e1 = short["epoch"].index(1)
            assert res.history["train_loss"][e1] == short["train_loss"][e1]
            np.testing.assert_allclose(res.history["train_loss"], short["train_loss"], rtol=1e-4)
        assert len(list(cache.glob("*.json"))) == 1
        choose.forget()  # a rerun: decided from the cache before anything runs
        again = train(prob, cfg, 0)[0].ran["backward_choice"]
        assert again["cached"] and again["chosen"] == rec["chosen"] and not again.get("pending")


@pytest.mark.slow
def test_a_run_that_switches_strategy_after_epoch_1_continues_exactly(tmp_path, monkeypatch):
    """The switch itself, made certain by timings the test dictates (``choose.measure`` returns
    them; nothing is timed): the prior runs epoch 1, another candidate is chosen and runs
    from epoch 2 on. Epoch 1 equals a run that keeps the prior throughout bit for bit, every
    later epoch equals it up to float32 round-off (the strategies compute the same update in
    another order), the manifest names both, and a resumed run continues with the strategy
    chosen (it neither measures nor returns to the prior)."""
    from stablebptt.core import choose
    from stablebptt.training.runner import Checkpoint

    prob, cfg, prior = _short_cartpole_c()
    timed = []

    def dictated(candidates, program, args, compiled=None):  # the prior slowest, then by name
        timed.extend(map(repr, candidates))
        return [
            10.0 if repr(c) == repr(prior) else 1.0 + sorted(map(repr, candidates)).index(repr(c)) for c in candidates
        ]

    monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choose, "WORTH", 1e9)
    monkeypatch.setattr(choose, "measure", dictated)
    choose.forget()
    ckpt = Checkpoint(path=tmp_path / "state.npz", every_s=0.0)
    switched = train(prob, cfg, 0, checkpoint=ckpt)[0]
    rec = switched.ran["backward_choice"]
    assert rec["first_epoch"] == repr(prior) and rec["chosen"] != repr(prior) and rec["switch_s"] > 0
    assert switched.ran["backward"] == rec["chosen"] == min(rec["candidates"], key=rec["candidates"].get)
    assert repr(prior) in timed and len(rec["candidates"]) > 2

    monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(tmp_path / "cache-kept"))
    monkeypatch.setattr(choose, "WORTH", 0.0)  # never worth measuring: the prior throughout
    choose.forget()
    kept = train(prob, cfg, 0)[0]
    assert kept.ran["backward"] == repr(prior) and "skipped" in kept.ran["backward_choice"]
    e1 = kept.history["epoch"].index(1)
    assert switched.history["epoch"] == kept.history["epoch"]
    assert switched.history["train_loss"][: e1 + 1] == kept.history["train_loss"][: e1 + 1]
    np.testing.assert_allclose(switched.history["train_loss"], kept.history["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(switched.history["test_loss"], kept.history["test_loss"], rtol=1e-4)

    n_timed = len(timed)
    choose.forget()
    resumed = train(prob, cfg, 0, checkpoint=ckpt)[0]
    assert 2 <= resumed.ran["resumed_from_epoch"] < cfg.epochs  # the last epoch runs again
    assert resumed.ran["backward"] == rec["chosen"] and len(timed) == n_timed
    assert resumed.history["train_loss"] == switched.history["train_loss"]
