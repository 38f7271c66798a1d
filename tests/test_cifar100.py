"""Tests for spark.data.cifar100 on a small CIFAR-100-shaped set written here in the
official layout (protocol-2 pickles, as spark.data.synthetic writes CIFAR-10's)."""
from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest

from spark.data.cifar100 import load_cifar100
from spark.data.dataset import DataError, TooFewImagesError
from spark.data.source import DataOptions, detect_format, load_dataset
from spark.data.synthetic import _write_pickle, write_batch

FINE = [f"fine_{k:02d}" for k in range(100)]
COARSE = [f"coarse_{k:02d}" for k in range(20)]
SIZES = {"train": 40, "test": 12}


def write_cifar100(folder, sizes=SIZES, seed=0):
    """folder/{train, test, meta} as in cifar-100-python/ -> {split: (data, fine, coarse)}."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in sizes.items():
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, count)
        coarse = fine // 5
        _write_pickle(folder / split, {
            "filenames": [f"image_{i}.png" for i in range(count)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) for v in coarse],
            "data": data,
        })
        written[split] = (data, fine, coarse)
    _write_pickle(folder / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    return written


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    """<tmp>/cifar-100-python/ and <tmp>/archive/cifar-100-python.tar.gz of the same set."""
    parent = tmp_path_factory.mktemp("c100")
    folder = parent / "cifar-100-python"
    written = write_cifar100(folder)
    archive_dir = parent / "archive"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("meta", "test", "train"):
            tar.add(folder / name, arcname=f"cifar-100-python/{name}")
    return parent, folder, archive, written


def expected_images(data):
    """(N, 3072) rows, red plane, green, blue -> (N, 32, 32, 3), computed pixel by pixel."""
    out = np.empty((len(data), 32, 32, 3), np.uint8)
    for channel in range(3):
        out[:, :, :, channel] = data[:, channel * 1024:(channel + 1) * 1024].reshape(-1, 32, 32)
    return out


def test_the_folder_the_parent_and_the_archive_give_the_same_data(cifar100):
    parent, folder, archive, written = cifar100
    data, fine, _ = written["train"]
    for path in (folder, parent, archive, archive.parent):
        loaded = load_cifar100(path, "train")
        assert loaded.images.shape == (40, 32, 32, 3) and loaded.images.dtype == np.uint8
        assert loaded.labels.dtype == np.int64
        np.testing.assert_array_equal(loaded.images, expected_images(data))
        np.testing.assert_array_equal(loaded.labels, fine)
        assert loaded.class_names == FINE
        assert detect_format(path) == "cifar100"
    test = load_cifar100(archive, "test")
    np.testing.assert_array_equal(test.images, expected_images(written["test"][0]))


def test_coarse_labels_and_limit(cifar100):
    _, folder, archive, written = cifar100
    for path in (folder, archive):
        coarse = load_cifar100(path, "test", limit=5, labels="coarse")
        assert coarse.class_names == COARSE and len(coarse) == 5
        np.testing.assert_array_equal(coarse.labels, written["test"][2][:5])
        assert coarse.images.flags.c_contiguous
    with pytest.raises(TooFewImagesError, match=r"limit=13 but the test split .* only 12"):
        load_cifar100(folder, "test", limit=13)
    with pytest.raises(DataError, match="--labels must be 'fine' or 'coarse'"):
        load_cifar100(folder, "train", labels="medium")


def test_through_load_dataset_with_options(cifar100):
    parent, _, _, written = cifar100
    data = load_dataset(parent, "train", 3, DataOptions(labels="coarse", image_size=(16, 16)))
    assert data.images.shape == (3, 16, 16, 3) and data.class_names == COARSE
    np.testing.assert_array_equal(data.labels, written["train"][2][:3])


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": Evil()}, protocol=2))
    with pytest.raises(DataError, match=rf"^{folder / 'meta'}: refused to unpickle: it "
                                        r"references (posix|os)\.system"):
        load_cifar100(folder, "train")
    assert not marker.exists()


def test_damaged_and_wrong_files_are_named(tmp_path):
    folder = tmp_path / "cifar-100-python"
    written = write_cifar100(folder)
    whole = (folder / "train").read_bytes()
    (folder / "train").write_bytes(whole[:5000])
    with pytest.raises(DataError, match=rf"^{folder / 'train'}: not a valid CIFAR-100 pickle"):
        load_cifar100(folder, "train")
    write_batch(folder / "train", written["train"][0], [0] * 40, "a CIFAR-10 batch")
    with pytest.raises(DataError, match=r"'fine_labels'.*this looks like CIFAR-10"):
        load_cifar100(folder, "train")
    _write_pickle(folder / "train", {"data": written["train"][0], "fine_labels": [100] * 40})
    with pytest.raises(DataError, match=r"'fine_labels' must be a list of integers 0-99"):
        load_cifar100(folder, "train")
    _write_pickle(folder / "train", {"data": written["train"][0][:, :100],
                                     "fine_labels": [1] * 40})
    with pytest.raises(DataError, match=r"'data' must be a uint8 array of shape \(N, 3072\)"):
        load_cifar100(folder, "train")
    _write_pickle(folder / "meta", {"fine_label_names": FINE[:10], "coarse_label_names": COARSE})
    with pytest.raises(DataError, match=rf"^{folder / 'meta'}: expected 100 fine_label_names"):
        load_cifar100(folder, "test")
    (folder / "test").unlink()
    with pytest.raises(DataError, match=rf"^{folder / 'test'}: missing"):
        load_cifar100(folder, "test", labels="coarse")


def test_a_broken_archive_and_a_folder_without_data(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=rf"^{archive}: not a readable tar archive"):
        load_cifar100(archive, "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"^{empty}: no CIFAR-100 data in the folder"):
        load_cifar100(empty, "train")
    with tarfile.open(tmp_path / "partial.tar.gz", "w:gz") as tar:
        meta = tmp_path / "meta"
        _write_pickle(meta, {"fine_label_names": FINE, "coarse_label_names": COARSE})
        tar.add(meta, arcname="cifar-100-python/meta")
    with pytest.raises(DataError, match=r"partial\.tar\.gz:cifar-100-python/train: missing"):
        load_cifar100(tmp_path / "partial.tar.gz", "train")
