"""The gradient-flow engine against independent references (method.md)."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stablebptt import flow as F
from stablebptt import problems
from stablebptt.losses import TrajectoryLoss
from stablebptt.nets import MLP
from stablebptt.problems.linear import closed_form_fields


def tree_allclose(a, b, rtol=1e-5, atol=1e-7):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def pendulum_step(x, c):
    """A nonlinear toy: damped pendulum with torque, batched (B, 2)."""
    th, om = x[:, 0], x[:, 1]
    om1 = om + 0.1 * (-jnp.sin(th) - 0.1 * om + c[:, 0])
    return jnp.stack([th + 0.1 * om1, om1], axis=1)


@pytest.fixture
def toy():
    key = jax.random.PRNGKey(3)
    model = MLP(key, 2, (1,), widths=(16, 16))
    x0 = jax.random.normal(jax.random.PRNGKey(4), (6, 2))
    return model, x0


def hand_loss(model, x0, T, rc=0.0, every=True):
    """Plain Python loop: the regular loss, differentiated with jax.grad as reference."""
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


@pytest.mark.parametrize("every", [True, False])
def test_R_equals_jax_grad_of_python_loop(toy, every):
    model, x0 = toy
    T = 9
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.3)
    p, s = eqx.partition(model, eqx.is_inexact_array)
    ref_val, ref = jax.value_and_grad(lambda p: hand_loss(eqx.combine(p, s), x0, T, 0.3, every))(p)
    val, upd, info = F.value_and_update(model, x0, step=pendulum_step, loss=loss, horizon=T, flow="R")
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    tree_allclose(upd, ref, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(info["update_norm"], F.tree_norm(ref), rtol=1e-6)


class BatchCoupled(eqx.Module):
    """A controller whose rows depend on each other (it centres its batch): must not be
    flattened over time steps by the deferred parameter vjp."""
    mlp: MLP

    def __call__(self, x):
        return self.mlp(x - jnp.mean(x, axis=0, keepdims=True))


@pytest.mark.parametrize("mode", ["R", "C"])
def test_row_coupled_controller_keeps_per_step_batches(toy, mode):
    model, x0 = toy
    coupled = BatchCoupled(model)
    assert F.rows_independent(model) and not F.rows_independent(coupled)
    T = 7
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=T)
    _, upd, _ = F.value_and_update(coupled, x0, flow=mode, **kw)
    p, s = eqx.partition(coupled, eqx.is_inexact_array)
    g = jax.grad(lambda p: hand_loss(eqx.combine(p, s), x0, T))(p)  # plain AD of a Python loop
    if mode == "R":
        ref = g
    else:  # M by plain AD of the gated unroll (controller input stopped), combined by sign
        m = jax.grad(lambda p: F.unrolled_loss(p, s, x0, gates=(0.0, 1.0), **kw))(p)
        ref = F.combine_sign(m, g)
    tree_allclose(upd, ref, rtol=2e-5, atol=1e-8)


def test_C_cotangents_in_turn_equal_vmapped(toy, monkeypatch):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=8, flow="C")
    _, vmapped, _ = F.value_and_update(model, x0, **kw)
    monkeypatch.setattr(F, "TWO_COTANGENTS_IN_TURN_BYTES", 0)  # every controller: in turn
    _, in_turn, _ = F.value_and_update(model, x0, **kw)
    tree_allclose(in_turn, vmapped, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["M", "S", "R", ("R", "M", "S", "R", "M", "M", "R", "S")])
def test_kept_activations_equal_recomputed_forward(toy, mode, monkeypatch):
    model, x0 = toy
    assert F.saves_residuals(model)
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every", control_weight=0.1)
    kw = dict(step=pendulum_step, loss=loss, horizon=8, flow=mode)
    _, kept, _ = F.value_and_update(model, x0, **kw)
    monkeypatch.setattr(F, "saves_residuals", lambda m: False)
    _, recomputed, _ = F.value_and_update(model, x0, **kw)
    tree_allclose(kept, recomputed, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["M", "R", "C"])
def test_flattened_parameter_vjp_equals_per_step_vmap(toy, mode, monkeypatch):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=8, flow=mode)
    _, flat, _ = F.value_and_update(model, x0, **kw)
    monkeypatch.setattr(F, "rows_independent", lambda m: False)
    _, per_step, _ = F.value_and_update(model, x0, **kw)
    tree_allclose(flat, per_step, rtol=1e-5, atol=1e-8)


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


def hand_linear_field(A, Bm, Th, x0, T, mode):
    """∂L/∂Θ for L = (1/T) Σ_n mean_b ½‖x_n‖² ... computed by explicit adjoints in float64.

    Per sample: λ_T = ∂ℓ_T/∂x_T; λ_n = ∂ℓ_n/∂x_n + J_nᵀ λ_{n+1} with
    J = A + BΘ (R), A (M), 0 (S), BΘ (N); ∇Θ = Σ_n (Bᵀ λ_{n+1}) x_nᵀ.
    """
    A, Bm, Th, x0 = (np.asarray(a, np.float64) for a in (A, Bm, Th, x0))
    nB = x0.shape[0]
    xs = [x0]
    for _ in range(T):
        xs.append(xs[-1] @ (A + Bm @ Th).T)
    J = {"R": A + Bm @ Th, "M": A, "S": np.zeros_like(A), "N": Bm @ Th}[mode]
    dl = lambda x: x / (nB * T)  # ∂/∂x of (1/T)·mean_b ½‖x‖² ... per sample rows
    lam = dl(xs[T])
    grad = np.zeros_like(Th)
    for n in range(T - 1, -1, -1):
        grad += (lam @ Bm).T @ xs[n]
        lam = (dl(xs[n]) if n > 0 else 0) + lam @ J
    return grad


@pytest.mark.parametrize("mode", ["R", "M", "S", "N"])
def test_linear_system_fields_match_hand_adjoints(mode):
    A, Bm, Th, x0, T = linear_setup()
    step = lambda x, c: x @ A.T + c @ Bm.T
    loss = TrajectoryLoss(lambda x: 0.5 * jnp.mean(jnp.sum(x**2, axis=1)), on="every")
    _, upd, _ = F.value_and_update(MatrixGain(jnp.asarray(Th)), jnp.asarray(x0), step=step, loss=loss,
                                   horizon=T, flow=mode)
    np.testing.assert_allclose(upd.theta, hand_linear_field(A, Bm, Th, x0, T, mode), rtol=2e-5, atol=1e-6)


def test_schedule_of_uniform_letters_equals_mode(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=6)
    for m in "RMSN":
        _, a, _ = F.value_and_update(model, x0, flow=m, **kw)
        # a non-uniform schedule path (traced gates) with the same letters except a no-op first step
        _, b, _ = F.value_and_update(model, x0, flow=F.Flow(mode=[m] * 6, truncate=0), **kw)
        tree_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_mixed_schedule_matches_hand_adjoints():
    A, Bm, Th, x0, T = linear_setup(seed=1, T=4)
    sched = ["R", "M", "S", "N"]
    step = lambda x, c: x @ A.T + c @ Bm.T
    loss = TrajectoryLoss(lambda x: 0.5 * jnp.mean(jnp.sum(x**2, axis=1)), on="every")
    _, upd, _ = F.value_and_update(MatrixGain(jnp.asarray(Th)), jnp.asarray(x0), step=step, loss=loss,
                                   horizon=T, flow=sched)
    # reference: per-step Jacobian from the schedule
    A64, B64, T64, X = (np.asarray(a, np.float64) for a in (A, Bm, Th, x0))
    xs = [X]
    for _ in range(T):
        xs.append(xs[-1] @ (A64 + B64 @ T64).T)
    Js = {"R": A64 + B64 @ T64, "M": A64, "S": 0 * A64, "N": B64 @ T64}
    dl = lambda x: x / (X.shape[0] * T)
    lam, grad = dl(xs[T]), np.zeros_like(T64)
    for n in range(T - 1, -1, -1):
        grad += (lam @ B64).T @ xs[n]
        lam = (dl(xs[n]) if n > 0 else 0) + lam @ Js[sched[n]]
    np.testing.assert_allclose(upd.theta, grad, rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ combined mode
def test_sign_combiner_rule_including_zero():
    m = {"a": jnp.array([1.0, -2.0, 3.0, 0.0, 0.0, -1.0, 2.0])}
    g = {"a": jnp.array([2.0, -1.0, -3.0, 0.0, 1.0, 0.0, 0.0])}
    out = F.combine_sign(m, g)["a"]
    np.testing.assert_array_equal(out, [1.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    out_g = F.combine_sign_g(m, g)["a"]
    np.testing.assert_array_equal(out_g, [2.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("every", [True, False])
def test_fused_C_equals_naive_C(toy, every):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.1)
    kw = dict(step=pendulum_step, loss=loss, horizon=12)
    v1, fused, info = F.value_and_update(model, x0, flow="C", **kw)
    v2, naive, (m, g) = F.naive_combined(model, x0, **kw)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    tree_allclose(fused, naive, rtol=1e-5, atol=1e-7)
    # the fused fields themselves equal the separately computed M and G
    _, ua, ub = None, *F.naive_combined(model, x0, **kw)[2]
    assert float(info["cos_mg"]) == pytest.approx(float(F.field_stats(m, g)["cos_mg"]), rel=1e-5)


def test_fused_C_with_checkpointing_and_schedule(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    fl = F.Flow("C", c_fields=(list("MMRRSSNNMMRR"), "R"))
    kw = dict(step=pendulum_step, loss=loss, horizon=12)
    _, a, _ = F.value_and_update(model, x0, flow=fl, **kw)
    _, b, _ = F.naive_combined(model, x0, flow=fl, **kw)
    _, c, _ = F.value_and_update(model, x0, flow=fl, checkpoint_every=4, **kw)
    tree_allclose(a, b, rtol=1e-5, atol=1e-7)
    tree_allclose(a, c, rtol=1e-5, atol=1e-7)


def test_forward_values_identical_across_modes(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    vals = {m: float(F.value_and_update(model, x0, step=pendulum_step, loss=loss, horizon=7, flow=m)[0])
            for m in "RMSNC"}
    assert len(set(vals.values())) == 1, vals


def count_primitive(jaxpr, name):
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            n += 1
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
            n += count_primitive(sub, name)
        for p in eqn.params.values():
            for j in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(j, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    n += count_primitive(inner, name)
                elif hasattr(j, "eqns"):
                    n += count_primitive(j, name)
    return n


def test_fused_C_does_one_forward_pass(toy):
    """Regression guard: count simulator evaluations (sin primitives) in the traced programs."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=5, validate=False)
    count = lambda fn: count_primitive(jax.make_jaxpr(fn)(model).jaxpr, "sin")
    n_R = count(lambda m: F.value_and_update(m, x0, flow="R", **kw)[1])
    n_M = count(lambda m: F.value_and_update(m, x0, flow="M", **kw)[1])
    n_C = count(lambda m: F.value_and_update(m, x0, flow="C", **kw)[1])
    n_naive = count(lambda m: F.naive_combined(m, x0, step=pendulum_step, loss=loss, horizon=5)[1])
    assert n_M >= 1
    # R's reverse sweep recomputes the simulator's linearisation (batched input Jacobian)
    assert n_R == 2 * n_M, (n_R, n_M)
    assert n_C == n_R, (n_R, n_C)  # one forward pass: C costs what R costs
    assert n_naive == n_M + n_R  # the authors' C: one complete pass per field


# ------------------------------------------------------------------ properties
def test_zero_residual_gives_zero_fields():
    model = MLP(jax.random.PRNGKey(0), 2, (1,), widths=(8,))  # zero biases: N(0) = 0
    x0 = jnp.zeros((4, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    for m in "RMC":
        val, upd, _ = F.value_and_update(model, x0, step=pendulum_step, loss=loss, horizon=5, flow=m)
        assert float(val) == 0.0
        assert float(F.tree_norm(upd)) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_C_never_points_uphill(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    model = MLP(k1, 2, (1,), widths=(12, 12))
    x0 = 2 * jax.random.normal(k2, (5, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean((x - 1.0) ** 2), on="every")
    _, c, (m, g) = F.naive_combined(model, x0, step=pendulum_step, loss=loss, horizon=15)
    fc, fg = F._flat(c), F._flat(g)
    assert float(jnp.dot(fc, fg)) >= 0.0
    assert bool(jnp.all(jnp.where(fg == 0, fc == 0, True)))
    assert bool(jnp.all(fc * fg >= 0))


def test_controller_ignoring_input_gives_M_equals_G_equals_C():
    model = MLP(jax.random.PRNGKey(1), 2, (1,), widths=(8,))
    model = eqx.tree_at(lambda m: m.layers[0].kernel, model, jnp.zeros_like(model.layers[0].kernel))
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, 0.3 * jnp.ones_like(model.layers[0].bias))
    x0 = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    _, c, (m, g) = F.naive_combined(model, x0, step=pendulum_step, loss=loss, horizon=8)
    tree_allclose(m, g, rtol=1e-6, atol=1e-9)
    tree_allclose(c, m, rtol=1e-6, atol=1e-9)


def test_linear_stall_case():
    prob = problems.get("linear")
    model = prob.make_controller(None)
    x0 = jnp.ones((1, 1))
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon)
    _, g, _ = F.value_and_update(model, x0, flow="R", **kw)
    _, m, _ = F.value_and_update(model, x0, flow="M", **kw)
    _, c, info = F.value_and_update(model, x0, flow="C", **kw)
    G, M = closed_form_fields(1.1, 1.0, 4, 1.0, -1.6)
    assert float(g.theta) == pytest.approx(G, rel=1e-5)
    assert float(m.theta) == pytest.approx(M, rel=1e-5)
    assert np.sign(G) != np.sign(M)
    assert float(c.theta) == 0.0
    assert float(info["cos_mg"]) < 0


def test_M_is_not_a_gradient_field():
    """The Jacobian of M(θ) has an antisymmetric part (toy-rotation: M = 2θ − 4Rθ)."""
    prob = problems.get("toy-rotation")
    x0 = jnp.zeros((1, 2))

    def M(theta):
        model = prob.make_controller(None, theta=(0.0, 0.0))
        model = eqx.tree_at(lambda m: m.theta, model, theta)
        return F.value_and_update(model, x0, step=prob.step, loss=prob.loss, horizon=2, flow="M",
                                  validate=False)[1].theta

    # finite differences (jax.jacfwd would also stop its tangents at the stop_gradient)
    t0, h = np.array([0.3, -0.7], np.float32), 1e-2
    J = np.stack([(np.asarray(M(jnp.asarray(t0 + h * e))) - np.asarray(M(jnp.asarray(t0 - h * e)))) / (2 * h)
                  for e in np.eye(2, dtype=np.float32)], axis=1)
    np.testing.assert_allclose(J, [[2.0, 4.0], [-4.0, 2.0]], atol=1e-3)
    assert float(np.max(np.abs(J - J.T))) > 1.0


# ------------------------------------------------------------------ baselines on the same machinery
def test_truncated_and_decay_match_hand_adjoints():
    A, Bm, Th, x0, T = linear_setup(seed=2, T=6)
    step = lambda x, c: x @ A.T + c @ Bm.T
    loss = TrajectoryLoss(lambda x: 0.5 * jnp.mean(jnp.sum(x**2, axis=1)), on="every")
    A64, B64, T64, X = (np.asarray(a, np.float64) for a in (A, Bm, Th, x0))
    xs = [X]
    for _ in range(T):
        xs.append(xs[-1] @ (A64 + B64 @ T64).T)
    dl = lambda x: x / (X.shape[0] * T)

    def ref(scale):
        lam, grad = dl(xs[T]), np.zeros_like(T64)
        for n in range(T - 1, -1, -1):
            grad += (lam @ B64).T @ xs[n]
            lam = (dl(xs[n]) if n > 0 else 0) + scale(n) * (lam @ (A64 + B64 @ T64))
        return grad

    model = MatrixGain(jnp.asarray(Th))
    _, tr, _ = F.value_and_update(model, jnp.asarray(x0), step=step, loss=loss, horizon=T,
                                  flow=F.Flow("R", truncate=2))
    np.testing.assert_allclose(tr.theta, ref(lambda n: 0.0 if n % 2 == 0 else 1.0), rtol=2e-5, atol=1e-6)
    _, dc, _ = F.value_and_update(model, jnp.asarray(x0), step=step, loss=loss, horizon=T,
                                  flow=F.Flow("R", decay=0.5))
    np.testing.assert_allclose(dc.theta, ref(lambda n: 0.5), rtol=2e-5, atol=1e-6)


def test_and_mask_matches_hand_reference(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    kw = dict(step=pendulum_step, loss=loss, horizon=5)
    per = [F.value_and_update(model, x0[i:i + 1], flow="R", **kw)[1] for i in range(x0.shape[0])]
    for tau in (1.0, 0.5):
        _, upd, _ = F.value_and_update(model, x0, flow=F.Flow("R", and_mask=tau), **kw)
        for leaf_idx, got in enumerate(jax.tree_util.tree_leaves(upd)):
            stack = np.stack([np.asarray(jax.tree_util.tree_leaves(p)[leaf_idx]) for p in per])
            agree = np.abs(np.mean(np.sign(stack), 0))
            want = np.where(agree >= tau - 1e-6, stack.mean(0), 0.0)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    # without masking, per-sample averaging reproduces the batch gradient (loss is a batch mean)
    _, g, _ = F.value_and_update(model, x0, flow="R", **kw)
    mean = jax.tree_util.tree_map(lambda *a: sum(a) / len(a), *per)
    tree_allclose(g, mean, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------ errors
def test_errors_name_the_bad_value(toy):
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2))
    kw = dict(step=pendulum_step, loss=loss)
    with pytest.raises(ValueError, match="unknown mode 'X'"):
        F.value_and_update(model, x0, horizon=3, flow="X", **kw)
    with pytest.raises(ValueError, match=r"\['Q'\]"):
        F.value_and_update(model, x0, horizon=3, flow=["R", "Q", "M"], **kw)
    with pytest.raises(ValueError, match="3 entries; the horizon is 4"):
        F.value_and_update(model, x0, horizon=4, flow=["R", "M", "M"], **kw)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"horizon={bad}"):
            F.value_and_update(model, x0, horizon=bad, flow="R", **kw)
    with pytest.raises(ValueError, match="non-finite"):
        F.value_and_update(model, x0.at[0, 0].set(jnp.nan), horizon=3, flow="R", **kw)
    wrong = MLP(jax.random.PRNGKey(0), 2, (3,), widths=(4,))  # 3 controls, step wants 1
    bad_step = lambda x, c: x + c  # (B,2) + (B,3) fails
    with pytest.raises(ValueError, match="step"):
        F.value_and_update(wrong, x0, horizon=3, flow="R", step=bad_step, loss=loss)
    with pytest.raises(ValueError, match="truncate"):
        F.Flow("R", truncate=-1)
    with pytest.raises(ValueError, match="decay"):
        F.Flow("R", decay=1.5)
    with pytest.raises(ValueError, match="combiner"):
        F.Flow("C", combiner="nope")


# ------------------------------------------------------------------ batched input Jacobian
class RowMatrixGain(MatrixGain):
    """c = Θ x row by row: takes the batched-Jacobian path without the MLP's own methods."""
    rows_independent = True


class DictPendulumController(eqx.Module):
    """A controller of a pytree state {"th": (B,), "om": (B,)} -> (B, 1), rows independent."""
    mlp: MLP
    rows_independent = True

    def __call__(self, x):
        return self.mlp(jnp.stack([x["th"], x["om"]], axis=1))


def dict_pendulum_step(x, c):
    y = pendulum_step(jnp.stack([x["th"], x["om"]], axis=1), c)
    return {"th": y[:, 0], "om": y[:, 1]}


FLOWS = ["R", "N", "C", ("R", "M", "S", "N", "R", "R", "M", "R"), F.Flow("C", truncate=3),
         F.Flow("R", decay=0.7), F.Flow(("M", "R", "R", "N", "S", "R", "M", "R"), c_fields=("M", "N"))]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: F.as_flow(f).label())
@pytest.mark.parametrize("every", [True, False])
@pytest.mark.parametrize("outputs", [1, 2])
def test_batched_jacobian_path_equals_per_step_path(flow, every, outputs, monkeypatch):
    """The batched-Jacobian path (MLP with its own Jacobian methods, m = 1 and m = 2 controls)
    equals the per-step controller vjp, for every gate pattern; R also equals plain AD."""
    model = MLP(jax.random.PRNGKey(3), 2, (outputs,), widths=(16, 16))
    step = pendulum_step if outputs == 1 else (lambda x, c: pendulum_step(x, c[:, :1] - 0.5 * c[:, 1:]))
    x0 = jax.random.normal(jax.random.PRNGKey(4), (6, 2))
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.2)
    kw = dict(step=step, loss=loss, horizon=8, flow=flow)
    calls = []
    real = F._fields_via_jacobian
    monkeypatch.setattr(F, "_fields_via_jacobian", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", max(outputs, F.JACOBIAN_MAX_CONTROLS))
    val, batched, info = F.value_and_update(model, x0, **kw)
    assert calls, "the batched-Jacobian path was not taken"
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", 0)
    val0, per_step, info0 = F.value_and_update(model, x0, **kw)
    assert float(val) == float(val0)
    tree_allclose(batched, per_step, rtol=2e-5, atol=1e-8)
    for k in info0:
        np.testing.assert_allclose(info[k], info0[k], rtol=2e-5, atol=1e-7)
    if F.as_flow(flow).label() == "R":
        p, s = eqx.partition(model, eqx.is_inexact_array)
        ref = jax.grad(lambda p: F.unrolled_loss(p, s, x0, step=step, loss=loss, horizon=8))(p)
        tree_allclose(batched, ref, rtol=2e-5, atol=1e-8)


@pytest.mark.parametrize("how", ["loop", "rows"])
@pytest.mark.parametrize("mode", ["R", "C"])
def test_activations_kept_by_the_loop_or_recomputed_on_rows_agree(toy, mode, how, monkeypatch):
    """The batched-Jacobian path with the controller's methods, activations either kept by the
    forward loop or recomputed on all rows, equals the per-step path (MLP and quantum CNN)."""
    prob = problems.get("quantum", steps=6)
    cnn = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    cases = [(toy[0], toy[1], pendulum_step, TrajectoryLoss(lambda x: jnp.mean(x**2), on="every", control_weight=0.1), 7),
             (cnn, jnp.asarray(prob.sample_data("paper", 4, 4)[0]), prob.step, prob.loss, prob.horizon)]
    for model, x0, step, loss, T in cases:
        assert F.has_jacobian_methods(model)
        kw = dict(step=step, loss=loss, horizon=T, flow=mode)
        monkeypatch.setattr(F, "_jacobian_residuals", lambda *a: how)
        _, got, _ = F.value_and_update(model, x0, **kw)
        monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", 0)
        _, per_step, _ = F.value_and_update(model, x0, **kw)
        # round-off scale: how far the per-step field itself moves when x0 moves by 1 ulp (the
        # short quantum problem's small fields are that ill-conditioned: ~1e-3 relative)
        _, nudged, _ = F.value_and_update(model, x0 * (1 + 2.0**-23), **kw)
        monkeypatch.undo()
        fa, fb, fn = F._flat(got), F._flat(per_step), F._flat(nudged)
        rel = lambda u, v: float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))
        assert rel(fa, fb) <= max(1e-5, 4 * rel(fn, fb)), (how, mode, rel(fa, fb), rel(fn, fb))


@pytest.mark.parametrize("mode", ["R", "C"])
def test_batched_jacobian_without_controller_methods_equals_per_step(toy, mode, monkeypatch):
    """The generic batched path (J from jax.vjp on all rows) on an MLP and on a pytree state."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every", control_weight=0.1)
    monkeypatch.setattr(F, "_jacobian_residuals", lambda *a: None)
    kw = dict(step=pendulum_step, loss=loss, horizon=7, flow=mode)
    _, generic, _ = F.value_and_update(model, x0, **kw)
    dmodel = DictPendulumController(model)
    dx0 = {"th": x0[:, 0], "om": x0[:, 1]}
    dloss = TrajectoryLoss(lambda x: jnp.mean(x["th"] ** 2 + x["om"] ** 2) / 2, on="every", control_weight=0.1)
    _, dict_state, _ = F.value_and_update(dmodel, dx0, step=dict_pendulum_step, loss=dloss, horizon=7, flow=mode)
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", 0)
    _, per_step, _ = F.value_and_update(model, x0, **kw)
    tree_allclose(generic, per_step, rtol=2e-5, atol=1e-8)
    tree_allclose(dict_state.mlp, per_step, rtol=2e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["R", "M", "S", "N"])
def test_batched_jacobian_linear_fields_match_hand_adjoints(mode, monkeypatch):
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", 2)  # two controls per row
    calls = []
    real = F._fields_via_jacobian
    monkeypatch.setattr(F, "_fields_via_jacobian", lambda *a, **k: calls.append(1) or real(*a, **k))
    A, Bm, Th, x0, T = linear_setup(seed=2)
    step = lambda x, c: x @ A.T + c @ Bm.T
    loss = TrajectoryLoss(lambda x: 0.5 * jnp.mean(jnp.sum(x**2, axis=1)), on="every")
    _, upd, _ = F.value_and_update(RowMatrixGain(jnp.asarray(Th)), jnp.asarray(x0), step=step, loss=loss,
                                   horizon=T, flow=mode)
    np.testing.assert_allclose(upd.theta, hand_linear_field(A, Bm, Th, x0, T, mode), rtol=2e-5, atol=1e-6)
    assert bool(calls) == (mode in ("R", "N"))  # M and S have no live controller gate


def test_batched_jacobian_is_not_used_for_many_controls_or_coupled_rows(toy):
    model, x0 = toy
    p, s = eqx.partition(model, eqx.is_inexact_array)
    assert F._uses_batched_jacobian(p, s, x0, [(1.0, 1.0)])
    assert not F._uses_batched_jacobian(p, s, x0, [(0.0, 1.0)])  # M: no controller backward
    wide = MLP(jax.random.PRNGKey(0), 2, (F.JACOBIAN_MAX_CONTROLS + 1,), widths=(4,))
    pw, sw = eqx.partition(wide, eqx.is_inexact_array)
    assert not F._uses_batched_jacobian(pw, sw, x0, [(1.0, 1.0)])
    assert not F._uses_batched_jacobian(p, BatchCoupled(s), x0, [(1.0, 1.0)])


SEGMENTED_FLOWS = ["R", "C", ("R", "M", "S", "N", "R", "R", "M", "R", "N", "R", "S", "R"), F.Flow("C", truncate=5)]


@pytest.mark.parametrize("flow", SEGMENTED_FLOWS, ids=lambda f: F.as_flow(f).label())
@pytest.mark.parametrize("every", [True, False])
@pytest.mark.parametrize("how", ["loop", "rows", None])
@pytest.mark.parametrize("checkpoint_every", [4, 5])
def test_batched_jacobian_in_remat_segments_equals_unsegmented(toy, flow, every, how, checkpoint_every,
                                                               monkeypatch):
    """Remat segments on the batched-Jacobian path (forward loop kept per segment only, the
    segments' reverse sweeps chained through their adjoints, gradients summed over segments)
    give the unsegmented batched path's and the per-step path's fields and loss, for every way
    of getting the controller's activations (kept by the loop, recomputed on rows, jax.vjp)."""
    model, x0 = toy
    loss = TrajectoryLoss(lambda x: jnp.mean(x**2), on="every" if every else "final", control_weight=0.1)
    kw = dict(step=pendulum_step, loss=loss, horizon=12, flow=flow)
    segs = []
    real = F._fields_via_jacobian
    monkeypatch.setattr(F, "_fields_via_jacobian", lambda *a, **k: segs.append(k["seg"]) or real(*a, **k))
    monkeypatch.setattr(F, "_jacobian_residuals", lambda *a: how)
    val, segmented, info = F.value_and_update(model, x0, checkpoint_every=checkpoint_every, **kw)
    assert segs and segs[-1] == {4: 4, 5: 4}[checkpoint_every]  # the largest divisor of T up to the request
    val1, whole, info1 = F.value_and_update(model, x0, **kw)
    monkeypatch.setattr(F, "JACOBIAN_MAX_CONTROLS", 0)
    _, per_step, _ = F.value_and_update(model, x0, checkpoint_every=checkpoint_every, **kw)
    np.testing.assert_allclose(float(val), float(val1), rtol=1e-6)
    tree_allclose(segmented, whole, rtol=2e-5, atol=1e-8)
    tree_allclose(segmented, per_step, rtol=2e-5, atol=1e-8)
    for k in info1:
        np.testing.assert_allclose(info[k], info1[k], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["R", "C"])
def test_batched_jacobian_in_remat_segments_quantum_under_jit(mode):
    """The quantum CNN (activations recomputed on each segment's rows) under jit: remat
    segments equal no remat to the field's own 1-ulp sensitivity."""
    prob = problems.get("quantum", steps=8)
    model = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)
    x0 = jnp.asarray(prob.sample_data("paper", 4, 4)[0])
    p, s = eqx.partition(model, eqx.is_inexact_array)
    assert F._uses_batched_jacobian(p, s, x0, [F.GATES["R"]])
    kw = dict(step=prob.step, loss=prob.loss, horizon=prob.horizon, flow=mode, validate=False)
    upd = jax.jit(lambda p, x, ce: F.value_and_update(eqx.combine(p, s), x, checkpoint_every=ce, **kw)[1],
                  static_argnums=2)
    whole, seg, nudged = upd(p, x0, None), upd(p, x0, 2), upd(p, x0 * (1 + 2.0**-23), None)
    rel = lambda u, v: float(jnp.linalg.norm(F._flat(u) - F._flat(v)) / jnp.linalg.norm(F._flat(v)))
    assert rel(seg, whole) <= max(1e-5, 4 * rel(nudged, whole)), (rel(seg, whole), rel(nudged, whole))
