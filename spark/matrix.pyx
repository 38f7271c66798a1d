# cython: language_level=3, boundscheck=False, wraparound=False
"""Native im2col / col2im and max pooling for NHWC tensors (wrapper around
matrix_c.c).

Do not import this module directly: use :mod:`spark.im2col`, which picks this
extension when it can be loaded (also from a zipped egg) and otherwise falls
back to an identical pure-NumPy implementation.
"""

import operator

import numpy as np
cimport numpy as cnp

cnp.import_array()


cdef extern from "matrix_c.h" nogil:
    Py_ssize_t spark_out_size(Py_ssize_t size, Py_ssize_t k,
                              Py_ssize_t stride, Py_ssize_t pad)
    int spark_im2col_f32(const float *x, Py_ssize_t n, Py_ssize_t h,
                         Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                         float *cols)
    int spark_im2col_f64(const double *x, Py_ssize_t n, Py_ssize_t h,
                         Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                         double *cols)
    int spark_col2im_f32(const float *cols, Py_ssize_t n, Py_ssize_t h,
                         Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                         float *dx)
    int spark_col2im_f64(const double *cols, Py_ssize_t n, Py_ssize_t h,
                         Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                         double *dx)
    int spark_maxpool_forward_f32(const float *x, Py_ssize_t n, Py_ssize_t h,
                                  Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                                  Py_ssize_t kw, Py_ssize_t stride,
                                  float *out, unsigned char *argmax)
    int spark_maxpool_forward_f64(const double *x, Py_ssize_t n,
                                  Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                                  Py_ssize_t kh, Py_ssize_t kw,
                                  Py_ssize_t stride, double *out,
                                  unsigned char *argmax)
    int spark_maxpool_backward_f32(const float *dout,
                                   const unsigned char *argmax, Py_ssize_t n,
                                   Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                                   Py_ssize_t kh, Py_ssize_t kw,
                                   Py_ssize_t stride, float *dx)
    int spark_maxpool_backward_f64(const double *dout,
                                   const unsigned char *argmax, Py_ssize_t n,
                                   Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                                   Py_ssize_t kh, Py_ssize_t kw,
                                   Py_ssize_t stride, double *dx)


def _int(value, name, minimum):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _geometry(func, shape, kh, kw, stride, pad):
    """Validate the arguments; return (n, h, w, c, kh, kw, stride, pad, oh, ow)."""
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
    oh = spark_out_size(h, kh, stride, pad)
    ow = spark_out_size(w, kw, stride, pad)
    return n, h, w, c, kh, kw, stride, pad, oh, ow


cdef object _float_array(object a, str func, str what):
    a = np.asarray(a)
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise ValueError(f"{func}: {what} dtype must be float32 or float64, "
                         f"got {a.dtype}")
    return np.ascontiguousarray(a)


def im2col(x, kh, kw, stride=1, pad=0):
    """NHWC x (N, H, W, C) -> cols (N*OH*OW, KH*KW*C), same dtype as x."""
    xa = _float_array(x, "im2col", "x")
    if xa.ndim != 4:
        raise ValueError(f"im2col: x must be 4-D NHWC (N, H, W, C), "
                         f"got shape {xa.shape}")
    cdef Py_ssize_t n, h, w, c, k_h, k_w, s, p, oh, ow
    n, h, w, c, k_h, k_w, s, p, oh, ow = _geometry(
        "im2col", xa.shape, kh, kw, stride, pad)
    out = np.empty((n * oh * ow, k_h * k_w * c),
                                    dtype=xa.dtype)
    cdef int rc
    cdef void *src = cnp.PyArray_DATA(<cnp.ndarray>xa)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint single = xa.dtype == np.float32
    with nogil:
        if single:
            rc = spark_im2col_f32(<const float *>src, n, h, w, c, k_h, k_w,
                                  s, p, <float *>dst)
        else:
            rc = spark_im2col_f64(<const double *>src, n, h, w, c, k_h, k_w,
                                  s, p, <double *>dst)
    if rc != 0:
        raise ValueError("im2col: invalid geometry")
    return out


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of im2col: cols (N*OH*OW, KH*KW*C) -> dx of shape x_shape."""
    ca = _float_array(cols, "col2im", "cols")
    try:
        shape = tuple(x_shape)
    except TypeError:
        raise ValueError(f"col2im: x_shape must be a sequence (N, H, W, C), "
                         f"got {x_shape!r}") from None
    cdef Py_ssize_t n, h, w, c, k_h, k_w, s, p, oh, ow
    n, h, w, c, k_h, k_w, s, p, oh, ow = _geometry(
        "col2im", shape, kh, kw, stride, pad)
    expected = (n * oh * ow, k_h * k_w * c)
    if ca.ndim != 2 or tuple(ca.shape) != expected:
        raise ValueError(f"col2im: cols must have shape {expected} for "
                         f"x_shape={(n, h, w, c)}, kernel {k_h}x{k_w}, "
                         f"stride={s}, pad={p}; got {ca.shape}")
    out = np.empty((n, h, w, c), dtype=ca.dtype)
    cdef int rc
    cdef void *src = cnp.PyArray_DATA(<cnp.ndarray>ca)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint single = ca.dtype == np.float32
    with nogil:
        if single:
            rc = spark_col2im_f32(<const float *>src, n, h, w, c, k_h, k_w,
                                  s, p, <float *>dst)
        else:
            rc = spark_col2im_f64(<const double *>src, n, h, w, c, k_h, k_w,
                                  s, p, <double *>dst)
    if rc != 0:
        raise ValueError("col2im: invalid geometry")
    return out


def _pool_geometry(func, n, h, w, c, kh, kw, stride):
    """Validate pooling arguments; return (kh, kw, stride, oh, ow)."""
    kh = _int(kh, "kh", 1)
    kw = _int(kw, "kw", 1)
    stride = _int(stride, "stride", 1)
    if kh * kw > 256:
        raise ValueError(f"{func}: a {kh}x{kw} window has more than 256 "
                         f"values (argmax is uint8)")
    if kh > h or kw > w:
        raise ValueError(f"{func}: window {kh}x{kw} is larger than the "
                         f"input {h}x{w}")
    return kh, kw, stride, (h - kh) // stride + 1, (w - kw) // stride + 1


def maxpool_forward(x, kh, kw, stride):
    """Max pooling, no padding: x (N, H, W, C) -> (out, argmax).

    out (N, OH, OW, C) has the dtype of x, OH = (H - KH) // stride + 1;
    argmax (N, OH, OW, C) uint8 is the window offset kh*KW + kw of the
    maximum, the first one on ties (strict '>' scan from offset 0).
    """
    xa = _float_array(x, "maxpool_forward", "x")
    if xa.ndim != 4:
        raise ValueError(f"maxpool_forward: x must be 4-D NHWC (N, H, W, C), "
                         f"got shape {xa.shape}")
    cdef Py_ssize_t n, h, w, c, k_h, k_w, s, oh, ow
    n, h, w, c = xa.shape
    k_h, k_w, s, oh, ow = _pool_geometry("maxpool_forward", n, h, w, c,
                                         kh, kw, stride)
    out = np.empty((n, oh, ow, c), dtype=xa.dtype)
    argmax = np.empty((n, oh, ow, c), dtype=np.uint8)
    cdef int rc
    cdef void *src = cnp.PyArray_DATA(<cnp.ndarray>xa)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef unsigned char *arg = <unsigned char *>cnp.PyArray_DATA(
        <cnp.ndarray>argmax)
    cdef bint single = xa.dtype == np.float32
    with nogil:
        if single:
            rc = spark_maxpool_forward_f32(<const float *>src, n, h, w, c,
                                           k_h, k_w, s, <float *>dst, arg)
        else:
            rc = spark_maxpool_forward_f64(<const double *>src, n, h, w, c,
                                           k_h, k_w, s, <double *>dst, arg)
    if rc != 0:
        raise ValueError("maxpool_forward: invalid geometry")
    return out, argmax


def maxpool_backward(dout, argmax, h, w, kh, kw, stride):
    """Gradient of maxpool_forward: dout, argmax (N, OH, OW, C) -> dx (N, H, W, C).

    dx is zero except where argmax points; overlapping windows add their
    contributions in increasing (oh, ow) order.  dx has the dtype of dout.
    """
    ga = _float_array(dout, "maxpool_backward", "dout")
    if ga.ndim != 4:
        raise ValueError(f"maxpool_backward: dout must be 4-D (N, OH, OW, C), "
                         f"got shape {ga.shape}")
    aa = np.asarray(argmax)
    if aa.dtype != np.uint8:
        raise ValueError(f"maxpool_backward: argmax dtype must be uint8, "
                         f"got {aa.dtype}")
    aa = np.ascontiguousarray(aa)
    cdef Py_ssize_t n, c, hh, ww, k_h, k_w, s, oh, ow
    n, c = ga.shape[0], ga.shape[3]
    hh = _int(h, "h", 0)
    ww = _int(w, "w", 0)
    k_h, k_w, s, oh, ow = _pool_geometry("maxpool_backward", n, hh, ww, c,
                                         kh, kw, stride)
    if tuple(ga.shape) != (n, oh, ow, c):
        raise ValueError(f"maxpool_backward: dout must have shape "
                         f"{(n, oh, ow, c)} for H={hh}, W={ww}, window "
                         f"{k_h}x{k_w}, stride={s}; got {ga.shape}")
    if aa.shape != ga.shape:
        raise ValueError(f"maxpool_backward: argmax shape {aa.shape} differs "
                         f"from dout shape {ga.shape}")
    dx = np.empty((n, hh, ww, c), dtype=ga.dtype)
    cdef int rc
    cdef void *src = cnp.PyArray_DATA(<cnp.ndarray>ga)
    cdef const unsigned char *arg = <const unsigned char *>cnp.PyArray_DATA(
        <cnp.ndarray>aa)
    cdef void *dst = cnp.PyArray_DATA(<cnp.ndarray>dx)
    cdef bint single = ga.dtype == np.float32
    with nogil:
        if single:
            rc = spark_maxpool_backward_f32(<const float *>src, arg, n, hh, ww,
                                            c, k_h, k_w, s, <float *>dst)
        else:
            rc = spark_maxpool_backward_f64(<const double *>src, arg, n, hh,
                                            ww, c, k_h, k_w, s, <double *>dst)
    if rc == -2:
        raise ValueError(f"maxpool_backward: argmax holds an offset >= "
                         f"{k_h * k_w} (not a {k_h}x{k_w} window offset)")
    if rc != 0:
        raise ValueError("maxpool_backward: invalid geometry")
    return dx
