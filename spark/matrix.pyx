# cython: language_level=3, boundscheck=False, wraparound=False
"""Native kernels for im2col / col2im and max pooling on NHWC tensors (thin
wrapper around matrix_c.c).

Do not import this module directly: use :mod:`spark.im2col`, which validates
every argument, allocates the outputs and then calls these kernels (or its
pure-NumPy ones, which give bit-identical results).

Every kernel takes already-validated arrays -- C-contiguous, float32 or
float64 (one dtype per call), argmax uint8, shapes matching the integer
geometry -- and a preallocated output that it overwrites completely.  The
kernels do not check any of that; they release the GIL around the C call and
raise ValueError only when the C core rejects the call (its own guards on the
geometry and on the argmax offsets, a safety net behind the validation in
spark.im2col).
"""

cimport numpy as cnp

cnp.import_array()

# Bumped whenever a kernel signature changes; spark.im2col refuses (and falls
# back to NumPy for) a build with another value.
KERNEL_API = 3


cdef extern from "matrix_c.h" nogil:
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
    int spark_maxpool_relu_forward_f32(const float *x, const float *bias,
                                       Py_ssize_t n, Py_ssize_t h,
                                       Py_ssize_t w, Py_ssize_t c,
                                       Py_ssize_t kh, Py_ssize_t kw,
                                       Py_ssize_t stride, float *out,
                                       unsigned char *argmax,
                                       unsigned char *positive)
    int spark_maxpool_relu_forward_f64(const double *x, const double *bias,
                                       Py_ssize_t n, Py_ssize_t h,
                                       Py_ssize_t w, Py_ssize_t c,
                                       Py_ssize_t kh, Py_ssize_t kw,
                                       Py_ssize_t stride, double *out,
                                       unsigned char *argmax,
                                       unsigned char *positive)
    int spark_maxpool_relu_backward_f32(const float *dout,
                                        const unsigned char *argmax,
                                        const unsigned char *positive,
                                        Py_ssize_t n, Py_ssize_t h,
                                        Py_ssize_t w, Py_ssize_t c,
                                        Py_ssize_t kh, Py_ssize_t kw,
                                        Py_ssize_t stride, float *dx,
                                        double *dbias)
    int spark_maxpool_relu_backward_f64(const double *dout,
                                        const unsigned char *argmax,
                                        const unsigned char *positive,
                                        Py_ssize_t n, Py_ssize_t h,
                                        Py_ssize_t w, Py_ssize_t c,
                                        Py_ssize_t kh, Py_ssize_t kw,
                                        Py_ssize_t stride, double *dx,
                                        double *dbias)


ctypedef int (*window_f32)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, float *) noexcept nogil
ctypedef int (*window_f64)(const double *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, double *) noexcept nogil


cdef inline bint _single(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT


cdef int _check(int rc, str func) except -1:
    if rc == -2:
        raise ValueError(f"{func}: argmax holds an offset outside the window "
                         f"(rejected by the C core)")
    if rc != 0:
        raise ValueError(f"{func}: invalid geometry (rejected by the C core)")
    return 0


cdef int _window_kernel(str func, window_f32 f32, window_f64 f64,
                        cnp.ndarray src, cnp.ndarray dst, Py_ssize_t n,
                        Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                        Py_ssize_t pad) except -1:
    cdef const void *a = cnp.PyArray_DATA(src)
    cdef void *b = cnp.PyArray_DATA(dst)
    cdef bint single = _single(src)
    cdef int rc
    with nogil:
        if single:
            rc = f32(<const float *>a, n, h, w, c, kh, kw, stride, pad,
                     <float *>b)
        else:
            rc = f64(<const double *>a, n, h, w, c, kh, kw, stride, pad,
                     <double *>b)
    return _check(rc, func)


def im2col(cnp.ndarray x not None, cnp.ndarray cols not None, Py_ssize_t n,
           Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
           Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad):
    """cols (N*OH*OW, KH*KW*C) <- im2col of x (N, H, W, C)."""
    _window_kernel("im2col", spark_im2col_f32, spark_im2col_f64, x, cols,
                   n, h, w, c, kh, kw, stride, pad)


def col2im(cnp.ndarray cols not None, cnp.ndarray dx not None, Py_ssize_t n,
           Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
           Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad):
    """dx (N, H, W, C) <- col2im of cols (N*OH*OW, KH*KW*C)."""
    _window_kernel("col2im", spark_col2im_f32, spark_col2im_f64, cols, dx,
                   n, h, w, c, kh, kw, stride, pad)


def maxpool_forward(cnp.ndarray x not None, cnp.ndarray out not None,
                    cnp.ndarray argmax not None, Py_ssize_t n, Py_ssize_t h,
                    Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t stride):
    """out, argmax (N, OH, OW, C) <- max pooling of x (N, H, W, C)."""
    cdef const void *src = cnp.PyArray_DATA(x)
    cdef void *dst = cnp.PyArray_DATA(out)
    cdef unsigned char *arg = <unsigned char *>cnp.PyArray_DATA(argmax)
    cdef bint single = _single(x)
    cdef int rc
    with nogil:
        if single:
            rc = spark_maxpool_forward_f32(<const float *>src, n, h, w, c,
                                           kh, kw, stride, <float *>dst, arg)
        else:
            rc = spark_maxpool_forward_f64(<const double *>src, n, h, w, c,
                                           kh, kw, stride, <double *>dst, arg)
    _check(rc, "maxpool_forward")


def maxpool_backward(cnp.ndarray dout not None, cnp.ndarray argmax not None,
                     cnp.ndarray dx not None, Py_ssize_t n, Py_ssize_t h,
                     Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh, Py_ssize_t kw,
                     Py_ssize_t stride):
    """dx (N, H, W, C) <- gradient of max pooling for dout, argmax."""
    cdef const void *src = cnp.PyArray_DATA(dout)
    cdef const unsigned char *arg = <const unsigned char *>cnp.PyArray_DATA(
        argmax)
    cdef void *dst = cnp.PyArray_DATA(dx)
    cdef bint single = _single(dout)
    cdef int rc
    with nogil:
        if single:
            rc = spark_maxpool_backward_f32(<const float *>src, arg, n, h, w,
                                            c, kh, kw, stride, <float *>dst)
        else:
            rc = spark_maxpool_backward_f64(<const double *>src, arg, n, h,
                                            w, c, kh, kw, stride,
                                            <double *>dst)
    _check(rc, "maxpool_backward")


def maxpool_relu_forward(cnp.ndarray x not None, cnp.ndarray bias not None,
                         cnp.ndarray out not None, cnp.ndarray argmax not None,
                         cnp.ndarray positive not None, Py_ssize_t n,
                         Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride):
    """out (N, OH, OW, C), packed argmax and positive <- relu(maxpool(x + bias))."""
    cdef const void *src = cnp.PyArray_DATA(x)
    cdef const void *b = cnp.PyArray_DATA(bias)
    cdef void *dst = cnp.PyArray_DATA(out)
    cdef unsigned char *arg = <unsigned char *>cnp.PyArray_DATA(argmax)
    cdef unsigned char *pos = <unsigned char *>cnp.PyArray_DATA(positive)
    cdef bint single = _single(x)
    cdef int rc
    with nogil:
        if single:
            rc = spark_maxpool_relu_forward_f32(
                <const float *>src, <const float *>b, n, h, w, c, kh, kw,
                stride, <float *>dst, arg, pos)
        else:
            rc = spark_maxpool_relu_forward_f64(
                <const double *>src, <const double *>b, n, h, w, c, kh, kw,
                stride, <double *>dst, arg, pos)
    _check(rc, "maxpool_relu_forward")


def maxpool_relu_backward(cnp.ndarray dout not None,
                          cnp.ndarray argmax not None,
                          cnp.ndarray positive not None,
                          cnp.ndarray dx not None, cnp.ndarray dbias not None,
                          Py_ssize_t n, Py_ssize_t h, Py_ssize_t w,
                          Py_ssize_t c, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t stride):
    """dx (N, H, W, C), dbias (C,) float64 <- gradient of maxpool_relu_forward."""
    cdef const void *src = cnp.PyArray_DATA(dout)
    cdef const unsigned char *arg = <const unsigned char *>cnp.PyArray_DATA(
        argmax)
    cdef const unsigned char *pos = <const unsigned char *>cnp.PyArray_DATA(
        positive)
    cdef void *dst = cnp.PyArray_DATA(dx)
    cdef double *db = <double *>cnp.PyArray_DATA(dbias)
    cdef bint single = _single(dout)
    cdef int rc
    with nogil:
        if single:
            rc = spark_maxpool_relu_backward_f32(
                <const float *>src, arg, pos, n, h, w, c, kh, kw, stride,
                <float *>dst, db)
        else:
            rc = spark_maxpool_relu_backward_f64(
                <const double *>src, arg, pos, n, h, w, c, kh, kw, stride,
                <double *>dst, db)
    _check(rc, "maxpool_relu_backward")
