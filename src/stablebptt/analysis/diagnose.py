r"""Gradient diagnostics: *should this problem be trained with R, M or C?*

:func:`diagnose` unrolls a controller through a simulator on a few initial states and
measures what decides whether regular BPTT (mode R) works or whether the modified (M) /
combined (C) updates of Schnell & Thuerey (ICLR 2024) are needed:

(a) **adjoint norms** ‖λ_n‖ for R and M, n = 0 … T. λ_n = ∂L/∂x_n along the gradient paths
    of the mode (R: physics *and* controller input path; M: physics path only)::

        λ^R_n = ∂ℓ_n/∂x_n + (A_n + B_n K_n)ᵀ λ^R_{n+1}        λ^M_n = ∂ℓ_n/∂x_n + A_nᵀ λ^M_{n+1}

    They are obtained by differentiating the unrolled loss with respect to an additive zero
    perturbation ε_n of every state (x_n ← x_n + ε_n), with the mode's stop-gradient gates.
    The loss averages over the batch, so λ is reported per sample: B·∂L/∂ε_n for sample i.
(b) **credit per step**: the norm of step n's contribution G_θ,nᵀ B_nᵀ λ_{n+1} (plus the
    control-penalty term of step n, if any) to the batch update, for R and for M. Obtained
    the same way with one copy of the parameters per step; the contributions sum to the
    engine's fields (:func:`stablebptt.core.value_and_update`) exactly.
(c) **Jacobian spectra** per step on one sample (the state flattened, ``jax.jacfwd``): the
    physics Jacobian A_n = ∂P/∂x and the closed loop A_n + B_n K_n = d P(x, N(x))/dx, their
    singular values, and finite-horizon Lyapunov estimates (1/T)·log σ_max(J_{T−1} ⋯ J_0)
    (float64 product with QR re-orthonormalisation, so nothing overflows).
(d) **agreement of the fields**: cos(M, G) and the fraction of parameter entries where
    sign(M_j) = sign(G_j), with G = Σ_n (R contributions) and M = Σ_n (M contributions)
    — the same numbers as ``value_and_update(..., flow="M", diagnostics=True)``.

From these a :class:`Verdict` recommends a mode and a clipping setting and flags the
horizons over which R's credit spans more than 6 orders of magnitude (see
:func:`make_verdict` for the exact rules). :meth:`Diagnosis.figure` draws the four panels.

For registry problems :func:`diagnose_problem` builds the controller. An *untrained*
controller is diagnosed with ``zero_last=False`` by default: the paper presets of cart-pole
and guidance start with a zero last kernel, which makes K = ∂N/∂x = 0 and therefore R = M
(= C) exactly — nothing to diagnose.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..core import gates as gates_mod
from ..core import unroll
from ..core.losses import TrajectoryLoss

#: R's credit may span at most this many orders of magnitude before a horizon is flagged
MAX_ORDERS = 6.0
#: below this span (orders) and closed-loop growth, R is considered well conditioned
WELL_ORDERS = 3.0
#: |growth| over the horizon (orders of magnitude of σ_max of the Jacobian product) that
#: counts as "balanced" for the physics and as "expanding" for the closed loop
BALANCED_ORDERS = 1.0
EXPANDING_ORDERS = 2.0
#: update norm above which norm clipping is recommended
CLIP_NORM_ABOVE = 10.0

_TINY = 1e-30


# ----------------------------------------------------------------------------- results
@dataclass
class Verdict:
    """Recommendation drawn from a :class:`Diagnosis`.

    Attributes:
      mode: ``"R"`` or ``"C"`` (the mode to train with).
      clip: ``"none"`` or ``"norm"`` (clipping of the update handed to the optimizer, t = 1).
      flagged_horizons: horizons k (in steps, counted back from T) over which R's adjoint
        norms span more than :data:`MAX_ORDERS` orders of magnitude (empty: none).
      max_safe_horizon: the longest such horizon that is *not* flagged (T if none is).
      reasons: why this mode and clipping.
      warnings: things to watch (C may stall, K = 0, ...).
    """

    mode: str
    clip: str
    flagged_horizons: list[int]
    max_safe_horizon: int
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"recommendation: mode {self.mode}, clip {self.clip}"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.flagged_horizons:
            k0 = self.flagged_horizons[0]
            lines.append(
                f"  ! R's adjoint ‖λ_n‖ (the credit a state receives) spans > {MAX_ORDERS:g} orders of "
                f"magnitude over horizons ≥ {k0} steps (longest safe horizon for R: {self.max_safe_horizon})"
            )
        lines += [f"  ! {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class Diagnosis:
    """Everything :func:`diagnose` measured (numpy arrays, float64).

    Attributes:
      horizon: T.
      n_states: number of initial states (rollouts) used.
      loss: the trajectory loss on those states.
      adjoint_R, adjoint_M: (T+1, S) per-sample ‖λ_n‖, n = 0 … T.
      contrib_R, contrib_M: (T,) norm of step n's contribution to the batch update.
      contrib_cos: (T,) cosine between step n's R and M contributions.
      sv_phys, sv_closed: (T, d) singular values (descending) of A_n and of A_n + B_n K_n
        for sample 0 (d = flattened state size).
      lyap_phys, lyap_closed: (1/T)·log σ_max of the product of the T Jacobians.
      lyap_spectrum_phys, lyap_spectrum_closed: (d,) QR (Benettin) exponents, per step.
      cos_mg, sign_agree: cos(M, G) and the fraction of entries with sign(M_j) = sign(G_j).
      norm_G, norm_M: global norms of the two fields.
      verdict: the :class:`Verdict`.
      label: what was diagnosed (problem name and controller), for titles.
      wall_s: seconds the measurement took (compilation included).
    """

    horizon: int
    n_states: int
    loss: float
    adjoint_R: np.ndarray
    adjoint_M: np.ndarray
    contrib_R: np.ndarray
    contrib_M: np.ndarray
    contrib_cos: np.ndarray
    sv_phys: np.ndarray
    sv_closed: np.ndarray
    lyap_phys: float
    lyap_closed: float
    lyap_spectrum_phys: np.ndarray
    lyap_spectrum_closed: np.ndarray
    cos_mg: float
    sign_agree: float
    norm_G: float
    norm_M: float
    verdict: Verdict | None = None
    label: str = ""
    wall_s: float = 0.0

    # ---- derived numbers
    def adjoint_curve(self, mode: str = "R") -> np.ndarray:
        """Median over samples of ‖λ_n‖ (T+1,)."""
        a = self.adjoint_R if mode == "R" else self.adjoint_M
        return np.median(a, axis=1)

    def span(self, mode: str = "R") -> float:
        """Orders of magnitude spanned by the (median) adjoint norms over n = 0 … T."""
        return orders_spanned(self.adjoint_curve(mode))

    def growth(self, which: str = "closed") -> float:
        """log10 σ_max of the product of the T Jacobians (orders of magnitude over the horizon)."""
        lam = self.lyap_closed if which == "closed" else self.lyap_phys
        return self.horizon * lam / math.log(10.0)

    # ---- output
    def text(self) -> str:
        """A short report: the measured numbers and the verdict."""
        T = self.horizon
        lines = [
            f"{self.label or 'diagnosis'}: T = {T}, {self.n_states} rollout(s), loss {self.loss:.5g}",
            f"  adjoint ‖λ_n‖ (median over rollouts): R spans {self.span('R'):.1f} orders "
            f"(‖λ_0‖/‖λ_T‖ = {_ratio(self.adjoint_curve('R')):.3g}), "
            f"M spans {self.span('M'):.1f} orders (‖λ_0‖/‖λ_T‖ = {_ratio(self.adjoint_curve('M')):.3g})",
            f"  credit per step: R spans {orders_spanned(self.contrib_R):.1f} orders, "
            f"M spans {orders_spanned(self.contrib_M):.1f} orders",
            f"  Jacobians (sample 0): σ_max(∂P/∂x) {_rng_txt(self.sv_phys[:, 0])}, "
            f"σ_max(∂P/∂x + ∂P/∂c ∂N/∂x) {_rng_txt(self.sv_closed[:, 0])}",
            f"  Lyapunov (1/T log σ_max of the product): physics {self.lyap_phys:+.4g} "
            f"({self.growth('phys'):+.1f} orders over T), closed loop {self.lyap_closed:+.4g} "
            f"({self.growth('closed'):+.1f} orders over T)",
            f"  fields: ‖G‖ = {self.norm_G:.3g}, ‖M‖ = {self.norm_M:.3g}, cos(M, G) = {self.cos_mg:+.3f}, "
            f"sign agreement {100 * self.sign_agree:.1f}%",
        ]
        if self.verdict is not None:
            lines.append(self.verdict.text())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able summary (arrays as lists)."""
        d = {}
        for k, v in asdict(self).items():
            if isinstance(v, np.ndarray):
                d[k] = v.tolist()
            else:
                d[k] = v
        d["span_R"] = self.span("R")
        d["span_M"] = self.span("M")
        d["growth_phys"] = self.growth("phys")
        d["growth_closed"] = self.growth("closed")
        return d

    def save(self, folder: str | Path, name: str = "diagnosis") -> dict[str, Path]:
        """Write ``<name>.png`` (figure), ``<name>.json`` (numbers) and ``<name>.txt`` (report)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"png": folder / f"{name}.png", "json": folder / f"{name}.json", "txt": folder / f"{name}.txt"}
        fig = self.figure()
        fig.savefig(paths["png"], dpi=110)
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, default=float))
        paths["txt"].write_text(self.text() + "\n")
        return paths

    def figure(self, title: str | None = None):
        """The four-panel figure (a matplotlib ``Figure``; no pyplot state is touched).

        Pairs of curves that may coincide (R and M in (a) and (b), the physics and closed-loop
        singular values in (c), cos(M, G) and the sign agreement in (d)) are drawn so that both
        stay visible: the first as a wide solid line, the second dashed on top of it. A pair
        equal to within :data:`~stablebptt.analysis.diagnose_figure.SAME_RTOL` everywhere is drawn once, in black, with one legend
        entry saying so (e.g. "R = M"); where a pair only partly coincides (within
        :data:`~stablebptt.analysis.diagnose_figure.CLOSE_RTOL`) the first curve's legend entry says over which steps.
        """
        from .diagnose_figure import diagnosis_figure

        return diagnosis_figure(self, title)


def _ratio(curve: np.ndarray) -> float:
    return float(curve[0] / curve[-1]) if curve[-1] > _TINY else float("inf")


def _rng_txt(v: np.ndarray) -> str:
    return f"{np.min(v):.4g} … {np.max(v):.4g}"


def orders_spanned(values) -> float:
    """log10(max / min) over the entries that are not (numerically) zero; 0 if fewer than two."""
    v = np.abs(np.asarray(values, np.float64)).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    big = v.max()
    v = v[v > max(_TINY, big * 1e-30)]
    if v.size < 2:
        return 0.0
    return float(np.log10(v.max() / v.min()))


# ----------------------------------------------------------------------------- measurement
def _gate(x, g):
    if isinstance(g, float) and g == 1.0:
        return x
    if isinstance(g, float) and g == 0.0:
        return jax.tree_util.tree_map(jax.lax.stop_gradient, x)
    return jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) + g * (a - jax.lax.stop_gradient(a)), x)


def _perturbed_loss(eps, pstack, static, x0, *, step, loss: TrajectoryLoss, horizon: int, gates):
    """L with x_n ← x_n + ε_n (n = 0 … T) and per-step parameter copies ``pstack`` (leading T).

    ∂/∂ε_n is the adjoint λ_n of the gated mode; ∂/∂pstack[n] is step n's contribution.
    """
    gc, gp = gates
    T = horizon
    add = lambda x, e: jax.tree_util.tree_map(jnp.add, x, e)
    at = lambda tree, n: jax.tree_util.tree_map(lambda a: a[n], tree)

    def control(n, x):
        return eqx.combine(at(pstack, n), static)(_gate(add(x, at(eps, n)), gc)), {}

    def phys(n, x, c):
        x = add(x, at(eps, n))
        val = loss.control_term(c, T)
        if loss.on == "every":
            val = val + jnp.where(n > 0, loss.step_weight(n, T), 0.0) * loss.state_loss(x)
        return step(_gate(x, gp), c), val, None

    xT, fwd = unroll.forward_loop(control, phys, x0, jnp.arange(T))
    xT = add(xT, at(eps, T))
    ls = fwd.ls
    return jnp.sum(ls) + loss.step_weight(T, T) * loss.state_loss(xT)


def _scaled_norm(parts: list[jax.Array]) -> jax.Array:
    """L2 norm over the last axis of all ``parts`` together, scaled by the largest entry so
    that exploding adjoints (> 1.8e19, whose squares overflow float32) keep a finite norm."""
    scale = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a), -1) for a in parts])
    safe = jnp.where(scale > 0, scale, 1.0)
    sq = sum(jnp.sum(jnp.square(a / safe[..., None]), -1) for a in parts)
    return jnp.where(scale > 0, safe * jnp.sqrt(sq), 0.0)


def _sample_norms(tree, batch: int) -> jax.Array:
    """Per-(leading axis, sample) L2 norm over all remaining axes of all leaves: (L, B)."""
    return _scaled_norm([a.reshape(a.shape[0], batch, -1) for a in jax.tree_util.tree_leaves(tree)])


def _step_norms(tree) -> jax.Array:
    """Per-(leading axis) L2 norm over all remaining axes of all leaves: (L,)."""
    return _scaled_norm([a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(tree)])


def _build_measure(step, loss: TrajectoryLoss, horizon: int, static):
    T = horizon

    def measure(params, x0):
        batch = jax.tree_util.tree_leaves(x0)[0].shape[0]
        pstack = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (T,) + a.shape), params)
        eps = jax.tree_util.tree_map(lambda a: jnp.zeros((T + 1,) + a.shape, a.dtype), x0)
        out = {}
        gates = jnp.asarray([gates_mod.GATES["R"], gates_mod.GATES["M"]], jnp.float32)

        def f(e, p, g):
            return _perturbed_loss(e, p, static, x0, step=step, loss=loss, horizon=T, gates=(g[0], g[1]))

        # both modes in one program: the gates are traced and vmapped (one scan body to compile)
        vals, (lam, per_step) = jax.vmap(jax.value_and_grad(f, argnums=(0, 1)), in_axes=(None, None, 0))(
            eps, pstack, gates
        )
        out["loss"] = vals[0]
        contribs, fields = {}, {}
        for i, mode in enumerate(("R", "M")):
            take = lambda t: jax.tree_util.tree_map(lambda a: a[i], t)
            out[f"adjoint_{mode}"] = _sample_norms(take(lam), batch) * batch
            contribs[mode] = take(per_step)
            out[f"contrib_{mode}"] = _step_norms(contribs[mode])
            fields[mode] = jax.tree_util.tree_map(lambda a: jnp.sum(a, 0), contribs[mode])
        num = sum(
            jnp.sum((a * b).reshape(T, -1), -1)
            for a, b in zip(jax.tree_util.tree_leaves(contribs["R"]), jax.tree_util.tree_leaves(contribs["M"]))
        )
        den = out["contrib_R"] * out["contrib_M"]
        out["contrib_cos"] = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

        # Jacobians along sample 0's trajectory
        model = eqx.combine(params, static)
        xs, cs = unroll.rollout(model, x0, step=step, horizon=T)
        one = lambda t: jax.tree_util.tree_map(lambda a: a[:, :1], t)
        xs1, cs1 = one(xs), one(cs)
        _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], xs1))
        flat_xs = jax.vmap(lambda t: ravel_pytree(t)[0])(xs1)  # (T+1, d)

        def phys(xf, c):
            return ravel_pytree(step(unravel(xf), c))[0]

        def closed(xf):
            x = unravel(xf)
            return ravel_pytree(step(x, model(x)))[0]

        def ctrl(xf):
            return ravel_pytree(model(unravel(xf)))[0]

        out["K_norm"] = jax.vmap(lambda xf: jnp.linalg.norm(jax.jacfwd(ctrl)(xf)))(flat_xs[:T])
        out["J_phys"] = jax.vmap(jax.jacfwd(phys))(flat_xs[:T], cs1)
        out["J_closed"] = jax.vmap(jax.jacfwd(closed))(flat_xs[:T])
        out["fields"] = fields
        return out

    return jax.jit(measure)


def field_agreement(m, g) -> tuple[float, float, float, float]:
    """``(cos(M, G), sign agreement, ‖G‖, ‖M‖)`` in float64 (as ``core.field_stats``, but safe
    from float32 overflow when the fields are huge)."""
    fm = np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(m)])
    fg = np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(g)])
    nm, ng = float(np.linalg.norm(fm)), float(np.linalg.norm(fg))
    cos = float(fm @ fg / (nm * ng)) if nm > 0 and ng > 0 else 0.0
    agree = float(np.mean(np.sign(fm) == np.sign(fg))) if fm.size else 1.0
    return cos, agree, ng, nm


def lyapunov(jacobians: np.ndarray) -> tuple[float, np.ndarray]:
    """Finite-horizon Lyapunov estimates of a product J_{T−1} ⋯ J_0 (float64).

    Returns ``(lam_max, spectrum)``: lam_max = (1/T)·log σ_max(J_{T−1} ⋯ J_0), computed as the
    sum of the log-diagonals of the QR factors accumulated step by step (J_n Q_{n−1} = Q_n R_n,
    so the product equals Q_T R_T ⋯ R_1 and never overflows) followed by σ_max of the
    rescaled triangular product; and the Benettin spectrum (1/T)·Σ_n log|diag R_n|
    (descending).
    """
    J = np.asarray(jacobians, np.float64)
    T, d, _ = J.shape
    Q = np.eye(d)
    logdiag = np.zeros(d)
    tri = np.eye(d)  # R_n ⋯ R_1 rescaled by exp(-log_scale)
    log_scale = 0.0
    for n in range(T):
        Q, R = np.linalg.qr(J[n] @ Q)
        s = np.sign(np.diag(R))
        s[s == 0] = 1.0
        Q, R = Q * s, (R.T * s).T  # positive diagonal
        with np.errstate(divide="ignore"):
            logdiag += np.log(np.abs(np.diag(R)))
        tri = R @ tri
        m = np.max(np.abs(tri))
        if m > 0 and np.isfinite(m):
            tri /= m
            log_scale += math.log(m)
    smax = np.linalg.svd(tri, compute_uv=False)[0] if np.all(np.isfinite(tri)) else 0.0
    lam_max = (log_scale + math.log(smax)) / T if smax > 0 else -math.inf
    return float(lam_max), np.sort(logdiag / T)[::-1]


# ----------------------------------------------------------------------------- verdict
def horizon_flags(adjoint_curve: np.ndarray, max_orders: float = MAX_ORDERS) -> tuple[list[int], int]:
    """Horizons k = 1 … T (the last k steps, λ_{T−k} … λ_T) over which the adjoint norms span
    more than ``max_orders`` orders of magnitude, and the longest horizon that does not."""
    curve = np.asarray(adjoint_curve, np.float64)
    T = curve.shape[0] - 1
    flagged = [k for k in range(1, T + 1) if orders_spanned(curve[T - k :]) > max_orders]
    safe = [k for k in range(1, T + 1) if k not in flagged]
    longest = max((k for k in safe if all(j not in flagged for j in range(1, k + 1))), default=0)
    return flagged, longest


def make_verdict(d: Diagnosis, k_is_zero: bool | None = None) -> Verdict:
    """The rules (thresholds are module constants):

    * **C** when R's adjoint spans more than ``MAX_ORDERS`` (6) orders of magnitude over the
      horizon, or when the closed loop is expanding (σ_max of the Jacobian product grows by
      ≥ ``EXPANDING_ORDERS`` orders) while the physics is balanced (|growth| ≤
      ``BALANCED_ORDERS``): R's feedback through the controller dominates and explodes/vanishes.
    * **R** otherwise (well conditioned: R spans ≤ ``WELL_ORDERS`` and the closed loop stays
      within ``EXPANDING_ORDERS``; in between R is still recommended, with norm clipping).
    * clipping **norm** (threshold 1) when R is only moderately conditioned, or when the
      recommended field's credit spans more than ``WELL_ORDERS`` orders over the steps or its
      norm exceeds ``CLIP_NORM_ABOVE``; else none.
    * warnings: cos(M, G) < 0 (C zeroes the entries where M and G disagree and may stall, as
      in the linear case); M spanning > 6 orders too (the physics itself is ill conditioned:
      shorten the horizon, truncate or decay); K = 0 (R = M = C; diagnose a non-zero controller).
    """
    T = d.horizon
    span_R, span_M = d.span("R"), d.span("M")
    g_phys, g_closed = d.growth("phys"), d.growth("closed")
    flagged, safe = horizon_flags(d.adjoint_curve("R"))
    reasons, warnings = [], []
    balanced = abs(g_phys) <= BALANCED_ORDERS
    expanding = g_closed >= EXPANDING_ORDERS and g_closed - g_phys >= EXPANDING_ORDERS
    if span_R > MAX_ORDERS or (expanding and balanced):
        mode = "C"
        if span_R > MAX_ORDERS:
            reasons.append(
                f"R's adjoint spans {span_R:.1f} orders of magnitude over {T} steps "
                f"(M: {span_M:.1f}); R's credit explodes/vanishes through the controller path"
            )
        if expanding and balanced:
            reasons.append(
                f"the closed loop expands ({g_closed:+.1f} orders over T) while the physics is "
                f"balanced ({g_phys:+.1f} orders): feedback through ∂N/∂x dominates"
            )
        if span_M > MAX_ORDERS:
            warnings.append(
                f"M spans {span_M:.1f} orders too: the physics itself is ill conditioned over "
                f"this horizon; consider a shorter horizon, truncate or decay"
            )
    else:
        mode = "R"
        if span_R <= WELL_ORDERS and abs(g_closed) <= EXPANDING_ORDERS:
            reasons.append(
                f"well conditioned: R's adjoint spans {span_R:.1f} orders, closed-loop growth "
                f"{g_closed:+.1f} orders over T: the true gradient is usable"
            )
        else:
            reasons.append(
                f"moderately conditioned: R's adjoint spans {span_R:.1f} orders, closed-loop growth "
                f"{g_closed:+.1f} orders; R with clipping, C if R stalls or diverges"
            )
    contrib = d.contrib_M if mode == "C" else d.contrib_R
    norm = d.norm_M if mode == "C" else d.norm_G
    field_name = "M (≈ C)" if mode == "C" else "G"
    cspan = orders_spanned(contrib)
    if mode == "R" and span_R > WELL_ORDERS:
        cspan = max(cspan, span_R)
    moderate = mode == "R" and not (span_R <= WELL_ORDERS and abs(g_closed) <= EXPANDING_ORDERS)
    if moderate:
        clip = "norm"
        reasons.append(f"clip norm as a guard against spikes of ‖G‖ (now {norm:.3g}) while the conditioning worsens")
    elif cspan > WELL_ORDERS or norm > CLIP_NORM_ABOVE:
        clip = "norm"
        reasons.append(
            f"clip norm: {field_name}'s credit spans {cspan:.1f} orders over the steps, ‖{field_name}‖ = {norm:.3g}"
        )
    else:
        clip = "none"
        reasons.append(f"no clipping needed: ‖{field_name}‖ = {norm:.3g}, credit spans {cspan:.1f} orders")
    if d.cos_mg < 0:
        warnings.append(
            f"cos(M, G) = {d.cos_mg:+.3f} < 0: M points away from the gradient; C keeps only the "
            f"{100 * d.sign_agree:.0f}% of entries where the signs agree and may stall "
            f"(as in the linear case a = 1.1, T = 4, θ = -1.6)"
        )
    if k_is_zero:
        warnings.append(
            "the controller ignores its input here (K = ∂N/∂x = 0, e.g. a zero last kernel): "
            "R = M = C exactly; diagnose a trained or randomly initialised controller"
        )
    return Verdict(
        mode=mode, clip=clip, flagged_horizons=flagged, max_safe_horizon=safe, reasons=reasons, warnings=warnings
    )


# ----------------------------------------------------------------------------- entry points
def diagnose(
    step: Callable, loss: TrajectoryLoss, horizon: int, model, x0, *, states: int | None = None, label: str = ""
) -> Diagnosis:
    """Diagnose a controller ``model`` on your own simulator ``step`` and ``loss``.

    Args:
      step: ``step(x, c) -> x'`` (batched, JAX-traceable).
      loss: a :class:`~stablebptt.core.losses.TrajectoryLoss` (its state loss averages over the batch).
      horizon: T.
      model: the equinox controller (batched state -> batched control).
      x0: a batch of initial states.
      states: use only the first ``states`` initial states (None: all of ``x0``). A few (4–8)
        are enough and keep it fast.
      label: a name for the report and figure title.

    Returns:
      a :class:`Diagnosis` with its :class:`Verdict` attached.
    """
    t0 = time.perf_counter()
    x0 = jax.tree_util.tree_map(jnp.asarray, x0)
    if states is not None:
        if int(states) < 1:
            raise ValueError(f"states={states!r}; must be ≥ 1")
        x0 = jax.tree_util.tree_map(lambda a: a[: int(states)], x0)
    unroll.check_problem_inputs(model, x0, step, horizon)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    measure = _build_measure(step, loss, int(horizon), static)
    out = jax.device_get(measure(params, x0))
    if not np.isfinite(float(out["loss"])):
        raise ValueError(_nonfinite_message(model, x0, step, int(horizon), float(out["loss"])))
    f64 = lambda k: np.asarray(out[k], np.float64)
    Jp, Jc = f64("J_phys"), f64("J_closed")
    svd = lambda J: np.linalg.svd(J, compute_uv=False) if np.all(np.isfinite(J)) else np.array([np.inf])
    sv_p, sv_c = svd(Jp), svd(Jc)  # a product that overflows float32: unbounded growth
    lp, spec_p = lyapunov(Jp)
    lc, spec_c = lyapunov(Jc)
    n_states = int(jax.tree_util.tree_leaves(x0)[0].shape[0])
    cos_mg, agree, norm_g, norm_m = field_agreement(out["fields"]["M"], out["fields"]["R"])
    d = Diagnosis(
        horizon=int(horizon),
        n_states=n_states,
        loss=float(out["loss"]),
        adjoint_R=f64("adjoint_R"),
        adjoint_M=f64("adjoint_M"),
        contrib_R=f64("contrib_R"),
        contrib_M=f64("contrib_M"),
        contrib_cos=f64("contrib_cos"),
        sv_phys=sv_p,
        sv_closed=sv_c,
        lyap_phys=lp,
        lyap_closed=lc,
        lyap_spectrum_phys=spec_p,
        lyap_spectrum_closed=spec_c,
        cos_mg=cos_mg,
        sign_agree=agree,
        norm_G=norm_g,
        norm_M=norm_m,
        label=label,
    )
    k_zero = bool(np.max(f64("K_norm")) == 0.0)
    d.verdict = make_verdict(d, k_is_zero=k_zero)
    d.wall_s = time.perf_counter() - t0
    return d


def _nonfinite_message(model, x0, step, horizon: int, loss: float) -> str:
    """One line for a controller whose loss is not finite: the first step n (1 … T) at which
    its rollout from ``x0`` gives a non-finite state or control."""
    xs, cs = jax.device_get(unroll.rollout(model, x0, step=step, horizon=horizon))
    bad = lambda tree, n: not all(np.all(np.isfinite(np.asarray(a)[n])) for a in jax.tree_util.tree_leaves(tree))
    for n in range(horizon):
        if bad(cs, n):
            return (
                f"the loss is {loss:.4g}: the controller first produced a non-finite control at step {n + 1} of "
                f"{horizon} (from a finite state); nothing can be diagnosed"
            )
        if bad(xs, n + 1):
            return (
                f"the loss is {loss:.4g}: the simulator first produced a non-finite state at step {n + 1} of "
                f"{horizon} (from a finite state and control); check the problem's step function"
            )
    return f"the loss is {loss:.4g} although every state and control of the rollout is finite; check the loss"


def load_problem_and_controller(run_dir: str | Path):
    """``(problem, model, config, seed)`` of a finished run folder: its problem, its trained
    controller, its RunConfig and its seed (read by :func:`stablebptt.experiments.run.load_run`)."""
    from ..experiments.run import load_run as load

    r = load(run_dir)
    return r.problem, r.model, r.config, r.seed


def diagnose_problem(
    problem,
    model=None,
    n: int = 8,
    *,
    weights: str | Path | None = None,
    zero_last: bool = False,
    seed: int = 0,
    data_seed: int = 0,
    **params,
) -> Diagnosis:
    """Diagnose a registry problem.

    Args:
      problem: a :class:`~stablebptt.problems.Problem` or a registry name (then ``**params``
        are its parameters).
      model: the controller; default: an untrained one from ``problem.make_controller``
        with ``zero_last`` (default **False**: a zero last kernel gives K = 0 and R = M, so
        the paper presets' untrained controller has nothing to diagnose).
      n: number of initial states (rollouts), drawn with ``problem.sample_data(data_seed, …)``
        (the test half).
      weights: a run folder or an ``.npz`` file whose weights are loaded into the controller.
      seed: PRNG seed of the untrained controller.
    """
    from .. import problems
    from ..problems import controllers

    if isinstance(problem, str):
        problem = problems.get(problem, **params)
    elif params:
        raise ValueError(f"problem parameters {sorted(params)} given with a built Problem")
    if model is None:
        model = problem.make_controller(jax.random.PRNGKey(int(seed)), zero_last=zero_last)
        what = f"untrained controller (zero_last={zero_last})"
    else:
        what = "given controller"
    if weights is not None:
        w = Path(weights)
        if w.is_dir():
            w = w / "weights.npz"
        model = controllers.load_weights(model, w)
        what = f"weights from {weights}"
    _, test = problem.sample_data(int(data_seed), int(n), int(n))
    ptxt = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in dict(problem.params).items())
    label = f"{problem.name}" + (f" ({ptxt})" if ptxt else "") + f" — {what}"
    return diagnose(problem.step, problem.loss, problem.horizon, model, test[:n], label=label)


__all__ = [
    "Diagnosis",
    "Verdict",
    "diagnose",
    "diagnose_problem",
    "make_verdict",
    "lyapunov",
    "orders_spanned",
    "horizon_flags",
    "load_problem_and_controller",
    "MAX_ORDERS",
]
