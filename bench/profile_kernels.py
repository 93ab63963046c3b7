"""Where a product's time goes: a per-kernel profile of rgraph's calls of one entry.

    python bench/profile_kernels.py [--workload vgg-mini] [--entry gv] [--calls 5] [--top 12]

Times every instruction of the entry's calls in steady state (vector-stage buffers planned; for loss
and grad, binds into a released state's arrays, as in a training loop) and prints the time per op
kind and the slowest instructions. The workloads are those of bench/products.py.
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import rgraph as rg
import rgraph.program as program
from products import WORKLOADS, make_batch


def profile(prog, theta, batch, entry, calls):
    rng = np.random.default_rng(1)
    st = prog.bind(theta, batch)
    if entry in ("loss", "grad"):
        def call():
            s = prog.bind(theta, batch)
            return s.loss if entry == "loss" else s.grad
    else:
        seed = rng.standard_normal(st.output.shape if entry == "jtu" else prog.size).astype(prog.dtype)
        out = np.empty_like(st.output) if entry == "jv" else np.empty(prog.size, prog.dtype)
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
            t = time.perf_counter()
            vals[out_slot] = kernel(*[vals[i] for i in ins], **({} if buffers is None else {"out": buffers}))
            spent[(node.op.name, node.label, str(node.shape))] += time.perf_counter() - t
    plain, program._run = program._run, timed_run
    try:
        t = time.perf_counter()
        for _ in range(calls):
            call()
        total = (time.perf_counter() - t) / calls
    finally:
        program._run = plain
    return total, {key: s / calls for key, s in spent.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="vgg-mini", choices=sorted(WORKLOADS))
    ap.add_argument("--entry", default="gv", choices=["loss", "grad", "jv", "jtu", "gv", "hv"])
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    w = WORKLOADS[args.workload]()
    g = w["graph"]()
    prog = rg.compile(g, dtype="float32")
    total, spent = profile(prog, prog.init_params(seed=0), make_batch(g, w["batch"], np.random.default_rng(0)),
                           args.entry, args.calls)
    by_op = collections.defaultdict(float)
    for (op, _, _), s in spent.items():
        by_op[op] += s
    print(f"{w['name']}, batch {w['batch']}: {args.entry} {1e3 * total:.1f} ms per call, "
          f"kernels {1e3 * sum(spent.values()):.1f} ms")
    for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {op:<18}{1e3 * s:8.2f} ms")
    print("slowest instructions:")
    for (op, label, shape), s in sorted(spent.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {label:<24}{shape:<24}{1e3 * s:8.2f} ms")


if __name__ == "__main__":
    main()
