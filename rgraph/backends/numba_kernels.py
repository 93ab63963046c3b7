"""Compiled CPU kernels (Numba) for im2col, col2im and max pooling (max, argmax, gather, scatter), each
one pass over its batch chunk (the NumPy backend runs chunks on threads; the kernels release the GIL),
where the ops' own kernels (ops/conv.py, ops/pool.py; what CuPy runs) make one NumPy pass per kernel
offset. Measured on VGG-mini's layers (float32, 2 cores): pooling 2.5-6x faster than those; on the
conv2 patches (128x16x16, 3x3x32 columns) im2col 2.2x and col2im 5.7x.

Every kernel reads and writes NHWC index order (N, H, W, C), and patch columns run (kh, kw, C): the
activations around a convolution are NHWC in memory (see Program.instructions), so the channel loop,
innermost, runs over contiguous memory. Padding is handled by bounds checks: entries outside the image
read 0, or -inf for the maximum, exactly as the reference kernels pad. The tests check each against
its op's own kernel.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..op import empty

NEG_INF = -np.inf
NHWC = (0, 2, 3, 1)
FEW_CHANNELS = 8   # fewer than a vector's float32 lanes: im2col copies whole window rows with NumPy


# Each kernel walks the windows (n, a, b) and their in-image offsets (i, j), bounds checked once per
# offset, with the channel loop innermost and vectorisable. A store that keeps the old value under a
# condition becomes a masked store (vmaskmov), which is slow on AMD CPUs (measured 2x on the whole
# kernel): the gather and scatter select values on their bits instead (``& mask``, the float arrays
# passed as integer views of the same memory) and argmax counts up to its offset, so their stores are
# plain ones. (The maximum keeps its masked store: selecting its bits measured slower.) Selecting by
# comparing the argmax offset with k beats looking entries up by it (4-5x on VGG-mini's layer 1).

@njit(nogil=True, cache=True)
def _pool_max(x, kh, kw, sh, sw, pt, pl, out):  # a NaN is the maximum; padding (-inf) never wins
    for n in range(out.shape[0]):
        for a in range(out.shape[1]):
            for b in range(out.shape[2]):
                out[n, a, b, :] = NEG_INF
                for i in range(kh):
                    h = a * sh + i - pt
                    for j in range(kw):
                        w = b * sw + j - pl
                        if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
                            for c in range(out.shape[3]):
                                m, v = out[n, a, b, c], x[n, h, w, c]
                                out[n, a, b, c] = m if m != m or v <= m else v


@njit(nogil=True, cache=True)
def _pool_argmax(x, y, kh, kw, sh, sw, pt, pl, out):  # first offset equal to the maximum y (or NaN)
    for n in range(out.shape[0]):
        for a in range(out.shape[1]):
            for b in range(out.shape[2]):
                out[n, a, b, :] = -1
                for i in range(kh):
                    h = a * sh + i - pt
                    for j in range(kw):
                        w, k = b * sw + j - pl, i * kw + j
                        inside = 0 <= h < x.shape[1] and 0 <= w < x.shape[2]
                        for c in range(out.shape[3]):
                            v = x[n, h, w, c] if inside else NEG_INF   # the padding reads -inf
                            first = out[n, a, b, c] < 0 and (v == y[n, a, b, c] or v != v)
                            out[n, a, b, c] += np.int64(first) * (k + 1)   # -1 -> k, once


@njit(nogil=True, cache=True)
def _pool_gather(xbits, idx, kh, kw, sh, sw, pt, pl, outbits):  # the entry at each window's offset; 0 outside
    for n in range(outbits.shape[0]):
        for a in range(outbits.shape[1]):
            for b in range(outbits.shape[2]):
                outbits[n, a, b, :] = 0
                for i in range(kh):
                    h = a * sh + i - pt
                    for j in range(kw):
                        w, k = b * sw + j - pl, i * kw + j
                        if 0 <= h < xbits.shape[1] and 0 <= w < xbits.shape[2]:
                            for c in range(outbits.shape[3]):
                                outbits[n, a, b, c] |= xbits[n, h, w, c] & -np.int32(idx[n, a, b, c] == k)


@njit(nogil=True, cache=True)
def _pool_scatter(gbits, idx, kh, kw, sh, sw, pt, pl, out):  # the adjoint of _pool_gather, summed
    picked = np.empty(gbits.shape[3], gbits.dtype)   # g's entries at offset k, +0.0 elsewhere
    value = picked.view(out.dtype)
    for n in range(out.shape[0]):
        out[n] = 0
        for a in range(gbits.shape[1]):
            for b in range(gbits.shape[2]):
                for i in range(kh):
                    h = a * sh + i - pt
                    for j in range(kw):
                        w, k = b * sw + j - pl, i * kw + j
                        if 0 <= h < out.shape[1] and 0 <= w < out.shape[2]:
                            for c in range(gbits.shape[3]):
                                picked[c] = gbits[n, a, b, c] & -np.int32(idx[n, a, b, c] == k)
                            for c in range(gbits.shape[3]):
                                out[n, h, w, c] += value[c]


@njit(nogil=True, cache=True)
def _pool_gather_tiles(xbits, idx, kh, kw, outbits):  # windows tiling the image: rows of x read in order
    for n in range(outbits.shape[0]):
        for a in range(outbits.shape[1]):
            for i in range(kh):
                for b in range(outbits.shape[2]):
                    for j in range(kw):
                        h, w, k = a * kh + i, b * kw + j, i * kw + j
                        if k == 0:
                            for c in range(outbits.shape[3]):
                                outbits[n, a, b, c] = xbits[n, h, w, c] & -np.int32(idx[n, a, b, c] == k)
                        else:
                            for c in range(outbits.shape[3]):
                                outbits[n, a, b, c] |= xbits[n, h, w, c] & -np.int32(idx[n, a, b, c] == k)


@njit(nogil=True, cache=True)
def _pool_scatter_tiles(gbits, idx, kh, kw, outbits):  # windows tiling the image: each entry written once
    for n in range(outbits.shape[0]):
        for a in range(gbits.shape[1]):
            for i in range(kh):
                for b in range(gbits.shape[2]):
                    for j in range(kw):
                        h, w, k = a * kh + i, b * kw + j, i * kw + j
                        for c in range(gbits.shape[3]):
                            outbits[n, h, w, c] = gbits[n, a, b, c] & -np.int32(idx[n, a, b, c] == k)
        outbits[n, gbits.shape[1] * kh:] = 0        # the rows and columns past the last window
        outbits[n, :, gbits.shape[2] * kw:] = 0


@njit(nogil=True, cache=True)
def _im2col(x, kh, kw, sh, sw, pt, pl, wo, out):  # out[n, a*wo + b, (i*kw + j)*C + c] = x[n, a*sh+i-pt, ...]
    C = x.shape[3]
    for n in range(out.shape[0]):
        for row in range(out.shape[1]):
            a, b = row // wo, row % wo
            for i in range(kh):
                for j in range(kw):
                    h, w, col = a * sh + i - pt, b * sw + j - pl, (i * kw + j) * C
                    if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
                        for c in range(C):
                            out[n, row, col + c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            out[n, row, col + c] = 0


@njit(nogil=True, cache=True)
def _col2im(g, kh, kw, sh, sw, pt, pl, wo, out):  # the adjoint of _im2col, summed
    C = out.shape[3]
    for n in range(out.shape[0]):
        out[n] = 0
        for row in range(g.shape[1]):
            a, b = row // wo, row % wo
            for i in range(kh):
                for j in range(kw):
                    h, w, col = a * sh + i - pt, b * sw + j - pl, (i * kw + j) * C
                    if 0 <= h < out.shape[1] and 0 <= w < out.shape[2]:
                        for c in range(C):
                            out[n, h, w, c] += g[n, row, col + c]


# --- the backend kernels: the ops' forward signatures over NCHW arrays of any memory order ---------------

def _nhwc(a):
    return a.transpose(0, 2, 3, 1)


def _nhwc_input(a):
    """An input as a C-contiguous NHWC array: a view when its memory is NHWC already (the activations
    around a convolution), else one copy, far cheaper than the channel loop striding through NCHW
    memory (a flattened dense layer's cotangent: 2.6 -> 0.9 ms for VGG-mini's last pool scatter)."""
    return np.ascontiguousarray(_nhwc(a))


def _geometry(kernel, stride, padding):
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel, stride, padding
    return kh, kw, sh, sw, pt, pl


def _tiles(kernel, stride, padding):
    """Whether the windows tile the image: stride = kernel and no padding (the usual max pooling)."""
    return tuple(kernel) == tuple(stride) and not any(any(p) for p in padding)


def _result(out, shape, dtype):
    return empty(np, shape, dtype, NHWC) if out is None else out


def _bits(a):
    """The same memory as integers of the same width (what the kernels select on)."""
    return a.view(np.int32 if a.itemsize == 4 else np.int64)


def pool_max(xp, x, kernel, stride, padding, out=None):
    from ..ops.conv import window_shape
    result = _result(out, x.shape[:2] + window_shape(x.shape[2:], kernel, stride, padding), x.dtype)
    _pool_max(_nhwc_input(x), *_geometry(kernel, stride, padding), _nhwc(result))
    return result


def pool_argmax(xp, x, y, kernel, stride, padding, out=None):
    result = _result(out, y.shape, np.int64)
    _pool_argmax(_nhwc_input(x), _nhwc_input(y), *_geometry(kernel, stride, padding), _nhwc(result))
    return result


def pool_gather(xp, x, idx, kernel, stride, padding, out=None):
    """Where the windows tile the image, x is read row by row, each entry once and in memory order
    (VGG-mini's layer 1: 2.15 -> 1.85 ms)."""
    result = _result(out, idx.shape, x.dtype)
    if _tiles(kernel, stride, padding):
        _pool_gather_tiles(_bits(_nhwc_input(x)), _nhwc_input(idx), *kernel, _bits(_nhwc(result)))
        return result
    _pool_gather(_bits(_nhwc_input(x)), _nhwc_input(idx), *_geometry(kernel, stride, padding), _bits(_nhwc(result)))
    return result


def pool_scatter(xp, g, idx, image, kernel, stride, padding, out=None):
    """Where the windows tile the image (stride = kernel, no padding: the usual max pooling), each entry
    of the result is written once, with no zeroing pass or read-back (VGG-mini's layer 1: 3.3 -> 1.9 ms)."""
    result = _result(out, g.shape[:1] + tuple(image), g.dtype)
    if _tiles(kernel, stride, padding):
        _pool_scatter_tiles(_bits(_nhwc_input(g)), _nhwc_input(idx), *kernel, _bits(_nhwc(result)))
        return result
    _pool_scatter(_bits(_nhwc_input(g)), _nhwc_input(idx), *_geometry(kernel, stride, padding), _nhwc(result))
    return result


def im2col(xp, x, kernel, stride, padding, out=None):
    from ..ops.conv import window_shape
    (kh, kw), (ho, wo) = kernel, window_shape(x.shape[2:], kernel, stride, padding)
    result = np.empty((x.shape[0], ho * wo, kh * kw * x.shape[1]), x.dtype) if out is None else out
    if x.shape[1] < FEW_CHANNELS and result.flags.c_contiguous:
        _im2col_few_channels(x, kernel, stride, padding, (ho, wo), result)
    else:
        _im2col(_nhwc_input(x), *_geometry(kernel, stride, padding), wo, result)
    return result


def _im2col_few_channels(x, kernel, stride, padding, out_hw, out):
    """im2col as one NumPy copy of the zero-padded NHWC image's windows. With few channels (an image
    network's input) the compiled loop's innermost run is a few elements long, where NumPy joins each
    window row's kw*C contiguous elements into one: VGG's 3-channel 32x32 input, batch 128: 8.3 -> 4.4 ms."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
    padded = np.pad(_nhwc(x), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    np.copyto(out.reshape((x.shape[0],) + tuple(out_hw) + (kh, kw, x.shape[1])),
              windows.transpose(0, 1, 2, 4, 5, 3))   # (N, Ho, Wo, C, kh, kw) -> columns (kh, kw, C)


def col2im(xp, g, image, kernel, stride, padding, out=None):
    from ..ops.conv import window_shape
    result = _result(out, g.shape[:1] + tuple(image), g.dtype)
    _col2im(g, *_geometry(kernel, stride, padding), window_shape(image[1:], kernel, stride, padding)[1],
            _nhwc(result))
    return result


KERNELS = {"im2col": im2col, "col2im": col2im, "pool_max": pool_max, "pool_argmax": pool_argmax,
           "pool_gather": pool_gather, "pool_scatter": pool_scatter}
