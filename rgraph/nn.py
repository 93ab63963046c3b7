"""Layer helpers and the model zoo: functions that build subgraphs with readable parameter names.

A layer is a small object with ``build(g, h, name) -> h``; ``Sequential`` names them (``conv1``,
``bn1``, ``fc1``, ...), builds the graph and attaches the loss. Shape problems are reported with the
layer's name and the shapes.

    >>> g = Sequential([Conv2d(16, 3, padding=1), Activation("swish"), MaxPool2d(2), Flatten(), Dense(10)],
    ...                input_shape=(1, 8, 8))
    >>> sorted(g.params)
    ['conv1.W', 'conv1.b', 'fc1.W', 'fc1.b']
"""
from __future__ import annotations

from .errors import ShapeError
from .graph import Graph


def _ops():
    from rgraph import ops
    return ops


def activation(name):
    ops = _ops()
    if callable(name):
        return name
    if name not in ops.ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ops.ACTIVATIONS)} or a callable")
    return ops.ACTIVATIONS[name]


class Layer:
    prefix = "layer"      # the parameter-name stem: conv1.W, fc2.b, ...

    def build(self, g, h, name):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """h @ W + b with W (in, out); 4-D inputs must be flattened first."""
    prefix = "fc"

    def __init__(self, out_features, bias=True, init="he_normal"):
        self.out_features, self.bias, self.init = int(out_features), bias, init

    def build(self, g, h, name):
        if h.ndim != 2:
            raise ShapeError(f"expects (N, features), got {h.type}; add Flatten() before it")
        W = g.param(f"{name}.W", (h.shape[1], self.out_features), init=self.init)
        b = g.param(f"{name}.b", (self.out_features,), init="zeros") if self.bias else None
        return _ops().dense(h, W, b)


class Conv2d(Layer):
    """conv2d with OIHW weights; ``in_channels`` is checked when given, else taken from the input."""
    prefix = "conv"

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, bias=True, in_channels=None, init="he_normal"):
        self.out_channels, self.kernel_size, self.stride, self.padding = int(out_channels), kernel_size, stride, padding
        self.bias, self.in_channels, self.init = bias, in_channels, init

    def build(self, g, h, name):
        from rgraph.ops.conv import pair
        if h.ndim != 4:
            raise ShapeError(f"expects an NCHW input, got {h.type}")
        if self.in_channels is not None and h.shape[1] != self.in_channels:
            raise ShapeError(f"expects {self.in_channels} input channels, got {h.shape[1]} ({h.type})")
        kh, kw = pair(self.kernel_size, "kernel_size")
        W = g.param(f"{name}.W", (self.out_channels, h.shape[1], kh, kw), init=self.init)
        b = g.param(f"{name}.b", (self.out_channels,), init="zeros") if self.bias else None
        return _ops().conv2d(h, W, b, stride=self.stride, padding=self.padding)


class MaxPool2d(Layer):
    prefix = "maxpool"

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def build(self, g, h, name):
        return _ops().maxpool2d(h, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    prefix = "avgpool"

    def build(self, g, h, name):
        return _ops().avgpool2d(h, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool(Layer):
    prefix = "gap"

    def build(self, g, h, name):
        return _ops().global_avgpool(h)


class BatchNorm2d(Layer):
    """Batch norm with batch statistics; gamma starts at ones, beta at zeros."""
    prefix = "bn"

    def __init__(self, eps=1e-5):
        self.eps = eps

    def build(self, g, h, name):
        ops = _ops()
        norm = ops.batchnorm if h.ndim == 4 else ops.batchnorm1d
        gamma = g.param(f"{name}.gamma", (h.shape[1],), init="ones")
        beta = g.param(f"{name}.beta", (h.shape[1],), init="zeros")
        return norm(h, gamma, beta, eps=self.eps)


class Flatten(Layer):
    prefix = "flatten"

    def build(self, g, h, name):
        return _ops().flatten(h)


class Activation(Layer):
    prefix = "act"

    def __init__(self, name="swish"):
        self.name = name
        activation(name)  # fail early on an unknown name

    def build(self, g, h, name):
        return activation(self.name)(h)


class Residual(Layer):
    """h + block(h): the block's layers are named inside the residual (res1.conv1.W, ...)."""
    prefix = "res"

    def __init__(self, layers):
        self.layers = list(layers)

    def build(self, g, h, name):
        out = _build_layers(g, h, self.layers, prefix=f"{name}.")
        if out.shape != h.shape:
            raise ShapeError(f"the block maps {h.type} to {out.type}; a residual needs equal shapes")
        return h + out


def _build_layers(g, h, layers, prefix=""):
    counts = {}
    for layer in layers:
        counts[layer.prefix] = counts.get(layer.prefix, 0) + 1
        name = f"{prefix}{layer.prefix}{counts[layer.prefix]}"
        try:
            h = layer.build(g, h, name)
        except ShapeError as e:
            if str(e).startswith("layer "):
                raise
            raise ShapeError(f"layer {name} ({type(layer).__name__}) on input {h.type}: {e}") from None
    return h


def Sequential(layers, input_shape, num_classes=None, loss="softmax_cross_entropy", l2=0.0, name="sequential") -> Graph:
    """A graph from a list of layers: input ``x`` (N, *input_shape), labels ``y`` (N,) int64 (or a float
    target for mse), output z after the last layer, and the loss (mean over the batch) with l2."""
    ops = _ops()
    if loss not in ops.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {sorted(ops.LOSSES)}")
    g = Graph(name)
    x = g.input("x", (None,) + tuple(int(d) for d in input_shape))
    z = g.output(_build_layers(g, x, layers))
    if num_classes is not None and z.shape[1:] != (num_classes,):
        raise ShapeError(f"graph {name!r}: the last layer gives {z.type}, expected (N, {num_classes})")
    y = g.input("y", (None,), dtype="int64") if loss == "softmax_cross_entropy" else g.input("y", z.shape)
    g.set_loss(ops.LOSSES[loss](z, y), l2=l2, kind=loss)
    return g


def mlp(sizes, activation="swish", loss="softmax_cross_entropy", l2=0.0, name="mlp", init="he_normal") -> Graph:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with parameters ``fc{i}.W`` (in, out) and
    ``fc{i}.b`` (i from 0); input ``x`` (N, sizes[0]); labels ``y`` (N,) int64 for softmax cross-entropy
    or a target ``y`` (N, sizes[-1]) for mse.

        >>> g = mlp([784, 1024, 1024, 10], activation="swish", l2=1e-3)
    """
    ops = _ops()
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp needs at least two positive layer sizes, got {sizes}")
    if loss not in ops.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {sorted(ops.LOSSES)}")
    act = globals()["activation"](activation)
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
    g.set_loss(ops.LOSSES[loss](z, y), l2=l2, kind=loss)
    return g


# The canonical VGG configurations (A, D, E): channels of 3x3 convolutions, "M" a 2x2 max pooling.
# Table 3 of the FITRE paper names these networks, but as converted to text it is garbled: its VGG11
# row lists nine convolutions and its VGG16 and VGG19 rows ten each (so "VGG19" would have fewer
# parameters than "VGG16"), matching none of the depths the names denote. The zoo follows the
# canonical definitions (8, 13 and 16 convolutions), which give the table's Linear(alpha = 512, beta)
# on 32x32 inputs.
VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg(name="vgg11", input_shape=(3, 32, 32), num_classes=10, activation="swish", batchnorm=False, l2=0.0,
        width=1.0) -> Graph:
    """VGG11/16/19 as in the FITRE paper: 3x3 convolutions (stride 1, padding 1), each followed by swish
    (and batch norm before it when ``batchnorm``), 2x2 max pooling with stride 2, one final Linear whose
    width follows from the input shape. On inputs too small for all five poolings, a pooling that
    would not fit (spatial size below 2) is left out. ``width`` scales every channel count (1.0 is
    the paper's)."""
    if name not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG {name!r}; use one of {sorted(VGG_CONFIGS)}")
    layers, size = [], list(input_shape[1:])
    for item in VGG_CONFIGS[name]:
        if item == "M":
            if min(size) >= 2:
                layers.append(MaxPool2d(2, 2))
                size = [s // 2 for s in size]
            continue
        layers.append(Conv2d(max(1, int(round(item * width))), 3, padding=1))
        if batchnorm:
            layers.append(BatchNorm2d())
        layers.append(Activation(activation))
    layers += [Flatten(), Dense(num_classes)]
    return Sequential(layers, input_shape, num_classes, l2=l2, name=name)


def small_cnn(input_shape=(1, 8, 8), num_classes=10, activation="swish", channels=(16, 32), l2=0.0,
              batchnorm=False) -> Graph:
    """A small CNN for 8x8 digits: [conv 3x3 (padding 1) -> swish -> maxpool 2] per entry of ``channels``
    (poolings that would not fit are left out), then Flatten and one Dense."""
    layers, size = [], list(input_shape[1:])
    for c in channels:
        layers.append(Conv2d(c, 3, padding=1))
        if batchnorm:
            layers.append(BatchNorm2d())
        layers.append(Activation(activation))
        if min(size) >= 2:
            layers.append(MaxPool2d(2))
            size = [s // 2 for s in size]
    layers += [Flatten(), Dense(num_classes)]
    return Sequential(layers, input_shape, num_classes, l2=l2, name="small_cnn")


def _mlp_for(input_shape=(64,), num_classes=10, hidden=(64,), **kw):
    features = 1
    for d in input_shape:
        features *= int(d)
    return mlp([features, *hidden, num_classes], **kw)


MODELS = {
    "mlp": _mlp_for,
    "small_cnn": small_cnn,
    "vgg11": lambda **kw: vgg("vgg11", **kw),
    "vgg16": lambda **kw: vgg("vgg16", **kw),
    "vgg19": lambda **kw: vgg("vgg19", **kw),
}
