"""Guidance by repulsion against the authors' reference arrays (gbr_2_4.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_leaves_global_rng_alone, rel_err
from conftest import fixed_control_loss as _trajectory_loss
from conftest import fixed_control_rollout as _rollout
from stablebptt import problems
from stablebptt.problems import guidance

N_ROLL = 20


@pytest.fixture(scope="module")
def prob():
    return guidance.make()


@pytest.fixture(scope="module")
def ref(fixture):
    return fixture("gbr_2_4")


# ---------------------------------------------------------------- reference arrays
def test_one_step(prob, ref):
    step = jax.jit(prob.step)
    s1 = step(ref["state0"], ref["control"])
    assert s1.shape == (64, 6, 2, 2) and s1.dtype == jnp.float32
    assert rel_err(s1, ref["state1"]) <= 1e-5
    # random velocities exercise the friction terms and the old-velocity position update
    s1v = step(ref["state0_randvel"], ref["control"])
    assert rel_err(s1v, ref["state1_randvel"]) <= 1e-5


def test_rollout_and_losses(prob, ref):
    xs = jax.jit(lambda s, c: _rollout(prob.step, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert xs.shape == ref["rollout"].shape == (64, N_ROLL + 1, 6, 2, 2)
    assert rel_err(xs, ref["rollout"]) <= 1e-5
    sl = prob.loss.state_loss
    assert rel_err(sl(jax.jit(prob.step)(ref["state0"], ref["control"])), ref["de_loss_state1"]) <= 1e-5
    assert rel_err(sl(jax.jit(prob.step)(ref["state0_randvel"], ref["control"])), ref["de_loss_state1_randvel"]) <= 1e-5
    assert rel_err(sl(xs[:, -1]), ref["de_loss_rollout_final"]) <= 1e-5
    assert rel_err(jnp.mean(jnp.square(ref["control"])), ref["control_sq_mean"]) <= 1e-5
    # physics loss only (rc = 0): the CONTINUOUS de_loss, a mean over time
    p0 = guidance.make(rc=0.0)
    cont = jax.jit(lambda s, c: _trajectory_loss(p0, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert rel_err(cont, ref["de_loss_rollout_continuous"]) <= 1e-5
    # the training objective with rc = 0.1 (the default) = de_loss + rc · mean(c²)
    assert prob.loss.on == "every" and prob.loss.time_reduce == "mean"
    assert prob.loss.control_weight == 0.1
    full = jax.jit(lambda s, c: _trajectory_loss(prob, s, c, N_ROLL))(ref["state0"], ref["control"])
    expect = ref["de_loss_rollout_continuous"] + np.float32(0.1) * ref["control_sq_mean"]
    assert rel_err(full, expect) <= 1e-5


def test_gradients(ref):
    p0 = guidance.make(rc=0.0)  # the reference gradients are of the physics loss only
    grad = jax.jit(jax.grad(lambda s, c: _trajectory_loss(p0, s, c, N_ROLL), argnums=(0, 1)))
    g_state0, g_control = grad(ref["state0"], ref["control"])
    assert g_state0.shape == (64, 6, 2, 2) and g_control.shape == (64, 2, 2)
    assert rel_err(g_state0, ref["grad_state0"]) <= 1e-4
    assert rel_err(g_control, ref["grad_control"]) <= 1e-4
    # with rc the control gradient gains rc · 2c / (number of control entries)
    p1 = guidance.make(rc=0.5)
    g1 = jax.jit(jax.grad(lambda c: _trajectory_loss(p1, ref["state0"], c, N_ROLL)))(ref["control"])
    expect = ref["grad_control"] + 0.5 * 2.0 * ref["control"] / ref["control"].size
    assert rel_err(g1, expect) <= 1e-4


def test_paper_data(prob, ref):
    train, test = prob.sample_data("paper", 256, 256)
    assert train.shape == test.shape == (256, 6, 2, 2)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert rel_err(train[:16], ref["data_seed42_train16"]) <= 1e-6
    assert rel_err(test[:16], ref["data_seed42_test16"]) <= 1e-6
    assert not np.any(train[:, :, 1]) and not np.any(test[:, :, 1])  # velocities 0
    assert_leaves_global_rng_alone(prob.sample_data)


def test_draw_order_reproduces_fixture_inputs(ref):
    """state0 = the first 64 of 128 states drawn from seed 0; then the control and the
    random velocities are the next draws of the same stream."""
    rng = np.random.RandomState(0)
    states = guidance._draw_states(lambda k: rng.rand(k).astype(np.float32), 128, 2, 4)
    np.testing.assert_array_equal(states[:64], ref["state0"])
    control = rng.normal(size=(64, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(control, ref["control"])
    vel = rng.normal(size=(64, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(vel, ref["state0_randvel"][:, :, 1])
    np.testing.assert_array_equal(ref["state0"][:, :, 0], ref["state0_randvel"][:, :, 0])


def test_uneven_split_draws_n_train_plus_n_test(prob):
    """N = n_train + n_test states are drawn and split at n_train (the authors: N = 2·Nd)."""
    a_tr, a_te = prob.sample_data("paper", 300, 212)
    b_tr, b_te = prob.sample_data("paper", 256, 256)
    assert a_tr.shape[0] == 300 and a_te.shape[0] == 212
    np.testing.assert_array_equal(np.concatenate([a_tr, a_te]), np.concatenate([b_tr, b_te]))
    c_tr, c_te = prob.sample_data("paper", 10, 0)
    assert c_tr.shape == (10, 6, 2, 2) and c_te.shape == (0, 6, 2, 2)


def test_int_seed_data(prob):
    tr, te = prob.sample_data(3, 10, 6)
    assert tr.shape == (10, 6, 2, 2) and te.shape == (6, 6, 2, 2) and tr.dtype == np.float32
    np.testing.assert_array_equal(tr, prob.sample_data(3, 10, 6)[0])
    assert not np.array_equal(tr, prob.sample_data(4, 10, 6)[0])
    big, _ = prob.sample_data(np.int64(1), 4000, 0)
    assert not np.any(big[:, :, 1])
    r_d = np.linalg.norm(big[:, :2, 0], axis=-1)
    assert r_d.min() >= 3.0 - 1e-5 and r_d.max() < 4.0 + 1e-5
    centroid = big[:, 2:, 0].mean(1)
    off = big[:, 2:, 0] - centroid[:, None]
    assert np.max(np.abs(off)) < 1.0  # offsets in [-0.5, 0.5)² around a shared centre
    r_c = np.linalg.norm(centroid, axis=-1)
    assert r_c.min() > 1.0 - 0.5 and r_c.max() < 2.0 + 0.5 and 1.3 < r_c.mean() < 1.7
    for bad in ("other", 2.0, None):
        with pytest.raises(ValueError, match="seed"):
            prob.sample_data(bad, 2, 2)


def test_zero_control_test_loss(prob):
    """Untrained (zero control) test loss on the paper's data: ≈ 5.24 (60 steps, every state)."""
    _, test = prob.sample_data("paper", 256, 256)
    c = prob.zero_control(256)
    assert c.shape == (256, 2, 2)

    def body(s, _):
        s = prob.step(s, c)
        return s, prob.loss.state_loss(s)

    _, per_step = jax.jit(lambda s: jax.lax.scan(body, s, None, length=prob.horizon))(test)
    assert prob.horizon == 60
    loss = float(jnp.mean(per_step))  # + rc · mean(0²) = 0
    assert abs(loss - 5.2405) <= 0.01


def test_controller(prob):
    assert prob.zero_last_default is True
    x = jnp.asarray(prob.sample_data(0, 5, 0)[0])
    ctrl = prob.make_controller(jax.random.PRNGKey(0))
    out = ctrl(x)
    assert out.shape == (5, 2, 2) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    assert ctrl.layers[0].kernel.shape == (24, 100) and ctrl.layers[-1].kernel.shape == (100, 4)
    out2 = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)(x)
    assert float(jnp.max(jnp.abs(out2))) > 0.0
    assert jax.jit(prob.step)(x, out2).shape == x.shape


def test_problem_metadata():
    prob = problems.get("guidance")
    assert prob.name == "guidance" and prob.horizon == 60
    assert prob.state_shape == (6, 2, 2) and prob.control_shape == (2, 2)
    assert dict(prob.params) == {"drivers": 2, "evaders": 4, "rc": 0.1, "dt": 4 / 60, "steps": 60, "centroid": False}
    spec = problems.param_spec("guidance")
    assert set(spec) == {"drivers", "evaders", "rc", "dt", "steps", "centroid"}
    assert spec["rc"][0] == 0.1 and spec["dt"][0] == 4 / 60
    assert prob.defaults["n_train"] == 256 and prob.defaults["batch_size"] == 8
    for rc in (1.0, 0.01, 0.001):
        assert problems.get("guidance", rc=rc).loss.control_weight == rc


# ---------------------------------------------------------------- other sizes and physics
@pytest.mark.parametrize("nd, ne", [(1, 1), (1, 3), (3, 5)])
def test_other_sizes(nd, ne):
    prob = problems.get("guidance", drivers=nd, evaders=ne, steps=10)
    assert prob.state_shape == (nd + ne, 2, 2) and prob.control_shape == (nd, 2)
    train, _ = prob.sample_data("paper", 8, 8)
    assert train.shape == (8, nd + ne, 2, 2)
    c = jnp.asarray(np.random.default_rng(0).normal(size=(8, nd, 2)).astype(np.float32))
    loss, grads = jax.jit(jax.value_and_grad(lambda s, c: _trajectory_loss(prob, s, c, 10), (0, 1)))(train, c)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    ctrl = prob.make_controller(jax.random.PRNGKey(1), zero_last=False)
    assert ctrl(jnp.asarray(train)).shape == (8, nd, 2)
    assert ctrl.layers[0].kernel.shape[0] == 4 * (nd + ne)


def test_rotation_equivariance(ref):
    """Every force is built from differences, norms and 90° turns: rotating all positions and
    velocities by an angle rotates the next state by the same angle (controls unchanged)."""
    prob = guidance.make()
    phi = 0.7
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]], np.float32)
    s0 = ref["state0_randvel"]
    a = np.asarray(jax.jit(prob.step)(s0 @ rot.T, ref["control"]))
    b = np.asarray(jax.jit(prob.step)(s0, ref["control"])) @ rot.T
    assert rel_err(a, b) <= 1e-5


def test_force_directions():
    """One driver and one evader at rest: the evader flees, the driver feels only the control."""
    prob = guidance.make(drivers=1, evaders=1, dt=0.1)
    s = np.zeros((1, 2, 2, 2), np.float32)
    s[0, 0, 0] = [2.0, 0.0]  # driver
    s[0, 1, 0] = [1.0, 0.0]  # evader
    s1 = np.asarray(jax.jit(prob.step)(s, jnp.zeros((1, 1, 2), jnp.float32)))
    np.testing.assert_array_equal(s1[:, :, 0], s[:, :, 0])  # explicit Euler: old v moves x
    np.testing.assert_allclose(s1[0, 0, 1], [0.0, 0.0], atol=0)
    # evader: 15 · d^-2 · (x_e − x_d), d = 0.1 + 1
    np.testing.assert_allclose(s1[0, 1, 1], [0.1 * 15.0 * -1.0 / 1.1**2, 0.0], rtol=1e-6)
    # control (a, b) = (1, 2) on r = x_d − S = (1, 0): a r + b rot(r) = (1, 2)
    s2 = np.asarray(jax.jit(prob.step)(s, jnp.asarray([[[1.0, 2.0]]], jnp.float32)))
    np.testing.assert_allclose(s2[0, 0, 1], [0.1, 0.2], rtol=1e-6)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(drivers=0), r"drivers=0"),
        (dict(drivers=1.5), r"drivers=1\.5"),
        (dict(drivers=True), r"drivers=True"),
        (dict(evaders=0), r"evaders=0"),
        (dict(evaders=-3), r"evaders=-3"),
        (dict(evaders="4"), r"evaders='4'"),
        (dict(rc=-0.1), r"rc=-0\.1"),
        (dict(rc=float("inf")), r"rc=inf"),
        (dict(dt=0), r"dt=0"),
        (dict(steps=0), r"steps=0"),
    ],
)
def test_invalid_params(kw, match):
    with pytest.raises(ValueError, match=match):
        guidance.make(**kw)
    with pytest.raises(ValueError, match=match):
        problems.get("guidance", **kw)


def test_invalid_params_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"drivers=0; must be an integer ≥ 1"):
        guidance.make(drivers=0)
    with pytest.raises(ValueError, match=r"evaders=0; must be an integer ≥ 1"):
        guidance.make(evaders=0)
    with pytest.raises(ValueError, match=r"rc=-1; must be a finite number ≥ 0"):
        guidance.make(rc=-1)
    assert guidance.make(rc=0).loss.control_weight == 0.0


def test_step_rejects_bad_shapes(prob):
    x = jnp.zeros((4, 6, 2, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"control shape \(4, 1, 2, 2\)"):
        prob.step(x, jnp.zeros((4, 1, 2, 2)))  # the raw network output, not output[:, 0]
    with pytest.raises(ValueError, match=r"state shape \(4, 5, 2, 2\)"):
        prob.step(jnp.zeros((4, 5, 2, 2)), jnp.zeros((4, 2, 2)))


def test_centroid_option_switches_the_quirk_off():
    import jax.numpy as jnp

    from stablebptt import problems as _p

    x = jnp.asarray(_p.get("guidance").sample_data(0, 4, 1)[0])
    c = jnp.ones((4, 2, 2))
    a = _p.get("guidance").step(x, c)
    b = _p.get("guidance", centroid=True).step(x, c)
    assert not jnp.allclose(a, b)
    one = _p.get("guidance", evaders=1)
    x1 = jnp.asarray(one.sample_data(0, 4, 1)[0])
    c1 = jnp.ones((4, 2, 2))
    assert jnp.array_equal(one.step(x1, c1), _p.get("guidance", evaders=1, centroid=True).step(x1, c1))
