"""User-defined ops work in all five passes without touching the engine."""
import numpy as np

import rgraph as rg
from rgraph import E, ops
from rgraph.op import Op

gelu = rg.elementwise("test_gelu", lambda x: 0.5 * x * (1.0 + E.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))),
                      register_op=False)


class Cube(Op):
    """y = x^3 with hand rules. vjp: g 3x^2; R{y} = 3x^2 R{x}."""
    name = "test_cube"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x * x * x

    def vjp(self, node, g):
        return [3.0 * g * ops.square(node.inputs[0])]

    def rop(self, node, tangents):
        return 3.0 * ops.square(node.inputs[0]) * tangents[0]


class CubeVjpOnly(Cube):
    """The same op with no rop: the engine derives it by transposing the vjp."""
    name = "test_cube_vjp_only"
    rop = Op.rop


def _net(act_a, act_b):
    g = rg.Graph("custom")
    x, y = g.input("x", (None, 3)), g.input("y", (None,), dtype="int64")
    W1, b1 = g.param("W1", (3, 4)), g.param("b1", (4,), init="zeros")
    W2, b2 = g.param("W2", (4, 3), init="glorot_uniform"), g.param("b2", (3,), init="zeros")
    h = act_a(ops.dense(x, W1, b1))
    z = g.output(ops.dense(act_b(0.5 * h), W2, b2))
    g.set_loss(ops.softmax_cross_entropy(z, y), l2=1e-3)
    return g


def test_gelu_expression_op_rules():
    assert rg.check_op(gelu, (3, 4)).ok


def test_hand_ruled_primitive_rules():
    assert rg.check_op(Cube(), (3, 4)).ok
    assert rg.check_op(CubeVjpOnly(), (3, 4)).ok


def test_custom_ops_in_every_pass():
    for act_b in (Cube(), CubeVjpOnly()):
        report = rg.check_graph(_net(gelu, act_b), batch_size=4)
        assert report.ok, str(report)


def test_gelu_matches_its_closed_form():
    xs = np.linspace(-3, 3, 13)
    out = gelu.forward(np, xs)
    ref = 0.5 * xs * (1 + np.tanh(np.sqrt(2 / np.pi) * (xs + 0.044715 * xs ** 3)))
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_registry_lists_builtins_and_refuses_their_names():
    assert {"swish", "matmul", "softplus"} <= set(rg.REGISTRY)
    import pytest
    with pytest.raises(ValueError, match="'swish' is a built-in op"):
        rg.elementwise("swish", lambda x: x)
    with pytest.raises(ValueError, match="must be an identifier"):
        rg.elementwise("my op", lambda x: x)


def test_a_user_op_defined_again_replaces_the_old_in_the_registry():
    """A notebook cell defining an op runs twice; graphs built with the first op keep it."""
    first = rg.elementwise("twice_defined", lambda x: 2.0 * x)
    second = rg.elementwise("twice_defined", lambda x: 3.0 * x)
    assert rg.REGISTRY["twice_defined"] is second
    np.testing.assert_allclose(first.forward(np, np.ones(2)), 2.0)
