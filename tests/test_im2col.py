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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [np.float32, np.float64]


def _native():
    assert im.backend() == "native", (
        f"native extension not loaded ({im.backend_error()}); build it with "
        "`python3 setup.py build_ext --inplace`")
    import spark.matrix
    return spark.matrix


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
    native = _native()
    assert im.im2col is native.im2col and im.col2im is native.col2im


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
