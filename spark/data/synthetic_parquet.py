"""Write a learnable synthetic image set as one Parquet file, in the converter's layout.

    python3 -m spark.data.synthetic_parquet DEST.parquet --images N [--size HxW]
        [--channels C] [--encoded png|raw] [--classes K] [--row-group R] [--seed S]

The layout is the one ``python3 -m spark.data.convert`` writes: columns
``image`` (binary: raw uint8 bytes of one image, row-major H x W x C; or with
--encoded png, a PNG file), ``height``, ``width``, ``channels`` (int32),
``label`` (int64), and the class names ``class0`` .. ``class<K-1>`` as a
JSON list in the schema metadata key ``spark-cnn.class_names``; one row
group per R images (default 1,000).

The images are spark.data.synthetic's (see its docstring: a striped patch
whose place and stripe direction give the class, on a noisy background),
drawn at 32 x 32, then resized with Pillow to --size and, with --channels 1,
turned to grayscale (luminance); both keep the classes learnable. At most
10 classes. Labels are balanced and shuffled within each row group. The same
arguments give the same file.

Sizes: a raw 32x32x3 image is 3,072 bytes, so 1 GB is about 340,000 raw
32x32x3 images (--images 340000): how to make a file bigger than a
driver's memory for the lazy reading of spark/data/parquet_images.py.
Images are generated a row group at a time: writing needs memory for one
row group, whatever N.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import replacing
from .parquet import CLASS_NAMES_KEY
from .synthetic import make_images

__all__ = ["synthetic_images", "write_synthetic_parquet", "main"]

MAX_CLASSES = 10


def synthetic_images(labels, rng: np.random.Generator, size=(32, 32),
                     channels: int = 3) -> np.ndarray:
    """uint8 (n, H, W, C) images of the classes `labels` (n ints 0..9), for size (H, W)
    and C = `channels` (1 or 3)."""
    planes = make_images(np.asarray(labels), rng)                            # (n, 3072)
    images = planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)             # (n, 32, 32, 3)
    if channels == 1:
        luminance = images @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (n, 32, 32)
        images = np.rint(np.clip(luminance, 0, 255)).astype(np.uint8)[:, :, :, None]
    height, width = size
    if (height, width) != (32, 32):
        from PIL import Image
        images = np.stack([_resized(Image, image, height, width) for image in images])
    return np.ascontiguousarray(images)


def _resized(Image, image: np.ndarray, height: int, width: int) -> np.ndarray:
    gray = image.shape[2] == 1
    picture = Image.fromarray(image[:, :, 0] if gray else image)
    out = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
    return out[:, :, None] if gray else out


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_synthetic_parquet(dest, images: int, size=(32, 32), channels: int = 3,
                            encoded: str = "raw", classes: int = 10, row_group: int = 1000,
                            seed: int = 0) -> Path:
    """Write `images` synthetic images to the Parquet file `dest` (see the module
    docstring); returns its Path. Written to a temporary file, then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, value, low in (("images", images, 1), ("classes", classes, 2),
                             ("row_group", row_group, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if classes > MAX_CLASSES:
        raise ValueError(f"classes must be at most {MAX_CLASSES}, got {classes}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if encoded not in ("raw", "png"):
        raise ValueError(f"encoded must be raw or png, got {encoded!r}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be at least 1x1, got {height}x{width}")

    names = [f"class{k}" for k in range(classes)]
    schema = pa.schema([("image", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
                        ("channels", pa.int32()), ("label", pa.int64())],
                       metadata={CLASS_NAMES_KEY: json.dumps(names)})
    small = ["height", "width", "channels", "label"]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with replacing(dest) as tmp:
        # pixels neither compress nor repeat: no compression, dictionary or statistics for them
        with pq.ParquetWriter(tmp, schema, compression={"image": "none", **dict.fromkeys(
                small, "snappy")}, use_dictionary=small, write_statistics=small) as writer:
            for start in range(0, images, row_group):
                count = min(row_group, images - start)
                labels = rng.permutation(np.arange(start, start + count, dtype=np.int64) % classes)
                pixels = synthetic_images(labels, rng, (height, width), channels)
                blobs = [_png(p) if encoded == "png" else p.tobytes() for p in pixels]
                writer.write_table(pa.table({
                    "image": pa.array(blobs, pa.binary()),
                    "height": pa.array(np.full(count, height, np.int32)),
                    "width": pa.array(np.full(count, width, np.int32)),
                    "channels": pa.array(np.full(count, channels, np.int32)),
                    "label": pa.array(labels),
                }, schema=schema), row_group_size=row_group)
    return dest


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 32x32, got {text!r}")
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m spark.data.synthetic_parquet",
        description="Write learnable synthetic images to a Parquet file in the layout of "
                    "spark.data.convert (image bytes, height, width, channels, label). "
                    "1 GB is about 340,000 raw 32x32x3 images.")
    parser.add_argument("dest", metavar="DEST.parquet", help="the file to write")
    parser.add_argument("--images", type=int, required=True, help="how many images")
    parser.add_argument("--size", type=_size, default=(32, 32), metavar="HxW",
                        help="image height x width (default 32x32)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3),
                        help="1 (grayscale) or 3 (RGB, the default)")
    parser.add_argument("--encoded", default="raw", choices=("raw", "png"),
                        help="raw uint8 bytes (the default, as the converter writes) or PNG files")
    parser.add_argument("--classes", type=int, default=10, help="classes, 2 to 10 (default 10)")
    parser.add_argument("--row-group", dest="row_group", type=int, default=1000, metavar="R",
                        help="images per row group (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        out = write_synthetic_parquet(args.dest, args.images, args.size, args.channels,
                                      args.encoded, args.classes, args.row_group, args.seed)
    except ValueError as e:
        parser.error(str(e))
    except OSError as e:
        print(f"error: cannot write {args.dest}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {args.images} synthetic {args.size[0]}x{args.size[1]}x{args.channels} images "
          f"({args.encoded}, {args.classes} classes, {args.row_group} per row group) to {out} "
          f"({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
