"""The PhiFlow adapter (stablebptt.problems.adapters.phiflow): PhiFlow's import leaves JAX in
float32 (checked in subprocesses, so that the switch could not leak into other tests), the
adapted step equals PhiFlow's own step run in float64 on its NumPy backend, gradients match
central finite differences of that float64 run, the state layout round-trips, bad input is
refused, and the worked example trains."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EPS32, fixed_control_loss

pytest.importorskip("phi", reason="the PhiFlow adapter needs the [phiflow] extra")

REPO = Path(__file__).resolve().parents[1]
N = 32  # cells of the 1-D Burgers grid
NU, DT = 0.003, 0.03


def _run(code: str, env_extra: dict | None = None) -> str:
    """Run ``code`` in a fresh interpreter with this checkout's sources first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_ENABLE_X64", None)
    env.update(env_extra or {})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


X64_SCRIPT = """
    import jax, jax.numpy as jnp
    before = jax.config.jax_enable_x64
    from stablebptt.problems.adapters.phiflow import flow, phiflow_problem
    from phi.jax.flow import math            # the user's own import afterwards switches nothing
    after = jax.config.jax_enable_x64
    import stablebptt
    u0 = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=8, bounds=flow.Box(x=2))
    step = lambda u, f: flow.diffuse.explicit(u, 0.01, 0.05) + 0.05 * f
    p = phiflow_problem(step, state=u0, control=u0, horizon=3, state_loss=lambda u: math.l2_loss(u.values),
                        sample_states=lambda rng, n: rng.normal(size=(n, 8)), widths=(4,))
    math.set_global_precision(64)             # PhiFlow's own setting: the adapter still computes in float32
    x0 = jnp.asarray(p.sample_data(0, 2, 0)[0])
    model = p.make_controller(jax.random.PRNGKey(0), zero_last=False)
    carry = jax.eval_shape(lambda x: jax.lax.scan(lambda c, _: (c * 2.0 + 1.0, None), x, None, length=2)[0],
                           jnp.zeros(3))
    jaxpr = str(jax.make_jaxpr(lambda m, x: stablebptt.value_and_update(m, x, step=p.step, loss=p.loss,
                                                                      horizon=3, flow="C", backward="autodiff")[:2])(model, x0))
    print(before, after, jax.config.jax_enable_x64, carry.dtype, jnp.zeros(2).dtype,
          p.step(x0, x0).dtype, "f64" in jaxpr, "f32[" in jaxpr, math.get_precision())
"""


@pytest.mark.slow
def test_phiflow_import_keeps_jax_in_float32():
    """Before and after the adapter's import and a problem's use: jax_enable_x64 off, a scan's
    carry and jnp.zeros float32, no float64 in the engine's program even with PhiFlow's global
    precision set to 64 (left as the user set it)."""
    out = _run(X64_SCRIPT).split()
    assert out == ["False", "False", "False", "float32", "float32", "float32", "False", "True", "64"], out


def test_phiflow_import_restores_a_user_set_x64():
    """A process that runs in float64 on purpose keeps it (the previous value is restored, not forced off)."""
    out = _run("""
        import jax
        jax.config.update("jax_enable_x64", True)
        from stablebptt.problems.adapters.phiflow import import_phiflow
        import_phiflow()
        print(jax.config.jax_enable_x64)
    """)
    assert out.split() == ["True"]


@pytest.mark.slow
def test_phiflow_imported_elsewhere_first_is_reported():
    """PhiFlow's own import before the adapter's leaves x64 on: the adapter cannot know the
    previous value, keeps it, and warns in one line."""
    out = _run("""
        import warnings, jax
        import phi.jax.flow
        from stablebptt.problems.adapters.phiflow import import_phiflow
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import_phiflow()
        print(jax.config.jax_enable_x64, sum("jax_enable_x64 is on" in str(w.message) for w in caught))
    """)
    assert out.split() == ["True", "1"]


# ----------------------------------------------------------------------------- the problem
def _burgers(u, f):
    """1-D viscous Burgers, one PhiFlow step: explicit diffusion, semi-Lagrangian advection, force."""
    from stablebptt.problems.adapters.phiflow import flow

    u = flow.diffuse.explicit(u, NU, DT)
    return flow.advect.semi_lagrangian(u, u, DT) + DT * f


def _energy(u):
    from phiml import math

    return math.l2_loss(u.values)


@pytest.fixture(scope="module")
def burgers():
    from stablebptt.problems.adapters.phiflow import flow, phiflow_problem

    u0 = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=N, bounds=flow.Box(x=2))
    return phiflow_problem(
        _burgers,
        state=u0,
        control=u0,
        horizon=4,
        state_loss=_energy,
        sample_states=lambda rng, n: (
            np.sin(np.pi * np.linspace(0, 2, N, endpoint=False)) * rng.uniform(0.5, 1.5, (n, 1))
        ),
        widths=(8,),
    )


def _reference(x: np.ndarray, c: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
    """PhiFlow's own Burgers step on its NumPy backend in float64: (x_T (B, N), mean l2 loss of x_T)."""
    from phiml import math
    from phiml.backend import NUMPY

    from stablebptt.problems.adapters.phiflow import flow

    with NUMPY, math.precision(64):
        grid = lambda a: flow.CenteredGrid(
            math.tensor(a, math.batch("b"), math.spatial("x")), flow.extrapolation.PERIODIC, x=N, bounds=flow.Box(x=2)
        )
        u, f = grid(x), grid(c)
        for _ in range(steps):
            u = _burgers(u, f)
        return u.values.numpy(["b", "x"]), float(math.mean(_energy(u), "b"))


@pytest.mark.slow
def test_adapted_step_equals_phiflow_in_float64(burgers):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, N))
    c = rng.normal(size=(3, N))
    got = jax.jit(burgers.step)(x.astype(np.float32), c.astype(np.float32))
    ref, _ = _reference(x, c, 1)
    assert got.shape == (3, N) and got.dtype == jnp.float32
    # one step of float32 round-off on values of size ~2 (a handful of operations per cell)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=32 * EPS32 * np.abs(ref).max())
    assert np.abs(ref - x).max() > 0.01  # the step moves the state


def test_gradient_matches_float64_finite_differences(burgers):
    """d L / d c along a direction, L the 4-step fixed-control loss: JAX's gradient through the
    adapter (float32) against central differences of PhiFlow's float64 NumPy run (h = 1e-5)."""
    x0, _ = burgers.sample_data(1, 2, 0)
    rng = np.random.default_rng(2)
    c = 0.5 * rng.normal(size=(2, N))
    d = rng.normal(size=(2, N))
    T = burgers.horizon
    loss_of = lambda cc: fixed_control_loss(burgers, jnp.asarray(x0), cc, T)
    loss, g = jax.jit(jax.value_and_grad(loss_of))(jnp.asarray(c, jnp.float32))
    h = 1e-5
    fd = (_reference(x0, c + h * d, T)[1] - _reference(x0, c - h * d, T)[1]) / (2 * h)
    np.testing.assert_allclose(float(loss), _reference(x0, c, T)[1], rtol=1e-5)
    ad = float(jnp.sum(g * d))
    assert abs(fd) > 1e-2
    np.testing.assert_allclose(ad, fd, rtol=1e-3)


def test_layout_round_trips_a_staggered_grid_and_tensors():
    """A tuple of a 2-D staggered grid (faces: 7×8 + 8×7 with zero walls), a 1-D centred grid and a
    channel tensor packs into one vector and back, values in the template's dim order."""
    from phiml import math

    from stablebptt.problems.adapters.phiflow import FieldLayout, flow

    st = flow.StaggeredGrid(0, flow.extrapolation.ZERO, x=8, y=8, bounds=flow.Box(x=1, y=1))
    cg = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=5)
    layout = FieldLayout((st, cg, math.zeros(math.channel(a=3))))
    assert layout.size == 7 * 8 + 8 * 7 + 5 + 3
    v = jnp.arange(layout.size, dtype=jnp.float32)
    st2, cg2, t2 = layout.unpack(v)
    np.testing.assert_array_equal(np.asarray(layout.pack((st2, cg2, t2))), np.asarray(v))
    np.testing.assert_array_equal(np.asarray(cg2.values.native(["x"])), np.arange(112, 117))
    vx = math.unstack(st2.values, st2.values.shape.non_uniform_shape)[0]
    np.testing.assert_array_equal(np.asarray(vx.native(["x", "y"])), np.arange(56).reshape(7, 8))
    batch = (
        st2,
        flow.CenteredGrid(
            math.tensor(np.ones((2, 5)), math.batch("b"), math.spatial("x")), flow.extrapolation.PERIODIC, x=5
        ),
        t2,
    )
    packed = layout.pack_batch(batch)
    assert packed.shape == (2, layout.size) and packed.dtype == np.float32
    np.testing.assert_array_equal(packed[1, 112:117], 1.0)
    np.testing.assert_array_equal(packed[0, :112], np.arange(112))  # the batch-free leaf is broadcast


def test_bad_input_is_refused(burgers, monkeypatch):
    from stablebptt.problems.adapters import phiflow
    from stablebptt.problems.adapters.phiflow import flow, phiflow_problem

    u0 = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=N)
    ok = dict(state=u0, control=u0, horizon=2, state_loss=_energy, sample_states=lambda r, n: r.normal(size=(n, N)))
    for bad, msg in (
        (dict(state=np.zeros(3)), "state= must be a PhiFlow Field"),
        (dict(horizon=0), "horizon=0"),
        (dict(on="all"), "on='all'"),
        (dict(state_loss=3), "state_loss=3 is not callable"),
        (dict(state_loss=lambda u: u.values), "state_loss returned a tensor of shape"),
    ):
        with pytest.raises(ValueError, match=msg):
            phiflow_problem(_burgers, **(ok | bad))
    with pytest.raises(ValueError, match="the state step returned has values of shape"):
        phiflow_problem(lambda u, f: flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=N + 1), **ok)
    with pytest.raises(ValueError, match=r"state shape \(2, 5\)"):
        burgers.step(jnp.zeros((2, 5)), jnp.zeros((2, N)))
    with pytest.raises(ValueError, match="sample_states returned shape"):
        phiflow_problem(_burgers, **(ok | dict(sample_states=lambda r, n: np.zeros((n, 3))))).sample_data(0, 2, 0)
    monkeypatch.setitem(sys.modules, "phi.jax.flow", None)
    phiflow.import_phiflow.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'stablebptt\[phiflow\]'"):
            phiflow.import_phiflow()
    finally:
        monkeypatch.undo()
        phiflow.import_phiflow.cache_clear()
        phiflow.import_phiflow()


@pytest.mark.slow
def test_phiflow_example_trains():
    """``python examples/phiflow_burgers.py``: two epochs of R and of C each lower the test loss."""
    out = _run(f"""
        import runpy
        runpy.run_path({str(REPO / "examples" / "phiflow_burgers.py")!r}, run_name="__main__")
    """)
    lines = [ln for ln in out.splitlines() if "test loss" in ln]
    assert len(lines) == 2, out
    for ln in lines:
        before, after = (float(v) for v in ln.split("test loss ")[1].split(" after")[0].split(" -> "))
        assert after < before, ln
