"""rgraph: a graph-compiling autodiff framework for second-order training of neural networks.

    import rgraph as rg
    from rgraph import ops
    g = rg.nn.mlp([4, 8, 3])
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(seed=0), {"x": X, "y": Y})
    st.loss, st.grad, st.gv(v), st.hv(v)
"""
from .errors import BindError, CheckError, RgraphError, RuleError, ShapeError
from .expr import E
from .graph import Graph, Type, Value
from .op import REGISTRY, Elementwise, Op, elementwise, register
from . import ops  # noqa: E402  (rgraph.ops, installed from ops/)
from .compiler import compile
from .program import Program
from .check import check_graph, check_op, evaluate
from . import nn
from .viz import to_dot
from .op import BUILTIN as _BUILTIN

_BUILTIN.update(REGISTRY)   # the ops registered so far are rgraph's own

__version__ = "0.1.0"
__all__ = ["Graph", "Type", "Value", "Op", "Elementwise", "elementwise", "register", "REGISTRY", "E", "ops",
           "compile", "Program", "to_dot", "check_op", "check_graph", "evaluate", "nn", "RgraphError", "ShapeError",
           "RuleError", "BindError", "CheckError"]
