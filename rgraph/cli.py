"""The ``rgraph`` command.

    rgraph train                                  train the default small CNN on digits with FITRE
    rgraph show vgg11 --pass hv -o hv.svg         draw a model's derived pass
    rgraph cost vgg11 --batch 128                 GEMMs, FLOPs, bytes and peak memory per pass and stage
    rgraph check-op mymodule:my_op --shape 3,4    run the rule checker on your op
    rgraph ops                                    list the registered ops and their rules
"""
from __future__ import annotations

import argparse
import importlib
import sys

PASSES = {"forward": "loss", "grad": "grad", "jv": "jv", "jtu": "jtu", "gv": "gv", "hv": "hv"}
MODEL_HELP = "a zoo name (mlp, small_cnn, vgg11, vgg16, vgg19) or path/to/file.py:function returning a Graph"


def _model(spec):
    from .nn import MODELS
    from .train import build_model
    if spec in MODELS:
        return MODELS[spec]()
    return build_model(spec, None, None, 0.0)


def cmd_show(args):
    from .compiler import compile
    prog = compile(_model(args.model))
    prog.show(PASSES[args.pass_name], args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_cost(args):
    from .compiler import compile
    prog = compile(_model(args.model), dtype=args.dtype)
    print(f"{prog.graph.name}: {prog.size:,} parameters, batch {args.batch}, {args.dtype}")
    print(f"{'pass':<6} {'stage':<7} {'GEMMs':>6} {'GFLOP':>10} {'MB moved':>10} {'peak MB':>9} {'x grad':>7}")
    for name, entry in PASSES.items():
        c = prog.cost(entry, batch_size=args.batch)
        for stage in ("batch", "vector"):
            s = c[stage]
            if stage == "vector" and not s["gemms"] and not s["flops"]:
                continue
            ratio = f"{c['ratio_to_grad']:.2f}" if stage == ("vector" if c["vector"]["flops"] else "batch") else ""
            print(f"{name:<6} {stage:<7} {s['gemms']:>6} {s['flops'] / 1e9:>10.3f} {s['bytes'] / 2**20:>10.1f} "
                  f"{s['peak_bytes'] / 2**20:>9.1f} {ratio:>7}")
    return 0


def cmd_check_op(args):
    import numpy as np
    from .check import check_op
    module_name, _, name = args.op.partition(":")
    if not name:
        print(f"rgraph check-op: expected module:name, got {args.op!r}", file=sys.stderr)
        return 2
    sys.path.insert(0, ".")
    try:
        op = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        print(f"rgraph check-op: cannot load {args.op!r}: {e}", file=sys.stderr)
        return 2
    shapes = [tuple(int(d) for d in s.split(",")) for s in args.shape] if args.shape else None
    if shapes is None:
        nin = len(getattr(op, "params", ()))
        if not nin:
            print(f"rgraph check-op: give one --shape per input of {args.op!r}", file=sys.stderr)
            return 2
        shapes = [(3, 4)] * nin
    inputs = [np.abs(np.random.default_rng(k).standard_normal(s)) + 0.5 if args.positive else s
              for k, s in enumerate(shapes)]
    report = check_op(op, *inputs, seed=args.seed, raise_on_fail=False)
    print(report)
    return 0 if report.ok else 1


def rule_sources(op):
    """How an op gets its vjp and rop: hand-written, from its expression, multilinear or transposed."""
    from .op import Elementwise, Op
    if isinstance(op, Elementwise):
        return "expression", "expression"
    vjp = "hand" if type(op).vjp is not Op.vjp else "none"
    if type(op).rop is not Op.rop:
        rop = "hand"
    elif op.linear_in:
        rop = "multilinear"
    else:
        rop = "transposed vjp" if vjp == "hand" else "none"
    return vjp, rop


def cmd_ops(args):
    from rgraph import REGISTRY
    print(f"{'op':<18} {'kind':<12} {'vjp':<11} {'rop':<15}")
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        vjp, rop = rule_sources(op)
        print(f"{name:<18} {op.kind:<12} {vjp:<11} {rop:<15}")
    return 0


def cmd_train(args):
    from .train import run
    return run(args)


def parser():
    from .train import add_arguments
    p = argparse.ArgumentParser(prog="rgraph", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="train a model", description="Train a model with a second-order or first-order "
                       "optimiser.\n\nexamples:\n  rgraph train\n  rgraph train --optimizer newton-cg --epochs 20\n"
                       "  rgraph train --model mlp --optimizer sgd --lr 0.05 --out runs/sgd\n"
                       "  rgraph train --resume --out runs/sgd --epochs 30",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(t)
    t.set_defaults(run=cmd_train)
    s = sub.add_parser("show", help="draw a derived pass", description="Draw a model's derived pass with graphviz."
                       "\n\nexamples:\n  rgraph show mlp --pass hv -o hv.svg\n  rgraph show vgg11 --pass gv -o gv.pdf",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help=MODEL_HELP)
    s.add_argument("--pass", dest="pass_name", default="hv", choices=sorted(PASSES), help="default %(default)s")
    s.add_argument("-o", "--output", required=True, help="output file: .svg, .png, .pdf or .dot")
    s.set_defaults(run=cmd_show)
    c = sub.add_parser("cost", help="print the cost table", description="GEMMs, FLOPs, bytes and peak memory per "
                       "pass and stage.\n\nexamples:\n  rgraph cost vgg11 --batch 128\n  rgraph cost mlp --dtype float64",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("model", help=MODEL_HELP)
    c.add_argument("--batch", type=int, default=128)
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    c.set_defaults(run=cmd_cost)
    k = sub.add_parser("check-op", help="check an op's rules numerically", description="Check an op's VJP, R-op and "
                       "second-order rules against finite differences (float64).\n\nexamples:\n"
                       "  rgraph check-op rgraph.ops:swish\n  rgraph check-op mymodule:my_op --shape 3,4 --shape 4\n"
                       "  rgraph check-op rgraph.ops:log --positive",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("op", help="module:name of an op (or a builder function)")
    k.add_argument("--shape", action="append", help="shape of one input, e.g. 3,4 (repeat per input)")
    k.add_argument("--positive", action="store_true", help="draw inputs in [0.5, inf) (for log, sqrt, ...)")
    k.add_argument("--seed", type=int, default=0)
    k.set_defaults(run=cmd_check_op)
    o = sub.add_parser("ops", help="list registered ops and their rules")
    o.set_defaults(run=cmd_ops)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "run", None):
        p.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, RuntimeError) as e:
        print(f"rgraph {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
