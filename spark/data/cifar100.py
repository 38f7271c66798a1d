"""Load CIFAR-100 (python version) into NumPy arrays without trusting the files.

    load_cifar100(path, split="train", limit=None, labels="fine") -> Dataset

images (N, 32, 32, 3) uint8 NHWC, labels (N,) int64, class_names from `meta`:
`fine_label_names` (100 classes) or, with labels="coarse", `coarse_label_names`
(20 superclasses).

`path` is any of:

- the folder ``cifar-100-python/`` holding ``train``, ``test`` and ``meta``
  (protocol-2 pickles of dicts: ``data`` uint8 (N, 3072), red plane, green,
  blue, each row-major; ``fine_labels``, ``coarse_labels``; ``meta``'s name lists);
- a folder holding that folder, or holding the archive;
- the official archive ``cifar-100-python.tar.gz``, read as it is (nothing is
  extracted; decompressing it takes a second or two per split).

The training split is ``train`` (50,000 images), the test split ``test``
(10,000); `limit` keeps the first N in file order. The pickles are read only
through the restricted unpickler of spark/data/safe_unpickle.py (CIFAR-100's
files use the same numpy names as CIFAR-10's; nothing else is resolved).
Failures are DataError, one line naming the file.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import PurePosixPath

import numpy as np

from .dataset import DataError, Dataset, TooFewImagesError, check_limit
from .safe_unpickle import Refused, unpickle_dict, unwrap

__all__ = ["load_cifar100"]

FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
ROW_BYTES = 32 * 32 * 3
_COUNTS = {"fine": 100, "coarse": 20}
_HELP = (f"expected the folder {FOLDER}/ (train, test, meta), a folder holding it, or the "
         f"archive {ARCHIVE}")


def load_cifar100(path, split: str = "train", limit=None, labels: str = "fine") -> Dataset:
    """The first `limit` images (all if None) of CIFAR-100's `split` ("train" or "test").

    Parameters
    ----------
    path : str or os.PathLike
        See the module docstring.
    split : "train" or "test"
    limit : int or None
    labels : "fine" (100 classes) or "coarse" (20 superclasses)

    Returns
    -------
    Dataset
        images (N, 32, 32, 3) uint8, labels (N,) int64, class_names (100 or 20).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if labels not in _COUNTS:
        raise DataError(f"--labels must be 'fine' or 'coarse' for CIFAR-100, got {labels!r}")
    want = check_limit(limit)
    text = os.fspath(path)
    kind, location = _locate(text)
    if kind == "folder":
        def read(name):
            file = os.path.join(location, name)
            try:
                with open(file, "rb") as f:
                    return _unpickle(f, file), file
            except FileNotFoundError:
                raise DataError(f"{file}: missing; {_HELP}") from None
            except OSError as e:
                raise DataError(f"{file}: cannot read it ({e.strerror or e})") from None
        return _assemble(read, split, want, labels, location)
    return _from_archive(location, split, want, labels)



def _locate(text: str) -> tuple[str, str]:
    """("folder", the folder with train/test/meta) or ("archive", the .tar.gz)."""
    if os.path.isfile(text):
        return "archive", text
    if not os.path.isdir(text):
        raise DataError(f"{text}: no such file or folder; {_HELP}")
    if any(os.path.isfile(os.path.join(text, n)) for n in ("meta", "train", "test")):
        return "folder", text
    if os.path.isdir(os.path.join(text, FOLDER)):
        return "folder", os.path.join(text, FOLDER)
    if os.path.isfile(os.path.join(text, ARCHIVE)):
        return "archive", os.path.join(text, ARCHIVE)
    raise DataError(f"{text}: no CIFAR-100 data in the folder; {_HELP}")


def _from_archive(archive: str, split: str, want, labels: str) -> Dataset:
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e}); {_HELP}") from None
    with tar:
        try:
            members = {}
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                parts = parts[1:] if parts[:1] == (".",) else parts
                if len(parts) == 2 and parts[0] == FOLDER and member.isreg():
                    members[parts[1]] = member
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{archive}: corrupt tar archive ({e})") from None

        def read(name):
            where = f"{archive}:{FOLDER}/{name}"
            if name not in members:
                raise DataError(f"{where}: missing in the archive; {_HELP}")
            try:
                with tar.extractfile(members[name]) as f:
                    return _unpickle(f, where), where
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise DataError(f"{archive}: corrupt tar archive ({e})") from None

        return _assemble(read, split, want, labels, f"{archive} ({FOLDER}/ inside)")


def _assemble(read, split: str, want, labels: str, where: str) -> Dataset:
    """Read `meta` and the split's file through `read(name) -> (dict, where)`."""
    meta, meta_where = read("meta")
    names = _names(meta, f"{labels}_label_names", _COUNTS[labels], meta_where)
    batch, batch_where = read(split)
    rows, label_values = _batch(batch, f"{labels}_labels", len(names), batch_where)
    if want is not None and want > len(rows):
        raise TooFewImagesError(
            f"limit={want} but the {split} split in {where} has only {len(rows)} images")
    take = len(rows) if want is None else want
    images = np.ascontiguousarray(rows[:take].reshape(take, 3, 32, 32).transpose(0, 2, 3, 1))
    return Dataset(images, label_values[:take].copy(), names)


def _unpickle(f, where: str) -> dict:
    try:
        return unpickle_dict(f, where, "CIFAR-100")
    except DataError:
        raise
    except ValueError as e:  # refused or not a pickle: already one line naming the file
        raise DataError(str(e)) from None


def _error(where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}")


def _names(meta: dict, key: str, count: int, where: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes))
                                                        for n in names):
        raise _error(where, f"expected {key!r}, a list of strings (is this CIFAR-100's meta?)")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    if len(names) != count:
        raise _error(where, f"expected {count} {key}, got {len(names)}")
    return names


def _batch(obj: dict, key: str, classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows (N, 3072) uint8, labels (N,) int64), checked."""
    if "data" not in obj or key not in obj:
        hint = " (this looks like CIFAR-10)" if "labels" in obj else ""
        raise _error(where, f"expected a dict with 'data' and {key!r}, got keys "
                            f"{sorted(map(str, obj))}{hint}")
    try:
        rows = unwrap(obj["data"])
        values = unwrap(obj[key])
    except Refused as e:
        raise _error(where, str(e)) from None
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == ROW_BYTES):
        got = (f"{rows.dtype} array of shape {rows.shape}" if isinstance(rows, np.ndarray)
               else type(rows).__name__)
        raise _error(where, f"'data' must be a uint8 array of shape (N, 3072), got {got}")
    bad = _error(where, f"{key!r} must be a list of integers 0-{classes - 1}")
    if isinstance(values, (list, tuple)):
        if not all(type(v) is int for v in values):
            raise bad
        try:
            values = np.array(values, dtype=np.int64)
        except OverflowError:
            raise bad from None
    elif not (isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu"):
        raise bad
    values = values.astype(np.int64)
    if len(values) and (values.min() < 0 or values.max() >= classes):
        raise bad
    if len(values) != len(rows):
        raise _error(where, f"{len(rows)} images but {len(values)} labels")
    return rows, values
