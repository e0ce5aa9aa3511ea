r"""Cart with an n-link pendulum (a chain of n = 1 … 6 rods), swung up from hanging.

Physics (SI units: metres, seconds, kilograms, newtons, radians)
----------------------------------------------------------------
A cart of mass m_c moves on a frictionless rail; a chain of n uniform rods (link k: mass m_k,
length L_k, moment of inertia m_k L_k²/12 about its centre) hangs from it, link 1 hinged on
the cart and link k hinged at the tip of link k − 1 (frictionless joints). Unlike the
paper's ``cartpole``, whose poles hang independently from the cart, the links are *coupled*:
each one carries the links below it. One horizontal force F [N] per sample drives the cart
(no force limit, as in the paper's cart-pole); the system is underactuated.

Generalised coordinates q = (x, θ_1, …, θ_n): the cart position and the *absolute* angle of
each link from the upward vertical (θ = 0 upright, π hanging; positive θ leans the link
towards −x, the paper cart-pole's convention). The centre of link k sits at

    p_k = (x + Σ_{j<k} L_j sin θ_j + ½ L_k sin θ_k,   Σ_{j<k} L_j cos θ_j + ½ L_k cos θ_k).

With the link constants (computed once, a loop over links)

    h_j = L_j (½ m_j + Σ_{k>j} m_k)                    first moment carried by joint j
    N_ij = L_min(i,j) h_max(i,j)   (i ≠ j),   N_ii = L_i² (⅓ m_i + Σ_{k>i} m_k)

the Lagrangian L = T − V of the rods is

    T = ½ m_tot ẋ² + ẋ Σ_j h_j cos θ_j θ̇_j + ½ Σ_ij N_ij cos(θ_i − θ_j) θ̇_i θ̇_j,
    V = g Σ_j h_j cos θ_j,              m_tot = m_c + Σ_k m_k,

so T = ½ q̇ᵀ M(q) q̇ with the mass matrix

    M_xx = m_tot,   M_xθj = h_j cos θ_j,   M_θiθj = N_ij cos(θ_i − θ_j),

and the Euler–Lagrange equations are M(q) q̈ = τ(q, q̇, F) with

    τ_x  = F + Σ_j h_j sin θ_j θ̇_j²
    τ_θi = g h_i sin θ_i − Σ_j N_ij sin(θ_i − θ_j) θ̇_j²

(Coriolis/centrifugal terms and gravity in closed form). q̈ comes from a batched dense solve
of this symmetric positive-definite (1+n)×(1+n) system. For n = 1 with m_c = 1.0, m = 0.1,
L = 1.0 these are exactly the paper's single cart-pole equations (M = 1.1, half-length 0.5,
the factor 4/3 of a uniform rod).

One step of length ``dt`` [s] is the paper cart-pole's semi-implicit (symplectic) Euler::

    q̇ ← q̇ + dt q̈(q, q̇, F);   q ← q + dt q̇(new)

It conserves the energy of the unforced system up to a bounded O(dt) oscillation (no drift).

State, control, loss
--------------------
As the paper's cart-pole: a batch of states is a float32 array (B, 1 + n, 2), row 0 the cart
(x [m], ẋ [m/s]), row k link k (θ_k [rad], θ̇_k [rad/s]); the control is one force per sample,
shape (B,). The task is the paper's swing-up: the loss looks at the final state only
(T = ``steps``·``dt``, default 1 s = 100 steps of 0.01 s)::

    L = 1 − mean over (batch, links) of cos θ_k(T)           range 0 … 2, 0 = all upright

Data
----
The paper cart-pole's draw with n poles replaced by n links: x, ẋ, θ̇_k ~ U[−1, 1) and
θ_k = π + U[−1, 1)·π/6 (each link hanging, within ±30° of the downward vertical).
``seed="paper"`` is NumPy's legacy ``seed(42)`` stream in the authors' order (for
``links=n`` the same initial states as ``cartpole`` with ``poles=n``); an int seed uses
``np.random.default_rng(seed)``.

Controller
----------
The paper's MLP: the state flattened as [x, ẋ, θ1, θ̇1, …] → Dense 100 tanh → Dense 100 tanh →
Dense 1 (linear) = F, the last kernel zero-initialised as in the paper's cart-pole preset.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.losses import TrajectoryLoss
from . import controllers
from .base import Problem
from .cartpole import G, _build_sample_data, state_loss

#: the largest number of links a problem may have
MAX_LINKS = 6

PARAMS: dict[str, tuple[Any, str]] = {
    "links": (1, f"number of links in the chain (integer 1 … {MAX_LINKS}); 1 is the paper's single cart-pole"),
    "dt": (0.01, "time step in seconds (semi-implicit Euler, as the paper's cart-pole)"),
    "steps": (100, "simulator steps per trajectory (horizon T = steps·dt; paper cart-pole: 1 s)"),
    "cart_mass": (1.0, "mass of the cart in kg"),
    "link_mass": (0.1, "mass of each link in kg (a uniform rod)"),
    "link_length": (1.0, "length of each link in m (the paper's pole: 1 m, half-length 0.5)"),
}


@dataclass(frozen=True)
class Chain:
    """A cart (mass ``cart_mass`` [kg]) carrying a chain of uniform rods, link k of mass
    ``masses[k]`` [kg] and length ``lengths[k]`` [m], with gravity ``g`` [m/s²]; see the module
    docstring for the equations. Every method works in the dtype of its inputs (float32 in the
    problem, float64 in the tests) and broadcasts over leading batch axes."""

    cart_mass: float
    masses: tuple[float, ...]
    lengths: tuple[float, ...]
    g: float = G

    @property
    def links(self) -> int:
        return len(self.masses)

    def coefficients(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(m_tot, h (n,), N (n, n)) in float64: total mass [kg], first moments h_j [kg·m] and
        the inertia couplings N_ij [kg·m²] of the module docstring."""
        m, L = np.asarray(self.masses, np.float64), np.asarray(self.lengths, np.float64)
        below = np.cumsum(m[::-1])[::-1] - m  # Σ_{k>j} m_k
        h = L * (0.5 * m + below)
        n = len(m)
        N = np.empty((n, n))
        for i in range(n):
            for j in range(n):
                N[i, j] = L[min(i, j)] * h[max(i, j)] if i != j else L[i] ** 2 * (m[i] / 3.0 + below[i])
        return float(self.cart_mass + m.sum()), h, N

    def mass_matrix(self, theta: jax.Array) -> jax.Array:
        """M(q): link angles θ (..., n) -> (..., 1+n, 1+n), rows/columns ordered (x, θ_1 … θ_n)."""
        m_tot, h, N = (jnp.asarray(a, theta.dtype) for a in self.coefficients())
        c, s = jnp.cos(theta), jnp.sin(theta)
        cos_diff = c[..., :, None] * c[..., None, :] + s[..., :, None] * s[..., None, :]  # cos(θ_i − θ_j)
        hc = h * c  # (..., n)
        top = jnp.concatenate([jnp.broadcast_to(m_tot, hc.shape[:-1] + (1,)), hc], -1)
        rest = jnp.concatenate([hc[..., :, None], N * cos_diff], -1)
        return jnp.concatenate([top[..., None, :], rest], -2)

    def generalised_forces(self, theta: jax.Array, theta_dot: jax.Array, force: jax.Array) -> jax.Array:
        """τ(q, q̇, F), the right-hand side of M q̈ = τ: θ, θ̇ (..., n), F (...) [N] -> (..., 1+n)
        (the force on the cart, centrifugal/Coriolis terms and gravity; the cart position does
        not enter)."""
        _, h, N = (jnp.asarray(a, theta.dtype) for a in self.coefficients())
        c, s = jnp.cos(theta), jnp.sin(theta)
        w2 = theta_dot**2
        sin_diff = s[..., :, None] * c[..., None, :] - c[..., :, None] * s[..., None, :]  # sin(θ_i − θ_j)
        tau_x = force + jnp.sum(h * s * w2, -1)
        tau_th = self.g * h * s - jnp.einsum("...ij,...j->...i", N * sin_diff, w2)
        return jnp.concatenate([tau_x[..., None], tau_th], -1)

    def accelerations(self, state: jax.Array, force: jax.Array) -> jax.Array:
        """q̈ = M(q)⁻¹ τ(q, q̇, F): state (..., 1+n, 2), force (...) -> (..., 1+n) [m/s², rad/s²]."""
        theta, theta_dot = state[..., 1:, 0], state[..., 1:, 1]
        mass = self.mass_matrix(theta)
        tau = self.generalised_forces(theta, theta_dot, force)
        return jnp.linalg.solve(mass, tau[..., None])[..., 0]

    def energy(self, state: jax.Array) -> jax.Array:
        """Total energy T + V [J] (V = 0 with every link's centre at rail height):
        state (..., 1+n, 2) -> (...)."""
        _, h, _ = self.coefficients()
        q_dot = state[..., 1]
        mass = self.mass_matrix(state[..., 1:, 0])
        kinetic = 0.5 * jnp.einsum("...i,...ij,...j->...", q_dot, mass, q_dot)
        return kinetic + self.g * jnp.sum(jnp.asarray(h, state.dtype) * jnp.cos(state[..., 1:, 0]), -1)

    def step(self, state: jax.Array, force: jax.Array, dt: float) -> jax.Array:
        """One semi-implicit Euler step: q̇ ← q̇ + dt q̈;  q ← q + dt q̇(new).
        state (..., 1+n, 2), force (...) -> state' (..., 1+n, 2), in the state's dtype."""
        q, q_dot = state[..., 0], state[..., 1]
        q_dot = q_dot + dt * self.accelerations(state, force)
        return jnp.stack([q + dt * q_dot, q_dot], -1)


def _build_step(chain: Chain, dt: float):
    n = chain.links

    def step(state: jax.Array, force: jax.Array) -> jax.Array:
        """One semi-implicit Euler step of the cart-chain.

        state (B, 1+n, 2) float32 [cart (x, ẋ); link k (θ_k, θ̇_k)], force (B,) float32 [N]
        -> state' (B, 1+n, 2).
        """
        state = jnp.asarray(state, jnp.float32)
        force = jnp.asarray(force, jnp.float32)
        if state.shape[-2:] != (1 + n, 2):
            raise ValueError(f"cart-chain step: state shape {state.shape}; expected (B, {1 + n}, 2) for {n} link(s)")
        if force.shape != state.shape[:-2]:
            raise ValueError(
                f"cart-chain step: force shape {force.shape}; expected {state.shape[:-2]} "
                "(one scalar per sample, no trailing axis)"
            )
        return chain.step(state, force, dt)

    return step


def _positive(name: str, v, unit: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__/__ge__
        raise ValueError(f"cart-chain: {name}={v!r}; must be a finite number > 0 ({unit})")
    return float(v)


def _count(name: str, v, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__/__ge__
        allowed = f"an integer {lo} … {hi}" if hi is not None else f"an integer ≥ {lo}"
        raise ValueError(f"cart-chain: {name}={v!r}; must be {allowed}")
    return int(v)


def make(
    links: int = PARAMS["links"][0],
    dt: float = PARAMS["dt"][0],
    steps: int = PARAMS["steps"][0],
    cart_mass: float = PARAMS["cart_mass"][0],
    link_mass: float = PARAMS["link_mass"][0],
    link_length: float = PARAMS["link_length"][0],
) -> Problem:
    """Build the cart-chain swing-up with ``links`` equal links (see the module docstring)."""
    links = _count("links", links, 1, MAX_LINKS)
    steps = _count("steps", steps, 1)
    dt = _positive("dt", dt, "seconds")
    cart_mass = _positive("cart_mass", cart_mass, "kg")
    link_mass = _positive("link_mass", link_mass, "kg")
    link_length = _positive("link_length", link_length, "m")
    chain = Chain(cart_mass, (link_mass,) * links, (link_length,) * links)

    def make_controller(key, zero_last: bool = True):
        """The paper's MLP: (B, 1+n, 2) -> force (B,); zero last kernel by default."""
        return controllers.MLP(key, in_size=2 * (1 + links), control_shape=(), widths=(100, 100), zero_last=zero_last)

    return Problem(
        name="cart-chain",
        params=dict(links=links, dt=dt, steps=steps, cart_mass=cart_mass, link_mass=link_mass, link_length=link_length),
        step=_build_step(chain, dt),
        loss=TrajectoryLoss(state_loss=state_loss, on="final"),
        horizon=steps,
        sample_data=_build_sample_data(links),
        make_controller=make_controller,
        state_shape=(1 + links, 2),
        control_shape=(),
        defaults=dict(epochs=1000, lr=1e-3, batch_size=8, n_train=256, n_test=256),
        zero_last_default=True,
        description=(
            f"cart with a {links}-link pendulum (coupled rods), swing-up in T = {steps * dt:g} s "
            f"({steps} steps): final-state loss 1 − mean cos θ"
        ),
    )


def chain_of(problem: Problem) -> Chain:
    """The :class:`Chain` a cart-chain problem simulates (from its ``params``)."""
    p = problem.params
    return Chain(p["cart_mass"], (p["link_mass"],) * p["links"], (p["link_length"],) * p["links"])


__all__ = ["PARAMS", "MAX_LINKS", "Chain", "chain_of", "make", "state_loss"]
