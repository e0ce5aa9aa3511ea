"""The adapters (stablebptt.problems.adapters): a diffrax ODE against hand-written Euler / RK4
steps and gradients, and a Brax environment against a plain jax.grad loop, the modes and a few
training updates. Brax programs take tens of seconds to compile on a CPU, so the Brax tests use
a one-hinge pendulum, a short horizon and one compiled program for all fields."""

from __future__ import annotations

import contextlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stablebptt
from stablebptt import problems
from stablebptt.training.config import RunConfig
from stablebptt.training.runner import train

EPS32 = float(np.finfo(np.float32).eps)


@contextlib.contextmanager
def registered(problem):
    """``problem`` registered under its name (what a RunConfig must name to train it)."""
    problems.register(problem.name, lambda: problem, params={})
    try:
        yield problem.name
    finally:
        problems.unregister(problem.name)


# ----------------------------------------------------------------------------- diffrax
def _pendulum(t, y, c):
    """A damped pendulum driven by a torque: y = (θ, θ̇), c (1,)."""
    return jnp.stack([y[1], -jnp.sin(y[0]) - 0.1 * y[1] + c[0]])


def _pendulum_np(y, c):
    return np.stack([y[:, 1], -np.sin(y[:, 0]) - 0.1 * y[:, 1] + c[:, 0]], axis=1)


def _draw(rng, n):
    return rng.uniform(-1.5, 1.5, (n, 2))


def _ode(solver, substeps=1, horizon=6, dt=0.1, on="every"):
    diffrax = pytest.importorskip("diffrax", reason="the diffrax adapter needs the [diffrax] extra")
    from stablebptt.problems.adapters import ode_problem

    return ode_problem(
        _pendulum,
        dt=dt,
        horizon=horizon,
        state_shape=(2,),
        control_shape=(1,),
        state_loss=lambda y: y[0] ** 2 + 0.1 * y[1] ** 2,
        sample_states=_draw,
        solver=solver(diffrax),
        substeps=substeps,
        on=on,
        widths=(16, 16),
    )


def _rk4_np(y, c, h, n):
    """n classic RK4 steps of size h (float64 NumPy), the control held."""
    for _ in range(n):
        k1 = _pendulum_np(y, c)
        k2 = _pendulum_np(y + 0.5 * h * k1, c)
        k3 = _pendulum_np(y + 0.5 * h * k2, c)
        k4 = _pendulum_np(y + h * k3, c)
        y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def test_ode_euler_step_equals_hand_euler():
    p = _ode(lambda d: d.Euler(), substeps=3)
    x, _ = p.sample_data(0, 8, 0)
    c = np.linspace(-1, 1, 8, dtype=np.float32)[:, None]
    got = np.asarray(jax.jit(p.step)(x, c))
    h, y = np.float32(0.1 / 3), x.copy()
    for _ in range(3):  # the same float32 arithmetic by hand
        y = y + h * _pendulum_np(y, c).astype(np.float32)
    # round-off only: diffrax's step is t_{k+1} − t_k of a float32 grid, not exactly h
    np.testing.assert_allclose(got, y, rtol=0, atol=8 * EPS32 * max(1.0, np.abs(y).max()))
    assert got.shape == (8, 2) and got.dtype == np.float32


def test_ode_tsit5_and_rk4_agree_with_a_fine_reference():
    """Tsit5 (5th order) and a hand RK4 in float32 at h = 0.05 s on a 10-step trajectory (1 s),
    against RK4 with h/40 in float64. RK4's truncation error at h is ~6e-8 here and both land
    within ~1.5e-7 (float32 rounding of states of size ~1.7); the tolerance 2e-6 × scale leaves
    room for round-off over 20 solver steps. Euler with one step per dt misses by ~0.08."""
    p = _ode(lambda d: d.Tsit5(), substeps=2, dt=0.1)
    x, _ = p.sample_data(1, 6, 0)
    c = np.full((6, 1), 0.3, np.float32)
    step = jax.jit(p.step)
    y32, y64 = x, x.astype(np.float64)
    rk4_32, ref = x.copy(), x.astype(np.float64)
    for _ in range(10):
        y32 = np.asarray(step(y32, c))
        rk4_32 = _rk4_np(rk4_32, c, np.float32(0.05), 2).astype(np.float32)
        ref = _rk4_np(ref, c.astype(np.float64), 0.05 / 40, 80)
        y64 = y64 + 0.1 * _pendulum_np(y64, c)  # Euler, one step per dt: must be far off
    tol = 2e-6 * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(y32, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(rk4_32, ref, rtol=0, atol=tol)
    assert np.abs(y64 - ref).max() > 100 * tol


def _hand_euler_loss(params, static, x0, *, substeps, dt, horizon, stop_input=False):
    """The unrolled loss of the Euler problem, written out: mean over x_1 … x_T of the batch
    mean of θ² + 0.1 θ̇²; ``stop_input`` stops the gradient at the controller's input (M)."""
    model = eqx.combine(params, static)
    h = dt / substeps

    def one_step(x, _):
        c = model(jax.lax.stop_gradient(x) if stop_input else x)
        for _ in range(substeps):
            x = x + h * jnp.stack([x[:, 1], -jnp.sin(x[:, 0]) - 0.1 * x[:, 1] + c[:, 0]], axis=1)
        return x, jnp.mean(x[:, 0] ** 2 + 0.1 * x[:, 1] ** 2)

    _, terms = jax.lax.scan(one_step, x0, None, length=horizon)
    return jnp.mean(terms)


@pytest.mark.slow
def test_ode_fields_equal_grad_of_hand_loop():
    """R = jax.grad of the written-out Euler loop, M = the same with the controller's input
    stopped, C = M where the signs agree; the engine's default (reverse sweep) strategy."""
    p = _ode(lambda d: d.Euler(), substeps=2, horizon=8, dt=0.1)
    x0 = jnp.asarray(p.sample_data(2, 4, 0)[0])
    model = p.make_controller(jax.random.PRNGKey(3), zero_last=False)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(substeps=2, dt=0.1, horizon=8)
    hand = jax.jit(jax.grad(_hand_euler_loss), static_argnums=1, static_argnames=tuple(kw) + ("stop_input",))
    g_hand = hand(params, static, x0, **kw)
    m_hand = hand(params, static, x0, stop_input=True, **kw)
    run = jax.jit(
        lambda mdl, x, flow: [
            stablebptt.value_and_update(mdl, x, step=p.step, loss=p.loss, horizon=p.horizon, flow=f)[:2] for f in flow
        ],
        static_argnums=2,
    )
    (lr, g), (lm, m), (lc, c) = run(model, x0, ("R", "M", "C"))
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
    g, m, c, g_hand, m_hand = map(flat, (g, m, c, g_hand, m_hand))
    loss_hand = float(_hand_euler_loss(params, static, x0, **kw))
    for v in (lr, lm, lc):
        np.testing.assert_allclose(float(v), loss_hand, rtol=1e-5)
    for got, want in ((g, g_hand), (m, m_hand)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(g_hand - m_hand).max() > 1e-2 * np.abs(g_hand).max()  # the modes differ here
    want_c = np.where(np.sign(m_hand) == np.sign(g_hand), m_hand, 0.0)
    np.testing.assert_allclose(c, want_c, rtol=0, atol=1e-4 * np.abs(m_hand).max())


@pytest.mark.slow
def test_the_trainer_applies_c_to_an_adapter_problem():
    """One epoch of the trainer in mode C (SGD, one minibatch = the whole set) moves the
    parameters by −lr · C, C = M where sign(M) = sign(R) else 0, with R and M of the written-out
    Euler loop; the epoch's metrics are finite."""
    p = _ode(lambda d: d.Euler(), substeps=2, horizon=8, dt=0.1)
    x0, test = p.sample_data(4, 4, 2)
    model = p.make_controller(jax.random.PRNGKey(1), zero_last=False)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kw = dict(substeps=2, dt=0.1, horizon=8)
    r = jax.grad(_hand_euler_loss)(params, static, jnp.asarray(x0), **kw)
    m = jax.grad(_hand_euler_loss)(params, static, jnp.asarray(x0), stop_input=True, **kw)
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
    r, m = flat(r), flat(m)
    lr = 0.5
    with registered(p) as name:
        cfg = RunConfig(
            problem=name, mode="C", optimizer="sgd", lr=lr, epochs=1, n_train=4, n_test=2, batch_size=4, zero_last=False
        )
        (res,) = train(p, cfg, seeds=[1], data=(x0, test))
    assert not res.diverged
    for k in ("loss", "train_loss", "test_loss", "update_norm", "cos_mg", "sign_agree"):
        assert np.isfinite(res.history[k][0]), k
    step = (flat(params) - flat(eqx.filter(res.model, eqx.is_inexact_array))) / lr
    want_c = np.where(np.sign(m) == np.sign(r), m, 0.0)
    np.testing.assert_allclose(step, want_c, rtol=0, atol=1e-4 * np.abs(m).max())


@pytest.mark.slow
def test_ode_trains_and_refuses_bad_input():
    diffrax = pytest.importorskip("diffrax", reason="the diffrax adapter needs the [diffrax] extra")
    from stablebptt.problems.adapters import ode_problem

    p = _ode(lambda d: d.Tsit5(), horizon=5)
    with registered(p) as name:
        cfg = RunConfig(problem=name, mode="C", epochs=2, n_train=8, n_test=8, batch_size=4, lr=1e-2, data="seeded")
        (res,) = train(p, cfg, seeds=[0])
    assert not res.diverged and len(res.history["test_loss"]) == 2
    assert all(np.isfinite(res.history["loss"])) and res.history["test_loss"][-1] < res.initial["test_loss"]
    ok = dict(dt=0.1, horizon=3, state_shape=(2,), control_shape=(1,), state_loss=lambda y: y[0], sample_states=_draw)
    for bad, msg in (
        (dict(dt=0.0), "dt=0.0"),
        (dict(horizon=0), "horizon=0"),
        (dict(solver="rk4"), "solver='rk4'"),
        (dict(state_shape=(2, 0)), "state_shape"),
        (dict(on="all"), "on='all'"),
        (dict(substeps=1.5), "substeps=1.5"),
    ):
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            ode_problem(_pendulum, **(ok | bad))
    wrong = ode_problem(_pendulum, **(ok | dict(state_loss=lambda y: y)))
    with pytest.raises(ValueError, match="state_loss returned shape"):
        wrong.loss.state_loss(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="sample_states returned shape"):
        ode_problem(_pendulum, **(ok | dict(sample_states=lambda rng, n: np.zeros((n, 3))))).sample_data(0, 2, 2)
    assert isinstance(diffrax.Euler(), diffrax.AbstractSolver)


# ----------------------------------------------------------------------------- brax
PENDULUM_XML = """
<mujoco model="pendulum">
  <option timestep="0.02"/>
  <worldbody>
    <body name="pole" pos="0 0 0">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="0.05"/>
      <geom name="pole" type="capsule" fromto="0 0 0 0 0 0.6" size="0.05" mass="1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="hinge" gear="1" ctrlrange="-2 2" ctrllimited="true"/>
  </actuator>
</mujoco>
"""
#: compile options for the programs these tests build themselves (CPU: about half the compile time)
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@pytest.fixture(scope="module")
def brax_pendulum():
    pytest.importorskip("brax", reason="the Brax adapter needs the [brax] extra")
    from brax.envs.base import PipelineEnv
    from brax.io import mjcf

    class Pendulum(PipelineEnv):
        """One hinged pole (upright at q = 0), a torque motor; only the pipeline is used."""

        def __init__(self):
            super().__init__(sys=mjcf.loads(PENDULUM_XML), backend="generalized", n_frames=2)

        def reset(self, rng):
            raise NotImplementedError

        def step(self, state, action):
            raise NotImplementedError

    return Pendulum()


def _height(ps):
    """Height of the pole's tip [m] (0.6 upright)."""
    return 0.6 * jnp.cos(ps.q[0])


def _brax_problem(env, **kw):
    from stablebptt.problems.adapters import brax_problem

    return brax_problem(
        env,
        horizon=5,
        reward=_height,
        control_weight=0.01,
        widths=(16,),
        sample_states=lambda rng, n: np.stack([rng.uniform(-0.5, 0.5, n), rng.uniform(-1, 1, n)], 1),
        **kw,
    )


@pytest.mark.slow
def test_brax_problem_shapes_data_and_errors(brax_pendulum):
    from stablebptt.problems.adapters import brax_problem

    p = _brax_problem(brax_pendulum)
    assert p.state_shape == (2,) and p.control_shape == (1,) and p.horizon == 5
    tr, te = p.sample_data(0, 6, 3)
    assert tr.shape == (6, 2) and te.shape == (3, 2) and tr.dtype == np.float32
    np.testing.assert_array_equal(tr, p.sample_data(0, 6, 3)[0])
    assert np.array_equal(p.sample_data("paper", 2, 0)[0], p.sample_data(42, 2, 0)[0])
    x1 = jax.eval_shape(p.step, jax.ShapeDtypeStruct((3, 2), jnp.float32), jax.ShapeDtypeStruct((3, 1), jnp.float32))
    assert x1.shape == (3, 2) and x1.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"control shape \(3,\)"):
        jax.eval_shape(p.step, jax.ShapeDtypeStruct((3, 2), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(ValueError, match="exactly one of state_loss= or reward="):
        brax_problem(brax_pendulum, horizon=5)
    with pytest.raises(ValueError, match="on='sum'"):
        brax_problem(brax_pendulum, horizon=5, reward=_height, on="sum")
    with pytest.raises(ValueError, match="not a Brax PipelineEnv"):
        brax_problem(object(), horizon=5, reward=_height)
    with pytest.raises(ValueError, match="'no-such-env' is not a registered Brax environment"):
        brax_problem("no-such-env", horizon=5, reward=_height)
    with pytest.raises(ValueError, match="reward returned shape"):
        jax.eval_shape(
            brax_problem(brax_pendulum, horizon=5, reward=lambda ps: ps.q).loss.state_loss,
            jax.ShapeDtypeStruct((3, 2), jnp.float32),
        )
    obs = brax_problem(
        brax_pendulum,
        horizon=5,
        reward=_height,
        observe=lambda ps: jnp.concatenate([jnp.sin(ps.q), jnp.cos(ps.q), ps.qd]),
    )
    model = obs.make_controller(jax.random.PRNGKey(0), zero_last=False)
    assert model.mlp.layers[0].kernel.shape == (3, 64)  # the observation's 3 entries in
    assert jax.eval_shape(model, jax.ShapeDtypeStruct((4, 2), jnp.float32)).shape == (4, 1)


def _plain_fields(env, problem, model, x0):
    """(loss, R, M) of the plain loop — pipeline_init/pipeline_step written out, the loss of
    :func:`_brax_problem` by hand — by jax.grad, with M's gradient stopped at the controller's
    input; and the engine's R (its default strategy), all in one compiled program."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def plain(params, x0, stop_input):
        mdl = eqx.combine(params, static)

        def body(x, _):
            c = mdl(jax.lax.stop_gradient(x) if stop_input else x)
            ps = jax.vmap(lambda q, qd, a: env.pipeline_step(env.pipeline_init(q, qd), a))(x[:, :1], x[:, 1:], c)
            x1 = jnp.concatenate([ps.q, ps.qd], axis=1)
            return x1, -jnp.mean(0.6 * jnp.cos(x1[:, 0])) + 0.01 * jnp.mean(c**2)

        _, terms = jax.lax.scan(body, x0, None, length=problem.horizon)
        return jnp.mean(terms)

    def fields(params, x0):
        loss, r = jax.value_and_grad(plain)(params, x0, False)
        m = jax.grad(plain)(params, x0, True)
        engine = stablebptt.value_and_update(
            eqx.combine(params, static),
            x0,
            step=problem.step,
            loss=problem.loss,
            horizon=problem.horizon,
            flow="R",
            validate=False,
        )[:2]
        return loss, r, m, engine

    return jax.jit(fields, compiler_options=FAST_COMPILE)(params, x0)


def _flat(t):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])


@pytest.mark.slow
def test_brax_fields_equal_grad_of_plain_loop(brax_pendulum):
    """The engine's R field equals jax.grad of the plain Brax loop, and R differs from M there (the
    trainer on an adapter's problem is tested on the ODE, where it compiles in seconds)."""
    p = _brax_problem(brax_pendulum)
    x0, test = p.sample_data(0, 3, 2)
    model = p.make_controller(jax.random.PRNGKey(1), zero_last=False)
    t = time.perf_counter()
    loss, r, m, (loss_engine, r_engine) = _plain_fields(brax_pendulum, p, model, jnp.asarray(x0))
    t_fields = time.perf_counter() - t
    r, m, r_engine = _flat(r), _flat(m), _flat(r_engine)
    scale = np.abs(r).max()
    assert scale > 0 and np.all(np.isfinite(r)) and np.all(np.isfinite(m))
    np.testing.assert_allclose(float(loss_engine), float(loss), rtol=1e-5)
    np.testing.assert_allclose(r_engine, r, rtol=0, atol=1e-4 * scale)
    assert np.abs(r - m).max() > 1e-2 * scale  # the modes differ here

    print(f"brax: R, M and the engine's R in {t_fields:.0f} s (compile and run)")
