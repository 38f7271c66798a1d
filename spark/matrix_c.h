/*
 * matrix_c.h - im2col / col2im for NHWC tensors (float and double).
 *
 * Layout
 * ------
 *   x    : (N, H, W, C), C-contiguous.
 *   cols : (N*OH*OW, KH*KW*C), C-contiguous.
 *          row    = (n*OH + oh)*OW + ow
 *          column = (kh*KW + kw)*C + c
 *          value  = x[n, oh*stride - pad + kh, ow*stride - pad + kw, c],
 *                   or 0 where that position lies in the zero padding.
 *   OH = (H + 2*pad - KH) / stride + 1   (integer division)
 *   OW = (W + 2*pad - KW) / stride + 1
 *
 * col2im is the adjoint of im2col: it zero-fills dx and adds every cols entry
 * back to its source position (overlapping windows accumulate, entries that
 * came from the padding are dropped).  For every dx element the contributions
 * are added in increasing cols-row order, i.e. in decreasing (kh, kw) order;
 * the pure NumPy fallback in spark/im2col.py follows the same order so both
 * back ends give bit-identical results.
 *
 * All functions return 0 on success and -1 if the arguments are invalid
 * (negative sizes, kernel < 1, stride < 1, pad < 0 or a kernel that does not
 * fit in the padded input).  The Python wrapper validates first, so -1 is
 * only a safety net.  No function allocates memory or touches Python.
 */
#ifndef SPARK_MATRIX_C_H
#define SPARK_MATRIX_C_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Output size of a convolution/pooling window along one axis, or -1 if the
 * arguments are invalid. */
ptrdiff_t spark_out_size(ptrdiff_t size, ptrdiff_t k, ptrdiff_t stride,
                         ptrdiff_t pad);

int spark_im2col_f32(const float *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                     ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, float *cols);

int spark_im2col_f64(const double *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                     ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, double *cols);

int spark_col2im_f32(const float *cols, ptrdiff_t n, ptrdiff_t h,
                     ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, float *dx);

int spark_col2im_f64(const double *cols, ptrdiff_t n, ptrdiff_t h,
                     ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, double *dx);

#ifdef __cplusplus
}
#endif

#endif /* SPARK_MATRIX_C_H */
