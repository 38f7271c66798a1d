"""Whether a process of this machine is still there: for telling a dead run's leftovers
(a heartbeat, a half-written checkpoint) from a live run's."""
import psutil


def process_gone(pid):
    """True if no process `pid` runs here (an exited, not yet reaped zombie counts as gone).
    A process we may not inspect counts as running."""
    try:
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, ValueError, OverflowError):
        return False
