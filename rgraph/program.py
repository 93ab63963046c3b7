"""Compiled programs and their bound states.

A ``Program`` holds, per entry point, two flat instruction lists: the *batch stage* (depends only on
parameters and batch; run once per ``bind`` and cached) and the *vector stage* (reads v or u; run per
call). An instruction is ``(kernel, input slots, output slot, node)``; the runtime is a plain loop over
them. Instruction lists are specialised per batch size, which makes the batch dimension concrete.
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from .compiler import ENTRIES
from .errors import BindError, fmt_shape
from .graph import CONST, COTANGENT, FLOAT, INITS, INPUT, PARAM, TANGENT
from .op import check_result, empty, memory_order

SEEDED = {"jv": "v", "jtu": "u", "gv": "v", "hv": "v", "taps": "u"}


class Program:
    """The compiled entry points of a graph: ``bind(theta, batch)`` returns a ``State``.

    ``layout`` maps each parameter name to ``(offset, shape)`` in the flat parameter vector of length
    ``size``; every vector over parameters (theta, grad, v, gv, hv) uses it.
    """

    def __init__(self, module, backend, dtype):
        self.module, self.backend, self.graph = module, backend, module.graph
        self.dtype, self.xp = np.dtype(dtype), backend.xp
        self.l2 = self.graph.l2
        passes = module.passes
        self.params = passes.params
        self.layout, offset = {}, 0
        for p in self.params:
            self.layout[p.name] = (offset, p.shape)
            offset += int(np.prod(p.shape, dtype=np.int64))
        self.size = offset
        nodes = module.nodes()
        self._slot = {n: i for i, n in enumerate(nodes)}
        self._nodes = nodes
        self._leaves = {kind: [n for n in nodes if n.op is kind] for kind in (INPUT, PARAM, CONST, TANGENT, COTANGENT)}
        self._tangent_of = dict(zip(passes.v, self.params, strict=True))
        # entry -> (batch nodes, vector nodes) in scheduled order (compiler.schedule); viz and cost read it
        self._plans = dict(module.plans) if module.plans else {
            e: ([n for n in module.nodes([e]) if not n.is_leaf and n not in module.vector],
                [n for n in module.nodes([e]) if not n.is_leaf and n in module.vector]) for e in ENTRIES}
        self._lowered = {}
        self._spare = []   # [(batch size, {node: out buffers})]: released states' batch-stage arrays
        self._refillable = None

    # --- parameters -----------------------------------------------------------------------------

    def init_params(self, seed: int = 0):
        """A fresh flat parameter vector, each parameter drawn by its ``init`` in declaration order."""
        rng = np.random.default_rng(seed)
        theta = np.empty(self.size, dtype=self.dtype)
        for p in self.params:
            init = p.attrs["init"]
            value = np.asarray(init(rng, p.shape) if callable(init) else INITS[init](rng, p.shape))
            if value.shape != p.shape:
                raise ValueError(f"init of parameter {p.name!r} returned shape {value.shape}, expected {p.shape}")
            off, _ = self.layout[p.name]
            theta[off:off + value.size] = value.ravel()
        return self.backend.asarray(theta)

    def view(self, vec) -> dict:
        """Named views (no copies) of a flat parameter-shaped vector: ``prog.view(theta)["fc0.W"]``. The
        vector may also be a NumPy array where the backend's arrays live elsewhere (a host copy of theta)."""
        self._check_flat(vec, "vector", host_ok=True)
        return {name: vec[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
                for name, (off, shape) in self.layout.items()}

    # --- binding ----------------------------------------------------------------------------------

    def bind(self, theta, batch: dict) -> "State":
        """Run the forward pass and loss on ``batch`` at ``theta``; the rest is computed on demand. The
        state keeps its own copy of theta, so an optimiser updating theta in place leaves it consistent."""
        self._check_flat(theta, "theta")
        if not bool(self.xp.isfinite(theta).all()):
            raise BindError("theta holds non-finite values")
        theta = theta.copy()
        n = self._batch_size(batch)
        vals = [None] * len(self._nodes)
        for name, p in zip(self.layout, self.params):
            if p in self._slot:   # a parameter the loss does not read has no node (its gradient is l2 theta)
                off, shape = self.layout[name]
                vals[self._slot[p]] = theta[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
        for x in self._leaves[INPUT]:
            vals[self._slot[x]] = self._check_input(x, batch[x.name], n)
        for c in self._leaves[CONST]:
            vals[self._slot[c]] = self.backend.asarray(c.attrs["value"], self._concrete_dtype(c.dtype))
        return State(self, theta, vals, n, self._take_spare(n))

    def _batch_size(self, batch):
        if not isinstance(batch, dict):
            raise BindError(f"the batch must be a dict of arrays keyed by input name, got {type(batch).__name__}")
        names = {x.name for x in self._leaves[INPUT]}
        missing, unknown = sorted(names - set(batch)), sorted(set(batch) - set(self.graph.inputs))
        if missing or unknown:
            raise BindError(f"graph {self.graph.name!r}: batch is missing inputs {missing}" if missing
                            else f"graph {self.graph.name!r}: batch has unknown inputs {unknown}; inputs are {sorted(self.graph.inputs)}")
        for name in sorted(names):
            x, a = self.graph.inputs[name], batch[name]
            if np.ndim(a) != x.ndim:   # before comparing batch sizes, which a missing axis would garble
                raise BindError(f"input {name!r}: expected shape {fmt_shape(x.shape)} ({x.ndim} {'axes' if x.ndim > 1 else 'axis'}, the first the "
                                f"batch), got shape {np.shape(a)}")
        sizes = {name: np.shape(batch[name])[0] for name in names if np.ndim(batch[name]) > 0}
        if len(set(sizes.values())) > 1:
            raise BindError(f"inputs disagree on the batch size: {sizes}")
        n = next(iter(sizes.values()), None)
        if n is None or n < 1:
            raise BindError(f"the batch is empty (sizes {sizes})")
        return n

    def _check_input(self, x, a, n):
        if not self.backend.is_array(a):
            raise BindError(f"input {x.name!r}: expected a {self.backend.name} array, got {type(a).__name__}")
        expected = tuple(n if d is None else d for d in x.shape)
        if a.shape != expected:
            raise BindError(f"input {x.name!r}: expected shape {fmt_shape(x.shape)} = {expected} for batch size {n}, "
                            f"got {a.shape}")
        if x.dtype == FLOAT:
            if a.dtype != self.dtype:
                raise BindError(f"input {x.name!r}: dtype {a.dtype} does not match the program's {self.dtype} "
                                f"(convert it explicitly, e.g. x.astype('{self.dtype}'))")
            if not bool(self.xp.isfinite(a).all()):
                raise BindError(f"input {x.name!r} holds non-finite values")
            return a
        if a.dtype.kind not in "iu":
            raise BindError(f"input {x.name!r}: expected integer {x.dtype} values, got dtype {a.dtype}")
        return a.astype(np.int64, copy=False)

    def _check_flat(self, vec, what, host_ok=False):
        kind_ok = self.backend.is_array(vec) or (host_ok and isinstance(vec, np.ndarray))
        if not kind_ok or vec.ndim != 1 or vec.shape[0] != self.size:
            got = f"shape {vec.shape}" if kind_ok else f"a {type(vec).__name__}"
            raise BindError(f"{what}: expected a flat {self.backend.name} array of length {self.size}, got {got}")
        if vec.dtype != self.dtype:
            raise BindError(f"{what}: dtype {vec.dtype} does not match the program's {self.dtype}")

    def _concrete_dtype(self, dtype):
        return self.dtype if dtype == FLOAT else np.dtype(dtype)

    @functools.cached_property
    def _plus_l2(self):
        """The backend's kernel for ``value + l2 base`` over one flat parameter (plus_l2_op)."""
        return self.backend.kernel(plus_l2_op(self.l2), self.dtype)

    # --- recycling a released state's memory ------------------------------------------------------

    SPARE_SETS = 3  # a step's state, its curvature subsample's and a trial point's

    def _take_spare(self, n):
        for i in range(len(self._spare) - 1, -1, -1):
            if self._spare[i][0] == n:
                return self._spare.pop(i)[1]
        return {}

    def _recycle(self, n, vals, spare):
        """Keep the batch-stage arrays of a released state (``vals``, emptied here) that nothing else
        references, for the next bind at batch size ``n`` to write into: fresh memory costs a page fault
        per 4 KiB on first touch (a third of an MLP forward pass, measured), reused memory does not."""
        if not self.backend.recycles:
            vals.clear()
            return
        records, arity = self._records(vals)
        vals.clear()  # the state's references go: whatever still reaches an array is someone else's
        free = {}
        for node, k, a in _unreferenced(records):
            free.setdefault(node, {})[k] = a
        for node, parts in free.items():
            if len(parts) == arity[node]:  # every output of the node is free
                spare[node] = tuple(parts[k] for k in range(arity[node])) if node.op.kind == "fused" else parts[0]
        self._spare = (self._spare + [(n, spare)])[-self.SPARE_SETS:]

    def _records(self, vals):
        """[(node, output index, array)] of the batch-stage values whose kernels write into out=, and
        each such node's number of outputs."""
        if self._refillable is None:
            self._refillable = [node for node in dict.fromkeys(n for e in ENTRIES for n in self._plans[e][0])
                                if self.backend.writes_out(node.op)]
        records, arity = [], {}
        for node in self._refillable:
            value = vals[self._slot[node]]
            parts = value if isinstance(value, tuple) else (value,)
            if all(isinstance(a, np.ndarray) for a in parts):  # not a reduction's NumPy scalar, nor None
                arity[node] = len(parts)
                records += [(node, k, a) for k, a in enumerate(parts)]
        return records, arity

    # --- lowering ---------------------------------------------------------------------------------

    def instructions(self, entry: str, n: int):
        """The (batch, vector) instruction lists of ``entry`` for batch size ``n``.

        Until the entry's first call at this batch size, the vector stage's kernels allocate their
        results; that call records the memory order each kernel chose (a kernel over a transposed GEMM
        result keeps the GEMM's order, so the transposes around a convolution stay views), and from then
        on the vector stage writes into buffers preallocated in those orders and reused by liveness
        (compiler.schedule.plan_buffers): a steady-state product call allocates nothing as large as an
        activation on the NumPy backend.
        """
        if n not in self._lowered:
            self._lowered[n] = {e: self._lower_entry(e, n) for e in ENTRIES}
        return self._lowered[n][entry][:2]

    def buffers(self, entry: str, n: int):
        """The vector-stage buffers of ``entry`` at batch size ``n`` (a list of arrays; empty until the
        entry's first call at that size)."""
        self.instructions(entry, n)
        return self._lowered[n][entry][2] or []

    def _lower_entry(self, entry, n, orders=None):
        """(batch, vector, buffers); without ``orders`` (memory orders learned by a first call) the
        vector stage allocates and buffers is None."""
        from .compiler.schedule import plan_buffers
        batch_nodes, vector_nodes = self._plans[entry]
        batch = [self._lower(node, n) for node in batch_nodes]
        if orders is None:
            return batch, [self._lower(node, n) for node in vector_nodes], None
        keep = [v for v in self.module.entries[entry] if v is not None]
        backend = self.backend
        buffer_of, keys = plan_buffers(vector_nodes, keep, n, self.dtype, lambda node: backend.in_place(node.op),
                                       wants=lambda node: backend.writes_out(node.op),
                                       order_of=lambda node, k: orders.get((node, k)))
        arrays = [empty(self.xp, shape, np.dtype(dt), order) for shape, dt, order in keys]

        def out_of(node):
            b = buffer_of.get(node)
            if b is None or node.op.name == "pick":
                return None
            return tuple(arrays[i] for i in b) if isinstance(b, tuple) else arrays[b]
        return batch, [self._lower(node, n, out_of(node)) for node in vector_nodes], arrays

    def _learn_orders(self, entry, n, vals):
        """After an entry's first (allocating) call: plan its buffers in the orders its kernels chose."""
        if self._lowered[n][entry][2] is not None:
            return
        orders = {}
        for node in self._plans[entry][1]:
            val = vals[self._slot[node]]
            if self.backend.writes_out(node.op) and val is not None:
                for k, a in enumerate(val if isinstance(val, tuple) else (val,)):
                    orders[(node, k)] = memory_order(a)
        self._lowered[n][entry] = self._lower_entry(entry, n, orders)

    def _lower(self, node, n, out=None):
        kernel = self._tiled_kernel(node, n) if node.op.kind == "tiled" else self._kernel(node, n)
        if out is not None:
            kernel = functools.partial(kernel, out=(out,) if node.op.kind == "fused" and not isinstance(out, tuple)
                                       else out)
        return kernel, tuple(self._slot[i] for i in node.inputs), self._slot[node], node

    def _kernel(self, node, n, op=None):
        """The backend's kernel of ``node`` (or of ``op`` with node's attributes) at batch size ``n``."""
        attrs = {}
        for k, v in node.attrs.items():
            if k == "shape":
                v = tuple(n if d is None else d for d in v)
            elif k == "dtype" and v == FLOAT:
                v = self.dtype
            attrs[k] = v
        kernel = functools.partial(self.backend.kernel(op or node.op, self.dtype), self.xp, **attrs)
        if type(node.op).__module__.partition(".")[0] != "rgraph":   # a user's op class: hold it to its shape rule
            kernel = _held_to_type(kernel, node, tuple(n if d is None else d for d in node.shape), self.dtype)
        return kernel

    def _tiled_kernel(self, node, n):
        """A Tiled node's kernels run chunk by chunk through cache-sized buffers (compiler.tile)."""
        from .backends import run_tiled
        from .compiler.tile import TileLayout
        members = node.op.parts(node)
        layout = TileLayout.of(node, n, self.dtype)
        chunk = max(1, min(n, self.backend.tiles // max(1, layout.sample_bytes)))
        buffers = [empty(self.xp, (chunk,) + shape[1:], layout.dtype, m.op.out_order)
                   for m, shape in zip(members, layout.inner_shapes)]
        last = members[-1]
        accumulate = self._kernel(last, n, op=last.op.sums_batch(last)[0]) if layout.sums else None
        return functools.partial(run_tiled, self.xp, [self._kernel(m, n) for m in members], layout, chunk, buffers,
                                 accumulate=accumulate)

    # --- looking at it --------------------------------------------------------------------------

    def cost(self, entry: str, batch_size: int = 128) -> dict:
        """GEMMs, FLOPs, bytes and peak memory of ``entry``'s batch and vector stages (see compiler.cost)."""
        from .compiler.cost import cost
        return cost(self, entry, batch_size)

    def text(self, entry: str) -> str:
        """A readable listing of ``entry``, one line per instruction (see viz.text)."""
        from .viz import text
        return text(self, entry)

    def show(self, entry: str, path: str, **options):
        """Draw ``entry`` with graphviz to ``path`` (SVG, PNG or PDF by suffix; see viz.show)."""
        from .viz import show
        return show(self, entry, path, **options)

    @property
    def layers(self):
        """The GEMM layers KFAC preconditions (see autodiff.gemm_layers)."""
        return self.module.passes.layers

    def __repr__(self):
        return f"<Program {self.graph.name}: {self.size} parameters, {self.dtype}, {self.backend.name}>"


def plus_l2_op(l2):
    """A fused op computing ``value + l2 base`` over flat vectors (in0: value, in1: base), compiled by a
    backend like the passes' own kernels: the flat results of grad, gv and hv, one parameter at a time."""
    from . import expr as ex
    from .compiler.fuse import Fused
    from .graph import Type
    flat = Type((None,), FLOAT)
    return Fused("plus_l2", [ex.add(ex.var("in0"), ex.mul(ex.const(l2), ex.var("in1")))], ("in0", "in1"),
                 (None,), (flat, flat), ())


def _run(instrs, vals, n, skip_done=False, spare=None):
    """The runtime: call each kernel on its slots (batch-stage lists skip values already cached, and
    write into a released state's arrays from ``spare`` where it has one for the node)."""
    node = None
    try:
        for kernel, ins, out, node in instrs:
            if skip_done and vals[out] is not None:
                continue
            buffers = spare.pop(node, None) if spare else None
            if buffers is None:
                vals[out] = kernel(*[vals[i] for i in ins])
            else:
                vals[out] = kernel(*[vals[i] for i in ins], out=buffers)
    except Exception as e:
        shapes = ", ".join(f"{i.label} {fmt_shape(getattr(vals[k], 'shape', ()))}"
                           for i, k in zip(node.inputs, [x for x in instrs if x[3] is node][0][1]))
        raise BindError(f"op {node.op.name!r} failed at node {node.label} ({node.tag} pass, batch size {n}) "
                        f"on [{shapes}]: {e}") from e


def _held_to_type(kernel, node, shape, dtype):
    """A user op's kernel whose every result is checked against the node's type, so that a forward
    disagreeing with its infer fails at that op rather than at whatever reads its result."""
    def run(*args, **kwargs):
        return check_result(node, kernel(*args, **kwargs), shape, dtype)
    return run


def _chain(a):
    """a and the objects under its memory: a.base, its base, ... (NumPy points a view of a view at the
    memory's owner, so every view of an array's memory holds a reference to the owner)."""
    chain = [a]
    while isinstance(chain[-1], np.ndarray) and chain[-1].base is not None:
        chain.append(chain[-1].base)
    return chain


def _refcounts(a):
    return [sys.getrefcount(o) for o in _chain(a)]


def _unreferenced(records):
    """The records (node, output index, array) whose memory nothing outside ``records`` reaches: the
    array held only by its record, and each object under it only by the one above. The counts are
    compared with those of a private probe measured the same way (CPython reference counts)."""
    probe = [(None, 0, np.empty((1, 1)).T)]  # a view, like the arrays kernels allocate in NHWC
    head, under = _refcounts(probe[0][2])
    return [r for r in records if all(c <= (head if i == 0 else under) for i, c in enumerate(_refcounts(r[2])))]


class State:
    """A program bound to parameters and a batch. Batch-stage values are computed once and cached;
    ``jv``/``jtu``/``gv``/``hv`` run only their vector stage per call.

    When a state is dropped (or ``release()`` is called), its cached arrays that nothing else references
    are handed to the next ``bind`` of the program at the same batch size, which writes into them instead
    of allocating: arrays you still hold (``output``, ``taps``, views of them) are never reused."""

    def __init__(self, prog, theta, vals, n, spare=None):
        self.prog, self.theta, self._vals, self.batch_size = prog, theta, vals, n
        self._spare = {} if spare is None else spare
        self._cache = {}
        self._batch("loss")
        self._batch("output")

    def release(self):
        """Hand this state's memory back to its program; the state can no longer be used."""
        if self._vals:
            self._cache.clear()
            self.prog._recycle(self.batch_size, self._vals, self._spare)
            self._spare = {}

    def __del__(self, _finalizing=sys.is_finalizing):
        # At exit the modules may be torn down (this one's globals, sys included, set to None): there is
        # no program left to hand the arrays back to. The default argument keeps the check reachable.
        if not _finalizing():
            self.release()

    def _live(self):
        if not self._vals:
            raise BindError("this State was released: bind again to use the program")
        return self._vals

    def _batch(self, entry):
        batch, _ = self.prog.instructions(entry, self.batch_size)
        _run(batch, self._live(), self.batch_size, skip_done=True, spare=self._spare)

    def _value(self, node):
        return None if node is None else self._live()[self.prog._slot[node]]

    @property
    def loss(self) -> float:
        """mean data loss + (l2/2) |theta|^2."""
        if "loss" not in self._cache:
            data = float(self._value(self.prog.module.entries["loss"][0]))
            self._cache["loss"] = data + 0.5 * self.prog.l2 * float(self.theta @ self.theta)
        return self._cache["loss"]

    @property
    def output(self):
        """The network output z (batch-major), a copy the caller owns."""
        return self._z().copy()

    def _z(self):
        return self._value(self.prog.module.entries["output"][0])

    @property
    def grad(self):
        """Gradient of the objective, flat: sum of cotangents + l2 theta (a copy the caller owns)."""
        if "grad" not in self._cache:
            self._batch("grad")
            self._cache["grad"] = self._flat("grad", self.theta)
        return self._cache["grad"].copy()

    def jv(self, v, out=None):
        """J v: the directional derivative of the output z along v (shape of z); written into ``out`` if given."""
        self._call("jv", v)
        (node,) = self.prog.module.entries["jv"]
        xp, z = self.prog.xp, self._z()
        if out is None:
            return xp.zeros_like(z) if node is None else self._value(node).copy()
        if node is None:
            out[...] = 0
        else:
            xp.copyto(out, self._value(node))
        return out

    def jtu(self, u, out=None):
        """J^T u for a cotangent u shaped like z (no 1/N, no l2); flat, into ``out`` if given."""
        self._call("jtu", u)
        return self._flat("jtu", out=out)

    def gv(self, v, out=None):
        """Gauss-Newton product: G v = l2 v + (1/N) sum_i J_i^T B_i J_i v (into ``out`` if given)."""
        self._call("gv", v)
        return self._flat("gv", v, out)

    def hv(self, v, out=None):
        """Exact Hessian of the objective times v (forward over reverse; into ``out`` if given)."""
        self._call("hv", v)
        return self._flat("hv", v, out)

    def taps(self, u) -> dict:
        """Layer inputs and pre-activation cotangents for an output cotangent u (per sample: no 1/N).

        Returns {weight name: (a, g)}: dense layers a (N, in), g (N, out); convolutions (GEMMs over
        N*P rows of im2col patches) a (N, P, in), g (N, P, out).
        """
        self._call("taps", u)
        layers, outs, n = self.prog.layers, self.prog.module.entries["taps"], self.batch_size
        result = {}
        for layer, a_node, g_node in zip(layers, outs[:len(layers)], outs[len(layers):], strict=True):
            a = self._value(a_node)
            g = self.prog.xp.zeros(tuple(n if d is None else d for d in layer.output.shape), self.prog.dtype) \
                if g_node is None else self._value(g_node).copy()  # vector-stage buffers are reused by the next call
            if a.shape[0] != n:
                a, g = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
            result[layer.weight] = (a, g)
        return result

    def _call(self, entry, seed):
        self._live()
        prog = self.prog
        if SEEDED[entry] == "v":
            prog._check_flat(seed, "v")
            for t, p in prog._tangent_of.items():
                if t in prog._slot:
                    off, shape = prog.layout[p.name]
                    self._vals[prog._slot[t]] = seed[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
        else:
            z = self._z()
            if not prog.backend.is_array(seed) or seed.shape != z.shape or seed.dtype != prog.dtype:
                raise BindError(f"u: expected a {prog.dtype} array shaped like the output {z.shape}, got "
                                f"{getattr(seed, 'dtype', type(seed).__name__)} {getattr(seed, 'shape', '')}")
            for u in prog._leaves[COTANGENT]:
                self._vals[prog._slot[u]] = seed
        batch, vector = prog.instructions(entry, self.batch_size)
        _run(batch, self._live(), self.batch_size, skip_done=True, spare=self._spare)
        _run(vector, self._vals, self.batch_size)
        prog._learn_orders(entry, self.batch_size, self._vals)

    def _flat(self, entry, base=None, out=None):
        """The entry's parameter-shaped outputs as one flat vector, plus ``l2 * base`` when base is given:
        one kernel a parameter (Program._plus_l2: on a GPU one launch, where a multiply and an add were two)."""
        prog = self.prog
        if out is None:
            out = prog.xp.empty(prog.size, dtype=prog.dtype)
        else:
            prog._check_flat(out, "out")
        l2 = prog.l2 if base is not None else 0.0
        for p, node in zip(prog.params, prog.module.entries[entry], strict=True):
            off, shape = prog.layout[p.name]
            size = int(np.prod(shape, dtype=np.int64))
            part, value = out[off:off + size], self._value(node)
            if l2 and value is not None and value.flags.c_contiguous:
                prog._plus_l2(prog.xp, value.reshape(size), base[off:off + size], shape=(size,), out=(part,))
            elif l2:   # no parameter result, or one read in another order (a transposed view): two passes
                prog.xp.multiply(base[off:off + size], l2, out=part)
                if value is not None:
                    shaped = part.reshape(shape)
                    shaped += value
            elif value is None:
                part[...] = 0
            else:
                part.reshape(shape)[...] = value
        return out
