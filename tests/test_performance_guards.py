"""Regression guards for the engine's performance structure (issue 5). No timing here: the
guards count primitives in the traced programs and check memory planning and equivalences,
so they are deterministic on any machine. Timings live in benchmarks/ (results.md).

What is guarded (see docs/performance.md):
* fused C runs the controller once per step and the simulator as often as R (the authors'
  two-pass C, ``naive_combined``, as often as M + R);
* both adjoints of C go through one tridiagonal solve with two right-hand sides (quantum);
* parameter gradients are deferred out of the reverse sweep: with the batched input Jacobian
  (default) no loop contains a controller backward; on the per-step path the loops of R
  contain only the forward and the controller's input-vjp matmuls, M's loops no controller
  backward at all, and C's loops only R's input-vjp (no dead work for the M field);
* checkpointed (remat) C under jit, ``checkpoint_every="auto"``, the memory model, the
  chunked evaluation and the per-update trainer give the same numbers as the plain paths.
"""
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stablebptt import flow as F
from stablebptt import problems
from stablebptt import train as T
from stablebptt.config import RunConfig

LOOPS = ("scan", "while")


def sub_jaxprs(eqn):
    """The jaxprs nested in ``eqn`` that run. A ``custom_linear_solve`` carries four (matvec,
    vecmat, solve, transpose_solve) but runs only ``solve`` (its transpose swaps them)."""
    if eqn.primitive.name == "custom_linear_solve":
        candidates = [eqn.params["jaxprs"].solve]
    else:
        candidates = [j for p in eqn.params.values() for j in (p if isinstance(p, (list, tuple)) else [p])]
    for j in candidates:
        inner = getattr(j, "jaxpr", None)
        sub = inner if (inner is not None and hasattr(inner, "eqns")) else (j if hasattr(j, "eqns") else None)
        if sub is not None:
            yield sub


def count(jaxpr, name, *, in_loops_only=False, _in_loop=False):
    """Occurrences of primitive ``name`` in ``jaxpr`` and all sub-jaxprs that run."""
    n = 0
    for eqn in jaxpr.eqns:
        loop = _in_loop or eqn.primitive.name in LOOPS
        if eqn.primitive.name == name and (_in_loop or not in_loops_only):
            n += 1
        for sub in sub_jaxprs(eqn):
            n += count(sub, name, in_loops_only=in_loops_only, _in_loop=loop)
    return n


def eqns_named(jaxpr, name):
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            out.append(eqn)
        for sub in sub_jaxprs(eqn):
            out += eqns_named(sub, name)
    return out


def paper(name, batch=8, **params):
    prob = problems.get(name, **params)
    model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(prob.sample_data("paper", batch, batch)[0])
    return prob, model, x0


def traced(prob, model, x0, mode):
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    if mode == "naive":
        f = lambda m: F.naive_combined(m, x0, **kw)[1]
    else:
        f = lambda m: F.value_and_update(m, x0, flow=mode, validate=False, **kw)[1]
    return jax.make_jaxpr(f)(model).jaxpr


#: the two ways the engine runs a field with a live controller gate (flow.JACOBIAN_MAX_CONTROLS):
#: "batched" = the controller's input Jacobian on all T·B rows after the forward loop (the
#: default for one control per row: cart-pole, quantum; forced here for guidance's 4 too),
#: "per-step" = the controller's input vjp at every step of the reverse sweep
PATHS = {"batched": 4, "per-step": 0}


@pytest.fixture(scope="module", params=[(n, p) for n in ("cartpole", "guidance", "quantum") for p in PATHS])
def programs(request):
    name, path = request.param
    prob, model, x0 = paper(name)
    old = F.JACOBIAN_MAX_CONTROLS
    F.JACOBIAN_MAX_CONTROLS = PATHS[path]
    try:
        return name, path, {m: traced(prob, model, x0, m) for m in ("R", "M", "S", "C", "naive")}
    finally:
        F.JACOBIAN_MAX_CONTROLS = old


def test_fused_C_runs_controller_and_simulator_once(programs):
    name, path, j = programs
    # the controller runs once per step in the loops (the deferred parameter vjp outside them
    # may recompute the forward pass or use kept activations, see flow.KEEP_ACTIVATIONS_BYTES)
    t = {m: count(j[m], "tanh", in_loops_only=True) for m in j}
    assert t["R"] >= 1
    assert t["C"] == t["R"] == t["M"] == t["S"], t
    assert t["naive"] == 2 * t["R"], t
    if name == "quantum":
        s = {m: count(j[m], "tridiagonal_solve") for m in j}
        # forward solve + its transpose in the reverse sweep, on both paths (the batched path
        # saves the step's linearisation instead of solving again: flow._saves_linearization)
        assert s["R"] == 2, s
        assert s["M"] == 2, s
        assert s["C"] == s["R"], s  # both adjoints share the simulator's linearisation
        assert s["naive"] == s["M"] + s["R"], s


@pytest.mark.parametrize("path", list(PATHS))
def test_C_solves_both_adjoints_as_two_right_hand_sides(path, monkeypatch):
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", PATHS[path])
    prob, model, x0 = paper("quantum")
    j = traced(prob, model, x0, "C")
    rhs_cols = sorted(e.invars[3].aval.shape[-1] for e in eqns_named(j, "tridiagonal_solve"))
    # forward: 1 column; reverse: M and R together
    # (on the CPU, quantum.FOLD_COLUMNS; off it every system keeps one column, tested in
    # test_quantum.py::test_combined_mode_with_vmapped_seeds_solves_one_column_per_system)
    assert rhs_cols == [1, 2], rhs_cols


def test_parameter_gradients_are_deferred_out_of_the_loops(programs):
    name, path, j = programs
    loop = {m: count(j[m], "dot_general", in_loops_only=True) for m in j}  # convs are matmuls too
    fwd = loop["M"]  # M's loops: the forward controller only (no controller backward)
    assert fwd >= 1
    assert loop["S"] == fwd, loop
    if path == "per-step":
        assert loop["R"] == 2 * fwd, loop  # forward + input-vjp; no per-step parameter products
    else:  # no controller backward in any loop: at most the contraction J_nᵀ·ac (m > 1)
        assert loop["R"] - fwd == (1 if name == "guidance" else 0), loop
    assert loop["C"] == loop["R"], loop  # only the R field needs the controller's input-vjp


def test_checkpointed_C_under_jit_matches_plain():
    prob, model, x0 = paper("cartpole", steps=20)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)

    def upd(p, ce, budget=None):
        return F.value_and_update(eqx.combine(p, static), x0, flow="C", validate=False, checkpoint_every=ce,
                                  memory_budget=budget, **kw)[1]

    ref = jax.jit(lambda p: upd(p, None))(params)
    for ce, budget in ((5, None), ("auto", 1)):
        got = jax.jit(lambda p, ce=ce, budget=budget: upd(p, ce, budget))(params)
        for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-8)


def test_memory_plan_and_model():
    prob, model, x0 = paper("cartpole")
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    assert F.plan_checkpointing(model, x0, flow="C", **kw) is None  # paper setting fits the default budget
    seg = F.plan_checkpointing(model, x0, flow="C", memory_budget=100_000, **kw)
    assert seg is not None and prob.horizon % seg == 0 and 1 <= seg < prob.horizon
    assert F.resolve_checkpoint_every(7, model, x0, **kw) == 7
    with pytest.raises(ValueError, match="checkpoint_every"):
        F.resolve_checkpoint_every("sometimes", model, x0, **kw)
    # the estimate is within a factor 2 of XLA's buffer assignment (per step, T vs 2T)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    temps = []
    for steps in (50, 100):
        p2 = problems.get("cartpole", steps=steps)
        f = jax.jit(lambda p: F.value_and_update(eqx.combine(p, static), x0, step=p2.step, loss=p2.loss,
                                                 horizon=steps, flow="C", validate=False)[1])
        temps.append(f.lower(params).compile().memory_analysis().temp_size_in_bytes)
    measured = (temps[1] - temps[0]) / 50
    est = F.residual_bytes_per_step(model, x0, flow="C", **kw)
    assert 0.5 * measured <= est <= 2.0 * measured, (est, measured)


@pytest.mark.parametrize("chunk", [None, 32, 64, 100])
def test_chunked_evaluation_equals_one_rollout(chunk):
    prob = dataclasses.replace(problems.get("guidance"), eval_chunk=chunk)
    model = prob.make_controller(jax.random.PRNGKey(1), zero_last=False)
    tr, te = (jnp.asarray(a) for a in prob.sample_data(3, 256, 192))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    got = jax.jit(T._make_evaluate(prob, static))(params, tr, te)
    want = [F.evaluate_loss(model, xs, **kw) for xs in (tr, te)]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6)


def test_eval_chunk_is_the_largest_divisor_up_to_the_preferred_size():
    assert T._eval_chunk(256, 64) == 64
    assert T._eval_chunk(192, 100) == 96
    assert T._eval_chunk(256, None) == min(256, T.EVAL_CHUNK)
    assert T._eval_chunk(200, 256) == 200  # fits in one chunk
    assert T._eval_chunk(97, 64) == 97  # prime: no divisor ≥ 32, one rollout


def test_per_update_trainer_equals_epoch_program():
    prob = problems.get("cartpole", steps=12)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=2, n_train=32, n_test=16, problem_params={"steps": 12})
    (res,) = T.train(prob, cfg, 0)
    model = T.make_model(prob, cfg, 0)
    tr, te = (jnp.asarray(a) for a in T.make_data(prob, cfg, 0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    epoch, tx, _ = T.build_epoch(prob, cfg, static, tr.shape[0])
    p, o, alive = params, tx.init(params), jnp.bool_(True)
    f = jax.jit(epoch)
    for e in (1, 2):
        p, o, alive, m = f(p, o, alive, tr, te, jax.random.PRNGKey(e))
        for k in ("loss", "train_loss", "test_loss", "update_norm", "cos_mg"):
            assert float(m[k]) == pytest.approx(res.history[k][e - 1], rel=1e-5, abs=1e-7), (k, e)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(eqx.filter(res.model, eqx.is_inexact_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_seed_strategies_agree(monkeypatch):
    prob = problems.get("cartpole", steps=10)
    cfg = RunConfig(problem="cartpole", mode="C", epochs=2, n_train=16, n_test=8, data="seeded",
                    problem_params={"steps": 10})
    out = {}
    for strategy in ("loop", "vmap"):
        monkeypatch.setattr(T, "SEED_STRATEGY", strategy)
        out[strategy] = T.train(prob, cfg, [0, 1])
    for a, b in zip(out["loop"], out["vmap"]):
        np.testing.assert_allclose(a.history["test_loss"], b.history["test_loss"], rtol=1e-5)
        np.testing.assert_allclose(a.history["update_norm"], b.history["update_norm"], rtol=1e-5)


def test_the_sweep_saves_a_costly_steps_linearization_and_recomputes_a_cheap_one(monkeypatch):
    """The batched path's reverse sweep reuses the forward loop's linearisation of a step with
    a solve or a loop (quantum: no second forward solve, guarded above) and recomputes an
    element-wise one (cart-pole, guidance); saved or recomputed, the update is the same bits,
    with and without remat segments."""
    def saves(name):
        prob, model, x0 = paper(name)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        return F._saves_linearization(F._phys(prob.step, prob.loss, prob.horizon), params, static, x0)

    assert saves("quantum") and not saves("cartpole") and not saves("guidance")
    # a step with an inner loop (two half steps) counts as costly
    looped = lambda x, c: jax.lax.fori_loop(0, 2, lambda i, y: y + 0.5 * (c - y), x)
    model = problems.get("linear").make_controller(jax.random.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    lin = problems.get("linear")
    assert F._saves_linearization(F._phys(looped, lin.loss, 4), params, static, jnp.ones((2, 1)))

    prob, model, x0 = paper("quantum", steps=16)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, validate=False)
    for mode in ("R", "C"):
        for seg in (None, 4):
            saved = F.value_and_update(model, x0, flow=mode, checkpoint_every=seg, **kw)[1]
            monkeypatch.setattr(F, "_saves_linearization", lambda *a: False)
            again = F.value_and_update(model, x0, flow=mode, checkpoint_every=seg, **kw)[1]
            monkeypatch.undo()
            for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(again)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{mode} seg={seg}")
