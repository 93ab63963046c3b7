"""The Program API: layout, views, initialisation, binding and caching."""
import numpy as np
import pytest

import rgraph as rg


def test_layout_is_contiguous_in_declaration_order():
    prog = rg.compile(rg.nn.mlp([4, 5, 3]))
    assert list(prog.layout) == ["fc0.W", "fc0.b", "fc1.W", "fc1.b"]
    assert prog.layout["fc0.b"] == (20, (5,)) and prog.layout["fc1.W"] == (25, (5, 3))
    assert prog.size == 4 * 5 + 5 + 5 * 3 + 3


def test_views_share_memory_with_the_flat_vector():
    prog = rg.compile(rg.nn.mlp([4, 5, 3]))
    theta = prog.init_params(0)
    view = prog.view(theta)["fc1.W"]
    view[...] = 7.0
    assert np.all(theta[25:40] == 7.0) and np.shares_memory(view, theta)


def test_init_is_deterministic_and_follows_the_initialiser():
    prog = rg.compile(rg.nn.mlp([400, 300, 10]), dtype="float32")
    a, b, c = prog.init_params(3), prog.init_params(3), prog.init_params(4)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    W, bias = prog.view(a)["fc0.W"], prog.view(a)["fc0.b"]
    assert np.all(bias == 0)
    assert abs(W.std() - np.sqrt(2 / 400)) < 0.02 * np.sqrt(2 / 400) * 10  # he_normal


def test_custom_init_callable_and_shape_check():
    g = rg.Graph()
    x = g.input("x", (None, 2))
    W = g.param("W", (2, 2), init=lambda rng, shape: np.full(shape, 0.5))
    V = g.param("V", (2, 2), init=lambda rng, shape: np.zeros(3))
    z = g.output(x @ W @ V)
    g.set_loss(rg.ops.mean(z * z))
    prog = rg.compile(g)
    with pytest.raises(ValueError, match="init of parameter 'V' returned shape"):
        prog.init_params(0)


def test_one_program_serves_any_batch_size():
    g = rg.nn.mlp([3, 4, 2])
    prog = rg.compile(g)
    theta = prog.init_params(0)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((9, 3)), rng.integers(0, 2, 9)
    full = prog.bind(theta, {"x": X, "y": Y})
    losses = [prog.bind(theta, {"x": X[i:i + 1], "y": Y[i:i + 1]}).loss for i in range(9)]
    assert full.loss == pytest.approx(np.mean(losses), rel=1e-12)


def test_value_operators_build_the_same_graph_as_ops():
    g = rg.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", (3, 3))
    y = (2.0 - x @ W) / 4.0 + (-x) * x
    assert y.shape == (None, 3) and y.op.name == "add"
    out = rg.evaluate(y, {x: np.ones((2, 3)), W: np.eye(3)})
    np.testing.assert_allclose(out, np.full((2, 3), (2 - 1) / 4 - 1))


def test_jtu_equals_gradient_when_u_is_dloss_dz():
    """J^T (dloss/dz) is the data part of the gradient: mean softmax CE has dloss/dz = (p - Y)/N."""
    g = rg.nn.mlp([3, 5, 4], l2=0.0)
    prog = rg.compile(g)
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((6, 3)), rng.integers(0, 4, 6)
    st = prog.bind(prog.init_params(0), {"x": X, "y": Y})
    z = st.output
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    u = (p - np.eye(4)[Y]) / 6
    np.testing.assert_allclose(st.jtu(u), st.grad, rtol=1e-10, atol=1e-14)


def test_taps_give_layer_inputs_and_preactivation_cotangents():
    g = rg.nn.mlp([3, 5, 4])
    prog = rg.compile(g)
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((6, 3)), rng.integers(0, 4, 6)
    theta = prog.init_params(0)
    st = prog.bind(theta, {"x": X, "y": Y})
    u = rng.standard_normal((6, 4))
    taps = st.taps(u)
    assert [layer.weight for layer in prog.layers] == ["fc0.W", "fc1.W"]
    assert [layer.bias for layer in prog.layers] == ["fc0.b", "fc1.b"]
    a0, g0 = taps["fc0.W"]
    a1, g1 = taps["fc1.W"]
    np.testing.assert_array_equal(a0, X)
    np.testing.assert_allclose(g1, u)
    # per-layer weight gradient a^T g reproduces J^T u
    jtu = prog.view(st.jtu(u))
    np.testing.assert_allclose(a0.T @ g0, jtu["fc0.W"], rtol=1e-12)
    np.testing.assert_allclose(a1.T @ g1, jtu["fc1.W"], rtol=1e-12)
