"""Graphs of symbolic values.

A ``Value`` is a node: the op that made it, its inputs, its attributes, its ``Type`` and the pass tag
it belongs to. Leaves are values whose op is a ``Leaf`` (inputs, parameters, constants, and the
tangent/cotangent seeds the derived passes introduce). A ``Graph`` names the leaves a user declared
and the network output and loss; it holds no other nodes: a value's ancestors are the graph.

    >>> import rgraph as rg
    >>> from rgraph import ops
    >>> g = rg.Graph("linear")
    >>> x = g.input("x", (None, 3))
    >>> W = g.param("W", (3, 2), init="he_normal")
    >>> z = g.output(x @ W)
    >>> z.shape
    (None, 2)
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import numpy as np

from .errors import ShapeError, fmt_shape

FLOAT = "float"  # the compute dtype, made concrete (float32/float64) when a program is compiled
DTYPES = (FLOAT, "int64", "bool")


@dataclass(frozen=True)
class Type:
    """Shape (``None`` is the batch dimension, only ever axis 0) and dtype ("float", "int64", "bool")."""
    shape: tuple
    dtype: str = FLOAT

    def __post_init__(self):
        shape = tuple(None if d is None else int(d) for d in self.shape)
        if any(d is None for d in shape[1:]):
            raise ShapeError(f"only axis 0 may be the batch dimension (None); got shape {fmt_shape(shape)}")
        if any(d is not None and d < 0 for d in shape):
            raise ShapeError(f"negative dimension in shape {fmt_shape(shape)}")
        if self.dtype not in DTYPES:
            raise ShapeError(f"unknown dtype {self.dtype!r}; use one of {DTYPES}")
        object.__setattr__(self, "shape", shape)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def is_float(self):
        return self.dtype == FLOAT

    def __str__(self):
        return f"{self.dtype}{fmt_shape(self.shape)}"


_ids = itertools.count()
_tag_stack = ["forward"]


@contextlib.contextmanager
def tagging(tag: str):
    """Tag every value created inside the block (the derived passes tag their nodes this way)."""
    _tag_stack.append(tag)
    try:
        yield
    finally:
        _tag_stack.pop()


class Value:
    """A symbolic array: ``op(*inputs, **attrs)`` with a static ``type``.

    Supports ``+ - * / @``, unary minus and comparisons-free NumPy broadcasting. ``id`` is the creation
    index, which orders nodes deterministically everywhere.
    """

    __slots__ = ("op", "inputs", "attrs", "type", "tag", "name", "id")

    def __init__(self, op, inputs, attrs, type_, name=None):
        self.op, self.inputs, self.attrs, self.type = op, tuple(inputs), dict(attrs), type_
        self.tag, self.name, self.id = _tag_stack[-1], name, next(_ids)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    @property
    def ndim(self):
        return self.type.ndim

    @property
    def is_leaf(self):
        return not self.inputs and getattr(self.op, "is_leaf", False)

    @property
    def label(self):
        """A short readable name: the user's name for leaves, else op name and creation index."""
        return self.name or f"{self.op.name}_{self.id}"

    def __repr__(self):
        return f"<Value {self.label}: {self.type} [{self.tag}]>"

    # Operators dispatch to the op library (imported lazily: ops/ builds on this module).
    def __add__(self, other): return _ops().add(self, other)
    def __radd__(self, other): return _ops().add(other, self)
    def __sub__(self, other): return _ops().sub(self, other)
    def __rsub__(self, other): return _ops().sub(other, self)
    def __mul__(self, other): return _ops().mul(self, other)
    def __rmul__(self, other): return _ops().mul(other, self)
    def __truediv__(self, other): return _ops().div(self, other)
    def __rtruediv__(self, other): return _ops().div(other, self)
    def __matmul__(self, other): return _ops().matmul(self, other)
    def __rmatmul__(self, other): return _ops().matmul(other, self)
    def __neg__(self): return _ops().neg(self)
    def __pow__(self, p): return _ops().power(self, p)

    @property
    def T(self):
        return _ops().transpose(self)

    def __bool__(self):
        raise TypeError("a symbolic Value has no truth value; use ops.where for conditionals")

    __hash__ = object.__hash__


def _ops():
    from rgraph import ops
    return ops


# --- leaves -----------------------------------------------------------------------------------

class Leaf:
    """Op of a leaf value. ``kind`` is input, param, const, tangent (v) or cotangent (u)."""
    is_leaf = True
    vjp = rop = None

    def __init__(self, kind):
        self.kind = self.name = kind

    def __repr__(self):
        return f"Leaf({self.kind})"


INPUT, PARAM, CONST, TANGENT, COTANGENT = (Leaf(k) for k in ("input", "param", "const", "tangent", "cotangent"))


def leaf(kind: Leaf, name: str, shape, dtype=FLOAT, **attrs) -> Value:
    return Value(kind, (), attrs, Type(tuple(shape), dtype), name=name)


def constant(value, dtype=FLOAT) -> Value:
    """A constant array baked into the graph (scalars included). Float constants follow the program dtype."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ShapeError(f"constant of dtype {arr.dtype} is not numeric")
    return Value(CONST, (), {"value": arr}, Type(arr.shape, dtype), name=None)


def is_kind(v: Value, kind: Leaf) -> bool:
    return v.op is kind


INITS = {}


def initializer(name):
    def register(fn):
        INITS[name] = fn
        return fn
    return register


def fans(shape):
    """(fan_in, fan_out): dense (in, out); conv OIHW (I*kh*kw, O*kh*kw); vectors (n, n)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


@initializer("zeros")
def _zeros(rng, shape):
    return np.zeros(shape)


@initializer("ones")
def _ones(rng, shape):
    return np.ones(shape)


@initializer("he_normal")
def _he_normal(rng, shape):
    fan_in, _ = fans(shape)
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


@initializer("glorot_uniform")
def _glorot_uniform(rng, shape):
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


class Graph:
    """A network: named inputs and parameters, one output ``z`` and a scalar loss.

    The objective the derived passes differentiate is ``f(theta) = loss + (l2/2) |theta|^2``.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: dict[str, Value] = {}
        self.params: dict[str, Value] = {}
        self.z: Value | None = None
        self.loss: Value | None = None
        self.l2 = 0.0
        self.loss_kind: str | None = None   # set_loss(kind=...): which predictive distribution KFAC samples

    def input(self, name: str, shape, dtype: str = FLOAT) -> Value:
        """Declare a batch input; ``None`` as the first dimension is the batch size, fixed at bind time."""
        self._check_new(name)
        v = leaf(INPUT, name, shape, dtype)
        self.inputs[name] = v
        return v

    def param(self, name: str, shape, init="he_normal") -> Value:
        """Declare a trainable parameter. ``init``: "zeros", "ones", "he_normal", "glorot_uniform" or a
        callable ``(rng, shape) -> array``."""
        self._check_new(name)
        if None in tuple(shape):
            raise ShapeError(f"parameter {name!r} has shape {fmt_shape(tuple(shape))}: parameters have no batch dimension")
        if not callable(init) and init not in INITS:
            raise ValueError(f"parameter {name!r}: unknown init {init!r}; use one of {sorted(INITS)} or a callable")
        v = leaf(PARAM, name, shape, FLOAT, init=init)
        self.params[name] = v
        return v

    def output(self, z: Value) -> Value:
        """Mark the network output z, where the Jacobian J ends and the loss (and its Hessian B) begins."""
        _check_value(z, "output")
        if z.ndim == 0 or z.shape[0] is not None:
            raise ShapeError(f"graph {self.name!r}: the output must be batch-major (N, ...); got {z.type}")
        if self.z is not None and self.z is not z:   # a second call would silently drop the first output
            raise ValueError(f"graph {self.name!r} already has an output ({self.z.label}, {self.z.type}); "
                             "a graph has one output: build a new graph for another")
        self.z = z
        return z

    def set_loss(self, loss: Value, l2: float = 0.0, kind: str | None = None) -> Value:
        """Set the scalar loss (already averaged over the batch) and the l2 coefficient (1/C in the papers).
        ``kind`` names the loss ("softmax_cross_entropy", "mse") for the optimisers that sample from the
        model's predictive distribution (KFAC, FITRE); rgraph.nn's builders give it."""
        _check_value(loss, "loss")
        if loss.shape != () or not loss.type.is_float:
            raise ShapeError(f"graph {self.name!r}: the loss must be a float scalar; got {loss.type}")
        if not (l2 >= 0.0 and np.isfinite(l2)):
            raise ValueError(f"graph {self.name!r}: l2 must be finite and >= 0; got {l2}")
        if kind is not None and not isinstance(kind, str):
            raise TypeError(f"graph {self.name!r}: the loss kind is a name such as 'mse'; got {kind!r}")
        self.loss, self.l2, self.loss_kind = loss, float(l2), kind
        return loss

    def _check_new(self, name):
        if not isinstance(name, str) or not name:
            raise ValueError(f"graph {self.name!r}: names must be non-empty strings; got {name!r}")
        if name in self.inputs or name in self.params:
            raise ValueError(f"graph {self.name!r}: the name {name!r} is already used")

    def __repr__(self):
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.params)} params>"


def _check_value(v, what):
    if not isinstance(v, Value):
        raise TypeError(f"{what} must be a symbolic Value, got {type(v).__name__}")


def topo_order(outputs, stop=()) -> list[Value]:
    """Ancestors of ``outputs`` (inclusive), in creation order, which is a topological order (a node's
    inputs always exist before it). Nodes in ``stop`` are included but not expanded."""
    stop = set(stop)
    seen, stack = set(), list(outputs)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v not in stop:
            stack.extend(v.inputs)
    return sorted(seen, key=lambda v: v.id)


def consumers(nodes) -> dict:
    """node -> the nodes of ``nodes`` that read it, in order, once per read (every node of ``nodes`` and
    every input of one is a key)."""
    readers = {n: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    return readers
