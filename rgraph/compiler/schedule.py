"""The schedule stage: per entry, a deterministic topological order of each stage chosen to keep peak
memory low, and (per batch size, in ``plan_buffers``) liveness, buffer reuse and in-place writes.

Order: list scheduling over the ready nodes, preferring the node that frees the most bytes (its inputs
whose last reader it is) minus what it allocates; ties go to the earliest-created node, so the order
never changes from run to run.
"""
from __future__ import annotations

import numpy as np

from .module import Module

VIEW_OPS = ("reshape", "transpose", "broadcast_to", "stop_gradient", "pick")  # results alias an input


def _bytes(node, n=128):
    size = int(np.prod([n if d is None else d for d in node.shape], dtype=np.int64))
    return size * (8 if node.type.is_float or node.dtype == "int64" else 1)


def order(nodes) -> list:
    """A topological order of ``nodes`` (their other inputs are given) that frees memory early."""
    nodes = list(nodes)
    inside = set(nodes)
    readers = {n: [] for n in nodes}
    waiting = {}
    for n in nodes:
        deps = {i for i in n.inputs if i in inside}
        waiting[n] = len(deps)
        for i in deps:
            readers[i].append(n)
    left = {n: len(set(readers[n])) for n in nodes}
    ready = [n for n in nodes if waiting[n] == 0]
    out = []
    while ready:
        def score(n):
            freed = sum(_bytes(i) for i in set(n.inputs) if i in inside and left[i] == 1)
            made = 0 if n.op.name in VIEW_OPS else _bytes(n)
            return (made - freed, n.id)
        best = min(ready, key=score)
        ready.remove(best)
        out.append(best)
        for i in set(best.inputs):
            if i in inside:
                left[i] -= 1
        for r in set(readers[best]):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    assert len(out) == len(nodes), "the graph has a cycle"
    return out


def schedule(module: Module) -> Module:
    """``module.plans[entry] = (batch nodes, vector nodes)``, each in its scheduled order."""
    from . import ENTRIES
    module.plans = {}
    for entry in ENTRIES:
        needed = [n for n in module.nodes([entry]) if not n.is_leaf]
        module.plans[entry] = (order([n for n in needed if n not in module.vector]),
                               order([n for n in needed if n in module.vector]))
    return module


def plan_buffers(nodes, keep, n, dtype, in_place_ok, wants=lambda node: True, order_of=lambda node, k: None):
    """Assign each node of a vector stage an output buffer, reusing dead ones (liveness over ``nodes``).

    Returns ``(buffer_of, buffers)``: node -> buffer index (None for views, non-float results and
    kernels that allocate their own), for a multi-output fused node a tuple of indices (one per output;
    its ``pick`` nodes own them); and a list of (shape, dtype, order) per buffer. ``wants(node)``: the
    node's kernel can write into ``out=``. ``order_of(node, k)``: the memory order of the axes of output k
    (None: C order); only buffers of one shape, dtype and order are shared. ``keep``: nodes read after
    the stage (entry outputs). ``in_place_ok(node)``: True where the node's kernel may write over any input
    that dies with it (a fused kernel with one output and no temporaries), else the positions of the
    inputs it may write over (Backend.in_place).
    """
    def key_of(v, k=0):
        return tuple(n if d is None else d for d in v.shape), np.dtype(dtype).str, order_of(v, k)
    picks = {}
    for node in nodes:
        if node.op.name == "pick":
            picks.setdefault(node.inputs[0], {})[node.attrs["index"]] = node
    root, last = _liveness(nodes, keep)
    pool, buffer_of = _Pool(), {}
    for k, node in enumerate(nodes):
        dying = {root.get(i, i) for i in node.inputs}
        dying = [r for r in sorted(dying, key=lambda v: v.id)
                 if isinstance(buffer_of.get(r), int) and last.get(r) == k]
        if node.op.name == "pick":
            buffer_of.setdefault(node, None)
            continue
        if node in root or not node.type.is_float or not wants(node):
            buffer_of[node] = None
        elif node.op.kind == "fused" and len(node.op.exprs) > 1:
            outs = []
            for idx in range(len(node.op.exprs)):
                b = pool.take(key_of(node, idx))
                outs.append(b)
                p = picks.get(node, {}).get(idx)
                if p is not None and last.get(p) is not None:
                    buffer_of[p] = b
                else:
                    pool.give(b)  # an output this entry never reads: scratch, free again at once
            buffer_of[node] = tuple(outs)
        else:
            over = in_place_ok(node)
            if over:  # the result may take the buffer of a dying input it overwrites
                overwritable = None if over is True else {root.get(node.inputs[i], node.inputs[i]) for i in over}
                mine = [r for r in dying if overwritable is None or r in overwritable]
                for r in mine:
                    pool.give(buffer_of[r])
                dying = [r for r in dying if r not in mine]
            buffer_of[node] = pool.take(key_of(node))
            if last.get(node) is None:
                pool.give(buffer_of[node])
        for r in dying:
            pool.give(buffer_of[r])
    return buffer_of, pool.keys


def _liveness(nodes, keep):
    """(root, last): the node whose buffer each view aliases, and each buffer owner's last reader's
    position in ``nodes`` (past the end for ``keep``, read after the stage)."""
    root, last = {}, {}
    for k, node in enumerate(nodes):
        for i in node.inputs:
            last[root.get(i, i)] = k
        if node.op.name in VIEW_OPS and node.op.name != "pick" and node.inputs:
            root[node] = root.get(node.inputs[0], node.inputs[0])
    for v in keep:
        last[root.get(v, v)] = len(nodes)
    return root, last


class _Pool:
    """Buffer indices by key (shape, dtype, memory order): ``take`` a free one or a new one, ``give``
    one back. ``keys[b]`` is buffer b's key."""

    def __init__(self):
        self.free, self.keys = {}, []

    def take(self, key):
        if self.free.get(key):
            return self.free[key].pop()
        self.keys.append(key)
        return len(self.keys) - 1

    def give(self, b):
        self.free.setdefault(self.keys[b], []).append(b)
