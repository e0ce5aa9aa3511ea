r"""Guidance by repulsion: controlled drivers herd evaders, which flee them, to the origin.

Physics (dimensionless units)
-----------------------------
n_d drivers and n_e evaders move in the plane, each with position x and velocity v. The
softened distance is d(r) = ε + ‖r‖ with ε = 0.1, and rot(x, y) = (−y, x) turns a vector by
90°. Let S = Σ_e x_e be the **sum** of the evader positions (the authors' code uses the sum,
not the centroid; for 4 evaders S is 4× the centroid) and r_d = x_d − S. Driver d is steered by
two control coefficients (a_d, b_d)::

    driver d:  v̇_d = a_d r_d + b_d rot(r_d) − 1.0 v_d + 0.2 Σ_{j≠d} d(x_d − x_j)^−2 (x_d − x_j)
    evader e:  v̇_e = 15 Σ_d d(x_d − x_e)^−2 (x_e − x_d) − 4.0 v_e
                     + 0.2 Σ_{i≠e} p(d(x_i − x_e)) (x_i − x_e),    p(δ) = (0.5/δ − 1)/δ
    ẋ = v

Drivers repel each other (spread, 0.2) and feel friction 1.0; evaders flee the drivers
(evade, 15), feel friction 4.0 and flock (0.2): evaders closer than d_flock = 0.5 attract,
farther ones repel (as coded; the sign convention of p makes it so). An unused "driving" force
in the authors' code contributes nothing and is omitted. One step of length ``dt`` is explicit
Euler on (x, v) together: u ← u + dt·u̇ (the old velocity moves the position). The paper uses
T = 4 with 60 steps (dt = 1/15).

State, control, loss
--------------------
A batch of states is a float32 array (B, n_d + n_e, 2, 2): objects (drivers first, then
evaders) × (position, velocity) × (x, y). The control is (B, n_d, 2): (a_d, b_d) per driver.
The loss is taken on every state x_1 … x_T::

    L = mean over (batch, time, evaders, x/y) of x_e²  +  rc · mean over (batch, time, drivers, 2) of c²

(the authors' physics loss plus their control regulariser, with the target at the origin).
``rc`` is the complexity axis of the paper's figure: rc ∈ {1, 0.1, 0.01, 0.001}.

Data
----
Velocities 0. Each driver on the annulus 3 ≤ r < 4 (angle U[0, 2π), radius U[3, 4)); a group
centre on the annulus 1 ≤ r < 2; each evader at centre + U[−0.5, 0.5)². ``sample_data("paper",
n_train, n_test)`` reproduces the authors' ``generate_data`` (it seeds NumPy's legacy generator
with 42 itself): N = n_train + n_test states are drawn in one go (all driver positions for all
N states first, driver by driver: angle draws then radius draws; then the centre; then the
evaders, x before y), float32 arithmetic, and train = the first n_train, test = the rest. The
authors always draw N = 2·Nd and split in half, so for n_train = n_test = Nd this is exactly
their data; for n_train ≠ n_test the split point moves (a state's values depend on N, as in
their code). An int seed draws the same distribution from ``np.random.default_rng(seed)``.

Controller
----------
The paper's MLP: positions and velocities of all agents flattened ((n_d + n_e)·4 numbers, 24
for 2 drivers and 4 evaders) → Dense 100 tanh → Dense 100 tanh → Dense 2·n_d (linear),
reshaped (n_d, 2). The authors' runs started the last kernel at zero (``--zero False`` was read
as True by argparse), so the untrained controller outputs 0 and the untrained test loss is
≈ 5.24; that is the preset (``zero_last_default=True``).
"""

from __future__ import annotations

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
    "drivers": (2, "number of controlled drivers n_d (integer ≥ 1; paper: 2)"),
    "evaders": (4, "number of evaders n_e (integer ≥ 1; paper: 4)"),
    "rc": (0.1, "weight of the control penalty mean(c²) (≥ 0; paper: 1, 0.1, 0.01, 0.001)"),
    "dt": (4 / 60, "time step of the explicit Euler scheme (paper: T/steps = 4/60)"),
    "steps": (60, "simulator steps per trajectory (horizon T)"),
    "centroid": (
        False,
        "False: drivers steer relative to the SUM of evader positions (authors' "
        "code); True: relative to their centroid (the paper's words)",
    ),
}

# the authors' constants
EPSILON = 0.1  # softening of the distance d(r) = ε + ‖r‖
C_EVADE = 15.0  # evaders flee drivers
C_FRIC_EVADER = 4.0
C_FLOCK = 0.2
D_FLOCK = 0.5  # evaders attract closer than this, repel farther
C_FRIC_DRIVER = 1.0
C_SPREAD = 0.2  # drivers repel each other


def _pair_diff(a: jax.Array, b: jax.Array) -> jax.Array:
    """a[:, i] − b[:, j] for all pairs: (B, na, 2), (B, nb, 2) -> (B, na, nb, 2)."""
    return a[:, :, None, :] - b[:, None, :, :]


def _dist(r: jax.Array, exclude_diagonal: bool = False) -> jax.Array:
    """ε + ‖r‖ over the last axis; with ``exclude_diagonal`` the (i, i) pairs (r = 0) get a
    harmless stand-in norm so that neither the value nor the gradient is inf/NaN there."""
    sq = jnp.sum(r * r, -1)
    if exclude_diagonal:
        n = r.shape[-2]
        sq = jnp.where(jnp.eye(n, dtype=bool), jnp.ones_like(sq), sq)
    return EPSILON + jnp.sqrt(sq)


def _build_step(n_d: int, n_e: int, dt: float, centroid: bool = False):
    mask_d = jnp.asarray(1.0 - np.eye(n_d, dtype=np.float32))[..., None]  # (n_d, n_d, 1)
    mask_e = jnp.asarray(1.0 - np.eye(n_e, dtype=np.float32))[..., None]
    n = n_d + n_e

    def rates(u: jax.Array, c: jax.Array) -> jax.Array:
        x, v = u[:, :, 0], u[:, :, 1]  # (B, n, 2)
        x_d, x_e = x[:, :n_d], x[:, n_d:]
        v_d, v_e = v[:, :n_d], v[:, n_d:]

        # control force on the drivers: a r_d + b rot(r_d), r_d = x_d − Σ_e x_e
        reduce = jnp.mean if centroid else jnp.sum
        center = x_d - reduce(x_e, axis=1, keepdims=True)
        orthog = jnp.stack([-center[..., 1], center[..., 0]], -1)
        f_con = c[..., :1] * center + c[..., 1:] * orthog

        # evaders flee: Σ_d d^-2 (x_e − x_d)
        r_de = _pair_diff(x_d, x_e)  # (B, n_d, n_e, 2): x_d − x_e
        w_de = -1.0 * _dist(r_de) ** -2
        f_ev = jnp.sum(w_de[..., None] * r_de, axis=1)  # (B, n_e, 2)

        # evaders flock: on evader j, Σ_{i≠j} p(d(x_i − x_j)) (x_i − x_j)
        r_ee = _pair_diff(x_e, x_e)  # [i, j] = x_i − x_j
        d_ee = _dist(r_ee, exclude_diagonal=True)
        p_ee = (D_FLOCK / d_ee - 1.0) / d_ee
        f_flock = jnp.sum(p_ee[..., None] * r_ee * mask_e, axis=1)  # sum over i -> (B, n_e, 2)

        # drivers spread: on driver j, Σ_{i≠j} d(x_j − x_i)^-2 (x_j − x_i)
        r_dd = _pair_diff(x_d, x_d)  # [i, j] = x_i − x_j
        d_dd = _dist(r_dd, exclude_diagonal=True)
        f_spread = jnp.sum(d_dd[..., None] ** -2 * (-r_dd) * mask_d, axis=1)

        v_d_dot = f_con + (-C_FRIC_DRIVER) * v_d + C_SPREAD * f_spread
        v_e_dot = C_EVADE * f_ev + (-C_FRIC_EVADER) * v_e + C_FLOCK * f_flock
        v_dot = jnp.concatenate([v_d_dot, v_e_dot], 1)
        return jnp.stack([v, v_dot], 2)  # (B, n, 2, 2)

    def step(u: jax.Array, c: jax.Array) -> jax.Array:
        """One explicit Euler step: u (B, n_d+n_e, 2, 2) float32, c (B, n_d, 2) -> u'."""
        u = jnp.asarray(u, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if u.ndim != 4 or u.shape[1:] != (n, 2, 2):
            raise ValueError(
                f"guidance step: state shape {u.shape}; expected (B, {n}, 2, 2) for {n_d} driver(s) + {n_e} evader(s)"
            )
        if c.shape != (u.shape[0], n_d, 2):
            raise ValueError(
                f"guidance step: control shape {c.shape}; expected {(u.shape[0], n_d, 2)} "
                "(coefficients (a, b) per driver)"
            )
        return u + rates(u, c) * dt

    return step


def _build_state_loss(n_d: int):
    def state_loss(u: jax.Array) -> jax.Array:
        """mean over (batch, evaders, x/y) of the squared evader position; u (B, n, 2, 2)."""
        x_e = u[:, n_d:, 0, :]
        return jnp.mean(x_e**2)

    return state_loss


def _draw_states(rand, n: int, n_d: int, n_e: int) -> np.ndarray:
    """n states in the authors' draw order; ``rand(k)`` returns k float32 uniforms in [0, 1)."""
    two_pi = np.float32(2 * np.pi)

    def annulus(rmin: float, rmax: float) -> np.ndarray:
        s1, s2 = rand(n), rand(n)  # angle draws, then radius draws
        phi = two_pi * s1
        r = np.float32(rmax - rmin) * s2 + np.float32(rmin)
        return np.stack([r * np.cos(phi), r * np.sin(phi)], -1)

    def square(half: float) -> np.ndarray:
        x, y = rand(n), rand(n)  # x before y
        x = np.float32(2 * half) * x - np.float32(half)
        y = np.float32(2 * half) * y - np.float32(half)
        return np.stack([x, y], -1)

    states = np.zeros((n, n_d + n_e, 2, 2), np.float32)
    for k in range(n_d):
        states[:, k, 0, :] = annulus(3, 4)
    centre = annulus(1, 2)
    for k in range(n_e):
        states[:, n_d + k, 0, :] = centre + square(0.5)
    return states


def _build_sample_data(n_d: int, n_e: int):
    def sample_data(seed, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, test)`` float32 arrays (n, n_d+n_e, 2, 2), velocities 0.

        N = n_train + n_test states are drawn in the authors' order and split: train = the
        first n_train. ``seed="paper"``: NumPy legacy seed 42 (their ``generate_data`` with
        Nd = n_train = n_test); an int seed uses ``np.random.default_rng(seed)``.
        """
        n_train, n_test = int(n_train), int(n_test)
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train={n_train}, n_test={n_test}; both must be ≥ 0")
        if isinstance(seed, str):
            if seed != "paper":
                raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
            rng = np.random.RandomState(42)  # the authors' np.random.seed(42)
            rand = lambda k: rng.rand(k).astype(np.float32)
        elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            gen = np.random.default_rng(int(seed))
            rand = lambda k: gen.random(k).astype(np.float32)
        else:
            raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
        states = _draw_states(rand, n_train + n_test, n_d, n_e)
        return states[:n_train], states[n_train:]

    return sample_data


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def make(
    drivers: int = PARAMS["drivers"][0],
    evaders: int = PARAMS["evaders"][0],
    rc: float = PARAMS["rc"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    centroid: bool = PARAMS["centroid"][0],
) -> Problem:
    """Build the guidance-by-repulsion problem (see the module docstring)."""
    if not isinstance(centroid, (bool, np.bool_)):
        raise ValueError(f"guidance: centroid={centroid!r}; must be true or false")
    if not _is_int(drivers) or drivers < 1:
        raise ValueError(f"guidance: drivers={drivers!r}; must be an integer ≥ 1")
    if not _is_int(evaders) or evaders < 1:
        raise ValueError(f"guidance: evaders={evaders!r}; must be an integer ≥ 1")
    if not _is_real(rc) or rc < 0:
        raise ValueError(f"guidance: rc={rc!r}; must be a finite number ≥ 0")
    if not _is_real(dt) or dt <= 0:
        raise ValueError(f"guidance: dt={dt!r}; must be a finite number > 0")
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"guidance: steps={steps!r}; must be an integer ≥ 1")
    n_d, n_e, steps, rc, dt = int(drivers), int(evaders), int(steps), float(rc), float(dt)

    def make_controller(key, zero_last: bool = True):
        """The paper's MLP: (B, n_d+n_e, 2, 2) -> (B, n_d, 2); zero last kernel by default."""
        return controllers.MLP(
            key,
            in_size=4 * (n_d + n_e),
            control_shape=(n_d, 2),
            widths=(100, 100),
            zero_last=zero_last,
        )

    return Problem(
        name="guidance",
        params=dict(drivers=n_d, evaders=n_e, rc=rc, dt=dt, steps=steps, centroid=bool(centroid)),
        step=_build_step(n_d, n_e, dt, bool(centroid)),
        loss=TrajectoryLoss(state_loss=_build_state_loss(n_d), on="every", time_reduce="mean", control_weight=rc),
        horizon=steps,
        sample_data=_build_sample_data(n_d, n_e),
        make_controller=make_controller,
        state_shape=(n_d + n_e, 2, 2),
        control_shape=(n_d, 2),
        defaults=dict(epochs=100, lr=1e-3, batch_size=8, n_train=256, n_test=256),
        zero_last_default=True,
        eval_chunk=64,  # elementwise-heavy: small chunks stay in cache (see train.make_evaluate)
        description=(
            f"guidance by repulsion: {n_d} driver(s) herd {n_e} evader(s) to the origin (every-state loss, rc={rc:g})"
        ),
    )


__all__ = ["PARAMS", "make"]
