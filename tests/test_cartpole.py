"""Cart-pole problem against the authors' reference arrays (cartpole_1/2/4.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_leaves_global_rng_alone, rel_err
from conftest import fixed_control_loss as _trajectory_loss
from conftest import fixed_control_rollout as _rollout
from stablebptt import problems
from stablebptt.problems import cartpole

N_ROLL = 20
POLES = (1, 2, 4)


@pytest.fixture(scope="module", params=POLES, ids=lambda n: f"poles{n}")
def case(request, fixture):
    n = request.param
    return n, cartpole.make(poles=n), fixture(f"cartpole_{n}")


# ---------------------------------------------------------------- reference arrays
def test_one_step(case):
    n, prob, ref = case
    s1 = jax.jit(prob.step)(ref["state0"], ref["control"])
    assert s1.shape == (64, 1 + n, 2) and s1.dtype == jnp.float32
    assert rel_err(s1, ref["state1"]) <= 1e-5


def test_rollout_and_losses(case):
    n, prob, ref = case
    xs = jax.jit(lambda s, c: _rollout(prob.step, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert xs.shape == ref["rollout"].shape == (64, N_ROLL + 1, 1 + n, 2)
    assert rel_err(xs, ref["rollout"]) <= 1e-5
    sl = prob.loss.state_loss
    assert rel_err(sl(xs[:, 1]), ref["loss_state1"]) <= 1e-5
    assert rel_err(sl(xs[:, -1]), ref["loss_rollout_final"]) <= 1e-5
    # the authors' loss on (B, T, 1+n, 2) means over time too (not used in training)
    assert rel_err(sl(xs[:, 1:]), ref["loss_rollout_all"]) <= 1e-5
    # the problem's trajectory loss is the FINAL-state loss
    assert prob.loss.on == "final" and prob.loss.control_weight == 0.0
    final = jax.jit(lambda s, c: _trajectory_loss(prob, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert rel_err(final, ref["loss_rollout_final"]) <= 1e-5


def test_gradients(case):
    n, prob, ref = case
    grad = jax.jit(jax.grad(lambda s, c: _trajectory_loss(prob, s, c, N_ROLL), argnums=(0, 1)))
    g_state0, g_control = grad(ref["state0"], ref["control"])
    assert g_state0.shape == (64, 1 + n, 2) and g_control.shape == (64,)
    assert rel_err(g_state0, ref["grad_state0"]) <= 1e-4
    assert rel_err(g_control, ref["grad_control"]) <= 1e-4


def test_paper_data(case):
    n, prob, ref = case
    train, test = prob.sample_data("paper", 256, 256)
    assert train.shape == test.shape == (256, 1 + n, 2)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert rel_err(train[:16], ref["data_seed42_train16"]) <= 1e-6
    assert rel_err(test[:16], ref["data_seed42_test16"]) <= 1e-6
    assert_leaves_global_rng_alone(prob.sample_data)


def test_draw_order_reproduces_fixture_inputs(case):
    """The fixtures' state0 and control came from one seed-0 stream: train, test, normal."""
    n, _, ref = case
    rng = np.random.RandomState(0)
    train = cartpole._draw(rng, True, 64, n)
    cartpole._draw(rng, True, 64, n)  # the test set, drawn and discarded
    np.testing.assert_array_equal(train, ref["state0"])
    np.testing.assert_array_equal(rng.normal(size=(64,)).astype(np.float32), ref["control"])


# ---------------------------------------------------------------- data, controller, defaults
def test_int_seed_data():
    p = cartpole.make(poles=2)
    tr, te = p.sample_data(3, 10, 6)
    assert tr.shape == (10, 3, 2) and te.shape == (6, 3, 2) and tr.dtype == np.float32
    np.testing.assert_array_equal(tr, p.sample_data(3, 10, 6)[0])
    assert not np.array_equal(tr, p.sample_data(4, 10, 6)[0])
    big, _ = p.sample_data(np.int64(0), 4000, 0)
    # x, ẋ, θ̇ in [-1, 1); θ in π ± π/6, hanging
    for rows, cols in ((0, 0), (0, 1), (slice(1, None), 1)):
        v = big[:, rows, cols]
        assert v.min() >= -1.0 and v.max() < 1.0 and v.min() < -0.95 and v.max() > 0.95
    th = big[:, 1:, 0]
    assert th.min() >= np.pi - np.pi / 6 - 1e-6 and th.max() <= np.pi + np.pi / 6 + 1e-6
    assert abs(th.mean() - np.pi) < 0.02
    for bad in ("other", 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            p.sample_data(bad, 2, 2)


def test_zero_force_test_loss():
    """Untrained (F = 0) test loss on the paper's data: ≈ 1.97 (final state, 100 steps)."""
    prob = cartpole.make()
    _, test = prob.sample_data("paper", 256, 256)
    f = prob.zero_control(256)
    assert f.shape == (256,)

    def body(s, _):
        return prob.step(s, f), None

    xT, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=prob.horizon))(test)
    assert prob.horizon == 100
    loss = float(prob.loss.state_loss(xT))
    assert abs(loss - 1.9716) <= 0.01


def test_controller():
    prob = cartpole.make(poles=2)
    assert prob.zero_last_default is True
    x = jnp.asarray(prob.sample_data(0, 5, 0)[0])
    ctrl = prob.make_controller(jax.random.PRNGKey(0))
    out = ctrl(x)
    assert out.shape == (5,) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # the authors' zero last kernel
    assert ctrl.layers[0].kernel.shape == (6, 100) and ctrl.layers[-1].kernel.shape == (100, 1)
    out2 = prob.make_controller(jax.random.PRNGKey(0), zero_last=False)(x)
    assert out2.shape == (5,) and float(jnp.max(jnp.abs(out2))) > 0.0
    assert jax.jit(prob.step)(x, out2).shape == x.shape


def test_problem_metadata():
    prob = problems.get("cartpole")
    assert prob.name == "cartpole" and prob.horizon == 100
    assert prob.state_shape == (2, 2) and prob.control_shape == ()
    assert dict(prob.params) == {"poles": 1, "dt": 0.01, "steps": 100, "scale_mass": False}
    assert dict(prob.defaults) == dict(epochs=1000, lr=1e-3, batch_size=8, n_train=256, n_test=256)
    spec = problems.param_spec("cartpole")
    assert {k: v[0] for k, v in spec.items()} == {"poles": 1, "dt": 0.01, "steps": 100, "scale_mass": False}


# ---------------------------------------------------------------- other sizes and physics
def test_three_poles_via_registry():
    prob = problems.get("cartpole", poles=3)
    assert prob.state_shape == (4, 2) and prob.params["poles"] == 3
    train, test = prob.sample_data("paper", 8, 8)
    assert train.shape == (8, 4, 2)
    f = jnp.linspace(-2.0, 2.0, 8, dtype=jnp.float32)
    xs = jax.jit(lambda s: _rollout(prob.step, s, f, 100))(train)
    assert xs.shape == (8, 101, 4, 2) and bool(jnp.all(jnp.isfinite(xs)))
    assert 0.0 <= float(prob.loss.state_loss(xs[:, -1])) <= 2.0


def test_identical_poles_and_fixed_cart_mass():
    """Every pole sees the one-pole equations; the cart's reaction grows n-fold because the
    authors' M = 1.1 is not increased with the number of poles (documented quirk)."""
    one = cartpole.make(poles=1)
    x1 = jnp.asarray(one.sample_data(5, 16, 0)[0])
    f = jnp.asarray(np.random.default_rng(1).normal(size=16).astype(np.float32))
    y1 = np.asarray(jax.jit(one.step)(x1, f))
    dt, M = 0.01, cartpole.M_TOTAL
    acc1 = (y1[:, 0, 1] - np.asarray(x1[:, 0, 1])) / dt
    for n in (2, 3):
        xn = jnp.concatenate([x1[:, :1]] + [x1[:, 1:]] * n, 1)
        yn = np.asarray(jax.jit(cartpole.make(poles=n).step)(xn, f))
        for i in range(1, n + 1):
            np.testing.assert_allclose(yn[:, i], y1[:, 1], rtol=0, atol=1e-6)
        accn = (yn[:, 0, 1] - np.asarray(xn[:, 0, 1])) / dt
        f_over_m = np.asarray(f) / M
        np.testing.assert_allclose(accn - f_over_m, n * (acc1 - f_over_m), rtol=1e-3, atol=2e-3)


def test_semi_implicit_order():
    """θ is advanced with the NEW θ̇ and x with the NEW ẋ."""
    prob = cartpole.make(dt=0.05)
    x0 = jnp.asarray([[[0.0, 0.0], [np.pi / 2, 0.0]]], jnp.float32)  # pole horizontal, at rest
    x1 = np.asarray(jax.jit(prob.step)(x0, jnp.zeros((1,), jnp.float32)))
    assert x1[0, 1, 1] > 0  # gravity accelerates the pole
    np.testing.assert_allclose(x1[0, 1, 0], np.pi / 2 + 0.05 * x1[0, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(x1[0, 0, 0], 0.05 * x1[0, 0, 1], rtol=1e-6)
    # an upright pole at rest under no force stays put
    up = jnp.zeros((1, 2, 2), jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(prob.step)(up, jnp.zeros((1,)))), 0.0)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(poles=0), r"poles=0"),
        (dict(poles=-2), r"poles=-2"),
        (dict(poles=2.5), r"poles=2\.5"),
        (dict(poles=True), r"poles=True"),
        (dict(poles="2"), r"poles='2'"),
        (dict(dt=0.0), r"dt=0\.0"),
        (dict(dt=-0.01), r"dt=-0\.01"),
        (dict(dt=float("nan")), r"dt=nan"),
        (dict(steps=0), r"steps=0"),
        (dict(steps=10.0), r"steps=10\.0"),
    ],
)
def test_invalid_params(kw, match):
    with pytest.raises(ValueError, match=match):
        cartpole.make(**kw)
    with pytest.raises(ValueError, match=match):
        problems.get("cartpole", **kw)


def test_invalid_params_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"poles=0; must be an integer ≥ 1"):
        cartpole.make(poles=0)
    with pytest.raises(ValueError, match=r"dt=-1.*> 0"):
        cartpole.make(dt=-1)
    with pytest.raises(ValueError, match=r"steps=0; must be an integer ≥ 1"):
        cartpole.make(steps=0)
    with pytest.raises(ValueError, match=r"zero_last"):
        problems.get("cartpole", zero_last=True)  # a controller option, not a problem param


def test_step_rejects_bad_shapes():
    prob = cartpole.make(poles=2)
    x = jnp.zeros((4, 3, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"force shape \(4, 1\)"):
        prob.step(x, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"state shape \(4, 2, 2\)"):
        prob.step(jnp.zeros((4, 2, 2)), jnp.zeros((4,)))


def test_scale_mass_option_switches_the_quirk_off():
    import jax.numpy as jnp

    from stablebptt import problems as _p

    x = jnp.asarray(_p.get("cartpole", poles=3).sample_data(0, 4, 1)[0])
    f = jnp.ones((4,))
    quirk = _p.get("cartpole", poles=3).step(x, f)
    fixed = _p.get("cartpole", poles=3, scale_mass=True).step(x, f)
    assert not jnp.allclose(quirk, fixed)
    one_q = _p.get("cartpole", poles=1).step(x[:, :2], f)
    one_f = _p.get("cartpole", poles=1, scale_mass=True).step(x[:, :2], f)
    assert jnp.array_equal(one_q, one_f)  # with one pole M = 1.1 either way
