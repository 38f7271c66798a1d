"""Per-iteration metrics as JSON lines."""
import json
import os

import psutil


def rss_mb():
    """Resident memory of this process, in MB."""
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class MetricsLog:
    """Appends one JSON object per line to `path` (nothing is written when path is None)."""

    def __init__(self, path):
        self.path = path
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)

    def write(self, record):
        if not self.path:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
