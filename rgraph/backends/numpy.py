"""The CPU backend: NumPy (BLAS GEMMs with ``out=``) and numexpr for fused elementwise kernels (falling
back to the reference interpreter, ``expr.evaluate``, when numexpr is missing)."""
from __future__ import annotations

import numpy as np

from . import OUT_KERNELS, Backend

try:
    import numexpr
except ImportError:  # pragma: no cover - numexpr is a dependency; this keeps a bare NumPy install working
    numexpr = None


class NumexprKernel:
    """A fused kernel as numexpr statements: temporaries (shared transcendental terms) then one
    expression per output. Constants are typed scalars of the program dtype, so float32 stays float32."""

    def __init__(self, op, dtype):
        from ..compiler.fuse import numexpr_program
        self.op, self.dtype = op, np.dtype(dtype)
        program, consts = numexpr_program(op)
        self.consts = {name: self.dtype.type(v) for name, v in consts.items()}
        self.program = [(n, s, int(n[3:]) if n.startswith("out") else None) for n, s in program]
        self.n_out = len(op.exprs)
        # an output whose expression reads an input of the full output shape can be written in place
        full = {p for p, t in zip(op.params, op.in_types, strict=True) if tuple(t.shape) == op.out_shape}
        from .. import expr as ex
        self.full = [bool(ex.variables(e) & full) and e.op not in ("var", "const") for e in op.exprs]
        self.source = op.source("numexpr", str(self.dtype))

    def __call__(self, xp, *arrays, shape=None, out=None):
        env = dict(zip(self.op.params, arrays, strict=True))
        env.update(self.consts)
        results = [None] * self.n_out
        for name, text, k in self.program:
            if k is None:
                env[name] = numexpr.evaluate(text, local_dict=env)
                continue
            target = None if out is None else out[k]
            if self.full[k]:
                r = numexpr.evaluate(text, local_dict=env, out=target, casting="unsafe")
            else:  # a constant or an expression over broadcast inputs only: broadcast it into place
                r = self._broadcast(numexpr.evaluate(text, local_dict=env), shape, target)
            env[name] = results[k] = r
        return results[0] if self.n_out == 1 else tuple(results)

    def _broadcast(self, r, shape, target):
        if target is None:
            target = np.empty(shape, self.dtype)
        target[...] = r
        return target


def compile_fused(op, dtype):
    if numexpr is None:
        return op.forward
    return NumexprKernel(op, dtype)


BACKEND = Backend("numpy", np, out_kernels=OUT_KERNELS, fused=compile_fused)
