r"""Quantum control: steer a particle in a box into an excited eigenstate.

Physics (dimensionless units, ħ = 2m = 1)
-----------------------------------------
The 1-D Schrödinger equation with a controlled linear potential (a uniform field of strength
u(t))::

    i ∂t ψ = H ψ,    H = −∂x² + u(t)·x,    x ∈ [0, 2],    ψ(0) = ψ(2) = 0  (hard walls).

Discretisation: ``nx`` interior points x_j = j·dx, j = 1 … nx, dx = 2/(nx + 1) (the walls
x_0 = 0 and x_{nx+1} = 2 are not stored; ψ is 0 there). ``Δ_h`` is the 3-point Laplacian
(ψ_{j−1} − 2ψ_j + ψ_{j+1})/dx² with the Dirichlet walls, so H_h = −Δ_h + u·diag(x_j) is a real
symmetric tridiagonal matrix. One step of length ``dt`` is Crank–Nicolson::

    (I + i dt/2 H_h) ψ' = (I − i dt/2 H_h) ψ,

a complex tridiagonal system per sample, solved with ``jax.lax.linalg.tridiagonal_solve``
(O(nx) per sample, never a dense solve; :func:`solve_tridiagonal` keeps one right-hand side
per system under vmap, which GPUs need), or on the CPU for many samples at once (the
evaluation) with the vectorised :func:`thomas_solve`. The Cayley map is unitary, so ‖ψ‖ is conserved up to
float32/complex64 round-off (about 1e-6 after 128 steps). The control u is held constant during
a step; it is one scalar per sample, shape (B, 1).

State layout and normalisation
------------------------------
A batch of states is a float32 array (B, nx, 2) holding (Re ψ_j, Im ψ_j). States are
normalised as Σ_j |ψ_j|² = 1 (a plain sum over grid points, **no** dx factor), like the
authors' code. Eigenstates of −Δ_h are ψ_n(j) ∝ sin(nπ j/(nx + 1)), n = 1 … nx, normalised the
same way (see :func:`eigenstate`).

Loss
----
For every step k = 1 … T (T = ``steps``) the infidelity 1 − |⟨ψ_target, ψ_k⟩|², summed over
time and averaged over the batch: range 0 … T. Initial states are superpositions of ψ_1 and
ψ_2, which have no overlap with the default target ψ_3, so an untrained zero control scores
exactly T.

Target index convention
-----------------------
``target`` is the authors' 1-based eigenstate index (``TS`` in their scripts): 1 is the
ground state. The paper's experiments use targets 3, 4, 5; their plot titles call these
2, 3, 4 because they count the ground state as 0.

Data
----
Initial states (c1 e^{iφ1} ψ_1 + c2 e^{iφ2} ψ_2)/√(c1² + c2²) with c ~ N(0, 1) and
φ ~ U[0, 2π); ``weighting`` w ∈ {1, 3, 7, 15} multiplies c1 (the authors' '1-1', '3-1', '7-1',
'15-1'). ``sample_data("paper", n_train, n_test)`` reproduces the authors' NumPy legacy
seed-42 draw order (c1, c2, φ1, φ2 for all N = n_train + n_test states, each cast to float32;
train = the first n_train) and their complex64 arithmetic.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.losses import TrajectoryLoss
from . import controllers
from .base import Problem

PARAMS: dict[str, tuple[Any, str]] = {
    "nx": (32, "number of interior grid points on [0, 2] (dx = 2/(nx+1))"),
    "dt": (0.0625, "time step of the Crank–Nicolson scheme"),
    "steps": (128, "simulator steps per trajectory (horizon T)"),
    "target": (3, "target eigenstate, 1-based (1 = ground state; paper: 3, 4, 5)"),
    "weighting": (1, "factor on c1 in the initial-state draw: 1, 3, 7 or 15"),
    "solver": ("auto", "tridiagonal solver: auto (Thomas for large batches on the CPU), lapack or thomas"),
}

_WEIGHTINGS = (1, 3, 7, 15)


# ---------------------------------------------------------------- eigenstates
def eigenstate(n: int, nx: int) -> np.ndarray:
    """Eigenstate ψ_n of the discrete box, shape (nx,), float32, Σ_j ψ_n(j)² = 1.

    ψ_n(j) = sin(nπ j/(nx+1)) / norm, j = 1 … nx. Evaluated with the authors' complex64
    arithmetic (the sine on the grid j = 0 … nx+1, normalised over all nx+2 points, the walls
    then dropped) so that data sets match theirs bit for bit.
    """
    points = np.arange(nx + 2, dtype=np.complex64)
    k_n = np.complex64(np.pi * n / (nx + 1))
    wave = np.sin(k_n * points)
    prob = np.abs(wave) ** 2
    wave = wave / np.sum(prob) ** 0.5
    return np.real(wave[1:-1]).astype(np.float32)


# ---------------------------------------------------------------- tridiagonal solve
#: how the tridiagonal systems are solved: "lapack" — ``jax.lax.linalg.tridiagonal_solve``
#: (LAPACK's gtsv on the CPU, one call per system; cuSPARSE on GPUs), "thomas" —
#: :func:`thomas_solve` vectorised over the systems, "auto" — Thomas on the CPU from
#: :data:`THOMAS_MIN_SYSTEMS` systems per solve on (evaluations), else the primitive
SOLVERS = ("auto", "lapack", "thomas")
THOMAS_MIN_SYSTEMS = 32


def thomas_solve(dl, d, du, b):
    """The Thomas algorithm for a batch of tridiagonal systems, vectorised over the systems (two
    ``lax.scan``s over the n unknowns: elimination, back substitution): dl, d, du, b (..., n)
    broadcastable, dl[..., 0] = du[..., -1] = 0 -> x (..., n).

    No pivoting. That is stable for the Crank–Nicolson matrix I + i·dt/2·H_h (H_h real
    symmetric): its Hermitian part is I, positive definite, and Gaussian elimination without
    pivoting is stable for such matrices. As accurate as LAPACK's pivoting ``gtsv`` on the
    quantum problem (tested: 128 steps of both against a complex128 reference).
    """
    shape = jnp.broadcast_shapes(dl.shape, d.shape, du.shape, b.shape)
    lower, diag, upper, rhs = (jnp.moveaxis(jnp.broadcast_to(a, shape), -1, 0) for a in (dl, d, du, b))

    def eliminate(carry, row):
        c_prev, d_prev = carry
        lo, di, up, r = row
        den = di - lo * c_prev
        c, dd = up / den, (r - lo * d_prev) / den
        return (c, dd), (c, dd)

    zero = jnp.zeros(shape[:-1], jnp.result_type(*[a.dtype for a in (dl, d, du, b)]))
    _, (c_prime, d_prime) = jax.lax.scan(eliminate, (zero, zero), (lower, diag, upper, rhs))

    def substitute(x_next, row):
        c, dd = row
        x = dd - c * x_next
        return x, x

    _, x = jax.lax.scan(substitute, zero, (c_prime, d_prime), reverse=True)
    return jnp.moveaxis(x, 0, -1)


def _uses_thomas(method: str, d, b) -> bool:
    systems = int(np.prod(jnp.broadcast_shapes(d.shape, b.shape)[:-1]))
    return method == "thomas" or (method == "auto" and systems >= THOMAS_MIN_SYSTEMS and jax.default_backend() == "cpu")


@functools.cache
def _column_solver(method: str, fold: bool):
    """``solve(dl, d, du, b)`` for one right-hand side per system, b (..., n) -> x (..., n),
    with a vmap rule: a right-hand side vmapped over shared diagonals (C's two fields over one
    trajectory) is folded into extra columns of one solve when ``fold`` (the primitive's own
    rule; cheapest on the CPU), else the diagonals are broadcast so that every system keeps
    one column (GPUs: several columns make cuSPARSE loop over the systems on the host)."""

    def solve(dl, d, du, b):
        if _uses_thomas(method, d, b):
            return thomas_solve(dl, d, du, b)
        return jax.lax.linalg.tridiagonal_solve(dl, d, du, b[..., None])[..., 0]

    one = jax.custom_batching.custom_vmap(solve)

    @one.def_vmap
    def _vmap(axis_size, in_batched, dl, d, du, b):
        if fold and not any(in_batched[:3]):
            return jax.vmap(solve, in_axes=(None, None, None, 0))(dl, d, du, b), True
        full = [a if bat else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, bat in zip((dl, d, du, b), in_batched)]
        return one(*full), True

    return one


def _tridiagonal_matvec(dl, d, du, v):
    """A v for the tridiagonal A with diagonals (dl, d, du) (dl[..., 0] and du[..., -1] unused)."""
    zero = jnp.zeros_like(v[..., :1])
    below = jnp.concatenate([zero, v[..., :-1]], -1)  # v_{i-1}
    above = jnp.concatenate([v[..., 1:], zero], -1)  # v_{i+1}
    return d * v + dl * below + du * above  # the order of jax's own tridiagonal product


def solve_tridiagonal(dl, d, du, b, *, method: str = "auto", fold: bool | None = None):
    """x with A x = b for a batch of tridiagonal systems; dl, d, du, b (..., n), dl[..., 0] =
    du[..., -1] = 0, real or complex.

    ``method``: one of :data:`SOLVERS`. ``fold``: how a vmapped right-hand side is solved
    (:func:`_column_solver`; default: folded on the CPU, one column per system elsewhere).
    Derivatives from ``lax.custom_linear_solve`` (x' = A⁻¹(b' − A' x), transposed through Aᵀ's
    solve), so that every solve, forward and backward, goes through the same solver.
    """
    if method not in SOLVERS:
        raise ValueError(f"solver={method!r}; allowed: {', '.join(SOLVERS)}")
    one = _column_solver(method, jax.default_backend() == "cpu" if fold is None else bool(fold))
    zero = jnp.zeros_like(d[..., :1])
    dl_t = jnp.concatenate([zero, du[..., :-1]], -1)  # Aᵀ's sub-diagonal: A[i-1, i]
    du_t = jnp.concatenate([dl[..., 1:], zero], -1)  # Aᵀ's super-diagonal: A[i+1, i]
    return jax.lax.custom_linear_solve(
        lambda v: _tridiagonal_matvec(dl, d, du, v),
        b,
        solve=lambda _, r: one(dl, d, du, r),
        transpose_solve=lambda _, r: one(dl_t, d, du_t, r),
    )


# ---------------------------------------------------------------- simulator
def _build_step(nx: int, dt: float, solver: str = "auto", fold: bool | None = None):
    dx = 2.0 / (nx + 1)
    x = jnp.asarray((np.arange(1, nx + 1, dtype=np.float64) * dx).astype(np.float32))
    r = dt / dx**2
    # (I ± i dt/2 H_h) without the potential: diagonal 1 ± i r, off-diagonals ∓ i r/2.
    d_lhs0 = np.complex64(1.0 + 1.0j * r)
    d_rhs0 = np.complex64(1.0 - 1.0j * r)
    off_lhs = np.complex64(-0.5j * r)
    off_rhs = np.complex64(0.5j * r)
    half_idt = np.complex64(0.5j * dt)

    def step(psi: jax.Array, u: jax.Array) -> jax.Array:
        """One Crank–Nicolson step: psi (..., nx, 2) float32, u (..., 1) float32 -> psi'."""
        psi = jnp.asarray(psi, jnp.float32)
        u = jnp.asarray(u, jnp.float32)
        if psi.shape[-2:] != (nx, 2):
            raise ValueError(f"quantum step: state shape {psi.shape}; expected (B, {nx}, 2)")
        if u.shape != psi.shape[:-2] + (1,):
            raise ValueError(
                f"quantum step: control shape {u.shape}; expected {psi.shape[:-2] + (1,)} "
                "(one scalar per sample, trailing axis of size 1)"
            )
        z = jax.lax.complex(psi[..., 0], psi[..., 1])  # (..., nx) complex64
        pot = half_idt * (u * x).astype(jnp.complex64)  # i dt/2 · u x_j
        # right-hand side (I − i dt/2 H_h) ψ, tridiagonal mat-vec with zero walls
        zero = jnp.zeros_like(z[..., :1])
        neighbours = jnp.concatenate([zero, z[..., :-1]], -1) + jnp.concatenate([z[..., 1:], zero], -1)
        rhs = (d_rhs0 - pot) * z + off_rhs * neighbours
        # left-hand side (I + i dt/2 H_h) as three diagonals (dl[0] = du[-1] = 0)
        d = d_lhs0 + pot
        inner = jnp.full(d.shape[:-1] + (nx - 1,), off_lhs, jnp.complex64)
        zc = jnp.zeros(d.shape[:-1] + (1,), jnp.complex64)
        dl = jnp.concatenate([zc, inner], -1)
        du = jnp.concatenate([inner, zc], -1)
        out = solve_tridiagonal(dl, d, du, rhs, method=solver, fold=fold)
        return jnp.stack([jnp.real(out), jnp.imag(out)], -1).astype(jnp.float32)

    return step


def _build_state_loss(target_vec: np.ndarray):
    t = jnp.asarray(target_vec, jnp.float32)

    def state_loss(psi: jax.Array) -> jax.Array:
        """mean over the batch of 1 − |⟨ψ_target, ψ⟩|² (ψ_target is real)."""
        re = jnp.sum(psi[..., 0] * t, -1)
        im = jnp.sum(psi[..., 1] * t, -1)
        return jnp.mean(1.0 - (re * re + im * im))

    return state_loss


# ---------------------------------------------------------------- data
def _superpositions(c1, c2, p1, p2, nx: int) -> np.ndarray:
    """The authors' formula in their float32/complex64 arithmetic; (N, nx, 2) float32."""
    es1 = eigenstate(1, nx).astype(np.complex64).reshape(1, -1)
    es2 = eigenstate(2, nx).astype(np.complex64).reshape(1, -1)
    norm = np.sqrt(c1**2 + c2**2)
    f1 = c1 * np.exp(np.complex64(1j) * p1) / norm
    f2 = c2 * np.exp(np.complex64(1j) * p2) / norm
    states = f1 * es1 + f2 * es2  # (N, 1) x (1, nx): the outer products of their tensordot
    return np.stack([states.real, states.imag], -1).astype(np.float32)


def _build_sample_data(nx: int, weighting: int):
    def sample_data(seed, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, test)`` initial states, float32 (n, nx, 2).

        ``seed="paper"``: NumPy legacy ``seed(42)`` stream, draw order c1, c2, φ1, φ2 for all
        N = n_train + n_test states (the authors use N = 512; train = the first half).
        An int seed uses ``np.random.default_rng(seed)`` with the same distributions.
        """
        n_train, n_test = int(n_train), int(n_test)
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train={n_train}, n_test={n_test}; both must be ≥ 0")
        n = n_train + n_test
        rng: np.random.RandomState | np.random.Generator
        if isinstance(seed, str):
            if seed != "paper":
                raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
            rng = np.random.RandomState(42)  # same stream as np.random.seed(42)
        elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            rng = np.random.default_rng(int(seed))
        else:
            raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
        c1 = rng.normal(size=(n, 1)).astype(np.float32) * weighting
        c2 = rng.normal(size=(n, 1)).astype(np.float32)
        p1 = rng.uniform(0, 2 * np.pi, size=(n, 1)).astype(np.float32)
        p2 = rng.uniform(0, 2 * np.pi, size=(n, 1)).astype(np.float32)
        states = _superpositions(c1, c2, p1, p2, nx)
        return states[:n_train], states[n_train:]

    return sample_data


# ---------------------------------------------------------------- problem
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def make(
    nx: int = PARAMS["nx"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    target: int = PARAMS["target"][0],
    weighting: int = PARAMS["weighting"][0],
    solver: str = PARAMS["solver"][0],
) -> Problem:
    """Build the quantum-control problem (see the module docstring)."""
    if not _is_int(nx) or nx < 3:
        raise ValueError(f"quantum: nx={nx!r}; must be an integer ≥ 3")
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"quantum: dt={dt!r}; must be a finite number > 0")
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"quantum: steps={steps!r}; must be an integer ≥ 1")
    if not _is_int(target) or not (1 <= target <= nx):
        raise ValueError(
            f"quantum: target={target!r}; must be an integer eigenstate index in 1..{nx} (1-based, 1 = ground state)"
        )
    if not _is_int(weighting) or weighting not in _WEIGHTINGS:
        raise ValueError(f"quantum: weighting={weighting!r}; allowed: 1, 3, 7, 15")
    if solver not in SOLVERS:
        raise ValueError(f"quantum: solver={solver!r}; allowed: {', '.join(SOLVERS)}")
    nx, steps, target, weighting, dt = int(nx), int(steps), int(target), int(weighting), float(dt)

    loss = TrajectoryLoss(state_loss=_build_state_loss(eigenstate(target, nx)), on="every", time_reduce="sum")

    def make_controller(key, zero_last: bool = False):
        return controllers.QuantumCNN(key, nx=nx, zero_last=zero_last)

    return Problem(
        name="quantum",
        params=dict(nx=nx, dt=dt, steps=steps, target=target, weighting=weighting, solver=solver),
        step=_build_step(nx, dt, solver),
        loss=loss,
        horizon=steps,
        sample_data=_build_sample_data(nx, weighting),
        make_controller=make_controller,
        state_shape=(nx, 2),
        control_shape=(1,),
        defaults=dict(epochs=1000, lr=1e-3, batch_size=8, n_train=256, n_test=256),
        zero_last_default=False,
        eval_chunk=256,  # the CNN's matrix products prefer large chunks (see train.make_evaluate)
        description=(
            f"particle in a box (1-D Schrödinger, Crank–Nicolson, nx={nx}): steer "
            f"superpositions of eigenstates 1, 2 into eigenstate {target} (1-based)"
        ),
    )


__all__ = ["PARAMS", "make", "eigenstate"]
