"""Backends: an array namespace plus a table of kernels that override an op's reference kernel."""
from __future__ import annotations

import numpy as np


class Backend:
    """``xp`` is the array namespace (NumPy or CuPy); ``kernels`` maps op names to faster kernels with the
    op's ``forward`` signature. Everything else runs the op's own kernel against ``xp``."""

    def __init__(self, name, xp, kernels=None):
        self.name, self.xp, self.kernels = name, xp, dict(kernels or {})

    def kernel(self, op):
        return self.kernels.get(op.name, op.forward)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        return np.asarray(a) if self.xp is np else self.xp.asnumpy(a)

    def is_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def __repr__(self):
        return f"<backend {self.name}>"


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
        from .cupy import BACKEND
        return BACKEND
    raise ValueError(f"unknown backend {name!r}; use 'numpy', 'cupy' or 'auto'")
