r"""A PDE solved by an exponax stepper, with an additive control, as a
:class:`~stablebptt.problems.Problem` (``pip install 'stablebptt[exponax]'``).

    import exponax as ex
    ks = ex.stepper.KuramotoSivashinskyConservative(1, 22.0, 64, 0.5)
    problem = exponax_problem(ks, horizon=50, actuators=gaussian_actuators(ks, 4, width=0.4),
                              state_loss=lambda u: 0.5 * jnp.mean(u ** 2), on="every",
                              ic=ex.ic.RandomTruncatedFourierSeries(1, cutoff=5), spin_up=400)

Maths
-----
exponax solves u_t = ℒu + 𝒩(u) on a periodic domain (0, L)^D with N points per axis, one
pseudo-spectral ETDRK step of Δt = ``stepper.dt`` per call. The control adds a forcing f:
u_t = ℒu + 𝒩(u) + f, integrated as exponax's :class:`exponax.ForcedStepper` does (operator
splitting, first order in time)::

    u_{n+1} = stepper(u_n + Δt · f_n)

with f_n held over the step. An ``exponax.RepeatedStepper`` (k substeps of Δt/k: explicit
nonlinear terms need a CFL-limited substep) is one simulator step of Δt = k · (Δt/k), the
forcing applied once per step as above. The forcing is either

* a **force field** (``actuators=None``): the control c_n *is* f_n, of shape (C, N, …);
* **K actuators** (``actuators`` = profiles b_k of shape (K, N, …) or (K, C, N, …)): the control
  is K numbers, f_n = Σ_k c_{n,k} b_k (broadcast over the C channels when b_k has no channel
  axis). :func:`gaussian_actuators` builds periodic Gaussian bumps.

States are batched as exponax wants them under ``vmap``: x (B, C + A, N, …). The first
C = ``stepper.num_channels`` channels are the PDE's; ``aux_channels`` = A further channels
(e.g. a target the controller must see) are carried unchanged by the step.

The loss: ``state_loss(x) -> scalar`` for ONE state (C + A, N, …); ℓ(x_n) is its batch mean,
the trajectory loss a :class:`~stablebptt.core.losses.TrajectoryLoss` of ℓ (``on="every"``:
(1/T) Σ_{n=1}^T ℓ(x_n); ``"final"``: ℓ(x_T)) plus ``control_weight`` · (1/T) Σ_n mean(c_n²).

Data: ``sample_states(rng, n) -> (n, C + A, N, …)`` with a ``np.random.Generator``, or an exponax
random initial-condition generator ``ic`` (``ic(N, key=…) -> (C, N, …)``, e.g.
``exponax.ic.RandomTruncatedFourierSeries``), each draw then advanced ``spin_up`` uncontrolled
steps (to start on an attractor). ``seed="paper"`` is the fixed seed 42.

Controller: for a force field, :class:`PeriodicCNN` (convolutions with periodic padding, the
field in, the field out: translation-equivariant like the physics); for actuators, the
library's MLP on the flattened state.

Gradients flow through exponax's FFTs and ETDRK coefficients (discretise-then-optimise: the
exact gradient of the discrete step).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...core.losses import TrajectoryLoss
from ..base import Problem
from . import _common

WHO = "exponax_problem"
#: states drawn per compiled call of :func:`ic_sampler` (one compilation for any n)
CHUNK = 16
ON = ("every", "final")


def _import_exponax():
    try:
        import exponax
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("exponax_problem needs exponax: pip install 'stablebptt[exponax]'") from e
    return exponax


def _check_stepper(stepper) -> tuple[int, tuple[int, ...]]:
    """``(C, spatial shape)`` of an exponax stepper; ValueError for anything else."""
    exponax = _import_exponax()
    if not isinstance(stepper, (exponax.BaseStepper, exponax.RepeatedStepper)):
        raise ValueError(
            f"{WHO}: stepper={type(stepper).__name__} is not an exponax stepper (e.g. "
            "exponax.stepper.KuramotoSivashinskyConservative(1, 22.0, 64, 0.5), or an "
            "exponax.RepeatedStepper of one)"
        )
    return int(stepper.num_channels), (int(stepper.num_points),) * int(stepper.num_spatial_dims)


def grid(stepper) -> np.ndarray:
    """The stepper's grid points, float32 (D, N, …): ``exponax.make_grid`` of its domain."""
    exponax = _import_exponax()
    return np.asarray(
        exponax.make_grid(stepper.num_spatial_dims, stepper.domain_extent, stepper.num_points), np.float32
    )


def gaussian_actuators(stepper, count: int | None = None, *, width: float, centres=None) -> np.ndarray:
    """K periodic Gaussian bumps b_k(x) = exp(−|x − x_k|²_per / (2 width²)), float32 (K, N, …).

    |·|_per is the distance on the periodic domain (0, L)^D (per axis the shorter way round);
    ``width`` is in the domain's length units. ``centres`` (K, D) in length units; without it
    (1-D only) ``count`` bumps are spaced evenly, x_k = k L / K.
    """
    x = grid(stepper)  # (D, N, …)
    d, L = x.shape[0], float(stepper.domain_extent)
    width = _common.positive_float(width, "width", "gaussian_actuators")
    if centres is None:
        if d != 1:
            raise ValueError(
                f"gaussian_actuators: a {d}-D stepper needs centres (K, {d}); count alone spaces bumps on a line"
            )
        count = _common.positive_int(count, "count", "gaussian_actuators")
        centres = np.arange(count, dtype=np.float64)[:, None] * L / count
    centres = np.asarray(centres, np.float64)
    if centres.ndim != 2 or centres.shape[1] != d or centres.shape[0] < 1:
        raise ValueError(f"gaussian_actuators: centres of shape {centres.shape}; expected (K, {d})")
    diff = np.abs(x[None].astype(np.float64) - centres.reshape(centres.shape + (1,) * d))
    diff = np.minimum(diff, L - diff)  # periodic distance per axis
    return np.exp(-np.sum(diff**2, axis=1) / (2 * width**2)).astype(np.float32)


def _check_actuators(actuators, channels: int, spatial: tuple[int, ...]) -> jax.Array | None:
    if actuators is None:
        return None
    b = np.asarray(actuators, np.float32)
    ok = b.ndim >= 1 and b.shape[0] >= 1 and b.shape[1:] in (spatial, (channels,) + spatial)
    if not ok:
        raise ValueError(
            f"{WHO}: actuators of shape {b.shape}; expected (K, *{spatial}) or (K, {channels}, "
            f"*{spatial}) (K spatial profiles on the stepper's grid)"
        )
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{WHO}: actuators contain non-finite values")
    return jnp.asarray(b if b.ndim == len(spatial) + 2 else b[:, None])  # (K, 1 or C, N, …)


def forcing(control: jax.Array, actuators: jax.Array | None) -> jax.Array:
    """The forcing field of a batch of controls: c itself (B, C, N, …) for a force field, or
    Σ_k c_k b_k (B, 1 or C, N, …) for actuators b (K, 1 or C, N, …) and c (B, K)."""
    if actuators is None:
        return control
    return jnp.tensordot(control, actuators, axes=1)


def exponax_step(stepper, *, actuators=None, aux_channels: int = 0) -> Callable:
    """``step(x, c) -> x'``: x (B, C + A, N, …), c (B, C, N, …) (a force field) or (B, K)
    (actuator amplitudes); one ``exponax.ForcedStepper`` step of the first C channels, the A
    auxiliary channels unchanged (module docstring)."""
    exponax = _import_exponax()
    channels, spatial = _check_stepper(stepper)
    b = _check_actuators(actuators, channels, spatial)
    aux = _common.check_count(aux_channels, "aux_channels", WHO)
    forced = jax.vmap(exponax.ForcedStepper(stepper))
    want_c = (channels,) + spatial if b is None else (b.shape[0],)

    def step(x: jax.Array, c: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        c = jnp.asarray(c, x.dtype)
        if x.shape[1:] != (channels + aux,) + spatial or c.shape != x.shape[:1] + want_c:
            raise ValueError(
                f"exponax step: state {x.shape} and control {c.shape}; expected (B, {channels + aux}, "
                f"*{spatial}) and (B, *{want_c})"
            )
        u = x[:, :channels]
        f = jnp.broadcast_to(forcing(c, b), u.shape).astype(u.dtype)
        return jnp.concatenate([forced(u, f), x[:, channels:]], axis=1) if aux else forced(u, f)

    return step


def ic_sampler(stepper, ic, spin_up: int = 0) -> Callable:
    """``sample_states(rng, n) -> (n, C, N, …)`` float32: n draws of the exponax random initial
    condition generator ``ic`` (one JAX key per draw, all split from one int of ``rng``; drawn
    in chunks of :data:`CHUNK`, so any n compiles once), each then
    advanced ``spin_up`` uncontrolled steps of ``stepper``. Deterministic per ``rng`` state."""
    exponax = _import_exponax()
    spin_up = _common.check_count(spin_up, "spin_up", WHO)
    if not callable(ic):
        raise ValueError(f"{WHO}: ic={ic!r} is not callable (an exponax random IC generator, ic(N, key=…))")
    n_points = int(stepper.num_points)
    advance = exponax.repeat(stepper, spin_up) if spin_up else (lambda u: u)

    @jax.jit
    def draw(keys):
        return jax.vmap(lambda k: advance(ic(n_points, key=k)))(keys)

    def sample_states(rng: np.random.Generator, n: int) -> np.ndarray:
        keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(0, 2**31 - 1))), -(-int(n) // CHUNK) * CHUNK)
        chunks = [np.asarray(draw(keys[i : i + CHUNK]), np.float32) for i in range(0, len(keys), CHUNK)]
        shape = (int(stepper.num_channels),) + (n_points,) * int(stepper.num_spatial_dims)
        return np.concatenate(chunks)[:n] if chunks else np.zeros((0,) + shape, np.float32)

    return sample_states


class PeriodicCNN(eqx.Module):
    """A field-to-field controller: convolutions with periodic (circular) padding, tanh between
    them, linear last layer. (B, C_in, N, …) → (B, C_out, N, …), every layer keeps the grid
    (kernel ``kernel_size`` odd, padding ``kernel_size // 2`` wrapped around the periodic
    domain), so the map commutes with periodic shifts like the physics. Rows of a batch are
    independent (the layers are vmapped over rows) but the class does not declare
    ``rows_independent``: the engine would then consider forming the input Jacobian of all T·B
    rows at once, (T·B, C·N^D, C·N^D) — gigabytes for a field; per step it stays small."""

    layers: tuple

    def __init__(
        self,
        key,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (16, 16),
        kernel_size: int = 5,
        zero_last: bool = True,
    ):
        if not (isinstance(kernel_size, numbers.Integral) and kernel_size >= 1 and kernel_size % 2 == 1):
            raise ValueError(f"PeriodicCNN: kernel_size={kernel_size!r}; must be an odd integer ≥ 1")
        sizes = [int(in_channels), *map(int, widths), int(out_channels)]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [
            eqx.nn.Conv(num_spatial_dims, a, b, kernel_size, padding=kernel_size // 2, padding_mode="CIRCULAR", key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        ]
        if zero_last:  # the untrained controller outputs a zero force
            last = layers[-1]
            layers[-1] = eqx.tree_at(
                lambda m: (m.weight, m.bias), last, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
            )
        self.layers = tuple(layers)

    def __call__(self, x):
        def one(h):
            for conv in self.layers[:-1]:
                h = jnp.tanh(conv(h))
            return self.layers[-1](h)

        return jax.vmap(one)(x)


def exponax_problem(
    stepper,
    *,
    horizon: int,
    state_loss: Callable,
    sample_states: Callable | None = None,
    ic=None,
    spin_up: int = 0,
    actuators=None,
    aux_channels: int = 0,
    on: Literal["every", "final"] = "every",
    control_weight: float = 0.0,
    widths: Sequence[int] | None = None,
    kernel_size: int = 5,
    zero_last: bool = True,
    name: str = "exponax",
    params: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> Problem:
    """An exponax PDE with an additive control as a problem (module docstring: maths, loss, data).

    Args:
      stepper: an exponax stepper (``exponax.stepper.*``); its ``dt`` is the control interval.
      horizon: T steps per trajectory.
      state_loss: ``state_loss(x) -> scalar`` for ONE state (C + A, N, …); the batch mean is ℓ.
      sample_states: ``(rng, n) -> (n, C + A, N, …)`` initial states; or instead
      ic / spin_up: an exponax random IC generator and the uncontrolled steps after each draw
        (A = 0 only).
      actuators: None (a force field, control (C, N, …)) or K profiles (K, N, …) / (K, C, N, …)
        (control (K,)), e.g. :func:`gaussian_actuators`.
      aux_channels: A channels after the PDE's carried unchanged (e.g. a target).
      on: ``"every"`` (mean over x_1 … x_T) or ``"final"`` (x_T); control_weight: ≥ 0.
      widths / kernel_size / zero_last: the controller (:class:`PeriodicCNN` channel widths and
        kernel for a field, default (16, 16); MLP hidden widths for actuators, default (64, 64));
        zero_last starts it at zero force.
      name / params / description: the problem's record (params: JSON-able values).
      defaults: training settings (epochs, lr, batch_size, n_train, n_test).
    """
    channels, spatial = _check_stepper(stepper)
    horizon = _common.positive_int(horizon, "horizon", WHO)
    aux = _common.check_count(aux_channels, "aux_channels", WHO)
    if not callable(state_loss):
        raise ValueError(f"{WHO}: state_loss={state_loss!r} is not callable (one state -> scalar)")
    if (sample_states is None) == (ic is None):
        raise ValueError(
            f"{WHO}: give exactly one of sample_states ((rng, n) -> states) and ic (an exponax random IC generator)"
        )
    if sample_states is not None and not callable(sample_states):
        raise ValueError(f"{WHO}: sample_states={sample_states!r} is not callable ((rng, n) -> (n, *state_shape))")
    if ic is not None and aux:
        raise ValueError(
            f"{WHO}: ic draws only the PDE's {channels} channel(s); with aux_channels={aux} give sample_states instead"
        )
    if on not in ON:
        raise ValueError(f"{WHO}: on={on!r}; allowed: {', '.join(map(repr, ON))}")
    if isinstance(control_weight, bool) or not isinstance(control_weight, numbers.Real) or not control_weight >= 0:
        raise ValueError(f"{WHO}: control_weight={control_weight!r}; must be a number ≥ 0")
    step = exponax_step(stepper, actuators=actuators, aux_channels=aux)
    b = _check_actuators(actuators, channels, spatial)
    state_shape = (channels + aux,) + spatial
    control_shape = (channels,) + spatial if b is None else (int(b.shape[0]),)
    if b is None:
        widths = _common.check_widths((16, 16) if widths is None else widths, WHO)
        nd, c_in = len(spatial), channels + aux

        def make_controller(key, zero_last: bool = True):
            return PeriodicCNN(key, nd, c_in, channels, widths, kernel_size, zero_last)
    else:
        widths = _common.check_widths((64, 64) if widths is None else widths, WHO)
        make_controller = _common.controller_factory(state_shape, control_shape, widths)
    if ic is not None:
        sample_states = ic_sampler(stepper, ic, spin_up)
    sample_data = _common.data_sampler(sample_states, state_shape, WHO)
    batch_loss = _common.mean_row_loss(state_loss, "state_loss", WHO)

    pde = type(stepper).__name__
    record = dict(
        stepper=pde,
        domain_extent=float(stepper.domain_extent),
        num_points=int(stepper.num_points),
        dt=float(stepper.dt),
        horizon=horizon,
        control="field" if b is None else f"{b.shape[0]} actuators",
        aux_channels=aux,
        on=on,
        control_weight=float(control_weight),
        widths=list(widths),
        spin_up=int(spin_up),
    )
    return Problem(
        name=name,
        params=record | dict(params or {}),
        step=step,
        loss=TrajectoryLoss(state_loss=batch_loss, on=on, control_weight=float(control_weight)),
        horizon=horizon,
        sample_data=sample_data,
        make_controller=make_controller,
        state_shape=state_shape,
        control_shape=control_shape,
        defaults=dict(defaults or dict(epochs=50, lr=1e-3, batch_size=8, n_train=64, n_test=64)),
        zero_last_default=bool(zero_last),
        description=description
        or (
            f"{pde} ({len(spatial)}-D, L = {float(stepper.domain_extent):g}, "
            f"N = {stepper.num_points}, Δt = {float(stepper.dt):g}), T = {horizon} steps, "
            f"{record['control']}: {'final' if on == 'final' else 'mean'} state loss"
        ),
    )


__all__ = ["exponax_problem", "exponax_step", "gaussian_actuators", "ic_sampler", "PeriodicCNN", "forcing", "grid"]
