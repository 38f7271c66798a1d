"""Every setting in one place: command-line flag, then environment variable, then default.

Nothing here is meant to be edited: set SPARK_CNN_* in the environment (or pass
the flag) instead. `scripts/services.sh start` prints the service addresses as
export lines for `eval`.
"""
import getpass
import math
import os
from dataclasses import dataclass, field

# name -> (environment variable, default)
SOURCES = {
    "data_dir": ("SPARK_CNN_DATA_DIR", "data/cifar-10-batches-py"),
    "params_dir": ("SPARK_CNN_PARAMS_DIR", "params"),
    "redis": ("SPARK_CNN_REDIS", "127.0.0.1:6390"),
    "webhdfs": ("SPARK_CNN_WEBHDFS", "http://127.0.0.1:19870"),
    "hdfs": ("SPARK_CNN_HDFS", "hdfs://127.0.0.1:19000"),
    "hdfs_user": ("SPARK_CNN_HDFS_USER", None),
    "hdfs_root": ("SPARK_CNN_HDFS_ROOT", "/spark-cnn"),
    "io_timeout": ("SPARK_CNN_IO_TIMEOUT", "30"),
}
# The Redis password never comes from a flag (command lines are visible to
# every user of the machine): from this variable, or from the file named by
# the second one.
PASSWORD_VARIABLE = "SPARK_CNN_REDIS_PASSWORD"
PASSWORD_FILE_VARIABLE = "SPARK_CNN_REDIS_PASSWORD_FILE"


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def redis_password(environ=None):
    """The Redis password (None if neither variable is set).

    A password file's trailing newline is dropped.
    """
    environ = os.environ if environ is None else environ
    if environ.get(PASSWORD_VARIABLE):
        return environ[PASSWORD_VARIABLE]
    path = environ.get(PASSWORD_FILE_VARIABLE)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
    except OSError as e:
        raise SettingsError(f"cannot read the Redis password file {path} "
                            f"({PASSWORD_FILE_VARIABLE}): {e.strerror or e}") from None
    if not password:
        raise SettingsError(f"the Redis password file {path} ({PASSWORD_FILE_VARIABLE}) is empty")
    return password


def io_timeout(text):
    """SPARK_CNN_IO_TIMEOUT as seconds: a positive finite number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"SPARK_CNN_IO_TIMEOUT={text!r}: expected a positive number of seconds")
    return value


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
    io_timeout: float = 30.0
    redis_password: str = field(default=None, repr=False)   # never shown

    @classmethod
    def from_flags(cls, flags, environ=None):
        """Build from an argparse namespace whose attributes share the setting names."""
        values = {name: resolve(name, getattr(flags, name, None), environ) for name in SOURCES}
        values["io_timeout"] = io_timeout(values["io_timeout"])
        return cls(**values, redis_password=redis_password(environ))
