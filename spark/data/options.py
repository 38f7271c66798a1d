"""How to read an image source: the data flags of the command line and the service settings.

Its own module so that the loaders (folder.py, parquet.py, ...) and the
dispatcher that picks one (source.py) both read it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataOptions:
    """How to read a source (the command line's data flags and the service settings)."""

    format: str | None = None          # one of FORMATS; None: detect
    image_column: str | None = None    # parquet: the image column (None: see parquet.py)
    label_column: str | None = None    # parquet: the label column (None: see parquet.py)
    labels: str = "fine"               # cifar100: fine or coarse
    test_fraction: float | None = None  # folder, one tree: the held-out test share
    image_size: tuple | None = None    # (H, W): resize every image to it ...
    crop: bool = False                 # ... or center-crop to it
    seed: int = 0                      # the held-out split's seed
    cache_dir: str | None = None       # decoded-image cache (None: the default; "": none)
    webhdfs: str = ""                  # parquet on HDFS: the NameNode's WebHDFS address
    hdfs_user: str = ""
    timeout: float = 30.0              # SPARK_CNN_IO_TIMEOUT
