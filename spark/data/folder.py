"""An image folder tree as a Dataset, decoded in parallel and cached.

    load_folder(path, split="train", limit=None, options=DataOptions()) -> Dataset

Layouts
-------
- ROOT/train/<class>/<image> and ROOT/test/<class>/<image>: the two splits. Other
  folders beside them (val/, ...) are ignored, with a `note:` on stderr.
- ROOT/<class>/<image>, one tree: "train" is all of it; with
  `options.test_fraction` F (--test-fraction), a seeded (`options.seed`),
  class-stratified share is held out as "test" and left out of "train": of a
  class's n files, round(F n) (at most n - 1) are drawn by a generator seeded
  with (seed, CRC-32 of the class name), so a class's draw depends only on its
  own files. Without F the test split of one tree is refused.
- ROOT/train/<class>/... without ROOT/test: as one tree, ROOT/train, if F is given.

A class folder may hold subfolders (read too, symlinks followed; a symlink that
leads back to a folder it is in is refused). Images are the files ending in
.png, .jpg, .jpeg, .bmp, .gif or .webp (any case). Hidden entries (names
starting with ".") and other files are skipped and counted in one
`note: skipped N files of FOLDER that are not images` line on stderr.

Classes and labels
------------------
Class names are the class folder names of the training split, sorted (Python's
string order); labels index them. The test split's classes must be among the
training split's (one test class the training split lacks is refused, named),
and its `class_names` are the training split's.

Order and limit
---------------
Classes sorted, files sorted by their path within a class, then the classes
interleaved round-robin: the first file of every class, then the second of
every class, ... (a class that runs out drops out of the round). `limit` takes
the first N images of that order, so a small limit still holds every class,
about equally often (as the first N of CIFAR-10's shuffled batches do); only
those N images are decoded.

Sizes and channels
------------------
Images must be one size unless `options.image_size` (H, W) is given: then every
image is resized to it (or center-cropped, `options.crop`) as it is decoded
(spark/data/images.py). Grayscale images are one channel and colour three; when
a split mixes them, the grayscale ones are made RGB (with a `note:`).

Decoding runs on a thread pool, one thread per core: Pillow releases the GIL
while it decodes and resizes. Measured as bench/data_load.py --executors does
(medians of 5 runs, on 2 cores busy with other work): 300 32x32 PNGs, threads
3,350 images/s, processes 290, one thread 2,350; 300 256x256 JPEGs resized to
32x32, threads 1,220, processes 220, one thread 1,270. Processes lose by far:
spawning them and importing NumPy and Pillow in each costs more than decoding
hundreds of images (and fork is not safe beside Spark's threads). Threads cost
next to nothing over one thread and gain when cores are free.

Cache
-----
A second load of the same split starts from a cache file instead of decoding:
`<cache dir>/<key>.npz` (numpy's .npz, no pickles: read with allow_pickle=False)
holding the decoded images (uint8, (M, H, W, C)), labels (int64, (M,)) and class
names of the first M images of the split's order (M = the largest limit loaded
so far, or all). The key is a SHA-256 of the split's files (paths relative to
ROOT, sizes, modification times, labels), the class names and the options that
change the arrays (image_size, crop, test_fraction, seed, split): a changed,
added or removed file gives a new key. A load with a bigger limit decodes only
the missing images and rewrites the file. Files are written to a temporary
name and renamed into place; one that cannot be read is ignored and rewritten.
The cache folder is `options.cache_dir`, or when None `$SPARK_CNN_CACHE_DIR`,
or `~/.cache/spark-cnn/images`; "" turns the cache off. It may be deleted at
any time.

Errors are DataError, one line naming the file or folder: a corrupt or
truncated image, a class folder without images, an empty folder, a folder
without class folders, a symlink loop, a permission denied, mixed image sizes
without --image-size.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import stat
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..atomic import replacing
from .dataset import DataError, Dataset, TooFewImagesError, check_limit
from .images import IMAGE_SUFFIXES, decode_image, fit_image
from .options import DataOptions

__all__ = ["load_folder", "default_cache_dir"]

CACHE_VERSION = 1          # part of every key: bump when the cached arrays change meaning
_CHUNK = 32                # images per decoding task


@dataclass(frozen=True)
class _File:
    rel: str          # path relative to ROOT, "/"-separated
    size: int
    mtime_ns: int


@dataclass
class _Tree:
    """One split folder's class folders and their image files."""
    display: str                              # the folder, as the user named it
    classes: dict = field(default_factory=dict)   # class name -> [_File], sorted by rel
    hidden: int = 0
    other: int = 0


def default_cache_dir() -> str:
    """`$SPARK_CNN_CACHE_DIR`, or `~/.cache/spark-cnn/images`."""
    return os.environ.get("SPARK_CNN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "spark-cnn", "images")


def load_folder(path, split: str = "train", limit=None, options=None) -> Dataset:
    """The first `limit` images (all if None) of `split` of the image folder tree at `path`.

    Parameters
    ----------
    path : str or os.PathLike
        ROOT, laid out as the module docstring says.
    split : "train" or "test"
    limit : int or None
        How many images, in the order of the module docstring (classes interleaved).
    options : DataOptions or None
        test_fraction, seed, image_size, crop and cache_dir are used.

    Returns
    -------
    Dataset
        images (N, H, W, C) uint8, labels (N,) int64, class_names (K,) of the training split.
    """
    options = options or DataOptions()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    want = check_limit(limit)
    _check_fraction(options.test_fraction)
    root = os.fspath(path)
    items, labels, class_names, tree = _plan(root, split, options)
    _note_skipped(tree)
    if want is not None and want > len(items):
        raise TooFewImagesError(
            f"limit={want} but the {split} split of {root} has only {len(items)} images")
    need = len(items) if want is None else want
    images = _load_arrays(split, items, labels, need, class_names, options)
    return Dataset(images, labels[:need].copy(), list(class_names),
                   ids=[f.rel for _, f in items[:need]])       # paths under root


# ----------------------------------------------------------------------------- arguments


def _check_fraction(fraction):
    if fraction is not None and not (0 < fraction < 1):
        raise DataError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction}")


# ----------------------------------------------------------------------------- the plan

def _plan(root: str, split: str, options):
    """-> (items [(display path, _File)] in order, labels int64, class names, the scanned _Tree)."""
    fraction = options.test_fraction
    names = [e.name for e in _list_folder(root, root)]
    if not names:
        raise DataError(f"{root}: the folder is empty")
    subdirs = {n for n in names if not n.startswith(".") and _is_dir(os.path.join(root, n))}
    if subdirs & {"train", "test"}:
        ignored = sorted(subdirs - {"train", "test"})
        if ignored:
            print(f"note: ignored {', '.join(os.path.join(root, n) for n in ignored)} "
                  "(only train/ and test/ are read)", file=sys.stderr)
        train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
        if "train" not in subdirs:
            raise DataError(f"{train_dir}: no such folder (the training split, beside "
                            f"{test_dir}); add {train_dir}/<class>/<images>")
        if "test" in subdirs:
            if fraction is not None:
                raise DataError(f"{root} has train/ and test/ folders: --test-fraction is for "
                                "one tree of class folders; leave it out")
            tree = _scan(root, split)
            if split == "train":
                class_names = sorted(tree.classes)
            else:
                class_names = _class_names(root, "train")
                for name in sorted(tree.classes):
                    if name not in class_names:
                        raise DataError(
                            f"{os.path.join(test_dir, name)}: class {name!r} is not in the "
                            f"training split {train_dir} ({len(class_names)} classes): "
                            "rename or remove it")
            chosen = tree.classes
        else:
            if split == "test" and fraction is None:
                raise DataError(f"{root}: no test/ folder beside train/: add "
                                f"{test_dir}/<class>/<images>, or give --test-fraction F "
                                "to hold out a share of train/")
            tree, class_names, chosen = _single(root, "train", split, options)
    else:
        if split == "test" and fraction is None:
            raise DataError(f"{root} is one tree of class folders (no train/ and test/): give "
                            "--test-fraction F to hold out a share of it as the test split")
        tree, class_names, chosen = _single(root, "", split, options)
    index = {name: k for k, name in enumerate(class_names)}
    order = _interleave([chosen[name] for name in sorted(chosen)],
                        [index[name] for name in sorted(chosen)])
    base = os.path.join(root, "")                 # root/: one join, not one per image
    items = [(base + f.rel, f) for f, _ in order]
    labels = np.fromiter((k for _, k in order), dtype=np.int64, count=len(order))
    return items, labels, class_names, tree


def _single(root: str, sub: str, split: str, options):
    """One tree (ROOT/sub/<class>/...) split by test_fraction -> (tree, class names, chosen)."""
    tree = _scan(root, sub)
    class_names = sorted(tree.classes)
    fraction = options.test_fraction
    if fraction is None:
        return tree, class_names, tree.classes
    chosen = {}
    for name, files in tree.classes.items():
        n = len(files)
        held = min(int(np.floor(fraction * n + 0.5)), n - 1)
        rng = np.random.default_rng([int(options.seed), zlib.crc32(name.encode("utf-8"))])
        test = np.zeros(n, dtype=bool)
        test[rng.permutation(n)[:held]] = True
        keep = test if split == "test" else ~test
        picked = [f for f, k in zip(files, keep) if k]
        if picked:
            chosen[name] = picked
    return tree, class_names, chosen


def _interleave(groups, labels):
    """Round-robin over the groups: [(item, label)], first of each group, then second, ..."""
    out = []
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        out.extend((g[i], k) for g, k in zip(groups, labels) if i < len(g))
    return out


# ----------------------------------------------------------------------------- the scan

def _list_folder(folder: str, display: str):
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"{display}: permission denied (cannot list the folder)") from None
    except FileNotFoundError:
        raise DataError(f"{display}: no such folder") from None
    except NotADirectoryError:
        raise DataError(f"{display}: not a folder") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{display}: a symlink loop") from None
        raise DataError(f"{display}: cannot list the folder ({e.strerror or e})") from None


def _stat(path: str):
    """os.stat following symlinks, with one-line errors."""
    try:
        return os.stat(path)
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except FileNotFoundError:
        raise DataError(f"{path}: a broken symlink (its target does not exist)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: a symlink loop") from None
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def _is_dir(path: str) -> bool:
    return stat.S_ISDIR(_stat(path).st_mode)


def _class_names(root: str, sub: str) -> list[str]:
    """The sorted class folder names of ROOT/sub, without reading the classes."""
    folder = os.path.join(root, sub)
    names = sorted(e.name for e in _list_folder(folder, folder)
                   if not e.name.startswith(".") and _is_dir(os.path.join(folder, e.name)))
    if not names:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<images>)")
    return names


def _scan(root: str, sub: str) -> _Tree:
    """Every class folder of ROOT/sub (sub "" for ROOT itself) and its image files."""
    folder = os.path.join(root, sub) if sub else root
    tree = _Tree(display=folder)
    entries = _list_folder(folder, folder)
    if not entries:
        raise DataError(f"{folder}: the folder is empty")
    prefix = f"{sub}/" if sub else ""
    top = _stat(folder)
    for entry in entries:
        path = os.path.join(folder, entry.name)
        if entry.name.startswith("."):
            tree.hidden += 1
            continue
        info = _stat(path)
        if not stat.S_ISDIR(info.st_mode):
            tree.other += 1
            continue
        files = []
        _walk(path, prefix + entry.name, {(top.st_dev, top.st_ino): folder}, info, files, tree)
        if not files:
            raise DataError(f"{path}: no images in the class folder "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        files.sort(key=lambda f: f.rel)
        tree.classes[entry.name] = files
    if not tree.classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<images>, "
                        f"or {folder}/train/<class>/... and {folder}/test/<class>/...)")
    return tree


def _walk(folder: str, rel: str, ancestors: dict, info, files: list, tree: _Tree) -> None:
    """Collect the image files under `folder` (recursively); `ancestors` maps the
    (device, inode) of every folder above it to its path, to catch symlink loops."""
    key = (info.st_dev, info.st_ino)
    if key in ancestors:
        raise DataError(f"{folder}: a symlink loop (it leads back to {ancestors[key]})")
    ancestors = {**ancestors, key: folder}
    for entry in _list_folder(folder, folder):
        if entry.name.startswith("."):
            tree.hidden += 1
            continue
        child = _stat(entry.path)
        if stat.S_ISDIR(child.st_mode):
            _walk(entry.path, f"{rel}/{entry.name}", ancestors, child, files, tree)
        elif stat.S_ISREG(child.st_mode) and entry.name.lower().endswith(IMAGE_SUFFIXES):
            files.append(_File(f"{rel}/{entry.name}", child.st_size, child.st_mtime_ns))
        else:
            tree.other += 1


def _note_skipped(tree: _Tree) -> None:
    skipped = tree.hidden + tree.other
    if skipped:
        detail = []
        if tree.hidden:
            detail.append(f"{tree.hidden} hidden")
        if tree.other:
            detail.append(f"{tree.other} not {'/'.join(s[1:] for s in IMAGE_SUFFIXES)}")
        print(f"note: skipped {skipped} file{'s' if skipped != 1 else ''} of {tree.display} "
              f"that {'are' if skipped != 1 else 'is'} not images ({', '.join(detail)})",
              file=sys.stderr)


# ----------------------------------------------------------------------------- the arrays

def _load_arrays(split, items, labels, need, class_names, options) -> np.ndarray:
    """The images of the first `need` of the split's `items`: from the cache as far as it
    goes, the rest decoded (and then cached)."""
    size = _size(options)
    cache_file = _cache_file(items, labels, class_names, split, options)
    cached = _read_cache(cache_file, labels, class_names) if cache_file else None
    if cached is not None and len(cached) >= need:
        return cached[:need]
    start = 0 if cached is None else len(cached)
    stack = _Stack(need, items)
    if cached is not None:
        stack.put_block(cached)
    paths = [where for where, _ in items[start:need]]
    with contextlib.closing(_decode_all(paths, size, options.crop)) as decoded:
        for index, image in decoded:
            stack.put(start + index, image)
    images = stack.finish(size)
    if cache_file and need > start:
        _write_cache(cache_file, images, labels, class_names)
    return images


def _size(options):
    """options.image_size as (H, W) ints, or None."""
    if options.image_size is None:
        return None
    height, width = (int(s) for s in options.image_size)
    return height, width


def _empty(size):
    height, width = size or (0, 0)
    return np.empty((0, height, width, 3), dtype=np.uint8)


class _Stack:
    """Fills one (N, H, W, C) uint8 array image by image, checking that the sizes agree
    and making grayscale images RGB when a split mixes the two."""

    def __init__(self, count: int, items) -> None:
        self.count = count
        self.items = items
        self.array = None
        self.first = None       # the display path of an image of the array's size
        self.widened = 0

    def _allocate(self, shape, where) -> None:
        self.array = np.empty((self.count, *shape), dtype=np.uint8)
        self.first = where

    def put_block(self, block: np.ndarray) -> None:
        if len(block):
            self._allocate(block.shape[1:], self.items[0][0])
            self.array[:len(block)] = block

    def put(self, index: int, image: np.ndarray) -> None:
        where = self.items[index][0]
        if self.array is None:
            self._allocate(image.shape, where)
        h, w, c = image.shape
        height, width, channels = self.array.shape[1:]
        if (h, w) != (height, width):
            raise DataError(f"{self.first} is {height}x{width}, {where} is {h}x{w}: "
                            "give --image-size HxW (or with --crop)")
        if c != channels:
            if c == 3:           # the array so far was grayscale: make it RGB
                self.widened += index
                self.array = np.repeat(self.array, 3, axis=3)
            else:
                self.widened += 1
                image = np.repeat(image, 3, axis=2)
        self.array[index] = image

    def finish(self, size) -> np.ndarray:
        if self.widened:
            print(f"note: made {self.widened} grayscale image{'s' if self.widened != 1 else ''}"
                  " RGB, as the others are", file=sys.stderr)
        return self.array if self.array is not None else _empty(size)


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _decode_chunk(paths, size, crop):
    """Decode (and fit to `size`) a few files -> list of (H, W, C) uint8; a worker task."""
    out = []
    for path in paths:
        image = decode_image(path, shrink_to=None if crop else size)
        if size is not None:
            image = np.ascontiguousarray(fit_image(image, size, crop, path))
        out.append(image)
    return out


def _decode_all(paths, size, crop, executor="thread", workers=None):
    """Yield (index, image) for `paths`, in order, decoded on `workers` threads (or processes,
    executor="process"; "serial": none). The first failure (in order) is raised."""
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = workers or _workers()
    if executor == "serial" or workers == 1 or len(chunks) <= 1:
        results = (_decode_chunk(chunk, size, crop) for chunk in chunks)
        pool = None
    elif executor == "thread":
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode")
    elif executor == "process":
        # not fork: the parent may run threads (Spark's, the trainer's)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        raise ValueError(f"executor must be 'thread', 'process' or 'serial', got {executor!r}")
    if pool is not None:
        # a bounded window of tasks ahead of the one being collected
        results = _windowed(pool, chunks, size, crop, 4 * workers)
    try:
        index = 0
        for images in results:
            for image in images:
                yield index, image
                index += 1
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _windowed(pool, chunks, size, crop, ahead):
    pending = []
    nxt = 0
    for _ in range(len(chunks)):
        while nxt < len(chunks) and len(pending) < ahead:
            pending.append(pool.submit(_decode_chunk, chunks[nxt], size, crop))
            nxt += 1
        yield pending.pop(0).result()


# ----------------------------------------------------------------------------- the cache

def _cache_file(items, labels, class_names, split, options):
    folder = options.cache_dir
    if folder is None:
        folder = default_cache_dir()
    if not folder:
        return None
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION, "split": split, "class_names": list(class_names),
        "image_size": None if _size(options) is None else list(_size(options)),
        "crop": bool(options.crop) if _size(options) is not None else False,
        "test_fraction": None if options.test_fraction is None else float(options.test_fraction),
        "seed": int(options.seed),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for (_, f), label in zip(items, labels.tolist()):
        digest.update(f"\n{f.rel}\0{f.size}\0{f.mtime_ns}\0{label}".encode("utf-8",
                                                                          "surrogateescape"))
    return os.path.join(os.path.expanduser(folder), digest.hexdigest()[:40] + ".npz")


def _read_cache(path, labels, class_names):
    """The cached images (M, H, W, C) of the first M items, or None (absent or damaged)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
            cached_labels = data["labels"]
            names = [str(n) for n in data["class_names"]]
        good = (images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] in (1, 3)
                and cached_labels.shape == (len(images),) and len(images) <= len(labels)
                and names == list(class_names)
                and np.array_equal(cached_labels, labels[:len(images)]))
    except Exception:  # noqa: BLE001 - any unreadable cache file is only a cache miss
        good = False
    if not good:
        print(f"note: ignored the damaged image cache {path}; rewriting it", file=sys.stderr)
        return None
    return images


def _write_cache(path, images, labels, class_names) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels[:len(images)],
                     class_names=np.array(class_names, dtype=str))
    except OSError as e:
        print(f"note: cannot write the image cache {path} ({e.strerror or e}); "
              "set --cache-dir or SPARK_CNN_CACHE_DIR", file=sys.stderr)
