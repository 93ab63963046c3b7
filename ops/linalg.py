"""Linear algebra and shape ops. Each is linear, so its R-op comes from ``linear_in``.

Shapes may hold ``None`` (the batch size) at axis 0; shape attributes keep it, and the program
replaces it by the bound batch size when it specialises the kernels.
"""
import numpy as np

from rgraph.errors import ShapeError, fmt_shape
from rgraph.graph import FLOAT, Type
from rgraph.op import Op, add_all, broadcast_shapes, register, require_float


def _axes(axis, ndim, op):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))


def _pieces(a, transposed):
    """How many operands a left GEMM operand joins along its contracted axis (1 unless it is a concat)."""
    if transposed or a.op.name != "concat" or a.attrs["axis"] != a.ndim - 1:
        return 1
    return _pieces(a.inputs[0], False) + _pieces(a.inputs[1], False)


class MatMul(Op):
    """C = op(A) op(B), one GEMM. Leading axes of an operand index its rows (a (N, P, K) operand is an
    (N*P, K) matrix), so a convolution's patches keep their batch axis:

        (ta, tb) = (F, F): A(..., K) B(K, O) -> (..., O)      (F, T): A(..., K) B(O, K)^T -> (..., O)
                   (T, F): A(..., K)^T B(..., O) -> (K, O)    (T, T): 2-D only

    vjp: gA = g op(B)^T (transposed back if ta), gB = op(A)^T g (transposed back if tb).
    """
    name, kind, linear_in = "matmul", "gemm", (0, 1)

    def infer(self, a, b, transpose_a=False, transpose_b=False):
        require_float(self, a, b)
        if a.ndim < 2 or b.ndim < 2 or (transpose_a and transpose_b and (a.ndim, b.ndim) != (2, 2)):
            raise ShapeError(f"matmul takes matrices (leading axes index rows), got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
        if transpose_a:
            if not transpose_b and a.shape[:-1] != b.shape[:-1]:
                raise ShapeError(f"row axes differ: {fmt_shape(a.shape[:-1])} vs {fmt_shape(b.shape[:-1])}")
            k1, rows = (a.shape[0] if transpose_b else a.shape[:-1]), (a.shape[-1],)
        else:
            k1, rows = a.shape[-1], a.shape[:-1]
        if transpose_b:
            if b.ndim != 2:
                raise ShapeError(f"a transposed right operand must be 2-D, got {fmt_shape(b.shape)}")
            k2, n = b.shape[1], b.shape[0]
        else:
            if not transpose_a and b.ndim != 2:
                raise ShapeError(f"the right operand must be 2-D, got {fmt_shape(b.shape)}")
            k2, n = (b.shape[:-1] if transpose_a else b.shape[0]), b.shape[-1]
        if k1 != k2:
            raise ShapeError(f"inner dimensions differ: {k1} vs {k2} (transpose_a={transpose_a}, transpose_b={transpose_b})")
        return Type(rows + (n,), FLOAT)

    def forward(self, xp, a, b, transpose_a=False, transpose_b=False):
        a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        out = (a2.T if transpose_a else a2) @ (b2.T if transpose_b else b2)
        return out if transpose_a or a.ndim == 2 else out.reshape(a.shape[:-1] + (out.shape[-1],))

    # (ta, tb) -> rules for gA and gB, written with matmul itself: one line per case.
    RULES = {
        (False, False): (lambda a, b, g: matmul(g, b, transpose_b=True), lambda a, b, g: matmul(a, g, transpose_a=True)),
        (False, True): (lambda a, b, g: matmul(g, b), lambda a, b, g: matmul(g, a, transpose_a=True)),
        (True, False): (lambda a, b, g: matmul(b, g, transpose_b=True), lambda a, b, g: matmul(a, g)),
        (True, True): (lambda a, b, g: matmul(b, g, transpose_a=True, transpose_b=True),
                       lambda a, b, g: matmul(g, a, transpose_a=True, transpose_b=True)),
    }

    def vjp(self, node, g):
        a, b = node.inputs
        ga, gb = self.RULES[node.attrs.get("transpose_a", False), node.attrs.get("transpose_b", False)]
        return [ga(a, b, g), gb(a, b, g)]

    def splits_batch(self, node):
        """Rows of A are samples (the batch leads A, untransposed) and B holds no batch axis: a slice of
        the batch's rows of A gives the same rows of the result."""
        a, b = node.inputs[-2:]
        return not node.attrs.get("transpose_a", False) and a.shape[0] is None and None not in b.shape

    def sums_batch(self, node):
        """A^T B over samples (a weight gradient: both operands' rows are samples): chunk by chunk,
        matmul_add(acc, A, B)."""
        return _batch_sum(node)

    def merge_sum(self, x, y):
        """x + y as one GEMM over operands joined along the contracted axis, A1 B1 + A2 B2 = [A1 A2] [B1; B2],
        where the left operands are untransposed and joining them copies fewer elements than the output's
        add would (K1 + K2 <= O: a narrow contracted axis, as in a convolution's backward to its patches;
        one longer GEMM also runs faster than two short ones). Otherwise y's GEMM accumulates into x's
        result, matmul_add(x, A2, B2), which saves the add's pass over the output."""
        joined = self._joined(x, y)
        return joined if joined is not None else matmul_add_op(x, *y.inputs, **y.attrs)

    @staticmethod
    def _joined(x, y):
        (a1, b1), (a2, b2) = x.inputs, y.inputs
        tb = x.attrs.get("transpose_b", False)
        if x.attrs.get("transpose_a") or y.attrs.get("transpose_a") or y.attrs.get("transpose_b", False) != tb:
            return None
        if a1.shape[:-1] != a2.shape[:-1] or b1.ndim != 2 or b2.ndim != 2 or a1.dtype != a2.dtype:
            return None
        if a1.shape[-1] + a2.shape[-1] > x.shape[-1]:
            return None
        return matmul(concat(a1, a2, -1), concat(b1, b2, 1 if tb else 0), transpose_b=tb)

    @staticmethod
    def products(node):
        """The matrix products a GEMM sums: one per piece of a left operand joined along its contracted
        axis (merge_sum), else 1."""
        return _pieces(node.inputs[0], node.attrs.get("transpose_a", False))

    @staticmethod
    def flops(shapes, attrs):
        """2 m n k: the contracted length is the last axis of A, or its rows when A is transposed."""
        (a, b), out = shapes
        k = int(np.prod(a[:-1])) if attrs.get("transpose_a") else a[-1]
        return 2 * int(np.prod(out)) * k


class MatMulAdd(Op):
    """C + op(A) op(B): one GEMM accumulating into C (BLAS's beta = 1), shapes as in ``matmul``.

    The compiler makes it from a per-call sum of two GEMMs (MatMul.merge_sum); C's buffer may be the
    result's (``overwrites``). vjp: g for C, MatMul's rules for A and B. R{.} = R{C} + op(R{A}) op(B) +
    op(A) op(R{B})."""
    name, kind, writes_out, overwrites = "matmul_add", "gemm", True, (0,)

    def infer(self, c, a, b, transpose_a=False, transpose_b=False):
        t = MatMul.infer(self, a, b, transpose_a, transpose_b)
        require_float(self, c)
        if c.shape != t.shape:
            raise ShapeError(f"the accumulator {fmt_shape(c.shape)} is not the product's shape {fmt_shape(t.shape)}")
        return t

    def forward(self, xp, c, a, b, transpose_a=False, transpose_b=False, out=None):
        product = matmul_op.forward(xp, a, b, transpose_a, transpose_b)
        if out is None:
            return c + product
        xp.add(c, product, out=out)
        return out

    def vjp(self, node, g):
        c, a, b = node.inputs
        ga, gb = MatMul.RULES[node.attrs.get("transpose_a", False), node.attrs.get("transpose_b", False)]
        return [g, ga(a, b, g), gb(a, b, g)]

    def rop(self, node, tangents):
        (c, a, b), (rc, ra, rb) = node.inputs, tangents
        t = {k: node.attrs.get(k, False) for k in ("transpose_a", "transpose_b")}
        return add_all([rc, None if ra is None else matmul(ra, b, **t), None if rb is None else matmul(a, rb, **t)])

    @staticmethod
    def flops(shapes, attrs):
        """2 m n k for the product, m n for the accumulation."""
        (c, a, b), out = shapes
        return MatMul.flops(((a, b), out), attrs) + int(np.prod(out))

    def splits_batch(self, node):
        """As MatMul's, the accumulator sliced alike."""
        return node.inputs[0].shape[0] is None and MatMul.splits_batch(self, node)

    def sums_batch(self, node):
        """As MatMul's, the accumulator added once: C + A^T B = (C + A_1^T B_1) + A_2^T B_2 + ..."""
        return _batch_sum(node)

    @staticmethod
    def products(node):
        """The products its GEMM computes (its accumulator's are counted where they are made)."""
        return _pieces(node.inputs[1], node.attrs.get("transpose_a", False))


def _batch_sum(node):
    """(matmul_add_op, 2) for a GEMM op(A)^T B whose operands' rows are samples, else None."""
    a, b = node.inputs[-2:]
    if node.attrs.get("transpose_a", False) and not node.attrs.get("transpose_b", False) \
            and a.shape[:1] == b.shape[:1] == (None,):
        return matmul_add_op, 2
    return None


class Reshape(Op):
    """Reshape (C order). ``None`` in the target keeps the batch axis; one -1 is inferred. vjp: reshape back."""
    name, linear_in = "reshape", (0,)

    def infer(self, x, shape):
        shape = tuple(shape)
        if None in shape[1:] or bool(shape and shape[0] is None) != bool(x.ndim and x.shape[0] is None):
            raise ShapeError(f"reshape to {fmt_shape(shape)}: the batch axis (None) must stay axis 0")
        known = [d for d in shape if d not in (None, -1)]
        size = int(np.prod([d for d in x.shape if d is not None]))
        if shape.count(-1) > 1:
            raise ShapeError(f"reshape to {fmt_shape(shape)}: at most one -1")
        if -1 in shape:
            if size % max(int(np.prod(known)), 1):
                raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} to {fmt_shape(shape)}")
            shape = tuple(size // max(int(np.prod(known)), 1) if d == -1 else d for d in shape)
        elif int(np.prod(known)) != size:
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} to {fmt_shape(shape)}")
        return Type(shape, x.dtype)

    def forward(self, xp, x, shape):
        return xp.reshape(x, shape)

    def vjp(self, node, g):
        return [reshape(g, node.inputs[0].shape)]


class Transpose(Op):
    """Permute axes (reversed by default). vjp: the inverse permutation."""
    name, linear_in = "transpose", (0,)

    def infer(self, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ShapeError(f"axes {axes} are not a permutation of {x.ndim} dimensions")
        return Type(tuple(x.shape[a] for a in axes), x.dtype)

    def forward(self, xp, x, axes=None):
        return xp.transpose(x, axes)

    def vjp(self, node, g):
        axes = node.attrs.get("axes") or tuple(reversed(range(g.ndim)))
        return [transpose(g, tuple(np.argsort(axes)))]


class BroadcastTo(Op):
    """Broadcast to ``shape`` (NumPy rules). vjp: g itself; the sweep sums it back to x's shape."""
    name, linear_in = "broadcast_to", (0,)

    def infer(self, x, shape):
        shape = tuple(shape)
        if broadcast_shapes(x.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(shape)}")
        return Type(shape, x.dtype)

    def forward(self, xp, x, shape):
        return xp.broadcast_to(x, shape)

    def vjp(self, node, g):
        return [g]


class Sum(Op):
    """Sum over axes. vjp: g broadcast back over the summed axes."""
    name, linear_in = "sum", (0,)

    def infer(self, x, axis=None, keepdims=False):
        require_float(self, x)
        axes = _axes(axis, x.ndim, self)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return Type(shape, x.dtype)

    def forward(self, xp, x, axis=None, keepdims=False):
        return xp.sum(x, axis=axis, keepdims=keepdims)

    def vjp(self, node, g):
        x = node.inputs[0]
        axes = _axes(node.attrs.get("axis"), x.ndim, self)
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        return [broadcast_to(reshape(g, kept), x.shape)]


class Count(Op):
    """The number of elements of ``shape`` along ``axes``, as a float scalar (the batch size is known only
    at bind time, so a mean divides by this node rather than by a constant)."""
    name = "count"

    def infer(self, shape, axes, dtype=FLOAT):
        return Type((), FLOAT)

    def forward(self, xp, shape, axes, dtype=FLOAT):
        return xp.asarray(np.prod([shape[a] for a in axes]), dtype=dtype)

    def vjp(self, node, g):
        return []


class StopGradient(Op):
    """Identity whose derivatives are zero: marks auxiliary values (a max used only for stability)."""
    name, nondiff = "stop_gradient", (0,)

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x

    def vjp(self, node, g):
        return [None]

    def rop(self, node, tangents):
        return None


def _known_axis(x, axis):
    """``axis`` normalised; its length must be known (not the batch axis of a graph)."""
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range for {x.ndim} dimensions")
    axis %= x.ndim
    if x.shape[axis] is None:
        raise ShapeError(f"axis {axis} is the batch axis, whose length is known only at bind time")
    return axis


class Concat(Op):
    """Join a and b along ``axis`` (every other length equal). vjp: the two slices of g. Linear in (a, b)
    jointly, not in each: R{concat(a, b)} = concat(R{a}, R{b}), a zero tangent padded in as zeros.

    The compiler joins GEMM operands with it: A1 B1 + A2 B2 = [A1 A2] [B1; B2] (MatMul.merge_sum)."""
    name, writes_out = "concat", True

    def infer(self, a, b, axis):
        require_float(self, a, b)
        axis = _known_axis(a, axis)
        if a.ndim != b.ndim or a.shape[:axis] + a.shape[axis + 1:] != b.shape[:axis] + b.shape[axis + 1:]:
            raise ShapeError(f"cannot join {fmt_shape(a.shape)} and {fmt_shape(b.shape)} along axis {axis}")
        _known_axis(b, axis)
        return Type(a.shape[:axis] + (a.shape[axis] + b.shape[axis],) + a.shape[axis + 1:], FLOAT)

    def forward(self, xp, a, b, axis, out=None):
        return xp.concatenate([a, b], axis=axis, out=out)

    def splits_batch(self, node):
        """Joined along an axis other than the batch, of two batch-major operands."""
        a, b = node.inputs
        return node.attrs["axis"] % a.ndim != 0 and a.shape[0] is None and b.shape[0] is None

    def vjp(self, node, g):
        a, b = node.inputs
        axis, k = node.attrs["axis"], a.shape[node.attrs["axis"]]
        return [slice_axis(g, axis, 0, k), slice_axis(g, axis, k, k + b.shape[axis])]

    def rop(self, node, tangents):
        (a, b), (ra, rb), axis = node.inputs, tangents, node.attrs["axis"]
        if ra is None or rb is None:
            return None if ra is rb else pad_axis(ra, axis, 0, b.shape[axis]) if rb is None \
                else pad_axis(rb, axis, a.shape[axis], 0)
        return concat(ra, rb, axis)


class SliceAxis(Op):
    """x[..., start:stop, ...] along ``axis`` (a copy). vjp: g zero-padded back, pad_axis."""
    name, linear_in = "slice_axis", (0,)

    def infer(self, x, axis, start, stop):
        axis = _known_axis(x, axis)
        if not 0 <= start < stop <= x.shape[axis]:
            raise ShapeError(f"slice {start}:{stop} of axis {axis} of {fmt_shape(x.shape)}")
        return Type(x.shape[:axis] + (stop - start,) + x.shape[axis + 1:], x.dtype)

    def forward(self, xp, x, axis, start, stop):
        return x[(slice(None),) * axis + (slice(start, stop),)].copy()

    def vjp(self, node, g):
        axis, start, stop = node.attrs["axis"], node.attrs["start"], node.attrs["stop"]
        return [pad_axis(g, axis, start, node.inputs[0].shape[axis] - stop)]


class PadAxis(Op):
    """Zeros before and after x along ``axis``. vjp: the slice of g where x sits, slice_axis."""
    name, linear_in = "pad_axis", (0,)

    def infer(self, x, axis, before, after):
        require_float(self, x)
        axis = _known_axis(x, axis)
        if before < 0 or after < 0:
            raise ShapeError(f"negative padding ({before}, {after})")
        return Type(x.shape[:axis] + (x.shape[axis] + before + after,) + x.shape[axis + 1:], FLOAT)

    def forward(self, xp, x, axis, before, after):
        return xp.pad(x, [(before, after) if i == axis else (0, 0) for i in range(x.ndim)])

    def vjp(self, node, g):
        axis, before = node.attrs["axis"], node.attrs["before"]
        return [slice_axis(g, axis, before, before + node.inputs[0].shape[axis])]


class Max(Op):
    """Maximum over axes. No derivative rules: use it under stop_gradient, or through a gather."""
    name = "amax"

    def infer(self, x, axis=None, keepdims=False):
        return Sum.infer(self, x, axis, keepdims)

    def forward(self, xp, x, axis=None, keepdims=False):
        return xp.max(x, axis=axis, keepdims=keepdims)


class OneHot(Op):
    """Integer labels (N,) -> float one-hot rows (N, num_classes); labels outside [0, num_classes) are an error."""
    name, nondiff = "onehot", (0,)

    def infer(self, labels, num_classes, dtype=FLOAT):
        if labels.dtype != "int64" or labels.ndim != 1:
            raise ShapeError(f"expects 1-D int64 labels, got {labels}")
        return Type((labels.shape[0], int(num_classes)), FLOAT)

    def forward(self, xp, labels, num_classes, dtype=FLOAT):
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"labels must lie in [0, {num_classes}); found {int(labels[bad][0])}")
        return (labels[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)

    def vjp(self, node, g):
        return [None]


matmul_op, reshape_op, transpose_op = register(MatMul()), register(Reshape()), register(Transpose())
broadcast_op, sum_op, count_op = register(BroadcastTo()), register(Sum()), register(Count())
stop_gradient, amax_op, onehot_op = register(StopGradient()), register(Max()), register(OneHot())
concat_op, slice_op, pad_op = register(Concat()), register(SliceAxis()), register(PadAxis())
matmul_add_op = register(MatMulAdd())


def matmul(a, b, transpose_a=False, transpose_b=False):
    """op(a) @ op(b) for 2-D a, b (one GEMM)."""
    return matmul_op(a, b, transpose_a=transpose_a, transpose_b=transpose_b)


def concat(a, b, axis):
    """a and b joined along ``axis``."""
    return concat_op(a, b, axis=int(axis) % max(a.ndim, 1))


def slice_axis(x, axis, start, stop):
    """x[start:stop] along ``axis``."""
    return slice_op(x, axis=int(axis) % max(x.ndim, 1), start=int(start), stop=int(stop))


def pad_axis(x, axis, before, after):
    """x with ``before`` zeros ahead of it and ``after`` zeros behind it along ``axis``."""
    return pad_op(x, axis=int(axis) % max(x.ndim, 1), before=int(before), after=int(after))


def reshape(x, shape):
    return reshape_op(x, shape=tuple(shape))


def transpose(x, axes=None):
    return transpose_op(x, axes=None if axes is None else tuple(int(a) for a in axes))


def broadcast_to(x, shape):
    return broadcast_op(x, shape=tuple(shape))


def sum(x, axis=None, keepdims=False):  # noqa: A001 - mirrors numpy.sum
    axis = axis if axis is None or isinstance(axis, int) else tuple(axis)
    return sum_op(x, axis=axis, keepdims=keepdims)


def count(shape, axis=None):
    """Number of elements of ``shape`` along ``axis`` (all axes by default), known at bind time."""
    axes = _axes(axis, len(shape), count_op)
    return count_op(shape=tuple(shape), axes=axes, dtype=FLOAT)


def mean(x, axis=None, keepdims=False):
    """sum(x, axis) / count: the count is a node, since the batch size is fixed only at bind time."""
    from rgraph.graph import Value
    axes = _axes(axis, x.ndim, sum_op) if isinstance(x, Value) else axis
    return sum(x, axes, keepdims) / count(x.shape, axes)


def amax(x, axis=None, keepdims=False):
    axis = axis if axis is None or isinstance(axis, int) else tuple(axis)
    return amax_op(x, axis=axis, keepdims=keepdims)


def onehot(labels, num_classes):
    return onehot_op(labels, num_classes=int(num_classes), dtype=FLOAT)


def dense(x, W, b=None):
    """x @ W + b: one GEMM and a broadcast add (a composition, so every rule is derived)."""
    y = matmul(x, W)
    return y if b is None else y + b


def logsumexp(x, axis=-1, keepdims=False):
    """log sum exp(x) along ``axis``, stably: m + log sum exp(x - m) with m = stop_gradient(max x)."""
    m = stop_gradient(amax(x, axis=axis, keepdims=True))
    out = sum(exp(x - m), axis=axis, keepdims=True)
    out = log(out) + m
    if keepdims:
        return out
    axes = _axes(axis, x.ndim, sum_op)
    return reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def softmax(x, axis=-1):
    """exp(x - logsumexp(x)): never overflows."""
    return exp(x - logsumexp(x, axis=axis, keepdims=True))


from .elementwise import exp, log  # noqa: E402  (the composites above use them)
