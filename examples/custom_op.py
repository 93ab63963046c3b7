"""Extend rgraph with your own ops, without touching the engine.

1. GELU from a scalar expression: every derivative (for Jv, Gv and Hv) comes from the expression.
2. A primitive op with hand-written rules (vjp and rop written with ops, so they are differentiable).
3. The rule checker on both, and the whole-network checker on a net using them.

    python examples/custom_op.py
"""
import numpy as np

import rgraph as rg
from rgraph import E, ops

gelu = rg.elementwise("gelu", lambda x: 0.5 * x * (1.0 + E.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))))


class RowScale(rg.Op):
    """y = x * s[:, None]: scale each row of x (N, F) by s (N,). Bilinear, so the rule reads like a table.

    vjp: g_x = g s[:, None],  g_s = sum_j g_ij x_ij.   R{y} = R{x} s + x R{s} (derived from linear_in).
    """
    name = "row_scale"
    linear_in = (0, 1)

    def infer(self, x, s):
        if x.ndim != 2 or s.shape != x.shape[:1]:
            raise rg.ShapeError(f"expects x (N, F) and s (N,), got {x} and {s}")
        return x

    def forward(self, xp, x, s):
        return x * s[:, None]

    def vjp(self, node, g):
        x, s = node.inputs
        return [row_scale(g, s), ops.sum(g * x, axis=1)]


row_scale = rg.register(RowScale())


def main():
    print(rg.check_op(gelu, (3, 4)))
    print(rg.check_op(row_scale, (3, 4), (3,)))

    g = rg.Graph("custom")
    x, y = g.input("x", (None, 5)), g.input("y", (None,), dtype="int64")
    W1, b1 = g.param("fc0.W", (5, 6)), g.param("fc0.b", (6,), init="zeros")
    W2, b2 = g.param("fc1.W", (6, 3)), g.param("fc1.b", (3,), init="zeros")
    h = gelu(ops.dense(x, W1, b1))
    h = row_scale(h, ops.sigmoid(ops.sum(h, axis=1)))  # a learned-gate-like use of the primitive
    z = g.output(ops.dense(h, W2, b2))
    g.set_loss(ops.softmax_cross_entropy(z, y), l2=1e-3)
    print(rg.check_graph(g, batch_size=4))


if __name__ == "__main__":
    main()
