"""Shared builders for the compiler tests."""
import numpy as np

import rgraph as rg
from rgraph import ops

ENTRIES = ("loss", "grad", "jv", "jtu", "gv", "hv")


def small_cnn():
    """An NCHW graph with a (1, C, 1, 1) bias broadcast over 4-D activations (fusion and CUDA indexing
    on 4-D shapes), reshaped into a dense softmax head."""
    g = rg.Graph("cnn")
    x = g.input("x", (None, 3, 4, 4))
    y = g.input("y", (None,), dtype="int64")
    b = g.param("c.b", (1, 3, 1, 1), init="he_normal")
    s = g.param("c.s", (1, 3, 1, 1), init="he_normal")
    h = ops.swish(x * s + b)
    h = ops.reshape(h, (None, 48))
    W = g.param("fc.W", (48, 5))
    z = g.output(ops.dense(h, W, g.param("fc.b", (5,), init="zeros")))
    g.set_loss(ops.softmax_cross_entropy(z, y), l2=1e-3)
    return g


def batch_for(g, n, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    x = g.inputs["x"]
    X = rng.standard_normal((n,) + x.shape[1:]).astype(dtype)
    y = g.inputs["y"]
    if y.dtype == "int64":
        Y = rng.integers(0, g.z.shape[1], n)
    else:
        Y = rng.standard_normal((n,) + y.shape[1:]).astype(dtype)
    return {"x": X, "y": Y}


def products(prog, batch, seed=0):
    """loss, grad, jv, jtu, gv, hv of ``prog`` at its seed-0 parameters, as host arrays."""
    rng = np.random.default_rng(seed + 100)
    theta = prog.init_params(seed=seed)
    st = prog.bind(theta, batch)
    v = prog.backend.asarray(rng.standard_normal(prog.size).astype(prog.dtype))
    u = prog.backend.asarray(rng.standard_normal(st.output.shape).astype(prog.dtype))
    host = prog.backend.to_host
    return {"loss": np.asarray(st.loss), "grad": host(st.grad), "jv": host(st.jv(v)), "jtu": host(st.jtu(u)),
            "gv": host(st.gv(v)), "hv": host(st.hv(v)), "output": host(st.output)}


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
