"""Convolution as im2col + one GEMM, built on two pairs of linear primitives, each the other's VJP:

    im2col(x)   (N, C, H, W) -> (N, Ho*Wo, kh*kw*C)      the patch matrix of a GEMM convolution
    col2im(g)   (N, Ho*Wo, kh*kw*C) -> (N, C, H, W)      scatter-add each patch back (its adjoint)
    windows(x)  (N, C, H, W) -> (N, C, Ho, Wo, kh, kw)   every kh x kw window (a strided view)
    windows_adjoint(g)        -> (N, C, H, W)            scatter-add each window back

Being linear and each other's VJP, every pass of a convolutional network, the Hessian pass included,
is derived. Output size: floor((h + pad_top + pad_bottom - k) / s) + 1.

    conv2d(x, W, b) = im2col(x) @ weight_matrix(W)^T -> transposed to (N, O, Ho, Wo), plus b

Patch columns run (kh, kw, C), channels fastest: an NHWC image (the memory order of a convolution's
GEMM result and of the pooling ops' outputs) then moves into and out of a patch row in contiguous runs
of C, both in these kernels' block copies through an NHWC staging buffer and in the NumPy backend's
compiled loops. ``weight_matrix`` lays the OIHW weights out in the same column order. The kernels work
per sample (``per_sample``), which lets the NumPy backend run them on cache-sized batch chunks across
threads.
"""
import numpy as np

from rgraph.errors import ShapeError, fmt_shape
from rgraph.graph import FLOAT, Type
from rgraph.op import Op, empty, register, require_float

from .linalg import matmul, reshape, transpose


def pair(v, what):
    """An int or a pair of ints -> a pair."""
    out = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(out) != 2 or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in out):
        raise ShapeError(f"{what} must be a non-negative int or a pair of them, got {v!r}")
    return tuple(int(d) for d in out)


def padding_pairs(padding):
    """int | (ph, pw) | ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if isinstance(padding, (int, np.integer)):
        return ((int(padding),) * 2,) * 2
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
        return ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    if len(padding) == 2 and all(len(tuple(p)) == 2 for p in padding):
        out = tuple(tuple(int(q) for q in p) for p in padding)
        if min(min(p) for p in out) >= 0:
            return out
    raise ShapeError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)); got {padding!r}")


def window_shape(image, kernel, stride, padding):
    """(Ho, Wo) of the windows of an (H, W) image; a clear error when the kernel does not fit."""
    (h, w), (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = image, kernel, stride, padding
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ShapeError(f"kernel {kernel} and stride {stride} must be positive")
    if kh > h + pt + pb or kw > w + pl + pr:
        raise ShapeError(f"kernel {kh}x{kw} is larger than the padded input {h + pt + pb}x{w + pl + pr} "
                         f"(input {h}x{w}, padding {padding})")
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


class Windows(Op):
    """Every kernel window of a padded NCHW image: (N, C, H, W) -> (N, C, Ho, Wo, kh, kw).

    Linear when pad_value is 0; max pooling pads with -inf, whose derivative is still this op with 0.
    vjp: windows_adjoint(g). R{windows(x)} = windows(R{x}) with zero padding.
    """
    name, linear_in = "windows", (0,)

    def infer(self, x, kernel, stride, padding, pad_value=0.0):
        require_float(self, x)
        if x.ndim != 4:
            raise ShapeError(f"expects an NCHW input, got {fmt_shape(x.shape)}")
        ho, wo = window_shape(x.shape[2:], kernel, stride, padding)
        return Type(x.shape[:2] + (ho, wo) + tuple(kernel), FLOAT)

    def forward(self, xp, x, kernel, stride, padding, pad_value=0.0):
        (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
        if pt or pb or pl or pr:
            x = xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
        n, c, h, w = x.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        s = x.strides
        return xp.lib.stride_tricks.as_strided(x, (n, c, ho, wo, kh, kw),
                                               (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]))

    def vjp(self, node, g):
        x = node.inputs[0]
        return [windows_adjoint(g, x.shape[1:], **_geometry(node))]

    def rop(self, node, tangents):
        return windows(tangents[0], pad_value=0.0, **_geometry(node))


class WindowsAdjoint(Op):
    """Scatter-add windows back into an image (col2im), cropping the padding:
    (N, C, Ho, Wo, kh, kw) -> (N, C, H, W). vjp: windows(g)."""
    name, linear_in = "windows_adjoint", (0,)

    def infer(self, g, image, kernel, stride, padding):
        require_float(self, g)
        expected = window_shape(image[1:], kernel, stride, padding) + tuple(kernel)
        if g.ndim != 6 or g.shape[2:] != expected or g.shape[1] != image[0]:
            raise ShapeError(f"expects windows (N, {image[0]}) + {expected}, got {fmt_shape(g.shape)}")
        return Type(g.shape[:1] + tuple(image), FLOAT)

    def forward(self, xp, g, image, kernel, stride, padding):
        (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
        n, c, ho, wo = g.shape[:4]
        out = xp.zeros((n, c, image[1] + pt + pb, image[2] + pl + pr), dtype=g.dtype)
        for i in range(kh):  # a loop over kernel offsets only: each step adds a strided block
            for j in range(kw):
                out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += g[:, :, :, :, i, j]
        return out[:, :, pt:pt + image[1], pl:pl + image[2]]

    def vjp(self, node, g):
        return [windows(g, pad_value=0.0, **_geometry(node))]


def _geometry(node):
    return {k: node.attrs[k] for k in ("kernel", "stride", "padding")}


windows_op, windows_adjoint_op = register(Windows()), register(WindowsAdjoint())


def windows(x, kernel, stride, padding, pad_value=0.0):
    return windows_op(x, kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding), pad_value=float(pad_value))


def windows_adjoint(g, image, kernel, stride, padding):
    return windows_adjoint_op(g, image=tuple(image), kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding))


def _offsets(kernel, stride, out_hw):
    """For each kernel offset (i, j): the slices of a padded image that offset reads, over all windows."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


class Im2col(Op):
    """The patch matrix of a zero-padded NCHW image: (N, C, H, W) -> (N, Ho*Wo, kh*kw*C), columns
    ordered (kh, kw, C) as in ``weight_matrix(W)``. Linear; vjp: col2im(g). R{im2col(x)} = im2col(R{x})."""
    name, linear_in, per_sample, writes_out = "im2col", (0,), True, True

    def infer(self, x, kernel, stride, padding):
        require_float(self, x)
        if x.ndim != 4:
            raise ShapeError(f"expects an NCHW input, got {fmt_shape(x.shape)}")
        ho, wo = window_shape(x.shape[2:], kernel, stride, padding)
        return Type((x.shape[0], ho * wo, kernel[0] * kernel[1] * x.shape[1]), FLOAT)

    def forward(self, xp, x, kernel, stride, padding, out=None):
        (kh, kw), ((pt, pb), (pl, pr)) = kernel, padding
        n, c, h, w = x.shape
        ho, wo = window_shape((h, w), kernel, stride, padding)
        staged = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)  # NHWC: channel runs contiguous
        staged[:, pt:pt + h, pl:pl + w, :] = x.transpose(0, 2, 3, 1)
        if out is None:
            out = xp.empty((n, ho * wo, kh * kw * c), dtype=x.dtype)
        blocks = out.reshape(n, ho, wo, kh, kw, c)
        for i, j, rows, cols in _offsets(kernel, stride, (ho, wo)):
            blocks[:, :, :, i, j, :] = staged[:, rows, cols, :]
        return out

    def vjp(self, node, g):
        return [col2im(g, node.inputs[0].shape[1:], **_geometry(node))]


class Col2im(Op):
    """Scatter-add patches back into an image, cropping the padding: (N, Ho*Wo, kh*kw*C) -> (N, C, H, W).
    The adjoint of im2col; vjp: im2col(g)."""
    name, linear_in, per_sample, writes_out = "col2im", (0,), True, True
    out_order = (0, 2, 3, 1)  # NHWC in memory: the copy out of the NHWC staging runs over channels

    def infer(self, g, image, kernel, stride, padding):
        require_float(self, g)
        ho, wo = window_shape(image[1:], kernel, stride, padding)
        expected = (ho * wo, kernel[0] * kernel[1] * image[0])
        if g.ndim != 3 or g.shape[1:] != expected:
            raise ShapeError(f"expects patches (N,) + {expected}, got {fmt_shape(g.shape)}")
        return Type(g.shape[:1] + tuple(image), FLOAT)

    def forward(self, xp, g, image, kernel, stride, padding, out=None):
        (kh, kw), ((pt, pb), (pl, pr)) = kernel, padding
        (c, h, w), n = image, g.shape[0]
        ho, wo = window_shape((h, w), kernel, stride, padding)
        blocks = g.reshape(n, ho, wo, kh, kw, c)
        staged = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=g.dtype)
        for i, j, rows, cols in _offsets(kernel, stride, (ho, wo)):
            staged[:, rows, cols, :] += blocks[:, :, :, i, j, :]
        if out is None:
            out = empty(xp, (n, c, h, w), g.dtype, self.out_order)
        out[...] = staged[:, pt:pt + h, pl:pl + w, :].transpose(0, 3, 1, 2)
        return out

    def vjp(self, node, g):
        return [im2col(g, **_geometry(node))]


im2col_op, col2im_op = register(Im2col()), register(Col2im())


def im2col(x, kernel, stride=1, padding=0):
    """Patches (N, Ho*Wo, kh*kw*C), columns ordered (kh, kw, C) as in ``weight_matrix(W)``."""
    kernel, stride, padding = pair(kernel, "kernel"), pair(stride, "stride"), padding_pairs(padding)
    return im2col_op(x, kernel=kernel, stride=stride, padding=padding)


def col2im(g, image, kernel, stride=1, padding=0):
    """The adjoint of im2col: patches (N, Ho*Wo, kh*kw*C) summed back into an image of shape (C, H, W)."""
    kernel, stride, padding = pair(kernel, "kernel"), pair(stride, "stride"), padding_pairs(padding)
    return col2im_op(g, image=tuple(image), kernel=kernel, stride=stride, padding=padding)


PATCH_AXES = (0, 2, 3, 1)          # OIHW weight axes in patch-column order: (O, kh, kw, C)
PATCH_AXES_INVERSE = (0, 3, 1, 2)


def weight_matrix(W):
    """OIHW weights (O, C, kh, kw) -> (O, kh*kw*C), columns in im2col's order (a graph value)."""
    o, c, kh, kw = W.shape
    return reshape(transpose(W, PATCH_AXES), (o, kh * kw * c))


def weights_to_matrix(W):
    """``weight_matrix`` on an array (KFAC lays out its Kronecker factors as the GEMM does)."""
    return W.transpose(PATCH_AXES).reshape(W.shape[0], -1)


def weights_from_matrix(M, shape):
    """The inverse of ``weights_to_matrix``: (O, kh*kw*C) -> an array of OIHW ``shape``."""
    o, c, kh, kw = shape
    return M.reshape(o, kh, kw, c).transpose(PATCH_AXES_INVERSE)


def conv2d(x, W, b=None, stride=1, padding=0):
    """2-D convolution (cross-correlation) of NCHW ``x`` with OIHW ``W``: im2col + one GEMM.

    ``padding``: int, (ph, pw) or ((top, bottom), (left, right)) zeros.
    """
    if x.ndim != 4 or W.ndim != 4:
        raise ShapeError(f"conv2d takes an NCHW input and OIHW weights, got {x.type} and {W.type}")
    o, c, kh, kw = W.shape
    if x.shape[1] != c:
        raise ShapeError(f"conv2d: input has {x.shape[1]} channels but the weights {fmt_shape(W.shape)} expect {c}")
    stride, padding = pair(stride, "stride"), padding_pairs(padding)
    ho, wo = window_shape(x.shape[2:], (kh, kw), stride, padding)
    patches = im2col(x, (kh, kw), stride, padding)
    y = matmul(patches, weight_matrix(W), transpose_b=True)                    # (N, Ho*Wo, O)
    y = reshape(transpose(y, (0, 2, 1)), (x.shape[0], o, ho, wo))
    if b is not None:
        if b.shape != (o,):
            raise ShapeError(f"conv2d: bias {b.type} does not match {o} output channels")
        y = y + reshape(b, (o, 1, 1))
    return y


def conv2d_input_grad(g, W, image, stride=1, padding=0):
    """The transposed convolution: the adjoint of conv2d with respect to its input, for an output
    cotangent g (N, O, Ho, Wo) and an input of shape ``image`` = (C, H, W)."""
    o, c, kh, kw = W.shape
    stride, padding = pair(stride, "stride"), padding_pairs(padding)
    n, _, ho, wo = g.shape
    rows = reshape(transpose(reshape(g, (n, o, ho * wo)), (0, 2, 1)), (n, ho * wo, o))
    cols = matmul(rows, weight_matrix(W))                                       # (N, Ho*Wo, kh*kw*C)
    return col2im(cols, image, (kh, kw), stride, padding)


def conv2d_weight_grad(x, g, kernel, stride=1, padding=0):
    """The adjoint of conv2d with respect to its weights: dW (O, C, kh, kw) = g^T patches(x)."""
    kh, kw = pair(kernel, "kernel")
    n, o, ho, wo = g.shape
    rows = transpose(reshape(g, (n, o, ho * wo)), (0, 2, 1))                    # (N, Ho*Wo, O)
    patches = im2col(x, (kh, kw), stride, padding)
    return transpose(reshape(matmul(rows, patches, transpose_a=True), (o, kh, kw, x.shape[1])), PATCH_AXES_INVERSE)
