r"""Hopper: a one-legged planar robot driven forward through foot–floor contact (MuJoCo MJX via Brax).

Physics (SI units: metres, seconds, radians, newton-metres)
-----------------------------------------------------------
Brax's ``hopper`` environment (the MuJoCo/Gym hopper: torso, thigh, leg and foot capsules in
the x–z plane; ``hopper.xml`` of Brax), stepped by MuJoCo MJX through the Brax adapter
(:func:`~stablebptt.problems.adapters.brax_problem`). The foot touches the floor (a capsule–plane
contact with friction, condim 3) and the three leg hinges have joint limits: the constraint
solver acts at every step. The adapter runs MJX's solver with 1 iteration and ``ls_iterations``
line-search steps, the settings that reverse-mode autodiff can differentiate (the adapter's
docs). One simulator step is ``env.dt`` = 4 × 0.002 s = 0.008 s (Brax's ``n_frames``).

State, control
--------------
x = (q, q̇) ∈ R¹², float32, one row per sample::

    q = (x_torso [m], z_torso − 1.25 [m], θ_torso [rad], θ_thigh, θ_leg, θ_foot [rad])

(the root slide joints rootx, rootz and the torso's pitch rooty, then the three hinges), q̇ their
rates. The control c ∈ R³ drives the three hinge motors (gear 200 N·m), clipped by the actuators
to [−1, 1] (outside it the gradient is 0; the control penalty keeps it inside).

Loss
----
Run forward, upright, at the standing height, averaged over the T steps of a trajectory
(``on="every"``) and the batch::

    ℓ(x) = −ẋ_torso + w_up · (θ_torso² + (z_torso − 1.25)²)
    L    = (1/T) Σ_{n=1..T} mean_b ℓ(x_{n,b}) + 10⁻³ · (1/T) Σ_n mean(c_n²)

(w_up = ``upright``, per rad² and per m²). Brax's hopper reward is forward velocity plus an
"alive" bonus that ends the episode when the torso tilts or falls; on a fixed horizon the
quadratic terms stand in for that bonus, so the controller cannot buy speed by falling.

Data, controller
----------------
x_0: Brax's standing pose ``init_q`` plus U[−``noise``, ``noise``] on every q and q̇ entry
(Brax's reset uses ±0.005). That pose holds the foot 4 cm above the floor: the hopper drops onto
its foot in the first ≈ 0.09 s (11 steps) and is in contact from then on. ``seed="paper"`` is seed 42 (no published data set). The
controller is the library's MLP (32, 32) tanh on Brax's hopper observation without the forward
position, (q_1 … q_5, q̇) ∈ R¹¹; its last kernel starts at zero (the untrained controller
applies no torque).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from .base import Problem

PARAMS: dict[str, tuple[Any, str]] = {
    "steps": (50, "simulator steps per trajectory (horizon T, each env.dt = 0.008 s)"),
    "noise": (0.05, "half-width of the uniform noise on the initial q [m, rad] and q̇ [per s]"),
    "upright": (1.0, "weight w_up of the torso's pitch² and height² in the loss"),
    "ls_iterations": (4, "MJX line-search iterations of the constraint solver (integer ≥ 1)"),
    "backend": ("mjx", "Brax pipeline: mjx (MuJoCo's solver), generalized, positional or spring"),
}

#: weight of the mean squared action in the loss (Brax's hopper: ctrl_cost_weight = 10⁻³)
CONTROL_WEIGHT = 1e-3
#: height of the torso's root above the floor in the standing pose [m]
STANDING_HEIGHT = 1.25


def make(
    steps: int = 50,
    noise: float = 0.05,
    upright: float = 1.0,
    ls_iterations: int = 4,
    backend: str = "mjx",
    name: str = "hopper",
) -> Problem:
    """The hopper problem (module docstring) with T = ``steps``."""
    from .adapters import brax_problem

    w_up = float(upright)
    if not (math.isfinite(w_up) and w_up >= 0):
        raise ValueError(f"hopper: upright={upright!r}; must be a finite number ≥ 0")

    def run_upright(ps):
        """ℓ of one pipeline state: −ẋ_torso + w_up (θ_torso² + Δz²)."""
        return -ps.qd[0] + w_up * (ps.q[2] ** 2 + ps.q[1] ** 2)

    def observe(ps):
        """The controller's input: (q_1 … q_5, q̇) ∈ R¹¹ (no forward position)."""
        return jnp.concatenate([ps.q[1:], ps.qd])

    mjx_only = dict(ls_iterations=ls_iterations) if backend == "mjx" else {}
    problem = brax_problem(
        "hopper",
        horizon=steps,
        state_loss=run_upright,
        observe=observe,
        control_weight=CONTROL_WEIGHT,
        q_noise=noise,
        qd_noise=noise,
        backend=backend,
        widths=(32, 32),
        name=name,
        **mjx_only,
        defaults=dict(epochs=100, lr=1e-3, batch_size=8, n_train=64, n_test=64),
    )
    params = dict(
        steps=problem.horizon, noise=float(noise), upright=w_up, ls_iterations=int(ls_iterations), backend=backend
    ) | {k: v for k, v in problem.params.items() if k in ("dt", "iterations", "on", "control_weight", "widths")}
    return dataclasses.replace(problem, params=params)


__all__ = ["PARAMS", "make"]
