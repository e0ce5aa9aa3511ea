"""The gradient-flow engine against independent references (method.md): jax.grad of
hand-written Python loops, hand-written float64 adjoints of linear systems, closed forms,
finite differences — for every backward strategy.

Tolerances: float32 results are compared relative to the reference's largest entry; the bound
is float32's ε times an amplification stated per test (a short, well-conditioned unroll
amplifies round-off little; the quantum problem's own 1-ulp sensitivity is measured)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stablebptt as sb
from conftest import EPS32, assert_close, rel_err, tree_entries
from stablebptt import problems
from stablebptt.core import Autodiff, Flow, ReverseSweep, candidates, engine, unroll
from stablebptt.core import backward as B
from stablebptt.core import gates as G
from stablebptt.core.losses import TrajectoryLoss
from stablebptt.problems.controllers import MLP
from stablebptt.problems.linear import closed_form_fields


def pendulum_step(x, c):
    """A nonlinear toy: damped pendulum with torque, batched (B, 2), control (B, 1)."""
    th, om = x[:, 0], x[:, 1]
    om1 = om + 0.1 * (-jnp.sin(th) - 0.1 * om + c[:, 0])
    return jnp.stack([th + 0.1 * om1, om1], axis=1)


#: the strategies a row-independent controller with hooks (MLP) can run; ids name them
SWEEPS = {
    "batched-kept": ReverseSweep("batched", keep_activations=True),
    "batched-rows": ReverseSweep("batched", keep_activations=False),
    "batched-saved-lin": ReverseSweep("batched", keep_activations=True, save_linearization=True),
    "per-step-merged": ReverseSweep("per_step", merge_rows=True),
    "per-step": ReverseSweep("per_step", merge_rows=False),
    "per-step-saved-lin": ReverseSweep("per_step", merge_rows=False, save_linearization=True),
    "segments-3": ReverseSweep("batched", keep_activations=True, checkpoint_every=3),
    "per-step-segments-4": ReverseSweep("per_step", merge_rows=False, checkpoint_every=4),
    "in-sweep": ReverseSweep("per_step", merge_rows=False, param_grads="in_sweep"),
    "in-sweep-saved-lin": ReverseSweep("per_step", merge_rows=False, save_linearization=True, param_grads="in_sweep"),
    "in-sweep-segments-4": ReverseSweep("per_step", merge_rows=False, param_grads="in_sweep", checkpoint_every=4),
}
STRATEGIES = {"autodiff": Autodiff(), **SWEEPS}


@pytest.fixture
def toy():
    model = MLP(jax.random.PRNGKey(3), 2, (1,), widths=(16, 16))
    x0 = jax.random.normal(jax.random.PRNGKey(4), (6, 2))
    return model, x0


def hand_loss(model, x0, T, rc=0.0, every=True):
    """Plain Python loop: the regular loss, differentiated with jax.grad as the reference."""
    x, total = x0, 0.0
    for _ in range(T):
        c = model(x)
        total = total + rc * jnp.mean(c**2) / T
        x = pendulum_step(x, c)
        if every:
            total = total + jnp.mean(x**2) / T
    if not every:
        total = total + jnp.mean(x**2)
    return total


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("every", [True, False])
def test_R_equals_jax_grad_of_python_loop(toy, name, every):
    model, x0 = toy
    T = 9
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.3)
    p, s = eqx.partition(model, eqx.is_inexact_array)
    ref_val, ref = jax.value_and_grad(lambda p: hand_loss(eqx.combine(p, s), x0, T, 0.3, every))(p)
    val, upd, info = sb.value_and_update(
        model, x0, step=pendulum_step, loss=loss, horizon=T, flow="R", backward=STRATEGIES[name]
    )
    np.testing.assert_allclose(val, ref_val, rtol=10 * EPS32)
    assert_close(upd, ref, 100 * EPS32)
    np.testing.assert_allclose(info["update_norm"], engine.tree_norm(ref), rtol=100 * EPS32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
@pytest.mark.parametrize("every", [True, False])
def test_fused_C_equals_two_complete_passes(toy, name, every):
    """One forward pass with two adjoints gives the authors' C (two complete passes) and its fields."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.1)
    kw = dict(step=pendulum_step, loss=loss, horizon=12)
    v1, fused, info = sb.value_and_update(model, x0, flow="C", backward=SWEEPS[name], **kw)
    v2, naive, (m, g) = sb.naive_combined(model, x0, **kw)
    assert float(v1) == pytest.approx(float(v2), rel=10 * EPS32)
    assert_close(fused, naive, 100 * EPS32)
    stats = engine.field_stats(m, g)
    for k in ("cos_mg", "sign_agree"):
        assert float(info[k]) == pytest.approx(float(stats[k]), rel=1e-5)


# ------------------------------------------------------------------ every strategy, every problem
def paper_case(name, steps, batch=4, **params):
    prob = problems.get(name, steps=steps, **params) if steps else problems.get(name, **params)
    try:
        model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    except TypeError:  # the toys' factories take no zero_last semantics but accept it
        model = prob.make_controller(jax.random.PRNGKey(0))
    x0 = jnp.asarray(prob.sample_data(1, batch, batch)[0])
    return prob, model, x0


CASES = {
    "cartpole": ("cartpole", 12, {}),
    "cartpole-4poles": ("cartpole", 12, {"poles": 4}),
    "guidance": ("guidance", 12, {}),
    "quantum": ("quantum", 8, {}),
    "linear": ("linear", None, {}),
    "toy-field": ("toy-field", None, {}),
    "toy-rotation": ("toy-rotation", None, {}),
}
MODES = ["R", "M", "S", "N", "C"]


def applicable(model, strategy) -> bool:
    return not (
        isinstance(strategy, ReverseSweep)
        and strategy.merge_rows
        and not getattr(type(model), "rows_independent", False)
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_strategy_equals_autodiff_on_every_problem(case):
    """All modes of every problem, each strategy against the autodiff reference. The modes run
    as data (gates) through one program per strategy: two fields, the update combined where
    the mode is C. The bound is the larger of 1e3 ε and 4× the field's own change when x0
    moves by one ulp (the quantum problem amplifies round-off by ~1e3)."""
    name, steps, params = CASES[case]
    prob, model, x0 = paper_case(name, steps, **params)
    T = prob.horizon
    gates = [Flow(m).gates(T, diagnostics=True) for m in MODES]
    stacked = G.Gates(np.stack([g.fields for g in gates]), np.stack([g.combined for g in gates]))
    kw = dict(step=prob.step, loss=prob.loss, horizon=T, flow=Flow("C"))

    def updates(strategy, x):
        def one(g):
            return engine.flow_update(model, x, gates=g, backward=strategy, **kw)[1]

        return jax.jit(jax.vmap(one))(stacked)

    ref = updates(Autodiff(), x0)
    nudged = updates(Autodiff(), x0 * (1 + EPS32))
    for sname, strategy in SWEEPS.items():
        if not applicable(model, strategy) or (strategy.checkpoint_every or 0) >= T:
            continue
        got = updates(strategy, x0)
        for i, mode in enumerate(MODES):
            take = lambda t: jax.tree_util.tree_map(lambda a: a[i], t)
            floor = rel_err(take(nudged), take(ref))
            e = rel_err(take(got), take(ref))
            assert e <= max(1e3 * EPS32, 4 * floor), (case, sname, mode, e, floor)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["R", "M", "S", "N", "C", ("R", "M", "S", "N") * 3])
@pytest.mark.parametrize("name", list(SWEEPS))
def test_single_field_programs_equal_autodiff(toy, mode, name):
    """The static structure of each mode (one field; M and S without the controller's input
    Jacobian; C's M field without it) on the pendulum toy."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every", control_weight=0.1)
    kw = dict(step=pendulum_step, loss=loss, horizon=12, flow=mode)
    _, ref, _ = sb.value_and_update(model, x0, backward=Autodiff(), **kw)
    _, got, _ = sb.value_and_update(model, x0, backward=SWEEPS[name], **kw)
    assert_close(got, ref, 200 * EPS32)


# ------------------------------------------------------------------ controllers
class BatchCoupled(eqx.Module):
    """A controller whose rows depend on each other (it centres its batch)."""

    mlp: MLP

    def __call__(self, x):
        return self.mlp(x - jnp.mean(x, axis=0, keepdims=True))


class LyingCoupled(BatchCoupled):
    rows_independent = True  # false: the engine must refuse it


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["R", "C"])
def test_row_coupled_controller_keeps_per_step_batches(toy, mode):
    model, x0 = toy
    coupled = BatchCoupled(model)
    T = 7
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=T)
    cands = candidates(coupled, x0, gates=Flow("R").gates(T).fields, **kw)
    assert Autodiff() in cands and ReverseSweep("per_step", merge_rows=False) in cands
    assert not any(getattr(c, "merge_rows", False) for c in cands)  # no strategy merges its rows
    _, upd, _ = sb.value_and_update(coupled, x0, flow=mode, **kw)
    p, s = eqx.partition(coupled, eqx.is_inexact_array)
    g = jax.grad(lambda p: hand_loss(eqx.combine(p, s), x0, T))(p)  # plain AD of a Python loop
    if mode == "R":
        ref = g
    else:  # M by plain AD of the gated unroll (controller input stopped), combined by sign
        m = jax.grad(lambda p: unroll.unrolled_loss(p, s, x0, gates=np.tile([0.0, 1.0], (T, 1)), **kw))(p)
        ref = G.combine_sign(m, g)
    assert_close(upd, ref, 200 * EPS32)


def test_a_false_claim_of_independent_rows_is_refused(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    with pytest.raises(ValueError, match=r"LyingCoupled declares rows_independent = True.*row\(s\) \[1, 2\]"):
        sb.value_and_update(LyingCoupled(model), x0, step=pendulum_step, loss=loss, horizon=4, flow="R")


class RowMatrixGain(eqx.Module):
    """c = Θ x row by row, declared independent, without hooks: the generic batched path."""

    theta: jax.Array
    rows_independent = True

    def __call__(self, x):
        return x @ self.theta.T


class BadHooks(MLP):
    """An MLP whose Jacobian hook returns the wrong shape."""

    def jacobian_from_residuals(self, x, hs):
        jac, deltas = super().jacobian_from_residuals(x, hs)
        return jac[:, :, :1], deltas


def test_hooks_with_wrong_shapes_are_refused(toy):
    model, x0 = toy
    bad = BadHooks(jax.random.PRNGKey(3), 2, (1,), widths=(16, 16))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    with pytest.raises(ValueError, match="BadHooks.jacobian_from_residuals returns J shaped"):
        sb.value_and_update(bad, x0, step=pendulum_step, loss=loss, horizon=4, flow="R")


class DictPendulumController(eqx.Module):
    """A controller of a pytree state {"th": (B,), "om": (B,)} -> (B, 1), rows independent, no hooks."""

    mlp: MLP
    rows_independent = True

    def __call__(self, x):
        return self.mlp(jnp.stack([x["th"], x["om"]], axis=1))


def dict_pendulum_step(x, c):
    y = pendulum_step(jnp.stack([x["th"], x["om"]], axis=1), c)
    return {"th": y[:, 0], "om": y[:, 1]}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["R", "C"])
def test_generic_batched_path_on_a_pytree_state(toy, mode):
    """J and the parameter gradients by jax.vjp on all rows (no hooks), with a dict state."""
    model, x0 = toy
    dmodel = DictPendulumController(model)
    dx0 = {"th": x0[:, 0], "om": x0[:, 1]}
    dloss = TrajectoryLoss(lambda x: jnp.mean(x["th"] ** 2 + x["om"] ** 2) / 2, on="every", control_weight=0.1)
    kw = dict(step=dict_pendulum_step, loss=dloss, horizon=7, flow=mode)
    cands = candidates(dmodel, dx0, step=dict_pendulum_step, loss=dloss, horizon=7, gates=Flow("R").gates(7).fields)
    assert ReverseSweep("batched", merge_rows=True) in cands
    _, ref, _ = sb.value_and_update(dmodel, dx0, backward=Autodiff(), **kw)
    for strategy in cands:
        _, got, _ = sb.value_and_update(dmodel, dx0, backward=strategy, **kw)
        assert_close(got, ref, 200 * EPS32)


# ------------------------------------------------------------------ linear system, by hand
class MatrixGain(eqx.Module):
    theta: jax.Array  # (m, d): c = Θ x

    def __call__(self, x):
        return x @ self.theta.T


def linear_setup(seed=0, d=3, m=2, B=4, T=5):
    rng = np.random.default_rng(seed)
    A = (np.eye(d) + 0.3 * rng.standard_normal((d, d))).astype(np.float32)
    Bm = rng.standard_normal((d, m)).astype(np.float32)
    Th = (0.3 * rng.standard_normal((m, d))).astype(np.float32)
    x0 = rng.standard_normal((B, d)).astype(np.float32)
    return A, Bm, Th, x0, T


def hand_adjoint_field(A, Bm, Th, x0, T, jac_of_step):
    """∂L/∂Θ for L = (1/T) Σ_n mean_b ½‖x_n‖² by explicit adjoints in float64: λ_T = ∂ℓ_T/∂x_T;
    λ_n = ∂ℓ_n/∂x_n + J_nᵀ λ_{n+1} with J_n = jac_of_step(n) (R: A + BΘ, M: A, S: 0, N: BΘ,
    times the truncation/decay factor of step n); ∇Θ = Σ_n (Bᵀ λ_{n+1}) x_nᵀ."""
    A, Bm, Th, x0 = (np.asarray(a, np.float64) for a in (A, Bm, Th, x0))
    xs = [x0]
    for _ in range(T):
        xs.append(xs[-1] @ (A + Bm @ Th).T)
    dl = lambda x: x / (x0.shape[0] * T)
    lam, grad = dl(xs[T]), np.zeros_like(Th)
    for n in range(T - 1, -1, -1):
        grad += (lam @ Bm).T @ xs[n]
        lam = (dl(xs[n]) if n > 0 else 0) + lam @ jac_of_step(n, A, Bm, Th)
    return grad


JACS = {"R": lambda A, B, T: A + B @ T, "M": lambda A, B, T: A, "S": lambda A, B, T: 0 * A, "N": lambda A, B, T: B @ T}
LINEAR_STRATEGIES = {
    "autodiff": Autodiff(),
    "per-step": ReverseSweep("per_step", merge_rows=False),
    "batched-generic": ReverseSweep("batched"),
    "segments": ReverseSweep("per_step", False, checkpoint_every=2),
}


def linear_problem(T):
    A, Bm, Th, x0, _ = linear_setup(T=T)
    step = lambda x, c: x @ A.T + c @ Bm.T
    loss = TrajectoryLoss(lambda x: 0.5 * jnp.mean(jnp.sum(x**2, axis=1)), on="every")
    return A, Bm, Th, x0, step, loss


@pytest.mark.parametrize("name", list(LINEAR_STRATEGIES))
@pytest.mark.parametrize("mode", ["R", "M", "S", "N"])
def test_linear_system_fields_match_hand_adjoints(mode, name):
    T = 5
    A, Bm, Th, x0, step, loss = linear_problem(T)
    model = RowMatrixGain(jnp.asarray(Th)) if name == "batched-generic" else MatrixGain(jnp.asarray(Th))
    _, upd, _ = sb.value_and_update(
        model, jnp.asarray(x0), step=step, loss=loss, horizon=T, flow=mode, backward=LINEAR_STRATEGIES[name]
    )
    want = hand_adjoint_field(A, Bm, Th, x0, T, lambda n, A, B, Th_: JACS[mode](A, B, Th_))
    assert_close(upd.theta, want, 200 * EPS32)


@pytest.mark.parametrize("name", list(LINEAR_STRATEGIES))
def test_mixed_schedule_truncation_and_decay_match_hand_adjoints(name):
    T = 6
    A, Bm, Th, x0, step, loss = linear_problem(T)
    model = RowMatrixGain(jnp.asarray(Th)) if name == "batched-generic" else MatrixGain(jnp.asarray(Th))
    sched = ["R", "M", "S", "N", "R", "M"]
    cases = [
        (sched, lambda n, A, B, Th_: JACS[sched[n]](A, B, Th_)),
        (Flow("R", truncate=2), lambda n, A, B, Th_: (0.0 if n % 2 == 0 else 1.0) * JACS["R"](A, B, Th_)),
        (Flow("R", decay=0.5), lambda n, A, B, Th_: 0.5 * JACS["R"](A, B, Th_)),
    ]
    for flow, jac in cases:
        _, upd, _ = sb.value_and_update(
            model, jnp.asarray(x0), step=step, loss=loss, horizon=T, flow=flow, backward=LINEAR_STRATEGIES[name]
        )
        assert_close(upd.theta, hand_adjoint_field(A, Bm, Th, x0, T, jac), 200 * EPS32)


@pytest.mark.slow
def test_schedule_of_uniform_letters_equals_mode(toy):
    """A schedule of T equal letters is that mode, bit for bit, under the same strategy (a
    name such as "auto" measures each flow anew and may pick different strategies, which
    agree only to round-off)."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=6)
    for backward in (Autodiff(), ReverseSweep("batched", keep_activations=True), ReverseSweep("per_step")):
        for m in "RMSN":
            _, a, _ = sb.value_and_update(model, x0, flow=m, backward=backward, **kw)
            _, b, _ = sb.value_and_update(model, x0, flow=[m] * 6, backward=backward, **kw)
            assert_close(b, a, 0)


# ------------------------------------------------------------------ combined mode
def test_sign_combiner_rule_including_zero():
    m = {"a": jnp.array([1.0, -2.0, 3.0, 0.0, 0.0, -1.0, 2.0])}
    g = {"a": jnp.array([2.0, -1.0, -3.0, 0.0, 1.0, 0.0, 0.0])}
    np.testing.assert_array_equal(G.combine_sign(m, g)["a"], [1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(G.combine_sign_g(m, g)["a"], [2.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.slow
def test_fused_C_with_segments_and_a_schedule(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    fl = Flow("C", c_fields=(list("MMRRSSNNMMRR"), "R"))
    kw = dict(step=pendulum_step, loss=loss, horizon=12, flow=fl)
    _, ref, _ = sb.value_and_update(model, x0, backward=Autodiff(), **kw)
    for ce in (None, 4, 5):
        _, got, _ = sb.value_and_update(model, x0, checkpoint_every=ce, **kw)
        assert_close(got, ref, 200 * EPS32)


@pytest.mark.slow
def test_forward_values_identical_across_modes_and_strategies(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    vals = {
        (m, s): float(
            sb.value_and_update(model, x0, step=pendulum_step, loss=loss, horizon=7, flow=m, backward=STRATEGIES[s])[0]
        )
        for m in "RMSNC"
        for s in ("autodiff", "batched-kept", "per-step")
    }
    assert len(set(vals.values())) == 1, vals


def count_primitive(jaxpr, name):
    from jax.extend.core import jaxprs_in_params

    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in jaxprs_in_params(eqn.params):
            n += count_primitive(sub, name)
    return n


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
def test_fused_C_does_one_forward_pass(toy, name):
    """Regression guard: count simulator evaluations (sin primitives) in the traced programs.
    The sweep runs the step as often for C as for R and M (one forward loop for both fields);
    the authors' C (two complete passes) runs it twice as often as one field does."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=5, validate=False)
    count = lambda fn: count_primitive(jax.make_jaxpr(fn)(model).jaxpr, "sin")
    n = {m: count(lambda md: sb.value_and_update(md, x0, flow=m, backward=SWEEPS[name], **kw)[1]) for m in "RMC"}
    assert n["R"] >= 1 and n["C"] == n["R"] == n["M"], n
    ad = {m: count(lambda md: sb.value_and_update(md, x0, flow=m, backward=Autodiff(), **kw)[1]) for m in "RC"}
    assert ad["C"] == 2 * ad["R"], ad


# ------------------------------------------------------------------ properties (method.md)
@pytest.mark.slow
def test_zero_residual_gives_zero_fields():
    model = MLP(jax.random.PRNGKey(0), 2, (1,), widths=(8,))  # zero biases: N(0) = 0
    x0 = jnp.zeros((4, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    for m in "RMC":
        val, upd, _ = sb.value_and_update(model, x0, step=pendulum_step, loss=loss, horizon=5, flow=m)
        assert float(val) == 0.0
        assert float(engine.tree_norm(upd)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_C_never_points_uphill(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    model = MLP(k1, 2, (1,), widths=(12, 12))
    x0 = 2 * jax.random.normal(k2, (5, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean((x - 1.0) ** 2), on="every")
    _, c, (m, g) = sb.naive_combined(model, x0, step=pendulum_step, loss=loss, horizon=15)
    fc, fg = tree_entries(c), tree_entries(g)
    assert float(np.dot(fc, fg)) >= 0.0
    assert np.all(np.where(fg == 0, fc == 0, True))
    assert np.all(fc * fg >= 0)


def test_controller_ignoring_input_gives_M_equals_G_equals_C():
    """K ≡ 0 makes M = G mathematically; computed as two separate passes they differ by
    round-off only: the bound is relative to the field's largest entry (an entry 1e-3 of the
    largest may differ relatively by much more than ε)."""
    model = MLP(jax.random.PRNGKey(1), 2, (1,), widths=(8,))
    model = eqx.tree_at(lambda m: m.layers[0].kernel, model, jnp.zeros_like(model.layers[0].kernel))
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, 0.3 * jnp.ones_like(model.layers[0].bias))
    x0 = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    _, c, (m, g) = sb.naive_combined(model, x0, step=pendulum_step, loss=loss, horizon=8)
    assert_close(m, g, 64 * EPS32)
    for a, b in zip(jax.tree_util.tree_leaves(c), jax.tree_util.tree_leaves(m)):  # C keeps M where signs agree
        kept = np.sign(np.asarray(a)) == np.sign(np.asarray(b))
        assert np.all(np.where(kept, np.asarray(a) == np.asarray(b), np.abs(b) <= 64 * EPS32 * np.max(np.abs(b))))


def test_linear_stall_case():
    prob = problems.get("linear")
    model = prob.make_controller(None)
    x0 = jnp.ones((1, 1))
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    _, g, _ = sb.value_and_update(model, x0, flow="R", **kw)
    _, m, _ = sb.value_and_update(model, x0, flow="M", **kw)
    _, c, info = sb.value_and_update(model, x0, flow="C", **kw)
    Gc, Mc = closed_form_fields(1.1, 1.0, 4, 1.0, -1.6)
    assert float(g.theta) == pytest.approx(Gc, rel=10 * EPS32)
    assert float(m.theta) == pytest.approx(Mc, rel=10 * EPS32)
    assert np.sign(Gc) != np.sign(Mc)
    assert float(c.theta) == 0.0
    assert float(info["cos_mg"]) < 0


def test_M_is_not_a_gradient_field():
    """The Jacobian of M(θ) has an antisymmetric part (toy-rotation: M = 2θ − 4Rθ)."""
    prob = problems.get("toy-rotation")
    x0 = jnp.zeros((1, 2))

    def M(theta):
        model = prob.make_controller(None, theta=(0.0, 0.0))
        model = eqx.tree_at(lambda m: m.theta, model, theta)
        return sb.value_and_update(model, x0, step=prob.step, loss=prob.loss, horizon=2, flow="M", validate=False)[
            1
        ].theta

    # finite differences (jax.jacfwd would also stop its tangents at the stop_gradient)
    t0, h = np.array([0.3, -0.7], np.float32), 1e-2
    J = np.stack(
        [
            (np.asarray(M(jnp.asarray(t0 + h * e))) - np.asarray(M(jnp.asarray(t0 - h * e)))) / (2 * h)
            for e in np.eye(2, dtype=np.float32)
        ],
        axis=1,
    )
    np.testing.assert_allclose(J, [[2.0, 4.0], [-4.0, 2.0]], atol=1e-3)
    assert float(np.max(np.abs(J - J.T))) > 1.0


@pytest.mark.slow
def test_and_mask_matches_hand_reference(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=5)
    per = [sb.value_and_update(model, x0[i : i + 1], flow="R", **kw)[1] for i in range(x0.shape[0])]
    for tau in (1.0, 0.5):
        _, upd, _ = sb.value_and_update(model, x0, flow=Flow("R", and_mask=tau), **kw)
        for leaf_idx, got in enumerate(jax.tree_util.tree_leaves(upd)):
            stack = np.stack([np.asarray(jax.tree_util.tree_leaves(p)[leaf_idx]) for p in per])
            agree = np.abs(np.mean(np.sign(stack), 0))
            want = np.where(agree >= tau - 1e-6, stack.mean(0), 0.0)
            assert_close(got, want, 100 * EPS32)
    # without masking, per-sample averaging reproduces the batch gradient (the loss is a batch mean)
    _, g, _ = sb.value_and_update(model, x0, flow="R", **kw)
    assert_close(jax.tree_util.tree_map(lambda *a: sum(a) / len(a), *per), g, 100 * EPS32)


# ------------------------------------------------------------------ choosing a strategy
def test_candidates_follow_the_controller_and_the_flow():
    """The candidates are every strategy that can compute the flow: no guess about speed
    removes one; structure (independent rows, hooks, a live controller gate, the memory
    budget) does."""
    kw = lambda prob: dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    gates = lambda prob, mode: Flow(mode).gates(prob.horizon).fields
    prob, model, x0 = paper_case("cartpole", None, batch=8)
    every = candidates(model, x0, gates=gates(prob, "R"), **kw(prob))
    sweeps = [c for c in every if isinstance(c, ReverseSweep)]
    # first, the prior (kept without measuring): the batched sweep reading kept activations
    assert every[0] == ReverseSweep("batched", keep_activations=True) and Autodiff() in every
    gprob, gmodel, gx0 = paper_case("guidance", 8, batch=4)  # a loss on every state
    assert candidates(gmodel, gx0, gates=gates(gprob, "S"), **kw(gprob))[0] == ReverseSweep(
        "batched", keep_activations=True, save_linearization=True
    )  # S: no field carries the physics path
    assert candidates(gmodel, gx0, gates=gates(gprob, "C"), **kw(gprob))[0] == ReverseSweep(
        "batched", keep_activations=True
    )
    # batched × keep × save, per-step × save (per-step reads no kept activations)
    assert {(c.jacobian, c.keep_activations, c.save_linearization, c.param_grads) for c in sweeps} == {
        ("batched", k, s, "after") for k in (False, True) for s in (False, True)
    } | {("per_step", False, s, p) for s in (False, True) for p in ("after", "in_sweep")}
    assert all(c.merge_rows != (c.param_grads == "in_sweep") and c.checkpoint_every is None for c in sweeps)
    # M needs no input Jacobian: one jacobian value (it is not used)
    assert len(candidates(model, x0, gates=gates(prob, "M"), **kw(prob))) == 1 + 4 + 2
    assert candidates(model, x0, gates=gates(prob, "R"), prefer="autodiff", **kw(prob)) == [Autodiff()]
    assert {c.jacobian for c in candidates(model, x0, gates=gates(prob, "R"), prefer="per_step", **kw(prob))} == {
        "per_step"
    }
    # a budget that needs segments: every sweep has them, autodiff (which cannot) is left out
    small = candidates(model, x0, gates=gates(prob, "C"), memory_budget=100_000, **kw(prob))
    assert Autodiff() not in small
    assert all(c.checkpoint_every is not None and prob.horizon % c.checkpoint_every == 0 for c in small)
    # a plain equinox controller (no rows claim, no hooks): autodiff and the per-step sweeps
    plain = eqx.nn.MLP(4, 1, 8, 1, key=jax.random.PRNGKey(0))
    xb = jnp.ones((3, 4))
    step = lambda x, c: x + 0.1 * c
    got = candidates(_Rows(plain), xb, step=step, loss=prob.loss, horizon=3, gates=Flow("C").gates(3).fields)
    assert got == [Autodiff()] + [
        ReverseSweep("per_step", merge_rows=False, save_linearization=s, param_grads=p)
        for p in ("after", "in_sweep")
        for s in (False, True)
    ]
    with pytest.raises(ValueError, match="backward='sometimes'"):
        candidates(model, x0, gates=gates(prob, "R"), prefer="sometimes", **kw(prob))
    with pytest.raises(ValueError, match="checkpoint_every='often'"):
        candidates(model, x0, gates=gates(prob, "R"), checkpoint_every="often", **kw(prob))
    with pytest.raises(ValueError, match="needs a controller with independent rows"):
        candidates(
            _Rows(plain), xb, step=step, loss=prob.loss, horizon=3, gates=Flow("C").gates(3).fields, prefer="batched"
        )


class _Rows(eqx.Module):
    """A user's controller: an equinox MLP applied row by row (no hooks, no claim)."""

    mlp: eqx.nn.MLP

    def __call__(self, x):
        return jax.vmap(self.mlp)(x)


@pytest.mark.slow
def test_auto_is_the_fastest_measured_candidate_and_is_cached(tmp_path, monkeypatch):
    """backward="auto" keeps the candidate with the least measured time (the record lists
    every candidate timed, with its time), a second call with the same signature reuses the decision
    without measuring (in this process and, through the cache folder, in a new one), and a
    changed simulator is a new signature."""
    from stablebptt.core import choose

    monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(tmp_path))
    prob, model, x0 = paper_case("cartpole", 12, batch=8)
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    gates = Flow("C").gates(prob.horizon)
    kw_choose = dict(kw, flow=Flow("C"), gates=gates)
    strategy, rec = engine.choose_backward("auto", model, x0, **kw_choose)
    times = rec["candidates"]
    every = candidates(model, x0, gates=gates.fields, **kw)
    first = B.first_round(every)
    # round one: one candidate per family; round two: the best beside its one-option neighbours
    assert {repr(c) for c in first} <= set(times) <= {repr(c) for c in every} and not rec["cached"]
    assert len(first) == 4
    assert rec["chosen"] == repr(strategy) == min(times, key=times.get)
    assert all(t > 0 for t in times.values()) and rec["measure_s"] > 0
    again, rec2 = engine.choose_backward("auto", model, x0, **kw_choose)
    assert again == strategy and rec2["cached"] and rec2["candidates"] == times
    with jax.default_matmul_precision("highest"):  # as the trainer traces: the same decision
        assert engine.choose_backward("auto", model, x0, **kw_choose)[1]["cached"]
    choose.forget()  # a new process: the decision comes from the cache folder
    again, rec3 = engine.choose_backward("auto", model, x0, **kw_choose)
    assert again == strategy and rec3["cached"]
    assert len(list(tmp_path.glob("*.json"))) == 1
    other = lambda x, c: prob.step(x, 0.5 * c)  # a different simulator: measured anew
    _, rec4 = engine.choose_backward("auto", model, x0, **dict(kw_choose, step=other))
    assert not rec4["cached"] and len(list(tmp_path.glob("*.json"))) == 2
    # inside a caller's jit trace (parameters traced): measured outside the trace, same numbers
    params, static = eqx.partition(model, eqx.is_inexact_array)
    vu = lambda b: jax.jit(
        lambda p: sb.value_and_update(
            eqx.combine(p, static), x0, step=prob.step, loss=prob.loss, horizon=prob.horizon, flow="C", backward=b
        )[1]
    )(params)
    assert_close(vu("auto"), vu(Autodiff()), 200 * EPS32)
    # a strategy object is used as given, a single candidate is not measured
    assert engine.choose_backward(Autodiff(), model, x0, **kw_choose)[0] == Autodiff()
    assert engine.choose_backward("autodiff", model, x0, **kw_choose)[1]["measure_s"] == 0.0


def test_strategy_options_are_validated():
    with pytest.raises(ValueError, match="jacobian='diagonal'"):
        ReverseSweep("diagonal")
    with pytest.raises(ValueError, match="needs merge_rows=True"):
        ReverseSweep("batched", merge_rows=False)
    with pytest.raises(ValueError, match="checkpoint_every=0"):
        ReverseSweep(checkpoint_every=0)


def test_naive_combined_needs_a_combined_flow_and_autodiff_computes_C(toy):
    """C of value_and_update with autodiff equals naive_combined's bit for bit; naive_combined
    given a flow that is not combined says that it needs one (a ValueError, not a KeyError)."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=5)
    _, c, _ = sb.value_and_update(model, x0, flow="C", backward="autodiff", **kw)
    assert_close(c, sb.naive_combined(model, x0, **kw)[1], 0)
    with pytest.raises(ValueError, match="needs a combined flow"):
        sb.naive_combined(model, x0, flow=Flow("R"), **kw)


# ------------------------------------------------------------------ errors
def test_errors_name_the_bad_value(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2))
    kw = dict(step=pendulum_step, loss=loss)
    with pytest.raises(ValueError, match="unknown mode 'X'"):
        sb.value_and_update(model, x0, horizon=3, flow="X", **kw)
    with pytest.raises(ValueError, match=r"\['Q'\]"):
        sb.value_and_update(model, x0, horizon=3, flow=["R", "Q", "M"], **kw)
    with pytest.raises(ValueError, match="3 entries; the horizon is 4"):
        sb.value_and_update(model, x0, horizon=4, flow=["R", "M", "M"], **kw)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"horizon={bad}"):
            sb.value_and_update(model, x0, horizon=bad, flow="R", **kw)
    with pytest.raises(ValueError, match="non-finite"):
        sb.value_and_update(model, x0.at[0, 0].set(jnp.nan), horizon=3, flow="R", **kw)
    wrong = MLP(jax.random.PRNGKey(0), 2, (3,), widths=(4,))  # 3 controls, step wants 1
    with pytest.raises(ValueError, match="step"):
        sb.value_and_update(wrong, x0, horizon=3, flow="R", step=lambda x, c: x + c, loss=loss)
    with pytest.raises(ValueError, match="truncate"):
        Flow("R", truncate=-1)
    with pytest.raises(ValueError, match="decay"):
        Flow("R", decay=1.5)
    with pytest.raises(ValueError, match="combiner"):
        Flow("C", combiner="nope")
    with pytest.raises(ValueError, match="apply to a backward given by name"):
        sb.value_and_update(model, x0, horizon=3, flow="R", backward=Autodiff(), checkpoint_every=2, **kw)


def test_errors_that_are_not_about_shapes_propagate(toy):
    """check_problem_inputs turns shape errors into one named ValueError, nothing else: any
    other exception reaches the caller as it was raised."""
    model, x0 = toy

    def broken(x, c):
        raise RuntimeError("the simulator's own bug")

    with pytest.raises(RuntimeError, match="the simulator's own bug"):
        unroll.check_problem_inputs(model, x0, broken, 3)


def test_measuring_is_skipped_when_it_would_cost_more_than_a_tenth_of_the_run(tmp_path, monkeypatch):
    """With the number of calls the run will make, the first candidate is returned at once,
    pending, nothing compiled; with its times measured by the caller, the others are compiled
    and timed only when that is expected to cost at most WORTH of the run's time with the
    first, else the skip is cached with those times: the same signature's next short run
    decides without compiling anything, a long run of it measures."""
    from stablebptt.core import choose

    monkeypatch.setenv("STABLEBPTT_BACKWARD_CACHE", str(tmp_path))
    choose.forget()
    x = np.ones((64, 64), np.float32)
    built = []

    def program(k):
        built.append(k)
        return lambda a: jnp.sum(jnp.linalg.matrix_power(a / 64.0, int(k)))

    cands = [3, 50, 2]
    first, rec = choose.choose(cands, program, (x,), ["short run"], calls=10)
    assert first == 3 and rec["pending"] and built == [] and not list(tmp_path.glob("*.json"))
    # 2 others × 1 s of compiling against 10 calls × 0.1 s: over a tenth, skipped and cached
    short, rec = choose.choose(cands, program, (x,), ["short run"], calls=10, timed=(0.1, 1.0))
    assert short == 3 and "skipped" in rec and (rec["ref_s"], rec["compile_s"]) == (0.1, 1.0) and built == []
    assert len(list(tmp_path.glob("*.json"))) == 1
    choose.forget()  # a new process, another short run: decided from the cache, nothing compiled
    again, rec2 = choose.choose(cands, program, (x,), ["short run"], calls=20)
    assert again == 3 and rec2["cached"] and "skipped" in rec2 and built == []
    # the same signature with a long run: measured, and the decision replaces the skip
    best, rec3 = choose.choose(cands, program, (x,), ["short run"], calls=1e12)
    assert "skipped" not in rec3 and set(rec3["candidates"]) == {"3", "50", "2"} and sorted(built) == [2, 3, 50]
    assert best == min(cands, key=lambda c: rec3["candidates"][repr(c)])
    assert len(list(tmp_path.glob("*.json"))) == 1
    choose.forget()
    assert choose.choose(cands, program, (x,), ["short run"], calls=1) == (best, dict(rec3, cached=True))
    # timed as long enough: measured at once
    _, rec4 = choose.choose(cands, program, (x,), ["long"], calls=1e6, timed=(0.1, 1.0))
    assert "skipped" not in rec4 and len(rec4["candidates"]) == 3
    # no number of calls (value_and_update): a cached skip does not count as a decision
    choose.choose(cands, program, (x,), ["another"], calls=1, timed=(0.1, 1.0))
    _, rec5 = choose.choose(cands, program, (x,), ["another"])
    assert "skipped" not in rec5 and len(rec5["candidates"]) == 3
