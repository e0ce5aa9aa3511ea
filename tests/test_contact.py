"""Contact physics through MuJoCo MJX and the Brax adapter, and the ``hopper`` problem.

References: MuJoCo's own C solver (``mujoco.mj_step``, float64) and MJX's own ``mjx.step`` for the
same state, action and solver settings; central finite differences of the same float32 rollout.
MJX compiles slowly on a CPU (minutes): the tests that compile a step are marked ``slow``; the
others only trace (``jax.eval_shape``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EPS32

pytest.importorskip("brax", reason="the MJX tests need the [brax] extra")
mujoco = pytest.importorskip("mujoco")

from brax import envs  # noqa: E402
from brax.io import mjcf  # noqa: E402
from etils import epath  # noqa: E402
from mujoco import mjx  # noqa: E402

from stablebptt import problems  # noqa: E402
from stablebptt.problems.adapters import brax_problem  # noqa: E402
from stablebptt.problems.adapters.brax import MJX_LS_ITERATIONS  # noqa: E402
from stablebptt.training.config import RunConfig  # noqa: E402
from stablebptt.training.runner import train  # noqa: E402

HOPPER_XML = epath.resource_path("brax") / "envs/assets/hopper.xml"
#: physics steps per simulator step of Brax's hopper
N_FRAMES = 4
#: compile options for the programs these tests build themselves (CPU: about half the compile time)
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
#: seconds allowed to a slow test: one MJX program took 5–10 minutes to compile on a loaded 2-core CPU
SLOW_TIMEOUT = 3600

#: a box on two slide joints (x, z) resting on a floor, a motor pushing it along x: the smallest
#: model with a frictional contact
BOX_XML = """
<mujoco model="box">
  <option timestep="0.01"/>
  <worldbody>
    <geom name="floor" type="plane" size="5 5 0.1"/>
    <body name="box" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="z" type="slide" axis="0 0 1"/>
      <geom name="box" type="box" size="0.1 0.1 0.1" mass="1" friction="0.5"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="x" gear="10" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


def _speed(ps):
    return -ps.qd[0]


# ----------------------------------------------------------------------------- settings and refusals
def test_mjx_pipeline_gets_differentiable_solver_settings():
    """Brax's hopper asks MJX for 4 solver iterations; the adapter runs a copy with 1 and a
    line search of 4, and leaves the user's environment alone."""
    env = envs.get_environment("hopper", backend="mjx")
    assert env.sys.opt.iterations == 4  # what the model file asks for
    p = brax_problem(env, horizon=3, state_loss=_speed)
    assert p.params["iterations"] == 1 and p.params["ls_iterations"] == MJX_LS_ITERATIONS == 4
    assert env.sys.opt.iterations == 4  # the user's object is not changed
    assert "1 solver iteration" in p.description
    assert brax_problem(env, horizon=3, state_loss=_speed, ls_iterations=9).params["ls_iterations"] == 9
    generalized = brax_problem("hopper", horizon=3, state_loss=_speed, backend="generalized")
    assert "iterations" not in generalized.params  # other pipelines keep their own solvers


@pytest.mark.slow
def test_mjx_while_loop_has_no_gradient_and_the_adapter_refuses_it_in_one_line():
    """With the model's own 4 iterations, jax.grad through mjx.step fails (a while_loop); asking
    the adapter for that is one line naming the setting and what is allowed."""
    mj = mjcf.load_mjmodel(HOPPER_XML)
    m = mjx.put_model(mj)
    assert m.opt.iterations == 4

    def height_after_step(a):
        d = mjx.forward(m, mjx.make_data(m))
        return mjx.step(m, d.replace(ctrl=a)).qpos[1]

    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.eval_shape(jax.grad(height_after_step), jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(ValueError) as err:
        brax_problem(mj, horizon=3, state_loss=_speed, iterations=4)
    assert str(err.value) == (
        "brax_problem: iterations=4: MJX runs more than one constraint-solver iteration in a "
        "lax.while_loop, which reverse-mode autodiff cannot differentiate; allowed: "
        "iterations=1 (the default)"
    )
    with pytest.raises(ValueError, match=r"ls_iterations=0; must be an integer ≥ 1"):
        brax_problem(mj, horizon=3, state_loss=_speed, ls_iterations=0)
    with pytest.raises(ValueError, match=r"impl='cpp'.*allowed: impl='jax'"):
        brax_problem(mjx.put_model(mj, impl="cpp"), horizon=3, state_loss=_speed)
    with pytest.raises(
        ValueError,
        match=r"ls_iterations=3 set MJX's constraint solver; the environment uses the "
        r"'generalized' pipeline",
    ):
        brax_problem("hopper", horizon=3, state_loss=_speed, backend="generalized", ls_iterations=3)
    with pytest.raises(ValueError, match=r"n_frames=2 applies to a MuJoCo model given directly"):
        brax_problem("hopper", horizon=3, state_loss=_speed, backend="mjx", n_frames=2)
    with pytest.raises(ValueError, match=r"n_frames=0; must be an integer ≥ 1"):
        brax_problem(mj, horizon=3, state_loss=_speed, n_frames=0)


@pytest.mark.slow
def test_raw_mujoco_model_is_a_problem():
    """A mujoco.MjModel (and its mjx.Model) steps through Brax's MJX pipeline: sizes from the
    model, q_0 around qpos0, dt = n_frames · timestep, and the problem passes the library's
    checks (traced, not compiled)."""
    mj = mujoco.MjModel.from_xml_string(BOX_XML)
    for model in (mj, mjx.put_model(mj)):
        p = brax_problem(model, horizon=3, state_loss=_speed, n_frames=2, q_noise=0.0, qd_noise=0.0)
        assert p.state_shape == (4,) and p.control_shape == (1,) and p.name == "mjx-model"
        assert p.params["dt"] == pytest.approx(0.02) and p.params["iterations"] == 1
        train_x, _ = p.sample_data(0, 2, 1)
        np.testing.assert_array_equal(train_x, np.tile(np.r_[mj.qpos0, 0.0, 0.0], (2, 1)).astype(np.float32))
        problems.check_problem(p, n_train=2, n_test=1, batch_size=2)


# ----------------------------------------------------------------------------- the hopper problem
@pytest.mark.slow
def test_hopper_problem_builds_and_validates():
    p = problems.get("hopper", steps=5)
    assert p.name == "hopper" and p.horizon == 5 and p.state_shape == (12,) and p.control_shape == (3,)
    assert p.params["iterations"] == 1 and p.params["ls_iterations"] == 4 and p.params["backend"] == "mjx"
    assert p.params["dt"] == pytest.approx(0.008)
    tr, te = p.sample_data("paper", 4, 2)
    assert tr.shape == (4, 12) and te.shape == (2, 12) and tr.dtype == np.float32
    assert np.abs(tr[:, 1]).max() <= 0.05 and np.abs(tr[:, 6:]).max() <= 0.05  # noise = 0.05 around the pose
    model = problems.check_problem(p, n_train=4, n_test=2, batch_size=2)
    assert problems.weight_shapes(model)["w0_kernel"] == (11, 32)  # the observation (q_1 … q_5, q̇)
    # the loss of one state: −ẋ + w_up (θ² + Δz²), batch-meaned
    x = np.zeros((2, 12), np.float32)
    x[:, 6], x[:, 2], x[:, 1] = [1.0, 2.0], 0.1, -0.2
    want = np.mean(-x[:, 6] + (0.1**2 + 0.2**2))
    np.testing.assert_allclose(float(jax.jit(p.loss.state_loss)(jnp.asarray(x))), want, rtol=4 * EPS32)
    for bad, msg in (
        (dict(upright=-1.0), r"upright=-1.0; must be a finite number ≥ 0"),
        (dict(ls_iterations=0), r"ls_iterations=0; must be an integer ≥ 1"),
        (dict(steps=0), r"horizon=0; must be an integer ≥ 1"),
    ):
        with pytest.raises(ValueError, match=msg):
            problems.get("hopper", **bad)


# ----------------------------------------------------------------------------- the step (slow: MJX compiles)
#: height of the foot capsule's lowest point above the floor in Brax's standing pose [m]
#: (``init_q`` holds the hopper 4 cm up: its foot geom is centred 0.1 m above the foot body's
#: origin, with radius 0.06)
FOOT_CLEARANCE = 0.04


def _pressed_states(p, n):
    """n hopper states around the standing pose, lowered so that the foot is pressed 5, 10, …
    mm into the floor (the foot–floor contact active)."""
    x = p.sample_data(0, n, 0)[0].astype(np.float32)
    x[:, 1] = -FOOT_CLEARANCE - 0.005 * (1 + np.arange(n))
    return x


def _mujoco_step(mj, row, action):
    """MuJoCo's C engine (float64): q, q̇ after N_FRAMES mj_step from (q, q̇) with the action held."""
    d = mujoco.MjData(mj)
    d.qpos[:], d.qvel[:], d.ctrl[:] = row[:6], row[6:], action
    mujoco.mj_forward(mj, d)
    contacts = []
    for _ in range(N_FRAMES):
        mujoco.mj_step(mj, d)
        contacts.append(d.ncon)
    return np.concatenate([d.qpos, d.qvel]), min(contacts)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_hopper_step_equals_mjx_step_and_mujoco():
    """The problem's step equals MJX's own mjx.step for the same state, action and solver
    settings (same float32 arithmetic: a few ulp of the state's scale), and MuJoCo's C solver
    in float64 with those settings to float32 rounding amplified by 4 contact solves; the
    converged C solver (100 iterations) is printed for the error of one solver iteration."""
    p = problems.get("hopper")
    x = _pressed_states(p, 3)
    c = np.array([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.2], [0.1, 0.1, -0.6]], np.float32)
    mj = mjcf.load_mjmodel(HOPPER_XML)
    mj.opt.iterations, mj.opt.ls_iterations = 1, 4
    m = mjx.put_model(mj)

    def mjx_steps(q, qd, a):
        d = mjx.forward(m, mjx.make_data(m).replace(qpos=q, qvel=qd)).replace(ctrl=a)
        for _ in range(N_FRAMES):
            d = mjx.step(m, d)
        return jnp.concatenate([d.qpos, d.qvel])

    def both(x, c):
        return p.step(x, c), jax.vmap(mjx_steps)(x[:, :6], x[:, 6:], c)

    got, own = map(np.asarray, jax.jit(both, compiler_options=FAST_COMPILE)(jnp.asarray(x), jnp.asarray(c)))
    scale = np.abs(own).max()
    assert np.abs(own - x).max() > 1e-2 * scale  # the step moves the state
    np.testing.assert_allclose(got, own, rtol=0, atol=16 * EPS32 * scale)

    c_ref, contacts = zip(*(_mujoco_step(mj, x[b].astype(np.float64), c[b].astype(np.float64)) for b in range(3)))
    assert min(contacts) >= 1  # the foot touches the floor in every physics step of every row
    np.testing.assert_allclose(got, np.stack(c_ref), rtol=0, atol=100 * EPS32 * scale)  # measured: 12 eps
    mj.opt.iterations, mj.opt.ls_iterations = 100, 50
    converged = np.stack([_mujoco_step(mj, x[b].astype(np.float64), c[b].astype(np.float64))[0] for b in range(3)])
    c_ref = np.stack(c_ref)
    print(
        f"hopper step: |adapter − mjx.step| {np.abs(got - own).max():.2e}, |adapter − MuJoCo C (1 iteration)| "
        f"{np.abs(got - c_ref).max():.2e}, |adapter − MuJoCo C converged| {np.abs(got - converged).max():.2e}, "
        f"state scale {scale:.2f}"
    )


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_hopper_gradient_matches_central_differences():
    """d/da of (ẋ + Δz) after T = 2 steps with the action a held, by jax.grad through MJX's
    contact solve, against central differences of the same float32 rollout. The foot starts
    10 mm in the floor so the contact stays active in every physics step (checked with MuJoCo)
    under every perturbation: the solve is smooth there; across a contact change it is not."""
    p = problems.get("hopper")
    x0 = jnp.asarray(_pressed_states(p, 2)[1:])
    a0 = jnp.asarray([0.3, -0.2, 0.1], jnp.float32)
    h = 3e-3

    def f(a):
        xT = jax.lax.fori_loop(0, 2, lambda _, x: p.step(x, a[None]), x0)
        return xT[0, 6] + xT[0, 1]

    def grad_and_differences(a):
        e = jnp.eye(3, dtype=jnp.float32) * h
        return jax.grad(f)(a), jax.vmap(f)(a + e), jax.vmap(f)(a - e), f(a)

    mj = mjcf.load_mjmodel(HOPPER_XML)
    mj.opt.iterations, mj.opt.ls_iterations = 1, 4
    for a in np.asarray(a0) + np.concatenate([np.zeros((1, 3)), h * np.eye(3), -h * np.eye(3)]):
        x, contacts = _mujoco_step(mj, np.asarray(x0[0], np.float64), a)
        assert contacts >= 1 and _mujoco_step(mj, x, a)[1] >= 1
    g, up, down, f0 = map(np.asarray, jax.jit(grad_and_differences, compiler_options=FAST_COMPILE)(a0))
    fd = (up.astype(np.float64) - down) / (2 * h)
    # central differences: round-off ~ eps·|f|/h, truncation O(h²); the gradient's scale decides
    # measured: |grad − differences| 2.1e-5 for a gradient of scale 0.22
    tol = max(10 * EPS32 * max(abs(float(f0)), 1.0) / h, 2e-3 * np.abs(g).max())
    print(f"hopper gradient {g}, central differences {fd}, tolerance {tol:.2e}")
    assert np.abs(g).max() > 0
    np.testing.assert_allclose(g, fd, rtol=0, atol=tol)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_hopper_trains_one_epoch_at_a_tiny_size():
    p = problems.get("hopper", steps=2)
    cfg = RunConfig(
        problem="hopper",
        problem_params=dict(steps=2),
        mode="C",
        epochs=1,
        n_train=4,
        n_test=2,
        batch_size=2,
        data="seeded",
        backward="autodiff",
    )  # nothing to measure: MJX compiles for minutes
    (r,) = train(p, cfg, 0)
    assert not r.diverged and r.epochs_done == 1
    assert np.isfinite(r.history["test_loss"][-1]) and r.history["update_norm"][-1] > 0
