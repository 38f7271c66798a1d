"""What the benchmarks share (bench.py and figures.py): running the entry scripts
in fresh processes and reading their --metrics records, the egg spark-submit
ships, the data, and the local prediction rate."""
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spark_submit():
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def egg(path=None):
    """The egg spark-submit ships: `path` (--egg) if given, else the newest dist/*.egg."""
    if path:
        if not os.path.isfile(path):
            sys.exit(f"bench.py: error: no egg at {path}")
        return path
    eggs = sorted(glob.glob(os.path.join(ROOT, "dist", "spark_cnn-*.egg")))
    if not eggs:
        sys.exit("bench.py: error: no egg in dist/: run scripts/install.sh first")
    return eggs[-1]


def run_script(script, arguments, args, distributed, spark_conf=()):
    """Run an entry script (e.g. "locality_test.py") in a fresh process: with
    python3, or with spark-submit on args.master and the egg when `distributed`;
    `spark_conf` are extra "key=value" Spark settings. -> its CompletedProcess;
    a failed run ends the bench with the script's error."""
    path = os.path.join(ROOT, script)
    arguments = list(map(str, arguments)) + (
        ["--data-dir", args.data_dir] if args.data_dir else [])
    if distributed:
        conf = [word for setting in spark_conf for word in ("--conf", setting)]
        command = [spark_submit(), "--master", args.master, "--driver-memory", "4g", *conf,
                   "--py-files", egg(getattr(args, "egg", None)), path] + arguments
    else:
        command = [sys.executable, path] + arguments
    env = dict(os.environ, PYTHONPATH="" if distributed else ROOT,
               SPARK_CONF_DIR=os.environ.get("SPARK_CONF_DIR", os.path.join(ROOT, "conf")),
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.py: {script} {' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return result


def run_trainer(kind, images, iterations, args, batches=None, extra=()):
    """Run one trainer with --metrics into a temp folder -> list of metric records."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        arguments = [images, iterations] + ([batches] if batches else []) + [
            "--params-dir", tmp, "--metrics", metrics] + list(extra)
        run_script(f"{kind}_train.py", arguments, args, distributed=kind != "naive")
        with open(metrics) as f:
            return [json.loads(line) for line in f]


def steady(records, key):
    """Median of a metric over the iterations after the first (warm-up)."""
    values = [r[key] for r in (records[1:] or records) if key in r]
    return statistics.median(values) if values else float("nan")


def iteration_time(r):
    return r["images"] / r["images_per_s"]


def steady_iteration_time(records):
    """Median iteration time, seconds, over the iterations after the first (warm-up)."""
    return statistics.median(iteration_time(r) for r in records[1:] or records)


def load_split(args, split, images=None):
    """The first `images` (all if None) images of a CIFAR-10 split: spark.data.cifar10.Dataset."""
    sys.path.insert(0, ROOT)
    from spark.data.cifar10 import load_cifar10
    return load_cifar10(args.data_dir or os.path.join(ROOT, "data", "cifar-10-batches-py"),
                        split, images)


def load_data(args, images=None):
    """The first `images` (default args.images) training images (uint8 NHWC) and labels."""
    data = load_split(args, "train", images or args.images)
    return data.images, data.labels


def local_predict_rate(images, iterations):
    """Median images/s of CNN.predict_scores over all images (after a warm-up)."""
    from spark.cnn import CNN
    net = CNN()
    net.predict_scores(images[:1000])
    rates = []
    for _ in range(iterations):
        started = time.perf_counter()
        net.predict_scores(images)
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates), net.threads
