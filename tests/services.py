"""The servers of scripts/services.sh as the tests see them: the SPARK_CNN_* settings
the script prints as `export` lines, and the HDFS part of them (conftest.py's
`service_env` and `hdfs_settings` fixtures)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass

SERVICE_ENV_NAMES = ("SPARK_CNN_REDIS", "SPARK_CNN_WEBHDFS", "SPARK_CNN_HDFS",
                     "SPARK_CNN_HDFS_USER", "SPARK_CNN_HDFS_ROOT")


@dataclass(frozen=True)
class HdfsSettings:
    webhdfs: str  # http://127.0.0.1:19870
    hdfs: str     # hdfs://127.0.0.1:19000
    user: str
    root: str     # /spark-cnn


def parse_exports(text: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines of a script's output (services.sh or cluster.sh
    start/up) -> {NAME: VALUE}; other lines are left out."""
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env
