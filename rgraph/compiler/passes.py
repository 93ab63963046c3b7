"""Graph-to-graph stages: simplify, cse, stage."""
from __future__ import annotations

from ..graph import CONST, COTANGENT, TANGENT, Value
from .module import Module


def _rewrite(module: Module, visit) -> Module:
    """Rebuild every entry bottom-up; ``visit(node, new_inputs)`` returns the node's replacement."""
    mapping = {}
    for node in module.nodes():
        new_inputs = tuple(mapping.get(i, i) for i in node.inputs)
        mapping[node] = visit(node, new_inputs)
    module.replace(mapping)
    return module


def _clone(node, inputs):
    if inputs == node.inputs:
        return node
    clone = Value(node.op, inputs, node.attrs, node.type, name=node.name)
    clone.tag = node.tag
    return clone


# Identities removed by simplify: op name -> rule(node, inputs) returning a replacement or None.
IDENTITIES = {
    "reshape": lambda n, ins: ins[0] if ins[0].shape == n.shape else None,
    "broadcast_to": lambda n, ins: ins[0] if ins[0].shape == n.shape else None,
    "transpose": lambda n, ins: ins[0].inputs[0] if ins[0].op is n.op and _composes_to_identity(n, ins[0]) else None,
    "sum": lambda n, ins: ins[0] if ins[0].shape == n.shape else None,  # keepdims over unit axes
}


def _composes_to_identity(outer, inner):
    nd = outer.ndim
    a = outer.attrs.get("axes") or tuple(reversed(range(nd)))
    b = inner.attrs.get("axes") or tuple(reversed(range(nd)))
    return tuple(b[i] for i in a) == tuple(range(nd))


def simplify(module: Module) -> Module:
    """Remove identity reshapes, broadcasts, sums over unit axes and double transposes."""
    def visit(node, inputs):
        rule = IDENTITIES.get(node.op.name) if not node.is_leaf else None
        replacement = rule(node, inputs) if rule else None
        return replacement if replacement is not None else _clone(node, inputs)
    return _rewrite(module, visit)


def cse(module: Module) -> Module:
    """Hash-consing: nodes with the same op, attributes and inputs become one node (the earliest, so a
    value of the forward pass keeps its forward tag and is shared by every pass that reads it)."""
    table = {}

    def visit(node, inputs):
        if node.op is CONST:
            key = ("const", node.dtype, node.attrs["value"].shape, node.attrs["value"].tobytes())
        elif node.is_leaf:
            return node
        else:
            key = (id(node.op), node.op.attrs_key(node.attrs), tuple(id(i) for i in inputs))
        if key not in table:
            table[key] = _clone(node, inputs)
        return table[key]
    return _rewrite(module, visit)


def stage(module: Module) -> Module:
    """Split nodes into the batch stage (parameters and batch only: computed once per bind) and the
    vector stage (reads a seed v or u: computed on every product call)."""
    vector = set()
    for node in module.nodes():
        if node.op in (TANGENT, COTANGENT) or any(i in vector for i in node.inputs):
            vector.add(node)
    module.vector = vector
    return module
