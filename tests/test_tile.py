"""compiler.tile: a large per-sample intermediate between a GEMM and im2col/col2im runs batch chunk by
chunk. Tiled programs give the untiled programs' results (every entry, uneven chunks, planned buffers
and recycled binds), count the same GEMMs and FLOPs, and tile only where the backend does."""
import collections

import numpy as np
import pytest

import rgraph as rg
import rgraph.compiler.tile as tile_stage
from rgraph.backends.cupy import make_backend
from rgraph.backends.numpy import BACKEND
from rgraph.compiler.cost import node_flops

import fake_cupy
from helpers_compiler import ENTRIES, batch_for, products, rel


def cnn():
    return rg.nn.small_cnn(input_shape=(3, 10, 10), channels=(4, 6), l2=1e-3)


def tiled_pairs(prog, entry):
    return [tuple(m.op.name for m in n.op.parts(n)) for stage in prog._plans[entry] for n in stage
            if n.op.kind == "tiled"]


def summing_chains(prog, entry):
    """The chains ending in a node that sums over the batch (its result has no batch axis)."""
    return [tuple(m.op.name for m in n.op.parts(n)) for stage in prog._plans[entry] for n in stage
            if n.op.kind == "tiled" and n.shape[:1] != (None,)]


def test_vgg_mini_tiles_its_patch_matrices_with_their_gemms():
    """The backward's GEMM -> col2im in every entry with a backward pass (in Hv's R-backward, from the
    joining of the GEMM's operands on); the R-forward's im2col -> GEMM; and in Hv, whose weight term
    reads the R-forward's patches too, im2col again in a chain ending in that weight-gradient GEMM,
    summed chunk by chunk (the patches are never written out whole)."""
    g = rg.nn.small_cnn(input_shape=(3, 32, 32), channels=(32, 64, 128), l2=1e-3)
    prog, plain = rg.compile(g, dtype="float32"), rg.compile(g, dtype="float32", tile=False)
    expected = {"grad": [("matmul", "col2im")] * 2, "jtu": [("matmul", "col2im")] * 2,
                "jv": [("im2col", "matmul")] * 2, "gv": [("im2col", "matmul")] * 2 + [("matmul", "col2im")] * 2,
                "hv": [("concat", "matmul", "col2im")] * 2 + [("im2col", "matmul")] * 2 + [("im2col", "matmul_add")] * 2
                + [("matmul", "col2im")] * 2, "loss": []}
    for entry, pairs in expected.items():
        assert sorted(tiled_pairs(prog, entry)) == pairs, entry
        assert not tiled_pairs(plain, entry)
    assert "members=(concat_" in prog.text("hv")   # the listing names a chain's members
    assert "tile" in prog.module.history
    for entry in ENTRIES:   # the cost model counts a tiled node as its parts, a recomputed im2col twice
        for part, nodes in zip(("batch", "vector"), prog._plans[entry]):
            a, b = prog.cost(entry, 128)[part], plain.cost(entry, 128)[part]
            members = collections.Counter(m for n in nodes if n.op.kind == "tiled" for m in n.op.parts(n))
            again = sum((k - 1) * node_flops(m, 128) for m, k in members.items() if k > 1)
            assert (a["gemms"], a["gemm_calls"], a["flops"]) == (b["gemms"], b["gemm_calls"], b["flops"] + again), entry
            assert (again > 0) == (entry == "hv" and part == "vector")


@pytest.mark.parametrize("merge", [True, False])   # Hv's weight term a matmul_add, or a matmul and an add
@pytest.mark.parametrize("tile_bytes", [1, 3000, 1 << 30])   # chunks of 1 sample, uneven chunks, one chunk
def test_tiled_programs_give_the_untiled_results(tile_bytes, merge, monkeypatch):
    monkeypatch.setattr(tile_stage, "MIN_SAMPLE_BYTES", 0)
    monkeypatch.setattr(BACKEND, "tiles", tile_bytes)
    g = cnn()
    batch = batch_for(g, 7)
    prog = rg.compile(g, merge=merge)
    assert tiled_pairs(prog, "gv") and tiled_pairs(prog, "grad")
    assert summing_chains(prog, "hv") == [("im2col", "matmul_add" if merge else "matmul")]   # conv2 weight term
    assert not summing_chains(prog, "gv")
    plain = products(rg.compile(g, tile=False), batch)
    for result in (products(prog, batch), products(prog, batch)):  # allocating, then planned and recycled
        for entry in ENTRIES:
            assert rel(result[entry], plain[entry]) <= 1e-12, entry


def test_small_intermediates_and_backends_that_do_not_tile_are_left_whole(monkeypatch):
    assert not tiled_pairs(rg.compile(cnn()), "gv")   # a few KB per sample stays in cache anyway
    monkeypatch.setattr(tile_stage, "MIN_SAMPLE_BYTES", 0)
    assert not tiled_pairs(rg.compile(cnn(), backend=make_backend(fake_cupy.module())), "gv")
    assert not tiled_pairs(rg.compile(cnn(), fuse=False), "gv")
