"""Optimizers and clipping against hand-written references."""

import jax.numpy as jnp
import numpy as np
import pytest

from stablebptt.training import optim


def run(tx, grads):
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    out = []
    for g in grads:
        upd, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = {"w": params["w"] + upd["w"]}
        out.append(np.asarray(params["w"]))
    return out


def keras_adam_reference(grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    m = v = np.zeros(3)
    th = np.zeros(3)
    out = []
    for t, g in enumerate(grads, 1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        th = th - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        out.append(th.copy())
    return out


def test_keras_adam_matches_reference_and_differs_from_optax_for_tiny_updates():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(3) * s for s in (1e-6, 1.0, 1e-3, 5.0, 1e-7)]
    got = run(optim.optimizer("adam", 1e-3), grads)
    want = keras_adam_reference(grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10)
    # first step with a tiny gradient: Keras moves by less than lr (ε/√(1−β₂) ≈ 3.2e-6 dominates)
    tiny = [np.array([1e-6, -1e-6, 2e-6])]
    k = run(optim.optimizer("adam", 1e-3), tiny)[0]
    o = run(optim.optimizer("adam_optax", 1e-3), tiny)[0]
    assert np.all(np.abs(k) < np.abs(o))
    assert np.abs(k[0]) == pytest.approx(1e-3 * 1e-6 / (1e-6 + 1e-7 / np.sqrt(1e-3)), rel=1e-4)


def test_clipping_before_the_optimizer():
    g = np.array([3.0, -0.5, 4.0])
    (v,) = run(optim.make("sgd", 1.0, "value", 1.0), [g])
    np.testing.assert_allclose(v, -np.clip(g, -1, 1))
    (n,) = run(optim.make("sgd", 1.0, "norm", 1.0), [g])
    np.testing.assert_allclose(n, -g / np.linalg.norm(g), rtol=1e-6)
    (u,) = run(optim.make("sgd", 1.0, "none"), [g])
    np.testing.assert_allclose(u, -g)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_descends(name):
    # minimise ½‖w − 1‖²
    tx = optim.make(name, 0.1)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for _ in range(50):
        upd, state = tx.update({"w": params["w"] - 1.0}, state, params)
        params = {"w": params["w"] + upd["w"]}
    assert float(jnp.sum((params["w"] - 1) ** 2)) < 3.0


def test_momentum_values():
    g = [np.ones(3)] * 3
    got = run(optim.make("momentum", 1.0, momentum=0.8), g)
    # trace: v1 = 1, v2 = 1.8, v3 = 2.44 -> positions -1, -2.8, -5.24
    np.testing.assert_allclose([x[0] for x in got], [-1.0, -2.8, -5.24], rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        optim.optimizer("lbfgs")
    with pytest.raises(ValueError, match="clip threshold=-1"):
        optim.clipping("value", -1.0)
    with pytest.raises(ValueError, match="unknown clipping 'soft'"):
        optim.clipping("soft")
    with pytest.raises(ValueError, match="momentum=1.5"):
        optim.optimizer("momentum", 0.1, momentum=1.5)
