"""Elementwise ops, each one scalar expression; every derivative is derived from it.

An entry overrides a derivative only where the derived form is numerically poor (softplus).
"""
from rgraph.expr import E, const, var
from rgraph.op import elementwise, expr_op

add = elementwise("add", lambda a, b: a + b)
sub = elementwise("sub", lambda a, b: a - b)
mul = elementwise("mul", lambda a, b: a * b)
div = elementwise("div", lambda a, b: a / b)
neg = elementwise("neg", lambda x: -x)
exp = elementwise("exp", lambda x: E.exp(x))
log = elementwise("log", lambda x: E.log(x))
log1p = elementwise("log1p", lambda x: E.log1p(x))
sqrt = elementwise("sqrt", lambda x: E.sqrt(x))
square = elementwise("square", lambda x: x * x)
sigmoid = elementwise("sigmoid", lambda x: E.sigmoid(x))
tanh = elementwise("tanh", lambda x: E.tanh(x))
relu = elementwise("relu", lambda x: E.maximum(x, 0.0))
swish = elementwise("swish", lambda x: x * E.sigmoid(x))
# softplus(x) = max(x, 0) + log1p(exp(-|x|)) never overflows; its derivative is sigmoid(x) exactly,
# which is smoother to differentiate again than the derivative of the stable form.
softplus = elementwise("softplus", lambda x: E.maximum(x, 0.0) + E.log1p(E.exp(-E.abs(x))),
                       grads=[lambda x: E.sigmoid(x)])
where = elementwise("where", lambda cond, a, b: E.where(cond, a, b))
greater = elementwise("greater", lambda a, b: a > b)
greater_equal = elementwise("greater_equal", lambda a, b: a >= b)
less = elementwise("less", lambda a, b: a < b)
less_equal = elementwise("less_equal", lambda a, b: a <= b)


def power(x, p):
    """x ** p for a constant exponent p (the op is made once per exponent)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise TypeError(f"power: the exponent must be a Python number, got {type(p).__name__}")
    return expr_op(f"pow{p:g}", var("x") ** const(p), ["x"])(x)


ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softplus": softplus, "swish": swish}
