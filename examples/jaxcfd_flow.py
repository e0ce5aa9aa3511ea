r"""2-D turbulence calmed by a few large-scale forces, simulated by jax-cfd: a problem file for stablebptt.

    python examples/jaxcfd_flow.py                        # two epochs of R and C: 16², 8 steps, linear
    stablebptt train examples/jaxcfd_flow.py:make --mode C -p size=64 -p horizon=40

Incompressible Navier–Stokes on the periodic square [0, 2π]² with ``size``² cells (default 32),
density 1, kinematic viscosity ν (default 0.01): each simulator step is ``inner_steps`` (default 2) steps
of jax-cfd's ``semi_implicit_navier_stokes`` of dt = 0.05 (forward Euler of convection, diffusion
and force, then the pressure projection, solved by FFT), so a trajectory of ``horizon`` (default 20) steps lasts 2 s.
``convection``: jax-cfd's default van Leer advection with flux limiters, or ``linear`` (central,
unlimited: fine at this viscosity and horizon; its gradient program compiles ~6× faster). The
control c ∈ R⁸ weighs eight shear modes held over a step::

    f_x = c_0 sin y + c_1 cos y + c_2 sin 2y + c_3 cos 2y
    f_y = c_4 sin x + c_5 cos x + c_6 sin 2x + c_7 cos 2x

The controller (an MLP on the whole velocity field) must damp the flow: the loss is the mean over
the trajectory of the kinetic energy ½ ⟨u² + v²⟩ (a spatial mean) plus 10⁻³ · mean c². Initial
velocities: jax-cfd's ``filtered_velocity_field`` (peak wave number 2, maximum speed 1), one draw
per sample from the run's seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stablebptt.problems.adapters.jax_cfd import import_jax_cfd, jax_cfd_problem, navier_stokes_step, pack

PARAMS = {
    "size": (32, "cells per side of the periodic square [0, 2π]²"),
    "horizon": (20, "simulator steps per trajectory (inner_steps × 0.05 s each)"),
    "viscosity": (0.01, "kinematic viscosity ν"),
    "inner_steps": (2, "jax-cfd steps of dt = 0.05 per simulator step"),
    "convection": ("van-leer", "van-leer (jax-cfd's default, limited) or linear (cheaper to compile)"),
}
CONVECTION = ("van-leer", "linear")
DT = 0.05


def shear_force(c, grid):
    """The eight shear modes weighted by c (8,): (f_x, f_y), each of grid.shape."""
    x, y = grid.mesh()
    fx = c[0] * jnp.sin(y) + c[1] * jnp.cos(y) + c[2] * jnp.sin(2 * y) + c[3] * jnp.cos(2 * y)
    fy = c[4] * jnp.sin(x) + c[5] * jnp.cos(x) + c[6] * jnp.sin(2 * x) + c[7] * jnp.cos(2 * x)
    return fx, fy


def kinetic_energy(v):
    """½ ⟨u² + v²⟩ over the grid, of one sample's velocity."""
    return 0.5 * sum(jnp.mean(u.data**2) for u in v)


def make(
    size: int = 32, horizon: int = 20, viscosity: float = 0.01, inner_steps: int = 2, convection: str = "van-leer"
):
    """The problem (module docstring)."""
    cfd = import_jax_cfd()
    if convection not in CONVECTION:
        raise ValueError(f"convection={convection!r}; allowed: {', '.join(CONVECTION)}")
    # jax-cfd's default (convect=None): van Leer advection with flux limiters
    convect = None if convection == "van-leer" else (lambda v: tuple(cfd.advection.advect_linear(u, v) for u in v))
    grid = cfd.grids.Grid((int(size), int(size)), domain=((0, 2 * np.pi), (0, 2 * np.pi)))

    def field(key):
        return pack(cfd.initial_conditions.filtered_velocity_field(key, grid, 1.0, 2))

    velocity = cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(0), grid, 1.0, 2)
    draw = jax.jit(jax.vmap(field))

    def sample_states(rng, n):
        return np.asarray(draw(jax.random.split(jax.random.PRNGKey(int(rng.integers(2**31))), n)))

    step = navier_stokes_step(
        velocity,
        density=1.0,
        viscosity=viscosity,
        dt=DT,
        inner_steps=inner_steps,
        control_force=shear_force,
        convect=convect,
    )
    return jax_cfd_problem(
        step,
        velocity=velocity,
        control_shape=(8,),
        horizon=horizon,
        state_loss=kinetic_energy,
        sample_states=sample_states,
        on="every",
        control_weight=1e-3,
        widths=(32,),
        name="jax-cfd-calm",
        params=dict(
            size=int(size), viscosity=float(viscosity), dt=DT, inner_steps=int(inner_steps), convection=convection
        ),
        defaults=dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64),
    )


if __name__ == "__main__":
    import time

    from stablebptt import problems
    from stablebptt.training.config import RunConfig
    from stablebptt.training.runner import train

    problem = make(size=16, horizon=8, inner_steps=1, convection="linear")
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
            lr=1e-2,
            data="seeded",
            backward="autodiff",
        )
        (res,) = train(problem, cfg, seeds=[0])
        print(
            f"{mode}: test loss {res.initial['test_loss']:.5g} -> {res.history['test_loss'][-1]:.5g} "
            f"after 2 epochs ({time.perf_counter() - t:.1f} s with compilation)"
        )
