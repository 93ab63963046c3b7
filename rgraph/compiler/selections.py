"""Moving work through selections (part of hoist): max pooling's R-op gathers and its VJP scatters.

A selection op (``Op.selection``; see rgraph/op.py) commutes with elementwise products, and a total one
(``Op.selection_axes``: every output entry is one input entry, moved along those axes only) with every
elementwise function, a value constant along its axes (a convolution's bias) passing through unchanged,
and a sum over its axes sees through its scatter:

    gather(x * c)  = gather(x) * gather(c)       scatter(a) * c = scatter(a * gather(c))
    gather(f(x, b)) = f(gather(x), b)            sum(scatter(a), axes) = sum(a, axes)

With linearity, scatter(a) + scatter(b) = scatter(a + b), a sum of terms each zero off one selection
becomes

    scatter(a) * r + (scatter(b) * c) * t = scatter(a * gather(r) + b * gather(c) * gather(t))

which is Hv's R-backward through an activation before max pooling: f'(s) scatter(R{g}) + f''(s)
scatter(g) R{s}. Each rewrite moves elementwise work from the full to the pooled resolution, a quarter
of the entries for 2x2 pooling, per call (the R-forward's f'(s) R{s}) and per batch (the gradient's
f'(s) scatter(g)). A gather is pushed down to the values an elementwise expression reads at full
resolution: gather(f'(s)) = f'(gather(s)) and gather(s) = gather(conv) + b, so that no pass reads s or
sigmoid(s) at full resolution and the forward kernel writes only the activation the pooling reads.
"""
from __future__ import annotations

import collections
import functools

import numpy as np

from .. import expr as ex
from ..graph import FLOAT
from ..op import broadcasts_to
from .module import Module
from .passes import _clone, _ExprNodes, _new, cse

# Reductions that see through a total scatter: op name -> whether reducing node n sums over every axis in
# ``axes`` (then n of scatter(a) is n of a).
SEE_THROUGH_SCATTER = {
    "sum": lambda n, axes: n.attrs.get("axis") is None or set(axes) <= _normalised(n.attrs["axis"], n.inputs[0].ndim),
}


def _normalised(axis, ndim):
    return {int(a) % ndim for a in ((axis,) if isinstance(axis, int) else tuple(axis))}


def _size(shape):
    return int(np.prod([1 if d is None else d for d in shape]))


def _binary(node, name):
    """The two input Values of an elementwise node computing exactly ``in0 <name> in1``, else None."""
    if node.is_leaf or node.op.kind != "elementwise":
        return None
    e = node.op.expr
    if e.op != name or any(a.op != "var" for a in e.args):
        return None
    env = dict(zip(node.op.params, node.inputs, strict=True))
    a, b = (env[arg.value] for arg in e.args)
    return None if a.dtype != FLOAT or b.dtype != FLOAT else (a, b)


def _product(node, vector):
    """(x, c) when ``node`` is a product x * c of two values of its shape, x per call (in the vector
    stage) and c not; else None."""
    pair = _binary(node, "mul")
    if pair is None or node not in vector or any(v.shape != node.shape for v in pair):
        return None
    a, b = pair
    if (a in vector) == (b in vector):
        return None
    return (a, b) if a in vector else (b, a)


def _constant_along(v, shape, axes):
    """Whether v broadcasts to ``shape`` and is constant along every axis in ``axes`` (a per-channel
    bias, for the spatial axes of pooling)."""
    lead = len(shape) - v.ndim
    return broadcasts_to(v.shape, shape) and all(a < lead or v.shape[a - lead] == 1 for a in axes)


def _full_inputs(node, axes):
    """The inputs of its shape (one at least) of a float elementwise node whose other inputs are
    constant along ``axes``, which a gather moving entries along them may move through; else None."""
    if node.is_leaf or node.op.kind != "elementwise" or node.dtype != FLOAT:
        return None
    full = [i for i in node.inputs if i.shape == node.shape]
    ok = full and all(i.dtype == FLOAT for i in full) and \
        all(i.shape == node.shape or _constant_along(i, node.shape, axes) for i in node.inputs)
    return full if ok else None


def _split(e, op):
    """The operands of a chain of ``op`` (a sum's terms, a product's factors)."""
    return _split(e.args[0], op) + _split(e.args[1], op) if e.op == op else [e]


def _scatter_factor(term, env, sole, vector):
    """(scatter node, [(other factors, their env)]) when the product ``term`` has a factor that is a
    scatter's output read only here, or a v-independent product with a scatter factor (f''(s) times the
    pooled cotangent scattered back: zero off the selection too); else None."""
    factors = _split(term, "mul")
    for j, f in enumerate(factors):
        if f.op != "var":
            continue
        v, others = env[f.value], factors[:j] + factors[j + 1:]
        if getattr(v.op, "selection", None) == "scatter" and sole(v):
            return v, [(others, env)]
        if not v.is_leaf and v.op.kind == "elementwise" and v not in vector:
            inner = dict(zip(v.op.params, v.inputs, strict=True))
            parts = _split(v.op.expr, "mul")
            for i, g in enumerate(parts):
                if g.op == "var" and getattr(inner[g.value].op, "selection", None) == "scatter":
                    return inner[g.value], [(others, env), (parts[:i] + parts[i + 1:], inner)]
    return None


def _selection_key(node):
    """Equal for selection nodes that select the same entries (same op, indices and attributes)."""
    return id(node.op), tuple(map(id, node.inputs[1:])), node.op.attrs_key(node.attrs)


def _scattered_terms(node, sole, vector):
    """For an elementwise node sum_k scatter(a_k) * r_k, all through one selection that shrinks: the
    terms as (scatter node, factor groups); else None."""
    env = dict(zip(node.op.params, node.inputs, strict=True))
    terms, key = [], None
    for term in _split(node.op.expr, "add"):
        found = _scatter_factor(term, env, sole, vector)
        if found is None:
            return None
        scattered = found[0]
        k = _selection_key(scattered)
        if key not in (None, k) or scattered.shape != node.shape or \
                _size(scattered.inputs[0].shape) >= _size(scattered.shape):
            return None
        terms.append(found)
        key = k
    return terms


def through_selections(module: Module) -> Module:
    """Apply the identities above wherever they shrink the work: the product or sum rewritten must have
    no other reader (which would still need it at full resolution). Per-call values are each entry's
    own and entries differ there (Hv reads R{s} again for its second-order term, Gv does not), so each
    entry is rewritten on its own and common subexpressions are shared again afterwards; batch-stage
    values are cached and shared by every entry, so their readers are counted over all entries (each
    entry then rewrites them alike)."""
    shared = collections.Counter(i for node in module.nodes() for i in node.inputs)
    shared.update(module.outputs())
    for name, outs in module.entries.items():
        mapping = _rewrite_entry(module, name, shared)
        module.entries[name] = [None if v is None else mapping.get(v, v) for v in outs]
    return cse(module)


def _rewrite_entry(module, name, shared):
    """old node -> its rewrite, over the nodes entry ``name`` needs."""
    rewriter = _EntryRewriter(module, name, shared)
    for node in rewriter.nodes:
        if not node.is_leaf:
            rewriter.mapping[node] = rewriter.rewrite(node)
    return rewriter.mapping


class _EntryRewriter:
    """The rewrites of one entry's nodes, in creation order; ``mapping`` holds those made so far."""

    def __init__(self, module, name, shared):
        self.vector, self.nodes = module.vector, module.nodes([name])
        self.readers = collections.Counter(i for node in self.nodes for i in node.inputs)
        self.readers.update(module.outputs([name]))
        self.shared = shared
        self.known = set(self.nodes)
        self.mapping, self.made, self.sources, self.stage_of, self.gathered = {}, _ExprNodes(), {}, {}, {}

    def sole(self, v):
        return (self.readers if v in self.vector else self.shared)[v] == 1

    def mapped(self, v):
        return self.mapping.get(v, v)

    def rewrite(self, node):
        """The node's replacement (its inputs already rewritten): a shrinking gather pushed inward, a sum
        of scatters made one scatter, a reduction seen through a scatter, or a plain clone."""
        inputs = tuple(self.mapped(i) for i in node.inputs)
        new = None
        if node.op.selection == "gather" and _size(node.shape) < _size(node.inputs[0].shape):
            new = self.gather(_clone(node, inputs), node.inputs[0])
        elif node.op.kind == "elementwise" and (terms := _scattered_terms(node, self.sole, self.vector)):
            new = self.scatter_of_sum(node, terms)
        elif node.op.name in SEE_THROUGH_SCATTER and getattr(inputs[0].op, "selection", None) == "scatter":
            axes = inputs[0].op.selection_axes(inputs[0])
            if axes is not None and SEE_THROUGH_SCATTER[node.op.name](node, axes):
                new = _new(node.op, (inputs[0].inputs[0],) + inputs[1:], node.tag, node.attrs)
        return new if new is not None else _clone(node, inputs)

    def gather(self, sel, x):
        """sel (a gather, inputs mapped) applied to the original value x, pushed through x where that
        reads no more at full resolution than gathering x would: through any elementwise x for a total
        selection, when nothing else reads x or x reads one full-resolution value (gather(f'(s)) =
        f'(gather(s)), gather(s + b) = gather(s) + b); else through a product of x's with a
        v-independent factor nothing else reads. Each value is gathered once per selection (a value
        several nodes of the expression read is reached along each path)."""
        key = (_selection_key(sel), x)
        if key not in self.gathered:
            self.gathered[key] = self._gathered(sel, x)
        return self.gathered[key]

    def _gathered(self, sel, x):
        from ..ops import mul
        axes = sel.op.selection_axes(sel)
        if axes is not None and _full_inputs(x, axes) and (self.sole(x) or len(self.read_through(x, axes)) <= 1):
            inputs = [self.gather(sel, i) if i.shape == x.shape else self.mapped(i) for i in x.inputs]
            return _new(x.op, inputs, x.tag, x.attrs)
        if axes is None and self.sole(x) and (prod := _product(x, self.vector)) is not None:
            a, c = prod
            return _new(mul, (self.gather(sel, a), _batch_node(sel.op.select(sel, self.mapped(c)))), x.tag)
        return _new(sel.op, (self.mapped(x),) + sel.inputs[1:], sel.tag if self.per_call(x) else "forward",
                    sel.attrs)

    def per_call(self, v):
        """Whether v (a node of the entry or one made here) is computed per call."""
        if v not in self.stage_of:
            self.stage_of[v] = v in self.vector if v in self.known else any(self.per_call(i) for i in v.inputs)
        return self.stage_of[v]

    def read_through(self, x, axes):
        """The values a gather pushed all the way through x's elementwise nodes would gather."""
        if x not in self.sources:
            full = _full_inputs(x, axes)
            self.sources[x] = {x} if full is None else set().union(*(self.read_through(i, axes) for i in full))
        return self.sources[x]

    def factor_node(self, factors, env, tag):
        """The product of ``factors`` (expressions over ``env``) as a node; a bare variable is its input."""
        if len(factors) == 1 and factors[0].op == "var":
            return self.mapped(env[factors[0].value])
        product = functools.reduce(lambda a, b: a * b, factors)
        return self.made.make("selected", product, {p: self.mapped(v) for p, v in env.items()}, tag)

    def scatter_of_sum(self, node, terms):
        """sum_k scatter(a_k) * r_k -> scatter(sum_k a_k * gather(r_k)): one scatter, the products at
        the pooled resolution, gather(r_k) split into its v-independent part (computed once per batch)
        and its per-call part (R{s}: the gather the R-forward pass already makes)."""
        from ..ops import add, mul
        pooled = []
        for scattered, groups in terms:
            scattered = self.mapped(scattered)
            term = scattered.inputs[0]
            for factors, env in groups:
                per_call = [f for f in factors if any(env[p] in self.vector for p in ex.variables(f))]
                batch = [f for f in factors if f not in per_call and ex.variables(f)]
                (batch or per_call).extend(f for f in factors if not ex.variables(f))  # constants ride along
                for part, tag in ((batch, "forward"), (per_call, node.tag)):
                    if not part:
                        continue
                    r = self.factor_node(part, env, tag)
                    if r.shape != scattered.shape:
                        return None
                    g = self.gather(scattered.op.select(scattered, r), r)
                    term = _new(mul, (term, g), node.tag)
            pooled.append(term)
        total = functools.reduce(lambda a, b: _new(add, (a, b), node.tag), pooled)
        return _new(scattered.op, (total,) + scattered.inputs[1:], node.tag, scattered.attrs)


def _batch_node(v):
    """v, tagged as batch-stage (forward) work."""
    v.tag = "forward"
    return v
