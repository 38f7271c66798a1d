"""Load MNIST or Fashion-MNIST from their IDX files.

    load_idx(path, split="train", limit=None) -> Dataset

`path` is the folder holding the four files, or one of them (its folder is
used):

    train-images-idx3-ubyte   train-labels-idx1-ubyte     (the "train" split)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte      (the "test" split)

each possibly gzipped (`.gz`; a plain file wins over a .gz of the same name),
and also found with a dot before "idx" (`train-images.idx3-ubyte`), as some
copies are named. images (N, rows, cols, 1) uint8 (28 x 28 for MNIST and
Fashion-MNIST), labels (N,) int64, `limit` keeps the first N in file order.

Class names are "0" .. "9", unless the folder holds a `classes.txt` with one
name a line (blank lines ignored), label k naming line k; Fashion-MNIST's, for
example, are T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
Sneaker, Bag, Ankle boot. A label outside the names is refused.

An IDX file is a big-endian header, magic 0x00000801 (labels: 1 dimension) or
0x00000803 (images: 3 dimensions), the 0x08 meaning unsigned bytes, then one
uint32 size per dimension, then the bytes. Magic numbers, sizes and the file
length are checked; failures are DataError, one line naming the file.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .dataset import DataError, Dataset, TooFewImagesError, check_limit

__all__ = ["load_idx"]

_PREFIX = {"train": "train", "test": "t10k"}
_HELP = ("expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
         "and t10k-labels-idx1-ubyte (or .gz) in the folder")


def load_idx(path, split: str = "train", limit=None) -> Dataset:
    """The first `limit` images (all if None) of the MNIST-style `split` at `path`.

    Returns
    -------
    Dataset
        images (N, rows, cols, 1) uint8, labels (N,) int64, class_names ("0".."9" or
        classes.txt's).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    want = check_limit(limit)
    text = os.fspath(path)
    folder = (os.path.dirname(text) or ".") if os.path.isfile(text) else text
    if not os.path.isdir(folder):
        raise DataError(f"{text}: no such file or folder; {_HELP}")
    prefix = _PREFIX[split]
    images_file = _find(folder, prefix, "images", 3)
    labels_file = _find(folder, prefix, "labels", 1)
    labels = _read(labels_file, 1)
    names = _class_names(folder)
    if len(labels) and int(labels.max()) >= len(names):
        raise DataError(f"{labels_file}: label {int(labels.max())} but only {len(names)} "
                        "class names: list them in classes.txt beside it, one a line")
    images = _read(images_file, 3)
    if len(images) != len(labels):
        raise DataError(f"{images_file}: {len(images)} images but {labels_file} has "
                        f"{len(labels)} labels")
    if want is not None and want > len(images):
        raise TooFewImagesError(
            f"limit={want} but the {split} split in {folder} has only {len(images)} images")
    take = len(images) if want is None else want
    return Dataset(images[:take, :, :, None].copy(), labels[:take].astype(np.int64), names)



def _find(folder: str, prefix: str, kind: str, dims: int) -> str:
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            file = os.path.join(folder, f"{prefix}-{kind}{sep}idx{dims}-ubyte{suffix}")
            if os.path.isfile(file):
                return file
    missing = os.path.join(folder, f"{prefix}-{kind}-idx{dims}-ubyte")
    raise DataError(f"{missing}: missing (or .gz); {_HELP}")


def _read(file: str, dims: int) -> np.ndarray:
    """The array of an IDX file of unsigned bytes with `dims` dimensions, checked."""
    try:
        if file.endswith(".gz"):
            with gzip.open(file, "rb") as f:
                data = f.read()
        else:
            with open(file, "rb") as f:
                data = f.read()
    except PermissionError:
        raise DataError(f"{file}: permission denied") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{file}: a damaged gzip file ({e or type(e).__name__})") from None
    except OSError as e:
        raise DataError(f"{file}: cannot read it ({e.strerror or e})") from None
    header = 4 + 4 * dims
    if len(data) < 4:
        raise DataError(f"{file}: too short for an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    expected = 0x0800 + dims
    if magic != expected:
        what = "labels" if dims == 1 else "images"
        raise DataError(f"{file}: magic number 0x{magic:08x}, not 0x{expected:08x} (IDX "
                        f"{what}: unsigned bytes, {dims} dimension{'s' if dims > 1 else ''})")
    if len(data) < header:
        raise DataError(f"{file}: truncated header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if dims == 3 and (shape[1] == 0 or shape[2] == 0):
        raise DataError(f"{file}: images of {shape[1]}x{shape[2]} pixels")
    size = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != size:
        raise DataError(f"{file}: {len(data)} bytes, but its header "
                        f"({' x '.join(map(str, shape))}) says {size}: truncated or damaged")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _class_names(folder: str) -> list[str]:
    file = os.path.join(folder, "classes.txt")
    if not os.path.isfile(file):
        return [str(k) for k in range(10)]
    try:
        with open(file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read it ({e})") from None
    if not names:
        raise DataError(f"{file}: no class names (one a line)")
    return names
