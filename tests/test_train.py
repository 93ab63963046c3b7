"""Training: `rgraph train` resumes bit for bit, writes its files atomically, never saves non-finite
parameters, and refuses bad input clearly (the 97% runs are in test_training_accuracy.py)."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from rgraph import cli, data, nn, train as training


def _metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


QUIET = dict(progress=False, log=lambda s: None)


def test_resume_continues_the_same_trajectory(tmp_path):
    ds = data.load("digits")
    kwargs = dict(batch_size=256, progress=False, log=lambda s: None)
    full, _ = training.train(nn.small_cnn(l2=1e-4), ds, "fitre", epochs=3, out=str(tmp_path / "a"), **kwargs)
    training.train(nn.small_cnn(l2=1e-4), ds, "fitre", epochs=1, out=str(tmp_path / "b"), checkpoint_every=2, **kwargs)
    resumed, history = training.train(nn.small_cnn(l2=1e-4), ds, "fitre", epochs=3, out=str(tmp_path / "b"),
                                      resume=True, **kwargs)
    assert np.array_equal(full, resumed) and len(history) == 3
    state = training.load_checkpoint(str(tmp_path / "b" / "checkpoint.pkl"))
    assert state["epoch"] == 3 and state["batch"] == 0


def _without_time(records):
    return [{key: value for key, value in r.items() if key != "time"} for r in records]


def test_mid_epoch_checkpoint_resumes_identically(tmp_path, monkeypatch):
    """The parameters and the resumed epoch's record (its train loss, cg and lambda cover every batch,
    also those before the checkpoint) equal the uninterrupted run's."""
    ds = data.load("digits")
    kwargs = dict(batch_size=256, progress=False, log=lambda s: None)
    full, full_history = training.train(nn.small_cnn(l2=1e-4), ds, "newton-cg", epochs=2, **kwargs)

    class Interrupt(Exception):
        pass
    calls = {"n": 0}
    real = training.save_checkpoint

    def interrupt_after_mid_epoch_save(path, payload):
        real(path, payload)
        calls["n"] += 1
        if payload["epoch"] == 1 and payload["batch"] == 3:
            raise Interrupt
    monkeypatch.setattr(training, "save_checkpoint", interrupt_after_mid_epoch_save)
    with pytest.raises(Interrupt):
        training.train(nn.small_cnn(l2=1e-4), ds, "newton-cg", epochs=2, out=str(tmp_path), checkpoint_every=3, **kwargs)
    monkeypatch.setattr(training, "save_checkpoint", real)
    assert len(training.load_checkpoint(str(tmp_path / "checkpoint.pkl"))["step_stats"]) == 3
    resumed, history = training.train(nn.small_cnn(l2=1e-4), ds, "newton-cg", epochs=2, out=str(tmp_path), resume=True,
                                      **kwargs)
    assert np.array_equal(full, resumed)
    assert _without_time(history) == _without_time(_metrics(tmp_path)) == _without_time(full_history)


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pkl")
    training.save_checkpoint(path, {"theta": np.ones(3)})

    def broken_dump(obj, f, protocol=None):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(training.pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint(path, {"theta": np.zeros(3)})
    monkeypatch.undo()
    assert np.array_equal(training.load_checkpoint(path)["theta"], np.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pkl"]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")  # lr 1e300 means to overflow
def test_rejected_non_finite_steps_never_reach_the_checkpoint(tmp_path):
    ds = data.load("digits")
    theta, history = training.train(nn.small_cnn(l2=1e-4), ds, "sgd", epochs=1, batch_size=512, settings={"lr": 1e300},
                                    out=str(tmp_path), progress=False, log=lambda s: None)
    saved = training.load_checkpoint(str(tmp_path / "checkpoint.pkl"))["theta"]
    assert np.all(np.isfinite(saved)) and history[-1]["rejected"] >= 1


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert cli.main(["train", "--model", "nope", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cli.main(["train", "--data", "imagenet", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert cli.main(["train", "--optimizer", "sgd", "--radius", "2", "--out", str(tmp_path)]) == 2
    assert "has no setting(s) ['radius']" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "lbfgs"])


def test_console_script_trains_an_mlp_from_a_user_file(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import rgraph as rg\ndef build():\n    return rg.nn.mlp([64, 32, 10], l2=1e-4)\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rgraph.cli", "train", "--model", f"{model}:build", "--optimizer",
                           "adam", "--lr", "0.01", "--epochs", "2", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2" in proc.stdout and (out / "metrics.jsonl").exists()
    assert proc.stdout.startswith("mlp on <Dataset digits") and proc.stdout.index("writing") < proc.stdout.index("epoch   1")


def test_metrics_and_config_hold_what_the_run_did(tmp_path):
    out = str(tmp_path)
    assert cli.main(["train", "--model", "mlp", "--optimizer", "newton-cg", "--gn-fraction", "0.1", "--cg-maxiter",
                     "7", "--epochs", "2", "--batch-size", "512", "--out", out, "--no-progress"]) == 0
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["optimizer"] == "newton-cg" and config["dataset"] == "digits" and config["batch_size"] == 512
    assert config["settings"]["gn_fraction"] == 0.1 and config["settings"]["cg_maxiter"] == 7
    lines = _metrics(out)
    assert [r["epoch"] for r in lines] == [1, 2] and lines[1]["steps"] == 2 * 3   # 1437 samples: 3 batches
    for r in lines:
        assert {"train_loss", "test_loss", "test_accuracy", "time", "rejected", "cg_iters", "lam"} <= set(r)
        assert 0 < r["cg_iters"] <= 7 and 0 <= r["test_accuracy"] <= 1
    assert lines[1]["time"] > lines[0]["time"] > 0
    # a fresh run into the same folder starts its metrics over rather than appending to the old ones
    assert cli.main(["train", "--model", "mlp", "--optimizer", "adam", "--epochs", "1", "--batch-size", "512",
                     "--out", out, "--no-progress"]) == 0
    assert [r["epoch"] for r in _metrics(out)] == [1]


def test_resume_after_a_crash_between_metrics_and_checkpoint_keeps_one_line_per_epoch(tmp_path, monkeypatch):
    ds = data.load("digits")
    kwargs = dict(batch_size=512, **QUIET)
    full, _ = training.train(nn.mlp([64, 32, 10], l2=1e-4), ds, "newton-cg", epochs=3, **kwargs)
    real = training.save_checkpoint

    def crash_at_the_end_of_epoch_2(path, payload):
        if payload["epoch"] == 2:
            raise KeyboardInterrupt
        real(path, payload)
    monkeypatch.setattr(training, "save_checkpoint", crash_at_the_end_of_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        training.train(nn.mlp([64, 32, 10], l2=1e-4), ds, "newton-cg", epochs=3, out=str(tmp_path), **kwargs)
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1, 2]     # epoch 2 logged, its checkpoint lost
    monkeypatch.setattr(training, "save_checkpoint", real)
    resumed, history = training.train(nn.mlp([64, 32, 10], l2=1e-4), ds, "newton-cg", epochs=3, out=str(tmp_path),
                                      resume=True, **kwargs)
    assert np.array_equal(full, resumed)
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1, 2, 3] == [r["epoch"] for r in history]


def test_blas_threads_flag_limits_blas_in_process(tmp_path):
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info, threadpool_limits
    with threadpool_limits(None):   # restore the test process's limits afterwards
        assert cli.main(["train", "--model", "mlp", "--optimizer", "adam", "--epochs", "1", "--batch-size", "512",
                         "--blas-threads", "1", "--out", str(tmp_path), "--no-progress"]) == 0
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


def test_resume_refuses_a_checkpoint_of_a_different_run(tmp_path, capsys):
    out = str(tmp_path)
    args = ["train", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--batch-size", "512", "--out", out,
            "--no-progress"]
    assert cli.main(args + ["--lr", "0.1"]) == 0
    assert cli.main(args + ["--lr", "0.2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "differs from the checkpoint" in err and "settings" in err
    assert cli.main(args + ["--lr", "0.1", "--resume", "--epochs", "2"]) == 0   # more epochs of the same run: fine


def test_non_finite_parameters_from_an_optimizer_stop_training_before_they_are_saved(tmp_path, monkeypatch):
    """Defence in depth: even an optimiser that forgot to reject a step cannot put NaN in the checkpoint."""
    real = training.make_optimizer

    def broken(name, prog, **settings):
        opt = real(name, prog, **settings)
        step = opt.step

        def step_that_breaks_at_3(theta, batch):
            theta, stats = step(theta, batch)
            return (theta * np.nan if opt.steps == 3 else theta), stats
        opt.step = step_that_breaks_at_3
        return opt
    monkeypatch.setattr(training, "make_optimizer", broken)
    with pytest.raises(training.NonFiniteParameters, match="batch 3"):
        training.train(nn.mlp([64, 32, 10], l2=1e-4), data.load("digits"), "sgd", epochs=1, batch_size=128,
                       out=str(tmp_path), checkpoint_every=1, **QUIET)
    saved = training.load_checkpoint(str(tmp_path / "checkpoint.pkl"))
    assert saved["batch"] == 2 and np.all(np.isfinite(saved["theta"]))


MODELS_FILE = """
import rgraph as rg
from rgraph import ops


def linear(name="linear", inputs=("x", "y"), classes=10):
    g = rg.Graph(name)
    x, y = g.input(inputs[0], (None, 64)), g.input(inputs[1], (None,), dtype="int64")
    z = g.output(ops.matmul(x, g.param("W", (64, classes))))
    g.set_loss(ops.softmax_cross_entropy(z, y))
    return g


def renamed():
    return linear("renamed", inputs=("images", "labels"))


def five_classes():
    return linear("five", classes=5)


def no_loss():
    g = rg.Graph("noloss")
    g.output(ops.matmul(g.input("x", (None, 64)), g.param("W", (64, 10))))
    return g


def needs_width(width):
    return linear()


notfunc = 3
"""

BAD_INPUT = {   # extra arguments -> what the one line on stderr says
    "out is a file": (["--out", "{tmp}/afile"], "is a file"),
    "bad setting": (["--optimizer", "newton-cg", "--set", "curvature=foo"], "curvature"),
    "garbage checkpoint": (["--resume", "--out", "{tmp}/garbage"],
                           "checkpoint {tmp}/garbage/checkpoint.pkl cannot be read"),
    "truncated checkpoint": (["--resume", "--out", "{tmp}/truncated"], "cannot be read"),
    "inputs not x, y": (["--model", "{tmp}/models.py:renamed"], "inputs ['images', 'labels']; rgraph train needs "
                                                                "exactly two, named 'x'"),
    "outputs not classes": (["--model", "{tmp}/models.py:five_classes"], "outputs (N, 5), but the digits data has 10"),
    "no loss": (["--model", "{tmp}/models.py:no_loss"], "RuleError"),
    "not callable": (["--model", "{tmp}/models.py:notfunc"], "is not a function"),
    "needs arguments": (["--model", "{tmp}/models.py:needs_width"], "missing 1 required positional argument"),
    "mnist without a path": (["--data", "mnist"], "needs --data-path"),
    "npz with NaN": (["--data", "npz", "--data-path", "{tmp}/nan.npz"], "nan.npz: x holds non-finite values"),
}


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "models.py").write_text(MODELS_FILE)
    for folder, content in (("garbage", b"garbage\n"), ("truncated", pickle.dumps({"theta": np.ones(500)})[:300])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "checkpoint.pkl").write_bytes(content)
    x = np.random.default_rng(0).standard_normal((40, 64))
    x[7, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(40) % 10)
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_on_stderr_and_status_2(case, bad_files, capsys):
    extra, message = BAD_INPUT[case]
    tmp = str(bad_files)
    args = ["train", "--model", "mlp", "--epochs", "1", "--batch-size", "512", "--no-progress", "--out", f"{tmp}/run"]
    assert cli.main(args + [a.format(tmp=tmp) for a in extra]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("rgraph train: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp) in err
    assert captured.out == ""   # no "... writing" header line before the error


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"),
                                         ("--batch-size", "-5"), ("--checkpoint-every", "-1"), ("--blas-threads", "0")])
def test_counts_out_of_range_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err


def test_backend_cupy_without_cupy_says_what_it_needs(tmp_path, capsys):
    from rgraph.backends import cupy_usable
    if cupy_usable():
        pytest.skip("CuPy is usable here")
    assert cli.main(["train", "--model", "mlp", "--backend", "cupy", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "backend 'cupy' needs CuPy" in capsys.readouterr().err


def test_ctrl_c_says_where_the_last_checkpoint_is_and_exits_130(tmp_path, capsys, monkeypatch):
    real = training.save_checkpoint

    def interrupt_after_the_batch_2_checkpoint(path, payload):
        real(path, payload)
        if payload["batch"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(training, "save_checkpoint", interrupt_after_the_batch_2_checkpoint)
    out = str(tmp_path / "run")
    args = ["train", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--batch-size", "256",
            "--checkpoint-every", "2", "--no-progress", "--out", out]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "in epoch 1 after batch 2" in err
    assert os.path.join(out, "checkpoint.pkl") in err and f"--resume --out {out}" in err

    def interrupt_before_saving(path, payload):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "save_checkpoint", interrupt_before_saving)
    assert cli.main(args) == 130   # a new run into the folder: the checkpoint there is not its own
    assert "interrupted before this run wrote a checkpoint" in capsys.readouterr().err.splitlines()[-1]


def test_rerun_warns_before_replacing_a_checkpoint_and_a_finished_resume_says_so(tmp_path, capsys):
    out = str(tmp_path)
    args = ["train", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--batch-size", "512", "--out", out,
            "--no-progress"]
    assert cli.main(args) == 0
    assert capsys.readouterr().err == ""
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert cli.main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "already trained to epoch 1; raise --epochs" in captured.out and captured.err == ""
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and f"{out} holds the checkpoint of an earlier run" in err


def test_help_has_examples_and_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # one help line per flag
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--resume" in text.split("examples:")[1]
    assert "samples per optimiser step (default: 128)" in text and "sgd 0.05" in text
    assert "(default: None)" not in text and "(default: False)" not in text
