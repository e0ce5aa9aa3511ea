"""Controllers: the paper's MLP and quantum CNN as equinox modules.

Both treat the rows of a batch independently and implement the engine's hooks
(:class:`stablebptt.core.hooks.RowwiseController`): residuals, input Jacobian and parameter
vjps as a few large matrix products on many rows at once (tested against autodiff).

Weights are stored in the Keras/TensorFlow layout so trained controllers move between
frameworks: Dense kernels (fan_in, fan_out), Conv kernels (kh, kw, c_in, c_out) for 2-D and
(k, c_in, c_out) for 1-D. Initialisation is Keras': Glorot-uniform kernels
(limit √(6 / (fan_in + fan_out)), fan = receptive field × channels), zero biases.

Every controller maps a *batched* state (B, *state_shape) to a batched control
(B, *control_shape).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def glorot_uniform(key: jax.Array, shape: Sequence[int], fan_in: int, fan_out: int) -> jax.Array:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, tuple(shape), jnp.float32, -limit, limit)


def _kernel_products(inputs, ds, precision=None) -> list:
    """[inputsᵀ·d for d in ds] as one matrix product inputsᵀ·[d_1 | d_2 | …], split after.

    inputs (N, a); each d (N, b_i) -> (a, b_i). The weight gradients of several fields (C's M
    and G) share the layer inputs, so they are one product with the fields side by side."""
    if len(ds) == 1:
        return [jnp.matmul(inputs.T, ds[0], precision=precision)]
    k = jnp.matmul(inputs.T, jnp.concatenate(ds, axis=1), precision=precision)
    w = [d.shape[1] for d in ds]
    return jnp.split(k, np.cumsum(w)[:-1], axis=1)


class Dense(eqx.Module):
    """y = x @ kernel + bias;  kernel (fan_in, fan_out)."""

    kernel: jax.Array
    bias: jax.Array

    @staticmethod
    def init(key, fan_in: int, fan_out: int, zero_kernel: bool = False) -> Dense:
        kernel = (
            jnp.zeros((fan_in, fan_out), jnp.float32)
            if zero_kernel
            else glorot_uniform(key, (fan_in, fan_out), fan_in, fan_out)
        )
        return Dense(kernel, jnp.zeros((fan_out,), jnp.float32))

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Conv(eqx.Module):
    """Valid, strided N-d convolution, channels last. kernel (*window, c_in, c_out).

    Computed as patch extraction + one matrix product: for every window offset o a strided
    slice x[:, o + s·j] (j = output position), the slices stacked in window-major order to
    patches (B, *out, prod(window)·c_in), then ``patches @ kernel.reshape(-1, c_out)``: the
    same sum as ``lax.conv_general_dilated`` (``conv_reference``) in another order, with
    plain 2-D products forward and backward (the slices' transposes are pads and adds).
    """

    kernel: jax.Array
    bias: jax.Array
    strides: tuple[int, ...] = eqx.field(static=True)

    @staticmethod
    def init(key, window: Sequence[int], c_in: int, c_out: int, strides: Sequence[int]) -> Conv:
        rf = int(np.prod(window))
        kernel = glorot_uniform(key, (*window, c_in, c_out), rf * c_in, rf * c_out)
        return Conv(kernel, jnp.zeros((c_out,), jnp.float32), tuple(strides))

    def patches(self, x):
        """(B, *spatial, c_in) -> (B, *out, prod(window)·c_in), window-major, c_in minor."""
        nd = len(self.strides)
        window = self.kernel.shape[:nd]
        spatial = x.shape[1 : 1 + nd]
        out = [(n - w) // s + 1 for n, w, s in zip(spatial, window, self.strides)]
        if min(out) < 1:
            raise ValueError(f"Conv: input {spatial} smaller than window {window}")
        cols = []
        for offset in itertools.product(*(range(w) for w in window)):
            idx = tuple(slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offset, self.strides, out))
            cols.append(x[(slice(None),) + idx])
        p = jnp.stack(cols, axis=-2)  # (B, *out, prod(window), c_in)
        return p.reshape(p.shape[:-2] + (-1,))

    def __call__(self, x):  # x: (B, *spatial, c_in)
        k = self.kernel.reshape(-1, self.kernel.shape[-1])
        p = self.patches(x)
        # one 2-D product over all (sample, position) rows: its transposes stay 2-D products
        y = jnp.matmul(p.reshape(-1, p.shape[-1]), k, precision=jax.lax.Precision.HIGHEST)
        return y.reshape(p.shape[:-1] + (k.shape[-1],)) + self.bias

    def input_vjp(self, x_shape, ct):
        """(∂y/∂x)ᵀ·ct for y = self(x) with x of shape ``x_shape`` (linear in x: no x needed)."""
        nobias = lambda x: self(x) - self.bias
        (g,) = jax.linear_transpose(nobias, jax.ShapeDtypeStruct(x_shape, ct.dtype))(ct)
        return g

    def param_grads_many(self, x, cts):
        """[(kernel, bias) gradients Σ over rows and positions for y = self(x), for each
        cotangent in ``cts``]: the patches are formed
        once and the kernel products of all cotangents are one matrix product
        (patchesᵀ·[ct_1 | ct_2 | …], see :func:`_kernel_products`)."""
        p = self.patches(x)
        ds = [ct.reshape(-1, ct.shape[-1]) for ct in cts]
        ks = _kernel_products(p.reshape(-1, p.shape[-1]), ds, precision=jax.lax.Precision.HIGHEST)
        return [(k.reshape(self.kernel.shape), jnp.sum(d, axis=0)) for k, d in zip(ks, ds)]

    def conv_reference(self, x):
        """The same convolution with ``lax.conv_general_dilated`` (for tests)."""
        nd = len(self.strides)
        spatial = "HWD"[:nd]
        dn = jax.lax.conv_dimension_numbers(
            x.shape, self.kernel.shape, ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        )
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel,
            self.strides,
            "VALID",
            dimension_numbers=dn,
            precision=jax.lax.Precision.HIGHEST,
        )
        return y + self.bias


class MLP(eqx.Module):
    """Flatten → [Dense width, tanh] × depth → Dense (linear) → reshape to control_shape.

    The paper's controller is widths (100, 100). ``zero_last=True`` starts the last kernel at
    zero (the authors' cart-pole / guidance runs did, see docs/physics.md), so the untrained
    controller outputs exactly 0.
    """

    layers: tuple[Dense, ...]
    control_shape: tuple[int, ...] = eqx.field(static=True)
    #: each batch row is mapped on its own (the engine verifies it, see core.hooks)
    rows_independent: ClassVar[bool] = True

    def __init__(
        self,
        key,
        in_size: int,
        control_shape: Sequence[int],
        widths: Sequence[int] = (100, 100),
        zero_last: bool = False,
    ):
        out = int(np.prod(control_shape)) if len(control_shape) else 1
        sizes = [in_size, *widths, out]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(Dense.init(k, a, b, zero_kernel=last and zero_last))
        self.layers = tuple(layers)
        self.control_shape = tuple(control_shape)

    def __call__(self, x):
        return self.forward_with_residuals(x)[0]

    # the engine's hooks (core.hooks.RowwiseController)
    def forward_with_residuals(self, x):
        """``(control, hidden activations)``; activations: a tuple of (N, width) arrays."""
        h = x.reshape(x.shape[0], -1)
        hs = []
        for layer in self.layers[:-1]:
            h = jnp.tanh(layer(h))
            hs.append(h)
        out = self.layers[-1](h)
        return out.reshape((x.shape[0],) + self.control_shape), tuple(hs)

    def param_vjps_from_residuals(self, x, hs, cts):
        """[Σ over rows of (∂control/∂θ)ᵀ·ct for ct in cts], from the activations ``hs`` of
        :meth:`forward_with_residuals` (backpropagation through the kept activations)."""
        return [self._param_vjp_from_residuals(x, hs, ct) for ct in cts]

    def _param_vjp_from_residuals(self, x, hs, ct):
        n = x.shape[0]
        inputs = [x.reshape(n, -1), *hs]  # the input of layer i
        d = ct.reshape(n, -1)
        kernels, biases = [None] * len(self.layers), [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            kernels[i], biases[i] = inputs[i].T @ d, jnp.sum(d, axis=0)
            if i > 0:  # through layer i's kernel and the tanh that produced its input
                d = (d @ self.layers[i].kernel.T) * (1.0 - inputs[i] * inputs[i])
        return self._with_grads(kernels, biases)

    def _with_grads(self, kernels, biases):
        return eqx.tree_at(
            lambda m: [leaf for l in m.layers for leaf in (l.kernel, l.bias)],
            self,
            [leaf for pair in zip(kernels, biases) for leaf in pair],
        )

    def jacobian_from_residuals(self, x, hs):
        """``(J, deltas)`` per row, from the activations ``hs`` of :meth:`forward_with_residuals`.

        x (N, …) rows; m = prod(control_shape). J (N, m, *x.shape[1:]) = ∂control/∂x;
        deltas[i] (N, m, width_i) = ∂control/∂(pre-activation of hidden layer i).
        """
        n, m = x.shape[0], int(np.prod(self.control_shape)) if self.control_shape else 1
        d = jnp.broadcast_to(jnp.eye(m, dtype=x.dtype), (n, m, m))  # ∂c/∂(output)
        deltas = [None] * (len(self.layers) - 1)
        for i in reversed(range(1, len(self.layers))):
            d = (d @ self.layers[i].kernel.T) * (1.0 - hs[i - 1] * hs[i - 1])[:, None, :]
            deltas[i - 1] = d
        jac = d @ self.layers[0].kernel.T  # (N, m, in)
        return jac.reshape((n, m) + x.shape[1:]), tuple(deltas)

    def param_vjps_from_jacobian(self, x, hs, deltas, cts):
        """[Σ over rows of (∂control/∂θ)ᵀ·ct for ct in cts] from :meth:`jacobian_from_residuals`'s
        ``deltas`` (no backward products: ``δ_i = Σ_k ct_k·deltas[i][:, k]``); each layer's kernel
        products of all cotangents as one matrix product (:func:`_kernel_products`)."""
        n = x.shape[0]
        inputs = [x.reshape(n, -1), *hs]
        cs = [ct.reshape(n, -1) for ct in cts]  # (N, m) each
        dss = [
            [jnp.einsum("nk,nkw->nw", c, dl) if c.shape[1] > 1 else c * dl[:, 0] for dl in deltas] + [c] for c in cs
        ]  # per cotangent, per layer
        per_layer = [_kernel_products(inp, [ds[i] for ds in dss]) for i, inp in enumerate(inputs)]
        return [
            self._with_grads([ks[f] for ks in per_layer], [jnp.sum(d, axis=0) for d in ds]) for f, ds in enumerate(dss)
        ]


class QuantumCNN(eqx.Module):
    """The authors' quantum controller (11,701 parameters for Nx = 32).

    (B, Nx, 2) as an Nx×2 image with one channel → Conv2D 60, kernel (3, 2), stride 2, tanh
    → (B, 15, 60) → Conv1D 60, kernel 3, stride 2, tanh → (B, 7, 60) → flatten (position-major,
    as Keras) → Dense 1 (linear) = u, shape (B, 1). Only the final bias is zero-initialised.
    """

    conv2d: Conv
    conv1d: Conv
    dense: Dense
    rows_independent: ClassVar[bool] = True

    def __init__(self, key, nx: int = 32, filters: int = 60, zero_last: bool = False):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv2d = Conv.init(k1, (3, 2), 1, filters, (2, 2))
        self.conv1d = Conv.init(k2, (3,), filters, filters, (2,))
        n1 = (nx - 3) // 2 + 1
        n2 = (n1 - 3) // 2 + 1
        if n2 < 1:
            raise ValueError(f"QuantumCNN needs nx ≥ 7 (got nx={nx})")
        self.dense = Dense.init(k3, n2 * filters, 1, zero_kernel=zero_last)

    def __call__(self, x):
        return self.forward_with_residuals(x)[0]

    # the engine's hooks (core.hooks.RowwiseController)
    def forward_with_residuals(self, x):
        """``(u (N, 1), (h2 (N, n2, F),))``: the control and the second tanh layer's output.

        Only h2 is a residual (93 % of the forward's multiply-adds, 1.7 KB per row); h1 is
        recomputed from x where needed."""
        h2 = jnp.tanh(self.conv1d(self._hidden1(x)))  # (B, n2, F)
        return self.dense(h2.reshape(h2.shape[0], -1)), (h2,)

    def _hidden1(self, x):
        """h1 (B, n1, F): the first tanh layer."""
        return jnp.tanh(self.conv2d(x[..., None]))[:, :, 0, :]

    def jacobian_from_residuals(self, x, hs):
        """``(J (N, 1, Nx, 2), (δ1 (N, 1, n1, F), δ2 (N, 1, n2, F)))``: ∂u/∂x and ∂u/∂ of each
        convolution's pre-activation, per row, from :meth:`forward_with_residuals`'s ``hs``."""
        (h2,) = hs
        h1 = self._hidden1(x)
        d2 = self.dense.kernel[:, 0].reshape(h2.shape[1:]) * (1.0 - h2 * h2)  # (N, n2, F)
        d1 = self.conv1d.input_vjp(h1.shape, d2) * (1.0 - h1 * h1)  # (N, n1, F)
        jac = self.conv2d.input_vjp(x.shape + (1,), d1[:, :, None, :])[..., 0]  # (N, Nx, 2)
        return jac[:, None], (d1[:, None], d2[:, None])

    def param_vjps_from_residuals(self, x, hs, cts):
        """[Σ over rows of (∂u/∂θ)ᵀ·ct for ct in cts] by autodiff on the rows (the forward pass
        again: cheaper on the CPU than forming the deltas of :meth:`jacobian_from_residuals`)."""
        del hs
        params, static = eqx.partition(self, eqx.is_inexact_array)
        _, pull = jax.vjp(lambda p: eqx.combine(p, static)(x), params)
        return [pull(ct)[0] for ct in cts]

    def param_vjps_from_jacobian(self, x, hs, deltas, cts):
        """[Σ over rows of (∂u/∂θ)ᵀ·ct for ct in cts] from the unit deltas (only the kernel
        products remain, all cotangents' as one matrix product per layer)."""
        (h2,) = hs
        h1 = self._hidden1(x)  # the same computation as in jacobian_from_residuals: XLA computes it once
        cs = [ct.reshape(-1, 1, 1) for ct in cts]
        conv2d = self.conv2d.param_grads_many(x[..., None], [(c * deltas[0][:, 0])[:, :, None, :] for c in cs])
        conv1d = self.conv1d.param_grads_many(h1, [c * deltas[1][:, 0] for c in cs])
        kds = _kernel_products(
            h2.reshape(h2.shape[0], -1), [ct.reshape(-1, 1) for ct in cts], precision=jax.lax.Precision.HIGHEST
        )
        return [
            eqx.tree_at(
                lambda m: [
                    m.conv2d.kernel,
                    m.conv2d.bias,
                    m.conv1d.kernel,
                    m.conv1d.bias,
                    m.dense.kernel,
                    m.dense.bias,
                ],
                self,
                [*c2, *c1, kd, jnp.sum(ct.reshape(-1, 1), axis=0)],
            )
            for c2, c1, kd, ct in zip(conv2d, conv1d, kds, cts)
        ]


# ---------------------------------------------------------------- weights in / out
def _weight_layers(model) -> list:
    """Layers with (kernel, bias) in forward order."""
    layers = [
        leaf
        for leaf in jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, (Dense, Conv)))
        if isinstance(leaf, (Dense, Conv))
    ]
    return layers


def _leaf_name(path) -> str:
    return "_".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def weights_dict(model) -> dict[str, np.ndarray]:
    """``{"w0_kernel", "w0_bias", "w1_kernel", …}`` in Keras layout, float32 numpy.

    Controllers without Dense/Conv layers (the toy controllers) are stored by attribute path
    (e.g. ``theta``).
    """
    out = {}
    layers = _weight_layers(model)
    if not layers:
        params = eqx.filter(model, eqx.is_inexact_array)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            out[_leaf_name(path)] = np.asarray(leaf, np.float32)
        return out
    for i, layer in enumerate(layers):
        out[f"w{i}_kernel"] = np.asarray(layer.kernel, np.float32)
        out[f"w{i}_bias"] = np.asarray(layer.bias, np.float32)
    return out


def save_weights(model, path: str | Path) -> Path:
    """Write the controller's weights as ``.npz`` (see :func:`weights_dict`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **weights_dict(model))  # type: ignore[arg-type]  # numpy's stub: a ** dict might hold allow_pickle
    tmp.replace(path)
    return path


def load_weights(model, source) -> eqx.Module:
    """Return ``model`` with weights from an ``.npz`` path or a dict (same names/shapes)."""
    arrays = dict(np.load(source)) if not isinstance(source, dict) else source
    current = weights_dict(model)
    if set(arrays) != set(current):
        raise ValueError(
            f"weights have entries {sorted(arrays)}; this {type(model).__name__} expects {sorted(current)}"
        )
    for name, ref in current.items():
        if np.shape(arrays[name]) != ref.shape:
            raise ValueError(f"{name} has shape {np.shape(arrays[name])}; expected {ref.shape}")
    layers = _weight_layers(model)
    if layers:
        names = [f"w{i}_{p}" for i in range(len(layers)) for p in ("kernel", "bias")]
        where = lambda m: [getattr(l, p) for l in _weight_layers(m) for p in ("kernel", "bias")]
        return eqx.tree_at(where, model, [jnp.asarray(arrays[n], jnp.float32) for n in names])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    paths = [_leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    treedef = jax.tree_util.tree_structure(params)
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[n], jnp.float32) for n in paths])
    return eqx.combine(params, static)


def count_params(model) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))


def weights_file(path: str | Path) -> Path:
    """A controller's ``.npz`` weights: ``path`` itself, or ``path/weights.npz`` for a run folder.
    FileNotFoundError naming what is missing."""
    path = Path(path)
    if path.is_dir():
        if not (path / "weights.npz").is_file():
            raise FileNotFoundError(f"{path} is a folder without weights.npz (not a finished run folder)")
        return path / "weights.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or run folder (an .npz of controller weights, or a run folder)")
    return path
