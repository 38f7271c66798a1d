"""Turn any image source this project reads into Parquet.

    python3 -m spark.data.convert SRC DEST.parquet [--data-format F] [--labels fine|coarse]
        [--image-size HxW] [--crop] [--test-fraction F] [--seed S] [--split train|test|both]
        [--cache-dir DIR]

reads SRC with spark.data.source.load_dataset (CIFAR-10, CIFAR-100, MNIST,
an image folder tree, Parquet) and writes one split (default "train") to
DEST.parquet; with --split both, DEST is a folder that gets DEST/train.parquet
and DEST/test.parquet (the layout spark/data/parquet.py reads as a folder of
train and test files).

The file (written with pyarrow)
-------------------------------
One row per image, in the source's order:

    image     binary   the raw uint8 pixels of one image, row-major H x W x C
                       (NHWC without the N: np.frombuffer(v, np.uint8).reshape(h, w, c))
    height    int32
    width     int32
    channels  int32    1 (grayscale) or 3 (RGB)
    label     int64    0 .. K-1, indexing the class names

The schema's metadata holds the class names under the key
`spark-cnn.class_names` (a JSON list of K strings) and the split under
`spark-cnn.split` ("train" or "test"). Row groups hold about 64 MiB of image
bytes each (64 MiB // (H W C) images, at least one: 21,845 32x32 RGB images,
1,337 224x224 RGB), so a reader can fetch a group at a time; the image column
is stored without dictionary encoding or statistics. A file is written under a
temporary name and renamed into place when complete.

Exit status: 0 done; 2 bad arguments (with the usage); 1 the data could not be
read or written (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ..atomic import replacing
from .dataset import DataError
from .images import parse_image_size
from .source import FORMATS, DataOptions, load_dataset

__all__ = ["ROW_GROUP_BYTES", "CLASS_NAMES_KEY", "SPLIT_KEY", "write_parquet", "convert", "main"]

ROW_GROUP_BYTES = 64 * 1024 * 1024
CLASS_NAMES_KEY = "spark-cnn.class_names"
SPLIT_KEY = "spark-cnn.split"


def _schema(pa, class_names, split):
    return pa.schema([
        ("image", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
        ("channels", pa.int32()), ("label", pa.int64()),
    ], metadata={CLASS_NAMES_KEY: json.dumps(list(class_names)), SPLIT_KEY: split})


def write_parquet(dataset, dest, split: str = "train", row_group_bytes: int = ROW_GROUP_BYTES):
    """Write `dataset` (images (N, H, W, C) uint8, labels (N,)) to the Parquet file `dest`.

    The images are read a row group at a time (`images[start:stop]`), so a lazy
    images object works too. Returns the number of rows written. OSError if
    `dest` cannot be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = os.fspath(dest)
    height, width, channels = (int(s) for s in dataset.images.shape[1:])
    per_image = height * width * channels
    rows = max(1, row_group_bytes // max(1, per_image))
    schema = _schema(pa, dataset.class_names, split)
    count = len(dataset)
    with replacing(dest) as tmp:
        with pq.ParquetWriter(tmp, schema, use_dictionary=["height", "width", "channels",
                                                           "label"],
                              write_statistics=["height", "width", "channels", "label"]) as out:
            for start in range(0, max(count, 1), rows):
                stop = min(start + rows, count)
                block = np.ascontiguousarray(dataset.images[start:stop], dtype=np.uint8)
                n = stop - start
                offsets = np.arange(n + 1, dtype=np.int32) * per_image
                image = pa.Array.from_buffers(
                    pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(block)])
                labels = np.asarray(dataset.labels[start:stop], dtype=np.int64)
                table = pa.Table.from_arrays([
                    image,
                    pa.array(np.full(n, height, np.int32)),
                    pa.array(np.full(n, width, np.int32)),
                    pa.array(np.full(n, channels, np.int32)),
                    pa.array(labels),
                ], schema=schema)
                out.write_table(table, row_group_size=rows)
    return count


def convert(src, dest, split: str = "train", options=None) -> list[tuple[str, int]]:
    """Convert `split` ("train", "test" or "both") of `src` to Parquet at `dest`.

    -> [(file written, images)]. DataError if the source cannot be read, OSError if
    the destination cannot be written.
    """
    options = options or DataOptions()
    dest = os.fspath(dest)
    if split == "both":
        os.makedirs(dest, exist_ok=True)
        targets = [("train", os.path.join(dest, "train.parquet")),
                   ("test", os.path.join(dest, "test.parquet"))]
    else:
        targets = [(split, dest)]
    written = []
    for name, file in targets:  # one split in memory at a time
        written.append((file, write_parquet(load_dataset(src, name, None, options), file, name)))
    return written


def _size(text):
    try:
        return parse_image_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="python3 -m spark.data.convert",
        description="Turn an image source (CIFAR-10, CIFAR-100, MNIST, an image folder, "
                    "Parquet) into Parquet: columns image (raw uint8 HxWxC bytes), height, "
                    "width, channels, label; class names in the schema metadata.")
    parser.add_argument("src", metavar="SRC", help="the source (a file or folder)")
    parser.add_argument("dest", metavar="DEST",
                        help="DEST.parquet; with --split both, a folder for train.parquet "
                             "and test.parquet")
    parser.add_argument("--data-format", choices=FORMATS, help="SRC's format (default: detect)")
    parser.add_argument("--labels", choices=("fine", "coarse"), default="fine",
                        help="CIFAR-100: fine (100 classes) or coarse (20) labels")
    parser.add_argument("--image-size", type=_size, metavar="HxW",
                        help="resize every image to HxW (or center-crop, with --crop)")
    parser.add_argument("--crop", action="store_true",
                        help="center-crop to --image-size instead of resizing")
    parser.add_argument("--test-fraction", type=_fraction, metavar="F",
                        help="an image folder of one tree: hold out this share as the test split")
    parser.add_argument("--seed", type=int, default=0, help="the held-out share's seed (0)")
    parser.add_argument("--split", choices=("train", "test", "both"), default="train",
                        help="which split to write (default train)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="an image folder's decoded-image cache ('' for none)")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.crop and args.image_size is None:
        parser.error("--crop needs --image-size HxW")
    if args.split == "both" and args.dest.endswith(".parquet"):
        parser.error("with --split both, DEST is a folder (it gets train.parquet and "
                     "test.parquet), not a .parquet file")
    if args.split != "both" and not args.dest.endswith(".parquet"):
        parser.error(f"DEST must end in .parquet, got {args.dest!r} (or give --split both "
                     "for a folder)")
    options = DataOptions(format=args.data_format, labels=args.labels,
                          test_fraction=args.test_fraction, image_size=args.image_size,
                          crop=args.crop, seed=args.seed, cache_dir=args.cache_dir)
    try:
        written = convert(args.src, args.dest, args.split, options)
    except DataError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except OSError as e:
        where = e.filename or args.dest
        print(f"error: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    for file, count in written:
        print(f"wrote {count} images to {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
