"""The CuPy backend without a GPU: generated kernels compile to PTX with nvcc, and the CuPy lowering run
against a NumPy stand-in of CuPy gives the NumPy backend's results. Tests marked gpu run the real thing."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rgraph as rg
from rgraph.backends.cupy import make_backend

import fake_cupy
from helpers_compiler import ENTRIES, batch_for, products, rel, small_cnn


def programs():
    return {"mlp": rg.compile(rg.nn.mlp([784, 64, 32, 10], activation="swish")),
            "mlp-relu-mse": rg.compile(rg.nn.mlp([8, 9, 4], activation="relu", loss="mse")),
            "cnn": rg.compile(small_cnn()),
            "vgg-mini": rg.compile(rg.nn.small_cnn(input_shape=(3, 32, 32), channels=(32, 64, 128), l2=1e-3))}


def all_kernels(prog):
    seen = {}
    for entry in prog._plans:
        for stage in prog._plans[entry]:
            for n in stage:
                if n.op.kind == "fused":
                    seen[n.op.name] = n.op
    return list(seen.values())


def test_import_rgraph_does_not_import_cupy():
    code = "import sys, rgraph; rg = rgraph.compile(rgraph.nn.mlp([3, 4, 2])); assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_backend_is_numpy_without_a_gpu():
    if rg.backends.cupy_usable():
        pytest.skip("a GPU is usable here")
    assert rg.compile(rg.nn.mlp([3, 4, 2]), backend="auto").backend.name == "numpy"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_cuda_compiles_to_ptx(tmp_path, dtype):
    """Every fused kernel of MLPs, a small 4-D (NCHW, broadcast bias) program and VGG-mini compiles with nvcc.
    RGRAPH_REQUIRE_NVCC=1 (set by .ci/run where nvcc exists) turns a missing nvcc into a failure."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("RGRAPH_REQUIRE_NVCC") == "1":
            pytest.fail("RGRAPH_REQUIRE_NVCC=1 but nvcc is not on PATH")
        pytest.skip("nvcc is not on PATH")
    count = 0
    for name, prog in programs().items():
        kernels = all_kernels(prog)
        assert kernels
        path = tmp_path / f"{name}.cu"
        # one translation unit per program: each kernel carries the same typedef (legal C++)
        path.write_text("\n".join(op.source("cuda", dtype) for op in kernels))
        result = subprocess.run([nvcc, "--ptx", "-arch=sm_80", str(path), "-o", str(tmp_path / f"{name}.ptx")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        ptx = (tmp_path / f"{name}.ptx").read_text()
        for op in kernels:
            assert f".entry {op.name}(" in ptx
            count += 1
    assert count >= 10


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("name", ["mlp", "cnn", "convnet"])
def test_cupy_lowering_on_a_numpy_stand_in(name, dtype, tol):
    """Every entry, computed twice (the first call allocates, the second writes into the planned
    buffers), through conv2d's im2col/col2im and max pooling's primitives as CuPy code."""
    g = {"mlp": lambda: rg.nn.mlp([7, 9, 6, 3], activation="swish", l2=1e-3), "cnn": small_cnn,
         "convnet": lambda: rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3)}[name]()
    batch = batch_for(g, 5, dtype=dtype)
    fake_cupy.launches.clear()
    gpu_prog = rg.compile(g, backend=make_backend(fake_cupy.module()), dtype=dtype)
    first, gpu = products(gpu_prog, batch), products(gpu_prog, batch)
    assert fake_cupy.launches  # the fused kernels ran through RawKernel launches
    cpu = products(rg.compile(g, dtype=dtype), batch)
    for entry in ENTRIES:
        assert rel(first[entry], cpu[entry]) <= tol, entry
        assert rel(gpu[entry], cpu[entry]) <= tol, entry


GPU_GRAPHS = {"mlp": lambda: rg.nn.mlp([20, 32, 16, 4], activation="swish", l2=1e-3),
              "convnet": lambda: rg.nn.small_cnn(input_shape=(3, 16, 16), channels=(8, 16), l2=1e-3),
              "vgg-mini": lambda: rg.nn.small_cnn(input_shape=(3, 32, 32), channels=(32, 64, 128), l2=1e-3)}


def on_device(batch):
    import cupy
    return {k: cupy.asarray(v) for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype,tol", [("mlp", "float64", 1e-10), ("convnet", "float64", 1e-10),
                                            ("vgg-mini", "float64", 1e-10), ("vgg-mini", "float32", 1e-4)])
def test_real_cupy_matches_numpy(name, dtype, tol):
    g = GPU_GRAPHS[name]()
    batch = batch_for(g, 16, dtype=dtype)
    cpu = products(rg.compile(g, dtype=dtype), batch)
    prog = rg.compile(g, backend="cupy", dtype=dtype)
    for gpu in (products(prog, on_device(batch)), products(prog, on_device(batch))):  # allocating, then planned
        for entry in ENTRIES:
            assert rel(gpu[entry], cpu[entry]) <= tol, entry
    assert rg.compile(g, backend="auto").backend.name == "cupy"


SPIN = r"""extern "C" __global__ void spin(long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < nanoseconds);
}"""


def busy_device(cupy, seconds=1.0):
    """Queue a kernel that keeps the device busy for ``seconds``; the event recorded after it."""
    cupy.RawKernel(SPIN, "spin")((1,), (1,), (np.int64(seconds * 1e9),))
    return cupy.cuda.get_current_stream().record()


@pytest.mark.gpu
def test_a_steady_state_product_never_waits_for_the_device():
    """jv, jtu, gv and hv in steady state (into out=) return while a kernel queued before them still runs:
    a device-to-host copy or a synchronisation inside them would have waited for it."""
    import cupy
    g = GPU_GRAPHS["convnet"]()
    prog = rg.compile(g, backend="cupy", dtype="float32")
    st = prog.bind(prog.init_params(seed=0), on_device(batch_for(g, 8, dtype="float32")))
    rng = np.random.default_rng(0)
    v = cupy.asarray(rng.standard_normal(prog.size).astype(np.float32))
    u = cupy.asarray(rng.standard_normal(st.output.shape).astype(np.float32))
    done = busy_device(cupy)
    float(v.sum())
    assert done.done  # the check can fail: a read-back waits for the busy kernel
    for entry, seed in (("jv", v), ("jtu", u), ("gv", v), ("hv", v)):
        fn = getattr(st, entry)
        out = cupy.empty_like(fn(seed))
        fn(seed, out=out)  # plans the vector stage's buffers
        done = busy_device(cupy)
        fn(seed, out=out)
        assert not done.done, f"{entry} waited for the device"
        cupy.cuda.Device().synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer,settings", [("newton-cg", {"lam": 1.0}), ("fitre", {})])
def test_optimisers_take_the_same_steps_on_the_gpu(optimizer, settings):
    """Three float64 steps from the same start: the GPU's parameters follow the CPU's."""
    from rgraph.optim import make_optimizer
    g = GPU_GRAPHS["convnet"]()
    batch = batch_for(g, 32)
    thetas = []
    for backend, put in (("numpy", lambda b: b), ("cupy", on_device)):
        prog = rg.compile(g, backend=backend)
        opt = make_optimizer(optimizer, prog, **settings)
        theta = prog.init_params(seed=0)
        for _ in range(3):
            theta, stats = opt.step(theta, put(batch))
            assert stats["accepted"], stats
        thetas.append(prog.backend.to_host(theta))
    assert rel(thetas[1], thetas[0]) <= 1e-6
