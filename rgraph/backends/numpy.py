"""The CPU backend: NumPy (BLAS GEMMs with ``out=``); fused elementwise kernels as in-place NumPy ufunc
sequences (ufunc_kernel.py), or as numexpr statements whose transcendental calls run as NumPy ufuncs
(RGRAPH_FUSED=numexpr); max pooling's kernels compiled with Numba (numba_kernels.py); and every op
declaring ``per_sample`` (im2col, col2im, the pooling ops) run, where they allocate their result, on
cache-sized batch chunks across threads. Every kernel here is checked against the op's own kernel in the tests."""
from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..graph import FLOAT, Type
from ..op import empty

from . import OUT_KERNELS, Backend, gemm_operands
from .blas import gemm_acc
from .numba_fused import _data
from .ufunc_kernel import UfuncKernel

try:
    import numexpr
except ImportError:  # pragma: no cover - numexpr is a dependency; this keeps a bare NumPy install working
    numexpr = None


def _split_call(text):
    """``("exp", "(a + b)")`` when ``text`` is one transcendental call ``exp((a + b))``, else None."""
    from ..compiler.fuse import CALLS
    head, _, rest = text.partition("(")
    if head not in CALLS or not rest.endswith(")"):
        return None
    depth = 0
    for ch in rest[:-1]:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return None  # the call closes before the end: ``exp(a) * b``
    return head, rest[:-1]


class NumexprKernel:
    """A fused kernel as numexpr statements: temporaries then one expression per output. Constants are
    typed scalars of the program dtype, so float32 stays float32. Each transcendental call is its own
    statement, evaluated by a NumPy ufunc in place on its numexpr-computed argument: NumPy's SIMD exp and
    tanh run several times faster than numexpr's without Intel VML (measured in float32, 2 cores)."""

    def __init__(self, op, dtype):
        from ..compiler.fuse import numexpr_program
        self.op, self.dtype = op, np.dtype(dtype)
        program, consts = numexpr_program(op)
        self.consts = {name: self.dtype.type(v) for name, v in consts.items()}
        self.program = [(n, s, int(n[3:]) if n.startswith("out") else None, _split_call(s)) for n, s in program]
        self.n_out = len(op.exprs)
        # an output whose expression reads an input of the full output shape can be written in place
        full = {p for p, t in zip(op.params, op.in_types, strict=True) if tuple(t.shape) == op.out_shape}
        from .. import expr as ex
        self.full = [bool(ex.variables(e) & full) and e.op not in ("var", "const") for e in op.exprs]
        self.source = op.source("numexpr", str(self.dtype))

    def __call__(self, xp, *arrays, shape=None, out=None):
        env = dict(zip(self.op.params, arrays, strict=True))
        env.update(self.consts)
        with np.errstate(over="ignore", under="ignore"):  # exp(-a) = inf is sigmoid's exact limit 0;
            return self._run(env, shape, out)          # numexpr statements never warn either

    def _run(self, env, shape, out):
        results = [None] * self.n_out
        for name, text, k, call in self.program:
            target = None if out is None or k is None else out[k]
            if call is not None:
                env[name] = self._call(call, env, shape if k is not None else None, target)
                if k is not None:
                    results[k] = env[name]
                continue
            if k is None:
                env[name] = numexpr.evaluate(text, local_dict=env)
                continue
            if self.full[k]:
                r = numexpr.evaluate(text, local_dict=env, out=target, casting="unsafe")
            else:  # a constant or an expression over broadcast inputs only: broadcast it into place
                r = self._broadcast(numexpr.evaluate(text, local_dict=env), shape, target)
            env[name] = results[k] = r
        return results[0] if self.n_out == 1 else tuple(results)

    def _call(self, call, env, shape, target):
        """One ufunc call: into ``target``, else in place over a freshly computed argument."""
        fn, arg = call
        ufunc = getattr(np, fn)
        fresh = arg not in env
        value = numexpr.evaluate(arg, local_dict=env) if fresh else env[arg]
        if target is not None:
            return ufunc(value, out=target)
        if shape is not None and tuple(np.shape(value)) != tuple(shape):  # an output over broadcast inputs
            return ufunc(np.broadcast_to(value, shape))
        return ufunc(value, out=value) if fresh and isinstance(value, np.ndarray) else ufunc(value)

    def _broadcast(self, r, shape, target):
        if target is None:
            target = np.empty(shape, self.dtype)
        target[...] = r
        return target


def compile_fused(op, dtype):
    """A kernel of arithmetic and exponentials (three operations or more, or any exp or sigmoid) as one
    compiled loop (numba_fused.py), others as in-place NumPy ufunc sequences (ufunc_kernel.py; NumPy's
    SIMD tanh and log measured faster than Numba's scalar calls).
    RGRAPH_FUSED=ufunc or =numexpr (read when a program's kernels are made) uses that kind for all."""
    kind = os.environ.get("RGRAPH_FUSED", "auto")
    if kind == "numexpr" and numexpr is not None:
        return NumexprKernel(op, dtype)
    if kind == "auto":
        from .numba_fused import NumbaKernel, worth_a_loop
        if worth_a_loop(op.exprs):
            return NumbaKernel(op, dtype)
    return UfuncKernel(op, dtype)


CHUNK_BYTES = 4 << 20   # a batch chunk's largest array: about what two cores' L2 caches hold
MIN_SPLIT_BYTES = 1 << 20
# One chunk's intermediate in a Tiled node (compiler.tile): with the GEMM's operands it stays in the last-
# level cache. VGG-mini's conv2 backward (GEMM + col2im) in chunks of 2.4, 4.7 and 9.4 MB: 13-15, 13-15
# and 15-17 ms against 22-25 for the whole batch at once.
TILE_BYTES = 3 << 20
_pool = None


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_pool() -> ThreadPoolExecutor:
    """The backend's worker threads (its compiled kernels and NumPy release the GIL)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(workers(), thread_name_prefix="rgraph-chunk")
    return _pool


def split_batch(op, kernel):
    """Run a per-sample op's kernel that allocates its result on cache-sized chunks of the batch, in
    parallel threads (the compiled kernels and NumPy's copies release the GIL); each chunk writes its
    slice of one output array. Into a given ``out=`` (the vector stage's planned buffers) it runs in one
    call: there it follows GEMMs whose OpenBLAS worker threads spin on the cores for a while after
    returning, and VGG-mini's im2col, col2im and pooling kernels took 33-38 ms per Gv call in threads
    against 28 in one call (per-kernel profile; interleaved, Gv 1.07x and Hv 1.09x faster in one call).
    Binds writing into a released state's arrays run in one call too (threads measured no faster
    there); only a bind that allocates fresh pages, whose faults the threads take in parallel, splits."""
    def run(xp, *arrays, out=None, **attrs):
        n = arrays[0].shape[0]
        if out is not None:
            return kernel(xp, *arrays, out=out, **attrs)
        out = _allocate(op, arrays, attrs)
        largest = max(a.nbytes for a in arrays + (out,))
        chunk = max(1, min(CHUNK_BYTES * n // max(largest, 1), -(-n // workers())))
        if chunk >= n or largest < MIN_SPLIT_BYTES:  # small work: threads would cost more than they save
            return kernel(xp, *arrays, out=out, **attrs)
        list(thread_pool().map(lambda s: kernel(xp, *(a[s:s + chunk] for a in arrays), out=out[s:s + chunk],
                                                **attrs), range(0, n, chunk)))
        return out
    return run


def _allocate(op, arrays, attrs):
    types = [Type(a.shape, FLOAT if a.dtype.kind == "f" else a.dtype.name) for a in arrays]
    result = op.infer(*types, **attrs)
    floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
    return empty(np, result.shape, floats[0] if result.is_float else np.dtype(result.dtype), op.out_order)


def matmul_add_blas(xp, c, a, b, transpose_a=False, transpose_b=False, out=None):
    """c + op(a) op(b) as one GEMM accumulating into the result (blas.gemm_acc) after c is copied there,
    unless the result is c's own buffer (the planner lets it overwrite a dying accumulator)."""
    A, B, _ = gemm_operands(a, b, transpose_a, transpose_b)
    if out is None:
        out = np.array(c, order="K")
    elif not (_data(out) == _data(c) and out.strides == c.strides):  # not the accumulator's own buffer
        np.copyto(out, c)
    matrix = _matrix_view(out, A.shape[0], B.shape[1])
    if matrix is None or not gemm_acc(A, B, matrix):
        out += np.matmul(A, B).reshape(out.shape)
    return out


MIN_GEMV_SUM = 1 << 16   # elements; below this NumPy's own reduction is as fast


def sum_gemv(xp, x, axis=None, keepdims=False, out=None):
    """A sum over axes of a large float array as GEMVs with vectors of ones (_sum_by_gemv): NumPy's
    reduction over all but one axis runs far slower than BLAS (a bias gradient of VGG-mini's layer 1,
    (128, 32, 16, 16) in NHWC memory: 0.94 -> 0.18 ms; layer 3's in NCHW: 0.48 -> 0.07 ms)."""
    if x.size < MIN_GEMV_SUM or x.dtype.kind != "f":
        return np.sum(x, axis=axis, keepdims=keepdims, out=out)
    summed = tuple(range(x.ndim)) if axis is None else tuple(sorted({a % x.ndim for a in np.atleast_1d(axis)}))
    value = _sum_by_gemv(x, summed)
    if value is None:
        return np.sum(x, axis=axis, keepdims=keepdims, out=out)
    shape = tuple(1 if a in summed else d for a, d in enumerate(x.shape)) if keepdims else \
        tuple(d for a, d in enumerate(x.shape) if a not in summed)
    if out is None:
        return value.reshape(shape)
    np.copyto(out, value.reshape(shape))
    return out


def _sum_by_gemv(x, summed):
    """x summed over the axes ``summed``, its kept axes in their logical order, or None unless x is a
    permutation of a C-contiguous array. In memory, x is runs of summed and of kept axes: the innermost
    run, if summed, is one GEMV with ones over rows, the outermost one over columns; a summed run
    between kept ones (rare) is left to NumPy on what remains."""
    order = sorted(range(x.ndim), key=lambda a: -x.strides[a])   # outermost first
    memory = x.transpose(order)
    if not memory.flags.c_contiguous:
        return None
    runs = [(is_summed, int(np.prod([x.shape[a] for a in axes])))
            for is_summed, axes in ((k, list(g)) for k, g in itertools.groupby(order, lambda a: a in summed))]
    value = memory.reshape([size for _, size in runs])
    if runs[-1][0]:
        value = (value.reshape(-1, runs[-1][1]) @ _ones(runs[-1][1], x.dtype.str)).reshape(value.shape[:-1])
        runs = runs[:-1]
    if runs and runs[0][0]:
        value = (_ones(runs[0][1], x.dtype.str) @ value.reshape(runs[0][1], -1)).reshape(value.shape[1:])
        runs = runs[1:]
    value = value.sum(axis=tuple(k for k, (is_summed, _) in enumerate(runs) if is_summed))
    kept = [a for a in order if a not in summed]
    return value.reshape([x.shape[a] for a in kept]).transpose(np.argsort(kept))


@functools.lru_cache(maxsize=16)
def _ones(n, dtype):
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


def _matrix_view(x, m, n):
    """x as an (m, n) matrix without a copy, or None."""
    try:
        return np.reshape(x, (m, n), copy=False)
    except ValueError:  # the layout needs a copy
        return None


try:
    from .numba_kernels import KERNELS as NUMBA_KERNELS
except ImportError:  # pragma: no cover - numba is a dependency; without it the ops' own kernels run
    NUMBA_KERNELS = {}
BACKEND = Backend("numpy", np,
                  out_kernels={**OUT_KERNELS, **NUMBA_KERNELS, "matmul_add": matmul_add_blas, "sum": sum_gemv},
                  fused=compile_fused, per_sample=split_batch, recycles=True, tiles=TILE_BYTES)
