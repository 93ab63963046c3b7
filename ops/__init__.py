"""The built-in op library (``rgraph.ops``), one module per family."""
from .elementwise import (ACTIVATIONS, add, div, exp, greater, greater_equal, less, less_equal, log, log1p, mul,
                          neg, power, relu, sigmoid, softplus, sqrt, square, sub, swish, tanh, where)
from .linalg import (amax, broadcast_to, concat, count, dense, logsumexp, matmul, matmul_add_op, mean, onehot, pad_axis,
                     reshape, slice_axis, softmax, stop_gradient, sum, transpose)
from .loss import LOSSES, mse, softmax_cross_entropy
from rgraph.op import REGISTRY as _REGISTRY

CORE_OPS = tuple(_REGISTRY)  # the elementwise, linalg and loss families (tests require a checker case for each)

from .conv import (col2im, col2im_op, conv2d, conv2d_input_grad, conv2d_weight_grad, im2col, im2col_op, weight_matrix,
                   weights_from_matrix, weights_to_matrix, windows, windows_adjoint)  # noqa: E402
from .norm import batchnorm, batchnorm1d, rsqrt  # noqa: E402
from .pool import (argmax, avgpool2d, flatten, gather, global_avgpool, maxpool2d, pool_argmax, pool_argmax_op, pool_max_op,
                   pool_gather, pool_gather_op, pool_scatter, pool_scatter_op, scatter)  # noqa: E402
