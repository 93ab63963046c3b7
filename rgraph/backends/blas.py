"""C += op(A) op(B) with the BLAS NumPy itself calls: NumPy's matmul has no accumulating form (GEMM's
beta), and a sum of two GEMM results otherwise costs an extra pass over the output.

The library is the one threadpoolctl finds loaded from NumPy's own folder (NumPy's wheels bundle
OpenBLAS), called through ctypes. Only that one: a second OpenBLAS (SciPy's) keeps its own worker
threads spinning beside NumPy's, and GEMMs alternating between the two ran 2-3x slower on two cores
(measured). Where none is found, ``gemm_acc`` is None and callers add a NumPy GEMM's result instead.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# (symbol pattern, integer type): NumPy 2 wheels' scipy-openblas64, older ILP64 builds, LP64 builds
SYMBOLS = [("scipy_cblas_{t}gemm64_", ctypes.c_int64), ("cblas_{t}gemm64_", ctypes.c_int64),
           ("scipy_cblas_{t}gemm", ctypes.c_int), ("cblas_{t}gemm", ctypes.c_int)]


@functools.lru_cache(maxsize=None)
def _routine(dtype_char):
    """(function, C scalar type) of ?gemm in NumPy's BLAS for dtype 'f' or 'd', or None."""
    try:
        from threadpoolctl import threadpool_info
        paths = [i["filepath"] for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i["filepath"]]
    except Exception:  # threadpoolctl missing or unable to inspect: run without
        return None
    scalar = {"f": ctypes.c_float, "d": ctypes.c_double}[dtype_char]
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, integer in SYMBOLS:
            fn = getattr(lib, pattern.format(t="s" if dtype_char == "f" else "d"), None)
            if fn is not None:
                I = integer  # noqa: N806
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, I, I, I, scalar, ctypes.c_void_p, I,
                               ctypes.c_void_p, I, scalar, ctypes.c_void_p, I]
                fn.restype = None
                return fn, scalar
    return None


def _operand(x):
    """(transpose flag, leading dimension) of a 2-D operand read in place, or None if it must be copied."""
    item = x.itemsize
    rows, cols = x.shape
    if x.strides[1] == item and (rows == 1 or x.strides[0] >= cols * item) and x.strides[0] % item == 0:
        return NO_TRANS, max(x.strides[0] // item if rows > 1 else cols, 1)
    if x.strides[0] == item and (cols == 1 or x.strides[1] >= rows * item) and x.strides[1] % item == 0:
        return TRANS, max(x.strides[1] // item if cols > 1 else rows, 1)
    return None


def available(dtype) -> bool:
    dtype = np.dtype(dtype)
    return dtype.char in "fd" and _routine(dtype.char) is not None


def gemm_acc(A, B, C):
    """C += A @ B in place for 2-D float32/float64 arrays of one dtype (any strides); False, leaving C
    untouched, where no BLAS routine is available or C's layout cannot be written in place."""
    if not (A.dtype == B.dtype == C.dtype) or not available(C.dtype):
        return False
    if C.strides[1] != C.itemsize:        # C^T is row-major: C^T += B^T A^T
        if C.strides[0] != C.itemsize:
            return False
        A, B, C = B.T, A.T, C.T
    m, n = C.shape
    k = A.shape[1]
    if m == 0 or n == 0:
        return True
    if C.shape[0] > 1 and C.strides[0] < n * C.itemsize:
        return False
    ldc = C.strides[0] // C.itemsize if m > 1 else n
    ops = []
    for X in (A, B):
        layout = _operand(X)
        if layout is None:
            X = np.ascontiguousarray(X)
            layout = (NO_TRANS, max(X.shape[1], 1))
        ops.append((X, layout))
    (A, (ta, lda)), (B, (tb, ldb)) = ops
    fn, scalar = _routine(C.dtype.char)
    fn(ROW_MAJOR, ta, tb, m, n, k, scalar(1.0), A.ctypes.data, lda, B.ctypes.data, ldb, scalar(1.0), C.ctypes.data,
       max(ldc, 1))
    return True
