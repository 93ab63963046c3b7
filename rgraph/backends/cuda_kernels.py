"""CUDA kernels for im2col, col2im and max pooling (max, argmax, gather, scatter) on the CuPy backend.

The ops' own kernels (ops/conv.py, ops/pool.py) run on CuPy as one array pass per kernel offset: a 3x3
im2col or col2im is 11 launches, a 2x2 pool scatter 9. On a GPU each launch costs several microseconds
of host time, more than these small layers take on the device, so here each op is one launch of one
thread per output element.

Arrays are addressed through their element strides, so an input or output in either memory order (the
activations around a convolution are NHWC in memory) is read and written where it lies, without a copy;
threads enumerate outputs in NHWC order, so neighbouring threads touch neighbouring channels. Padding
is a bounds check: outside the image reads ``pad`` (0, or -inf for the maximum), as the reference pads.
Each kernel sums in the reference's order (kernel offsets ascending), and argmax keeps its first
maximum, a NaN counting as the maximum. The sources are plain ``extern "C"`` CUDA C: the tests compile
them with nvcc to PTX and, as C++, run them on the host against the reference kernels.
"""
from __future__ import annotations

import numpy as np

from ..op import empty

BLOCK = 256
NHWC = (0, 2, 3, 1)
C_TYPES = {"float32": "float", "float64": "double"}

GEOMETRY = ("N", "C", "H", "W", "Ho", "Wo", "kh", "kw", "sh", "sw", "pt", "pl")  # H, W: image; Ho, Wo: windows


def _strides(name):
    return [f"{name}s{a}" for a in range(4)]


def _sum_over_windows(statement):
    """A body for an image pixel (n, c, h, w): ``acc`` summed by ``statement`` over every window (a, b)
    whose offset (ki, kj) lands on the pixel, offsets ascending (the reference's order), then stored."""
    return """
    T acc = 0;
    for (long long ki = 0; ki < kh; ++ki) {
        const long long r = h + pt - ki, a = r / sh;
        if (r < 0 || r % sh != 0 || a >= Ho) continue;
        for (long long kj = 0; kj < kw; ++kj) {
            const long long s = w + pl - kj, b = s / sw;
            if (s < 0 || s % sw != 0 || b >= Wo) continue;
            STATEMENT
        }
    }
    AT(x, n, c, h, w) = acc;""".replace("STATEMENT", statement)


# name -> (array parameters, extra scalar parameters, what each thread enumerates, body). A body sees
# the geometry, the strides ({x}s0..{x}s3 for array x), its output coordinates (n, c, a, b) for a
# window grid (Ho x Wo) or (n, c, h, w) for an image (H x W), AT(x, n, c, h, w), x's element, and
# INSIDE(h, w), whether a padded position lies in the image.
KERNELS = {
    "pool_max": (["const T* x", "T* y"], ["const T pad"], "windows", """
    T m = pad;
    for (long long ki = 0; ki < kh; ++ki)
        for (long long kj = 0; kj < kw; ++kj) {
            const long long h = a * sh + ki - pt, w = b * sw + kj - pl;
            const T v = INSIDE(h, w) ? AT(x, n, c, h, w) : pad;
            m = (m != m || v <= m) ? m : v;   // a NaN is the maximum
        }
    AT(y, n, c, a, b) = m;"""),
    "pool_argmax": (["const T* x", "const T* y", "long long* idx"], ["const T pad"], "windows", """
    const T m = AT(y, n, c, a, b);
    long long k = kh * kw - 1;               // the last offset, unless an earlier one holds the maximum
    for (long long q = 0; q < kh * kw - 1; ++q) {
        const long long h = a * sh + q / kw - pt, w = b * sw + q % kw - pl;
        const T v = INSIDE(h, w) ? AT(x, n, c, h, w) : pad;
        if (v == m || v != v) { k = q; break; }
    }
    AT(idx, n, c, a, b) = k;"""),
    "pool_gather": (["const T* x", "const long long* idx", "T* y"], [], "windows", """
    const long long k = AT(idx, n, c, a, b);
    const long long h = a * sh + k / kw - pt, w = b * sw + k % kw - pl;
    AT(y, n, c, a, b) = INSIDE(h, w) ? AT(x, n, c, h, w) : (T)0;"""),
    "pool_scatter": (["const T* g", "const long long* idx", "T* x"], [], "image",
                     _sum_over_windows("if (AT(idx, n, c, a, b) == ki * kw + kj) acc += AT(g, n, c, a, b);")),
    "im2col": (["const T* x", "T* cols"], [], "patches", """
    const long long h = a * sh + ki - pt, w = b * sw + kj - pl;
    cols[i] = INSIDE(h, w) ? AT(x, n, c, h, w) : (T)0;"""),
    "col2im": (["const T* cols", "T* x"], [], "image",
               _sum_over_windows("acc += cols[((n * Ho + a) * Wo + b) * (kh * kw * C) + (ki * kw + kj) * C + c];")),
}

# the output coordinates of thread i, NHWC order (channels fastest); patches: im2col's (N, Ho*Wo, kh*kw*C) rows
COORDINATES = {
    "windows": "const long long c = i % C, b = (i / C) % Wo, a = (i / (C * Wo)) % Ho, n = i / (C * Wo * Ho);",
    "image": "const long long c = i % C, w = (i / C) % W, h = (i / (C * W)) % H, n = i / (C * W * H);",
    "patches": "const long long c = i % C, kj = (i / C) % kw, ki = (i / (C * kw)) % kh, "
               "b = (i / (C * kw * kh)) % Wo, a = (i / (C * kw * kh * Wo)) % Ho, n = i / (C * kw * kh * Wo * Ho);",
}


def _is_strided(decl):
    """Whether an array parameter is addressed through AT (all but the contiguous patch matrix)."""
    return not decl.endswith("cols")


def cuda_window_source(name, dtype="float32") -> str:
    """The raw CUDA C of one window kernel for ``dtype``."""
    arrays, scalars, space, body = KERNELS[name]
    strided = [decl.split("*")[-1].strip() for decl in arrays if _is_strided(decl)]
    params = list(arrays) + [f"const long long {g}" for g in GEOMETRY]
    params += [f"const long long {s}" for x in strided for s in _strides(x)] + scalars + ["const long long total"]
    return "\n".join([
        f"typedef {C_TYPES[str(np.dtype(dtype))]} T;",
        "#define AT(x, n, c, h, w) x[(n) * x##s0 + (c) * x##s1 + (h) * x##s2 + (w) * x##s3]",
        "#define INSIDE(h, w) ((h) >= 0 && (h) < H && (w) >= 0 && (w) < W)",
        f'extern "C" __global__ void rg_{name}({", ".join(params)})',
        "{",
        "    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
        "    if (i >= total) return;",
        f"    {COORDINATES[space]}",
        body.strip("\n"),
        "}",
        "#undef AT",
        "#undef INSIDE",
    ]) + "\n"


def _geometry(image, kernel, stride, padding):
    """The GEOMETRY values for an image (N, C, H, W)."""
    from ..ops.conv import window_shape
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel, stride, padding
    return (*image, *window_shape(image[2:], kernel, stride, padding), kh, kw, sh, sw, pt, pl)


class WindowKernels:
    """The six window ops' kernels for CuPy module ``cp``, each compiled once per dtype on first use; a
    dict of the ops' forward signatures (``kernels()``), writing into ``out=`` when given."""

    def __init__(self, cp):
        self.cp, self._compiled = cp, {}

    def _launch(self, name, dtype, arrays, geometry, scalars, total):
        key = (name, str(dtype))
        if key not in self._compiled:
            self._compiled[key] = self.cp.RawKernel(cuda_window_source(name, dtype), f"rg_{name}")
        strided = [a for a, decl in zip(arrays, KERNELS[name][0], strict=True) if _is_strided(decl)]
        strides = [np.int64(s // a.itemsize) for a in strided for s in a.strides]
        if total:
            self._compiled[key](((total + BLOCK - 1) // BLOCK,), (BLOCK,),
                                (*arrays, *map(np.int64, geometry), *strides, *scalars, np.int64(total)))

    def _result(self, out, shape, dtype):
        return empty(self.cp, shape, dtype, NHWC) if out is None else out

    def pool_max(self, xp, x, kernel, stride, padding, out=None):
        geo = _geometry(x.shape, kernel, stride, padding)
        y = self._result(out, x.shape[:2] + geo[4:6], x.dtype)
        self._launch("pool_max", x.dtype, (x, y), geo, (x.dtype.type(-np.inf),), y.size)
        return y

    def pool_argmax(self, xp, x, y, kernel, stride, padding, out=None):
        idx = self._result(out, y.shape, np.int64)
        self._launch("pool_argmax", x.dtype, (x, y, idx), _geometry(x.shape, kernel, stride, padding),
                     (x.dtype.type(-np.inf),), idx.size)
        return idx

    def pool_gather(self, xp, x, idx, kernel, stride, padding, out=None):
        y = self._result(out, idx.shape, x.dtype)
        self._launch("pool_gather", x.dtype, (x, idx, y), _geometry(x.shape, kernel, stride, padding), (), y.size)
        return y

    def pool_scatter(self, xp, g, idx, image, kernel, stride, padding, out=None):
        shape = g.shape[:1] + tuple(image)
        x = self._result(out, shape, g.dtype)
        self._launch("pool_scatter", g.dtype, (g, idx, x), _geometry(shape, kernel, stride, padding), (), x.size)
        return x

    def im2col(self, xp, x, kernel, stride, padding, out=None):
        geo = _geometry(x.shape, kernel, stride, padding)
        shape = (x.shape[0], geo[4] * geo[5], kernel[0] * kernel[1] * x.shape[1])
        cols = self.cp.empty(shape, x.dtype) if out is None or not out.flags.c_contiguous else out
        self._launch("im2col", x.dtype, (x, cols), geo, (), cols.size)
        if out is not None and cols is not out:
            out[...] = cols
        return out if out is not None else cols

    def col2im(self, xp, cols, image, kernel, stride, padding, out=None):
        shape = cols.shape[:1] + tuple(image)
        x = self._result(out, shape, cols.dtype)
        self._launch("col2im", cols.dtype, (self.cp.ascontiguousarray(cols), x),
                     _geometry(shape, kernel, stride, padding), (), x.size)
        return x

    def kernels(self) -> dict:
        return {name: getattr(self, name) for name in KERNELS}
