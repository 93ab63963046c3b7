"""Time rgraph's products against JAX and PyTorch in one run (float32; CPU, or a GPU with --backend cupy).

    python bench/products.py [--repeats 7] [--workloads mlp,vgg-mini,vgg11] [--backend numpy|cupy]

For each workload (a table below; the CNN rows appear once ``rgraph.nn.vgg``/``ops.conv2d`` exist):
forward+loss, gradient, jv, jtu, gv (its one-off batch stage and its per-call vector stage), hv, each the
median of ``repeats`` runs after warm-up, with every library on all cores. Each product runs beside its
GEMM floor (one call of each per round), each library in its own block, and the blocks alternate four
times, so a drift in the load of a shared machine moves every column of a table alike. rgraph's GFLOP/s (FLOPs from
``prog.cost``) is compared with the machine's NumPy GEMM peak (float32 2048^3) and with its own GEMM
floor: the time of just that product's matrix products, one NumPy GEMM each (the program compiled with
``merge=False, tile=False``), run alone on the same operands. rgraph's merged GEMMs may take less than it. Peers are optional:
a missing JAX or PyTorch is skipped. Nothing here is a dependency of rgraph.

With ``--backend cupy`` everything runs on the GPU: rgraph on CuPy, JAX on its default (GPU) device and
PyTorch on CUDA, all in full float32 (TF32 off: JAX's matmul precision "highest", cuDNN's allow_tf32
False; CuPy's GEMMs use none); every timed call ends with a device synchronisation, and the peak is
CuPy's float32 4096^3 GEMM.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

CORES = os.cpu_count() or 1
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(var, str(CORES))
os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={CORES}")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU, leave memory to CuPy and PyTorch too

import numpy as np  # noqa: E402

import rgraph as rg  # noqa: E402
from rgraph.program import _run  # noqa: E402


class Device:
    """Where the benchmark runs: ``put`` moves a host array there, ``sync`` waits for its queued work
    (every timed call ends with it), ``xp`` is rgraph's array module there."""

    def __init__(self, backend):
        self.backend, self.gpu = backend, backend == "cupy"
        if self.gpu:
            import cupy
            self.xp, self.put, self.sync = cupy, cupy.asarray, cupy.cuda.Device().synchronize
        else:
            self.xp, self.put, self.sync = np, (lambda a: a), (lambda: None)

    def timed(self, fn):
        """``fn`` followed by a synchronisation (an ``Elapsed`` it returns is kept)."""
        if not self.gpu:
            return fn

        def call():
            out = fn()
            self.sync()
            return out
        return call


DEVICE = Device("numpy")


def median_ms(fn, repeats, warmup=2):
    return round_robin({0: fn}, repeats, warmup)[0]


class Elapsed(float):
    """Seconds a timed callable measured itself (to leave its set-up out of the timing)."""


def round_robin(cases, repeats, warmup=2):
    """Median ms of each zero-argument callable, timed in rounds of one call of each (after ``warmup``
    calls of each). A callable may return an ``Elapsed``: its own timing of the part that counts."""
    return {key: 1e3 * statistics.median(ts) for key, ts in _samples(cases, repeats, warmup).items()}


def _samples(cases, repeats, warmup):
    cases = {key: DEVICE.timed(fn) for key, fn in cases.items()}
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in cases}
    for _ in range(repeats):
        for key, fn in cases.items():
            t = time.perf_counter()
            own = fn()
            times[key].append(own if isinstance(own, Elapsed) else time.perf_counter() - t)
    return times


def in_blocks(blocks, repeats, rounds=4):
    """Median ms per case of several libraries. Each library's cases run as one block, round-robin
    inside it (a library's thread pools stay warm, as in a CG loop of its own); the blocks alternate
    for ``rounds`` rounds, so a drift in the load of a shared machine reaches every library alike (it
    drifts by tens of percent over minutes: the same MLP gv floor read 118 ms in one run, 91 in the
    next). A block warms up with two calls of each case in the first round (JAX compiles then) and one
    in each later round (its thread pools wake)."""
    samples = {}
    for r in range(rounds):
        for cases in blocks:
            for key, ts in _samples(cases, max(1, repeats // rounds), warmup=2 if r == 0 else 1).items():
                samples.setdefault(key, []).extend(ts)
    return {key: 1e3 * statistics.median(ts) for key, ts in samples.items()}


def gemm_peak(repeats, n=2048):
    xp = DEVICE.xp
    a = DEVICE.put(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    out = xp.empty_like(a)
    ms = median_ms(lambda: xp.matmul(a, a, out=out), repeats)
    return 2 * n ** 3 / (ms * 1e-3) / 1e9


# --- workloads ----------------------------------------------------------------------------------------

def mlp_workload():
    sizes = [784, 1024, 1024, 10]
    return dict(name="MLP 784-1024-1024-10 swish", kind="mlp", sizes=sizes, batch=1024,
                graph=lambda: rg.nn.mlp(sizes, activation="swish", l2=1e-3))


def vgg_mini_workload():
    """conv3x3 3->32, swish, maxpool 2; conv 32->64, swish, maxpool; conv 64->128, swish, maxpool; dense 2048->10."""
    if not hasattr(rg.nn, "small_cnn") or not hasattr(rg.ops, "conv2d"):
        return None
    return dict(name="VGG-mini 3x32x32 (32-64-128 conv, dense 2048-10) swish", kind="cnn", batch=128,
                pools=[True, True, True],
                graph=lambda: rg.nn.small_cnn(input_shape=(3, 32, 32), num_classes=10, channels=(32, 64, 128),
                                              l2=1e-3))


def vgg11_workload():
    """Canonical VGG11 (configuration A: 8 convolutions, 5 max poolings) on 3x32x32, swish."""
    config = rg.nn.VGG_CONFIGS["vgg11"]
    pools = [k + 1 < len(config) and config[k + 1] == "M" for k, c in enumerate(config) if c != "M"]
    return dict(name="VGG11 3x32x32 swish", kind="cnn", batch=32, pools=pools,
                graph=lambda: rg.nn.vgg("vgg11", input_shape=(3, 32, 32), num_classes=10, l2=1e-3))


WORKLOADS = {"mlp": mlp_workload, "vgg-mini": vgg_mini_workload, "vgg11": vgg11_workload}


def make_batch(g, n, rng):
    x = g.inputs["x"]
    X = rng.standard_normal((n,) + tuple(x.shape[1:])).astype(np.float32)
    Y = rng.integers(0, g.z.shape[1], n)
    return {"x": X, "y": Y}


# --- rgraph -------------------------------------------------------------------------------------------

def bench_rgraph(w, batch):
    g = w["graph"]()
    prog = rg.compile(g, dtype="float32", backend=DEVICE.backend)
    theta = prog.init_params(seed=0)
    n, xp, put = w["batch"], DEVICE.xp, DEVICE.put
    batch = {k: put(a) for k, a in batch.items()}
    rng = np.random.default_rng(1)
    v = put(rng.standard_normal(prog.size).astype(np.float32))
    st = prog.bind(theta, batch)
    u = put(rng.standard_normal(st.output.shape).astype(np.float32))
    flat, zout = xp.empty(prog.size, np.float32), xp.empty_like(st.output)
    rows, floors = {}, {}   # label -> (callable, entry, stage); label -> callable running just the GEMMs

    def fresh():
        return prog.bind(theta, batch)
    rows["forward+loss"] = (lambda: fresh().loss, "loss", "batch")
    rows["gradient"] = (lambda: fresh().grad, "grad", "batch")

    def batch_stage(entry):  # what the entry's batch stage adds to bind, timed on a fresh state
        s = fresh()
        DEVICE.sync()
        t = time.perf_counter()
        s._batch(entry)
        DEVICE.sync()
        return Elapsed(time.perf_counter() - t)
    for entry in ("gv", "hv"):
        rows[f"{entry} batch stage (once)"] = (lambda e=entry: batch_stage(e), entry, "batch-only")
    for entry, seed, out in (("jv", v, zout), ("jtu", u, flat), ("gv", v, flat), ("hv", v, flat)):
        rows[f"{entry} per call"] = (lambda f=getattr(st, entry), x=seed, o=out: f(x, out=o), entry, "vector")
    # GEMM floors: just the GEMM instructions of each product, one NumPy GEMM per matrix product (the
    # program compiled without merging GEMM sums), on that program's slots (all values computed)
    plain = rg.compile(g, dtype="float32", merge=False, tile=False, backend=DEVICE.backend)
    ps = plain.bind(theta, batch)
    ps.grad
    for entry in ("gv", "hv", "jv", "jtu"):
        ps._batch(entry)
        getattr(ps, entry)(u if entry == "jtu" else v)
    for label, (_, entry, stage) in rows.items():
        batch_ins, vector_ins = plain.instructions(entry, n)
        if stage == "vector":
            ins = vector_ins
        elif stage == "batch-only":
            ins = [i for i in batch_ins if i[3] not in plain._plans["loss"][0]]
        else:
            ins = batch_ins
        gemms = [i for i in ins if i[3].op.kind == "gemm"]
        if gemms:
            floors[label] = lambda g=gemms: _run(g, ps._vals, n)
    flops = {}
    for label, (_, entry, stage) in rows.items():
        c = prog.cost(entry, batch_size=n)
        if stage == "vector":
            flops[label] = c["vector"]["flops"]
        elif stage == "batch-only":
            flops[label] = c["batch"]["flops"] - prog.cost("loss", batch_size=n)["batch"]["flops"]
        else:
            flops[label] = c["batch"]["flops"]
    return {label: fn for label, (fn, _, _) in rows.items()}, floors, flops, prog


# --- JAX ----------------------------------------------------------------------------------------------

def bench_jax(w, batch, prog):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", False)
    jax.config.update("jax_default_matmul_precision", "highest")  # full float32 (no TF32 on a GPU)
    if DEVICE.gpu and jax.default_backend() != "gpu":
        return None
    view = {name: prog.backend.to_host(a) for name, a in prog.view(prog.init_params(seed=0)).items()}
    params = [jnp.asarray(view[name]) for name in prog.layout]
    X, Y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    l2, N = prog.l2, X.shape[0]

    # data and parameters are arguments, never closed over: XLA would constant-fold GEMMs on them
    pools = w.get("pools", [])

    def net(p, X):
        h = X
        for i in range(0, len(p), 2):
            W, b = p[i], p[i + 1]
            if W.ndim == 4:  # conv 3x3, padding 1, NCHW/OIHW, then swish (and 2x2 max pooling)
                a = jax.lax.conv_general_dilated(h, W, (1, 1), ((1, 1), (1, 1)),
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW")) + b.reshape(1, -1, 1, 1)
                h = a * jax.nn.sigmoid(a)
                if pools[i // 2]:
                    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            else:
                a = h.reshape(h.shape[0], -1) @ W + b
                h = a * jax.nn.sigmoid(a) if i + 2 < len(p) else a
        return h

    def f(p, X, Y):
        z = net(p, X)
        data = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, Y[:, None], axis=1)[:, 0])
        return data + 0.5 * l2 * sum(jnp.sum(q * q) for q in p)
    rng = np.random.default_rng(1)
    v = [jnp.asarray(rng.standard_normal(q.shape).astype(np.float32)) for q in params]
    u = jnp.asarray(rng.standard_normal((N, 10)).astype(np.float32))
    ready = jax.block_until_ready
    out = {}
    loss_j, grad_j = jax.jit(f), jax.jit(jax.grad(f))
    out["forward+loss"] = [(lambda: ready(loss_j(params, X, Y)), "jit")]
    out["gradient"] = [(lambda: ready(grad_j(params, X, Y)), "jit")]
    jv_j = jax.jit(lambda p, t, X: jax.jvp(lambda q: net(q, X), (p,), (t,))[1])
    out["jv per call"] = [(lambda: ready(jv_j(params, v, X)), "jit jvp")]
    jtu_j = jax.jit(lambda p, c, X: jax.vjp(lambda q: net(q, X), p)[1](c)[0])
    out["jtu per call"] = [(lambda: ready(jtu_j(params, u, X)), "jit vjp")]

    # gv: linearize the network once per batch; the linear map (a pytree of residuals) is reused per call
    @jax.jit
    def linearize(p, X):
        z, lin = jax.linearize(lambda q: net(q, X), p)
        return jax.nn.softmax(z, axis=1), lin

    @jax.jit
    def gv(lin, probs, t):
        r, back = jax.vjp(lin, t)
        b = (probs * r - probs * jnp.sum(probs * r, axis=1, keepdims=True)) / N
        return [g + l2 * ti for g, ti in zip(back(b)[0], t)]
    out["gv batch stage (once)"] = [(lambda: ready(linearize(params, X)), "jit linearize")]
    probs, lin = linearize(params, X)
    out["gv per call"] = [(lambda: ready(gv(lin, probs, v)), "linearize reused")]
    hv_jvp = jax.jit(lambda p, t, X, Y: jax.jvp(lambda q: jax.grad(f)(q, X, Y), (p,), (t,))[1])


    @jax.jit
    def hv_linearize(p, X, Y):
        return jax.linearize(lambda q: jax.grad(f)(q, X, Y), p)[1]
    hv_lin = hv_linearize(params, X, Y)
    apply = jax.jit(lambda lin, t: lin(t))
    out["hv per call"] = [(lambda: ready(hv_jvp(params, v, X, Y)), "jvp of grad"),
                          (lambda: ready(apply(hv_lin, v)), "linearize of grad reused")]
    return out


# --- PyTorch ------------------------------------------------------------------------------------------

def bench_torch(w, batch, prog):
    try:
        import torch
        from torch import func as tf
    except ImportError:
        return None
    torch.set_num_threads(CORES)
    dev = "cuda" if DEVICE.gpu else "cpu"
    if DEVICE.gpu and not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32
    view = {name: prog.backend.to_host(a) for name, a in prog.view(prog.init_params(seed=0)).items()}
    params = [torch.tensor(np.array(view[name]), device=dev) for name in prog.layout]
    X, Y = torch.tensor(batch["x"], device=dev), torch.tensor(batch["y"], device=dev)
    l2, N = prog.l2, X.shape[0]
    F = torch.nn.functional
    pools = w.get("pools", [])

    def net(*p):
        h = X
        for i in range(0, len(p), 2):
            W, b = p[i], p[i + 1]
            if W.ndim == 4:
                h = F.silu(F.conv2d(h, W, b.reshape(-1), padding=1))
                h = F.max_pool2d(h, 2) if pools[i // 2] else h
            else:
                h = h.reshape(h.shape[0], -1) @ W + b
                h = F.silu(h) if i + 2 < len(p) else h
        return h

    def f(*p):
        return F.cross_entropy(net(*p), Y) + 0.5 * l2 * sum((q * q).sum() for q in p)
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(q.shape, generator=g).to(dev) for q in params]
    u = torch.randn((N, 10), generator=g).to(dev)
    out = {}
    def loss_only():
        with torch.no_grad():
            return f(*params)
    out["forward+loss"] = [(loss_only, "eager")]
    out["gradient"] = [(lambda: tf.grad(f, argnums=tuple(range(len(params))))(*params), "func.grad")]
    out["jv per call"] = [(lambda: tf.jvp(net, tuple(params), tuple(v)), "func.jvp")]
    out["jtu per call"] = [(lambda: tf.vjp(net, *params)[1](u), "func.vjp")]

    def bmul(z, r):
        p = torch.softmax(z, dim=1)
        return (p * r - p * (p * r).sum(1, keepdim=True)) / N

    def gv_func(t):
        z, r = tf.jvp(net, tuple(params), tuple(t))
        return [a + l2 * b for a, b in zip(tf.vjp(net, *params)[1](bmul(z, r)), t)]
    # autograd with the graph kept across calls: z once; J v by the double-vjp trick, J^T by a vjp
    ps = [q.clone().requires_grad_(True) for q in params]
    z = net(*ps)
    dummy = torch.zeros_like(z, requires_grad=True)
    gz = torch.autograd.grad(z, ps, dummy, create_graph=True)
    p_soft = torch.softmax(z.detach(), dim=1)

    def gv_autograd(t):
        r = torch.autograd.grad(gz, dummy, t, retain_graph=True)[0]
        b = (p_soft * r - p_soft * (p_soft * r).sum(1, keepdim=True)) / N
        return [x + l2 * y for x, y in zip(torch.autograd.grad(z, ps, b, retain_graph=True), t)]
    out["gv per call"] = [(lambda: gv_func(v), "func jvp+vjp"), (lambda: gv_autograd(v), "autograd, graph kept")]
    gr = torch.autograd.grad(f(*ps), ps, create_graph=True)
    out["hv per call"] = [(lambda: torch.autograd.grad(gr, ps, v, retain_graph=True), "double backward, graph kept"),
                          (lambda: tf.jvp(tf.grad(f, argnums=tuple(range(len(params)))), tuple(params), tuple(v)),
                           "func jvp of grad")]
    return out


def gpu_name():
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8, help="timed calls per case (a quarter in each round)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"],
                    help="rgraph's backend; cupy runs every library on the GPU")
    args = ap.parse_args()
    global DEVICE
    DEVICE = Device(args.backend)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    peak = gemm_peak(args.repeats, 4096 if DEVICE.gpu else 2048)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {CORES}-core CPU, {platform.system()}"
          f"{'; GPU ' + gpu_name() if DEVICE.gpu else ''}; float32; median of {args.repeats} after warm-up; "
          f"threads={CORES} for all")
    print(f"{'CuPy' if DEVICE.gpu else 'NumPy'} GEMM peak (float32 {4096 if DEVICE.gpu else 2048}^3): "
          f"{peak:.0f} GFLOP/s\n")
    for make in (WORKLOADS[name] for name in args.workloads.split(",")):
        w = make()
        if w is None:
            print(f"(workload {make.__name__[:-9]} skipped: needs rgraph.nn.vgg and ops.conv2d)\n")
            continue
        batch = make_batch(w["graph"](), w["batch"], np.random.default_rng(0))
        rows, floors, flops, prog = bench_rgraph(w, batch)
        peers = {"jax": bench_jax(w, batch, prog) or {}, "torch": bench_torch(w, batch, prog) or {}}
        mine = {("rgraph", label): fn for label, fn in rows.items()}
        mine.update({("floor", label): fn for label, fn in floors.items()})  # each product beside its floor
        blocks = [mine] + [{(peer, label, k): fn for label, alts in table.items() for k, (fn, _) in enumerate(alts)}
                           for peer, table in peers.items() if table]
        ms = in_blocks(blocks, args.repeats)

        def best(peer, label):  # a peer's fastest strategy for this product: (ms, strategy)
            alts = peers[peer].get(label, [])
            return min(((ms[(peer, label, k)], name) for k, (_, name) in enumerate(alts)), default=None)
        print(f"== {w['name']}, batch {w['batch']} ==")
        head = f"{'product':<24}{'rgraph ms':>10}{'GEMM floor':>11}{'x floor':>8}{'GFLOP/s':>9}{'% peak':>7}" \
               f"{'JAX ms':>9}  {'(strategy)':<28}{'torch ms':>9}  {'(strategy)':<28}"
        print(head)
        print("-" * len(head))
        for label in rows:
            mine, floor = ms[("rgraph", label)], ms.get(("floor", label), float("nan"))
            gfs = flops[label] / (mine * 1e-3) / 1e9 if mine > 0 else float("nan")
            j, t = best("jax", label), best("torch", label)
            print(f"{label:<24}{mine:>10.2f}{floor:>11.2f}{mine / floor:>8.2f}{gfs:>9.0f}"
                  f"{100 * gfs / peak:>6.0f}%"
                  f"{(f'{j[0]:.2f}' if j else '-'):>9}  {(j[1] if j else ''):<28}"
                  f"{(f'{t[0]:.2f}' if t else '-'):>9}  {(t[1] if t else ''):<28}")
        print()


if __name__ == "__main__":
    main()
