"""Scalar expressions: simplification, symbolic derivatives, the interpreter and the printers."""
import math

import numexpr
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rgraph as rg
from rgraph.expr import E, const, diff, evaluate, render, subexpressions, var

x, y = var("x"), var("y")


def test_hash_consing_makes_equal_structure_identical():
    assert (x * E.sigmoid(x)) is (x * E.sigmoid(x))
    assert E.exp(x + 1.0) is E.exp(1.0 + x)  # constants are put first


@pytest.mark.parametrize("build, expected", [
    (lambda: x * 1.0, "x"), (lambda: 0.0 * x, "0.0"), (lambda: x + 0.0, "x"), (lambda: -(-x), "x"),
    (lambda: x / 1.0, "x"), (lambda: x ** 1.0, "x"), (lambda: const(2.0) * 3.0, "6.0"),
    (lambda: E.where(x > 0, y, y), "y"), (lambda: 2.0 * (3.0 * x), "(6.0 * x)"),
])
def test_simplification_folds_constants_and_identities(build, expected):
    assert render(build(), "numpy") == expected


def test_derivatives_of_swish_reuse_the_sigmoid_node():
    d = diff(x * E.sigmoid(x), "x")
    s = E.sigmoid(x)
    assert render(d, "numpy").count("sigmoid(x)") == 3
    assert s in subexpressions(d)


FUNCS = {
    "exp": (E.exp, math.exp), "tanh": (E.tanh, math.tanh), "sigmoid": (E.sigmoid, lambda a: 1 / (1 + math.exp(-a))),
    "log1p_sq": (lambda a: E.log1p(a * a), lambda a: math.log1p(a * a)),
    "sqrt_sq": (lambda a: E.sqrt(1.0 + a * a), lambda a: math.sqrt(1 + a * a)),
    "div": (lambda a: a / (2.0 + a * a), lambda a: a / (2 + a * a)),
    "pow": (lambda a: (1.5 + a * a) ** 1.5, lambda a: (1.5 + a * a) ** 1.5),
    "abs": (lambda a: E.abs(a) * a, lambda a: abs(a) * a),
    "where": (lambda a: E.where(a > 0.3, a * a, -a), lambda a: a * a if a > 0.3 else -a),
}


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(FUNCS)), a=st.floats(-2.0, 2.0).filter(lambda t: abs(t - 0.3) > 1e-3 and abs(t) > 1e-3))
def test_first_and_second_derivatives_match_finite_differences(name, a):
    sym, ref = FUNCS[name]
    f = sym(x)
    d1, d2 = diff(f, "x"), diff(diff(f, "x"), "x")
    h = 1e-5
    fd1 = (ref(a + h) - ref(a - h)) / (2 * h)
    fd2 = (ref(a + h) - 2 * ref(a) + ref(a - h)) / h ** 2
    assert evaluate(f, {"x": a}, np) == pytest.approx(ref(a), rel=1e-12, abs=1e-12)
    assert float(evaluate(d1, {"x": a}, np)) == pytest.approx(fd1, rel=1e-7, abs=1e-7)
    assert float(evaluate(d2, {"x": a}, np)) == pytest.approx(fd2, rel=1e-3, abs=1e-3)


def test_partial_derivatives_of_two_variables():
    f = x * y + E.exp(x - y)
    assert float(evaluate(diff(f, "y"), {"x": 0.5, "y": 0.2}, np)) == pytest.approx(0.5 - math.exp(0.3))
    assert diff(x * x, "y") is const(0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numexpr_printer_agrees_with_the_interpreter(dtype):
    rng = np.random.default_rng(0)
    env = {"x": rng.standard_normal(50).astype(dtype), "y": rng.standard_normal(50).astype(dtype)}
    for f in [x * E.sigmoid(x), E.where(x > y, E.tanh(x), y * y), E.log1p(E.exp(-E.abs(x))) + E.maximum(x, 0.0),
              diff(diff(x * E.sigmoid(x), "x"), "x"), E.sign(x) * E.sqrt(E.abs(y))]:
        ref = evaluate(f, env, np)
        got = numexpr.evaluate(render(f, "numexpr"), local_dict=env)
        np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_numpy_printer_source_evaluates_to_the_interpreter():
    f = E.where(x > 0, x, 0.5 * x) * E.sigmoid(y)
    a, b = np.linspace(-2, 2, 7), np.linspace(1, -1, 7)
    ns = {"where": np.where, "sigmoid": lambda t: 1 / (1 + np.exp(-t)), "x": a, "y": b}
    np.testing.assert_allclose(eval(render(f, "numpy"), ns), evaluate(f, {"x": a, "y": b}, np), rtol=1e-14)


def test_cuda_printer_has_a_rule_for_every_primitive():
    from rgraph.expr import PRINTERS
    assert set(PRINTERS["numpy"]) == set(PRINTERS["numexpr"]) == set(PRINTERS["cuda"])


def test_sigmoid_is_stable_for_large_arguments():
    with np.errstate(all="raise"):
        out = evaluate(E.sigmoid(x), {"x": np.array([-1000.0, 0.0, 1000.0])}, np)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_non_numbers_are_rejected():
    with pytest.raises(TypeError, match="scalar expression"):
        x + "a"


def test_python_branching_on_an_expression_is_refused():
    """`x if x > 0 else 0 * x` would silently take one branch for every element."""
    with pytest.raises(TypeError, match=r"no truth value.*E\.where"):
        rg.elementwise("relu_by_if", lambda x: x if x > 0 else 0.0 * x, register_op=False)
    with pytest.raises(TypeError, match="no truth value"):
        bool(x > 0)


def test_numpy_functions_and_python_operators_on_expressions():
    a = np.array([-1.5, 0.5, 2.0])
    cases = {np.exp(x): np.exp(a), np.maximum(x, 0.0): np.maximum(a, 0.0), 2.0 ** x: 2.0 ** a, abs(x): np.abs(a),
             np.multiply(3.0, x): 3.0 * a, np.subtract(1.0, x): 1.0 - a, np.tanh(x): np.tanh(a)}
    for e, want in cases.items():
        np.testing.assert_allclose(evaluate([e], {"x": a}, np)[0], want, err_msg=str(e))
    with pytest.raises(TypeError, match=r"np\.sin is not a scalar-expression function; .*E\.exp"):
        np.sin(x)
