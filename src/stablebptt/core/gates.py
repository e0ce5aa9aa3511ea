r"""A gradient-flow mode as data: per-step *gates* of each field, and the combiners.

Setting (Schnell & Thuerey, ICLR 2024, Sec. 3): a controller N drives a simulator P over T steps::

    c_n = N(x_n; θ),   x_{n+1} = P(x_n, c_n),   n = 0 … T-1

The state x_n reaches the loss along two edges: into the controller (``g_ctrl``) and into the
simulator (``g_phys``). A *gate* scales the gradient that flows back into x_n along one edge
and never changes forward values. The adjoint of a field with gates (g_c, g_p) at step n is::

    λ_n = ∂ℓ_n/∂x_n + g_p,n · A_nᵀ λ_{n+1} + g_c,n · K_nᵀ B_nᵀ λ_{n+1}        (A = ∂P/∂x, K = ∂N/∂x, B = ∂P/∂c)

and the field is ∇θ = Σ_n G_θ,nᵀ B_nᵀ λ_{n+1} (G_θ = ∂N/∂θ). The modes:

=====  ================  ======  ======  =================================================
mode   name              g_ctrl  g_phys  field
=====  ================  ======  ======  =================================================
R      regular BPTT        1       1     the true gradient G = ∇θ L
M      modified            0       1     feedback along the physics path only
S      stopped             0       0     one-step credit only
N      network-only        1       0     feedback along the controller's input path only
C      combined          two fields on one forward pass (M and R by default), then a combiner
=====  ================  ======  ======  =================================================

Truncated BPTT (``truncate=k``: both gates 0 at every k-th step, n ≡ 0 mod k) and temporal
gradient decay (``decay=α``: both gates × α) are further gate patterns; a per-step schedule
(one letter per step, as the authors used for the quantum task) sets the gates step by step.

:meth:`Flow.gates` turns a flow into :class:`Gates` — plain arrays that the engine reads and
that can be batched (``vmap``) over runs of different modes; their static ``live`` says which
fields need the controller's input Jacobian at all (for M and S the engine never forms K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

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
    """The paper's combiner, entry by entry: U_j = M_j if sign(M_j) == sign(G_j) else 0 (sign(0) = 0)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(jnp.sign(a) == jnp.sign(b), a, 0.0), m, g)


def combine_sign_g(m: PyTree, g: PyTree) -> PyTree:
    """Sign-filtered G (the reviewers' ablation): U_j = G_j where sign(M_j) == sign(G_j), else 0."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(jnp.sign(a) == jnp.sign(b), b, 0.0), m, g)


COMBINERS: dict[str, Callable[[PyTree, PyTree], PyTree]] = {
    "sign": combine_sign,
    "sign_g": combine_sign_g,
}


class Gates(eqx.Module):
    """A flow as data (array leaves may carry leading run axes under ``vmap``).

    Attributes:
      fields: (F, T, 2) float32, ``fields[f, n] = (g_ctrl, g_phys)`` of field f at step n
        (F = 1 for a single-field mode, 2 for C and for diagnostics: (field a, field b)).
      combined: bool scalar. True: the update is ``combine(field a, field b)``; False: field a
        (field b, when present, is the true gradient used only for cos/sign statistics).
      live: static, one bool per field: is any controller gate of the field nonzero (in any run
        that shares the program)? Only a field with a live gate needs the controller's input
        Jacobian K = ∂N/∂x. Default: read from concrete ``fields`` (:func:`live_ctrl`).
    """

    fields: Any
    combined: Any
    live: tuple[bool, ...] = eqx.field(static=True)

    def __init__(self, fields, combined, live: Sequence[bool] | None = None):
        self.fields = fields
        self.combined = combined
        self.live = live_ctrl(fields) if live is None else tuple(bool(b) for b in live)


# ----------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class Flow:
    """How the gradient flows backward (forward values never change).

    Attributes:
      mode: ``"R" | "M" | "S" | "N" | "C"``, or a schedule: a sequence of T letters from
        ``R M S N`` (one per step n = 0 … T-1; a string like ``"RRMM"`` works too).
      combiner: for C: ``"sign"`` (paper, default), ``"sign_g"``, or a callable
        ``(field_a, field_b) -> update``.
      c_fields: for C: the two fields that are combined, as letters or schedules
        (default ``("M", "R")``: the modified field and the true gradient).
      truncate: k > 0 stops the whole state at every k-th step (truncated BPTT); 0 = off.
      decay: α ∈ (0, 1]: the backward signal into x_n is scaled by α per step; 1 = off.
      and_mask: τ ∈ (0, 1] turns on the AND-mask across batch members (Parascandolo et
        al., 2021): the update is computed per sample, averaged, and entry j is kept only
        where |mean_i sign(u_ij)| ≥ τ (τ = 1: every sample agrees); 0 = off.
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

    def field_modes(self, diagnostics: bool = False) -> tuple:
        """The fields the engine computes: (a, b) for C or with ``diagnostics`` (b = R), else (mode,)."""
        if self.combined:
            return tuple(self.c_fields)
        return (self.mode, "R") if diagnostics else (self.mode,)

    def gates(self, horizon: int, diagnostics: bool = False) -> Gates:
        """The :class:`Gates` of this flow over ``horizon`` steps (numpy arrays)."""
        fields = [self._schedule_gates(f, horizon) for f in self.field_modes(diagnostics)]
        if len(fields) == 2 and not self.combined:
            fields[1] = self._schedule_gates("R", horizon, plain=True)  # diagnostics: the true gradient
        return Gates(np.stack(fields), np.bool_(self.combined))

    def _schedule_gates(self, sched, horizon: int, plain: bool = False) -> np.ndarray:
        """(T, 2) gates of one field: a letter or a schedule, then truncation and decay
        (``plain``: without them, for the diagnostic true gradient)."""
        if isinstance(sched, str) and len(sched) == 1:
            gates = np.tile(np.asarray(GATES[sched], np.float32), (horizon, 1))
        else:
            letters = list(sched)
            if len(letters) != horizon:
                raise ValueError(
                    f"mode schedule has {len(letters)} entries; the horizon is {horizon} steps (one mode per step)"
                )
            gates = np.asarray([GATES[s] for s in letters], np.float32)
        if plain:
            return gates
        if self.truncate:
            gates[np.arange(horizon) % self.truncate == 0] = 0.0
        if self.decay != 1.0:
            gates = gates * np.float32(self.decay)
        return gates

    def label(self) -> str:
        """Short name: ``R``, ``C``, ``schedule:RRMM``, ``R/trunc10``, ``C/sign_g`` …"""
        s = self.mode if isinstance(self.mode, str) and len(self.mode) == 1 else "schedule:" + "".join(self.mode)
        if self.truncate:
            s += f"/trunc{self.truncate}"
        if self.decay != 1.0:
            s += f"/decay{self.decay:g}"
        if self.and_mask:
            s += f"/andmask{self.and_mask:g}"
        if self.combined and self.combiner != "sign":
            s += f"/{self.combiner if isinstance(self.combiner, str) else 'custom'}"
        return s


def as_flow(flow: Flow | str | Sequence[str]) -> Flow:
    return flow if isinstance(flow, Flow) else Flow(mode=flow)


def live_ctrl(fields) -> tuple[bool, ...]:
    """Per field f of concrete gates (…, F, T, 2), any leading run axes: is any controller gate
    nonzero (does the field need K = ∂N/∂x in any run)?"""
    if isinstance(fields, jax.core.Tracer):
        raise ValueError(
            "Gates of traced fields need their live controller gates given (live=...): "
            "build the gates from concrete arrays, then trace them"
        )
    g = np.asarray(fields)
    return tuple(bool(np.any(g[..., f, :, 0] != 0)) for f in range(g.shape[-3]))


# ----------------------------------------------------------------------------- validation
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
        raise ValueError(f"{what} schedule contains {bad}; each step's mode must be one of {', '.join(GATES)}")


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
    if not isinstance(flow.truncate, (int, np.integer)) or isinstance(flow.truncate, bool) or flow.truncate < 0:
        raise ValueError(f"truncate={flow.truncate!r}; must be an int ≥ 0 (0 = no truncation)")
    if not (0.0 < float(flow.decay) <= 1.0):
        raise ValueError(f"decay={flow.decay!r}; must be in (0, 1] (1 = no decay)")
    if not (0.0 <= float(flow.and_mask) <= 1.0):
        raise ValueError(f"and_mask={flow.and_mask!r}; must be in [0, 1] (0 = off, 1 = all samples agree)")
