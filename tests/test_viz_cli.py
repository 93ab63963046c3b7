"""Drawings, listings and the rgraph command, end to end."""
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rgraph as rg
from rgraph import viz

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")


def _rgraph(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rgraph.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_hv_drawing_has_every_tag_hv_needs_in_its_colour():
    prog = rg.compile(rg.nn.mlp([4, 6, 3]))
    source = rg.viz.to_dot(prog, "hv").source
    fills = re.findall(r'fillcolor="(#[0-9A-F]{6})"', source)
    for tag in ("forward", "backward", "rforward", "rbackward"):
        assert viz.TAG_COLOURS[tag] in fills, tag
        assert f"legend_{tag}" in source
    assert "cluster_batch" in source and "cluster_vector" in source
    assert 'label="(N, 6)"' in source                       # shapes on edges
    assert source.count("shape=diamond") == 4               # the seeds v, one per parameter


def test_each_fused_kernel_is_a_cluster_listing_its_expressions():
    prog = rg.compile(rg.nn.mlp([4, 6, 3]))
    fused = [n for n in prog.module.nodes(["hv"]) if n.op.kind == "fused"]
    source = rg.to_dot(prog, "hv").source
    assert fused and source.count("subgraph cluster_fused") == len(fused)
    first = fused[0].op.source("numexpr").splitlines()[-1]
    assert first.replace('"', "'") in source


def test_gv_drawing_shows_the_gauss_newton_part():
    source = rg.viz.to_dot(rg.compile(rg.nn.mlp([4, 6, 3])), "gv").source
    assert viz.TAG_COLOURS["gn"] in source and viz.TAG_COLOURS["rbackward"] not in source


def test_text_listing_has_one_line_per_instruction_with_stage_and_tag():
    prog = rg.compile(rg.nn.mlp([4, 6, 3]))
    listing = prog.text("gv")
    batch, vector = prog._plans["gv"]
    body = [line for line in listing.splitlines() if re.match(r"\s+%\d+ = ", line)]
    assert len(body) == len(batch) + len(vector)
    assert "batch stage:" in listing and "vector stage:" in listing and "rforward" in listing
    assert sum("matmul" in line for line in body) == sum(n.op.name == "matmul" for n in batch + vector)


@needs_dot
def test_rendering_writes_a_non_empty_svg(tmp_path):
    prog = rg.compile(rg.nn.small_cnn())
    path = prog.show("hv", str(tmp_path / "hv.svg"))
    content = open(path).read()
    assert content.startswith("<?xml") and "<svg" in content and len(content) > 10_000


def test_show_rejects_unknown_formats_and_passes(tmp_path):
    prog = rg.compile(rg.nn.mlp([2, 2]))
    with pytest.raises(ValueError, match="cannot tell the format"):
        prog.show("hv", str(tmp_path / "x.gif"))
    with pytest.raises(ValueError, match="unknown pass 'hx'"):
        prog.text("hx")


@needs_dot
def test_cli_show_cost_ops_and_check_op(tmp_path):
    proc = _rgraph("show", "vgg11", "--pass", "hv", "-o", str(tmp_path / "hv.svg"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hv.svg").stat().st_size > 10_000
    proc = _rgraph("cost", "vgg11", "--batch", "128")
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in proc.stdout.splitlines()[2:]}
    assert rows[("gv", "vector")][2] == str(4 * 9 - 2) and rows[("hv", "vector")][2] == str(6 * 9 - 4)
    assert rows[("grad", "batch")][2] == str(3 * 9 - 1)
    proc = _rgraph("ops")
    assert proc.returncode == 0 and re.search(r"^swish\s+elementwise\s+expression", proc.stdout, re.M)
    assert re.search(r"^matmul\s+gemm\s+hand\s+multilinear", proc.stdout, re.M)
    proc = _rgraph("check-op", "rgraph.ops:swish")
    assert proc.returncode == 0 and "FAIL" not in proc.stdout and "second order" in proc.stdout


def test_cli_errors_are_clear_and_non_zero(tmp_path):
    bad = tmp_path / "badops.py"
    bad.write_text(
        "import rgraph as rg\nfrom rgraph import E\n"
        "wrong = rg.elementwise('wrong_tanh', lambda x: E.tanh(x), grads=[lambda x: 1 - E.tanh(x)], register_op=False)\n")
    proc = _rgraph("check-op", "badops:wrong", cwd=tmp_path)
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "wrong_tanh" in proc.stdout
    proc = _rgraph("show", "nope", "--pass", "hv", "-o", str(tmp_path / "x.svg"))
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr
    proc = _rgraph("show", "mlp", "--pass", "hessian", "-o", str(tmp_path / "x.svg"))
    assert proc.returncode == 2 and "invalid choice: 'hessian'" in proc.stderr
    proc = _rgraph("check-op", "nomodule:op")
    assert proc.returncode == 2 and "cannot load" in proc.stderr
    proc = _rgraph("--help")
    assert proc.returncode == 0 and "rgraph show vgg11" in proc.stdout


def test_user_model_file_for_show(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import rgraph as rg\ndef net():\n    return rg.nn.mlp([3, 4, 2])\n")
    proc = _rgraph("show", f"{model}:net", "--pass", "gv", "-o", str(tmp_path / "gv.dot"))
    assert proc.returncode == 0, proc.stderr
    assert "digraph" in (tmp_path / "gv.dot").read_text()
