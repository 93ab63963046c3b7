"""The GPU backend: CuPy arrays, cuBLAS GEMMs (``cupy.matmul`` with ``out=``), fused elementwise
kernels compiled from the CUDA C printer as raw ``extern "C"`` kernels (``cupy.RawKernel``), and one
kernel each for im2col, col2im and max pooling (``cuda_kernels``).

Parameters, batch and every cached value stay on the device; a pass never copies to the host (the
loss, a Python float, is the one read-back, and only when ``st.loss`` is asked for). This module is
imported only when the backend is requested, so ``import rgraph`` never imports CuPy.
"""
from __future__ import annotations

import numpy as np

from ..op import empty, result_order
from . import OUT_KERNELS, Backend
from .cuda_kernels import WindowKernels

BLOCK = 256
SOURCES: dict = {}  # generated source -> Fused op (read by the tests' NumPy stand-in of CuPy)


class CudaKernel:
    """One fused kernel: the generated source compiled once per dtype and memory order, launched one
    thread an element. The threads walk the output in the memory order its buffer has (``out``), else
    the one most full-size inputs share, so NHWC activations are read and written where they lie; an
    input in another order is copied into that one first."""

    def __init__(self, cp, op, dtype):
        self.cp, self.op, self.dtype = cp, op, np.dtype(dtype)
        self.kernels = {}   # memory order (None: C order) -> compiled kernel
        self._kernel(None)

    def _kernel(self, order):
        if order not in self.kernels:
            from ..compiler.fuse import cuda_name, cuda_source
            source = cuda_source(self.op, str(self.dtype), order)
            SOURCES[source] = self.op
            self.kernels[order] = self.cp.RawKernel(source, cuda_name(self.op, order))
        return self.kernels[order]

    def __call__(self, xp, *arrays, shape=None, out=None):
        cp = self.cp
        shape = tuple(shape)
        order = _walk_order(shape, arrays, out)
        axes = tuple(range(len(shape))) if order is None else order
        ins = [cp.ascontiguousarray(_permuted(a, len(shape), axes)) for a in arrays]
        if out is None:
            out = tuple(empty(cp, shape, self.dtype, order) for _ in self.op.exprs)
        n = int(np.prod(shape, dtype=np.int64))
        if n:
            outs = [o.transpose(axes) for o in out]
            if not all(o.flags.c_contiguous for o in outs):
                raise ValueError(f"fused kernel {self.op.name}: its output buffers must be dense and share one memory "
                                 f"order, got strides {[o.strides for o in out]} for shape {shape}")
            self._kernel(order)(((n + BLOCK - 1) // BLOCK,), (BLOCK,), (*ins, *outs, np.int64(n)))
        return out[0] if len(out) == 1 else tuple(out)


def _walk_order(shape, arrays, out):
    """The memory order (None: C order) the threads walk: ``out``'s, else the one most full-size inputs
    have; C order where that would move the batch axis from the front (its size is left to ``n``)."""
    order = result_order(shape, arrays, out)
    return order if order is None or order[0] == 0 else None


def _permuted(a, nd, axes):
    """Input ``a`` (broadcastable to nd axes) with its axes permuted to ``axes``."""
    a = a.reshape((1,) * (nd - a.ndim) + a.shape)
    return a.transpose(axes)


def make_backend(cp) -> Backend:
    """The CuPy backend over the module ``cp`` (the real CuPy, or a stand-in with the same calls)."""
    return Backend("cupy", cp, out_kernels={**OUT_KERNELS, **WindowKernels(cp).kernels()},
                   fused=lambda op, dtype: CudaKernel(cp, op, dtype))
