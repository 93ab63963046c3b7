"""Moving work through selections (part of hoist): max pooling's R-op gathers and its VJP scatters.

A selection op (``Op.selection``; see rgraph/op.py) commutes with elementwise products, and a total one
(``Op.selection_axes``) lets a value constant along its axes, and a sum over them, through unchanged:

    gather(x * c)  = gather(x) * gather(c)       scatter(a) * c = scatter(a * gather(c))
    gather(x + b)  = gather(x) + b               sum(scatter(a), axes) = sum(a, axes)

(b constant along the selection axes, such as a convolution's bias; the sum's axes covering them). With
linearity, scatter(a) + scatter(b) = scatter(a + b), a sum of terms each zero off one selection becomes

    scatter(a) * r + (scatter(b) * c) * t = scatter(a * gather(r) + b * gather(c) * gather(t))

which is Hv's R-backward through an activation before max pooling: f'(s) scatter(R{g}) + f''(s)
scatter(g) R{s}. Each rewrite moves per-call elementwise work from the full to the pooled resolution,
a quarter of the entries for 2x2 pooling: the gather of a v-independent factor (f'(s), f''(s)) is
computed once per batch, and gather(R{s}) is the one the R-forward pass makes anyway.
"""
from __future__ import annotations

import collections
import functools

import numpy as np

from .. import expr as ex
from ..graph import FLOAT
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


def _biased(node, axes):
    """(x, b) when ``node`` is a sum x + b, x of its shape and b broadcast along every axis in ``axes``
    (a per-channel bias, for the spatial axes of pooling); else None."""
    pair = _binary(node, "add")
    if pair is None:
        return None
    for x, b in (pair, pair[::-1]):
        if x.shape == node.shape and b.ndim <= node.ndim:
            lead = node.ndim - b.ndim
            if all(a < lead or b.shape[a - lead] == 1 for a in axes):
                return x, b
    return None


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
        k = (id(scattered.op), tuple(map(id, scattered.inputs[1:])), scattered.op.attrs_key(scattered.attrs))
        if key not in (None, k) or scattered.shape != node.shape or \
                _size(scattered.inputs[0].shape) >= _size(scattered.shape):
            return None
        terms.append(found)
        key = k
    return terms


def through_selections(module: Module) -> Module:
    """Apply the identities above wherever they shrink per-call work: the product or sum rewritten
    must have no other reader in the entry (which would still need it at full resolution). Entries
    differ there (Hv reads R{s} again for its second-order term, Gv does not), so each entry is
    rewritten on its own and common subexpressions are shared again afterwards."""
    for name, outs in module.entries.items():
        mapping = _rewrite_entry(module, name)
        module.entries[name] = [None if v is None else mapping.get(v, v) for v in outs]
    return cse(module)


def _rewrite_entry(module, name):
    """old node -> its rewrite, over the nodes entry ``name`` needs."""
    rewriter = _EntryRewriter(module, name)
    for node in rewriter.nodes:
        if not node.is_leaf:
            rewriter.mapping[node] = rewriter.rewrite(node)
    return rewriter.mapping


class _EntryRewriter:
    """The rewrites of one entry's nodes, in creation order; ``mapping`` holds those made so far."""

    def __init__(self, module, name):
        self.vector, self.nodes = module.vector, module.nodes([name])
        self.readers = collections.Counter(i for node in self.nodes for i in node.inputs)
        self.readers.update(module.outputs([name]))
        self.mapping, self.made = {}, _ExprNodes()

    def sole(self, v):
        return self.readers[v] == 1

    def mapped(self, v):
        return self.mapping.get(v, v)

    def rewrite(self, node):
        """The node's replacement (its inputs already rewritten): a shrinking gather pushed inward, a sum
        of scatters made one scatter, a reduction seen through a scatter, or a plain clone."""
        inputs = tuple(self.mapped(i) for i in node.inputs)
        new = None
        if node.op.selection == "gather" and _size(node.shape) < _size(node.inputs[0].shape):
            new = self.gather(_clone(node, inputs), node.inputs[0])
        elif node in self.vector and node.op.kind == "elementwise" and \
                (terms := _scattered_terms(node, self.sole, self.vector)):
            new = self.scatter_of_sum(node, terms)
        elif node.op.name in SEE_THROUGH_SCATTER and getattr(inputs[0].op, "selection", None) == "scatter":
            axes = inputs[0].op.selection_axes(inputs[0])
            if axes is not None and SEE_THROUGH_SCATTER[node.op.name](node, axes):
                new = _new(node.op, (inputs[0].inputs[0],) + inputs[1:], node.tag, node.attrs)
        return new if new is not None else _clone(node, inputs)

    def gather(self, sel, x):
        """sel (a gather, inputs mapped) applied to the original value x, pushed through x's sole-read
        products with v-independent factors and biases."""
        from ..ops import add, mul
        if self.sole(x):
            if (prod := _product(x, self.vector)) is not None:
                a, c = prod
                return _new(mul, (self.gather(sel, a), _batch_node(sel.op.select(sel, self.mapped(c)))), x.tag)
            axes = sel.op.selection_axes(sel)
            if axes is not None and (biased := _biased(x, axes)) is not None:
                a, b = biased
                return _new(add, (self.gather(sel, a), self.mapped(b)), x.tag)
        return _clone(sel, (self.mapped(x),) + sel.inputs[1:])

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
                    g = scattered.op.select(scattered, r)
                    term = _new(mul, (term, g if part is per_call else _batch_node(g)), node.tag)
            pooled.append(term)
        total = functools.reduce(lambda a, b: _new(add, (a, b), node.tag), pooled)
        return _new(scattered.op, (total,) + scattered.inputs[1:], node.tag, scattered.attrs)


def _batch_node(v):
    """v, tagged as batch-stage (forward) work."""
    v.tag = "forward"
    return v
