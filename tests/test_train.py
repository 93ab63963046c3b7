"""Training: `rgraph train` reaches 97% on digits with Newton-CG and FITRE, resumes bit for bit,
writes its files atomically, and refuses bad input clearly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rgraph import cli, data, nn, train as training


def _final_accuracy(out):
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return lines[-1]["test_accuracy"], lines


@pytest.mark.parametrize("optimizer, epochs", [("fitre", 5), ("newton-cg", 10)])
def test_rgraph_train_reaches_97_percent_on_digits(tmp_path, optimizer, epochs):
    out = str(tmp_path / optimizer)
    assert cli.main(["train", "--optimizer", optimizer, "--epochs", str(epochs), "--out", out, "--no-progress"]) == 0
    accuracy, lines = _final_accuracy(out)
    assert accuracy >= 0.97, lines
    assert len(lines) == epochs and {"train_loss", "test_loss", "test_accuracy", "time", "rejected"} <= set(lines[-1])
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["optimizer"] == optimizer and config["model"] == "small_cnn" and config["dataset"] == "digits"


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


def test_mid_epoch_checkpoint_resumes_identically(tmp_path, monkeypatch):
    ds = data.load("digits")
    kwargs = dict(batch_size=256, progress=False, log=lambda s: None)
    full, _ = training.train(nn.small_cnn(l2=1e-4), ds, "newton-cg", epochs=2, **kwargs)

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
    resumed, _ = training.train(nn.small_cnn(l2=1e-4), ds, "newton-cg", epochs=2, out=str(tmp_path), resume=True, **kwargs)
    assert np.array_equal(full, resumed)


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
