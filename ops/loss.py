"""Losses: compositions of primitives, so their VJPs and R-ops (and so B in Gv = J^T B J v) are derived."""
from rgraph.errors import ShapeError
from rgraph.op import as_value

from .elementwise import square
from .linalg import logsumexp, mean, onehot, sum


def softmax_cross_entropy(z, labels):
    """mean_i [logsumexp(z_i) - z_i[y_i]] for logits z (N, C) and integer labels y (N,)."""
    z, labels = as_value(z), as_value(labels)
    if z.ndim != 2 or labels.ndim != 1 or labels.dtype != "int64":
        raise ShapeError(f"softmax_cross_entropy takes logits (N, C) and int64 labels (N,); got {z.type} and {labels.type}")
    if z.shape[0] != labels.shape[0]:
        raise ShapeError(f"softmax_cross_entropy: logits {z.type} and labels {labels.type} differ in batch size")
    picked = sum(z * onehot(labels, z.shape[1]), axis=1)
    return mean(logsumexp(z, axis=1) - picked, axis=0)


def mse(z, target):
    """mean over the batch of the squared error summed over outputs: (1/N) sum_i |z_i - t_i|^2."""
    z, target = as_value(z), as_value(target)
    if z.shape != target.shape:
        raise ShapeError(f"mse: output {z.type} and target {target.type} differ in shape")
    per_sample = sum(square(z - target), axis=tuple(range(1, z.ndim))) if z.ndim > 1 else square(z - target)
    return mean(per_sample, axis=0)


LOSSES = {"softmax_cross_entropy": softmax_cross_entropy, "mse": mse}
