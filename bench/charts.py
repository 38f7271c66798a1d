"""bench.py figures, the drawing: the PNGs and the page of README.md, from the numbers
bench/figures.py measured (plain dicts and lists, described at each function) and
the --accuracy runs it read. Nothing here measures or runs anything.

Each draw_* function saves its chart(s) through `save` (a Drawing's), adds its
section to `page` and prints its tables; write_page puts the machine and the
commands in front of the sections and writes README.md.
"""
import os
import shlex
import sys

# The 2016 report's per-layer profile, seconds per iteration (forward, backward).
PAPER_PROFILE = {"conv": (4.25, 10.41), "relu": (0.50, 0.46), "pool": (2.16, 3.05),
                 "fc": (0.16, 0.38)}
PNGS = {"images": "iteration_vs_images.png", "batches": "iteration_vs_batches.png",
        "profile": "layer_profile.png", "predict": "prediction_vs_images.png",
        "epoch": "accuracy_epoch.png", "wall": "accuracy_wall.png"}


def check_can_draw():
    """A one-line exit when the charts cannot be drawn (no matplotlib), before measuring."""
    from spark import report
    try:
        report._figure_class()
    except report.ReportError as e:
        sys.exit(f"bench.py: error: {e}")


class Drawing:
    """Saves the charts into the folder `out`; `written` lists the files, in order."""

    def __init__(self, out):
        self.out, self.written = out, []

    def save(self, fig, name):
        from spark import report
        self.written.append(report.save_figure(fig, self.out, name))
        print(f"wrote {self.written[-1]}", flush=True)


# ----- tables -------------------------------------------------------------------

def table(header, rows):
    """(Markdown lines, text lines) of one table."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    markdown = ["| " + " | ".join(row) + " |" for row in cells]
    markdown.insert(1, "|" + "|".join("---" for _ in header) + "|")
    text = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                      enumerate(zip(row, widths))) for row in cells]
    return markdown, text


class Page:
    """The Markdown page, built as the figures are; tables are also printed."""

    def __init__(self):
        self.lines = []

    def add(self, *lines):
        self.lines.extend(lines)

    def table(self, title, header, rows):
        markdown, text = table(header, rows)
        print(f"\n{title}")
        print("\n".join(text), flush=True)
        self.add("", f"{title[0].upper()}{title[1:]}:", "", *markdown, "")

    def chart(self, heading, png, alt, sentences):
        self.add("", f"## {heading}", "", f"![{alt}]({png})", "", sentences)

    def write(self, path):
        with open(path, "w") as f:
            f.write("\n".join(self.lines).rstrip() + "\n")


# ----- the figures -------------------------------------------------------------------

def draw_iterations_by_images(numbers, page, save):
    """numbers: sizes [N], series {"local" or "Spark MODE": [seconds per iteration at
    each N]}, batches B, master, iterations I."""
    from spark import report
    sizes, series = numbers["sizes"], numbers["series"]
    batches, master, iterations = numbers["batches"], numbers["master"], numbers["iterations"]
    save(report.plot_series([
        dict(series={k: (sizes, v) for k, v in series.items()}, xlabel="images N",
             ylabel="seconds per iteration", title=f"iteration time, B = {batches}"),
        dict(series={k: (sizes, [1000 * t / n for t, n in zip(v, sizes)])
                     for k, v in series.items()},
             xlabel="images N", ylabel="ms per image", title="the same per image")]),
        PNGS["images"])
    n, last = sizes[-1], {k: v[-1] for k, v in series.items()}
    spark_best = min((k for k in last if k != "local"), key=last.get, default=None)
    summary = (f"At N = {n:,} the local trainer takes {last['local']:.2f} s per iteration"
               + (f"; the fastest Spark exchange, {spark_best[6:]}, {last[spark_best]:.2f} s "
                  f"({last[spark_best] / last['local']:.1f}x local)" if spark_best else "")
               + ". ")
    page.chart("1. Iteration time against the number of images",
               PNGS["images"], "iteration time against N",
               "One full-batch iteration (forward and backward over all N images, one update) "
               f"of the local trainer and of `locality_train.py --exchange MODE` with B = "
               f"{batches} batches on `{master}`; median of iterations 2..I "
               f"(I = {iterations}). The right panel divides by N: a Spark iteration has "
               "a fixed cost (two jobs, broadcasts) that small N does not amortise. " + summary
               + "The 2016 report: Spark + HDFS at least 3x the naive time, Spark + Redis at "
               "most half of it with 96 cores against one process.")
    page.table(f"iteration time against N (seconds; B={batches}, I={iterations})",
               ["N"] + list(series), [[f"{n:,}"] + [f"{v[i]:.3f}" for v in series.values()]
                                      for i, n in enumerate(sizes)])


def draw_iterations_by_batches(numbers, page, save):
    """numbers: counts [B], images N, series {"Spark MODE": [seconds per iteration at
    each B]}, master, iterations I."""
    from spark import report
    counts, n, series = numbers["counts"], numbers["images"], numbers["series"]
    master, iterations = numbers["master"], numbers["iterations"]
    save(report.plot_series([dict(series={k: (counts, v) for k, v in series.items()},
                                  xlabel="batches B (Spark tasks per stage)",
                                  ylabel="seconds per iteration",
                                  title=f"iteration time, N = {n:,}")]), PNGS["batches"])
    page.chart("2. Iteration time against the number of batches",
               PNGS["batches"], "iteration time against B",
               f"The Spark exchanges at N = {n:,} with B batches (one task per batch in each "
               f"stage) on `{master}`, median of iterations 2..{iterations}. B = 1 "
               "runs one task per stage and leaves the master's other cores idle; batches "
               "beyond its cores add tasks, store keys and files but no compute. Fastest B: "
               + ", ".join(f"{k[6:]} B = {counts[v.index(min(v))]} ({min(v):.2f} s)"
                           for k, v in series.items()) + ".")
    page.table(f"iteration time against B (seconds; N={n}, I={iterations})",
               ["B"] + list(series), [[b] + [f"{v[i]:.3f}" for v in series.values()]
                                      for i, b in enumerate(counts)])


def draw_profile(numbers, page, save):
    """numbers: images (how many were profiled), profiles {title: [(layer, forward us,
    backward us)]}, the layer-by-layer one first, the fused one last."""
    from spark import report
    profiles = numbers["profiles"]
    panels = [dict(groups=[name for name, _, _ in rows],
                   bars={"forward": [f for _, f, _ in rows], "backward": [b for _, _, b in rows]},
                   ylabel="microseconds per image (one thread)", title=title)
              for title, rows in profiles.items()]
    save(report.plot_grouped_bars(panels), PNGS["profile"])
    unfused = next(iter(profiles.values()))
    total = sum(f + b for _, f, b in unfused)
    paper_total = sum(f + b for f, b in PAPER_PROFILE.values())
    page.chart("3. Per-layer profile of the local network", PNGS["profile"],
               "forward and backward time per layer",
               f"Each layer's forward and backward called directly on {numbers['images']:,} "
               "training images in chunks of 32 (as the local trainer does), one thread, one BLAS "
               "thread: CPU time per image, median of 3 passes. Left: conv, ReLU and pool "
               "each in its own pass, as the 2016 code ran them; right: as this network runs "
               "(one fused conv + ReLU + 2x2 pool pass). The share columns compare the "
               "layer-by-layer split with the 2016 report's (seconds per iteration, naive). "
               f"Forward + backward: {total:.0f} us per image in separate passes, "
               f"{sum(f + b for _, f, b in list(profiles.values())[-1]):.0f} us as run.")
    rows = []
    for title, layers in profiles.items():
        for name, f, b in layers:
            paper = PAPER_PROFILE.get(name)
            rows.append([title.split(" (")[0], name, f"{f:.1f}", f"{b:.1f}",
                         f"{(f + b) / total:.0%}" if title == next(iter(profiles)) else "",
                         f"{sum(paper) / paper_total:.0%}" if paper and
                         title == next(iter(profiles)) else ""])
        rows.append([title.split(" (")[0], "total", f"{sum(f for _, f, _ in layers):.1f}",
                     f"{sum(b for _, _, b in layers):.1f}", "", ""])
    page.table("per-layer profile (microseconds per image, one thread)",
               ["pass", "layer", "forward us", "backward us", "share here", "share 2016"], rows)


def draw_prediction(numbers, page, save):
    """numbers: sizes [N], local [seconds at each N], threads (of the local runs), mode
    (the Spark --exchange, or None for local only), spark_sizes [N] (those the test
    split holds) and spark [seconds at each], batches B, master, iterations I."""
    from spark import report
    sizes, local, mode = numbers["sizes"], numbers["local"], numbers["mode"]
    batches, master, iterations = numbers["batches"], numbers["master"], numbers["iterations"]
    series = {f"local ({numbers['threads']} threads)": (sizes, local)}
    spark_sizes = numbers["spark_sizes"]
    if mode:
        series[f"Spark, B = {batches}"] = (spark_sizes, numbers["spark"])
    save(report.plot_series([
        dict(series=series, xlabel="images N", ylabel="seconds", title="prediction time"),
        dict(series={k: (xs, [x / t for x, t in zip(xs, ys)]) for k, (xs, ys) in series.items()},
             xlabel="images N", ylabel="images per second", title="prediction rate")]),
        PNGS["predict"])
    page.chart("4. Prediction time against the number of images", PNGS["predict"],
               "prediction time against N",
               "Local: `CNN.predict_scores` on N uint8 training images, as `naive_test.py` "
               f"predicts (median of {iterations}). Spark: `locality_test.py N 0 "
               f"{batches} --exchange {mode}` on `{master}`, timed from its first Spark "
               "job's submission to its last job's end (Spark's event log), so the JVM, data "
               "and checkpoint loading are left out, but starting Spark's Python workers "
               "and loading the egg in them is in (the fixed part seen at small N); "
               "prediction stores nothing, so every exchange runs the same stage. The 2016 "
               "report: Redis < HDFS < naive."
               + (f" At N = {spark_sizes[-1]:,}: local "
                  f"{local[sizes.index(spark_sizes[-1])]:.2f} s, "
                  f"Spark {series[f'Spark, B = {batches}'][1][-1]:.2f} s."
                  if spark_sizes else "")
               if mode else "Local only (no Spark mode was asked for).")
    header = ["N", "local s"] + ([f"Spark s (B={batches})"] if mode else [])
    rows = []
    for i, n in enumerate(sizes):
        row = [f"{n:,}", f"{local[i]:.3f}"]
        if mode:
            row.append(f"{series[f'Spark, B = {batches}'][1][spark_sizes.index(n)]:.3f}"
                       if n in spark_sizes else "-")
        rows.append(row)
    page.table("prediction time against N (seconds)", header, rows)


def draw_no_accuracy(page):
    """The accuracy section of a run given no --accuracy file: a note, no chart."""
    print("\nnote: no --accuracy METRICS.jsonl[,LABEL]: the accuracy chart is skipped",
          flush=True)
    page.add("", "## 5. Test accuracy of the training recipe", "",
             "Not drawn: the run was given no `--accuracy` metrics file.")


def draw_accuracy(runs, page, save):
    """runs: the spark.report Runs of the --accuracy files (their records hold
    test_accuracy, epoch and wall_s)."""
    from spark import report
    save(report.plot_accuracy_by_epoch(runs), PNGS["epoch"])
    save(report.plot_accuracy_by_wall(runs), PNGS["wall"])
    page.add("", "## 5. Test accuracy of the training recipe", "",
             f"![test accuracy against epoch]({PNGS['epoch']})",
             f"![test accuracy against wall time]({PNGS['wall']})", "",
             "Test accuracy (10,000 test images unless the run said otherwise) at each "
             "evaluation of the runs whose `--metrics` files were given with `--accuracy`, "
             "against epoch and against training wall time (`wall_s`). These runs were not "
             "made by this bench (the 40-epoch recipe takes too long for it), e.g. `python3 "
             "naive_train.py 50000 15640 --minibatch 128 --lr 0.02 --augment --schedule "
             "cosine --warmup 391 --label-smoothing 0.1 --reg 1e-4 --nesterov --eval-every "
             "391 --metrics FILE`; they ran on this machine under whatever load it had then.")
    rows = []
    for run in runs:
        evaluated = [r for r in run.records if "test_accuracy" in r]
        best = max(evaluated, key=lambda r: r["test_accuracy"])
        walls = dict(zip((r["iteration"] for r in run.records), report.wall_times(run.records)))
        rows.append([run.label, run.path, len(evaluated),
                     f"{evaluated[0]['test_accuracy']:.2%} (epoch {evaluated[0]['epoch']:.1f})",
                     f"{best['test_accuracy']:.2%} (epoch {best['epoch']:.1f})",
                     f"{evaluated[-1]['test_accuracy']:.2%} (epoch {evaluated[-1]['epoch']:.1f})",
                     f"{walls[evaluated[-1]['iteration']] / 60:.1f} min"])
    page.table("test accuracy of the --accuracy runs",
               ["run", "file", "evaluations", "first", "best", "last", "wall time at last"],
               rows)
    by_epoch = {}
    for index, run in enumerate(runs):
        for r in run.records:
            if "test_accuracy" in r:
                by_epoch.setdefault(round(r["epoch"]), [""] * len(runs))[index] = \
                    f"{r['test_accuracy']:.2%}"
    epochs = sorted(by_epoch)
    shown = [e for e in epochs if e in (epochs[0], epochs[-1]) or e % 5 == 0]
    page.table("test accuracy by epoch (the first, every fifth and the last)",
               ["epoch"] + [run.label for run in runs], [[e] + by_epoch[e] for e in shown])


# ----- the page ----------------------------------------------------------------------

def write_page(out, run, page):
    """README.md in the folder `out`: the machine and the commands, then the sections of
    `page`. run: when (UTC, text), minutes, data_dir (or None), machine [(what, value)],
    load_start and load_end ("1 / 5 / 15 min" averages), cores, argv (of bench.py).
    -> the path written."""
    head = Page()
    head.add("# Figures: the 2016 report's charts, re-measured",
             "",
             f"Generated by `bench/bench.py figures` on {run['when']} in {run['minutes']:.0f} "
             "minutes; the PNGs beside this page and every number on it come from that run "
             "(the accuracy curves from the metrics files it was given). The 2016 report's "
             "results were charts of time per iteration; these are the same charts for this "
             "implementation on this machine. Data: "
             f"`{run['data_dir'] or 'data/cifar-10-batches-py'}`.",
             "", "## Machine", "")
    load_start, load_end = run["load_start"], run["load_end"]
    head.add(*table(["what", "value"], run["machine"] + [
        ("load average (1 / 5 / 15 min) at start", load_start),
        ("load average at end", load_end)])[0])
    loads = [float(load_start.split(" / ")[0]), float(load_end.split(" / ")[0])]
    head.add("", ("**Measured under load**: the load average was above the core count "
                  f"({run['cores']}) at the start or the end, so other work shared the cores "
                  "and the absolute times are higher (and noisier) than on an idle machine; "
                  "compare the lines of a chart with each other." if max(loads) > run["cores"]
                  else "The load average stayed at or below the core count: the machine was "
                  "not shared with other heavy work."))
    command = shlex.join(["python3", "bench/bench.py"] + list(run["argv"]))
    head.add("", "## Commands", "", "```",
             "bash scripts/install.sh                     # dist/*.egg, which spark-submit ships",
             'eval "$(bash scripts/services.sh start)"    '
             '# Redis + HDFS for the hdfs and redis modes',
             command, "```")
    head.lines.extend(page.lines)
    readme = os.path.join(out, "README.md")
    head.write(readme)
    return readme
