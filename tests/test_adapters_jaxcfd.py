"""The jax-cfd adapter (stablebptt.problems.adapters.jax_cfd): the tree_* aliases reach jax-cfd's
modules only, the adapted step equals jax-cfd's own step called per sample, a Taylor–Green vortex
decays at the analytic rate exp(−2νt), gradients match central finite differences, bad input is
refused, and the worked example trains. The grids are 16² so that each program compiles in
seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EPS32, fixed_control_loss

pytest.importorskip("jax_cfd", reason="the jax-cfd adapter needs the [jax-cfd] extra")

from stablebptt.problems.adapters import jax_cfd as adapter

REPO = Path(__file__).resolve().parents[1]
NU, DT = 0.05, 0.05


def _grid(n=16):
    cfd = adapter.import_jax_cfd()
    return cfd.grids.Grid((n, n), domain=((0, 2 * np.pi), (0, 2 * np.pi)))


def _force(c, grid):
    """Two constant-amplitude shear modes: f_x = c_0 sin y, f_y = c_1 sin x."""
    x, y = grid.mesh()
    return c[0] * jnp.sin(y), c[1] * jnp.sin(x)


def _energy(v):
    return 0.5 * sum(jnp.mean(u.data**2) for u in v)


def _template(grid):
    cfd = adapter.import_jax_cfd()
    return cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(0), grid, 1.0, 2)


def _draw(grid):
    cfd = adapter.import_jax_cfd()
    field = jax.jit(jax.vmap(lambda k: adapter.pack(cfd.initial_conditions.filtered_velocity_field(k, grid, 1.0, 2))))
    return lambda rng, n: np.asarray(field(jax.random.split(jax.random.PRNGKey(int(rng.integers(2**31))), n)))


def _linear_convection(v):
    """Central (linear) advection of each component: its gradient program compiles ~6× faster
    than jax-cfd's default van Leer scheme (which the Taylor–Green test runs)."""
    cfd = adapter.import_jax_cfd()
    return tuple(cfd.advection.advect_linear(u, v) for u in v)


@pytest.fixture(scope="module")
def flow():
    grid = _grid()
    v = _template(grid)
    step = adapter.navier_stokes_step(
        v, density=1.0, viscosity=NU, dt=DT, inner_steps=2, control_force=_force, convect=_linear_convection
    )
    return adapter.jax_cfd_problem(
        step, velocity=v, control_shape=(2,), horizon=3, state_loss=_energy, sample_states=_draw(grid), widths=(8,)
    )


def test_aliases_reach_jax_cfd_only():
    """jax-cfd's modules see jax.tree_map & co. (jax.tree_util's functions); the jax module and
    every other module are unchanged; a second call changes nothing."""
    if hasattr(jax, "tree_map"):
        pytest.skip("this JAX still has jax.tree_map: nothing to alias")
    cfd = adapter.import_jax_cfd()
    import jax_cfd.base.grids as grids

    from stablebptt.core import losses

    assert grids.jax is not jax and not hasattr(jax, "tree_map") and losses.jax is jax
    for name in adapter.TREE_ALIASES:
        assert getattr(grids.jax, name) is getattr(jax.tree_util, name)
    assert grids.jax.numpy is jax.numpy and grids.jax.vmap is jax.vmap
    assert adapter._give_jax_cfd_the_aliases() == 0 and adapter.import_jax_cfd() is cfd
    # jax-cfd's own use of a removed name: Grid.center calls jax.tree_map
    centred = _grid(2).center((jnp.ones((2, 2)), jnp.zeros((2, 2))))
    assert all(isinstance(a, grids.GridArray) and a.offset == (0.5, 0.5) for a in centred)


@pytest.mark.slow
def test_step_equals_jax_cfd_called_per_sample(flow):
    """The batched step equals semi_implicit_navier_stokes (two steps of funcutils.repeated, the
    same forcing and convection) on each sample's GridVariableVector, built by hand."""
    cfd = adapter.import_jax_cfd()
    grid = _grid()
    x, _ = flow.sample_data(0, 2, 0)
    c = np.array([[0.5, -0.3], [0.0, 1.0]], np.float32)
    got = np.asarray(jax.jit(flow.step)(x, c))
    bc = cfd.boundaries.periodic_boundary_conditions(2)
    want = []
    for b in range(2):
        offsets = grid.cell_faces
        v = tuple(
            cfd.grids.GridVariable(cfd.grids.GridArray(jnp.asarray(x[b, i]), offsets[i], grid), bc) for i in range(2)
        )
        forcing = lambda v, b=b: tuple(cfd.grids.GridArray(f, o, grid) for f, o in zip(_force(c[b], grid), offsets))
        eq = cfd.equations.semi_implicit_navier_stokes(
            density=1.0, viscosity=NU, dt=DT, grid=grid, forcing=forcing, convect=_linear_convection
        )
        want.append(np.stack([u.data for u in jax.jit(cfd.funcutils.repeated(eq, 2))(v)]))
    want = np.stack(want)
    assert got.shape == x.shape == (2, 2, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=16 * EPS32 * np.abs(want).max())
    assert np.abs(want - x).max() > 1e-2


@pytest.mark.slow
def test_taylor_green_vortex_decays_at_the_analytic_rate():
    """u = a sin x cos y, v = −a cos x sin y solves Navier–Stokes with a(t) = a exp(−2νt) (the
    convection is balanced by pressure). 10 steps of 0.05 s at ν = 0.1 on 16², zero control:

    * a = 0.01 (convection negligible): a(t)/a equals the discrete rate — forward Euler of the
      second-order Laplacian, (1 − ν dt · 8 sin²(h/2)/h²)^10 = 0.90545 — within 1e-4, and
      exp(−2νt) = 0.90484 within 1e-3;
    * a = 1 at ν = 0: the amplitude stays 1 within 1.5e-2 (the scheme's convection dissipates
      0.9 % here: numerical dissipation of its interpolation on a coarse grid)."""
    grid = _grid()
    h = 2 * np.pi / 16
    x_u, y_u = grid.mesh(grid.cell_faces[0])
    x_v, y_v = grid.mesh(grid.cell_faces[1])
    mode = jnp.stack([jnp.sin(x_u) * jnp.cos(y_u), -jnp.cos(x_v) * jnp.sin(y_v)])
    v = _template(grid)

    def amplitude(nu, a):
        step = adapter.navier_stokes_step(v, density=1.0, viscosity=nu, dt=0.05, control_force=lambda c, g: c)
        p = adapter.jax_cfd_problem(
            step, velocity=v, control_shape=(2, 16, 16), horizon=1, state_loss=_energy, sample_states=_draw(grid)
        )
        xt = jax.jit(lambda x: jax.lax.fori_loop(0, 10, lambda _, s: p.step(s, jnp.zeros_like(s)), x))(a * mode[None])
        return float(jnp.sum(xt[0] * mode) / jnp.sum(mode * mode)) / a

    discrete = (1 - 0.1 * 0.05 * 8 * np.sin(h / 2) ** 2 / h**2) ** 10
    small = amplitude(0.1, 0.01)
    np.testing.assert_allclose(small, discrete, atol=1e-4)
    np.testing.assert_allclose(small, np.exp(-2 * 0.1 * 0.5), atol=1e-3)
    np.testing.assert_allclose(amplitude(0.0, 1.0), 1.0, atol=1.5e-2)


def test_gradient_matches_central_differences(flow):
    """d L / d c along a direction, L the 3-step fixed-control trajectory loss (kinetic energy):
    jax.grad through the adapter against central differences (float32, h = 1e-2; L is smooth in
    c, so the O(h²) error and the float32 noise ~eps·L/h stay below 1e-3 of the derivative)."""
    x0, _ = flow.sample_data(1, 2, 0)
    rng = np.random.default_rng(0)
    c = jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)
    d = jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)
    value_and_grad = jax.jit(jax.value_and_grad(lambda cc: fixed_control_loss(flow, jnp.asarray(x0), cc, flow.horizon)))
    _, g = value_and_grad(c)
    h = 1e-2  # the losses at c ± h d from the same compiled program
    fd = (float(value_and_grad(c + h * d)[0]) - float(value_and_grad(c - h * d)[0])) / (2 * h)
    ad = float(jnp.sum(g * d))
    assert abs(fd) > 1e-3
    np.testing.assert_allclose(ad, fd, rtol=2e-3)


def test_bad_input_is_refused(flow, monkeypatch):
    grid = _grid()
    v = _template(grid)
    step = adapter.navier_stokes_step(v, density=1.0, viscosity=NU, dt=DT, control_force=_force)
    ok = dict(velocity=v, control_shape=(2,), horizon=2, state_loss=_energy, sample_states=_draw(grid))
    for bad, msg in (
        (dict(velocity=np.zeros((2, 16, 16))), "expected a tuple of jax_cfd GridVariables"),
        (dict(control_shape=(0,)), r"control_shape=\(0,\)"),
        (dict(horizon=0), "horizon=0"),
        (dict(on="sum"), "on='sum'"),
    ):
        with pytest.raises(ValueError, match=msg):
            adapter.jax_cfd_problem(step, **(ok | bad))
    for bad, msg in (
        (dict(dt=-1.0), "dt=-1.0"),
        (dict(viscosity=-0.1), "viscosity=-0.1"),
        (dict(control_force=None), "control_force=None is not callable"),
    ):
        with pytest.raises(ValueError, match=msg):
            adapter.navier_stokes_step(v, **(dict(density=1.0, viscosity=NU, dt=DT, control_force=_force) | bad))
    wrong = adapter.navier_stokes_step(v, density=1.0, viscosity=NU, dt=DT, control_force=lambda c, g: (c[0],))
    p = adapter.jax_cfd_problem(wrong, **ok)
    with pytest.raises(ValueError, match="control_force returned shapes"):
        jax.eval_shape(
            p.step, jax.ShapeDtypeStruct((1, 2, 16, 16), jnp.float32), jax.ShapeDtypeStruct((1, 2), jnp.float32)
        )
    with pytest.raises(ValueError, match=r"control shape \(1, 3\)"):
        jax.eval_shape(
            flow.step, jax.ShapeDtypeStruct((1, 2, 16, 16), jnp.float32), jax.ShapeDtypeStruct((1, 3), jnp.float32)
        )
    monkeypatch.setitem(sys.modules, "jax_cfd.base", None)
    with pytest.raises(ImportError, match=r"pip install 'stablebptt\[jax-cfd\]'"):
        adapter.import_jax_cfd()


@pytest.mark.slow
def test_jaxcfd_example_trains():
    """``python examples/jaxcfd_flow.py``: two epochs of R and of C each lower the test loss."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "jaxcfd_flow.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if "test loss" in ln]
    assert len(lines) == 2, out.stdout
    for ln in lines:
        before, after = (float(v) for v in ln.split("test loss ")[1].split(" after")[0].split(" -> "))
        assert after < before, ln
