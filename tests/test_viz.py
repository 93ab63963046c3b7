"""Drawings and listings of derived passes: tags and colours, leaf shapes, stages, fused kernels, layers."""
import re
import shutil

import pytest

import rgraph as rg
from rgraph import viz
from rgraph.compiler.module import Module
from rgraph.expr import E, var
from rgraph.graph import Type, Value
from rgraph.op import Op

HV_TAGS = ("forward", "backward", "rforward", "rbackward")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")


# --- a small parser for the dot source -----------------------------------------------------------

ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]]+)')


def attrs_of(text):
    return {k: v[1:-1] if v.startswith('"') else v for k, v in ATTR.findall(text)}


def parse(source):
    """{node id: attrs}, [(tail, head, attrs)], {cluster name: set of node ids inside it, nested included},
    {cluster name: its attributes}."""
    nodes, edges, members, cluster_attrs, stack = {}, [], {}, {}, []
    for line in source.splitlines():
        s = line.strip()
        m = re.match(r"subgraph (\w+) \{", s)
        if m:
            stack.append(m.group(1))
            members.setdefault(m.group(1), set())
            continue
        if s == "}":
            if stack:
                stack.pop()
            continue
        m = re.match(r"(\w+) -> (\w+)(?: \[(.*)\])?$", s)
        if m:
            edges.append((m.group(1), m.group(2), attrs_of(m.group(3) or "")))
            continue
        m = re.match(r"(\w+) \[(.*)\]$", s)
        if m and m.group(1) not in ("graph", "node", "edge"):
            nodes[m.group(1)] = attrs_of(m.group(2))
            for c in stack:
                members[c].add(m.group(1))
            continue
        if stack and "=" in s and not s.startswith("n"):
            cluster_attrs.setdefault(stack[-1], {}).update(attrs_of(s))
    return nodes, edges, members, cluster_attrs


def tag_of(attrs):
    m = re.search(r"\[(\w+)\]$", attrs.get("tooltip", ""))
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def mlp_prog():
    return rg.compile(rg.nn.mlp([4, 8, 3], l2=1e-3))


# --- the MLP's hv program -------------------------------------------------------------------------

def test_hv_drawing_has_all_four_tags_each_in_its_colour(mlp_prog):
    nodes, _, _, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    instrs = {k: a for k, a in nodes.items() if k.startswith("n") and tag_of(a) in viz.TAG_COLOURS}
    for tag in HV_TAGS:
        mine = [a for a in instrs.values() if tag_of(a) == tag]
        assert mine, f"no {tag} node in the hv drawing"
        assert all(a["fillcolor"] == viz.TAG_COLOURS[tag] for a in mine), tag
    assert len(set(viz.TAG_COLOURS.values())) == len(viz.TAG_COLOURS), "one colour per tag"


def test_hv_drawing_has_a_legend_entry_per_tag_present(mlp_prog):
    nodes, _, members, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    for tag in HV_TAGS:
        assert f"legend_{tag}" in members["cluster_legend"]
        assert nodes[f"legend_{tag}"]["fillcolor"] == viz.TAG_COLOURS[tag]
    for kind in ("param", "input", "tangent"):
        assert nodes[f"legend_{kind}"]["shape"] == viz.LEAF_STYLES[kind]["shape"]


def test_one_cluster_per_fused_kernel(mlp_prog):
    batch, vector = mlp_prog._plans["hv"]
    kernels = [n for n in batch + vector if viz.is_fused(n)]   # none until the compiler fuses
    _, _, members, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    assert len([c for c in members if c.startswith("cluster_kernel_")]) == len(kernels)


def test_stages_are_two_clusters_holding_the_right_nodes(mlp_prog):
    dot = viz.to_dot(mlp_prog, "hv")
    nodes, _, members, _ = parse(dot.source)
    view = viz._View(mlp_prog, "hv")
    ids = {n: f"n{k}" for k, n in enumerate(view.nodes)}
    batch, vector = mlp_prog._plans["hv"]
    assert batch and vector
    assert {ids[n] for n in batch} == members["cluster_batch"]
    assert {ids[n] for n in vector} == members["cluster_vector"]
    leaves = [n for n in view.nodes if n.is_leaf]
    assert all(ids[n] not in members["cluster_batch"] | members["cluster_vector"] for n in leaves)


def test_leaves_drawn_by_kind(mlp_prog):
    nodes, _, _, _ = parse(viz.to_dot(mlp_prog, "jtu").source)
    by_label = {a.get("label"): a for a in nodes.values()}
    assert by_label["fc0.W"]["shape"] == "box"
    assert by_label["x"]["shape"] == "parallelogram"
    assert by_label["u"]["shape"] == "invtriangle"
    nodes, _, _, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    by_label = {a.get("label"): a for a in nodes.values()}
    assert by_label["v[fc0.W]"]["shape"] == "diamond"
    shapes = {viz.LEAF_STYLES[k]["shape"] for k in viz.LEAF_STYLES}
    assert len(shapes) == len(viz.LEAF_STYLES), "every leaf kind has its own shape"


def test_edges_carry_shapes(mlp_prog):
    _, edges, _, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    labels = {a.get("label") for _, _, a in edges}
    assert "(N, 8)" in labels and "(4, 8)" in labels
    _, edges, _, _ = parse(viz.to_dot(mlp_prog, "hv", edge_shapes=False).source)
    assert not any("label" in a for _, _, a in edges)


def test_layers_grouped_by_parameter_prefix(mlp_prog):
    nodes, _, members, cluster_attrs = parse(viz.to_dot(mlp_prog, "hv").source)
    for stage in ("batch", "vector"):
        for layer in ("fc0", "fc1"):
            name = f"cluster_{stage}_layer_{layer}"
            assert name in members and cluster_attrs[name]["label"] == layer
    first_matmul = [k for k in members["cluster_batch_layer_fc0"] if nodes[k]["label"] == "matmul"]
    assert first_matmul, "the first layer's GEMM sits in the fc0 cluster"
    _, _, members, _ = parse(viz.to_dot(mlp_prog, "hv", group=False).source)
    assert not any("_layer_" in c for c in members)


def test_collapse_folds_elementwise_chains(mlp_prog):
    full, _, _, _ = parse(viz.to_dot(mlp_prog, "hv").source)
    small, edges, _, _ = parse(viz.to_dot(mlp_prog, "hv", collapse=True).source)
    assert len(small) < len(full)
    folded = [a for a in small.values() if "ops)" in a.get("label", "")]
    assert folded and all(a["shape"] == "box" for a in folded)
    assert {tag_of(a) for a in small.values()} >= set(HV_TAGS)
    assert all(t != h for t, h, _ in edges), "no self loops from folding"


def test_collapse_layers_draws_one_box_per_layer_tag_and_stage(mlp_prog):
    nodes, _, members, _ = parse(viz.to_dot(mlp_prog, "hv", collapse="layers").source)
    labels = [a.get("label", "") for k, a in nodes.items() if k.startswith("n")]
    assert any(re.fullmatch(r"fc0 forward\\n\d+ ops, 1 GEMMs", lab) for lab in labels), labels
    assert any(re.fullmatch(r"fc\d rbackward\\n\d+ ops.*", lab) for lab in labels), labels
    assert members["cluster_vector_layer_fc0"] and members["cluster_batch_layer_fc1"]
    with pytest.raises(ValueError, match="collapse"):
        viz.to_dot(mlp_prog, "hv", collapse="everything")


def test_drawing_is_deterministic():
    a = rg.compile(rg.nn.mlp([4, 8, 3]))
    rg.compile(rg.nn.mlp([5, 2]))    # other values in between shift the creation counter
    b = rg.compile(rg.nn.mlp([4, 8, 3]))
    assert viz.to_dot(a, "hv").source == viz.to_dot(b, "hv").source
    assert a.text("hv") == b.text("hv")
    assert viz.to_dot(a, "gv", collapse=True).source == viz.to_dot(b, "gv", collapse=True).source


def test_graph_and_module_drawings():
    g = rg.nn.mlp([4, 8, 3])
    nodes, _, members, _ = parse(viz.to_dot(g).source)
    assert {tag_of(a) for a in nodes.values() if tag_of(a)} == {"forward"}
    assert "cluster_batch" not in members
    derived = rg.compile(g, until="derive")          # before staging: no stage clusters
    _, _, members, _ = parse(viz.to_dot(derived, "gv").source)
    assert "cluster_vector" not in members
    staged = rg.compile(rg.nn.mlp([4, 8, 3]), until="stage")
    nodes, _, members, _ = parse(viz.to_dot(staged, "gv").source)
    assert "cluster_vector" in members and "gn" in {tag_of(a) for a in nodes.values()}


def test_unknown_pass_is_a_clear_error(mlp_prog):
    with pytest.raises(ValueError, match="unknown pass 'hessian'.*hv"):
        viz.to_dot(mlp_prog, "hessian")
    with pytest.raises(ValueError, match="compile it"):
        viz.to_dot(rg.nn.mlp([2, 2]), "hv")


# --- fused kernels, with a stand-in for the compiler's Fused op -----------------------------------

class FakeFused(Op):
    """The contract the fuse stage follows: kind "fused", name, exprs over params, source(target)."""
    kind = "fused"

    def __init__(self, name, exprs, params):
        self.name, self.exprs, self.params = name, exprs, params

    def infer(self, *types):
        return types[0]

    def source(self, target="numexpr"):
        return "\n".join(f"out{k} = {e!r}" for k, e in enumerate(self.exprs))


class FakePick(Op):
    name, kind = "pick", "pick"

    def infer(self, t, index):
        return t


def fused_module():
    prog = rg.compile(rg.nn.mlp([4, 8, 3]), until="stage")
    (z,) = prog.entries["jv"]
    a, b = z.inputs
    x, y = var("in0"), var("in1")
    single = FakeFused("fused_0", [x * E.sigmoid(y)], ("in0", "in1"))
    double = FakeFused("fused_1", [x + y, x * y], ("in0", "in1"))
    k0 = Value(single, (a, b), {}, Type(z.shape))
    k1 = Value(double, (k0, b), {}, Type(z.shape))
    picks = [Value(FakePick(), (k1,), {"index": i}, Type(z.shape)) for i in range(2)]
    for v in (k0, k1, *picks):
        v.tag = "rforward"
    module = Module(prog.graph, entries={"jv": picks}, vector={k0, k1, *picks} | prog.vector,
                    history=list(prog.history))
    return module, (k0, k1, picks)


def test_each_fused_kernel_is_a_cluster_listing_its_expressions():
    module, (k0, k1, picks) = fused_module()
    nodes, _, members, cluster_attrs = parse(viz.to_dot(module, "jv").source)
    kernels = sorted(c for c in members if c.startswith("cluster_kernel_"))
    assert len(kernels) == 2
    labels = [cluster_attrs[c]["label"] for c in kernels]
    assert any("fused_0" in lab and "out0 = (in0 * sigmoid(in1))" in lab for lab in labels)
    two = [c for c, lab in zip(kernels, labels) if "fused_1" in lab][0]
    assert "out0 = (in0 + in1)" in cluster_attrs[two]["label"] and "out1 = (in0 * in1)" in cluster_attrs[two]["label"]
    assert len(members[two]) == 3, "the kernel node and its two picks sit in the kernel's cluster"
    assert all(members[c] <= members["cluster_vector"] for c in kernels)


def test_text_lists_fused_kernels():
    module, _ = fused_module()
    listing = viz.text(module, "jv")
    assert re.search(r"= fused_0\(.*rforward\s+vector", listing)
    assert "| out0 = (in0 * sigmoid(in1))" in listing
    assert "| out1 = (in0 * in1)" in listing


# --- text listings --------------------------------------------------------------------------------

def test_text_is_one_line_per_instruction_in_execution_order(mlp_prog):
    listing = mlp_prog.text("hv")
    batch, vector = mlp_prog._plans["hv"]
    rows = [line for line in listing.splitlines() if re.match(r"\s+%\d+ = ", line)]
    assert len(rows) == len(batch) + len(vector)
    for row, node in zip(rows, batch + vector, strict=True):
        assert f" {node.op.name}(" in row
        assert row.split()[-2] == node.tag
        assert row.split()[-1] == ("vector" if node in vector else "batch")
        assert str(node.type) in row
    assert re.search(r"^  fc0\.W\s+parameter\s+float\(4, 8\)$", listing, re.M)
    assert re.search(r"^  v\[fc0\.W\]\s+seed v\s+float\(4, 8\)$", listing, re.M)
    assert listing.splitlines()[-1].startswith("outputs: fc0.W=%")
    assert listing.splitlines()[0] == f"# mlp hv: {len(batch) + len(vector)} instructions " \
                                      f"(batch stage {len(batch)}, vector stage {len(vector)})"


def test_text_of_a_graph_and_of_the_forward_pass(mlp_prog):
    listing = viz.text(rg.nn.mlp([4, 8, 3]))
    assert "matmul(x, fc0.W)" in listing and listing.endswith("z=%4")
    fwd = mlp_prog.text("forward")
    assert "loss=%" in fwd and "backward" not in fwd


# --- rendering ------------------------------------------------------------------------------------

@needs_dot
@pytest.mark.parametrize("suffix", [".svg", ".png", ".pdf"])
def test_show_renders_by_suffix(mlp_prog, tmp_path, suffix):
    path = tmp_path / f"hv{suffix}"
    assert mlp_prog.show("hv", str(path)) == str(path)
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == ".svg":
        assert b"<svg" in data and b"rbackward" in data
    elif suffix == ".png":
        assert data[:4] == b"\x89PNG"
    else:
        assert data[:4] == b"%PDF"


def test_show_dot_source_needs_no_binary(mlp_prog, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = tmp_path / "hv.dot"
    mlp_prog.show("hv", str(path))
    assert path.read_text().startswith("digraph")
    with pytest.raises(viz.DotNotFound, match="apt-get install graphviz"):
        mlp_prog.show("hv", str(tmp_path / "hv.svg"))
    with pytest.raises(ValueError, match="suffix"):
        mlp_prog.show("hv", str(tmp_path / "hv.jpeg"))


# --- convolutional networks (need the conv ops of the convnets branch) ----------------------------

def _zoo_model(builder, **kw):
    if not hasattr(rg.nn, builder):
        pytest.skip(f"needs rgraph.nn.{builder} (the conv ops)")
    return getattr(rg.nn, builder)(**kw)


def test_small_cnn_drawing_groups_layers():
    g = _zoo_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    prog = rg.compile(g)
    nodes, _, members, _ = parse(viz.to_dot(prog, "hv", collapse=True).source)
    layers = {c for c in members if "_layer_" in c}
    prefixes = {p.rsplit(".", 1)[0] for p in g.params if "." in p}
    assert {c.rsplit("_layer_", 1)[1] for c in layers} >= {viz._ident(p) for p in prefixes}
    assert {tag_of(a) for a in nodes.values()} >= set(HV_TAGS)


@needs_dot
@pytest.mark.slow
def test_vgg11_hv_renders(tmp_path):
    g = _zoo_model("vgg", name="vgg11", input_shape=(3, 32, 32), num_classes=10)
    prog = rg.compile(g)
    path = tmp_path / "vgg11_hv.svg"
    prog.show("hv", str(path), collapse=True)
    assert path.stat().st_size > 10_000


GOLDEN_TEXT = """\
# linear forward: 8 instructions
leaves:
  x      data       float(N, 3)
  y      data       float(N, 2)
  lin.W  parameter  float(3, 2)
instructions:
  %0 = matmul(x, lin.W)              float(N, 2)  forward
  %1 = tanh(%0)                      float(N, 2)  forward
  %2 = sub(%1, y)                    float(N, 2)  forward
  %3 = square(%2)                    float(N, 2)  forward
  %4 = sum(%3, axis=(1,))            float(N,)    forward
  %5 = sum(%4, axis=(0,))            float()      forward
  %6 = count(shape=(N,), axes=(0,))  float()      forward
  %7 = div(%5, %6)                   float()      forward
outputs: loss=%7, z=%1"""


def test_text_golden():
    from rgraph import ops
    g = rg.Graph("linear")
    x, y = g.input("x", (None, 3)), g.input("y", (None, 2))
    W = g.param("lin.W", (3, 2))
    z = g.output(ops.tanh(x @ W))
    g.set_loss(ops.mse(z, y))
    assert viz.text(g) == GOLDEN_TEXT
