"""The exponax adapter and the PDE ladder problems (ks, burgers, kolmogorov): the controlled step
against exponax's own stepper run in float64 in another process, a linear PDE's closed-form
response to a constant force, loss gradients against central finite differences in float64,
seeded data, the problem contract and one epoch of training each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ex = pytest.importorskip("exponax", reason="the exponax adapter needs the [exponax] extra")

from stablebptt import problems  # noqa: E402
from stablebptt.problems.adapters.exponax import exponax_problem, exponax_step, gaussian_actuators  # noqa: E402
from stablebptt.training.config import RunConfig  # noqa: E402
from stablebptt.training.runner import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)

#: run in a fresh process with float64 on: exponax's own KS step (no stablebptt code), the
#: forcing added as exponax.ForcedStepper documents it; and the float64 gradient of the KS
#: problem's loss w.r.t. a constant actuator control with its central finite differences
REFERENCE = textwrap.dedent(r"""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, exponax as ex
    inp = np.load(sys.argv[1])
    st = ex.stepper.KuramotoSivashinskyConservative(1, 22.0, 64, 0.5)
    u, f = jnp.asarray(inp["u"], jnp.float64), jnp.asarray(inp["f"], jnp.float64)
    free, forced = [], []
    a = b = u
    for _ in range(5):
        a = jax.vmap(st)(a)
        b = jax.vmap(st)(b + st.dt * f)
        free.append(np.asarray(a)); forced.append(np.asarray(b))
    np.savez(sys.argv[2], free=np.stack(free), forced=np.stack(forced))

    sys.path.insert(0, sys.argv[3])
    from stablebptt import problems
    from stablebptt.problems.ks import energy
    p = problems.get("ks", L=22, steps=12, spin_up=0, rc=0.1)
    x0 = jnp.asarray(inp["u"][:2], jnp.float64)
    @jax.jit
    def loss(c):
        x, total = x0, 0.0
        for n in range(p.horizon):
            cn = jnp.broadcast_to(c, (2,) + c.shape)
            x = p.step(x, cn)
            total = total + jnp.mean(jax.vmap(energy)(x)) / p.horizon + p.loss.control_term(cn, p.horizon)
        return total
    c = jnp.asarray(inp["c"], jnp.float64)
    g = jax.grad(loss)(c)
    h = 1e-6
    fd = [(loss(c.at[k].add(h)) - loss(c.at[k].add(-h))) / (2 * h) for k in range(c.shape[0])]
    print(json.dumps(dict(dtype=str(x0.dtype), grad=np.asarray(g).tolist(), fd=np.asarray(fd).tolist())))
""")


@pytest.fixture(scope="module")
def float64_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    rng = np.random.default_rng(3)
    xg = np.arange(64) * 22.0 / 64
    u = np.stack([np.sin(2 * np.pi * k * xg / 22.0 + rng.uniform(0, 6)) for k in (1, 2, 3)])[:, None]
    f = 0.3 * np.cos(2 * np.pi * 2 * xg / 22.0)[None, None] * np.ones((3, 1, 1))
    np.savez(d / "in.npz", u=u, f=f, c=np.array([0.3, -0.2, 0.1, 0.05]))
    (d / "ref.py").write_text(REFERENCE)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, str(d / "ref.py"), str(d / "in.npz"), str(d / "out.npz"), str(REPO / "src")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(np.load(d / "in.npz")), dict(np.load(d / "out.npz")), json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_step_equals_exponax_in_float64(float64_reference):
    """Five steps of the adapter's float32 step (zero control, and a constant force field) follow
    exponax's KS stepper run in float64 with the force added as ForcedStepper documents
    (u ← u + Δt f, then the step): to float32 round-off grown over 5 chaotic steps."""
    inp, ref, _ = float64_reference
    st = ex.stepper.KuramotoSivashinskyConservative(1, 22.0, 64, 0.5)
    step = jax.jit(exponax_step(st))
    u = jnp.asarray(inp["u"], jnp.float32)
    a, b = u, u
    for n in range(5):
        a = step(a, jnp.zeros_like(a))
        b = step(b, jnp.asarray(inp["f"], jnp.float32))
        scale = np.abs(ref["free"][n]).max()
        np.testing.assert_allclose(np.asarray(a), ref["free"][n], rtol=0, atol=200 * EPS32 * scale)
        np.testing.assert_allclose(np.asarray(b), ref["forced"][n], rtol=0, atol=200 * EPS32 * scale)
    assert np.abs(ref["forced"][-1] - ref["free"][-1]).max() > 1e-2  # the force matters


def test_loss_gradient_matches_central_differences_in_float64(float64_reference):
    """d L / d c for a constant 4-actuator control over 12 KS steps (the ks problem's step,
    energy and control cost, float64): jax.grad equals central differences (h = 1e-6) to 1e-6 relative."""
    _, _, out = float64_reference
    assert out["dtype"] == "float64"
    g, fd = np.array(out["grad"]), np.array(out["fd"])
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * np.abs(fd).max())
    assert np.abs(g).max() > 1e-3


def test_constant_force_on_diffusion_has_the_closed_form_response():
    """Heat equation u_t = ν u_xx + f with a constant force f = cos(κx) from u = 0: one step is
    u ← e^{−νκ²Δt}(u + Δt f) (exact for exponax's linear ETDRK), so after n steps
    u_n = Δt f · a(1 − aⁿ)/(1 − a), a = e^{−νκ²Δt}. As a field control and as one actuator whose
    profile is f."""
    L, N, nu, dt = 2 * np.pi, 32, 0.1, 0.2
    st = ex.stepper.Diffusion(1, L, N, dt, diffusivity=nu)
    x = np.arange(N) * L / N
    kappa = 3.0
    prof = np.cos(kappa * x).astype(np.float32)
    a = np.exp(-nu * kappa**2 * dt)
    field, act = jax.jit(exponax_step(st)), jax.jit(exponax_step(st, actuators=prof[None]))
    u_f = u_a = jnp.zeros((2, 1, N), jnp.float32)
    for n in range(1, 9):
        u_f = field(u_f, jnp.broadcast_to(jnp.asarray(prof), (2, 1, N)))
        u_a = act(u_a, jnp.ones((2, 1), jnp.float32))
        want = dt * prof * a * (1 - a**n) / (1 - a)
        for got in (u_f, u_a):
            np.testing.assert_allclose(
                np.asarray(got)[:, 0], np.broadcast_to(want, (2, N)), rtol=0, atol=50 * EPS32 * np.abs(want).max()
            )


def test_gaussian_actuators_are_periodic_bumps():
    st = ex.stepper.KuramotoSivashinskyConservative(1, 22.0, 64, 0.5)
    b = gaussian_actuators(st, 4, width=0.4)
    x = np.arange(64) * 22.0 / 64
    assert b.shape == (4, 64) and b.dtype == np.float32
    d = np.minimum(np.abs(x - 5.5), 22.0 - np.abs(x - 5.5))
    np.testing.assert_allclose(b[1], np.exp(-(d**2) / (2 * 0.4**2)), atol=1e-6)
    assert b[0, 0] == 1.0 and abs(b[0, -1] - b[0, 1]) < 1e-6  # wraps round x = 0
    with pytest.raises(ValueError, match="width=0"):
        gaussian_actuators(st, 4, width=0)


def test_adapter_refuses_bad_input():
    st = ex.stepper.Diffusion(1, 1.0, 16, 0.1)
    ok = dict(horizon=3, state_loss=lambda u: jnp.mean(u**2), sample_states=lambda rng, n: rng.normal(size=(n, 1, 16)))
    for bad, msg in (
        (dict(horizon=0), "horizon=0"),
        (dict(on="all"), "on='all'"),
        (dict(actuators=np.ones((2, 15))), "actuators of shape"),
        (dict(control_weight=-1), "control_weight"),
        (dict(ic=lambda n, key: None), "exactly one of"),
    ):
        with pytest.raises(ValueError, match=msg):
            exponax_problem(st, **(ok | bad))
    with pytest.raises(ValueError, match="not an exponax stepper"):
        exponax_problem(object(), **ok)
    with pytest.raises(ValueError, match="L=23"):
        problems.get("ks", L=23)
    p = exponax_problem(st, **ok)
    with pytest.raises(ValueError, match="exponax step: state"):
        p.step(jnp.zeros((2, 1, 16)), jnp.zeros((2, 1, 15)))


TINY = {"ks": dict(L=22, steps=4, spin_up=8), "burgers": dict(steps=4), "kolmogorov": dict(n=16, steps=3, spin_up=4)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "ks" else n for n in sorted(TINY)])
def test_ladder_problem_data_contract_and_one_epoch(name):
    """Seeded data are deterministic and finite, the problem meets the contract, and one epoch of
    C trains through the library's trainer with finite losses."""
    p = problems.get(name, **TINY[name])
    a, b = p.sample_data(5, 4, 2), p.sample_data(5, 4, 2)
    c = p.sample_data(6, 4, 2)
    assert a[0].shape == (4,) + p.state_shape and a[0].dtype == np.float32
    np.testing.assert_array_equal(a[0], b[0]), np.testing.assert_array_equal(a[1], b[1])
    assert np.all(np.isfinite(a[0])) and not np.array_equal(a[0], c[0])
    problems.check_problem(p, n_train=4, n_test=2, data=5, batch_size=2)
    cfg = RunConfig(
        problem=name, problem_params=TINY[name], mode="C", epochs=1, n_train=4, n_test=2, batch_size=2, data="seeded"
    )
    (res,) = train(p, cfg, seeds=[0])
    assert not res.diverged and np.isfinite(res.history["test_loss"][0])
    assert np.isfinite(res.initial["test_loss"]) and res.initial["test_loss"] > 0


def test_burgers_target_is_carried_and_reachable():
    """The step leaves the target channel unchanged; the target differs from u_0 (it is u_0 pushed
    by a random force)."""
    p = problems.get("burgers", steps=4)
    x, _ = p.sample_data(1, 3, 0)
    x1 = np.asarray(jax.jit(p.step)(jnp.asarray(x), jnp.ones((3, 1, 128), jnp.float32)))
    np.testing.assert_array_equal(x1[:, 1], x[:, 1])
    assert np.abs(x[:, 0] - x[:, 1]).max() > 0.1


@pytest.mark.slow
def test_the_worked_example_trains_from_the_command_line(tmp_path):
    """examples/exponax_ks.py trains one epoch through the CLI (a real process) with a finite,
    reported loss."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stablebptt.cli",
            "train",
            f"{REPO / 'examples' / 'exponax_ks.py'}:make",
            "--mode",
            "C",
            "--epochs",
            "1",
            "--n-train",
            "8",
            "--n-test",
            "4",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (result,) = tmp_path.glob("*/result.json")
    rec = json.loads(result.read_text())
    assert rec["epochs_done"] == 1 and np.isfinite(rec["final"]["test_loss"]) and rec["final"]["test_loss"] > 0
