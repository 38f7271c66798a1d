"""Tests for spark.data.convert (python3 -m spark.data.convert): sources made here, the
Parquet read back with pyarrow."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from project import ROOT

from spark.data.convert import CLASS_NAMES_KEY, SPLIT_KEY, main, write_parquet
from spark.data.dataset import Dataset
from spark.data.source import DataOptions, load_dataset

RNG = np.random.default_rng(5)


def read_back(path):
    """A Parquet file of convert -> (images (N, H, W, C), labels, class names, metadata)."""
    file = pq.ParquetFile(path)
    table = file.read()
    assert [f.name for f in table.schema] == ["image", "height", "width", "channels", "label"]
    assert [str(f.type) for f in table.schema] == ["binary", "int32", "int32", "int32", "int64"]
    rows = table.to_pydict()
    images = np.stack([np.frombuffer(v, np.uint8).reshape(h, w, c) for v, h, w, c in zip(
        rows["image"], rows["height"], rows["width"], rows["channels"])]) if rows["image"] \
        else np.empty((0,))
    metadata = {k.decode(): v.decode() for k, v in file.schema_arrow.metadata.items()}
    return images, np.array(rows["label"]), json.loads(metadata[CLASS_NAMES_KEY]), metadata


@pytest.fixture
def tree(tmp_path):
    """A one-tree image folder: 3 classes of 6 small RGB PNGs."""
    root = tmp_path / "tree"
    for name in ("ant", "bee", "cow"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_a_folder_to_one_file(tree, tmp_path, capsys):
    dest = tmp_path / "out.parquet"
    assert main([str(tree), str(dest), "--cache-dir", ""]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 18 images to {dest}"
    images, labels, names, metadata = read_back(dest)
    source = load_dataset(tree, "train", options=DataOptions(cache_dir=""))
    np.testing.assert_array_equal(images, source.images)
    np.testing.assert_array_equal(labels, source.labels)
    assert names == ["ant", "bee", "cow"] and metadata[SPLIT_KEY] == "train"


def test_both_splits_into_a_folder_resized(tree, tmp_path):
    dest = tmp_path / "both"
    assert main([str(tree), str(dest), "--split", "both", "--test-fraction", "0.5",
                 "--seed", "2", "--image-size", "4x3", "--cache-dir", ""]) == 0
    options = DataOptions(test_fraction=0.5, seed=2, image_size=(4, 3), cache_dir="")
    for split in ("train", "test"):
        images, labels, names, metadata = read_back(dest / f"{split}.parquet")
        source = load_dataset(tree, split, options=options)
        assert images.shape == (9, 4, 3, 3) and metadata[SPLIT_KEY] == split
        np.testing.assert_array_equal(images, source.images)
        np.testing.assert_array_equal(labels, source.labels)
    assert sorted(p.name for p in dest.iterdir()) == ["test.parquet", "train.parquet"]


def test_grayscale_and_row_groups(tmp_path):
    images = RNG.integers(0, 256, (25, 4, 4, 1), dtype=np.uint8)
    labels = RNG.integers(0, 3, 25)
    dest = tmp_path / "g.parquet"
    assert write_parquet(Dataset(images, labels, ["a", "b", "c"]), dest, "test",
                         row_group_bytes=10 * 16) == 25
    assert pq.ParquetFile(dest).metadata.num_row_groups == 3  # 10, 10 and 5 images
    back, back_labels, names, _ = read_back(dest)
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(back_labels, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.parquet"]  # no temporary left
    empty = tmp_path / "empty.parquet"
    assert write_parquet(Dataset(images[:0], labels[:0], ["a"]), empty) == 0
    assert pq.ParquetFile(empty).metadata.num_rows == 0


def run(*args):
    return subprocess.run([sys.executable, "-m", "spark.data.convert", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_argument_errors_exit_2_with_the_usage(tree, tmp_path):
    for args in ([], [tree, tmp_path / "x.parquet", "--image-size", "big"],
                 [tree, tmp_path / "x.parquet", "--test-fraction", "1.5"],
                 [tree, tmp_path / "x.parquet", "--crop"],
                 [tree, tmp_path / "x.parquet", "--split", "both"],
                 [tree, tmp_path / "x.csv"],
                 [tree, tmp_path / "x.parquet", "--data-format", "tiff"]):
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("usage: python3 -m spark.data.convert"), result.stderr


def test_data_errors_exit_1_with_one_line(tree, tmp_path):
    result = run(tmp_path / "absent", tmp_path / "x.parquet")
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'absent'}: no such file or folder\n"
    result = run(tree, tmp_path / "x.parquet", "--split", "test", "--cache-dir", "")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "give --test-fraction" in result.stderr
    result = run(tree, tmp_path / "no" / "such" / "x.parquet", "--cache-dir", "")
    assert result.returncode == 1 and result.stderr.startswith("error: cannot write ")
    assert result.stderr.count("\n") == 1


def test_mnist_and_cifar100_coarse(tmp_path):
    from test_cifar100 import COARSE, write_cifar100
    from test_idx import write_mnist

    written = write_mnist(tmp_path / "mnist", counts=(8, 3))
    assert main([str(tmp_path / "mnist"), str(tmp_path / "m.parquet"), "--split", "test"]) == 0
    images, labels, names, _ = read_back(tmp_path / "m.parquet")
    assert images.shape == (3, 28, 28, 1) and names == [str(k) for k in range(10)]
    np.testing.assert_array_equal(images[:, :, :, 0], written["test"][0])
    np.testing.assert_array_equal(labels, written["test"][1])

    written = write_cifar100(tmp_path / "c" / "cifar-100-python", sizes={"train": 4, "test": 2})
    assert main([str(tmp_path / "c"), str(tmp_path / "c.parquet"), "--labels", "coarse"]) == 0
    _, labels, names, _ = read_back(tmp_path / "c.parquet")
    assert names == COARSE
    np.testing.assert_array_equal(labels, written["train"][2])


def test_a_damaged_cifar10_source_is_one_line(tmp_path):
    from spark.data.synthetic import make_synthetic_cifar10

    make_synthetic_cifar10(tmp_path / "c10", train=20, test=10, batches=1)
    (tmp_path / "c10" / "test_batch").write_bytes(b"garbage")
    result = run(tmp_path / "c10", tmp_path / "x.parquet", "--split", "test")
    assert result.returncode == 1
    assert result.stderr == (f"error: {tmp_path / 'c10' / 'test_batch'}: not a valid CIFAR-10 "
                             "pickle (UnpicklingError: pickle data was truncated)\n")
