"""Drawings and text listings of graphs and of the passes the compiler derives.

    import rgraph as rg
    prog = rg.compile(rg.nn.mlp([4, 8, 3]))
    print(prog.text("hv"))              # one line per instruction, in execution order (like a jaxpr)
    prog.show("hv", "hv.svg")           # SVG, PNG or PDF by the suffix (needs graphviz's `dot`)
    dot = rg.viz.to_dot(prog, "hv")     # the graphviz.Digraph itself; dot.source is the text

What a drawing shows:
* one fill colour per pass tag (forward, backward, rforward, rbackward, gn), with a legend;
* leaves by shape: parameters are boxes, data inputs parallelograms, constants plain text, the
  tangent seed v a diamond and the cotangent seed u an inverted triangle;
* for a program or a staged module: the batch stage (computed once per bind) and the vector stage
  (run on every product call) as two clusters; inside them, a layer's nodes grouped by the name
  prefix of the parameters they read (``fc0.W`` -> ``fc0``); each fused kernel as a cluster whose
  label lists its scalar expressions;
* shapes on edges (for graphs of more than ``LARGE`` nodes, in the node labels instead: dot lays out
  labelled edges slowly).

Everything is ordered by creation index, and node names in the dot source are positions in that
order, so the same program always gives the same text.
"""
from __future__ import annotations

import os
import shutil

from .errors import RgraphError, fmt_shape
from .graph import CONST, COTANGENT, INPUT, PARAM, TANGENT, Graph, Value, topo_order

TAGS = ("forward", "backward", "rforward", "rbackward", "gn")
TAG_COLOURS = {"forward": "#4C72B0", "backward": "#DD8452", "rforward": "#55A868", "rbackward": "#C44E52",
               "gn": "#8172B3"}
LEAF_STYLES = {  # kind -> graphviz node attributes
    "param": {"shape": "box", "style": "filled", "fillcolor": "#FFF2B3", "color": "#B8A040"},
    "input": {"shape": "parallelogram", "style": "filled", "fillcolor": "#E4E4E4", "color": "#888888"},
    "const": {"shape": "plaintext", "fontcolor": "#555555", "fontsize": "9"},
    "tangent": {"shape": "diamond", "style": "filled", "fillcolor": "#F7C6D9", "color": "#B0507A"},
    "cotangent": {"shape": "invtriangle", "style": "filled", "fillcolor": "#D9C6F7", "color": "#7050B0"},
}
LEAF_NAMES = {"param": "parameter", "input": "data", "const": "constant", "tangent": "seed v", "cotangent": "seed u"}
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
# Passes by the names the command line uses: "forward" is the loss and the network output together.
PASSES = {"forward": ("loss", "output"), "grad": ("grad",), "jv": ("jv",), "jtu": ("jtu",), "gv": ("gv",),
          "hv": ("hv",)}
LARGE = 300         # nodes; beyond this, shapes move from edge labels into node labels
SHAPE_OPS = ("reshape", "broadcast_to", "transpose", "pick")   # collapse=True folds these into chains
EXPR_WIDTH = 90     # characters of a fused kernel's expression shown in its cluster label


class DotNotFound(RgraphError, RuntimeError):
    """graphviz's ``dot`` program is needed to render a drawing and is not installed."""


# --- what to draw --------------------------------------------------------------------------------

class _View:
    """The nodes of one entry (or of a graph's forward pass): execution order, stages, outputs."""

    def __init__(self, obj, entry=None):
        self.entry = entry
        self.program = None
        if isinstance(obj, Graph):
            if entry not in (None, "forward"):
                raise ValueError(f"a Graph has only its forward pass; compile it (rg.compile) to see {entry!r}")
            outs = [v for v in (obj.loss, obj.z) if v is not None]
            if not outs:
                raise ValueError(f"graph {obj.name!r} has no output and no loss to draw")
            self.name, self.entry = obj.name, "forward"
            self.order, self.vector, self.outputs = topo_order(outs), None, outs
            self.named_outputs = [(k, v) for k, v in (("loss", obj.loss), ("z", obj.z)) if v is not None]
            return
        if isinstance(obj, Value):
            self.name, self.entry = obj.label, entry or "value"
            self.order, self.vector, self.outputs = topo_order([obj]), None, [obj]
            self.named_outputs = [(obj.label, obj)]
            return
        module = getattr(obj, "module", obj)
        if not hasattr(module, "entries"):
            raise TypeError(f"cannot draw a {type(obj).__name__}; pass a Graph, a Program or a compiled Module")
        self.program = obj if hasattr(obj, "_plans") else None
        entry = entry or "hv"
        names = PASSES.get(entry, (entry,))
        unknown = [e for e in names if e not in module.entries]
        if unknown:
            known = sorted(set(module.entries) | set(PASSES))
            raise ValueError(f"unknown pass {entry!r}; passes are {known}")
        self.name = getattr(module.graph, "name", "graph")
        self.outputs = _unique(v for e in names for v in module.entries[e] if v is not None)
        self.named_outputs = []
        params = getattr(getattr(module, "passes", None), "params", None)
        for e in names:
            outs = module.entries[e]
            if params is not None and len(outs) == len(params) and e in ("grad", "jtu", "gv", "hv"):
                labels = [p.name for p in params]
            else:
                labels = [{"output": "z"}.get(e, e)] if len(outs) == 1 else [f"{e}[{k}]" for k in range(len(outs))]
            self.named_outputs += list(zip(labels, outs, strict=True))
        staged = "stage" in getattr(module, "history", ["stage"])
        self.vector = set(module.vector) if staged else None
        if self.program is not None:   # execution order: the program's plans
            steps = _unique(n for e in names for part in self.program._plans[e] for n in part)
            leaves = sorted({i for n in steps for i in n.inputs if i.is_leaf}
                            | {o for o in self.outputs if o.is_leaf}, key=lambda v: v.id)
            self.order = leaves + steps
        else:
            self.order = topo_order(self.outputs)

    @property
    def nodes(self):
        """Every node, by creation index (the order drawings use)."""
        return sorted(self.order, key=lambda v: v.id)

    def stage_of(self, node):
        if node.is_leaf or self.vector is None:
            return None
        return "vector" if node in self.vector else "batch"


def _unique(items):
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def leaf_kind(node) -> str | None:
    """"param", "input", "const", "tangent", "cotangent", or None for an instruction."""
    for leaf_op in (PARAM, INPUT, CONST, TANGENT, COTANGENT):
        if node.op is leaf_op:
            return leaf_op.kind
    return None


def is_fused(node) -> bool:
    return getattr(node.op, "kind", None) == "fused"


def kernel_lines(op, width=None) -> list[str]:
    """A fused kernel's expressions, one ``out<k> = ...`` line per output (over its params in0, in1...)."""
    from .expr import render
    lines = []
    for k, e in enumerate(getattr(op, "exprs", ())):
        try:
            body = render(e, "numpy")
        except Exception:   # a kernel holding a primitive the printer lacks: fall back to its source
            body = op.source("numexpr")
        line = f"out{k} = {body}"
        if width and len(line) > width:
            line = line[:width - 3] + "..."
        lines.append(line)
    return lines


def _const_text(node):
    value = node.attrs.get("value")
    if value is None:
        return "const"
    if value.size == 1:
        return f"{value.item():.4g}"
    return f"const{fmt_shape(value.shape)}"


def layer_of(nodes) -> dict:
    """Group nodes into layers by the name prefix of the parameters they read (``conv3.W`` -> ``conv3``).

    A node reading a parameter (or its tangent ``v[conv3.W]``) belongs to that parameter's layer. Other
    nodes inherit from their inputs: forward-flowing passes (forward, rforward) from the latest layer
    among them, reverse-flowing passes (backward, rbackward, gn) from the earliest, so an activation
    joins the layer before it and a backward activation derivative the layer it differentiates.
    Parameters without a ``.`` in their name give no grouping.
    """
    rank, layer = {}, {}
    for node in nodes:
        if not node.is_leaf:
            continue
        name = node.name or ""
        if node.op is TANGENT and name.startswith("v[") and name.endswith("]"):
            name = name[2:-1]
        if node.op in (PARAM, TANGENT) and "." in name:
            prefix = name.rsplit(".", 1)[0]
            layer[node] = prefix
            rank.setdefault(prefix, len(rank))
    if not rank:
        return {}
    for node in sorted(nodes, key=lambda v: v.id):
        if node.is_leaf:
            continue
        direct = [layer[i] for i in node.inputs if i.is_leaf and i in layer]
        if direct:
            layer[node] = min(direct, key=rank.get)
            continue
        inherited = [layer[i] for i in node.inputs if i in layer and not i.is_leaf]
        if inherited:
            pick = min if node.tag in ("backward", "rbackward", "gn") else max
            layer[node] = pick(inherited, key=rank.get)
    return {n: p for n, p in layer.items() if not n.is_leaf}


def collapse_groups(view: _View) -> dict:
    """Chains of elementwise (and shape) ops folded into one box: node -> the chain's first node.

    A node joins its producer's chain when both are elementwise or shape ops of the same tag and stage
    and the producer has no other reader, so folding never creates a cycle.
    """
    nodes = [n for n in view.nodes if not n.is_leaf]
    readers = {}
    for n in nodes:
        for i in set(n.inputs):
            readers.setdefault(i, []).append(n)
    outputs = set(view.outputs)

    def foldable(n):
        return getattr(n.op, "kind", None) == "elementwise" or n.op.name in SHAPE_OPS

    head = {}
    for n in nodes:
        head[n] = n
        if not foldable(n):
            continue
        for i in n.inputs:
            if (i in head and foldable(i) and i.tag == n.tag and view.stage_of(i) == view.stage_of(n)
                    and len(readers.get(i, ())) == 1 and i not in outputs):
                head[n] = head[i]
                break
    return head


def layer_groups(view: _View, layers: dict) -> dict:
    """One box per (layer, tag, stage): node -> the group's first node. Nodes outside layers stay alone."""
    head, first = {}, {}
    for n in view.nodes:
        if n.is_leaf:
            continue
        key = (layers.get(n), n.tag, view.stage_of(n))
        head[n] = first.setdefault(key, n) if key[0] is not None else n
    return head


# --- drawing -------------------------------------------------------------------------------------

def to_dot(obj, entry=None, *, collapse=False, group=True, edge_shapes=None, title=None, legend=True):
    """A ``graphviz.Digraph`` of ``entry`` of a Program or compiled Module, or of a Graph's forward pass.

        >>> import rgraph as rg
        >>> prog = rg.compile(rg.nn.mlp([4, 8, 3]))
        >>> dot = to_dot(prog, "hv")
        >>> "cluster_vector" in dot.source
        True

    ``entry``: a pass name (forward, grad, jv, jtu, gv, hv) or any entry of the module (loss, output,
    taps); default hv. ``collapse``: True folds elementwise and shape-op chains into single boxes;
    "layers" draws one box per layer, pass tag and stage (a VGG's hv pass in a few dozen boxes).
    ``group``: cluster a layer's nodes by parameter-name prefix. ``edge_shapes``: shapes on edges
    (default: up to ``LARGE`` nodes; beyond, shapes go into node labels and the layout effort is
    bounded). ``legend``: the tag and leaf legend.
    """
    import graphviz
    if collapse not in (False, True, "layers"):
        raise ValueError(f"collapse must be False, True or 'layers', got {collapse!r}")
    drawing = _Drawing(_View(obj, entry), collapse, group, edge_shapes)
    view = drawing.view
    name = title or f"{view.name} {view.entry}"
    dot = graphviz.Digraph(
        name=_ident(name),
        graph_attr={"rankdir": "TB", "label": name, "labelloc": "t", "fontname": "Helvetica", "fontsize": "14",
                    "newrank": "true", **({"nslimit": "2", "mclimit": "0.5"} if drawing.large else {})},
        node_attr={"fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#888888", "arrowsize": "0.6"})
    drawing.stages(dot)
    for n in view.nodes:
        if n.is_leaf:
            drawing.node(dot, n)
    drawing.edges(dot)
    if legend:
        _legend(dot, view.nodes)
    return dot


class _Drawing:
    """One drawing of a view: which box each node goes in (``head``: a box's first node; ``chains``: the
    nodes it holds), and the methods that add boxes, kernel clusters, layer clusters and edges."""

    def __init__(self, view, collapse, group, edge_shapes):
        self.view, self.collapse = view, collapse
        nodes = view.nodes
        self.index = {n: k for k, n in enumerate(nodes)}
        self.layers = layer_of(nodes) if (group or collapse == "layers") else {}
        if collapse == "layers":
            self.head = layer_groups(view, self.layers)
        elif collapse:
            self.head = collapse_groups(view)
        else:
            self.head = {n: n for n in nodes if not n.is_leaf}
        self.chains = {}
        for n in nodes:
            if n in self.head:
                self.chains.setdefault(self.head[n], []).append(n)
        boxes = [n for n in nodes if n.is_leaf or self.head.get(n) is n]
        self.large = len(boxes) > LARGE
        self.edge_shapes = (not self.large) if edge_shapes is None else edge_shapes
        self.outputs = set(view.outputs)
        self.instrs = [n for n in boxes if not n.is_leaf]
        self.picks = {}
        for n in self.instrs:   # a multi-output kernel's "pick" nodes sit in the kernel's cluster
            k = n.inputs[0] if n.inputs else None
            if n.op.name == "pick" and k is not None and is_fused(k) and len(self.chains[n]) == 1 \
                    and len(self.chains.get(k, ())) == 1:
                self.picks.setdefault(k, []).append(n)
        self.picked = {p for ps in self.picks.values() for p in ps}

    def nid(self, n):
        return f"n{self.index[self.head.get(n, n)]}"

    def stages(self, dot):
        """The instructions, in a cluster per stage where the view has stages."""
        if self.view.vector is None:
            self.by_layer(dot, self.instrs, "all")
            return
        for stage, caption in (("batch", "batch stage: once per bind"), ("vector", "vector stage: every call")):
            members = [n for n in self.instrs if self.view.stage_of(n) == stage]
            if members:
                with dot.subgraph(name=f"cluster_{stage}") as sub:
                    sub.attr(label=caption, style="rounded,dashed", color="#777777", fontcolor="#444444",
                             fontsize="12")
                    self.by_layer(sub, members, stage)

    def by_layer(self, g, members, prefix):
        by_layer = {}
        for n in members:
            by_layer.setdefault(self.layers.get(n), []).append(n)
        for layer, ms in by_layer.items():
            if layer is None:
                self.boxes(g, ms)
            else:
                with g.subgraph(name=f"cluster_{prefix}_layer_{_ident(layer)}") as sub:
                    sub.attr(label=layer, style="rounded", color="#CCCCCC", fontcolor="#666666", fontsize="10")
                    self.boxes(sub, ms)

    def boxes(self, g, members):
        for n in members:
            if n in self.picked:
                continue
            if is_fused(n) and len(self.chains[n]) == 1:
                self.kernel(g, n)
            else:
                self.node(g, n)

    def kernel(self, g, n):
        """A fused kernel's node and its picks in a cluster labelled with the kernel's statements."""
        with g.subgraph(name=f"cluster_kernel_{self.index[n]}") as k:
            lines = [f"{n.op.name}"] + kernel_lines(n.op, EXPR_WIDTH)
            k.attr(label="\\l".join(_escape(x) for x in lines) + "\\l", labeljust="l", style="rounded,filled",
                   fillcolor="#F2F2F2", color="#999999", fontname="Courier", fontsize="8")
            self.node(k, n)
            for p in self.picks.get(n, []):
                self.node(k, p)

    def node(self, g, n):
        kind = leaf_kind(n)
        if kind is not None:
            label = _const_text(n) if kind == "const" else n.name
            if not self.edge_shapes and kind != "const":
                label += f"\\n{fmt_shape(n.shape)}"
            g.node(self.nid(n), label, tooltip=f"{n.name or 'constant'}: {n.type} ({LEAF_NAMES[kind]})",
                   **LEAF_STYLES[kind])
            return
        members = self.chains[n]
        colour = TAG_COLOURS.get(n.tag, "#999999")
        last = members[-1]
        label = self.label(n, members)
        if not self.edge_shapes:
            label += f"\\n{fmt_shape(last.shape)}"
        attrs = {"shape": "box" if len(members) > 1 else "ellipse", "style": "filled,rounded" if len(members) > 1
                 else "filled", "fillcolor": colour, "fontcolor": "white", "color": colour,
                 "tooltip": f"{last.op.name}: {last.type} [{n.tag}]"}
        if any(m in self.outputs for m in members):
            attrs.update(peripheries="2", color="black")
        g.node(self.nid(n), label, **attrs)

    def label(self, n, members):
        if len(members) == 1:
            return n.op.name
        if self.collapse == "layers":
            gemms = sum(getattr(m.op, "kind", None) == "gemm" for m in members)
            return f"{self.layers.get(n, '')} {n.tag}\\n{len(members)} ops" + (f", {gemms} GEMMs" if gemms else "")
        return " > ".join(m.op.name for m in members[:4]) + (" > ..." if len(members) > 4 else "") \
            + f"\\n({len(members)} ops)"

    def edges(self, dot):
        drawn = set()
        for n in self.view.nodes:
            if n.is_leaf:
                continue
            for i in n.inputs:
                a, b = self.nid(i), self.nid(n)
                if a != b and (a, b) not in drawn:
                    drawn.add((a, b))
                    dot.edge(a, b, **({"label": fmt_shape(i.shape)} if self.edge_shapes else {}))


def _legend(dot, nodes):
    tags = [t for t in TAGS if any(n.tag == t and not n.is_leaf for n in nodes)]
    kinds = [k for k in LEAF_STYLES if any(leaf_kind(n) == k for n in nodes)]
    with dot.subgraph(name="cluster_legend") as g:
        g.attr(label="legend", style="rounded", color="#CCCCCC", fontcolor="#666666", fontsize="10")
        names = []
        for t in tags:
            g.node(f"legend_{t}", t, shape="ellipse", style="filled", fillcolor=TAG_COLOURS[t], fontcolor="white",
                   color=TAG_COLOURS[t])
            names.append(f"legend_{t}")
        for k in kinds:
            g.node(f"legend_{k}", LEAF_NAMES[k], **LEAF_STYLES[k])
            names.append(f"legend_{k}")
        for a, b in zip(names, names[1:]):
            g.edge(a, b, style="invis")


def _ident(text):
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(text))


def _escape(text):
    return text.replace("\\", "\\\\").replace('"', "'")


def show(obj, entry, path, **options):
    """Draw ``entry`` to ``path``: SVG, PNG or PDF by the suffix (``.dot``/``.gv`` write the dot source).

    Rendering needs graphviz's ``dot`` program (Debian/Ubuntu: ``apt-get install graphviz``); without it
    this raises ``DotNotFound`` (a ``.dot`` file can still be written and rendered elsewhere).
    ``options`` go to ``to_dot``. Returns ``path``.
    """
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its suffix; use one of {sorted(FORMATS)}")
    dot = to_dot(obj, entry, **options)
    if FORMATS[suffix] == "dot":
        with open(path, "w") as f:
            f.write(dot.source)
        return path
    if shutil.which("dot") is None:
        raise DotNotFound(f"drawing {str(path)!r} needs graphviz's `dot` program, which is not on PATH "
                          f"(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz); "
                          f"or write a .dot file and render it elsewhere")
    data = dot.pipe(format=FORMATS[suffix])
    with open(path, "wb") as f:
        f.write(data)
    return path


# --- text listing --------------------------------------------------------------------------------

def text(obj, entry=None) -> str:
    """A listing of ``entry``, one line per instruction in execution order, in the spirit of a jaxpr.

        >>> import rgraph as rg
        >>> print(rg.compile(rg.nn.mlp([4, 8, 3])).text("grad"))   # doctest: +SKIP
        # mlp grad: 25 instructions (batch stage 25, vector stage 0)
        ...
          %0 = matmul(x, fc0.W)          float(N, 8)    forward   batch

    Each line: the output name (``%k``), the op with its inputs and attributes, the output type, the
    pass tag and the stage (batch: once per bind; vector: every product call). A fused kernel's line is
    followed by its scalar expressions. Leaves are listed first with their kind; outputs last.
    """
    view = _View(obj, entry)
    names, consts = {}, 0
    for n in view.order:
        if n.is_leaf:
            if n.op is CONST:
                names[n] = f"c{consts}"
                consts += 1
            else:
                names[n] = n.name
    steps = [n for n in view.order if not n.is_leaf]
    for k, n in enumerate(steps):
        names[n] = f"%{k}"
    stages = [view.stage_of(n) for n in steps]
    counts = ", ".join(f"{s} stage {stages.count(s)}" for s in ("batch", "vector")) if view.vector is not None else ""
    lines = [f"# {view.name} {view.entry}: {len(steps)} instructions" + (f" ({counts})" if counts else "")]
    leaves = [n for n in view.order if n.is_leaf]
    if leaves:
        lines.append("leaves:")
        width = max(len(names[n]) for n in leaves)
        for n in leaves:
            kind = leaf_kind(n)
            extra = f" = {_const_text(n)}" if kind == "const" else ""
            lines.append(f"  {names[n]:<{width}}  {LEAF_NAMES[kind]:<9}  {n.type}{extra}")
    calls = [_call(n, names) for n in steps]
    cw = min(max((len(c) for c in calls), default=0), 64)
    tw = max((len(str(n.type)) for n in steps), default=0)
    nw = max((len(names[n]) for n in steps), default=0)
    if steps:
        lines.append("instructions:")
    for n, call, stage in zip(steps, calls, stages, strict=True):
        row = f"  {names[n]:>{nw}} = {call:<{cw}}  {str(n.type):<{tw}}  {n.tag:<9}"
        if stage:
            row += f"  {stage}"
        lines.append(row.rstrip())
        if is_fused(n):
            for line in kernel_lines(n.op):
                lines.append(f"  {'':>{nw}}   | {line}")
    lines.append("outputs: " + ", ".join(f"{label}={'0' if o is None else names.get(o, o.label)}"
                                          for label, o in view.named_outputs))
    return "\n".join(lines)


def _call(n, names):
    args = [names.get(i, i.label) for i in n.inputs]
    for k, v in n.attrs.items():
        if k == "dtype" or v is None or v is False or (k == "shape" and is_fused(n)):
            continue
        if k == "shape" and isinstance(v, tuple):
            v = fmt_shape(v)
        elif hasattr(v, "shape") and getattr(v, "size", 0) > 4:
            v = f"array{fmt_shape(v.shape)}"
        elif isinstance(v, tuple) and v and all(isinstance(x, Value) for x in v):   # nodes (a Tiled's members)
            v = f"({', '.join(x.label for x in v)})"
        args.append(f"{k}={v}")
    return f"{n.op.name}({', '.join(args)})"
