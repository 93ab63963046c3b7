"""Where a product's time goes: a per-kernel profile of rgraph's calls of one entry.

    python bench/profile_kernels.py [--workload vgg-mini] [--entry gv] [--calls 5] [--top 12] [--backend cupy]

Times every instruction of the entry's calls in steady state (vector-stage buffers planned; for loss
and grad, binds into a released state's arrays, as in a training loop) and prints the time per op
kind and the slowest instructions. The workloads are those of bench/products.py. On the GPU
(``--backend cupy``) each instruction is timed twice: with a device synchronisation before and after
it (its launch and its run on the device), and without (what launching it costs the host, which is
all a call costs where the device keeps up).
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import rgraph as rg
import rgraph.program as program
from products import WORKLOADS, make_batch


def profile(prog, theta, batch, entry, calls, sync=None):
    rng = np.random.default_rng(1)
    xp = prog.backend.xp
    st = prog.bind(theta, batch)
    if entry in ("loss", "grad"):
        def call():
            s = prog.bind(theta, batch)
            return s.loss if entry == "loss" else s.grad
    else:
        seed = prog.backend.asarray(rng.standard_normal(st.output.shape if entry == "jtu" else prog.size)
                                    .astype(prog.dtype))
        out = xp.empty_like(st.output) if entry == "jv" else xp.empty(prog.size, prog.dtype)
        def call():
            return getattr(st, entry)(seed, out=out)
    call()
    call()
    spent = collections.defaultdict(float)

    def timed_run(instrs, vals, n, skip_done=False, spare=None):
        for kernel, ins, out_slot, node in instrs:
            if skip_done and vals[out_slot] is not None:
                continue
            buffers = spare.pop(node, None) if spare else None
            if sync:
                sync()
            t = time.perf_counter()
            vals[out_slot] = kernel(*[vals[i] for i in ins], **({} if buffers is None else {"out": buffers}))
            if sync:
                sync()
            kind = "fused" if node.op.kind == "fused" else node.op.name
            spent[(kind, node.label, str(node.shape))] += time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(calls):
        call()
    if sync:
        sync()
    total = (time.perf_counter() - t) / calls
    plain, program._run = program._run, timed_run
    try:
        for _ in range(calls):
            call()
    finally:
        program._run = plain
    return total, {key: s / calls for key, s in spent.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="vgg-mini", choices=sorted(WORKLOADS))
    ap.add_argument("--entry", default="gv", choices=["loss", "grad", "jv", "jtu", "gv", "hv"])
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    args = ap.parse_args()
    w = WORKLOADS[args.workload]()
    g = w["graph"]()
    prog = rg.compile(g, dtype="float32", backend=args.backend)
    batch = {k: prog.backend.asarray(a) for k, a in make_batch(g, w["batch"], np.random.default_rng(0)).items()}
    theta = prog.init_params(seed=0)
    sync = prog.backend.xp.cuda.Device().synchronize if args.backend == "cupy" else None
    total, spent = profile(prog, theta, batch, args.entry, args.calls, sync)
    launch = profile(prog, theta, batch, args.entry, args.calls)[1] if sync else spent
    by_op, launch_by_op, count = collections.defaultdict(float), collections.defaultdict(float), collections.Counter()
    for key, s in spent.items():
        by_op[key[0]] += s
        launch_by_op[key[0]] += launch[key]
        count[key[0]] += 1
    print(f"{w['name']}, batch {w['batch']}, {args.backend}: {args.entry} {1e3 * total:.2f} ms per call; "
          f"{len(spent)} instructions, {1e3 * sum(spent.values()):.2f} ms timed one by one"
          + (f", {1e3 * sum(launch.values()):.2f} ms of it launching" if sync else ""))
    print(f"  {'op':<18}{'count':>6}{'ms':>9}" + (f"{'launch ms':>11}" if sync else ""))
    for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {op:<18}{count[op]:>6}{1e3 * s:9.3f}" + (f"{1e3 * launch_by_op[op]:11.3f}" if sync else ""))
    print("slowest instructions:")
    for (op, label, shape), s in sorted(spent.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {label:<24}{shape:<24}{1e3 * s:8.2f} ms")


if __name__ == "__main__":
    main()
