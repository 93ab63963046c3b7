"""Backends: an array namespace, a table of kernels that override an op's reference kernel, and a
compiler for fused elementwise kernels (numexpr on the CPU, generated CUDA C on the GPU).

A kernel has the op's ``forward`` signature ``kernel(xp, *arrays, **attrs)``; kernels listed in
``out_kernels``, and those of ops declaring ``writes_out``, also take ``out=`` (the runtime passes a
preallocated buffer in the vector stage). ``per_sample(op, kernel)``, when a backend gives it, wraps the
kernel of an op declaring ``per_sample`` (the NumPy backend runs it on batch chunks across threads).
"""
from __future__ import annotations

import numpy as np


class Backend:
    """``xp`` is the array namespace (NumPy or CuPy); ``kernels`` maps op names to faster kernels with the
    op's ``forward`` signature; ``out_kernels`` those that also write into ``out=``; ``fused(op, dtype)``
    compiles a fused elementwise kernel; ``per_sample(op, kernel)`` wraps the kernels of per-sample ops.
    Everything else runs the op's own kernel against ``xp``. ``recycles``: whether a program hands a
    released state's arrays to the next bind (NumPy; CuPy's memory pool already reuses device memory).
    ``tiles``: the bytes of intermediate one batch chunk of a Tiled node holds (compiler.tile), or None
    where the backend runs no such pairs."""

    def __init__(self, name, xp, kernels=None, out_kernels=None, fused=None, per_sample=None, recycles=False,
                 tiles=None):
        self.name, self.xp, self.kernels, self.recycles = name, xp, dict(kernels or {}), recycles
        self.tiles = tiles
        self.out_kernels = dict(out_kernels or {})
        self._fused_compiler, self._per_sample = fused, per_sample
        self._fused_cache = {}

    def kernel(self, op, dtype=None):
        if op.kind == "fused":
            key = (id(op), str(dtype))
            if key not in self._fused_cache:
                self._fused_cache[key] = (op, self._fused_compiler(op, np.dtype(dtype or "float64"))
                                          if self._fused_compiler else op.forward)
            return self._fused_cache[key][1]
        kernel = self.out_kernels.get(op.name) or self.kernels.get(op.name) or op.forward
        # a per-sample op's kernel may be run on chunks of the batch (needs out=)
        return self._per_sample(op, kernel) if op.per_sample and self._per_sample and self.writes_out(op) else kernel

    def writes_out(self, op) -> bool:
        """Whether ``op``'s kernel here writes into a given ``out=`` buffer."""
        if op.kind == "fused" or op.name in self.out_kernels:
            return True
        return op.writes_out and op.name not in self.kernels

    def in_place(self, op):
        """Which (same-shaped) inputs ``op``'s kernel may write its result over: True for any (a one-output
        fused kernel without temporaries reads each element before it writes it), else the positions the
        op declares in ``overwrites`` (matmul_add's accumulator)."""
        from ..compiler.fuse import statements
        if op.kind == "fused":
            return len(op.exprs) == 1 and len(statements(op.exprs, "numexpr", "transcendental")) == 1
        return tuple(op.overwrites)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        return np.asarray(a) if self.xp is np else self.xp.asnumpy(a)

    def is_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def __repr__(self):
        return f"<backend {self.name}>"


def gemm_operands(a, b, transpose_a=False, transpose_b=False):
    """(A, B, rows): the 2-D matrices of ops.linalg.MatMul's operands (leading axes of an operand index
    rows, so an (N, P, K) operand is one (N*P, K) matrix) and the leading axes of the result."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    A, B = (a2.T if transpose_a else a2), (b2.T if transpose_b else b2)
    return A, B, ((A.shape[0],) if transpose_a or a.ndim == 2 else a.shape[:-1])


def matmul_out(xp, a, b, transpose_a=False, transpose_b=False, out=None):
    """One GEMM (BLAS / cuBLAS), into ``out`` when given."""
    A, B, rows = gemm_operands(a, b, transpose_a, transpose_b)
    if out is not None:
        xp.matmul(A, B, out=out.reshape(A.shape[0], B.shape[1]))
        return out
    return xp.matmul(A, B).reshape(rows + (B.shape[1],))


def matmul_add_out(xp, c, a, b, transpose_a=False, transpose_b=False, out=None):
    """c + op(a) op(b): the GEMM into ``out``, then c added (a temporary only where out is c's buffer)."""
    if out is None:
        return c + matmul_out(xp, a, b, transpose_a, transpose_b)
    if xp.may_share_memory(out, c):
        out += matmul_out(xp, a, b, transpose_a, transpose_b)
        return out
    matmul_out(xp, a, b, transpose_a, transpose_b, out=out)
    out += c
    return out


def sum_out(xp, x, axis=None, keepdims=False, out=None):
    return xp.sum(x, axis=axis, keepdims=keepdims, out=out)


OUT_KERNELS = {"matmul": matmul_out, "matmul_add": matmul_add_out, "sum": sum_out}


def run_tiled(xp, kernels, layout, chunk, buffers, *arrays, out=None, accumulate=None):
    """A Tiled node (compiler.tile): for each ``chunk`` samples of the batch, each member's kernel in turn
    writes its intermediate into its chunk-sized buffer (so it stays in cache), the next reads it from
    there, and the last writes its slice of the result, or, where it sums over the batch (layout.sums),
    the whole result from the first chunk and ``accumulate(result, *its summed inputs)`` adds each next
    chunk's. ``layout`` is a TileLayout; kernels take ``out=``."""
    from ..op import empty
    if out is None:
        out = empty(xp, layout.out_shape, layout.dtype, layout.out_order)
    n, last = layout.n, len(kernels) - 1
    for s in range(0, n, chunk):
        e, taken, value = min(n, s + chunk), 0, None
        for k, (kernel, (arity, split, position)) in enumerate(zip(kernels, layout.steps, strict=True)):
            own = [a[s:e] if cut else a for a, cut in zip(arrays[taken:taken + arity], split, strict=True)]
            taken += arity
            if position is not None:
                own.insert(position, value)
            if k < last:
                value = kernel(*own, out=buffers[k][:e - s])
            elif not layout.sums:
                kernel(*own, out=out[s:e])
            elif s == 0:
                kernel(*own, out=out)
            else:
                accumulate(out, *own[len(own) - layout.sums:], out=out)
    return out


def cupy_usable() -> bool:
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:  # no CuPy, no driver, no device: all mean "not usable"
        return False


def get_backend(name: str) -> Backend:
    if isinstance(name, Backend):
        return name
    if name == "auto":
        name = "cupy" if cupy_usable() else "numpy"
    if name == "numpy":
        from .numpy import BACKEND
        return BACKEND
    if name == "cupy":
        if not cupy_usable():
            raise RuntimeError("backend 'cupy' needs CuPy and a usable CUDA device (pip install 'rgraph[gpu]')")
        from .cupy import make_backend
        import cupy
        return make_backend(cupy)
    raise ValueError(f"unknown backend {name!r}; use 'numpy', 'cupy' or 'auto'")
