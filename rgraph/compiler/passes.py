"""Graph-to-graph stages: simplify, cse, dce, stage, hoist.

Each takes and returns a ``Module``; a stage that rewrites nodes rebuilds the entries bottom-up, so the
module after any stage is an ordinary graph that can be drawn or compiled further.
"""
from __future__ import annotations

from .. import expr as ex
from ..graph import CONST, COTANGENT, FLOAT, TANGENT, Value, constant
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


def _new(op, inputs, tag, attrs=None):
    """A node of ``op`` on ``inputs`` carrying ``tag`` (the pass of the node it replaces)."""
    node = op(*inputs, **(attrs or {}))
    node.tag = tag
    return node


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


def _scalar_const(v):
    """The float value of a 0-d float constant leaf, else None."""
    if v.op is CONST and v.dtype == FLOAT and v.shape == ():
        return float(v.attrs["value"])
    return None


def simplify_elementwise(node, inputs):
    """Inline 0-d float constants into the node's expression (x*1 -> x, x+0 -> x, 2*3 -> 6 fold as the
    expression is rebuilt); a node left with a bare input becomes that input, with no inputs a constant."""
    from ..op import expr_op
    op = node.op
    consts = {p: ex.const(c) for p, i in zip(op.params, inputs, strict=True)
              if (c := _scalar_const(i)) is not None}
    if not consts:
        return None
    e = ex.substitute(op.expr, consts)
    keep = [(p, i) for p, i in zip(op.params, inputs, strict=True) if p not in consts and p in ex.variables(e)]
    if e.op == "const":
        if node.shape != () or op.out_dtype != FLOAT:
            return None
        c = constant(e.value)
        c.tag = node.tag
        return c
    if e.op == "var":
        (p, i), = [(p, i) for p, i in keep if p == e.value]
        return i if (i.shape == node.shape and i.dtype == node.dtype) else None
    from ..op import broadcast_shapes
    if not keep or broadcast_shapes(*[i.shape for _, i in keep]) != node.shape:
        return None  # the constant decided the shape: keep the node as it is
    new_op = expr_op(op.name, e, [p for p, _ in keep], dtype=op.out_dtype)
    return _new(new_op, [i for _, i in keep], node.tag)


def simplify(module: Module) -> Module:
    """Identities and constant folding: drop identity reshapes, broadcasts, sums over unit axes and
    double transposes; inline scalar constants into elementwise expressions (folding them)."""
    def visit(node, inputs):
        if node.is_leaf:
            return node
        replacement = None
        if node.op.kind == "elementwise":
            replacement = simplify_elementwise(node, inputs)
        else:
            rule = IDENTITIES.get(node.op.name)
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


def dce(module: Module) -> Module:
    """Dead-code elimination: keep exactly the ancestors of the entries' outputs.

    Nodes are never stored in a side table, so this stage records the live set (``module.live``) that
    later stages and the program use; anything not reachable from an entry output is gone.
    """
    module.live = set(module.nodes())
    return module


def stage(module: Module) -> Module:
    """Split nodes into the batch stage (parameters and batch only: computed once per bind) and the
    vector stage (reads a seed v or u: computed on every product call)."""
    vector = set()
    for node in module.nodes():
        if node.op in (TANGENT, COTANGENT) or any(i in vector for i in node.inputs):
            vector.add(node)
    module.vector = vector
    return module


# --- hoist: v-independent scalar work out of the vector stage ---------------------------------------

TRANSCENDENTAL = ("exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "pow", "div")


def _worth_caching(e):
    """A batch-only subexpression is cached when it holds a transcendental or two or more operations
    (a bare ``-x`` or ``2*x`` is cheaper to recompute than to read)."""
    ops = ex.operations(e)
    return e.op not in ex.COMPARISONS and (len(ops) >= 2 or any(o.op in TRANSCENDENTAL for o in ops))


def _replace_subexprs(e, repl):
    memo = {}

    def go(n):
        if n in repl:
            return repl[n]
        if n in memo:
            return memo[n]
        out = n if n.op in ("var", "const") else ex.rebuild(n.op, [go(a) for a in n.args])
        memo[n] = out
        return out
    return go(e)


class _ExprNodes:
    """Makes (and shares) elementwise nodes for subexpressions over given input Values: variables are
    renamed canonically (a0, a1, ... by input order), so equal subexpressions of different nodes over
    the same inputs become one node."""

    def __init__(self):
        self.table = {}

    def make(self, name, e, env, tag):
        from ..op import expr_op
        used = sorted(ex.variables(e), key=lambda p: (env[p].id, p))
        inputs, canon = [], {}
        for p in used:
            if env[p] not in inputs:
                inputs.append(env[p])
            canon[p] = ex.var(f"a{inputs.index(env[p])}")
        ce = ex.substitute(e, canon)
        key = (ce, tuple(id(i) for i in inputs))
        if key not in self.table:
            self.table[key] = _new(expr_op(name, ce, [f"a{k}" for k in range(len(inputs))]), inputs, tag)
        return self.table[key]


def hoist(module: Module) -> Module:
    """Move v-independent subexpressions of vector-stage elementwise nodes into the batch stage.

    ``swish.vjp: g * (sigmoid(s) + s sigmoid(s)(1 - sigmoid(s)))`` reads the seed through g only, so the
    bracket (the derivative of swish at s) becomes one batch-stage node, computed in ``bind`` and cached,
    and the per-call kernel is ``g * c``. The J v, J^T u, Gv and Hv passes all share that one node.
    Products with such factors, and the gradient's own (f'(s) scatter(g)), then move through a
    selection to its smaller side, and the factor's gather down to what it reads (``through_selections``:
    gather(f'(s)) = f'(gather(s))). Last, transcendental subexpressions over the same inputs used by several
    batch-stage nodes (the sigmoid(s) of swish and of each of its derivatives) become one node of their
    own, so the program evaluates each once.
    """
    from ..op import expr_op
    from .selections import through_selections
    vector, made = module.vector, _ExprNodes()

    def visit(node, inputs):
        if node.is_leaf or node.op.kind != "elementwise" or node not in vector or node.op.out_dtype != FLOAT:
            return _clone(node, inputs)
        op = node.op
        env = dict(zip(op.params, inputs, strict=True))
        repl = _cacheable(op.expr, {p for p, i in zip(op.params, node.inputs, strict=True) if i not in vector})
        if not repl:
            return _clone(node, inputs)
        for k, sub in enumerate(sorted(repl, key=lambda s: ex.render(s, "numpy"))):
            name = f"h{k}"
            while name in env:
                name += "_"
            env[name] = made.make(f"{op.name}.coef", sub, env, "forward")
            repl[sub] = ex.var(name)
        e = _replace_subexprs(op.expr, repl)
        if e.op == "var":
            return env[e.value]
        used = sorted(ex.variables(e))
        return _new(expr_op(op.name, e, used), [env[p] for p in used], node.tag)
    _rewrite(module, visit)
    stage(module)
    for _ in range(2):  # the second pass sees the readers the first one removed (Hv's R{s} at full size)
        through_selections(module)
        stage(module)
    _share_transcendentals(module, made)
    return stage(module)


def _cacheable(expr, batch_vars):
    """{subexpression: itself} for the outermost subexpressions of ``expr`` that read only ``batch_vars``
    (variables bound to batch-stage values) and are worth caching (_worth_caching)."""
    memo, repl, seen = {}, {}, set()

    def batch_only(n):
        if n not in memo:
            memo[n] = (n.value in batch_vars) if n.op == "var" else all(batch_only(a) for a in n.args)
        return memo[n]

    def find(n):
        if n in seen or n.op in ("var", "const"):
            return
        seen.add(n)
        if batch_only(n) and ex.variables(n):
            if _worth_caching(n):
                repl[n] = n
            return
        for a in n.args:
            find(a)
    find(expr)
    return repl


def _share_transcendentals(module, made):
    """A transcendental of the same batch-stage inputs read by two or more nodes becomes one node."""
    from ..op import expr_op
    nodes = [n for n in module.nodes() if not n.is_leaf and n.op.kind == "elementwise"
             and n.op.out_dtype == FLOAT and n not in module.vector]
    counts = {}
    for n in nodes:
        env = dict(zip(n.op.params, n.inputs, strict=True))
        for sub in ex.operations(n.op.expr):
            if sub.op in TRANSCENDENTAL and sub is not n.op.expr:
                key = _key(sub, env)
                counts.setdefault(key, set()).add(n)
    shared = {k for k, users in counts.items() if len(users) >= 2}
    if not shared:
        return

    def visit(node, inputs):
        if node.is_leaf or node.op.kind != "elementwise" or node not in nodes:
            return _clone(node, inputs)
        op = node.op
        env = dict(zip(op.params, inputs, strict=True))
        old_env = dict(zip(op.params, node.inputs, strict=True))
        repl = {}
        for sub in ex.operations(op.expr):
            if sub.op in TRANSCENDENTAL and sub is not op.expr and _key(sub, old_env) in shared:
                name = f"s{len(repl)}"
                while name in env:
                    name += "_"
                env[name] = made.make(sub.op, sub, env, "forward")
                repl[sub] = ex.var(name)
        if not repl:
            return _clone(node, inputs)
        # outermost shared subexpressions win: drop replacements nested inside another one
        e = _replace_subexprs(op.expr, repl)
        used = sorted(ex.variables(e))
        return _new(expr_op(op.name, e, used), [env[p] for p in used], node.tag)
    _rewrite(module, visit)


def _key(sub, env):
    """A subexpression over input Values, independent of the parameter names of the node it sits in."""
    used = sorted(ex.variables(sub), key=lambda p: (env[p].id, p))
    order = []
    for p in used:
        if env[p] not in order:
            order.append(env[p])
    ce = ex.substitute(sub, {p: ex.var(f"a{order.index(env[p])}") for p in used})
    return ce, tuple(id(v) for v in order)
