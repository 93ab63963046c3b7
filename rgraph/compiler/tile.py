"""tile: a large per-sample intermediate that only one per-sample node reads (a patch matrix between
im2col and its GEMM, or between a GEMM and col2im) is produced and consumed batch chunk by batch chunk,
in a buffer that stays in cache, instead of being written to memory whole and read back.

The producer and its consumer become one ``Tiled`` node; the backend runs its two kernels on each chunk
in turn (``backends.run_tiled``). Only backends that declare ``tiles`` get it (the NumPy backend: a
GPU's caches and launch costs argue the other way), and only where both kernels write into ``out=``.
Measured on VGG-mini's conv2 at batch 128 on 2 cores (a 37.7 MB patch matrix): GEMM then col2im 23 ->
14 ms, im2col then GEMM 19 -> 12.5 ms, in chunks of 8 samples against the whole batch. Whole calls on
VGG-mini, interleaved against tile=False (three runs): gradient 1.05-1.07x, jv 1.06x, jtu 1.12-1.24x,
gv 1.10-1.13x, hv 1.01-1.08x faster. A GEMM's result feeding another GEMM (an accumulator) measured no
gain beyond noise and is not paired.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Type, consumers
from ..op import Op
from .module import Module
from .passes import _clone, stage

MIN_SAMPLE_BYTES = 64 << 10   # an intermediate smaller than this per sample (float32) stays in cache anyway


class Tiled(Op):
    """second(first(...)) run over chunks of the batch (compiler.tile). Inputs: first's, then second's
    without the intermediate; attrs: ``members`` = (first, second), the nodes it stands for."""
    name, kind, writes_out = "tiled", "tiled", True

    def infer(self, *types, members) -> Type:
        return members[1].type

    def parts(self, node):
        return node.attrs["members"]


TILED = Tiled()


def tile(module: Module) -> Module:
    """Pair each worthwhile producer with its one reader (see the module docstring). Batch-stage values
    are cached by a state and read by every entry, so their pairs are decided over all entries; per-call
    values are each entry's own, so their pairs are decided entry by entry (the R-forward's patches of
    a convolution feed only its GEMM in Jv and Gv, while Hv's weight term reads them too)."""
    backend = module.options.get("tile_with")
    if backend is None:
        return module
    module.replace(_pairs(module, module.nodes(), set(module.outputs()), backend, per_call=False))
    stage(module)
    for name, outs in module.entries.items():
        mapping = _pairs(module, module.nodes([name]), set(module.outputs([name])), backend, per_call=True)
        module.entries[name] = [None if v is None else mapping.get(v, v) for v in outs]
    module.replace({})
    return stage(module)


def _pairs(module, nodes, outputs, backend, per_call):
    """A rewrite of ``nodes`` with each worthwhile (producer, its one reader) pair of the given stage
    (per-call or batch) as one Tiled node: {node: its replacement}."""
    readers = consumers(nodes)

    def chunkable(x):
        return x.op.kind not in ("fused", "pick", "tiled") and x.op.splits_batch(x) and backend.writes_out(x.op)

    def pairs(p, c):
        if p.is_leaf or readers[p] != [c] or p in outputs:   # something else reads p
            return False
        if p.shape[:1] != (None,) or c.shape[:1] != (None,) or not (p in module.vector) == (c in module.vector) == per_call:
            return False
        if not p.type.is_float or _sample_bytes(p) < MIN_SAMPLE_BYTES:
            return False
        gemm_to_gemm = p.op.kind == c.op.kind == "gemm"   # measured no gain: a GEMM's result is narrow
        return chunkable(p) and chunkable(c) and not gemm_to_gemm
    mapping, taken = {}, set()
    for node in nodes:
        inputs = tuple(mapping.get(i, i) for i in node.inputs)
        eligible = [p for p in node.inputs if p not in taken and node not in taken and pairs(p, node)]
        producer = max(eligible, key=_sample_bytes, default=None)   # the largest intermediate gains most
        if producer is None:
            mapping[node] = _clone(node, inputs)
            continue
        taken |= {producer, node}
        rest = [mapping.get(i, i) for i in node.inputs if i is not producer]
        tiled = TILED(*[mapping.get(i, i) for i in producer.inputs], *rest, members=(producer, node))
        tiled.tag = node.tag
        mapping[node] = tiled
    return mapping


def _sample_bytes(node):
    return 4 * int(np.prod(node.shape[1:], dtype=np.int64))


@dataclass
class TileLayout:
    """What running a Tiled node at batch size ``n`` needs: which inputs of each member are sliced by
    the batch, where the intermediate enters the second member, and the shapes to allocate."""
    n: int
    first_arity: int
    split_first: tuple
    split_second: tuple
    position: int
    inner_shape: tuple     # the intermediate at batch size n
    out_shape: tuple
    out_order: tuple | None
    dtype: object

    @property
    def sample_bytes(self):
        """The intermediate's bytes per sample."""
        return int(np.prod(self.inner_shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def of(cls, node, n, dtype):
        first, second = node.attrs["members"]
        position = second.inputs.index(first)
        others = [i for k, i in enumerate(second.inputs) if k != position]
        concrete = lambda shape: tuple(n if d is None else d for d in shape)  # noqa: E731
        return cls(n, len(first.inputs), tuple(i.shape[0] is None for i in first.inputs),
                   tuple(i.shape[0] is None for i in others), position, concrete(first.shape),
                   concrete(second.shape), second.op.out_order, np.dtype(dtype))
