"""bench.py figures: the 2016 report's charts, re-measured on this machine.

    python3 bench/bench.py figures --out DIR [--data-dir D] [--sizes 1000,2000,5000,10000]
        [--batches 4] [--batch-counts 1,2,4,8] [--batch-images 2000] [--iterations 3]
        [--modes hdfs,redis,spark,none] [--profile-images 256] [--egg PATH]
        [--accuracy METRICS.jsonl[,LABEL] ...]

Writes into DIR one PNG per chart and README.md, a page with the machine, the
command, every chart and its numbers (also printed):

1. iteration_vs_images.png: seconds per iteration against N, the local trainer
   and each Spark exchange at B batches (medians of iterations 2..I);
2. iteration_vs_batches.png: the Spark exchanges against B at N = --batch-images;
3. layer_profile.png: forward and backward time per image of every layer,
   called directly on a batch of real images (one thread), layer by layer as
   the 2016 code ran them and as this network runs them (conv, ReLU and pool fused);
4. prediction_vs_images.png: prediction time against N, local (CNN.predict_scores)
   and Spark (locality_test.py: the span of its Spark jobs, from the event log);
5. accuracy_epoch.png, accuracy_wall.png: test accuracy against epoch and wall
   time, read from the --accuracy metrics files (skipped without them).

Every training run is a fresh process of a real entry script with --metrics
(common.run_trainer); the Spark ones need the egg and the services of
scripts/services.sh.
"""
import datetime
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import common

MODES = ("hdfs", "redis", "spark", "none")
# The 2016 report's per-layer profile, seconds per iteration (forward, backward).
PAPER_PROFILE = {"conv": (4.25, 10.41), "relu": (0.50, 0.46), "pool": (2.16, 3.05),
                 "fc": (0.16, 0.38)}
PNGS = {"images": "iteration_vs_images.png", "batches": "iteration_vs_batches.png",
        "profile": "layer_profile.png", "predict": "prediction_vs_images.png",
        "epoch": "accuracy_epoch.png", "wall": "accuracy_wall.png"}


def positive_ints(text):
    """'1000,2000' -> [1000, 2000] (each at least 1)."""
    try:
        values = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{text!r} is not a comma-separated list of whole numbers >= 1")
    return values


# ----- the machine ------------------------------------------------------------

def command_output(command):
    """stdout (else stderr) of a command, stripped; '' if it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip()


def machine_description():
    """[(what, value)] of this machine and the software the figures ran on."""
    cpu = {}
    for line in command_output(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        cpu[key.strip()] = value.strip()
    memory = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    import numpy
    import pyspark
    from threadpoolctl import threadpool_info
    blas = ", ".join(sorted({f"{i.get('internal_api')} {i.get('version')}"
                             for i in threadpool_info() if i.get("user_api") == "blas"}))
    java = command_output(["java", "-version"]).splitlines()
    commit = command_output(["git", "-C", common.ROOT, "describe", "--always", "--dirty"])
    return [
        ("cores (nproc)", command_output(["nproc"])),
        ("CPU (lscpu)", f"{cpu.get('Model name', '?')}; {cpu.get('CPU(s)', '?')} CPU(s), "
                        f"{cpu.get('Thread(s) per core', '?')} thread(s) per core, "
                        f"{cpu.get('Core(s) per socket', '?')} core(s) per socket"
                        + (f", L2 {cpu['L2 cache']}" if cpu.get("L2 cache") else "")),
        ("memory", memory),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_version()}, NumPy {numpy.__version__}"
                   + (f", BLAS {blas}" if blas else "")),
        ("Java", java[0] if java else "not found"),
        ("Spark", f"{pyspark.__version__} (pyspark), master local[2] unless said otherwise"),
        ("commit", commit or "?"),
    ]


def load_average():
    return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())


# ----- measuring ----------------------------------------------------------------

class TrainingTimes:
    """Median iteration times of the trainers, measured once per (trainer, N, B)."""

    def __init__(self, args):
        self.args, self.seconds = args, {}

    def get(self, mode, images, batches=None):
        """mode "local" or an --exchange; -> seconds per iteration (iterations 2..I)."""
        key = (mode, images, batches)
        if key not in self.seconds:
            if mode == "local":
                records = common.run_trainer("naive", images, self.args.iterations, self.args)
            else:
                records = common.run_trainer("locality", images, self.args.iterations, self.args,
                                            batches, extra=("--exchange", mode))
            self.seconds[key] = common.steady_iteration_time(records)
            where = "local" if mode == "local" else f"Spark --exchange {mode}, B={batches}"
            print(f"  {where}, N={images}: {self.seconds[key]:.3f} s per iteration", flush=True)
        return self.seconds[key]


def unfuse(layers):
    """Undo spark.conv.fuse_conv_relu_pool: conv, ReLU and pool each do their own pass."""
    for layer in layers:
        if layer.kind == "conv":
            layer.pool = None
        elif layer.kind in ("relu", "pool"):
            layer.absorbed_by = None
    return layers


def profile_network(net, x, labels, chunk, repeats):
    """Each layer's forward and backward, called directly chunk by chunk on x
    (n, H, W, C) -> [(layer, forward us per image, backward us per image)], the
    medians over `repeats` passes; layers that pass data through are left out."""
    from spark.loss import softmax_loss
    n = len(x)
    passes = []
    for _ in range(repeats):
        forward = [0.0] * len(net.layers)
        backward = [0.0] * len(net.layers)
        for start in range(0, n, chunk):
            out, caches = x[start:start + chunk], []
            for i, layer in enumerate(net.layers):
                started = time.perf_counter()
                out, cache = layer.forward(out)
                forward[i] += time.perf_counter() - started
                caches.append(cache)
            _, dout = softmax_loss(out, labels[start:start + chunk], normalizer=n)
            for i in reversed(range(len(net.layers))):
                started = time.perf_counter()
                dout, _ = net.layers[i].backward(dout, caches[i])
                backward[i] += time.perf_counter() - started
        passes.append((forward, backward))
    rows = []
    for i, layer in enumerate(net.layers):
        if getattr(layer, "absorbed_by", None):
            continue
        name = layer.kind + (" + relu + pool" if getattr(layer, "pool", None) else "")
        rows.append((name, statistics.median(f[i] for f, _ in passes) / n * 1e6,
                     statistics.median(b[i] for _, b in passes) / n * 1e6))
    return rows


def layer_profile(images, labels, repeats):
    """{"layer by layer": rows, "as run (fused)": rows} of profile_network, one
    thread and one BLAS thread, chunks of the trainer's size."""
    from threadpoolctl import threadpool_limits
    from spark.cnn import CNN
    from spark.data.preprocess import normalize_images
    x = normalize_images(images)                                  # (n, H, W, C) float32
    fused = CNN(threads=1)
    unfused = CNN(threads=1)
    unfuse(unfused.layers)
    with threadpool_limits(limits=1, user_api="blas"):
        profile_network(fused, x[:fused.chunk], labels, fused.chunk, 1)      # warm-up
        return {"separate passes (as in 2016)":
                profile_network(unfused, x, labels, unfused.chunk, repeats),
                "as run (conv+ReLU+pool fused)":
                profile_network(fused, x, labels, fused.chunk, repeats)}


def spark_job_span(log_dir):
    """Seconds from the first Spark job's submission to the last one's end, read
    from the event logs in log_dir."""
    starts, ends = [], []
    for path in glob.glob(os.path.join(log_dir, "**"), recursive=True):
        if not os.path.isfile(path):        # Spark 4 writes eventlog_v2_<app>/events_<n>_<app>
            continue
        with open(path) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("Event") == "SparkListenerJobStart":
                    starts.append(event["Submission Time"])
                elif event.get("Event") == "SparkListenerJobEnd":
                    ends.append(event["Completion Time"])
    if not starts or not ends:
        sys.exit(f"bench.py: error: no Spark job in the event log of {log_dir}")
    return (max(ends) - min(starts)) / 1000.0


def spark_predict_seconds(args, images, mode, params_dir):
    """locality_test.py on the first `images` test images with B = args.batches:
    the span of its Spark jobs (what runs after Spark, the data and the
    checkpoint are loaded)."""
    with tempfile.TemporaryDirectory() as logs:
        common.run_script("locality_test.py",
                         [images, 0, args.batches, "--exchange", mode, "--params-dir", params_dir],
                         args, distributed=True,
                         spark_conf=("spark.eventLog.enabled=true",
                                     f"spark.eventLog.dir=file://{logs}",
                                     "spark.eventLog.compress=false"))
        return spark_job_span(logs)


def count_test_images(args):
    from spark.data.cifar10 import load_cifar10
    folder = args.data_dir or os.path.join(common.ROOT, "data", "cifar-10-batches-py")
    return len(load_cifar10(folder, "test").labels)


# ----- the accuracy files -----------------------------------------------------------

def accuracy_runs(specs):
    """--accuracy METRICS.jsonl[,LABEL] values -> spark.report Runs; one-line exit on bad input."""
    from spark import report
    runs = []
    for spec in specs:
        path, _, label = spec.partition(",")
        try:
            records = report.read_metrics(path)
        except report.ReportError as e:
            sys.exit(f"bench.py: error: --accuracy: {e}")
        evaluated = [r for r in records if "test_accuracy" in r]
        if not evaluated:
            sys.exit(f"bench.py: error: --accuracy: {path} has no line with test_accuracy "
                     "(train with --eval-every K)")
        if any("epoch" not in r for r in evaluated) or report.wall_times(records) is None:
            sys.exit(f"bench.py: error: --accuracy: {path}: the lines with test_accuracy need "
                     "epoch and wall_s (metrics of a current trainer)")
        runs.append(report.Run(label or os.path.basename(path), path, records))
    return runs


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

def figure_iterations_by_images(args, page, times, modes, save):
    from spark import report
    sizes = args.sizes
    series = {"local": [times.get("local", n) for n in sizes]}
    for mode in modes:
        series[f"Spark {mode}"] = [times.get(mode, n, args.batches) for n in sizes]
    save(report.plot_series([
        dict(series={k: (sizes, v) for k, v in series.items()}, xlabel="images N",
             ylabel="seconds per iteration", title=f"iteration time, B = {args.batches}"),
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
               f"{args.batches} batches on `{args.master}`; median of iterations 2..I "
               f"(I = {args.iterations}). The right panel divides by N: a Spark iteration has "
               "a fixed cost (two jobs, broadcasts) that small N does not amortise. " + summary
               + "The 2016 report: Spark + HDFS at least 3x the naive time, Spark + Redis at "
               "most half of it with 96 cores against one process.")
    page.table(f"iteration time against N (seconds; B={args.batches}, I={args.iterations})",
               ["N"] + list(series), [[f"{n:,}"] + [f"{v[i]:.3f}" for v in series.values()]
                                      for i, n in enumerate(sizes)])


def figure_iterations_by_batches(args, page, times, modes, save):
    from spark import report
    counts, n = args.batch_counts, args.batch_images
    series = {f"Spark {mode}": [times.get(mode, n, b) for b in counts] for mode in modes}
    save(report.plot_series([dict(series={k: (counts, v) for k, v in series.items()},
                                  xlabel="batches B (Spark tasks per stage)",
                                  ylabel="seconds per iteration",
                                  title=f"iteration time, N = {n:,}")]), PNGS["batches"])
    page.chart("2. Iteration time against the number of batches",
               PNGS["batches"], "iteration time against B",
               f"The Spark exchanges at N = {n:,} with B batches (one task per batch in each "
               f"stage) on `{args.master}`, median of iterations 2..{args.iterations}. B = 1 "
               "runs one task per stage and leaves the master's other cores idle; batches "
               "beyond its cores add tasks, store keys and files but no compute. Fastest B: "
               + ", ".join(f"{k[6:]} B = {counts[v.index(min(v))]} ({min(v):.2f} s)"
                           for k, v in series.items()) + ".")
    page.table(f"iteration time against B (seconds; N={n}, I={args.iterations})",
               ["B"] + list(series), [[b] + [f"{v[i]:.3f}" for v in series.values()]
                                      for i, b in enumerate(counts)])


def figure_profile(args, page, save):
    from spark import report
    images, labels = common.load_data(args, args.profile_images)
    profiles = layer_profile(images, labels, repeats=3)
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
               f"Each layer's forward and backward called directly on {len(images):,} training "
               "images in chunks of 32 (as the local trainer does), one thread, one BLAS "
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


def figure_prediction(args, page, modes, save):
    from spark import report
    from spark.cnn import CNN
    sizes = args.sizes
    images, _ = common.load_data(args, max(sizes))
    local = []
    for n in sizes:
        rate, threads = common.local_predict_rate(images[:n], args.iterations)
        local.append(n / rate)
        print(f"  local prediction, N={n}: {n / rate:.3f} s ({threads} threads)", flush=True)
    series = {f"local ({threads} threads)": (sizes, local)}
    mode = "redis" if "redis" in modes else (modes[0] if modes else None)
    spark_sizes = []
    if mode:
        available = count_test_images(args)
        spark_sizes = [n for n in sizes if n <= available]
        with tempfile.TemporaryDirectory() as params:
            CNN().save(os.path.join(params, "locality.npz"))
            spark = []
            for n in spark_sizes:
                spark.append(spark_predict_seconds(args, n, mode, params))
                print(f"  Spark prediction (locality_test.py --exchange {mode}), N={n}: "
                      f"{spark[-1]:.3f} s", flush=True)
        series[f"Spark, B = {args.batches}"] = (spark_sizes, spark)
    save(report.plot_series([
        dict(series=series, xlabel="images N", ylabel="seconds", title="prediction time"),
        dict(series={k: (xs, [x / t for x, t in zip(xs, ys)]) for k, (xs, ys) in series.items()},
             xlabel="images N", ylabel="images per second", title="prediction rate")]),
        PNGS["predict"])
    page.chart("4. Prediction time against the number of images", PNGS["predict"],
               "prediction time against N",
               "Local: `CNN.predict_scores` on N uint8 training images, as `naive_test.py` "
               f"predicts (median of {args.iterations}). Spark: `locality_test.py N 0 "
               f"{args.batches} --exchange {mode}` on `{args.master}`, timed from its first Spark "
               "job's submission to its last job's end (Spark's event log), so the JVM, data "
               "and checkpoint loading are left out, but starting Spark's Python workers "
               "and loading the egg in them is in (the fixed part seen at small N); "
               "prediction stores nothing, so every exchange runs the same stage. The 2016 "
               "report: Redis < HDFS < naive."
               + (f" At N = {spark_sizes[-1]:,}: local {local[sizes.index(spark_sizes[-1])]:.2f} s, "
                  f"Spark {series[f'Spark, B = {args.batches}'][1][-1]:.2f} s."
                  if spark_sizes else "")
               if mode else "Local only (no Spark mode was asked for).")
    header = ["N", "local s"] + ([f"Spark s (B={args.batches})"] if mode else [])
    rows = []
    for i, n in enumerate(sizes):
        row = [f"{n:,}", f"{local[i]:.3f}"]
        if mode:
            row.append(f"{series[f'Spark, B = {args.batches}'][1][spark_sizes.index(n)]:.3f}"
                       if n in spark_sizes else "-")
        rows.append(row)
    page.table("prediction time against N (seconds)", header, rows)


def figure_accuracy(args, page, save):
    from spark import report
    if not args.accuracy:
        print("\nnote: no --accuracy METRICS.jsonl[,LABEL]: the accuracy chart is skipped",
              flush=True)
        page.add("", "## 5. Test accuracy of the training recipe", "",
                 "Not drawn: the run was given no `--accuracy` metrics file.")
        return
    runs = accuracy_runs(args.accuracy)
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


# ----- the run ---------------------------------------------------------------------

def make_figures(args, argv):
    """Measure, draw the PNGs into args.out and write args.out/README.md."""
    if common.ROOT not in sys.path:
        sys.path.insert(0, common.ROOT)
    from spark import report
    try:
        for name in ("sizes", "batch_counts"):
            setattr(args, name, positive_ints(getattr(args, name)))
    except ValueError as e:
        sys.exit(f"bench.py: error: {e}")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"bench.py: error: unknown --modes {','.join(unknown)} (use {','.join(MODES)})")
    if args.batches > min(args.sizes) or max(args.batch_counts) > args.batch_images:
        sys.exit("bench.py: error: more batches than images (B must be at most N)")
    if args.accuracy:
        accuracy_runs(args.accuracy)            # bad files refused before hours of measuring
    try:
        report._figure_class()
    except report.ReportError as e:
        sys.exit(f"bench.py: error: {e}")
    os.makedirs(args.out, exist_ok=True)
    if modes:
        common.egg(args.egg)                     # no egg: say so before measuring anything

    started, load_start = time.time(), load_average()
    machine = machine_description()
    print(f"figures into {args.out}; load average (1/5/15 min) at start {load_start}", flush=True)
    page = Page()
    written = []

    def save(fig, name):
        written.append(report.save_figure(fig, args.out, name))
        print(f"wrote {written[-1]}", flush=True)

    times = TrainingTimes(args)
    print("\n1. iteration time against N", flush=True)
    figure_iterations_by_images(args, page, times, modes, save)
    if modes:
        print("\n2. iteration time against B", flush=True)
        figure_iterations_by_batches(args, page, times, modes, save)
    print("\n3. per-layer profile", flush=True)
    figure_profile(args, page, save)
    print("\n4. prediction time against N", flush=True)
    figure_prediction(args, page, modes, save)
    figure_accuracy(args, page, save)
    load_end, minutes = load_average(), (time.time() - started) / 60

    head = Page()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head.add("# Figures: the 2016 report's charts, re-measured",
             "",
             f"Generated by `bench/bench.py figures` on {when} in {minutes:.0f} minutes; the "
             "PNGs beside this page and every number on it come from that run (the "
             "accuracy curves from the metrics files it was given). The 2016 report's "
             "results were charts of time per iteration; these are the same charts for this "
             "implementation on this machine. Data: "
             f"`{args.data_dir or 'data/cifar-10-batches-py'}`.",
             "", "## Machine", "")
    cores = os.cpu_count() or 1
    head.add(*table(["what", "value"], machine + [
        ("load average (1 / 5 / 15 min) at start", load_start),
        ("load average at end", load_end)])[0])
    loads = [float(load_start.split(" / ")[0]), float(load_end.split(" / ")[0])]
    head.add("", ("**Measured under load**: the load average was above the core count "
                  f"({cores}) at the start or the end, so other work shared the cores and the "
                  "absolute times are higher (and noisier) than on an idle machine; compare "
                  "the lines of a chart with each other." if max(loads) > cores else
                  "The load average stayed at or below the core count: the machine was "
                  "not shared with other heavy work."))
    command = shlex.join(["python3", "bench/bench.py"] + list(argv))
    head.add("", "## Commands", "", "```",
             "bash scripts/install.sh                     # dist/*.egg, which spark-submit ships",
             'eval "$(bash scripts/services.sh start)"    # Redis + HDFS for the hdfs and redis modes',
             command, "```")
    head.lines.extend(page.lines)
    readme = os.path.join(args.out, "README.md")
    head.write(readme)
    print(f"\nload average at end {load_end}; {minutes:.1f} minutes")
    print(f"wrote {readme}")
    return written + [readme]
