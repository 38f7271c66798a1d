"""Every setting in one place: command-line flag, then environment variable, then default.

Nothing here is meant to be edited: set SPARK_CNN_* in the environment (or pass
the flag) instead. `scripts/services.sh start` prints the service addresses as
export lines for `eval`.
"""
import getpass
import os
from dataclasses import dataclass

# name -> (environment variable, default)
SOURCES = {
    "data_dir": ("SPARK_CNN_DATA_DIR", "data/cifar-10-batches-py"),
    "params_dir": ("SPARK_CNN_PARAMS_DIR", "params"),
    "redis": ("SPARK_CNN_REDIS", "127.0.0.1:6390"),
    "webhdfs": ("SPARK_CNN_WEBHDFS", "http://127.0.0.1:19870"),
    "hdfs": ("SPARK_CNN_HDFS", "hdfs://127.0.0.1:19000"),
    "hdfs_user": ("SPARK_CNN_HDFS_USER", None),
    "hdfs_root": ("SPARK_CNN_HDFS_ROOT", "/spark-cnn"),
}


def resolve(name, flag_value=None, environ=None):
    """The value of setting `name`: the flag if given, else its variable, else the default."""
    if flag_value is not None:
        return flag_value
    variable, default = SOURCES[name]
    value = (os.environ if environ is None else environ).get(variable)
    if value:
        return value
    if name == "hdfs_user":
        return getpass.getuser()
    return default


def env_name(name):
    return SOURCES[name][0]


@dataclass
class Settings:
    """Resolved settings for one run (see SOURCES for names and defaults)."""

    data_dir: str
    params_dir: str
    redis: str = ""
    webhdfs: str = ""
    hdfs: str = ""
    hdfs_user: str = ""
    hdfs_root: str = ""

    @classmethod
    def from_flags(cls, flags, environ=None):
        """Build from an argparse namespace whose attributes share the setting names."""
        values = {name: resolve(name, getattr(flags, name, None), environ) for name in SOURCES}
        return cls(**values)
