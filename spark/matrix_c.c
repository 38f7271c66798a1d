/*
 * matrix_c.c - im2col / col2im for NHWC tensors.  See matrix_c.h for the
 * exact layout contract.
 *
 * In NHWC the C channel values of one pixel are contiguous, and so are the
 * pixels of one input row.  For a fixed output pixel (oh, ow) and kernel row
 * kh, the in-bounds kernel columns kw_lo..kw_hi-1 therefore map to ONE
 * contiguous run of (kw_hi - kw_lo) * C values both in x and in the cols row.
 * im2col copies each run with a single memcpy (the copy is dtype-agnostic, so
 * one byte-level routine serves float and double); col2im adds each run with
 * a tight loop the compiler vectorises.
 */
#include "matrix_c.h"

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define SPARK_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define SPARK_RESTRICT __restrict
#else
#define SPARK_RESTRICT
#endif

ptrdiff_t spark_out_size(ptrdiff_t size, ptrdiff_t k, ptrdiff_t stride,
                         ptrdiff_t pad)
{
    if (size < 0 || k < 1 || stride < 1 || pad < 0 || k > size + 2 * pad)
        return -1;
    return (size + 2 * pad - k) / stride + 1;
}

/* Validate the geometry and compute OH, OW.  Returns 0 or -1. */
static int check_geometry(ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                          ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t stride,
                          ptrdiff_t pad, ptrdiff_t *oh, ptrdiff_t *ow)
{
    if (n < 0 || c < 0)
        return -1;
    *oh = spark_out_size(h, kh, stride, pad);
    *ow = spark_out_size(w, kw, stride, pad);
    return (*oh < 0 || *ow < 0) ? -1 : 0;
}

/* In-bounds kernel-column range [*lo, *hi) for a window starting at iw0
 * (may be empty, e.g. a window lying entirely in a wide left padding). */
static inline void kw_range(ptrdiff_t iw0, ptrdiff_t kw, ptrdiff_t w,
                            ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t a = iw0 < 0 ? -iw0 : 0;
    ptrdiff_t b = w - iw0 < kw ? w - iw0 : kw;
    if (b < a)
        b = a;
    *lo = a;
    *hi = b;
}

/* ------------------------------------------------------------------ im2col */

static int im2col_bytes(const char *SPARK_RESTRICT x, ptrdiff_t n,
                        ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh,
                        ptrdiff_t kw, ptrdiff_t stride, ptrdiff_t pad,
                        size_t esize, char *SPARK_RESTRICT cols)
{
    ptrdiff_t oh, ow;
    if (check_geometry(n, h, w, c, kh, kw, stride, pad, &oh, &ow) != 0)
        return -1;

    const size_t pix = (size_t)c * esize;          /* bytes of one pixel   */
    const size_t krow = (size_t)kw * pix;          /* bytes of a kernel row */
    const size_t xrow = (size_t)w * pix;           /* bytes of an input row */
    const size_t ximg = (size_t)h * xrow;          /* bytes of one image    */
    const size_t crow = (size_t)kh * krow;         /* bytes of a cols row   */
    char *dst_row = cols;

    for (ptrdiff_t in = 0; in < n; ++in) {
        const char *xn = x + (size_t)in * ximg;
        for (ptrdiff_t y = 0; y < oh; ++y) {
            const ptrdiff_t ih0 = y * stride - pad;
            for (ptrdiff_t xo = 0; xo < ow; ++xo, dst_row += crow) {
                const ptrdiff_t iw0 = xo * stride - pad;
                ptrdiff_t lo, hi;
                kw_range(iw0, kw, w, &lo, &hi);
                const size_t head = (size_t)lo * pix;
                const size_t body = (size_t)(hi - lo) * pix;
                const size_t tail = krow - head - body;
                for (ptrdiff_t i = 0; i < kh; ++i) {
                    char *dst = dst_row + (size_t)i * krow;
                    const ptrdiff_t ih = ih0 + i;
                    if (ih < 0 || ih >= h || body == 0) {
                        memset(dst, 0, krow);
                        continue;
                    }
                    if (head)
                        memset(dst, 0, head);
                    memcpy(dst + head,
                           xn + (size_t)ih * xrow + (size_t)(iw0 + lo) * pix,
                           body);
                    if (tail)
                        memset(dst + head + body, 0, tail);
                }
            }
        }
    }
    return 0;
}

int spark_im2col_f32(const float *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                     ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, float *cols)
{
    return im2col_bytes((const char *)x, n, h, w, c, kh, kw, stride, pad,
                        sizeof(float), (char *)cols);
}

int spark_im2col_f64(const double *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                     ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                     ptrdiff_t stride, ptrdiff_t pad, double *cols)
{
    return im2col_bytes((const char *)x, n, h, w, c, kh, kw, stride, pad,
                        sizeof(double), (char *)cols);
}

/* ------------------------------------------------------------------ col2im */

/*
 * Rows are visited in increasing order; within one row distinct (kh, kw)
 * hit distinct pixels, so every dx element receives its contributions in
 * increasing row order (= decreasing (kh, kw) order).  Keep this order: the
 * NumPy fallback mirrors it to stay bit-identical.
 */
#define SPARK_DEFINE_COL2IM(SUFFIX, T)                                        \
int spark_col2im_##SUFFIX(const T *cols, ptrdiff_t n, ptrdiff_t h,            \
                          ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh,             \
                          ptrdiff_t kw, ptrdiff_t stride, ptrdiff_t pad,      \
                          T *dx)                                              \
{                                                                             \
    ptrdiff_t oh, ow;                                                         \
    if (check_geometry(n, h, w, c, kh, kw, stride, pad, &oh, &ow) != 0)       \
        return -1;                                                            \
    const size_t ximg = (size_t)h * (size_t)w * (size_t)c;                    \
    const size_t crow = (size_t)kh * (size_t)kw * (size_t)c;                  \
    memset(dx, 0, (size_t)n * ximg * sizeof(T));                              \
    const T *src_row = cols;                                                  \
    for (ptrdiff_t in = 0; in < n; ++in) {                                    \
        T *dn = dx + (size_t)in * ximg;                                       \
        for (ptrdiff_t y = 0; y < oh; ++y) {                                  \
            const ptrdiff_t ih0 = y * stride - pad;                           \
            for (ptrdiff_t xo = 0; xo < ow; ++xo, src_row += crow) {          \
                const ptrdiff_t iw0 = xo * stride - pad;                      \
                ptrdiff_t lo, hi;                                             \
                kw_range(iw0, kw, w, &lo, &hi);                               \
                const size_t len = (size_t)(hi - lo) * (size_t)c;             \
                if (len == 0)                                                 \
                    continue;                                                 \
                for (ptrdiff_t i = 0; i < kh; ++i) {                          \
                    const ptrdiff_t ih = ih0 + i;                             \
                    if (ih < 0 || ih >= h)                                    \
                        continue;                                             \
                    T *SPARK_RESTRICT d =                                     \
                        dn + ((size_t)ih * (size_t)w + (size_t)(iw0 + lo))    \
                                 * (size_t)c;                                 \
                    const T *SPARK_RESTRICT s =                               \
                        src_row + ((size_t)i * (size_t)kw + (size_t)lo)       \
                                      * (size_t)c;                            \
                    for (size_t j = 0; j < len; ++j)                          \
                        d[j] += s[j];                                         \
                }                                                             \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    return 0;                                                                 \
}

SPARK_DEFINE_COL2IM(f32, float)
SPARK_DEFINE_COL2IM(f64, double)

#undef SPARK_DEFINE_COL2IM

/* ------------------------------------------------------------- max pooling */

/*
 * Forward: for every output pixel, the C channel values of each window
 * offset are one contiguous run of x, so the window is scanned offset by
 * offset with a branch-free, vectorisable compare-and-select over C.
 *
 * Backward, non-overlapping windows (stride >= KH and stride >= KW): every
 * dx element belongs to at most one window, so dx is written in a single
 * pass, row by row: inside a window dx = (argmax == offset) ? 0 + dout : 0,
 * gaps and leftover rows/columns are zero-filled.  Overlapping windows: dx
 * is zero-filled, then output pixels are visited in increasing (n, oh, ow)
 * order and each adds dout to the window offset its argmax selects (a
 * vectorisable masked add; the unselected elements are rewritten unchanged,
 * never added to, so no stray +0.0 changes a result).
 */

static int pool_geometry(ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                         ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t stride,
                         ptrdiff_t *oh, ptrdiff_t *ow)
{
    if (kh < 1 || kw < 1 || kh > SPARK_MAXPOOL_MAX_WINDOW
        || kw > SPARK_MAXPOOL_MAX_WINDOW
        || kh * kw > SPARK_MAXPOOL_MAX_WINDOW)
        return -1;
    return check_geometry(n, h, w, c, kh, kw, stride, 0, oh, ow);
}

/* Largest byte of a[0..len) (0 if empty); vectorisable. */
static size_t max_byte(const unsigned char *a, size_t len)
{
    unsigned char m = 0;
    for (size_t i = 0; i < len; ++i)
        m = a[i] > m ? a[i] : m;
    return m;
}

/*
 * Bitwise select: cond ? a : b.  Written with integer masks because GCC will
 * not if-convert (hence not vectorise) a conditional floating-point add under
 * the default -ftrapping-math; the masked form is branch-free and exact.
 */
#define SPARK_DEFINE_SELECT(SUFFIX, T, U)                                     \
static inline T select_##SUFFIX(int cond, T a, T b)                           \
{                                                                             \
    U ua, ub;                                                                 \
    const U m = (U)0 - (U)cond;                                               \
    memcpy(&ua, &a, sizeof ua);                                               \
    memcpy(&ub, &b, sizeof ub);                                               \
    ua = (ua & m) | (ub & ~m);                                                \
    memcpy(&a, &ua, sizeof a);                                                \
    return a;                                                                 \
}

SPARK_DEFINE_SELECT(f32, float, uint32_t)
SPARK_DEFINE_SELECT(f64, double, uint64_t)

#undef SPARK_DEFINE_SELECT

#define SPARK_DEFINE_MAXPOOL(SUFFIX, T)                                       \
int spark_maxpool_forward_##SUFFIX(const T *x, ptrdiff_t n, ptrdiff_t h,      \
                                   ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh,    \
                                   ptrdiff_t kw, ptrdiff_t stride, T *out,    \
                                   unsigned char *argmax)                     \
{                                                                             \
    ptrdiff_t oh, ow;                                                         \
    if (pool_geometry(n, h, w, c, kh, kw, stride, &oh, &ow) != 0)             \
        return -1;                                                            \
    const size_t uc = (size_t)c;                                              \
    const size_t xrow = (size_t)w * uc;                                       \
    const size_t ximg = (size_t)h * xrow;                                     \
    T *SPARK_RESTRICT o = out;                                                \
    unsigned char *SPARK_RESTRICT a = argmax;                                 \
    for (ptrdiff_t in = 0; in < n; ++in) {                                    \
        for (ptrdiff_t y = 0; y < oh; ++y) {                                  \
            for (ptrdiff_t xo = 0; xo < ow; ++xo, o += uc, a += uc) {         \
                const T *base = x + (size_t)in * ximg                         \
                                + (size_t)(y * stride) * xrow                 \
                                + (size_t)(xo * stride) * uc;                 \
                memcpy(o, base, uc * sizeof(T));                              \
                memset(a, 0, uc);                                             \
                for (ptrdiff_t i = 0; i < kh; ++i) {                          \
                    for (ptrdiff_t j = (i == 0); j < kw; ++j) {               \
                        const T *SPARK_RESTRICT v =                           \
                            base + (size_t)i * xrow + (size_t)j * uc;         \
                        const unsigned char off =                             \
                            (unsigned char)(i * kw + j);                      \
                        for (size_t k = 0; k < uc; ++k) {                     \
                            const T cur = o[k], val = v[k];                   \
                            const int gt = val > cur;                         \
                            o[k] = gt ? val : cur;                            \
                            a[k] = (unsigned char)                            \
                                (a[k] ^ ((a[k] ^ off)                         \
                                         & (unsigned char)-gt));              \
                        }                                                     \
                    }                                                         \
                }                                                             \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    return 0;                                                                 \
}                                                                             \
                                                                              \
int spark_maxpool_backward_##SUFFIX(const T *dout,                            \
                                    const unsigned char *argmax,              \
                                    ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,    \
                                    ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,  \
                                    ptrdiff_t stride, T *dx)                  \
{                                                                             \
    ptrdiff_t oh, ow;                                                         \
    if (pool_geometry(n, h, w, c, kh, kw, stride, &oh, &ow) != 0)             \
        return -1;                                                            \
    const size_t uc = (size_t)c;                                              \
    const size_t xrow = (size_t)w * uc;                                       \
    const size_t ximg = (size_t)h * xrow;                                     \
    const size_t orow = (size_t)ow * uc;                                      \
    const size_t oimg = (size_t)oh * orow;                                    \
    if (max_byte(argmax, (size_t)n * oimg) >= (size_t)(kh * kw))              \
        return -2;                                                            \
    if (stride >= kh && stride >= kw) {                                       \
        for (ptrdiff_t in = 0; in < n; ++in) {                                \
            for (ptrdiff_t ih = 0; ih < h; ++ih) {                            \
                T *row = dx + (size_t)in * ximg + (size_t)ih * xrow;          \
                const ptrdiff_t y = ih / stride, i = ih - y * stride;         \
                if (y >= oh || i >= kh) {                                     \
                    memset(row, 0, xrow * sizeof(T));                         \
                    continue;                                                 \
                }                                                             \
                const size_t o0 = (size_t)in * oimg + (size_t)y * orow;       \
                for (ptrdiff_t xo = 0; xo < ow; ++xo) {                       \
                    const ptrdiff_t iw0 = xo * stride;                        \
                    const T *SPARK_RESTRICT g = dout + o0 + (size_t)xo * uc;  \
                    const unsigned char *SPARK_RESTRICT a =                   \
                        argmax + o0 + (size_t)xo * uc;                        \
                    for (ptrdiff_t j = 0; j < kw; ++j) {                      \
                        T *SPARK_RESTRICT d = row + (size_t)(iw0 + j) * uc;   \
                        const unsigned char off =                             \
                            (unsigned char)(i * kw + j);                      \
                        for (size_t k = 0; k < uc; ++k)                       \
                            d[k] = select_##SUFFIX(a[k] == off,               \
                                                   (T)0 + g[k], (T)0);        \
                    }                                                         \
                    const ptrdiff_t end = xo + 1 < ow ? iw0 + stride : w;     \
                    memset(row + (size_t)(iw0 + kw) * uc, 0,                  \
                           (size_t)(end - iw0 - kw) * uc * sizeof(T));        \
                }                                                             \
            }                                                                 \
        }                                                                     \
        return 0;                                                             \
    }                                                                         \
    memset(dx, 0, (size_t)n * ximg * sizeof(T));                              \
    for (ptrdiff_t in = 0; in < n; ++in) {                                    \
        for (ptrdiff_t y = 0; y < oh; ++y) {                                  \
            for (ptrdiff_t xo = 0; xo < ow; ++xo) {                           \
                const size_t o0 = (size_t)in * oimg + (size_t)y * orow        \
                                  + (size_t)xo * uc;                          \
                const T *SPARK_RESTRICT g = dout + o0;                        \
                const unsigned char *SPARK_RESTRICT a = argmax + o0;          \
                T *base = dx + (size_t)in * ximg                              \
                          + (size_t)(y * stride) * xrow                       \
                          + (size_t)(xo * stride) * uc;                       \
                for (ptrdiff_t i = 0; i < kh; ++i) {                          \
                    for (ptrdiff_t j = 0; j < kw; ++j) {                      \
                        T *SPARK_RESTRICT d =                                 \
                            base + (size_t)i * xrow + (size_t)j * uc;         \
                        const unsigned char off =                             \
                            (unsigned char)(i * kw + j);                      \
                        for (size_t k = 0; k < uc; ++k)                       \
                            d[k] = select_##SUFFIX(a[k] == off,               \
                                                   d[k] + g[k], d[k]);        \
                    }                                                         \
                }                                                             \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    return 0;                                                                 \
}

SPARK_DEFINE_MAXPOOL(f32, float)
SPARK_DEFINE_MAXPOOL(f64, double)

#undef SPARK_DEFINE_MAXPOOL

/* ------------------------------------------- max pooling fused with ReLU */

/*
 * relu(maxpool(x + bias)) == maxpool(relu(x + bias)) exactly, so the ReLU of
 * a conv -> ReLU -> pool stack is applied to the pooled values only.  For
 * small windows (KH*KW <= 4) the argmax needs 2 bits: it is packed four
 * channels to a byte (channel 4q + r in bits 2r..2r+1), and whether the
 * pooled value is positive (the ReLU mask) eight channels to a byte, first
 * channel in the most significant bit (np.packbits order).  Unused bits are
 * zero.  Windows must not overlap (stride >= KH and stride >= KW), so every
 * dx element belongs to at most one window and is written once.
 *
 * Channels are worked through in blocks of SPARK_FUSED_BLOCK (a multiple of
 * 8, so packed bytes never straddle two blocks).
 */
#define SPARK_FUSED_BLOCK 64

static int fused_geometry(ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                          ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t stride,
                          ptrdiff_t *oh, ptrdiff_t *ow)
{
    if (kh < 1 || kw < 1 || kh * kw > SPARK_MAXPOOL_RELU_MAX_WINDOW
        || stride < kh || stride < kw)
        return -1;
    return check_geometry(n, h, w, c, kh, kw, stride, 0, oh, ow);
}

/* Pack the 2-bit offsets and the 0/1 flags of channels k0..k0+len
 * (k0 % 8 == 0; arg and pos hold SPARK_FUSED_BLOCK entries, zero past len). */
static inline void pack_codes(const unsigned char *SPARK_RESTRICT arg,
                              const unsigned char *SPARK_RESTRICT pos,
                              size_t k0, size_t len,
                              unsigned char *SPARK_RESTRICT pa,
                              unsigned char *SPARK_RESTRICT pp)
{
    const size_t qa = (len + 3) / 4, qp = (len + 7) / 8;
    for (size_t q = 0; q < qa; ++q)
        pa[k0 / 4 + q] = (unsigned char)(arg[4 * q] | arg[4 * q + 1] << 2
                                         | arg[4 * q + 2] << 4
                                         | arg[4 * q + 3] << 6);
    for (size_t q = 0; q < qp; ++q)
        pp[k0 / 8 + q] = (unsigned char)(
            pos[8 * q] << 7 | pos[8 * q + 1] << 6 | pos[8 * q + 2] << 5
            | pos[8 * q + 3] << 4 | pos[8 * q + 4] << 3 | pos[8 * q + 5] << 2
            | pos[8 * q + 6] << 1 | pos[8 * q + 7]);
}

/* Inverse of pack_codes (entries past len are garbage-free zeros or bits of
 * unused channels, which are 0 by contract). */
static inline void unpack_codes(const unsigned char *SPARK_RESTRICT pa,
                                const unsigned char *SPARK_RESTRICT pp,
                                size_t k0, size_t len,
                                unsigned char *SPARK_RESTRICT arg,
                                unsigned char *SPARK_RESTRICT pos)
{
    const size_t qa = (len + 3) / 4, qp = (len + 7) / 8;
    for (size_t q = 0; q < qa; ++q) {
        const unsigned char b = pa[k0 / 4 + q];
        arg[4 * q] = b & 3;
        arg[4 * q + 1] = (b >> 2) & 3;
        arg[4 * q + 2] = (b >> 4) & 3;
        arg[4 * q + 3] = (unsigned char)(b >> 6);
    }
    for (size_t q = 0; q < qp; ++q) {
        const unsigned char b = pp[k0 / 8 + q];
        for (int r = 0; r < 8; ++r)
            pos[8 * q + r] = (b >> (7 - r)) & 1;
    }
}

#define SPARK_DEFINE_MAXPOOL_RELU(SUFFIX, T)                                  \
int spark_maxpool_relu_forward_##SUFFIX(const T *x, const T *bias,            \
                                        ptrdiff_t n, ptrdiff_t h,             \
                                        ptrdiff_t w, ptrdiff_t c,             \
                                        ptrdiff_t kh, ptrdiff_t kw,           \
                                        ptrdiff_t stride, T *out,             \
                                        unsigned char *argmax,                \
                                        unsigned char *positive)              \
{                                                                             \
    ptrdiff_t oh, ow;                                                         \
    if (fused_geometry(n, h, w, c, kh, kw, stride, &oh, &ow) != 0)            \
        return -1;                                                            \
    const size_t uc = (size_t)c, ca = (uc + 3) / 4, cp = (uc + 7) / 8;        \
    const size_t xrow = (size_t)w * uc;                                       \
    const size_t ximg = (size_t)h * xrow;                                     \
    T *o = out;                                                               \
    unsigned char *pa = argmax, *pp = positive;                               \
    for (ptrdiff_t in = 0; in < n; ++in) {                                    \
      for (ptrdiff_t y = 0; y < oh; ++y) {                                    \
        for (ptrdiff_t xo = 0; xo < ow; ++xo, o += uc, pa += ca, pp += cp) {  \
            const T *base = x + (size_t)in * ximg                             \
                            + (size_t)(y * stride) * xrow                     \
                            + (size_t)(xo * stride) * uc;                     \
            for (size_t k0 = 0; k0 < uc; k0 += SPARK_FUSED_BLOCK) {           \
                const size_t len = uc - k0 < SPARK_FUSED_BLOCK                \
                                   ? uc - k0 : SPARK_FUSED_BLOCK;             \
                const T *SPARK_RESTRICT b = bias + k0;                        \
                T best[SPARK_FUSED_BLOCK];                                    \
                unsigned char arg[SPARK_FUSED_BLOCK] = {0};                   \
                unsigned char pos[SPARK_FUSED_BLOCK] = {0};                   \
                const T *SPARK_RESTRICT v0 = base + k0;                       \
                for (size_t k = 0; k < len; ++k)                              \
                    best[k] = v0[k] + b[k];                                   \
                for (ptrdiff_t i = 0; i < kh; ++i) {                          \
                    for (ptrdiff_t j = (i == 0); j < kw; ++j) {               \
                        const T *SPARK_RESTRICT v =                           \
                            base + (size_t)i * xrow + (size_t)j * uc + k0;    \
                        const unsigned char off =                             \
                            (unsigned char)(i * kw + j);                      \
                        for (size_t k = 0; k < len; ++k) {                    \
                            const T cur = best[k], val = v[k] + b[k];         \
                            const int gt = val > cur;                         \
                            best[k] = gt ? val : cur;                         \
                            arg[k] = (unsigned char)                          \
                                (arg[k] ^ ((arg[k] ^ off)                     \
                                           & (unsigned char)-gt));            \
                        }                                                     \
                    }                                                         \
                }                                                             \
                T *SPARK_RESTRICT od = o + k0;                                \
                for (size_t k = 0; k < len; ++k) {                            \
                    const T m = best[k];                                      \
                    od[k] = m <= (T)0 ? (T)0 : m;                             \
                    pos[k] = (unsigned char)(m > (T)0);                       \
                }                                                             \
                pack_codes(arg, pos, k0, len, pa, pp);                        \
            }                                                                 \
        }                                                                     \
      }                                                                       \
    }                                                                         \
    return 0;                                                                 \
}                                                                             \
                                                                              \
int spark_maxpool_relu_backward_##SUFFIX(const T *dout,                       \
                                         const unsigned char *argmax,         \
                                         const unsigned char *positive,       \
                                         ptrdiff_t n, ptrdiff_t h,            \
                                         ptrdiff_t w, ptrdiff_t c,            \
                                         ptrdiff_t kh, ptrdiff_t kw,          \
                                         ptrdiff_t stride, T *dx,             \
                                         double *dbias)                       \
{                                                                             \
    ptrdiff_t oh, ow;                                                         \
    if (fused_geometry(n, h, w, c, kh, kw, stride, &oh, &ow) != 0)            \
        return -1;                                                            \
    const size_t uc = (size_t)c, ca = (uc + 3) / 4, cp = (uc + 7) / 8;        \
    const size_t xrow = (size_t)w * uc;                                       \
    const size_t ximg = (size_t)h * xrow;                                     \
    const size_t pixels = (size_t)n * (size_t)oh * (size_t)ow;                \
    if (kh * kw < 4) {                                                        \
        for (size_t p = 0; p < pixels; ++p)                                   \
            for (size_t ch = 0; ch < uc; ++ch)                                \
                if (((argmax[p * ca + (ch >> 2)] >> (2 * (ch & 3))) & 3)      \
                    >= kh * kw)                                               \
                    return -2;                                                \
    }                                                                         \
    for (size_t k = 0; k < uc; ++k)                                           \
        dbias[k] = 0.0;                                                       \
    for (ptrdiff_t in = 0; in < n; ++in) {                                    \
        T *dn = dx + (size_t)in * ximg;                                       \
        for (ptrdiff_t ih = oh * stride; ih < h; ++ih)                        \
            memset(dn + (size_t)ih * xrow, 0, xrow * sizeof(T));              \
        for (ptrdiff_t y = 0; y < oh; ++y) {                                  \
            for (ptrdiff_t i = kh; i < stride && y * stride + i < h; ++i)     \
                memset(dn + (size_t)(y * stride + i) * xrow, 0,               \
                       xrow * sizeof(T));                                     \
            for (ptrdiff_t xo = 0; xo < ow; ++xo) {                           \
                const size_t p = ((size_t)in * (size_t)oh + (size_t)y)        \
                                 * (size_t)ow + (size_t)xo;                   \
                const T *SPARK_RESTRICT g = dout + p * uc;                    \
                T *base = dn + (size_t)(y * stride) * xrow                    \
                          + (size_t)(xo * stride) * uc;                       \
                for (size_t k0 = 0; k0 < uc; k0 += SPARK_FUSED_BLOCK) {       \
                    const size_t len = uc - k0 < SPARK_FUSED_BLOCK            \
                                       ? uc - k0 : SPARK_FUSED_BLOCK;         \
                    unsigned char arg[SPARK_FUSED_BLOCK];                     \
                    unsigned char pos[SPARK_FUSED_BLOCK];                     \
                    T gm[SPARK_FUSED_BLOCK];                                  \
                    double *SPARK_RESTRICT db = dbias + k0;                   \
                    unpack_codes(argmax + p * ca, positive + p * cp, k0,      \
                                 len, arg, pos);                              \
                    for (size_t k = 0; k < len; ++k) {                        \
                        gm[k] = select_##SUFFIX(pos[k], (T)0 + g[k0 + k],     \
                                                (T)0);                        \
                        db[k] += (double)gm[k];                               \
                    }                                                         \
                    for (ptrdiff_t i = 0; i < kh; ++i) {                      \
                        for (ptrdiff_t j = 0; j < kw; ++j) {                  \
                            T *SPARK_RESTRICT d = base + (size_t)i * xrow     \
                                                  + (size_t)j * uc + k0;      \
                            const unsigned char off =                         \
                                (unsigned char)(i * kw + j);                  \
                            for (size_t k = 0; k < len; ++k)                  \
                                d[k] = select_##SUFFIX(arg[k] == off, gm[k],  \
                                                       (T)0);                 \
                        }                                                     \
                    }                                                         \
                }                                                             \
                /* the gap between this window and the next (or the edge) */ \
                const ptrdiff_t end = xo + 1 < ow ? (xo + 1) * stride : w;    \
                if (end > xo * stride + kw)                                   \
                    for (ptrdiff_t i = 0; i < kh; ++i)                        \
                        memset(base + (size_t)i * xrow + (size_t)kw * uc, 0,  \
                               (size_t)(end - xo * stride - kw) * uc          \
                                   * sizeof(T));                              \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    return 0;                                                                 \
}

SPARK_DEFINE_MAXPOOL_RELU(f32, float)
SPARK_DEFINE_MAXPOOL_RELU(f64, double)

#undef SPARK_DEFINE_MAXPOOL_RELU
