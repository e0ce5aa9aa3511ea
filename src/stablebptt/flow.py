r"""The gradient-flow engine: unroll a controller through a simulator and return the update
of any gradient-flow mode of Schnell & Thuerey (ICLR 2024).

Setting (``method.md``)::

    c_n = N(x_n; θ),   x_{n+1} = P(x_n, c_n),   n = 0 … T-1,   L = loss(x_1 … x_T, c_0 … c_{T-1})

Gradient paths of one step (``⊘`` marks where a mode may stop the gradient)::

              ┌──────── ⊘ g_ctrl ────────┐
              │                          ▼
      x_n ────┤                      N(·; θ) ──► c_n ──┐
              │                                        ▼
              └──────── ⊘ g_phys ─────────────────► P(·, ·) ──► x_{n+1} ──► ℓ_{n+1}

Every mode is a pair of *gates* (g_ctrl, g_phys) per step; a gate scales the gradient that
flows back into x_n along that edge and never changes forward values:

=====  ================  ======  ======  =================================================
mode   name              g_ctrl  g_phys  backward
=====  ================  ======  ======  =================================================
R      regular BPTT        1       1     true gradient G = ∇θ L
M      modified            0       1     λ_n = ∂ℓ_n/∂x_n + A_nᵀ λ_{n+1} (physics path only)
S      stopped             0       0     one-step credit only
N      network-only        1       0     only the controller's input path
C      combined          (M and R on the same forward pass, then a combiner)
=====  ================  ======  ======  =================================================

Related baselines are further gate patterns on the same machinery: truncated BPTT
(``truncate=k``: both gates 0 at every k-th step) and temporal gradient decay
(``decay=α``: both gates multiplied by α). A per-step schedule (one letter per step) sets
the gates step by step, as the authors did for the quantum task.

Mode C computes the two fields in **one forward pass and one reverse sweep** that carries
two adjoints (the physics-only one and the regular one): each step is a ``custom_vjp``
cell whose forward runs the controller and the simulator once, and whose backward applies
the saved linearisation to both cotangents at once. For controllers with one control per
row (the paper's cart-pole and quantum controllers) the fields with a live controller gate
instead take the batched-Jacobian path (``_fields_via_jacobian``): one forward loop, the
controller's input Jacobian on all T·B rows at once, then one reverse sweep carrying both
adjoints. :func:`naive_combined` computes the same thing with two complete passes, for
verification.

Shapes: states and controls are pytrees with a leading batch axis; the controller maps a
batched state to a batched control; ``loss.state_loss`` reduces a batched state to a
scalar. The update is a pytree shaped like the controller's array leaves (an
``eqx.filter`` of the module), i.e. a gradient to be handed to an optimizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .losses import TrajectoryLoss

State = Any
Control = Any
PyTree = Any

#: gates (g_ctrl, g_phys) of the single-field modes
GATES: dict[str, tuple[float, float]] = {
    "R": (1.0, 1.0),
    "M": (0.0, 1.0),
    "S": (0.0, 0.0),
    "N": (1.0, 0.0),
}
#: every mode name accepted as ``Flow.mode`` (a letter, or a schedule of GATES letters)
MODES = ("R", "M", "S", "N", "C")


# ----------------------------------------------------------------------------- combiners
def combine_sign(m: PyTree, g: PyTree) -> PyTree:
    """The paper's combiner: U_j = M_j if sign(M_j) == sign(G_j) else 0 (sign(0) = 0)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(jnp.sign(a) == jnp.sign(b), a, 0.0), m, g)


def combine_sign_g(m: PyTree, g: PyTree) -> PyTree:
    """Sign-filtered G (the reviewers' ablation): U_j = G_j where signs agree, else 0."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(jnp.sign(a) == jnp.sign(b), b, 0.0), m, g)


COMBINERS: dict[str, Callable[[PyTree, PyTree], PyTree]] = {
    "sign": combine_sign,
    "sign_g": combine_sign_g,
}


# ----------------------------------------------------------------------------- flow spec
@dataclass(frozen=True)
class Flow:
    """How the gradient flows backward (forward values never change).

    Attributes:
      mode: ``"R" | "M" | "S" | "N" | "C"``, or a schedule: a sequence of T letters from
        ``R M S N`` (one per step n = 0 … T-1; a string like ``"RRMM"`` works too).
      combiner: for ``C``: ``"sign"`` (paper, default), ``"sign_g"``, or a callable
        ``(m_field, g_field) -> update``.
      c_fields: for ``C``: the two fields that are combined, as letters or schedules
        (default ``("M", "R")``: the modified field and the true gradient).
      truncate: k > 0 stops the whole state every k steps (truncated BPTT); 0 = off.
      decay: α ∈ (0, 1]: the backward signal into x_n is scaled by α per step; 1 = off.
      and_mask: τ ∈ (0, 1] turns on the AND-mask across batch members (Parascandolo et
        al., 2021): the mode's update is computed per sample, averaged, and entry j is kept
        only where |mean_i sign(u_ij)| ≥ τ (τ = 1: every sample agrees); 0 = off.
    """

    mode: str | Sequence[str] = "C"
    combiner: str | Callable = "sign"
    c_fields: tuple[Any, Any] = ("M", "R")
    truncate: int = 0
    decay: float = 1.0
    and_mask: float = 0.0

    def __post_init__(self):
        validate_flow(self)

    @property
    def combined(self) -> bool:
        return isinstance(self.mode, str) and self.mode == "C"

    def combine_fn(self) -> Callable[[PyTree, PyTree], PyTree]:
        return self.combiner if callable(self.combiner) else COMBINERS[self.combiner]

    def label(self) -> str:
        if isinstance(self.mode, str) and len(self.mode) == 1:
            s = self.mode
        else:
            s = "schedule:" + "".join(self.mode)
        if self.truncate:
            s += f"/trunc{self.truncate}"
        if self.decay != 1.0:
            s += f"/decay{self.decay:g}"
        if self.and_mask:
            s += f"/andmask{self.and_mask:g}"
        if self.combined and self.combiner != "sign":
            s += f"/{self.combiner if isinstance(self.combiner, str) else 'custom'}"
        return s


def _check_schedule(sched, what: str) -> None:
    if isinstance(sched, str) and len(sched) == 1:
        if sched not in GATES:
            raise ValueError(f"{what}={sched!r} is not a mode; allowed: {', '.join(GATES)}")
        return
    letters = list(sched)
    if not letters:
        raise ValueError(f"{what} is an empty schedule; give one of {', '.join(MODES)} or a list of R/M/S/N")
    bad = sorted({str(s) for s in letters if s not in GATES})
    if bad:
        raise ValueError(
            f"{what} schedule contains {bad}; each step's mode must be one of {', '.join(GATES)}"
        )


def validate_flow(flow: Flow) -> None:
    """Raise ValueError naming the bad field and what is allowed."""
    mode = flow.mode
    if isinstance(mode, str) and len(mode) == 1:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)} or a per-step schedule of R/M/S/N")
    else:
        if not isinstance(mode, (str, list, tuple, np.ndarray)):
            raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)} or a per-step schedule of R/M/S/N")
        _check_schedule(mode, "mode")
    if not callable(flow.combiner) and flow.combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {flow.combiner!r}; allowed: {', '.join(COMBINERS)} or a callable")
    if len(flow.c_fields) != 2:
        raise ValueError(f"c_fields={flow.c_fields!r}; must be two fields, e.g. ('M', 'R')")
    for i, f in enumerate(flow.c_fields):
        _check_schedule(f, f"c_fields[{i}]")
    if not isinstance(flow.truncate, (int, np.integer)) or flow.truncate < 0:
        raise ValueError(f"truncate={flow.truncate!r}; must be an int ≥ 0 (0 = no truncation)")
    if not (0.0 < float(flow.decay) <= 1.0):
        raise ValueError(f"decay={flow.decay!r}; must be in (0, 1] (1 = no decay)")
    if not (0.0 <= float(flow.and_mask) <= 1.0):
        raise ValueError(f"and_mask={flow.and_mask!r}; must be in [0, 1] (0 = off, 1 = all samples agree)")


def as_flow(flow: "Flow | str | Sequence[str]") -> Flow:
    return flow if isinstance(flow, Flow) else Flow(mode=flow)


# ----------------------------------------------------------------------------- gates
def _schedule_gates(sched, horizon: int, flow: Flow) -> np.ndarray | tuple[float, float]:
    """Gates for one field: a static pair (uniform) or a (T, 2) float32 array."""
    if isinstance(sched, str) and len(sched) == 1:
        gates = np.tile(np.asarray(GATES[sched], np.float32), (horizon, 1))
        uniform = True
    else:
        letters = list(sched)
        if len(letters) != horizon:
            raise ValueError(
                f"mode schedule has {len(letters)} entries; the horizon is {horizon} steps (one mode per step)"
            )
        gates = np.asarray([GATES[s] for s in letters], np.float32)
        uniform = len(set(letters)) == 1
    if flow.truncate:
        gates[np.arange(horizon) % flow.truncate == 0] = 0.0
        uniform = False
    if flow.decay != 1.0:
        gates = gates * np.float32(flow.decay)
    if uniform:
        return (float(gates[0, 0]), float(gates[0, 1]))
    return gates


def _gate(x: PyTree, g) -> PyTree:
    """Forward value x, derivative g·(upstream). g a Python float (static) or traced scalar."""
    if isinstance(g, float):
        if g == 1.0:
            return x
        if g == 0.0:
            return jax.lax.stop_gradient(x)
    return jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) + g * (a - jax.lax.stop_gradient(a)), x
    )


# ----------------------------------------------------------------------------- checks
def _tree_shapes(t):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), t)


def check_problem_inputs(model, x0, step, horizon) -> None:
    """Validate horizon, the initial state and step/controller shape agreement without
    compiling anything (abstract evaluation only). Raises ValueError naming the bad value."""
    if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon <= 0:
        raise ValueError(f"horizon={horizon!r}; must be an int ≥ 1 (number of simulator steps)")
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("initial state x0 has no arrays")
    for a in leaves:
        if isinstance(a, jax.core.Tracer):
            continue
        arr = np.asarray(a)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            raise ValueError(f"initial state x0 contains {bad} non-finite value(s) (NaN/inf); all entries must be finite")
    try:  # the model as an argument: its arrays may be abstract (ShapeDtypeStruct) too
        c = eqx.filter_eval_shape(lambda m, x: m(x), model, x0)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"the controller cannot take the state: x0 has shapes {_tree_shapes(x0)} ({type(e).__name__}: {e})"
        ) from e
    try:
        x1 = jax.eval_shape(step, x0, c)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"step(state, control) fails for state {_tree_shapes(x0)} and the controller's output "
            f"{_tree_shapes(c)} ({type(e).__name__}: {e})"
        ) from e
    s0 = jax.tree_util.tree_structure(x0)
    s1 = jax.tree_util.tree_structure(x1)
    shapes0 = [(tuple(a.shape)) for a in leaves]
    shapes1 = [(tuple(a.shape)) for a in jax.tree_util.tree_leaves(x1)]
    if s0 != s1 or shapes0 != shapes1:
        raise ValueError(
            f"step(state, control) returns shapes {shapes1} but the state has shapes {shapes0}; "
            f"the controller's output was {_tree_shapes(c)}; step must map a state to a state of the same shapes"
        )


# ----------------------------------------------------------------------------- unroll
def _split(model):
    return eqx.partition(model, eqx.is_inexact_array)


def _segment_length(horizon: int, checkpoint_every: int | None) -> int | None:
    if not checkpoint_every:
        return None
    if isinstance(checkpoint_every, str):
        raise ValueError(f"checkpoint_every={checkpoint_every!r}; 'auto' must be resolved first "
                         "(see plan_checkpointing)")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}; must be ≥ 1, 'auto' or None")
    # largest divisor of the horizon not above the request, so segments tile T exactly
    for s in range(min(int(checkpoint_every), horizon), 0, -1):
        if horizon % s == 0:
            return s
    return 1


# ----------------------------------------------------------------------------- memory plan
#: default budget (bytes) for ``checkpoint_every="auto"`` on CPU. Measured on cart-pole
#: (benchmarks/results.md), remat segments of ≈ √T steps cost 1.1-1.2x the time of no remat at
#: T = 100, 1.8x at T = 1,000 (no remat's residuals still fit in the caches there) and 1.0x
#: from T = 3,000 on (at T = 10,000 C: 2 MiB instead of 186 MiB; the whole training process
#: needs 0.65 GiB either way), so "auto" remats only from ~0.5 GiB of estimated residuals on
#: (the estimate runs above XLA's figure for the batched path).
CPU_MEMORY_BUDGET = 512 << 20
#: default budget on accelerators when the device does not report its memory
ACCELERATOR_MEMORY_BUDGET = 4 << 30
#: kept for compatibility: the CPU default
DEFAULT_MEMORY_BUDGET = CPU_MEMORY_BUDGET


def default_memory_budget() -> int:
    """Budget for ``checkpoint_every="auto"`` when none is given: :data:`CPU_MEMORY_BUDGET`
    on CPU; a quarter of the device memory on an accelerator (recompute costs latency there
    and memory is plentiful), else :data:`ACCELERATOR_MEMORY_BUDGET`. Per program:
    :func:`stablebptt.train.train` divides it by the number of seeds vmapped together."""
    if jax.default_backend() == "cpu":
        return CPU_MEMORY_BUDGET
    try:
        limit = jax.devices()[0].memory_stats().get("bytes_limit")
    except Exception:  # noqa: BLE001 - not every backend reports memory
        limit = None
    return int(limit) // 4 if limit else ACCELERATOR_MEMORY_BUDGET


def _nbytes(tree) -> int:
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree)))


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def _is_literal(v) -> bool:
    return type(v).__name__ == "Literal"


def _nonparam_residual_bytes(fn, params, *args) -> int:
    """Bytes of the residuals ``jax.vjp(lambda *a: fn(params, *a), *args)`` saves that vary per
    step: outputs of the traced vjp that are neither parameters nor depend on parameters only
    (those are loop-invariant and hoisted out of a scan)."""
    n_p = len(jax.tree_util.tree_leaves(params))
    closed = jax.make_jaxpr(lambda p, *a: jax.vjp(lambda *a_: fn(p, *a_), *a)[1])(
        _abstract(params), *[_abstract(x) for x in args])
    jaxpr = closed.jaxpr
    pvars = set(map(id, jaxpr.invars[:n_p]))
    dep = set(map(id, jaxpr.invars[n_p:]))
    for eqn in jaxpr.eqns:
        if any(id(v) in dep for v in eqn.invars if not _is_literal(v)):
            dep.update(map(id, eqn.outvars))
    return int(sum(int(np.prod(v.aval.shape)) * np.dtype(v.aval.dtype).itemsize for v in jaxpr.outvars
                   if not _is_literal(v) and id(v) not in pvars and id(v) in dep))


def _activation_bytes(ctrl, params, x) -> int:
    """Per-step residuals of the controller's vjp w.r.t. its parameters (its activations)."""
    return _nonparam_residual_bytes(lambda p, x_: ctrl(p, x_), params, x)


def memory_model(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: "Flow | str" = "R") -> dict:
    """Per-step memory of the engine's update, estimated by tracing one step (nothing runs).

    Returns bytes: ``loop`` (residuals the reverse sweep keeps per step), ``post`` (per step of
    the deferred controller vjp: activations and their cotangents), ``fixed`` (per step, kept
    throughout: x_n, control injections and cotangents) and ``carry`` (one state, per field).
    The update's peak without checkpointing is ≈ T·(max(loop, post) + fixed).
    """
    flow = as_flow(flow)
    params, static = _split(model)
    two = flow.combined
    sched = flow.mode if not two else "R"
    gc, gp = GATES[sched] if isinstance(sched, str) and len(sched) == 1 else (1.0, 1.0)

    def one(p, x, e):
        m = eqx.combine(jax.lax.stop_gradient(p), static)
        c = _tree_add(m(_gate(x, gc)), e)
        x1 = step(_gate(x, gp), c)
        return x1, _per_step_loss(loss, jnp.int32(1), x1, c, horizon)

    ctrl = lambda p, x: eqx.combine(p, static)(x)
    c_abs = jax.eval_shape(ctrl, _abstract(params), _abstract(x0))
    e0 = jax.tree_util.tree_map(lambda s_: jax.ShapeDtypeStruct(s_.shape, s_.dtype), c_abs)
    loop = _nonparam_residual_bytes(one, params, x0, e0)
    acts = _activation_bytes(ctrl, params, x0)  # what the deferred ∂/∂θ vjp keeps per step
    n_fields = 2 if two else 1
    xb, cb = _nbytes(_abstract(x0)), _nbytes(c_abs)
    # the deferred vjp keeps the activations plus their cotangents (one set per field);
    # calibrated against XLA's buffer assignment on the paper problems (within ~20 %)
    return {"loop": loop + (xb if two else 0), "post": int(0.75 * (1 + n_fields) * acts),
            "fixed": xb + (1 + n_fields) * cb, "carry": n_fields * xb}


def residual_bytes_per_step(model, x0, *, step, loss: TrajectoryLoss, horizon: int,
                            flow: "Flow | str" = "R") -> int:
    """Estimated bytes per simulator step of the update without checkpointing
    (``max(loop, post) + fixed`` of :func:`memory_model`)."""
    m = memory_model(model, x0, step=step, loss=loss, horizon=horizon, flow=flow)
    return max(m["loop"], m["post"]) + m["fixed"]


def plan_checkpointing(model, x0, *, step, loss: TrajectoryLoss, horizon: int,
                       flow: "Flow | str" = "R", memory_budget: int | None = None) -> int | None:
    """``checkpoint_every`` for ``"auto"``: None (no remat) when the update's estimated memory,
    T·(max(loop, post) + fixed) of :func:`memory_model`, fits in ``memory_budget`` bytes
    (default :func:`default_memory_budget`); otherwise segments of s ≈ √T steps (a divisor
    of T; memory ≈ T/s carries + s steps of residuals + T·fixed + one chunk of the deferred
    vjp), or, if that does not fit, the s with the least memory.

    Measured on cart-pole (benchmarks/results.md): √T segments use 6-116x less memory than
    no remat and take 1.0x its time from T = 3,000 on, 1.8x at T = 1,000 and 1.1-1.2x at
    T = 100, which is why segments are only used when needed.
    """
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    m = memory_model(model, x0, step=step, loss=loss, horizon=horizon, flow=flow)
    if horizon * (max(m["loop"], m["post"]) + m["fixed"]) <= budget:
        return None
    leaf = jax.tree_util.tree_leaves(x0)[0]
    batch = max(int(leaf.shape[0]) if leaf.ndim else 1, 1)

    def mem(s_):
        chunk = _vjp_chunk(horizon, batch, s_) or horizon
        return (horizon // s_) * m["carry"] + s_ * m["loop"] + horizon * m["fixed"] + chunk * m["post"]

    divisors = [d for d in range(1, horizon) if horizon % d == 0]
    if not divisors:
        return None
    root = min(divisors, key=lambda d: abs(d - math.sqrt(horizon)))
    if mem(root) <= budget:
        return root
    return min(divisors, key=mem)


def resolve_checkpoint_every(checkpoint_every, model, x0, *, step, loss: TrajectoryLoss, horizon: int,
                             flow: "Flow | str" = "R", memory_budget: int | None = None) -> int | None:
    """An int/None passes through; ``"auto"`` becomes :func:`plan_checkpointing`'s choice."""
    if isinstance(checkpoint_every, str):
        if checkpoint_every != "auto":
            raise ValueError(f"checkpoint_every={checkpoint_every!r}; allowed: an int ≥ 1, 'auto' or None")
        return plan_checkpointing(model, x0, step=step, loss=loss, horizon=horizon, flow=flow,
                                  memory_budget=memory_budget)
    return checkpoint_every


def _scan(body, carry, xs, horizon: int, seg: int | None):
    """lax.scan over T steps; with ``seg`` the scan runs in checkpointed segments of ``seg``
    steps (memory ~ T/seg carries + seg steps' residuals instead of T steps' residuals)."""
    if seg is None or seg >= horizon:
        return jax.lax.scan(body, carry, xs)
    nseg = horizon // seg
    xs_seg = jax.tree_util.tree_map(lambda a: a.reshape((nseg, seg) + a.shape[1:]), xs)

    @jax.checkpoint
    def segment(c, xs_s):
        return jax.lax.scan(body, c, xs_s)

    carry, ys = jax.lax.scan(segment, carry, xs_seg)
    ys = jax.tree_util.tree_map(lambda a: a.reshape((horizon,) + a.shape[2:]), ys)
    return carry, ys


def _per_step_loss(loss: TrajectoryLoss, n1, x1, c, horizon: int):
    """ℓ for step n → n+1: weighted state loss of x_{n+1} (every-state losses) + control term."""
    val = loss.control_term(c, horizon)
    if loss.on == "every":
        val = val + loss.step_weight(n1, horizon) * loss.state_loss(x1)
    return val


def _phys(step, loss: TrajectoryLoss, horizon: int):
    """``phys(n, x_n, c_n) -> (x_{n+1}, ℓ_n)``: one simulator step and its loss term."""
    def phys(n, x, c):
        x1 = step(x, c)
        return x1, _per_step_loss(loss, n + 1, x1, c, horizon)

    return phys


def unrolled_loss(params, static, x0, *, step, loss: TrajectoryLoss, horizon: int,
                  gates=(1.0, 1.0), checkpoint_every: int | None = None) -> jax.Array:
    """L(θ) of one field; its gradient w.r.t. ``params`` is that field's update.

    ``gates`` is a static (g_ctrl, g_phys) pair or a (T, 2) array (see module docstring).
    """
    static_gates = isinstance(gates, tuple)
    seg = _segment_length(horizon, checkpoint_every)

    def body(x, inp):
        n, g = inp
        gc, gp = (gates if static_gates else (g[0], g[1]))
        model = eqx.combine(params, static)
        c = model(_gate(x, gc))
        x1 = step(_gate(x, gp), c)
        return x1, _per_step_loss(loss, n + 1, x1, c, horizon)

    g_arr = jnp.zeros((horizon, 2), jnp.float32) if static_gates else jnp.asarray(gates)
    xT, ls = _scan(body, x0, (jnp.arange(horizon), g_arr), horizon, seg)
    total = jnp.sum(ls)
    if loss.on == "final":
        total = total + loss.state_loss(xT)
    return total


# ----------------------------------------------------------------------------- fast fields
# How the engine computes a field (the public functions above/below are the plain-AD
# references with the same values):
#
# * The unroll uses the controller with **stop-gradient parameters** and adds a zero
#   "control injection" e_n to every control, c_n = N(x_n; θ) + e_n. The reverse sweep
#   (standard JAX AD through ``lax.scan``, or the two-adjoint cell for C) then only carries
#   state adjoints λ_n and emits the control cotangents ac_n = ∂L/∂e_n; no parameter
#   gradient is formed inside the loop.
# * Afterwards one vjp of the controller, vmapped over all T steps (or called once on all
#   T·B rows when the controller declares ``rows_independent``), gives
#   ∇θ = Σ_n G_θ,nᵀ ac_n as a few large matrix products (T·B rows) instead of T small ones.
#   For M and S the loop then contains no controller backward at all (its input gate is 0).
# * With ``checkpoint_every`` the unroll runs in ``jax.checkpoint`` segments and the final
#   controller vjp runs in chunks, so memory stays ~ T/seg carries + one segment.
# * Fields with a live controller gate and at most JACOBIAN_MAX_CONTROLS controls per row
#   use the batched-Jacobian path further below instead (no controller backward inside any
#   loop); it does its own segments for ``checkpoint_every``.

def _zeros_like_controls(model, x0, horizon: int):
    c_struct = jax.eval_shape(model, x0)
    return jax.tree_util.tree_map(lambda s: jnp.zeros((horizon,) + tuple(s.shape), s.dtype), c_struct)


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


#: rows (T·B samples) per chunk of the deferred controller vjp when the unroll is checkpointed
_VJP_CHUNK_ROWS = 2048


def _vjp_chunk(horizon: int, batch: int, seg: int | None) -> int | None:
    """Steps per chunk of the deferred controller vjp (None: all T steps at once)."""
    if seg is None or seg >= horizon:
        return None
    want = max(int(seg), _VJP_CHUNK_ROWS // max(int(batch), 1), 1)
    if want >= horizon:
        return None
    for s in range(want, 0, -1):
        if horizon % s == 0:
            return s
    return None


#: per-row controller activations (bytes) above which the two cotangents of C go through the
#: parameter vjp one after the other instead of vmapped (measured, update C/R: quantum CNN
#: ~15 KB/row 1.31 -> 1.24; the paper MLPs ~1 KB/row: vmapped equal or faster)
TWO_COTANGENTS_IN_TURN_BYTES = 4096


def rows_independent(model) -> bool:
    """Does ``model`` treat the rows of its batch independently (``rows_independent = True``
    on its class: the library's MLP and QuantumCNN)? Then the deferred parameter vjp may call it
    once on all T·B rows instead of vmapping over the T steps."""
    return bool(getattr(type(model), "rows_independent", False))


#: a single field's forward loop keeps the controller's activations for the deferred parameter
#: vjp (instead of a second forward pass) when they take at most this many bytes per row.
#: Measured, update time kept / recomputed, three interleaved runs: paper MLPs (1.6 KB/row)
#: M 0.80-0.88x, R 0.83-0.98x; a hand-written version for the quantum CNN (10.5 KB/row):
#: M 0.86-1.07x, R 1.01-1.12x, so it was not kept. The fused C does not keep activations
#: (a variant that did: 0.95-1.17x). The batched-Jacobian path applies the same bound to
#: what ``forward_with_residuals`` returns: the quantum CNN returns only its second layer
#: (1.7 KB/row, 93 % of its multiply-adds), and keeping it made quantum R 0.82-0.93x and C
#: 0.89-0.94x per update in three interleaved runs, with identical updates.
KEEP_ACTIVATIONS_BYTES = 4096


def saves_residuals(model) -> bool:
    """Can the forward loop keep ``model``'s activations so that the deferred parameter vjp
    needs no second forward pass? True for controllers with independent rows that implement
    ``forward_with_residuals(x) -> (c, res)`` and ``param_vjp_from_residuals(x, res, ct)``
    (the library's MLP)."""
    t = type(model)
    return rows_independent(model) and hasattr(t, "forward_with_residuals") and hasattr(t, "param_vjp_from_residuals")


def _merge_steps(t: PyTree) -> PyTree:
    """(T, B, …) leaves -> (T·B, …): every step's batch as rows of one batch."""
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), t)


def _row_activation_bytes(params, static, x_row) -> int:
    """Bytes of the controller's activations for one batch row ``x_row`` (leading axis 1)."""
    return _activation_bytes(lambda p, x: eqx.combine(p, static)(x), params, x_row)


def _keeps_activations(params, static, x0) -> bool:
    """Are the residuals that the controller's ``forward_with_residuals`` returns small enough
    (≤ KEEP_ACTIVATIONS_BYTES per row) for the forward loop to keep them?"""
    return _residual_bytes_per_row(params, static, x0) <= KEEP_ACTIVATIONS_BYTES


def _param_vjp(params, static, xs, cts: Sequence[PyTree], seg: int | None, res=None) -> list[PyTree]:
    """[Σ_n G_θ,nᵀ ct_n for ct in cts]: one vjp of the controller vmapped over the T steps, or,
    for a controller with independent rows (:func:`rows_independent`), one vjp of one call on
    all T·B rows (measured: quantum M 1.45x, R 1.27x faster; cart-pole ~6 %).

    ``xs`` holds x_0 … x_{T-1} (leading axes T, B); each ct the control cotangents (T, B, …).
    With ``seg`` the T steps are processed in chunks inside a scan (bounded memory).
    """
    if res is not None:  # activations kept by the forward loop: no second forward pass
        model = eqx.combine(params, static)
        xf, rf = _merge_steps(xs), _merge_steps(res)
        return [eqx.filter(model.param_vjp_from_residuals(xf, rf, _merge_steps(ct)), eqx.is_inexact_array)
                for ct in cts]
    rowwise = rows_independent(static)
    in_turn = rowwise and len(cts) > 1 and _row_activation_bytes(
        params, static, jax.tree_util.tree_map(lambda a: a[0, :1], xs)) > TWO_COTANGENTS_IN_TURN_BYTES

    def vjps(p, xs_, cts_):
        if rowwise:  # one call on all T·B rows: plain 2-D matrix products, forward and back
            xs_, cts_ = _merge_steps(xs_), [_merge_steps(c) for c in cts_]
            _, vjp = jax.vjp(lambda q: eqx.combine(q, static)(xs_), p)
        else:
            _, vjp = jax.vjp(lambda q: jax.vmap(eqx.combine(q, static))(xs_), p)
        if len(cts_) == 1:
            return [vjp(cts_[0])[0]]
        if in_turn:  # both passes reuse the one forward's residuals
            return [vjp(ct)[0] for ct in cts_]
        both = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *cts_)
        out = jax.vmap(lambda ct: vjp(ct)[0])(both)
        return [jax.tree_util.tree_map(lambda a: a[i], out) for i in range(len(cts_))]

    horizon = jax.tree_util.tree_leaves(xs)[0].shape[0]
    batch = jax.tree_util.tree_leaves(xs)[0].shape[1] if jax.tree_util.tree_leaves(xs)[0].ndim > 1 else 1
    chunk = _vjp_chunk(horizon, batch, seg)
    if chunk is None:
        return vjps(params, xs, list(cts))
    nch = horizon // chunk
    resh = lambda t: jax.tree_util.tree_map(lambda a: a.reshape((nch, chunk) + a.shape[1:]), t)
    zero = [jax.tree_util.tree_map(jnp.zeros_like, params) for _ in cts]

    def body(acc, inp):
        xs_c, cts_c = inp
        part = vjps(params, xs_c, cts_c)
        return [_tree_add(a, b) for a, b in zip(acc, part)], None

    acc, _ = jax.lax.scan(body, zero, (resh(xs), [resh(c) for c in cts]))
    return acc


def _field_value_and_grad(params, static, x0, *, step, loss: TrajectoryLoss, horizon: int,
                          gates=(1.0, 1.0), checkpoint_every: int | None = None):
    """``(L, field)``: the value and ``params``-gradient of :func:`unrolled_loss` (same gates),
    with the parameter gradient deferred out of the reverse sweep (see above)."""
    static_gates = isinstance(gates, tuple)
    seg = _segment_length(horizon, checkpoint_every)
    if _uses_batched_jacobian(params, static, x0, [gates]):
        val, (grad,) = _fields_via_jacobian(params, static, x0, step=step, loss=loss, horizon=horizon,
                                            gate_sets=[gates], seg=seg)
        return val, grad
    model = eqx.combine(jax.lax.stop_gradient(params), static)
    save = seg is None and saves_residuals(static) and _keeps_activations(params, static, x0)
    E = _zeros_like_controls(model, x0, horizon)
    g_arr = jnp.zeros((horizon, 2), jnp.float32) if static_gates else jnp.asarray(gates)

    def total_loss(E):
        def body(x, inp):
            n, g, e = inp
            gc, gp = (gates if static_gates else (g[0], g[1]))
            if save:
                c, res = model.forward_with_residuals(_gate(x, gc))
            else:
                c, res = model(_gate(x, gc)), None
            c = _tree_add(c, e)
            x1 = step(_gate(x, gp), c)
            kept = jax.lax.stop_gradient((x, res))
            return x1, (_per_step_loss(loss, n + 1, x1, c, horizon), kept)

        xT, (ls, kept) = _scan(body, x0, (jnp.arange(horizon), g_arr, E), horizon, seg)
        total = jnp.sum(ls)
        if loss.on == "final":
            total = total + loss.state_loss(xT)
        return total, kept

    (val, (xs, res)), ac = jax.value_and_grad(total_loss, has_aux=True)(E)
    (grad,) = _param_vjp(params, static, xs, [ac], seg, res=res)
    return val, grad


# ----------------------------------------------------------------------------- batched Jacobian
# For a field whose controller gate is live (R, N, the R field of C, traced schedules) the
# reverse sweep needs the controller's input vjp λ_n ← … + J_nᵀ·ac_n at every step, with
# J_n = ∂c_n/∂x_n. Run as a per-step controller backward (the path above) it is T small matrix
# products of B rows. When the controller has few outputs per row (m ≤ JACOBIAN_MAX_CONTROLS)
# the engine instead:
#   1. runs the forward loop once, keeping x_n, c_n (and the controller's activations);
#   2. forms every J_n in one batched pass on all T·B rows (m unit cotangents, large matmuls);
#   3. runs the reverse sweep with the simulator's vjp recomputed from (x_n, c_n) — a few fused
#      element-wise ops for cart-pole and guidance — or, for a step with a solve or a loop
#      (quantum), saved by the forward loop (:func:`_saves_linearization`), and the contraction
#      J_nᵀ·ac_n (element-wise for m = 1); several fields share the sweep as stacked adjoints;
#   4. forms the parameter gradients on all rows; with the controller's optional
#      ``param_vjp_from_jacobian`` (MLP, QuantumCNN) the backward products of step 2 are
#      reused, so each field costs only the kernel products inputᵀ·δ.
# Same maths as the per-step path (tested against plain AD); the sums run in another order.
# The price is one more element-wise simulator forward per step (the recomputation in step 3),
# or the saved linearisation's memory; ``JACOBIAN_MAX_CONTROLS = 0`` selects the per-step path.

#: controls per batch row up to which the batched-Jacobian path is used (it costs m batched
#: controller backward passes instead of one per-step backward per live field). Measured per
#: update, per-step ÷ batched, interleaved (benchmarks/results.md, docs/performance.md): m = 1
#: cart-pole R 1.3-1.4x, C 1.15-1.3x; quantum R 1.0-1.15x, C 1.1-1.15x. Guidance (m = 4): R
#: 0.8-1.1x, C 1.0-1.1x while each field's weight gradients were products of their own; since
#: C's two fields share one product per layer (docs/performance.md item 25), R 1.01-1.03x and
#: C 1.03-1.04x in two interleaved runs, so guidance takes the batched path too.
JACOBIAN_MAX_CONTROLS = 4


def _row_control_size(static, params, x0) -> int | None:
    """m, the controls per batch row, when the control is one array (B, …); else None."""
    c = jax.eval_shape(lambda p, x: eqx.combine(p, static)(x), _abstract(params), _abstract(x0))
    if not isinstance(c, jax.ShapeDtypeStruct) or len(c.shape) < 1:
        return None
    return int(np.prod(c.shape[1:])) if len(c.shape) > 1 else 1


def _uses_batched_jacobian(params, static, x0, gate_sets) -> bool:
    """Does :func:`_fields_via_jacobian` apply (see the comment above)?"""
    if not rows_independent(static):
        return False
    if not any(_needs_k(g) for g in gate_sets):
        return False  # no live controller gate: the per-step path has no controller backward
    m = _row_control_size(static, params, x0)
    return m is not None and m <= JACOBIAN_MAX_CONTROLS


def has_jacobian_methods(model) -> bool:
    """Does ``model`` implement the batched-Jacobian protocol (the library's MLP and QuantumCNN):
    ``forward_with_residuals``, ``jacobian_from_residuals(x, res) -> (J, deltas)`` and
    ``param_vjp_from_jacobian(x, res, deltas, ct)``, with independent rows? (Optional:
    ``param_vjps_from_jacobian(x, res, deltas, cts)``, the vjps of several fields at once.)"""
    t = type(model)
    return rows_independent(model) and all(
        hasattr(t, a) for a in ("forward_with_residuals", "jacobian_from_residuals", "param_vjp_from_jacobian"))


def _residual_bytes_per_row(params, static, x0) -> int:
    """Bytes per batch row of what ``forward_with_residuals`` returns as residuals."""
    x_row = jax.tree_util.tree_map(lambda a: a[:1], x0)
    res = jax.eval_shape(lambda p, x: eqx.combine(p, static).forward_with_residuals(x)[1],
                         _abstract(params), _abstract(x_row))
    return _nbytes(res)


#: primitives that make a simulator step expensive to run again: solves, factorisations and
#: loops (see :func:`_saves_linearization`)
COSTLY_STEP_PRIMITIVES = frozenset({
    "tridiagonal_solve", "custom_linear_solve", "triangular_solve", "lu", "cholesky", "qr", "eigh",
    "eig", "svd", "while", "scan"})


def _primitives(jaxpr, acc: set) -> set:
    """Names of the primitives in ``jaxpr`` and in the jaxprs nested in its equations."""
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        acc.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            _primitives(sub, acc)
    return acc


def _saves_linearization(phys, params, static, x0) -> bool:
    """Should the reverse sweep reuse the simulator's linearisation saved by the forward loop,
    rather than run the step again to get it? Yes when the step contains a solve, a
    factorisation or a loop (:data:`COSTLY_STEP_PRIMITIVES`): quantum's Crank–Nicolson step,
    whose linearisation is its solve's output (measured per update: R −4 %, C −7 %, the same
    bits). No for element-wise steps, which are cheaper to run again than their residuals are
    to store and load (cart-pole R +7–9 %, guidance R +6 % when saved)."""
    c = jax.eval_shape(lambda p, x: eqx.combine(p, static)(x), _abstract(params), _abstract(x0))
    closed = jax.make_jaxpr(lambda x, c_: phys(jnp.int32(0), x, c_))(_abstract(x0), c)
    return bool(_primitives(closed.jaxpr, set()) & COSTLY_STEP_PRIMITIVES)


def _jacobian_residuals(params, static, x0) -> str | None:
    """How the batched-Jacobian path gets the controller's residuals: ``"loop"`` (kept by the
    forward loop, when ``forward_with_residuals`` returns at most KEEP_ACTIVATIONS_BYTES per
    row), ``"rows"`` (one forward pass on all T·B rows afterwards) or None (no Jacobian
    methods: J and the gradients by jax.vjp)."""
    if not has_jacobian_methods(static):
        return None
    return "loop" if _keeps_activations(params, static, x0) else "rows"


def _fields_via_jacobian(params, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gate_sets,
                         seg: int | None = None):
    """``(L, [field for each gate set])`` by the batched-Jacobian path (one forward loop, one
    reverse sweep carrying one adjoint per field).

    With ``seg`` (a divisor of T, from :func:`_segment_length`) the same computation runs in
    segments of ``seg`` steps, explicitly rematerialised: a first forward loop keeps only
    every segment's initial state; then, segment by segment from the last, the segment's
    forward loop is run again (keeping what steps 1-4 below need for ``seg`` steps only), its
    Jacobians formed on its seg·B rows, its reverse sweep run from the adjoints handed back
    by the segment after it, and its parameter gradients added up. Memory ~ T/seg states +
    one segment; time ~ one more forward loop.
    """
    model = eqx.combine(jax.lax.stop_gradient(params), static)
    how = _jacobian_residuals(params, static, x0)
    keep = how == "loop"
    phys = _phys(step, loss, horizon)
    static_g = [isinstance(g, tuple) for g in gate_sets]
    need_k = [_needs_k(g) for g in gate_sets]
    g_arr = jnp.concatenate([jnp.broadcast_to(jnp.asarray(g, jnp.float32), (horizon, 2)) for g in gate_sets], axis=1)
    nf = len(gate_sets)
    save_lin = _saves_linearization(phys, params, static, x0)
    lin_def = []  # the treedef of the saved linearisation (set while the forward loop is traced)

    def forward(x, ns, keep_res: bool, keep_lin: bool = False):
        """1. the forward loop over steps ``ns`` from x: (x_end, (xs, cs, ℓs, (activations,
        simulator linearisations))); the linearisations (the leaves of the step's vjp) only
        with ``keep_lin``."""
        def body(x, n):
            c, res = model.forward_with_residuals(x) if keep_res else (model(x), None)
            if keep_lin:
                (x1, l), vjp = jax.vjp(lambda x_, c_: phys(n, x_, c_), x, c)
                lin, lin_def[:] = jax.tree_util.tree_flatten(vjp)[0], [jax.tree_util.tree_structure(vjp)]
            else:
                (x1, l), lin = phys(n, x, c), None
            return x1, (x, c, l, (res, lin))

        return jax.lax.scan(body, x, ns)

    def backward(ns, gs, xs, cs, res_lin, lam):
        """2.-4. for the steps ``ns`` (leading axis of xs, cs, res_lin, gs): from the stacked
        adjoints ``lam`` after the last step, (the adjoints before the first, [parameter gradients])."""
        res, lins = res_lin
        # 2. J_n for all rows of these steps: leaves (steps, B, m, *row shape)
        T_, B = cs.shape[0], cs.shape[1]
        m = int(np.prod(cs.shape[2:])) if cs.ndim > 2 else 1
        xf = _merge_steps(xs)
        if how is not None:
            rf = _merge_steps(res) if keep else model.forward_with_residuals(xf)[1]
            jac, deltas = model.jacobian_from_residuals(xf, rf)
            jac = jax.tree_util.tree_map(lambda a: a.reshape((T_, B) + a.shape[1:]), jac)
            many = getattr(model, "param_vjps_from_jacobian", None)  # all fields' products at once
            param_grads = lambda cts: [eqx.filter(g, eqx.is_inexact_array) for g in (
                many(xf, rf, deltas, [_merge_steps(ct) for ct in cts]) if many is not None else
                [model.param_vjp_from_jacobian(xf, rf, deltas, _merge_steps(ct)) for ct in cts])]
        else:
            _, pull = jax.vjp(lambda p, x: eqx.combine(p, static)(x), params, xf)
            basis = jnp.broadcast_to(jnp.eye(m, dtype=cs.dtype).reshape((m, 1) + cs.shape[2:]),
                                     (m, T_ * B) + cs.shape[2:])
            jac = jax.vmap(lambda b: pull(b)[1])(basis)  # leaves (m, rows, …)
            jac = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1).reshape((T_, B, m) + a.shape[2:]), jac)
            param_grads = lambda cts: [pull(_merge_steps(ct))[0] for ct in cts]

        # 3. the reverse sweep, one adjoint per field (stacked on a leading axis)
        one = jnp.ones((), cs.dtype)

        def contract(jn, ac):  # J_nᵀ·ac for one field: jn leaves (B, m, …), ac (B, …)
            acf = ac.reshape((B, m))
            if m == 1:
                return jax.tree_util.tree_map(lambda j: j[:, 0] * acf.reshape((B,) + (1,) * (j.ndim - 2)), jn)
            return jax.tree_util.tree_map(lambda j: jnp.einsum("bk,bk...->b...", acf, j), jn)

        def rbody(lam, inp):
            n, x, c, jn, g, lin = inp
            if lin is not None:  # saved by the forward loop (a step with a solve or a loop)
                vjp = jax.tree_util.tree_unflatten(lin_def[0], lin)
            else:  # recomputed: for element-wise steps cheaper than saved
                _, vjp = jax.vjp(lambda x_, c_: phys(n, x_, c_), x, c)
            ax, ac = jax.vmap(lambda l_: vjp((l_, one)))(lam)
            new = []
            for f in range(nf):
                gc, gp = gate_sets[f] if static_g[f] else (g[2 * f], g[2 * f + 1])
                ax_f = jax.tree_util.tree_map(lambda a: a[f], ax)
                new.append(_mix_adjoint(ax_f, contract(jn, ac[f]) if need_k[f] else None, gc, gp))
            return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *new), ac

        lam, acs = jax.lax.scan(rbody, lam, (ns, xs, cs, jac, gs, lins), reverse=True)
        # 4. parameter gradients on all rows
        return lam, param_grads([acs[:, f] for f in range(nf)])

    def terminal(xT, ls):
        """L and the stacked adjoints of x_T (∂L/∂x_T for a final-state loss, else 0)."""
        if loss.on == "final":
            l_final, lam_T = jax.value_and_grad(loss.state_loss)(xT)
            val = jnp.sum(ls) + l_final
        else:
            val, lam_T = jnp.sum(ls), jax.tree_util.tree_map(jnp.zeros_like, xT)
        return val, jax.tree_util.tree_map(lambda a: jnp.stack([a] * nf), lam_T)

    ns = jnp.arange(horizon)
    if seg is None or seg >= horizon:
        xT, (xs, cs, ls, res) = forward(x0, ns, keep, save_lin)
        val, lam_T = terminal(xT, ls)
        return val, backward(ns, g_arr, xs, cs, res, lam_T)[1]

    nseg = horizon // seg
    split = lambda a: a.reshape((nseg, seg) + a.shape[1:])

    def forward_segment(x, ns_s):  # keeps only the segment's initial state (and its ℓs)
        x1, (_, _, ls_s, _) = forward(x, ns_s, False)
        return x1, (x, ls_s)

    xT, (starts, ls) = jax.lax.scan(forward_segment, x0, split(ns))
    val, lam_T = terminal(xT, ls)
    zero = [jax.tree_util.tree_map(jnp.zeros_like, params) for _ in range(nf)]

    def backward_segment(carry, inp):
        lam, acc = carry
        x, ns_s, gs_s = inp
        _, (xs, cs, _, res) = forward(x, ns_s, keep, save_lin)
        lam, grads = backward(ns_s, gs_s, xs, cs, res, lam)
        return (lam, [_tree_add(a, b) for a, b in zip(acc, grads)]), None

    (_, grads), _ = jax.lax.scan(backward_segment, (lam_T, zero), (starts, split(ns), split(g_arr)), reverse=True)
    return val, grads


def _needs_k(gates) -> bool:
    """Does a field with ``gates`` (a static (g_ctrl, g_phys) pair or a traced (T, 2) array)
    need the controller's input vjp Kᵀ·ac? Only a static controller gate 0 does not."""
    return not (isinstance(gates, tuple) and isinstance(gates[0], float) and gates[0] == 0.0)


def _mix_adjoint(ax, kx, gc, gp):
    """λ_n = g_p·ax + g_c·kx (ax: the simulator's vjp into x_n, kx: the controller's input vjp
    Kᵀ·ac, None when the controller gate is a static 0); static gates 0/1 add no work."""
    if kx is None:  # static controller gate 0: physics path only
        return ax if (isinstance(gp, float) and gp == 1.0) else jax.tree_util.tree_map(lambda u: gp * u, ax)
    if isinstance(gp, float) and gp == 0.0:
        return kx if (isinstance(gc, float) and gc == 1.0) else jax.tree_util.tree_map(lambda v: gc * v, kx)
    return jax.tree_util.tree_map(lambda u, v: gp * u + gc * v, ax, kx)


def _two_cell(static, step, loss: TrajectoryLoss, horizon: int, ga, gb):
    """custom_vjp cell of the fused two-field sweep (parameters are stop-gradient constants).

    cell(p, xa, xb, ea, eb, n, g) -> (x', x', ℓ) with c = N(xa; p) + ea and xa == xb,
    ea == eb == 0 in value; ``p`` (stop-gradient parameters) is an explicit input, not a
    closure, so the cell also works under jit + ``jax.checkpoint``; its cotangent is zero. Backward: the simulator's vjp is applied to both state cotangents at once
    (vmapped: a batched solve / matmul), the control cotangents go to ea / eb, and the
    controller's input vjp Kᵀ·ac is computed only for fields whose controller gate is not a
    static 0 (for the default C = (M, R): only for R).
    ``g`` holds traced gates (rows [ga_c, ga_p, gb_c, gb_p]) when a field has a schedule.
    """
    static_a = isinstance(ga, tuple)
    static_b = isinstance(gb, tuple)
    need_a, need_b = _needs_k(ga), _needs_k(gb)
    phys = _phys(step, loss, horizon)

    @jax.custom_vjp
    def cell(p, xa, xb, ea, eb, n, g):
        c = _tree_add(eqx.combine(p, static)(xa), ea)
        x1, l = phys(n, xa, c)
        return x1, x1, l

    def fwd(p, xa, xb, ea, eb, n, g):
        model = eqx.combine(p, static)
        if need_a or need_b:
            c, vjp_k = jax.vjp(model, xa)
        else:
            c, vjp_k = model(xa), None
        c = _tree_add(c, ea)
        (x1, l), vjp_phys = jax.vjp(lambda x, c_: phys(n, x, c_), xa, c)
        return (x1, x1, l), (vjp_k, vjp_phys, g)

    def bwd(res, cts):
        vjp_k, vjp_phys, g = res
        ct_a, ct_b, ct_l = cts
        gac, gap = ga if static_a else (g[0], g[1])
        gbc, gbp = gb if static_b else (g[2], g[3])
        both = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), ct_a, ct_b)
        ax, ac = jax.vmap(lambda ct: vjp_phys((ct, ct_l)))(both)
        take = lambda t, i: jax.tree_util.tree_map(lambda z: z[i], t)
        ax_a, ax_b, ac_a, ac_b = take(ax, 0), take(ax, 1), take(ac, 0), take(ac, 1)
        if need_a and need_b:
            (kx,) = jax.vmap(vjp_k)(ac)
            kx_a, kx_b = take(kx, 0), take(kx, 1)
        else:
            kx_a = vjp_k(ac_a)[0] if need_a else None
            kx_b = vjp_k(ac_b)[0] if need_b else None

        return (None, _mix_adjoint(ax_a, kx_a, gac, gap), _mix_adjoint(ax_b, kx_b, gbc, gbp), ac_a, ac_b, None,
                jnp.zeros_like(g))

    cell.defvjp(fwd, bwd)
    return cell


def _two_fields_value_and_grad(params, static, x0, *, step, loss: TrajectoryLoss, horizon: int,
                               gates_a, gates_b, checkpoint_every: int | None = None):
    """``(L, field_a, field_b)`` from one forward pass and one reverse sweep carrying two
    state adjoints; both parameter gradients come from one deferred controller vjp."""
    seg = _segment_length(horizon, checkpoint_every)
    if _uses_batched_jacobian(params, static, x0, [gates_a, gates_b]):
        val, (ua, ub) = _fields_via_jacobian(params, static, x0, step=step, loss=loss, horizon=horizon,
                                             gate_sets=[gates_a, gates_b], seg=seg)
        return val, ua, ub
    p_sg = jax.lax.stop_gradient(params)
    cell = _two_cell(static, step, loss, horizon, gates_a, gates_b)
    E = _zeros_like_controls(eqx.combine(p_sg, static), x0, horizon)
    g_arr = jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray(gs, jnp.float32), (horizon, 2)) for gs in (gates_a, gates_b)], axis=1)

    def total_loss(Ea, Eb):
        def body(carry, inp):
            xa, xb = carry
            n, g, ea, eb = inp
            x1a, x1b, l = cell(p_sg, xa, xb, ea, eb, n, g)
            return (x1a, x1b), (l, jax.lax.stop_gradient(xa))

        (xa, xb), (ls, xs) = _scan(body, (x0, x0), (jnp.arange(horizon), g_arr, Ea, Eb), horizon, seg)
        total = jnp.sum(ls)
        if loss.on == "final":
            lb = loss.state_loss(xb)
            total = total + loss.state_loss(xa) + (lb - jax.lax.stop_gradient(lb))
        return total, xs

    (val, xs), (ac_a, ac_b) = jax.value_and_grad(total_loss, argnums=(0, 1), has_aux=True)(E, E)
    ua, ub = _param_vjp(params, static, xs, [ac_a, ac_b], seg)
    return val, ua, ub


# ----------------------------------------------------------------------------- public API
def _flat(t) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(t)
    return jnp.concatenate([jnp.ravel(a) for a in leaves]) if leaves else jnp.zeros((0,))


def field_stats(m: PyTree, g: PyTree) -> dict[str, jax.Array]:
    """cos(M, G) and the fraction of entries with sign(M_j) == sign(G_j) (over all parameters)."""
    fm, fg = _flat(m), _flat(g)
    denom = jnp.linalg.norm(fm) * jnp.linalg.norm(fg)
    cos = jnp.where(denom > 0, jnp.dot(fm, fg) / jnp.where(denom > 0, denom, 1.0), 0.0)
    agree = jnp.mean((jnp.sign(fm) == jnp.sign(fg)).astype(jnp.float32))
    return {"cos_mg": cos, "sign_agree": agree}


def tree_norm(t: PyTree) -> jax.Array:
    """Global L2 norm of a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(t)))


def value_and_update(model, x0, *, step, loss: TrajectoryLoss, horizon: int,
                     flow: "Flow | str" = "C", diagnostics: bool = False,
                     checkpoint_every: int | str | None = None, validate: bool = True,
                     memory_budget: int | None = None):
    """Loss and update of one gradient-flow mode for a batch of initial states.

    Args:
      model: equinox controller, batched state → batched control.
      x0: batch of initial states (pytree, leading batch axis).
      step: ``step(x, c) -> x'``, batched and JAX-traceable.
      loss: the trajectory loss.
      horizon: T ≥ 1 simulator steps.
      flow: a :class:`Flow` or a mode letter / schedule.
      diagnostics: also compute G (true gradient) for non-C modes, to report cos/sign stats.
      checkpoint_every: run the scan in ``jax.checkpoint`` segments of this many steps;
        ``"auto"``: only when the unroll's residuals would exceed ``memory_budget``
        (see :func:`plan_checkpointing`).
      validate: check inputs before tracing (disable inside jit/vmap'd code).
      memory_budget: bytes for ``checkpoint_every="auto"`` (default
        :func:`default_memory_budget`: 512 MiB on CPU).

    Returns:
      ``(loss, update, info)``: scalar loss (identical for every mode), the update pytree
      (shaped like ``eqx.filter(model, eqx.is_inexact_array)``), and ``info`` with
      ``update_norm`` and, for C or with ``diagnostics``, ``cos_mg`` and ``sign_agree``.
    """
    flow = as_flow(flow)
    if validate:
        check_problem_inputs(model, x0, step, horizon)
    if flow.and_mask:
        return _and_masked(model, x0, step=step, loss=loss, horizon=horizon, flow=flow,
                           diagnostics=diagnostics, checkpoint_every=checkpoint_every,
                           memory_budget=memory_budget)
    if isinstance(checkpoint_every, str):
        est = Flow("C") if (diagnostics and not flow.combined) else flow
        checkpoint_every = resolve_checkpoint_every(checkpoint_every, model, x0, step=step, loss=loss,
                                                    horizon=horizon, flow=est, memory_budget=memory_budget)
    params, static = _split(model)
    kw = dict(step=step, loss=loss, horizon=horizon, checkpoint_every=checkpoint_every)
    if flow.combined or diagnostics:
        if flow.combined:
            fa, fb = flow.c_fields
        else:
            fa, fb = flow.mode, "R"
        ga = _schedule_gates(fa, horizon, flow)
        gb = _schedule_gates(fb, horizon, flow) if flow.combined else GATES["R"]
        val, ua, ub = _two_fields_value_and_grad(params, static, x0, gates_a=ga, gates_b=gb, **kw)
        update = flow.combine_fn()(ua, ub) if flow.combined else ua
        info = field_stats(ua, ub)
    else:
        gates = _schedule_gates(flow.mode, horizon, flow)
        val, update = _field_value_and_grad(params, static, x0, gates=gates, **kw)
        info = {}
    info["update_norm"] = tree_norm(update)
    return val, update, info


# ----------------------------------------------------------------------------- lanes
class LaneFlow(NamedTuple):
    """A gradient-flow mode as *data*, so that runs of different modes can be lanes of one
    vmapped program (``train.train(..., lane_configs=...)``; made for GPUs, where an update
    costs little more for many lanes than for one: 2.85 ms for 64 vmapped seeds vs 2.19 ms
    for one, measured on an H200).

    Every mode is two fields on one forward pass: field a with gates ``gates_a``, field b
    with ``gates_b``; the update is ``combine(a, b)`` where ``combined`` is true (mode C:
    a = M, b = R by default), else a (b is then the true gradient R, used only for the
    cos/sign statistics, as with ``diagnostics``).

    gates_a, gates_b: (T, 2) float32, (g_ctrl, g_phys) per step (truncation and decay
    included); combined: bool scalar. Leading lane axes are added by ``vmap``.
    """

    gates_a: Any
    gates_b: Any
    combined: Any


def lane_flow(flow: "Flow | str | Sequence[str]", horizon: int) -> LaneFlow:
    """The :class:`LaneFlow` of ``flow`` (numpy arrays). Every mode, schedule, truncation and
    decay is a lane; the AND-mask (per-sample updates) is not. The combiner is not part of the
    lane: lanes of one program share it (``lane_value_and_update``'s ``combiner``)."""
    flow = as_flow(flow)
    if flow.and_mask:
        raise ValueError(f"and_mask={flow.and_mask!r} cannot run as a lane (it needs per-sample updates); "
                         "lanes allow and_mask=0 only")
    fa, fb = flow.c_fields if flow.combined else (flow.mode, "R")
    full = lambda g: np.array(np.broadcast_to(np.asarray(g, np.float32), (horizon, 2)))
    gb = _schedule_gates(fb, horizon, flow) if flow.combined else GATES["R"]
    return LaneFlow(full(_schedule_gates(fa, horizon, flow)), full(gb), np.bool_(flow.combined))


def lane_value_and_update(model, x0, lane: LaneFlow, *, step, loss: TrajectoryLoss, horizon: int,
                          combiner: "str | Callable" = "sign", checkpoint_every: int | str | None = None,
                          memory_budget: int | None = None):
    """:func:`value_and_update` with the mode given as data (a :class:`LaneFlow`, traced:
    vmap it over lanes). Returns ``(loss, update, info)`` with ``update_norm``, ``cos_mg``
    and ``sign_agree`` (cos/sign of the two fields, for every lane).

    Same numbers as :func:`value_and_update` up to float32 round-off, not bit for bit: both
    fields always come from the two-field program, whose merged weight-gradient products
    sum in another order (relative differences ~1e-7 per update)."""
    if isinstance(checkpoint_every, str):
        checkpoint_every = resolve_checkpoint_every(checkpoint_every, model, x0, step=step, loss=loss,
                                                    horizon=horizon, flow=Flow("C"), memory_budget=memory_budget)
    params, static = _split(model)
    ga = jnp.broadcast_to(jnp.asarray(lane.gates_a, jnp.float32), (horizon, 2))
    gb = jnp.broadcast_to(jnp.asarray(lane.gates_b, jnp.float32), (horizon, 2))
    val, ua, ub = _two_fields_value_and_grad(params, static, x0, step=step, loss=loss, horizon=horizon,
                                             gates_a=ga, gates_b=gb, checkpoint_every=checkpoint_every)
    combine = combiner if callable(combiner) else COMBINERS[combiner]
    update = jax.tree_util.tree_map(lambda c, a: jnp.where(lane.combined, c, a), combine(ua, ub), ua)
    info = field_stats(ua, ub)
    info["update_norm"] = tree_norm(update)
    return val, update, info


def and_mask(per_sample: PyTree, tau: float) -> PyTree:
    """AND-mask: mean over the leading (sample) axis, entry j kept where |mean_i sign| ≥ τ."""
    def one(u):
        agree = jnp.abs(jnp.mean(jnp.sign(u), axis=0))
        return jnp.where(agree >= tau - 1e-6, jnp.mean(u, axis=0), 0.0)

    return jax.tree_util.tree_map(one, per_sample)


def _and_masked(model, x0, *, flow: Flow, **kw):
    """Per-sample updates of ``flow`` (batch of one each, vmapped), then :func:`and_mask`."""
    import dataclasses

    inner = dataclasses.replace(flow, and_mask=0.0)
    per = jax.tree_util.tree_map(lambda a: a[:, None], x0)
    if kw.get("checkpoint_every") == "auto":  # the budget is shared by the vmapped samples
        n = jax.tree_util.tree_leaves(x0)[0].shape[0]
        kw["memory_budget"] = (kw.get("memory_budget") or default_memory_budget()) // max(n, 1)

    def one(xi):
        return value_and_update(model, xi, flow=inner, validate=False, **kw)

    vals, ups, infos = jax.vmap(one)(per)
    update = and_mask(ups, float(flow.and_mask))
    info = {k: jnp.mean(v) for k, v in infos.items()}
    info["update_norm"] = tree_norm(update)
    return jnp.mean(vals), update, info


def field(model, x0, *, step, loss: TrajectoryLoss, horizon: int, mode="R", flow: Flow | None = None,
          checkpoint_every: int | str | None = None, memory_budget: int | None = None):
    """One field (R/M/S/N or a schedule) with its own forward pass: ``(loss, field)``."""
    flow = flow or Flow(mode=mode if not (isinstance(mode, str) and mode == "C") else "R")
    checkpoint_every = resolve_checkpoint_every(checkpoint_every, model, x0, step=step, loss=loss,
                                                horizon=horizon, flow="R", memory_budget=memory_budget)
    params, static = _split(model)
    gates = _schedule_gates(mode, horizon, flow)
    return _field_value_and_grad(
        params, static, x0, step=step, loss=loss, horizon=horizon, gates=gates,
        checkpoint_every=checkpoint_every,
    )


def naive_combined(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: Flow | None = None,
                   checkpoint_every: int | str | None = None, memory_budget: int | None = None):
    """C the authors' way: two complete forward+backward passes (for verification).

    Returns ``(loss, update, (field_a, field_b))``.
    """
    flow = flow or Flow("C")
    fa, fb = flow.c_fields
    kw = dict(step=step, loss=loss, horizon=horizon, flow=flow, checkpoint_every=checkpoint_every,
              memory_budget=memory_budget)
    val, ua = field(model, x0, mode=fa, **kw)
    _, ub = field(model, x0, mode=fb, **kw)
    return val, flow.combine_fn()(ua, ub), (ua, ub)


def rollout(model, x0, *, step, horizon: int):
    """Forward trajectory without gradients: ``(states (T+1, B, …), controls (T, B, …))``."""
    def body(x, _):
        c = model(x)
        x1 = step(x, c)
        return x1, (x1, c)

    _, (xs, cs) = jax.lax.scan(body, x0, None, length=horizon)
    xs = jax.tree_util.tree_map(lambda a0, a: jnp.concatenate([a0[None], a]), x0, xs)
    return xs, cs


def evaluate_loss(model, x0, *, step, loss: TrajectoryLoss, horizon: int) -> jax.Array:
    """Forward-only trajectory loss (for train/test evaluation)."""
    params, static = _split(model)
    return unrolled_loss(jax.lax.stop_gradient(params), static, x0, step=step, loss=loss, horizon=horizon)
