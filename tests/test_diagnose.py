"""Gradient diagnostics: closed forms on the linear system, agreement with the engine, the
verdict's rules, the Lyapunov estimate and the CLI."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import stablebptt as sb
from stablebptt import problems
from stablebptt.analysis import diagnose as D
from stablebptt.cli.app import app
from stablebptt.problems.linear import closed_form_fields


def _linear(a, b, T, x0, theta):
    p = problems.get("linear", a=a, b=b, steps=T, x0=x0, theta0=theta)
    return p, D.diagnose_problem(p, n=2)


@pytest.mark.slow
@pytest.mark.parametrize("a, b, T, x0, theta", [(1.1, 1.0, 4, 1.0, -1.6), (0.9, 0.5, 6, -2.0, 0.8)])
def test_linear_closed_forms(a, b, T, x0, theta):
    p, d = _linear(a, b, T, x0, theta)
    rho = a + b * theta
    xs = [x0 * rho**n for n in range(T + 1)]
    xT = xs[-1]
    # (a) adjoints: λ^R_n = x_T ρ^{T−n}, λ^M_n = x_T a^{T−n} (one state per sample, both rollouts equal)
    lam_R = np.array([abs(xT * rho ** (T - n)) for n in range(T + 1)])
    lam_M = np.array([abs(xT * a ** (T - n)) for n in range(T + 1)])
    assert d.adjoint_R.shape == (T + 1, 2)
    np.testing.assert_allclose(d.adjoint_R[:, 0], lam_R, rtol=1e-5)
    np.testing.assert_allclose(d.adjoint_M[:, 1], lam_M, rtol=1e-5)
    # (b) credit of step n: b x_n λ_{n+1}
    np.testing.assert_allclose(d.contrib_R, [abs(b * xs[n] * lam_R[n + 1]) for n in range(T)], rtol=1e-5)
    np.testing.assert_allclose(d.contrib_M, [abs(b * xs[n] * lam_M[n + 1]) for n in range(T)], rtol=1e-5)
    # (c) spectra and Lyapunov estimates
    np.testing.assert_allclose(d.sv_phys[:, 0], abs(a), rtol=1e-6)
    np.testing.assert_allclose(d.sv_closed[:, 0], abs(rho), rtol=1e-5)
    assert d.lyap_phys == pytest.approx(math.log(abs(a)), abs=1e-6)
    assert d.lyap_closed == pytest.approx(math.log(abs(rho)), abs=1e-5)
    # (d) the fields against the closed forms and the engine's own statistics
    G, M = closed_form_fields(a, b, T, x0, theta)
    assert d.norm_G == pytest.approx(abs(G), rel=1e-5)
    assert d.norm_M == pytest.approx(abs(M), rel=1e-5)
    model = p.make_controller(None)
    x0b = jnp.full((2, 1), x0, jnp.float32)
    _, _, info = sb.value_and_update(model, x0b, step=p.step, loss=p.loss, horizon=T, flow="M", diagnostics=True)
    assert d.cos_mg == pytest.approx(float(info["cos_mg"]), abs=1e-6)
    assert d.sign_agree == pytest.approx(float(info["sign_agree"]))
    assert d.loss == pytest.approx(0.5 * xT**2, rel=1e-5)


def test_stall_case_warns_that_c_may_stall():
    _, d = _linear(1.1, 1.0, 4, 1.0, -1.6)
    assert d.cos_mg == pytest.approx(-1.0) and d.sign_agree == 0.0
    v = d.verdict
    assert v.mode == "R" and v.clip == "none" and not v.flagged_horizons
    assert any("may stall" in w for w in v.warnings)


def test_verdict_flags_more_than_six_orders():
    # ρ = a + bθ = 50, T = 8: R's adjoint spans log10(50^8) ≈ 13.6 orders, M's only 8·log10(1.1)
    _, d = _linear(1.1, 1.0, 8, 1.0, 48.9)
    assert d.span("R") == pytest.approx(8 * math.log10(50), abs=1e-3)
    assert d.span("M") == pytest.approx(8 * math.log10(1.1), abs=1e-3)
    v = d.verdict
    assert v.mode == "C" and v.clip == "norm"
    # horizons k with 50^k > 1e6 are flagged: k ≥ 4 (50^3 = 1.25e5 is fine)
    assert v.flagged_horizons == [4, 5, 6, 7, 8] and v.max_safe_horizon == 3
    assert "> 6 orders" in d.text() and "mode C" in d.text()
    assert not any("may stall" in w for w in v.warnings)
    # at T = 3 nothing is flagged (5.1 orders), but the closed loop expands while the physics
    # is balanced: still C, for that reason
    _, d3 = _linear(1.1, 1.0, 3, 1.0, 48.9)
    assert d3.verdict.flagged_horizons == [] and d3.verdict.max_safe_horizon == 3
    assert d3.verdict.mode == "C" and any("closed loop expands" in r for r in d3.verdict.reasons)
    # a contracting closed loop (ρ = 0.5) over 4 steps is well conditioned: R, no clipping
    _, dw = _linear(1.1, 1.0, 4, 1.0, -0.6)
    assert dw.verdict.mode == "R" and dw.verdict.clip == "none" and dw.verdict.flagged_horizons == []
    assert any("well conditioned" in r for r in dw.verdict.reasons)


def _every_state_problem():
    """A small nonlinear 2-D system with an every-state loss and a control penalty."""
    from stablebptt.core.losses import TrajectoryLoss
    from stablebptt.problems import controllers as nets

    W = jnp.asarray([[0.3, -1.2], [0.8, 0.1]], jnp.float32)

    def step(x, c):
        return x + 0.2 * jnp.tanh(x) @ W + 0.5 * c

    loss = TrajectoryLoss(lambda x: jnp.mean(jnp.sum((x - 1.0) ** 2, -1)), on="every", control_weight=0.1)
    model = nets.MLP(jax.random.PRNGKey(3), 2, (2,), widths=(8,))
    x0 = jax.random.normal(jax.random.PRNGKey(4), (3, 2))
    return step, loss, 5, model, x0


@pytest.mark.slow
def test_contributions_sum_to_engine_fields_and_adjoint_matches_jax_grad():
    """Every-state loss with a control penalty and a final-state loss with a nonlinear
    controller (toy-field): Σ_n contributions == the engine's R and M fields, and
    λ^R_0 == B·∂L/∂x_0 per sample from jax.grad."""
    p = problems.get("toy-field")
    cases = [
        _every_state_problem(),
        (p.step, p.loss, p.horizon, p.make_controller(jax.random.PRNGKey(3)), jnp.asarray([[-0.3], [0.2], [0.5]])),
    ]
    for step, loss, T, model, x0 in cases:
        params, static = eqx.partition(model, eqx.is_inexact_array)
        out = D._build_measure(step, loss, T, static)(params, x0)
        for mode in ("R", "M"):
            _, f, _ = sb.value_and_update(model, x0, step=step, loss=loss, horizon=T, flow=mode)
            for u, v in zip(jax.tree_util.tree_leaves(out["fields"][mode]), jax.tree_util.tree_leaves(f)):
                np.testing.assert_allclose(u, v, rtol=2e-4, atol=1e-6 * float(jnp.max(jnp.abs(v))))
        gx = jax.grad(lambda x: sb.evaluate_loss(model, x, step=step, loss=loss, horizon=T))(x0)
        per = np.sqrt(np.sum(np.asarray(gx).reshape(3, -1) ** 2, 1)) * 3
        np.testing.assert_allclose(out["adjoint_R"][0], per, rtol=1e-4)
        # R and M really differ here (the controller feeds back)
        assert not np.allclose(out["adjoint_R"], out["adjoint_M"], rtol=1e-3)


@pytest.mark.slow
def test_zero_last_kernel_means_r_equals_m_and_is_reported():
    p = problems.get("cartpole", steps=10)
    d = D.diagnose_problem(p, n=2, zero_last=True)
    np.testing.assert_allclose(d.adjoint_R, d.adjoint_M, rtol=1e-6)
    np.testing.assert_allclose(d.sv_phys, d.sv_closed, rtol=1e-6)
    assert d.cos_mg == pytest.approx(1.0, abs=1e-6)
    assert any("K = ∂N/∂x = 0" in w for w in d.verdict.warnings)
    # the default (zero_last=False) controller does feed back: the closed loop differs
    d2 = D.diagnose_problem(p, n=2)
    assert not np.allclose(d2.sv_phys, d2.sv_closed) and not any("K = " in w for w in d2.verdict.warnings)


def test_lyapunov_estimate():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(12, 3, 3))
    prod = np.eye(3)
    for j in J:
        prod = j @ prod
    lam, spec = D.lyapunov(J)
    assert lam == pytest.approx(math.log(np.linalg.svd(prod, compute_uv=False)[0]) / 12, rel=1e-10)
    assert spec.sum() == pytest.approx(math.log(abs(np.linalg.det(prod))) / 12, rel=1e-10)
    # a product that overflows float64 (1e400) stays finite
    big = np.tile(np.diag([10.0, 0.1]), (400, 1, 1))
    lam, spec = D.lyapunov(big)
    assert lam == pytest.approx(math.log(10.0)) and spec == pytest.approx([math.log(10.0), math.log(0.1)])


def test_figure_and_save(tmp_path):
    _, d = _linear(1.1, 1.0, 8, 1.0, 48.9)
    fig = d.figure()
    assert len(fig.axes) == 4
    paths = d.save(tmp_path, "lin")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    import json

    blob = json.loads(paths["json"].read_text())
    assert blob["verdict"]["mode"] == "C" and len(blob["adjoint_R"]) == 9


def test_cli_diagnose(tmp_path):
    res = CliRunner().invoke(
        app,
        ["diagnose", "linear", "--param", "steps=8", "--param", "theta0=48.9", "--states", "2", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert "mode C" in res.output and (tmp_path / "linear.png").is_file()
    res = CliRunner().invoke(app, ["diagnose", "linear", "--param", "nope=1"])
    assert res.exit_code != 0 and "nope" in res.output


def test_adjoint_norms_do_not_overflow_float32():
    """Exploding adjoints are what the diagnosis measures: entries of 1e20-1e37, whose squares
    overflow float32, must still give finite, exact norms (float64 reference)."""
    rng = np.random.default_rng(0)
    big = {
        "a": jnp.asarray(rng.normal(size=(3, 2, 4)) * np.array([1e37, 1e20, 1.0])[:, None, None], jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3, 2)) * np.array([1e36, 1e19, 1.0])[:, None], jnp.float32),
    }
    zero = {"a": jnp.zeros((2, 2, 4), jnp.float32), "b": jnp.zeros((2, 2), jnp.float32)}
    a, b = (np.asarray(big[k], np.float64) for k in ("a", "b"))
    ref_sample = np.sqrt(np.sum(a**2, -1) + b**2)
    ref_step = np.sqrt(np.sum(a.reshape(3, -1) ** 2, -1) + np.sum(b**2, -1))
    np.testing.assert_allclose(np.asarray(D._sample_norms(big, 2)), ref_sample, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(D._step_norms(big)), ref_step, rtol=1e-5)
    assert np.all(np.asarray(D._sample_norms(zero, 2)) == 0.0) and np.all(np.asarray(D._step_norms(zero)) == 0.0)


def _shown_pixels(fig, artist):
    """Pixels that show ``artist``: they change when it is hidden and have its colour
    (composited over white with its alpha). A line drawn exactly under another has none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba

    def render():
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    base = render()
    artist.set_visible(False)
    hidden = render()
    artist.set_visible(True)
    rgba = np.asarray(to_rgba(artist.get_color() if hasattr(artist, "get_color") else artist.get_facecolor()))
    alpha = rgba[3] if artist.get_alpha() is None else artist.get_alpha()
    colour = 255 * (rgba[:3] * alpha + (1 - alpha))
    changed = np.abs(hidden - base).max(-1) > 10
    return int(np.sum(changed & (np.abs(base - colour).max(-1) < 50)))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["R = M", "R close to M", "R far from M"])
def test_figure_legend_lists_only_visible_lines(case):
    """Every legend entry of the diagnosis figure is a curve one can see; curves that
    coincide exactly are one entry that says so ("R = M")."""
    if case == "R far from M":
        _, d = _linear(1.1, 1.0, 8, 1.0, 48.9)
    else:  # cart-pole over 30 steps: R and M coincide for K = 0, nearly so for a random controller
        d = D.diagnose_problem(problems.get("cartpole", steps=30), n=2, zero_last=case == "R = M")
    fig = d.figure()
    entries = 0
    for ax in fig.axes:
        handles, labels = ax.get_legend_handles_labels()
        assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == len(labels)
        for h, label in zip(handles, labels):
            entries += 1
            assert _shown_pixels(fig, h) >= 30, f"{ax.get_title()}: legend entry {label!r} is not visible"
    a_labels = fig.axes[0].get_legend_handles_labels()[1]
    if case == "R = M":
        assert np.array_equal(d.adjoint_R, d.adjoint_M) or np.allclose(d.adjoint_R, d.adjoint_M, rtol=1e-6)
        assert len(a_labels) == 1 and a_labels[0].startswith("R = M")
    else:
        assert [lab[:2] for lab in a_labels[:2]] == ["R:", "M:"]
        # where R and M coincide (within 0.1 %), R's entry says so
        close = np.abs(np.median(d.adjoint_R, 1) - np.median(d.adjoint_M, 1)) <= 1e-3 * np.median(d.adjoint_R, 1)
        assert ("≈ M" in a_labels[0]) == (close.sum() >= max(2, math.ceil(0.1 * close.size)))
    assert entries >= 6


def test_a_simulator_that_returns_nan_is_named_not_an_svd_failure():
    """diagnose on a step that turns NaN at step 3 says so in one ValueError (it was "SVD did
    not converge")."""
    from stablebptt.problems.controllers import MLP

    def step(x, c):  # NaN from step 3 on: x_3 = x_2 · (0/0)
        k = x[:, 2:3] + 1.0
        x = jnp.concatenate([x[:, :2] + 0.1 * c, k], axis=1)
        return jnp.where(k >= 3.0, jnp.nan, x)

    model = MLP(jax.random.PRNGKey(0), in_size=3, control_shape=(2,), widths=(8,))
    x0 = jnp.zeros((2, 3))
    loss = sb.TrajectoryLoss(lambda x: jnp.mean(x**2), on="every")
    with pytest.raises(ValueError, match=r"simulator first produced a non-finite state at step 3 of 5"):
        D.diagnose(step, loss, 5, model, x0)
