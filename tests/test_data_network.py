"""The network follows its data: input shape, classes, the training images'
statistics, and networks refused before they are built."""
import json
import time

import numpy as np
import pytest
from sparkjobs import run_script

from spark.cnn import CNN
from spark.data.preprocess import channel_stats, normalize_images
from spark.recipe import draw_augmentation


def saved_meta(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"]))


def test_channel_stats_equal_numpy_and_normalise_to_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(300, 6, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=7)
    values = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-12)
    x = normalize_images(images, np.float64, (mean, std)).reshape(-1, 3)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(x.std(axis=0), 1, rtol=1e-9)


def test_a_run_keeps_its_images_statistics_and_class_names(synthetic_dir, synthetic_train,
                                                           tmp_path):
    result = run_script("naive_train.py", 200, 2, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    meta = saved_meta(tmp_path / "naive.npz")
    mean, std = channel_stats(synthetic_train.images[:200])
    np.testing.assert_allclose(meta["input_stats"], [mean, std], rtol=1e-12)
    assert meta["class_names"] == synthetic_train.class_names
    net = CNN.load(tmp_path / "naive.npz")
    assert net.input_stats == (mean, std) and net.class_names == synthetic_train.class_names
    # the test script names every class and its accuracy
    test = run_script("naive_test.py", 100, "--data-dir", synthetic_dir, "--params-dir", tmp_path)
    assert test.returncode == 0, test.stderr
    lines = test.stdout.splitlines()
    assert "accuracy per class:" in lines
    for name in synthetic_train.class_names:
        assert any(line.strip().startswith(name) for line in lines), name
    assert "confusion matrix" not in test.stdout                # that takes --per-class


@pytest.mark.parametrize("arch, says", [
    ("conv64-fc5", "--arch conv64-fc5 ends with fc5, but the images of the data have 10 "
                   "classes: end it with fc10"),
    ("conv100000-relu-pool-fc10", "needs about "),
])
def test_networks_that_cannot_be_are_refused_before_anything_is_built(arch, says, synthetic_dir,
                                                                     tmp_path):
    started = time.monotonic()
    result = run_script("naive_train.py", 50, 1, "--arch", arch, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert says in last and "Traceback" not in result.stderr, last
    if "needs about" in says:
        assert "GiB available" in last and "parameters" in last
    assert time.monotonic() - started < 60
    assert not (tmp_path / "naive.npz").exists()


def test_augment_flip_off_keeps_the_crops_and_flips_nothing():
    on = draw_augmentation(3, 7, 50, 2)
    off = draw_augmentation(3, 7, 50, 2, flips=False)
    assert np.array_equal(on["shift"], off["shift"]) and on["flip"].any()
    assert not off["flip"].any()
