"""Benchmarks that print figures (not tests).

    python3 bench/bench.py throughput [--images 10000] [--iterations 3]
        local training throughput, full batch of N images: images/s for forward +
        backward + update, median over the iterations after the first.
    python3 bench/bench.py memory [--images 50000]
        peak resident memory of one local training iteration over N images.
    python3 bench/bench.py compare [--images 10000] [--iterations 3] [--batches 4] [--master local[2]]
        local vs Spark+HDFS vs Spark+Redis, same N, I, B: iteration time split into
        forward, backward, store I/O and broadcast, and bytes stored per image.
        Needs the egg (scripts/install.sh) and the services (scripts/services.sh start).

Every run goes through the real entry scripts with --metrics, in a fresh
process; data from --data-dir or SPARK_CNN_DATA_DIR.
"""
import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spark_submit():
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def egg():
    eggs = sorted(glob.glob(os.path.join(ROOT, "dist", "spark_cnn-*.egg")))
    if not eggs:
        sys.exit("bench.py: error: no egg in dist/: run scripts/install.sh first")
    return eggs[-1]


def run_trainer(kind, images, iterations, args, batches=None, extra=()):
    """Run one trainer with --metrics into a temp folder -> list of metric records."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        script = os.path.join(ROOT, f"{kind}_train.py")
        common = [str(images), str(iterations)] + ([str(batches)] if batches else []) + [
            "--params-dir", tmp, "--metrics", metrics] + (
            ["--data-dir", args.data_dir] if args.data_dir else []) + list(extra)
        if kind == "naive":
            command = [sys.executable, script] + common
        else:
            command = [spark_submit(), "--master", args.master, "--driver-memory", "4g",
                       "--py-files", egg(), script] + common
        env = dict(os.environ, PYTHONPATH=ROOT if kind == "naive" else "",
                   SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"bench.py: {kind} run failed:\n{result.stderr[-3000:]}")
        with open(metrics) as f:
            return [json.loads(line) for line in f]


def steady(records, key):
    """Median of a metric over the iterations after the first (warm-up)."""
    values = [r[key] for r in (records[1:] or records) if key in r]
    return statistics.median(values) if values else float("nan")


def iteration_time(r):
    return r["images"] / r["images_per_s"]


def throughput(args):
    records = run_trainer("naive", args.images, args.iterations, args)
    for r in records:
        print(f"iteration {r['iteration']}: {r['images_per_s']:.0f} images/s "
              f"(forward {r['forward_s']:.2f}s backward {r['backward_s']:.2f}s "
              f"update {r['update_s']:.3f}s) rss {r['rss_mb']:.0f} MB")
    print(f"local throughput, full batch of {args.images}: "
          f"{steady(records, 'images_per_s'):.0f} images/s (median after the first iteration)")


def memory(args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    records = run_trainer("naive", args.images, 1, args)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    r = records[0]
    print(f"one local iteration over {args.images} images: {iteration_time(r):.1f}s "
          f"({r['images_per_s']:.0f} images/s), peak RSS {peak_mb:.0f} MB"
          + (" (an earlier child was larger)" if before > peak_mb * 1024 else ""))


def compare(args):
    rows = []
    for kind in ("naive", "spark", "locality"):
        batches = None if kind == "naive" else args.batches
        records = run_trainer(kind, args.images, args.iterations, args, batches)
        times = [iteration_time(r) for r in records[1:] or records]
        rows.append((kind, records, statistics.median(times)))
    base = rows[0][2]
    print(f"N={args.images} I={args.iterations} B={args.batches} master={args.master}; "
          "medians over iterations 2..I, seconds")
    print(f"{'trainer':10s} {'iteration':>9s} {'x local':>7s} {'forward':>8s} {'backward':>8s} "
          f"{'write':>6s} {'read':>6s} {'bcast':>6s} {'KB/image':>8s} {'loss':>7s}")
    for kind, records, t in rows:
        per_image = steady(records, "store_bytes") / args.images / 1000 if kind != "naive" else 0.0
        print(f"{kind:10s} {t:9.2f} {t / base:7.2f} {steady(records, 'forward_s'):8.2f} "
              f"{steady(records, 'backward_s'):8.2f} {steady(records, 'store_write_s'):6.2f} "
              f"{steady(records, 'store_read_s'):6.2f} {steady(records, 'broadcast_s'):6.2f} "
              f"{per_image:8.1f} {records[-1]['loss']:7.4f}")
    print("write/read: summed over the tasks of a stage; KB = 1000 bytes")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("throughput", "memory", "compare"))
    parser.add_argument("--images", type=int)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--data-dir", default=os.environ.get("SPARK_CNN_DATA_DIR"))
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 50000 if args.what == "memory" else 10000
    {"throughput": throughput, "memory": memory, "compare": compare}[args.what](args)


if __name__ == "__main__":
    main()
