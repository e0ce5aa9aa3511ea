r"""A Brax environment as a :class:`~stablebptt.problems.Problem` (``pip install stablebptt[brax]``).

    problem = brax_problem("inverted_double_pendulum", horizon=50, reward=my_reward)

Any Brax ``PipelineEnv`` works (pipelines ``generalized``, ``positional``, ``spring`` and
``mjx``), and so does a MuJoCo model given directly (a ``mujoco.MjModel`` or an ``mjx.Model``,
stepped by Brax's MJX pipeline, ``n_frames`` physics steps per simulator step): only the physics
pipeline is used — ``pipeline_init`` and ``pipeline_step`` — never an environment's
``reset``/``step``, reward or termination.

MJX: solver settings that differentiate
---------------------------------------
MuJoCo's constraint solver (Newton or CG on the convex contact/limit problem) is, in MJX, a
``lax.while_loop`` over solver iterations when ``opt.iterations > 1``: reverse-mode autodiff
(``jax.grad``, hence BPTT) cannot differentiate a ``while_loop``. With ``opt.iterations = 1``
MJX runs the one iteration without a loop, and its line search is a ``lax.scan`` of fixed length
``opt.ls_iterations`` (iterations after convergence are no-ops), which differentiates. So on
the MJX pipeline the adapter sets, on a copy of the system (the user's object is not changed)::

    opt.iterations    = 1                   (any other value is refused: no reverse mode)
    opt.ls_iterations = ls_iterations       (default 4; any integer ≥ 1 differentiates)

whatever the model file says (Brax's hopper asks for 4 iterations). One solver iteration per
physics step from MJX's warm start (the previous frame's accelerations within a simulator step,
else the smooth dynamics) is an inexact solve where several contacts interact; the tests
measure it against MuJoCo's own converged C solver. The line search is computed in full under
``vmap`` (a batched ``cond`` evaluates both branches) and stored for the reverse pass, so its
cost and memory grow linearly with ``ls_iterations``; 4 keeps the gradient equal to finite
differences of the same step. A model whose MJX implementation is not JAX (``impl="c"`` or
``"warp"``: foreign calls, no derivative) is refused.

State, control, step
--------------------
The library carries one float32 array per sample, the generalized coordinates and velocities::

    x = (q, q̇) ∈ R^(nq + nv)          state_shape = (nq + nv,)   (metres / radians, per second)

(q in the system's coordinates: slide joints in m, hinges in rad, free joints as position and
unit quaternion.) The control is the environment's action, c ∈ R^(action_size),
control_shape = (action_size,); the actuators clip it to their control range (outside the
range its gradient is 0; a ``control_weight`` keeps it inside). One step of length
``env.dt`` = ``n_frames`` · ``sys.opt.timestep`` [s] is, for each row::

    ps  = env.pipeline_init(q, q̇)            (the pipeline state rebuilt from the array)
    ps' = env.pipeline_step(ps, c)           (n_frames physics steps, a lax.scan)
    x'  = (ps'.q, ps'.qd)

vmapped over the batch. Rebuilding the pipeline state costs one ``pipeline_init`` per row and
step (kinematics and the pipeline's derived quantities) on top of the ``n_frames`` steps, and
drops what ``(q, q̇)`` does not hold: MJX's solver warm start (the solver then starts from zero
every step, a different iterate where it stops before converging) and actuator activations
(systems with activation states, ``sys.na > 0``, are refused).

Loss
----
The user gives exactly one of ``state_loss(ps)`` or ``reward(ps)``: a float32 scalar for ONE
pipeline state (unbatched), so it can read body positions (``ps.x.pos``), velocities
(``ps.xd``), ``ps.q`` and ``ps.qd``. The batched state loss is the batch mean on the pipeline
states rebuilt from x_n (``pipeline_init`` again; unused parts of it are compiled away when the
function only reads ``ps.q``/``ps.qd``)::

    ℓ(x_n) = mean_b state_loss(ps_{n,b})     or     ℓ(x_n) = −mean_b reward(ps_{n,b})

and the trajectory loss is a :class:`~stablebptt.core.losses.TrajectoryLoss` of ℓ: with
``on="every"`` (default) L = (1/T) Σ_{n=1..T} ℓ(x_n), with ``on="final"`` L = ℓ(x_T), plus
``control_weight`` · (1/T) Σ_n mean(c_n²). A Brax environment's reward that depends on the
previous state or on the action (e.g. a forward velocity from two positions, a control cost) is
written with ``ps.qd`` and ``control_weight`` instead.

Data, controller
----------------
``sample_data(seed, n_train, n_test)`` draws x_0 with ``sample_states(rng, n)`` (a
``np.random.Generator`` and a count → (n, nq + nv)); by default q = ``sys.init_q`` (a raw model: ``qpos0``) + U[−q_noise,
q_noise] and q̇ = U[−qd_noise, qd_noise] entrywise (the classic control environments' reset, with
a chosen spread). ``seed="paper"`` is the fixed seed 42 (there is no published data set). The
controller is the library's MLP on x, or on ``observe(ps)`` (one pipeline state → a 1-D
observation) when ``observe`` is given, with ``widths`` hidden tanh layers and a linear output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ...core.losses import TrajectoryLoss
from ..base import Problem
from . import _common

WHO = "brax_problem"
ON = ("every", "final")


def _import_brax():
    try:
        import brax  # noqa: F401
        from brax import envs
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("brax_problem needs Brax: pip install 'stablebptt[brax]'") from e
    return envs


#: MJX's constraint-solver iterations the adapter allows: more run in a ``lax.while_loop``,
#: which reverse-mode autodiff cannot differentiate
MJX_ITERATIONS = 1
#: the default length of MJX's line search (a fixed-length ``lax.scan``; any value ≥ 1 differentiates)
MJX_LS_ITERATIONS = 4


def _model_env(model, n_frames: int):
    """A pipeline environment (``sys``, ``dt``, ``backend``, ``action_size``, ``pipeline_init``,
    ``pipeline_step``) stepping a MuJoCo model with Brax's MJX pipeline, ``n_frames`` physics
    steps per step; ``model`` is a ``mujoco.MjModel`` (put on the device with ``mjx.put_model``)
    or an ``mjx.Model``."""
    _import_brax()
    import mujoco
    from brax.mjx import pipeline
    from mujoco import mjx

    sys = mjx.put_model(model) if isinstance(model, mujoco.MjModel) else model

    class MJXModelEnv:
        backend = "mjx"

        def __init__(self, sys):
            self.sys = sys

        @property
        def dt(self):
            return self.sys.opt.timestep * n_frames

        @property
        def action_size(self) -> int:
            return int(self.sys.nu)

        def pipeline_init(self, q, qd):
            return pipeline.init(self.sys, q, qd)

        def pipeline_step(self, ps, action):
            return jax.lax.scan(lambda s, _: (pipeline.step(self.sys, s, action), None), ps, (), n_frames)[0]

    return MJXModelEnv(sys)


def _is_mujoco_model(env) -> bool:
    """Whether ``env`` is a raw MuJoCo model (``mujoco.MjModel`` or an ``mjx.Model`` that is not
    a Brax environment's system); only checked once the modules are importable."""
    try:
        import mujoco
        from mujoco import mjx
    except ImportError:  # pragma: no cover - exercised only without the extra
        return False
    return isinstance(env, (mujoco.MjModel, mjx.Model))


def _environment(env, backend: str, env_kwargs: Mapping[str, Any] | None, n_frames: int | None):
    """A Brax ``PipelineEnv`` (unwrapped) from an instance or a registered name, or a pipeline
    environment of a raw MuJoCo model (:func:`_model_env`)."""
    if n_frames is not None and not _is_mujoco_model(env):
        raise ValueError(
            f"{WHO}: n_frames={n_frames!r} applies to a MuJoCo model given directly; a Brax "
            "environment sets its own (env_kwargs=dict(n_frames=…) for one given by name)"
        )
    if isinstance(env, str):
        envs = _import_brax()
        try:
            return envs.get_environment(env, backend=backend, **dict(env_kwargs or {}))
        except KeyError:
            raise ValueError(
                f"{WHO}: env={env!r} is not a registered Brax environment; "
                f"available: {', '.join(sorted(getattr(envs, '_envs', {})))}"
            ) from None
    if env_kwargs:
        raise ValueError(
            f"{WHO}: env_kwargs apply to an environment given by name; got an instance "
            f"({type(env).__name__}) with env_kwargs={dict(env_kwargs)!r}"
        )
    if _is_mujoco_model(env):
        return _model_env(env, _common.positive_int(1 if n_frames is None else n_frames, "n_frames", WHO))
    inner = getattr(env, "unwrapped", env)
    missing = [a for a in ("pipeline_init", "pipeline_step", "sys", "dt") if not hasattr(inner, a)]
    if missing:
        raise ValueError(
            f"{WHO}: env={env!r} is not a Brax PipelineEnv (it lacks {', '.join(missing)}); "
            "give a registered name, a brax.envs.PipelineEnv instance, a mujoco.MjModel or an "
            "mjx.Model"
        )
    return inner


def _differentiable_mjx(penv, iterations, ls_iterations):
    """``(penv, settings)``: on the MJX pipeline, a shallow copy of ``penv`` whose system's
    solver differentiates (``opt.iterations`` = 1, ``opt.ls_iterations`` = ``ls_iterations`` or
    :data:`MJX_LS_ITERATIONS`; module docstring) and those settings as a dict; on another
    pipeline ``penv`` itself and ``{}``. ValueError, one line, for a setting with no reverse-mode
    derivative or for solver settings given to another pipeline."""
    backend = getattr(penv, "backend", None)
    if backend != "mjx":
        given = [
            f"{k}={v!r}" for k, v in (("iterations", iterations), ("ls_iterations", ls_iterations)) if v is not None
        ]
        if given:
            raise ValueError(
                f"{WHO}: {', '.join(given)} set MJX's constraint solver; the environment uses the "
                f"{backend!r} pipeline (give them with backend='mjx' or an MJX model)"
            )
        return penv, {}
    if iterations is not None and (isinstance(iterations, bool) or iterations != MJX_ITERATIONS):
        raise ValueError(
            f"{WHO}: iterations={iterations!r}: MJX runs more than one constraint-solver iteration "
            f"in a lax.while_loop, which reverse-mode autodiff cannot differentiate; allowed: "
            f"iterations={MJX_ITERATIONS} (the default)"
        )
    ls = MJX_LS_ITERATIONS if ls_iterations is None else _common.positive_int(ls_iterations, "ls_iterations", WHO)
    sys = penv.sys
    impl = getattr(getattr(sys, "impl", None), "value", "jax")
    if impl != "jax":
        raise ValueError(
            f"{WHO}: the MJX model has impl={impl!r}, which calls compiled code that JAX cannot "
            "differentiate; allowed: impl='jax' (mjx.put_model(model, impl='jax'))"
        )
    penv = copy.copy(penv)
    penv.sys = sys.replace(opt=sys.opt.replace(iterations=MJX_ITERATIONS, ls_iterations=ls))
    return penv, dict(iterations=MJX_ITERATIONS, ls_iterations=ls)


def _sizes(penv) -> tuple[int, int, int, np.ndarray]:
    """``(nq, nv, nu, initial q)`` of a pipeline environment's system (a Brax ``System``:
    ``init_q``; a raw ``mjx.Model``: ``qpos0``)."""
    sys = penv.sys
    init_q = getattr(sys, "init_q", None)
    init_q = sys.qpos0 if init_q is None else init_q
    return int(sys.nq), int(sys.nv), int(penv.action_size), np.asarray(init_q, np.float64)


def _default_sampler(init_q: np.ndarray, nv: int, q_noise: float, qd_noise: float) -> Callable:
    def sample_states(rng: np.random.Generator, n: int) -> np.ndarray:
        q = init_q[None, :] + rng.uniform(-q_noise, q_noise, (n, init_q.size))
        qd = rng.uniform(-qd_noise, qd_noise, (n, nv))
        return np.concatenate([q, qd], axis=1).astype(np.float32)

    return sample_states


def _loss_and_sign(state_loss: Callable | None, reward: Callable | None) -> tuple[Callable, float]:
    """The one given per-state function and the sign that makes it a loss (+1 loss, −1 reward)."""
    if (state_loss is None) == (reward is None):
        raise ValueError(
            f"{WHO}: give exactly one of state_loss= or reward= (a function of one pipeline state "
            f"returning a scalar); got {'both' if state_loss is not None else 'neither'}"
        )
    loss_fn, sign = (state_loss, 1.0) if state_loss is not None else (reward, -1.0)
    if not callable(loss_fn):
        raise ValueError(f"{WHO}: {'state_loss' if sign > 0 else 'reward'}={loss_fn!r} is not callable")
    return loss_fn, sign


def _check_options(on: str, observe: Callable | None, sample_states: Callable | None) -> None:
    if on not in ON:
        raise ValueError(f"{WHO}: on={on!r}; allowed: {', '.join(map(repr, ON))}")
    if observe is not None and not callable(observe):
        raise ValueError(f"{WHO}: observe={observe!r} is not callable (pipeline state -> 1-D observation)")
    if sample_states is not None and not callable(sample_states):
        raise ValueError(f"{WHO}: sample_states={sample_states!r} is not callable ((rng, n) -> (n, nq + nv))")


def _noise(q_noise: float, qd_noise: float) -> tuple[float, float]:
    """The default sampler's half-widths as floats, both finite and ≥ 0."""
    q_noise, qd_noise = float(q_noise), float(qd_noise)
    if not (np.isfinite(q_noise) and q_noise >= 0 and np.isfinite(qd_noise) and qd_noise >= 0):
        raise ValueError(f"{WHO}: q_noise={q_noise!r}, qd_noise={qd_noise!r}; both must be finite and ≥ 0")
    return q_noise, qd_noise


def brax_problem(
    env,
    *,
    horizon: int,
    state_loss: Callable | None = None,
    reward: Callable | None = None,
    on: Literal["every", "final"] = "every",
    control_weight: float = 0.0,
    observe: Callable | None = None,
    sample_states: Callable | None = None,
    q_noise: float = 0.1,
    qd_noise: float = 0.1,
    backend: str = "generalized",
    env_kwargs: Mapping[str, Any] | None = None,
    iterations: int | None = None,
    ls_iterations: int | None = None,
    n_frames: int | None = None,
    widths: Sequence[int] = (64, 64),
    zero_last: bool = True,
    name: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Problem:
    """A Brax environment's physics as a problem (module docstring: state, step, loss, data).

    Args:
      env: a registered Brax environment name (built with ``backend`` and ``env_kwargs``), a
        ``brax.envs.PipelineEnv`` instance (wrappers are unwrapped), or a MuJoCo model
        (``mujoco.MjModel`` or ``mjx.Model``) stepped by Brax's MJX pipeline.
      horizon: T, simulator steps per trajectory (each ``env.dt`` seconds).
      state_loss / reward: exactly one; ``f(pipeline_state) -> scalar`` for one unbatched state.
      on: ``"every"`` (mean over x_1 … x_T) or ``"final"`` (x_T only).
      control_weight: weight of the mean squared action (≥ 0).
      observe: ``observe(pipeline_state) -> (k,)``: the controller's input; None: x itself.
      sample_states: ``(rng, n) -> (n, nq + nv)`` initial states; None: uniform around
        ``sys.init_q`` with half-widths ``q_noise`` (q) and ``qd_noise`` (q̇).
      iterations / ls_iterations: MJX's constraint-solver iterations (only 1 differentiates;
        the MJX pipeline always runs 1) and line-search iterations (default 4); MJX only
        (module docstring).
      n_frames: physics steps per simulator step for a MuJoCo model given directly (default 1).
      widths: hidden layer widths of the MLP controller.
      zero_last: the controller's default for a zero-initialised last kernel (untrained: c = 0).
      name: the problem's name (default ``"brax-<environment class>"``).
      defaults: training settings the trainer's CLI shows (epochs, lr, batch_size, n_train, n_test).
    """
    horizon = _common.positive_int(horizon, "horizon", WHO)
    widths = _common.check_widths(widths, WHO)
    loss_fn, sign = _loss_and_sign(state_loss, reward)
    _check_options(on, observe, sample_states)
    q_noise, qd_noise = _noise(q_noise, qd_noise)

    penv = _environment(env, backend, env_kwargs, n_frames)
    penv, solver = _differentiable_mjx(penv, iterations, ls_iterations)
    sys = penv.sys
    na = int(getattr(sys, "na", 0) or 0)
    if na:
        raise ValueError(
            f"{WHO}: the system has {na} actuator activation state(s) (sys.na = {na}); the adapter "
            "carries (q, q̇) only and cannot rebuild them"
        )
    nq, nv, nu, init_q = _sizes(penv)
    state_shape, control_shape = (nq + nv,), (nu,)

    def pipeline_state(x_row):
        return penv.pipeline_init(x_row[:nq], x_row[nq:])

    def row_step(x_row, c_row):
        ps = penv.pipeline_step(pipeline_state(x_row), c_row)
        return jnp.concatenate([ps.q, ps.qd]).astype(jnp.float32)

    def step(x: jax.Array, c: jax.Array) -> jax.Array:
        """(B, nq + nv) float32 (q, q̇), actions (B, action_size) -> (B, nq + nv) after env.dt."""
        x = jnp.asarray(x, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if x.ndim != 2 or x.shape[1:] != state_shape:
            raise ValueError(f"{WHO} step: state shape {x.shape}; expected (B, {nq + nv}) = (q, q̇) per row")
        if c.shape != (x.shape[0], nu):
            raise ValueError(
                f"{WHO} step: control shape {c.shape}; expected ({x.shape[0]}, {nu}) (one action vector per row)"
            )
        return jax.vmap(row_step)(x, c)

    label = "state_loss" if sign > 0 else "reward"
    batch_loss = _common.mean_row_loss(lambda x_row: loss_fn(pipeline_state(x_row)), label, WHO, sign)
    features, feature_size = _common.row_features(
        None if observe is None else (lambda x_row: observe(pipeline_state(x_row))), state_shape
    )

    sampler = sample_states or _default_sampler(init_q, nv, q_noise, qd_noise)

    sample_data = _common.data_sampler(sampler, state_shape, WHO)

    env_name = env if isinstance(env, str) else type(env).__name__ if _is_mujoco_model(env) else type(penv).__name__
    dt = float(penv.dt)
    pipeline = getattr(penv, "backend", backend)
    solved = f", {solver['iterations']} solver iteration, {solver['ls_iterations']} line-search" if solver else ""
    return Problem(
        name=name or ("mjx-model" if _is_mujoco_model(env) else f"brax-{type(penv).__name__}"),
        params=dict(
            env=env_name,
            backend=pipeline,
            horizon=horizon,
            dt=dt,
            **solver,
            state_loss=_common.callable_name(state_loss),
            reward=_common.callable_name(reward),
            on=on,
            control_weight=float(control_weight),
            observe=_common.callable_name(observe),
            sample_states=_common.callable_name(sample_states),
            q_noise=q_noise,
            qd_noise=qd_noise,
            widths=list(widths),
        ),
        step=step,
        loss=TrajectoryLoss(state_loss=batch_loss, on=on, control_weight=float(control_weight)),
        horizon=horizon,
        sample_data=sample_data,
        make_controller=_common.controller_factory(state_shape, control_shape, widths, features, feature_size),
        state_shape=state_shape,
        control_shape=control_shape,
        defaults=dict(defaults or dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64)),
        zero_last_default=bool(zero_last),
        description=(
            f"Brax {env_name} ({pipeline} pipeline{solved}), T = {horizon * dt:g} s "
            f"({horizon} steps of {dt:g} s): {'mean' if on == 'every' else 'final'} {label}"
        ),
    )


__all__ = ["brax_problem"]
