# cython: language_level=3, boundscheck=False, wraparound=False
"""Native im2col / col2im for NHWC tensors (wrapper around matrix_c.c).

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
