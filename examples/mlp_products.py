"""Build an MLP, bind a batch, and print loss, gradient norm and the Gauss-Newton and Hessian products,
each checked against an independent finite-difference computation.

    python examples/mlp_products.py
"""
import time

import numpy as np

import rgraph as rg
from rgraph import ops


def build(sizes=(64, 128, 128, 10), l2=1e-3):
    g = rg.Graph("mlp")
    x = g.input("x", (None, sizes[0]))
    y = g.input("y", (None,), dtype="int64")
    h = x
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = g.param(f"fc{i}.W", (n_in, n_out), init="he_normal")
        b = g.param(f"fc{i}.b", (n_out,), init="zeros")
        h = ops.dense(h, W, b)
        if i < len(sizes) - 2:
            h = ops.swish(h)
    z = g.output(h)
    g.set_loss(ops.softmax_cross_entropy(z, y), l2=l2)
    return g


def main():
    rng = np.random.default_rng(0)
    g = build()
    prog = rg.compile(g, backend="numpy", dtype="float64")
    theta = prog.init_params(seed=0)
    X, Y = rng.standard_normal((256, 64)), rng.integers(0, 10, 256)
    t0 = time.perf_counter()
    st = prog.bind(theta, {"x": X, "y": Y})
    print(f"{prog}\nloss {st.loss:.6f}   |grad| {np.linalg.norm(st.grad):.6f}   (bind + grad {time.perf_counter() - t0:.3f} s)")

    v = rng.standard_normal(prog.size)
    v /= np.linalg.norm(v)
    for name, product in (("Gv", st.gv), ("Hv", st.hv)):
        t0 = time.perf_counter()
        out = product(v)
        print(f"{name}: |{name}| {np.linalg.norm(out):.6f}  v.{name} {v @ out:.6f}  ({1e3 * (time.perf_counter() - t0):.1f} ms)")

    # Hv against central differences of the gradient; Gv against J^T B J with J v by differences of z
    h = 1e-5
    grad_at = lambda t: prog.bind(t, {"x": X, "y": Y}).grad
    hv_fd = (grad_at(theta + h * v) - grad_at(theta - h * v)) / (2 * h)
    print(f"Hv vs finite differences of the gradient: relative error {np.linalg.norm(st.hv(v) - hv_fd) / np.linalg.norm(hv_fd):.2e}")
    out_at = lambda t: prog.bind(t, {"x": X, "y": Y}).output
    jv_fd = (out_at(theta + h * v) - out_at(theta - h * v)) / (2 * h)
    print(f"Jv vs finite differences of the output:   relative error {np.linalg.norm(st.jv(v) - jv_fd) / np.linalg.norm(jv_fd):.2e}")
    cost = prog.cost("gv", batch_size=256)
    print(f"per-call gv: {cost['vector']['gemms']} GEMMs, {cost['ratio_to_grad']:.2f}x the FLOPs of a gradient")


if __name__ == "__main__":
    main()
