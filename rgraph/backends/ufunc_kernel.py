"""A fused elementwise kernel as a sequence of in-place NumPy ufunc calls.

The expression DAG is walked once, arguments before users; every node is one ufunc call writing into
a scratch buffer (reused by liveness, from a per-thread pool shared by all kernels, so a call in steady
state allocates nothing) or, for an output, into its target. NumPy's SIMD loops over cache-resident
operands measured 2-3x faster than numexpr's interpreter here (1M float32 elements, 2 cores; no
Intel VML), and no slower on 4-8M elements. Constants are scalars of the kernel dtype, so float32 stays
float32. sigmoid is 0.5 tanh(a/2) + 0.5 (no overflow), as in the reference interpreter.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import expr as ex
from ..op import empty, memory_order

UFUNCS = {name: fn for name, fn in ex.array_table(np).items() if isinstance(fn, np.ufunc)}
_pools = threading.local()


def _sigmoid(a, out, half):
    np.multiply(a, half, out=out)
    np.tanh(out, out=out)
    np.multiply(out, half, out=out)
    np.add(out, half, out=out)


def _where(c, a, b, out):
    if any(np.shares_memory(out, x) for x in (c, a) if isinstance(x, np.ndarray)):
        tmp = np.empty_like(out)
        _where(c, a, b, tmp)
        out[...] = tmp
        return
    np.copyto(out, b)
    np.copyto(out, a, where=c)


class UfuncKernel:
    def __init__(self, op, dtype):
        self.op, self.dtype = op, np.dtype(dtype)
        self.half = self.dtype.type(0.5)
        nodes = _postorder(op.exprs)
        self.steps = [n for n in nodes if n.op not in ("var", "const")]
        last = {}
        for k, n in enumerate(self.steps):
            for a in n.args:
                last[a] = k
        self.dies = [[a for a in n.args if last.get(a) == k and a.op not in ("var", "const")]
                     for k, n in enumerate(self.steps)]
        self.outputs = {}
        for k, e in enumerate(op.exprs):
            self.outputs.setdefault(e, k)
        self.source = op.source("numpy", str(self.dtype))

    def __call__(self, xp, *arrays, shape=None, out=None):
        shape = tuple(shape)
        # results take the memory order of a full-size operand (NumPy's order="K"): NHWC stays NHWC
        order = memory_order(next((a for a in arrays if np.shape(a) == shape), None))
        pool = _pool()
        env = dict(zip(self.op.params, arrays, strict=True))
        value, held = {}, []
        # one output written over no input: its buffer holds the first full-size intermediate, as
        # multiply(b, c, out); add(out, a, out) computes a + c b (no scratch array between the passes)
        spare = [out[0]] if out is not None and len(out) == 1 and \
            not any(isinstance(a, np.ndarray) and np.may_share_memory(a, out[0]) for a in arrays) else []

        def leaf(n):
            return env[n.value] if n.op == "var" else self.dtype.type(n.value)
        try:
            with np.errstate(all="ignore"):  # IEEE results (exp(-a) = inf is sigmoid's limit), as numexpr and CUDA
                for step, dying in zip(self.steps, self.dies):
                    args = [value[a] if a in value else leaf(a) for a in step.args]
                    target = self._target(step, args, shape, order, out, pool, held, spare)
                    self._apply(step, args, target)
                    value[step] = target
                    for a in dying:
                        if a not in self.outputs:
                            pool.give(value[a])
            results = [self._result(k, e, value, leaf, shape, order, out) for k, e in enumerate(self.op.exprs)]
        finally:
            for buf in held:
                pool.give(buf)
            held.clear()
        return results[0] if len(results) == 1 else tuple(results)

    def _target(self, step, args, shape, order, out, pool, held, spare):
        node_shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        dtype = bool if step.op in ex.COMPARISONS else self.dtype
        order = order if node_shape == shape else None
        k = self.outputs.get(step)
        if k is not None and node_shape == shape:
            return empty(np, shape, dtype, order) if out is None else out[k]
        if k is None and spare and node_shape == shape and dtype == self.dtype:
            return spare.pop()
        buf = pool.take(node_shape, dtype, order)
        if k is not None:
            held.append(buf)  # an output over broadcast inputs only: broadcast into place at the end
        return buf

    def _apply(self, step, args, target):
        if step.op == "sigmoid":
            _sigmoid(args[0], target, self.half)
        elif step.op == "where":
            _where(*args, target)
        else:
            UFUNCS[step.op](*args, out=target)

    def _result(self, k, e, value, leaf, shape, order, out):
        v = value[e] if e in value else leaf(e)
        target = None if out is None else out[k]
        if target is not None and v is target:
            return target
        if target is None and e in value and self.outputs.get(e) == k and v.shape == shape:
            return v  # allocated for this output in _target
        if target is None:
            target = empty(np, shape, self.dtype, order)
        target[...] = v
        return target


class _Pool:
    """Scratch arrays by (shape, dtype), reused across kernels and calls of one thread."""

    def __init__(self):
        self.free, self.out = {}, {}   # key -> arrays; id of an array taken -> its key

    def take(self, shape, dtype, order):
        key = (tuple(shape), np.dtype(dtype).str, order)
        bufs = self.free.get(key)
        buf = bufs.pop() if bufs else empty(np, tuple(shape), np.dtype(dtype), order)
        self.out[id(buf)] = key
        return buf

    def give(self, buf):
        key = self.out.pop(id(buf), None)
        if key is not None:
            self.free.setdefault(key, []).append(buf)


def _pool():
    if not hasattr(_pools, "pool"):
        _pools.pool = _Pool()
    return _pools.pool


def _postorder(exprs):
    """Every node of ``exprs``, leaves included, arguments before users."""
    seen, order = set(), []
    for n in ex.operations(exprs):
        for a in n.args:
            if a.op in ("var", "const") and a not in seen:
                seen.add(a)
                order.append(a)
        order.append(n)
    return order
