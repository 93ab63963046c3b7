"""The op protocol: an op's kernel, shape rule, VJP and R-op live together in one class.

    class Op:
        name: str
        def infer(self, *types, **attrs) -> Type           # shapes and dtypes; raise ShapeError
        def forward(self, xp, *arrays, **attrs) -> array   # the kernel, written against xp (NumPy or CuPy)
        def vjp(self, node, g) -> list[Value | None]        # symbolic cotangent of each input
        def rop(self, node, tangents) -> Value | None       # symbolic R{out} from R{inputs}

Rules receive and return symbolic Values built with ops, so rules are themselves differentiable: the
Hessian pass is the R-op applied to the gradient graph. ``None`` is the zero. A rule returns a
cotangent or tangent of the *output's* shape or the input's; the sweep (autodiff.py), not the rule,
sums over fan-out and reduces broadcast dimensions.

Defaults derived from declarations:
* ``linear_in=(0, 1)`` (multilinear): R{op(a, b)} = op(R{a}, b) + op(a, R{b}).
* only a ``vjp``: R{out} is the VJP of the (linear) VJP, taken with a dummy cotangent w
  (the two-VJP construction): J v = d/dw <vjp(w), v>.

Selections: an op whose matrix is 0/1 with one 1 per output entry at most (a gather: each output entry
is one entry of input 0, or zero) or its transpose (a scatter: each entry of input 0 is added into one
output entry) declares ``selection = "gather"`` or ``"scatter"`` and ``select(node, x)``, the gather of
the same entries. Such an op commutes with an elementwise product,

    gather(a * b) = gather(a) * gather(b)        scatter(a) * b = scatter(a * gather(b))

which the compiler uses to move per-call products to the smaller side (a v-independent factor's
gather is then computed once per batch), and with linearity to merge the scattered terms of a sum into
one scatter. A selection that is total (every output entry of a
gather is an input entry, never a padding zero; every input entry of a scatter lands in the output)
also names the axes it moves entries along (``selection_axes``): it then commutes with every elementwise
function, a value b constant along those axes passing through, gather(f(x, b)) = f(gather(x), b), and
a sum over them sees through a scatter, sum(scatter(a)) = sum(a). See rgraph/compiler/selections.py.

Sums: ``merge_sum(x, y)`` may return one node computing x + y for two per-call results of the op that
nothing else reads (MatMul: one GEMM over joined operands, or one accumulating into x); the compiler's
merge stage asks it. See rgraph/compiler/merge.py.

Attributes: an attribute ``shape`` may hold None (the batch size) and an attribute ``dtype`` may be
FLOAT (the compute dtype); both are made concrete when a program is specialised to a batch.
"""
from __future__ import annotations

import inspect

import numpy as np

from . import expr as ex
from .errors import RuleError, ShapeError, fmt_shape
from .graph import COTANGENT, FLOAT, Type, Value, constant, leaf, topo_order

REGISTRY: dict[str, "Op"] = {}


def check_result(node, result, shape, dtype):
    """``result`` of ``node``'s kernel, refused where it disagrees with the node's type (its op's shape
    rule, infer): ``shape`` is the node's at the bound batch size, ``dtype`` the float dtype run in."""
    got = getattr(result, "dtype", None)
    if tuple(np.shape(result)) != shape:
        raise RuleError(f"op {node.op.name!r}: forward returned shape {tuple(np.shape(result))} at node {node.label}, "
                        f"but its shape rule (infer) gives {fmt_shape(node.shape)}"
                        + (f" = {shape}" if None in node.shape else ""))
    if node.dtype == FLOAT and got != dtype:
        raise RuleError(f"op {node.op.name!r}: forward returned dtype {got} at node {node.label} in a {dtype} "
                        f"evaluation (compute in the inputs' dtype)")
    return result


BUILTIN: set[str] = set()   # names of the ops rgraph itself registers (filled by ``import rgraph``)


def register(op: "Op") -> "Op":
    """Add ``op`` to the registry that ``rgraph ops`` and the tools list. A user op's name may be
    registered again (a notebook cell run twice): the new op replaces the old in the registry, while
    graphs built with the old one keep it. A built-in op's name is refused."""
    if not isinstance(op.name, str) or not op.name.isidentifier():
        raise ValueError(f"an op's name must be an identifier (letters, digits, _), got {op.name!r}")
    if op.name in BUILTIN and REGISTRY[op.name] is not op:
        raise ValueError(f"{op.name!r} is a built-in op; give yours another name")
    REGISTRY[op.name] = op
    return op


def as_value(x) -> Value:
    """Values pass through; Python numbers become float constants; arrays keep their kind (float, int64, bool)."""
    if isinstance(x, Value):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"cannot use the boolean {x!r} as an array operand")
    if isinstance(x, (int, float, np.number)):
        return constant(float(x))
    if isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        kinds = {"f": (np.float64, FLOAT), "i": (np.int64, "int64"), "u": (np.int64, "int64"), "b": (bool, "bool")}
        if arr.dtype.kind not in kinds:
            raise TypeError(f"cannot use an array of dtype {arr.dtype} as a graph value")
        np_dtype, dtype = kinds[arr.dtype.kind]
        return constant(arr.astype(np_dtype), dtype)
    raise TypeError(f"cannot use {type(x).__name__} as a graph value")


class Op:
    """Base class of every op. Subclasses set ``name`` and define ``infer``, ``forward`` and ``vjp``;
    ``rop`` is derived unless given. ``nondiff`` lists inputs with no derivative (labels, indices);
    ``linear_in`` declares multilinearity in those inputs. Two kernel declarations let backends run it
    faster: ``writes_out`` (``forward`` takes ``out=``, a preallocated result the runtime may pass) and
    ``per_sample`` (every input and the output have the batch on axis 0 and sample n of the output
    depends only on sample n of the inputs, so the batch may be split into chunks). ``out_order``: the
    memory order of the output's axes when the kernel allocates it (None: C order; (0, 2, 3, 1) lays
    an NCHW result out as NHWC, the order of GEMM rows over pixels). ``overwrites``: inputs whose
    buffer the kernel may write its result over (it reads each element before writing it there)."""

    name: str = None
    linear_in: tuple = ()
    nondiff: tuple = ()
    writes_out = False
    per_sample = False
    out_order = None
    overwrites = ()     # inputs whose buffer the kernel may write its result over (see Backend.in_place)
    kind = "primitive"  # "elementwise" ops may be fused; "gemm" ops are counted by the cost model
    is_leaf = False
    selection = None    # "gather" or "scatter": see select

    def __call__(self, *inputs, **attrs) -> Value:
        inputs = [as_value(x) for x in inputs]
        try:
            type_ = self.infer(*[v.type for v in inputs], **attrs)
        except ShapeError as e:
            shapes = ", ".join(f"{v.label} {v.type}" for v in inputs)
            raise ShapeError(f"op {self.name!r} on [{shapes}]: {e}") from None
        return Value(self, inputs, attrs, type_)

    def infer(self, *types, **attrs) -> Type:
        raise NotImplementedError(f"op {self.name!r} has no shape rule (infer)")

    def forward(self, xp, *arrays, **attrs):
        raise NotImplementedError(f"op {self.name!r} has no kernel (forward)")

    def vjp(self, node, g):
        raise RuleError(f"op {self.name!r} has no vjp rule")

    def rop(self, node, tangents):
        live = [i for i, t in enumerate(tangents) if t is not None]
        if self.linear_in and set(live) <= set(self.linear_in):
            return self.multilinear_rop(node, tangents)
        return self.transposed_rop(node, tangents)

    def multilinear_rop(self, node, tangents):
        """R{op(a, b)} = op(R{a}, b) + op(a, R{b}) for an op linear in each declared input."""
        terms = []
        for i, t in enumerate(tangents):
            if t is not None:
                args = list(node.inputs)
                args[i] = t
                terms.append(self(*args, **node.attrs))
        return add_all(terms)

    def transposed_rop(self, node, tangents):
        """J v as the VJP of the VJP: cts = vjp(w) is linear in a dummy w, so J v = d/dw <cts, v>."""
        from .autodiff import fit, vjp_sweep
        w = leaf(COTANGENT, f"w[{node.label}]", node.shape, node.dtype)
        cts = self.vjp(node, w)
        outs, seeds = [], []
        for inp, ct, t in zip(node.inputs, cts, tangents, strict=True):
            if ct is not None and t is not None:
                outs.append(fit(ct, inp.type))
                seeds.append(t)
        if not outs:
            return None
        (jv,) = vjp_sweep(outs, seeds, [w], pass_name="rop of " + self.name)
        if jv is not None and w in topo_order([jv]):
            raise RuleError(f"op {self.name!r}: its vjp is not linear in the cotangent, so no rop can be derived")
        return jv

    def merge_sum(self, x, y):
        """x + y, for two per-call results ``x`` and ``y`` of this op read by nothing else, as one node
        where that costs less (MatMul: one GEMM over joined operands, or one accumulating into x);
        None keeps the sum."""
        return None

    def select(self, node, x) -> Value:
        """For a selection op: the gather of the entries ``node`` selects from (a gather) or adds into
        (a scatter), applied to ``x``, shaped like a gather's input 0 or a scatter's output."""
        raise RuleError(f"op {self.name!r} declares no selection")

    def selection_axes(self, node):
        """For a total selection: the axes along which ``node`` moves entries (every other index is
        kept). None where it is not total or moves entries across axes."""
        return None

    def splits_batch(self, node) -> bool:
        """Whether ``node`` may run on a slice of the batch: its inputs whose axis 0 is the batch (shape
        None there) sliced alike, the others whole, give that slice of its output (compiler.tile runs
        such pairs chunk by chunk). Per-sample ops do; MatMul does when its rows are samples."""
        return self.per_sample

    def sums_batch(self, node):
        """For a node summing over the batch (its output has no batch axis; a weight gradient's GEMM):
        ``(op, k)`` where it sums contributions of its last k inputs' samples and ``op(acc, *those)``
        adds one batch slice's contributions to acc, so it may end a chain run chunk by chunk
        (compiler.tile). None otherwise."""
        return None

    def parts(self, node) -> tuple:
        """The nodes whose work ``node`` does (the cost model counts them): itself, or the members of a
        compound node (compiler.tile's)."""
        return (node,)

    def attrs_key(self, attrs) -> tuple:
        """A hashable key of the attributes (CSE identifies nodes by op, attributes and inputs)."""
        return tuple(sorted((k, _freeze(v)) for k, v in attrs.items()))

    def __repr__(self):
        return f"<op {self.name}>"


def memory_order(a):
    """The axes of array ``a`` from the slowest-varying in memory to the fastest; None for C order."""
    strides = getattr(a, "strides", None)
    if strides is None or getattr(a, "ndim", 0) < 2:
        return None
    order = tuple(sorted(range(a.ndim), key=lambda ax: (-abs(strides[ax]), ax)))
    return None if order == tuple(range(a.ndim)) else order


def result_order(shape, arrays, out=None):
    """The memory order a fused kernel's results take: ``out``'s first buffer's, else the one most
    operands of the result's ``shape`` share (the first of those tied); None for C order."""
    if out is not None:
        return memory_order(out[0])
    orders = [memory_order(a) for a in arrays if a.shape == tuple(shape)]
    return max(orders, key=orders.count, default=None)


def empty(xp, shape, dtype, order=None):
    """An uninitialised array of ``shape`` whose axes lie in memory in ``order`` (None: C order)."""
    if order is None:
        return xp.empty(shape, dtype=dtype)
    return xp.empty(tuple(shape[a] for a in order), dtype=dtype).transpose(tuple(np.argsort(order)))


def _freeze(v):
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def add_all(terms):
    """Sum of a list of Values, ``None`` entries skipped; ``None`` when nothing is left."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


# --- shape helpers ----------------------------------------------------------------------------

def broadcast_shapes(*shapes):
    """NumPy broadcasting, with None (the batch size) matching None or 1."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(ndim):
        dims = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError("shapes " + ", ".join(fmt_shape(s) for s in shapes) + " do not broadcast")
        out.append(dims.pop() if dims else 1)
    if any(d is None for d in out[1:]):
        raise ShapeError("the batch dimension (None) may only broadcast along axis 0; got "
                         + ", ".join(fmt_shape(s) for s in shapes))
    return tuple(out)


def broadcasts_to(src, dst) -> bool:
    """Whether shape ``src`` broadcasts to ``dst`` without changing ``dst`` (NumPy rules)."""
    if len(src) > len(dst):
        return False
    return all(s == 1 or s == d for s, d in zip(src[::-1], dst[::-1]))


def require_float(op, *types):
    for t in types:
        if not t.is_float:
            raise ShapeError(f"expects float inputs, got {t}")


# --- elementwise ops from scalar expressions ---------------------------------------------------

class Elementwise(Op):
    """An op defined by a scalar expression of its inputs, broadcasting like NumPy.

    Its VJP and R-op are elementwise ops too, built from the symbolic derivatives of the expression:
    vjp_i = g * df/dx_i, R{f} = sum_i df/dx_i R{x_i}; so every order of derivative comes for free.
    """
    kind = "elementwise"

    def __init__(self, name, expression, params, grads=None, dtype=FLOAT):
        self.name, self.expr, self.params, self.out_dtype = name, expression, tuple(params), dtype
        self.grads = tuple(grads) if grads is not None else tuple(ex.diff(expression, p) for p in self.params)
        if len(self.grads) != len(self.params):
            raise ValueError(f"elementwise op {name!r}: {len(self.grads)} derivatives for {len(self.params)} inputs")
        self.nondiff = tuple(i for i, d in enumerate(self.grads) if d is ex.ZERO)

    def infer(self, *types):
        if len(types) != len(self.params):
            raise ShapeError(f"takes {len(self.params)} inputs, got {len(types)}")
        for t in types:
            if t.dtype == "int64":
                raise ShapeError(f"expects float or bool inputs, got {t}")
        return Type(broadcast_shapes(*[t.shape for t in types]), self.out_dtype)

    def forward(self, xp, *arrays):
        out = ex.evaluate(self.expr, dict(zip(self.params, arrays, strict=True)), xp)
        return _as_result(xp, out, arrays, self.out_dtype)

    def vjp(self, node, g):
        gname = _fresh("g", self.params)
        env = {gname: g, **dict(zip(self.params, node.inputs))}
        return [None if d is ex.ZERO else apply_expr(f"{self.name}.vjp{i}", ex.var(gname) * d, env)
                for i, d in enumerate(self.grads)]

    def rop(self, node, tangents):
        env = dict(zip(self.params, node.inputs))
        total = ex.ZERO
        for i, (d, t) in enumerate(zip(self.grads, tangents, strict=True)):
            if t is not None and d is not ex.ZERO:
                tname = _fresh(f"t{i}_", self.params)
                env[tname] = t
                total = total + d * ex.var(tname)
        if total is ex.ZERO:
            return None
        return apply_expr(f"{self.name}.rop", total, env)

    def attrs_key(self, attrs):
        return ()


def _fresh(base, taken):
    """A variable name not among ``taken`` (derived ops nest: a vjp of a vjp has a param named g)."""
    k = 0
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def _as_result(xp, out, arrays, out_dtype):
    """Give an expression's result the op's dtype and broadcast shape (constants fold to scalars)."""
    float_dtypes = [a.dtype for a in arrays if hasattr(a, "dtype") and a.dtype.kind == "f"]
    dtype = bool if out_dtype == "bool" else (xp.result_type(*float_dtypes) if float_dtypes else xp.float64)
    out = xp.asarray(out, dtype=dtype)
    shape = np.broadcast_shapes(*[xp.shape(a) for a in arrays])
    if out.shape != shape:
        out = xp.broadcast_to(out, shape).copy()
    return out


_EXPR_OPS: dict = {}


def expr_op(name, expression, params, grads=None, dtype=FLOAT) -> Elementwise:
    """The elementwise op of ``expression`` over ``params`` (one op object per distinct expression)."""
    key = (expression, tuple(params), None if grads is None else tuple(grads), dtype)
    op = _EXPR_OPS.get(key)
    if op is None:
        op = _EXPR_OPS[key] = Elementwise(name, expression, params, grads, dtype)
    return op


def apply_expr(name, expression, env: dict):
    """Build the node computing ``expression`` with variables bound to Values in ``env``.

    Unused variables are dropped; a bare variable returns its Value; a zero returns None.
    """
    if expression is ex.ZERO:
        return None
    if expression.op == "var":
        return env[expression.value]
    used = sorted(ex.variables(expression))
    return expr_op(name, expression, used)(*[env[u] for u in used])


def elementwise(name: str, fn, grads=None, *, register_op=True) -> Elementwise:
    """Declare an elementwise op by a scalar expression; its derivatives of every order come from it.

    ``fn`` takes one scalar expression per input (use ``rgraph.E`` for functions). ``grads`` may
    override the derivative with respect to each input (a list of functions of the same arguments),
    for numerical stability; derivatives of the overrides are again symbolic.

        >>> from rgraph import E, elementwise
        >>> gelu = elementwise("my_gelu", lambda x: 0.5 * x * (1 + E.tanh(0.7978845608 * (x + 0.044715 * x**3))))
    """
    params = tuple(inspect.signature(fn).parameters)
    variables = [ex.var(p) for p in params]
    expression = ex.lift(fn(*variables))
    grad_exprs = None if grads is None else [ex.lift(gf(*variables)) for gf in grads]
    dtype = "bool" if expression.op in ex.COMPARISONS else FLOAT
    op = Elementwise(name, expression, params, grad_exprs, dtype)
    return register(op) if register_op else op
