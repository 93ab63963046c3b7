"""A NumPy stand-in for the CuPy calls the cupy backend makes (tests only).

Arrays are NumPy arrays. ``RawKernel`` runs a CUDA kernel without a GPU. A generated fused kernel: it
reads each input the way the CUDA source indexes it (the index arithmetic of the source is evaluated on
the thread ids, so broadcasting by indexing is checked), then evaluates the kernel's expressions with the
reference interpreter (``expr.evaluate``) and stores outputs at the thread ids. A hand-written kernel
(the window ops'): its very source is compiled as C++ for the host, and the launch runs every thread of
the grid, one after another.
"""
import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

from rgraph import expr as ex
from rgraph.backends import cupy as cupy_backend

launches = []


def RawKernel(source, name):
    return FusedKernel(source, name) if source in cupy_backend.SOURCES else HostKernel(source, name)


class FusedKernel:
    def __init__(self, source, name):
        assert f'extern "C" __global__ void {name}(' in source
        self.source, self.name = source, name
        self.op = cupy_backend.SOURCES[source]
        self.loads = dict(re.findall(r"const \w+ (\w+) = \w+_\[(.*)\];", source))

    def __call__(self, grid, block, args):
        op = self.op
        k = len(op.params)
        ins, outs, n = args[:k], args[k:-1], int(args[-1])
        assert isinstance(args[-1], np.int64) and grid[0] * block[0] >= n
        i = np.arange(n, dtype=np.int64)
        env = {}
        for p, a in zip(op.params, ins, strict=True):
            assert a.flags.c_contiguous
            index = eval(self.loads[p].replace("LL", "").replace("/", "//"), {"i": i})
            env[p] = a.reshape(-1)[np.broadcast_to(index, (n,))]
        for e, o in zip(op.exprs, outs, strict=True):
            o.reshape(-1)[...] = np.broadcast_to(ex.evaluate(e, env, np), (n,))
        launches.append(self.name)


HOST_PRELUDE = """#include <cmath>
struct rg_dim3 { long long x; };
static rg_dim3 blockIdx, threadIdx, blockDim;
#define __global__
#define __restrict__
"""
_BUILD = {}


def host_compiler():
    return shutil.which("g++") or shutil.which("c++")


def _host_library(text):
    key = hashlib.sha1(text.encode()).hexdigest()
    if key not in _BUILD:
        # A loaded library stays mapped after its file is deleted, so the folder goes at once.
        with tempfile.TemporaryDirectory(prefix="rgraph-host-kernels-") as name:
            folder = Path(name)
            (folder / "k.cpp").write_text(text)
            subprocess.run([host_compiler(), "-O1", "-shared", "-fPIC", str(folder / "k.cpp"), "-o", str(folder / "k.so")],
                           check=True, capture_output=True, text=True)
            _BUILD[key] = ctypes.CDLL(str(folder / "k.so"))
    return _BUILD[key]


class HostKernel:
    """A raw ``extern "C"`` CUDA kernel compiled as C++ for the host; a launch runs its threads in turn."""

    def __init__(self, source, name):
        signature = re.search(rf'extern "C" __global__ void {name}\(([^)]*)\)', source)
        assert signature, f"no kernel {name} in the source"
        params = [p.strip() for p in signature.group(1).split(",")]
        names = [re.findall(r"\w+", p)[-1] for p in params]
        real = {"float": ctypes.c_float, "double": ctypes.c_double}[re.search(r"typedef (\w+) T;", source).group(1)]
        kinds = [ctypes.c_void_p if "*" in p else ctypes.c_longlong if "long long" in p else real for p in params]
        launcher = (f'extern "C" void launch({", ".join(["long long grid", "long long block"] + params)}) {{\n'
                    f"    blockDim.x = block;\n"
                    f"    for (long long b = 0; b < grid; ++b)\n"
                    f"        for (long long t = 0; t < block; ++t) {{ blockIdx.x = b; threadIdx.x = t; "
                    f"{name}({', '.join(names)}); }}\n}}\n")
        self.name, self.kinds = name, kinds
        self.launch = _host_library(HOST_PRELUDE + source + launcher).launch
        self.launch.argtypes = [ctypes.c_longlong, ctypes.c_longlong] + kinds

    def __call__(self, grid, block, args):
        values = []
        for kind, a in zip(self.kinds, args, strict=True):
            if kind is ctypes.c_void_p:
                assert isinstance(a, np.ndarray)
                values.append(a.ctypes.data)
            else:
                assert isinstance(a, np.generic)   # CuPy passes scalars by their NumPy type
                values.append(a.item())
        self.launch(int(grid[0]), int(block[0]), *values)
        launches.append(self.name)


def module():
    m = types.ModuleType("cupy")
    for name in ("ndarray", "asarray", "empty", "empty_like", "zeros", "zeros_like", "matmul", "sum", "ascontiguousarray",
                 "add", "divide", "power", "negative", "absolute", "less", "less_equal", "greater",
                 "greater_equal", "equal", "not_equal",
                 "multiply", "copyto", "isfinite", "float32", "float64", "exp", "log", "where", "maximum",
                 "broadcast_to", "reshape", "transpose", "max", "arange", "shape", "result_type", "log1p",
                 "tanh", "sqrt", "abs", "sign", "prod", "argmax", "take_along_axis", "ones", "concatenate",
                 "stack", "pad", "einsum", "dot", "float_", "int64", "bool_", "newaxis", "full", "may_share_memory"):
        if hasattr(np, name):
            setattr(m, name, getattr(np, name))
    m.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=np.lib.stride_tricks.as_strided))
    m.RawKernel = RawKernel
    m.asnumpy = np.asarray
    m.is_available = lambda: True
    return m
