"""Batch normalisation with batch statistics, composed of reductions and elementwise ops, so all its
rules, second order included, are derived (the FITRE appendix differentiates it by hand)."""
from rgraph.errors import ShapeError
from rgraph.expr import E
from rgraph.op import elementwise

from .elementwise import square
from .linalg import mean, reshape

rsqrt = elementwise("rsqrt", lambda x: 1.0 / E.sqrt(x))


def _normalise(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes``, with the biased variance."""
    centred = x - mean(x, axis=axes, keepdims=True)
    return centred * rsqrt(mean(square(centred), axis=axes, keepdims=True) + eps)


def batchnorm(x, gamma, beta, eps=1e-5):
    """Per-channel batch norm of NCHW x over N, H, W: gamma * xhat + beta, gamma and beta (C,)."""
    if x.ndim != 4 or gamma.shape != (x.shape[1],) or beta.shape != (x.shape[1],):
        raise ShapeError(f"batchnorm takes x (N, C, H, W) and gamma, beta (C,); got {x.type}, {gamma.type}, {beta.type}")
    c = x.shape[1]
    return _normalise(x, (0, 2, 3), eps) * reshape(gamma, (c, 1, 1)) + reshape(beta, (c, 1, 1))


def batchnorm1d(x, gamma, beta, eps=1e-5):
    """Per-feature batch norm of (N, F) x over N: gamma * xhat + beta, gamma and beta (F,)."""
    if x.ndim != 2 or gamma.shape != x.shape[1:] or beta.shape != x.shape[1:]:
        raise ShapeError(f"batchnorm1d takes x (N, F) and gamma, beta (F,); got {x.type}, {gamma.type}, {beta.type}")
    return _normalise(x, (0,), eps) * gamma + beta
