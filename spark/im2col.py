"""im2col / col2im and max pooling for NHWC tensors -- the one place that
picks the back end and the only place that validates arguments.

This module exposes every function of the native core (``spark.matrix``,
built from matrix_c.c): the im2col / col2im pair used by the convolution and
the max-pooling forward / backward pair used by spark.pool, each with a
pure-NumPy reference that gives bit-identical results.

Each public function checks its arguments (dtype, shapes, geometry, argmax),
computes the output sizes and allocates the outputs here, then calls a
kernel: a NumPy one from this module or a thin native one from
``spark.matrix``, which trusts these checks (the C core keeps its own guards
as a safety net).  Both back ends therefore raise the same errors.

Public API
----------
``im2col(x, kh, kw, stride=1, pad=0)``
    x (N, H, W, C) -> cols (N*OH*OW, KH*KW*C).  Row ``(n*OH + oh)*OW + ow``,
    column ``(kh*KW + kw)*C + c`` holds ``x[n, oh*stride-pad+kh,
    ow*stride-pad+kw, c]`` (0 inside the zero padding).
``col2im(cols, x_shape, kh, kw, stride=1, pad=0)``
    The adjoint: sums every cols entry back onto its source pixel.
``numpy_im2col`` / ``numpy_col2im``
    Pure-NumPy reference implementations (always available).
``maxpool_forward(x, kh, kw, stride)``
    Max pooling without padding: x (N, H, W, C) -> ``(out, argmax)``, both
    (N, OH, OW, C) with OH = (H - KH) // stride + 1; ``argmax`` (uint8) is
    the window offset ``kh*KW + kw`` of the maximum.  Offsets are scanned in
    increasing order from offset 0 and a value wins only if strictly greater
    (``>``): the first maximum wins ties, a NaN at offset 0 is kept, a NaN
    elsewhere is never picked.  KH*KW <= 256.
``maxpool_backward(dout, argmax, h, w, kh, kw, stride)``
    dout, argmax (N, OH, OW, C) -> dx (N, H, W, C): zero, plus every dout
    entry added at the input position its argmax points to.  Where windows
    overlap, each dx element receives its contributions in increasing
    (oh, ow) order, i.e. decreasing window offset (every dx element is
    ``0.0 + contributions``, so a lone -0.0 gradient becomes +0.0).
``numpy_maxpool_forward`` / ``numpy_maxpool_backward``
    Pure-NumPy reference implementations (always available).
``maxpool_relu_forward(x, bias, kh, kw, stride)``
    Bias add, ReLU and max pooling in one pass, for windows of at most 4
    values that do not overlap (stride >= KH, KW): x (N, H, W, C), bias (C,)
    -> ``(out, argmax, positive)``; out (N, OH, OW, C) = relu(maxpool(x +
    bias)), which equals maxpool(relu(x + bias)) exactly.  argmax (uint8,
    (N, OH, OW, ceil(C/4))) packs the window offsets (chosen as in
    maxpool_forward) 2 bits per channel, channel 4q + r in bits 2r..2r+1 of
    byte q; positive (uint8, (N, OH, OW, ceil(C/8))) is ``np.packbits(max >
    0, axis=-1)``, the ReLU mask of the pooled values.  Unused bits are 0.
``maxpool_relu_backward(dout, argmax, positive, h, w, kh, kw, stride)``
    -> ``(dx, dbias)``: dx (N, H, W, C) is 0 + dout at the argmax of every
    window whose maximum was positive and 0 elsewhere; dbias (C,) float64 is
    the sum of those gradients over the output pixels, added one by one in
    increasing (n, oh, ow) order.
``numpy_maxpool_relu_forward`` / ``numpy_maxpool_relu_backward``
    Pure-NumPy reference implementations (always available).
``backend()``
    ``"native"`` (the compiled ``spark.matrix`` extension) or ``"numpy"``.
``backend_error()``
    Why the native back end is not used (``None`` when it is).
``backend_info()``
    Dict with backend, error and the path of the loaded shared object.
``output_size(size, k, stride, pad)``
    ``(size + 2*pad - k) // stride + 1``.

Both back ends accept float32 and float64 and return the input dtype.  They
are bit-identical: im2col and the pooling forward pass only copy and compare,
and col2im / maxpool_backward add the contributions of every output element
in the same order (decreasing (kh, kw)).  One back end serves all functions:
if the extension cannot be loaded, or fails its self-test on any of them,
every public function falls back to NumPy.

Back-end selection
------------------
:mod:`spark.native` loads the extension (also out of a zipped egg), checks
it against the NumPy kernels and picks the back end;
``SPARK_CNN_IM2COL=numpy|native|auto`` steers it (see there).
"""

from __future__ import annotations

import operator
import types

import numpy as np

from . import native

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
# the NumPy kernels of this module or the native ones of spark.matrix.

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
    _NUMPY_KERNELS), named prefix + im2col, col2im, maxpool_forward,
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
        (N, H, W, C) with the dtype of dout."""
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
        """relu(maxpool(x + bias)): x (N, H, W, C), bias (C,) -> (out,
        argmax, positive); out (N, OH, OW, C) of the dtype of x, argmax
        (N, OH, OW, ceil(C/4)) and positive (N, OH, OW, ceil(C/8)) uint8."""
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
        of dout, dbias (C,) float64)."""
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
                int(_unpack_offsets(argmax, c).max()) >= kh * kw:
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


def _pack_offsets(offsets):
    """(..., C) window offsets < 4 -> (..., ceil(C/4)) uint8, 2 bits each."""
    c = offsets.shape[-1]
    padded = np.zeros(offsets.shape[:-1] + ((c + 3) // 4 * 4,), np.uint8)
    padded[..., :c] = offsets
    quads = padded.reshape(offsets.shape[:-1] + ((c + 3) // 4, 4))  # (..., C/4, 4)
    return (quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4
            | quads[..., 3] << 6).astype(np.uint8)


def _unpack_offsets(packed, c):
    """Inverse of _pack_offsets: (..., ceil(C/4)) uint8 -> (..., C) uint8."""
    shifts = np.array([0, 2, 4, 6], np.uint8)
    quads = (packed[..., None] >> shifts) & 3                  # (..., C/4, 4)
    flat = quads.reshape(packed.shape[:-1] + (4 * packed.shape[-1],))
    return flat[..., :c].astype(np.uint8)


# ------------------------------------------------------------ NumPy kernels

def _window(a, i, j, stride, oh, ow):
    """View of a (N, H, W, C) at window offset (i, j): (N, OH, OW, C)."""
    return a[:, i:i + stride * (oh - 1) + 1:stride,
             j:j + stride * (ow - 1) + 1:stride, :]


def _numpy_im2col_kernel(x, cols, n, h, w, c, kh, kw, s, p):
    oh, ow = _span(h, kh, s, p), _span(w, kw, s, p)
    if p:
        xp = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=x.dtype)
        xp[:, p:p + h, p:p + w, :] = x
    else:
        xp = x
    out = cols.reshape(n, oh, ow, kh, kw, c)          # a view: cols is C-order
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = _window(xp, i, j, s, oh, ow)


def _numpy_col2im_kernel(cols, dx, n, h, w, c, kh, kw, s, p):
    """The kernel offsets are visited in DECREASING (kh, kw) order, which is
    the order in which the C code (walking cols rows in increasing order) adds
    the contributions to each output element."""
    oh, ow = _span(h, kh, s, p), _span(w, kw, s, p)
    cv = cols.reshape(n, oh, ow, kh, kw, c)
    if p:
        dxp = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=dx.dtype)
    else:
        dxp = dx
        dxp.fill(0)
    for i in range(kh - 1, -1, -1):
        for j in range(kw - 1, -1, -1):
            target = _window(dxp, i, j, s, oh, ow)
            target += cv[:, :, :, i, j, :]
    if p:
        dx[...] = dxp[:, p:p + h, p:p + w, :]


def _numpy_maxpool_forward_kernel(x, out, argmax, n, h, w, c, kh, kw, s):
    """Every window offset is a strided view of x, so pooling is KH*KW
    whole-array compare-and-select passes in increasing offset order."""
    oh, ow = _span(h, kh, s, 0), _span(w, kw, s, 0)
    np.copyto(out, _window(x, 0, 0, s, oh, ow))
    argmax.fill(0)
    larger = np.empty(out.shape, np.bool_)
    for offset in range(1, kh * kw):
        view = _window(x, *divmod(offset, kw), s, oh, ow)
        np.greater(view, out, out=larger)
        np.copyto(out, view, where=larger)
        np.copyto(argmax, np.uint8(offset), where=larger)


def _numpy_maxpool_backward_kernel(dout, argmax, dx, n, h, w, c, kh, kw, s):
    """The window offsets are visited in DECREASING order, which is the order
    in which the C code (walking the output pixels in increasing order) adds
    the contributions to each dx element of overlapping windows."""
    oh, ow = _span(h, kh, s, 0), _span(w, kw, s, 0)
    dx.fill(0)
    # 0.0 + dout: what a contribution added to a zero dx element gives (turns
    # -0.0 into +0.0, like the C code).  Copying it is then the same as adding
    # it wherever the element is still zero: always when windows do not
    # overlap, and on the first pass otherwise.  Later passes add
    # where(chosen, dout, 0); the extra +0.0 leaves every other element
    # unchanged (a sum that starts at +0.0 is never -0.0).
    first = dout + dout.dtype.type(0)
    overlapping = s < kh or s < kw
    chosen = np.empty(dout.shape, np.bool_)
    for offset in range(kh * kw - 1, -1, -1):
        np.equal(argmax, np.uint8(offset), out=chosen)
        target = _window(dx, *divmod(offset, kw), s, oh, ow)
        if overlapping and offset != kh * kw - 1:
            target += np.where(chosen, dout, dout.dtype.type(0))
        else:
            np.copyto(target, first, where=chosen)


def _numpy_maxpool_relu_forward_kernel(x, bias, out, argmax, positive, n, h,
                                       w, c, kh, kw, s):
    """Pooling of x + bias as in maxpool_forward, then the ReLU on the
    pooled values (NaN kept, like the C code: NaN <= 0 is false)."""
    offsets = np.empty(out.shape, np.uint8)
    _numpy_maxpool_forward_kernel(x + bias, out, offsets, n, h, w, c, kh, kw,
                                  s)
    positive[...] = np.packbits(out > 0, axis=-1)
    np.copyto(out, out.dtype.type(0), where=out <= 0)
    argmax[...] = _pack_offsets(offsets)


def _numpy_maxpool_relu_backward_kernel(dout, argmax, positive, dx, dbias, n,
                                        h, w, c, kh, kw, s):
    """The pooled gradients where the ReLU passed them (0 + dout, so never
    -0.0), summed into dbias row by row (accumulate: the C code's order) and
    routed to the window maxima by the maxpool_backward kernel."""
    passed = np.unpackbits(positive, axis=-1, count=c).view(np.bool_)
    zero = dout.dtype.type(0)
    kept = np.where(passed, dout + zero, zero)                  # (N, OH, OW, C)
    rows = kept.reshape(-1, c).astype(np.float64)
    dbias[...] = np.add.accumulate(rows, axis=0)[-1] if len(rows) else 0.0
    _numpy_maxpool_backward_kernel(kept, _unpack_offsets(argmax, c), dx, n, h,
                                   w, c, kh, kw, s)


_NUMPY_KERNELS = types.SimpleNamespace(
    im2col=_numpy_im2col_kernel,
    col2im=_numpy_col2im_kernel,
    maxpool_forward=_numpy_maxpool_forward_kernel,
    maxpool_backward=_numpy_maxpool_backward_kernel,
    maxpool_relu_forward=_numpy_maxpool_relu_forward_kernel,
    maxpool_relu_backward=_numpy_maxpool_relu_backward_kernel,
)


def _api(kernels, prefix=""):
    """The public functions running `kernels`, by name (names prefixed by `prefix`)."""
    functions = _front_ends(kernels, prefix) + _fused_front_ends(kernels, prefix)
    return types.SimpleNamespace(**{f.__name__[len(prefix):]: f for f in functions})


# Pure-NumPy reference implementations, always available.
_NUMPY = _api(_NUMPY_KERNELS, "numpy_")
numpy_im2col, numpy_col2im = _NUMPY.im2col, _NUMPY.col2im
numpy_maxpool_forward, numpy_maxpool_backward = _NUMPY.maxpool_forward, _NUMPY.maxpool_backward
numpy_maxpool_relu_forward = _NUMPY.maxpool_relu_forward
numpy_maxpool_relu_backward = _NUMPY.maxpool_relu_backward

# The back end: the native kernels if spark.native loads them, else NumPy.
_NATIVE = native.load(_api, _NUMPY)
_LIVE = _api(_NATIVE.kernels) if _NATIVE.kernels is not None else _NUMPY
im2col, col2im = _LIVE.im2col, _LIVE.col2im
maxpool_forward, maxpool_backward = _LIVE.maxpool_forward, _LIVE.maxpool_backward
maxpool_relu_forward, maxpool_relu_backward = _LIVE.maxpool_relu_forward, _LIVE.maxpool_relu_backward


def backend():
    """"native" if the compiled extension is in use, else "numpy"."""
    return _NATIVE.backend


def backend_error():
    """Why the native back end is not in use, or None if it is."""
    return _NATIVE.error


def backend_info():
    """Dict with keys backend, error, path (loaded shared object or None)."""
    return _NATIVE.info()
