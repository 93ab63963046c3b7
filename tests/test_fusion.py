"""Fusion: fused programs equal unfused ones, kernels sit between GEMMs, sigmoid is evaluated once."""
import numpy as np
import pytest

import rgraph as rg
from rgraph.expr import subexpressions
from rgraph import expr as ex
from rgraph.compiler.fuse import Fused
from rgraph.backends import numba_fused

from helpers_compiler import ENTRIES, batch_for, products, rel, small_cnn

CASES = [([5, 7, 3], "swish", "softmax_cross_entropy"), ([4, 6, 5, 3], "tanh", "softmax_cross_entropy"),
         ([6, 8, 8, 4], "softplus", "mse"), ([3, 5, 4, 4, 2], "sigmoid", "softmax_cross_entropy"),
         ([5, 9, 3], "relu", "mse")]


def graphs():
    for sizes, act, loss in CASES:
        yield f"mlp-{act}-{len(sizes) - 1}", rg.nn.mlp(sizes, activation=act, loss=loss, l2=1e-3)
    yield "cnn", small_cnn()
    yield "convnet", rg.nn.small_cnn(input_shape=(2, 6, 6), channels=(3, 4), l2=1e-3)
    yield "convnet-bn", rg.nn.small_cnn(input_shape=(2, 6, 6), channels=(3, 4), l2=1e-3, batchnorm=True)
    nn = rg.nn   # padded, overlapping windows: not a total selection, so only products move through it
    yield "convnet-padded-pool", nn.Sequential(
        [nn.Conv2d(3, 3, padding=1), nn.Activation("swish"), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
         nn.Dense(4)], input_shape=(2, 6, 6), num_classes=4, l2=1e-3)


def _counting_loops(monkeypatch):
    """Compiled loops for every output size; returns the list each loop run appends to."""
    ran = []
    run_rows = numba_fused._run_rows
    monkeypatch.setattr(numba_fused, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(numba_fused, "_run_rows", lambda loop, *a: (ran.append(loop), run_rows(loop, *a)))
    return ran


@pytest.mark.parametrize("kernels", ["auto", "ufunc", "numexpr"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("name,g", list(graphs()), ids=[n for n, _ in graphs()])
def test_fused_equals_unfused(name, g, dtype, tol, kernels, monkeypatch):
    """Every CPU kernel maker (the default: compiled loops for arithmetic kernels, forced here on every
    size, and in-place NumPy ufuncs for the rest; ufuncs for all; numexpr), called twice (allocating,
    then into planned buffers), against the unfused program."""
    monkeypatch.setenv("RGRAPH_FUSED", kernels)
    ran = _counting_loops(monkeypatch)
    batch = batch_for(g, 6, dtype=dtype)
    prog = rg.compile(g, dtype=dtype)
    products(prog, batch)
    fused = products(prog, batch)
    plain = products(rg.compile(g, dtype=dtype, fuse=False), batch)
    for entry in ENTRIES:
        assert fused[entry].dtype == np.dtype(dtype) or entry == "loss"
        assert rel(fused[entry], plain[entry]) <= tol, entry
    assert bool(ran) == (kernels == "auto")


def test_compiled_loops_read_every_layout_or_hand_over_to_ufuncs(monkeypatch):
    """A compiled loop reads inputs of the output's memory order at i (one in another order copied into
    it first), a broadcast bias over the last memory axes at c, a scalar at 0, and an input it
    overwrites through the output; anything else (here a per-sample scalar, varying along the outermost
    axis) runs the ufunc kernel. Each gives the ufunc kernel's result, laid out in the order most
    inputs share."""
    from rgraph.backends.numpy import compile_fused
    from rgraph.backends.ufunc_kernel import UfuncKernel
    ran = _counting_loops(monkeypatch)
    prog = rg.compile(rg.nn.mlp([5, 7, 3], activation="swish"))
    kernels = [n.op for stage in prog._plans["hv"] for n in stage
               if n.op.kind == "fused" and numba_fused.worth_a_loop(n.op.exprs)]
    assert kernels
    rng = np.random.default_rng(0)
    shape, nhwc = (4, 3, 5, 6), (0, 2, 3, 1)
    for op in kernels:
        kernel = compile_fused(op, "float64")
        assert isinstance(kernel, numba_fused.NumbaKernel)
        reference = UfuncKernel(op, "float64")
        layouts = {"nhwc": [rg.op.empty(np, shape, np.float64, nhwc) for _ in op.params],
                   "bias": [np.empty((3, 1, 1)) if k == 0 else rg.op.empty(np, shape, np.float64, nhwc)
                            for k in range(len(op.params))],
                   "scalar": [np.empty(()) if k == 0 else np.empty(shape) for k in range(len(op.params))],
                   "mixed": [np.empty(shape) if k == 0 else rg.op.empty(np, shape, np.float64, nhwc)
                             for k in range(len(op.params))],
                   "per-sample": [np.empty((4, 1, 1, 1)) if k == 0 else np.empty(shape) for k in range(len(op.params))]}
        if len(op.params) == 1:  # exp(in0): the other layouts need a second operand to mean anything
            layouts = {"nhwc": layouts["nhwc"]}
        for name, arrays in layouts.items():
            for a in arrays:
                a[...] = rng.standard_normal(a.shape)
            want = reference(np, *arrays, shape=shape)
            before = len(ran)
            got = kernel(np, *arrays, shape=shape)
            for w, r in zip(*(x if isinstance(x, tuple) else (x,) for x in (want, got))):
                np.testing.assert_allclose(r, w, rtol=1e-14, atol=0)
            assert len(ran) == before + (name != "per-sample"), name
            if name == "mixed" and len(op.params) > 2:   # NHWC, as all but one input
                assert all(rg.op.memory_order(r) == nhwc for r in (got if isinstance(got, tuple) else (got,)))
        if len(op.exprs) == 1:  # in place: the output is the last input's memory
            arrays = [rng.standard_normal(shape) for _ in op.params]
            want = reference(np, *arrays, shape=shape)
            assert kernel._plan(arrays, shape, (arrays[-1],))[2][-1] == "o0"   # read through the output
            got = kernel(np, *arrays, shape=shape, out=(arrays[-1],))
            assert got is arrays[-1]
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


def test_fused_program_passes_check_graph_reference():
    g = rg.nn.mlp([4, 6, 3], activation="swish", l2=1e-2)
    assert rg.check_graph(g).ok


def test_every_float_elementwise_node_is_in_a_kernel():
    prog = rg.compile(rg.nn.mlp([5, 7, 6, 3]))
    for entry in ENTRIES:
        for stage in prog._plans[entry]:
            assert not [n for n in stage if n.op.kind == "elementwise" and n.dtype == "float"]


def _segments(nodes):
    """Runs of nodes between consecutive GEMMs."""
    segs, cur = [], []
    for n in nodes:
        if n.op.kind == "gemm":
            segs.append(cur)
            cur = []
        else:
            cur.append(n)
    return segs[1:]  # the nodes before the first GEMM are not between two GEMMs


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_gv_has_one_kernel_between_gemms(depth):
    """At most one fused kernel between two consecutive GEMMs of gv's vector stage where no reduction
    intervenes (every hidden layer). The softmax loss's R-op needs a row reduction; there a per-row
    (N, 1) kernel that hv shares stays its own kernel, so that one segment may hold two per reduction."""
    sizes = [6] + [8] * depth + [4]
    prog = rg.compile(rg.nn.mlp(sizes, activation="swish"))
    _, vector = prog._plans["gv"]
    segs = _segments(vector)
    assert segs
    for seg in segs:
        kernels = sum(n.op.kind == "fused" for n in seg)
        reductions = sum(n.op.name == "sum" and n.shape[0] is None for n in seg)
        assert kernels <= 1 + 2 * reductions, [n.op.name for n in seg]
        if reductions == 0:
            assert kernels <= 1, [n.op.name for n in seg]
    # hidden layers: exactly the pattern GEMM, one kernel, GEMM
    assert sum(1 for seg in segs if sum(n.op.kind == "fused" for n in seg) == 1) >= depth


def _sigmoid_args(prog, entry):
    args = []
    for stage in prog._plans[entry]:
        for n in stage:
            if n.op.kind == "fused":
                env = dict(zip(n.op.params, n.inputs, strict=True))
                for sub in set().union(*[subexpressions(e) for e in n.op.exprs]):  # a kernel evaluates each once
                    if True:
                        if sub.op == "sigmoid":  # key: its argument over the kernel's input nodes
                            names = {v: env[v].label for v in ex.variables(sub)}
                            args.append(ex.render(ex.substitute(sub.args[0], {k: ex.var(x) for k, x in names.items()}),
                                                  "numpy"))
    return args


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cse_sigmoid_once_per_preactivation_in_hv(depth):
    """The swish forward, its derivative (grad, J v, J^T u) and its second derivative (Hv) all read one
    sigmoid(s) per pre-activation s: counted over every kernel of the hv program, both stages."""
    prog = rg.compile(rg.nn.mlp([5] + [7] * depth + [3], activation="swish"))
    args = _sigmoid_args(prog, "hv")
    assert len(args) == depth
    assert len(set(args)) == depth
    # none in the vector stage: all v-independent work is in the batch stage, computed once per bind
    assert not [n for n in prog._plans["hv"][1] if n.op.kind == "fused"
                and any(s.op in ("sigmoid", "exp", "tanh", "log") for e in n.op.exprs for s in subexpressions(e))]
    # and unfused, the same program evaluates it many times over
    plain = rg.compile(rg.nn.mlp([5] + [7] * depth + [3], activation="swish"), fuse=False)
    count = sum(1 for stage in plain._plans["hv"] for n in stage if n.op.kind == "elementwise"
                for s in subexpressions(n.op.expr) if s.op == "sigmoid")
    assert count > depth


def test_fused_kernel_contract():
    prog = rg.compile(rg.nn.mlp([5, 7, 3], activation="swish"))
    kernels = [n for stage in prog._plans["hv"] for n in stage if n.op.kind == "fused"]
    assert kernels
    for k in kernels:
        op = k.op
        assert isinstance(op, Fused) and op.name.startswith("fused_")
        assert all(isinstance(e, ex.Expr) for e in op.exprs) and len(op.params) == len(k.inputs)
        for target in ("numpy", "numexpr", "cuda"):
            assert isinstance(op.source(target), str)
        assert f"void {op.name}(" in op.source("cuda")
        # numexpr: no float literal anywhere (constants are typed variables c0, c1, ...)
        body = "\n".join(line for line in op.source("numexpr").splitlines() if not line.startswith(("#", "c")))
        assert not any(ch.isdigit() and prev in " (*+-/" for prev, ch in zip(body, body[1:]))


def test_kernel_names_are_deterministic():
    a = rg.compile(rg.nn.mlp([5, 7, 3]))
    b = rg.compile(rg.nn.mlp([5, 7, 3]))
    for entry in ENTRIES:
        names = [[n.op.name for n in stage] for stage in a._plans[entry]]
        assert names == [[n.op.name for n in stage] for stage in b._plans[entry]]
        srcs = [n.op.source("cuda") for stage in a._plans[entry] for n in stage if n.op.kind == "fused"]
        assert srcs == [n.op.source("cuda") for stage in b._plans[entry] for n in stage if n.op.kind == "fused"]


def test_float32_kernels_stay_float32():
    g = rg.nn.mlp([5, 7, 3], activation="swish")
    prog = rg.compile(g, dtype="float32")
    st = prog.bind(prog.init_params(), batch_for(g, 4, dtype="float32"))
    v = np.ones(prog.size, np.float32)
    st.gv(v)
    for stage in prog.instructions("gv", 4):
        for _, _, slot, node in stage:
            val = st._vals[slot]
            if node.op.kind == "fused":
                for x in (val if isinstance(val, tuple) else (val,)):
                    assert x.dtype == np.float32, node.op.source("numexpr")


def test_products_with_v_independent_factors_run_at_pooled_resolution():
    """Through max pooling's selections the per-call product with f'(s) moves to the pooled side:
    R{pool(f(s))} = gather(R{s}) * gather(f'(s)) and the VJP's f'(s) * scatter(g) = scatter(g *
    gather(f'(s))), the gathers of f'(s) computed once per batch. So in the vector stage of gv no kernel
    reads a pool_scatter, and every product feeding a pool_gather reads another pool_gather."""
    g = rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3)
    prog = rg.compile(g)
    batch_nodes, vector = prog._plans["gv"]
    gathers = [n for n in vector if n.op.name == "pool_gather"]
    scatters = [n for n in vector if n.op.name == "pool_scatter"]
    assert len(gathers) == 2 and len(scatters) == 2
    for n in gathers:
        assert n.inputs[0].op.kind != "fused" or all(e.op != "mul" for e in n.inputs[0].op.exprs)
    assert not [n for n in vector if n.op.kind == "fused" and any(i in scatters for i in n.inputs)]
    assert sum(n.op.name == "pool_gather" for n in batch_nodes) >= 2   # gather(f'(s)), once per bind
    # without the rewrite (the unfused reference program) an elementwise node reads each scatter
    plain = rg.compile(g, fuse=False)._plans["gv"][1]
    assert len([n for n in plain if n.op.kind == "elementwise" and any(i.op.name == "pool_scatter" for i in n.inputs)]) == 2


def test_hv_second_order_terms_run_at_pooled_resolution():
    """Hv's R-backward through swish before max pooling, f'(s) scatter(R{g}) + f''(s) scatter(g) R{s},
    is zero off the pooling's selection in both terms: the compiler makes it scatter(R{g} gather(f'(s))
    + g gather(f''(s)) gather(R{s})), one scatter per pooling, with every per-call elementwise kernel at
    the pooled resolution (gather(R{s}) being the R-forward's own)."""
    g = rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3)
    full = {(None, 3, 8, 8), (None, 4, 4, 4)}   # the two poolings' inputs
    prog = rg.compile(g)
    _, vector = prog._plans["hv"]
    assert not [n for n in vector if n.op.kind == "fused" and n.shape in full]
    # its batch-stage coefficient reads the gradient's cotangents: no kernel of jv or gv may carry it
    assert prog.cost("jv", batch_size=4)["batch"]["gemms"] == prog.cost("gv", batch_size=4)["batch"]["gemms"] == 3
    assert len([n for n in vector if n.op.name == "pool_scatter"]) == 2
    assert len([n for n in vector if n.op.name == "pool_gather"]) == 2
    plain = rg.compile(g, fuse=False)._plans["hv"][1]
    assert len([n for n in plain if n.op.kind == "elementwise" and n.shape in full]) >= 4


def test_biases_and_bias_gradients_run_at_pooled_resolution():
    """Unpadded max pooling is a total selection along the spatial axes, so a convolution's bias passes
    through its R-op, gather(R{s} + R{b}) = gather(R{s}) + R{b}, and the bias gradient's sum sees
    through its VJP, sum(scatter(d)) = sum(d). In the vector stage of gv no elementwise kernel feeds a
    pool_gather and no sum reads a pool_scatter; in Hv, which still needs R{s} at full resolution for
    its second-order term, the program stays correct (the checker compares it with finite differences)."""
    g = rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3)
    prog = rg.compile(g)
    _, vector = prog._plans["gv"]
    gathers = [n for n in vector if n.op.name == "pool_gather"]
    assert len(gathers) == 2 and not [n for n in gathers if n.inputs[0].op.kind == "fused"]
    pooled = {n.shape for n in gathers}

    def bias_sums(nodes):
        return [n.inputs[0].shape for n in nodes if n.op.name == "sum" and n.inputs[0].ndim == 4]
    assert len(bias_sums(vector)) == 2 and set(bias_sums(vector)) <= pooled
    assert not set(bias_sums(rg.compile(g, fuse=False)._plans["gv"][1])) & pooled  # the reference: full size
    report = rg.check_graph(g, batch_size=2, seed=3)
    assert report.ok, str(report)



def test_gradient_and_forward_kernels_run_at_pooled_resolution_where_they_can():
    """A gather moves through every elementwise function of a total selection, down to the values it
    reads at full resolution: gather(f'(s)) = f'(gather(conv) + b). So the gradient's f'(s) scatter(g)
    runs as scatter(g f'(gather(s))), each batch stage computes f'(s) at pooled resolution only, and no
    pass but the forward's activation reads s or sigmoid(s) at full resolution: the forward kernel
    before each max pooling writes the activation alone (it wrote s and sigmoid(s) beside it)."""
    g = rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 4), l2=1e-3)
    prog = rg.compile(g)
    pools = [n for n in prog._plans["loss"][0] if n.op.name == "pool_max"]
    assert len(pools) == 2
    full = {p.inputs[0].shape for p in pools}
    for p in pools:
        assert p.inputs[0].op.kind == "fused" and len(p.inputs[0].op.exprs) == 1
    for entry in ("grad", "gv", "hv", "jv", "jtu"):
        batch, vector = prog._plans[entry]
        at_full = [n for n in batch + vector if n.op.kind in ("fused", "elementwise") and n.shape in full
                   and n not in [p.inputs[0] for p in pools]]
        assert not at_full, (entry, [n.label for n in at_full])
    plain = rg.compile(g, fuse=False)._plans["grad"][0]   # the reference multiplies at full resolution
    assert [n for n in plain if n.op.kind == "elementwise" and n.shape in full and n.tag == "backward"]
    for batch_size in (2, 5):
        report = rg.check_graph(g, batch_size=batch_size, seed=4)
        assert report.ok, str(report)


def test_a_gather_moves_through_a_shared_expression_once_per_value(monkeypatch):
    """Pushing a gather through elementwise nodes reaches a value along every path to it (each h_k of
    h_{k+1} = h_k sigmoid(h_k) along two): each value is gathered once per selection, so the rewrite's
    work grows with the depth, not with the 2^depth paths, and the program stays right."""
    from rgraph import ops
    from rgraph.compiler import selections
    calls = []
    gathered = selections._EntryRewriter._gathered
    monkeypatch.setattr(selections._EntryRewriter, "_gathered",
                        lambda self, sel, x: (calls.append(x), gathered(self, sel, x))[1])
    depth = 12
    g = rg.Graph("deep")
    x, y = g.input("x", (None, 2, 6, 6)), g.input("y", (None,), dtype="int64")
    h = ops.conv2d(x, g.param("c.W", (3, 2, 3, 3)), g.param("c.b", (3,), init="zeros"), padding=1)
    for _ in range(depth):
        h = h * ops.sigmoid(h)
    z = g.output(ops.dense(ops.flatten(ops.maxpool2d(h, 2)), g.param("fc.W", (27, 4)),
                           g.param("fc.b", (4,), init="zeros")))
    g.set_loss(ops.softmax_cross_entropy(z, y), l2=1e-3)
    batch = batch_for(g, 3)
    fused = products(rg.compile(g), batch)
    assert 0 < len(calls) <= 30 * depth   # 155643 calls when every path was followed
    plain = products(rg.compile(g, fuse=False), batch)
    for entry in ENTRIES:
        assert rel(fused[entry], plain[entry]) <= 1e-12, entry


def test_a_ufunc_kernel_uses_its_output_as_scratch_unless_it_aliases_an_input():
    """a + c b runs as multiply(b, c, out); add(out, a, out): the full-size intermediate lives in the
    output buffer, not in a scratch array between the passes; where the output is an input's buffer
    (an in-place kernel) the intermediate goes to scratch, or it would overwrite a before a is read."""
    from rgraph.backends.ufunc_kernel import UfuncKernel, _pool
    from rgraph.graph import Type
    flat = Type((None,), "float")
    op = Fused("plus_scaled", [ex.add(ex.var("in0"), ex.mul(ex.const(0.5), ex.var("in1")))], ("in0", "in1"),
               (None,), (flat, flat), ())
    kernel = UfuncKernel(op, "float64")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(997), rng.standard_normal(997)
    want = a + 0.5 * b
    scratch = ((997,), np.dtype("float64").str, None)
    _pool().free.pop(scratch, None)
    out = np.empty(997)
    assert kernel(np, a, b, shape=(997,), out=(out,)) is out
    np.testing.assert_array_equal(out, want)
    assert not _pool().free.get(scratch)                 # no scratch array was taken
    kernel(np, a, b, shape=(997,), out=(a,))            # in place over a
    np.testing.assert_array_equal(a, want)
    assert _pool().free.get(scratch)                     # ... through a scratch array
