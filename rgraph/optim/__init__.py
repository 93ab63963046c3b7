"""Optimisers on flat parameter vectors: CG, Newton-CG, KFAC, FITRE, SGD and Adam."""
from .base import OPTIMIZERS, Optimizer, finite, register
from .cg import CGResult, cg, steihaug
from .first_order import SGD, Adam
from .fitre import FITRE
from .kfac import KFAC, KFACPreconditioner, sample_cotangent
from .newton_cg import NewtonCG


def make_optimizer(name, prog, **settings) -> Optimizer:
    """An optimiser by name: "fitre", "newton-cg", "kfac", "sgd" or "adam"."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](prog, **settings)
