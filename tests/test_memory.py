"""Memory: steady-state products allocate nothing as large as an activation; buffers are reused."""
import tracemalloc

import numpy as np
import pytest

import rgraph as rg

from helpers_compiler import batch_for


@pytest.mark.parametrize("entry", ["gv", "hv", "jv", "jtu"])
def test_steady_state_product_allocates_no_activation(entry):
    """Big enough a batch that NumPy's fixed-size ufunc buffers (8192 elements when an operand is
    broadcast) stay well below one activation."""
    N, width = 1024, 64
    g = rg.nn.mlp([30, width, width, 10], activation="swish", l2=1e-3)
    prog = rg.compile(g, dtype="float64")
    st = prog.bind(prog.init_params(seed=1), batch_for(g, N))
    rng = np.random.default_rng(0)
    seed = rng.standard_normal(prog.size) if entry != "jtu" else rng.standard_normal(st.output.shape)
    out = np.empty_like(st.output) if entry == "jv" else np.empty(prog.size)
    f = getattr(st, entry)
    first = f(seed, out=out).copy()
    f(seed, out=out)
    tracemalloc.start()
    result = f(seed, out=out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result is out
    np.testing.assert_array_equal(result, first)
    activation = N * width * 8
    assert peak < activation // 2, peak


def test_vector_buffers_are_reused():
    g = rg.nn.mlp([10, 16, 16, 16, 4], activation="tanh")
    prog = rg.compile(g)
    _, vector = prog._plans["hv"]
    planned = [n for n in vector if n.op.kind in ("fused", "gemm")]
    assert prog.buffers("hv", 8) == []  # planned at the first call, in the memory orders it produced
    prog.bind(prog.init_params(), batch_for(g, 8)).hv(np.ones(prog.size))
    assert 0 < len(prog.buffers("hv", 8)) < len(planned)


def test_out_matches_fresh_result():
    g = rg.nn.mlp([5, 7, 3], activation="swish", l2=1e-2)
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(), batch_for(g, 4))
    v = np.random.default_rng(1).standard_normal(prog.size)
    out = np.full(prog.size, np.nan)
    np.testing.assert_allclose(st.gv(v, out=out), st.gv(v), rtol=0, atol=0)
    np.testing.assert_allclose(st.hv(v, out=out), st.hv(v), rtol=0, atol=0)


def test_cost_peak_reflects_the_buffer_plan():
    g = rg.nn.mlp([10, 16, 16, 4], activation="swish")
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(), batch_for(g, 32))
    for entry in ("gv", "hv"):
        getattr(st, entry)(np.ones(prog.size))
        pool = sum(a.nbytes for a in prog.buffers(entry, 32))
        assert pool > 0
        peak = prog.cost(entry, batch_size=32)["vector"]["peak_bytes"]
        resident = {i for node in prog._plans[entry][1] for i in node.inputs} - set(prog._plans[entry][1])
        assert peak >= pool + sum(8 * np.prod([32 if d is None else d for d in r.shape]) for r in resident
                                  if r.dtype == "float")
