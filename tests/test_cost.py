"""GEMM counts per call, read from prog.cost, pinned for dense MLPs of depth 1-5, fused and unfused."""
import pytest

import rgraph as rg

from helpers_compiler import small_cnn


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("L", [1, 2, 3, 4, 5])
def test_mlp_gemm_counts(L, fuse):
    prog = rg.compile(rg.nn.mlp([6] + [5] * (L - 1) + [3], activation="swish"), fuse=fuse)
    c = {e: prog.cost(e, batch_size=16) for e in ("loss", "grad", "jv", "jtu", "gv", "hv")}
    assert c["loss"]["batch"]["gemms"] == L and c["loss"]["vector"]["gemms"] == 0
    assert c["grad"]["batch"]["gemms"] == 3 * L - 1 and c["grad"]["vector"]["gemms"] == 0
    assert c["jv"]["vector"]["gemms"] == 2 * L - 1
    assert c["jtu"]["vector"]["gemms"] == 2 * L - 1
    assert c["gv"]["vector"]["gemms"] == 4 * L - 2
    assert c["hv"]["vector"]["gemms"] == 6 * L - 4 if L > 1 else c["hv"]["vector"]["gemms"] == 2
    # the batch stage of gv holds the forward pass exactly once; the vector stage no forward GEMM
    batch, vector = prog._plans["gv"]
    assert sum(n.op.kind == "gemm" and n.tag == "forward" for n in batch) == L
    assert not [n for n in vector if n.op.kind == "gemm" and n.tag == "forward"]
    for e in c:
        for stage in ("batch", "vector"):
            assert set(c[e][stage]) >= {"gemms", "flops", "bytes", "peak_bytes"}
    assert c["grad"]["ratio_to_grad"] == pytest.approx(1.0)


def test_cnn_gemm_counts():
    """One GEMM whose input depends on parameters (the scaled, biased 4-D activations): forward 1,
    J v 2 (R{h} W + h V), backward 2 (dW and dh): gv 4, grad 3, hv 6."""
    prog = rg.compile(small_cnn())
    assert prog.cost("gv", batch_size=8)["vector"]["gemms"] == 4
    assert prog.cost("grad", batch_size=8)["batch"]["gemms"] == 3
    assert prog.cost("jv", batch_size=8)["vector"]["gemms"] == 2


def test_fusion_lowers_bytes_and_peak():
    g = rg.nn.mlp([20, 32, 32, 10], activation="swish")
    fused, plain = rg.compile(g), rg.compile(g, fuse=False)
    for entry in ("gv", "hv"):
        a, b = fused.cost(entry, batch_size=64)["vector"], plain.cost(entry, batch_size=64)["vector"]
        assert a["bytes"] < b["bytes"]
        assert a["peak_bytes"] < b["peak_bytes"]
        assert a["gemms"] == b["gemms"]
