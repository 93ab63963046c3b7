"""Drawing and listing graphs and compiled passes.

    rg.to_dot(prog, "hv")          # a graphviz.Digraph: one colour per pass tag, stages as clusters
    prog.show("hv", "hv.svg")      # rendered by the suffix: .svg, .png, .pdf (needs graphviz's `dot`)
    print(prog.text("hv"))         # one line per instruction, like a jaxpr

Colours: forward blue, backward orange, rforward green, rbackward red, gn purple. Parameters are
yellow boxes, batch inputs grey parallelograms, constants small notes, the seeds v and u pink
diamonds. A program's nodes are drawn in two clusters: the batch stage (computed once per bind) and
the vector stage (run on every product call). Edges carry shapes.
"""
from __future__ import annotations

import os
import shutil

from .errors import fmt_shape
from .graph import CONST, COTANGENT, INPUT, PARAM, TANGENT, Graph, topo_order

TAG_COLOURS = {"forward": "#4C72B0", "backward": "#DD8452", "rforward": "#55A868", "rbackward": "#C44E52",
               "gn": "#8172B3"}
LEAF_STYLES = {
    PARAM: {"shape": "box", "style": "filled", "fillcolor": "#FFF2B3"},
    INPUT: {"shape": "parallelogram", "style": "filled", "fillcolor": "#E0E0E0"},
    CONST: {"shape": "note", "fontsize": "9"},
    TANGENT: {"shape": "diamond", "style": "filled", "fillcolor": "#F7C6D9"},
    COTANGENT: {"shape": "diamond", "style": "filled", "fillcolor": "#F7C6D9"},
}
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot"}


def _nodes(obj, entry):
    """(nodes in order, vector-stage set or None, outputs) for a Graph, a compiled Module or a Program."""
    if isinstance(obj, Graph):
        outs = [v for v in (obj.loss, obj.z) if v is not None]
        return topo_order(outs), None, outs
    module = getattr(obj, "module", obj)
    entry = entry or "loss"
    if entry not in module.entries:
        raise ValueError(f"unknown pass {entry!r}; passes are {sorted(module.entries)}")
    outs = [v for v in module.entries[entry] if v is not None]
    return module.nodes([entry]), module.vector, outs


def _label(node):
    if node.is_leaf:
        if node.op is CONST:
            value = node.attrs["value"]
            return f"{value.item():.4g}" if value.size == 1 else f"const {fmt_shape(value.shape)}"
        return node.name
    return node.op.name


LARGE = 200  # nodes; beyond this, shapes move from edge labels into node labels (dot lays out labelled
             # edges slowly: VGG11's hv pass takes minutes with them, a second without)


def to_dot(obj, entry=None, *, title=None, edge_shapes=None):
    """A ``graphviz.Digraph`` of a Graph's forward pass, or of one entry of a Program/Module.

    ``edge_shapes``: label edges with shapes (default: for graphs of at most 200 nodes; larger graphs
    show each node's output shape in its label instead and bound the layout effort).
    """
    import graphviz
    nodes, vector, outs = _nodes(obj, entry)
    large = len(nodes) > LARGE
    edge_shapes = not large if edge_shapes is None else edge_shapes
    layout = {"nslimit": "2", "mclimit": "0.5"} if large else {}
    dot = graphviz.Digraph(name=(title or entry or "graph").replace(" ", "_"),
                           graph_attr={"rankdir": "TB", "fontname": "Helvetica", "label": title or entry or "",
                                       "labelloc": "t", **layout},
                           node_attr={"fontname": "Helvetica", "fontsize": "10"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#777777"})
    ids = {n: f"n{n.id}" for n in nodes}

    def add(graph, node):
        if node.op.kind == "fused":   # a fused kernel: a cluster holding the node, labelled with its expressions
            with graph.subgraph(name=f"cluster_{node.op.name}_{node.id}") as sub:
                sub.attr(label=_kernel_text(node.op), labeljust="l", style="rounded,filled", fillcolor="#F4F4F4",
                         color="#BBBBBB", fontname="Courier", fontsize="8")
                add_plain(sub, node)
        else:
            add_plain(graph, node)

    def add_plain(graph, node):
        if node.is_leaf:
            graph.node(ids[node], _label(node), **LEAF_STYLES[node.op])
        else:
            colour = TAG_COLOURS.get(node.tag, "#999999")
            label = _label(node) if edge_shapes else f"{_label(node)}\n{fmt_shape(node.shape)}"
            graph.node(ids[node], label, shape="ellipse", style="filled", fillcolor=colour,
                       fontcolor="white", color=colour, tooltip=f"{node.label}: {node.type} [{node.tag}]",
                       **({"peripheries": "2"} if node in outs else {}))

    if vector is None:
        for n in nodes:
            add(dot, n)
    else:
        for name, members in (("batch", [n for n in nodes if n not in vector and not n.is_leaf]),
                              ("vector", [n for n in nodes if n in vector and not n.is_leaf])):
            with dot.subgraph(name=f"cluster_{name}") as sub:
                sub.attr(label=f"{name} stage", style="rounded,dashed", color="#AAAAAA")
                for n in members:
                    add(sub, n)
        for n in nodes:
            if n.is_leaf:
                add(dot, n)
    for n in nodes:
        for i in n.inputs:
            dot.edge(ids[i], ids[n], **({"label": fmt_shape(i.shape)} if edge_shapes else {}))
    with dot.subgraph(name="cluster_legend") as legend:
        legend.attr(label="pass tags", style="rounded", color="#CCCCCC")
        present = [t for t in TAG_COLOURS if any(n.tag == t and not n.is_leaf for n in nodes)]
        for tag in present:
            legend.node(f"legend_{tag}", tag, shape="box", style="filled", fillcolor=TAG_COLOURS[tag], fontcolor="white")
        for a, b in zip(present, present[1:]):
            legend.edge(f"legend_{a}", f"legend_{b}", style="invis")
    return dot


def _kernel_text(op):
    """A fused kernel's printed expressions, left-aligned lines for a graphviz label."""
    lines = [line for line in op.source("numexpr").splitlines() if not line.startswith("#")]
    return "\\l".join(line.replace("\\", "\\\\").replace('"', "'") for line in lines) + "\\l"


def show(obj, entry, path, **options):
    """Render ``entry`` to ``path``; the format follows the suffix (.svg, .png, .pdf, .dot)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path!r}; use one of {sorted(FORMATS)}")
    dot = to_dot(obj, entry, **options)
    if suffix == ".dot":
        with open(path, "w") as f:
            f.write(dot.source)
        return path
    if shutil.which("dot") is None:
        raise RuntimeError("drawing needs graphviz's `dot` program (Debian/Ubuntu: apt-get install graphviz); "
                           "write a .dot file instead to render it elsewhere")
    stem = os.path.splitext(path)[0]
    dot.render(stem, format=FORMATS[suffix], cleanup=True)
    return path


def text(obj, entry=None) -> str:
    """A listing of ``entry``: one line per instruction with output, op, inputs, type, pass tag and stage."""
    nodes, vector, outs = _nodes(obj, entry)
    names = {n: (n.name if n.is_leaf and n.op is not CONST else f"%{k}") for k, n in enumerate(nodes)}
    lines = [f"# {entry or 'forward'}: {sum(not n.is_leaf for n in nodes)} instructions"]
    leaves = [n for n in nodes if n.is_leaf]
    lines.append("leaves: " + ", ".join(f"{names[n]}:{n.type}" if n.op is not CONST else f"{names[n]}={_label(n)}"
                                        for n in leaves))
    for stage in ("batch", "vector"):
        members = [n for n in nodes if not n.is_leaf and (vector is None or (n in vector) == (stage == "vector"))]
        if not members:
            continue
        lines.append(f"{stage} stage:" if vector is not None else "instructions:")
        for n in members:
            attrs = {k: v for k, v in n.attrs.items() if k != "dtype"}
            call = f"{n.op.name}({', '.join(names[i] for i in n.inputs)}{'; ' if attrs else ''}" \
                   f"{', '.join(f'{k}={v}' for k, v in attrs.items())})"
            lines.append(f"  {names[n]:>5} = {call:<60} {str(n.type):<22} {n.tag}")
        if vector is None:
            break
    lines.append("outputs: " + ", ".join(names[o] for o in outs))
    return "\n".join(lines)
