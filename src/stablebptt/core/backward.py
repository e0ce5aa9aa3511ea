r"""Backward strategies: how the fields of a flow are computed, as objects (after diffrax's
``adjoint=``). Every strategy returns the same numbers up to float32 round-off; they differ
in cost and memory.

The fields. Each field f has gates (g_c, g_p)_n (:mod:`stablebptt.core.gates`); its adjoint
and its parameter gradient are, with A_n = ∂P/∂x, B_n = ∂P/∂c, K_n = ∂N/∂x, G_θ,n = ∂N/∂θ
at (x_n, c_n)::

    λ_T   = ∂L/∂x_T                                 (final-state losses; else 0)
    ac_n  = B_nᵀ λ_{n+1} + ∂ℓ_n/∂c_n                 (the control cotangent of step n)
    λ_n   = g_p,n · (A_nᵀ λ_{n+1} + ∂ℓ_n/∂x_n) + g_c,n · K_nᵀ ac_n
    ∇θ_f  = Σ_n G_θ,nᵀ ac_n

* :class:`Autodiff` — the reference: ``jax.grad`` of each field's gated unroll
  (:func:`~stablebptt.core.unroll.unrolled_loss`), one complete forward and backward pass per
  field (the authors' way of computing C).
* :class:`ReverseSweep` — one forward loop and one hand-written reverse sweep that carries
  the adjoints of all fields at once (C: both M's and R's, so C costs one forward pass). The
  sweep needs no parameter gradient inside the loop: it emits the control cotangents ac_n,
  and ∇θ = Σ_n G_θ,nᵀ ac_n is formed afterwards. Its options say how.

:func:`candidates` lists every strategy that can compute a flow for a controller, a simulator
and a memory budget; :func:`stablebptt.core.engine.choose_backward` picks the fastest of them by
measurement (:mod:`stablebptt.core.choose`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import hooks
from .gates import Gates, live_ctrl
from .losses import TrajectoryLoss
from .unroll import forward_loop, physics, terminal_loss, unrolled_loss

PyTree = Any


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def _take(t, i):
    return jax.tree_util.tree_map(lambda a: a[i], t)


def _merge_steps(t):
    """(T, B, …) leaves -> (T·B, …): every step's batch as rows of one batch."""
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), t)


# ----------------------------------------------------------------------------- the contract
class Strategy:
    """A backward strategy: how the fields of a flow are computed (frozen dataclasses; their
    fields are the strategy's options and their ``repr`` names them in a run's manifest).

    ``fields(params, static, x0, *, step, loss, horizon, gates) -> (L, [∇θ_f])``: the loss L
    (a float32 scalar) and, for each field f of ``gates`` (:class:`Gates` whose ``fields`` are
    (F, T, 2) and whose static ``live`` says which fields need the controller's input
    Jacobian), the parameter gradient of the field (a pytree shaped like ``params``).
    ``params``/``static``: the controller split by ``eqx.partition``; ``x0``: a batch of
    initial states. Every strategy returns the same numbers up to float32 round-off.
    """

    def fields(self, params, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gates: Gates):
        raise NotImplementedError


# ----------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class Autodiff(Strategy):
    """The reference strategy: each field is ``jax.grad`` of its gated unrolled loss."""

    def fields(self, params, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gates: Gates):
        """``(L, [∇θ of each field])`` (see :class:`Strategy`)."""
        out = [
            jax.value_and_grad(unrolled_loss)(
                params, static, x0, step=step, loss=loss, horizon=horizon, gates=gates.fields[f]
            )
            for f in range(len(gates.live))
        ]
        return out[0][0], [g for _, g in out]


# ----------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class ReverseSweep(Strategy):
    """One forward loop, one reverse sweep carrying every field's adjoint, then the parameter
    gradients of all fields from the control cotangents.

    Attributes:
      jacobian: how K_nᵀ·ac_n enters the sweep (fields with a live controller gate only):
        ``"batched"`` — J_n = ∂c_n/∂x_n is formed for all T·B rows at once after the forward
        loop (m backward passes of the controller on T·B rows, m = controls per row), and
        the sweep contracts J_nᵀ·ac_n (needs ``merge_rows``); ``"per_step"`` — the forward
        loop saves the controller's input linearisation at every step and the sweep applies
        its vjp (any controller).
      merge_rows: form the parameter gradients (and the batched J) on all T·B rows at once —
        valid only for controllers whose rows are independent (verified by
        :func:`candidates`); otherwise one vjp vmapped over the T steps.
      keep_activations: the forward loop keeps the controller's residuals
        (``forward_with_residuals``, :class:`~stablebptt.core.hooks.RowwiseController`) for the
        parameter gradients and J; otherwise they are recomputed on the rows afterwards.
      save_linearization: the forward loop keeps the simulator's linearisation (the leaves of
        its vjp) for the sweep; otherwise the sweep runs the step again to get it.
      param_grads: where Σ_n G_θ,nᵀ ac_n is formed: ``"after"`` the sweep (on the T·B rows
        with ``merge_rows``, else one vjp vmapped over the steps: the controller runs again),
        or ``"in_sweep"``: the forward loop keeps each step's vjp of the controller with
        respect to (θ, x_n) and the sweep applies it to every field's control cotangent at
        once, accumulating the parameter gradients (the controller's forward runs once;
        needs ``jacobian="per_step"``; any controller).
      checkpoint_every: remat segments of this many steps (a divisor of T): the first forward
        loop keeps only each segment's initial state; the sweep then runs segment by segment
        from the last, repeating the segment's forward loop, its J, its sweep and its
        parameter gradients. Memory ~ T/s states + one segment; time ~ one more forward loop.
        None: no segments.

    Which options are fastest depends on the controller, the simulator and the machine:
    :func:`stablebptt.core.engine.choose_backward` measures them.
    """

    jacobian: Literal["batched", "per_step"] = "batched"
    merge_rows: bool = True
    keep_activations: bool = False
    save_linearization: bool = False
    param_grads: Literal["after", "in_sweep"] = "after"
    checkpoint_every: int | None = None

    def __post_init__(self):
        if self.jacobian not in ("batched", "per_step"):
            raise ValueError(f"jacobian={self.jacobian!r}; allowed: 'batched', 'per_step'")
        if self.jacobian == "batched" and not self.merge_rows:
            raise ValueError("jacobian='batched' needs merge_rows=True (a controller with independent rows)")
        if self.param_grads not in ("after", "in_sweep"):
            raise ValueError(f"param_grads={self.param_grads!r}; allowed: 'after', 'in_sweep'")
        if self.param_grads == "in_sweep" and self.jacobian != "per_step":
            raise ValueError("param_grads='in_sweep' needs jacobian='per_step'")
        ce = self.checkpoint_every
        if ce is not None and (not isinstance(ce, (int, np.integer)) or isinstance(ce, bool) or ce < 1):
            raise ValueError(f"checkpoint_every={ce!r}; must be an int ≥ 1 or None")

    def fields(self, params, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gates: Gates):
        """``(L, [∇θ of each field])`` (see the module docstring)."""
        sweep = _Sweep(self, params, static, step, loss, horizon, gates.fields, gates.live)
        seg = segment_length(horizon, self.checkpoint_every)
        ns = jnp.arange(horizon)
        if seg is None:
            xT, fwd = sweep.forward(x0, ns, keep=True)
            val, lam_T = sweep.terminal(xT, fwd.ls)
            return val, sweep.backward(ns, fwd, lam_T)[1]
        split = lambda a: a.reshape((horizon // seg, seg) + a.shape[1:])

        def forward_segment(x, ns_s):  # keeps only the segment's initial state and its loss terms
            x1, fwd = sweep.forward(x, ns_s, keep=False)
            return x1, (x, fwd.ls)

        xT, (starts, ls) = jax.lax.scan(forward_segment, x0, split(ns))
        val, lam_T = sweep.terminal(xT, ls)
        zero = [jax.tree_util.tree_map(jnp.zeros_like, params) for _ in gates.live]

        def backward_segment(carry, inp):
            lam, acc = carry
            x, ns_s = inp
            _, fwd = sweep.forward(x, ns_s, keep=True)
            lam, grads = sweep.backward(ns_s, fwd, lam)
            return (lam, [_tree_add(a, b) for a, b in zip(acc, grads)]), None

        (_, grads), _ = jax.lax.scan(backward_segment, (lam_T, zero), (starts, split(ns)), reverse=True)
        return val, grads


#: what the sweep's forward loop stacks (:class:`~stablebptt.core.unroll.Forward` fields)
KEPT = ("xs", "cs", "ls", "res", "lin", "kvjp")


def _static_gates(gate_fields) -> list:
    """Per field: its (g_ctrl, g_phys) as Python floats when the gates are concrete (not traced)
    and the same at every step — multiplications by 1 and terms with a factor 0 then vanish
    from the traced sweep — else None (the gates are read step by step)."""
    if isinstance(gate_fields, jax.core.Tracer):
        return [None] * gate_fields.shape[0]
    g = np.asarray(gate_fields, np.float32)
    return [(float(g[f, 0, 0]), float(g[f, 0, 1])) if np.all(g[f] == g[f, 0]) else None for f in range(g.shape[0])]


def _scaled(t, g):
    """g·t, with a static g of 1 or 0 folded (0 gives None: no term)."""
    if isinstance(g, float):
        if g == 0.0:
            return None
        if g == 1.0:
            return t
    return jax.tree_util.tree_map(lambda u: g * u, t)


def _sum(a, b):
    """a + b where None is no term."""
    return b if a is None else a if b is None else jax.tree_util.tree_map(jnp.add, a, b)


class _Sweep:
    """The pieces of :class:`ReverseSweep` for one problem (forward loop, terminal adjoint,
    J on rows, reverse sweep, parameter gradients)."""

    def __init__(self, opts: ReverseSweep, params, static, step, loss, horizon, gate_fields, live_ctrl):
        self.o, self.params, self.static, self.loss = opts, params, static, loss
        self.model = eqx.combine(jax.lax.stop_gradient(params), static)
        self.phys = physics(step, loss, horizon)
        self.gate_fields, self.live = jnp.asarray(gate_fields, jnp.float32), live_ctrl
        self.static_gates = _static_gates(gate_fields)
        # no field carries the physics path back (S, N): the step is differentiated w.r.t. c only
        self.need_x = any(g is None or g[1] != 0.0 for g in self.static_gates)
        self.hooks = opts.merge_rows and hooks.has_hooks(static)
        self.need_k = any(live_ctrl)
        self.per_step_k = self.need_k and opts.jacobian == "per_step"
        self.in_sweep = opts.param_grads == "in_sweep"
        self.keep_res = self.hooks and opts.keep_activations and not self.per_step_k and not self.in_sweep
        self.treedefs: dict = {}  # treedefs of saved vjps, set while the forward loop is traced

    def _step_vjp(self, n, x, c):
        """``((x_{n+1}, ℓ_n), vjp)`` of the step w.r.t. (x_n, c_n), or w.r.t. c_n only when no
        field needs the state cotangent."""
        if self.need_x:
            return jax.vjp(lambda x_, c_: self.phys(n, x_, c_), x, c)
        return jax.vjp(lambda c_: self.phys(n, x, c_), c)

    def _save(self, name, vjp):
        leaves, self.treedefs[name] = jax.tree_util.tree_flatten(vjp)
        return leaves

    def _load(self, name, leaves):
        return jax.tree_util.tree_unflatten(self.treedefs[name], leaves)

    def forward(self, x, ns, keep: bool):
        """The forward loop over steps ``ns`` from x: ``(x_end, Forward)``
        (:func:`~stablebptt.core.unroll.forward_loop`); with ``keep=False`` only the loss terms
        are stacked (what a segment start needs)."""

        def control(n, x):
            if self.in_sweep and keep:  # the controller's vjp w.r.t. θ (and x_n where K is needed)
                if self.need_k:
                    c, vjp_p = jax.vjp(lambda p, x_: eqx.combine(p, self.static)(x_), self.params, x)
                else:
                    c, vjp_p = jax.vjp(lambda p: eqx.combine(p, self.static)(x), self.params)
                return c, {"kvjp": self._save("p", vjp_p)}
            if self.per_step_k and keep:
                c, vjp_k = jax.vjp(self.model, x)
                return c, {"kvjp": self._save("k", vjp_k)}
            if self.keep_res and keep:
                c, res = self.model.forward_with_residuals(x)
                return c, {"res": res}
            return self.model(x), {}

        def phys(n, x, c):
            if self.o.save_linearization and keep:
                (x1, l), vjp = self._step_vjp(n, x, c)
                return x1, l, self._save("phys", vjp)
            return (*self.phys(n, x, c), None)

        return forward_loop(control, phys, x, ns, keep=KEPT if keep else ("ls",))

    def terminal(self, xT, ls):
        """L and the stacked adjoints of x_T (one per field)."""
        if self.loss.on == "final":
            l_final, lam_T = jax.value_and_grad(self.loss.state_loss)(xT)
        else:
            l_final, lam_T = terminal_loss(self.loss, xT), jax.tree_util.tree_map(jnp.zeros_like, xT)
        val = jnp.sum(ls) + l_final
        return val, jax.tree_util.tree_map(lambda a: jnp.stack([a] * len(self.live)), lam_T)

    def _rows(self, xs, res):
        """Rows x_n of all steps and, with hooks, their residuals (kept or recomputed)."""
        xf = _merge_steps(xs)
        if not self.hooks:
            return xf, None
        return xf, (_merge_steps(res) if self.keep_res else self.model.forward_with_residuals(xf)[1])

    def _jacobian(self, xf, rf, cs):
        """J on all rows, reshaped (T, B, m, *state row), and the hooks' deltas (or the rows' vjp)."""
        T_, B = jax.tree_util.tree_leaves(cs)[0].shape[:2]
        if self.hooks:
            jac, extra = self.model.jacobian_from_residuals(xf, rf)
        else:
            c_leaf = jax.tree_util.tree_leaves(cs)[0]
            m = int(np.prod(c_leaf.shape[2:])) if c_leaf.ndim > 2 else 1
            _, pull = jax.vjp(lambda p, x: eqx.combine(p, self.static)(x), self.params, xf)
            basis = jnp.broadcast_to(
                jnp.eye(m, dtype=c_leaf.dtype).reshape((m, 1) + c_leaf.shape[2:]), (m, T_ * B) + c_leaf.shape[2:]
            )
            jac = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1), jax.vmap(lambda b: pull(b)[1])(basis))
            extra = pull
        return jax.tree_util.tree_map(lambda a: a.reshape((T_, B) + a.shape[1:]), jac), extra

    def _param_grads(self, xs, xf, rf, extra, cts):
        """[Σ_n G_θ,nᵀ ct_n for each field's control cotangents ct (T, B, …)]."""
        params_only = lambda g: eqx.filter(g, eqx.is_inexact_array)
        if self.hooks:
            merged = [_merge_steps(ct) for ct in cts]
            if extra is not None:  # the Jacobian's backward products are reused
                return [params_only(g) for g in self.model.param_vjps_from_jacobian(xf, rf, extra, merged)]
            return [params_only(g) for g in self.model.param_vjps_from_residuals(xf, rf, merged)]
        if self.o.merge_rows:  # one vjp on all rows (shared with the Jacobian's when it was formed)
            pull = extra if extra is not None else jax.vjp(lambda p: eqx.combine(p, self.static)(xf), self.params)[1]
            return [pull(_merge_steps(ct))[0] for ct in cts]
        _, pull = jax.vjp(lambda p: jax.vmap(eqx.combine(p, self.static))(xs), self.params)
        return [pull(ct)[0] for ct in cts]

    def backward(self, ns, fwd, lam):
        """From the stacked adjoints ``lam`` after the last step of ``ns``: (the adjoints before
        the first step, [parameter gradient of each field over these steps])."""
        xs, cs, res, lins, kvjps = fwd.xs, fwd.cs, fwd.res, fwd.lin, fwd.kvjp
        xf, rf = self._rows(xs, res) if self.o.merge_rows and not self.in_sweep else (None, None)
        jac = extra = None
        if self.need_k and not self.per_step_k:
            jac, extra = self._jacobian(xf, rf, cs)
        one = jnp.ones((), jax.tree_util.tree_leaves(cs)[0].dtype)
        g_steps = jnp.moveaxis(self.gate_fields, -2, 0)  # (T, F, 2)

        def contract(jn, ac):  # J_nᵀ·ac for one field: jn leaves (B, m, …), ac (B, …)
            B = ac.shape[0]
            acf = ac.reshape((B, -1))
            if acf.shape[1] == 1:
                return jax.tree_util.tree_map(lambda j: j[:, 0] * acf.reshape((B,) + (1,) * (j.ndim - 2)), jn)
            return jax.tree_util.tree_map(lambda j: jnp.einsum("bk,bk...->b...", acf, j), jn)

        def rbody(carry, inp):
            lam, acc = carry
            n, x, c, g, lin, kvjp, jn = inp
            if lin is not None:  # saved by the forward loop
                vjp = self._load("phys", lin)
            else:  # the step again, for its linearisation
                vjp = self._step_vjp(n, x, c)[1]
            cot = jax.vmap(lambda l_: vjp((l_, one)))(lam)
            ax, ac = cot if self.need_x else (None, cot[0])
            vjp_k = xk = None
            if self.in_sweep:  # every field's parameter (and input) cotangent in one batched vjp
                pulled = jax.vmap(self._load("p", kvjp))(ac)
                acc = _tree_add(acc, pulled[0])
                xk = pulled[1] if self.need_k else None
            elif kvjp is not None:
                vjp_k = self._load("k", kvjp)
            new = []
            for f, live in enumerate(self.live):
                gc, gp = self.static_gates[f] or (g[f, 0], g[f, 1])
                lam_f = _scaled(_take(ax, f), gp) if ax is not None else None
                if live:
                    if xk is not None:
                        k_f = _take(xk, f)
                    elif vjp_k is not None:
                        k_f = vjp_k(_take(ac, f))[0]
                    else:
                        k_f = contract(jn, _take(ac, f))
                    lam_f = _sum(lam_f, _scaled(k_f, gc))
                new.append(lam_f if lam_f is not None else jax.tree_util.tree_map(jnp.zeros_like, x))
            return (jax.tree_util.tree_map(lambda *a: jnp.stack(a), *new), acc), (None if self.in_sweep else ac)

        F = len(self.live)
        acc0 = (
            jax.tree_util.tree_map(lambda a: jnp.zeros((F,) + a.shape, a.dtype), self.params) if self.in_sweep else None
        )
        (lam, acc), acs = jax.lax.scan(rbody, (lam, acc0), (ns, xs, cs, g_steps[ns], lins, kvjps, jac), reverse=True)
        if self.in_sweep:
            return lam, [_take(acc, f) for f in range(F)]
        cts = [_take(acs, (slice(None), f)) for f in range(F)]
        return lam, self._param_grads(xs, xf, rf, extra, cts)


# ----------------------------------------------------------------------------- choosing
#: memory budget (bytes) of ``checkpoint_every="auto"`` on the CPU; on an accelerator a quarter
#: of the device's memory (or ACCELERATOR_MEMORY_BUDGET when it does not say)
CPU_MEMORY_BUDGET = 512 << 20
ACCELERATOR_MEMORY_BUDGET = 4 << 30

BACKWARDS = ("auto", "autodiff", "batched", "per_step")


def default_memory_budget() -> int:
    """Bytes for ``checkpoint_every="auto"``: :data:`CPU_MEMORY_BUDGET` on the CPU; a quarter
    of the device memory on an accelerator."""
    if jax.default_backend() == "cpu":
        return CPU_MEMORY_BUDGET
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit) // 4 if limit else ACCELERATOR_MEMORY_BUDGET


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def segment_length(horizon: int, checkpoint_every: int | None) -> int | None:
    """The remat segment: the largest divisor of T up to ``checkpoint_every`` (None: no segments)."""
    if not checkpoint_every or checkpoint_every >= horizon:
        return None
    for s in range(int(checkpoint_every), 0, -1):
        if horizon % s == 0:
            return s
    return 1


def candidates(
    model,
    x0,
    *,
    step,
    loss: TrajectoryLoss,
    horizon: int,
    gates,
    prefer: str = "auto",
    checkpoint_every: int | str | None = "auto",
    memory_budget: int | None = None,
    verify_rows: bool = True,
) -> list:
    """Every strategy that can compute this flow for this controller, simulator and memory
    budget (:func:`stablebptt.core.choose.choose` measures them; none is ruled out by a guess
    about speed).

    ``gates``: the flow's concrete gate fields (…, F, T, 2) (``Gates.fields``; leading axes:
    runs that share the program). ``prefer``: ``"auto"`` (all), ``"autodiff"`` (the
    reference alone), ``"batched"`` or ``"per_step"`` (the sweeps with that input Jacobian).

    The sweeps: ``jacobian="batched"`` only for a controller that declares independent rows
    (the claim is verified here: a false claim raises ValueError; ``verify_rows=False``: the
    caller runs :func:`~stablebptt.core.hooks.verify_rows_independent` itself), and only where a
    field needs the controller's input Jacobian at all; ``save_linearization`` off and on;
    ``keep_activations`` off and on for controllers with hooks (where the batched Jacobian or
    the parameter gradients read them); ``param_grads="in_sweep"`` (per-step Jacobian, any
    controller). ``checkpoint_every``: an int ≥ 1, None, or ``"auto"``:
    per sweep, none when its estimated memory (:func:`memory_estimate`) fits ``memory_budget``
    (default :func:`default_memory_budget`), else ≈ √T-step segments. :class:`Autodiff` is a
    candidate for ``"auto"`` only where no segments are needed (it cannot make them).

    The first candidate is the :func:`prior`: what a run too short for measuring keeps.

    ``model`` may be abstract (arrays as ``jax.ShapeDtypeStruct``); nothing is compiled except
    the small check of independent rows.
    """
    if prefer not in BACKWARDS:
        raise ValueError(f"backward={prefer!r}; allowed: {', '.join(BACKWARDS)}")
    if isinstance(checkpoint_every, str) and checkpoint_every != "auto":
        raise ValueError(f"checkpoint_every={checkpoint_every!r}; allowed: an int ≥ 1, 'auto' or None")
    if prefer == "autodiff":
        return [Autodiff()]
    merge = hooks.claims_rows_independent(model)
    if prefer == "batched" and not merge:
        raise ValueError(
            f"backward='batched' needs a controller with independent rows; {type(model).__name__} "
            "does not declare rows_independent = True (use 'per_step' or 'auto')"
        )
    if merge and verify_rows:
        hooks.verify_rows_independent(model, x0)
    has = merge and hooks.has_hooks(model)
    if has:
        hooks.check_hook_shapes(model, x0)
    live = live_ctrl(gates)
    need_k = any(live)
    if prefer == "auto":
        jacobians = (["batched"] if merge else []) + ["per_step"] if need_k else ["batched" if merge else "per_step"]
    else:
        jacobians = [prefer]
    sweeps = []
    for jac in jacobians:
        reads_activations = has and not (need_k and jac == "per_step")
        for keep in (False, True) if reads_activations else (False,):
            for save in (False, True):
                sweeps.append(
                    ReverseSweep(jacobian=jac, merge_rows=merge, keep_activations=keep, save_linearization=save)  # type: ignore[arg-type]  # prefer: checked against BACKWARDS above
                )
    if prefer in ("auto", "per_step"):  # the controller's vjp kept per step, parameters in the sweep
        sweeps += [
            ReverseSweep(jacobian="per_step", merge_rows=False, save_linearization=save, param_grads="in_sweep")
            for save in (False, True)
        ]
    out: list = []
    fits = True
    for sw in sweeps:
        ce = checkpoint_every
        if ce == "auto":
            ce = plan_segments(
                sw, model, x0, step=step, loss=loss, horizon=horizon, live_ctrl=live, memory_budget=memory_budget
            )
        fits = fits and ce is None
        out.append(dataclasses.replace(sw, checkpoint_every=ce))  # type: ignore[arg-type]  # a str other than 'auto' was refused above
    if prefer == "auto" and fits and checkpoint_every in (None, "auto"):
        out.insert(0, Autodiff())
    first = prior(out, has=has, gates=gates, loss=loss)
    return [first] + [c for c in out if c != first]


def prior(cands: Sequence, *, has: bool, gates, loss: TrajectoryLoss):
    """The candidate used without measuring (first of :func:`candidates`; the strategy a run
    keeps when timing the others is not worth it, and the reference the others are timed
    against): for a controller with hooks and independent rows, the sweep that reads the
    activations kept by the forward loop with the input Jacobian formed on all rows at once (no
    controller pass is repeated, the rows' work is one batched call); it saves the simulator's
    linearisation only for an every-state loss where no field carries the physics path (S, N:
    each step's control cotangent then needs the step's output). Otherwise :class:`Autodiff`
    where it is a candidate (XLA's own reverse pass of the unrolled loss), else the first."""
    fields = np.asarray(gates)
    carries = bool(np.any(fields[..., 1] != 0))
    save = loss.on == "every" and not carries
    if has:
        for c in cands:
            if (
                isinstance(c, ReverseSweep)
                and c.jacobian == "batched"
                and c.keep_activations
                and c.save_linearization == save
            ):
                return c
    return next((c for c in cands if isinstance(c, Autodiff)), cands[0])


def first_round(cands: Sequence) -> list:
    """One candidate of each family (:class:`Autodiff`; per sweep the jacobian and where the
    parameter gradients are formed): the first candidate (:func:`prior`) for its own family,
    else the one with kept activations (where that is an option) and a recomputed
    linearisation. The first round of :func:`stablebptt.core.choose.choose`."""
    out, seen = [cands[0]], {_family(cands[0])}
    for c in sorted(
        cands, key=lambda c: (not getattr(c, "keep_activations", False), getattr(c, "save_linearization", False))
    ):
        fam = _family(c)
        if fam not in seen:
            seen.add(fam)
            out.append(c)
    return [c for c in cands if c in out]  # in the candidates' order


def _family(c) -> tuple:
    return type(c).__name__, getattr(c, "jacobian", None), getattr(c, "param_grads", None)


def neighbours(strategy) -> list:
    """The sweeps that differ from ``strategy`` in one option (saved linearisation, kept
    activations): the second round of :func:`stablebptt.core.choose.choose`."""
    if not isinstance(strategy, ReverseSweep):
        return []
    return [
        dataclasses.replace(strategy, save_linearization=not strategy.save_linearization),
        dataclasses.replace(strategy, keep_activations=not strategy.keep_activations),
    ]


# ----------------------------------------------------------------------------- memory
def _nbytes(tree) -> int:
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree)))


def memory_estimate(
    sweep: ReverseSweep, model, x0, *, step, loss: TrajectoryLoss, horizon: int, live_ctrl: Sequence[bool]
) -> dict:
    """Bytes of the sweep's largest buffers, from the shapes of what it stacks (nothing runs).

    Returns ``per_step`` (what the forward loop keeps per step plus, per step, the J and
    deltas on the rows and the control cotangents of every field) and ``state`` (one state):
    without segments the update needs ≈ T·per_step; with s-step segments ≈ (T/s)·state +
    s·per_step.
    """
    params, static = hooks.split(model)
    ones = np.ones((len(live_ctrl), horizon, 2), np.float32)

    def parts(p, x):
        sw = _Sweep(sweep, p, static, step, loss, horizon, ones, tuple(live_ctrl))
        _, fwd = sw.forward(x, jnp.arange(1), keep=True)
        out = {"fwd": fwd}
        if sweep.merge_rows and not sw.in_sweep:
            xf, rf = sw._rows(fwd.xs, fwd.res)
            out["rows"] = None if sw.keep_res else rf  # residuals recomputed on the rows
            if sw.need_k and not sw.per_step_k:
                out["jac"] = sw._jacobian(xf, rf, fwd.cs)  # J and the deltas (or the rows' vjp residuals)
        return out

    shapes = jax.eval_shape(parts, _abstract(params), _abstract(x0))
    fwd = shapes["fwd"]
    per_step = _nbytes(shapes)
    per_step += len(live_ctrl) * _nbytes(fwd.cs)  # the control cotangents of every field
    return {"per_step": per_step, "state": _nbytes(_abstract(x0))}


def plan_segments(
    sweep: ReverseSweep,
    model,
    x0,
    *,
    step,
    loss: TrajectoryLoss,
    horizon: int,
    live_ctrl: Sequence[bool],
    memory_budget: int | None = None,
) -> int | None:
    """``checkpoint_every`` for ``"auto"``: None when T·per_step (:func:`memory_estimate`) fits
    the budget; else the divisor s of T nearest √T if (T/s)·state + s·per_step fits, else the
    divisor with the least memory."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    est = memory_estimate(sweep, model, x0, step=step, loss=loss, horizon=horizon, live_ctrl=live_ctrl)
    if horizon * est["per_step"] <= budget:
        return None
    mem = lambda s: (horizon // s) * est["state"] * len(live_ctrl) + s * est["per_step"]
    divisors = [d for d in range(1, horizon) if horizon % d == 0]
    if not divisors:
        return None
    root = min(divisors, key=lambda d: abs(d - math.sqrt(horizon)))
    return root if mem(root) <= budget else min(divisors, key=mem)
