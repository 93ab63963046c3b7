"""Bad input gets a clear error naming the op, the node and the shapes, at the earliest point."""
import numpy as np
import pytest

import rgraph as rg
from rgraph import ops
from rgraph.graph import Type
from rgraph.op import Op


def _prog(dtype="float64"):
    g = rg.nn.mlp([4, 5, 3])
    return g, rg.compile(g, dtype=dtype)


def _batch(n=6, dtype="float64"):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 4)).astype(dtype), "y": rng.integers(0, 3, n)}


def test_shape_mismatch_at_build_names_op_and_shapes():
    g = rg.Graph()
    x = g.input("x", (None, 4))
    W = g.param("W", (5, 3))
    with pytest.raises(rg.ShapeError, match=r"'matmul'.*x float\(N, 4\).*W float\(5, 3\).*inner dimensions differ: 4 vs 5"):
        ops.matmul(x, W)
    with pytest.raises(rg.ShapeError, match="do not broadcast"):
        ops.add(x, g.param("b", (3,)))


def test_graph_declaration_errors():
    g = rg.Graph("g")
    g.input("x", (None, 2))
    with pytest.raises(ValueError, match="already used"):
        g.param("x", (2,))
    with pytest.raises(rg.ShapeError, match="no batch dimension"):
        g.param("W", (None, 2))
    with pytest.raises(ValueError, match="unknown init"):
        g.param("V", (2,), init="nope")
    with pytest.raises(rg.ShapeError, match="float scalar"):
        g.set_loss(g.inputs["x"])
    with pytest.raises(rg.ShapeError, match="only axis 0"):
        Type((3, None))


def test_wrong_batch_shape_dtype_and_missing_inputs():
    g, prog = _prog()
    theta = prog.init_params(0)
    bad = _batch()
    bad["x"] = bad["x"][:, :3]
    with pytest.raises(rg.BindError, match=r"input 'x': expected shape \(N, 4\) = \(6, 4\).*got \(6, 3\)"):
        prog.bind(theta, bad)
    with pytest.raises(rg.BindError, match="dtype float32 does not match the program's float64"):
        prog.bind(theta, _batch(dtype="float32"))
    with pytest.raises(rg.BindError, match=r"missing inputs \['y'\]"):
        prog.bind(theta, {"x": _batch()["x"]})
    with pytest.raises(rg.BindError, match=r"unknown inputs \['z'\]"):
        prog.bind(theta, {**_batch(), "z": np.zeros(3)})
    b = _batch()
    b["y"] = b["y"][:4]
    with pytest.raises(rg.BindError, match="disagree on the batch size"):
        prog.bind(theta, b)
    b = _batch()
    b["y"] = b["y"].astype(float)
    with pytest.raises(rg.BindError, match="expected integer"):
        prog.bind(theta, b)


def test_labels_out_of_range_name_the_op_and_node():
    _, prog = _prog()
    b = _batch()
    b["y"][2] = 7
    with pytest.raises(rg.BindError, match=r"op 'onehot' failed at node onehot_\d+.*labels must lie in \[0, 3\); found 7"):
        prog.bind(prog.init_params(0), b)


def test_non_finite_inputs_and_parameters():
    _, prog = _prog()
    b = _batch()
    b["x"][1, 2] = np.nan
    with pytest.raises(rg.BindError, match="input 'x' holds non-finite values"):
        prog.bind(prog.init_params(0), b)
    theta = prog.init_params(0)
    theta[0] = np.inf
    with pytest.raises(rg.BindError, match="theta holds non-finite"):
        prog.bind(theta, _batch())


def test_bad_vectors_for_products():
    _, prog = _prog()
    st = prog.bind(prog.init_params(0), _batch())
    with pytest.raises(rg.BindError, match=f"length {prog.size}"):
        st.gv(np.zeros(prog.size + 1))
    with pytest.raises(rg.BindError, match="dtype float32"):
        st.hv(np.zeros(prog.size, np.float32))
    with pytest.raises(rg.BindError, match="shaped like the output"):
        st.jtu(np.zeros((6, 4)))
    with pytest.raises(rg.BindError, match="theta: expected a flat"):
        prog.bind(prog.init_params(0)[:-1], _batch())


class NoRules(Op):
    name = "test_no_rules"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x


def test_missing_rule_at_compile_names_the_pass():
    g = rg.Graph("norules")
    x, y = g.input("x", (None, 3)), g.input("y", (None,), dtype="int64")
    W = g.param("W", (3, 3))
    z = g.output(NoRules()(ops.matmul(x, W)))
    g.set_loss(ops.softmax_cross_entropy(z, y))
    with pytest.raises(rg.RuleError, match=r"op 'test_no_rules' has no vjp rule \(node test_no_rules_\d+, float\(N, 3\)\); the 'grad' pass needs it"):
        rg.compile(g)


def test_incomplete_graph_and_bad_options():
    g = rg.Graph("empty")
    g.input("x", (None, 2))
    with pytest.raises(rg.RuleError, match="needs an output"):
        rg.compile(g)
    with pytest.raises(ValueError, match="dtype must be"):
        rg.compile(rg.nn.mlp([2, 2]), dtype="float16")
    with pytest.raises(ValueError, match="unknown backend"):
        rg.compile(rg.nn.mlp([2, 2]), backend="tpu")
    with pytest.raises(ValueError, match="unknown activation"):
        rg.nn.mlp([2, 2, 2], activation="gelu?")


def test_softmax_cross_entropy_checks_its_inputs():
    g = rg.Graph()
    z = g.input("z", (None, 3))
    with pytest.raises(rg.ShapeError, match="int64 labels"):
        ops.softmax_cross_entropy(z, g.input("t", (None,)))
    with pytest.raises(rg.ShapeError, match="differ in shape"):
        ops.mse(z, g.input("t2", (None, 2)))
