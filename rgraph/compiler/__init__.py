"""``rg.compile``: a list of named graph-to-graph stages, run in order.

    derive -> simplify -> cse -> dce -> stage -> hoist -> merge -> fuse -> tile -> schedule -> lower

Each stage takes and returns a ``Module`` (the entry points as symbolic outputs, plus what the stage
adds), so ``compile(g, until="fuse")`` returns the module after any stage for inspection and drawing.
``lower`` makes the ``Program`` (flat instruction lists per entry and batch size).
"""
from __future__ import annotations

from ..autodiff import derive
from .module import Module
from .passes import cse, dce, hoist, simplify, stage

ENTRIES = ("loss", "output", "grad", "jv", "jtu", "gv", "hv", "taps")


def _derive(module: Module) -> Module:
    passes = derive(module.graph, transposed=module.options.get("transposed_rop", False))
    module.passes = passes
    module.entries = {name: list(passes.outputs[name]) for name in ENTRIES}
    return module


def _merge(module: Module) -> Module:
    from .merge import merge
    return merge(module) if module.options.get("fuse", True) and module.options.get("merge", True) else module


def _fuse(module: Module) -> Module:
    from .fuse import fuse
    return fuse(module) if module.options.get("fuse", True) else module


def _tile(module: Module) -> Module:
    from .tile import tile
    return tile(module)


def _schedule(module: Module) -> Module:
    from .schedule import schedule
    return schedule(module)


def _hoist(module: Module) -> Module:
    return hoist(module) if module.options.get("fuse", True) else module


STAGES = [("derive", _derive), ("simplify", simplify), ("cse", cse), ("dce", dce), ("stage", stage),
          ("hoist", _hoist), ("merge", _merge), ("fuse", _fuse), ("tile", _tile),
          ("schedule", _schedule)]
STAGE_NAMES = [name for name, _ in STAGES] + ["lower"]


def compile(graph, backend: str = "numpy", dtype: str = "float64", *, until: str | None = None,
            transposed_rop: bool = False, fuse: bool = True, merge: bool = True, tile: bool = True):
    """Compile a graph's derived passes into a ``Program`` (or, with ``until``, the module after that stage).

        >>> import rgraph as rg
        >>> prog = rg.compile(rg.nn.mlp([4, 8, 3]), dtype="float64")
        >>> prog.size
        67

    ``backend``: "numpy", "cupy" or "auto" (CuPy when a GPU is usable). ``dtype``: "float32" or
    "float64". ``transposed_rop`` derives every R-op through two VJPs (for checking hand R-ops).
    ``fuse=False`` skips hoisting, merging and fusion (every op runs its own kernel: the reference program);
    ``merge=False`` only the merging of GEMM sums (each matrix product then runs as its own GEMM);
    ``tile=False`` the chunked running of large per-sample intermediates (on backends that tile).
    """
    from ..backends import get_backend
    from ..program import Program
    dtype = _float_dtype(dtype)
    if until is not None and until not in STAGE_NAMES:
        raise ValueError(f"unknown stage {until!r}; stages are {STAGE_NAMES}")
    backend = get_backend(backend)
    module = Module(graph, options={"transposed_rop": transposed_rop, "fuse": fuse, "merge": merge,
                                    "tile_with": backend if fuse and tile and backend.tiles else None})
    for name, run in STAGES:
        module = run(module)
        module.history.append(name)
        if name == until:
            return module
    prog = Program(module, backend, dtype)
    module.history.append("lower")
    return prog if until is None else module


def _float_dtype(dtype) -> str:
    """'float32' or 'float64' from a name or anything NumPy reads as one (np.float32, np.dtype("f4"))."""
    import numpy as np
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name
