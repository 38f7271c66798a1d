"""Per-iteration metrics as JSON lines."""
import json
import os

import psutil


def rss_mb():
    """Resident memory of this process, in MB."""
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class MetricsError(OSError):
    """The metrics file cannot be written."""


class MetricsLog:
    """Appends one JSON object per line to `path` (nothing is written when path is None).

    The file is opened (created if need be) here, so a file that cannot be
    written is found before a run starts rather than after its first
    iteration has been saved; each line is flushed as it is written.
    """

    def __init__(self, path):
        self.path = os.fspath(path) if path else None
        self._file = None
        if not self.path:
            return
        try:
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise MetricsError(f"cannot write the metrics file {self.path}: "
                               f"{e.strerror or e}") from None

    def write(self, record):
        if self._file is None:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
