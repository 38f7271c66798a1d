"""Benchmarks that print figures (not tests).

    python3 bench/bench.py throughput [--images 10000] [--iterations 3]
        local training throughput, full batch of N images: images/s for forward +
        backward + update, median over the iterations after the first.
    python3 bench/bench.py memory [--images 50000]
        peak resident memory of one local training iteration over N images.
    python3 bench/bench.py predict [--images 10000] [--iterations 3]
        local prediction (CNN.predict_scores from uint8 images, as naive_test.py
        does): images/s, median over the iterations.
    python3 bench/bench.py torch [--images 10000] [--iterations 3]
        the same network (conv 3x3x64 pad 1, ReLU, 2x2 max pool, fc to 10,
        float32, momentum SGD) in PyTorch on the same images and the same number
        of threads, next to the local trainer: training and prediction images/s
        and their ratios (PyTorch at its best minibatch size). PyTorch is not a
        dependency: run this with an interpreter that has it.
    python3 bench/bench.py torch-recipe [--epochs 1] [--images 50000] [--lr 0.02] [--minibatch 128]
            [--warmup 391] [--schedule cosine] [--label-smoothing 0.1] [--reg 1e-4] [--nesterov]
            [--augment-pad 2] [--momentum 0.9] [--threads T] [--seed 0] [--[no-]channels-last]
            [--init project|torch] [--metrics FILE.jsonl]
        the same network trained in PyTorch with the training recipe of naive_train.py
        --augment (the same minibatches, crops, flips and rates; bench/torch_recipe.py):
        test accuracy on the test images after every epoch, training seconds so far
        (evaluation excluded), the trainers' metrics records. Needs PyTorch, as torch.
    python3 bench/bench.py compare [--images 10000] [--iterations 3] [--batches 4]
            [--master local[2]] [--exchange-dtype float32|float16]
        the local trainer and the four --exchange modes (hdfs, redis, spark, none),
        same N, I, B: iteration time split into forward, backward, store I/O and
        broadcast, bytes stored per image, and each mode's fixed cost (its
        iteration time at N = 8); every run with the given --exchange-dtype.
        Needs the egg (scripts/install.sh) and the services (scripts/services.sh start).
    python3 bench/bench.py cluster [--nodes 1,2,3] [--images 6000] [--iterations 4] [--batches 6]
        both Spark trainers on the simulated cluster of scripts/cluster.sh (root),
        brought up with 1, 2, 3 nodes in turn: iteration time, the share of
        backward reads on the task's own node, and the bytes that crossed
        between nodes per iteration (counted on the nodes' links to the bridge).
        Then a model of the speed-up on K real machines from these costs.
    python3 bench/bench.py figures --out DIR [--sizes 1000,2000,5000,10000] [--batch-counts 1,2,4,8]
            [--batch-images 2000] [--iterations 3] [--modes hdfs,redis,spark,none]
            [--accuracy METRICS.jsonl[,LABEL] ...] [--egg PATH]
        the 2016 report's charts re-measured (bench/figures.py): iteration time
        against N and against B, the per-layer profile, prediction time against
        N, and test accuracy from given metrics files; PNGs and DIR/README.md.

Every run goes through the real entry scripts with --metrics, in a fresh
process; data from --data-dir or SPARK_CNN_DATA_DIR.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import (
    ROOT,
    iteration_time,
    load_data,
    load_split,
    local_predict_rate,
    run_script,
    run_trainer,
    steady,
    steady_iteration_time,
)


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


def predict(args):
    """Local prediction (CNN.predict_scores), and with --spark, predict.py on Spark
    (args.master) over the same training images, side by side."""
    images, _ = load_data(args)
    rate, threads = local_predict_rate(images, args.iterations)
    print(f"local prediction, {len(images)} images, {threads} threads: {rate:.0f} images/s "
          f"(median of {args.iterations})", flush=True)
    if not args.spark:
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_script("naive_train.py", [1000, 1, "--params-dir", tmp], args, distributed=False)
        rates = []
        for attempt in range(args.iterations):
            out = os.path.join(tmp, f"predictions-{attempt}")
            result = run_script("predict.py", [os.path.join(tmp, "naive.npz"), out, "--split",
                                               "train", "--limit", len(images)], args,
                                distributed=True)
            line = result.stdout.strip().splitlines()[-1]
            rates.append(float(line.rsplit("(", 1)[1].split()[0]))
    spark_rate = statistics.median(rates)
    print(f"predict.py on {args.master}, {len(images)} images to Parquet: {spark_rate:.0f} "
          f"images/s (median of {len(rates)}: the broadcast, the Spark job and the writing "
          f"counted; Spark's start not) = {spark_rate / rate:.2f}x the local rate")


def torch_network(torch, channels, height, width, classes):
    """conv 3x3x64 pad 1 -> ReLU -> 2x2 max pool stride 2 -> fc, as spark.cnn.DEFAULT_ARCH."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2, 2), nn.Flatten(),
                         nn.Linear(64 * (height // 2) * (width // 2), classes))


def torch_rates(torch, x, y, iterations, minibatches, batches):
    """PyTorch training images/s (one pass over x in minibatches, each with forward,
    backward and a momentum SGD step) and prediction images/s, keyed by (memory
    format, minibatch or batch size); medians over the iterations after a warm-up."""
    n = len(x)
    training, prediction = {}, {}
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        torch.manual_seed(0)
        model = torch_network(torch, x.shape[1], x.shape[2], x.shape[3], 10)
        model = model.to(memory_format=fmt)
        xf = x.contiguous(memory_format=fmt)
        loss_fn = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                    weight_decay=5e-4)

        # defaults bind this format's model, data and optimizer (B023: not a later loop's)
        def train_pass(m, count, model=model, xf=xf, loss_fn=loss_fn, optimizer=optimizer):
            for start in range(0, count, m):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xf[start:start + m]), y[start:start + m])
                loss.backward()
                optimizer.step()

        def predict_pass(m, model=model, xf=xf):
            with torch.inference_mode():
                for start in range(0, n, m):
                    model(xf[start:start + m])

        def rate(run):
            times = []
            for _ in range(iterations):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            return n / statistics.median(times)

        model.train()
        for m in minibatches:
            train_pass(m, min(n, 4 * m))                           # warm-up
            training[fmt_name, m] = rate(lambda m=m: train_pass(m, n))
        model.eval()
        for m in batches:
            predict_pass(m)
            prediction[fmt_name, m] = rate(lambda m=m: predict_pass(m))
    return training, prediction


def require_torch():
    """The torch module, or a one-line exit when this interpreter has none."""
    try:
        import torch
    except ImportError:
        sys.exit("bench.py: error: PyTorch is not installed for this interpreter "
                 f"({sys.executable}); run this with one that has it, e.g. a virtualenv "
                 "made with --system-site-packages and `pip install torch`")
    return torch


def torch_compare(args):
    torch = require_torch()
    images, labels = load_data(args)
    records = run_trainer("naive", args.images, args.iterations, args)
    ours_train = steady(records, "images_per_s")
    ours_predict, threads = local_predict_rate(images, args.iterations)
    torch.set_num_threads(threads)
    from spark.data.preprocess import normalize_images
    x = torch.from_numpy(normalize_images(images).transpose(0, 3, 1, 2).copy())  # (N, C, H, W)
    y = torch.from_numpy(labels.astype("int64"))
    training, prediction = torch_rates(torch, x, y, args.iterations,
                                       minibatches=(32, 64, 128, 256),
                                       batches=(250, 1000))
    best_m = max(training, key=training.get)
    best_b = max(prediction, key=prediction.get)
    print(f"N={args.images}, {threads} threads, float32; PyTorch {torch.__version__}, "
          f"medians over {args.iterations} passes")
    print("PyTorch training by layout and minibatch: " + ", ".join(
        f"{f} {m}: {r:.0f}" for (f, m), r in training.items()) + " images/s")
    print("PyTorch prediction by layout and batch: " + ", ".join(
        f"{f} {m}: {r:.0f}" for (f, m), r in prediction.items()) + " images/s")
    print(f"training   (images/s): local {ours_train:8.0f}   PyTorch {training[best_m]:8.0f} "
          f"({best_m[0]}, minibatch {best_m[1]})   local/PyTorch "
          f"{ours_train / training[best_m]:.2f}x")
    print(f"prediction (images/s): local {ours_predict:8.0f}   PyTorch {prediction[best_b]:8.0f} "
          f"({best_b[0]}, batch {best_b[1]})   local/PyTorch "
          f"{ours_predict / prediction[best_b]:.2f}x")
    print("local training: full batch of N (bench.py throughput); PyTorch: forward, backward "
          "and an SGD step per minibatch; local prediction from uint8 images, PyTorch's "
          "from normalized float tensors")


def torch_recipe(args):
    torch = require_torch()
    from torch_recipe import train_recipe
    train, test = load_split(args, "train", args.images), load_split(args, "test")
    from spark.cnn import default_threads
    torch.set_num_threads(args.threads or default_threads())
    torch.manual_seed(args.seed)
    shape = train.images.shape
    train_recipe(torch, torch_network(torch, shape[3], shape[1], shape[2], 10), train, test,
                 args, out=lambda line: print(line, flush=True))


# The rows of `compare`: (label, entry script kind, --exchange)
COMPARED = (("local", "naive", None), ("hdfs", "spark", "hdfs"), ("redis", "locality", "redis"),
            ("spark", "locality", "spark"), ("none", "locality", "none"),
            ("allreduce", "locality", "allreduce"))
FIXED_COST_IMAGES = 8


def compare(args):
    """The local trainer and the --exchange modes at N images, then the fixed cost of
    an iteration of each exchange (its time at N = 8, where the work is nil)."""
    modes = set(filter(None, args.modes.split(","))) | {"local"}
    rows = []
    for label, kind, exchange in COMPARED:
        if label not in modes:
            continue
        extra = (["--exchange", exchange] if exchange else []) + [
            "--exchange-dtype", args.exchange_dtype]
        # allreduce: one task per slot (no [num batches]); one segment for the whole run
        batches = args.batches if exchange not in (None, "allreduce") else None
        if exchange == "allreduce":
            extra += ["--segment-seconds", "3600"]
        sized = extra + (["--minibatch", str(args.minibatch)] if args.minibatch else [])
        records = run_trainer(kind, args.images, args.iterations, args, batches, sized)
        fixed = (steady_iteration_time(run_trainer(kind, FIXED_COST_IMAGES, args.iterations,
                                                   args, batches, extra))
                 if exchange else 0.0)
        start = records[0]["wall_s"] - iteration_time(records[0]) if exchange == "allreduce" else 0
        rows.append((label, records, steady_iteration_time(records), fixed, start))
    base = rows[0][2]
    print(f"N={args.images} I={args.iterations} M={args.minibatch or args.images} "
          f"B={args.batches} (allreduce: the {rows[-1][1][0].get('tasks', '?')} slots) "
          f"master={args.master} --exchange-dtype {args.exchange_dtype}; medians over "
          "iterations 2..I, seconds")
    print(f"{'mode':9s} {'iteration':>9s} {'x local':>7s} {'forward':>8s} {'backward':>8s} "
          f"{'write':>6s} {'read':>6s} {'bcast':>6s} {'allred':>6s} {'KB/image':>8s} "
          f"{'fixed':>7s} {'start':>6s} {'loss':>7s}")
    for label, records, t, fixed, start in rows:
        per_image = (steady(records, "store_bytes") / (args.minibatch or args.images) / 1000
                     if label != "local" else 0.0)
        print(f"{label:9s} {t:9.4f} {t / base:7.2f} {steady(records, 'forward_s'):8.4f} "
              f"{steady(records, 'backward_s'):8.4f} {steady(records, 'store_write_s'):6.2f} "
              f"{steady(records, 'store_read_s'):6.2f} {steady(records, 'broadcast_s'):6.3f} "
              f"{steady(records, 'allreduce_s'):6.4f} {per_image:8.1f} {fixed:7.4f} "
              f"{start:6.2f} {records[-1]['loss']:7.4f}")
    print("write/read: summed over the tasks of a stage; KB = 1000 bytes (spark: the persisted "
          f"caches); allred: the all-reduce's sum per iteration; fixed: the iteration time at "
          f"N = {FIXED_COST_IMAGES}; start: the allreduce segment's start (job, rendezvous, "
          "the images to the workers), once per segment")
    floor = spark_floor(args)
    print(f"Spark's own floor on {floor['master']}: an empty job of {floor['batches']} tasks "
          f"{floor['empty_job_s']:.3f}s through Python workers ({floor['jvm_job_s']:.3f}s "
          f"counted by the JVM alone), a broadcast of the parameters {floor['broadcast_s']:.3f}s; "
          f"a two-stage iteration runs 2 jobs and 3 broadcasts, `none` 1 job and 1 broadcast, "
          "allreduce 1 job per segment")


RECIPE = ["--lr", "0.02", "--augment", "--schedule", "cosine", "--label-smoothing", "0.1",
          "--reg", "1e-4", "--nesterov"]


def recipe(args):
    """The training recipe for --epochs, the local trainer and --exchange allreduce
    (one run per --average-every value) one after the other: training seconds
    (wall_s, evaluations left out) and test accuracy after every epoch."""
    from torch_recipe import recipe_iterations

    minibatch = args.minibatch or 128
    per_epoch = math.ceil(args.images / minibatch)
    total = recipe_iterations(args.epochs, args.images, minibatch)
    common = ["--minibatch", minibatch, "--warmup", per_epoch, "--eval-every", per_epoch,
              "--save-every", per_epoch, *RECIPE] + (["--arch", args.arch] if args.arch else [])
    runs = []
    if "local" in args.modes.split(","):
        runs.append(("naive_train.py", "naive", None, []))
    for h in (args.average_every or "1").split(","):
        if "allreduce" in args.modes.split(","):
            runs.append((f"allreduce H={h}", "locality", None,
                         ["--exchange", "allreduce", "--average-every", h]))
    results = []
    for label, kind, batches, extra in runs:
        records = run_trainer(kind, args.images, total, args, batches, common + extra)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            name = label.replace(" ", "-").replace("=", "")
            with open(os.path.join(args.keep, f"{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records
                             if "test_accuracy" in r)
        evaluated = [r for r in records if "test_accuracy" in r]
        results.append((label, records[-1]["wall_s"], evaluated))
        print(f"{label}: {records[-1]['wall_s']:.0f} s of training, test accuracy "
              + ", ".join(f"{r['test_accuracy']:.4f}" for r in evaluated), flush=True)
    base = results[0][1]
    print(f"N={args.images}, {args.epochs:g} epochs ({total} iterations of {minibatch}), "
          f"--arch {args.arch or 'conv64-relu-pool-fc10'}, master {args.master}")
    print(f"{'trainer':18s} {'training s':>10s} {'x first':>7s} {'final':>7s} {'best':>7s}")
    for label, wall, evaluated in results:
        print(f"{label:18s} {wall:10.0f} {wall / base:7.2f} "
              f"{evaluated[-1]['test_accuracy']:7.4f} "
              f"{max(r['test_accuracy'] for r in evaluated):7.4f}")


def spark_floor(args):
    """bench/spark_floor.py on args.master -> its figures (dict)."""
    result = run_script(os.path.join("bench", "spark_floor.py"), [args.batches], args,
                        distributed=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cluster_sh(*args, capture=True):
    """bash scripts/cluster.sh ARGS (the caller's SPARK_CNN_* settings left out)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SPARK_CNN_") or k.startswith("SPARK_CNN_CLUSTER_")}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "cluster.sh"), *map(str, args)],
                            env=env, capture_output=capture, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.py: cluster.sh {' '.join(map(str, args))} failed:\n"
                 f"{(result.stderr or '')[-3000:]}")
    return result


def bridge_bytes(nodes):
    """Bytes the nodes have sent into the bridge so far (host ends of their veth pairs)."""
    net = int(os.environ.get("SPARK_CNN_CLUSTER_NET", "0"))
    prefix = "scn" if net == 0 else f"scn{net}"            # as scripts/cluster.sh names them
    total = 0
    for k in range(1, nodes + 1):
        with open(f"/sys/class/net/{prefix}v{k}/statistics/rx_bytes") as f:
            total += int(f.read())
    return total


def cluster_run(kind, nodes, args, data_dir):
    """One trainer on the cluster -> (records, bytes crossed per iteration)."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        command = ["bash", os.path.join(ROOT, "scripts", "cluster.sh"), "submit",
                   os.path.join(ROOT, f"{kind}_train.py"), str(args.images),
                   str(args.iterations), str(args.batches), "--metrics", metrics,
                   "--params-dir", tmp] + (["--data-dir", data_dir] if data_dir else [])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SPARK_CNN_") or k.startswith("SPARK_CNN_CLUSTER_")}
        crossed, stop = [], threading.Event()

        def watch():                         # counters at every iteration boundary
            seen, last = 0, bridge_bytes(nodes)
            while not stop.is_set():
                lines = open(metrics).read().count("\n") if os.path.exists(metrics) else 0
                if lines > seen:
                    now = bridge_bytes(nodes)
                    crossed.append((now - last) / (lines - seen))
                    seen, last = lines, now
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        stop.set()
        watcher.join()
        if result.returncode != 0:
            sys.exit(f"bench.py: {kind} on {nodes} nodes failed:\n{result.stdout[-2000:]}"
                     f"{result.stderr[-2000:]}")
        with open(metrics) as f:
            return [json.loads(line) for line in f], crossed


def cluster(args):
    """The trainers on 1, 2, 3 simulated nodes: the two-stage exchanges at full batch
    (--images, --batches) and --exchange allreduce in minibatches (--minibatch,
    default 128; one run per --average-every value); then a model for K machines."""
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    modes = args.modes.split(",")
    staged = [kind for mode, kind in (("redis", "locality"), ("hdfs", "spark")) if mode in modes]
    rows, reduced = [], []
    for nodes in [int(k) for k in args.nodes.split(",")]:
        cluster_sh("down")
        cluster_sh("up", nodes)
        for kind in staged:
            records, crossed = cluster_run(kind, nodes, args, data_dir)
            later = records[1:] or records
            reads = sum(r["backward_reads_local"] + r["backward_reads_remote"] for r in later)
            rows.append(dict(
                nodes=nodes, kind=kind, time=steady_iteration_time(records),
                local=sum(r["backward_reads_local"] for r in later) / max(reads, 1),
                remote_mb=statistics.median(r["store_read_bytes_remote"] for r in later) / 1e6,
                crossed_mb=statistics.median(crossed[1:] or crossed) / 1e6 if crossed else 0.0,
                task_s=statistics.median(r["task_forward_s"] + r["task_backward_s"]
                                         + r["store_write_s"] + r["store_read_s"] for r in later),
                hosts=len(set().union(*(r["backward_hosts"] for r in later)))))
        if "allreduce" in modes:
            for h in (args.average_every or "1").split(","):
                reduced.append(cluster_allreduce(nodes, int(h), args, data_dir))
    cluster_sh("down")
    if rows:
        _print_staged(rows, args)
    if reduced:
        _print_allreduce(reduced, args)


def _print_staged(rows, args):
    print(f"N={args.images} I={args.iterations} B={args.batches}, simulated nodes of 1 core each "
          "on this machine's 2 cores; medians over iterations 2..I")
    print(f"{'nodes':>5s} {'trainer':9s} {'iteration s':>11s} {'x 1 node':>8s} "
          f"{'local reads':>11s} {'hosts':>5s} {'remote store MB':>15s} {'crossed MB':>10s} "
          f"{'task s':>7s}")
    first = {r["kind"]: r["time"] for r in rows if r["nodes"] == rows[0]["nodes"]}
    for r in rows:
        print(f"{r['nodes']:5d} {r['kind']:9s} {r['time']:11.2f} "
              f"{r['time'] / first[r['kind']]:8.2f} {r['local']:11.0%} {r['hosts']:5d} "
              f"{r['remote_mb']:15.1f} {r['crossed_mb']:10.1f} {r['task_s']:7.2f}")
    print("task s: the tasks' own compute and store time, summed over the batches of an iteration")
    print()
    print("model: time on K machines of c cores = "
          "fixed + tasks / (K c) + crossed bytes / bandwidth")
    for kind in sorted({r["kind"] for r in rows}):
        one = next(r for r in rows if r["kind"] == kind)
        fixed = max(one["time"] - one["task_s"] / one["nodes"], 0.0)
        crossed_per_image = max(r["crossed_mb"] for r in rows if r["kind"] == kind) / args.images
        cells = []
        for machines in (1, 2, 4, 8, 16):
            predicted = (fixed + one["task_s"] / machines
                         + crossed_per_image * args.images * (machines - 1) / machines / 125.0)
            cells.append(f"K={machines}: {predicted:.2f}s "
                         f"({(fixed + one['task_s']) / predicted:.1f}x)")
        print(f"  {kind}: fixed {fixed:.2f}s, tasks {one['task_s']:.2f}s per iteration; "
              f"with 1 core per machine and 1 Gbit/s: " + ", ".join(cells))


def cluster_allreduce(nodes, every, args, data_dir):
    """--exchange allreduce in one segment on the cluster as it is -> its figures."""
    minibatch = args.minibatch or 128
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        command = ["bash", os.path.join(ROOT, "scripts", "cluster.sh"), "submit",
                   os.path.join(ROOT, "locality_train.py"), str(args.images),
                   str(args.allreduce_iterations), "--exchange", "allreduce",
                   "--minibatch", str(minibatch),
                   "--average-every", str(every), "--segment-seconds", "3600",
                   "--metrics", metrics, "--params-dir", tmp] + (
                       ["--data-dir", data_dir] if data_dir else [])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SPARK_CNN_") or k.startswith("SPARK_CNN_CLUSTER_")}
        before = bridge_bytes(nodes)
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        crossed = bridge_bytes(nodes) - before
        if result.returncode != 0:
            sys.exit(f"bench.py: allreduce on {nodes} nodes failed:\n{result.stdout[-2000:]}"
                     f"{result.stderr[-2000:]}")
        with open(metrics) as f:
            records = [json.loads(line) for line in f]
    later = records[1:] or records
    t = steady_iteration_time(records)
    return dict(nodes=nodes, every=every, tasks=records[-1]["tasks"], time=t,
                rate=minibatch / t, minibatch=minibatch,
                compute=statistics.median(r["forward_s"] + r["backward_s"] for r in later),
                allreduce=statistics.median(r["allreduce_s"] for r in later),
                sent=statistics.mean(r["allreduce_bytes"] for r in later),
                crossed=crossed, start=records[0]["wall_s"] - iteration_time(records[0]),
                loss=records[-1]["loss"])


def _print_allreduce(rows, args):
    print(f"--exchange allreduce, N={args.images} I={args.allreduce_iterations} "
          f"M={rows[0]['minibatch']}, "
          "one segment, one task per node (nodes of 1 core on this machine's 2 cores); medians "
          "over iterations 2..I")
    print(f"{'nodes':>5s} {'H':>3s} {'iteration s':>11s} {'images/s':>9s} {'x 1 node':>8s} "
          f"{'compute s':>9s} {'all-reduce s':>12s} {'sent/iter KB':>12s} {'crossed MB':>10s} "
          f"{'start s':>7s} {'loss':>7s}")
    first = {r["every"]: r["rate"] for r in rows if r["nodes"] == rows[0]["nodes"]}
    for r in rows:
        print(f"{r['nodes']:5d} {r['every']:3d} {r['time']:11.4f} {r['rate']:9.0f} "
              f"{r['rate'] / first[r['every']]:8.2f} {r['compute']:9.4f} {r['allreduce']:12.4f} "
              f"{r['sent'] / 1000:12.0f} {r['crossed'] / 1e6:10.1f} {r['start']:7.2f} "
              f"{r['loss']:7.4f}")
    print("compute: rank 0's forward and backward; all-reduce: its sum (wait included); sent: "
          "the bytes rank 0 sent per iteration; crossed: all bytes into the bridge during the run "
          "(the images' broadcast included); start: the segment's start")
    one = next(r for r in rows if r["nodes"] == 1 and r["every"] == 1)
    two = next((r for r in rows if r["nodes"] == 2 and r["every"] == 1), None)
    per_image = one["compute"] / one["minibatch"]              # one core's seconds per image
    other = max(one["time"] - one["compute"] - one["allreduce"], 0.0)   # update, loop
    gradient = 4 * 165642                                       # bytes of the default network
    latency = 0.0
    if two is not None:                 # what a sum of 2 costs beyond its bytes at ~10 Gbit/s
        latency = max(two["allreduce"] - 2 * gradient / 2 / 1.25e9, 0.0) / 2
    print()
    print("model: time on K machines of 1 core = M / K x compute per image + update + 2 steps x "
          "(latency + (K-1)/K x gradient / bandwidth); measured: compute "
          f"{per_image * 1e3:.3f} ms per image, update and loop {other * 1e3:.2f} ms, latency "
          f"{latency * 1e3:.2f} ms per step (from 2 nodes), gradient {gradient / 1e3:.0f} KB")
    for minibatch in (rows[0]["minibatch"], 1024):
        for gbits in (1, 10):
            cells = []
            single = minibatch * per_image + other
            for machines in (1, 2, 4, 8, 16):
                comm = 0.0 if machines == 1 else 2 * (latency + (machines - 1) / machines
                                                      * gradient / (gbits * 1.25e8))
                predicted = minibatch / machines * per_image + other + comm
                cells.append(f"K={machines}: {single / predicted:.1f}x")
            print(f"  M={minibatch}, {gbits} Gbit/s: " + ", ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("throughput", "memory", "predict", "torch",
                                         "torch-recipe", "compare", "recipe", "cluster",
                                         "figures"))
    parser.add_argument("--images", type=int)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--nodes", default="1,2,3", help="cluster: node counts to measure")
    parser.add_argument("--allreduce-iterations", dest="allreduce_iterations", type=int,
                        default=300, help="cluster: iterations of the allreduce runs")
    parser.add_argument("--data-dir", default=os.environ.get("SPARK_CNN_DATA_DIR"))
    parser.add_argument("--egg", help="the egg spark-submit ships (default: newest dist/*.egg)")
    parser.add_argument("--exchange-dtype", dest="exchange_dtype", choices=("float32", "float16"),
                        default="float32", help="compare: the trainers' --exchange-dtype")
    figures = parser.add_argument_group("figures")
    figures.add_argument("--out", metavar="DIR", help="folder for the PNGs and README.md")
    figures.add_argument("--sizes", default="1000,2000,5000,10000", metavar="N,N,...",
                         help="image counts of the charts against N")
    figures.add_argument("--batch-counts", default="1,2,4,8", metavar="B,B,...",
                         help="batch counts of the chart against B")
    figures.add_argument("--batch-images", type=int, default=2000, metavar="N",
                         help="images of the chart against B")
    parser.add_argument("--modes", default=None,
                        help="compare, figures: Spark --exchange modes to measure ('' for none; "
                             "compare: default hdfs,redis,spark,none,allreduce, figures: "
                             "hdfs,redis,spark,none)")
    parser.add_argument("--spark", action="store_true",
                        help="predict: also predict.py on Spark (--master), side by side")
    parser.add_argument("--minibatch", type=int, metavar="M",
                        help="compare: minibatches of M images (default: full batch); "
                             "torch-recipe: default 128")
    figures.add_argument("--profile-images", type=int, default=256, metavar="N",
                         help="images of the per-layer profile")
    figures.add_argument("--accuracy", nargs="+", action="extend", metavar="METRICS.jsonl[,LABEL]",
                         help="metrics files with test_accuracy for the accuracy chart")
    trainers = parser.add_argument_group(
        "recipe (also --epochs, --minibatch, --modes local,allreduce)")
    trainers.add_argument("--arch", help="the trainers' --arch")
    trainers.add_argument("--average-every", dest="average_every", metavar="H,H,...",
                          help="one allreduce run per value (default 1)")
    trainers.add_argument("--keep", metavar="DIR",
                          help="write each run's evaluation records to DIR/<trainer>.jsonl")
    torch_group = parser.add_argument_group("torch-recipe (--images: training images, default all)")
    torch_group.add_argument("--epochs", type=float, default=1.0,
                        help="passes over the images (the iteration count is rounded up)")
    torch_group.add_argument("--lr", type=float, default=0.02, help="base learning rate")
    torch_group.add_argument("--momentum", type=float, default=0.9)
    torch_group.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    torch_group.add_argument("--reg", type=float, default=1e-4, help="L2 strength (weights only)")
    torch_group.add_argument("--schedule", choices=("constant", "cosine", "step"), default="cosine")
    torch_group.add_argument("--warmup", type=int, default=391, metavar="K",
                        help="iterations of linear warm-up")
    torch_group.add_argument("--label-smoothing", type=float, default=0.1, metavar="E")
    torch_group.add_argument("--augment-pad", type=int, default=2, metavar="P",
                        help="crops of the image padded by P zeros (and flips)")
    torch_group.add_argument("--seed", type=int, default=0,
                        help="shuffle, crops, flips and (--init project) weights")
    torch_group.add_argument("--init", choices=("project", "torch"), default="project",
                        help="start from the local trainer's weights for --seed, or PyTorch's")
    torch_group.add_argument("--threads", type=int, help="default: the cores this process may use")
    torch_group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory format (default; faster here at minibatch 128)")
    torch_group.add_argument("--metrics", metavar="FILE.jsonl",
                        help="one JSON line per iteration, as the trainers' --metrics")
    args = parser.parse_args(argv)
    if args.modes is None:
        args.modes = {"compare": "hdfs,redis,spark,none,allreduce", "recipe": "local,allreduce",
                      "cluster": "redis,hdfs,allreduce"}.get(args.what, "hdfs,redis,spark,none")
    if args.what == "figures":
        if not args.out:
            parser.error("figures needs --out DIR")
        from figures import make_figures
        make_figures(args, sys.argv[1:] if argv is None else argv)
        return
    if args.what == "torch-recipe" and args.minibatch is None:
        args.minibatch = 128
    if args.images is None:
        args.images = {"memory": 50000, "cluster": 6000, "torch-recipe": 50000,
                       "recipe": 50000}.get(args.what, 10000)
    {"throughput": throughput, "memory": memory, "predict": predict, "torch": torch_compare,
     "torch-recipe": torch_recipe, "compare": compare, "recipe": recipe,
     "cluster": cluster}[args.what](args)


if __name__ == "__main__":
    main()
