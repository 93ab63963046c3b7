"""Numerical checkers for op rules and whole graphs, and the reference interpreter they rely on.

``evaluate`` runs a graph directly (no compiler stages, no backend), so the checks compare the
compiled passes with an independent computation: central finite differences of the interpreted
forward function, and dense J, B, H built column by column.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .autodiff import rop_sweep, vjp_sweep
from .errors import CheckError
from .graph import CONST, FLOAT, INPUT, PARAM, Value, constant, leaf, topo_order
from .op import check_result


def evaluate(outputs, feed: dict, dtype="float64"):
    """Evaluate ``outputs`` (a Value or a list) with NumPy, given arrays for leaves (or any nodes) in ``feed``.

    The reference interpreter: op kernels in topological order, nothing else.
    """
    single = isinstance(outputs, Value)
    outs = [outputs] if single else list(outputs)
    dtype = np.dtype(dtype)
    sizes = {np.shape(a)[0] for v, a in feed.items() if v.ndim and v.shape[0] is None}
    n = sizes.pop() if sizes else 1
    vals = dict(feed)
    for node in topo_order([o for o in outs if o is not None], stop=feed):
        if node in vals:
            continue
        if node.op is CONST:
            vals[node] = np.asarray(node.attrs["value"], dtype if node.dtype == FLOAT else node.dtype)
        elif node.is_leaf:
            raise ValueError(f"evaluate: no value given for leaf {node.label}")
        else:
            attrs = {k: (tuple(n if d is None else d for d in v) if k == "shape" else
                         dtype if (k == "dtype" and v == FLOAT) else v) for k, v in node.attrs.items()}
            result = node.op.forward(np, *[vals[i] for i in node.inputs], **attrs)
            vals[node] = check_result(node, result, tuple(n if d is None else d for d in node.shape), dtype)
    results = [None if o is None else vals[o] for o in outs]
    return results[0] if single else results


@dataclass
class Report:
    """Rows of (what, relative error, passed); ``ok`` when every row passed."""
    subject: str
    rows: list = field(default_factory=list)

    def add(self, what, got, want, rtol, atol):
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        diff = float(np.max(np.abs(got - want), initial=0.0))
        scale = float(np.max(np.abs(want), initial=0.0))
        passed = bool(np.all(np.isfinite(got))) and diff <= rtol * scale + atol
        self.rows.append((what, diff / max(scale, 1e-300) if scale else diff, passed))
        return passed

    @property
    def ok(self):
        return all(p for _, _, p in self.rows)

    def failures(self):
        return [r for r in self.rows if not r[2]]

    def __str__(self):
        lines = [f"{self.subject}:"] + [f"  {'ok  ' if p else 'FAIL'} {what:<44} rel. error {err:.2e}"
                                       for what, err, p in self.rows]
        return "\n".join(lines)

    def raise_if_failed(self):
        if not self.ok:
            bad = "; ".join(f"{w} (rel. error {e:.2e})" for w, e, _ in self.failures())
            raise CheckError(f"{self.subject}: wrong rule(s): {bad}\n{self}")
        return self


def _central(f, x, direction, h):
    return (np.asarray(f(x + h * direction)) - np.asarray(f(x - h * direction))) / (2 * h)


class _Flat:
    """Packs a list of arrays of fixed shapes into one flat vector and back (finite differences work on it)."""

    def __init__(self, shapes):
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    def pack(self, arrays, broadcast=False):
        """One vector of ``arrays`` (None is the zero); each must have its shape unless ``broadcast``."""
        return (np.concatenate([np.zeros(s).ravel() if a is None else np.ravel(np.broadcast_to(a, s) if broadcast else a)
                                for a, s in zip(arrays, self.shapes)]) if arrays else np.zeros(0))

    def unpack(self, flat):
        bounds = np.cumsum([0] + self.sizes)
        return [flat[a:b].reshape(s) for a, b, s in zip(bounds, bounds[1:], self.shapes)]


def _op_leaves(inputs, rng):
    """Leaves for ``check_op``'s input specs: (leaves, float points at which to check, feed of integer inputs)."""
    leaves, points, feed = [], [], {}
    for i, spec in enumerate(inputs):
        if isinstance(spec, np.ndarray) and spec.dtype.kind in "iub":
            v = leaf(INPUT, f"x{i}", spec.shape, "int64" if spec.dtype.kind in "iu" else "bool")
            feed[v] = spec
        else:
            point = np.array(spec, dtype=np.float64) if isinstance(spec, np.ndarray) else rng.standard_normal(spec)
            v = leaf(PARAM, f"x{i}", point.shape)
            points.append(point)
        leaves.append(v)
    return leaves, points, feed


def check_op(op_or_builder, *inputs, seed=0, rtol=1e-6, atol=1e-8, h=1e-5, second_order=True,
             raise_on_fail=True, **attrs) -> Report:
    """Check an op's rules in float64 against central finite differences.

    ``inputs``: for each input a shape (random normal values) or an array (used as the point; integer
    arrays are fixed, non-differentiable inputs such as labels). Checks the VJP, the R-op, the R-op
    derived through two VJPs, ``<u, J v> = <J^T u, v>`` and the second-order pass (R-op of the VJP)
    against finite differences of the VJP.

        >>> from rgraph import ops
        >>> check_op(ops.swish, (3, 4)).ok
        True
    """
    rng = np.random.default_rng(seed)
    subject = getattr(op_or_builder, "name", None) or getattr(op_or_builder, "__name__", "op")
    leaves, points, feed = _op_leaves(inputs, rng)
    y = op_or_builder(*leaves, **attrs)
    report = Report(f"op {subject!r}")
    params = [v for v in leaves if v.op is PARAM]
    if not y.type.is_float or not params:
        return report
    flat = _Flat([p.shape for p in points])

    def at(nodes, x, shape=None):
        """The interpreter's values of ``nodes`` with the parameters at flat ``x``; with ``shape``, one
        node's value broadcast to it (a None node is the zero)."""
        values = None if nodes is None else evaluate(nodes, {**feed, **dict(zip(params, flat.unpack(x)))})
        return values if shape is None else np.broadcast_to(np.zeros(()) if values is None else values, shape)

    x0 = flat.pack(points)
    U = rng.standard_normal(np.shape(at(y, x0)))
    V = rng.standard_normal(x0.size)
    cts = vjp_sweep([y], [constant(U)], params, pass_name="check")
    tangents = dict(zip(params, [constant(t) for t in flat.unpack(V)]))
    (jv,) = rop_sweep([y], tangents, pass_name="check")
    (jv_t,) = rop_sweep([y], tangents, pass_name="check", transposed=True)

    def vjp_at(x):
        return flat.pack(at(cts, x))

    fd_grad = np.array([_central(lambda x: np.sum(U * at(y, x)), x0, e, h) for e in np.eye(x0.size)])
    report.add("vjp vs finite differences", vjp_at(x0), fd_grad, rtol, atol)
    report.add("rop vs finite differences", at(jv, x0, U.shape), _central(lambda x: at(y, x), x0, V, h), rtol, atol)
    report.add("rop vs rop through two vjps", at(jv, x0, U.shape), at(jv_t, x0, U.shape), rtol, atol)
    report.add("dot test <u, Jv> = <J^T u, v>", np.sum(U * at(jv, x0, U.shape)), V @ vjp_at(x0), rtol, atol)
    if second_order:
        got = flat.pack(at(rop_sweep(cts, tangents, pass_name="check"), x0), broadcast=True)
        report.add("second order: R{vjp} vs finite differences", got, _central(vjp_at, x0, V, h), rtol * 10, atol * 10)
    return report.raise_if_failed() if raise_on_fail else report


def _random_batch(graph, batch_size, rng):
    """Standard normal float inputs; integer inputs (labels) drawn in [0, z.shape[-1])."""
    batch = {}
    for name, x in graph.inputs.items():
        shape = tuple(batch_size if d is None else d for d in x.shape)
        batch[name] = rng.integers(0, graph.z.shape[-1], shape) if x.dtype == "int64" else rng.standard_normal(shape)
    return batch


class _Interpreted:
    """The graph's loss, output z, gradient and dloss/dz as functions of flat parameters (or of z), each
    by the reference interpreter on one batch: what ``check_graph`` differentiates numerically."""

    def __init__(self, graph, prog, batch):
        from .autodiff import derive
        self.graph, self.prog = graph, prog
        self.data = {x: batch[name] for name, x in graph.inputs.items()}
        self.derived = derive(graph)
        (self.dloss_dz,) = vjp_sweep([graph.loss], [constant(1.0)], [graph.z])

    def feed(self, t):
        views = self.prog.view(t)
        return {**self.data, **{p: views[p.name] for p in self.derived.params}}

    def loss(self, t):
        return float(evaluate(self.graph.loss, self.feed(t))) + 0.5 * self.graph.l2 * float(t @ t)

    def z(self, t):
        return np.asarray(evaluate(self.graph.z, self.feed(t))).ravel()

    def grad(self, t):
        grads = evaluate(self.derived.outputs["grad"], self.feed(t))
        return np.concatenate([np.zeros(p.shape).ravel() if g is None else np.ravel(g)
                               for g, p in zip(grads, self.derived.params)]) + self.graph.l2 * t

    def dloss_dz_at(self, z):
        return np.ravel(evaluate(self.dloss_dz, {**self.data, self.graph.z: z}))


def check_graph(graph, batch=None, *, theta=None, seed=0, batch_size=3, rtol=1e-6, atol=1e-8, h=1e-5,
                raise_on_fail=True, max_size=2000) -> Report:
    """Check every derived pass of ``graph`` (float64) against dense J, B and H built column by column.

    References: the gradient by central differences of the interpreted loss; J by differences of the
    interpreted output z; B by differences of dloss/dz; H by differences of the gradient. Also checks
    that G is symmetric positive semi-definite and H symmetric. Integer inputs (labels) are drawn in
    [0, z.shape[-1]) unless a ``batch`` is given. The matrices are P x P for P parameters, so a graph
    with more than ``max_size`` is refused (check a small instance of the architecture instead).
    """
    from .compiler import compile
    rng = np.random.default_rng(seed)
    prog = compile(graph, dtype="float64")
    if prog.size > max_size:
        raise ValueError(f"check_graph builds dense {prog.size} x {prog.size} matrices, a pass per column, for graph "
                         f"{graph.name!r}: check a smaller instance of it (at most max_size={max_size} parameters), "
                         f"or raise max_size")
    if theta is None:
        theta = prog.init_params(seed) + 0.1 * rng.standard_normal(prog.size)
    if batch is None:
        batch = _random_batch(graph, batch_size, rng)
    st = prog.bind(theta, batch)
    ref, z0 = _Interpreted(graph, prog, batch), np.asarray(st.output)
    eye, l2 = np.eye(prog.size), graph.l2
    report = Report(f"graph {graph.name!r}")
    report.add("loss vs interpreter", st.loss, ref.loss(theta), rtol, atol)
    report.add("grad vs finite differences of the loss",
               st.grad, np.array([_central(ref.loss, theta, e, h) for e in eye]), rtol, atol)
    J = np.stack([_central(ref.z, theta, e, h) for e in eye], axis=1)
    B = np.stack([_central(lambda z: ref.dloss_dz_at(z.reshape(z0.shape)), z0.ravel(), e, h)
                  for e in np.eye(z0.size)], axis=1)
    H = np.stack([_central(ref.grad, theta, e, h) for e in eye], axis=1)
    J_prog = np.stack([np.ravel(st.jv(e)) for e in eye], axis=1)
    JT_prog = np.stack([st.jtu(e.reshape(z0.shape)) for e in np.eye(z0.size)], axis=1)
    G_prog = np.stack([st.gv(e) for e in eye], axis=1)
    H_prog = np.stack([st.hv(e) for e in eye], axis=1)
    report.add("jv: J column by column", J_prog, J, rtol, atol)
    report.add("jtu: J^T column by column", JT_prog, J.T, rtol, atol)
    report.add("gv: J^T B J + l2 I", G_prog, J.T @ B @ J + l2 * eye, rtol * 10, atol * 10)
    report.add("hv: H by differences of the gradient", H_prog, H, rtol * 10, atol * 10)
    report.add("G symmetric", G_prog, G_prog.T, rtol, atol)
    report.add("H symmetric", H_prog, H_prog.T, rtol, atol)
    min_eig = float(np.linalg.eigvalsh(0.5 * (G_prog + G_prog.T)).min())
    report.add("G positive semi-definite (min eigenvalue >= 0)", min(min_eig - l2, 0.0), 0.0, rtol,
               atol * max(1.0, float(np.abs(G_prog).max())))
    u, v = rng.standard_normal(z0.shape), rng.standard_normal(prog.size)
    report.add("<u, J v> = <J^T u, v>", np.sum(u * st.jv(v)), st.jtu(u) @ v, rtol, atol)
    return report.raise_if_failed() if raise_on_fail else report
