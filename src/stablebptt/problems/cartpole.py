r"""Cart-pole swing-up with n = 1, 2, … poles hanging independently from one cart.

Physics (SI units: metres, seconds, kilograms, newtons, radians)
----------------------------------------------------------------
A cart moves on a line; n poles are hinged on it, each swinging independently (they do not
touch each other, they only interact through the cart). One horizontal force F [N] per sample
drives the cart, so the system is underactuated. Constants: g = 9.8 m/s², pole mass
m = 0.1 kg, M = 1.1 kg ("cart + one pole"), half pole length l = 0.5 m, ml = m·l.

For pole i (θ_i = 0 upright, θ_i = π hanging down)::

    s_i  = sin θ_i · θ̇_i²,            A_i = (F + ml·s_i) / M
    θ̈_i  = (g sin θ_i − cos θ_i · A_i) / ( l · (4/3 − m cos²θ_i / M) )
    ẍ    = (F + ml · Σ_i (s_i − θ̈_i cos θ_i)) / M

One step of length ``dt`` [s] is semi-implicit (symplectic) Euler, in this order::

    θ̇ ← θ̇ + dt θ̈;   θ ← θ + dt θ̇(new);   ẋ ← ẋ + dt ẍ;   x ← x + dt ẋ(new)

The authors' quirk: M is the mass of the cart plus ONE pole and is **not** increased when
more poles are added (their simulator hard-codes M = 1.1 for every n). Each pole therefore
sees the classic single-pole equations, and the cart's reaction force is the sum over all
poles divided by that same M. We follow their code (it produced the published figures), so
with identical poles every θ̈_i equals the one-pole θ̈, and ẍ − F/M grows n-fold.

State, control, loss
--------------------
A batch of states is a float32 array (B, 1 + n, 2): row 0 is the cart (x [m], ẋ [m/s]), row i
is pole i (θ_i [rad], θ̇_i [rad/s]). The control is one force per sample, shape (B,) (no
trailing axis). The loss looks at the final state only (T = ``steps``·``dt``, the paper uses
1 s = 100 steps of 0.01 s)::

    L = 1 − mean over (batch, poles) of cos θ_i(T)          range 0 … 2, 0 = all upright

Data
----
x, ẋ, θ̇_i ~ U[−1, 1) and θ_i = π + U[−1, 1)·π/6 (hanging, within ±30°). ``sample_data("paper",
n_train, n_test)`` reproduces the authors' draw (NumPy legacy ``seed(42)`` stream; the train
set drawn first as ``rand(n_train, 1+n, 2)``, then the test set; float32 arithmetic). An int
seed draws the same distribution from ``np.random.default_rng(seed)``.

Controller
----------
The paper's MLP: the state flattened as [x, ẋ, θ1, θ̇1, …] → Dense 100 tanh → Dense 100 tanh →
Dense 1 (linear) = F. The authors' runs started the last kernel at zero (``--zero False`` was
read as True by argparse), so the untrained controller outputs F = 0; that is the preset
(``zero_last_default=True``), switchable with ``make_controller(key, zero_last=False)``.
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
    "poles": (1, "number of poles hanging from the cart (integer ≥ 1; paper: 1, 2, 3, 4)"),
    "dt": (0.01, "time step in seconds (semi-implicit Euler)"),
    "steps": (100, "simulator steps per trajectory (horizon T; T·dt = 1 s in the paper)"),
    "scale_mass": (
        False,
        "False: M = 1.1 for any number of poles (authors' code); True: M = 1.0 + 0.1·poles (cart + every pole)",
    ),
}

# physical constants of the authors' simulator
G = 9.8  # gravity [m/s²]
M_POLE = 0.1  # mass of each pole [kg]
M_TOTAL = 1.1  # cart + ONE pole [kg]; not increased for more poles (authors' quirk)
LENGTH = 0.5  # pole (half-)length [m]


def _build_step(poles: int, dt: float, M: float = M_TOTAL):
    g, m, l = G, M_POLE, LENGTH
    ml = m * l

    def step(state: jax.Array, force: jax.Array) -> jax.Array:
        """One semi-implicit Euler step.

        state (B, 1+n, 2) float32 [cart (x, ẋ); pole i (θ_i, θ̇_i)], force (B,) float32 [N]
        -> state' (B, 1+n, 2).
        """
        state = jnp.asarray(state, jnp.float32)
        force = jnp.asarray(force, jnp.float32)
        if state.shape[-2:] != (1 + poles, 2):
            raise ValueError(
                f"cartpole step: state shape {state.shape}; expected (B, {1 + poles}, 2) for {poles} pole(s)"
            )
        if force.shape != state.shape[:-2]:
            raise ValueError(
                f"cartpole step: force shape {force.shape}; expected {state.shape[:-2]} "
                "(one scalar per sample, no trailing axis)"
            )
        x, x_dot = state[..., 0, 0], state[..., 0, 1]  # (B,)
        th, th_dot = state[..., 1:, 0], state[..., 1:, 1]  # (B, n)
        f = force[..., None]  # (B, 1)

        cos = jnp.cos(th)
        sin = jnp.sin(th)
        s = sin * th_dot**2
        a = (f + ml * s) / M
        b = l * (4.0 / 3.0 - m * cos**2 / M)
        th_dot2 = (g * sin - cos * a) / b
        c = jnp.sum(s - th_dot2 * cos, axis=-1)  # (B,)
        x_dot2 = (force + ml * c) / M

        th_dot_new = th_dot + dt * th_dot2
        th_new = th + dt * th_dot_new
        x_dot_new = x_dot + dt * x_dot2
        x_new = x + dt * x_dot_new

        cart = jnp.stack([x_new, x_dot_new], -1)[..., None, :]  # (B, 1, 2)
        pole = jnp.stack([th_new, th_dot_new], -1)  # (B, n, 2)
        return jnp.concatenate([cart, pole], -2)

    return step


def state_loss(state: jax.Array) -> jax.Array:
    """1 − mean over (batch, poles) of cos θ_i; state (B, 1+n, 2) -> scalar."""
    return 1.0 - jnp.mean(jnp.cos(state[..., 1:, 0]))


def _rng(seed):
    if isinstance(seed, str):
        if seed != "paper":
            raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")
        return np.random.RandomState(42), True  # same stream as np.random.seed(42)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed)), False
    raise ValueError(f"seed={seed!r}; allowed: 'paper' or an int")


def _draw(rng, legacy: bool, n: int, poles: int) -> np.ndarray:
    """One data set of n states from ``rng`` (legacy ``RandomState`` or a ``Generator``)."""
    shape = (n, 1 + poles, 2)
    u = rng.rand(*shape) if legacy else rng.random(shape)
    s = u.astype(np.float32) * np.float32(2) - np.float32(1)
    # the authors' float32 arithmetic: π + (2U − 1)·π/6 on the pole angles
    pi = np.float32(np.pi)
    s[:, 1:, 0] = pi + s[:, 1:, 0] * pi / np.float32(6)
    return s.astype(np.float32)


def _build_sample_data(poles: int):
    def sample_data(seed, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, test)`` float32 arrays (n, 1+poles, 2).

        ``seed="paper"``: NumPy legacy seed 42, train drawn first (``rand(n_train, 1+n, 2)``),
        then test, as the authors' ``generate_data``. An int seed uses
        ``np.random.default_rng(seed)`` with the same distribution and order.
        """
        n_train, n_test = int(n_train), int(n_test)
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train={n_train}, n_test={n_test}; both must be ≥ 0")
        rng, legacy = _rng(seed)
        train = _draw(rng, legacy, n_train, poles)
        test = _draw(rng, legacy, n_test, poles)
        return train, test

    return sample_data


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def make(
    poles: int = PARAMS["poles"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    scale_mass: bool = PARAMS["scale_mass"][0],
) -> Problem:
    """Build the n-pole cart-pole swing-up (see the module docstring)."""
    if not isinstance(scale_mass, (bool, np.bool_)):
        raise ValueError(f"cartpole: scale_mass={scale_mass!r}; must be true or false")
    if not _is_int(poles) or poles < 1:
        raise ValueError(f"cartpole: poles={poles!r}; must be an integer ≥ 1")
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"cartpole: dt={dt!r}; must be a finite number > 0 (seconds)")
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"cartpole: steps={steps!r}; must be an integer ≥ 1")
    poles, steps, dt = int(poles), int(steps), float(dt)

    def make_controller(key, zero_last: bool = True):
        """The paper's MLP: (B, 1+n, 2) -> force (B,); zero last kernel by default."""
        return controllers.MLP(key, in_size=2 * (1 + poles), control_shape=(), widths=(100, 100), zero_last=zero_last)

    return Problem(
        name="cartpole",
        params=dict(poles=poles, dt=dt, steps=steps, scale_mass=bool(scale_mass)),
        step=_build_step(poles, dt, (M_TOTAL - M_POLE) + M_POLE * poles if scale_mass else M_TOTAL),
        loss=TrajectoryLoss(state_loss=state_loss, on="final"),
        horizon=steps,
        sample_data=_build_sample_data(poles),
        make_controller=make_controller,
        state_shape=(1 + poles, 2),
        control_shape=(),
        defaults=dict(epochs=1000, lr=1e-3, batch_size=8, n_train=256, n_test=256),
        zero_last_default=True,
        description=(
            f"cart-pole swing-up with {poles} pole(s) on one cart, T = {steps * dt:g} s "
            f"({steps} steps): final-state loss 1 − mean cos θ"
        ),
    )


__all__ = ["PARAMS", "make", "state_loss"]
