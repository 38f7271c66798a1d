"""im2col / col2im and max pooling for NHWC tensors: the argument checks, the
public functions, and which back end runs them.

Every public function checks its arguments (dtype, shapes, geometry, argmax),
allocates its outputs, then calls a kernel: the native one of ``spark.matrix``
(loaded and self-tested by spark.native) or the NumPy one of
spark.im2col_numpy, which give bit-identical results. One back end serves
every function, NumPy if the extension cannot be loaded or fails its
self-test (``SPARK_CNN_IM2COL=numpy`` forces it); `backend()` says which.
The ``numpy_*`` functions always run the NumPy kernels.

    im2col(x, kh, kw, stride=1, pad=0)       x (N, H, W, C) -> (N*OH*OW, KH*KW*C)
    col2im(cols, x_shape, kh, kw, stride=1, pad=0)    the adjoint -> (N, H, W, C)
    maxpool_forward(x, kh, kw, stride)       -> out, argmax (N, OH, OW, C)
    maxpool_backward(dout, argmax, h, w, kh, kw, stride)       -> dx (N, H, W, C)
    maxpool_relu_forward(x, bias, kh, kw, stride)  -> relu(maxpool(x + bias)),
        argmax 2 bits and ReLU mask 1 bit per pooled value (windows <= 4 values)
    maxpool_relu_backward(dout, argmax, positive, h, w, kh, kw, stride) -> dx, dbias

Row ``(n*OH + oh)*OW + ow``, column ``(kh*KW + kw)*C + c`` of im2col holds
``x[n, oh*stride-pad+kh, ow*stride-pad+kw, c]`` (0 in the padding). Pooling
takes the first maximum of a window (a value wins only if strictly greater; a
NaN at offset 0 is kept, elsewhere never picked); its argmax is the offset
``kh*KW + kw``. Each function's docstring gives its shapes.
"""

from __future__ import annotations

import operator
import types

import numpy as np

from . import im2col_numpy, native

__all__ = [
    "im2col",
    "col2im",
    "numpy_im2col",
    "numpy_col2im",
    "maxpool_forward",
    "maxpool_backward",
    "numpy_maxpool_forward",
    "numpy_maxpool_backward",
    "maxpool_relu_forward",
    "maxpool_relu_backward",
    "numpy_maxpool_relu_forward",
    "numpy_maxpool_relu_backward",
    "backend",
    "backend_error",
    "backend_info",
    "output_size",
]


# --------------------------------------------------------------- validation
#
# Every check on the caller's arguments lives here, once, for both back ends.
# The public functions (built by _front_ends below) validate and normalise
# their arguments, allocate the outputs, and only then hand C-contiguous
# arrays of the right dtype and shape plus plain integer geometry to a kernel:
# the NumPy ones of spark.im2col_numpy or the native ones of spark.matrix.

def _int(value, name, minimum):
    if type(value) is int and value >= minimum:   # fast path (not bool)
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _span(size, k, stride, pad):
    """Window positions along one axis (arguments already validated)."""
    return (size + 2 * pad - k) // stride + 1


def output_size(size, k, stride=1, pad=0):
    """Number of window positions along one axis: (size + 2*pad - k)//stride + 1.

    Raises ValueError if k < 1, stride < 1, pad < 0 or the window is larger
    than the padded input.
    """
    size = _int(size, "size", 0)
    k = _int(k, "kernel size", 1)
    stride = _int(stride, "stride", 1)
    pad = _int(pad, "pad", 0)
    if k > size + 2 * pad:
        raise ValueError(f"kernel size {k} is larger than the padded input "
                         f"{size + 2 * pad} (size={size}, pad={pad})")
    return _span(size, k, stride, pad)


def _geometry(func, shape, kh, kw, stride, pad):
    """Validate im2col/col2im arguments for an NHWC shape; return
    (n, h, w, c, kh, kw, stride, pad, oh, ow)."""
    kh = _int(kh, "kh", 1)
    kw = _int(kw, "kw", 1)
    stride = _int(stride, "stride", 1)
    pad = _int(pad, "pad", 0)
    if len(shape) != 4:
        raise ValueError(f"{func}: expected a 4-D NHWC shape (N, H, W, C), "
                         f"got {tuple(shape)}")
    n, h, w, c = [_int(s, "x_shape entry", 0) for s in shape]
    if kh > h + 2 * pad or kw > w + 2 * pad:
        raise ValueError(
            f"{func}: kernel {kh}x{kw} is larger than the padded input "
            f"{h + 2 * pad}x{w + 2 * pad} (H={h}, W={w}, pad={pad})")
    return (n, h, w, c, kh, kw, stride, pad,
            _span(h, kh, stride, pad), _span(w, kw, stride, pad))


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_array(a, func, what):
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{func}: {what} dtype must be float32 or float64, "
                         f"got {a.dtype}")
    return np.ascontiguousarray(a)


def _check_4d(a, func, what, axes):
    if a.ndim != 4:
        raise ValueError(f"{func}: {what} must be 4-D {axes}, "
                         f"got shape {a.shape}")


MAX_POOL_WINDOW = 256  # KH*KW: argmax offsets are stored as uint8


def _pool_geometry(func, shape, kh, kw, stride):
    """Validate pooling arguments for an input shape; return (kh, kw, stride,
    oh, ow)."""
    kh = _int(kh, "kh", 1)
    kw = _int(kw, "kw", 1)
    stride = _int(stride, "stride", 1)
    _, h, w, _ = shape
    if kh * kw > MAX_POOL_WINDOW:
        raise ValueError(f"{func}: a {kh}x{kw} window has more than "
                         f"{MAX_POOL_WINDOW} values (argmax is uint8)")
    if kh > h or kw > w:
        raise ValueError(f"{func}: window {kh}x{kw} is larger than the "
                         f"input {h}x{w}")
    return kh, kw, stride, _span(h, kh, stride, 0), _span(w, kw, stride, 0)


# ------------------------------------------------------------ front ends

def _front_ends(kernels, prefix):
    """The four public functions running `kernels` (spark.matrix or
    spark.im2col_numpy), named prefix + im2col, col2im, maxpool_forward,
    maxpool_backward; each carries the kernel it calls as ``.kernel``.

    Kernel contract (both back ends): arguments already validated, arrays
    C-contiguous with matching dtypes and shapes, outputs preallocated with
    undefined contents and completely overwritten by the kernel.
    """
    im2col_kernel, col2im_kernel = kernels.im2col, kernels.col2im
    forward_kernel = kernels.maxpool_forward
    backward_kernel = kernels.maxpool_backward

    def im2col(x, kh, kw, stride=1, pad=0):
        """NHWC x (N, H, W, C) -> cols (N*OH*OW, KH*KW*C), dtype of x."""
        x = _float_array(x, "im2col", "x")
        _check_4d(x, "im2col", "x", "NHWC (N, H, W, C)")
        n, h, w, c, kh, kw, s, p, oh, ow = _geometry(
            "im2col", x.shape, kh, kw, stride, pad)
        cols = np.empty((n * oh * ow, kh * kw * c), dtype=x.dtype)
        im2col_kernel(x, cols, n, h, w, c, kh, kw, s, p)
        return cols

    def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
        """Adjoint of im2col: cols (N*OH*OW, KH*KW*C) -> dx of shape x_shape."""
        cols = _float_array(cols, "col2im", "cols")
        try:
            shape = tuple(x_shape)
        except TypeError:
            raise ValueError(f"col2im: x_shape must be a sequence "
                             f"(N, H, W, C), got {x_shape!r}") from None
        n, h, w, c, kh, kw, s, p, oh, ow = _geometry(
            "col2im", shape, kh, kw, stride, pad)
        expected = (n * oh * ow, kh * kw * c)
        if cols.shape != expected:
            raise ValueError(f"col2im: cols must have shape {expected} for "
                             f"x_shape={(n, h, w, c)}, kernel {kh}x{kw}, "
                             f"stride={s}, pad={p}; got {cols.shape}")
        dx = np.empty((n, h, w, c), dtype=cols.dtype)
        col2im_kernel(cols, dx, n, h, w, c, kh, kw, s, p)
        return dx

    def maxpool_forward(x, kh, kw, stride):
        """Max pooling, no padding: x (N, H, W, C) -> (out, argmax), both
        (N, OH, OW, C); out has the dtype of x, argmax is uint8."""
        x = _float_array(x, "maxpool_forward", "x")
        _check_4d(x, "maxpool_forward", "x", "NHWC (N, H, W, C)")
        kh, kw, s, oh, ow = _pool_geometry("maxpool_forward", x.shape, kh, kw,
                                           stride)
        n, h, w, c = x.shape
        out = np.empty((n, oh, ow, c), dtype=x.dtype)
        argmax = np.empty((n, oh, ow, c), dtype=np.uint8)
        forward_kernel(x, out, argmax, n, h, w, c, kh, kw, s)
        return out, argmax

    def maxpool_backward(dout, argmax, h, w, kh, kw, stride):
        """Gradient of maxpool_forward: dout, argmax (N, OH, OW, C) -> dx
        (N, H, W, C) with the dtype of dout, 0.0 plus every dout entry added
        where its argmax points (overlapping windows in increasing (oh, ow)
        order; a lone -0.0 becomes +0.0)."""
        dout = _float_array(dout, "maxpool_backward", "dout")
        _check_4d(dout, "maxpool_backward", "dout", "(N, OH, OW, C)")
        argmax = np.asarray(argmax)
        if argmax.dtype != np.uint8:
            raise ValueError(f"maxpool_backward: argmax dtype must be uint8, "
                             f"got {argmax.dtype}")
        n, c = dout.shape[0], dout.shape[3]
        h = _int(h, "h", 0)
        w = _int(w, "w", 0)
        kh, kw, s, oh, ow = _pool_geometry("maxpool_backward", (n, h, w, c),
                                           kh, kw, stride)
        if dout.shape != (n, oh, ow, c):
            raise ValueError(f"maxpool_backward: dout must have shape "
                             f"{(n, oh, ow, c)} for H={h}, W={w}, window "
                             f"{kh}x{kw}, stride={s}; got {dout.shape}")
        if argmax.shape != dout.shape:
            raise ValueError(f"maxpool_backward: argmax shape {argmax.shape} "
                             f"differs from dout shape {dout.shape}")
        if argmax.size and int(argmax.max()) >= kh * kw:
            raise ValueError(f"maxpool_backward: argmax holds an offset >= "
                             f"{kh * kw} (not a {kh}x{kw} window offset)")
        argmax = np.ascontiguousarray(argmax)
        dx = np.empty((n, h, w, c), dtype=dout.dtype)
        backward_kernel(dout, argmax, dx, n, h, w, c, kh, kw, s)
        return dx

    functions = (im2col, col2im, maxpool_forward, maxpool_backward)
    for function, kernel in zip(functions, (im2col_kernel, col2im_kernel,
                                            forward_kernel, backward_kernel)):
        function.__name__ = function.__qualname__ = prefix + function.__name__
        function.kernel = kernel
    return functions


MAX_FUSED_WINDOW = 4  # KH*KW of maxpool_relu_*: argmax offsets take 2 bits


def _fused_geometry(func, shape, kh, kw, stride):
    """Validate maxpool_relu arguments for an input shape; return (kh, kw,
    stride, oh, ow)."""
    kh = _int(kh, "kh", 1)
    kw = _int(kw, "kw", 1)
    stride = _int(stride, "stride", 1)
    _, h, w, _ = shape
    if kh * kw > MAX_FUSED_WINDOW:
        raise ValueError(f"{func}: a {kh}x{kw} window has more than "
                         f"{MAX_FUSED_WINDOW} values (argmax takes 2 bits)")
    if stride < kh or stride < kw:
        raise ValueError(f"{func}: windows {kh}x{kw} with stride {stride} "
                         f"overlap (need stride >= {max(kh, kw)})")
    if kh > h or kw > w:
        raise ValueError(f"{func}: window {kh}x{kw} is larger than the "
                         f"input {h}x{w}")
    return kh, kw, stride, _span(h, kh, stride, 0), _span(w, kw, stride, 0)


def _packed_uint8(a, func, what, shape):
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ValueError(f"{func}: {what} dtype must be uint8, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{func}: {what} must have shape {shape}, "
                         f"got {a.shape}")
    return np.ascontiguousarray(a)


def _fused_front_ends(kernels, prefix):
    """maxpool_relu_forward and maxpool_relu_backward running `kernels`
    (same contract as _front_ends)."""
    forward_kernel = kernels.maxpool_relu_forward
    backward_kernel = kernels.maxpool_relu_backward

    def maxpool_relu_forward(x, bias, kh, kw, stride):
        """relu(maxpool(x + bias)), equal to maxpool(relu(x + bias)): x (N, H,
        W, C), bias (C,) -> (out, argmax, positive); out (N, OH, OW, C) of the
        dtype of x; argmax (N, OH, OW, ceil(C/4)) uint8, the window offsets
        of maxpool_forward 2 bits each (channel 4q + r in bits 2r..2r+1 of
        byte q); positive (N, OH, OW, ceil(C/8)) uint8, np.packbits(out > 0)
        along C. Unused bits are 0."""
        func = "maxpool_relu_forward"
        x = _float_array(x, func, "x")
        _check_4d(x, func, "x", "NHWC (N, H, W, C)")
        n, h, w, c = x.shape
        bias = np.ascontiguousarray(bias)
        if bias.dtype != x.dtype or bias.shape != (c,):
            raise ValueError(f"{func}: bias must be ({c},) {x.dtype}, got "
                             f"{bias.shape} {bias.dtype}")
        kh, kw, s, oh, ow = _fused_geometry(func, x.shape, kh, kw, stride)
        out = np.empty((n, oh, ow, c), dtype=x.dtype)
        argmax = np.empty((n, oh, ow, (c + 3) // 4), dtype=np.uint8)
        positive = np.empty((n, oh, ow, (c + 7) // 8), dtype=np.uint8)
        forward_kernel(x, bias, out, argmax, positive, n, h, w, c, kh, kw, s)
        return out, argmax, positive

    def maxpool_relu_backward(dout, argmax, positive, h, w, kh, kw, stride):
        """Gradient of maxpool_relu_forward -> (dx (N, H, W, C) of the dtype
        of dout, dbias (C,) float64): dx is 0 + dout at the argmax of every
        window whose maximum was positive, 0 elsewhere; dbias sums those
        gradients in increasing (n, oh, ow) order."""
        func = "maxpool_relu_backward"
        dout = _float_array(dout, func, "dout")
        _check_4d(dout, func, "dout", "(N, OH, OW, C)")
        n, c = dout.shape[0], dout.shape[3]
        h = _int(h, "h", 0)
        w = _int(w, "w", 0)
        kh, kw, s, oh, ow = _fused_geometry(func, (n, h, w, c), kh, kw,
                                            stride)
        if dout.shape != (n, oh, ow, c):
            raise ValueError(f"{func}: dout must have shape {(n, oh, ow, c)} "
                             f"for H={h}, W={w}, window {kh}x{kw}, "
                             f"stride={s}; got {dout.shape}")
        argmax = _packed_uint8(argmax, func, "argmax",
                               (n, oh, ow, (c + 3) // 4))
        positive = _packed_uint8(positive, func, "positive",
                                 (n, oh, ow, (c + 7) // 8))
        if kh * kw < 4 and argmax.size and \
                int(im2col_numpy.unpack_offsets(argmax, c).max()) >= kh * kw:
            raise ValueError(f"{func}: argmax holds an offset >= {kh * kw} "
                             f"(not a {kh}x{kw} window offset)")
        dx = np.empty((n, h, w, c), dtype=dout.dtype)
        dbias = np.empty(c, dtype=np.float64)
        backward_kernel(dout, argmax, positive, dx, dbias, n, h, w, c, kh, kw,
                        s)
        return dx, dbias

    functions = (maxpool_relu_forward, maxpool_relu_backward)
    for function, kernel in zip(functions, (forward_kernel, backward_kernel)):
        function.__name__ = function.__qualname__ = prefix + function.__name__
        function.kernel = kernel
    return functions


def _api(kernels, prefix=""):
    """The public functions running `kernels` (spark.matrix or spark.im2col_numpy),
    by name (names prefixed by `prefix`)."""
    functions = _front_ends(kernels, prefix) + _fused_front_ends(kernels, prefix)
    return types.SimpleNamespace(**{f.__name__[len(prefix):]: f for f in functions})


# The NumPy kernels behind the checks, always available.
_NUMPY = _api(im2col_numpy, "numpy_")
numpy_im2col, numpy_col2im = _NUMPY.im2col, _NUMPY.col2im
numpy_maxpool_forward, numpy_maxpool_backward = _NUMPY.maxpool_forward, _NUMPY.maxpool_backward
numpy_maxpool_relu_forward = _NUMPY.maxpool_relu_forward
numpy_maxpool_relu_backward = _NUMPY.maxpool_relu_backward

# The live back end, bound here and nowhere else: the native kernels if
# spark.native loads them (SPARK_CNN_IM2COL=numpy says not to), else NumPy.
_NATIVE = native.load(_api, _NUMPY)
_LIVE = _api(_NATIVE.kernels) if _NATIVE.kernels is not None else _NUMPY
im2col, col2im = _LIVE.im2col, _LIVE.col2im
maxpool_forward, maxpool_backward = _LIVE.maxpool_forward, _LIVE.maxpool_backward
maxpool_relu_forward = _LIVE.maxpool_relu_forward
maxpool_relu_backward = _LIVE.maxpool_relu_backward


def backend():
    """"native" if the compiled extension is in use, else "numpy"."""
    return "numpy" if _LIVE is _NUMPY else "native"


def backend_error():
    """Why the native back end is not in use, or None if it is."""
    return _NATIVE.error


def backend_info():
    """Dict with keys backend, error, path (loaded shared object or None)."""
    return {"backend": backend(), "error": _NATIVE.error, "path": _NATIVE.path}
