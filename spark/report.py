"""Plots of the per-iteration metrics files the trainers write with --metrics.

    python3 -m spark.report METRICS.jsonl [METRICS.jsonl ...] --out DIR

Each file is one run (labelled by its file name); all runs share the axes.
Writes into DIR, one line printed per file:

- loss_iteration.png, loss_wall.png: training loss against iteration and
  against wall time;
- lr_iteration.png: learning rate against iteration (runs with an `lr` key);
- accuracy_iteration.png, accuracy_wall.png: test accuracy (runs with a
  `test_accuracy` key, on the lines that have it);
- time_split.png: where an iteration's time goes, one stacked bar per run
  (medians over the run's iterations of forward, backward, update, broadcast,
  save and the rest), and for Spark runs the store write and read times,
  which are summed over a stage's tasks (they overlap in time and are part of
  the forward and backward stages, so they are drawn beside the bars, not
  stacked on them).

Wall time at an iteration is `wall_s` when the line has it (seconds since the
run started), else the running sum of the iterations' own times:
images / images_per_s, plus save_s when present.

The files are read as JSON lines only. matplotlib (the `report` extra) is
imported only to draw, with its Agg back end (no display needed).
"""
import argparse
import json
import math
import os
import statistics
import sys

PROG = "python3 -m spark.report"
INSTALL_HINT = "pip install spark-cnn[report] (or pip install matplotlib)"

# Keys that must be numbers when a line has them.
NUMERIC_KEYS = ("loss", "forward_s", "backward_s", "update_s", "images_per_s", "images",
                "save_s", "broadcast_s", "store_write_s", "store_read_s", "lr",
                "test_accuracy", "wall_s")

# The stacked parts of an iteration's wall time (driver side), in drawing order.
SPLIT_PARTS = (("forward_s", "forward"), ("backward_s", "backward"), ("update_s", "update"),
               ("broadcast_s", "broadcast"), ("save_s", "save"))
# Spark's store I/O, summed over the tasks of a stage.
STORE_PARTS = (("store_write_s", "store write"), ("store_read_s", "store read"))


class ReportError(Exception):
    """The input cannot be plotted (exit code 1)."""


class Run:
    """One metrics file: its label and its records (dicts), in file order."""

    def __init__(self, label, path, records):
        self.label, self.path, self.records = label, path, records

    def series(self, key):
        """(iterations, values) of the records that have `key`."""
        rows = [(r["iteration"], r[key]) for r in self.records if key in r]
        return [i for i, _ in rows], [v for _, v in rows]

    def has(self, key):
        return any(key in r for r in self.records)


# ----- reading ----------------------------------------------------------------

def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_record(text, where):
    """One line of a metrics file -> dict; `where` is 'FILE, line N' for errors."""
    try:
        record = json.loads(text)
    except ValueError as e:
        raise ReportError(f"{where}: not JSON ({e})") from None
    if not isinstance(record, dict):
        raise ReportError(f"{where}: not a JSON object")
    iteration = record.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool):
        raise ReportError(f"{where}: no whole-number 'iteration'")
    if "loss" not in record:
        raise ReportError(f"{where}: no 'loss'")
    for key in NUMERIC_KEYS:
        if key in record and not _is_number(record[key]):
            raise ReportError(f"{where}: '{key}' is not a number ({record[key]!r})")
    return record


def read_metrics(path):
    """A metrics file (one JSON object per line; blank lines skipped) -> records."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not a text file") from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
    records = [parse_record(line, f"{path}, line {n}")
               for n, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise ReportError(f"{path}: no iterations")
    return records


def labels_for(paths):
    """File names, or the paths as given where two runs share a file name."""
    names = [os.path.basename(p) for p in paths]
    return [p if names.count(n) > 1 else n for p, n in zip(paths, names)]


def load_runs(paths):
    return [Run(label, path, read_metrics(path))
            for label, path in zip(labels_for(paths), paths)]


# ----- the numbers --------------------------------------------------------------

def iteration_seconds(record):
    """An iteration's own wall time (None if the line does not say)."""
    images, rate = record.get("images"), record.get("images_per_s")
    if images is None or rate is None:
        return None
    seconds = images / rate if rate > 0 else 0.0
    return seconds + record.get("save_s", 0.0)


def wall_times(records):
    """Wall time at the end of each iteration, seconds (None if a line lacks timing)."""
    times, total = [], 0.0
    for record in records:
        seconds = iteration_seconds(record)
        if seconds is not None:
            total += seconds
        if "wall_s" in record:
            times.append(record["wall_s"])
        elif seconds is None:
            return None
        else:
            times.append(total)
    return times


def time_unit(seconds):
    """(divisor, name) for an axis running up to `seconds`."""
    if seconds < 120:
        return 1.0, "s"
    if seconds < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def median_parts(records, parts):
    """{label: median of the records' key} for each (key, label) of `parts` some record has."""
    split = {}
    for key, label in parts:
        values = [r[key] for r in records if key in r]
        if values:
            split[label] = statistics.median(values)
    return split


def time_split(records):
    """Medians over the iterations: {part label: seconds}, 'other' the unaccounted rest."""
    split = median_parts(records, SPLIT_PARTS)
    totals = [s for s in map(iteration_seconds, records) if s is not None]
    if totals:
        split["other"] = max(0.0, statistics.median(totals) - sum(split.values()))
    return split


def store_split(records):
    """Medians of the store write and read times (summed over tasks); {} for a local run."""
    return median_parts(records, STORE_PARTS)


def running_mean(values, window):
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# ----- drawing ------------------------------------------------------------------

def _figure_class():
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(f"matplotlib is not installed: {INSTALL_HINT}") from None
    return Figure


def _figure():
    # A Figure made directly (not through pyplot) draws with the Agg canvas.
    return _figure_class()(figsize=(8, 5), dpi=100, layout="constrained")


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _line_plot(runs, xs_of, key, xlabel, ylabel, title, smooth=False):
    """One line per run; `xs_of(run)` -> x values of the records having `key`."""
    fig = _figure()
    ax = fig.add_subplot()
    for index, run in enumerate(runs):
        xs = xs_of(run)
        if xs is None:
            continue
        ys = [r[key] for r in run.records if key in r]
        color = f"C{index % 10}"
        if smooth and len(ys) > 100:
            window = max(2, len(ys) // 50)
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, running_mean(ys, window), color=color, linewidth=1.6,
                    label=f"{run.label} (mean of {window})")
        else:
            ax.plot(xs, ys, color=color, linewidth=1.4, marker="o" if len(ys) <= 30 else None,
                    markersize=3, label=run.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _against_iteration(key):
    return lambda run: [r["iteration"] for r in run.records if key in r]


def _against_wall(key, divisor):
    def xs(run):
        times = wall_times(run.records)
        if times is None:
            return None
        return [t / divisor for t, r in zip(times, run.records) if key in r]
    return xs


def plot_time_split(runs):
    """Stacked bars of the median iteration, and the Spark runs' store I/O beside them."""
    fig = _figure()
    spark_runs = [run for run in runs if store_split(run.records)]
    if spark_runs:
        ax, store_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    else:
        ax, store_ax = fig.add_subplot(), None
    splits = [time_split(run.records) for run in runs]
    labels = [run.label for run in runs]
    parts = [label for _, label in SPLIT_PARTS] + ["other"]
    bottoms = [0.0] * len(runs)
    for index, part in enumerate(parts):
        heights = [split.get(part, 0.0) for split in splits]
        if any(heights):
            ax.bar(labels, heights, bottom=bottoms, label=part, color=f"C{index}")
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    for position, total in enumerate(bottoms):
        ax.annotate(f"{total:.3g} s", (position, total), ha="center", va="bottom",
                    fontsize="small")
    ax.set_ylabel("seconds (median per iteration)")
    ax.set_title("an iteration's wall time")
    ax.legend(fontsize="small")
    ax.tick_params(axis="x", labelrotation=20, labelsize="small")
    if store_ax is not None:
        width = 0.8 / len(STORE_PARTS)
        for index, (_, part) in enumerate(STORE_PARTS):
            heights = [store_split(run.records).get(part, 0.0) for run in spark_runs]
            positions = [i + (index - (len(STORE_PARTS) - 1) / 2) * width
                         for i in range(len(spark_runs))]
            store_ax.bar(positions, heights, width=width, label=part,
                         color=f"C{len(parts) + index}")
        store_ax.set_xticks(range(len(spark_runs)), [run.label for run in spark_runs])
        store_ax.tick_params(axis="x", labelrotation=20, labelsize="small")
        store_ax.set_ylabel("seconds, summed over a stage's tasks\n(part of forward / backward)")
        store_ax.set_title("Spark store I/O")
        store_ax.legend(fontsize="small")
    return fig


def plot_series(panels):
    """Line charts side by side, one axes per panel -> the figure.

    panels: dicts with "series" {label: (xs, ys)}, "xlabel", "ylabel", "title"
    and optionally "logx" / "logy" (bool). Points are marked; a line's colour
    is the same in every panel.
    """
    fig = _figure()
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for index, (label, (xs, ys)) in enumerate(panel["series"].items()):
            ax.plot(xs, ys, color=f"C{index % 10}", marker="o", markersize=4, linewidth=1.4,
                    label=label)
        if panel.get("logx"):
            ax.set_xscale("log")
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel["title"], fontsize="medium")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    return fig


def plot_grouped_bars(panels):
    """Grouped bar charts side by side, one axes per panel -> the figure.

    panels: dicts with "groups" (x labels), "bars" {label: heights, one per
    group}, "ylabel", "title"; every bar is annotated with its height.
    """
    fig = _figure()
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True,
                        width_ratios=[max(1, len(p["groups"])) for p in panels])[0]
    for ax, panel in zip(axes, panels):
        width = 0.8 / len(panel["bars"])
        for index, (label, heights) in enumerate(panel["bars"].items()):
            positions = [g + (index - (len(panel["bars"]) - 1) / 2) * width
                         for g in range(len(panel["groups"]))]
            bars = ax.bar(positions, heights, width=width, label=label, color=f"C{index}")
            ax.bar_label(bars, fmt="%.3g", fontsize="x-small")
        ax.set_xticks(range(len(panel["groups"])), panel["groups"])
        ax.tick_params(axis="x", labelsize="small")
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel["title"], fontsize="medium")
        ax.legend(fontsize="small")
    return fig


def plot_accuracy_by_epoch(runs):
    """Test accuracy against epoch, one line per run (its lines with
    `test_accuracy`, each of which must also have `epoch`)."""
    return _line_plot(runs, lambda run: [r["epoch"] for r in run.records if "test_accuracy" in r],
                      "test_accuracy", "epoch", "test accuracy", "test accuracy against epoch")


def plot_accuracy_by_wall(runs):
    """Test accuracy against wall time, one line per run."""
    walls = [wall_times(run.records) for run in runs]
    divisor, unit = time_unit(max((t[-1] for t in walls if t), default=0.0))
    return _line_plot(runs, _against_wall("test_accuracy", divisor), "test_accuracy",
                      f"wall time ({unit})", "test accuracy", "test accuracy against wall time")


def save_figure(fig, out_dir, name):
    """Write `fig` as out_dir/name (PNG) -> the path."""
    return _save(fig, out_dir, name)


def write_report(runs, out_dir):
    """Draws every plot the runs allow into out_dir -> the paths written, in order."""
    _figure_class()  # without matplotlib: one line, before anything is written
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create {out_dir}: {e.strerror or e}") from None
    walls = [wall_times(run.records) for run in runs]
    longest = max((t[-1] for t in walls if t), default=0.0)
    divisor, unit = time_unit(longest if math.isfinite(longest) else 0.0)
    timed = any(t is not None for t in walls)

    plots = [("loss_iteration.png", lambda: _line_plot(
        runs, _against_iteration("loss"), "loss", "iteration", "training loss",
        "loss against iteration", smooth=True))]
    if timed:
        plots.append(("loss_wall.png", lambda: _line_plot(
            runs, _against_wall("loss", divisor), "loss", f"wall time ({unit})",
            "training loss", "loss against wall time", smooth=True)))
    if any(run.has("lr") for run in runs):
        plots.append(("lr_iteration.png", lambda: _line_plot(
            [run for run in runs if run.has("lr")], _against_iteration("lr"), "lr",
            "iteration", "learning rate", "learning rate against iteration")))
    accuracy_runs = [run for run in runs if run.has("test_accuracy")]
    if accuracy_runs:
        plots.append(("accuracy_iteration.png", lambda: _line_plot(
            accuracy_runs, _against_iteration("test_accuracy"), "test_accuracy",
            "iteration", "test accuracy", "test accuracy against iteration")))
        if timed:
            plots.append(("accuracy_wall.png", lambda: _line_plot(
                accuracy_runs, _against_wall("test_accuracy", divisor), "test_accuracy",
                f"wall time ({unit})", "test accuracy", "test accuracy against wall time")))
    if any(time_split(run.records) for run in runs):
        plots.append(("time_split.png", lambda: plot_time_split(runs)))

    written = []
    for name, draw in plots:
        written.append(_save(draw(), out_dir, name))
    return written


# ----- command line ---------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Plot the per-iteration metrics files of the trainers (--metrics FILE): "
                    "loss, learning rate and test accuracy against iteration and wall time, "
                    "and the split of an iteration's time. One run per file.")
    p.add_argument("metrics", nargs="+", metavar="METRICS.jsonl",
                   help="metrics file written by a trainer's --metrics")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        runs = load_runs(args.metrics)
        for path in write_report(runs, args.out):
            print(f"wrote {path}", flush=True)
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
