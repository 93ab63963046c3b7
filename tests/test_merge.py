"""merge: a per-call sum of two GEMMs becomes one GEMM over joined operands where that copies less than
the add it replaces (Hv's backward through a convolution), else one GEMM accumulating into the other's
result (matmul_add: every R-forward V a + W R{a}); results stay exact, the GEMM counts still count
matrix products, and the accumulating GEMM writes over its accumulator's buffer."""
import numpy as np
import pytest

import rgraph as rg
from rgraph import ops
from rgraph.graph import constant

from helpers_compiler import ENTRIES, batch_for, products, rel


def narrow_cnn():
    """conv 2->3 then conv 3->8 (3x3): the second conv's backward to its patches, R{d} W + d V, has a
    contracted axis of 8 + 8 against 27 patch columns, so Hv merges it; the dense head's backward
    (10 + 10 against 32 inputs) too."""
    return rg.nn.small_cnn(input_shape=(2, 8, 8), channels=(3, 8), num_classes=10, l2=1e-3)


def merged_gemms(prog, entry):
    _, vector = prog._plans[entry]
    return [n for n in vector if n.op.kind == "gemm" and n.op.products(n) > 1]


def test_hv_merges_convolution_and_dense_backward_sums_and_stays_exact():
    g = narrow_cnn()
    prog = rg.compile(g, dtype="float64")
    merged = merged_gemms(prog, "hv")
    assert {n.shape[-1] for n in merged} >= {27, 32}, [n.shape for n in merged]
    for n in merged:
        a = n.inputs[0]
        assert a.op.name == "concat" and a.shape[-1] <= n.shape[-1]   # copies less than the add would
    c = prog.cost("hv", batch_size=8)["vector"]
    assert c["gemm_calls"] == c["gemms"] - len(merged)
    plain = rg.compile(g, dtype="float64", fuse=False)
    unmerged = rg.compile(g, dtype="float64", merge=False)
    for p in (plain, unmerged):
        assert p.cost("hv", batch_size=8)["vector"]["gemms"] == c["gemms"]
        assert not [n for n in p._plans["hv"][1] if n.op.name in ("matmul_add", "concat")]
    batch = batch_for(g, 5)
    got, want = products(prog, batch), products(plain, batch)
    for entry in ENTRIES:
        assert rel(got[entry], want[entry]) <= 1e-12, entry


def test_r_forward_sums_accumulate_and_write_over_their_accumulator():
    """Gv's R-forward sums V a + W R{a} join patches too wide to copy, so W R{a}'s GEMM result takes the
    other product (matmul_add), in its buffer: no add kernel and no second buffer. A GEMM Gv shares with
    Hv (H R{z} W^T) stays whole in Gv."""
    prog = rg.compile(narrow_cnn(), dtype="float64")
    for entry in ("jv", "jtu", "gv"):
        assert not merged_gemms(prog, entry), entry
    _, vector = prog._plans["gv"]
    acc = [n for n in vector if n.op.name == "matmul_add"]
    assert len(acc) == 2   # the second convolution and the dense layer (the first reads no R{a})
    assert not [n for n in vector if n.op.kind == "fused" and sum(i.op.kind == "gemm" for i in n.inputs) >= 2]
    from rgraph.compiler.schedule import plan_buffers
    be = prog.backend
    buffer_of, _ = plan_buffers(vector, [v for v in prog.module.entries["gv"] if v is not None], 8, prog.dtype,
                                lambda x: be.in_place(x.op), wants=lambda x: be.writes_out(x.op))
    assert all(buffer_of[n] == buffer_of[n.inputs[0]] is not None for n in acc)
    c = prog.cost("gv", batch_size=8)["vector"]
    assert c["gemm_calls"] == c["gemms"]


@pytest.mark.parametrize("sizes, merged", [([6, 5, 2], 1), ([6, 5, 4, 2], 1), ([6, 8, 4, 2], 2), ([3, 8, 5], 0)])
def test_mlp_hv_merges_exactly_the_narrow_backward_sums(sizes, merged):
    """A dense layer's backward sum R{d} W^T + d V^T merges when 2 * out <= in; the counts of matrix
    products stay 6L - 4."""
    L = len(sizes) - 1
    prog = rg.compile(rg.nn.mlp(sizes, activation="swish"), dtype="float64")
    want = sum(2 * o <= i for i, o in zip(sizes[1:-1], sizes[2:]))
    assert want == merged and len(merged_gemms(prog, "hv")) == merged
    c = prog.cost("hv", batch_size=16)["vector"]
    assert c["gemms"] == 6 * L - 4 and c["gemm_calls"] == 6 * L - 4 - merged


def test_merge_sum_joins_untransposed_left_operands_over_a_narrow_axis_else_accumulates():
    x, y = rg.Graph("g").input("x", (None, 2)), rg.Graph("h").input("y", (None, 3))
    W = {k: constant(np.ones(k)) for k in [(2, 6), (6, 2), (3, 6), (6, 6)]}
    mm = ops.matmul
    joined = mm(x, W[2, 6]).op.merge_sum(mm(x, W[2, 6]), mm(y, W[3, 6]))       # K = 2 + 3 <= 6
    assert joined is not None and joined.inputs[0].shape == (None, 5) and joined.inputs[1].shape == (5, 6)
    accumulated = [
        (mm(x, W[2, 6]), mm(x, W[6, 2], transpose_b=True)),      # transposes differ
        (mm(x, W[2, 6]), mm(mm(x, W[2, 6]), W[6, 6])),             # K = 2 + 6 > 6: the copy would cost more
        (mm(x, x, transpose_a=True), mm(x, x, transpose_a=True)),  # contracted over the rows
    ]
    for a, b in accumulated:
        acc = a.op.merge_sum(a, b)
        assert acc.op.name == "matmul_add" and acc.attrs == b.attrs
        assert all(p is q for p, q in zip(acc.inputs, (a,) + tuple(b.inputs), strict=True))


def test_concat_with_a_zero_tangent_pads_it_in():
    """R{concat(a, c)} with a constant c: R{a} padded with zeros (and the other way round)."""
    c = np.arange(6.0).reshape(3, 2)
    assert rg.check_op(lambda a: ops.concat(a, c, -1), (3, 4)).ok
    assert rg.check_op(lambda a: ops.concat(c.T, a, 0), (1, 3)).ok


@pytest.mark.parametrize("bad, match", [
    (lambda: ops.concat(constant(np.ones((3, 4))), constant(np.ones((2, 4))), 1), "cannot join"),
    (lambda: ops.slice_axis(constant(np.ones((3, 4))), 1, 2, 6), "slice 2:6"),
    (lambda: ops.concat(rg.Graph("g").input("x", (None, 4)), rg.Graph("h").input("x", (None, 4)), 0), "batch axis"),
])
def test_join_and_slice_errors_name_the_op_and_shapes(bad, match):
    with pytest.raises(rg.ShapeError, match=match) as info:
        bad()
    assert "concat" in str(info.value) or "slice_axis" in str(info.value)


@pytest.mark.parametrize("blas", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_add_kernel_matches_the_reference_on_every_layout(dtype, blas, monkeypatch):
    """The NumPy backend's accumulating GEMM (NumPy's own BLAS with beta = 1, or, without it, a GEMM
    and an add) gives the op's reference result for (N, P, K) and transposed operands, into a fresh
    result, a separate out= (C or Fortran order) and the accumulator's own buffer."""
    from rgraph.backends import numpy as nb
    from rgraph.backends.blas import available
    if not blas:
        monkeypatch.setattr(nb, "gemm_acc", lambda A, B, C: False)
    elif not available(dtype):
        pytest.skip("no BLAS with an accumulating GEMM found beside NumPy")
    kernel = nb.BACKEND.kernel(ops.matmul_add_op)
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for a_shape, b_shape, attrs in [((4, 6, 5), (5, 3), {}), ((4, 6, 5), (3, 5), {"transpose_b": True}),
                                    ((7, 5), (7, 3), {"transpose_a": True}), ((24, 5), (5, 3), {})]:
        a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)
        product = ops.matmul_add_op.forward(np, np.zeros(()), a, b, **attrs)
        c = rng.standard_normal(product.shape).astype(dtype)
        want = c + product
        got = kernel(np, c, a, b, **attrs)
        assert rel(got, want) <= tol and not np.shares_memory(got, c)
        for out in (np.full_like(c, np.nan), np.asfortranarray(np.full_like(c, np.nan))):
            assert kernel(np, c, a, b, out=out, **attrs) is out and rel(out, want) <= tol
        own = c.copy()
        assert kernel(np, own, a, b, out=own, **attrs) is own and rel(own, want) <= tol
