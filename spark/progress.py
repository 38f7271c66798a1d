"""Progress reporting for long work: a bar on a terminal, plain lines elsewhere."""
import sys
import time


class Progress:
    """Counts units of work done out of `total`.

    On a terminal it redraws one bar line; otherwise (a log file, a pipe, CI) it
    prints a plain line every `every` seconds and at the end, so logs stay readable.
    """

    def __init__(self, total, label, stream=None, every=10.0, width=30):
        self.total, self.label = max(int(total), 1), label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.width = every, width
        self.done = 0
        self.started = self.last = time.monotonic()

    def update(self, n=1):
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        finished = self.done >= self.total
        if self.tty:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}"
                              f" {now - self.started:6.1f}s")
            if finished:
                self.stream.write("\n")
            self.stream.flush()
        elif finished or now - self.last >= self.every:
            self.stream.write(f"{self.label}: {self.done}/{self.total} "
                              f"({100 * self.done // self.total}%) "
                              f"after {now - self.started:.1f}s\n")
            self.stream.flush()
            self.last = now


class NoProgress:
    """Stands in for Progress when there is nothing worth showing."""

    def update(self, n=1):
        pass


# Iterations or evaluations over at least this many images get a progress counter.
PROGRESS_FROM = 20000


def progress_for(total, label):
    """A Progress for `total` units of work worth showing (a line every 5 s off a
    terminal), else None."""
    return Progress(total, label, every=5.0) if total >= PROGRESS_FROM else None
