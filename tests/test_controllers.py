"""Controllers: Keras-like init, layer-by-layer .npz weights, the engine's hooks against autodiff."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EPS32, assert_close
from stablebptt.core import hooks
from stablebptt.problems import controllers as nets


def test_mlp_shapes_init_and_zero_last():
    m = nets.MLP(jax.random.PRNGKey(0), 6, (2, 2), widths=(100, 100), zero_last=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 2))
    y = m(x)
    assert y.shape == (5, 2, 2)
    assert float(jnp.max(jnp.abs(y))) == 0.0  # zero last kernel, zero biases
    k0 = np.asarray(m.layers[0].kernel)
    limit = np.sqrt(6 / (6 + 100))
    assert k0.shape == (6, 100) and np.abs(k0).max() <= limit and np.abs(k0).max() > 0.8 * limit
    assert all(float(jnp.abs(l.bias).max()) == 0 for l in m.layers)
    assert (
        nets.count_params(nets.MLP(jax.random.PRNGKey(0), 4, (), widths=(100, 100)))
        == 4 * 100 + 100 + 100 * 100 + 100 + 101
    )


def test_quantum_cnn_parameter_count_and_keras_layout():
    m = nets.QuantumCNN(jax.random.PRNGKey(0))
    assert nets.count_params(m) == 11701
    d = nets.weights_dict(m)
    assert {k: v.shape for k, v in d.items()} == {
        "w0_kernel": (3, 2, 1, 60),
        "w0_bias": (60,),
        "w1_kernel": (3, 60, 60),
        "w1_bias": (60,),
        "w2_kernel": (420, 1),
        "w2_bias": (1,),
    }


def test_cnn_matches_numpy_reference_convolution():
    m = nets.QuantumCNN(jax.random.PRNGKey(2))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 32, 2)), np.float64)
    d = {k: v.astype(np.float64) for k, v in nets.weights_dict(m).items()}
    # Conv2D (3,2) stride 2 valid on (32,2,1) -> (15,1,60)
    h1 = np.zeros((2, 15, 60))
    for i in range(15):
        patch = x[:, 2 * i : 2 * i + 3, :]  # (B,3,2)
        h1[:, i] = np.einsum("bhw,hwo->bo", patch, d["w0_kernel"][:, :, 0, :]) + d["w0_bias"]
    h1 = np.tanh(h1)
    h2 = np.zeros((2, 7, 60))
    for i in range(7):
        h2[:, i] = np.einsum("bkc,kco->bo", h1[:, 2 * i : 2 * i + 3], d["w1_kernel"]) + d["w1_bias"]
    h2 = np.tanh(h2)
    y = h2.reshape(2, -1) @ d["w2_kernel"] + d["w2_bias"]
    assert_close(np.asarray(m(jnp.asarray(x, jnp.float32))), y, 64 * EPS32)  # float32 inputs and products


@pytest.mark.parametrize(
    "window,strides,spatial,c_in",
    [
        ((3,), (2,), (15,), 60),  # the quantum CNN's Conv1D
        ((3, 2), (2, 2), (32, 2), 1),  # the quantum CNN's Conv2D
        ((4,), (1,), (11,), 3),
        ((2, 3), (1, 2), (7, 9), 2),
        ((5,), (3,), (5,), 4),  # one output position
    ],
)
@pytest.mark.slow
def test_patch_conv_equals_xla_convolution_values_and_gradients(window, strides, spatial, c_in):
    conv = nets.Conv.init(jax.random.PRNGKey(0), window, c_in, 5, strides)
    conv = eqx.tree_at(lambda c: c.bias, conv, jax.random.normal(jax.random.PRNGKey(1), (5,)))
    x = jax.random.normal(jax.random.PRNGKey(2), (3, *spatial, c_in))
    assert_close(conv(x), conv.conv_reference(x), 64 * EPS32, "values")  # the same sum in another order
    ct = jax.random.normal(jax.random.PRNGKey(3), conv(x).shape)
    loss = lambda c, x, f: jnp.sum(f(c, x) * ct)
    g_new = jax.grad(loss, argnums=(0, 1))(conv, x, lambda c, x: c(x))
    g_ref = jax.grad(loss, argnums=(0, 1))(conv, x, lambda c, x: c.conv_reference(x))
    for a, b in zip(jax.tree_util.tree_leaves(g_new), jax.tree_util.tree_leaves(g_ref)):
        assert_close(a, b, 64 * EPS32, "gradients")


@pytest.mark.slow
def test_parameter_vjp_from_kept_activations_equals_autodiff():
    m = nets.MLP(jax.random.PRNGKey(0), 4, (2,), widths=(30, 20))
    shape = (40, 2, 2)
    m = jax.tree_util.tree_map(lambda a: a + 0.05 if eqx.is_inexact_array(a) else a, m)  # no zero kernel
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    c, res = m.forward_with_residuals(x)
    assert np.array_equal(np.asarray(c), np.asarray(m(x)))
    ct = jax.random.normal(jax.random.PRNGKey(2), c.shape)
    p, s = eqx.partition(m, eqx.is_inexact_array)
    want = jax.vjp(lambda q: eqx.combine(q, s)(x), p)[1](ct)[0]
    (got,) = [eqx.filter(g, eqx.is_inexact_array) for g in m.param_vjps_from_residuals(x, res, [ct])]
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def check_jacobian_protocol(m, x):
    """m's jacobian_from_residuals equals jax.jacrev per row, and param_vjps_from_jacobian and
    param_vjps_from_residuals equal jax.vjp w.r.t. the parameters; returns (J, deltas)."""
    assert isinstance(m, hooks.RowwiseController) and hooks.has_hooks(m)
    m = jax.tree_util.tree_map(lambda a: a + 0.05 if eqx.is_inexact_array(a) else a, m)  # no zero kernel
    c, res = m.forward_with_residuals(x)
    assert np.array_equal(np.asarray(c), np.asarray(m(x)))
    jac, deltas = m.jacobian_from_residuals(x, res)
    want_j = jax.vmap(jax.jacrev(lambda r: m(r[None]).reshape(-1)))(x)  # (N, m, *row)
    assert_close(jac, want_j, 64 * EPS32, "J")
    ct = jax.random.normal(jax.random.PRNGKey(2), c.shape)
    p, s = eqx.partition(m, eqx.is_inexact_array)
    want = jax.vjp(lambda q: eqx.combine(q, s)(x), p)[1](ct)[0]
    for got in (m.param_vjps_from_jacobian(x, res, deltas, [ct])[0], m.param_vjps_from_residuals(x, res, [ct])[0]):
        got = eqx.filter(got, eqx.is_inexact_array)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    # several fields at once (C's M and G: their kernel products as one matrix product): each
    # equals its own autodiff vjp, in order
    cts = [ct, jax.random.normal(jax.random.PRNGKey(3), c.shape), -2.0 * ct]
    many = m.param_vjps_from_jacobian(x, res, deltas, cts)
    assert len(many) == len(cts)
    for ct_f, got_f in zip(cts, many):
        want_f = jax.vjp(lambda q: eqx.combine(q, s)(x), p)[1](ct_f)[0]
        got_f = eqx.filter(got_f, eqx.is_inexact_array)
        assert jax.tree_util.tree_structure(got_f) == jax.tree_util.tree_structure(want_f)
        for a, b in zip(jax.tree_util.tree_leaves(got_f), jax.tree_util.tree_leaves(want_f)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    return jac, deltas


@pytest.mark.slow
@pytest.mark.parametrize("widths,control_shape", [((30, 20), (1,)), ((30, 20), (2,)), ((12, 9, 7), (3,)), ((8,), ())])
def test_input_jacobian_and_its_parameter_vjp_equal_autodiff(widths, control_shape):
    m = nets.MLP(jax.random.PRNGKey(0), 4, control_shape, widths=widths)
    jac, deltas = check_jacobian_protocol(m, jax.random.normal(jax.random.PRNGKey(1), (25, 2, 2)))
    k = int(np.prod(control_shape)) if control_shape else 1
    assert jac.shape == (25, k, 2, 2) and len(deltas) == len(widths)


@pytest.mark.slow
def test_quantum_cnn_jacobian_and_parameter_vjp_equal_autodiff():
    jac, _ = check_jacobian_protocol(
        nets.QuantumCNN(jax.random.PRNGKey(0)), jax.random.normal(jax.random.PRNGKey(1), (9, 32, 2))
    )
    assert jac.shape == (9, 1, 32, 2)


def test_patch_conv_rejects_input_smaller_than_window():
    conv = nets.Conv.init(jax.random.PRNGKey(0), (5,), 1, 2, (1,))
    with pytest.raises(ValueError, match="smaller than window"):
        conv(jnp.zeros((1, 4, 1)))


@pytest.mark.parametrize(
    "make",
    [
        lambda k: nets.MLP(k, 4, (), widths=(10, 10)),
        lambda k: nets.QuantumCNN(k),
    ],
)
@pytest.mark.slow
def test_weights_roundtrip_gives_identical_outputs(tmp_path, make):
    a, b = make(jax.random.PRNGKey(0)), make(jax.random.PRNGKey(1))
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 32, 2) if isinstance(a, nets.QuantumCNN) else (3, 2, 2))
    assert not np.array_equal(a(x), b(x))
    nets.save_weights(a, tmp_path / "w.npz")
    c = nets.load_weights(b, tmp_path / "w.npz")
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(c(x)))


def test_load_weights_errors(tmp_path):
    m = nets.MLP(jax.random.PRNGKey(0), 4, (), widths=(10,))
    d = nets.weights_dict(m)
    with pytest.raises(ValueError, match="w0_kernel has shape"):
        nets.load_weights(m, d | {"w0_kernel": np.zeros((3, 10), np.float32)})
    with pytest.raises(ValueError, match="expects"):
        nets.load_weights(m, {"w0_kernel": d["w0_kernel"]})
