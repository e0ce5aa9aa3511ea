"""The cart-chain problem (a cart with an n-link pendulum) against independent references: the
Lagrangian written from the rods' positions and differentiated by JAX in float64, the closed-form
single cart-pole equations, energy conservation (float64 RK4, and the float32 semi-implicit
Euler's first-order error), central finite differences of the loss in float64; its data, its
parameter checks and one epoch of training through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import EPS32, assert_close, assert_leaves_global_rng_alone
from stablebptt import problems
from stablebptt.cli.app import app
from stablebptt.problems import cartpole, chain

LINKS = (1, 2, 3, 4, 5, 6)
G = 9.8


def _random_chain(n: int, seed: int) -> chain.Chain:
    """A chain with unequal links (masses 0.05…0.3 kg, lengths 0.3…1.2 m), so that no index
    mix-up hides behind equal constants."""
    rng = np.random.default_rng(seed)
    return chain.Chain(float(rng.uniform(0.5, 2.0)), tuple(rng.uniform(0.05, 0.3, n)), tuple(rng.uniform(0.3, 1.2, n)))


def _lagrangian(ch: chain.Chain):
    """L(q, q̇) = T − V of the cart and its rods written from positions (float64): the centre
    of rod k is the cart position plus the full vectors of the rods above it plus half of its
    own; T = ½ m_c ẋ² + Σ_k (½ m_k |ṗ_k|² + ½ (m_k L_k²/12) θ̇_k²), V = g Σ_k m_k y_k."""
    m, L = jnp.asarray(ch.masses), jnp.asarray(ch.lengths)

    def centres(q):
        x, th = q[0], q[1:]
        ends = jnp.stack([L * jnp.sin(th), L * jnp.cos(th)], -1)  # (n, 2) rod vectors, base to tip
        bases = jnp.cumsum(ends, 0) - ends
        return jnp.array([x, 0.0]) + bases + 0.5 * ends

    def lag(q, q_dot):
        vel = jax.jvp(centres, (q,), (q_dot,))[1]  # (n, 2)
        kinetic = (
            0.5 * ch.cart_mass * q_dot[0] ** 2
            + 0.5 * jnp.sum(m * jnp.sum(vel**2, -1))
            + 0.5 * jnp.sum(m * L**2 / 12.0 * q_dot[1:] ** 2)
        )
        return kinetic - G * jnp.sum(m * centres(q)[:, 1])

    return lag


def _random_state(n: int, seed: int, batch: int = 5) -> np.ndarray:
    """Angles anywhere on the circle, angular rates up to ±3 rad/s: (batch, 1+n, 2) float64."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-3.0, 3.0, (batch, 1 + n, 2))
    s[:, 1:, 0] = rng.uniform(-np.pi, np.pi, (batch, n))
    return s


# ---------------------------------------------------------------- equations of motion
@pytest.mark.slow
@pytest.mark.parametrize("n", LINKS)
def test_mass_matrix_and_forces_match_the_lagrangian(n):
    """M(q) = ∂²L/∂q̇² and τ = Q + ∂L/∂q − (∂²L/∂q̇∂q) q̇ (Euler–Lagrange, Q = (F, 0 …)) from
    the Lagrangian written from positions, in float64, at states with angles anywhere."""
    ch = _random_chain(n, seed=n)
    s = _random_state(n, seed=10 + n)
    forces = np.linspace(-7.0, 7.0, len(s))
    with jax.enable_x64(True):
        lag = _lagrangian(ch)

        def reference(q, q_dot, force):
            mixed = jax.jacfwd(jax.grad(lag, argnums=1), argnums=0)(q, q_dot)  # ∂²L/∂q̇∂q
            tau = jax.grad(lag, argnums=0)(q, q_dot) - mixed @ q_dot
            return jax.hessian(lag, argnums=1)(q, q_dot), tau.at[0].add(force)

        q, q_dot, f = jnp.asarray(s[..., 0]), jnp.asarray(s[..., 1]), jnp.asarray(forces)
        mass_ref, tau_ref = jax.jit(jax.vmap(reference))(q, q_dot, f)
        mass = ch.mass_matrix(q[:, 1:])
        tau = ch.generalised_forces(q[:, 1:], q_dot[:, 1:], f)
    assert mass.dtype == tau.dtype == jnp.float64
    assert mass.shape == (len(s), 1 + n, 1 + n) and tau.shape == (len(s), 1 + n)
    assert_close(mass, mass_ref, 1e-13, "M(q)")
    assert_close(tau, tau_ref, 1e-13, "τ(q, q̇, F)")
    assert np.all(np.linalg.eigvalsh(np.asarray(mass)) > 0), "M(q) must be positive definite"


def test_batched_accelerations_equal_per_sample_ones():
    """The batched accelerations equal the per-sample ones (vmap) to float32 round-off."""
    ch = _random_chain(4, seed=3)
    s = jnp.asarray(_random_state(4, seed=4, batch=6), jnp.float32)
    f = jnp.linspace(-2.0, 2.0, 6, dtype=jnp.float32)
    acc = jax.jit(ch.accelerations)(s, f)
    assert acc.shape == (6, 5) and acc.dtype == jnp.float32
    assert_close(acc, jax.jit(jax.vmap(ch.accelerations))(s, f), 16 * EPS32, "q̈ batched")


def test_one_link_is_the_closed_form_cart_pole():
    """n = 1 with m_c = 1.0, m = 0.1, L = 1.0 is the classic cart-pole (M = 1.1, half-length 0.5):
    θ̈ = (g sin θ − cos θ (F + m l θ̇² sin θ)/M) / (l (4/3 − m cos²θ / M)),
    ẍ = (F + m l (θ̇² sin θ − θ̈ cos θ)) / M, in float64."""
    ch = chain.chain_of(chain.make(links=1))
    s = _random_state(1, seed=5, batch=16)
    f = np.random.default_rng(6).normal(0.0, 5.0, 16)
    M, m, l = 1.1, 0.1, 0.5
    th, w = s[:, 1, 0], s[:, 1, 1]
    a = (f + m * l * w**2 * np.sin(th)) / M
    th_dd = (G * np.sin(th) - np.cos(th) * a) / (l * (4.0 / 3.0 - m * np.cos(th) ** 2 / M))
    x_dd = (f + m * l * (w**2 * np.sin(th) - th_dd * np.cos(th))) / M
    with jax.enable_x64(True):
        acc = ch.accelerations(jnp.asarray(s), jnp.asarray(f))
    assert_close(acc, np.stack([x_dd, th_dd], -1), 1e-13, "q̈ for one link")


def test_one_link_rollout_is_the_paper_cart_pole():
    """100 float32 steps of ``cart-chain`` with one link follow the paper's ``cartpole`` with one
    pole (same equations and integrator, the sums in another order: a few float32 roundings per
    step, 100 steps)."""
    mine, paper = problems.get("cart-chain", links=1), cartpole.make(poles=1)
    train, _ = mine.sample_data("paper", 64, 0)
    forces = np.random.default_rng(7).normal(0.0, 5.0, (100, 64)).astype(np.float32)

    def rollout(step, x):
        return jax.lax.scan(lambda x, f: (step(x, f), None), x, forces)[0]

    assert_close(
        jax.jit(lambda x: rollout(mine.step, x))(train),
        jax.jit(lambda x: rollout(paper.step, x))(train),
        100 * EPS32,
        "100 steps",
    )


# ---------------------------------------------------------------- energy
def _energy_error(ch, states, dts, seconds: float, method: str) -> list[float]:
    """For each step size in ``dts``: max over time and samples of |E(t) − E(0)| / (g Σ h) along
    unforced steps covering ``seconds``; ``method`` "rk4" (classic RK4) or "euler" (the
    problem's semi-implicit Euler, :meth:`Chain.step`). One compiled loop (dt and the step
    count are traced), in the states' dtype."""

    def rk4(s, dt):
        def f(s):
            return jnp.stack([s[..., 1], ch.accelerations(s, jnp.zeros(s.shape[:-2], s.dtype))], -1)

        k1 = f(s)
        k2 = f(s + 0.5 * dt * k1)
        k3 = f(s + 0.5 * dt * k2)
        k4 = f(s + dt * k3)
        return s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def euler(s, dt):
        return ch.step(s, jnp.zeros(s.shape[:-2], s.dtype), dt)

    advance = dict(rk4=rk4, euler=euler)[method]

    @jax.jit
    def worst(s0, dt, steps):
        e0 = ch.energy(s0)

        def body(_, carry):
            s, err = carry
            s = advance(s, dt)
            return s, jnp.maximum(err, jnp.max(jnp.abs(ch.energy(s) - e0)))

        return jax.lax.fori_loop(0, steps, body, (s0, jnp.zeros((), s0.dtype)))[1]

    s0 = jnp.asarray(states)
    dtype = s0.dtype
    return [float(worst(s0, jnp.asarray(dt, dtype), round(seconds / dt))) / _energy_scale(ch) for dt in dts]


def _energy_scale(ch) -> float:
    """g Σ h_j [J]: the potential energy the links' centres gain from hanging to level."""
    return ch.g * float(np.sum(ch.coefficients()[1]))


@pytest.mark.slow
@pytest.mark.parametrize("n", (1, 3, 6))
def test_energy_is_conserved_by_float64_rk4(n):
    """The unforced, frictionless chain conserves T + V: 2000 RK4 steps of 1 ms in float64 keep
    it to ≤ 1e-7 of g Σ h (measured ≤ 5e-9 at 6 links), and halving the step shrinks the error
    ≥ 10× (RK4 is fourth order; 2⁴ = 16)."""
    p = problems.get("cart-chain", links=n)
    train, _ = p.sample_data(0, 16, 0)
    with jax.enable_x64(True):
        err = _energy_error(chain.chain_of(p), train.astype(np.float64), (1e-3, 5e-4), 2.0, "rk4")
    assert err[0] <= 1e-7, err
    assert err[0] >= 10 * err[1] or err[0] <= 1e-12, err


def _max_frequency(ch) -> float:
    """The largest angular frequency [rad/s] of small oscillations about hanging rest:
    ω² = eigenvalues of M⁻¹K with M = M(θ = π) and K = diag(0, g h)."""
    n = ch.links
    mass = np.asarray(ch.mass_matrix(jnp.full((n,), np.pi, jnp.float32)), np.float64)
    stiffness = np.diag(np.concatenate([[0.0], ch.g * ch.coefficients()[1]]))
    return float(np.sqrt(np.max(np.linalg.eigvals(np.linalg.solve(mass, stiffness)).real)))


@pytest.mark.slow
@pytest.mark.parametrize("n", LINKS)
def test_float32_integrator_energy_error_is_first_order_in_dt(n):
    """The problem's integrator (float32 semi-implicit Euler, first order) over the task's
    horizon of 1 s: the energy error stays below ω_max·dt of g Σ h (ω_max the fastest small
    oscillation; measured ≤ 0.37 ω_max·dt over n = 1 … 6), and halving dt halves it
    (ratio 1.6 … 2.4; measured 1.7 … 2.0). Float32 rounding (~1e-7 per step) is far below."""
    p = problems.get("cart-chain", links=n)
    ch, dt = chain.chain_of(p), p.params["dt"]
    train, _ = p.sample_data(0, 64, 0)
    err, coarse, fine = _energy_error(ch, train, (dt, 0.005, 0.0025), 1.0, "euler")
    assert err <= _max_frequency(ch) * dt, err
    assert 1.6 <= coarse / fine <= 2.4, (coarse, fine)


def test_rest_states_stay_at_rest():
    """Upright rest is an equilibrium of the unforced chain (exactly, in float32); hanging rest
    too, up to the gravity of sin(float32(π)) ≈ −8.7e-8 (q̈ ~ g/L·1e-7 ≈ 1e-6)."""
    p = problems.get("cart-chain", links=4)
    step = jax.jit(p.step)
    for angle, tol in ((0.0, 0.0), (np.pi, 1e-7)):
        s = np.zeros((2, 5, 2), np.float32)
        s[:, 1:, 0] = np.float32(angle)
        s1 = np.asarray(step(s, np.zeros(2, np.float32)))
        assert np.max(np.abs(s1 - s)) <= tol, (angle, s1 - s)


# ---------------------------------------------------------------- gradients
def _final_loss(step, x0, forces):
    """The problem's loss (final state only) after the control sequence ``forces`` (T, B)."""
    x = jax.lax.scan(lambda x, f: (step(x, f), None), x0, forces)[0]
    return 1.0 - jnp.mean(jnp.cos(x[..., 1:, 0]))


def test_loss_gradient_matches_finite_differences():
    """∂L/∂(force sequence) of a 3-link chain over 40 steps: autodiff in float64 against central
    differences (h = 1e-5, truncation error ~h² ≈ 1e-10) in 8 random directions, and the float32
    problem's gradient against the float64 one."""
    p = problems.get("cart-chain", links=3, steps=40)
    ch, dt = chain.chain_of(p), p.params["dt"]
    train, _ = p.sample_data(1, 4, 0)
    forces = np.random.default_rng(2).normal(0.0, 3.0, (40, 4))
    with jax.enable_x64(True):
        x0, u = jnp.asarray(train, jnp.float64), jnp.asarray(forces)
        loss = jax.jit(lambda u: _final_loss(lambda x, f: ch.step(x, f, dt), x0, u))
        grad = np.asarray(jax.grad(loss)(u))
        h = 1e-5
        dirs = np.random.default_rng(3).normal(size=(8, 40, 4))
        fd = np.array([(float(loss(u + h * d)) - float(loss(u - h * d))) / (2 * h) for d in dirs])
    directional = np.einsum("kij,ij->k", dirs, grad)
    assert_close(directional, fd, 1e-7, "directional derivatives")
    g32 = jax.jit(jax.grad(lambda u: _final_loss(p.step, jnp.asarray(train), u)))(jnp.asarray(forces, jnp.float32))
    assert g32.dtype == jnp.float32
    # float32 round-off (~1e-7 per step) amplified by the 40-step Jacobian products
    assert_close(g32, grad, 1e-4, "float32 gradient")


# ---------------------------------------------------------------- data, parameters
def test_data_is_deterministic_per_seed_and_hangs():
    p = problems.get("cart-chain", links=5)
    a, b = p.sample_data(11, 32, 16), p.sample_data(11, 32, 16)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], p.sample_data(12, 32, 16)[0])
    train, test = a
    assert train.shape == (32, 6, 2) and test.shape == (16, 6, 2)
    assert train.dtype == test.dtype == np.float32
    both = np.concatenate([train, test])
    assert np.all(np.abs(both[:, 1:, 0] - np.pi) <= np.pi / 6 + 1e-6)  # hanging, within ±30°
    assert np.all(np.abs(both[:, 0, :]) <= 1) and np.all(np.abs(both[:, 1:, 1]) <= 1)
    # "paper": the authors' cart-pole draw with as many poles as links
    for x, y in zip(p.sample_data("paper", 8, 8), cartpole.make(poles=5).sample_data("paper", 8, 8)):
        np.testing.assert_array_equal(x, y)
    assert_leaves_global_rng_alone(p.sample_data)


def test_problem_builds_and_passes_the_contract_check():
    for n in LINKS:
        p = problems.get("cart-chain", links=n)
        assert p.name == "cart-chain" and p.state_shape == (1 + n, 2) and p.control_shape == ()
        assert p.horizon == 100 and p.params["dt"] == 0.01 and p.zero_last_default
        problems.check_problem(p, n_train=8, n_test=8)
    assert set(problems.param_spec("cart-chain")) == set(chain.PARAMS)
    # the untrained controller outputs F = 0 (the paper cart-pole's zero last kernel)
    p = problems.get("cart-chain", links=3)
    model = p.make_controller(jax.random.PRNGKey(0))
    _, test = p.sample_data("paper", 0, 64)
    assert float(jnp.max(jnp.abs(model(test)))) == 0.0


@pytest.mark.parametrize(
    "params, bad",
    [
        (dict(links=0), "links=0"),
        (dict(links=7), "links=7"),
        (dict(links=2.5), "links=2.5"),
        (dict(links=True), "links=True"),
        (dict(dt=0.0), "dt=0.0"),
        (dict(dt=float("nan")), "dt=nan"),
        (dict(steps=0), "steps=0"),
        (dict(cart_mass=-1.0), "cart_mass=-1.0"),
        (dict(link_mass=0), "link_mass=0"),
        (dict(link_length=float("inf")), "link_length=inf"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, bad):
    with pytest.raises(ValueError) as e:
        problems.get("cart-chain", **params)
    msg = str(e.value)
    assert "\n" not in msg and bad in msg and "must be" in msg


def test_step_refuses_wrong_shapes():
    p = problems.get("cart-chain", links=2)
    with pytest.raises(ValueError, match=r"expected \(B, 3, 2\)"):
        p.step(np.zeros((4, 4, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="one scalar per sample"):
        p.step(np.zeros((4, 3, 2), np.float32), np.zeros((4, 1), np.float32))


# ---------------------------------------------------------------- training
@pytest.mark.slow
def test_trains_one_epoch_through_the_cli(tmp_path, monkeypatch):
    """``stablebptt train cart-chain`` at a tiny size (2 links, 10 steps, 16 states) writes a
    finished run with finite losses (compiling dominates: ~50 s on the loaded 2-core CPU)."""
    monkeypatch.setenv("STABLEBPTT_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(
        app,
        [
            "train",
            "cart-chain",
            "-p",
            "links=2",
            "-p",
            "steps=10",
            "--epochs",
            "1",
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--mode",
            "C",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert res.exit_code == 0, res.output
    (folder,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    cfg = json.loads((folder / "config.json").read_text())["config"]
    assert cfg["problem"] == "cart-chain" and cfg["problem_params"] == {"links": 2, "steps": 10}
    m = pd.read_csv(folder / "metrics.csv")
    assert list(m["epoch"]) == [1] and np.all(np.isfinite(m[["loss", "train_loss", "test_loss"]]))
    assert json.loads((folder / "result.json").read_text())["status"] == "finished"


def test_sweep_spec_covers_the_ladder():
    """The ``cart-chain`` sweep spec (``experiments/ladder/specs/``): links 1 … 6 × R, M, C, S on seeded data; quick: 60 epochs
    of 64 states, 2 seeds."""
    from conftest import REPO
    from stablebptt.experiments import sweep

    specs = REPO / "experiments" / "ladder" / "specs"
    jobs = sweep.expand(sweep.load_spec(specs / "cart-chain-quick.toml"))
    assert sorted({(c.problem_params["links"], c.mode) for c, _ in jobs}) == sorted(
        (n, m) for n in LINKS for m in "RMCS"
    )
    assert {s for _, s in jobs} == {0, 1} and len(jobs) == 6 * 4 * 2
    assert all(c.problem == "cart-chain" and c.epochs == 60 and c.n_train == 64 and c.data == "seeded" for c, _ in jobs)
    full = sweep.expand(sweep.load_spec(specs / "cart-chain.toml"))
    assert len(full) == 6 * 4 * 5 and all(c.epochs == 1000 and c.n_train == 256 for c, _ in full)


def test_animation_draws_the_links_as_a_chain(tmp_path):
    """The picture of a cart-chain rollout: link k starts at the tip of link k − 1, and the last
    tip is at x + L Σ_k (sin θ_k, cos θ_k); the frames render and write."""
    from stablebptt.analysis.animate import build_scene, frame_indices, render_frames, rollout, write_frames

    p = problems.get("cart-chain", links=3, steps=6)
    model = p.make_controller(jax.random.PRNGKey(0), zero_last=False)
    _, test = p.sample_data(0, 2, 2)
    xs, cs = rollout(p, model, test)
    scene = build_scene(p, xs, cs)
    scene.update(4)
    for i, panel in enumerate(scene.panels):
        lines = panel["view"].lines  # the ground, the 3 links, the force arrow
        assert len(lines) == 5
        links = [np.asarray(line.get_xydata()) for line in lines[1:4]]
        for a, b in zip(links, links[1:]):
            np.testing.assert_allclose(a[1], b[0])
        x, th = float(xs[4, i, 0, 0]), np.asarray(xs[4, i, 1:, 0], np.float64)
        np.testing.assert_allclose(links[-1][1], [x + np.sin(th).sum(), np.cos(th).sum()], rtol=1e-6, atol=1e-6)
    frames = render_frames(p, model, test, stride=2)
    assert len(frames) == len(frame_indices(p.horizon, 2)) and frames[0].std() > 0
    assert write_frames(frames, tmp_path / "chain.gif", fps=5).is_file()
