"""The built-in op library (``rgraph.ops``), one module per family."""
from .elementwise import (ACTIVATIONS, add, div, exp, greater, greater_equal, less, less_equal, log, log1p, mul,
                          neg, power, relu, sigmoid, softplus, sqrt, square, sub, swish, tanh, where)
from .linalg import (amax, broadcast_to, count, dense, logsumexp, matmul, mean, onehot, reshape, softmax,
                     stop_gradient, sum, transpose)
from .loss import LOSSES, mse, softmax_cross_entropy
from rgraph.op import REGISTRY as _REGISTRY

CORE_OPS = tuple(_REGISTRY)  # the elementwise, linalg and loss families (tests require a checker case for each)
