"""The CuPy backend without a GPU: generated kernels compile to PTX with nvcc, and the CuPy lowering run
against a NumPy stand-in of CuPy gives the NumPy backend's results. Tests marked gpu run the real thing."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rgraph as rg
from rgraph import ops
from rgraph.backends.cuda_kernels import KERNELS, WindowKernels, cuda_window_source
from rgraph.backends.cupy import make_backend
from rgraph.compiler.fuse import cuda_name, cuda_source
from rgraph.op import empty
from rgraph.program import plus_l2_op
from rgraph.ops.conv import pair, padding_pairs

import fake_cupy
from helpers_compiler import ENTRIES, batch_for, products, rel, small_cnn
from test_cnn import POOL_CASES

NHWC = (0, 2, 3, 1)


def programs():
    return {"mlp": rg.compile(rg.nn.mlp([784, 64, 32, 10], activation="swish")),
            "mlp-relu-mse": rg.compile(rg.nn.mlp([8, 9, 4], activation="relu", loss="mse")),
            "cnn": rg.compile(small_cnn()),
            "vgg-mini": rg.compile(rg.nn.small_cnn(input_shape=(3, 32, 32), channels=(32, 64, 128), l2=1e-3)),
            "zoo": rg.compile(zoo())}   # batch norm, residual, average pooling, softplus and tanh


def all_kernels(prog):
    seen = {}
    for entry in prog._plans:
        for stage in prog._plans[entry]:
            for n in stage:
                if n.op.kind == "fused":
                    seen[n.op.name] = n.op
    return list(seen.values())


def require_host_compiler():
    """The window kernels' CUDA C runs on the host as C++: skip without a compiler, except where nvcc
    (which needs one) is required."""
    if fake_cupy.host_compiler() is None:
        if os.environ.get("RGRAPH_REQUIRE_NVCC") == "1":
            pytest.fail("RGRAPH_REQUIRE_NVCC=1 but no host C++ compiler (g++) is on PATH")
        pytest.skip("no C++ compiler for the host")


def test_import_rgraph_does_not_import_cupy():
    code = "import sys, rgraph; rg = rgraph.compile(rgraph.nn.mlp([3, 4, 2])); assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_backend_is_numpy_without_a_gpu():
    if rg.backends.cupy_usable():
        pytest.skip("a GPU is usable here")
    assert rg.compile(rg.nn.mlp([3, 4, 2]), backend="auto").backend.name == "numpy"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_cuda_compiles_to_ptx(tmp_path, dtype):
    """Every fused kernel of MLPs, a small 4-D (NCHW, broadcast bias) program, VGG-mini and the zoo compiles with nvcc.
    RGRAPH_REQUIRE_NVCC=1 (.ci/run sets it: CI machines have nvcc) turns a missing nvcc into a failure."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("RGRAPH_REQUIRE_NVCC") == "1":
            pytest.fail("RGRAPH_REQUIRE_NVCC=1 but nvcc is not on PATH")
        pytest.skip("nvcc is not on PATH")
    count = 0
    for name, prog in programs().items():
        kernels = all_kernels(prog)
        assert kernels
        # the kernels over 4-D values also as the CuPy backend launches them on NHWC activations
        variants = [(op, None) for op in kernels] + [(op, NHWC) for op in kernels if len(op.out_shape) == 4]
        path = tmp_path / f"{name}.cu"
        # one translation unit per program: each kernel carries the same typedef (legal C++); the
        # window ops' kernels (im2col, col2im, pooling) with them
        if name == "mlp":   # the flat results' kernel (value + l2 v), outside the programs' plans
            variants.append((plus_l2_op(1e-3), None))
        path.write_text("\n".join([cuda_source(op, dtype, order) for op, order in variants] +
                                  [cuda_window_source(name, dtype) for name in KERNELS]))
        result = subprocess.run([nvcc, "--ptx", "-arch=sm_80", str(path), "-o", str(tmp_path / f"{name}.ptx")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        ptx = (tmp_path / f"{name}.ptx").read_text()
        for name in [cuda_name(op, order) for op, order in variants] + [f"rg_{name}" for name in KERNELS]:
            assert f".entry {name}(" in ptx
            count += 1
    assert count >= 10 + 4 * len(KERNELS) + 4   # vgg-mini's NHWC variants among them


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("memory", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES + [((2, 3), (2, 3), ((0, 1), (0, 0)))])
def test_cuda_window_kernels_match_the_reference_kernels(kernel, stride, padding, memory, dtype):
    """The CuPy backend's im2col, col2im and pooling kernels (their CUDA C run on the host) give the ops'
    own kernels' results: inputs and outputs in either memory order, both float widths, ties (the
    first maximum wins), a NaN (the maximum), gathers and scatters at every offset, allocating and
    into out=."""
    require_host_compiler()
    rng = np.random.default_rng(0)
    kernels = WindowKernels(fake_cupy.module()).kernels()
    geo = dict(kernel=pair(kernel, "k"), stride=pair(kernel if stride is None else stride, "s"),
               padding=padding_pairs(padding))
    order = (0, 2, 3, 1) if memory == "NHWC" else None

    def laid_out(a):
        out = empty(np, a.shape, a.dtype, order)
        out[...] = a
        return out
    x = rng.integers(0, 3, (3, 4, 7, 6)).astype(dtype)   # ties: the first maximum must win
    x[1, 2, 3, 3] = np.nan
    x = laid_out(x)
    y = ops.pool_max_op.forward(np, x, **geo)
    kh, kw = geo["kernel"]
    idx = rng.integers(0, kh * kw, y.shape)   # any offsets, the padding's too (an argmax never picks those)
    g = laid_out(rng.standard_normal(idx.shape).astype(dtype))
    cols = rng.standard_normal(ops.im2col_op.forward(np, x, **geo).shape).astype(dtype)
    image = dict(geo, image=x.shape[1:])
    for op, args, attrs in [(ops.pool_max_op, (x,), geo), (ops.pool_argmax_op, (x, laid_out(y)), geo),
                            (ops.im2col_op, (x,), geo), (ops.pool_gather_op, (x, laid_out(idx)), geo),
                            (ops.pool_scatter_op, (g, laid_out(idx)), image), (ops.col2im_op, (cols,), image)]:
        ref = op.forward(np, *args, **attrs)
        out = empty(np, ref.shape, ref.dtype, order if ref.ndim == 4 else None)
        out[...] = -7
        for got in (kernels[op.name](np, *args, **attrs), kernels[op.name](np, *args, out=out, **attrs)):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=op.name)
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6, err_msg=op.name)


def zoo():
    nn = rg.nn
    return nn.Sequential([nn.Conv2d(4, 3, padding=1), nn.BatchNorm2d(), nn.Activation("swish"),
                          nn.Residual([nn.Conv2d(4, 3, padding=1), nn.Activation("tanh")]),
                          nn.AvgPool2d(3, stride=2, padding=1),
                          nn.Conv2d(3, (2, 3), stride=(1, 2), padding=((1, 0), (0, 2))),
                          nn.MaxPool2d(2, stride=1, padding=1), nn.Activation("softplus"), nn.GlobalAvgPool(),
                          nn.Dense(3)], input_shape=(2, 8, 8), l2=1e-3, name="zoo")


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("name", ["mlp", "cnn", "convnet", "zoo"])
def test_cupy_lowering_on_a_numpy_stand_in(name, dtype, tol):
    """Every entry, computed twice (the first call allocates, the second writes into the planned
    buffers), through conv2d's im2col/col2im and max pooling's primitives as CuPy code; the zoo adds
    batch norm, a residual block, average pooling (strided windows), padded and strided convolutions
    with uneven kernels, overlapping max pooling and global average pooling."""
    g = {"mlp": lambda: rg.nn.mlp([7, 9, 6, 3], activation="swish", l2=1e-3), "cnn": small_cnn,
         "convnet": lambda: rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3),
         "zoo": zoo}[name]()
    if name in ("convnet", "zoo"):
        require_host_compiler()
    batch = batch_for(g, 5, dtype=dtype)
    fake_cupy.launches.clear()
    gpu_prog = rg.compile(g, backend=make_backend(fake_cupy.module()), dtype=dtype)
    first, gpu = products(gpu_prog, batch), products(gpu_prog, batch)
    assert any(name.startswith("fused") for name in fake_cupy.launches)  # the kernels ran as RawKernel launches
    if name == "convnet":   # im2col, col2im and pooling ran as the backend's CUDA kernels
        assert {f"rg_{op}" for op in KERNELS} <= set(fake_cupy.launches)
    cpu = products(rg.compile(g, dtype=dtype), batch)
    for entry in ENTRIES:
        assert rel(first[entry], cpu[entry]) <= tol, entry
        assert rel(gpu[entry], cpu[entry]) <= tol, entry


def test_fused_kernels_read_nhwc_activations_where_they_lie():
    """On the CuPy backend a fused kernel walks its output in the memory order of its buffer, so the
    NHWC activations around convolutions reach it without a copy: in a steady-state Gv call of a
    two-layer CNN (on the stand-in) the R-forward kernels of both layers and the first layer's backward
    kernel run their NHWC variants, and the one input copied is the dense layer's cotangent, reshaped to
    NCHW, meeting pooled NHWC values (the C-order kernels copied three NHWC inputs here)."""
    require_host_compiler()
    cp = fake_cupy.module()
    copies = []

    def ascontiguousarray(a):
        c = np.ascontiguousarray(a)
        if not np.shares_memory(c, a):
            copies.append(a.shape)
        return c
    cp.ascontiguousarray = ascontiguousarray
    g = rg.nn.small_cnn(input_shape=(3, 16, 16), channels=(8, 16), l2=1e-3)
    prog = rg.compile(g, backend=make_backend(cp), dtype="float32")
    st = prog.bind(prog.init_params(), batch_for(g, 4, dtype="float32"))
    v = np.random.default_rng(0).standard_normal(prog.size).astype(np.float32)
    st.gv(v), st.gv(v)
    copies.clear()
    fake_cupy.launches.clear()
    got = st.gv(v)
    nhwc = [name for name in fake_cupy.launches if name.endswith("_o0231")]
    assert len(nhwc) == 3, fake_cupy.launches
    assert len(copies) <= 1, copies   # the mixed-order kernel (it may walk either order)
    cpu = rg.compile(g, dtype="float32")
    want = cpu.bind(cpu.init_params(), batch_for(g, 4, dtype="float32")).gv(v)
    assert rel(got, want) <= 1e-5


def test_the_flat_output_is_one_kernel_a_parameter():
    """Gv's flat result, each parameter's part plus l2 v, is one fused kernel launch a parameter on the
    CuPy backend (a multiply and an add were two): an MLP's gv call on the stand-in launches plus_l2 once
    for each of its six parameters and calls no separate multiply."""
    cp = fake_cupy.module()
    multiplies = []
    multiply = cp.multiply
    cp.multiply = lambda *args, **kwargs: (multiplies.append(1), multiply(*args, **kwargs))[1]
    g = rg.nn.mlp([7, 9, 6, 3], activation="swish", l2=1e-3)
    prog = rg.compile(g, backend=make_backend(cp), dtype="float64")
    st = prog.bind(prog.init_params(), batch_for(g, 5))
    v = np.random.default_rng(0).standard_normal(prog.size)
    st.gv(v)
    multiplies.clear()
    fake_cupy.launches.clear()
    got = st.gv(v)
    assert fake_cupy.launches.count("plus_l2") == len(prog.params) == 6 and not multiplies
    cpu = rg.compile(g)
    assert rel(got, cpu.bind(cpu.init_params(), batch_for(g, 5)).gv(v)) <= 1e-12


GPU_GRAPHS = {"mlp": lambda: rg.nn.mlp([20, 32, 16, 4], activation="swish", l2=1e-3),
              "convnet": lambda: rg.nn.small_cnn(input_shape=(3, 16, 16), channels=(8, 16), l2=1e-3),
              "vgg-mini": lambda: rg.nn.small_cnn(input_shape=(3, 32, 32), channels=(32, 64, 128), l2=1e-3),
              "zoo": zoo}


def on_device(batch):
    import cupy
    return {k: cupy.asarray(v) for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype,tol", [("mlp", "float64", 1e-10), ("convnet", "float64", 1e-10),
                                            ("zoo", "float64", 1e-10), ("vgg-mini", "float64", 1e-10),
                                            ("vgg-mini", "float32", 1e-4)])
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
