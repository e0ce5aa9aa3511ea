"""The user problems of benchmarks/user_problems.py (plain equinox controllers, no hooks) build,
run through the engine, and the automatic backward strategy matches autodiff on them; the
candidate list and table of benchmarks/bench_backward.py."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stablebptt as sb
from conftest import EPS32, assert_close
from stablebptt.core import hooks

USER = ("burgers_conv1d", "heat2d_conv2d", "field_mlp", "large_state_few_controls", "implicit_solve", "ode_diffrax")


@pytest.fixture()
def up(bench_module):
    return bench_module("user_problems")


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(tree))


#: XLA:CPU options for the tests' programs: 3-6x faster compilation of these small programs (the
#: numbers are compared within one program, so its optimisation level does not matter)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run(prob, x0, *, horizon: int, flow: str, backwards):
    """One compiled program (eager dispatch of the controllers' many small ops, their
    initialisation included, costs more than compiling them): the controller built from key 0
    as it is and with a zero last layer, their controls of ``x0``, and ``(loss, update, info)``
    of the first for each backward. Returns ``(abstract controller, control, zeroed control,
    [(loss, update, info), ...])``."""
    kw = dict(step=prob.step, loss=prob.loss, horizon=horizon, flow=flow)

    def run(key, x):
        model = prob.make_controller(key, zero_last=False)
        zeroed = prob.make_controller(key, zero_last=True)
        return model(x), zeroed(x), [sb.value_and_update(model, x, backward=b, **kw) for b in backwards]

    key = jax.random.PRNGKey(0)
    abstract = eqx.filter_eval_shape(lambda k: prob.make_controller(k, zero_last=False), key)
    return (abstract, *jax.jit(run).lower(key, x0).compile(FAST_COMPILE)(key, x0))


@pytest.mark.slow
@pytest.mark.parametrize("name", USER)
def test_user_problem_builds_and_updates(up, name):
    prob = up.build(name)
    assert prob.horizon >= 2 and prob.defaults["batch_size"] == 8
    train, test = prob.sample_data("paper", 3, 2)
    again, _ = prob.sample_data("paper", 3, 2)
    other, _ = prob.sample_data(1, 3, 2)
    assert (
        train.dtype == np.float32 and train.shape == (3,) + prob.state_shape and test.shape == (2,) + prob.state_shape
    )
    np.testing.assert_array_equal(train, again)  # "paper" is a fixed seed
    assert not np.array_equal(train, other)
    with pytest.raises(ValueError):
        prob.sample_data("other", 1, 1)

    x0 = jnp.asarray(train[:2])
    model, c, c0, ((val, upd, info),) = _run(prob, x0, horizon=2, flow="R", backwards=["autodiff"])
    if name != "ode_diffrax":  # a user's controller: no library hooks, no rows_independent claim
        assert not getattr(type(model), "rows_independent", False)
        assert not hasattr(model, "forward_with_residuals")
    assert c.shape == (2,) + prob.control_shape and c.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(c))) > 0 and float(jnp.max(jnp.abs(c0))) == 0.0
    assert np.isfinite(float(val)) and _finite(upd) and float(info["update_norm"]) > 0
    assert jax.tree_util.tree_structure(upd) == jax.tree_util.tree_structure(eqx.filter(model, hooks.is_param))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["burgers_conv1d", "implicit_solve"])
def test_auto_matches_autodiff(up, name):
    """Conv1d controller (rows not merged) and a step with a solve: the measured strategy is
    one of the candidates and C's update equals the reference's to float32 round-off."""
    prob = up.build(name)
    x0 = jnp.asarray(prob.sample_data("paper", 2, 1)[0])
    model, _, _, ((v_ref, u_ref, _), (v, u, _)) = _run(prob, x0, horizon=6, flow="C", backwards=["autodiff", "auto"])
    strategy = sb.select_backward(model, x0, step=prob.step, loss=prob.loss, horizon=6, flow="C")
    cands = sb.candidates(
        model, x0, step=prob.step, loss=prob.loss, horizon=6, gates=sb.core.as_flow("C").gates(6).fields
    )
    assert strategy in cands and not any(getattr(c, "merge_rows", False) for c in cands)
    assert abs(float(v) - float(v_ref)) <= 100 * EPS32 * abs(float(v_ref))
    assert_close(u, u_ref, rel=1000 * EPS32, what=f"{name} C auto vs autodiff")


def test_bench_backward_candidates_and_table(bench_module):
    bb = bench_module("bench_backward")
    up = bench_module("user_problems")
    plain = up.build("field_mlp")
    model = eqx.filter_eval_shape(plain.make_controller, jax.random.PRNGKey(0))  # abstract: nothing runs
    x0 = jnp.zeros((2,) + plain.state_shape)
    cands = bb.candidates(model, x0, plain)
    assert list(cands) == ["autodiff", "auto", "per_step", "per_step+save", "per_step+insweep", "per_step+save+insweep"]
    assert all(not s.merge_rows for k, s in cands.items() if k.startswith("per_step"))
    ode = up.build("ode_diffrax")  # the library's MLP: rows independent, with hooks
    cols = bb.candidates(eqx.filter_eval_shape(ode.make_controller, jax.random.PRNGKey(0)), jnp.zeros((2, 3)), ode)
    assert {"batched", "batched+save", "batched+keep", "batched+keep+save", "per_step", "per_step+save"} <= set(cols)
    assert list(bb.all_candidates(model, x0, plain, extra_names=["future"], only={"auto"})) == ["autodiff", "auto"]
    assert bb.all_candidates(model, x0, plain, extra_names=["future"])["future"] == "future"

    ref = {"w": jnp.array([1.0, -2.0, 3.0])}
    assert bb.check({"w": ref["w"] * (1 + 1e-6)}, ref, mode="R")["ok"]
    assert not bb.check({"w": ref["w"] * 1.01}, ref, mode="R")["ok"]
    # C: a flip of the sign test at an entry where G is round-off from 0 is set aside
    got = bb.check({"w": jnp.array([1.0, 0.0, 3.0])}, ref, mode="C", g_ref=lambda: {"w": jnp.array([1.0, 1e-9, 2.0])})
    assert got["ok"] and got["sign_ambiguous"] == 1

    row = {
        "problem": "p",
        "mode": "C",
        "wall_s": 1.0,
        "strategies": {
            "autodiff": {
                "ok": True,
                "rel_err": 0.0,
                "update_ms": 2.0,
                "update_ratio": 2.0,
                "epoch_ms": 8.0,
                "epoch_ratio": 1.0,
                "update_compile_s": 1.0,
                "epoch_compile_s": 3.0,
            },
            "auto": {
                "ok": True,
                "rel_err": 1e-7,
                "update_ms": 1.0,
                "update_ratio": 1.0,
                "resolved": "X",
                "update_compile_s": 1.5,
            },
            "bad": {"ok": False, "wrong": True, "rel_err": 0.5},
            "future": {"error": "ValueError: no"},
        },
    }
    table = bb.markdown([row])
    assert "| p | C | 2.00 (2.00×) | **1.00 (1.00×)** | wrong (5.0e-01) | error |" in table
    assert "| p | C | **8.00 (1.00×)** | – |" in table and "* p C: X" in table
    assert "wrong" in bb.line(row) or "WRONG" in bb.line(row)
