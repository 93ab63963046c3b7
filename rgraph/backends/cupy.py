"""The GPU backend: CuPy arrays, cuBLAS GEMMs (``cupy.matmul`` with ``out=``), fused elementwise
kernels compiled from the CUDA C printer as raw ``extern "C"`` kernels (``cupy.RawKernel``), and one
kernel each for im2col, col2im and max pooling (``cuda_kernels``).

Parameters, batch and every cached value stay on the device; a pass never copies to the host (the
loss, a Python float, is the one read-back, and only when ``st.loss`` is asked for). This module is
imported only when the backend is requested, so ``import rgraph`` never imports CuPy.
"""
from __future__ import annotations

import numpy as np

from . import OUT_KERNELS, Backend
from .cuda_kernels import WindowKernels

BLOCK = 256
SOURCES: dict = {}  # generated source -> Fused op (read by the tests' NumPy stand-in of CuPy)


class CudaKernel:
    """One fused kernel: the generated source compiled once per dtype, launched one thread an element."""

    def __init__(self, cp, op, dtype):
        from ..compiler.fuse import cuda_source
        self.cp, self.op, self.dtype = cp, op, np.dtype(dtype)
        self.source = cuda_source(op, str(self.dtype))
        SOURCES[self.source] = op
        self.kernel = cp.RawKernel(self.source, op.name)

    def __call__(self, xp, *arrays, shape=None, out=None):
        cp = self.cp
        shape = tuple(shape)
        ins = [cp.ascontiguousarray(a) for a in arrays]
        if out is None:
            out = tuple(cp.empty(shape, dtype=self.dtype) for _ in self.op.exprs)
        n = int(np.prod(shape, dtype=np.int64))
        if n:
            self.kernel(((n + BLOCK - 1) // BLOCK,), (BLOCK,), (*ins, *out, np.int64(n)))
        return out[0] if len(out) == 1 else tuple(out)


def make_backend(cp) -> Backend:
    """The CuPy backend over the module ``cp`` (the real CuPy, or a stand-in with the same calls)."""
    return Backend("cupy", cp, out_kernels={**OUT_KERNELS, **WindowKernels(cp).kernels()},
                   fused=lambda op, dtype: CudaKernel(cp, op, dtype))
