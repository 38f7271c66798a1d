"""The NumPy kernels of spark.im2col: the fallback when the native core is not
loaded, and the reference it is checked against.

Each function has the name and signature of its counterpart in the native
``spark.matrix`` extension, so either module serves as the kernels of the
front ends in spark.im2col. The contract is theirs: arguments already
validated, arrays C-contiguous with matching dtypes and shapes, outputs
preallocated with undefined contents and completely overwritten here.

The results are bit-identical to the C code: im2col and the pooling forward
passes only copy and compare, and the backward passes add the contributions to
each element in the order the C code does (decreasing window offset).
"""
import numpy as np


def _span(size, k, stride, pad):
    """Window positions along one axis."""
    return (size + 2 * pad - k) // stride + 1


def _window(a, i, j, stride, oh, ow):
    """View of a (N, H, W, C) at window offset (i, j): (N, OH, OW, C)."""
    return a[:, i:i + stride * (oh - 1) + 1:stride,
             j:j + stride * (ow - 1) + 1:stride, :]


def pack_offsets(offsets):
    """(..., C) window offsets < 4 -> (..., ceil(C/4)) uint8, 2 bits each:
    channel 4q + r in bits 2r..2r+1 of byte q, unused bits 0."""
    c = offsets.shape[-1]
    padded = np.zeros(offsets.shape[:-1] + ((c + 3) // 4 * 4,), np.uint8)
    padded[..., :c] = offsets
    quads = padded.reshape(offsets.shape[:-1] + ((c + 3) // 4, 4))  # (..., C/4, 4)
    return (quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4
            | quads[..., 3] << 6).astype(np.uint8)


def unpack_offsets(packed, c):
    """Inverse of pack_offsets: (..., ceil(C/4)) uint8 -> (..., C) uint8."""
    shifts = np.array([0, 2, 4, 6], np.uint8)
    quads = (packed[..., None] >> shifts) & 3                  # (..., C/4, 4)
    flat = quads.reshape(packed.shape[:-1] + (4 * packed.shape[-1],))  # (..., 4*ceil(C/4))
    return flat[..., :c].astype(np.uint8)


def im2col(x, cols, n, h, w, c, kh, kw, s, p):
    """x (N, H, W, C) -> cols (N*OH*OW, KH*KW*C), one strided copy per
    window offset."""
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


def col2im(cols, dx, n, h, w, c, kh, kw, s, p):
    """cols (N*OH*OW, KH*KW*C) -> dx (N, H, W, C), the sum of every entry on
    its source pixel. The kernel offsets are visited in DECREASING (kh, kw)
    order, which is the order in which the C code (walking cols rows in
    increasing order) adds the contributions to each output element."""
    oh, ow = _span(h, kh, s, p), _span(w, kw, s, p)
    cv = cols.reshape(n, oh, ow, kh, kw, c)                     # (N, OH, OW, KH, KW, C)
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


def maxpool_forward(x, out, argmax, n, h, w, c, kh, kw, s):
    """x (N, H, W, C) -> out, argmax (N, OH, OW, C). Every window offset is a
    strided view of x, so pooling is KH*KW whole-array compare-and-select
    passes in increasing offset order."""
    oh, ow = _span(h, kh, s, 0), _span(w, kw, s, 0)
    np.copyto(out, _window(x, 0, 0, s, oh, ow))
    argmax.fill(0)
    larger = np.empty(out.shape, np.bool_)
    for offset in range(1, kh * kw):
        view = _window(x, *divmod(offset, kw), s, oh, ow)
        np.greater(view, out, out=larger)
        np.copyto(out, view, where=larger)
        np.copyto(argmax, np.uint8(offset), where=larger)


def maxpool_backward(dout, argmax, dx, n, h, w, c, kh, kw, s):
    """dout, argmax (N, OH, OW, C) -> dx (N, H, W, C). The window offsets are
    visited in DECREASING order, which is the order in which the C code
    (walking the output pixels in increasing order) adds the contributions to
    each dx element of overlapping windows."""
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


def maxpool_relu_forward(x, bias, out, argmax, positive, n, h, w, c, kh, kw, s):
    """x (N, H, W, C), bias (C,) -> out (N, OH, OW, C), argmax (N, OH, OW,
    ceil(C/4)), positive (N, OH, OW, ceil(C/8)). Pooling of x + bias as in
    maxpool_forward, then the ReLU on the pooled values (NaN kept, like the C
    code: NaN <= 0 is false)."""
    offsets = np.empty(out.shape, np.uint8)                     # (N, OH, OW, C)
    maxpool_forward(x + bias, out, offsets, n, h, w, c, kh, kw, s)
    positive[...] = np.packbits(out > 0, axis=-1)
    np.copyto(out, out.dtype.type(0), where=out <= 0)
    argmax[...] = pack_offsets(offsets)


def maxpool_relu_backward(dout, argmax, positive, dx, dbias, n, h, w, c, kh, kw, s):
    """dout (N, OH, OW, C) and the packed codes -> dx (N, H, W, C), dbias (C,)
    float64. The pooled gradients where the ReLU passed them (0 + dout, so
    never -0.0), summed into dbias row by row (accumulate: the C code's order)
    and routed to the window maxima by the maxpool_backward kernel."""
    passed = np.unpackbits(positive, axis=-1, count=c).view(np.bool_)  # (N, OH, OW, C)
    zero = dout.dtype.type(0)
    kept = np.where(passed, dout + zero, zero)                  # (N, OH, OW, C)
    rows = kept.reshape(-1, c).astype(np.float64)               # (N*OH*OW, C)
    dbias[...] = np.add.accumulate(rows, axis=0)[-1] if len(rows) else 0.0
    maxpool_backward(kept, unpack_offsets(argmax, c), dx, n, h, w, c, kh, kw, s)
