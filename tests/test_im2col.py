"""The kernel pairs of spark.im2col -- im2col / col2im, max pooling forward /
backward, max pooling + ReLU forward / backward -- tested alike: the native
back end against the NumPy one on random shapes, each back end against a
plain-loop definition and hand-checked values, argument validation, outputs
completely overwritten, the C core's own guards; then back-end selection.

A pair (`Im2colPair`, `MaxPoolPair`, `MaxPoolReluPair`) says how to call its
functions on a case, (n, h, w, c, kh, kw, stride[, pad]) as its kernels take
the geometry; the tests are parametrized over the pairs and, where they test
one back end at a time, over `BACKENDS`.

CI builds the extension first (``python3 setup.py build_ext --inplace``); the
native tests then require the native back end.
"""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from project import ROOT

import spark.im2col as im
import spark.im2col_numpy as im2col_numpy

DTYPES = [np.float32, np.float64]
BACKENDS = ["native", "numpy"]
FUNCTIONS = ("im2col", "col2im", "maxpool_forward", "maxpool_backward",
             "maxpool_relu_forward", "maxpool_relu_backward")


def _kernels():
    """The native kernels (spark.matrix); requires the native back end."""
    assert im.backend() == "native", (
        f"native extension not loaded ({im.backend_error()}); build it with "
        "`python3 setup.py build_ext --inplace`")
    import spark.matrix
    return spark.matrix


def _api(backend):
    """The public functions of a back end by plain name: they validate their
    arguments, then run its kernels (spark.matrix or spark.im2col_numpy)."""
    if backend == "native":
        _kernels()
        return im
    return types.SimpleNamespace(**{name: getattr(im, "numpy_" + name) for name in FUNCTIONS})


def _kernel_module(backend):
    return _kernels() if backend == "native" else im2col_numpy


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def _same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()  # also distinguishes -0.0 / +0.0


def _input(rng, shape, dtype, kind):
    if kind == "ties":        # small integers: many equal values per window
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        x[rng.random(shape) < 0.2] = -0.0    # -0.0 ties with +0.0
        return x
    return rng.standard_normal(shape).astype(dtype)


def _pool_grad(rng, shape, dtype):
    g = rng.standard_normal(shape).astype(dtype)
    g[rng.random(shape) < 0.1] = -0.0        # dx must hold 0.0 + contributions
    g[rng.random(shape) < 0.1] = 1.0
    return g


def _unpack2(packed, c):
    bits = (packed[..., None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    return bits.reshape(packed.shape[:-1] + (4 * packed.shape[-1],))[..., :c]


# ------------------------------------------------------------ im2col / col2im

def _random_cases(count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        n = int(rng.integers(1, 4))
        c = int(rng.integers(1, 6))
        h, w = (int(v) for v in rng.integers(1, 11, size=2))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        stride = int(rng.integers(1, 4))
        pad = int(rng.integers(0, 3))
        if kh > h + 2 * pad or kw > w + 2 * pad:
            continue
        cases.append((n, h, w, c, kh, kw, stride, pad))
    return cases


def _loop_im2col(x, kh, kw, s, p):
    """Straight transcription of the definition (slow, obviously right)."""
    n, h, w, c = x.shape
    oh = (h + 2 * p - kh) // s + 1
    ow = (w + 2 * p - kw) // s + 1
    out = np.zeros((n * oh * ow, kh * kw * c), x.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for u in range(kh):
                    for v in range(kw):
                        y, z = i * s - p + u, j * s - p + v
                        if 0 <= y < h and 0 <= z < w:
                            row = (b * oh + i) * ow + j
                            col = (u * kw + v) * c
                            out[row, col:col + c] = x[b, y, z]
    return out


class Im2colPair:
    """im2col and its adjoint col2im. A case: (n, h, w, c, kh, kw, stride, pad)."""

    forward, backward = "im2col", "col2im"
    cases = _random_cases(400, seed=20240611)
    definition_cases = cases[:60]
    fixed_cases = [(2, 7, 6, 3, 3, 2, 2, 1), (2, 7, 6, 3, 2, 2, 3, 0), (2, 7, 6, 3, 1, 1, 1, 2)]
    strided_case = (2, 6, 5, 3, 3, 2, 1, 1)
    empty_case = (0, 4, 4, 2, 3, 3, 1, 1)

    @staticmethod
    def covers(cases):
        n, h, w, c, kh, kw, s, p = zip(*cases)
        assert set(s) == {1, 2, 3} and set(p) == {0, 1, 2}
        assert set(c) == {1, 2, 3, 4, 5} and set(n) == {1, 2, 3}
        assert any(a != b for a, b in zip(h, w))
        assert any(a != b for a, b in zip(kh, kw))

    @staticmethod
    def forward_call(rng, case, dtype, kind):
        n, h, w, c, kh, kw, s, p = case
        return (_input(rng, (n, h, w, c), dtype, kind),), (kh, kw, s, p)

    @staticmethod
    def backward_call(rng, case, inputs, outputs, dtype):
        n, h, w, c, kh, kw, s, p = case
        return (rng.standard_normal(outputs[0].shape).astype(dtype),), ((n, h, w, c), kh, kw, s, p)

    @staticmethod
    def output_specs(case, dtype):
        n, h, w, c, kh, kw, s, p = case
        oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        return [((n * oh * ow, kh * kw * c), np.dtype(dtype))]

    @staticmethod
    def backward_specs(case, dtype):
        return [(case[:4], np.dtype(dtype))]

    @staticmethod
    def check_definition(api, rng, case):
        n, h, w, c, kh, kw, s, p = case
        x = rng.standard_normal((n, h, w, c))
        _same_bits(api.im2col(x, kh, kw, s, p), _loop_im2col(x, kh, kw, s, p))

    @staticmethod
    def hand_example(api):
        f, g = api.im2col, api.col2im
        # x: 1 image, 2x3 pixels, 1 channel:  [[1 2 3]
        #                                      [4 5 6]]
        x = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1)
        # 2x2 kernel, stride 1, no pad -> OH=1, OW=2
        np.testing.assert_array_equal(
            f(x, 2, 2, 1, 0), [[1, 2, 4, 5], [2, 3, 5, 6]])
        # 1x2 kernel, stride 2, pad 1 -> padded 4x5, OH=2, OW=2; window origins
        # (ih, iw0) = (-1,-1), (-1,1): padding row; (1,-1): [pad, 4]; (1,1): [5, 6]
        np.testing.assert_array_equal(
            f(x, 1, 2, 2, 1), [[0, 0], [0, 0], [0, 4], [5, 6]])
        # col2im of all ones counts how many windows cover each pixel.
        ones = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(
            g(ones, x.shape, 2, 2, 1, 0)[0, :, :, 0], [[1, 2, 1], [1, 2, 1]])
        # 3x3 kernel, stride 1, pad 1 on 2x3: every pixel covered 2*(#cols) times
        cnt = g(np.ones((6, 9), np.float64), x.shape, 3, 3, 1, 1)[0, :, :, 0]
        np.testing.assert_array_equal(cnt, [[4, 6, 4], [4, 6, 4]])
        # channels stay separate and ordered: C=2, 1x1 kernel is a reshape
        x2 = np.arange(12, dtype=np.float64).reshape(1, 2, 3, 2)
        np.testing.assert_array_equal(f(x2, 1, 1, 1, 0), x2.reshape(6, 2))
        np.testing.assert_array_equal(g(x2.reshape(6, 2), x2.shape, 1, 1, 1, 0), x2)

    @staticmethod
    def bad_calls(api):
        f, g = api.im2col, api.col2im
        x = np.zeros((2, 5, 4, 3), np.float32)
        cols = f(x, 3, 3, 1, 1)
        return [(f, args, msg) for args, msg in [
            ((x, 6, 3, 1, 0), "larger than the padded input"),
            ((x, 3, 7, 1, 1), "larger than the padded input"),
            ((x, 3, 3, 0, 1), "stride"),
            ((x, 3, 3, 1, -1), "pad"),
            ((x, 0, 3, 1, 1), "kh"),
            ((x, 3, 0, 1, 1), "kw"),
            ((x, 2.5, 3, 1, 1), "integer"),
            ((x[0], 3, 3, 1, 1), "4-D"),
            ((x.astype(np.int32), 3, 3, 1, 1), "float32 or float64"),
            ((x.astype(np.float16), 3, 3, 1, 1), "float32 or float64"),
        ]] + [(g, args, msg) for args, msg in [
            ((cols[:-1], x.shape, 3, 3, 1, 1), "cols must have shape"),
            ((cols.ravel(), x.shape, 3, 3, 1, 1), "cols must have shape"),
            ((cols, (2, 5, 4), 3, 3, 1, 1), "4-D"),
            ((cols, (2, 5, 4, 3), 3, 3, 2, 1), "cols must have shape"),
            ((cols, (2, 5, 4, -3), 3, 3, 1, 1), ">= 0"),
            ((cols, x.shape, 3, 3, 0, 1), "stride"),
            ((cols, x.shape, 3, 3, 1, -2), "pad"),
            ((cols, (2, 1, 1, 3), 4, 4, 1, 1), "larger than the padded input"),
            ((cols.astype(np.int64), x.shape, 3, 3, 1, 1), "float32 or float64"),
            ((cols, 7, 3, 3, 1, 1), "sequence"),
        ]]

    @staticmethod
    def c_guard_calls(kernels):
        """(kernel, arguments, error, arrays that must stay 7.0) the C core refuses."""
        x = np.zeros((1, 4, 4, 2), np.float32)
        cols = np.zeros((9, 8), np.float32)
        return [(kernels.im2col, (x, cols, 1, 4, 4, 2, 5, 2, 1, 0), "invalid geometry", []),
                (kernels.col2im, (cols, x.copy(), 1, 4, 4, 2, 2, 2, 0, 0), "invalid geometry",
                 [])]


# ------------------------------------------------------------ max pooling

def _random_pool_cases(count, seed):
    rng = np.random.default_rng(seed)
    channels = [1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 33, 64, 65, 70]
    cases = []
    while len(cases) < count:
        n = int(rng.integers(1, 4))
        c = int(rng.choice(channels)) if rng.random() < 0.6 \
            else int(rng.integers(1, 71))
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        stride = int(rng.integers(1, 4))
        if kh > h or kw > w:
            continue
        cases.append((n, h, w, c, kh, kw, stride))
    return cases


def _loop_maxpool(x, kh, kw, s):
    """Straight transcription of the definition (slow, obviously right)."""
    n, h, w, c = x.shape
    oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
    out = np.zeros((n, oh, ow, c), x.dtype)
    arg = np.zeros((n, oh, ow, c), np.uint8)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    best, where = x[b, i * s, j * s, ch], 0
                    for u in range(kh):
                        for v in range(kw):
                            val = x[b, i * s + u, j * s + v, ch]
                            if val > best:
                                best, where = val, u * kw + v
                    out[b, i, j, ch], arg[b, i, j, ch] = best, where
    return out, arg


class MaxPoolPair:
    """maxpool_forward / maxpool_backward. A case: (n, h, w, c, kh, kw, stride)."""

    forward, backward = "maxpool_forward", "maxpool_backward"
    cases = _random_pool_cases(300, seed=20240612)
    definition_cases = [case for case in cases if case[3] <= 8][:40]
    fixed_cases = [(2, 7, 6, 3, 3, 2, 2), (2, 7, 6, 3, 2, 2, 3), (2, 7, 6, 3, 2, 3, 1)]
    strided_case = (2, 9, 7, 4, 3, 2, 2)
    empty_case = (0, 5, 5, 4, 2, 2, 2)

    @staticmethod
    def covers(cases):
        n, h, w, c, kh, kw, s = zip(*cases)
        assert set(s) == {1, 2, 3} and set(n) == {1, 2, 3}
        assert min(c) == 1 and max(c) >= 64 and len(set(c)) > 20
        cases = list(zip(h, w, kh, kw, s))
        assert any(a != b for _, _, a, b, _ in cases)                 # non-square
        assert any(st < max(a, b) for _, _, a, b, st in cases)         # overlap
        assert any(st > a and st > b for _, _, a, b, st in cases)      # gaps
        assert any((hh - a) % st for hh, _, a, _, st in cases)         # leftover
        assert any((ww - b) % st for _, ww, _, b, st in cases)

    @staticmethod
    def forward_call(rng, case, dtype, kind):
        n, h, w, c, kh, kw, s = case
        return (_input(rng, (n, h, w, c), dtype, kind),), (kh, kw, s)

    @staticmethod
    def backward_call(rng, case, inputs, outputs, dtype):
        n, h, w, c, kh, kw, s = case
        return (_pool_grad(rng, outputs[0].shape, dtype), outputs[1]), (h, w, kh, kw, s)

    @staticmethod
    def output_specs(case, dtype):
        n, h, w, c, kh, kw, s = case
        shape = (n, (h - kh) // s + 1, (w - kw) // s + 1, c)
        return [(shape, np.dtype(dtype)), (shape, np.dtype(np.uint8))]

    @staticmethod
    def backward_specs(case, dtype):
        return [(case[:4], np.dtype(dtype))]

    @staticmethod
    def check_definition(api, rng, case):
        n, h, w, c, kh, kw, s = case
        x = _input(rng, (n, h, w, c), np.float64, "ties")
        out, arg = api.maxpool_forward(x, kh, kw, s)
        ref_out, ref_arg = _loop_maxpool(x, kh, kw, s)
        _same_bits(out, ref_out)
        np.testing.assert_array_equal(arg, ref_arg)
        # backward: every dout lands on its argmax position (exact sums of
        # small integers, so the order does not matter here)
        g = rng.integers(-4, 5, size=out.shape).astype(np.float64)
        expect = np.zeros_like(x)
        for idx in np.ndindex(*out.shape):
            b, i, j, ch = idx
            u, v = divmod(int(arg[idx]), kw)
            expect[b, i * s + u, j * s + v, ch] += g[idx]
        np.testing.assert_array_equal(api.maxpool_backward(g, arg, h, w, kh, kw, s), expect)

    @staticmethod
    def hand_example(api):
        fwd, bwd = api.maxpool_forward, api.maxpool_backward
        # 1 image, 3x4 pixels, 1 channel:  [[1 5 2 2]
        #                                   [3 5 0 7]
        #                                   [9 1 1 6]]
        x = np.array([[1, 5, 2, 2], [3, 5, 0, 7], [9, 1, 1, 6]],
                     np.float32).reshape(1, 3, 4, 1)
        # 2x2 stride 2: one row of windows (row 2 left over), OW = 2
        out, arg = fwd(x, 2, 2, 2)
        np.testing.assert_array_equal(out[0, :, :, 0], [[5, 7]])
        np.testing.assert_array_equal(arg[0, :, :, 0], [[1, 3]])   # 5 tie: first
        dx = bwd(np.array([[[[10], [20]]]], np.float32), arg, 3, 4, 2, 2, 2)
        np.testing.assert_array_equal(
            dx[0, :, :, 0], [[0, 10, 0, 0], [0, 0, 0, 20], [0, 0, 0, 0]])
        # 2x2 stride 1 (overlapping): OH = 2, OW = 3
        out, arg = fwd(x, 2, 2, 1)
        np.testing.assert_array_equal(out[0, :, :, 0], [[5, 5, 7], [9, 5, 7]])
        np.testing.assert_array_equal(arg[0, :, :, 0], [[1, 0, 3], [2, 0, 1]])
        # the 5 at (0, 1) wins three windows, the 7 two: contributions add
        dx = bwd(np.ones((1, 2, 3, 1), np.float32), arg, 3, 4, 2, 2, 1)
        np.testing.assert_array_equal(
            dx[0, :, :, 0], [[0, 2, 0, 0], [0, 1, 0, 2], [1, 0, 0, 0]])
        # 1x3 window, stride 3 on 2 channels: channels are pooled separately
        x2 = np.array([[[[1, 9], [4, 8], [4, 9], [0, 0]]]], np.float64)
        out, arg = fwd(x2, 1, 3, 3)
        np.testing.assert_array_equal(out, [[[[4, 9]]]])
        np.testing.assert_array_equal(arg, [[[[1, 0]]]])

    @staticmethod
    def check_nan_and_signed_zero(api, dtype):
        nan = np.nan
        # channels: NaN at offset 0 is kept; NaN later is never picked;
        # -0.0 then +0.0 keeps -0.0 (not strictly greater); all NaN -> offset 0
        x = np.array([[[[nan, 1, -0.0, nan], [2, nan, 0.0, nan]],
                       [[3, 0, -1, nan], [1, 2, -1, nan]]]], dtype)
        out, arg = api.maxpool_forward(x, 2, 2, 2)
        assert np.isnan(out[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 0
        assert out[0, 0, 0, 1] == 2 and arg[0, 0, 0, 1] == 3
        assert out[0, 0, 0, 2] == 0 and np.signbit(out[0, 0, 0, 2])
        assert arg[0, 0, 0, 2] == 0
        assert np.isnan(out[0, 0, 0, 3]) and arg[0, 0, 0, 3] == 0
        # a -0.0 gradient becomes +0.0 (dx = 0.0 + contributions)
        dx = api.maxpool_backward(np.full((1, 1, 1, 4), -0.0, dtype), arg, 2, 2, 2, 2, 2)
        assert not np.signbit(dx).any() and not dx.any()

    @staticmethod
    def bad_calls(api):
        fwd, bwd = api.maxpool_forward, api.maxpool_backward
        x = np.zeros((2, 5, 4, 3), np.float32)
        out, arg = fwd(x, 2, 2, 2)                       # (2, 2, 2, 3)
        big = np.zeros((1, 20, 20, 1), np.float32)
        return [(fwd, args, msg) for args, msg in [
            ((x, 6, 2, 1), "larger than the input"),
            ((x, 2, 5, 1), "larger than the input"),
            ((big, 16, 17, 1), "more than 256"),
            ((x, 2, 2, 0), "stride"),
            ((x, 0, 2, 1), "kh"),
            ((x, 2, 0, 1), "kw"),
            ((x, 2.0, 2, 1), "integer"),
            ((x, 2, 2, True), "integer"),
            ((x[0], 2, 2, 2), "4-D"),
            ((x.astype(np.int32), 2, 2, 2), "float32 or float64"),
            ((x.astype(np.float16), 2, 2, 2), "float32 or float64"),
        ]] + [(bwd, args, msg) for args, msg in [
            ((out, arg, 5, 4, 2, 2, 1), "dout must have shape"),
            ((out, arg, 7, 4, 2, 2, 2), "dout must have shape"),
            ((out[:, :1], arg, 5, 4, 2, 2, 2), "dout must have shape"),
            ((out[0], arg, 5, 4, 2, 2, 2), "4-D"),
            ((out, arg[..., :2], 5, 4, 2, 2, 2), "argmax shape"),
            ((out, arg.astype(np.int64), 5, 4, 2, 2, 2), "uint8"),
            ((out, np.full_like(arg, 4), 5, 4, 2, 2, 2), "offset >= 4"),
            ((out, np.full_like(arg, 255), 5, 4, 2, 2, 2), "offset >= 4"),
            ((out, arg, 5, 1, 2, 2, 2), "larger than the input"),
            ((out, arg, -5, 4, 2, 2, 2), "h must be >= 0"),
            ((out, arg, 5, 4, 2, 2, 0), "stride"),
            ((out, arg, 5, 4.5, 2, 2, 2), "integer"),
            ((out, arg, 5, 4, 0, 2, 2), "kh"),
            ((out.astype(np.int64), arg, 5, 4, 2, 2, 2), "float32 or float64"),
        ]]

    @staticmethod
    def c_guard_calls(kernels):
        x = np.zeros((1, 4, 4, 2), np.float32)
        out = np.zeros((1, 2, 2, 2), np.float32)
        arg = np.zeros((1, 2, 2, 2), np.uint8)
        dx = np.full(x.shape, 7.0, np.float32)
        return [(kernels.maxpool_forward, (x, out, arg, 1, 4, 4, 2, 17, 17, 1),
                 "invalid geometry", []),
                (kernels.maxpool_backward, (out, np.full_like(arg, 4), dx, 1, 4, 4, 2, 2, 2, 2),
                 "argmax holds an offset", [dx])]


# ------------------------------------------------ max pooling fused with ReLU

def _fused_cases(count, seed):
    """Random shapes for maxpool_relu: windows of at most 4 values, stride
    >= the window, channel counts that leave packed bytes part-filled and
    that span more than one 64-channel block of the C code."""
    rng = np.random.default_rng(seed)
    windows = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (1, 4), (4, 1)]
    cases = []
    while len(cases) < count:
        kh, kw = windows[int(rng.integers(len(windows)))]
        stride = max(kh, kw) + int(rng.integers(0, 2))
        h, w = (int(v) for v in rng.integers(1, 10, size=2))
        if kh > h or kw > w:
            continue
        c = int(rng.choice([1, 3, 4, 5, 8, 9, 13, 64, 70]))
        cases.append((int(rng.integers(0, 4)), h, w, c, kh, kw, stride))
    return cases


def _relu_pool_reference(x, bias, kh, kw, s):
    """relu(maxpool(x + bias)) and the unpacked offsets, by plain loops."""
    n, h, w, c = x.shape
    shifted = x + bias
    oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
    out = np.zeros((n, oh, ow, c), x.dtype)
    arg = np.zeros((n, oh, ow, c), np.uint8)
    for i in range(oh):
        for j in range(ow):
            window = shifted[:, i * s:i * s + kh, j * s:j * s + kw, :]
            flat = window.reshape(n, kh * kw, c)
            arg[:, i, j] = flat.argmax(axis=1)
            out[:, i, j] = np.maximum(flat.max(axis=1), 0)
    return out, arg


class MaxPoolReluPair:
    """maxpool_relu_forward / maxpool_relu_backward. A case: (n, h, w, c, kh,
    kw, stride), windows of at most 4 values that do not overlap."""

    forward, backward = "maxpool_relu_forward", "maxpool_relu_backward"
    cases = _fused_cases(150, seed=99)
    definition_cases = cases[:60]
    fixed_cases = [(2, 7, 6, 11, 2, 2, 2), (2, 7, 6, 11, 2, 1, 3), (2, 7, 6, 11, 1, 2, 4)]
    strided_case = (2, 7, 6, 11, 2, 2, 2)
    empty_case = (0, 5, 5, 9, 2, 2, 2)

    @staticmethod
    def covers(cases):
        n, h, w, c, kh, kw, s = zip(*cases)
        assert {(a, b) for a, b in zip(kh, kw)} >= {(1, 1), (2, 2), (1, 3), (4, 1)}
        assert 0 in n and any(a > b for a, b in zip(s, kh))
        assert {1, 5, 9, 70} <= set(c)

    @staticmethod
    def forward_call(rng, case, dtype, kind):
        n, h, w, c, kh, kw, s = case
        x = _input(rng, (n, h, w, c), dtype, kind)
        bias = (rng.integers(-2, 3, c) if kind == "ties"
                else rng.standard_normal(c)).astype(dtype)
        return (x, bias), (kh, kw, s)

    @staticmethod
    def backward_call(rng, case, inputs, outputs, dtype):
        n, h, w, c, kh, kw, s = case
        return ((_pool_grad(rng, outputs[0].shape, dtype), outputs[1], outputs[2]),
                (h, w, kh, kw, s))

    @staticmethod
    def output_specs(case, dtype):
        n, h, w, c, kh, kw, s = case
        shape = (n, (h - kh) // s + 1, (w - kw) // s + 1)
        return [(shape + (c,), np.dtype(dtype)), (shape + ((c + 3) // 4,), np.dtype(np.uint8)),
                (shape + ((c + 7) // 8,), np.dtype(np.uint8))]

    @staticmethod
    def backward_specs(case, dtype):
        return [(case[:4], np.dtype(dtype)), ((case[3],), np.dtype(np.float64))]

    @staticmethod
    def check_definition(api, rng, case):
        n, h, w, c, kh, kw, s = case
        x = rng.standard_normal((n, h, w, c))
        bias = rng.standard_normal(c)
        out, argmax, positive = api.maxpool_relu_forward(x, bias, kh, kw, s)
        ref_out, ref_arg = _relu_pool_reference(x, bias, kh, kw, s)
        _same_bits(out, ref_out)
        np.testing.assert_array_equal(_unpack2(argmax, c), ref_arg)
        np.testing.assert_array_equal(
            np.unpackbits(positive, axis=-1, count=c).astype(bool), out > 0)
        # unused bits of part-filled bytes stay zero
        assert not (_unpack2(argmax, argmax.shape[-1] * 4)[..., c:]).any()
        assert not np.unpackbits(positive, axis=-1)[..., c:].any()
        # backward is the unfused gradient: pooling of the biased input, then
        # the ReLU mask on its output
        dout = rng.standard_normal(out.shape)
        dx, dbias = api.maxpool_relu_backward(dout, argmax, positive, h, w, kh, kw, s)
        pooled, arg = im.numpy_maxpool_forward(x + bias, kh, kw, s)
        masked = dout * (pooled > 0)
        expected = im.numpy_maxpool_backward(masked, arg, h, w, kh, kw, s)
        np.testing.assert_array_equal(dx, expected)
        assert dbias.dtype == np.float64 and dbias.shape == (c,)
        np.testing.assert_allclose(dbias, masked.reshape(-1, c).sum(axis=0),
                                   rtol=1e-12, atol=1e-12)
        assert (dx[dx != 0].size <= (pooled > 0).sum())

    @staticmethod
    def check_nan_and_signed_zero(api, dtype):
        # channel 0: NaN, -0, -1, 3 (NaN first); channel 1: -1, 2, -2, NaN
        x = np.array([np.nan, -1.0, -0.0, 2.0, -1.0, -2.0, 3.0, np.nan],
                     dtype).reshape(1, 2, 2, 2)
        out, argmax, positive = api.maxpool_relu_forward(x, np.zeros(2, dtype), 2, 2, 2)
        assert np.isnan(out[0, 0, 0, 0])          # NaN at offset 0 is kept
        assert out[0, 0, 0, 1].tobytes() == np.array(2.0, dtype).tobytes()
        assert _unpack2(argmax, 2).tolist() == [[[[0, 1]]]]
        assert np.unpackbits(positive, axis=-1, count=2).tolist() == [[[[0, 1]]]]
        x = np.full((1, 2, 2, 1), -0.0, dtype)
        out, _, positive = api.maxpool_relu_forward(x, np.zeros(1, dtype), 2, 2, 2)
        assert out.tobytes() == np.zeros(1, dtype).tobytes() and positive.item() == 0

    @staticmethod
    def bad_calls(api):
        forward, backward = api.maxpool_relu_forward, api.maxpool_relu_backward
        x = np.zeros((1, 6, 6, 3), np.float32)
        b = np.zeros(3, np.float32)
        out, argmax, positive = forward(x, b, 1, 3, 3)
        return [(forward, args, msg) for args, msg in [
            ((x, b, 3, 2, 3), "more than 4 values"),
            ((x, b, 2, 2, 1), "overlap"),
            ((x, np.zeros(3, np.float64), 2, 2, 2), "bias"),
            ((x, np.zeros(4, np.float32), 2, 2, 2), "bias"),
            ((x[:, :1], b, 2, 2, 2), "larger than the input"),
        ]] + [(backward, args, msg) for args, msg in [
            ((out, np.full_like(argmax, 0xFF), positive, 6, 6, 1, 3, 3),
             "argmax holds an offset"),
            ((out, argmax, positive[..., :0], 6, 6, 1, 3, 3), "positive must have shape"),
            ((out[:, :1], argmax[:, :1], positive[:, :1], 6, 6, 1, 3, 3),
             "dout must have shape"),
        ]]

    @staticmethod
    def c_guard_calls(kernels):
        x = np.zeros((1, 4, 4, 2), np.float32)
        b = np.zeros(2, np.float32)
        out = np.zeros((1, 4, 4, 2), np.float32)
        arg = np.zeros((1, 4, 4, 1), np.uint8)
        pos = np.zeros((1, 4, 4, 1), np.uint8)
        calls = [(kernels.maxpool_relu_forward, (x, b, out, arg, pos, 1, 4, 4, 2, 2, 2, 1),
                  "invalid geometry", [])]
        out, arg, pos = (np.ascontiguousarray(a[:, :4, :2]) for a in (out, arg, pos))
        dx = np.full(x.shape, 7.0, np.float32)
        db = np.zeros(2)
        calls.append((kernels.maxpool_relu_backward,
                      (out, np.full((1, 4, 2, 1), 3, np.uint8), pos, dx, db,
                       1, 4, 4, 2, 1, 2, 2), "argmax holds an offset", [dx]))
        return calls


PAIRS = [pytest.param(Im2colPair, id="im2col"), pytest.param(MaxPoolPair, id="maxpool"),
         pytest.param(MaxPoolReluPair, id="maxpool_relu")]
POOL_PAIRS = PAIRS[1:]


def _call(api, name, call):
    arrays, geometry = call
    return _outputs(getattr(api, name)(*arrays, *geometry))


def _specs(arrays):
    return [(a.shape, a.dtype) for a in arrays]


# ------------------------------------------------------------ every pair

@pytest.mark.parametrize("pair", PAIRS)
def test_cases_cover_the_interesting_space(pair):
    pair.covers(pair.cases)


@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", PAIRS)
def test_native_matches_numpy_on_random_shapes(pair, dtype, kind):
    native, numpy = _api("native"), _api("numpy")
    rng = np.random.default_rng(17)
    for case in pair.cases:
        call = pair.forward_call(rng, case, dtype, kind)
        got, ref = _call(native, pair.forward, call), _call(numpy, pair.forward, call)
        assert _specs(got) == _specs(ref) == pair.output_specs(case, dtype)
        for a, b in zip(got, ref):
            _same_bits(a, b)
        call = pair.backward_call(rng, case, call[0], ref, dtype)
        got, ref = _call(native, pair.backward, call), _call(numpy, pair.backward, call)
        assert _specs(got) == _specs(ref) == pair.backward_specs(case, dtype)
        for a, b in zip(got, ref):
            _same_bits(a, b)


@pytest.mark.parametrize("pair", PAIRS)
def test_public_functions_are_native(pair):
    kernels = _kernels()
    for name in (pair.forward, pair.backward):
        assert getattr(im, name).kernel is getattr(kernels, name), name
        assert getattr(im, name) is not getattr(im, "numpy_" + name), name
        assert getattr(im, "numpy_" + name).kernel is getattr(im2col_numpy, name), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_matches_definition(pair, backend):
    api = _api(backend)
    rng = np.random.default_rng(23)
    for case in pair.definition_cases:
        pair.check_definition(api, rng, case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS[:2])     # maxpool_relu's: in test_nan_and_signed_zero
def test_hand_computed_example(pair, backend):
    pair.hand_example(_api(backend))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", POOL_PAIRS)
def test_nan_and_signed_zero(pair, backend, dtype):
    pair.check_nan_and_signed_zero(_api(backend), dtype)


def _strided(a):
    """The values of `a` in an array that is not C-contiguous (every other
    element of the last axis, and of axis 2 of a 4-D array)."""
    b = np.repeat(a, 2, axis=-1)[..., ::2]
    if a.ndim == 4:
        b = np.repeat(b, 2, axis=2)[:, :, ::2]
    assert not b.flags.c_contiguous and np.array_equal(a, b)
    return b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_dtype_preserved_and_non_contiguous_inputs(pair, backend, dtype):
    api, numpy = _api(backend), _api("numpy")
    rng = np.random.default_rng(31)
    case = pair.strided_case
    arrays, geometry = pair.forward_call(rng, case, dtype, "normal")
    got = _call(api, pair.forward, ([_strided(a) for a in arrays], geometry))
    ref = _call(numpy, pair.forward, (arrays, geometry))
    assert _specs(got) == pair.output_specs(case, dtype)
    for a, b in zip(got, ref):
        assert a.flags.c_contiguous
        _same_bits(a, b)
    arrays, geometry = pair.backward_call(rng, case, arrays, ref, dtype)
    got = _call(api, pair.backward, ([_strided(a) for a in arrays], geometry))
    ref = _call(numpy, pair.backward, (arrays, geometry))
    assert _specs(got) == pair.backward_specs(case, dtype)
    for a, b in zip(got, ref):
        assert a.flags.c_contiguous
        _same_bits(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_empty_batch(pair, backend):
    api = _api(backend)
    rng = np.random.default_rng(0)
    case = pair.empty_case
    call = pair.forward_call(rng, case, np.float32, "normal")
    out = _call(api, pair.forward, call)
    assert _specs(out) == pair.output_specs(case, np.float32)
    dx = _call(api, pair.backward, pair.backward_call(rng, case, call[0], out, np.float32))
    assert _specs(dx) == pair.backward_specs(case, np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_argument_validation(pair, backend):
    for function, args, msg in pair.bad_calls(_api(backend)):
        with pytest.raises(ValueError, match=msg):
            function(*args)


def _garbage(a):
    """An array shaped like `a` full of what a kernel must overwrite."""
    return np.full(a.shape, 0xAA if a.dtype == np.uint8 else np.nan, a.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_kernels_overwrite_their_whole_output(pair, backend, dtype):
    # The front ends allocate outputs with np.empty: every kernel must write
    # every element (prefilled NaN or 0xAA must not survive).
    kernels, numpy = _kernel_module(backend), _api("numpy")
    rng = np.random.default_rng(41)
    for case in pair.fixed_cases:
        call = pair.forward_call(rng, case, dtype, "normal")
        ref = _call(numpy, pair.forward, call)
        got = [_garbage(a) for a in ref]
        getattr(kernels, pair.forward)(*call[0], *got, *case)   # kernel geometry: the case
        for a, b in zip(got, ref):
            _same_bits(a, b)
        call = pair.backward_call(rng, case, call[0], ref, dtype)
        ref = _call(numpy, pair.backward, call)
        got = [_garbage(a) for a in ref]
        getattr(kernels, pair.backward)(*call[0], *got, *case)
        for a, b in zip(got, ref):
            _same_bits(a, b)


@pytest.mark.parametrize("pair", PAIRS)
def test_native_kernels_keep_the_c_guards(pair):
    # The kernels trust spark.im2col's validation, but the C core still
    # rejects a bad geometry or argmax offset (before writing anything).
    for kernel, args, msg, untouched in pair.c_guard_calls(_kernels()):
        with pytest.raises(ValueError, match=msg):
            kernel(*args)
        for a in untouched:
            assert (a == 7.0).all()


# ------------------------------------------------------------ one pair alone

@pytest.mark.parametrize("backend", BACKENDS)
def test_col2im_is_adjoint_of_im2col(backend):
    api = _api(backend)
    rng = np.random.default_rng(11)
    for n, h, w, c, kh, kw, s, p in Im2colPair.cases[::4]:
        x = rng.standard_normal((n, h, w, c))
        cols = api.im2col(x, kh, kw, s, p)
        y = rng.standard_normal(cols.shape)
        lhs = float(np.dot(cols.ravel(), y.ravel()))
        rhs = float(np.dot(x.ravel(), api.col2im(y, x.shape, kh, kw, s, p).ravel()))
        assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_output_size():
    assert im.output_size(32, 3, 1, 1) == 32
    assert im.output_size(32, 2, 2, 0) == 16
    assert im.output_size(7, 3, 2, 0) == 3
    assert im.output_size(8, 3, 2, 0) == 3  # last column unused
    assert im.output_size(1, 3, 1, 1) == 1
    with pytest.raises(ValueError):
        im.output_size(2, 5, 1, 1)
    with pytest.raises(ValueError):
        im.output_size(8, 3, 0, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_backward_order_with_many_overlaps(dtype):
    # Values of very different magnitudes make the sum order visible: both
    # back ends must add the contributions to one pixel in the same order.
    native = _api("native")
    rng = np.random.default_rng(19)
    for kh, kw, s in [(5, 5, 1), (4, 3, 1), (3, 5, 2), (1, 5, 1), (5, 1, 1)]:
        x = np.zeros((2, 9, 10, 5), dtype)           # all ties: argmax 0
        _, arg = native.maxpool_forward(x, kh, kw, s)
        arg = rng.integers(0, kh * kw, size=arg.shape).astype(np.uint8)
        g = (rng.standard_normal(arg.shape)
             * 10.0 ** rng.integers(-8, 9, size=arg.shape)).astype(dtype)
        _same_bits(native.maxpool_backward(g, arg, 9, 10, kh, kw, s),
                   im.numpy_maxpool_backward(g, arg, 9, 10, kh, kw, s))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_largest_window_and_layouts(dtype):
    native = _api("native")
    rng = np.random.default_rng(29)
    for shape, kh, kw, s in [((2, 16, 17, 3), 16, 16, 1),
                             ((1, 3, 260, 5), 1, 256, 2),
                             ((2, 5, 5, 0), 2, 2, 2),
                             ((0, 5, 5, 4), 2, 2, 2),
                             ((3, 7, 7, 70), 7, 7, 5),
                             ((1, 8, 8, 1), 1, 1, 3)]:
        x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)
        out, arg = native.maxpool_forward(x, kh, kw, s)
        ref_out, ref_arg = im.numpy_maxpool_forward(x, kh, kw, s)
        _same_bits(out, ref_out)
        assert arg.tobytes() == ref_arg.tobytes()
        g = rng.standard_normal(out.shape).astype(dtype)
        _same_bits(native.maxpool_backward(g, arg, *shape[1:3], kh, kw, s),
                   im.numpy_maxpool_backward(g, arg, *shape[1:3], kh, kw, s))
    x = np.arange(256, dtype=dtype).reshape(1, 16, 16, 1)
    out, arg = native.maxpool_forward(x, 16, 16, 1)
    assert out.item() == 255 and arg.item() == 255


def test_maxpool_layer_uses_the_core_and_keeps_its_cache_format():
    from spark.pool import MaxPool
    rng = np.random.default_rng(37)
    layer = MaxPool("pool", (7, 9, 5), (3, 2), 2)
    x = rng.integers(-3, 4, size=(3, 7, 9, 5)).astype(np.float32)
    out, cache = layer.forward(x)
    assert out.shape == (3,) + layer.out_shape and out.dtype == np.float32
    assert list(cache) == ["argmax"]
    assert cache["argmax"].dtype == np.uint8 and cache["argmax"].shape == out.shape
    ref_out, ref_arg = im.numpy_maxpool_forward(x, 3, 2, 2)
    _same_bits(out, ref_out)
    np.testing.assert_array_equal(cache["argmax"], ref_arg)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx, grads = layer.backward(g, cache)
    assert grads == {}
    _same_bits(dx, im.numpy_maxpool_backward(g, ref_arg, 7, 9, 3, 2, 2))


# ------------------------------------------------------------ back-end selection

def test_backend_is_native_in_built_tree():
    _kernels()
    assert im.backend_error() is None
    info = im.backend_info()
    assert info["backend"] == "native" and os.path.isfile(info["path"])


def _run_backend_probe(extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import json, numpy as np, spark.im2col as m\n"
            "x = np.random.default_rng(0).standard_normal((2, 5, 7, 3))\n"
            "ok = bool(np.array_equal(m.im2col(x, 3, 2, 2, 1),"
            " m.numpy_im2col(x, 3, 2, 2, 1)))\n"
            "out, arg = m.maxpool_forward(x, 2, 3, 1)\n"
            "dx = m.maxpool_backward(out, arg, 5, 7, 2, 3, 1)\n"
            "out, arg, pos = m.maxpool_relu_forward(x, np.zeros(3), 2, 2, 2)\n"
            "dx2, _ = m.maxpool_relu_backward(out, arg, pos, 5, 7, 2, 2, 2)\n"
            f"names = {FUNCTIONS!r}\n"
            "print(json.dumps({'backend': m.backend(),"
            " 'error': m.backend_error(), 'ok': ok,"
            " 'numpy_impl': {n: getattr(m, n) is getattr(m, 'numpy_' + n) for n in names},"
            " 'dx': [list(dx.shape), list(dx2.shape)]}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_var_forces_numpy_fallback_for_every_function():
    _kernels()  # the extension IS available; the variable must still win
    out = _run_backend_probe({"SPARK_CNN_IM2COL": "numpy"})
    assert out["backend"] == "numpy" and out["ok"]
    assert out["numpy_impl"] == {name: True for name in FUNCTIONS}
    assert out["dx"] == [[2, 5, 7, 3], [2, 5, 7, 3]]
    assert "SPARK_CNN_IM2COL" in out["error"]


@pytest.mark.parametrize("mode", ["auto", "native"])
def test_default_subprocess_uses_native(mode):
    _kernels()
    out = _run_backend_probe({"SPARK_CNN_IM2COL": mode})
    assert out == {"backend": "native", "error": None, "ok": True,
                   "numpy_impl": {name: False for name in FUNCTIONS},
                   "dx": [[2, 5, 7, 3], [2, 5, 7, 3]]}
