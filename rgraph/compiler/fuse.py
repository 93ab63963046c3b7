"""The fuse stage: maximal connected groups of elementwise nodes become one kernel node.

A group holds float elementwise nodes of one stage (batch or vector), one output shape (inputs may
broadcast) and one set of entries that need them (so no entry computes values it never reads), with
no path leaving the group and coming back (the group stays convex). Its nodes' scalar expressions are
composed into one expression DAG over the group's external inputs; the members read outside the group
(or returned by an entry) are the kernel's outputs. The result is a ``Fused`` node (one output) or a
``Fused`` node followed by ``pick`` nodes (several outputs).

Contract for drawing and tooling: a fused node has ``op.kind == "fused"``, ``op.name`` ("fused_3"),
``op.exprs`` (output Exprs over ``op.params``), ``op.params`` (input variable names) and
``op.source(target)`` with target "numpy", "numexpr" or "cuda".
"""
from __future__ import annotations

import sys

import numpy as np

from .. import expr as ex
from ..graph import FLOAT, Type, Value, consumers
from ..op import Op, broadcasts_to
from .module import Module

TARGETS = ("numexpr", "cuda")  # a kernel must print for every fusing backend, or it is not fused


# --- expression lowering for printers ----------------------------------------------------------------

def expand(e: ex.Expr, target: str) -> ex.Expr:
    """Rewrite primitives a target lacks into ones it has (numexpr: sigmoid via exp, sign via where).

    numexpr's tanh is scalar libm and 4x slower than its exp, so sigmoid(a) prints as 1 / (1 + exp(-a))
    (exp(-a) = inf for a << 0 gives the exact limit 0; agrees with the reference's tanh form to rounding).
    Built with the raw constructor so nothing is folded."""
    if target != "numexpr":
        return e
    memo = {}
    half, one, zero = ex.const(0.5), ex.const(1.0), ex.const(0.0)

    def go(n):
        if n in memo:
            return memo[n]
        args = [go(a) for a in n.args]
        if n.op == "sigmoid":
            (a,) = args
            out = ex.Expr("div", (one, ex.Expr("add", (one, ex.Expr("exp", (ex.Expr("neg", (a,)),))))))
        elif n.op == "sign":
            (a,) = args
            out = ex.Expr("where", (ex.Expr("gt", (a, zero)), one,
                                    ex.Expr("where", (ex.Expr("lt", (a, zero)), ex.Expr("neg", (one,)), zero))))
        elif args:
            out = ex.Expr(n.op, tuple(args), n.value)
        else:
            out = n
        memo[n] = out
        return out
    return go(e)


def printable(e: ex.Expr, target: str) -> bool:
    table = ex.PRINTERS[target]
    return all(n.op in table for n in _all_ops(expand(e, target)))


def _all_ops(e):
    seen, stack, out = set(), [e], []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op not in ("var", "const"):
            out.append(n)
        stack.extend(n.args)
    return out


def statements(exprs, target, temps="shared", names=None):
    """The kernel body as ``[(name, text)]`` in evaluation order: temporaries ``t0, t1, ...`` and outputs
    ``out0, ...``; an output another output reads is computed first and read by name, never twice.

    ``temps``: "shared" makes every subexpression used more than once a temporary (free in registers:
    CUDA); "transcendental" only those holding a transcendental (numexpr materialises temporaries as
    arrays, so cheap shared terms are recomputed instead); "calls" those and every transcendental call
    (the NumPy backend evaluates each call with a NumPy ufunc). ``names`` may pre-name nodes (constants)."""
    exprs = [expand(e, target) for e in exprs]
    names = dict(names or {})
    temp_nodes = set(_temp_nodes(exprs, temps))
    out_index = {}
    for k, e in enumerate(exprs):
        out_index.setdefault(e, k)
    body, done = [], set()
    for n in ex.operations(exprs):
        if n in out_index:
            k = out_index[n]
            body.append((f"out{k}", ex.render(n, target, names)))
            names[n] = f"out{k}"
            done.add(k)
        elif n in temp_nodes:
            tname = f"t{sum(1 for b, _ in body if b.startswith('t'))}"
            body.append((tname, ex.render(n, target, names)))
            names[n] = tname
    for k, e in enumerate(exprs):  # bare variables, constants, and repeated outputs
        if k not in done:
            body.append((f"out{k}", ex.render(e, target, names)))
    return body


# --- the fused op --------------------------------------------------------------------------------------

class Fused(Op):
    """One generated kernel computing ``exprs`` (over ``params``) elementwise with broadcasting."""
    kind = "fused"

    def __init__(self, name, exprs, params, out_shape, in_types, members):
        self.name, self.exprs, self.params = name, list(exprs), tuple(params)
        self.out_shape, self.in_types, self.members = tuple(out_shape), tuple(in_types), tuple(members)

    def infer(self, *types):
        return Type(self.out_shape, FLOAT)

    def forward(self, xp, *arrays, shape=None, out=None):
        """The reference interpreter (expr.evaluate) over the inputs; a tuple for several outputs."""
        env = dict(zip(self.params, arrays, strict=True))
        shape = _bshape([np.shape(a) for a in arrays]) if shape is None else tuple(shape)
        dtype = _float_dtype(xp, arrays)
        results = []
        for k, r in enumerate(ex.evaluate(self.exprs, env, xp)):
            target = None if out is None else out[k]
            results.append(_store(xp, r, shape, dtype, target))
        return results[0] if len(results) == 1 else tuple(results)

    def vjp(self, node, g):
        raise NotImplementedError("fused kernels are made after differentiation")

    def flops(self, shapes, attrs):
        (_, out) = shapes
        return int(np.prod(out, dtype=np.int64)) * max(1, len(ex.operations(self.exprs)))

    def attrs_key(self, attrs):
        return ()

    def source(self, target: str = "numexpr", dtype: str = "float32") -> str:
        """The printed kernel: numexpr statements, NumPy statements, or a CUDA C ``extern "C"`` kernel."""
        if target == "cuda":
            return cuda_source(self, dtype)
        if target == "numexpr":
            prog, consts = numexpr_program(self)
            head = [f"# {self.name}({', '.join(self.params)})"] + \
                   [f"{c} = {v!r}  # passed as a {dtype} scalar" for c, v in consts.items()]
            return "\n".join(head + [f"{n} = {s}" for n, s in prog])
        if target == "numpy":
            return "\n".join([f"# {self.name}({', '.join(self.params)})"] +
                             [f"{n} = {s}" for n, s in statements(self.exprs, "numpy")])
        raise ValueError(f"unknown target {target!r}; use 'numpy', 'numexpr' or 'cuda'")


def numexpr_program(op):
    """``([(name, numexpr string)], {const name: value})``: constants become typed variables c0, c1, ...
    because numexpr evaluates float literals in float64 and would upcast a float32 kernel."""
    exprs = [expand(e, "numexpr") for e in op.exprs]
    names = {}
    for n in ex.operations(exprs):
        for a in n.args:
            if a.op == "const" and a not in names:
                names[a] = f"c{len(names)}"
    for e in exprs:
        if e.op == "const" and e not in names:
            names[e] = f"c{len(names)}"
    consts = {name: c.value for c, name in names.items()}
    return statements(exprs, "numexpr", "calls", names), consts


def _temp_nodes(exprs, temps):
    uses = {}
    for n in ex.operations(exprs):
        for a in n.args:
            uses[a] = uses.get(a, 0) + 1
    for e in exprs:
        uses[e] = uses.get(e, 0) + 1
    out = []
    for n in ex.operations(exprs):
        if temps == "calls" and n.op in CALLS and n not in exprs:
            out.append(n)
        elif uses.get(n, 0) >= 2 and n not in exprs and n.op not in ex.COMPARISONS:
            if temps == "shared" or any(o.op in CALLS + ("pow", "div") for o in _all_ops(n)):
                out.append(n)
    return out


CALLS = ("exp", "log", "log1p", "tanh", "sqrt")  # transcendental calls


C_TYPES = {"float32": "float", "float64": "double", "bool": "bool"}


def cuda_source(op, dtype="float32", order=None) -> str:
    """A raw ``extern "C"`` CUDA kernel (no CuPy headers): one thread per output element, broadcasting
    inputs by index arithmetic on the static shapes (only axis 0, the batch, is left to ``n``).

    With ``order`` (a permutation of the axes keeping the batch first, e.g. NHWC's (0, 2, 3, 1)) the
    threads walk the output in that memory order: every array is passed as its view with the axes so
    permuted, which is C-contiguous for an array laid out in that order, so activations stored NHWC are
    read and written where they lie (named ``{op.name}_o{order}``, so both variants can share a module)."""
    nd = len(op.out_shape)
    axes = tuple(range(nd)) if order is None else tuple(order)
    out_shape = tuple(op.out_shape[a] for a in axes)
    inner = [int(np.prod([d for d in out_shape[a + 1:]], dtype=np.int64)) for a in range(nd)]
    args, loads = [], []
    for p, t in zip(op.params, op.in_types, strict=True):
        ctype = "bool" if t.dtype == "bool" else "T"
        args.append(f"const {ctype}* __restrict__ {p}_")
        full = (1,) * (nd - len(t.shape)) + tuple(t.shape)
        shape = tuple(full[a] for a in axes)
        if shape == out_shape:   # read where the thread writes: no index arithmetic (64-bit divisions)
            loads.append(f"    const {ctype} {p} = {p}_[i];")
            continue
        terms, stride = [], 1
        for a in reversed(range(nd)):
            if shape[a] != 1 and out_shape[a] != 1:
                coord = f"(i / {inner[a]}LL)" if a == 0 else f"((i / {inner[a]}LL) % {out_shape[a]}LL)"
                terms.append(f"{coord} * {stride}LL" if stride != 1 else coord)
            stride *= 1 if shape[a] is None else shape[a]
        index = " + ".join(reversed(terms)) or "0"
        loads.append(f"    const {ctype} {p} = {p}_[{index}];")
    outs = [f"T* __restrict__ out{k}_" for k in range(len(op.exprs))]
    body = statements(op.exprs, "cuda", temps="shared")
    lines = [f"typedef {C_TYPES[str(np.dtype(dtype))]} T;",
             f'extern "C" __global__ void {cuda_name(op, order)}({", ".join(args + outs + ["const long long n"])})',
             "{",
             "    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
             "    if (i >= n) return;",
             *loads]
    for name, text in body:
        lines.append(f"    const T {name} = {text};")
        if name.startswith("out"):
            lines.append(f"    {name}_[i] = {name};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cuda_name(op, order=None) -> str:
    """The kernel's function name in cuda_source for memory ``order`` (None: C order)."""
    return op.name if order is None else f"{op.name}_o{''.join(map(str, order))}"


class Pick(Op):
    """Output ``index`` of a multi-output fused kernel (no work: the runtime stores each output)."""
    name, kind = "pick", "pick"

    def infer(self, t, index, shape):
        return Type(shape, FLOAT)

    def forward(self, xp, t, index, shape):
        return t[index]

    def attrs_key(self, attrs):
        return (attrs["index"],)


PICK = Pick()


def _bshape(shapes):
    return tuple(np.broadcast_shapes(*shapes)) if shapes else ()


def _float_dtype(xp, arrays):
    floats = [a.dtype for a in arrays if hasattr(a, "dtype") and a.dtype.kind == "f"]
    return xp.result_type(*floats) if floats else np.dtype(np.float64)


def _store(xp, r, shape, dtype, target):
    if target is not None:
        target[...] = r
        return target
    r = xp.asarray(r, dtype=dtype)
    if r.shape != shape:
        r = xp.broadcast_to(r, shape).copy()
    return r


# --- the stage -----------------------------------------------------------------------------------------

def entry_sets(module: Module) -> dict:
    from . import ENTRIES
    need = {}
    for entry in ENTRIES:
        for n in module.nodes([entry]):
            need.setdefault(n, set()).add(entry)
    return {n: frozenset(s) for n, s in need.items()}


def _fusable(node) -> bool:
    op = node.op
    return (not node.is_leaf and op.kind == "elementwise" and op.out_dtype == FLOAT
            and all(printable(op.expr, t) for t in TARGETS))


def groups(module: Module) -> list[list[Value]]:
    """Partition the fusable nodes into convex connected groups (deterministic: creation order)."""
    nodes = module.nodes()
    rules = _Grouping(module, nodes)
    entry_outputs = set(module.outputs())
    group_of, shape_of = {}, {}
    for n in nodes:
        if not _fusable(n):
            continue
        group = {n}
        group_of[n] = group
        shape_of[id(group)] = n.shape
        for i in n.inputs:
            g = group_of.get(i)
            if g is None or g is group:
                continue
            if shape_of[id(g)] == shape_of[id(group)] and all(rules.compatible(m, n) for m in g):
                merged = group | g
            elif (len(g) == 1 and rules.same_stage(i, n) and i not in entry_outputs
                  and broadcasts_to(i.shape, n.shape) and all(c is n or c in group for c in rules.consumers[i])):
                merged = group | g  # a small producer read only here: recomputed per element, inlined
            else:
                continue
            if rules.convex(merged):
                for m in merged:
                    group_of[m] = merged
                shape_of[id(merged)] = shape_of[id(group)]
                group = merged
    seen, out = set(), []
    for n in nodes:
        g = group_of.get(n)
        if g is not None and id(g) not in seen:
            seen.add(id(g))
            out.append(sorted(g, key=lambda v: v.id))
    return out


class _Grouping:
    """Which elementwise nodes may share a kernel."""

    def __init__(self, module, nodes):
        self.vector, self.need, self.consumers = module.vector, entry_sets(module), consumers(nodes)

    def compatible(self, a, b):
        """Same stage and shape; in the batch stage the same entries (so ``bind`` computes nothing only
        ``grad`` or ``hv`` needs); in the vector stage one entry set may contain the other (a J v kernel
        may carry the Gauss-Newton term gv adds to it: cheap per call, and it keeps one kernel between
        two GEMMs) as long as the carried node reads nothing else the wider set's entries do not
        already compute (Hv's pooled second-order term reads the gradient's cotangents: carried in the
        R-forward kernel, it would put the backward pass into gv's batch stage)."""
        return a.shape == b.shape and self.same_stage(a, b)

    def same_stage(self, a, b):
        need = self.need
        if (a in self.vector) != (b in self.vector):
            return False
        if a in self.vector:
            small, big = (a, b) if need[a] <= need[b] else (b, a)
            return need[small] <= need[big] and all(need[i] >= need[big] for i in small.inputs if not _fusable(i))
        return need[a] == need[b]

    def convex(self, members):
        """No path from a member through a non-member back to a member (bounded by creation order)."""
        top = max(m.id for m in members)
        stack = [c for m in members for c in self.consumers[m] if c not in members]
        seen = set()
        while stack:
            x = stack.pop()
            if x in seen or x.id > top:
                continue
            seen.add(x)
            if x in members:
                return False
            for c in self.consumers[x]:
                if c in members:
                    return False
                stack.append(c)
        return True


def fuse(module: Module) -> Module:
    """Replace each group of elementwise nodes by one ``Fused`` kernel node (and ``pick`` nodes)."""
    from .passes import stage
    nodes = module.nodes()
    kernels = _KernelBuilder(module, groups(module), nodes)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20 * len(nodes) + 1000))  # build recurses along the graph
    try:
        for n in nodes:
            kernels.build(n)
    finally:
        sys.setrecursionlimit(old_limit)
    module.replace(kernels.mapping)
    module.kernels = kernels.count
    return stage(module)


class _KernelBuilder:
    """Rebuilds a module's graph with each group of elementwise nodes as one kernel: ``mapping`` takes
    an old node to its replacement (the kernel, a ``pick`` of it, or the node over rebuilt inputs)."""

    def __init__(self, module, parts, nodes):
        self.parts = parts
        self.group_of = {m: k for k, g in enumerate(parts) for m in g}
        self.consumers = consumers(nodes)
        self.entry_outputs = set(module.outputs())
        self.mapping, self.built, self.count = {}, set(), 0

    def build(self, node):
        if node in self.mapping:
            return self.mapping[node]
        if node in self.group_of:
            if self.group_of[node] not in self.built:
                self.built.add(self.group_of[node])
                self.kernel(self.parts[self.group_of[node]])
            return self.mapping.get(node)  # None only for a member read inside its group alone
        inputs = tuple(self.build(i) for i in node.inputs)
        if inputs == node.inputs:
            self.mapping[node] = node
        else:
            clone = Value(node.op, inputs, node.attrs, node.type, name=node.name)
            clone.tag = node.tag
            self.mapping[node] = clone
        return self.mapping[node]

    def kernel(self, members):
        """One Fused node for a group: its outputs are the members read outside it (or entry outputs)."""
        mset = set(members)
        ext, composed = _compose(members, mset)
        outs = [m for m in members if m in self.entry_outputs or any(c not in mset for c in self.consumers[m])]
        inputs = [self.build(i) for i in ext]
        name = f"fused_{self.count}"
        self.count += 1
        shape = outs[0].shape
        assert all(m.shape == shape for m in outs), "a kernel's outputs share one shape"
        op = Fused(name, [composed[m] for m in outs], [f"in{k}" for k in range(len(ext))], shape,
                   [i.type for i in ext], [m.op.name for m in members])
        k = Value(op, inputs, {"shape": shape}, Type(shape, FLOAT))
        k.tag = outs[0].tag
        if len(outs) == 1:
            self.mapping[outs[0]] = k
            return
        for idx, m in enumerate(outs):
            p = Value(PICK, (k,), {"index": idx, "shape": m.shape}, m.type)
            p.tag = m.tag
            self.mapping[m] = p


def _compose(members, mset):
    """(the group's external inputs in first-read order, member -> its expression over them as in0,
    in1, ...). A broadcast feeding the group is left to the kernel's own indexing: its source is read."""
    def source(i):
        while i.op.name == "broadcast_to" and i not in mset:
            i = i.inputs[0]
        return i
    ext, composed = [], {}
    for m in members:
        for i in m.inputs:
            i = source(i) if i not in mset else i
            if i not in mset and i not in ext:
                ext.append(i)
    pname = {i: f"in{k}" for k, i in enumerate(ext)}
    for m in members:
        env = {p: composed[i] if i in mset else ex.var(pname[source(i)])
               for p, i in zip(m.op.params, m.inputs, strict=True)}
        composed[m] = ex.substitute(m.op.expr, env)
    return ext, composed
