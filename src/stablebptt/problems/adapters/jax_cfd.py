r"""A jax-cfd flow as a :class:`~stablebptt.problems.Problem` (``pip install stablebptt[jax-cfd]``).

    from stablebptt.problems.adapters.jax_cfd import import_jax_cfd, jax_cfd_problem, navier_stokes_step

    cfd = import_jax_cfd()                                   # jax_cfd.base, usable on this JAX
    grid = cfd.grids.Grid((32, 32), domain=((0, 2 * np.pi), (0, 2 * np.pi)))
    velocity = cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(0), grid, 1.0, 4)
    step = navier_stokes_step(velocity, density=1.0, viscosity=1e-2, dt=0.05, inner_steps=4,
                              control_force=lambda c, grid: my_force_field(c))
    problem = jax_cfd_problem(step, velocity=velocity, control_shape=(8,), horizon=20,
                              state_loss=kinetic_energy, sample_states=draw)

jax-cfd on current JAX
----------------------
jax-cfd 0.2.1 calls ``jax.tree_map``, ``jax.tree_leaves``, ``jax.tree_flatten``,
``jax.tree_unflatten`` and ``jax.tree_structure``, which JAX removed (0.6). :func:`import_jax_cfd`
imports ``jax_cfd.base`` and gives each loaded ``jax_cfd`` module, in place of its global name
``jax``, a read-only view of the ``jax`` module that also answers those five names with the
functions of ``jax.tree_util`` of the same names. The ``jax`` module itself is not changed, no
other module sees the names, and nothing happens on a JAX that still has ``jax.tree_map``. The
call is idempotent; call it again after importing more of jax-cfd (``jax_cfd.spectral``, …) to
cover those modules too.

State, control, step
--------------------
The library carries one sample's velocity as the float32 array of its components' values::

    x = (u_1, …, u_d) ∈ R^(d × n_1 × … × n_d)        state_shape = (d, *grid.shape)

each component on its own staggered offset of the template ``velocity`` (a ``GridVariableVector``
of one sample: its grid, offsets and boundary conditions are kept, its values ignored). One step
is, per row, ``v = unpack(x_b)``, ``x'_b = pack(step(v, c_b))`` vmapped over the batch, with the
user's ``step(v, c) -> v'`` for ONE sample and the control c of ``control_shape``.
:func:`navier_stokes_step` builds the usual one: ``inner_steps`` steps of jax-cfd's
``semi_implicit_navier_stokes`` (``funcutils.repeated``) with the forcing

    f(v) = control_force(c, grid) + forcing(v)          (one array per component, grid.shape)

the control's force held over the step (zero-order hold), each component on its velocity
component's offset. The pressure projection is jax-cfd's default (``solve_fast_diag``).

Loss, data, controller
----------------------
``state_loss(v)``: a float32 scalar of one sample's ``GridVariableVector``; ℓ is its batch mean
and the trajectory loss a :class:`~stablebptt.core.losses.TrajectoryLoss` of ℓ (``on="every"``:
(1/T) Σ ℓ(x_n), default; ``"final"``: ℓ(x_T)) plus ``control_weight`` · mean c².
``sample_states(rng, n) -> (n, d, *grid.shape)`` (a ``np.random.Generator``; :func:`pack` turns
velocities into rows); ``seed="paper"`` is the fixed seed 42. The controller is the library's MLP
on the flattened velocity or on ``observe(v)`` (one velocity → a 1-D feature vector).
"""

from __future__ import annotations

import numbers
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ...core.losses import TrajectoryLoss
from ..base import Problem
from . import _common

WHO = "jax_cfd_problem"
ON = ("every", "final")
#: the functions jax-cfd 0.2.1 reads from the ``jax`` namespace that JAX 0.6 removed
TREE_ALIASES = ("tree_map", "tree_leaves", "tree_flatten", "tree_unflatten", "tree_structure")


class _JaxWithTreeAliases(types.ModuleType):
    """The ``jax`` module as jax-cfd's modules see it: every attribute of ``jax``, and the names of
    :data:`TREE_ALIASES` that ``jax`` lacks answered by ``jax.tree_util``'s functions."""

    def __getattr__(self, name: str):
        if name in TREE_ALIASES and not hasattr(jax, name):
            return getattr(jax.tree_util, name)
        return getattr(jax, name)


_JAX_VIEW = _JaxWithTreeAliases("jax", "jax, with the jax.tree_* aliases jax-cfd 0.2.1 needs")


def _give_jax_cfd_the_aliases() -> int:
    """Point every loaded ``jax_cfd`` module's global ``jax`` at the view; the number changed."""
    if all(hasattr(jax, n) for n in TREE_ALIASES):
        return 0
    changed = 0
    for name, module in list(sys.modules.items()):
        if (name == "jax_cfd" or name.startswith("jax_cfd.")) and getattr(module, "jax", None) is jax:
            module.jax = _JAX_VIEW  # type: ignore[attr-defined]  # the module's own `jax` name
            changed += 1
    return changed


def import_jax_cfd():
    """``jax_cfd.base``, working on this JAX (module docstring); a one-line ImportError names the
    extra when jax-cfd is missing. Idempotent."""
    try:
        import jax_cfd.base as cfd
    except ImportError as e:
        raise ImportError("the jax-cfd adapter needs jax-cfd: pip install 'stablebptt[jax-cfd]'") from e
    _give_jax_cfd_the_aliases()
    return cfd


# ----------------------------------------------------------------------------- layout
def _template(velocity):
    """(grid, offsets, bcs) of a one-sample GridVariableVector; ValueError otherwise."""
    cfd = import_jax_cfd()
    comps = tuple(velocity) if isinstance(velocity, (tuple, list)) else None
    if not comps or not all(isinstance(u, cfd.grids.GridVariable) for u in comps):
        raise ValueError(
            f"{WHO}: velocity={type(velocity).__name__}; expected a tuple of jax_cfd GridVariables "
            "(a GridVariableVector, e.g. from initial_conditions.filtered_velocity_field)"
        )
    grid = comps[0].grid
    if len(comps) != grid.ndim or any(u.grid != grid for u in comps):
        raise ValueError(
            f"{WHO}: velocity has {len(comps)} components on grids {[u.grid.shape for u in comps]}; "
            f"expected {grid.ndim} on one grid"
        )
    if any(u.data.shape != grid.shape for u in comps):
        raise ValueError(
            f"{WHO}: velocity components have shapes {[u.data.shape for u in comps]}; expected "
            f"{grid.shape} each (one sample, no batch axis)"
        )
    return grid, tuple(u.offset for u in comps), tuple(u.bc for u in comps)


def pack(velocity) -> jax.Array:
    """(d, *grid.shape) float32: the components' values of one sample's velocity, stacked."""
    return jnp.stack([jnp.asarray(u.data, jnp.float32) for u in velocity])


def unpack(x: jax.Array, template):
    """The GridVariableVector of ``template``'s grid, offsets and boundary conditions with the
    values x (d, *grid.shape)."""
    cfd = import_jax_cfd()
    grid, offsets, bcs = _template(template)
    return tuple(
        cfd.grids.GridVariable(cfd.grids.GridArray(x[i], off, grid), bc)
        for i, (off, bc) in enumerate(zip(offsets, bcs))
    )


def navier_stokes_step(
    velocity,
    *,
    density: float,
    viscosity: float,
    dt: float,
    control_force: Callable,
    inner_steps: int = 1,
    forcing: Callable | None = None,
    **equation_kwargs,
) -> Callable:
    """``step(v, c) -> v'``: ``inner_steps`` steps of jax-cfd's ``semi_implicit_navier_stokes`` on
    ``velocity``'s grid (dt [s] each; density, kinematic ``viscosity``), forced by
    ``control_force(c, grid)`` (a tuple of d arrays of grid.shape, or one array (d, *grid.shape))
    plus ``forcing(v)`` (jax-cfd's forcing signature) when given. ``equation_kwargs`` go to
    ``semi_implicit_navier_stokes`` (e.g. ``convect``, ``pressure_solve``)."""
    cfd = import_jax_cfd()
    grid, offsets, _ = _template(velocity)
    density = _common.positive_float(density, "density", WHO)
    viscosity = float(viscosity)
    if not (np.isfinite(viscosity) and viscosity >= 0):
        raise ValueError(f"{WHO}: viscosity={viscosity!r}; must be a finite number ≥ 0")
    dt = _common.positive_float(dt, "dt", WHO)
    inner_steps = _common.positive_int(inner_steps, "inner_steps", WHO)
    if not callable(control_force):
        raise ValueError(f"{WHO}: control_force={control_force!r} is not callable (control_force(c, grid) -> force)")
    if forcing is not None and not callable(forcing):
        raise ValueError(f"{WHO}: forcing={forcing!r} is not callable (jax-cfd forcing: forcing(v) -> force)")

    def step(v, c):
        force = control_force(c, grid)
        if len(force) != len(offsets) or any(jnp.shape(f) != grid.shape for f in force):
            raise ValueError(
                f"{WHO}: control_force returned shapes {[jnp.shape(f) for f in force]}; expected "
                f"{len(offsets)} arrays of {grid.shape}"
            )
        controlled = tuple(
            cfd.grids.GridArray(jnp.asarray(f, jnp.float32), off, grid) for f, off in zip(force, offsets)
        )

        def total(v):
            if forcing is None:
                return controlled
            return tuple(a + b for a, b in zip(controlled, forcing(v)))

        equation = cfd.equations.semi_implicit_navier_stokes(
            density=density, viscosity=viscosity, dt=dt, grid=grid, forcing=total, **equation_kwargs
        )
        return cfd.funcutils.repeated(equation, inner_steps)(v)

    return step


# ----------------------------------------------------------------------------- problem
def _shape(v, name: str) -> tuple[int, ...]:
    try:
        s = tuple(v)
    except TypeError:
        s = None
    if s is None or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in s):  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__/__ge__
        raise ValueError(f"{WHO}: {name}={v!r}; must be a tuple of integers ≥ 1 (per-sample shape)")
    return tuple(int(d) for d in s)


def jax_cfd_problem(
    step: Callable,
    *,
    velocity,
    control_shape: Sequence[int],
    horizon: int,
    state_loss: Callable,
    sample_states: Callable,
    on: Literal["every", "final"] = "every",
    control_weight: float = 0.0,
    observe: Callable | None = None,
    widths: Sequence[int] = (64, 64),
    zero_last: bool = True,
    name: str = "jax-cfd",
    params: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> Problem:
    """A jax-cfd flow as a problem (module docstring: shim, state, step, loss, data).

    Args:
      step: ``step(v, c) -> v'`` for ONE sample (a GridVariableVector and a control of
        ``control_shape``), e.g. :func:`navier_stokes_step`.
      velocity: the one-sample GridVariableVector template (grid, offsets, boundary conditions).
      control_shape: the control's per-sample shape; horizon: T steps.
      state_loss: ``state_loss(v) -> scalar`` of one sample's velocity; the batch mean is ℓ.
      sample_states: ``(rng, n) -> (n, d, *grid.shape)`` initial velocities.
      on: ``"every"`` (mean over x_1 … x_T) or ``"final"`` (x_T); control_weight: ≥ 0.
      observe: ``observe(v) -> (k,)``, the controller's input; None: the flattened velocity.
      widths / zero_last: the MLP controller's hidden widths and last-kernel initialisation.
      name / params / description: the problem's record (params: JSON-able values).
      defaults: training settings the CLI shows (epochs, lr, batch_size, n_train, n_test).
    """
    import_jax_cfd()
    horizon = _common.positive_int(horizon, "horizon", WHO)
    widths = _common.check_widths(widths, WHO)
    control_shape = _shape(control_shape, "control_shape")
    if on not in ON:
        raise ValueError(f"{WHO}: on={on!r}; allowed: {', '.join(map(repr, ON))}")
    for label, f in (("step", step), ("state_loss", state_loss), ("sample_states", sample_states)):
        if not callable(f):
            raise ValueError(f"{WHO}: {label}={f!r} is not callable")
    if observe is not None and not callable(observe):
        raise ValueError(f"{WHO}: observe={observe!r} is not callable (one velocity -> 1-D features)")
    grid, _, _ = _template(velocity)
    state_shape = (grid.ndim,) + tuple(grid.shape)

    def row_step(x_row, c_row):
        return pack(step(unpack(x_row, velocity), c_row))

    def batched(x: jax.Array, c: jax.Array) -> jax.Array:
        """(B, d, *grid.shape) float32 velocities, (B, *control_shape) -> (B, d, *grid.shape)."""
        x = jnp.asarray(x, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if x.shape[1:] != state_shape:
            raise ValueError(f"{WHO} step: state shape {x.shape}; expected (B, {', '.join(map(str, state_shape))})")
        if c.shape != (x.shape[0],) + control_shape:
            raise ValueError(f"{WHO} step: control shape {c.shape}; expected {(x.shape[0],) + control_shape}")
        out = jax.vmap(row_step)(x, c)
        if out.shape != x.shape:
            raise ValueError(f"{WHO}: step returned a velocity of shape {out.shape[1:]}; expected {state_shape}")
        return out

    batch_loss = _common.mean_row_loss(lambda x_row: state_loss(unpack(x_row, velocity)), "state_loss", WHO)
    features, feature_size = _common.row_features(
        None if observe is None else (lambda x_row: observe(unpack(x_row, velocity))), state_shape
    )
    sample_data = _common.data_sampler(sample_states, state_shape, WHO)
    record = dict(
        step=_common.callable_name(step),
        grid=list(grid.shape),
        domain=[[float(a), float(b)] for a, b in grid.domain],
        control_shape=list(control_shape),
        horizon=horizon,
        on=on,
        control_weight=float(control_weight),
        widths=list(widths),
    )
    return Problem(
        name=name,
        params=record | dict(params or {}),
        step=batched,
        loss=TrajectoryLoss(state_loss=batch_loss, on=on, control_weight=float(control_weight)),
        horizon=horizon,
        sample_data=sample_data,
        make_controller=_common.controller_factory(state_shape, control_shape, widths, features, feature_size),
        state_shape=state_shape,
        control_shape=control_shape,
        defaults=dict(defaults or dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64)),
        zero_last_default=bool(zero_last),
        description=description
        or (
            f"jax-cfd {record['step']} on a {'×'.join(map(str, grid.shape))} grid, "
            f"T = {horizon} steps: {'mean' if on == 'every' else 'final'} state loss"
        ),
    )


__all__ = ["import_jax_cfd", "jax_cfd_problem", "navier_stokes_step", "pack", "unpack", "TREE_ALIASES"]
