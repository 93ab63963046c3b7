"""The ``rgraph`` command end to end, through a subprocess like a user runs it."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

import rgraph as rg

SCRIPT = shutil.which("rgraph", path=os.path.dirname(sys.executable))
RGRAPH = [SCRIPT] if SCRIPT else [sys.executable, "-m", "rgraph.cli"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")


def rgraph(*args, cwd=None, timeout=300):
    return subprocess.run([*RGRAPH, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def needs_zoo(name):
    if name not in getattr(rg.nn, "MODELS", {"mlp": None}):
        pytest.skip(f"needs {name!r} in rgraph.nn.MODELS (the conv ops)")


OPS_FILE = '''
"""Test ops for check-op: a right one and one with a deliberately wrong vjp."""
import rgraph as rg
from rgraph import E
from rgraph.graph import Type
from rgraph.op import Op, elementwise

cube = elementwise("test_cube", lambda x: x * x * x, register_op=False)


class BadSquare(Op):
    """x^2 with a wrong vjp (g * x instead of 2 g x): its rules disagree with finite differences."""
    name = "bad_square"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x * x

    def vjp(self, node, g):
        return [g * node.inputs[0]]


bad_square = BadSquare()


def scaled_product(a, b):
    return a * b * 3.0


not_an_op = 42
'''

MODEL_FILE = '''
import rgraph as rg

def build():
    return rg.nn.mlp([3, 5, 2], name="tiny")

def not_a_graph():
    return "nope"

def broken():
    g = rg.Graph("broken")
    x = g.input("x", (None, 3))
    W = g.param("W", (4, 2))
    return g.output(x @ W)
'''


@pytest.fixture
def user_files(tmp_path):
    (tmp_path / "my_ops.py").write_text(OPS_FILE)
    (tmp_path / "my_net.py").write_text(MODEL_FILE)
    return tmp_path


# --- help ----------------------------------------------------------------------------------------

def test_no_arguments_prints_help():
    r = ok(rgraph())
    for command in ("show", "cost", "check-op", "ops", "train"):
        assert command in r.stdout


@pytest.mark.parametrize("command", ["show", "cost", "check-op", "ops"])
def test_every_command_has_help_with_examples(command):
    r = ok(rgraph(command, "--help"))
    assert "examples:" in r.stdout and f"rgraph {command}" in r.stdout


# --- show ----------------------------------------------------------------------------------------

@needs_dot
def test_show_mlp_hv_svg(tmp_path):
    r = ok(rgraph("show", "mlp", "--pass", "hv", "-o", "hv.svg", cwd=tmp_path))
    svg = (tmp_path / "hv.svg").read_text()
    assert "<svg" in svg and "rbackward" in svg and "vector stage" in svg
    assert "wrote hv.svg" in r.stdout


@pytest.mark.parametrize("pass_", ["forward", "grad", "jv", "jtu", "gv", "hv"])
def test_show_every_pass_as_dot(tmp_path, pass_):
    ok(rgraph("show", "mlp", "--pass", pass_, "-o", tmp_path / "p.dot"))
    assert (tmp_path / "p.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("mode", ["chains", "layers"])
def test_show_collapsed(tmp_path, mode):
    ok(rgraph("show", "mlp", "--pass", "gv", "--collapse", mode, "-o", tmp_path / "gv.dot"))
    assert "ops" in (tmp_path / "gv.dot").read_text()


def test_show_text_listing():
    r = ok(rgraph("show", "mlp", "--pass", "gv", "--text"))
    assert "vector stage" in r.stdout and " gn " in r.stdout and r.stdout.strip().splitlines()[-1].startswith("outputs:")


def test_show_a_model_from_a_file(user_files):
    r = ok(rgraph("show", f"{user_files / 'my_net.py'}:build", "--pass", "jv", "--text"))
    assert r.stdout.startswith("# tiny jv")


def test_show_after_a_stage(tmp_path):
    ok(rgraph("show", "mlp", "--pass", "hv", "--until", "cse", "-o", tmp_path / "cse.dot"))
    r = rgraph("show", "mlp", "--until", "nowhere", "-o", tmp_path / "x.dot")
    assert r.returncode == 2 and "unknown stage 'nowhere'" in r.stderr


def test_show_unknown_model_fails_clearly(tmp_path):
    r = rgraph("show", "resnet9000", "--pass", "hv", "-o", tmp_path / "x.svg")
    assert r.returncode == 2
    assert "unknown model 'resnet9000'" in r.stderr and "mlp" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.svg").exists()


def test_show_unknown_pass_fails_clearly(tmp_path):
    r = rgraph("show", "mlp", "--pass", "hessian", "-o", tmp_path / "x.svg")
    assert r.returncode == 2
    assert "unknown pass 'hessian'" in r.stderr and "hv" in r.stderr and "Traceback" not in r.stderr


def test_show_bad_model_files_fail_clearly(user_files, tmp_path):
    for spec, message in ((f"{user_files / 'my_net.py'}:nope", "has no attribute 'nope'"),
                          (f"{user_files / 'my_net.py'}:not_a_graph", "not an rgraph.Graph"),
                          (f"{user_files / 'missing.py'}:build", "no file"),
                          (f"{user_files / 'my_net.py'}:broken", "ShapeError: op 'matmul'")):
        r = rgraph("show", spec, "-o", tmp_path / "x.dot")
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_zoo_options_that_do_not_fit():
    r = rgraph("cost", "mlp", "--input-shape", "3,x")
    assert r.returncode == 2 and "shape" in r.stderr
    r = rgraph("show", "mlp", "--num-classes", "0", "--text")
    assert r.returncode == 2 and "rgraph show: " in r.stderr and "Traceback" not in r.stderr


def test_show_needs_an_output_or_text():
    r = rgraph("show", "mlp")
    assert r.returncode == 2 and "-o FILE" in r.stderr


# --- cost ----------------------------------------------------------------------------------------

def test_cost_table():
    r = ok(rgraph("cost", "mlp", "--batch", "128"))
    lines = r.stdout.splitlines()
    assert "batch 128" in lines[0]
    header = [line for line in lines if line.startswith("pass")][0]
    for column in ("GEMMs", "FLOPs", "bytes", "peak memory", "ratio"):
        assert column in header
    for p in ("forward", "grad", "jv", "jtu", "gv", "hv"):
        assert any(line.startswith(p + " ") for line in lines), p
    assert any(line.split()[:2] == ["vector"] or " vector " in line for line in lines)


def test_cost_json_matches_program_cost():
    r = ok(rgraph("cost", "mlp", "--batch", "64", "--pass", "gv", "--json"))
    rows = json.loads(r.stdout)
    from rgraph.cli import build_model
    prog = rg.compile(build_model("mlp"))
    want = prog.cost("gv", batch_size=64)
    for row in rows:
        assert row["pass"] == "gv"
        assert row["gemms"] == want[row["stage"]]["gemms"] and row["flops"] == want[row["stage"]]["flops"]


def test_cost_unknown_model_and_pass():
    r = rgraph("cost", "nosuchnet", "--batch", "8")
    assert r.returncode == 2 and "unknown model 'nosuchnet'" in r.stderr
    r = rgraph("cost", "mlp", "--pass", "hessian")
    assert r.returncode == 2 and "unknown pass 'hessian'" in r.stderr


# --- models that need the conv ops ----------------------------------------------------------------

@needs_dot
@pytest.mark.slow
def test_show_vgg11_hv(tmp_path):
    needs_zoo("vgg11")
    ok(rgraph("show", "vgg11", "--pass", "hv", "-o", "hv.svg", cwd=tmp_path))
    assert (tmp_path / "hv.svg").stat().st_size > 10_000


@pytest.mark.slow
def test_cost_vgg11():
    needs_zoo("vgg11")
    r = ok(rgraph("cost", "vgg11", "--batch", "128"))
    assert any(line.startswith("hv ") for line in r.stdout.splitlines())


# --- check-op ------------------------------------------------------------------------------------

def test_check_op_builtin():
    r = ok(rgraph("check-op", "rgraph.ops:swish", "--shape", "3,4"))
    assert "op 'swish'" in r.stdout and "FAIL" not in r.stdout and "all 5 checks passed" in r.stdout


def test_check_op_with_two_inputs_and_attributes():
    ok(rgraph("check-op", "rgraph.ops:matmul", "--shape", "3,4", "--shape", "4,5"))
    r = ok(rgraph("check-op", "rgraph.ops:sum", "--shape", "3,4", "--attr", "axis=1"))
    assert "dot test" in r.stdout


def test_check_op_user_ops_from_a_file(user_files):
    ok(rgraph("check-op", f"{user_files / 'my_ops.py'}:cube", "--shape", "5"))
    ok(rgraph("check-op", f"{user_files / 'my_ops.py'}:scaled_product", "--shape", "2,3", "--shape", "2,3"))


def test_check_op_wrong_rule_fails(user_files):
    r = rgraph("check-op", f"{user_files / 'my_ops.py'}:bad_square", "--shape", "3,4")
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "vjp vs finite differences" in r.stdout
    assert "bad_square" in r.stderr and "FAILED" in r.stderr


def test_check_op_bad_names(user_files):
    r = rgraph("check-op", "rgraph.ops:no_such_op")
    assert r.returncode == 2 and "has no attribute 'no_such_op'" in r.stderr
    r = rgraph("check-op", "no_such_module_xyz:op")
    assert r.returncode == 2 and "cannot import module" in r.stderr
    r = rgraph("check-op", f"{user_files / 'my_ops.py'}:not_an_op")
    assert r.returncode == 2 and "not an op" in r.stderr
    r = rgraph("check-op", "rgraph.ops:swish", "--shape", "3,x")
    assert r.returncode == 2 and "shape" in r.stderr


def test_check_op_shape_mismatch_is_reported():
    r = rgraph("check-op", "rgraph.ops:matmul", "--shape", "3,4", "--shape", "5,6")
    assert r.returncode == 1 and "could not be checked" in r.stderr and "ShapeError" in r.stderr


# --- ops -----------------------------------------------------------------------------------------

def test_ops_lists_the_registry_with_rule_sources():
    r = ok(rgraph("ops"))
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:] if line.strip() and not line.startswith(" ")}
    for name in rg.op.BUILTIN:   # a fresh process registers rgraph's own ops (tests here may add more)
        assert name in rows, name
    assert "from expression" in rows["swish"]
    assert "hand-written" in rows["matmul"] and "multilinear" in rows["matmul"]
    assert "expression (hand derivative)" in rows["softplus"]


def test_ops_json_and_rule_sources():
    from rgraph.cli import rule_sources
    r = ok(rgraph("ops", "--json"))
    table = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(table) == rg.op.BUILTIN
    assert rule_sources(rg.REGISTRY["reshape"]) == ("hand-written", "linear")
    assert rule_sources(rg.REGISTRY["stop_gradient"]) == ("hand-written", "hand-written")
    assert rule_sources(rg.REGISTRY["amax"]) == ("-", "-")

    class OnlyVjp(rg.Op):
        name = "only_vjp"

        def vjp(self, node, g):
            return [g]
    assert rule_sources(OnlyVjp()) == ("hand-written", "transposed vjp")


# --- train ---------------------------------------------------------------------------------------

def test_train_is_lazy():
    r = rgraph("train", "--help")
    import importlib.util
    if importlib.util.find_spec("rgraph.train") is None:
        assert r.returncode == 2 and "no training module" in r.stderr
    else:
        assert r.returncode == 0 and "usage: rgraph train" in r.stdout


# --- found by a first-use review ------------------------------------------------------------------

def test_show_writes_a_listing_with_o_and_refuses_a_missing_folder(tmp_path):
    r = ok(rgraph("show", "mlp", "--pass", "gv", "--text", "-o", tmp_path / "gv.txt"))
    assert "wrote" in r.stdout and "vector stage" in (tmp_path / "gv.txt").read_text()
    r = rgraph("show", "mlp", "-o", tmp_path / "missing" / "gv.svg")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_cost_refuses_a_batch_below_one_and_zero_classes():
    for flags in (("--batch", "-4"), ("--batch", "0"), ("--num-classes", "0")):
        r = rgraph("cost", "mlp", *flags)
        assert r.returncode == 2 and "must be at least 1" in r.stderr, flags


def test_check_op_with_nothing_to_check_does_not_claim_passed_checks():
    r = ok(rgraph("check-op", "rgraph.ops:argmax"))
    assert "nothing to check" in r.stdout and "checks passed" not in r.stdout


def test_output_piped_into_a_closed_reader_ends_quietly():
    head = subprocess.run(f"{shlex.quote(sys.executable)} -m rgraph.cli ops --json | head -c 10", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert "BrokenPipeError" not in head.stderr and "Traceback" not in head.stderr
