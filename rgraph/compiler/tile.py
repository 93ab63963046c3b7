"""tile: a large per-sample intermediate that only one per-sample node reads (a patch matrix between
im2col and its GEMM, or between a GEMM and col2im; Hv's joined GEMM operands) is produced and consumed
batch chunk by batch chunk, in a buffer that stays in cache, instead of being written to memory whole
and read back.

The producer and its consumer become one ``Tiled`` node, a chain where the consumer's result is itself
such an intermediate (concat -> GEMM -> col2im); the backend runs the members' kernels on each chunk in
turn (``backends.run_tiled``). A chain may end in a node summing over the batch (``Op.sums_batch``: a
weight gradient's GEMM), its result added up chunk by chunk. A producer several nodes read joins each
one's chain where it expands its inputs (``_expands``: im2col), computed again in each rather than
written out whole (Hv's R-forward patches, read by the R-forward GEMM and by the weight term). Only
backends that declare ``tiles`` get it (the NumPy backend: a GPU's caches and launch costs argue the
other way), and only where the kernels write into ``out=``.

Measured on VGG-mini's conv2 at batch 128 on 2 cores (a 37.7 MB patch matrix): GEMM then col2im 23 ->
14 ms, im2col then GEMM 19 -> 12.5 ms, in chunks of 8 samples against the whole batch. Whole calls on
VGG-mini, interleaved against tile=False (three runs): gradient 1.05-1.10x, jv 1.06-1.10x, jtu
1.12-1.24x, gv 1.10-1.13x, hv 1.01-1.08x faster; Hv with the joining concat in its chains 1.02x faster
than with pairs alone. Hv's R-forward patches recomputed in two chains instead of written out: Hv's
bytes 896 -> 726 MB, its peak memory 262 -> 206 MB, 2.2-2.5% faster (medians of 24-30 interleaved
calls). One chain feeding both readers from one im2col per chunk would save a little more (by hand at
conv2: 21.5 ms, against 23-25 for two chains and 28.5 for none) but needs a two-output Tiled node and
the weight term's accumulating GEMM turned around (its accumulator is computed later). A GEMM's result
feeding another GEMM (an accumulator) measured no gain beyond noise and is not chained.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Type, consumers
from ..op import Op
from .module import Module
from .passes import _clone, stage

MIN_SAMPLE_BYTES = 64 << 10   # an intermediate smaller than this per sample (float32) stays in cache anyway
EXPANDS = 4                   # a result this many times its inputs is recomputed per reader (_expands)


class Tiled(Op):
    """A chain of per-sample nodes, each read only by the next (the last may sum over the batch), run
    over chunks of the batch (compiler.tile). Inputs: the first member's, then each next member's
    without its predecessor; attrs: ``members``, the nodes it stands for, in order."""
    name, kind, writes_out = "tiled", "tiled", True

    def infer(self, *types, members) -> Type:
        return members[-1].type

    def parts(self, node):
        return node.attrs["members"]


TILED = Tiled()


def tile(module: Module) -> Module:
    """Chain each worthwhile producer with its one reader (see the module docstring). Batch-stage values
    are cached by a state and read by every entry, so their chains are decided over all entries;
    per-call values are each entry's own, so their chains are decided entry by entry (the R-forward's
    patches of a convolution feed only its GEMM in Jv and Gv, while Hv's weight term reads them too)."""
    backend = module.options.get("tile_with")
    if backend is None:
        return module
    module.replace(_chains(module, module.nodes(), set(module.outputs()), backend, per_call=False))
    stage(module)
    for name, outs in module.entries.items():
        mapping = _chains(module, module.nodes([name]), set(module.outputs([name])), backend, per_call=True)
        module.entries[name] = [None if v is None else mapping.get(v, v) for v in outs]
    module.replace({})   # the passes read the entries rewritten above
    return stage(module)


def _chains(module, nodes, outputs, backend, per_call):
    """A rewrite of ``nodes`` in which each worthwhile producer of the given stage (per-call or batch)
    and its one reader join one Tiled node, a chain growing as its last member's reader joins it:
    {node: its replacement}. A producer several nodes read joins each reader's chain, computed once
    in each, where it is cheap to recompute and expensive to keep (_expands: im2col's patches)."""
    readers = consumers(nodes)

    def kernel_ok(x):
        return x.op.kind not in ("fused", "pick", "tiled") and backend.writes_out(x.op)

    def passes(p, c):   # p's result may go to c chunk by chunk
        if p.is_leaf or p in outputs or not (p in module.vector) == (c in module.vector) == per_call:
            return False
        if p.shape[:1] != (None,) or not p.type.is_float or _sample_bytes(p) < MIN_SAMPLE_BYTES:
            return False
        if not (kernel_ok(p) and kernel_ok(c) and p.op.splits_batch(p)) or p.op.kind == c.op.kind == "gemm":
            return False   # GEMM to GEMM measured no gain: a GEMM's result is narrow
        if c.shape[:1] == (None,):
            return c.op.splits_batch(c)
        summed = c.op.sums_batch(c)   # c ends the chain, adding up its chunks
        return summed is not None and p in c.inputs[len(c.inputs) - summed[1]:]

    def links(p, c, head):
        if readers[p] == [c]:
            return passes(p, c)
        return head.op.kind != "tiled" and _expands(p) and all(passes(p, r) for r in readers[p])
    mapping = {}
    for node in nodes:
        eligible = [p for p in node.inputs if p in mapping and links(p, node, mapping[p])]
        producer = max(eligible, key=_sample_bytes, default=None)   # the largest intermediate gains most
        if producer is None:
            mapping[node] = _clone(node, tuple(mapping.get(i, i) for i in node.inputs))
            continue
        head = mapping[producer]   # the producer, or the chain it ends
        start = head.op.parts(head) if head.op.kind == "tiled" else (producer,)
        inputs = head.inputs if head.op.kind == "tiled" else tuple(mapping.get(i, i) for i in producer.inputs)
        rest = [mapping.get(i, i) for i in node.inputs if i is not producer]
        mapping[node] = TILED(*inputs, *rest, members=tuple(start) + (node,))
        mapping[node].tag = node.tag
    return mapping


def _expands(node):
    """A non-GEMM whose result is at least EXPANDS times its per-sample inputs: recomputing it from
    them in cache costs less than writing it out and reading it back."""
    inputs = sum(_sample_bytes(i) for i in node.inputs if i.shape[:1] == (None,))
    return node.op.kind != "gemm" and _sample_bytes(node) >= EXPANDS * inputs


def _sample_bytes(node):
    return 4 * int(np.prod(node.shape[1:], dtype=np.int64))


@dataclass
class TileLayout:
    """What running a Tiled node at batch size ``n`` needs. ``steps``: per member, how many of the
    node's inputs it takes, which of them the batch slices, and where its predecessor's result enters
    its inputs (None for the first); ``inner_shapes``: the intermediates at batch size n; ``sums``: 0,
    or k where the last member sums over the batch (Op.sums_batch) the contributions of its last k
    inputs, the result then whole and added up chunk by chunk."""
    n: int
    steps: tuple
    inner_shapes: tuple
    out_shape: tuple
    out_order: tuple | None
    dtype: object
    sums: int = 0

    @property
    def sample_bytes(self):
        """The intermediates' bytes per sample."""
        return sum(int(np.prod(shape[1:], dtype=np.int64)) for shape in self.inner_shapes) * self.dtype.itemsize

    @classmethod
    def of(cls, node, n, dtype):
        members = node.attrs["members"]
        concrete = lambda shape: tuple(n if d is None else d for d in shape)  # noqa: E731
        steps = [(len(members[0].inputs), tuple(i.shape[0] is None for i in members[0].inputs), None)]
        for previous, member in zip(members, members[1:]):
            position = next(k for k, i in enumerate(member.inputs) if i is previous)
            own = [i for k, i in enumerate(member.inputs) if k != position]
            steps.append((len(own), tuple(i.shape[0] is None for i in own), position))
        last = members[-1]
        summed = last.op.sums_batch(last) if last.shape[:1] != (None,) else None
        return cls(n, tuple(steps), tuple(concrete(m.shape) for m in members[:-1]), concrete(last.shape),
                   last.op.out_order, np.dtype(dtype), 0 if summed is None else summed[1])
