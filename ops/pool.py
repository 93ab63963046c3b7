"""Pooling: gathers over the windows of ops/conv.py.

Max pooling is ``pool_max(x)``; its rules read the argmax (each window's offset of its maximum, a
non-differentiable auxiliary value computed only when a derivative is asked for): R{maxpool} =
pool_gather(R{x}, argmax) (R{x} taken where x is largest, not the max of R{x}) and the VJP,
pool_scatter, adds g at the same positions. Ties go to the
first maximum in window order (row-major over the kernel), as numpy.argmax does. The kernels loop over
kernel offsets only, each step one strided block of the whole batch.
"""
import numpy as np

from rgraph.errors import ShapeError, fmt_shape
from rgraph.graph import FLOAT, Type
from rgraph.op import Op, empty, register, require_float

from .conv import _geometry, _offsets, padding_pairs, pair, window_shape, windows
from .linalg import mean, reshape


class Argmax(Op):
    """Index of the first maximum along the last axis (int64). Carries no derivative."""
    name, nondiff = "argmax", (0,)

    def infer(self, x):
        return Type(x.shape[:-1], "int64")

    def forward(self, xp, x):
        return xp.argmax(x, axis=-1)

    def vjp(self, node, g):
        return [None]


class Gather(Op):
    """y[...] = x[..., idx[...]]: pick one entry of the last axis. Linear in x.
    vjp: scatter(g, idx, K). R{y} = gather(R{x}, idx)."""
    name, linear_in, nondiff, selection = "gather", (0,), (1,), "gather"

    def infer(self, x, idx):
        require_float(self, x)
        if idx.dtype != "int64" or idx.shape != x.shape[:-1]:
            raise ShapeError(f"expects int64 indices of shape {fmt_shape(x.shape[:-1])}, got {idx}")
        return Type(idx.shape, FLOAT)

    def forward(self, xp, x, idx):
        return xp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]

    def vjp(self, node, g):
        x, idx = node.inputs
        return [scatter(g, idx, x.shape[-1]), None]

    def select(self, node, x):
        return gather(x, node.inputs[1])


class Scatter(Op):
    """y[..., k] = g[...] if k == idx[...] else 0: the adjoint of gather. vjp: gather(g, idx)."""
    name, linear_in, nondiff, selection = "scatter", (0,), (1,), "scatter"

    def infer(self, g, idx, size):
        require_float(self, g)
        if idx.shape != g.shape:
            raise ShapeError(f"indices {idx} do not match values {g}")
        return Type(g.shape + (int(size),), FLOAT)

    def forward(self, xp, g, idx, size):
        return (xp.arange(size) == idx[..., None]) * g[..., None]

    def vjp(self, node, g):
        return [gather(g, node.inputs[1]), None]

    def select(self, node, x):
        return gather(x, node.inputs[1])


argmax_op, gather_op, scatter_op = register(Argmax()), register(Gather()), register(Scatter())


def argmax(x):
    return argmax_op(x)


def gather(x, idx):
    return gather_op(x, idx)


def scatter(g, idx, size):
    return scatter_op(g, idx, size=int(size))


def _padded(xp, x, padding, fill):
    (pt, pb), (pl, pr) = padding
    if pt or pb or pl or pr:
        return xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    return x


def _window_slices(image_hw, kernel, stride, padding):
    """(k, rows, cols) for each kernel offset k in row-major window order."""
    out_hw = window_shape(image_hw, kernel, stride, padding)
    return [(k, rows, cols) for k, (i, j, rows, cols) in enumerate(_offsets(kernel, stride, out_hw))]


class PoolMax(Op):
    """The maximum of each window of an NCHW image padded with -inf: (N, C, H, W) -> (N, C, Ho, Wo); a NaN
    in a window is its maximum. vjp: pool_scatter(g, argmax); R{y} = pool_gather(R{x}, argmax), where
    argmax = pool_argmax(x) (the first maximum), computed only when a derivative is asked for."""
    name, per_sample, writes_out = "pool_max", True, True
    out_order = (0, 2, 3, 1)  # NHWC in memory, as the activations around a convolution

    def infer(self, x, kernel, stride, padding):
        require_float(self, x)
        if x.ndim != 4:
            raise ShapeError(f"expects an NCHW input, got {fmt_shape(x.shape)}")
        return Type(x.shape[:2] + window_shape(x.shape[2:], kernel, stride, padding), FLOAT)

    def forward(self, xp, x, kernel, stride, padding, out=None):
        slices = _window_slices(x.shape[2:], kernel, stride, padding)
        x = _padded(xp, x, padding, -np.inf)
        first = x[:, :, slices[0][1], slices[0][2]]
        if out is None:
            out = xp.empty_like(first)
        out[...] = first
        for _, rows, cols in slices[1:]:
            xp.maximum(out, x[:, :, rows, cols], out=out)
        return out

    def vjp(self, node, g):
        x = node.inputs[0]
        return [pool_scatter(g, pool_argmax(x, y=node, **_geometry(node)), x.shape[1:], **_geometry(node))]

    def rop(self, node, tangents):
        return pool_gather(tangents[0], pool_argmax(node.inputs[0], y=node, **_geometry(node)), **_geometry(node))


class PoolArgmax(Op):
    """The offset (row-major in the kh x kw window) of each window's first maximum, given the image x
    and its window maxima y = pool_max(x): (N, C, H, W), (N, C, Ho, Wo) -> int64 (N, C, Ho, Wo). A NaN
    counts as the maximum, as in numpy.argmax. Carries no derivative."""
    name, nondiff, per_sample, writes_out = "pool_argmax", (0, 1), True, True
    out_order = (0, 2, 3, 1)  # NHWC in memory, as the activations around a convolution

    def infer(self, x, y, kernel, stride, padding):
        require_float(self, x)
        if x.ndim != 4:
            raise ShapeError(f"expects an NCHW input, got {fmt_shape(x.shape)}")
        expected = x.shape[:2] + window_shape(x.shape[2:], kernel, stride, padding)
        if y.shape != expected:
            raise ShapeError(f"expects window maxima of shape {fmt_shape(expected)}, got {y}")
        return Type(expected, "int64")

    def forward(self, xp, x, y, kernel, stride, padding, out=None):
        slices = _window_slices(x.shape[2:], kernel, stride, padding)
        x = _padded(xp, x, padding, -np.inf)
        idx = xp.empty(y.shape, dtype=np.int64) if out is None else out
        idx[...] = len(slices) - 1
        for k, rows, cols in reversed(slices[:-1]):  # the last hit written is the first offset
            window = x[:, :, rows, cols]
            xp.copyto(idx, k, where=(window == y) | (window != window))
        return idx

    def vjp(self, node, g):
        return [None, None]


def _spatial_unless_padded(node):
    """Without padding every offset a window can select lies in the image: pooling's gathers and
    scatters then move entries along the spatial axes only, and lose none."""
    return (2, 3) if all(p == 0 for pair in node.attrs["padding"] for p in pair) else None


class PoolGather(Op):
    """y[n, c, i, j] = the entry of window (i, j) of the zero-padded x at offset idx[n, c, i, j].
    Linear in x; vjp: pool_scatter(g, idx). R{y} = pool_gather(R{x}, idx)."""
    name, linear_in, nondiff, per_sample, writes_out = "pool_gather", (0,), (1,), True, True
    selection = "gather"
    out_order = (0, 2, 3, 1)  # NHWC in memory, as the activations around a convolution

    def infer(self, x, idx, kernel, stride, padding):
        require_float(self, x)
        expected = x.shape[:2] + window_shape(x.shape[2:], kernel, stride, padding)
        if idx.dtype != "int64" or idx.shape != expected:
            raise ShapeError(f"expects int64 offsets of shape {fmt_shape(expected)}, got {idx}")
        return Type(idx.shape, FLOAT)

    def forward(self, xp, x, idx, kernel, stride, padding, out=None):
        slices = _window_slices(x.shape[2:], kernel, stride, padding)
        x = _padded(xp, x, padding, 0.0)
        out = xp.empty(idx.shape, dtype=x.dtype) if out is None else out
        for k, rows, cols in slices:
            if k == 0:
                out[...] = x[:, :, rows, cols]
            else:
                xp.copyto(out, x[:, :, rows, cols], where=idx == k)
        return out

    def vjp(self, node, g):
        x, idx = node.inputs
        return [pool_scatter(g, idx, x.shape[1:], **_geometry(node)), None]

    def select(self, node, x):
        return pool_gather(x, node.inputs[1], **_geometry(node))

    def selection_axes(self, node):
        return _spatial_unless_padded(node)


class PoolScatter(Op):
    """The adjoint of pool_gather: each g[n, c, i, j] added at offset idx[n, c, i, j] of window (i, j),
    padding cropped: (N, C, Ho, Wo) -> (N, C, H, W). vjp: pool_gather(g, idx)."""
    name, linear_in, nondiff, per_sample, writes_out = "pool_scatter", (0,), (1,), True, True
    selection = "scatter"
    out_order = (0, 2, 3, 1)  # NHWC in memory: the next GEMM reads this cotangent as (N*H*W, C) rows

    def infer(self, g, idx, image, kernel, stride, padding):
        require_float(self, g)
        expected = g.shape[:1] + (image[0],) + window_shape(image[1:], kernel, stride, padding)
        if idx.dtype != "int64" or idx.shape != g.shape or g.shape != expected:
            raise ShapeError(f"expects values and int64 offsets of shape {fmt_shape(expected)}, got {g} and {idx}")
        return Type(g.shape[:1] + tuple(image), FLOAT)

    def forward(self, xp, g, idx, image, kernel, stride, padding, out=None):
        (c, h, w), ((pt, pb), (pl, pr)) = image, padding
        padded = (g.shape[0], c, h + pt + pb, w + pl + pr)
        if out is not None and padded == tuple(out.shape):
            acc = out
        else:
            acc = empty(xp, padded, g.dtype, self.out_order)
        acc[...] = 0
        overlapping = stride[0] < kernel[0] or stride[1] < kernel[1]
        for k, rows, cols in _window_slices((h, w), kernel, stride, padding):
            if overlapping:
                acc[:, :, rows, cols] += xp.where(idx == k, g, 0)
            else:  # windows are disjoint: each entry receives from at most one window
                xp.copyto(acc[:, :, rows, cols], g, where=idx == k)
        if acc is out or out is None and padded[2:] == (h, w):
            return acc
        if out is None:
            out = empty(xp, g.shape[:2] + (h, w), g.dtype, self.out_order)
        out[...] = acc[:, :, pt:pt + h, pl:pl + w]
        return out

    def vjp(self, node, g):
        return [pool_gather(g, node.inputs[1], **_geometry(node)), None]

    def select(self, node, x):
        return pool_gather(x, node.inputs[1], **_geometry(node))

    def selection_axes(self, node):
        return _spatial_unless_padded(node)


pool_max_op, pool_argmax_op = register(PoolMax()), register(PoolArgmax())
pool_gather_op, pool_scatter_op = register(PoolGather()), register(PoolScatter())


def pool_argmax(x, kernel, stride, padding, y=None):
    """The offsets of the window maxima of x (``y``: the maxima, pool_max(x), when already at hand)."""
    geometry = dict(kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding))
    return pool_argmax_op(x, pool_max_op(x, **geometry) if y is None else y, **geometry)


def pool_gather(x, idx, kernel, stride, padding):
    return pool_gather_op(x, idx, kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding))


def pool_scatter(g, idx, image, kernel, stride, padding):
    return pool_scatter_op(g, idx, image=tuple(image), kernel=tuple(kernel), stride=tuple(stride),
                           padding=tuple(padding))


def _pool_geometry(x, kernel_size, stride, padding, what):
    if x.ndim != 4:
        raise ShapeError(f"{what} takes an NCHW input, got {x.type}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = padding_pairs(padding)
    try:
        window_shape(x.shape[2:], kernel, stride, padding)
    except ShapeError as e:
        raise ShapeError(f"{what} on input {x.type}: {e}") from None
    return kernel, stride, padding


def maxpool2d(x, kernel_size, stride=None, padding=0):
    """Max over each window (stride defaults to the kernel size; padding with -inf, at most half the
    kernel so that no window is all padding). Ties: the first maximum in row-major window order."""
    kernel, stride, padding = _pool_geometry(x, kernel_size, stride, padding, "maxpool2d")
    if any(2 * p > k for pads, k in zip(padding, kernel) for p in pads):
        raise ShapeError(f"maxpool2d: padding {padding} must be at most half the kernel {kernel}")
    return pool_max_op(x, kernel=kernel, stride=stride, padding=padding)


def avgpool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window (stride defaults to the kernel size). Padded entries are zeros that count
    in the mean (count_include_pad): every window divides by kh*kw."""
    kernel, stride, padding = _pool_geometry(x, kernel_size, stride, padding, "avgpool2d")
    return mean(windows(x, kernel, stride, padding), axis=(4, 5))


def global_avgpool(x):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""
    if x.ndim != 4:
        raise ShapeError(f"global_avgpool takes an NCHW input, got {x.type}")
    return mean(x, axis=(2, 3))


def flatten(x):
    """(N, ...) -> (N, prod(...)) in C order; keeps the batch axis."""
    return reshape(x, (x.shape[0], -1))
