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
            vals[node] = node.op.forward(np, *[vals[i] for i in node.inputs], **attrs)
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
    build = op_or_builder
    subject = getattr(op_or_builder, "name", None) or getattr(op_or_builder, "__name__", "op")
    points, leaves, feed = [], [], {}
    for i, spec in enumerate(inputs):
        if isinstance(spec, np.ndarray) and spec.dtype.kind in "iub":
            v = leaf(INPUT, f"x{i}", spec.shape, "int64" if spec.dtype.kind in "iu" else "bool")
            feed[v] = spec
        else:
            point = np.array(spec, dtype=np.float64) if isinstance(spec, np.ndarray) else rng.standard_normal(spec)
            v = leaf(PARAM, f"x{i}", point.shape)
            points.append(point)
        leaves.append(v)
    y = build(*leaves, **attrs)
    report = Report(f"op {subject!r}")
    params = [v for v in leaves if v.op is PARAM]
    if not y.type.is_float or not params:
        return report
    sizes = [p.size for p in points]

    def pack(arrays):
        return np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0)

    def unpack(flat):
        out, off = [], 0
        for p in points:
            out.append(flat[off:off + p.size].reshape(p.shape))
            off += p.size
        return out

    def f(x):
        return evaluate(y, {**feed, **dict(zip(params, unpack(x)))})

    x0 = pack(points)
    U = rng.standard_normal(np.shape(f(x0)))
    V = rng.standard_normal(x0.size)
    u_const = constant(U)
    cts = vjp_sweep([y], [u_const], params, pass_name="check")
    tangents = dict(zip(params, [constant(t) for t in unpack(V)]))
    (jv,) = rop_sweep([y], tangents, pass_name="check")
    (jv_t,) = rop_sweep([y], tangents, pass_name="check", transposed=True)

    def vjp_at(x):
        vals = evaluate(cts, {**feed, **dict(zip(params, unpack(x)))})
        return pack([np.zeros(p.shape) if c is None else c for c, p in zip(vals, points)])

    def jv_at(node, x):
        out = evaluate(node, {**feed, **dict(zip(params, unpack(x)))}) if node is not None else None
        return np.zeros(np.shape(U)) if out is None else np.broadcast_to(out, np.shape(U))

    fd_grad = np.array([_central(lambda x: np.sum(U * f(x)), x0, e, h) for e in np.eye(x0.size)])
    report.add("vjp vs finite differences", vjp_at(x0), fd_grad, rtol, atol)
    fd_jv = _central(f, x0, V, h)
    report.add("rop vs finite differences", jv_at(jv, x0), fd_jv, rtol, atol)
    report.add("rop vs rop through two vjps", jv_at(jv, x0), jv_at(jv_t, x0), rtol, atol)
    report.add("dot test <u, Jv> = <J^T u, v>", np.sum(U * jv_at(jv, x0)), V @ vjp_at(x0), rtol, atol)
    if second_order:
        hv_nodes = rop_sweep([c for c in cts], tangents, pass_name="check")
        got = pack([np.zeros(p.shape) if n is None else np.broadcast_to(
            evaluate(n, {**feed, **dict(zip(params, unpack(x0)))}), p.shape) for n, p in zip(hv_nodes, points)])
        report.add("second order: R{vjp} vs finite differences", got, _central(vjp_at, x0, V, h), rtol * 10, atol * 10)
    return report.raise_if_failed() if raise_on_fail else report


def check_graph(graph, batch=None, *, theta=None, seed=0, batch_size=3, rtol=1e-6, atol=1e-8, h=1e-5,
                raise_on_fail=True) -> Report:
    """Check every derived pass of ``graph`` (float64) against dense J, B and H built column by column.

    References: the gradient by central differences of the interpreted loss; J by differences of the
    interpreted output z; B by differences of dloss/dz; H by differences of the gradient. Also checks
    that G is symmetric positive semi-definite and H symmetric. Integer inputs (labels) are drawn in
    [0, z.shape[-1]) unless a ``batch`` is given.
    """
    from .autodiff import derive
    from .compiler import compile
    rng = np.random.default_rng(seed)
    prog = compile(graph, dtype="float64")
    if theta is None:
        theta = prog.init_params(seed) + 0.1 * rng.standard_normal(prog.size)
    if batch is None:
        batch = {}
        for name, x in graph.inputs.items():
            shape = tuple(batch_size if d is None else d for d in x.shape)
            batch[name] = (rng.integers(0, graph.z.shape[-1], shape) if x.dtype == "int64"
                           else rng.standard_normal(shape))
    st = prog.bind(theta, batch)
    P, l2 = prog.size, graph.l2
    ref = derive(graph)
    params = ref.params
    feed_data = {x: batch[name] for name, x in graph.inputs.items()}

    def feed(t):
        views = prog.view(t)
        return {**feed_data, **{p: views[p.name] for p in params}}

    def loss_at(t):
        return float(evaluate(graph.loss, feed(t))) + 0.5 * l2 * float(t @ t)

    def z_at(t):
        return np.asarray(evaluate(graph.z, feed(t))).ravel()

    def grad_at(t):
        vals = evaluate(ref.outputs["grad"], feed(t))
        return np.concatenate([np.zeros(p.shape).ravel() if g is None else np.ravel(g)
                               for g, p in zip(vals, params)]) + l2 * t

    (dloss_dz,) = vjp_sweep([graph.loss], [constant(1.0)], [graph.z])
    z0 = np.asarray(st.output)

    def dldz_at(zflat):
        return np.ravel(evaluate(dloss_dz, {**feed_data, graph.z: zflat.reshape(z0.shape)}))

    eye = np.eye(P)
    report = Report(f"graph {graph.name!r}")
    report.add("loss vs interpreter", st.loss, loss_at(theta), rtol, atol)
    report.add("grad vs finite differences of the loss",
               st.grad, np.array([_central(loss_at, theta, e, h) for e in eye]), rtol, atol)
    J = np.stack([_central(z_at, theta, e, h) for e in eye], axis=1)
    B = np.stack([_central(dldz_at, z0.ravel(), e, h) for e in np.eye(z0.size)], axis=1)
    H = np.stack([_central(grad_at, theta, e, h) for e in eye], axis=1)
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
    u = rng.standard_normal(z0.shape)
    v = rng.standard_normal(P)
    report.add("<u, J v> = <J^T u, v>", np.sum(u * st.jv(v)), st.jtu(u) @ v, rtol, atol)
    return report.raise_if_failed() if raise_on_fail else report
