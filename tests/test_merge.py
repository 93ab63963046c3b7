"""merge: Hv's sums of two per-call GEMMs become one GEMM over joined operands where that copies less
than the add it replaces; results stay exact and the GEMM counts still count matrix products."""
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
    assert plain.cost("hv", batch_size=8)["vector"]["gemms"] == c["gemms"]
    assert not merged_gemms(plain, "hv")
    batch = batch_for(g, 5)
    got, want = products(prog, batch), products(plain, batch)
    for entry in ENTRIES:
        assert rel(got[entry], want[entry]) <= 1e-12, entry


def test_gauss_newton_products_have_no_sum_to_merge():
    """Gv's only GEMM sums are its R-forward ones, V a + W R{a}, whose wide patches would cost more to
    join than the add; and a GEMM Gv shares with Hv (H R{z} W^T) stays whole in Gv."""
    prog = rg.compile(narrow_cnn(), dtype="float64")
    for entry in ("jv", "jtu", "gv"):
        assert not merged_gemms(prog, entry), entry
        c = prog.cost(entry, batch_size=8)["vector"]
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


def test_merge_sum_joins_only_untransposed_left_operands_over_a_narrow_axis():
    x, y = rg.Graph("g").input("x", (None, 2)), rg.Graph("h").input("y", (None, 3))
    W = {k: constant(np.ones(k)) for k in [(2, 6), (6, 2), (3, 6), (6, 6)]}
    mm = ops.matmul
    joined = mm(x, W[2, 6]).op.merge_sum(mm(x, W[2, 6]), mm(y, W[3, 6]))       # K = 2 + 3 <= 6
    assert joined is not None and joined.inputs[0].shape == (None, 5) and joined.inputs[1].shape == (5, 6)
    declined = [
        (mm(x, W[2, 6]), mm(x, W[6, 2], transpose_b=True)),      # transposes differ
        (mm(x, W[2, 6]), mm(mm(x, W[2, 6]), W[6, 6])),             # K = 2 + 6 > 6: the copy would cost more
        (mm(x, x, transpose_a=True), mm(x, x, transpose_a=True)),  # contracted over the rows
    ]
    for a, b in declined:
        assert a.op.merge_sum(a, b) is None


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
