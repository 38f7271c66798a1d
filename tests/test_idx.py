"""Tests for spark.data.idx on small MNIST-shaped IDX files written here."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from spark.data.dataset import DataError, TooFewImagesError
from spark.data.idx import load_idx
from spark.data.source import DataOptions, detect_format, load_dataset

RNG = np.random.default_rng(11)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <dims>, big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(folder, counts=(30, 10), gz=False, shape=(28, 28)):
    """The four files in `folder` -> {split: (images (N, h, w), labels (N,))}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, count in (("train", "train", counts[0]), ("test", "t10k", counts[1])):
        images = RNG.integers(0, 256, (count, *shape), dtype=np.uint8)
        labels = RNG.integers(0, 10, count, dtype=np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(idx_bytes(array))
            else:
                (folder / name).write_bytes(idx_bytes(array))
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("gz", [False, True])
def test_both_splits_plain_and_gzipped(tmp_path, gz):
    written = write_mnist(tmp_path / "mnist", gz=gz)
    for split in ("train", "test"):
        data = load_idx(tmp_path / "mnist", split)
        images, labels = written[split]
        assert data.images.shape == (len(images), 28, 28, 1) and data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images[:, :, :, 0], images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64
        assert data.class_names == [str(k) for k in range(10)]
    assert detect_format(tmp_path / "mnist") == "mnist"


def test_limit_a_file_as_the_path_and_load_dataset(tmp_path):
    written = write_mnist(tmp_path / "m")
    data = load_idx(tmp_path / "m" / "train-images-idx3-ubyte", "train", limit=7)
    assert len(data) == 7 and data.images.flags.c_contiguous
    np.testing.assert_array_equal(data.labels, written["train"][1][:7])
    with pytest.raises(TooFewImagesError, match=r"limit=11 but the test split .* only 10"):
        load_idx(tmp_path / "m", "test", limit=11)
    file = tmp_path / "m" / "t10k-labels-idx1-ubyte"
    assert detect_format(file) == "mnist"
    sized = load_dataset(file, "test", 4, DataOptions(image_size=(32, 32)))
    assert sized.images.shape == (4, 32, 32, 1)


def test_class_names_from_classes_txt_and_dotted_names(tmp_path):
    folder = tmp_path / "fashion"
    write_mnist(folder)
    for path in folder.iterdir():  # some copies are named train-images.idx3-ubyte
        path.rename(folder / path.name.replace("-idx", ".idx"))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    (folder / "classes.txt").write_text("\n".join(names) + "\n\n")
    assert load_idx(folder, "train").class_names == names
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"train-labels\.idx1-ubyte: label \d but only 2 class "
                                        r"names: list them in classes\.txt"):
        load_idx(folder, "train")


def test_a_plain_file_wins_over_its_gz(tmp_path):
    folder = tmp_path / "m"
    plain = write_mnist(folder)
    write_mnist(folder, counts=(5, 5), gz=True)
    assert len(load_idx(folder, "train")) == len(plain["train"][0])


def test_bad_files_are_one_line_errors_naming_them(tmp_path):
    folder = tmp_path / "m"
    written = write_mnist(folder)
    images = folder / "train-images-idx3-ubyte"
    labels = folder / "train-labels-idx1-ubyte"
    good_images, good_labels = images.read_bytes(), labels.read_bytes()

    images.write_bytes(good_images[:-5])
    with pytest.raises(DataError, match=rf"^{images}: \d+ bytes, but its header \(30 x 28 x "
                                        r"28\) says \d+: truncated or damaged$"):
        load_idx(folder, "train")
    images.write_bytes(good_labels)
    with pytest.raises(DataError, match=rf"^{images}: magic number 0x00000801, not 0x00000803"):
        load_idx(folder, "train")
    images.write_bytes(b"\x00\x00\x0d\x03" + good_images[4:])  # float32, not unsigned bytes
    with pytest.raises(DataError, match="magic number 0x00000d03"):
        load_idx(folder, "train")
    images.write_bytes(good_images[:10])
    with pytest.raises(DataError, match=rf"^{images}: truncated header"):
        load_idx(folder, "train")
    images.write_bytes(b"")
    with pytest.raises(DataError, match="too short for an IDX file"):
        load_idx(folder, "train")
    images.write_bytes(idx_bytes(written["train"][0][:20]))
    with pytest.raises(DataError, match=rf"^{images}: 20 images but {labels} has 30 labels"):
        load_idx(folder, "train")
    images.write_bytes(good_images)
    labels.write_bytes(idx_bytes(np.full(30, 10, np.uint8)))
    with pytest.raises(DataError, match=r"label 10 but only 10 class names"):
        load_idx(folder, "train")
    labels.unlink()
    with pytest.raises(DataError, match=rf"^{labels}: missing"):
        load_idx(folder, "train")
    gz = folder / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(good_labels)[:-12])
    with pytest.raises(DataError, match=rf"^{gz}: a damaged gzip file"):
        load_idx(folder, "train")
    with pytest.raises(DataError, match="no such file or folder"):
        load_idx(tmp_path / "absent", "train")
