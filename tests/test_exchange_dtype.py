"""--exchange-dtype float16: the activations kept between forward and backward are
stored as float16, half the bytes, and training changes only by their rounding."""
import json

import numpy as np
import pytest
from sparkjobs import run_script

from spark.cnn import CNN
from spark.tasks import _cache_bytes, _forward_chunks

TWO_BLOCKS = "conv8-relu-pool-conv16-relu-pool-fc10"


def _arch(text):
    from spark.arch import parse_arch
    return parse_arch(text)


def kept_bytes_per_image(net, images, n=64):
    """Bytes of the caches a forward task stores per image, and their arrays by name."""
    _, caches, inputs = _forward_chunks(net, images, np.arange(n))
    return _cache_bytes(caches) / n, {(layer, name): a for layer, cache in enumerate(caches)
                                      for name, a in cache.items()}, inputs


def test_float16_halves_the_float_caches_to_under_40_kb_per_image(synthetic_train):
    images = synthetic_train.images
    full, full_arrays, inputs = kept_bytes_per_image(CNN(seed=1), images)
    half, half_arrays, _ = kept_bytes_per_image(CNN(seed=1, exchange_dtype="float16"), images)
    # conv 3x3x64 -> ReLU -> pool -> fc10: the fc input (16*16*64 floats) and the
    # pooling's packed argmax (2 bits) and ReLU mask (1 bit); the image is not stored
    assert inputs == [(0, "x")]
    assert full == 16 * 16 * 64 * 4 + 16 * 16 * 64 * 3 / 8 == 71680
    assert half == 16 * 16 * 64 * 2 + 16 * 16 * 64 * 3 / 8 == 38912
    assert half <= 40_000
    for key, a in full_arrays.items():
        b = half_arrays[key]
        if a.dtype.kind == "f":
            assert b.dtype == np.float16
            np.testing.assert_array_equal(b, a.astype(np.float16))
        else:
            np.testing.assert_array_equal(b, a)                     # bits and argmax unchanged


def test_float16_keeps_every_stored_float_array_of_a_deeper_network(synthetic_train):
    net = CNN(arch=_arch(TWO_BLOCKS), seed=2, exchange_dtype="float16")
    _, arrays, inputs = kept_bytes_per_image(net, synthetic_train.images, n=8)
    floats = {key: a.dtype for key, a in arrays.items() if a.dtype.kind == "f"}
    # layers: conv1 + relu2 + pool3 and conv4 + relu5 + pool6 (ConvReluPool each), fc7
    assert inputs == [(0, "x")] and (1, "x") in floats and len(floats) == 2
    assert set(floats.values()) == {np.dtype(np.float16)}


@pytest.mark.parametrize("arch", [None, TWO_BLOCKS])
def test_float16_changes_losses_and_gradients_only_slightly(arch, synthetic_train):
    images, labels = synthetic_train.images[:240], synthetic_train.labels[:240]
    spec = {} if arch is None else {"arch": _arch(arch)}
    full = CNN(seed=3, chunk=32, **spec)
    half = CNN(seed=3, chunk=32, exchange_dtype="float16", **spec)
    _, grads_f, _ = full.loss_and_gradients(images, labels, np.arange(60))
    _, grads_h, _ = half.loss_and_gradients(images, labels, np.arange(60))
    for name, g in grads_f.items():
        assert grads_h[name].dtype == np.float32                   # gradients stay float32
        difference = np.max(np.abs(grads_h[name] - g)) / np.max(np.abs(g))
        assert difference <= 1e-2, name
    assert any(not np.array_equal(grads_h[name], g) for name, g in grads_f.items())
    curves = {"float32": [], "float16": []}
    for i in range(5):
        index = np.arange(i * 48, i * 48 + 48)
        curves["float32"].append(full.train_iteration(images, labels, index)["loss"])
        record = half.train_iteration(images, labels, index)
        assert record["exchange_dtype"] == "float16"
        curves["float16"].append(record["loss"])
    np.testing.assert_allclose(curves["float16"], curves["float32"], rtol=1e-2)
    assert curves["float16"][0] == curves["float32"][0]             # scores are not rounded
    assert curves["float16"] != curves["float32"]
    for name, p in half.params().items():
        assert p.dtype == np.float32 and half.velocity[name].dtype == np.float32


def test_the_default_rounds_nothing():
    assert CNN().exchange_dtype == np.float32
    assert CNN(dtype=np.float64).exchange_dtype == np.float64
    with pytest.raises(ValueError, match="not a float type"):
        CNN(exchange_dtype="int8")


def metrics_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_naive_train_records_and_resumes_the_exchange_dtype(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    common = ["--minibatch", 20, "--data-dir", synthetic_dir, "--params-dir", params,
              "--metrics", tmp_path / "metrics.jsonl"]
    first = run_script("naive_train.py", 60, 2, "--exchange-dtype", "float16", *common)
    assert first.returncode == 0, first.stderr
    assert CNN.load(params / "naive.npz").exchange_dtype == np.float16
    again = run_script("naive_train.py", 60, 3, "--resume", *common)       # kept
    assert again.returncode == 0 and again.stderr == "", again.stderr
    back = run_script("naive_train.py", 60, 4, "--resume", "--exchange-dtype", "float32", *common)
    assert back.returncode == 0, back.stderr
    assert back.stderr.startswith("note: --exchange-dtype float32 replaces float16 of ")
    assert CNN.load(params / "naive.npz").exchange_dtype == np.float32
    records = metrics_of(tmp_path / "metrics.jsonl")
    assert [r["exchange_dtype"] for r in records] == ["float16"] * 3 + ["float32"]


def test_an_unknown_exchange_dtype_is_a_one_line_usage_error(tmp_path):
    result = run_script("naive_train.py", 20, 1, "--exchange-dtype", "float8",
                        "--params-dir", tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage:") and len(lines) > 1
    assert lines[-1].startswith("naive_train.py: error: argument --exchange-dtype: "
                                "invalid choice: 'float8'")
    assert "Traceback" not in result.stderr and not (tmp_path / "naive.npz").exists()
