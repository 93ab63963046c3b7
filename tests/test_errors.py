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
    x = g.inputs["x"]
    z = g.output(x * 2.0)
    assert g.output(z) is z   # the same output again is no change
    with pytest.raises(ValueError, match="already has an output .*one output"):
        g.output(x * 3.0)
    assert g.z is z


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


# --- found by a first-use review: each failed before its fix --------------------------------------

def _dense_graph(name, extra=None):
    g = rg.Graph(name)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int64")
    W = g.param("W", (4, 3))
    return g, x, y, W


def test_a_parameter_the_loss_does_not_read_has_gradient_l2_theta():
    g, x, y, W = _dense_graph("unused")
    g.param("spare", (7,))
    g.output(ops.matmul(x, W))
    g.set_loss(ops.softmax_cross_entropy(g.z, y), l2=1e-2)
    prog = rg.compile(g)
    theta, v = prog.init_params(0) + 1.0, np.arange(prog.size, dtype=np.float64)
    st = prog.bind(theta, _batch(3))
    spare = slice(*(lambda off, shape: (off, off + 7))(*prog.layout["spare"]))
    np.testing.assert_allclose(st.grad[spare], 1e-2 * theta[spare])
    for product in (st.gv, st.hv):
        np.testing.assert_allclose(product(v)[spare], 1e-2 * v[spare])
    assert rg.check_graph(g).ok


def test_a_parameter_reaching_the_loss_outside_the_output_is_refused():
    g, x, y, W = _dense_graph("bypass")
    V = g.param("V", (4, 3))
    g.output(ops.matmul(x, W))
    g.set_loss(ops.softmax_cross_entropy(g.z + ops.matmul(x, V), y))
    with pytest.raises(rg.RuleError, match=r"\['V'\] reach the loss other than through the output"):
        rg.compile(g)


def test_a_state_keeps_its_own_theta_and_hands_out_copies():
    g, prog = _prog()
    theta, v = prog.init_params(0), np.random.default_rng(1).standard_normal(prog.size)
    st = prog.bind(theta, _batch())
    before = {name: getattr(st, name)(v).copy() for name in ("gv", "hv", "jv")}
    grad, output = st.grad, st.output
    kept = grad.copy()
    theta -= 0.5 * grad          # an optimiser updating theta in place
    grad *= 100.0
    output[...] = 0.0
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(st, name)(v), value)
    np.testing.assert_array_equal(st.grad, kept)
    assert np.abs(st.output).max() > 0


def test_cost_takes_forward_and_refuses_a_batch_size_below_one():
    g, prog = _prog()
    assert prog.cost("forward", batch_size=8) == prog.cost("loss", batch_size=8)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        prog.cost("gv", batch_size=0)


def test_compile_reads_numpy_dtypes():
    g = rg.nn.mlp([4, 5, 3])
    assert rg.compile(g, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="'float32' or 'float64', got 'float16'"):
        rg.compile(g, dtype="float16")


def test_an_input_missing_its_batch_axis_is_named():
    g, prog = _prog()
    batch = _batch()
    with pytest.raises(rg.BindError, match=r"input 'x': expected shape \(N, 4\) \(2 axes, the first the batch\), got shape \(4,\)"):
        prog.bind(prog.init_params(0), {"x": batch["x"][0], "y": batch["y"]})
    with pytest.raises(rg.BindError, match="theta: expected a flat numpy array of length .*, got a list"):
        prog.bind(list(prog.init_params(0)), batch)


class _Plain(Op):
    """x * 2 with a rule or kernel broken as ``mode`` says (protocol mistakes, not wrong maths)."""
    def __init__(self, name, mode):
        self.name, self.mode = name, mode

    def infer(self, x):
        return x

    def forward(self, xp, x):
        y = 2.0 * x
        return {"shape": y.T, "dtype": y.astype(np.float32)}.get(self.mode, y)

    def vjp(self, node, g):
        return {"count": [2.0 * g, None], "rule_shape": [ops.sum(g, axis=1)]}.get(self.mode, [2.0 * g])


@pytest.mark.parametrize("mode, message", [
    ("shape", r"op 'plain_shape': forward returned shape \(4, 3\) at node .*, but its shape rule \(infer\) gives \(3, 4\)"),
    ("dtype", r"op 'plain_dtype': forward returned dtype float32 .* in a float64 evaluation"),
    ("count", r"op 'plain_count': its vjp returned 2 cotangents for 1 inputs"),
    ("rule_shape", r"op 'plain_rule_shape': its vjp rule returned shape \(3,\) for input 0, which is shaped \(3, 4\)"),
])
def test_custom_op_protocol_mistakes_name_the_op_and_the_rule(mode, message):
    with pytest.raises(rg.RuleError, match=message):
        rg.check_op(_Plain(f"plain_{mode}", mode), (3, 4))


def test_check_graph_refuses_a_graph_too_large_for_dense_matrices():
    with pytest.raises(ValueError, match=r"dense 9610 x 9610 matrices.*max_size=2000"):
        rg.check_graph(rg.nn.mlp([64, 128, 10]))


@pytest.mark.parametrize("mode, message", [("shape", r"forward returned shape \(4, 6\) at node .* gives \(N, 4\) = \(6, 4\)"),
                                           ("dtype", "forward returned dtype float32")])
def test_a_user_ops_kernel_is_held_to_its_shape_rule_in_a_compiled_program(mode, message):
    """Not only in the checker: the program fails at the op, not at whatever reads its result."""
    g, x, y, W = _dense_graph(f"held_{mode}")
    g.output(ops.matmul(_Plain(f"held_{mode}", mode)(x), W))
    g.set_loss(ops.softmax_cross_entropy(g.z, y))
    prog = rg.compile(g)
    with pytest.raises(rg.BindError, match=f"op 'held_{mode}' failed at node .*" + message):
        prog.bind(prog.init_params(0), _batch(6))
