"""Layer helpers and the model zoo: functions that build subgraphs with readable parameter names."""
from __future__ import annotations

from .graph import Graph


def _activation(name):
    from rgraph import ops
    if callable(name):
        return name
    if name not in ops.ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ops.ACTIVATIONS)} or a callable")
    return ops.ACTIVATIONS[name]


def mlp(sizes, activation="swish", loss="softmax_cross_entropy", l2=0.0, name="mlp", init="he_normal") -> Graph:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with parameters ``fc{i}.W`` (in, out) and
    ``fc{i}.b``; input ``x`` (N, sizes[0]); labels ``y`` (N,) int64 for softmax cross-entropy or a
    target ``y`` (N, sizes[-1]) for mse.

        >>> g = mlp([784, 1024, 1024, 10], activation="swish", l2=1e-3)
    """
    from rgraph import ops
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp needs at least two positive layer sizes, got {sizes}")
    if loss not in ops.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {sorted(ops.LOSSES)}")
    act = _activation(activation)
    g = Graph(name)
    h = g.input("x", (None, sizes[0]))
    y = g.input("y", (None,), dtype="int64") if loss == "softmax_cross_entropy" else g.input("y", (None, sizes[-1]))
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = g.param(f"fc{i}.W", (n_in, n_out), init=init)
        b = g.param(f"fc{i}.b", (n_out,), init="zeros")
        h = ops.dense(h, W, b)
        if i < last:
            h = act(h)
    z = g.output(h)
    g.set_loss(ops.LOSSES[loss](z, y), l2=l2)
    return g
