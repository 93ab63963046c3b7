"""Convolutional networks: conv2d, pooling, batch norm, the layer helpers and the VGG zoo."""
import numpy as np
import pytest

import rgraph as rg
from rgraph import nn, ops
from rgraph.graph import PARAM, leaf

rng = np.random.default_rng(0)


def distinct(*shape):
    """Values without near-ties, so max pooling's finite differences are valid."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 1.0


CONV_CASES = [  # (x shape, W shape, stride, padding, bias)
    ((2, 2, 5, 5), (3, 2, 3, 3), 1, 0, True),
    ((2, 2, 5, 5), (3, 2, 3, 3), 1, 1, False),
    ((1, 3, 7, 6), (2, 3, 3, 2), 2, 1, True),
    ((2, 1, 5, 7), (2, 1, 1, 1), 1, 2, True),
    ((1, 2, 6, 5), (2, 2, 5, 5), 2, 2, False),
    ((1, 2, 5, 5), (2, 2, 2, 3), (2, 1), ((1, 0), (0, 2)), True),
]


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV_CASES)
def test_conv2d_rules(xs, ws, stride, padding, bias):
    if bias:
        report = rg.check_op(lambda x, W, b: ops.conv2d(x, W, b, stride, padding), xs, ws, (ws[0],))
    else:
        report = rg.check_op(lambda x, W: ops.conv2d(x, W, None, stride, padding), xs, ws)
    assert report.ok, str(report)


def _conv_reference(x, W, b, stride, padding):
    (sh, sw), ((pt, pb), (pl, pr)) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    o, _, kh, kw = W.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, W) + b
    return out


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV_CASES)
def test_conv2d_forward_matches_a_loop_reference(xs, ws, stride, padding, bias):
    from rgraph.ops.conv import pair, padding_pairs
    x, W, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    X, Wv, bv = leaf(PARAM, "x", xs), leaf(PARAM, "W", ws), leaf(PARAM, "b", (ws[0],))
    out = rg.evaluate(ops.conv2d(X, Wv, bv, stride, padding), {X: x, Wv: W, bv: b})
    np.testing.assert_allclose(out, _conv_reference(x, W, b, pair(stride, "s"), padding_pairs(padding)), rtol=1e-12, atol=1e-12)


def test_conv_adjoints_and_windows_rules():
    assert rg.check_op(lambda g, W: ops.conv2d_input_grad(g, W, (2, 5, 5), stride=2, padding=1), (2, 3, 3, 3), (3, 2, 3, 3)).ok
    assert rg.check_op(lambda x, g: ops.conv2d_weight_grad(x, g, 3, stride=2, padding=1), (2, 2, 5, 5), (2, 3, 3, 3)).ok
    assert rg.check_op(lambda x: ops.im2col(x, 3, 2, 1), (2, 2, 5, 4)).ok
    assert rg.check_op(lambda x: ops.im2col(x, (3, 2), (2, 1), ((1, 0), (0, 2))), (2, 3, 5, 6)).ok
    assert rg.check_op(lambda g: ops.col2im(g, (3, 5, 6), (3, 2), (2, 1), ((1, 0), (0, 2))), (2, 14, 18)).ok
    assert rg.check_op(lambda x: ops.windows(x, (2, 2), (1, 2), ((1, 0), (0, 1))), (1, 2, 4, 5)).ok
    assert rg.check_op(lambda g: ops.windows_adjoint(g, (2, 4, 5), (2, 2), (1, 2), ((1, 0), (0, 1))), (1, 2, 4, 3, 2, 2)).ok


def test_conv_adjoints_are_the_transposes_of_conv2d():
    """<conv(x, W), g> = <x, conv_input_grad(g, W)> = <W, conv_weight_grad(x, g)>."""
    x, W, g = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 3, 3))
    X, Wv, G = leaf(PARAM, "x", x.shape), leaf(PARAM, "W", W.shape), leaf(PARAM, "g", g.shape)
    feed = {X: x, Wv: W, G: g}
    y = rg.evaluate(ops.conv2d(X, Wv, stride=2, padding=1), feed)
    gx = rg.evaluate(ops.conv2d_input_grad(G, Wv, (3, 6, 5), stride=2, padding=1), feed)
    gw = rg.evaluate(ops.conv2d_weight_grad(X, G, 3, stride=2, padding=1), feed)
    assert np.sum(y * g) == pytest.approx(np.sum(x * gx), rel=1e-12)
    assert np.sum(y * g) == pytest.approx(np.sum(W * gw), rel=1e-12)


POOL_CASES = [(2, None, 0), (3, 1, 1), (3, 2, 1), (2, 1, 0), ((3, 2), (2, 1), (1, 0))]


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_pool_primitive_rules_at_fixed_offsets(kernel, stride, padding):
    """pool_gather and pool_scatter are linear in their values and each other's VJP; last-axis
    gather/scatter of argmax likewise."""
    k, s, p = _geometry(kernel, stride, padding)
    x = distinct(2, 2, 5, 5)
    y = ops.pool_max_op.forward(np, x, kernel=k, stride=s, padding=p)
    idx = ops.pool_argmax_op.forward(np, x, y, kernel=k, stride=s, padding=p)
    assert rg.check_op(lambda v: ops.pool_gather(v, idx, k, s, p), x.shape).ok
    assert rg.check_op(lambda g: ops.pool_scatter(g, idx, x.shape[1:], k, s, p), idx.shape).ok
    assert rg.check_op(lambda v: ops.gather(v, ops.argmax(v)), distinct(3, 4, 5)).ok
    assert rg.check_op(lambda g: ops.scatter(g, rng.integers(0, 5, (3, 4)), 5), (3, 4)).ok


def test_max_pooling_propagates_nan_like_numpy_argmax():
    x = np.array([[[[1.0, np.nan], [5.0, np.nan]]]])
    X = leaf(PARAM, "x", x.shape)
    geo = dict(kernel=(2, 2), stride=(2, 2), padding=((0, 0), (0, 0)))
    assert rg.evaluate(ops.pool_argmax(X, **geo), {X: x}).item() == 1
    from rgraph.backends.numpy import BACKEND
    y = BACKEND.kernel(ops.pool_max_op)(np, x, **geo)
    assert np.isnan(y).all() and BACKEND.kernel(ops.pool_argmax_op)(np, x, y, **geo).item() == 1
    assert np.isnan(rg.evaluate(ops.maxpool2d(X, 2), {X: x}).item())
    g = rg.Graph("pool")   # in a program: a NaN made inside the network (log of a negative) comes through
    b = g.param("b", (1,), init="zeros")
    z = g.output(ops.flatten(ops.maxpool2d(ops.log(g.input("x", (None, 1, 2, 2)) + b), 2)))
    g.set_loss(ops.mean(z))
    with np.errstate(invalid="ignore"):
        out = rg.compile(g, dtype="float64").bind(np.zeros(1), {"x": np.array([[[[1.0, -1.0], [5.0, 2.0]]]])}).output
    assert np.isnan(out).all()


@pytest.mark.parametrize("channels", [3, 9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("memory", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES + [((2, 3), (2, 3), ((0, 1), (0, 0))), (3, 1, 1), ((2, 4), None, 0)])
def test_numpy_backend_pool_and_patch_kernels_match_the_reference_kernels(kernel, stride, padding, memory, dtype,
                                                                          channels, monkeypatch):
    """The NumPy backend's Numba pooling and patch kernels, batch-chunked and threaded where they
    allocate (forced to one-sample chunks here) and in one call into out=, give the ops' own kernels'
    results, on inputs in either memory order and either float width (the pooling kernels select on the
    floats' bits), with few channels (im2col's NumPy window copy) and more (its compiled loop)."""
    from rgraph.backends import numpy as nb
    from rgraph.ops.conv import pair, padding_pairs
    monkeypatch.setattr(nb, "CHUNK_BYTES", 1)
    monkeypatch.setattr(nb, "MIN_SPLIT_BYTES", 0)
    geo = dict(kernel=pair(kernel, "k"), stride=pair(kernel if stride is None else stride, "s"),
               padding=padding_pairs(padding))
    x = rng.integers(0, 3, (5, channels, 7, 6)).astype(dtype)   # ties: the first maximum must win
    if memory == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    be = nb.BACKEND
    y = ops.pool_max_op.forward(np, x, **geo)
    for op, args in [(ops.pool_argmax_op, (x, y)), (ops.pool_max_op, (x,)), (ops.im2col_op, (x,))]:
        ref = op.forward(np, *args, **geo)
        np.testing.assert_array_equal(be.kernel(op)(np, *args, **geo), ref)
    idx = ops.pool_argmax_op.forward(np, x, y, **geo)
    g = rng.standard_normal(idx.shape).astype(dtype)
    cols = rng.standard_normal(ops.im2col_op.forward(np, x, **geo).shape).astype(dtype)
    for op, args, attrs in [(ops.pool_gather_op, (x, idx), geo), (ops.pool_scatter_op, (g, idx), dict(geo, image=x.shape[1:])),
                            (ops.col2im_op, (cols,), dict(geo, image=x.shape[1:]))]:
        ref = op.forward(np, *args, **attrs)
        out = np.full(ref.shape, np.nan, dtype)
        np.testing.assert_allclose(be.kernel(op)(np, *args, **attrs), ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(be.kernel(op)(np, *args, out=out, **attrs), ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("memory", ["NCHW", "NHWC", "WHCN"])
@pytest.mark.parametrize("axis, keepdims", [((0, 2, 3), True), ((0, 2, 3), False), (1, False), (-1, True),
                                            (None, False), ((0, 1, 2, 3), True), ((1, 2, 3), True), ((1, 2), False)])
def test_numpy_backend_sum_matches_numpy_on_every_layout(axis, keepdims, memory, dtype, monkeypatch):
    """The NumPy backend's sum (one GEMV with ones where the array's memory reads as a matrix of summed
    and kept axes: a convolution's bias gradient) gives np.sum's result, fresh and into out=."""
    from rgraph.backends import numpy as nb
    monkeypatch.setattr(nb, "MIN_GEMV_SUM", 1)
    x = rng.standard_normal((6, 5, 4, 3)).astype(dtype)
    if memory == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif memory == "WHCN":
        x = np.asfortranarray(x)
    kernel, want = nb.BACKEND.kernel(ops.linalg.sum_op), np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    got = kernel(np, x, axis=axis, keepdims=keepdims)
    assert got.shape == want.shape and got.dtype == dtype and np.allclose(got, want, rtol=tol, atol=tol)
    out = np.full(want.shape, np.nan, dtype)
    assert kernel(np, x, axis=axis, keepdims=keepdims, out=out) is out and np.allclose(out, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_pooling_rules(kernel, stride, padding):
    assert rg.check_op(lambda x: ops.maxpool2d(x, kernel, stride, padding), distinct(2, 2, 5, 5)).ok
    assert rg.check_op(lambda x: ops.avgpool2d(x, kernel, stride, padding), (2, 2, 5, 5)).ok


def _geometry(kernel, stride, padding):
    from rgraph.ops.conv import pair, padding_pairs
    return pair(kernel, "k"), pair(kernel if stride is None else stride, "s"), padding_pairs(padding)


def _pool_reference(x, kernel, stride, padding, reduce):
    from rgraph.ops.conv import pair, padding_pairs
    (kh, kw), ((pt, pb), (pl, pr)) = pair(kernel, "k"), padding_pairs(padding)
    sh, sw = pair(stride if stride is not None else kernel, "s")
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out, arg = np.zeros(x.shape[:2] + (ho, wo)), np.zeros(x.shape[:2] + (ho, wo), int)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(ho):
                for j in range(wo):
                    win = xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw].ravel()
                    out[n, c, i, j] = win.max() if reduce == "max" else win.mean()
                    arg[n, c, i, j] = int(np.argmax(win))
    return out, arg


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_pooling_matches_a_loop_reference_including_argmax(kernel, stride, padding):
    x = rng.integers(0, 4, (2, 3, 6, 5)).astype(float)  # many ties: the first maximum must win
    X = leaf(PARAM, "x", x.shape)
    out_max = rg.evaluate(ops.maxpool2d(X, kernel, stride, padding), {X: x})
    ref_max, ref_arg = _pool_reference(x, kernel, stride, padding, "max")
    np.testing.assert_array_equal(out_max, ref_max)
    idx = rg.evaluate(ops.pool_argmax(X, *_geometry(kernel, stride, padding)), {X: x})
    np.testing.assert_array_equal(idx, ref_arg)
    out_avg = rg.evaluate(ops.avgpool2d(X, kernel, stride, padding), {X: x})
    np.testing.assert_allclose(out_avg, _pool_reference(x, kernel, stride, padding, "avg")[0], rtol=1e-14)


def test_maxpool_tangent_is_taken_at_the_argmax_of_the_input():
    """R{maxpool}(x; t) = t at argmax x, not the max of t."""
    x = np.array([[[[1.0, 3.0], [2.0, 0.0]]]])
    t = np.array([[[[10.0, -1.0], [20.0, 30.0]]]])
    X = leaf(PARAM, "x", x.shape)
    (r,) = rg.autodiff.rop_sweep([ops.maxpool2d(X, 2)], {X: rg.graph.constant(t)})
    assert rg.evaluate(r, {X: x}).item() == -1.0


def test_batchnorm_and_small_op_rules():
    assert rg.check_op(lambda x, g, b: ops.batchnorm(x, g, b), (3, 2, 2, 2), (2,), (2,)).ok
    assert rg.check_op(lambda x, g, b: ops.batchnorm1d(x, g, b), (4, 3), (3,), (3,)).ok
    assert rg.check_op(ops.global_avgpool, (2, 3, 2, 2)).ok
    assert rg.check_op(ops.flatten, (2, 3, 2, 2)).ok
    assert rg.check_op(ops.rsqrt, np.abs(rng.standard_normal((3, 2))) + 0.5).ok


def test_batchnorm_normalises_per_channel():
    x = rng.standard_normal((5, 3, 4, 4)) * 3 + 2
    X, G, B = leaf(PARAM, "x", x.shape), leaf(PARAM, "g", (3,)), leaf(PARAM, "b", (3,))
    y = rg.evaluate(ops.batchnorm(X, G, B), {X: x, G: np.ones(3), B: np.zeros(3)})
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)


def _small(layers, shape=(2, 5, 5), classes=3, l2=1e-3):
    return nn.Sequential(layers + [nn.Flatten(), nn.Dense(classes)], shape, classes, l2=l2)


CNNS = {
    "conv-swish-maxpool-bn-avgpool": lambda: _small([
        nn.Conv2d(2, 3, padding=1), nn.Activation("swish"), nn.MaxPool2d(2, 1), nn.BatchNorm2d(),
        nn.AvgPool2d(2)]),
    "residual": lambda: _small([
        nn.Conv2d(2, 3, padding=1), nn.Activation("tanh"),
        nn.Residual([nn.Conv2d(2, 3, padding=1), nn.Activation("swish")]), nn.AvgPool2d(2)]),
    "stride-2": lambda: _small([nn.Conv2d(3, 3, stride=2, padding=1), nn.Activation("softplus"),
                                nn.Conv2d(2, 2, stride=2), nn.Activation("sigmoid")], shape=(1, 7, 7)),
    "global-pool": lambda: nn.Sequential([nn.Conv2d(3, 2), nn.Activation("swish"), nn.GlobalAvgPool(), nn.Dense(2)],
                                         (2, 4, 4), 2, l2=0.0),
}


@pytest.mark.parametrize("name", sorted(CNNS))
def test_small_cnn_passes_match_dense_references(name):
    g = CNNS[name]()
    assert g.params and sum(int(np.prod(p.shape)) for p in g.params.values()) < 400
    report = rg.check_graph(g, batch_size=3, seed=1)
    assert report.ok, str(report)


def test_vgg11_builds_with_the_architectures_parameter_count_and_runs_every_pass_in_float32():
    g = nn.vgg("vgg11", input_shape=(3, 32, 32), num_classes=10)
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(o * i * 9 + o for i, o in convs) + 512 * 10 + 10
    prog = rg.compile(g, dtype="float32")
    assert prog.size == expected == 9_225_610
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((8, 3, 32, 32)).astype(np.float32),
                                         "y": rng.integers(0, 10, 8)})
    v = rng.standard_normal(prog.size).astype(np.float32)
    assert np.isfinite(st.loss)
    for out in (st.grad, st.gv(v), st.hv(v)):
        assert out.shape == (prog.size,) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert [layer.weight for layer in prog.layers] == [f"conv{i}.W" for i in range(1, 9)] + ["fc1.W"]


@pytest.mark.parametrize("name, convs", [("vgg16", 13), ("vgg19", 16)])
def test_vgg16_and_19_have_the_canonical_depth(name, convs):
    g = nn.vgg(name, input_shape=(3, 32, 32), width=1 / 16)
    assert sum(1 for p in g.params if p.endswith(".W")) == convs + 1
    assert g.params["fc1.W"].shape == (32, 10)  # 512/16 channels at 1x1 after five poolings


def test_vgg_adapts_to_other_input_sizes():
    g = nn.vgg("vgg11", input_shape=(1, 8, 8), num_classes=4, width=1 / 32, batchnorm=True)
    assert g.params["fc1.W"].shape == (16, 4)  # three poolings fit an 8x8 input
    assert "bn1.gamma" in g.params


def test_conv_initialisers_use_oihw_fans():
    from rgraph.graph import fans
    assert fans((8, 4, 3, 3)) == (36, 72)
    g = nn.Sequential([nn.Conv2d(64, 3, padding=1), nn.Flatten(), nn.Dense(2)], (16, 8, 8), 2)
    theta = rg.compile(g).init_params(0)
    W = rg.compile(g).view(theta)["conv1.W"]
    assert W.std() == pytest.approx(np.sqrt(2 / (16 * 9)), rel=0.05)


def test_bad_shapes_name_the_layer_and_shapes():
    with pytest.raises(rg.ShapeError, match=r"layer conv2 \(Conv2d\) on input float\(N, 2, 3, 3\): kernel 5x5 is larger than the padded input 3x3"):
        nn.Sequential([nn.Conv2d(2, 3), nn.Conv2d(2, 5), nn.Flatten(), nn.Dense(2)], (1, 5, 5), 2)
    with pytest.raises(rg.ShapeError, match=r"layer conv1 \(Conv2d\).*expects 3 input channels, got 1"):
        nn.Sequential([nn.Conv2d(2, 3, in_channels=3), nn.Flatten(), nn.Dense(2)], (1, 5, 5), 2)
    with pytest.raises(rg.ShapeError, match=r"layer maxpool1 \(MaxPool2d\).*maxpool2d on input float\(N, 1, 3, 3\): kernel 4x4 is larger"):
        nn.Sequential([nn.MaxPool2d(4), nn.Flatten(), nn.Dense(2)], (1, 3, 3), 2)
    g = rg.Graph()
    x, W = g.input("x", (None, 3, 5, 5)), g.param("W", (2, 4, 3, 3))
    with pytest.raises(rg.ShapeError, match=r"input has 3 channels but the weights \(2, 4, 3, 3\) expect 4"):
        ops.conv2d(x, W)


def test_vector_stage_learns_memory_orders_so_conv_gemms_read_no_strided_operand():
    """After the first gv call, the buffers take the orders the kernels chose (NHWC-in-memory for
    activations between convolutions), so every batch operand of a GEMM is contiguous (the transposes
    around conv2d are views, not copies), and later calls, into those buffers, give the same result."""
    g = nn.small_cnn(input_shape=(3, 8, 8), channels=(4, 6), l2=1e-3)
    prog = rg.compile(g, dtype="float64")
    rng_ = np.random.default_rng(0)
    st = prog.bind(prog.init_params(), {"x": rng_.standard_normal((5, 3, 8, 8)), "y": rng_.integers(0, 10, 5)})
    v = rng_.standard_normal(prog.size)
    first = st.gv(v)
    assert prog.buffers("gv", 5)
    again, out = st.gv(v), np.empty(prog.size)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(st.gv(v, out=out), first)
    orders = {a.strides != a.copy().strides for a in prog.buffers("gv", 5)}
    assert True in orders  # some buffers are not in C order
    _, vector = prog.instructions("gv", 5)
    gemm_operands = [st._vals[i] for _, ins, _, node in vector if node.op.kind == "gemm" for i in ins]
    assert all(a.flags.c_contiguous for a in gemm_operands if a.ndim >= 3)


def test_total_selections_pass_biases_and_keep_sums():
    """Unpadded pooling selects within the image only: along its selection axes a per-channel bias passes
    through the gather, gather(a + b) = gather(a) + b, and a sum over them sees through the scatter,
    sum(scatter(a)) = sum(a). Padded pooling (its window may select a padding zero) declares no axes."""
    for padding, axes in [(((0, 0), (0, 0)), (2, 3)), (((1, 1), (0, 0)), None)]:
        geo = dict(kernel=(3, 2), stride=(2, 2), padding=padding)
        x = rng.standard_normal((2, 3, 7, 6))
        idx = ops.pool_argmax_op.forward(np, x, ops.pool_max_op.forward(np, x, **geo), **geo)
        X, I = leaf(PARAM, "x", x.shape), leaf(PARAM, "idx", idx.shape, "int64")
        A, B = leaf(PARAM, "a", idx.shape), leaf(PARAM, "b", (3, 1, 1))
        a, b = rng.standard_normal(idx.shape), rng.standard_normal((3, 1, 1))
        env = {X: x, I: idx, A: a, B: b}
        gathered, scattered = ops.pool_gather(X, I, **geo), ops.pool_scatter(A, I, x.shape[1:], **geo)
        assert gathered.op.selection_axes(gathered) == axes == scattered.op.selection_axes(scattered)
        if axes is None:
            continue
        np.testing.assert_allclose(rg.evaluate(ops.pool_gather(X + B, I, **geo), env),
                                   rg.evaluate(gathered, env) + b, rtol=1e-12)
        np.testing.assert_allclose(rg.evaluate(ops.sum(scattered, axis=(0, 2, 3)), env), a.sum(axis=(0, 2, 3)),
                                   rtol=1e-12)
    last = leaf(PARAM, "l", (2, 3), "int64")
    assert ops.gather(leaf(PARAM, "y", (2, 3, 4)), last).op.selection_axes(None) is None


def test_selection_ops_commute_with_elementwise_products():
    """The identities behind ``Op.selection``: gather(a * b) = gather(a) * select(b) and
    scatter(a) * b = scatter(a * select(b)), for every op declaring a selection (padded, overlapping
    windows included)."""
    geo = dict(kernel=(3, 3), stride=(2, 2), padding=((1, 1), (1, 1)))
    x = rng.standard_normal((2, 3, 5, 6))
    idx = ops.pool_argmax_op.forward(np, x, ops.pool_max_op.forward(np, x, **geo), **geo)
    last = rng.integers(0, 4, (2, 3))
    X, I, L = leaf(PARAM, "x", x.shape), leaf(PARAM, "idx", idx.shape, "int64"), leaf(PARAM, "l", last.shape, "int64")
    cases = [(lambda a: ops.pool_gather(a, I, **geo), (2, 3, 5, 6)),
             (lambda a: ops.pool_scatter(a, I, (3, 5, 6), **geo), idx.shape),
             (lambda a: ops.gather(a, L), (2, 3, 4)), (lambda a: ops.scatter(a, L, 4), (2, 3))]
    env = {I: idx, L: last, X: x}
    for make, shape in cases:
        A = leaf(PARAM, "a", shape)
        node = make(A)
        assert node.op.selection in ("gather", "scatter")
        a = rng.standard_normal(shape)
        big = x if node.op.selection == "scatter" and node.shape == x.shape else rng.standard_normal(
            node.inputs[0].shape if node.op.selection == "gather" else node.shape)
        B = leaf(PARAM, "b", big.shape)
        env.update({A: a, B: big})
        if node.op.selection == "gather":
            left = rg.evaluate(make(A * B), env)
            right = rg.evaluate(node, env) * rg.evaluate(node.op.select(node, B), env)
        else:
            left = rg.evaluate(node, env) * big
            right = rg.evaluate(make(A * node.op.select(node, B)), env)
        np.testing.assert_allclose(left, right, rtol=1e-12, atol=1e-14)
        assert np.abs(left).max() > 0
