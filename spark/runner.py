"""What the entry scripts do: train with progress lines and checkpoints, or evaluate.

`script` names the family of entry scripts: "naive" (naive_*.py, the local
trainer), "spark" (spark_*.py) or "locality" (locality_*.py). It names the
checkpoint (`<params dir>/<script>.npz`) and the default exchange; the run's
exchange itself is resolved once, into RunConfig.exchange
(spark.config.exchange_of), and everything else reads that.

Training runs in segments: a segment ends at the next checkpoint, the next
evaluation or the run's end (and for --exchange allreduce, which runs a
whole segment as one Spark job, after about --segment-seconds). Every
trainer turns a segment into metrics rows (`train_segment`); this loop
saves, evaluates and writes them.
"""
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import psutil

from . import config as run_config
from .checkpoint import CheckpointError, checkpoint_lock, remove_stale_temporaries
from .cli import DATA_FLAGS, UsageError, given_settings
from .cnn import CNN, Diverged
from .config import parse_size
from .data.dataset import DataError, TooFewImagesError
from .data.preprocess import channel_stats
from .data.source import DataOptions, load_dataset
from .im2col import backend as im2col_backend
from .metrics import MetricsError, MetricsLog, rss_mb
from .progress import progress_for
from .settings import Settings
from .trainers import open_trainer


def checkpoint_path(settings, script):
    return os.path.join(settings.params_dir, f"{script}.npz")


def data_options(values, settings):
    """How to read the run's images: `values` has the data settings of RunConfig
    (labels, test_fraction, image_size, crop, data_format, image_column,
    label_column, seed), as attributes or a dict."""
    get = values.get if isinstance(values, dict) else lambda key, default=None: getattr(
        values, key, default)
    size = get("image_size")
    return DataOptions(format=get("data_format"), image_column=get("image_column"),
                       label_column=get("label_column"), labels=get("labels") or "fine",
                       test_fraction=get("test_fraction"),
                       image_size=parse_size(size) if size else None, crop=bool(get("crop")),
                       seed=get("seed") or 0, webhdfs=settings.webhdfs,
                       hdfs_user=settings.hdfs_user, timeout=settings.io_timeout)


def load_images(settings, split, count, options):
    """The first `count` images of a split; too few images is a usage error."""
    try:
        return load_dataset(settings.data_dir, split, count, options)
    except TooFewImagesError as e:
        raise UsageError(f"asked for {count} images: {e}") from None


def network_for(run, data):
    """CNN keyword arguments of a fresh run's network, fitted to its data: the input
    shape and the class count (the default --arch's last layer gets it), the
    per-channel statistics of the training images, the class names. Refused in
    one line: an --arch whose last layer disagrees with the classes, and a
    network too big for this machine's memory (estimated before anything is
    allocated)."""
    from .arch import bytes_in_words, estimate_bytes, format_arch, parse_arch
    from .cnn import DEFAULT_ARCH
    classes = max(len(data.class_names), int(data.labels.max()) + 1 if len(data) else 0)
    options = run.network_options()
    arch = [dict(layer) for layer in (parse_arch(run.arch) if run.arch else DEFAULT_ARCH)]
    last = arch[-1]
    if run.arch is None:
        last["outputs"] = classes
    elif last["type"] != "fc":
        raise UsageError(f"--arch {run.arch}: the last layer must be fully connected (it gives "
                         f"the class scores): end it with fc{classes}")
    elif last["outputs"] != classes:
        raise UsageError(f"--arch {run.arch} ends with fc{last['outputs']}, but the images of "
                         f"the data have {classes} classes: end it with fc{classes}")
    needed, parts = estimate_bytes(arch, data.image_shape, run.dtype)
    available = psutil.virtual_memory().available
    if needed > 0.8 * available:
        raise UsageError(
            f"the network {format_arch(arch)} on {'x'.join(map(str, data.image_shape))} images "
            f"needs about {bytes_in_words(needed)} ({parts}); this machine has "
            f"{bytes_in_words(available)} available: choose fewer filters or outputs")
    options.update(arch=arch, input_shape=data.image_shape, class_names=data.class_names,
                   input_stats=channel_stats(data.images))
    return options


def check_settings(exchange, settings):
    """Settings that are wrong whatever else happens: refused before Spark starts."""
    if exchange == "redis":
        from .storage.redis_store import parse_redis_addresses
        try:
            parse_redis_addresses(settings.redis)
        except ValueError as e:
            raise UsageError(f"--redis / SPARK_CNN_REDIS: {e}") from None


def check_batches(batches, images, per=""):
    """Every batch (Spark task) needs at least one image: refused before Spark starts."""
    if batches is not None and batches > images:
        raise UsageError(f"{batches} batches for {images} images{per}: "
                         "each batch needs at least one image")


def load_saved(path, purpose):
    """The network saved at `path`, checked in full (before Spark starts)."""
    if not os.path.exists(path):
        raise UsageError(f"{purpose}: no saved parameters at {path}; train without --resume "
                         "first, or point --params-dir / SPARK_CNN_PARAMS_DIR at them")
    return CNN.load(path)


def check_fits(saved, path, data, data_dir):
    """A checkpoint's network must take these images and give scores for their classes."""
    shape = tuple(data.images.shape[1:])
    if tuple(saved.input_shape) != shape:
        raise CheckpointError(
            f"{path} holds a network for {saved.describe_input()} images, but the images of "
            f"{data_dir} are {'x'.join(map(str, shape))}: it is another network's checkpoint")
    if saved.class_names is not None and data.class_names and \
            list(data.class_names) != saved.class_names:
        missing = [name for name in data.class_names if name not in saved.class_names]
        raise CheckpointError(
            f"{path} holds a network for the classes {_names(saved.class_names)}, but the "
            f"images of {data_dir} have {_names(data.class_names)}"
            + (f" ({', '.join(missing[:3])} unknown to it)" if missing else "")
            + ": it is another network's checkpoint")
    classes = int(data.labels.max()) + 1 if len(data.labels) else 0
    if classes > saved.num_classes:
        raise CheckpointError(
            f"{path} holds a network with {saved.num_classes} classes, but the labels of "
            f"{data_dir} go up to {classes - 1}: it is another network's checkpoint")


def _names(names, shown=5):
    """A list of class names in a few words."""
    names = list(names)
    text = ", ".join(names[:shown])
    return f"[{text}{', ...' if len(names) > shown else ''}] ({len(names)})"


def check_test_classes(train, test, data_dir):
    """The test images may only have classes the training images have."""
    if train.class_names and test.class_names and test.class_names != train.class_names:
        extra = [name for name in test.class_names if name not in train.class_names]
        if extra:
            raise DataError(f"the test images of {data_dir} have classes the training images "
                            f"lack: {', '.join(extra[:5])}")


def saved_settings(net):
    """The RunConfig fields a checkpoint's network holds, {name: value}."""
    from .arch import format_arch
    saved = dict(lr=net.lr, momentum=net.momentum, reg=net.reg, seed=net.seed,
                 dtype=net.dtype.name, label_smoothing=net.label_smoothing,
                 nesterov=net.nesterov, exchange_dtype=net.exchange_dtype.name,
                 arch=format_arch(net.arch))
    saved.update({key: value for key, value in net.run_info.items() if key != "wall_s"})
    return saved


def resolve_config(args, script, saved, path, err):
    """The settings of this run: flags, else (with --resume) the checkpoint's, else defaults.

    With --resume, the checkpoint's settings win. "Adjustable" settings
    given on the command line override them (a note on `err` says so); a
    "fixed" one that contradicts the checkpoint would make a different run
    and is a usage error (spark.config).
    """
    given = given_settings(args)
    try:
        given["exchange"] = run_config.exchange_of(script, given["exchange"])
        run, notes = run_config.resolve(given, saved_settings(saved) if saved else None, path)
    except run_config.ResumeConflict as e:
        raise UsageError(str(e)) from None
    for note in notes:
        print(note, file=err)
    return run


def resolve_config_for(run, saved, path, err=sys.stderr):
    """A RunConfig whose every setting was given (the Spark ML estimator's), against a
    checkpoint's `saved` settings: a "fixed" one that differs is refused (MLError-like
    ValueError), an "adjustable" one replaces the saved one with a note."""
    given = {f.name: getattr(run, f.name) for f in run_config.fields()}
    try:
        resolved, notes = run_config.resolve(given, saved, path)
    except run_config.ResumeConflict as e:
        raise ValueError(str(e).replace("leave it out to resume that run, or start afresh "
                                        "without --resume", "use another checkpointDir")) from None
    for note in notes:
        print(note, file=err)
    return resolved


def check_params_dir(settings):
    """The parameters folder must take a file: found out before the first iteration."""
    folder = settings.params_dir
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"--params-dir / SPARK_CNN_PARAMS_DIR {folder}: cannot save "
                         f"parameters there ({e.strerror or e})") from None


def train(script, args, out=sys.stdout, err=sys.stderr):
    """Train until the checkpoint has args.iterations iterations.

    Everything that can be checked before Spark starts is: the command line
    against the checkpoint (--resume), the data, the metrics file, the
    parameters folder. While it runs, the run holds its checkpoint (a second
    run into it is refused). A run that fails leaves the last saved
    checkpoint whole.
    """
    settings = Settings.from_flags(args)
    path = checkpoint_path(settings, script)
    saved = load_saved(path, "--resume") if args.resume else None
    run = resolve_config(args, script, saved, path, err)
    check_settings(run.exchange, settings)
    total = args.iterations
    if run.batch_size > run.images:
        raise UsageError(f"--minibatch {run.minibatch} is larger than the {run.images} images")
    if script != "naive":
        check_batches(run.batches, run.batch_size, " per iteration")
    start = saved.iteration if saved is not None else 0
    if saved is not None and start >= total:
        print(f"{path} is already at iteration {start} ({total} asked for): nothing to train",
              file=out)
        return
    if total == 0:
        print("0 iterations asked for: nothing trained, nothing saved", file=out)
        return
    reading = data_options(run, settings)
    data = load_images(settings, "train", run.images, reading)
    if saved is not None:
        check_fits(saved, path, data, settings.data_dir)
    test = None
    if run.eval_every:
        test = load_images(settings, "test", run.eval_images, reading)
        check_test_classes(data, test, settings.data_dir)
        if script != "naive":
            check_batches(run.batches, len(test), " of --eval-images")
    try:
        metrics = MetricsLog(args.metrics)
    except MetricsError as e:
        raise UsageError(f"--metrics: {e}") from None
    with metrics:
        fit_network(script, run, data, test, total, path, saved, settings, metrics, args.debug,
                    out, err)


def fit_network(script, run, data, test, total, path, saved, settings, metrics, debug=False,
                out=sys.stdout, err=sys.stderr):
    """Train `run` (a RunConfig) on `data` until `path` has `total` iterations -> the network.

    saved: the checkpoint's network to resume (None: a fresh run, fitted to
    the data); test: the --eval-every images or None. The entry scripts and
    the Spark ML estimator (spark.ml) both train through here.
    """
    check_params_dir(settings)
    with checkpoint_lock(path, err):
        for leftover in remove_stale_temporaries(settings.params_dir):
            print(f"note: removed {leftover}, an unfinished save of a run that was killed",
                  file=err)
        run = run.replace(schedule_length=run.schedule_length or total)
        if run.schedule != "constant" and total > run.schedule_length:
            print(f"note: the {run.schedule} schedule ends at iteration "
                  f"{run.schedule_length}; iterations after it keep its last rate "
                  "(--schedule-length stretches it)", file=err)
        if saved is not None:                  # what --resume may change
            options = {key: getattr(run, key) for key in (
                "lr", "momentum", "reg", "label_smoothing", "nesterov", "exchange_dtype")}
        else:
            options = network_for(run, data)
        with open_trainer(run.exchange, run.batches, script, settings, debug,
                          checkpoint=path if saved is not None else None, **options) as net:
            wall = float(net.run_info.get("wall_s", 0.0)) if saved is not None else 0.0
            _train_loop(net, data, test, run, total, path, metrics, wall, out)
    return net


def segment_end(iteration, total, run, segmented):
    """Where the segment that starts after `iteration` iterations ends.

    At the next checkpoint (every --save-every iterations; without it, after
    every iteration, or for a `segmented` trainer when it decides), the next
    evaluation, or the run's end.
    """
    ends = [total]
    every = run.save_every or (None if segmented else 1)
    if every:
        ends.append((iteration // every + 1) * every)
    if run.eval_every:
        ends.append((iteration // run.eval_every + 1) * run.eval_every)
    return min(ends)


def _train_loop(net, data, test, run, total, path, metrics, wall, out):
    print(f"training {run.exchange} CNN on {run.images} images: {total - net.iteration} "
          f"iterations of {run.batch_size} images, from iteration {net.iteration} to {total} "
          f"(im2col back end here: {im2col_backend()})", file=out)
    segmented = getattr(net, "segmented", False)
    net.run_info = dict(run.saved(), wall_s=wall)
    net.run_info["batches"] = getattr(net, "batches", run.batches)

    def on_row(row):
        row["rss_mb"] = rss_mb()
        _print_iteration(row, out)

    def progress(iteration):
        return progress_for(run.batch_size, f"iteration {iteration + 1}")

    with warnings.catch_warnings():
        # A diverging run is reported in one line (below), not by NumPy's warnings.
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=r"(overflow|invalid value|divide by zero) encountered")
        while net.iteration < total:
            end = segment_end(net.iteration, total, run, segmented)
            began = time.perf_counter()
            try:
                rows = net.train_segment(data.images, data.labels, run, end, on_row, progress)
            except Diverged as e:
                raise RuntimeError(f"{e}: not saved, {path} keeps its last save; "
                                   "try a smaller --lr") from None
            net.run_info["wall_s"] = wall + time.perf_counter() - began
            net.run_info["batches"] = getattr(net, "batches", run.batches)
            saving = time.perf_counter()
            if not run.save_every or net.iteration % run.save_every == 0 or net.iteration == total:
                net.save(path)
            save_s = time.perf_counter() - saving
            for row in rows:
                row["wall_s"] = wall + row.pop("segment_s")
                row["epoch"] = row["iteration"] * run.batch_size / run.images
                row["save_s"] = 0.0
                row.setdefault("rss_mb", rss_mb())
            wall += time.perf_counter() - began
            rows[-1].update(save_s=save_s, wall_s=wall)
            if run.eval_every and (net.iteration % run.eval_every == 0 or net.iteration == total):
                evaluating = time.perf_counter()
                rows[-1]["test_accuracy"] = net.accuracy(test.images, test.labels)
                rows[-1]["eval_s"] = time.perf_counter() - evaluating   # not in wall_s
                _print_accuracy(rows[-1], out)
            for row in rows:
                metrics.write(row)
    backends = getattr(net, "im2col_backends", None)
    if backends:
        print(f"im2col back end in the Spark tasks: {', '.join(sorted(backends))}", file=out)
    print(f"parameters saved to {path}", file=out)


def _print_iteration(record, out):
    exchange = ""
    if "store_write_s" in record:
        exchange = (f" stored {record['store_bytes'] / 2**20:.1f} MB "
                    f"(write {record['store_write_s']:.2f}s read {record['store_read_s']:.2f}s)")
    elif record.get("store_bytes"):
        exchange = f" kept {record['store_bytes'] / 2**20:.1f} MB in Spark"
    elif "allreduce_s" in record:
        exchange = f" all-reduce {record['allreduce_s'] * 1000:.1f}ms over {record['tasks']} tasks"
    if record.get("recomputed_batches"):
        exchange += f", {record['recomputed_batches']} lost batches recomputed"
    print(f"iteration {record['iteration']}: forward {record['forward_s']:.2f}s "
          f"backward {record['backward_s']:.2f}s loss {record['loss']:.4f} "
          f"({record['images_per_s']:.0f} images/s){exchange}", file=out, flush=True)


def _print_accuracy(record, out):
    print(f"iteration {record['iteration']}: test accuracy {record['test_accuracy']:.4f} "
          f"(epoch {record['epoch']:.2f}, {record['wall_s']:.0f}s)", file=out, flush=True)


def evaluate(script, split, args, out=sys.stdout):
    """Print the accuracy of the saved parameters on the first args.images images of a split."""
    settings = Settings.from_flags(args)
    exchange = run_config.exchange_of(script, getattr(args, "exchange", None))
    check_settings(exchange, settings)
    if exchange == "allreduce":
        exchange = "none"             # prediction is one stage of B tasks whatever the exchange
    batches = getattr(args, "batches", None)
    check_batches(batches, args.images)
    path = checkpoint_path(settings, script)
    saved = CNN.load(path)
    # the data is read as the checkpoint's run read it, unless the command line says
    reading = dict(saved.run_info, seed=saved.seed)
    reading.update({key: getattr(args, key) for key in DATA_FLAGS
                    if getattr(args, key, None) is not None})
    data = load_images(settings, split, args.images, data_options(reading, settings))
    check_fits(saved, path, data, settings.data_dir)               # before Spark starts
    with open_trainer(exchange, batches, script, settings, args.debug, checkpoint=path) as net:
        predicted = net.predict(data.images, progress_for(len(data), "evaluating"))
    correct = int(np.sum(predicted == data.labels))
    print(f"{correct} of {len(data)} {split} images right (parameters of iteration "
          f"{net.iteration})", file=out)
    from .evaluation import confusion_matrix, per_class_lines
    matrix = confusion_matrix(data.labels, predicted, net.num_classes)
    lines = per_class_lines(matrix, net.class_names or data.class_names)
    table = lines.index("confusion matrix (rows: true class, columns: predicted):")
    for line in lines if getattr(args, "per_class", False) else lines[:table]:
        print(line, file=out)
    print(f"accuracy {correct / len(data):.4f} on {len(data)} images", file=out)
