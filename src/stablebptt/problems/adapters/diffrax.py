r"""An ODE with a control input as a :class:`~stablebptt.problems.Problem`, integrated by diffrax
(``pip install stablebptt[diffrax]``).

    def pendulum(t, y, c):                       # one sample: y (2,), c (1,)
        return jnp.stack([y[1], -jnp.sin(y[0]) + c[0]])

    problem = ode_problem(pendulum, dt=0.05, horizon=40, state_shape=(2,), control_shape=(1,),
                          state_loss=lambda y: 1 - jnp.cos(y[0] - jnp.pi), sample_states=draw)

Maths
-----
The user's vector field f(t, y, c) gives dy/dt for ONE sample: y of ``state_shape``, the control
c of ``control_shape``, t ∈ [0, dt] the time since the start of the step (the step cannot know
absolute time; a field that needs it adds a clock component to y with dy_clock/dt = 1). The
control is held constant over a step (zero-order hold), so one simulator step is::

    x_{n+1} = x_n + ∫_0^dt f(t, y(t), c_n) dt,   y(0) = x_n

solved by one ``diffrax.diffeqsolve`` over [0, dt] with the given ``solver`` (default
``diffrax.Tsit5()``) in ``substeps`` equal steps of dt / substeps (``diffrax.StepTo``: no
adaptive step size, so rows never share step decisions and the batch is one ODE system,
f vmapped over rows). Gradients flow through the solver's steps (diffrax's default
``RecursiveCheckpointAdjoint``: discretise-then-optimise, the exact gradient of the discrete
step).

The loss: ``state_loss(y)`` is a float32 scalar for one state; ℓ(x_n) is its batch mean and the
trajectory loss a :class:`~stablebptt.core.losses.TrajectoryLoss` of ℓ (``on="final"``: ℓ(x_T);
``"every"``: (1/T) Σ_n ℓ(x_n)), plus ``control_weight`` · (1/T) Σ_n mean(c_n²).

Data: ``sample_states(rng, n) -> (n, *state_shape)`` with a ``np.random.Generator``;
``seed="paper"`` is the fixed seed 42. Controller: the library's MLP on the flattened state, or on
``observe(y)`` (one state → a 1-D feature vector) when given.

Cost per step: ``substeps`` solver steps, each ``solver``'s stages (Euler 1, Tsit5 6 evaluations
of f on the batch); implicit solvers add their root finds.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ...core.losses import TrajectoryLoss
from ..base import Problem
from . import _common

WHO = "ode_problem"
ON = ("every", "final")


def _import_diffrax():
    try:
        import diffrax
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ode_problem needs diffrax: pip install 'stablebptt[diffrax]'") from e
    return diffrax


def _shape(v, name: str) -> tuple[int, ...]:
    try:
        s = tuple(v)
    except TypeError:
        s = None
    if s is None or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in s):  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__/__ge__
        raise ValueError(f"{WHO}: {name}={v!r}; must be a tuple of integers ≥ 1 (per-sample shape, () for a scalar)")
    return tuple(int(d) for d in s)


def ode_step(vector_field: Callable, *, dt: float, solver=None, substeps: int = 1) -> Callable:
    """``step(x, c) -> x'``: x (B, *state_shape), c (B, *control_shape); one ``diffeqsolve`` of
    dy/dt = f(t, y, c) over [0, dt] in ``substeps`` equal steps (module docstring)."""
    diffrax = _import_diffrax()
    dt = _common.positive_float(dt, "dt", WHO)
    substeps = _common.positive_int(substeps, "substeps", WHO)
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"{WHO}: solver={solver!r} is not a diffrax solver (e.g. diffrax.Euler(), diffrax.Tsit5())")
    if not callable(vector_field):
        raise ValueError(f"{WHO}: vector_field={vector_field!r} is not callable (f(t, y, c) -> dy/dt)")
    ts = jnp.linspace(0.0, dt, substeps + 1, dtype=jnp.float32)
    batched = jax.vmap(vector_field, in_axes=(None, 0, 0))

    def field(t, y, c):
        dy = batched(t, y, c)
        if jnp.shape(dy) != jnp.shape(y):
            raise ValueError(
                f"{WHO}: vector_field returned shape {jnp.shape(dy)[1:]} for a state of shape "
                f"{jnp.shape(y)[1:]}; dy/dt must have the state's shape"
            )
        return jnp.asarray(dy, jnp.float32)

    term = diffrax.ODETerm(field)

    def step(x: jax.Array, c: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if x.ndim < 1 or c.ndim < 1 or c.shape[0] != x.shape[0]:
            raise ValueError(f"{WHO} step: state {x.shape} and control {c.shape} must share the leading batch axis")
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=0.0,
            t1=dt,
            dt0=None,
            y0=x,
            args=c,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.StepTo(ts=ts),
            max_steps=substeps,
        )
        return sol.ys[0]

    return step


def ode_problem(
    vector_field: Callable,
    *,
    dt: float,
    horizon: int,
    state_shape: Sequence[int],
    control_shape: Sequence[int],
    state_loss: Callable,
    sample_states: Callable,
    solver=None,
    substeps: int = 1,
    on: Literal["every", "final"] = "final",
    control_weight: float = 0.0,
    observe: Callable | None = None,
    widths: Sequence[int] = (64, 64),
    zero_last: bool = True,
    name: str = "ode",
    params: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> Problem:
    """A controlled ODE as a problem (module docstring: maths, loss, data, cost).

    Args:
      vector_field: ``f(t, y, c) -> dy/dt`` for one sample (y: ``state_shape``, c: ``control_shape``).
      dt: seconds per simulator step (the control is held over it); horizon: T steps.
      state_shape / control_shape: per-sample shapes.
      state_loss: ``state_loss(y) -> scalar`` for one state; the batch mean is ℓ.
      sample_states: ``(rng, n) -> (n, *state_shape)`` initial states.
      solver: a diffrax solver (default ``diffrax.Tsit5()``); substeps: solver steps per dt.
      on: ``"final"`` (x_T) or ``"every"`` (mean over x_1 … x_T); control_weight: ≥ 0.
      observe: ``observe(y) -> (k,)``, the controller's input; None: the flattened state.
      widths / zero_last: the MLP controller's hidden widths and last-kernel initialisation.
      name / params / description: the problem's record (params: JSON-able values).
      defaults: training settings the CLI shows (epochs, lr, batch_size, n_train, n_test).
    """
    horizon = _common.positive_int(horizon, "horizon", WHO)
    state_shape, control_shape = _shape(state_shape, "state_shape"), _shape(control_shape, "control_shape")
    if not callable(state_loss):
        raise ValueError(f"{WHO}: state_loss={state_loss!r} is not callable (one state -> scalar)")
    if not callable(sample_states):
        raise ValueError(f"{WHO}: sample_states={sample_states!r} is not callable ((rng, n) -> (n, *state_shape))")
    if on not in ON:
        raise ValueError(f"{WHO}: on={on!r}; allowed: {', '.join(map(repr, ON))}")
    if observe is not None and not callable(observe):
        raise ValueError(f"{WHO}: observe={observe!r} is not callable (one state -> 1-D features)")
    widths = _common.check_widths(widths, WHO)
    step = ode_step(vector_field, dt=dt, solver=solver, substeps=substeps)

    batch_loss = _common.mean_row_loss(state_loss, "state_loss", WHO)
    features, feature_size = _common.row_features(observe, state_shape)
    sample_data = _common.data_sampler(sample_states, state_shape, WHO)

    solver_name = "Tsit5" if solver is None else type(solver).__name__
    record = dict(
        vector_field=_common.callable_name(vector_field),
        solver=solver_name,
        dt=float(dt),
        substeps=int(substeps),
        horizon=horizon,
        on=on,
        control_weight=float(control_weight),
        widths=list(widths),
    )
    return Problem(
        name=name,
        params=record | dict(params or {}),
        step=step,
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
            f"ODE {record['vector_field']} ({solver_name}, {substeps} step(s) per "
            f"dt = {float(dt):g} s), T = {horizon} steps: "
            f"{'final' if on == 'final' else 'mean'} state loss"
        ),
    )


__all__ = ["ode_problem", "ode_step"]
