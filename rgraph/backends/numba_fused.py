"""A fused elementwise kernel as one compiled loop (Numba), for kernels of arithmetic and exponentials.

A product's per-call kernels are sums and products of a few activations (``(a + b) * c + d * e``):
as a sequence of NumPy ufunc calls each operation is one pass over memory, where one loop reads every
input once and writes every output once (measured 5x faster on five 1024x1024 float32 operands, 2
cores). exp and sigmoid run as numba_math's exp, which LLVM vectorises: a bias add, sigmoid and swish
with three outputs (an MLP layer's forward kernel), 1024x1024 float32, took 2.6 ms as one loop against
7.3 ms as ufuncs (NumPy's exp alone: 4.1 ms; one thread each). Other transcendentals (log, tanh, sqrt,
pow) stay with the ufunc kernels: Numba's scalar libm calls do not vectorise without SVML, and NumPy's
SIMD loops beat them 1.5-4x (measured). ``worth_a_loop`` says which kernels ``compile_fused`` gives
this class.

The loop runs over the output's memory (the order of ``out``, else the one most operands share) as
rows of K elements: an operand of the output's shape and memory order is read at i = r*K + c (one in
another order is first copied into it), a broadcast operand varying only within a row (a bias over
the last memory axes: channels in NHWC memory, features of a dense layer) at c, a scalar at 0. Calls
on other layouts, on small outputs (where compiling would not pay) or before the loop is compiled run
the ufunc kernel, which computes the same thing.
"""
from __future__ import annotations

import numpy as np

from .. import expr as ex
from ..op import empty, result_order
from .ufunc_kernel import UfuncKernel

MIN_ELEMENTS = 1 << 16    # smaller outputs run the ufunc kernel: no compile for small programs (tests)
ROW = 4096                # rows of at least this many elements when no operand fixes K
THREADED = 1 << 22        # split larger loops across threads (1M float32 elements ran faster on one)
THREADED_EXP = 1 << 18    # ... and loops with an exponential, compute-bound (1M: 2.9 -> 1.9 ms on two)
ARITHMETIC = {"add", "mul", "div", "neg", "abs", "where", *ex.COMPARISONS}
EXPONENTIAL = {"exp", "sigmoid"}   # compiled as numba_math's vectorised exp
_compiled: dict = {}      # source -> compiled loop, shared by every kernel of the process


def worth_a_loop(exprs) -> bool:
    """Arithmetic and exponentials only, with an exponential or three operations or more: with fewer
    arithmetic operations the ufunc calls make as few passes over memory as one loop does, and NumPy's
    broadcasting loops beat ours on short rows (measured on VGG-mini's jv and gv, 3-7% slower end to
    end with every arithmetic kernel compiled); an exponential alone already runs faster in the loop."""
    operations = ex.operations(exprs)
    if not all(n.op in ARITHMETIC or n.op in EXPONENTIAL for n in operations):
        return False
    return len(operations) >= 3 or has_exponential(exprs)


def has_exponential(exprs) -> bool:
    return any(n.op in EXPONENTIAL for n in ex.operations(exprs))


class NumbaKernel:
    def __init__(self, op, dtype):
        self.op, self.dtype = op, np.dtype(dtype)
        self.fallback = UfuncKernel(op, dtype)
        self.threaded = THREADED_EXP if has_exponential(op.exprs) else THREADED
        self.source = self.fallback.source
        self._loops = {}   # operand kinds -> compiled loop (printing the source to look it up cost 0.35 ms)
        self._copies = {}  # operands in another memory order, copied into the result's (_in_order)

    def __call__(self, xp, *arrays, shape=None, out=None):
        shape = tuple(shape)
        plan = self._plan(arrays, shape, out) if int(np.prod(shape)) >= MIN_ELEMENTS else None
        if plan is None:
            return self.fallback(xp, *arrays, shape=shape, out=out)
        results, flat, kinds, K = plan
        if kinds not in self._loops:
            self._loops[kinds] = _loop(self.op, kinds, self.dtype)
        _run_rows(self._loops[kinds], flat[0].size // K, K, flat, self.threaded)
        return results[0] if len(results) == 1 else tuple(results)

    def _in_order(self, j, a, order):
        """Operand j copied into the result's memory order, in a buffer the kernel keeps: one pass over
        it, where the ufunc kernel over mixed orders ran 3.5x slower per byte (a dense layer's NCHW
        cotangent meeting NHWC pooled values in Hv: 1.84 ms for 262k elements)."""
        key = (j, a.shape, a.dtype.str, order)
        if key not in self._copies:
            self._copies[key] = empty(np, a.shape, a.dtype, order)
        np.copyto(self._copies[key], a)
        return self._copies[key]

    def _plan(self, arrays, shape, out):
        """(results, outputs then inputs as flat arrays in the outputs' memory order, the inputs' kinds,
        K), or None where the ufunc kernel runs."""
        if any(not isinstance(a, np.ndarray) or a.dtype != self.dtype for a in arrays):
            return None
        out_order = result_order(shape, arrays, out)
        order = out_order or tuple(range(len(shape)))
        mem_shape = tuple(shape[a] for a in order)
        flat, kinds, first = [], [], None
        for j, a in enumerate(arrays):
            m = np.broadcast_to(a, shape).transpose(order)
            if a.shape == shape or a.size == 1:
                if not m.flags.c_contiguous and a.size > 1:
                    m = self._in_order(j, a, out_order).transpose(order)
                    if not m.flags.c_contiguous:
                        return None
                flat.append(a.reshape(-1) if a.size == 1 else m.reshape(-1))
                kinds.append("scalar" if a.size == 1 else "full")
                continue
            j = next((j for j, (st, d) in enumerate(zip(m.strides, m.shape)) if st and d > 1), None)
            row = None if j is None else m[(0,) * j]   # j: the first memory axis it varies along
            if row is None or not row.flags.c_contiguous or first not in (None, j):
                return None
            first = j
            flat.append(row.reshape(-1))
            kinds.append("row")
        results = list(out) if out is not None else [empty(np, shape, self.dtype, out_order)
                                                     for _ in self.op.exprs]
        outs = [r.transpose(order) for r in results]
        if any(r.dtype != self.dtype or not m.flags.c_contiguous for r, m in zip(results, outs)):
            return None
        outs = [m.reshape(-1) for m in outs]
        for j, x in enumerate(flat):  # an input the kernel writes over (in place) is read from there
            same = [k for k, o in enumerate(outs) if _data(o) == _data(x) and o.size == x.size]
            if same and kinds[j] == "full":
                kinds[j] = f"o{same[0]}"  # one array for both: the loop then vectorises (no alias check)
            elif any(np.may_share_memory(o, x) for o in outs):
                return None
        flat = outs + flat
        if first is None:  # rows of about ROW elements, made of whole trailing memory axes
            sizes = np.cumprod(mem_shape[::-1])
            first = len(mem_shape) - 1 - min(int(np.searchsorted(sizes, ROW)), len(sizes) - 1)
        return results, flat, tuple(kinds), int(np.prod(mem_shape[first:]))



def _data(a):
    return a.__array_interface__["data"][0]


def _run_rows(loop, rows, K, arrays, threaded=THREADED):
    """The loop over ``rows`` rows of K elements, split across threads from ``threaded`` elements on."""
    from .numpy import thread_pool, workers
    n = workers()
    if n == 1 or rows < 2 or rows * K < threaded:
        loop(0, rows, K, *arrays)
        return
    step = -(-rows // n)
    list(thread_pool().map(lambda lo: loop(lo, min(lo + step, rows), K, *arrays), range(0, rows, step)))


def _loop(op, kinds, dtype):
    source = loop_source(op, kinds)
    key = (source, dtype.str)
    if key not in _compiled:
        from numba import njit
        from .numba_math import exp_for
        env = {"np": np, "T": dtype.type, "inf": np.inf, "nan": np.nan, "vexp": exp_for(dtype)}
        exec(compile(source, f"<rgraph fused {op.name}>", "exec"), env)
        _compiled[key] = njit(nogil=True, error_model="numpy")(env["loop"])
    return _compiled[key]


def loop_source(op, kinds) -> str:
    """The Python source of the loop over rows [lo, hi) of K elements (outputs first, then inputs). Each
    row is sliced first: indexing by r*K + c directly kept LLVM from vectorising the inner loop."""
    from ..compiler.fuse import statements
    names = {ex.var(p): f"v{j}" for j, p in enumerate(op.params)}
    outs = [f"o{k}" for k in range(len(op.exprs))]
    ins = [f"x{j}" for j in range(len(op.params))]
    rows = outs + [f"x{j}" for j, kind in enumerate(kinds) if kind == "full"]
    lines = [f"def loop(lo, hi, K, {', '.join(outs + ins)}):"]
    lines += [f"    v{j} = x{j}[0]" for j, kind in enumerate(kinds) if kind == "scalar"]
    lines += ["    for r in range(lo, hi):",
              "        s = r * K"]
    lines += [f"        {a}r = {a}[s:s + K]" for a in rows]
    lines += ["        for c in range(K):"]
    load = {"full": "x{j}r[c]", "row": "x{j}[c]"}
    lines += [f"            v{j} = " + load.get(kind, kind + "r[c]").format(j=j) for j, kind in enumerate(kinds)
              if kind != "scalar"]
    for name, text in statements(op.exprs, "numba", temps="shared", names=names):
        lines.append(f"            {name} = {text}")
        if name.startswith("out"):
            lines.append(f"            o{name[3:]}r[c] = {name}")
    return "\n".join(lines) + "\n"
