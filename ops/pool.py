"""Pooling: gathers over the windows of ops/conv.py.

Max pooling is ``gather(P, argmax(P))`` over the windows P: argmax is a non-differentiable auxiliary
value, so R{maxpool} = gather(R{P}, argmax(P)) (R{P} taken where P is largest, not the max of R{P})
and the VJP scatters g to the same positions. Ties go to the first maximum in window order (row-major
over the kernel), as numpy.argmax and cupy.argmax both do: deterministic on both backends.
"""
import numpy as np

from rgraph.errors import ShapeError, fmt_shape
from rgraph.graph import FLOAT, Type
from rgraph.op import Op, register, require_float

from .conv import padding_pairs, pair, window_shape, windows
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
    name, linear_in, nondiff = "gather", (0,), (1,)

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


class Scatter(Op):
    """y[..., k] = g[...] if k == idx[...] else 0: the adjoint of gather. vjp: gather(g, idx)."""
    name, linear_in, nondiff = "scatter", (0,), (1,)

    def infer(self, g, idx, size):
        require_float(self, g)
        if idx.shape != g.shape:
            raise ShapeError(f"indices {idx} do not match values {g}")
        return Type(g.shape + (int(size),), FLOAT)

    def forward(self, xp, g, idx, size):
        return (xp.arange(size) == idx[..., None]) * g[..., None]

    def vjp(self, node, g):
        return [gather(g, node.inputs[1]), None]


argmax_op, gather_op, scatter_op = register(Argmax()), register(Gather()), register(Scatter())


def argmax(x):
    return argmax_op(x)


def gather(x, idx):
    return gather_op(x, idx)


def scatter(g, idx, size):
    return scatter_op(g, idx, size=int(size))


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
    win = windows(x, kernel, stride, padding, pad_value=-np.inf)
    n, c, ho, wo, kh, kw = win.shape
    flat = reshape(win, (n, c, ho, wo, kh * kw))
    return gather(flat, argmax(flat))


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
