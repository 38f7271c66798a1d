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

This module measures: each figure's numbers (and the machine's description)
go to bench/charts.py, which draws the PNGs and writes the page from them.
"""
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import charts
import common

MODES = ("hdfs", "redis", "spark", "none")


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


def profile_network(layers, x, labels, chunk, repeats):
    """Each layer's forward and backward, called directly chunk by chunk on x
    (n, H, W, C) -> [(layer, forward us per image, backward us per image)], the
    medians over `repeats` passes; a ConvReluPool is one "conv + relu + pool" row."""
    from spark.loss import softmax_loss
    n = len(x)
    passes = []
    for _ in range(repeats):
        forward = [0.0] * len(layers)
        backward = [0.0] * len(layers)
        for start in range(0, n, chunk):
            out, caches = x[start:start + chunk], []
            for i, layer in enumerate(layers):
                started = time.perf_counter()
                out, cache = layer.forward(out)
                forward[i] += time.perf_counter() - started
                caches.append(cache)
            _, dout = softmax_loss(out, labels[start:start + chunk], normalizer=n)
            for i in reversed(range(len(layers))):
                started = time.perf_counter()
                dout, _ = layers[i].backward(dout, caches[i])
                backward[i] += time.perf_counter() - started
        passes.append((forward, backward))
    rows = []
    for i, layer in enumerate(layers):
        name = " + ".join(config["type"] for config in layer.configs())
        rows.append((name, statistics.median(f[i] for f, _ in passes) / n * 1e6,
                     statistics.median(b[i] for _, b in passes) / n * 1e6))
    return rows


def layer_profile(images, labels, repeats):
    """{"layer by layer": rows, "as run (fused)": rows} of profile_network, one
    thread and one BLAS thread, chunks of the trainer's size."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from spark.cnn import CNN, build_layers
    from spark.data.preprocess import normalize_images
    x = normalize_images(images)                                  # (n, H, W, C) float32
    fused = CNN(threads=1)
    unfused = build_layers(fused.arch, fused.input_shape, fused.dtype,
                           np.random.default_rng(fused.seed), fuse=False)
    with threadpool_limits(limits=1, user_api="blas"):
        profile_network(fused.layers, x[:fused.chunk], labels, fused.chunk, 1)      # warm-up
        return {"separate passes (as in 2016)":
                profile_network(unfused, x, labels, fused.chunk, repeats),
                "as run (conv+ReLU+pool fused)":
                profile_network(fused.layers, x, labels, fused.chunk, repeats)}


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


# ----- the figures' numbers ----------------------------------------------------------

def measure_iterations_by_images(args, times, modes):
    """Figure 1's numbers: the trainers' seconds per iteration at each of args.sizes."""
    sizes = args.sizes
    series = {"local": [times.get("local", n) for n in sizes]}
    for mode in modes:
        series[f"Spark {mode}"] = [times.get(mode, n, args.batches) for n in sizes]
    return dict(sizes=sizes, series=series, batches=args.batches, master=args.master,
                iterations=args.iterations)


def measure_iterations_by_batches(args, times, modes):
    """Figure 2's numbers: the Spark exchanges' seconds per iteration at each of
    args.batch_counts, N = args.batch_images."""
    counts, n = args.batch_counts, args.batch_images
    series = {f"Spark {mode}": [times.get(mode, n, b) for b in counts] for mode in modes}
    return dict(counts=counts, images=n, series=series, master=args.master,
                iterations=args.iterations)


def measure_profile(args):
    """Figure 3's numbers: layer_profile on args.profile_images training images."""
    images, labels = common.load_data(args, args.profile_images)
    return dict(images=len(images), profiles=layer_profile(images, labels, repeats=3))


def measure_prediction(args, modes):
    """Figure 4's numbers: local prediction time at each of args.sizes and, with a
    Spark mode, locality_test.py's at those the test split holds."""
    from spark.cnn import CNN
    sizes = args.sizes
    images, _ = common.load_data(args, max(sizes))
    local = []
    for n in sizes:
        rate, threads = common.local_predict_rate(images[:n], args.iterations)
        local.append(n / rate)
        print(f"  local prediction, N={n}: {n / rate:.3f} s ({threads} threads)", flush=True)
    mode = "redis" if "redis" in modes else (modes[0] if modes else None)
    spark_sizes, spark = [], []
    if mode:
        available = count_test_images(args)
        spark_sizes = [n for n in sizes if n <= available]
        with tempfile.TemporaryDirectory() as params:
            CNN().save(os.path.join(params, "locality.npz"))
            for n in spark_sizes:
                spark.append(spark_predict_seconds(args, n, mode, params))
                print(f"  Spark prediction (locality_test.py --exchange {mode}), N={n}: "
                      f"{spark[-1]:.3f} s", flush=True)
    return dict(sizes=sizes, local=local, threads=threads, mode=mode, spark_sizes=spark_sizes,
                spark=spark, batches=args.batches, master=args.master,
                iterations=args.iterations)


# ----- the run ---------------------------------------------------------------------

def make_figures(args, argv):
    """Measure, draw the PNGs into args.out and write args.out/README.md."""
    if common.ROOT not in sys.path:
        sys.path.insert(0, common.ROOT)
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
    charts.check_can_draw()
    os.makedirs(args.out, exist_ok=True)
    if modes:
        common.egg(args.egg)                     # no egg: say so before measuring anything

    started, load_start = time.time(), load_average()
    machine = machine_description()
    print(f"figures into {args.out}; load average (1/5/15 min) at start {load_start}", flush=True)
    page = charts.Page()
    drawing = charts.Drawing(args.out)

    times = TrainingTimes(args)
    print("\n1. iteration time against N", flush=True)
    charts.draw_iterations_by_images(measure_iterations_by_images(args, times, modes), page,
                                     drawing.save)
    if modes:
        print("\n2. iteration time against B", flush=True)
        charts.draw_iterations_by_batches(measure_iterations_by_batches(args, times, modes),
                                          page, drawing.save)
    print("\n3. per-layer profile", flush=True)
    charts.draw_profile(measure_profile(args), page, drawing.save)
    print("\n4. prediction time against N", flush=True)
    charts.draw_prediction(measure_prediction(args, modes), page, drawing.save)
    if args.accuracy:
        charts.draw_accuracy(accuracy_runs(args.accuracy), page, drawing.save)
    else:
        charts.draw_no_accuracy(page)
    load_end, minutes = load_average(), (time.time() - started) / 60

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    readme = charts.write_page(args.out, dict(
        when=when, minutes=minutes, data_dir=args.data_dir, machine=machine,
        load_start=load_start, load_end=load_end, cores=os.cpu_count() or 1, argv=argv), page)
    print(f"\nload average at end {load_end}; {minutes:.1f} minutes")
    print(f"wrote {readme}")
    return drawing.written + [readme]
