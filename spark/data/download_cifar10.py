"""Download and unpack the official CIFAR-10 python version.

    python3 -m spark.data.download_cifar10 [--dest DIR]

fetches https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (about 163 MB) into a temp
file in DIR (default ``data``), checks its published md5, renames it to
``DIR/cifar-10-python.tar.gz`` and extracts ``DIR/cifar-10-batches-py/``. An archive already
in place with the right md5 is not downloaded again. Then ``load_cifar10(DIR)`` finds it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from ..atomic import replacing

__all__ = [
    "URL", "MD5", "ARCHIVE_NAME", "DownloadError", "download_cifar10", "safe_extract", "main",
]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
_CHUNK = 1 << 20


class DownloadError(Exception):
    """Network failure, checksum mismatch or an unsafe archive; the message is one line."""


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    """Download ``url`` to a temp file next to ``target``; rename only if the md5 matches."""
    with replacing(target) as tmp, open(tmp, "wb") as out:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(f"could not download {url}: {reason}") from None
        if digest.hexdigest() != md5:
            raise DownloadError(
                f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}"
            )


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract ``archive`` into ``dest``, refusing absolute paths, ``..``, links and devices."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name
                if (name.startswith(("/", "\\")) or os.path.isabs(name)
                        or ".." in PurePosixPath(name.replace("\\", "/")).parts):
                    raise DownloadError(f"refusing to extract {archive}: unsafe path {name!r}")
                if not (member.isreg() or member.isdir()):
                    raise DownloadError(
                        f"refusing to extract {archive}: {name!r} is not a plain file or folder"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"cannot extract {archive}: {exc}") from None


def download_cifar10(dest: str | os.PathLike = "data", url: str = URL, md5: str = MD5,
                     extract: bool = True, timeout: float = 60.0) -> Path:
    """Fetch and verify the archive into ``dest`` (and extract it); return the archive path.

    Raises ``DownloadError`` on network failure, checksum mismatch or an unsafe archive; the
    temp file is removed in every failure case.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    if not (archive.is_file() and _md5_of(archive) == md5):
        _fetch(url, archive, md5, timeout)
    if extract:
        safe_extract(archive, dest)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m spark.data.download_cifar10",
        description=f"Download {URL}, check its md5 and extract cifar-10-batches-py/.",
    )
    parser.add_argument("--dest", default="data", help="folder to put it in (default: data)")
    parser.add_argument("--url", default=URL, help="download from this mirror instead")
    args = parser.parse_args(argv)
    try:
        archive = download_cifar10(args.dest, url=args.url)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"verified {archive} (md5 {MD5}) and extracted {Path(args.dest) / 'cifar-10-batches-py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
