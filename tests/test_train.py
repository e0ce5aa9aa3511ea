"""Training loop: the Fig. 2 toy, determinism, divergence guard, vmapped seeds."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stablebptt import problems
from stablebptt.config import RunConfig
from stablebptt import train as T
from stablebptt.train import train


def local_minima(L):
    return [(i, L[i]) for i in range(1, len(L) - 1) if L[i] < L[i - 1] and L[i] < L[i + 1]]


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


def reference_divergence_epoch(a, b, T, x0, theta, lr, epochs):
    """float64 SGD on L = ½x_T² for the linear problem; first epoch where a float32 run overflows."""
    f32max = float(np.finfo(np.float32).max)
    for e in range(1, epochs + 1):
        rho = a + b * theta
        xT = x0 * rho**T
        G = xT * T * rho ** (T - 1) * b * x0
        if not (abs(0.5 * xT**2) < f32max and abs(G) < f32max):
            return e
        theta = theta - lr * G
        rho = a + b * theta
        if not abs(0.5 * (x0 * rho**T) ** 2) < f32max:  # evaluation after the update
            return e
    return None


def test_diverging_run_is_marked_at_the_right_epoch():
    prob = problems.get("linear", a=1.0, theta0=0.1)
    cfg = RunConfig(problem="linear", problem_params=dict(a=1.0, theta0=0.1), mode="R", optimizer="sgd",
                    lr=0.3, batch_size=1, n_train=1, n_test=1, epochs=20)
    (res,) = train(prob, cfg, 0)
    want = reference_divergence_epoch(1.0, 1.0, 4, 1.0, 0.1, 0.3, 20)
    assert want == 4  # the float64 reference overflows float32 in epoch 4
    assert res.diverged and res.diverged_epoch == want
    assert res.epochs_done == want - 1
    for k, v in res.history.items():
        assert len(v) == want - 1
        assert np.all(np.isfinite(v)), k
    assert np.all(np.isfinite(np.asarray(res.model.theta)))


def test_vmapped_seeds_match_individual_runs():
    prob = problems.get("toy-field")
    cfg = toy_field_cfg(mode="R", epochs=10)
    many = train(prob, cfg, [1, 2, 3])
    for r in many:
        (single,) = train(prob, cfg, r.seed)
        np.testing.assert_allclose(r.history["train_loss"], single.history["train_loss"], rtol=1e-5)


def test_vmapped_seed_divergence_is_per_seed():
    prob = problems.get("linear", a=1.0, theta0=0.5)
    cfg = RunConfig(problem="linear", problem_params=dict(a=1.0, theta0=0.5), mode="R", optimizer="sgd",
                    lr=3.0, batch_size=1, n_train=1, n_test=1, epochs=8)
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
        for p, q in zip(jax.tree_util.tree_leaves(eqx.filter(a.model, eqx.is_inexact_array)),
                        jax.tree_util.tree_leaves(eqx.filter(b.model, eqx.is_inexact_array))):
            assert np.array_equal(np.asarray(p), np.asarray(q))


def test_eval_every_still_stops_a_diverging_run():
    prob = problems.get("linear", a=1.0, theta0=0.1)
    cfg = RunConfig(problem="linear", problem_params=dict(a=1.0, theta0=0.1), mode="R", optimizer="sgd",
                    lr=0.3, batch_size=1, n_train=1, n_test=1, epochs=20, eval_every=3)
    (res,) = train(prob, cfg, 0)
    assert res.diverged and res.diverged_epoch in (4, 5)  # 4 with every-epoch evaluation
    assert res.history["epoch"] == [3]
    assert all(np.all(np.isfinite(v)) for v in res.history.values())
    assert np.all(np.isfinite(np.asarray(res.model.theta)))


def test_eval_every_validation_and_run_ids():
    from pydantic import ValidationError

    from stablebptt.config import run_id

    with pytest.raises(ValidationError, match="eval_every=0"):
        RunConfig(eval_every=0)
    cfg = RunConfig(problem="cartpole", mode="R")
    # the default is not hashed: result folders written before the field existed keep their id
    d = cfg.to_dict()
    d.pop("eval_every")
    import hashlib
    import json
    old = hashlib.sha256(json.dumps({"config": d, "seed": 3}, sort_keys=True).encode()).hexdigest()[:16]
    assert run_id(cfg, 3) == old
    assert run_id(RunConfig(problem="cartpole", mode="R", eval_every=2), 3) != old


def test_eval_every_with_vmapped_seeds(monkeypatch):
    from stablebptt import train as T

    prob = problems.get("cartpole", steps=10)
    base = dict(problem="cartpole", problem_params={"steps": 10}, mode="R", epochs=4, n_train=32, n_test=16)
    loop = train(prob, RunConfig(**base, eval_every=2), [1, 2])
    monkeypatch.setattr(T, "SEED_STRATEGY", "vmap")
    vm = train(prob, RunConfig(**base, eval_every=2), [1, 2])
    for a, b in zip(loop, vm):
        assert b.history["epoch"] == a.history["epoch"] == [2, 4]
        np.testing.assert_allclose(b.history["test_loss"], a.history["test_loss"], rtol=1e-5)


def test_make_model_compiles_the_initialiser_once_per_problem():
    """K seeds of one problem trace (and compile) the controller factory once, not K times,
    and give the parameters of an eager call."""
    import dataclasses

    from stablebptt import train as T

    prob = problems.get("cartpole")
    traces = []

    def factory(key, zero_last=False):
        traces.append(1)  # runs once per trace, not per call of the compiled program
        return prob.make_controller(key, zero_last=zero_last)

    counted = dataclasses.replace(prob, make_controller=factory)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=1)
    models = [T.make_model(counted, cfg, s) for s in range(3)]
    assert len(traces) == 1
    for s, m in enumerate(models):
        eager = prob.make_controller(jax.random.PRNGKey(s), zero_last=prob.zero_last_default)
        for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array)),
                        jax.tree_util.tree_leaves(eqx.filter(eager, eqx.is_inexact_array))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["cartpole", "guidance", "quantum", "toy-field", "linear"])
def test_the_fast_compiled_initialiser_gives_the_eager_factorys_bits(name):
    """The initialisation program compiles at a lower LLVM level (train.INIT_COMPILER_OPTIONS,
    for a faster start): the weights must still be those of the factory run eagerly, bit for
    bit, with and without a zero last kernel; the controller is otherwise the same (static
    fields, structure)."""
    from stablebptt import train as T

    prob = problems.get(name)
    for zero_last in (False, True):
        init = T._CompiledInit(prob.make_controller, zero_last)
        for s in (0, 7):
            key = jax.random.PRNGKey(s)
            fast, eager = init(key), prob.make_controller(key, zero_last=zero_last)
            assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(eager)
            for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(eager)):
                if eqx.is_array(b):
                    assert a.dtype == b.dtype
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
                else:
                    assert a == b


def test_minibatches_keep_the_order_or_draw_a_permutation_per_key():
    data = jnp.arange(20.0).reshape(10, 2)
    fixed = T._minibatches(data, jax.random.PRNGKey(0), False, 3, 3)
    np.testing.assert_array_equal(fixed, data[:9].reshape(3, 3, 2))  # paper: data order, remainder left out
    a = T._minibatches(data, jax.random.PRNGKey(1), True, 5, 2)
    b = T._minibatches(data, jax.random.PRNGKey(1), True, 5, 2)
    c = T._minibatches(data, jax.random.PRNGKey(2), True, 5, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for x in (a, c):  # every state once, rows intact
        rows = np.asarray(x).reshape(-1, 2)
        np.testing.assert_array_equal(rows[np.argsort(rows[:, 0])], data)
        assert not np.array_equal(rows, data)


def test_shuffled_training_is_reproducible_and_matches_the_epoch_program():
    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=2, n_train=32, n_test=16, shuffle=True,
                    problem_params={"steps": 8})
    (a,), (b,) = T.train(prob, cfg, 0), T.train(prob, cfg, 0)
    (fixed,) = T.train(prob, cfg.model_copy(update={"shuffle": False}), 0)
    assert a.history["loss"] == b.history["loss"] and a.history["test_loss"] == b.history["test_loss"]
    assert a.history["loss"][1] != fixed.history["loss"][1]  # the order changed the second epoch's updates
    # the one-program epoch with train()'s per-epoch keys gives the same numbers
    model = T.make_model(prob, cfg, 0)
    tr, te = (jnp.asarray(x) for x in T.make_data(prob, cfg, 0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    epoch, tx, _ = T.build_epoch(prob, cfg, static, tr.shape[0])
    p, o, alive = params, tx.init(params), jnp.bool_(True)
    key = jax.random.PRNGKey(0 + 1_000_003)
    for e in (1, 2):
        p, o, alive, m = jax.jit(epoch)(p, o, alive, tr, te, jax.random.fold_in(key, e))
        for k in ("loss", "train_loss", "test_loss"):
            assert float(m[k]) == pytest.approx(a.history[k][e - 1], rel=1e-5, abs=1e-7), (k, e)


def test_training_programs_compile_from_abstract_shapes_or_after_the_controllers(monkeypatch):
    """train() compiles its programs from the controller's abstract shapes while the
    initialiser runs, and checks the real controller against them; a factory that cannot be
    traced abstractly (it needs concrete values) takes the sequential path, and a controller
    that differs from its abstract shapes gets its programs compiled again. The same run, bit
    for bit, every way."""
    import dataclasses

    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=2, n_train=16, n_test=8, problem_params={"steps": 8})
    compiles, checks = [], []
    real_compile, real_same = T._Stepper.compile, T._same_controller
    monkeypatch.setattr(T._Stepper, "compile", lambda self, *a, **k: compiles.append(1) or real_compile(self, *a, **k))
    monkeypatch.setattr(T, "_same_controller", lambda *a: checks.append(real_same(*a)) or checks[-1])

    def run(problem):
        compiles.clear(), checks.clear()
        (res,) = train(problem, cfg, 0)
        return res, len(compiles), list(checks)

    early, n_compiles, seen = run(prob)
    assert (n_compiles, seen) == (1, [True])  # compiled once, from abstract shapes, and they matched

    def concrete_factory(key, zero_last=False):
        np.asarray(key)  # needs a concrete key: no abstract trace, no compiled initialiser
        return prob.make_controller(key, zero_last=zero_last)

    concrete = dataclasses.replace(prob, make_controller=concrete_factory)
    assert T._abstract_split(concrete, cfg) is None
    late, n_compiles, seen = run(concrete)
    assert (n_compiles, seen) == (1, [])  # compiled once, after the controllers existed

    monkeypatch.setattr(T, "_same_controller", lambda *a: checks.append(False) or False)
    again, n_compiles, seen = run(prob)
    assert (n_compiles, seen) == (2, [False])  # the abstract programs were not used
    for other in (late, again):
        for k in ("loss", "train_loss", "test_loss", "update_norm", "cos_mg"):
            assert early.history[k] == other.history[k], k
        for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(early.model, eqx.is_inexact_array)),
                        jax.tree_util.tree_leaves(eqx.filter(other.model, eqx.is_inexact_array))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_same_controller_compares_static_parts_and_parameter_shapes():
    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=1)
    p_abs, s_abs = T._abstract_split(prob, cfg)
    p, s = eqx.partition(T.make_model(prob, cfg, 0), eqx.is_inexact_array)
    assert T._same_controller(s, p, s_abs, p_abs)
    wider = problems.get("cartpole", steps=8, poles=2)  # another input size: other kernel shapes
    p2, s2 = eqx.partition(T.make_model(wider, cfg, 0), eqx.is_inexact_array)
    assert not T._same_controller(s2, p2, s_abs, p_abs)


def test_missing_init_weights_file_fails_before_any_compilation(tmp_path):
    prob = problems.get("cartpole", steps=8)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=1, n_train=16, n_test=8, problem_params={"steps": 8},
                    init_weights=str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        train(prob, cfg, 0)
