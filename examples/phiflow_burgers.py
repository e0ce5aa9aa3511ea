r"""1-D Burgers flow brought to rest by a force field, simulated by PhiFlow: a problem file for stablebptt.

    python examples/phiflow_burgers.py                       # two epochs of R and C, in seconds
    stablebptt train examples/phiflow_burgers.py:make --mode C -p cells=128 -p horizon=32

The setting of Holl, Koltun & Thuerey (ICLR 2020)'s Burgers experiments: a periodic domain of
length 2 with ``cells`` cells (default 128), viscosity ν = 0.003, ``horizon`` steps (default 32)
of dt = 0.03. One step, written with PhiFlow (``flow.diffuse.explicit``, then
``flow.advect.semi_lagrangian``, then the force)::

    u ← u + ν dt ∂²u/∂x²,    u ← u(x − u dt),    u ← u + dt f

The control f is a force field on the same grid (one value per cell), the controller an MLP on
the velocity. Loss: the mean over the trajectory of mean_x u² (bring the flow to rest; viscosity
alone takes ~1/(ν k²) ≈ 30 s per mode, the trajectory lasts 0.96 s). Initial states: the sum
of sin and cos modes k = 1 … 3 (wave number in periods per domain) with amplitudes
uniform in ±0.5.
"""

from __future__ import annotations

import numpy as np

from stablebptt.problems.adapters.phiflow import flow, phiflow_problem

math = flow.math
PARAMS = {
    "cells": (128, "grid cells of the periodic domain (length 2)"),
    "horizon": (32, "simulator steps per trajectory (dt = 0.03 each)"),
    "viscosity": (0.003, "kinematic viscosity ν"),
}
LENGTH, DT = 2.0, 0.03


def make(cells: int = 128, horizon: int = 32, viscosity: float = 0.003):
    """The problem (module docstring)."""
    velocity = flow.CenteredGrid(0, flow.extrapolation.PERIODIC, x=int(cells), bounds=flow.Box(x=LENGTH))
    x = np.arange(int(cells)) * LENGTH / int(cells)

    def step(u, force):
        u = flow.diffuse.explicit(u, viscosity, DT)
        return flow.advect.semi_lagrangian(u, u, DT) + DT * force

    def energy(u):
        return math.mean(u.values**2)

    def sample_states(rng, n):
        a = rng.uniform(-0.5, 0.5, (n, 3, 2))
        k = 2 * np.pi * np.arange(1, 4)[:, None] * x[None, :] / LENGTH
        return np.einsum("nk,kx->nx", a[..., 0], np.sin(k)) + np.einsum("nk,kx->nx", a[..., 1], np.cos(k))

    return phiflow_problem(
        step,
        state=velocity,
        control=velocity,
        horizon=horizon,
        state_loss=energy,
        sample_states=sample_states,
        on="every",
        widths=(64,),
        name="phiflow-burgers",
        params=dict(cells=int(cells), viscosity=float(viscosity), length=LENGTH, dt=DT),
        defaults=dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64),
    )


if __name__ == "__main__":
    import time

    from stablebptt import problems
    from stablebptt.training.config import RunConfig
    from stablebptt.training.runner import train

    problem = make(cells=64, horizon=16)
    problems.register(problem.name, lambda: problem, params={})
    for mode in ("R", "C"):
        t = time.perf_counter()
        cfg = RunConfig(
            problem=problem.name,
            mode=mode,
            epochs=2,
            n_train=16,
            n_test=16,
            batch_size=8,
            lr=3e-3,
            data="seeded",
            backward="autodiff",
        )
        (res,) = train(problem, cfg, seeds=[0])
        print(
            f"{mode}: test loss {res.initial['test_loss']:.5g} -> {res.history['test_loss'][-1]:.5g} "
            f"after 2 epochs ({time.perf_counter() - t:.1f} s with compilation)"
        )
