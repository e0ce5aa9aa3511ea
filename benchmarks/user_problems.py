r"""Problems of the kinds users bring: PDE fields with convolutional controllers, a large state with
few controls, an implicit step, a diffrax ODE — written the way a user writes them, outside the
library, against its public contract (:class:`stablebptt.problems.Problem`).

Each ``make(**params) -> Problem`` is a problem source of its own (``FILE.py:FUNCTION``)::

    stablebptt train benchmarks/user_problems.py:burgers_conv1d --mode C --epochs 2
    stablebptt train benchmarks/user_problems.py:implicit_solve -p solver=tridiagonal

=========================  ==================  ===========  =======================================
factory                    state (per sample)  control      controller
=========================  ==================  ===========  =======================================
burgers_conv1d             (64,) velocity      (64,) force  eqx.nn.Conv1d 1→16→16→1, k 5, circular
heat2d_conv2d              (32, 32) temp.      (32, 32)     eqx.nn.Conv2d 1→8→8→1, k 3, circular
field_mlp                  (32,) field         (32,)        eqx.nn.MLP 32→64→64→32
large_state_few_controls   (512,) = (q, v)     (2,)         eqx.nn.MLP 512→64→64→2
implicit_solve             (64,) temperature   (4,) heaters eqx.nn.MLP 64→64→64→4
ode_diffrax                (3,) Lorenz-63      (1,)         the adapter's MLP (library, with hooks)
=========================  ==================  ===========  =======================================

The first five controllers are plain equinox modules, vmapped over the batch by hand: no
stablebptt hooks and no ``rows_independent`` declaration (a user's controller does not know the
library), so the engine must treat each step's batch as one unit. ``ode_diffrax`` is built by
the library's diffrax adapter (:func:`stablebptt.problems.adapters.ode_problem`), whose
controller is the library's MLP (rows independent, with hooks): the contrast case.

Everything is float32. Data: ``sample_data(seed, n_train, n_test)`` draws the train set, then
the test set, from ``np.random.default_rng(seed)``; ``seed="paper"`` (the trainer's default
``data="paper"``) is the fixed seed :data:`PAPER_SEED`. Parameters are the factories' keyword
arguments (there is no module-level ``PARAMS``: it would apply to every function of the file).

:data:`SUITE` lists these six next to the paper's problems (``stablebptt.problems.get``) as
``{name: (make, params)}``, so one loop covers both (``bench_backward.py``).
"""

from __future__ import annotations

import functools
import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from stablebptt import problems
from stablebptt.core.losses import TrajectoryLoss
from stablebptt.problems import Problem

#: what ``seed="paper"`` stands for (these problems have no published data set)
PAPER_SEED = 42
#: the training settings every user problem shows (``stablebptt train`` reads them)
DEFAULTS = dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64)


# ----------------------------------------------------------------------------- shared helpers
def _rng(seed) -> np.random.Generator:
    """``np.random.default_rng`` of an int seed; ``"paper"`` is :data:`PAPER_SEED`."""
    if isinstance(seed, str):
        if seed != "paper":
            raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
        seed = PAPER_SEED
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
    return np.random.default_rng(int(seed))


def _sampler(draw):
    """``sample_data(seed, n_train, n_test)`` from ``draw(rng, n) -> float32 (n, …)``: one
    generator, train drawn first, then test."""

    def sample_data(seed, n_train: int, n_test: int):
        n_train, n_test = int(n_train), int(n_test)
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train={n_train}, n_test={n_test}; both must be ≥ 0")
        rng = _rng(seed)
        train = np.asarray(draw(rng, n_train), np.float32)
        test = np.asarray(draw(rng, n_test), np.float32)
        return train, test

    return sample_data


def _fourier_1d(rng, n: int, cells: int, modes: int, amplitude: float) -> np.ndarray:
    """n smooth periodic fields on ``cells`` points of [0, 2π): Σ_k (a_k sin kx + b_k cos kx)/k,
    a, b ~ U[−amplitude, amplitude], k = 1 … modes. float32 (n, cells)."""
    x = np.arange(cells) * (2 * np.pi / cells)
    k = np.arange(1, modes + 1)
    a = rng.uniform(-amplitude, amplitude, (n, modes)) / k
    b = rng.uniform(-amplitude, amplitude, (n, modes)) / k
    u = a @ np.sin(np.outer(k, x)) + b @ np.cos(np.outer(k, x))
    return u.astype(np.float32)


def _zero_last_layer(model, get_layer):
    """The model with the last layer's weight and bias set to 0: control 0 at first."""
    layer = get_layer(model)
    model = eqx.tree_at(lambda m: get_layer(m).weight, model, jnp.zeros_like(layer.weight))
    if layer.bias is not None:
        model = eqx.tree_at(lambda m: get_layer(m).bias, model, jnp.zeros_like(layer.bias))
    return model


def _check_positive(**kw):
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{k}={v!r}; must be a finite number > 0")


def _check_int(**kw):
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{k}={v!r}; must be an integer ≥ 1")


# ----------------------------------------------------------------------------- controllers
class ConvField1d(eqx.Module):
    """A field → field CNN: (B, N) → (B, N). Conv1d layers with circular padding ('same' size),
    tanh between them, linear last layer; one sample at a time, vmapped over the batch."""

    layers: list

    def __init__(self, key, channels=(1, 16, 16, 1), kernel: int = 5):
        keys = jax.random.split(key, len(channels) - 1)
        self.layers = [
            eqx.nn.Conv1d(cin, cout, kernel, padding=kernel // 2, padding_mode="CIRCULAR", key=k)
            for cin, cout, k in zip(channels[:-1], channels[1:], keys)
        ]

    def _one(self, u):  # (N,) -> (N,)
        h = u[None]
        for layer in self.layers[:-1]:
            h = jnp.tanh(layer(h))
        return self.layers[-1](h)[0]

    def __call__(self, u):
        return jax.vmap(self._one)(u)


class ConvField2d(eqx.Module):
    """A 2-D field → field CNN: (B, H, W) → (B, H, W), Conv2d layers with circular padding, tanh
    between them, linear last layer, vmapped over the batch."""

    layers: list

    def __init__(self, key, channels=(1, 8, 8, 1), kernel: int = 3):
        keys = jax.random.split(key, len(channels) - 1)
        self.layers = [
            eqx.nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode="CIRCULAR", key=k)
            for cin, cout, k in zip(channels[:-1], channels[1:], keys)
        ]

    def _one(self, u):  # (H, W) -> (H, W)
        h = u[None]
        for layer in self.layers[:-1]:
            h = jnp.tanh(layer(h))
        return self.layers[-1](h)[0]

    def __call__(self, u):
        return jax.vmap(self._one)(u)


class BatchedMLP(eqx.Module):
    """``eqx.nn.MLP`` (one sample: (in,) → (out,)) vmapped over the batch: (B, in) → (B, out)."""

    mlp: eqx.nn.MLP

    def __init__(self, key, in_size: int, out_size: int, width: int = 64, depth: int = 2):
        self.mlp = eqx.nn.MLP(in_size, out_size, width, depth, activation=jnp.tanh, key=key)

    def __call__(self, x):
        return jax.vmap(self.mlp)(x)


def _conv_factory(cls, **kw):
    def make_controller(key, zero_last: bool = False):
        model = cls(key, **kw)
        return _zero_last_layer(model, lambda m: m.layers[-1]) if zero_last else model

    return make_controller


def _mlp_factory(in_size: int, out_size: int, width: int = 64, depth: int = 2):
    def make_controller(key, zero_last: bool = False):
        model = BatchedMLP(key, in_size, out_size, width, depth)
        return _zero_last_layer(model, lambda m: m.mlp.layers[-1]) if zero_last else model

    return make_controller


# ----------------------------------------------------------------------------- a. Burgers + Conv1d
def burgers_conv1d(
    cells: int = 64, steps: int = 32, dt: float = 0.02, nu: float = 0.1, control_weight: float = 1e-3
) -> Problem:
    r"""1-D viscous Burgers' equation on a periodic domain, driven by a force field.

    Physics (nondimensional: length in units of L/2π, time in units of the advection time)::

        ∂u/∂t + ∂(u²/2)/∂x = ν ∂²u/∂x² + f(x, t),     x ∈ [0, 2π) periodic, Δx = 2π/cells

    Explicit Euler in time, conservative central differences in space::

        u' = u + Δt [ −(u_{i+1}² − u_{i−1}²)/(4Δx) + ν (u_{i+1} − 2u_i + u_{i−1})/Δx² + f_i ]

    Stable for ν Δt/Δx² ≤ 1/2 and Δt ≤ 2ν/max u² (defaults: 0.21 and Δt ≤ 0.09 for |u| ≤ 1.5;
    the initial fields stay below |u| ≈ 2). ``steps`` = T = 32 steps of Δt = 0.02.

    Shapes: state u (B, cells) float32 [velocity]; control f (B, cells) float32 [velocity/time],
    an additive force field (control_shape = state_shape). Loss: bring the flow to rest,
    ℓ(u) = mean u² at every step (mean over time), plus ``control_weight`` · mean f².
    Data: smooth random fields, Fourier modes k = 1 … 4 with amplitudes U[−0.5, 0.5]/k.
    Controller: :class:`ConvField1d` (Conv1d 1→16→16→1, kernel 5, circular padding).
    """
    _check_int(cells=cells, steps=steps)
    _check_positive(dt=dt, nu=nu)
    dx = 2 * math.pi / cells
    dt, nu = float(dt), float(nu)

    def step(u, f):
        up, um = jnp.roll(u, -1, axis=-1), jnp.roll(u, 1, axis=-1)
        flux = (up * up - um * um) / (4 * dx)
        diffusion = nu * (up - 2 * u + um) / dx**2
        return u + dt * (diffusion - flux + f)

    return Problem(
        name="burgers_conv1d",
        params=dict(cells=cells, steps=steps, dt=dt, nu=nu, control_weight=float(control_weight)),
        step=step,
        loss=TrajectoryLoss(lambda u: jnp.mean(u**2), on="every", control_weight=float(control_weight)),
        horizon=steps,
        sample_data=_sampler(lambda rng, n: _fourier_1d(rng, n, cells, 4, 0.5)),
        make_controller=_conv_factory(ConvField1d),
        state_shape=(cells,),
        control_shape=(cells,),
        defaults=dict(DEFAULTS),
        description=f"1-D viscous Burgers, {cells} periodic cells, T = {steps}, force-field control by a Conv1d CNN",
    )


# ----------------------------------------------------------------------------- b. heat 2-D + Conv2d
def heat2d_conv2d(
    cells: int = 32,
    steps: int = 16,
    dt: float = 0.05,
    kappa: float = 0.1,
    vx: float = 1.0,
    vy: float = 0.5,
    control_weight: float = 1e-3,
) -> Problem:
    r"""2-D advection–diffusion of a temperature field on a periodic square, with a heat-source field.

    Physics (nondimensional, domain [0, 2π)², Δx = 2π/cells)::

        ∂u/∂t + v·∇u = κ ∇²u + f(x, y, t),     v = (vx, vy) constant

    Explicit Euler, central differences (5-point Laplacian). Stable for 4κΔt/Δx² ≤ 1 and
    Δt ≤ 2κ/|v|²; at the defaults (cells = 32, Δx = 0.196) 4κΔt/Δx² = 0.52 and
    Δt = 0.05 ≤ 2κ/|v|² = 0.16. T = 16 steps.

    Shapes: state u (B, cells, cells) float32 [temperature deviation]; control f (B, cells, cells)
    [temperature/time], additive. Loss: ℓ(u) = mean u² at every step, plus ``control_weight`` ·
    mean f². Data: smooth random fields (Fourier modes k_x, k_y ∈ {0 … 3}, amplitude
    U[−0.5, 0.5]/(1 + k_x + k_y)). Controller: :class:`ConvField2d` (Conv2d 1→8→8→1, kernel 3,
    circular padding).
    """
    _check_int(cells=cells, steps=steps)
    _check_positive(dt=dt, kappa=kappa)
    dx = 2 * math.pi / cells
    dt, kappa, vx, vy = float(dt), float(kappa), float(vx), float(vy)

    def step(u, f):
        xp, xm = jnp.roll(u, -1, axis=-1), jnp.roll(u, 1, axis=-1)
        yp, ym = jnp.roll(u, -1, axis=-2), jnp.roll(u, 1, axis=-2)
        lap = (xp + xm + yp + ym - 4 * u) / dx**2
        adv = vx * (xp - xm) / (2 * dx) + vy * (yp - ym) / (2 * dx)
        return u + dt * (kappa * lap - adv + f)

    def draw(rng, n):
        x = np.arange(cells) * (2 * np.pi / cells)
        u = np.zeros((n, cells, cells))
        for kx in range(4):
            for ky in range(4):
                a = rng.uniform(-0.5, 0.5, (n, 1, 1)) / (1 + kx + ky)
                ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
                u += a * np.cos(ky * x[:, None] + kx * x[None, :] + ph)
        return u.astype(np.float32)

    return Problem(
        name="heat2d_conv2d",
        params=dict(cells=cells, steps=steps, dt=dt, kappa=kappa, vx=vx, vy=vy, control_weight=float(control_weight)),
        step=step,
        loss=TrajectoryLoss(lambda u: jnp.mean(u**2), on="every", control_weight=float(control_weight)),
        horizon=steps,
        sample_data=_sampler(draw),
        make_controller=_conv_factory(ConvField2d),
        state_shape=(cells, cells),
        control_shape=(cells, cells),
        defaults=dict(DEFAULTS),
        description=f"2-D advection-diffusion, {cells}x{cells} periodic grid, T = {steps}, heat-source field by a "
        "Conv2d CNN",
    )


# ----------------------------------------------------------------------------- c. field + MLP
def field_mlp(
    cells: int = 32,
    steps: int = 32,
    dt: float = 0.05,
    diffusion: float = 0.1,
    rate: float = 1.0,
    control_weight: float = 1e-3,
) -> Problem:
    r"""1-D Allen–Cahn reaction–diffusion field held at its unstable zero state by a control field.

    Physics (nondimensional, x ∈ [0, 2π) periodic, Δx = 2π/cells)::

        ∂u/∂t = D ∂²u/∂x² + r (u − u³) + f(x, t)

    u = 0 is unstable (growth rate r − D k² for mode k), u = ±1 are the stable phases.
    Explicit Euler (D Δt/Δx² = 0.13, r Δt = 0.05 at the defaults), T = 32 steps of Δt = 0.05.

    Shapes: state u (B, cells) float32 [order parameter, dimensionless]; control f (B, cells)
    [1/time], additive. Loss: ℓ(u) = mean u² at every step, plus ``control_weight`` · mean f².
    Data: smooth random fields (modes 1 … 3, amplitude U[−0.5, 0.5]/k).
    Controller: :class:`BatchedMLP` — ``eqx.nn.MLP`` cells → 64 → 64 → cells, tanh.
    """
    _check_int(cells=cells, steps=steps)
    _check_positive(dt=dt, diffusion=diffusion, rate=rate)
    dx = 2 * math.pi / cells
    dt, D, r = float(dt), float(diffusion), float(rate)

    def step(u, f):
        lap = (jnp.roll(u, -1, axis=-1) - 2 * u + jnp.roll(u, 1, axis=-1)) / dx**2
        return u + dt * (D * lap + r * (u - u**3) + f)

    return Problem(
        name="field_mlp",
        params=dict(cells=cells, steps=steps, dt=dt, diffusion=D, rate=r, control_weight=float(control_weight)),
        step=step,
        loss=TrajectoryLoss(lambda u: jnp.mean(u**2), on="every", control_weight=float(control_weight)),
        horizon=steps,
        sample_data=_sampler(lambda rng, n: _fourier_1d(rng, n, cells, 3, 0.5)),
        make_controller=_mlp_factory(cells, cells),
        state_shape=(cells,),
        control_shape=(cells,),
        defaults=dict(DEFAULTS),
        description=f"1-D Allen-Cahn field, {cells} periodic cells, T = {steps}, control field by an eqx.nn.MLP",
    )


# ----------------------------------------------------------------------------- d. large state, 2 controls
def large_state_few_controls(
    masses: int = 256,
    steps: int = 32,
    dt: float = 0.05,
    stiffness: float = 100.0,
    onsite: float = 1.0,
    cubic: float = 1.0,
    damping: float = 0.05,
    control_weight: float = 1e-3,
) -> Problem:
    r"""A chain of ``masses`` unit masses (a Klein–Gordon / φ⁴ chain) damped by two distributed actuators.

    Physics (SI-like units: metres, seconds, unit masses; forces in N = m/s² per kg)::

        q̈_i = k (q_{i+1} − 2 q_i + q_{i−1}) − ω₀² q_i − α q_i³ − γ q̇_i + Σ_j b_j(i) c_j

    with fixed walls q_0 = q_{n+1} = 0, k = ``stiffness`` [1/s²], ω₀² = ``onsite`` [1/s²],
    α = ``cubic`` [1/(m² s²)], γ = ``damping`` [1/s]. Two actuators with the fixed spatial
    profiles b_0(i) = sin(π i/(n+1)) and b_1(i) = sin(2π i/(n+1)) (piezo patches acting on the two
    lowest modes). Symplectic Euler: v' = v + Δt q̈(q, v, c), q' = q + Δt v'. Stable for
    Δt·√(4k + ω₀²) < 2 (defaults: 1.0). T = 32 steps of Δt = 0.05 s.

    Shapes: state (B, 2·masses) float32 = [q (m) | v (m/s)] (default 512 entries); control c (B, 2)
    [m/s²]. Loss: ℓ = mean(q² + v²)/2 at every step (an energy-like measure), plus
    ``control_weight`` · mean c². Data: q smooth (modes 1 … 8, amplitude U[−0.5, 0.5]/k), v = 0.
    Controller: :class:`BatchedMLP` — ``eqx.nn.MLP`` 2·masses → 64 → 64 → 2, tanh.
    """
    _check_int(masses=masses, steps=steps)
    _check_positive(dt=dt, stiffness=stiffness)
    n = int(masses)
    dt, k, w2, a, g = float(dt), float(stiffness), float(onsite), float(cubic), float(damping)
    i = np.arange(1, n + 1)
    b = jnp.asarray(np.stack([np.sin(np.pi * i / (n + 1)), np.sin(2 * np.pi * i / (n + 1))]), jnp.float32)  # (2, n)

    def step(x, c):
        q, v = x[:, :n], x[:, n:]
        padded = jnp.pad(q, ((0, 0), (1, 1)))  # the walls
        lap = padded[:, 2:] - 2 * q + padded[:, :-2]
        acc = k * lap - w2 * q - a * q**3 - g * v + c @ b
        v1 = v + dt * acc
        return jnp.concatenate([q + dt * v1, v1], axis=1)

    def draw(rng, m):
        q = np.zeros((m, n))
        for mode in range(1, 9):
            q += rng.uniform(-0.5, 0.5, (m, 1)) / mode * np.sin(mode * np.pi * i / (n + 1))
        return np.concatenate([q, np.zeros_like(q)], axis=1).astype(np.float32)

    return Problem(
        name="large_state_few_controls",
        params=dict(
            masses=n,
            steps=steps,
            dt=dt,
            stiffness=k,
            onsite=w2,
            cubic=a,
            damping=g,
            control_weight=float(control_weight),
        ),
        step=step,
        loss=TrajectoryLoss(lambda x: 0.5 * jnp.mean(x**2), on="every", control_weight=float(control_weight)),
        horizon=steps,
        sample_data=_sampler(draw),
        make_controller=_mlp_factory(2 * n, 2),
        state_shape=(2 * n,),
        control_shape=(2,),
        defaults=dict(DEFAULTS),
        description=f"chain of {n} nonlinear oscillators (state {2 * n}), 2 distributed actuators, T = {steps}, "
        "eqx.nn.MLP",
    )


# ----------------------------------------------------------------------------- e. implicit step
SOLVERS = ("dense", "tridiagonal")


def implicit_solve(
    nodes: int = 64,
    steps: int = 32,
    dt: float = 0.5,
    diffusivity: float = 0.01,
    cooling: float = 0.1,
    solver: str = "dense",
    control_weight: float = 1e-3,
) -> Problem:
    r"""A heated rod: implicit-Euler diffusion (a linear solve per step) with four heaters.

    Physics (SI: metres, seconds, kelvin; the temperature u is the deviation from ambient)::

        ∂u/∂t = D ∂²u/∂x² − σ u³ + Σ_j h_j(x) c_j,     x ∈ [0, 1] m, u(0) = u(1) = 0

    on ``nodes`` interior nodes (Δx = 1/(nodes + 1) m), D = ``diffusivity`` [m²/s], σ = ``cooling``
    [1/(K² s)]. Four heaters with Gaussian profiles h_j centred at 0.2, 0.4, 0.6, 0.8 m (width
    0.05 m, peak 1), powers c_j [K/s]. The step treats diffusion implicitly and the rest explicitly::

        (I − Δt D L) u' = u + Δt (−σ u³ + H c)          L: the Dirichlet second difference

    D Δt/Δx² = 21 at the defaults: explicit Euler would blow up, hence the solve.
    ``solver="dense"``: ``jnp.linalg.solve`` on the fixed (nodes × nodes) matrix (an LU per step,
    what a user writes first); ``"tridiagonal"``: ``jax.lax.linalg.tridiagonal_solve``.
    T = 32 steps of Δt = 0.5 s.

    Shapes: state u (B, nodes) float32 [K]; control c (B, 4) [K/s]. Loss: track the profile
    u*(x) = sin(πx) K, ℓ = mean (u − u*)² at every step, plus ``control_weight`` · mean c².
    Data: random smooth profiles (sine modes 1 … 4, amplitude U[−1, 1]/k).
    Controller: :class:`BatchedMLP` — ``eqx.nn.MLP`` nodes → 64 → 64 → 4, tanh.
    """
    _check_int(nodes=nodes, steps=steps)
    _check_positive(dt=dt, diffusivity=diffusivity)
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}; allowed: {', '.join(SOLVERS)}")
    n = int(nodes)
    dt, D, sigma = float(dt), float(diffusivity), float(cooling)
    dx = 1.0 / (n + 1)
    x = np.arange(1, n + 1) * dx
    r = dt * D / dx**2
    A = (np.eye(n) * (1 + 2 * r) - r * np.eye(n, k=1) - r * np.eye(n, k=-1)).astype(np.float32)
    heaters = jnp.asarray(
        np.exp(-0.5 * ((x[None, :] - np.array([0.2, 0.4, 0.6, 0.8])[:, None]) / 0.05) ** 2), jnp.float32
    )  # (4, n)
    target = jnp.asarray(np.sin(np.pi * x), jnp.float32)
    A_j = jnp.asarray(A)
    dl = jnp.asarray(np.r_[0.0, np.full(n - 1, -r)], jnp.float32)
    dm = jnp.full((n,), 1 + 2 * r, jnp.float32)
    du = jnp.asarray(np.r_[np.full(n - 1, -r), 0.0], jnp.float32)

    def step(u, c):
        rhs = u + dt * (-sigma * u**3 + c @ heaters)  # (B, n)
        if solver == "dense":
            return jnp.linalg.solve(A_j, rhs.T).T
        return jax.lax.linalg.tridiagonal_solve(dl, dm, du, rhs.T).T

    def draw(rng, m):
        u = np.zeros((m, n))
        for mode in range(1, 5):
            u += rng.uniform(-1, 1, (m, 1)) / mode * np.sin(mode * np.pi * x)
        return u.astype(np.float32)

    return Problem(
        name="implicit_solve",
        params=dict(
            nodes=n,
            steps=steps,
            dt=dt,
            diffusivity=D,
            cooling=sigma,
            solver=solver,
            control_weight=float(control_weight),
        ),
        step=step,
        loss=TrajectoryLoss(lambda u: jnp.mean((u - target) ** 2), on="every", control_weight=float(control_weight)),
        horizon=steps,
        sample_data=_sampler(draw),
        make_controller=_mlp_factory(n, 4),
        state_shape=(n,),
        control_shape=(4,),
        defaults=dict(DEFAULTS),
        description=f"heated rod, implicit-Euler diffusion ({solver} solve) on {n} nodes, 4 heaters, T = {steps}, "
        "eqx.nn.MLP",
    )


# ----------------------------------------------------------------------------- f. diffrax ODE
LORENZ = dict(sigma=10.0, rho=28.0, beta=8.0 / 3.0)


def lorenz(t, y, c):
    """Lorenz-63 with a control on ẏ, one sample: y (3,), c (1,) -> dy/dt (3,)."""
    s, r, b = LORENZ["sigma"], LORENZ["rho"], LORENZ["beta"]
    return jnp.stack([s * (y[1] - y[0]), y[0] * (r - y[2]) - y[1] + c[0], y[0] * y[1] - b * y[2]])


def ode_diffrax(steps: int = 40, dt: float = 0.02, substeps: int = 1, spread: float = 2.0) -> Problem:
    r"""Lorenz-63 held at its unstable fixed point C+ through a control on ẏ, integrated by diffrax.

    Physics (nondimensional, σ = 10, ρ = 28, β = 8/3; time in the system's units)::

        ẋ = σ (y − x),   ẏ = x (ρ − z) − y + c,   ż = x y − β z

    C+ = (√(β(ρ−1)), √(β(ρ−1)), ρ − 1) ≈ (8.49, 8.49, 27) is a saddle-focus (unstable), and the
    flow is chaotic (largest Lyapunov exponent ≈ 0.9). One step holds c for Δt = 0.02 and integrates
    with ``diffrax.Tsit5`` in ``substeps`` equal steps (the library's adapter
    :func:`stablebptt.problems.adapters.ode_problem`). T = 40 steps (0.8 time units).

    Shapes: state (B, 3) float32; control c (B, 1). Loss: ℓ = |y − C+|²/100 averaged over the batch
    and the T states. Data: C+ + U[−spread, spread]³. Controller: the adapter's MLP (the library's,
    rows independent, with hooks) 3 → 64 → 64 → 1, last kernel zero at first.
    """
    from stablebptt.problems.adapters import ode_problem

    _check_positive(spread=spread)
    eq = math.sqrt(LORENZ["beta"] * (LORENZ["rho"] - 1))
    fixed = np.array([eq, eq, LORENZ["rho"] - 1], np.float32)
    fixed_j = jnp.asarray(fixed)

    def sample_states(rng, n):
        return fixed + rng.uniform(-spread, spread, (n, 3))

    return ode_problem(
        lorenz,
        dt=dt,
        horizon=steps,
        substeps=substeps,
        state_shape=(3,),
        control_shape=(1,),
        state_loss=lambda y: jnp.sum((y - fixed_j) ** 2) / 100.0,
        sample_states=sample_states,
        on="every",
        name="ode_diffrax",
        params=dict(steps=steps, dt=float(dt), substeps=substeps, spread=float(spread)),
        defaults=dict(DEFAULTS),
        description=f"Lorenz-63 held at C+ by a control on dy/dt, diffrax Tsit5, T = {steps}",
    )


# ----------------------------------------------------------------------------- the suite
#: the six user problems of this file
USER = ("burgers_conv1d", "heat2d_conv2d", "field_mlp", "large_state_few_controls", "implicit_solve", "ode_diffrax")

#: name -> (make, params): the paper's problems as the other benchmarks use them (bench_modes.py:
#: cart-pole with 1 and 4 poles, guidance, quantum), then the user problems of this file
SUITE = {
    "cartpole": (functools.partial(problems.get, "cartpole"), {}),
    "cartpole4": (functools.partial(problems.get, "cartpole"), {"poles": 4}),
    "guidance": (functools.partial(problems.get, "guidance"), {}),
    "quantum": (functools.partial(problems.get, "quantum"), {}),
} | {name: (globals()[name], {}) for name in USER}


def build(name: str) -> Problem:
    """The problem ``name`` of :data:`SUITE` with its parameters."""
    make, params = SUITE[name]
    return make(**params)


def source(name: str) -> str:
    """The problem source of a SUITE entry as ``RunConfig(problem=...)`` and the CLI take it: a
    built-in name for the paper's problems, ``<this file>:FUNCTION`` for the others."""
    make, _ = SUITE[name]
    if isinstance(make, functools.partial) and make.func is problems.get:
        return make.args[0]
    return f"{__file__}:{make.__name__}"


__all__ = ["SUITE", "USER", "build", "source", *USER]
