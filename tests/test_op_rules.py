"""Every built-in op through the numerical rule checker (float64), from one table of cases; and the
checker catches planted wrong rules, naming the op and the rule."""
import numpy as np
import pytest

import rgraph as rg
from rgraph import E, ops
from rgraph.graph import Type
from rgraph.op import Op

rng = np.random.default_rng(42)
POSITIVE = np.abs(rng.standard_normal((3, 4))) + 0.5
AWAY_FROM_KINK = np.sign(rng.standard_normal((3, 4))) * (np.abs(rng.standard_normal((3, 4))) + 0.2)
LABELS = np.array([0, 3, 1])

CASES = {
    "add": (ops.add, (3, 4), (4,)),
    "sub": (ops.sub, (3, 1), (3, 4)),
    "mul": (ops.mul, (3, 4), (3, 4)),
    "div": (ops.div, (3, 4), POSITIVE),
    "neg": (ops.neg, (3, 4)),
    "exp": (ops.exp, (3, 4)),
    "log": (ops.log, POSITIVE),
    "log1p": (ops.log1p, POSITIVE),
    "sqrt": (ops.sqrt, POSITIVE),
    "square": (ops.square, (3, 4)),
    "sigmoid": (ops.sigmoid, (3, 4)),
    "tanh": (ops.tanh, (3, 4)),
    "relu": (ops.relu, AWAY_FROM_KINK),
    "softplus": (ops.softplus, (3, 4)),
    "swish": (ops.swish, (3, 4)),
    "where": (lambda a, b: ops.where(ops.greater(a, b), a * b, a - b), AWAY_FROM_KINK, np.zeros((3, 4))),
    "power": (lambda a: ops.power(a, 3), (3, 4)),
    "power_frac": (lambda a: ops.power(a, 1.5), POSITIVE),
    "matmul": (ops.matmul, (3, 5), (5, 2)),
    "matmul_ta": (lambda a, b: ops.matmul(a, b, transpose_a=True), (5, 3), (5, 2)),
    "matmul_tb": (lambda a, b: ops.matmul(a, b, transpose_b=True), (3, 5), (2, 5)),
    "matmul_tab": (lambda a, b: ops.matmul(a, b, transpose_a=True, transpose_b=True), (5, 3), (2, 5)),
    "dense": (ops.dense, (3, 5), (5, 2), (2,)),
    "matmul_add": (lambda c, a, b: ops.matmul_add_op(c, a, b), (3, 2), (3, 5), (5, 2)),
    "matmul_add_tb": (lambda c, a, b: ops.matmul_add_op(c, a, b, transpose_b=True), (3, 2), (3, 5), (2, 5)),
    "concat": (lambda a, b: ops.concat(a, b, -1), (3, 4), (3, 2)),
    "concat_rows": (lambda a, b: ops.concat(a, b, 0), (2, 4), (3, 4)),
    "slice_axis": (lambda a: ops.slice_axis(a, 1, 1, 3), (3, 4)),
    "pad_axis": (lambda a: ops.pad_axis(a, 0, 2, 1), (3, 4)),
    "reshape": (lambda a: ops.reshape(a, (2, 6)), (3, 4)),
    "reshape_infer": (lambda a: ops.reshape(a, (-1,)), (3, 4)),
    "transpose": (lambda a: ops.transpose(a, (1, 0, 2)), (2, 3, 4)),
    "broadcast_to": (lambda a: ops.broadcast_to(a, (2, 3, 4)), (3, 1)),
    "sum_all": (ops.sum, (3, 4)),
    "sum_axis": (lambda a: ops.sum(a, axis=1, keepdims=True), (3, 4)),
    "mean": (lambda a: ops.mean(a, axis=(0, 2)), (2, 3, 4)),
    "logsumexp": (lambda a: ops.logsumexp(a, axis=1), (3, 4)),
    "softmax": (lambda a: ops.softmax(a, axis=-1), (3, 4)),
    "softmax_cross_entropy": (lambda z, y: ops.softmax_cross_entropy(z, y), (3, 4), LABELS),
    "mse": (ops.mse, (3, 4), (3, 4)),
    "stop_gradient_in_expr": (lambda a: a * ops.stop_gradient(ops.amax(a, axis=1, keepdims=True)) * 0 + a, (3, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_op_passes_the_checker(name):
    builder, *inputs = CASES[name]
    report = rg.check_op(builder, *inputs)
    assert report.ok and len(report.rows) == 5, str(report)


def test_every_core_op_has_a_checker_case():
    """A new op in the elementwise, linalg or loss family must come with a case above."""
    covered = {"add", "sub", "mul", "div", "neg", "exp", "log", "log1p", "sqrt", "square", "sigmoid", "tanh", "relu",
               "softplus", "swish", "where", "matmul", "matmul_add", "concat", "slice_axis", "pad_axis", "reshape", "transpose", "broadcast_to", "sum",
               "stop_gradient", "pow3", "pow1.5"}
    no_derivative = {"greater", "greater_equal", "less", "less_equal", "count", "amax", "onehot"}
    missing = set(ops.CORE_OPS) - covered - no_derivative
    assert not missing, f"ops without a checker case: {sorted(missing)}"


# --- planted wrong rules ---------------------------------------------------------------------

class Cube(Op):
    """x**3 with hand rules; ``mode`` plants one mistake."""
    def __init__(self, name, mode):
        self.name, self.mode = name, mode

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x ** 3

    def vjp(self, node, g):
        x = node.inputs[0]
        if self.mode == "second_order":  # right value, wrong derivative: hides x from differentiation
            return [g * 3.0 * ops.square(ops.stop_gradient(x))]
        return [g * 3.0 * ops.square(x)]

    def rop(self, node, tangents):
        x = node.inputs[0]
        scale = {"rop_factor": 6.0, "rop_sign": -3.0}.get(self.mode, 3.0)
        return tangents[0] * scale * ops.square(x)


@pytest.mark.parametrize("mode, rule", [
    ("rop_factor", "rop vs finite differences"),
    ("rop_sign", "rop vs finite differences"),
    ("second_order", "second order"),
])
def test_checker_names_the_op_and_the_wrong_rule(mode, rule):
    with pytest.raises(rg.CheckError) as info:
        rg.check_op(Cube(f"cube_{mode}", mode), (3, 2))
    message = str(info.value)
    assert f"cube_{mode}" in message and rule in message.split("\n")[0]


def test_right_hand_rules_pass():
    assert rg.check_op(Cube("cube_ok", "ok"), (3, 2)).ok


def test_wrong_vjp_is_caught():
    class BadVjp(Cube):
        def vjp(self, node, g):
            return [g * 2.0 * ops.square(node.inputs[0])]
    report = rg.check_op(BadVjp("cube_badvjp", "ok"), (3, 2), raise_on_fail=False)
    failed = {what for what, _, passed in report.rows if not passed}
    assert "vjp vs finite differences" in failed and "rop vs finite differences" not in failed


def test_wrong_elementwise_derivative_override_is_caught():
    bad = rg.elementwise("bad_softplus", lambda x: E.log1p(E.exp(x)), grads=[lambda x: E.sigmoid(2.0 * x)],
                         register_op=False)
    with pytest.raises(rg.CheckError, match="bad_softplus"):
        rg.check_op(bad, (4,))
