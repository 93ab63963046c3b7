"""Derived passes: symbolic sweeps of the op rules over a graph.

Two sweeps do all the work; the passes are compositions of them.
* ``vjp_sweep``: reverse sweep of ``vjp`` rules; the sweep sums cotangents over fan-out and fits each
  to its input's shape (summing broadcast axes), so rules never do this bookkeeping.
* ``rop_sweep``: forward sweep of ``rop`` rules (Pearlmutter's R{.}); tangents are fitted likewise.

The passes (f = loss + l2/2 |theta|^2; the l2 terms are added on flat vectors by the program):
    grad = vjp_sweep(loss, 1)                       tags: backward
    jv   = rop_sweep(z; R{theta} = v)               tags: rforward
    jtu  = vjp_sweep(z, u)                          tags: backward
    gv   = vjp_sweep(z, R{dloss/dz}|_{R{z} = J v})  tags: rforward, gn, backward   (= J^T B J v / N)
    hv   = rop_sweep(grad; R{theta} = v)            tags: rforward, rbackward    (forward over reverse)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RuleError, ShapeError, fmt_shape
from .graph import FLOAT, PARAM, TANGENT, COTANGENT, Type, Value, constant, leaf, tagging, topo_order

R_TAG = {"forward": "rforward", "backward": "rbackward"}


def fit(v: Value | None, target: Type) -> Value | None:
    """Bring a cotangent or tangent to ``target``'s shape: sum broadcast axes, broadcast missing ones."""
    if v is None or v.shape == target.shape:
        return v
    from rgraph import ops
    from .op import broadcasts_to
    extra = v.ndim - len(target.shape)
    if extra >= 0:
        kept = v.shape[extra:]
        axes = tuple(range(extra)) + tuple(extra + i for i, (t, s) in enumerate(zip(target.shape, kept))
                                            if t == 1 and s != 1)
        if axes:
            v = ops.sum(v, axis=axes, keepdims=True)
            if extra:
                v = ops.reshape(v, target.shape)
    if v.shape != target.shape:
        if not broadcasts_to(v.shape, target.shape):
            raise ShapeError(f"cannot fit a derivative of shape {fmt_shape(v.shape)} to {fmt_shape(target.shape)}")
        v = ops.broadcast_to(v, target.shape)
    return v


def _fitted(node, rule, what, value, target):
    """fit, with a shape mismatch blamed on the rule that made it."""
    try:
        return fit(value, target)
    except ShapeError:
        raise RuleError(f"op {node.op.name!r}: its {rule} rule returned shape {fmt_shape(value.shape)} for {what}, "
                        f"which is shaped {fmt_shape(target.shape)} (node {node.label})") from None


def _differentiable(v: Value) -> bool:
    return v.type.is_float


def vjp_sweep(outputs, cotangents, wrt, *, pass_name="grad"):
    """Cotangents of ``wrt`` given cotangents of ``outputs`` (reverse sweep). ``None`` for no path."""
    cts: dict[Value, list] = {}
    for out, ct in zip(outputs, cotangents, strict=True):
        if ct is not None:
            cts.setdefault(out, []).append(fit(ct, out.type))
    targets = set(wrt)
    between = _between(outputs, targets)
    for node in reversed(topo_order(outputs)):
        if node not in between or node.is_leaf or node not in cts:
            continue
        g = _sum(cts[node])
        cts[node] = [g]
        try:
            grads = node.op.vjp(node, g)
        except RuleError as e:
            raise RuleError(f"{e} (node {node.label}, {node.type}); the {pass_name!r} pass needs it") from None
        _check_rule_output(node, grads, "vjp")
        if len(grads) != len(node.inputs):
            raise RuleError(f"op {node.op.name!r}: its vjp returned {len(grads)} cotangents for {len(node.inputs)} "
                            f"inputs (one per input, None for none; node {node.label})")
        for i, (inp, gi) in enumerate(zip(node.inputs, grads, strict=True)):
            if gi is not None and inp in between and _differentiable(inp) and i not in node.op.nondiff:
                cts.setdefault(inp, []).append(_fitted(node, "vjp", f"input {i}", gi, inp.type))
    return [_sum(cts.get(w, [])) for w in wrt]


def rop_sweep(outputs, seeds: dict, *, tag=None, pass_name="jv", transposed=False):
    """R{outputs} given R{leaf} = seed for the leaves (or any nodes) in ``seeds`` (forward sweep).

    Each new node is tagged ``tag``, or by the tag of the node it differentiates (forward ->
    rforward, backward -> rbackward). ``transposed`` forces the two-VJP rop for every op (the checker
    compares the two).
    """
    tangents = dict(seeds)
    needed = _differentiably_needed(outputs, seeds)
    for node in topo_order([o for o in outputs if o is not None], stop=seeds):   # None: a zero output
        if node in tangents or node.is_leaf or node not in needed:
            continue
        ts = [tangents.get(i) if _differentiable(i) and k not in node.op.nondiff else None
              for k, i in enumerate(node.inputs)]
        if all(t is None for t in ts):
            continue
        with tagging(tag or R_TAG.get(node.tag, node.tag)):
            try:
                r = node.op.transposed_rop(node, ts) if transposed else node.op.rop(node, ts)
            except RuleError as e:
                raise RuleError(f"{e} (node {node.label}, {node.type}); the {pass_name!r} pass needs it") from None
            _check_rule_output(node, [r], "rop")
            r = _fitted(node, "rop", "its output", r, node.type)
        if r is not None:
            tangents[node] = r
    return [tangents.get(o) for o in outputs]


def _between(outputs, targets):
    """Nodes on some path from ``targets`` to ``outputs``: the only ones a reverse sweep must visit."""
    order = topo_order(outputs)
    reach = set()
    for node in order:
        if node in targets or any(i in reach for i in node.inputs):
            reach.add(node)
    return reach


def _differentiably_needed(outputs, stop):
    """Nodes whose tangent can reach ``outputs`` through differentiable inputs (not through labels or a
    stop_gradient), so a forward sweep never asks an auxiliary op (amax, argmax) for a rule."""
    needed, stack = set(), [o for o in outputs if o is not None]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node not in stop:
            stack.extend(i for k, i in enumerate(node.inputs) if k not in node.op.nondiff and _differentiable(i))
    return needed


def _sum(terms):
    from .op import add_all
    return add_all(terms)


def _check_rule_output(node, results, rule):
    for r in results:
        if r is not None and not isinstance(r, Value):
            raise RuleError(f"op {node.op.name!r}: its {rule} rule returned {type(r).__name__}, not a Value or None "
                            f"(rules build graph nodes)")


# --- the passes ------------------------------------------------------------------------------

@dataclass
class Passes:
    """The derived passes of a graph, as symbolic outputs over its leaves and the seeds v, u."""
    graph: object
    params: list
    v: list                       # one tangent leaf per parameter
    u: Value                      # cotangent leaf at the output z
    outputs: dict = field(default_factory=dict)   # entry -> list of Values (None for a zero result)


def derive(graph, *, transposed=False) -> Passes:
    """Derive loss, output, grad, jv, jtu, gv and hv of ``graph`` as symbolic graphs."""
    from rgraph import ops
    if graph.z is None or graph.loss is None:
        raise RuleError(f"graph {graph.name!r} needs an output (g.output) and a loss (g.set_loss) before compiling")
    params = list(graph.params.values())
    if not params:
        raise RuleError(f"graph {graph.name!r} has no parameters to differentiate")
    _require_loss_through_output(graph, params)
    v = [leaf(TANGENT, f"v[{p.name}]", p.shape) for p in params]
    u = leaf(COTANGENT, "u", graph.z.shape)
    P = Passes(graph, params, v, u)
    z, loss = graph.z, graph.loss
    P.outputs["loss"] = [loss]
    P.outputs["output"] = [z]
    seeds = dict(zip(params, v, strict=True))
    with tagging("backward"):
        one = constant(1.0)
        grads = vjp_sweep([loss], [one], params + [z], pass_name="grad")
    P.outputs["grad"] = grads[:-1]
    dloss_dz = grads[-1]
    (jv,) = rop_sweep([z], seeds, tag="rforward", pass_name="jv", transposed=transposed)
    P.outputs["jv"] = [jv]
    with tagging("backward"):
        P.outputs["jtu"] = vjp_sweep([z], [u], params, pass_name="jtu")
    if jv is None or dloss_dz is None:
        P.outputs["gv"] = [None] * len(params)
    else:
        (bjv,) = rop_sweep([dloss_dz], {z: jv}, tag="gn", pass_name="gv", transposed=transposed)
        with tagging("gn"):
            P.outputs["gv"] = vjp_sweep([z], [bjv], params, pass_name="gv")
    P.outputs["hv"] = rop_sweep(P.outputs["grad"], seeds, pass_name="hv", transposed=transposed)
    P.layers = gemm_layers(graph)
    with tagging("backward"):
        cts = vjp_sweep([z], [u], [layer.output for layer in P.layers], pass_name="taps")
    P.outputs["taps"] = [layer.input for layer in P.layers] + cts
    return P


def _require_loss_through_output(graph, params):
    """Gauss-Newton products G = J^T B J + l2 I hold for a loss L(z(theta)) only: a parameter that reaches
    the loss other than through the output z would be silently left out of gv, so it is refused."""
    outside_z = set(topo_order([graph.loss], stop=[graph.z]))
    direct = [p.name for p in params if p in outside_z]
    if direct:
        raise RuleError(f"graph {graph.name!r}: parameter(s) {direct} reach the loss other than through the output "
                        f"z (g.output), so Gauss-Newton products would leave them out; make them part of z, and "
                        f"give weight decay as g.set_loss(loss, l2=...)")


@dataclass(frozen=True)
class GemmLayer:
    """A layer KFAC can precondition: a GEMM ``output = input @ op(W)`` with W (a reshape of) a parameter.

    ``input`` is the layer input (dense: the activations; conv: the im2col patches), ``output`` the
    GEMM result, whose cotangent is the pre-activation cotangent; ``bias`` is the parameter named like
    the weight with ``.b`` for ``.W``, if there is one.
    """
    weight: str
    bias: str | None
    input: Value
    output: Value


def gemm_layers(graph) -> list[GemmLayer]:
    """Every GEMM of the forward graph with a parameter operand, in graph order."""
    from rgraph import ops
    layers = []
    for node in topo_order([graph.z]):
        if node.op.kind != "gemm":
            continue
        for k, operand in enumerate(node.inputs):
            base = operand
            while base.op in (ops.linalg.reshape_op, ops.linalg.transpose_op):
                base = base.inputs[0]
            if base.op is PARAM:
                stem = base.name[:-2] if base.name.endswith(".W") else None
                bias = f"{stem}.b" if stem and f"{stem}.b" in graph.params else None
                layers.append(GemmLayer(base.name, bias, node.inputs[1 - k], node))
                break
    return layers
