"""What every image source gives: a `Dataset`, and its errors.

`images` is (N, H, W, C) uint8, NHWC, C = 1 (grayscale) or 3 (RGB); it is a
NumPy array, or for sources too big to hold (Parquet, spark/data/parquet.py)
an object that behaves like one for what the trainers do with it: `len`,
`.shape`, `.dtype` and `images[index]` for an index array or a slice. Labels
are int64 (N,) in 0..K-1, `class_names` the K names, sorted for sources that
name their classes by folder or string label.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A data source cannot be read as asked. The message is one line that names
    the file, folder or column at fault."""


class TooFewImagesError(DataError):
    """The split holds fewer images than asked for."""


@dataclass(eq=False)
class Dataset:
    """Images (uint8, N x H x W x C, NHWC), labels (int64, N) and the class names."""

    images: object
    labels: np.ndarray
    class_names: list[str]
    ids: list | None = None          # each image's name in its source (a file), if it has one

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"Dataset: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])


def check_limit(limit):
    """A loader's `limit` (how many images, None for all) -> an int or None; ValueError
    for anything but a whole number of at least 0."""
    if limit is None:
        return None
    try:
        value = operator.index(limit)
    except TypeError:
        value = -1
    if isinstance(limit, bool) or value < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    return value
