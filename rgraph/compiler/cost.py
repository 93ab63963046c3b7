"""The cost model: what one call of an entry's batch and vector stages costs, counted on the program.

* ``gemms``: the matrix products of the stage's GEMMs (ops of kind "gemm"; a convolution counts as its
  one im2col GEMM; a GEMM over joined operands, compiler.merge, as the products it sums). A compound
  node (compiler.tile's) counts as its parts.
* ``gemm_calls``: GEMM instructions (a merged GEMM is one call).
* ``flops``: 2mnk per GEMM; per elementwise kernel, one per scalar operation per element; one per
  output element for everything else (reductions, reshapes, gathers).
* ``bytes``: bytes read plus written by the stage's kernels.
* ``peak_bytes``: the most memory live at once while the stage runs. Batch stage: liveness over the
  scheduled order (leaves and values the vector stage reads stay resident; a temporary lives from its
  kernel until its last reader). Vector stage: the plan the program runs, i.e. the resident inputs plus
  the preallocated buffers of ``schedule.plan_buffers`` (reused by liveness, in place where legal) plus
  whatever kernels without ``out=`` allocate.
"""
from __future__ import annotations

import numpy as np

from ..expr import operations


def _concrete(shape, n):
    return tuple(n if d is None else d for d in shape)


def _size(node, n):
    return int(np.prod(_concrete(node.shape, n), dtype=np.int64))


def _itemsize(node, dtype):
    return dtype.itemsize if node.type.is_float else (8 if node.dtype == "int64" else 1)


def node_flops(node, n) -> int:
    if node.op.parts(node) != (node,):
        return sum(node_flops(part, n) for part in node.op.parts(node))
    op = node.op
    if hasattr(op, "flops"):
        return int(op.flops(([_concrete(i.shape, n) for i in node.inputs], _concrete(node.shape, n)), node.attrs))
    if op.kind == "elementwise":
        return _size(node, n) * max(1, len(operations(op.expr)))
    return _size(node, n)


def stage_cost(nodes, reads_after, n, dtype) -> dict:
    """Cost of running ``nodes`` in order; ``reads_after`` are values still needed once the stage ends."""
    nbytes = {}

    def b(v):
        if v not in nbytes:
            outputs = 0 if v.op.kind == "pick" else len(v.op.exprs) if v.op.kind == "fused" else 1
            nbytes[v] = outputs * _size(v, n) * _itemsize(v, dtype)
        return nbytes[v]
    produced = set(nodes)
    last_use = {}
    for k, node in enumerate(nodes):
        for i in node.inputs:
            last_use[i] = k
    resident = {i for node in nodes for i in node.inputs if i not in produced}
    live = sum(b(v) for v in resident)
    peak = live
    total_bytes = 0
    for k, node in enumerate(nodes):
        live += b(node)
        peak = max(peak, live)
        total_bytes += b(node) + sum(b(i) for i in node.inputs)
        for i in set(node.inputs):
            if last_use.get(i) == k and i in produced and i not in reads_after:
                live -= b(i)
        if node not in last_use and node not in reads_after:
            live -= b(node)
    gemms = [part for x in nodes for part in x.op.parts(x) if part.op.kind == "gemm"]
    return {"gemms": sum(x.op.products(x) if hasattr(x.op, "products") else 1 for x in gemms),
            "gemm_calls": len(gemms),
            "flops": sum(node_flops(x, n) for x in nodes),
            "bytes": int(total_bytes), "peak_bytes": int(peak)}


def cost(prog, entry: str, batch_size: int) -> dict:
    """``{"batch": {...}, "vector": {...}, "ratio_to_grad": float}`` for one call of ``entry``.

    ``ratio_to_grad``: FLOPs of the entry's vector stage (of the whole entry where it has none) over the
    FLOPs of one gradient (forward and backward).
    """
    entry = "loss" if entry == "forward" else entry   # as in listings and drawings: the forward pass and loss
    if entry not in prog._plans:
        raise ValueError(f"unknown entry {entry!r}; entries are {sorted(prog._plans)} (and 'forward', the loss's)")
    n = int(batch_size)
    if n < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch, vector = prog._plans[entry]
    outputs = {v for v in prog.module.entries[entry] if v is not None}
    vector_reads = {i for node in vector for i in node.inputs}
    out = {"batch": stage_cost(batch, outputs | vector_reads, n, prog.dtype),
           "vector": stage_cost(vector, outputs, n, prog.dtype)}
    if vector:
        out["vector"]["peak_bytes"] = planned_peak(prog, entry, vector, outputs, n)
    grad_batch, _ = prog._plans["grad"]
    grad_flops = sum(node_flops(x, n) for x in grad_batch)
    mine = out["vector"]["flops"] if vector else out["batch"]["flops"]
    out["ratio_to_grad"] = mine / grad_flops if grad_flops else float("nan")
    return out


def planned_peak(prog, entry, vector, outputs, n) -> int:
    """Resident inputs + the vector stage's buffer pool + the results of kernels that allocate."""
    from .schedule import VIEW_OPS, plan_buffers
    backend = prog.backend
    buffer_of, buffers = plan_buffers(vector, list(outputs), n, prog.dtype, lambda x: backend.in_place(x.op),
                                      wants=lambda x: backend.writes_out(x.op))
    item = prog.dtype.itemsize
    pool = sum(int(np.prod(shape, dtype=np.int64)) * item for shape, _, _ in buffers)
    produced = set(vector)
    resident = {i for node in vector for i in node.inputs if i not in produced}
    own = sum(_size(x, n) * _itemsize(x, prog.dtype) for x in vector
              if buffer_of.get(x) is None and x.op.name not in VIEW_OPS)
    return int(sum(_size(v, n) * _itemsize(v, prog.dtype) for v in resident) + pool + own)
