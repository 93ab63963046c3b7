"""`rgraph train --optimizer newton-cg` and `--optimizer fitre` reach 97% test accuracy on digits with the
default model (small CNN) and default settings; about a minute together on a 2-core CPU."""
import json
import os

import pytest

from rgraph import cli


def _metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, epochs", [("fitre", 5), ("newton-cg", 10)])
def test_rgraph_train_reaches_97_percent_on_digits(tmp_path, optimizer, epochs):
    out = str(tmp_path / optimizer)
    assert cli.main(["train", "--optimizer", optimizer, "--epochs", str(epochs), "--out", out, "--no-progress"]) == 0
    lines = _metrics(out)
    accuracy = lines[-1]["test_accuracy"]
    assert accuracy >= 0.97, lines
    assert len(lines) == epochs and {"train_loss", "test_loss", "test_accuracy", "time", "rejected"} <= set(lines[-1])
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["optimizer"] == optimizer and config["model"] == "small_cnn" and config["dataset"] == "digits"


