"""merge: a sum of two per-call results of one op, each read only by that sum, becomes one node where
the op says that costs less (``Op.merge_sum``).

Hv's R-backward through a convolution adds two GEMMs of the same shape, R{d} W + d V (and a dense
layer's R{d} W^T + d V^T); MatMul merges them into one GEMM over joined operands, [R{d} d] [W; V],
which drops the add of two patch-sized results and runs one GEMM with twice the (narrow) contracted axis.
Where joining would copy more than the add moves (the R-forward pass's V a + W R{a} over wide patches),
the second GEMM accumulates into the first's result instead (matmul_add, BLAS's beta = 1).
"""
from __future__ import annotations

import collections

from ..graph import tagging
from .module import Module
from .passes import _clone, stage
from .selections import _binary


def merge(module: Module) -> Module:
    """Decided per entry: a GEMM another entry also reads (Gv's backward reads H R{z} W^T, which Hv adds
    to d V^T) is merged in the entries where the sum is its only reader, and kept for the others."""
    vector, mapping = module.vector, {}
    entries = [_entry(module, name) for name in module.entries]

    def mergeable(v, node):
        return v in vector and not v.is_leaf and all(
            readers[v] == 1 and v not in outputs for nodes, outputs, readers in entries if node in nodes)

    for node in module.nodes():
        pair = _binary(node, "add") if node in vector else None
        merged = None
        if pair is not None:
            x, y = pair
            if x is not y and x.op is y.op and x.shape == y.shape == node.shape \
                    and mergeable(x, node) and mergeable(y, node):
                with tagging(node.tag):  # the joined operands belong to the pass of the sum they replace
                    merged = x.op.merge_sum(mapping.get(x, x), mapping.get(y, y))
        mapping[node] = merged if merged is not None else _clone(node, tuple(mapping.get(i, i) for i in node.inputs))
    module.replace(mapping)
    return stage(module)


def _entry(module, name):
    """(nodes, outputs, readers) of entry ``name``: its node set, its outputs, and how many of its nodes
    read each value."""
    nodes = module.nodes([name])
    return set(nodes), set(module.outputs([name])), collections.Counter(i for node in nodes for i in set(node.inputs))
