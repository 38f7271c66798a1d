"""im2col / col2im: native extension vs the NumPy reference, adjointness,
hand-checked values, argument validation and back-end selection.

CI builds the extension first (``python3 setup.py build_ext --inplace``); the
native-vs-NumPy tests then require the native back end.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import spark.im2col as im
from project import ROOT

DTYPES = [np.float32, np.float64]


def _kernels():
    """The native kernels (spark.matrix); requires the native back end."""
    assert im.backend() == "native", (
        f"native extension not loaded ({im.backend_error()}); build it with "
        "`python3 setup.py build_ext --inplace`")
    import spark.matrix
    return spark.matrix


def _native():
    """The public functions, which validate their arguments and then run the
    native kernels (spark.matrix only holds the thin kernels)."""
    kernels = _kernels()
    for name in ("im2col", "col2im", "maxpool_forward", "maxpool_backward"):
        assert getattr(im, name).kernel is getattr(kernels, name), name
    return im


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


CASES = _random_cases(400, seed=20240611)


def _same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()  # also distinguishes -0.0 / +0.0


def test_cases_cover_the_interesting_space():
    n, h, w, c, kh, kw, s, p = zip(*CASES)
    assert set(s) == {1, 2, 3} and set(p) == {0, 1, 2}
    assert set(c) == {1, 2, 3, 4, 5} and set(n) == {1, 2, 3}
    assert any(a != b for a, b in zip(h, w))
    assert any(a != b for a, b in zip(kh, kw))


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_matches_numpy_on_random_shapes(dtype):
    native = _native()
    rng = np.random.default_rng(7)
    for n, h, w, c, kh, kw, s, p in CASES:
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
        cols = native.im2col(x, kh, kw, s, p)
        oh = (h + 2 * p - kh) // s + 1
        ow = (w + 2 * p - kw) // s + 1
        assert cols.shape == (n * oh * ow, kh * kw * c)
        _same_bits(cols, im.numpy_im2col(x, kh, kw, s, p))

        y = rng.standard_normal(cols.shape).astype(dtype)
        dx = native.col2im(y, x.shape, kh, kw, s, p)
        assert dx.shape == x.shape
        _same_bits(dx, im.numpy_col2im(y, x.shape, kh, kw, s, p))


def test_public_functions_are_native():
    kernels = _kernels()
    assert im.im2col.kernel is kernels.im2col
    assert im.col2im.kernel is kernels.col2im
    assert im.im2col is not im.numpy_im2col
    assert im.col2im is not im.numpy_col2im


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


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_matches_definition(impl):
    f = im.numpy_im2col if impl == "numpy" else _native().im2col
    rng = np.random.default_rng(3)
    for n, h, w, c, kh, kw, s, p in CASES[:60]:
        x = rng.standard_normal((n, h, w, c))
        _same_bits(f(x, kh, kw, s, p), _loop_im2col(x, kh, kw, s, p))


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_col2im_is_adjoint_of_im2col(impl):
    if impl == "native":
        native = _native()
        f, g = native.im2col, native.col2im
    else:
        f, g = im.numpy_im2col, im.numpy_col2im
    rng = np.random.default_rng(11)
    for n, h, w, c, kh, kw, s, p in CASES[::4]:
        x = rng.standard_normal((n, h, w, c))
        cols = f(x, kh, kw, s, p)
        y = rng.standard_normal(cols.shape)
        lhs = float(np.dot(cols.ravel(), y.ravel()))
        rhs = float(np.dot(x.ravel(), g(y, x.shape, kh, kw, s, p).ravel()))
        assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_hand_computed_example(impl):
    if impl == "native":
        native = _native()
        f, g = native.im2col, native.col2im
    else:
        f, g = im.numpy_im2col, im.numpy_col2im
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
    np.testing.assert_array_equal(g(x2.reshape(6, 2), x2.shape, 1, 1, 1, 0),
                                  x2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_dtype_preserved_and_non_contiguous_input(impl, dtype):
    if impl == "native":
        native = _native()
        f, g = native.im2col, native.col2im
    else:
        f, g = im.numpy_im2col, im.numpy_col2im
    base = np.random.default_rng(5).standard_normal((2, 6, 10, 3))
    x = base.astype(dtype)[:, :, ::2, :]  # not C-contiguous
    cols = f(x, 3, 2, 1, 1)
    assert cols.dtype == dtype and cols.flags.c_contiguous
    _same_bits(cols, im.numpy_im2col(np.ascontiguousarray(x), 3, 2, 1, 1))
    dx = g(cols, x.shape, 3, 2, 1, 1)
    assert dx.dtype == dtype and dx.flags.c_contiguous and dx.shape == x.shape


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


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_argument_validation(impl):
    if impl == "native":
        native = _native()
        f, g = native.im2col, native.col2im
    else:
        f, g = im.numpy_im2col, im.numpy_col2im
    x = np.zeros((2, 5, 4, 3), np.float32)
    cols = f(x, 3, 3, 1, 1)

    bad_im2col = [
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
    ]
    for args, msg in bad_im2col:
        with pytest.raises(ValueError, match=msg):
            f(*args)

    bad_col2im = [
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
    ]
    for args, msg in bad_col2im:
        with pytest.raises(ValueError, match=msg):
            g(*args)


def test_empty_batch():
    native = _native()
    x = np.zeros((0, 4, 4, 2), np.float32)
    for f, g in [(native.im2col, native.col2im),
                 (im.numpy_im2col, im.numpy_col2im)]:
        cols = f(x, 3, 3, 1, 1)
        assert cols.shape == (0, 18)
        assert g(cols, x.shape, 3, 3, 1, 1).shape == x.shape


def test_backend_is_native_in_built_tree():
    _native()
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
            "print(json.dumps({'backend': m.backend(),"
            " 'error': m.backend_error(), 'ok': ok,"
            " 'numpy_impl': m.im2col is m.numpy_im2col}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_var_forces_numpy_fallback():
    _native()  # the extension IS available; the variable must still win
    out = _run_backend_probe({"SPARK_CNN_IM2COL": "numpy"})
    assert out["backend"] == "numpy" and out["numpy_impl"] and out["ok"]
    assert "SPARK_CNN_IM2COL" in out["error"]


def test_default_subprocess_uses_native():
    _native()
    out = _run_backend_probe({"SPARK_CNN_IM2COL": "auto"})
    assert out == {"backend": "native", "error": None, "ok": True,
                   "numpy_impl": False}


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


POOL_CASES = _random_pool_cases(300, seed=20240612)


def test_pool_cases_cover_the_interesting_space():
    n, h, w, c, kh, kw, s = zip(*POOL_CASES)
    assert set(s) == {1, 2, 3} and set(n) == {1, 2, 3}
    assert min(c) == 1 and max(c) >= 64 and len(set(c)) > 20
    cases = list(zip(h, w, kh, kw, s))
    assert any(a != b for _, _, a, b, _ in cases)                 # non-square
    assert any(st < max(a, b) for _, _, a, b, st in cases)         # overlap
    assert any(st > a and st > b for _, _, a, b, st in cases)      # gaps
    assert any((hh - a) % st for hh, _, a, _, st in cases)         # leftover
    assert any((ww - b) % st for _, ww, _, b, st in cases)


def _pool_input(rng, shape, dtype, kind):
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


@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_maxpool_matches_numpy_on_random_shapes(dtype, kind):
    native = _native()
    rng = np.random.default_rng(17)
    for n, h, w, c, kh, kw, s in POOL_CASES:
        x = _pool_input(rng, (n, h, w, c), dtype, kind)
        out, arg = native.maxpool_forward(x, kh, kw, s)
        oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
        assert out.shape == arg.shape == (n, oh, ow, c)
        assert arg.dtype == np.uint8 and out.dtype == dtype
        ref_out, ref_arg = im.numpy_maxpool_forward(x, kh, kw, s)
        _same_bits(out, ref_out)
        assert arg.tobytes() == ref_arg.tobytes() and ref_arg.dtype == np.uint8

        g = _pool_grad(rng, out.shape, dtype)
        dx = native.maxpool_backward(g, arg, h, w, kh, kw, s)
        assert dx.shape == x.shape and dx.dtype == dtype
        _same_bits(dx, im.numpy_maxpool_backward(g, arg, h, w, kh, kw, s))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_backward_order_with_many_overlaps(dtype):
    # Values of very different magnitudes make the sum order visible: both
    # back ends must add the contributions to one pixel in the same order.
    native = _native()
    rng = np.random.default_rng(19)
    for kh, kw, s in [(5, 5, 1), (4, 3, 1), (3, 5, 2), (1, 5, 1), (5, 1, 1)]:
        x = np.zeros((2, 9, 10, 5), dtype)           # all ties: argmax 0
        _, arg = native.maxpool_forward(x, kh, kw, s)
        arg = rng.integers(0, kh * kw, size=arg.shape).astype(np.uint8)
        g = (rng.standard_normal(arg.shape)
             * 10.0 ** rng.integers(-8, 9, size=arg.shape)).astype(dtype)
        _same_bits(native.maxpool_backward(g, arg, 9, 10, kh, kw, s),
                   im.numpy_maxpool_backward(g, arg, 9, 10, kh, kw, s))


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


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_matches_definition(impl):
    fwd = im.numpy_maxpool_forward if impl == "numpy" \
        else _native().maxpool_forward
    bwd = im.numpy_maxpool_backward if impl == "numpy" \
        else _native().maxpool_backward
    rng = np.random.default_rng(23)
    cases = [case for case in POOL_CASES if case[3] <= 8][:40]
    for n, h, w, c, kh, kw, s in cases:
        x = _pool_input(rng, (n, h, w, c), np.float64, "ties")
        out, arg = fwd(x, kh, kw, s)
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
        np.testing.assert_array_equal(bwd(g, arg, h, w, kh, kw, s), expect)


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_hand_computed_example(impl):
    native = _native()
    if impl == "native":
        fwd, bwd = native.maxpool_forward, native.maxpool_backward
    else:
        fwd, bwd = im.numpy_maxpool_forward, im.numpy_maxpool_backward
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_nan_and_signed_zero(impl, dtype):
    native = _native()
    if impl == "native":
        fwd, bwd = native.maxpool_forward, native.maxpool_backward
    else:
        fwd, bwd = im.numpy_maxpool_forward, im.numpy_maxpool_backward
    nan = np.nan
    # channels: NaN at offset 0 is kept; NaN later is never picked;
    # -0.0 then +0.0 keeps -0.0 (not strictly greater); all NaN -> offset 0
    x = np.array([[[[nan, 1, -0.0, nan], [2, nan, 0.0, nan]],
                   [[3, 0, -1, nan], [1, 2, -1, nan]]]], dtype)
    out, arg = fwd(x, 2, 2, 2)
    assert np.isnan(out[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 0
    assert out[0, 0, 0, 1] == 2 and arg[0, 0, 0, 1] == 3
    assert out[0, 0, 0, 2] == 0 and np.signbit(out[0, 0, 0, 2])
    assert arg[0, 0, 0, 2] == 0
    assert np.isnan(out[0, 0, 0, 3]) and arg[0, 0, 0, 3] == 0
    # a -0.0 gradient becomes +0.0 (dx = 0.0 + contributions)
    dx = bwd(np.full((1, 1, 1, 4), -0.0, dtype), arg, 2, 2, 2, 2, 2)
    assert not np.signbit(dx).any() and not dx.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_largest_window_and_layouts(dtype):
    native = _native()
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


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_non_contiguous_inputs(impl):
    native = _native()
    if impl == "native":
        fwd, bwd = native.maxpool_forward, native.maxpool_backward
    else:
        fwd, bwd = im.numpy_maxpool_forward, im.numpy_maxpool_backward
    rng = np.random.default_rng(31)
    base = rng.standard_normal((2, 9, 14, 6)).astype(np.float32)
    x = base[:, :, ::2, 1:5]                        # not C-contiguous
    out, arg = fwd(x, 3, 2, 2)
    ref_out, ref_arg = im.numpy_maxpool_forward(np.ascontiguousarray(x), 3, 2, 2)
    _same_bits(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    g = rng.standard_normal((2,) + out.shape[1:3] + (8,)).astype(np.float32)
    gv, av = g[..., ::2], np.repeat(arg, 2, axis=3)[..., ::2]
    dx = bwd(gv, av, 9, 7, 3, 2, 2)
    _same_bits(dx, im.numpy_maxpool_backward(np.ascontiguousarray(gv), arg,
                                             9, 7, 3, 2, 2))


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_argument_validation(impl):
    native = _native()
    if impl == "native":
        fwd, bwd = native.maxpool_forward, native.maxpool_backward
    else:
        fwd, bwd = im.numpy_maxpool_forward, im.numpy_maxpool_backward
    x = np.zeros((2, 5, 4, 3), np.float32)
    out, arg = fwd(x, 2, 2, 2)                       # (2, 2, 2, 3)
    big = np.zeros((1, 20, 20, 1), np.float32)
    bad_forward = [
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
    ]
    for args, msg in bad_forward:
        with pytest.raises(ValueError, match=msg):
            fwd(*args)

    bad_backward = [
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
    ]
    for args, msg in bad_backward:
        with pytest.raises(ValueError, match=msg):
            bwd(*args)


def test_public_maxpool_functions_are_native():
    kernels = _kernels()
    assert im.maxpool_forward.kernel is kernels.maxpool_forward
    assert im.maxpool_backward.kernel is kernels.maxpool_backward
    assert im.maxpool_forward is not im.numpy_maxpool_forward
    assert im.maxpool_backward is not im.numpy_maxpool_backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_kernels_overwrite_their_whole_output(impl, dtype):
    # The front ends allocate outputs with np.empty: every kernel must write
    # every element (prefilled NaN must not survive).
    k = _kernels() if impl == "native" else im._NUMPY_KERNELS
    rng = np.random.default_rng(41)
    x = rng.standard_normal((2, 7, 6, 3)).astype(dtype)
    for kh, kw, s, p in [(3, 2, 2, 1), (2, 2, 3, 0), (1, 1, 1, 2)]:
        cols = np.full(im.numpy_im2col(x, kh, kw, s, p).shape, np.nan, dtype)
        k.im2col(x, cols, 2, 7, 6, 3, kh, kw, s, p)
        _same_bits(cols, im.numpy_im2col(x, kh, kw, s, p))
        dx = np.full(x.shape, np.nan, dtype)
        k.col2im(cols, dx, 2, 7, 6, 3, kh, kw, s, p)
        _same_bits(dx, im.numpy_col2im(cols, x.shape, kh, kw, s, p))
    for kh, kw, s in [(3, 2, 2), (2, 2, 3), (2, 3, 1)]:
        ref_out, ref_arg = im.numpy_maxpool_forward(x, kh, kw, s)
        out = np.full(ref_out.shape, np.nan, dtype)
        arg = np.full(ref_out.shape, 255, np.uint8)
        k.maxpool_forward(x, out, arg, 2, 7, 6, 3, kh, kw, s)
        _same_bits(out, ref_out)
        assert arg.tobytes() == ref_arg.tobytes()
        dx = np.full(x.shape, np.nan, dtype)
        k.maxpool_backward(ref_out, ref_arg, dx, 2, 7, 6, 3, kh, kw, s)
        _same_bits(dx, im.numpy_maxpool_backward(ref_out, ref_arg, 7, 6,
                                                 kh, kw, s))


def test_native_kernels_keep_the_c_guards():
    # The kernels trust spark.im2col's validation, but the C core still
    # rejects a bad geometry or argmax offset (before writing anything).
    k = _kernels()
    x = np.zeros((1, 4, 4, 2), np.float32)
    cols = np.zeros((9, 8), np.float32)
    with pytest.raises(ValueError, match="invalid geometry"):
        k.im2col(x, cols, 1, 4, 4, 2, 5, 2, 1, 0)
    with pytest.raises(ValueError, match="invalid geometry"):
        k.col2im(cols, x.copy(), 1, 4, 4, 2, 2, 2, 0, 0)
    out = np.zeros((1, 2, 2, 2), np.float32)
    arg = np.zeros((1, 2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="invalid geometry"):
        k.maxpool_forward(x, out, arg, 1, 4, 4, 2, 17, 17, 1)
    dx = np.full(x.shape, 7.0, np.float32)
    with pytest.raises(ValueError, match="argmax holds an offset"):
        k.maxpool_backward(out, np.full_like(arg, 4), dx, 1, 4, 4, 2, 2, 2, 2)
    assert (dx == 7.0).all()


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


def test_env_var_numpy_fallback_covers_pooling():
    _native()
    env = dict(os.environ, SPARK_CNN_IM2COL="numpy")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import numpy as np, spark.im2col as m\n"
            "assert m.maxpool_forward is m.numpy_maxpool_forward\n"
            "assert m.maxpool_backward is m.numpy_maxpool_backward\n"
            "x = np.random.default_rng(0).standard_normal((2, 6, 5, 3))\n"
            "out, arg = m.maxpool_forward(x, 2, 3, 1)\n"
            "dx = m.maxpool_backward(out, arg, 6, 5, 2, 3, 1)\n"
            "print(m.backend(), dx.shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "numpy"


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


FUSED_CASES = _fused_cases(150, seed=99)


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


def _unpack2(packed, c):
    bits = (packed[..., None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    return bits.reshape(packed.shape[:-1] + (4 * packed.shape[-1],))[..., :c]


def test_fused_cases_cover_the_interesting_space():
    n, h, w, c, kh, kw, s = zip(*FUSED_CASES)
    assert {(a, b) for a, b in zip(kh, kw)} >= {(1, 1), (2, 2), (1, 3), (4, 1)}
    assert 0 in n and any(a > b for a, b in zip(s, kh))
    assert {1, 5, 9, 70} <= set(c)


@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_maxpool_relu_matches_numpy_on_random_shapes(dtype, kind):
    k = _kernels()
    assert im.maxpool_relu_forward.kernel is k.maxpool_relu_forward
    assert im.maxpool_relu_backward.kernel is k.maxpool_relu_backward
    rng = np.random.default_rng(17)
    for n, h, w, c, kh, kw, s in FUSED_CASES:
        x = _pool_input(rng, (n, h, w, c), dtype, kind)
        bias = (rng.integers(-2, 3, c) if kind == "ties"
                else rng.standard_normal(c)).astype(dtype)
        got = im.maxpool_relu_forward(x, bias, kh, kw, s)
        ref = im.numpy_maxpool_relu_forward(x, bias, kh, kw, s)
        for a, b in zip(got, ref):
            _same_bits(a, b)
        dout = _pool_grad(rng, got[0].shape, dtype)
        got = im.maxpool_relu_backward(dout, ref[1], ref[2], h, w, kh, kw, s)
        ref = im.numpy_maxpool_relu_backward(dout, ref[1], ref[2], h, w, kh,
                                             kw, s)
        for a, b in zip(got, ref):
            _same_bits(a, b)


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_relu_is_relu_of_maxpool_with_packed_codes(impl):
    fused = im if impl == "native" else None
    if fused is not None:
        _kernels()
    forward = im.maxpool_relu_forward if impl == "native" else im.numpy_maxpool_relu_forward
    rng = np.random.default_rng(23)
    for n, h, w, c, kh, kw, s in FUSED_CASES[:60]:
        x = rng.standard_normal((n, h, w, c))
        bias = rng.standard_normal(c)
        out, argmax, positive = forward(x, bias, kh, kw, s)
        ref_out, ref_arg = _relu_pool_reference(x, bias, kh, kw, s)
        _same_bits(out, ref_out)
        np.testing.assert_array_equal(_unpack2(argmax, c), ref_arg)
        np.testing.assert_array_equal(
            np.unpackbits(positive, axis=-1, count=c).astype(bool), out > 0)
        # unused bits of part-filled bytes stay zero
        assert not (_unpack2(argmax, argmax.shape[-1] * 4)[..., c:]).any()
        assert not np.unpackbits(positive, axis=-1)[..., c:].any()


def _fused_kernels(impl):
    """(forward, backward) of the fused max pool + ReLU: the native pair or the NumPy one."""
    if impl == "native":
        _kernels()
        return im.maxpool_relu_forward, im.maxpool_relu_backward
    return im.numpy_maxpool_relu_forward, im.numpy_maxpool_relu_backward


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_relu_backward_is_the_unfused_gradient(impl):
    forward, backward = _fused_kernels(impl)
    rng = np.random.default_rng(29)
    for n, h, w, c, kh, kw, s in FUSED_CASES[:60]:
        x = rng.standard_normal((n, h, w, c))
        bias = rng.standard_normal(c)
        out, argmax, positive = forward(x, bias, kh, kw, s)
        dout = rng.standard_normal(out.shape)
        dx, dbias = backward(dout, argmax, positive, h, w, kh, kw, s)
        # unfused: pooling of the biased input, then the ReLU mask on its output
        pooled, arg = im.numpy_maxpool_forward(x + bias, kh, kw, s)
        masked = dout * (pooled > 0)
        expected = im.numpy_maxpool_backward(masked, arg, h, w, kh, kw, s)
        np.testing.assert_array_equal(dx, expected)
        assert dbias.dtype == np.float64 and dbias.shape == (c,)
        np.testing.assert_allclose(dbias, masked.reshape(-1, c).sum(axis=0),
                                   rtol=1e-12, atol=1e-12)
        assert (dx[dx != 0].size <= (pooled > 0).sum())


def test_maxpool_relu_keeps_nan_and_zeroes_negative_zero():
    _kernels()
    for forward in (im.maxpool_relu_forward, im.numpy_maxpool_relu_forward):
        # channel 0: NaN, -0, -1, 3 (NaN first); channel 1: -1, 2, -2, NaN
        x = np.array([np.nan, -1.0, -0.0, 2.0, -1.0, -2.0, 3.0, np.nan],
                     np.float32).reshape(1, 2, 2, 2)
        out, argmax, positive = forward(x, np.zeros(2, np.float32), 2, 2, 2)
        assert np.isnan(out[0, 0, 0, 0])          # NaN at offset 0 is kept
        assert out[0, 0, 0, 1].tobytes() == np.float32(2.0).tobytes()
        assert _unpack2(argmax, 2).tolist() == [[[[0, 1]]]]
        assert np.unpackbits(positive, axis=-1, count=2).tolist() == [[[[0, 1]]]]
        x = np.full((1, 2, 2, 1), -0.0, np.float32)
        out, _, positive = forward(x, np.zeros(1, np.float32), 2, 2, 2)
        assert out.tobytes() == np.float32(0.0).tobytes() and positive.item() == 0


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_relu_argument_validation(impl):
    forward, backward = _fused_kernels(impl)
    x = np.zeros((1, 6, 6, 3), np.float32)
    b = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="more than 4 values"):
        forward(x, b, 3, 2, 3)
    with pytest.raises(ValueError, match="overlap"):
        forward(x, b, 2, 2, 1)
    with pytest.raises(ValueError, match="bias"):
        forward(x, np.zeros(3, np.float64), 2, 2, 2)
    with pytest.raises(ValueError, match="bias"):
        forward(x, np.zeros(4, np.float32), 2, 2, 2)
    with pytest.raises(ValueError, match="larger than the input"):
        forward(x[:, :1], b, 2, 2, 2)
    out, argmax, positive = forward(x, b, 1, 3, 3)
    with pytest.raises(ValueError, match="argmax holds an offset"):
        backward(out, np.full_like(argmax, 0xFF), positive, 6, 6, 1, 3, 3)
    with pytest.raises(ValueError, match="positive must have shape"):
        backward(out, argmax, positive[..., :0], 6, 6, 1, 3, 3)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(out[:, :1], argmax[:, :1], positive[:, :1], 6, 6, 1, 3, 3)


def test_native_maxpool_relu_keeps_the_c_guards():
    k = _kernels()
    x = np.zeros((1, 4, 4, 2), np.float32)
    b = np.zeros(2, np.float32)
    out = np.zeros((1, 4, 4, 2), np.float32)
    arg = np.zeros((1, 4, 4, 1), np.uint8)
    pos = np.zeros((1, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="invalid geometry"):
        k.maxpool_relu_forward(x, b, out, arg, pos, 1, 4, 4, 2, 2, 2, 1)
    out, arg, pos = (a[:, :4, :2] for a in (out, arg, pos))
    dx = np.full(x.shape, 7.0, np.float32)
    db = np.zeros(2)
    with pytest.raises(ValueError, match="argmax holds an offset"):
        k.maxpool_relu_backward(np.ascontiguousarray(out), np.full((1, 4, 2, 1), 3, np.uint8),
                                np.ascontiguousarray(pos), dx, db, 1, 4, 4, 2, 1, 2, 2)
    assert (dx == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_maxpool_relu_kernels_overwrite_their_whole_output(impl, dtype):
    k = _kernels() if impl == "native" else im._NUMPY_KERNELS
    rng = np.random.default_rng(43)
    x = rng.standard_normal((2, 7, 6, 11)).astype(dtype)
    bias = rng.standard_normal(11).astype(dtype)
    for kh, kw, s in [(2, 2, 2), (2, 1, 3), (1, 2, 4)]:
        ref = im.numpy_maxpool_relu_forward(x, bias, kh, kw, s)
        got = tuple(np.full(r.shape, np.nan, dtype) if r.dtype == dtype
                    else np.full(r.shape, 0xAA, np.uint8) for r in ref)
        k.maxpool_relu_forward(x, bias, *got, 2, 7, 6, 11, kh, kw, s)
        for a, b in zip(got, ref):
            _same_bits(a, b)
        dx = np.full(x.shape, np.nan, dtype)
        db = np.full(11, np.nan)
        k.maxpool_relu_backward(ref[0], ref[1], ref[2], dx, db, 2, 7, 6, 11, kh, kw, s)
        ref_dx, ref_db = im.numpy_maxpool_relu_backward(ref[0], ref[1], ref[2], 7, 6,
                                                        kh, kw, s)
        _same_bits(dx, ref_dx)
        _same_bits(db, ref_db)


def test_env_var_numpy_fallback_covers_fused_pooling():
    _native()
    env = dict(os.environ, SPARK_CNN_IM2COL="numpy")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import numpy as np, spark.im2col as m\n"
            "assert m.maxpool_relu_forward is m.numpy_maxpool_relu_forward\n"
            "assert m.maxpool_relu_backward is m.numpy_maxpool_relu_backward\n"
            "print(m.backend())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "numpy"
