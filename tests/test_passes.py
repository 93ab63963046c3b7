"""Every derived pass of random MLPs against independent references (float64): finite differences of
the interpreted loss and gradient, and dense J, B and H built column by column (rg.check_graph)."""
import itertools

import numpy as np
import pytest

import rgraph as rg
from rgraph import ops

ACTIVATIONS = sorted(ops.ACTIVATIONS)
LOSSES = ["softmax_cross_entropy", "mse"]


def _configs():
    """Every activation with both losses; depth 1-4, widths 1-20, batch 1-7, l2 on and off, seeded."""
    rng = np.random.default_rng(2026)
    for k, (act, loss) in enumerate(itertools.product(ACTIVATIONS, LOSSES)):
        depth = 1 + k % 4
        widths = [int(w) for w in rng.integers(1, 21, depth + 1)]
        if depth >= 3:  # keep dense H affordable: at most ~600 parameters
            widths = [min(w, 9) for w in widths]
        widths[-1] = max(widths[-1], 2) if loss == "softmax_cross_entropy" else widths[-1]
        yield pytest.param(act, loss, widths, int(rng.integers(1, 8)), [0.0, 1e-2][k % 2],
                           id=f"{act}-{loss}-{'x'.join(map(str, widths))}")


@pytest.mark.parametrize("activation, loss, widths, batch, l2", list(_configs()))
def test_passes_match_dense_references(activation, loss, widths, batch, l2):
    g = rg.nn.mlp(widths, activation=activation, loss=loss, l2=l2)
    if activation == "relu":  # keep pre-activations away from the kink, where differences are invalid
        report = _check_away_from_kinks(g, batch)
    else:
        report = rg.check_graph(g, batch_size=batch, seed=len(widths))
    assert report.ok, str(report)


def _check_away_from_kinks(g, batch):
    for seed in range(20):
        prog = rg.compile(g)
        rng = np.random.default_rng(seed)
        theta = prog.init_params(seed) + 0.1 * rng.standard_normal(prog.size)
        data = {"x": rng.standard_normal((batch, g.inputs["x"].shape[1]))}
        y = g.inputs["y"]
        data["y"] = rng.integers(0, g.z.shape[1], batch) if y.dtype == "int64" else rng.standard_normal((batch, g.z.shape[1]))
        pre = [n for n in rg.graph.topo_order([g.z]) if n.op.name == "add" and n.inputs[0].op.name == "matmul"]
        views = prog.view(theta)
        feed = {g.inputs["x"]: data["x"], **{p: views[p.name] for p in g.params.values()}}
        if all(np.min(np.abs(rg.evaluate(n, feed))) > 1e-3 for n in pre):
            return rg.check_graph(g, data, theta=theta)
    pytest.skip("no sample away from the relu kinks")


def test_gauss_newton_is_psd_and_hessian_differs_from_it():
    """With a nonlinear network, H = G + (second-order term): the check would pass trivially if hv were gv."""
    g = rg.nn.mlp([3, 4, 3], activation="tanh", l2=0.0)
    prog = rg.compile(g)
    rng = np.random.default_rng(0)
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((5, 3)), "y": rng.integers(0, 3, 5)})
    eye = np.eye(prog.size)
    G = np.stack([st.gv(e) for e in eye], 1)
    H = np.stack([st.hv(e) for e in eye], 1)
    assert np.linalg.eigvalsh(G).min() > -1e-12
    assert np.abs(H - G).max() > 1e-3 * np.abs(G).max()


def test_linear_model_hessian_equals_gauss_newton():
    """For a linear network J is constant, so H = G exactly."""
    g = rg.nn.mlp([3, 4], loss="softmax_cross_entropy", l2=1e-3)
    prog = rg.compile(g)
    rng = np.random.default_rng(1)
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((6, 3)), "y": rng.integers(0, 4, 6)})
    v = rng.standard_normal(prog.size)
    np.testing.assert_allclose(st.hv(v), st.gv(v), rtol=1e-12, atol=1e-14)


def test_mse_gauss_newton_matches_closed_form():
    """mse = (1/N) sum |z - t|^2 has B = 2I/N, so G v = (2/N) J^T J v + l2 v."""
    g = rg.nn.mlp([3, 5, 2], activation="sigmoid", loss="mse", l2=0.1)
    prog = rg.compile(g)
    rng = np.random.default_rng(3)
    n = 4
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((n, 3)), "y": rng.standard_normal((n, 2))})
    v = rng.standard_normal(prog.size)
    J = np.stack([st.jv(e).ravel() for e in np.eye(prog.size)], 1)
    np.testing.assert_allclose(st.gv(v), 2.0 / n * J.T @ (J @ v) + 0.1 * v, rtol=1e-10)


def test_float32_and_float64_agree_end_to_end():
    g = rg.nn.mlp([6, 8, 8, 3], activation="swish", l2=1e-3)
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    results = {}
    for dtype in ("float32", "float64"):
        prog = rg.compile(g, dtype=dtype)
        theta = prog.init_params(0)
        st = prog.bind(theta, {"x": X.astype(dtype), "y": Y})
        v = np.linspace(-1, 1, prog.size).astype(dtype)
        u = np.ones((7, 3), dtype)
        out = {"loss": np.float64(st.loss), "grad": st.grad, "jv": st.jv(v), "jtu": st.jtu(u), "gv": st.gv(v), "hv": st.hv(v)}
        for name, value in out.items():
            if name != "loss":
                assert value.dtype == np.dtype(dtype), (name, value.dtype)
        results[dtype] = out
    for name in results["float64"]:
        np.testing.assert_allclose(results["float32"][name], results["float64"][name], rtol=2e-4, atol=2e-5, err_msg=name)


def test_products_are_linear_in_v_and_cached_per_bind():
    g = rg.nn.mlp([4, 6, 3], activation="softplus", l2=1e-2)
    prog = rg.compile(g)
    rng = np.random.default_rng(7)
    st = prog.bind(prog.init_params(1), {"x": rng.standard_normal((5, 4)), "y": rng.integers(0, 3, 5)})
    a, b = rng.standard_normal(prog.size), rng.standard_normal(prog.size)
    for product in (st.gv, st.hv):
        np.testing.assert_allclose(product(2 * a - b), 2 * product(a) - product(b), rtol=1e-10, atol=1e-12)
    first = st.grad
    cached = st._cache["grad"]
    second = st.grad
    assert st._cache["grad"] is cached  # computed once per bind
    assert second is not first and np.array_equal(first, second)  # each a copy the caller owns
