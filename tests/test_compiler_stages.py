"""The named stages: each one returns an inspectable module; simplify, dce and hoist do what they say."""
import numpy as np
import pytest

import rgraph as rg
from rgraph.expr import subexpressions
from rgraph import expr as ex
from rgraph import ops
from rgraph.compiler import STAGE_NAMES

from helpers_compiler import batch_for, products, rel


def test_stage_names_in_order():
    assert STAGE_NAMES == ["derive", "simplify", "cse", "dce", "stage", "hoist", "merge", "fuse", "tile", "schedule",
                           "lower"]


@pytest.mark.parametrize("until", STAGE_NAMES[:-1])
def test_until_returns_the_module_after_that_stage(until):
    m = rg.compile(rg.nn.mlp([4, 5, 3]), until=until)
    assert m.history == STAGE_NAMES[:STAGE_NAMES.index(until) + 1]
    assert set(m.entries) >= {"loss", "grad", "jv", "jtu", "gv", "hv"}
    kinds = {n.op.kind for n in m.nodes()}
    assert ("fused" in kinds) == (STAGE_NAMES.index(until) >= STAGE_NAMES.index("fuse"))
    if until == "schedule":
        assert set(m.plans) >= {"gv", "hv"}


def test_until_lower_and_unknown_stage():
    m = rg.compile(rg.nn.mlp([4, 5, 3]), until="lower")
    assert m.history[-1] == "lower"
    with pytest.raises(ValueError, match="unknown stage"):
        rg.compile(rg.nn.mlp([4, 5, 3]), until="optimise")


def _graph_with_identities():
    g = rg.Graph("ids")
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    W = g.param("W", (4, 3))
    h = x * 1.0 + 0.0                      # x*1 and x+0
    h = ops.reshape(h, (None, 4))          # reshape to the same shape
    Wtt = ops.transpose(ops.transpose(W))  # transpose of transpose
    z = g.output(ops.matmul(h, Wtt) * (2.0 * 3.0))
    g.set_loss(ops.softmax_cross_entropy(z, y))
    return g


def test_simplify_removes_identities_and_inlines_constants():
    g = _graph_with_identities()
    before = rg.compile(g, until="derive").nodes(["output"])
    after = rg.compile(g, until="simplify").nodes(["output"])
    names = [n.op.name for n in after if not n.is_leaf]
    assert "transpose" not in names and "reshape" not in names
    assert "add" not in names  # x*1 + 0 is x
    (scale,) = [n for n in after if n.op.kind == "elementwise"]
    assert scale.op.expr.op == "mul" and ex.const(6.0) in scale.op.expr.args  # constant folded into the expression
    assert not [n for n in after if n.op.name == "const"]
    assert len(after) < len(before)
    # and the program still computes the same thing as the unsimplified reference interpreter
    batch = batch_for(g, 5)
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(seed=2), batch)
    ref = rg.evaluate(g.z, {g.inputs["x"]: batch["x"], g.params["W"]: prog.view(prog.init_params(seed=2))["W"]})
    np.testing.assert_allclose(st.output, ref, rtol=1e-14)


def test_dce_keeps_exactly_the_live_nodes():
    m = rg.compile(rg.nn.mlp([4, 5, 3]), until="dce")
    assert m.live == set(m.nodes())


def test_hoist_leaves_no_transcendental_in_the_vector_stage():
    for act in ("swish", "tanh", "sigmoid", "softplus"):
        m = rg.compile(rg.nn.mlp([4, 5, 5, 3], activation=act), until="hoist")
        for n in m.nodes(["gv", "hv"]):
            if n in m.vector and n.op.kind == "elementwise":
                ops_in = {s.op for s in subexpressions(n.op.expr)}
                assert not ops_in & {"sigmoid", "tanh", "exp", "log", "log1p"}, (act, n.op.expr)


def test_hoist_alone_keeps_results():
    g = rg.nn.mlp([5, 6, 3], activation="softplus", l2=1e-3)
    batch = batch_for(g, 4)
    a = products(rg.compile(g), batch)
    b = products(rg.compile(g, fuse=False), batch)
    for k in a:
        assert rel(a[k], b[k]) < 1e-12, k


_LISTING = """
import sys
import rgraph as rg
from rgraph.compiler import ENTRIES
g = rg.nn.Sequential([rg.nn.Conv2d(2, 3, padding=1), rg.nn.Activation("swish"), rg.nn.MaxPool2d(2, 1),
                      rg.nn.BatchNorm2d(), rg.nn.AvgPool2d(2), rg.nn.Flatten(), rg.nn.Dense(3)], (2, 5, 5), 3, l2=1e-3)
prog = rg.compile(g, dtype="float32")
sys.stdout.write("".join(prog.text(e) for e in ENTRIES))
"""


def test_compiling_gives_the_same_program_in_every_process():
    """The same graph compiles to the same listing (node and kernel numbering, operand order) whatever
    the string hash seed: no stage may walk a set of expressions in hash order (batch norm's rsqrt
    derivatives once came out differently numbered from run to run)."""
    import os
    import subprocess
    import sys
    listings = [subprocess.run([sys.executable, "-c", _LISTING], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")]
    assert listings[0] and listings[0] == listings[1] == listings[2]


def test_schedule_is_topological_and_deterministic():
    prog = rg.compile(rg.nn.mlp([4, 6, 6, 3]))
    again = rg.compile(rg.nn.mlp([4, 6, 6, 3]))
    for entry, (batch, vector) in prog._plans.items():
        order = batch + vector
        pos = {n: k for k, n in enumerate(order)}
        for n in order:
            assert all(pos[i] < pos[n] for i in n.inputs if i in pos)
        assert [n.op.name for n in order] == [n.op.name for n in again._plans[entry][0] + again._plans[entry][1]]
