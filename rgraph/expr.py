"""Scalar expressions: the IR of elementwise ops.

An elementwise op is declared by a scalar expression (``lambda x: x * E.sigmoid(x)``). This module
builds such expressions (hash-consed, simplified as they are built), differentiates them symbolically
(so f', f'', ... come for free), evaluates them with an array namespace (the reference interpreter)
and prints them for each backend from a printer table (NumPy source, numexpr strings, CUDA C).

    >>> from rgraph.expr import E, var, diff, render
    >>> x = var("x")
    >>> render(diff(x * E.sigmoid(x), "x"), "numpy")
    '(sigmoid(x) + (x * (sigmoid(x) * (1.0 - sigmoid(x)))))'
"""
from __future__ import annotations

import math
import operator

__all__ = ["Expr", "E", "var", "const", "where", "diff", "evaluate", "render", "variables", "subexpressions",
           "operations", "PRINTERS"]

UNARY = ("neg", "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "abs", "sign")
BINARY = ("add", "mul", "div", "pow", "lt", "le", "gt", "ge", "eq", "ne")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


class Expr:
    """An immutable, hash-consed scalar expression node: equal structure means the same object."""

    __slots__ = ("op", "args", "value", "__weakref__")
    _table: dict = {}

    def __new__(cls, op, args=(), value=None):
        key = (op, tuple(id(a) for a in args), value)
        node = cls._table.get(key)
        if node is None:
            node = object.__new__(cls)
            node.op, node.args, node.value = op, tuple(args), value
            cls._table[key] = node  # args stay alive through node.args, so ids stay unique
        return node

    # operators build simplified nodes
    def __add__(self, other): return add(self, lift(other))
    def __radd__(self, other): return add(lift(other), self)
    def __sub__(self, other): return add(self, neg(lift(other)))
    def __rsub__(self, other): return add(lift(other), neg(self))
    def __mul__(self, other): return mul(self, lift(other))
    def __rmul__(self, other): return mul(lift(other), self)
    def __truediv__(self, other): return div(self, lift(other))
    def __rtruediv__(self, other): return div(lift(other), self)
    def __pow__(self, other): return power(self, lift(other))
    def __rpow__(self, other): return power(lift(other), self)
    def __neg__(self): return neg(self)
    def __abs__(self): return E.abs(self)
    def __lt__(self, other): return compare("lt", self, lift(other))
    def __le__(self, other): return compare("le", self, lift(other))
    def __gt__(self, other): return compare("gt", self, lift(other))
    def __ge__(self, other): return compare("ge", self, lift(other))

    def __bool__(self):
        raise TypeError("a scalar expression has no truth value, so Python's if/and/or/not cannot branch on it "
                        "(the op would silently take one branch); use E.where(cond, a, b), E.maximum or E.minimum")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's functions on an expression (np.exp(x)) mean E's, where E has them."""
        fn = _numpy_function(ufunc.__name__) if method == "__call__" else None
        if fn is None or kwargs:
            raise TypeError(f"np.{ufunc.__name__} is not a scalar-expression function; use +, -, *, /, **, "
                            f"comparisons and E.{', E.'.join(E_FUNCTIONS)}")
        return fn(*inputs)

    def __repr__(self):
        return render(self, "numpy")

    @property
    def is_const(self):
        return self.op == "const"


def const(value) -> Expr:
    return Expr("const", (), float(value))


def var(name: str) -> Expr:
    return Expr("var", (), name)


def lift(x) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return const(x)
    raise TypeError(f"cannot use {type(x).__name__} {x!r} in a scalar expression")


ZERO, ONE = const(0.0), const(1.0)


def _is(e, value):
    return e.op == "const" and e.value == value


# --- smart constructors: fold constants and drop identities as nodes are built ---

def add(a, b):
    if a.is_const and b.is_const:
        return const(a.value + b.value)
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    if b.is_const:  # constants first keeps printed forms canonical: 1.0 + x
        a, b = b, a
    return Expr("add", (a, b))


def mul(a, b):
    if a.is_const and b.is_const:
        return const(a.value * b.value)
    if b.is_const:
        a, b = b, a
    if _is(a, 0.0):
        return ZERO
    if _is(a, 1.0):
        return b
    if _is(a, -1.0):
        return neg(b)
    if a.is_const and b.op == "mul" and b.args[0].is_const:
        return mul(const(a.value * b.args[0].value), b.args[1])
    return Expr("mul", (a, b))


def neg(a):
    if a.is_const:
        return const(-a.value)
    if a.op == "neg":
        return a.args[0]
    return Expr("neg", (a,))


def div(a, b):
    if _is(b, 1.0):
        return a
    if _is(a, 0.0):
        return ZERO
    if a.is_const and b.is_const and b.value != 0.0:
        return const(a.value / b.value)
    if b.is_const and b.value != 0.0:
        return mul(const(1.0 / b.value), a)
    return Expr("div", (a, b))


def power(a, b):
    if _is(b, 1.0):
        return a
    if _is(b, 0.0):
        return ONE
    if a.is_const and b.is_const:
        return const(a.value ** b.value)
    return Expr("pow", (a, b))


def compare(op, a, b):
    return Expr(op, (a, b))


def where(cond, a, b):
    a, b = lift(a), lift(b)
    if a is b:
        return a
    return Expr("where", (cond, a, b))


def _unary(op):
    folds = {"exp": math.exp, "log": math.log, "log1p": math.log1p, "sqrt": math.sqrt, "tanh": math.tanh,
             "abs": abs, "sigmoid": lambda v: 0.5 * math.tanh(0.5 * v) + 0.5,
             "sign": lambda v: float((v > 0) - (v < 0))}

    def build(a):
        a = lift(a)
        if a.is_const and op in folds:
            return const(folds[op](a.value))
        return Expr(op, (a,))
    build.__name__ = op
    return build


class E:
    """Namespace of the functions an elementwise expression may use: ``E.exp(x)``, ``E.where(c, a, b)``."""
    exp, log, log1p, sqrt = _unary("exp"), _unary("log"), _unary("log1p"), _unary("sqrt")
    tanh, sigmoid, abs, sign = _unary("tanh"), _unary("sigmoid"), _unary("abs"), _unary("sign")
    where = staticmethod(where)
    const = staticmethod(const)

    @staticmethod
    def maximum(a, b):
        a, b = lift(a), lift(b)
        return where(a > b, a, b)

    @staticmethod
    def minimum(a, b):
        a, b = lift(a), lift(b)
        return where(a < b, a, b)


E_FUNCTIONS = ("exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "abs", "sign", "where", "maximum", "minimum")
NUMPY_OPERATORS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv,
                   "power": operator.pow, "negative": operator.neg, "absolute": abs, "less": operator.lt,
                   "less_equal": operator.le, "greater": operator.gt, "greater_equal": operator.ge}


def _numpy_function(name):
    """The expression function standing for NumPy's ufunc ``name``, or None."""
    if name in NUMPY_OPERATORS:
        return NUMPY_OPERATORS[name]
    return getattr(E, name) if name in E_FUNCTIONS else None


# --- differentiation: one line per primitive, d(e)/d(name) given d(args) ---

def _d_rules():
    exp, log, sqrt, tanh, sigmoid, sign = E.exp, E.log, E.sqrt, E.tanh, E.sigmoid, E.sign

    def d_pow(e, da, db):
        a, b = e.args
        if b.is_const:
            return b * power(a, const(b.value - 1.0)) * da
        return e * (db * log(a) + b * da / a)

    return {
        "add": lambda e, da, db: da + db,
        "mul": lambda e, da, db: da * e.args[1] + e.args[0] * db,
        "div": lambda e, da, db: da / e.args[1] - e.args[0] * db / (e.args[1] * e.args[1]),
        "pow": d_pow,
        "neg": lambda e, da: -da,
        "exp": lambda e, da: e * da,
        "log": lambda e, da: da / e.args[0],
        "log1p": lambda e, da: da / (1.0 + e.args[0]),
        "sqrt": lambda e, da: da / (2.0 * e),
        "tanh": lambda e, da: (1.0 - e * e) * da,
        "sigmoid": lambda e, da: e * (1.0 - e) * da,
        "abs": lambda e, da: sign(e.args[0]) * da,
        "sign": lambda e, da: ZERO,
        "where": lambda e, dc, da, db: where(e.args[0], da, db),
        **{c: (lambda e, da, db: ZERO) for c in COMPARISONS},
    }


D_RULES = _d_rules()


def diff(e: Expr, name: str) -> Expr:
    """d e / d name, simplified. Derivatives of comparisons (and of sign) are zero."""
    memo = {}

    def d(node):
        if node in memo:
            return memo[node]
        if node.op == "const":
            out = ZERO
        elif node.op == "var":
            out = ONE if node.value == name else ZERO
        else:
            douts = [d(a) for a in node.args]
            out = ZERO if all(_is(x, 0.0) for x in douts) else D_RULES[node.op](node, *douts)
        memo[node] = out
        return out
    return d(e)


def subexpressions(e: Expr) -> set:
    """Every node of ``e``, ``e`` included."""
    seen, stack = set(), [e]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.args)
    return seen


def operations(exprs) -> list:
    """The nodes of ``exprs`` (one Expr or several) that compute something (neither variables nor
    constants), each once, arguments before their users. A list in a fixed order, not a set: a set of
    expressions iterates in the order of their string hashes, which change from process to process,
    and compiler stages walking it built differently numbered programs from run to run."""
    seen, order = set(), []
    for root in ([exprs] if isinstance(exprs, Expr) else exprs):
        stack = [(root, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen or n.op in ("var", "const"):
                continue
            seen.add(n)
            stack.append((n, True))
            stack.extend((a, False) for a in reversed(n.args))
    return order


def variables(e: Expr) -> set[str]:
    return {n.value for n in subexpressions(e) if n.op == "var"}


def substitute(e: Expr, mapping: dict[str, Expr]) -> Expr:
    """Replace variables by expressions (rebuilding through the simplifying constructors)."""
    memo = {}

    def go(n):
        if n in memo:
            return memo[n]
        if n.op == "var":
            out = mapping.get(n.value, n)
        elif n.op == "const":
            out = n
        else:
            out = rebuild(n.op, [go(a) for a in n.args])
        memo[n] = out
        return out
    return go(e)


def rebuild(op, args):
    """Build a node of kind ``op`` from new args through the simplifying constructors."""
    if op in BUILDERS:
        return BUILDERS[op](*args)
    return Expr(op, args)


BUILDERS = {"add": add, "mul": mul, "div": div, "pow": power, "neg": neg, "where": where,
            **{u: _unary(u) for u in UNARY if u != "neg"},
            **{c: (lambda a, b, c=c: compare(c, a, b)) for c in COMPARISONS}}


# --- the reference interpreter ---

def array_table(xp):
    """Op name -> the array function computing it: ufuncs (which also take ``out=``, see the NumPy
    backend's ufunc kernels) for all but sigmoid and where."""
    return {
        "add": xp.add, "mul": xp.multiply, "div": xp.divide, "pow": xp.power, "neg": xp.negative,
        "exp": xp.exp, "log": xp.log, "log1p": xp.log1p, "sqrt": xp.sqrt, "tanh": xp.tanh,
        "abs": xp.absolute, "sign": xp.sign,
        "sigmoid": lambda a: 0.5 * xp.tanh(0.5 * a) + 0.5,  # stable: no overflow for large |a|
        "where": xp.where,
        "lt": xp.less, "le": xp.less_equal, "gt": xp.greater, "ge": xp.greater_equal, "eq": xp.equal,
        "ne": xp.not_equal,
    }


def evaluate(exprs, env: dict, xp):
    """Evaluate one expression or a list of them, sharing common subexpressions.

    ``env`` maps variable names to arrays (or scalars). Constants stay Python floats, so NumPy's
    weak-scalar promotion keeps float32 inputs in float32.
    """
    table = array_table(xp)
    memo = {}

    def ev(n):
        r = memo.get(n)
        if r is None:
            if n.op == "const":
                r = n.value
            elif n.op == "var":
                r = env[n.value]
            else:
                r = table[n.op](*[ev(a) for a in n.args])
            memo[n] = r
        return r
    if isinstance(exprs, Expr):
        return ev(exprs)
    return [ev(e) for e in exprs]


# --- printers: one table per target; a new backend is one more table ---

_COMMON = {
    "add": "({0} + {1})", "mul": "({0} * {1})", "div": "({0} / {1})", "neg": "(-{0})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})",
}
PRINTERS = {
    "numpy": {**_COMMON, "pow": "({0} ** {1})", "exp": "exp({0})", "log": "log({0})", "log1p": "log1p({0})",
              "sqrt": "sqrt({0})", "tanh": "tanh({0})", "sigmoid": "sigmoid({0})", "abs": "abs({0})",
              "sign": "sign({0})", "where": "where({0}, {1}, {2})"},
    # numexpr has no sigmoid or sign: render them with where and tanh
    "numexpr": {**_COMMON, "pow": "({0} ** {1})", "exp": "exp({0})", "log": "log({0})", "log1p": "log1p({0})",
                "sqrt": "sqrt({0})", "tanh": "tanh({0})", "sigmoid": "(0.5 * tanh(0.5 * {0}) + 0.5)",
                "abs": "abs({0})", "sign": "where({0} > 0, 1, where({0} < 0, -1, 0))",
                "where": "where({0}, {1}, {2})"},
    "cuda": {**_COMMON, "pow": "pow({0}, {1})", "exp": "exp({0})", "log": "log({0})", "log1p": "log1p({0})",
             "sqrt": "sqrt({0})", "tanh": "tanh({0})", "sigmoid": "((T)0.5 * tanh((T)0.5 * {0}) + (T)0.5)",
             "abs": "fabs({0})", "sign": "(T)(({0} > 0) - ({0} < 0))", "where": "({0} ? {1} : {2})"},
    # Numba: T is the kernel's float type, so float32 stays float32 (bools and literals would promote);
    # vexp is backends/numba_math's exp, which LLVM vectorises (np.exp is a scalar call there)
    "numba": {**_COMMON, **{c: f"T({_COMMON[c]})" for c in COMPARISONS}, "pow": "np.power({0}, {1})",
              "exp": "vexp({0})", "log": "np.log({0})", "log1p": "np.log1p({0})", "sqrt": "np.sqrt({0})",
              "tanh": "np.tanh({0})", "sigmoid": "(T(1.0) / (T(1.0) + vexp(-{0})))", "abs": "abs({0})",
              "sign": "np.sign({0})", "where": "({1} if {0} else {2})"},
}
CONST_FORMAT = {"numpy": repr, "numexpr": repr, "cuda": lambda v: f"(T){v!r}", "numba": lambda v: f"T({v!r})"}


def render(e: Expr, target: str, names: dict | None = None) -> str:
    """Print ``e`` as one inline expression for ``target`` ("numpy", "numexpr", "cuda" or "numba").

    ``names`` renames variables (and may map whole subexpressions to temporaries).
    """
    table, fmt_const = PRINTERS[target], CONST_FORMAT[target]
    names = names or {}
    memo = {}

    def pr(n):
        if n in names:
            return names[n]
        if n.op == "var":
            return names.get(n.value, n.value)
        if n.op == "const":
            return fmt_const(n.value)
        if n not in memo:
            if n.op not in table:
                raise NotImplementedError(f"no {target} printer for scalar op {n.op!r}")
            memo[n] = table[n.op].format(*[pr(a) for a in n.args])
        return memo[n]
    return pr(e)
