"""Which image source a path is, and loading a split of it.

    load_dataset(path, "train", limit=None, options=DataOptions()) -> Dataset

Formats (`DataOptions.format`, --data-format; detected when left out):
- "cifar10": CIFAR-10, python-version folder, official .tar.gz, binary folder
  (spark/data/cifar10.py);
- "cifar100": CIFAR-100, python version (`train`, `test`, `meta`), with
  --labels fine|coarse (spark/data/cifar100.py);
- "mnist": MNIST or Fashion-MNIST IDX files, .gz or not (spark/data/idx.py);
- "folder": an image folder tree, ROOT/train/<class>/*.png ... and
  ROOT/test/<class>/..., or one tree ROOT/<class>/... split by
  --test-fraction (spark/data/folder.py);
- "parquet": a Parquet file or a folder of them, local or on HDFS
  (hdfs:// or webhdfs:// paths) (spark/data/parquet.py).

Every loader returns uint8 NHWC images; grayscale stays one channel, RGB
three, RGBA drops its alpha. Images of mixed sizes are refused unless
--image-size resizes (or, with --crop, center-crops) them. Failures are
DataError: one line naming the file, folder or column.
"""
from __future__ import annotations

import os

from .dataset import DataError, Dataset
from .options import DataOptions

__all__ = ["FORMATS", "DataOptions", "detect_format", "load_dataset"]

FORMATS = ("cifar10", "cifar100", "mnist", "folder", "parquet")
REMOTE = ("hdfs://", "webhdfs://")


def detect_format(path) -> str:
    """The format of the source at `path` (see the module docstring); DataError if none."""
    text = os.fspath(path)
    if text.startswith(REMOTE) or text.endswith(".parquet"):
        return "parquet"
    if not os.path.exists(text):
        raise DataError(f"{text}: no such file or folder")
    name = os.path.basename(text.rstrip("/"))
    if os.path.isfile(text):
        if name.startswith("cifar-100") and name.endswith((".tar.gz", ".tgz")):
            return "cifar100"
        if name.endswith((".tar.gz", ".tgz")) or name.endswith(".bin"):
            return "cifar10"
        if "idx" in name and "ubyte" in name:
            return "mnist"
        raise DataError(f"{text}: not a source this project reads ({', '.join(FORMATS)})")
    try:
        entries = set(os.listdir(text))
    except OSError as e:
        raise DataError(f"{text}: cannot list the folder ({e.strerror or e})") from None
    if not entries:
        raise DataError(f"{text}: the folder is empty")
    if entries & {"cifar-10-batches-py", "cifar-10-batches-bin", "cifar-10-python.tar.gz",
                  "batches.meta", "batches.meta.txt", "data_batch_1", "data_batch_1.bin"}:
        return "cifar10"
    if entries & {"cifar-100-python", "cifar-100-python.tar.gz"} or {"train", "test",
                                                                   "meta"} <= entries and all(
            os.path.isfile(os.path.join(text, n)) for n in ("train", "test", "meta")):
        return "cifar100"
    if any("idx3-ubyte" in e for e in entries):
        return "mnist"
    if any(_is_parquet_name(e) for e in entries) or any(
            _holds_parquet(os.path.join(text, split)) for split in ("train", "test")):
        return "parquet"
    return "folder"


def _is_parquet_name(name: str) -> bool:
    """A Parquet file's name, not a hidden one (a writer's temporary file, Spark's _SUCCESS)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _holds_parquet(folder: str) -> bool:
    """Whether `folder` is a folder with .parquet files in it (a split of a Parquet source)."""
    try:
        return any(_is_parquet_name(name) for name in os.listdir(folder))
    except OSError:
        return False


def load_dataset(path, split="train", limit=None, options=None) -> Dataset:
    """The first `limit` images (all if None) of `split` ("train" or "test") of the
    source at `path`, read as `options` (a DataOptions) say."""
    options = options or DataOptions()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    fmt = options.format or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r} (use {', '.join(FORMATS)})")
    if fmt == "cifar10":
        from .cifar10 import load_cifar10
        try:
            data = load_cifar10(path, split, limit)
        except DataError:
            raise
        except (FileNotFoundError, ValueError) as e:  # cifar10.py's own: missing, malformed
            raise DataError(str(e).splitlines()[0]) from None
        return _sized(data, options, path)
    if fmt == "cifar100":
        from .cifar100 import load_cifar100
        return _sized(load_cifar100(path, split, limit, options.labels), options, path)
    if fmt == "mnist":
        from .idx import load_idx
        return _sized(load_idx(path, split, limit), options, path)
    if fmt == "folder":
        from .folder import load_folder
        return load_folder(path, split, limit, options)
    from .parquet import load_parquet
    return load_parquet(path, split, limit, options)


def _sized(data, options, path):
    """A source of one image size, resized or cropped to --image-size if asked."""
    if options.image_size is None or data.image_shape[:2] == tuple(options.image_size):
        return data
    from .images import fit_images
    return Dataset(fit_images(data.images, options.image_size, options.crop, where=str(path)),
                   data.labels, data.class_names)
