/*
 * matrix_c.h - im2col / col2im and max pooling for NHWC tensors (float and
 * double).
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
 * Max pooling (no padding)
 * ------------------------
 *   x      : (N, H, W, C)      out, argmax : (N, OH, OW, C)
 *   OH = (H - KH) / stride + 1, OW = (W - KW) / stride + 1, KH*KW <= 256.
 *   out[n, oh, ow, c] = max over the window of x[n, oh*stride + kh,
 *   ow*stride + kw, c]; argmax holds the window offset kh*KW + kw (uint8) of
 *   that maximum.  Offsets are scanned in increasing order starting from
 *   offset 0 and a value replaces the current maximum only if it compares
 *   strictly greater ('>'): the first maximum wins on ties, a NaN at offset 0
 *   is kept, a NaN elsewhere is never picked.
 *
 *   maxpool_backward zero-fills dx and adds every dout[n, oh, ow, c] to the
 *   dx element its argmax points at.  When windows overlap, each dx element
 *   receives its contributions in increasing (oh, ow) order, i.e. in
 *   DECREASING window-offset order; the NumPy reference follows the same
 *   order.  Every dx element is exactly 0.0 + its contributions (so a -0.0
 *   gradient becomes +0.0), in both back ends.
 *
 * All functions return 0 on success and -1 if the arguments are invalid
 * (negative sizes, kernel < 1, stride < 1, pad < 0, a kernel that does not
 * fit in the padded input, a pooling window of more than 256 values);
 * maxpool_backward returns -2 (before writing anything) if an argmax entry
 * is not a valid offset (>= KH*KW).  The Python wrapper validates first, so
 * -1 is only a safety net.  No function allocates memory or touches Python.
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

/* Largest pooling window (KH*KW): argmax offsets are stored as uint8. */
#define SPARK_MAXPOOL_MAX_WINDOW 256

int spark_maxpool_forward_f32(const float *x, ptrdiff_t n, ptrdiff_t h,
                              ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh,
                              ptrdiff_t kw, ptrdiff_t stride, float *out,
                              unsigned char *argmax);

int spark_maxpool_forward_f64(const double *x, ptrdiff_t n, ptrdiff_t h,
                              ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh,
                              ptrdiff_t kw, ptrdiff_t stride, double *out,
                              unsigned char *argmax);

int spark_maxpool_backward_f32(const float *dout, const unsigned char *argmax,
                               ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                               ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                               ptrdiff_t stride, float *dx);

int spark_maxpool_backward_f64(const double *dout,
                               const unsigned char *argmax, ptrdiff_t n,
                               ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                               ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t stride,
                               double *dx);

/* Max pooling fused with the ReLU that precedes it and the bias added before
 * both: out = max(0, max over the window of x + bias[c]) for windows of at
 * most 4 values that do not overlap (stride >= KH, stride >= KW).
 *   x (N, H, W, C), bias (C,) -> out (N, OH, OW, C),
 *   argmax (N, OH, OW, ceil(C/4)): the window offset kh*KW + kw of the
 *       maximum of x + bias (first maximum on ties, as in maxpool_forward),
 *       2 bits per channel, channel 4q + r in bits 2r, 2r+1 of byte q;
 *   positive (N, OH, OW, ceil(C/8)): 1 where that maximum is > 0, eight
 *       channels to a byte, channel 8q + r in bit 7 - r (np.packbits order).
 *   Unused bits are 0.  out is 0 where the maximum is <= 0 (+0.0), else the
 *   maximum (a NaN at offset 0 is kept, as in maxpool_forward).
 * The backward pass writes every dx element: 0 + dout where the argmax
 * points and the value was positive, else 0; dbias[c] (float64) is the sum
 * over the output pixels, in increasing (n, oh, ow) order starting from 0.0,
 * of those gradients.  It returns -2 (before writing anything) if an argmax
 * code is >= KH*KW. */
#define SPARK_MAXPOOL_RELU_MAX_WINDOW 4

int spark_maxpool_relu_forward_f32(const float *x, const float *bias,
                                   ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                   ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                                   ptrdiff_t stride, float *out,
                                   unsigned char *argmax,
                                   unsigned char *positive);

int spark_maxpool_relu_forward_f64(const double *x, const double *bias,
                                   ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                   ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                                   ptrdiff_t stride, double *out,
                                   unsigned char *argmax,
                                   unsigned char *positive);

int spark_maxpool_relu_backward_f32(const float *dout,
                                    const unsigned char *argmax,
                                    const unsigned char *positive,
                                    ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                    ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t stride, float *dx,
                                    double *dbias);

int spark_maxpool_relu_backward_f64(const double *dout,
                                    const unsigned char *argmax,
                                    const unsigned char *positive,
                                    ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                    ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t stride, double *dx,
                                    double *dbias);

#ifdef __cplusplus
}
#endif

#endif /* SPARK_MATRIX_C_H */
