"""Writing a file so that readers see either the old one or the whole new one.

    with replacing("params/naive.npz") as tmp:
        np.savez(tmp, ...)                 # write to tmp however you like

`tmp` is a new name in the target's folder (so the rename stays on one file
system). On a clean exit it replaces the target in one rename; on any
exception, KeyboardInterrupt included, it is removed and the target is left
as it was. Files are created with the process's usual permissions.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket


def host_tag() -> str:
    """This host's name as it goes into a file name: letters, digits, dots and `_`."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64]


def temporary_name(path) -> str:
    """A new hidden name beside `path`, `.tmp-<pid>-<host>-<random><suffix of path>`: unique
    per host, process and call, and telling a later run whose leftover it is
    (see checkpoint.remove_stale_temporaries)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    suffix = os.path.splitext(name)[1]
    return os.path.join(folder, f".tmp-{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path (str) beside `path`; rename it onto `path` on a clean exit,
    remove it on an exception (see the module docstring)."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsynced(f) -> None:
    """Flush the open file `f` through to the disk (before a rename makes it visible)."""
    f.flush()
    os.fsync(f.fileno())
