"""Load CIFAR-10 into NumPy arrays without trusting the files.

``load_cifar10(path, split, limit)`` returns a :class:`Dataset` whose ``images`` are
uint8 in NHWC layout, shape ``(N, 32, 32, 3)``, and whose ``labels`` are int64 ``(N,)``.

``path`` may be any of the three forms the data set is distributed in:

* the python-version folder ``cifar-10-batches-py`` (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``, ``batches.meta``; each a protocol-2 pickle of a dict);
* the official archive ``cifar-10-python.tar.gz``, read as it is (nothing is extracted);
* the binary-version folder ``cifar-10-batches-bin`` (``data_batch_1.bin`` ..,
  ``test_batch.bin``, ``batches.meta.txt``; each record is 1 label byte + 3072 pixel bytes);

or a folder that contains one of them (for example ``data/`` holding ``cifar-10-batches-py/``);
if it holds more than one, the extracted python folder wins, then the binary folder, then the
archive. The folders are fastest (real training split: about 0.7 s); the archive has to be
decompressed, about 1 s per pass, and batches are read in file order (about 3.5 s for the
training split, 2 s for the test split).

The training split is ``data_batch_1``, ``data_batch_2``, ... for as many consecutive batches
as exist (5 in the official files), read in that order; the test split is ``test_batch``.

The pickles are never given to ``pickle.load``: a restricted unpickler (in
``spark/data/safe_unpickle.py``) resolves only the few names a numpy array pickle uses
(``numpy.core.multiarray._reconstruct`` or its numpy-2 spelling
``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` and
``_codecs.encode``), and even those are mapped to small local stand-ins that rebuild the array
from its raw bytes, so no numpy or builtin constructor ever sees attacker-chosen arguments.
Anything else (``os.system``, ``builtins.eval``, ...) is refused before it can run.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

import numpy as np

from .dataset import DataError, Dataset, TooFewImagesError, check_limit  # noqa: F401 - public here too
from .safe_unpickle import Refused, unpickle_dict, unwrap

__all__ = ["Dataset", "load_cifar10"]

IMAGE_SHAPE = (32, 32, 3)
ROW_BYTES = 32 * 32 * 3  # 3072: red plane, green plane, blue plane, each row-major
NUM_CLASSES = 10

PY_FOLDER = "cifar-10-batches-py"
BIN_FOLDER = "cifar-10-batches-bin"
ARCHIVE = "cifar-10-python.tar.gz"

_HELP = (
    f"expected the python-version folder {PY_FOLDER}/ (data_batch_1..5, test_batch, "
    f"batches.meta), the archive {ARCHIVE}, the binary-version folder {BIN_FOLDER}/ "
    "(data_batch_1..5.bin, test_batch.bin, batches.meta.txt), or a folder containing one of "
    "them; make a small synthetic set with `python3 -m spark.data.synthetic DIR` or fetch the real "
    "one with `python3 -m spark.data.download_cifar10`"
)



# --------------------------------------------------------------------------------------
# Checking the unpickled batches
# --------------------------------------------------------------------------------------

def _parse_batch(obj: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate an unpickled batch; return (data N x 3072 uint8, labels int64)."""
    if "data" not in obj or "labels" not in obj:
        hint = " (this looks like CIFAR-100)" if "fine_labels" in obj else ""
        raise ValueError(
            f"{where}: expected a dict with 'data' and 'labels', got keys "
            f"{sorted(map(str, obj))}{hint}"
        )
    try:
        data = unwrap(obj["data"])
        labels = unwrap(obj["labels"])
    except Refused as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == ROW_BYTES
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    labels_arr = _as_labels(labels, where)
    if len(labels_arr) != len(data):
        raise ValueError(f"{where}: {len(data)} images but {len(labels_arr)} labels")
    return data, labels_arr


def _as_labels(labels: object, where: str) -> np.ndarray:
    bad = ValueError(f"{where}: 'labels' must be a list of integers 0-{NUM_CLASSES - 1}")
    if isinstance(labels, (list, tuple)):
        if not all(type(v) is int for v in labels):
            raise bad
        try:
            arr = np.array(labels, dtype=np.int64)
        except OverflowError:
            raise bad from None
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        arr = labels
    else:
        raise bad
    if len(arr) and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise bad
    return arr.astype(np.int64)


def _parse_meta(obj: dict, where: str) -> list[str]:
    names = obj.get("label_names")
    if not isinstance(names, (list, tuple)) or not all(
        isinstance(n, (str, bytes)) for n in names
    ):
        raise ValueError(f"{where}: expected 'label_names', a list of strings")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{where}: expected {NUM_CLASSES} label_names, got {len(names)}")
    return names


# --------------------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------------------

def _split_names(available: set[str], split: str, suffix: str, where: str) -> list[str]:
    """File names of a split in reading order: data_batch_1..K (+suffix), or test_batch."""
    if split == "test":
        names = ["test_batch" + suffix]
    else:
        pattern = re.compile(r"data_batch_([0-9]+)" + re.escape(suffix))
        numbers = [int(m.group(1)) for name in available if (m := pattern.fullmatch(name))]
        names = [f"data_batch_{i}{suffix}" for i in range(1, max(numbers, default=1) + 1)]
    for name in names:
        if name not in available:
            raise FileNotFoundError(f"CIFAR-10 file {name} is missing in {where}; {_HELP}")
    return names


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() for n in names)


def _locate(path: Path) -> tuple[str, Path]:
    """Return ('py' | 'bin' | 'tar', location) for a user-given path."""
    if path.is_file():
        return "tar", path
    if path.is_dir():
        if _has_any(path, ("batches.meta", "data_batch_1", "test_batch")):
            return "py", path
        if _has_any(path, ("batches.meta.txt", "data_batch_1.bin", "test_batch.bin")):
            return "bin", path
        if (path / PY_FOLDER).is_dir():
            return "py", path / PY_FOLDER
        if (path / BIN_FOLDER).is_dir():
            return "bin", path / BIN_FOLDER
        if (path / ARCHIVE).is_file():
            return "tar", path / ARCHIVE
        raise FileNotFoundError(f"no CIFAR-10 data in folder {path}; {_HELP}")
    raise FileNotFoundError(f"CIFAR-10 data not found: {path} does not exist; {_HELP}")


# --------------------------------------------------------------------------------------
# Assembling the split
# --------------------------------------------------------------------------------------

class _Collector:
    """Copies batches into one preallocated NHWC array, stopping at ``want`` images."""

    def __init__(self, want: int | None) -> None:
        self.want = want
        self.images: np.ndarray | None = None
        self.labels: list[np.ndarray] = []
        self.count = 0

    @property
    def full(self) -> bool:
        return self.want is not None and self.count >= self.want

    def add(self, rows: np.ndarray, labels: np.ndarray, expected_total: int) -> None:
        take = len(rows) if self.want is None else min(len(rows), self.want - self.count)
        need = self.count + take
        if self.images is None or need > len(self.images):
            cap = max(need, expected_total)
            if self.want is not None:
                cap = min(cap, self.want)
            grown = np.empty((cap,) + IMAGE_SHAPE, dtype=np.uint8)
            if self.images is not None:
                grown[: self.count] = self.images[: self.count]
            self.images = grown
        # rows: (N, 3072) = (N, channel, row, col) -> (N, row, col, channel)
        planes = rows[:take].reshape(take, 3, 32, 32)
        self.images[self.count : need] = planes.transpose(0, 2, 3, 1)
        self.labels.append(labels[:take])
        self.count = need

    def result(self, class_names: list[str]) -> Dataset:
        images = self.images
        if images is None:
            images = np.empty((0,) + IMAGE_SHAPE, dtype=np.uint8)
        elif len(images) != self.count:
            images = images[: self.count].copy()
        labels = np.concatenate(self.labels) if self.labels else np.empty(0, np.int64)
        labels = labels.astype(np.int64, copy=False)
        return Dataset(images=images, labels=labels, class_names=class_names)



# --------------------------------------------------------------------------------------
# The three forms
# --------------------------------------------------------------------------------------

def _load_pickled(
    names: list[str],
    meta_name: str,
    open_member: Callable[[str], BinaryIO],
    describe: Callable[[str], str],
    want: int | None,
    split: str,
    where: str,
) -> Dataset:
    with open_member(meta_name) as f:
        class_names = _parse_meta(unpickle_dict(f, describe(meta_name)), describe(meta_name))
    collector = _Collector(want)
    for index, name in enumerate(names):
        if collector.full:
            break
        with open_member(name) as f:
            rows, labels = _parse_batch(unpickle_dict(f, describe(name)), describe(name))
        # Guess the split size from the first batch so one allocation usually suffices.
        guess = collector.count + len(rows) * (len(names) - index)
        collector.add(rows, labels, expected_total=guess)
        del rows, labels
    if want is not None and collector.count < want:
        raise TooFewImagesError(
            f"limit={want} but the {split} split in {where} has only {collector.count} images"
        )
    return collector.result(class_names)


def _load_py_folder(folder: Path, split: str, want: int | None) -> Dataset:
    available = {p.name for p in folder.iterdir() if p.is_file()}
    names = _split_names(available, split, "", str(folder))
    if "batches.meta" not in available:
        raise FileNotFoundError(f"CIFAR-10 file batches.meta is missing in {folder}; {_HELP}")
    return _load_pickled(
        names, "batches.meta", lambda n: open(folder / n, "rb"), lambda n: str(folder / n),
        want, split, str(folder),
    )


def _load_tar(archive: Path, split: str, want: int | None) -> Dataset:
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{archive}: not a readable tar archive ({exc}); pass cifar-10-python.tar.gz or "
            "the folder holding the batch files"
        ) from None
    with tar:
        try:
            members = {}
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if parts[:1] == (".",):
                    parts = parts[1:]
                if len(parts) == 2 and parts[0] == PY_FOLDER and member.isreg():
                    members[parts[1]] = member
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ValueError(f"{archive}: corrupt tar archive ({exc})") from None
        where = f"{archive} ({PY_FOLDER}/ inside)"
        names = _split_names(set(members), split, "", where)
        if "batches.meta" not in members:
            raise FileNotFoundError(f"CIFAR-10 file batches.meta is missing in {where}; {_HELP}")

        def open_member(name: str) -> BinaryIO:
            f = tar.extractfile(members[name])
            assert f is not None  # regular files always have a file object
            return f

        def describe(name: str) -> str:
            return f"{archive}:{PY_FOLDER}/{name}"

        try:
            return _load_pickled(names, "batches.meta", open_member, describe, want, split, where)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ValueError(f"{archive}: corrupt tar archive ({exc})") from None


def _load_bin_folder(folder: Path, split: str, want: int | None) -> Dataset:
    available = {p.name for p in folder.iterdir() if p.is_file()}
    names = _split_names(available, split, ".bin", str(folder))
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        raise FileNotFoundError(f"CIFAR-10 file batches.meta.txt is missing in {folder}; {_HELP}")
    class_names = [line.strip() for line in meta.read_text("utf-8", "replace").splitlines()]
    class_names = [n for n in class_names if n]
    if len(class_names) != NUM_CLASSES:
        raise ValueError(
            f"{meta}: expected {NUM_CLASSES} class names, one a line, got {len(class_names)}"
        )
    record = 1 + ROW_BYTES
    sizes = []
    for name in names:
        size = (folder / name).stat().st_size
        if size % record:
            raise ValueError(
                f"{folder / name}: size {size} is not a multiple of the {record}-byte record"
            )
        sizes.append(size // record)
    total = sum(sizes)
    if want is not None and want > total:
        raise TooFewImagesError(f"limit={want} but the {split} split in {folder} "
                                f"has only {total} images")
    collector = _Collector(want)
    for name, count in zip(names, sizes):
        if collector.full:
            break
        take = count if want is None else min(count, want - collector.count)
        with open(folder / name, "rb") as f:
            buf = f.read(take * record)
        if len(buf) != take * record:
            raise ValueError(f"{folder / name}: file shrank while reading")
        records = np.frombuffer(buf, dtype=np.uint8).reshape(take, record)
        labels = records[:, 0].astype(np.int64)
        if take and labels.max() >= NUM_CLASSES:
            raise ValueError(
                f"{folder / name}: labels must be 0-{NUM_CLASSES - 1}, found {labels.max()}"
            )
        collector.add(records[:, 1:], labels, expected_total=total if want is None else want)
        del buf, records
    return collector.result(class_names)


def load_cifar10(
    path: str | os.PathLike, split: str = "train", limit: int | None = None
) -> Dataset:
    """Load the ``"train"`` or ``"test"`` split of CIFAR-10 from ``path``.

    ``limit`` keeps the first ``limit`` images of the split in file order, and only the batch
    files needed for them are read. Raises ``FileNotFoundError`` if the data are not there,
    ``ValueError`` if a file is malformed or ``limit`` exceeds the split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    want = check_limit(limit)
    kind, location = _locate(Path(path))
    if kind == "py":
        return _load_py_folder(location, split, want)
    if kind == "bin":
        return _load_bin_folder(location, split, want)
    return _load_tar(location, split, want)
