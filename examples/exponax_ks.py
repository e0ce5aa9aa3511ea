r"""Kuramoto–Sivashinsky damped by three actuators, built with the exponax adapter: a problem file.

    stablebptt train examples/exponax_ks.py:make --mode C --epochs 20
    stablebptt train examples/exponax_ks.py:make --mode R -p horizon=40

The PDE u_t + u u_x + u_xx + u_xxxx = f on the periodic domain (0, 22) with 32 points
(exponax's ``KuramotoSivashinskyConservative``, Δt = 0.5 per controlled step); the control is
the amplitudes of three Gaussian bumps (σ = 1) summed into f. The loss is the mean energy
½⟨u²⟩ over the T steps plus 0.1 · mean(c²). Initial states: exponax's random truncated Fourier
series advanced 100 uncontrolled steps (onto the chaotic attractor).

The built-in ``ks`` problem (``stablebptt train ks -p L=22``) is the full version of this file.
"""

from __future__ import annotations

import exponax as ex
import jax.numpy as jnp

from stablebptt.problems.adapters import exponax_problem, gaussian_actuators

PARAMS = {
    "horizon": (10, "controlled steps per trajectory (each Δt = 0.5)"),
    "actuators": (3, "number of Gaussian actuators"),
}


def energy(u) -> jnp.ndarray:
    """½⟨u²⟩ of one state (1, 32)."""
    return 0.5 * jnp.mean(u**2)


def make(horizon: int = 10, actuators: int = 3):
    """The problem (module docstring)."""
    ks = ex.stepper.KuramotoSivashinskyConservative(1, 22.0, 32, 0.5)
    return exponax_problem(
        ks,
        horizon=horizon,
        state_loss=energy,
        on="every",
        control_weight=0.1,
        actuators=gaussian_actuators(ks, actuators, width=1.0),
        ic=ex.ic.RandomTruncatedFourierSeries(1, cutoff=3),
        spin_up=100,
        widths=(32,),
        name="exponax-ks",
        defaults=dict(epochs=20, lr=1e-3, batch_size=8, n_train=32, n_test=16),
    )
