"""Progress reporting: a redrawn bar on a terminal, plain lines elsewhere."""
import io

from spark.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal():
    stream = FakeTerminal()
    progress = Progress(10, "iteration 1", stream=stream, width=10)
    for _ in range(10):
        progress.update(1)
    text = stream.getvalue()
    assert text.count("\r") == 10 and "[##########] 10/10" in text and text.endswith("\n")


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(4, "evaluating", stream=stream, every=3600)
    for _ in range(4):
        progress.update(1)
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("evaluating: 4/4 (100%)")
    assert "\r" not in stream.getvalue()
