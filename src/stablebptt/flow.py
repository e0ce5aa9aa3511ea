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
the saved linearisation to both cotangents at once. :func:`naive_combined` computes the
same thing with two complete passes, for verification.

Shapes: states and controls are pytrees with a leading batch axis; the controller maps a
batched state to a batched control; ``loss.state_loss`` reduces a batched state to a
scalar. The update is a pytree shaped like the controller's array leaves (an
``eqx.filter`` of the module), i.e. a gradient to be handed to an optimizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

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
    try:
        c = jax.eval_shape(model, x0)
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
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}; must be ≥ 1 or None")
    # largest divisor of the horizon not above the request, so segments tile T exactly
    for s in range(min(int(checkpoint_every), horizon), 0, -1):
        if horizon % s == 0:
            return s
    return 1


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


def _pair_cell(static, step, loss: TrajectoryLoss, horizon: int, ga, gb):
    """custom_vjp cell: one forward of controller + simulator, backward for two adjoints.

    cell(pa, pb, xa, xb, n, g) -> (x', x', ℓ) where pa == pb and xa == xb in value.
    Cotangents: θ_a ← field a (gates ga), θ_b ← field b (gates gb).
    ``g`` holds traced gates (T-indexed rows [ga_c, ga_p, gb_c, gb_p]) when not static.
    """
    static_a = isinstance(ga, tuple)
    static_b = isinstance(gb, tuple)

    def ctrl(p, x):
        return eqx.combine(p, static)(x)

    def phys(n, x, c):
        x1 = step(x, c)
        return x1, _per_step_loss(loss, n + 1, x1, c, horizon)

    @jax.custom_vjp
    def cell(pa, pb, xa, xb, n, g):
        x1, l = phys(n, xa, ctrl(pa, xa))
        return x1, x1, l

    def fwd(pa, pb, xa, xb, n, g):
        c, vjp_ctrl = jax.vjp(ctrl, pa, xa)
        (x1, l), vjp_phys = jax.vjp(lambda x, c_: phys(n, x, c_), xa, c)
        return (x1, x1, l), (vjp_ctrl, vjp_phys, g)

    def bwd(res, cts):
        vjp_ctrl, vjp_phys, g = res
        ct_a, ct_b, ct_l = cts
        both = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), ct_a, ct_b)
        ax, ac = jax.vmap(lambda ct: vjp_phys((ct, ct_l)))(both)
        pp, kx = jax.vmap(vjp_ctrl)(ac)
        take = lambda t, i: jax.tree_util.tree_map(lambda z: z[i], t)
        gac, gap = ga if static_a else (g[0], g[1])
        gbc, gbp = gb if static_b else (g[2], g[3])

        def mix(i, gc, gp):
            return jax.tree_util.tree_map(lambda u, v: gp * u + gc * v, take(ax, i), take(kx, i))

        return (take(pp, 0), take(pp, 1), mix(0, gac, gap), mix(1, gbc, gbp), None,
                jnp.zeros_like(g))

    cell.defvjp(fwd, bwd)
    return cell


def two_field_loss(pa, pb, static, x0, *, step, loss: TrajectoryLoss, horizon: int,
                   gates_a, gates_b, checkpoint_every: int | None = None) -> jax.Array:
    """L(θ) computed once; ∂/∂pa is field a, ∂/∂pb is field b (one forward, one reverse sweep)."""
    seg = _segment_length(horizon, checkpoint_every)
    cell = _pair_cell(static, step, loss, horizon, gates_a, gates_b)
    rows = []
    for gs in (gates_a, gates_b):
        rows.append(jnp.broadcast_to(jnp.asarray(gs, jnp.float32), (horizon, 2)))
    g_arr = jnp.concatenate(rows, axis=1)

    def body(carry, inp):
        xa, xb = carry
        n, g = inp
        x1a, x1b, l = cell(pa, pb, xa, xb, n, g)
        return (x1a, x1b), l

    (xa, xb), ls = _scan(body, (x0, x0), (jnp.arange(horizon), g_arr), horizon, seg)
    total = jnp.sum(ls)
    if loss.on == "final":
        lb = loss.state_loss(xb)
        total = total + loss.state_loss(xa) + (lb - jax.lax.stop_gradient(lb))
    return total


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
                     checkpoint_every: int | None = None, validate: bool = True):
    """Loss and update of one gradient-flow mode for a batch of initial states.

    Args:
      model: equinox controller, batched state → batched control.
      x0: batch of initial states (pytree, leading batch axis).
      step: ``step(x, c) -> x'``, batched and JAX-traceable.
      loss: the trajectory loss.
      horizon: T ≥ 1 simulator steps.
      flow: a :class:`Flow` or a mode letter / schedule.
      diagnostics: also compute G (true gradient) for non-C modes, to report cos/sign stats.
      checkpoint_every: run the scan in ``jax.checkpoint`` segments of this many steps.
      validate: check inputs before tracing (disable inside jit/vmap'd code).

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
                           diagnostics=diagnostics, checkpoint_every=checkpoint_every)
    params, static = _split(model)
    kw = dict(step=step, loss=loss, horizon=horizon, checkpoint_every=checkpoint_every)
    if flow.combined or diagnostics:
        if flow.combined:
            fa, fb = flow.c_fields
        else:
            fa, fb = flow.mode, "R"
        ga = _schedule_gates(fa, horizon, flow)
        gb = _schedule_gates(fb, horizon, flow) if flow.combined else GATES["R"]
        val, (ua, ub) = jax.value_and_grad(two_field_loss, argnums=(0, 1))(
            params, params, static, x0, gates_a=ga, gates_b=gb, **kw
        )
        update = flow.combine_fn()(ua, ub) if flow.combined else ua
        info = field_stats(ua, ub)
    else:
        gates = _schedule_gates(flow.mode, horizon, flow)
        val, update = jax.value_and_grad(unrolled_loss)(params, static, x0, gates=gates, **kw)
        info = {}
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

    def one(xi):
        return value_and_update(model, xi, flow=inner, validate=False, **kw)

    vals, ups, infos = jax.vmap(one)(per)
    update = and_mask(ups, float(flow.and_mask))
    info = {k: jnp.mean(v) for k, v in infos.items()}
    info["update_norm"] = tree_norm(update)
    return jnp.mean(vals), update, info


def field(model, x0, *, step, loss: TrajectoryLoss, horizon: int, mode="R", flow: Flow | None = None,
          checkpoint_every: int | None = None):
    """One field (R/M/S/N or a schedule) with its own forward pass: ``(loss, field)``."""
    flow = flow or Flow(mode=mode if not (isinstance(mode, str) and mode == "C") else "R")
    params, static = _split(model)
    gates = _schedule_gates(mode, horizon, flow)
    return jax.value_and_grad(unrolled_loss)(
        params, static, x0, step=step, loss=loss, horizon=horizon, gates=gates,
        checkpoint_every=checkpoint_every,
    )


def naive_combined(model, x0, *, step, loss: TrajectoryLoss, horizon: int, flow: Flow | None = None,
                   checkpoint_every: int | None = None):
    """C the authors' way: two complete forward+backward passes (for verification).

    Returns ``(loss, update, (field_a, field_b))``.
    """
    flow = flow or Flow("C")
    fa, fb = flow.c_fields
    kw = dict(step=step, loss=loss, horizon=horizon, flow=flow, checkpoint_every=checkpoint_every)
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
