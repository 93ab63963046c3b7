"""The ``rgraph`` command: look at derived passes, their cost, and check and list ops.

    rgraph show mlp --pass hv -o hv.svg          draw a model's derived pass (SVG, PNG, PDF or .dot)
    rgraph show mlp --pass grad --text           print the pass as a listing instead
    rgraph cost mlp --batch 128                  GEMMs, FLOPs, bytes and peak memory per pass and stage
    rgraph check-op rgraph.ops:swish --shape 3,4 check an op's rules against finite differences
    rgraph ops                                   list the registered ops and where their rules come from
    rgraph train ...                             train a model (see rgraph train --help)

MODEL is a name from the model zoo (``rgraph.nn.MODELS``) or ``path/to/file.py:function`` (or
``package.module:function``) naming a function that returns an ``rgraph.Graph``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
import textwrap

PASS_NAMES = ("forward", "grad", "jv", "jtu", "gv", "hv")
COST_PASSES = ("forward", "grad", "jv", "jtu", "gv", "hv")


class UsageError(Exception):
    """A bad model, pass, op or option: printed as ``rgraph <command>: message`` with exit status 2."""


# --- models and objects by name ------------------------------------------------------------------

def zoo() -> dict:
    """The model zoo: ``rgraph.nn.MODELS``, or a small MLP when this build has no zoo."""
    from rgraph import nn
    models = getattr(nn, "MODELS", None)
    if models:
        return dict(models)
    return {"mlp": lambda **kw: nn.mlp([64, 32, 10], **kw)}


def load_object(spec: str, what: str = "object"):
    """``package.module:name`` or ``path/to/file.py:name`` -> the named object."""
    if ":" not in spec:
        raise UsageError(f"{what} {spec!r}: expected module:name or path/to/file.py:name")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not os.path.isfile(where):
            raise UsageError(f"{what} {spec!r}: no file {where!r}")
        mod_name = "_rgraph_user_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(where))
        loader_spec = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"{what} {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UsageError(f"{what} {spec!r}: cannot import module {where!r} ({e})") from e
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{what} {spec!r}: {where!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def build_model(spec: str, **options):
    """A Graph from a zoo name or ``file.py:function``; ``options`` (only those given) go to the builder."""
    from rgraph import Graph
    options = {k: v for k, v in options.items() if v is not None}
    if ":" in spec:
        builder = load_object(spec, "model")
        if not callable(builder):
            raise UsageError(f"model {spec!r} is not a function")
    else:
        models = zoo()
        if spec not in models:
            raise UsageError(f"unknown model {spec!r}; the zoo has {', '.join(sorted(models))}, "
                             f"or give path/to/file.py:function returning a Graph")
        builder = models[spec]
    try:
        graph = builder(**options)
    except TypeError as e:
        if options:
            raise UsageError(f"model {spec!r} does not take the options {sorted(options)}: {e}") from e
        raise UsageError(f"model {spec!r} could not be built: TypeError: {e}") from e
    except ValueError as e:   # ShapeError included: a model that does not fit its options
        raise UsageError(f"model {spec!r} could not be built: {type(e).__name__}: {e}") from e
    if not isinstance(graph, Graph):
        raise UsageError(f"model {spec!r} returned {type(graph).__name__}, not an rgraph.Graph")
    return graph


def _model_options(args) -> dict:
    return {"input_shape": args.input_shape, "num_classes": args.num_classes, "l2": args.l2}


def _shape(text: str) -> tuple:
    """'3,4' -> (3, 4); '' or 'scalar' -> ()."""
    text = text.strip().strip("()")
    if text in ("", "scalar"):
        return ()
    try:
        shape = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 3,4 (comma-separated integers), got {text!r}")
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return shape


def at_least(minimum):
    """An argparse type: an integer of at least ``minimum``, so that a bad count is a usage error, not a
    traceback later on or a run that silently does nothing."""
    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return integer


def _attr(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    if isinstance(value, list):
        value = tuple(value)
    return key, value


def _compile(graph, dtype):
    import rgraph as rg
    return rg.compile(graph, dtype=dtype)


# --- show ----------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    from rgraph import viz
    graph = build_model(args.model, **_model_options(args))
    if args.until:
        import rgraph as rg
        from rgraph.compiler import STAGE_NAMES
        stages = [s for s in STAGE_NAMES if s != "lower"]
        if args.until not in stages:
            raise UsageError(f"unknown stage {args.until!r}; stages are {', '.join(stages)}")
        target = rg.compile(graph, dtype=args.dtype, until=args.until)
    else:
        target = _compile(graph, args.dtype)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError(f"the folder of {args.output!r} does not exist")
    if args.text:
        listing = viz.text(target, args.pass_)
        if not args.output:
            print(listing)
            return 0
        with open(args.output, "w") as f:
            f.write(listing + "\n")
        print(f"wrote {args.output} ({graph.name}, {args.pass_} pass listing)")
        return 0
    if not args.output:
        raise UsageError("give an output file with -o FILE (.svg, .png, .pdf or .dot), or --text for a listing")
    try:
        viz.show(target, args.pass_, args.output, group=not args.no_group,
                 collapse={None: False, "chains": True, "layers": "layers"}[args.collapse])
    except viz.DotNotFound as e:
        raise UsageError(str(e)) from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"wrote {args.output} ({graph.name}, {args.pass_} pass)")
    return 0


# --- cost ----------------------------------------------------------------------------------------

def _si(x, unit=""):
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip() if isinstance(x, int) or float(x).is_integer() else f"{x:.3g} {unit}"


def cost_rows(prog, passes, batch):
    """[(pass, stage, stage cost dict, ratio to grad)] from ``prog.cost``; "forward" is the loss entry."""
    rows = []
    for name in passes:
        entry = "loss" if name == "forward" else name
        c = prog.cost(entry, batch_size=batch)
        stages = [s for s in ("batch", "vector") if s in c]
        if "vector" in stages and not any(c["vector"].get(k) for k in ("gemms", "flops", "bytes")):
            stages.remove("vector")   # the pass has no vector stage
        for stage in stages:
            rows.append((name, stage, c[stage], c.get("ratio_to_grad") if stage == stages[-1] else None))
    return rows


def cmd_cost(args) -> int:
    graph = build_model(args.model, **_model_options(args))
    prog = _compile(graph, args.dtype)
    passes = args.passes or COST_PASSES
    rows = cost_rows(prog, passes, args.batch)
    if args.json:
        print(json.dumps([{"pass": p, "stage": s, **c, "ratio_to_grad": r} for p, s, c, r in rows], indent=1))
        return 0
    print(f"{graph.name}: {prog.size:,} parameters, batch {args.batch}, {args.dtype}")
    print("batch stage: once per bind (theta, batch); vector stage: every product call (v or u)")
    print("ratio: FLOPs of one call (the vector stage; the whole pass where it has none) / FLOPs of a gradient")
    print("GEMMs: matrix products; calls: the GEMM calls they take (merged sums of two products are one)")
    header = f"{'pass':<8} {'stage':<7} {'GEMMs':>6} {'calls':>6} {'FLOPs':>12} {'bytes':>12} {'peak memory':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    last = None
    for name, stage, c, ratio in rows:
        shown = name if name != last else ""
        ratio_text = f"{ratio:.2f}" if (ratio is not None and ratio == ratio) else ""
        print(f"{shown:<8} {stage:<7} {c.get('gemms', 0):>6} {c.get('gemm_calls', 0):>6} {_si(c.get('flops', 0)):>12} "
              f"{_si(c.get('bytes', 0), 'B'):>12} {_si(c.get('peak_bytes', 0), 'B'):>12} {ratio_text:>7}")
        last = name
    return 0


# --- check-op ------------------------------------------------------------------------------------

def _arity(obj) -> int:
    params = getattr(obj, "params", None)
    if params is not None and hasattr(obj, "expr"):
        return len(params)
    fn = obj.infer if hasattr(obj, "infer") else obj
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()) and not positional:
        return 1
    return max(1, len(positional))


def cmd_check_op(args) -> int:
    import rgraph as rg
    from rgraph.errors import RgraphError
    obj = load_object(args.op, "op")
    if not callable(obj):
        raise UsageError(f"op {args.op!r} is a {type(obj).__name__}, not an op or a function building one")
    shapes = args.shape or [(3, 4)] * _arity(obj)
    attrs = dict(args.attr)
    try:
        report = rg.check_op(obj, *shapes, seed=args.seed, rtol=args.rtol, atol=args.atol,
                             second_order=not args.first_order, raise_on_fail=False, **attrs)
    except (RgraphError, TypeError, ValueError, NotImplementedError) as e:
        print(f"rgraph check-op: {args.op} on shapes {[tuple(s) for s in shapes]} could not be checked: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(report)
    if not report.rows:
        print("  (nothing to check: no float output or no float input)")
        return 0
    if report.ok:
        print(f"all {len(report.rows)} checks passed")
        return 0
    print(f"rgraph check-op: {args.op}: {len(report.failures())} of {len(report.rows)} checks FAILED: "
          + "; ".join(w for w, _, _ in report.failures()), file=sys.stderr)
    return 1


# --- ops -----------------------------------------------------------------------------------------

def rule_sources(op) -> tuple[str, str]:
    """Where an op's vjp and rop come from: hand-written, from its expression, multilinear, transposed vjp."""
    from rgraph.op import Elementwise, Op
    if isinstance(op, Elementwise):
        return ("expression (hand derivative)" if _has_override(op) else "from expression"), "from expression"
    cls = type(op)
    has_vjp = getattr(cls, "vjp", None) is not Op.vjp
    vjp = "hand-written" if has_vjp else "-"
    if getattr(cls, "rop", None) is not Op.rop:
        rop = "hand-written"
    elif op.linear_in:
        rop = f"multilinear in {tuple(op.linear_in)}" if len(op.linear_in) > 1 else "linear"
    elif has_vjp:
        rop = "transposed vjp"
    else:
        rop = "-"
    return vjp, rop


def _has_override(op):
    from rgraph import expr as ex
    derived = tuple(ex.diff(op.expr, p) for p in op.params)
    return derived != tuple(op.grads)


def _summary(op):
    doc = inspect.getdoc(type(op)) if type(op).__doc__ else None
    from rgraph.op import Elementwise
    if isinstance(op, Elementwise):
        from rgraph.expr import render
        return f"{', '.join(op.params)} -> {render(op.expr, 'numpy')}"
    return (doc or "").splitlines()[0] if doc else ""


def cmd_ops(args) -> int:
    import rgraph as rg
    rows = []
    for name in sorted(rg.REGISTRY):
        op = rg.REGISTRY[name]
        vjp, rop = rule_sources(op)
        rows.append((name, getattr(op, "kind", "primitive"), vjp, rop, _summary(op)))
    if args.json:
        print(json.dumps([dict(zip(("name", "kind", "vjp", "rop", "summary"), r)) for r in rows], indent=1))
        return 0
    w = [max(len(r[k]) for r in rows + [("op", "kind", "vjp", "rop", "")]) for k in range(4)]
    print(f"{'op':<{w[0]}}  {'kind':<{w[1]}}  {'vjp':<{w[2]}}  {'rop':<{w[3]}}  what")
    print("-" * (sum(w) + 14))
    for name, kind, vjp, rop, summary in rows:
        line = f"{name:<{w[0]}}  {kind:<{w[1]}}  {vjp:<{w[2]}}  {rop:<{w[3]}}  {summary}"
        print(line if args.wide else line[:150])
    print(f"\n{len(rows)} ops. vjp/rop: hand-written in the op class; 'from expression' derived symbolically from an "
          "elementwise op's scalar expression; 'multilinear'/'linear' from linear_in; 'transposed vjp' is the "
          "VJP of the VJP (two-VJP construction); '-' none (not differentiable).")
    return 0


# --- train (owned by the training module, loaded lazily) -----------------------------------------

def cmd_train(argv) -> int:
    try:
        from rgraph.train import add_arguments, run
    except ImportError as e:
        if "rgraph.train" in str(e) or getattr(e, "name", None) == "rgraph.train":
            print("rgraph train: this build of rgraph has no training module (rgraph/train.py) yet", file=sys.stderr)
        else:
            print(f"rgraph train: the training module could not be imported: {e}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="rgraph train", description="Train a model with an optimiser.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return int(run(p.parse_args(argv)) or 0)


# --- the parser ----------------------------------------------------------------------------------

EXAMPLES = {
    "show": """examples:
  rgraph show mlp --pass hv -o hv.svg           the Hessian-vector pass of the zoo's MLP
  rgraph show vgg11 --pass gv -o gv.svg --collapse layers   one box per layer, tag and stage
  rgraph show mlp --pass grad --text            a text listing instead of a drawing
  rgraph show mlp --pass hv --until cse -o hv_cse.svg   the pass after the cse stage
  rgraph show my_net.py:build --pass jv -o jv.pdf       your own model (a function returning a Graph)
""",
    "cost": """examples:
  rgraph cost mlp --batch 128
  rgraph cost vgg11 --batch 128 --dtype float32
  rgraph cost mlp --batch 64 --pass gv --pass hv --json
""",
    "check-op": """examples:
  rgraph check-op rgraph.ops:swish --shape 3,4
  rgraph check-op rgraph.ops:matmul --shape 3,4 --shape 4,5
  rgraph check-op rgraph.ops:sum --shape 3,4 --attr axis=1
  rgraph check-op my_ops.py:gelu --shape 5          an op (or a function building one) from a file
exit status: 0 when every check passes, 1 when one fails, 2 for a bad op name or option.
""",
    "ops": """examples:
  rgraph ops
  rgraph ops --json
""",
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgraph", description=__doc__.split("\n\n")[0].strip(),
                                epilog="commands:\n" + "\n\n".join(__doc__.split("\n\n")[1:]).strip("\n"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from rgraph import __version__
    p.add_argument("--version", action="version", version=f"rgraph {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def model_args(q):
        q.add_argument("model", metavar="MODEL", help="zoo name (" + ", ".join(sorted(zoo()))
                       + ") or path/to/file.py:function returning a Graph")
        q.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="default %(default)s")
        q.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="input shape for zoo models (no batch axis)")
        q.add_argument("--num-classes", type=at_least(1), help="number of classes for zoo models")
        q.add_argument("--l2", type=float, help="l2 coefficient for zoo models")

    fmt = argparse.RawDescriptionHelpFormatter

    def command(name, description, **kw):
        return sub.add_parser(name, description=textwrap.fill(description, 88), formatter_class=fmt, **kw)

    q = command("show", help="draw a model's derived pass", epilog=EXAMPLES["show"],
                description="Draw a derived pass of MODEL with graphviz: colours are pass tags, the batch "
                            "and vector stages are clusters, fused kernels are clusters listing their "
                            "expressions. The format follows the suffix of FILE (.svg, .png, .pdf; .dot "
                            "writes the source and needs no graphviz binary).")
    model_args(q)
    q.add_argument("--pass", dest="pass_", default="hv", metavar="PASS",
                   help=f"one of {', '.join(PASS_NAMES)} (default %(default)s)")
    q.add_argument("-o", "--output", metavar="FILE", help="where to write the drawing (or, with --text, the listing)")
    q.add_argument("--text", action="store_true", help="print a listing (one line per instruction) instead")
    q.add_argument("--collapse", nargs="?", const="chains", choices=["chains", "layers"],
                   help="chains (the default when given): fold elementwise and shape-op chains into single boxes; "
                        "layers: one box per layer, pass tag and stage (for big networks)")
    q.add_argument("--no-group", action="store_true", help="do not cluster nodes by layer (parameter-name prefix)")
    q.add_argument("--until", metavar="STAGE", help="draw the module after this compiler stage (e.g. derive, cse)")
    q.set_defaults(run=cmd_show)

    q = command("cost", help="print the cost table of a model's passes",
                epilog=EXAMPLES["cost"],
                description="Per pass and stage: GEMMs, FLOPs, bytes moved and peak memory of one call, and "
                            "the ratio of a call's FLOPs to a gradient's (from Program.cost).")
    model_args(q)
    q.add_argument("--batch", type=at_least(1), default=128, metavar="N", help="batch size (default %(default)s)")
    q.add_argument("--pass", dest="passes", action="append", metavar="PASS",
                   help=f"only these passes (repeatable; default all of {', '.join(COST_PASSES)})")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(run=cmd_cost)

    q = command("check-op", help="check an op's rules against finite differences",
                epilog=EXAMPLES["check-op"],
                description="Run rg.check_op on OP (module:name or path/to/file.py:name: an op, or a function "
                            "of Values building one): VJP and R-op against central differences in float64, "
                            "the R-op against the one derived through two VJPs, the dot test "
                            "<u, Jv> = <J^T u, v>, and the second-order pass.")
    q.add_argument("op", metavar="OP", help="module:name or path/to/file.py:name")
    q.add_argument("--shape", type=_shape, action="append", metavar="D1,D2",
                   help="shape of the next input (repeat once per input; default 3,4 for each)")
    q.add_argument("--attr", type=_attr, action="append", default=[], metavar="KEY=VALUE",
                   help="an attribute passed to the op (JSON values: axis=1, axes=[0,2])")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--rtol", type=float, default=1e-6)
    q.add_argument("--atol", type=float, default=1e-8)
    q.add_argument("--first-order", action="store_true", help="skip the second-order check")
    q.set_defaults(run=cmd_check_op)

    q = command("ops", help="list registered ops and where their rules come from",
                epilog=EXAMPLES["ops"],
                description="List rg.REGISTRY: each op's kind and whether its vjp and rop are hand-written, "
                            "derived from a scalar expression, from a multilinear declaration, or by "
                            "transposing the vjp.")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--wide", action="store_true", help="do not cut long lines")
    q.set_defaults(run=cmd_ops)

    sub.add_parser("train", help="train a model (see rgraph train --help)", add_help=False)
    return p


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:   # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    parser = make_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "pass_", None) is not None and args.pass_ not in PASS_NAMES:
        parser.exit(2, f"rgraph {args.command}: unknown pass {args.pass_!r}; passes are {', '.join(PASS_NAMES)}\n")
    for name in getattr(args, "passes", None) or ():
        if name not in COST_PASSES:
            parser.exit(2, f"rgraph {args.command}: unknown pass {name!r}; passes are {', '.join(COST_PASSES)}\n")
    try:
        return args.run(args)
    except UsageError as e:
        print(f"rgraph {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # errors from building or compiling a user's model: one clear line, not a traceback
        from rgraph.errors import RgraphError
        if isinstance(e, RgraphError):
            print(f"rgraph {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
