"""Quantum control problem against the authors' reference arrays (qmc_32.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EPS32, assert_close, assert_leaves_global_rng_alone, rel_err
from conftest import fixed_control_loss as _trajectory_loss
from conftest import fixed_control_rollout as _rollout
from stablebptt import problems
from stablebptt.problems import quantum

N_ROLL = 20


@pytest.fixture(scope="module")
def prob():
    return quantum.make()


@pytest.fixture(scope="module")
def ref(fixture):
    return fixture("qmc_32")


# ---------------------------------------------------------------- reference arrays
#: both solvers of the step against the authors' arrays (64 samples): LAPACK's gtsv and the
#: vectorised Thomas algorithm (the problem's ``solver`` parameter)
@pytest.fixture(params=["lapack", "thomas"])
def solver(request):
    return request.param


@pytest.fixture
def sprob(solver):
    return quantum.make(solver=solver)


def _assert_solver_ran(fn, args, solver):
    prims = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
    assert ("tridiagonal_solve" in prims) == (solver == "lapack"), prims


def test_eigenstates(ref):
    es = np.stack([quantum.eigenstate(n, 32) for n in range(1, 6)])
    assert es.dtype == np.float32 and es.shape == (5, 32)
    assert rel_err(es, ref["eigenstates_1to5"]) <= 1e-6
    # the convention: unit sum of squares, no dx factor; orthonormal
    np.testing.assert_allclose(es @ es.T, np.eye(5), atol=1e-6)


def test_one_step(sprob, ref, solver):
    prob = sprob
    _assert_solver_ran(prob.step, (ref["state0"], ref["control"]), solver)
    s1 = jax.jit(lambda s, c: prob.step(s, c))(ref["state0"], ref["control"])
    assert s1.shape == (64, 32, 2) and s1.dtype == jnp.float32
    assert rel_err(s1, ref["state1"]) <= 1e-5


def test_rollout_and_losses(sprob, ref, solver):
    prob = sprob
    xs = jax.jit(lambda s, c: _rollout(prob.step, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert xs.shape == ref["rollout"].shape
    assert rel_err(xs, ref["rollout"]) <= 1e-4
    sl = prob.loss.state_loss
    assert rel_err(sl(xs[:, 1]), ref["ip_loss_state1"]) <= 1e-4
    assert rel_err(sl(xs[:, -1]), ref["ip_loss_rollout_final"]) <= 1e-4
    cont = jax.jit(lambda s, c: _trajectory_loss(prob, s, c, N_ROLL))(ref["state0"], ref["control"])
    assert rel_err(cont, ref["ip_loss_rollout_continuous"]) <= 1e-4
    # the loss is a sum over time (range 0 … T), not a mean
    assert prob.loss.on == "every" and prob.loss.time_reduce == "sum"
    assert float(cont) > 19.0


def test_gradients(sprob, ref, solver):
    loss = lambda s, c: _trajectory_loss(sprob, s, c, N_ROLL)
    _assert_solver_ran(jax.grad(loss, argnums=(0, 1)), (ref["state0"], ref["control"]), solver)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    g_state0, g_control = grad(ref["state0"], ref["control"])
    assert g_state0.shape == (64, 32, 2) and g_control.shape == (64, 1)
    assert rel_err(g_state0, ref["grad_state0"]) <= 1e-4
    assert rel_err(g_control, ref["grad_control"]) <= 1e-4


def test_paper_data(prob, ref):
    train, test = prob.sample_data("paper", 256, 256)
    assert train.shape == (256, 32, 2) and test.shape == (256, 32, 2)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert rel_err(train[:16], ref["data_seed42_train16"]) <= 1e-6
    assert rel_err(test[:16], ref["data_seed42_test16"]) <= 1e-6
    assert_leaves_global_rng_alone(prob.sample_data)


def test_int_seed_data():
    p = quantum.make(weighting=15)
    tr, te = p.sample_data(3, 10, 6)
    tr2, _ = p.sample_data(3, 10, 6)
    assert tr.shape == (10, 32, 2) and te.shape == (6, 32, 2) and tr.dtype == np.float32
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(tr, p.sample_data(4, 10, 6)[0])
    np.testing.assert_allclose(np.sum(tr**2, (1, 2)), 1.0, atol=1e-5)
    # states lie in span(ψ1, ψ2); weighting 15 makes ψ1 dominate on average
    z = tr[..., 0] + 1j * tr[..., 1]
    es = np.stack([quantum.eigenstate(n, 32) for n in (1, 2, 3)])
    w = np.abs(z @ es.T) ** 2
    np.testing.assert_allclose(w[:, 0] + w[:, 1], 1.0, atol=1e-5)
    assert np.max(w[:, 2]) < 1e-10
    assert np.mean(w[:, 0]) > 0.8
    with pytest.raises(ValueError, match="seed"):
        p.sample_data("other", 2, 2)


# ---------------------------------------------------------------- physics properties
def test_norm_preserved_128_steps(prob):
    train, _ = prob.sample_data("paper", 128, 0)
    controls = np.random.default_rng(0).normal(0.0, 5.0, (128, 128, 1)).astype(np.float32)

    def body(s, c):
        s = prob.step(s, c)
        return s, jnp.sqrt(jnp.sum(s**2, (-1, -2)))

    _, norms = jax.jit(lambda s: jax.lax.scan(body, s, controls))(train)
    assert norms.shape == (128, 128)
    assert float(jnp.max(jnp.abs(norms - 1.0))) <= 1e-5


def test_zero_control_loss_is_horizon(prob):
    _, test = prob.sample_data("paper", 256, 256)
    u = jnp.zeros((256, 1), jnp.float32)

    def body(s, _):
        s = prob.step(s, u)
        return s, prob.loss.state_loss(s)

    _, per_step = jax.jit(lambda s: jax.lax.scan(body, s, None, length=prob.horizon))(test)
    assert prob.horizon == 128
    assert abs(float(jnp.sum(per_step)) - 128.0) <= 1e-4


def test_free_evolution_of_eigenstate():
    """With u = 0, ψ_n only picks up the discrete CN phase; the target overlap stays 1."""
    p = quantum.make(nx=16, dt=0.05, steps=4, target=2)
    es = quantum.eigenstate(2, 16)
    s0 = np.stack([es, np.zeros_like(es)], -1)[None]
    s1 = np.asarray(p.step(s0, np.zeros((1, 1), np.float32)))
    dx = 2.0 / 17
    lam = (2 - 2 * np.cos(2 * np.pi / 17)) / dx**2  # eigenvalue of −Δ_h
    phase = (1 - 0.5j * 0.05 * lam) / (1 + 0.5j * 0.05 * lam)
    np.testing.assert_allclose(s1[0, :, 0] + 1j * s1[0, :, 1], phase * es, atol=2e-6)
    assert abs(float(p.loss.state_loss(s1))) < 1e-5


def _primitives(jaxpr) -> set:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def test_step_is_tridiagonal_solve(prob):
    psi = jnp.zeros((4, 32, 2), jnp.float32)
    u = jnp.zeros((4, 1), jnp.float32)
    for fn in (prob.step, jax.jit(prob.step)):
        prims = _primitives(jax.make_jaxpr(fn)(psi, u).jaxpr)
        assert "tridiagonal_solve" in prims
        assert not prims & {"lu", "triangular_solve", "lu_pivots_to_permutation"}, prims
        assert "dot_general" not in prims  # no dense (nx, nx) matrix products either
    # also under differentiation
    grad_prims = _primitives(
        jax.make_jaxpr(jax.grad(lambda s, c: jnp.sum(prob.step(s, c) ** 2 * s), (0, 1)))(psi, u).jaxpr
    )
    assert "tridiagonal_solve" in grad_prims and "lu" not in grad_prims


def test_step_rejects_bad_control_shape(prob):
    psi = jnp.zeros((32, 32, 2), jnp.float32)
    with pytest.raises(ValueError, match="control shape"):
        prob.step(psi, jnp.zeros((32,), jnp.float32))


# ---------------------------------------------------------------- problem object
def test_problem_contract(prob):
    assert prob.name == "quantum"
    assert dict(prob.params) == dict(nx=32, dt=0.0625, steps=128, target=3, weighting=1, solver="auto")
    assert prob.state_shape == (32, 2) and prob.control_shape == (1,)
    assert prob.zero_last_default is False
    assert dict(prob.defaults) == dict(epochs=1000, lr=1e-3, batch_size=8, n_train=256, n_test=256)
    assert set(quantum.PARAMS) == {"nx", "dt", "steps", "target", "weighting", "solver"}
    assert {k: v[0] for k, v in quantum.PARAMS.items()} == dict(prob.params)
    net = prob.make_controller(jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(net) if hasattr(x, "size"))
    assert n_params == 11_701
    u = net(jnp.zeros((5, 32, 2), jnp.float32))
    assert u.shape == (5, 1)
    p2 = problems.get("quantum", target=5, steps=7)
    assert p2.horizon == 7 and p2.params["target"] == 5


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(nx=2), "nx"),
        (dict(nx=32.0), "nx"),
        (dict(dt=0.0), "dt"),
        (dict(dt=-1.0), "dt"),
        (dict(dt=float("nan")), "dt"),
        (dict(steps=0), "steps"),
        (dict(target=0), "target"),
        (dict(target=33), "target"),
        (dict(nx=8, target=9), "target"),
        (dict(weighting=2), "weighting"),
        (dict(weighting=True), "weighting"),
        (dict(solver="cholesky"), "solver="),
    ],
)
def test_invalid_params(kw, word):
    with pytest.raises(ValueError, match=word):
        quantum.make(**kw)


def test_unknown_param_via_registry():
    with pytest.raises(ValueError, match="no parameter"):
        problems.get("quantum", Nx=32)


# ---------------------------------------------------------------- the tridiagonal solve
def _random_systems(seed, shape, n):
    """Diagonally dominant complex tridiagonal systems (dl[..., 0] = du[..., -1] = 0)."""
    r = np.random.default_rng(seed)
    c = lambda *s: (r.normal(size=s) + 1j * r.normal(size=s)).astype(np.complex64)
    dl, du = c(*shape, n) * 0.3, c(*shape, n) * 0.3
    dl[..., 0] = 0
    du[..., -1] = 0
    d = c(*shape, n) * 0.2 + 2.0
    return [jnp.asarray(a) for a in (dl, d, du, c(*shape, n))]


def _primitive_solve(dl, d, du, b):
    return jax.lax.linalg.tridiagonal_solve(dl, d, du, b[..., None])[..., 0]


@pytest.mark.slow
def test_solve_tridiagonal_values_and_derivatives_match_the_primitive(solver):
    solve_tridiagonal = lambda *a: quantum.solve_tridiagonal(*a, method=solver)
    dl, d, du, b = _random_systems(0, (3,), 7)
    A = np.zeros((3, 7, 7), np.complex64)
    for k in range(3):
        A[k] = np.diag(np.asarray(d[k])) + np.diag(np.asarray(dl[k, 1:]), -1) + np.diag(np.asarray(du[k, :-1]), 1)
    x = solve_tridiagonal(dl, d, du, b)
    assert_close(np.asarray(x), np.linalg.solve(A, np.asarray(b)[..., None])[..., 0], 64 * EPS32, "solve")
    if solver == "lapack":  # the same calls: the same numbers
        np.testing.assert_array_equal(np.asarray(x), np.asarray(_primitive_solve(dl, d, du, b)))
    else:
        assert_close(np.asarray(x), np.asarray(_primitive_solve(dl, d, du, b)), 64 * EPS32, "thomas vs primitive")
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7)), jnp.float32)

    def scalar(solve):  # a real loss of the complex solution, as in the quantum step
        return lambda *a: jnp.sum(w * jnp.real(solve(*a)) - 0.5 * w * jnp.imag(solve(*a)) ** 2)

    g_new = jax.grad(scalar(solve_tridiagonal), argnums=(0, 1, 2, 3))(dl, d, du, b)
    g_ref = jax.grad(scalar(_primitive_solve), argnums=(0, 1, 2, 3))(dl, d, du, b)
    for gn, gr, name in zip(g_new, g_ref, ("dl", "d", "du", "b")):
        mask = np.ones(gn.shape, bool)
        if name == "dl":
            mask[..., 0] = False  # entries outside the matrix: their gradient is meaningless
        if name == "du":
            mask[..., -1] = False
        assert_close(np.asarray(gn)[mask], np.asarray(gr)[mask], 128 * EPS32, name)
    # forward mode (the diagnosis uses jax.jacfwd on the simulator step)
    t0 = jnp.zeros(d.shape, jnp.float32)  # a real shift of the diagonal (like the control's potential)
    jf_new = jax.jacfwd(lambda t: jnp.imag(solve_tridiagonal(dl, d + 1j * t, du, b)))(t0)
    jf_ref = jax.jacfwd(lambda t: jnp.imag(_primitive_solve(dl, d + 1j * t, du, b)))(t0)
    assert_close(np.asarray(jf_new), np.asarray(jf_ref), 128 * EPS32, "forward mode")
    # finite differences on one diagonal entry (an independent reference)
    f = scalar(solve_tridiagonal)
    eps = 1e-2
    e = jnp.zeros_like(d).at[1, 3].set(eps)
    fd = (f(dl, d + e, du, b) - f(dl, d - e, du, b)) / (2 * eps)
    assert float(fd) == pytest.approx(float(jnp.real(g_new[1][1, 3])), rel=2e-2)


@pytest.mark.parametrize("fold", [False, True])
def test_solve_tridiagonal_keeps_one_column_under_vmap(fold):
    """vmapping b alone (C's two fields over one trajectory) must not fold b into extra
    columns on a GPU, where several columns make the solver loop over the systems on the
    host (fold=False, the accelerator default); on the CPU folding is cheaper (fold=True, the
    CPU default). Same values either way."""
    dl, d, du, _ = _random_systems(2, (4,), 6)
    bs = _random_systems(3, (2, 4), 6)[3]  # two right-hand sides per system, batched on axis 0
    solve = lambda dl_, d_, du_, b_: quantum.solve_tridiagonal(dl_, d_, du_, b_, method="lapack", fold=fold)
    ref = jnp.stack([_primitive_solve(dl, d, du, bs[i]) for i in range(2)])
    solve_many = jax.vmap(solve, in_axes=(None, None, None, 0))
    assert_close(np.asarray(solve_many(dl, d, du, bs)), np.asarray(ref), 16 * EPS32, "vmapped solve")
    # vjp over stacked cotangents (the reverse sweep's vmap over fields)
    _, vjp = jax.vjp(lambda bb: solve(dl, d, du, bb), bs[0])
    vjp_many = jax.vmap(lambda ct: vjp(ct)[0])
    _, vjp_ref = jax.vjp(lambda bb: _primitive_solve(dl, d, du, bb), bs[0])
    np.testing.assert_allclose(
        np.asarray(vjp_many(bs)), np.asarray(jnp.stack([vjp_ref(bs[i])[0] for i in range(2)])), rtol=1e-5, atol=1e-6
    )
    texts = [jax.jit(solve_many).lower(dl, d, du, bs).as_text(), jax.jit(vjp_many).lower(bs).as_text()]
    for txt in texts:
        shapes = _solve_rhs_shapes(txt)
        assert shapes and all(s.endswith("x2" if fold else "x1") for s in shapes), shapes


def _solve_rhs_shapes(hlo_text: str) -> list[str]:
    """Dimensions of the right-hand side operand (the 4th) of every tridiagonal-solve custom
    call in a lowered program, e.g. "5x8x32x1" (CPU: lapack_*gtsv*, GPU: *sparse_gtsv2*)."""
    import re

    out = []
    for line in hlo_text.splitlines():
        if re.search(r"custom_call @\w*gtsv", line):
            signature = line.rsplit("} : (", 1)[1].split(") ->")[0]
            operands = re.findall(r"tensor<((?:[^<>]|<[^<>]*>)*)>", signature)
            out.append(re.match(r"(?:\d+x)*", operands[3]).group(0).rstrip("x"))
    return out


@pytest.mark.slow
def test_combined_mode_with_vmapped_seeds_solves_one_column_per_system():
    """The whole C update of the quantum problem, 2 seeds vmapped, with the step as built for a
    GPU (fold=False): every solve in the traced program (forward and both fields' reverse
    sweeps) has a single right-hand side column."""
    import dataclasses

    import equinox as eqx

    import stablebptt as sb

    p = problems.get("quantum", steps=4, solver="lapack")
    p = dataclasses.replace(p, step=quantum._build_step(32, p.params["dt"], "lapack", fold=False))
    models = [p.make_controller(jax.random.PRNGKey(s), zero_last=False) for s in range(2)]
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[eqx.filter(m, eqx.is_inexact_array) for m in models])
    static = eqx.partition(models[0], eqx.is_inexact_array)[1]
    x0 = jnp.asarray(p.sample_data(0, 4, 4)[0])

    def update(pp):
        return sb.value_and_update(
            eqx.combine(pp, static), x0, step=p.step, loss=p.loss, horizon=4, flow="C", validate=False
        )[1]

    shapes = _solve_rhs_shapes(jax.jit(jax.vmap(update)).lower(params).as_text())
    assert len(shapes) >= 2 and all(s.endswith("x1") for s in shapes), shapes


def test_thomas_solve_matches_dense_solves_with_shared_or_per_system_diagonals():
    dl, d, du, b = _random_systems(4, (5,), 9)
    A = np.zeros((5, 9, 9), np.complex64)
    for k in range(5):
        A[k] = np.diag(np.asarray(d[k])) + np.diag(np.asarray(dl[k, 1:]), -1) + np.diag(np.asarray(du[k, :-1]), 1)
    dense = np.linalg.solve(A.astype(np.complex128), np.asarray(b, np.complex128)[..., None])[..., 0]
    x = quantum.thomas_solve(dl, d, du, b)
    assert x.shape == b.shape and x.dtype == jnp.complex64
    assert_close(np.asarray(x), dense, 64 * EPS32, "thomas vs dense")
    # diagonals shared by all right-hand sides (broadcast), as in the Crank–Nicolson step
    bs = _random_systems(5, (3, 5), 9)[3]
    shared = quantum.thomas_solve(dl[0], d[0], du[0], bs)
    ref = np.linalg.solve(A[0].astype(np.complex128), np.asarray(bs, np.complex128).reshape(-1, 9).T).T
    assert_close(np.asarray(shared).reshape(-1, 9), ref, 64 * EPS32, "shared diagonals")


def _crank_nicolson_float64(psi, u, n_steps, nx=quantum.PARAMS["nx"][0], dt=quantum.PARAMS["dt"][0]):
    """An independent reference in complex128 arithmetic: the same Crank–Nicolson step with
    dense matrices, (I + i dt/2 H) ψ' = (I − i dt/2 H) ψ, H = −Δ_h + u·diag(x), built from the
    step's float32 / complex64 constants (so that only the arithmetic differs, not the model)."""
    dx = 2.0 / (nx + 1)
    x = (np.arange(1, nx + 1, dtype=np.float64) * dx).astype(np.float32)
    r = dt / dx**2
    c64 = lambda v: np.complex128(np.complex64(v))
    ux = (np.asarray(u, np.float32) * x).astype(np.float64)  # (B, nx), as the step forms it
    pot = c64(0.5j * dt) * ux
    eye, off = np.eye(nx), np.eye(nx, k=1) + np.eye(nx, k=-1)
    lhs = c64(1.0 + 1.0j * r) * eye + c64(-0.5j * r) * off + pot[:, :, None] * eye
    rhs = c64(1.0 - 1.0j * r) * eye + c64(0.5j * r) * off - pot[:, :, None] * eye
    z = np.asarray(psi, np.float64)[..., 0] + 1j * np.asarray(psi, np.float64)[..., 1]
    for _ in range(n_steps):
        z = np.linalg.solve(lhs, (rhs @ z[..., None]))[..., 0]
    return np.stack([z.real, z.imag], -1)


def test_crank_nicolson_step_by_thomas_is_as_accurate_as_lapack(prob):
    """The CPU's automatic solver choice by system count: 256 samples (the evaluation's chunk)
    use Thomas, 8 (a training batch) LAPACK. Over 128 steps from the paper data, with strong
    controls, both are as far from a float64 dense reference as float32 round-off makes them."""
    train, _ = prob.sample_data("paper", 256, 8)
    u = jnp.asarray(np.random.default_rng(0).normal(size=(256, 1)) * 5, jnp.float32)
    _assert_solver_ran(prob.step, (train, u), "thomas")
    _assert_solver_ran(prob.step, (train[:8], u[:8]), "lapack")
    lapack = quantum.make(solver="lapack")
    _assert_solver_ran(lapack.step, (train, u), "lapack")
    by_thomas = jax.jit(lambda s, c: _rollout(prob.step, s, c, 128)[:, -1])(jnp.asarray(train), u)
    by_lapack = jax.jit(lambda s, c: _rollout(lapack.step, s, c, 128)[:, -1])(jnp.asarray(train), u)
    exact = _crank_nicolson_float64(train, u, 128)
    err_thomas, err_lapack = rel_err(by_thomas, exact), rel_err(by_lapack, exact)
    assert err_lapack <= 1e-4, err_lapack
    assert err_thomas <= 2 * err_lapack, (err_thomas, err_lapack)
