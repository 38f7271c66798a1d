"""What the entry scripts do: train with progress lines and checkpoints, or evaluate.

`kind` names the trainer: "naive" (local), "spark" (HDFS exchange) or
"locality" (Redis exchange). The Spark kinds need a SparkContext; it is made
here and always stopped.
"""
import contextlib
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from .checkpoint import CheckpointError, remove_stale_temporaries
from .data.cifar10 import TooFewImagesError, load_cifar10
from .cli import TRAIN_DEFAULTS, UsageError, exchange_mode
from .im2col import backend as im2col_backend
from .metrics import MetricsError, MetricsLog, rss_mb
from .progress import NoProgress, Progress
from .recipe import batch_indices, draw_augmentation, learning_rate
from .settings import Settings

# Iterations or evaluations over at least this many images get a progress bar.
PROGRESS_FROM = 20000


def checkpoint_path(settings, kind):
    return os.path.join(settings.params_dir, f"{kind}.npz")


def load_images(settings, split, count):
    """The first `count` images of a split; too few images is a usage error."""
    try:
        return load_cifar10(settings.data_dir, split, limit=count)
    except TooFewImagesError as e:
        raise UsageError(f"asked for {count} images: {e}") from None


@contextlib.contextmanager
def open_network(kind, settings, args, checkpoint=None, **options):
    """A network of the given kind, fresh or loaded from `checkpoint`, ready to use."""
    if kind == "naive":
        from .cnn import CNN
        net = CNN.load(checkpoint, **options) if checkpoint else CNN(**options)
        yield net
        return
    from .spark_context import spark_network
    with spark_network(kind, settings, args, checkpoint, **options) as net:
        yield net


def check_settings(exchange, settings):
    """Settings that are wrong whatever else happens: refused before Spark starts.
    exchange: the run's --exchange (None for the local trainer)."""
    if exchange == "redis":
        from .storage.redis_store import parse_redis_addresses
        try:
            parse_redis_addresses(settings.redis)
        except ValueError as e:
            raise UsageError(f"--redis / SPARK_CNN_REDIS: {e}") from None


def check_batches(args, images, per=""):
    """Every batch (Spark task) needs at least one image: refused before Spark starts."""
    batches = getattr(args, "batches", 1)
    if batches > images:
        raise UsageError(f"{batches} batches for {images} images{per}: "
                         "each batch needs at least one image")


def load_saved(path, purpose):
    """The network saved at `path`, checked in full (before Spark starts)."""
    from .cnn import CNN
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
    classes = int(data.labels.max()) + 1 if len(data.labels) else 0
    if classes > saved.num_classes:
        raise CheckpointError(
            f"{path} holds a network with {saved.num_classes} classes, but the labels of "
            f"{data_dir} go up to {classes - 1}: it is another network's checkpoint")


_WORDS = {"images": "[num images]", "minibatch": "--minibatch", "seed": "--seed",
          "dtype": "--dtype", "lr": "--lr", "momentum": "--momentum", "reg": "--reg",
          "batches": "[num batches]", "label_smoothing": "--label-smoothing",
          "schedule": "--schedule", "warmup": "--warmup", "order": "--order",
          "augment": "--augment", "augment_pad": "--augment-pad", "arch": "--arch",
          "schedule_length": "--schedule-length", "nesterov": "--nesterov",
          "exchange_dtype": "--exchange-dtype"}
# Settings that make another run when changed (refused on --resume), and
# settings a resumed run may change from here on (with a note).
_FIXED = ("dtype", "seed", "images", "minibatch", "order", "augment", "augment_pad", "arch")
_ADJUSTABLE = ("lr", "momentum", "reg", "label_smoothing", "schedule", "warmup",
               "schedule_length", "nesterov", "exchange_dtype")
# What a checkpoint written before a setting existed was trained with.
_BEFORE_RECIPE = dict(order="cycle", augment=False, augment_pad=2, schedule="constant", warmup=0,
                      schedule_length=None)


def _canonical_arch(arch, saved):
    """An --arch list in the form the checkpoint's network records it (None if not given)."""
    if arch is None:
        return None
    from .cnn import CNN
    try:
        return CNN(arch=arch, input_shape=saved.input_shape).arch
    except ValueError:
        return arch                         # does not fit the saved network: differs anyway


def resolve_run(args, saved, path, err):
    """The settings of this run: flags, else (with --resume) the checkpoint's, else defaults.

    With --resume, the checkpoint's settings win. --lr, --momentum, --reg, the
    schedule, label smoothing, --nesterov and --exchange-dtype given on the
    command line override them (a note on `err` says so); a --dtype, --seed,
    number of images, --minibatch, --order, --augment or --arch that
    contradicts the checkpoint would make a different run and is a usage error.
    """
    given = {key: getattr(args, key, None) for key in TRAIN_DEFAULTS}
    given["minibatch"] = getattr(args, "minibatch", None)
    if saved is None:
        run = {key: TRAIN_DEFAULTS[key] if given[key] is None else given[key]
               for key in TRAIN_DEFAULTS}
        run["minibatch"] = given["minibatch"] or run["images"]
        return run
    info = saved.run_info
    kept = dict(lr=saved.lr, momentum=saved.momentum, reg=saved.reg, seed=saved.seed,
                dtype=saved.dtype.name, label_smoothing=saved.label_smoothing,
                nesterov=saved.nesterov, exchange_dtype=saved.exchange_dtype.name,
                images=info.get("images"), minibatch=info.get("minibatch"),
                batches=info.get("batches"), arch=saved.arch)
    kept.update({key: info.get(key, before) for key, before in _BEFORE_RECIPE.items()})
    given["arch"] = _canonical_arch(given["arch"], saved)
    for key in _FIXED:
        if given[key] is not None and kept[key] is not None and given[key] != kept[key]:
            raise UsageError(
                f"{_WORDS[key]} {_word(key, given[key])} contradicts {path}, whose run has "
                f"{_word(key, kept[key])}: "
                "leave it out to resume that run, or start afresh without --resume")
    run = {key: kept[key] if given[key] is None else given[key] for key in kept}
    if run["images"] is None:                      # a checkpoint that does not say
        run["images"] = TRAIN_DEFAULTS["images"]
    if run["minibatch"] is None:
        run["minibatch"] = run["images"]
    if run["batches"] is None:
        run["batches"] = TRAIN_DEFAULTS["batches"]
    for key in _ADJUSTABLE:
        if given[key] is not None and given[key] != kept[key]:
            print(f"note: {_WORDS[key]} {given[key]} replaces {kept[key]} of {path} "
                  "from here on", file=err)
    if given["batches"] is not None and kept["batches"] not in (None, given["batches"]):
        print(f"note: {given['batches']} batches where {path} had {kept['batches']}: "
              "gradients are summed in another order (results differ in rounding)", file=err)
    return run


def _word(key, value):
    """A setting's value as the command line writes it."""
    if key == "arch" and value is not None:
        from .arch import format_arch
        return format_arch(value)
    return value


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


def train(kind, args, out=sys.stdout, err=sys.stderr):
    """Train until the checkpoint has args.iterations iterations, saving after each one.

    Everything that can be checked before Spark starts is: the command line
    against the checkpoint (--resume), the data, the metrics file, the
    parameters folder. A run that fails leaves the last saved checkpoint whole.
    """
    settings = Settings.from_flags(args)
    check_settings(exchange_mode(kind, args), settings)
    path = checkpoint_path(settings, kind)
    saved = load_saved(path, "--resume") if args.resume else None
    run = resolve_run(args, saved, path, err)
    images, minibatch, total = run["images"], run["minibatch"], args.iterations
    if hasattr(args, "batches"):
        args.batches = run["batches"]                  # what the Spark network is made with
    if minibatch > images:
        raise UsageError(f"--minibatch {minibatch} is larger than the {images} images")
    check_batches(args, minibatch, " per iteration")
    start = saved.iteration if saved is not None else 0
    if saved is not None and start >= total:
        print(f"{path} is already at iteration {start} ({total} asked for): nothing to train",
              file=out)
        return
    if total == 0:
        print("0 iterations asked for: nothing trained, nothing saved", file=out)
        return
    data = load_images(settings, "train", images)
    if saved is not None:
        check_fits(saved, path, data, settings.data_dir)
    test = None
    if args.eval_every:
        test = load_images(settings, "test", args.eval_images)
        check_batches(args, len(test), " of --eval-images")
    try:
        metrics = MetricsLog(args.metrics)
    except MetricsError as e:
        raise UsageError(f"--metrics: {e}") from None
    with metrics:
        check_params_dir(settings)
        for leftover in remove_stale_temporaries(settings.params_dir):
            print(f"note: removed {leftover}, an unfinished save of a run that was killed",
                  file=err)
        options = dict(lr=run["lr"], momentum=run["momentum"], reg=run["reg"],
                       label_smoothing=run["label_smoothing"], nesterov=run["nesterov"],
                       exchange_dtype=run["exchange_dtype"])
        if saved is None:
            options.update(dtype=run["dtype"], seed=run["seed"])
            if run["arch"] is not None:
                options["arch"] = run["arch"]
        with open_network(kind, settings, args, path if saved is not None else None,
                          **options) as net:
            wall = float(net.run_info.get("wall_s", 0.0)) if saved is not None else 0.0
            run["schedule_length"] = run["schedule_length"] or total
            if run["schedule"] != "constant" and total > run["schedule_length"]:
                print(f"note: the {run['schedule']} schedule ends at iteration "
                      f"{run['schedule_length']}; iterations after it keep its last rate "
                      "(--schedule-length stretches it)", file=err)
            net.run_info = {key: run[key] for key in (
                "images", "minibatch", "order", "augment", "augment_pad", "schedule", "warmup",
                "schedule_length")}
            if hasattr(args, "batches"):
                net.run_info["batches"] = args.batches
            _train_loop(kind, net, data, test, run, total, path, settings, metrics, out,
                        args, wall)


def _train_loop(kind, net, data, test, run, total, path, settings, metrics, out, args, wall):
    images, minibatch = run["images"], run["minibatch"]
    print(f"training {kind} CNN on {images} images of {settings.data_dir}: "
          f"{total - net.iteration} iterations of {minibatch} images, from iteration "
          f"{net.iteration} to {total} (im2col back end here: {im2col_backend()})", file=out)
    started = time.perf_counter() - wall
    with warnings.catch_warnings():
        # A diverging run is reported in one line (below), not by NumPy's warnings.
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=r"(overflow|invalid value|divide by zero) encountered")
        while net.iteration < total:
            save = net.iteration + 1 == total or (net.iteration + 1) % args.save_every == 0
            record = _iteration(net, data, run, path, started, save)
            if args.eval_every and (net.iteration % args.eval_every == 0
                                    or net.iteration == total):
                evaluating = time.perf_counter()
                record["test_accuracy"] = net.accuracy(test.images, test.labels)
                record["eval_s"] = time.perf_counter() - evaluating
                started += record["eval_s"]      # wall_s counts training, not evaluation
            metrics.write(record)
            _print_iteration(record, out)
    if getattr(net, "im2col_backends", None):
        print(f"im2col back end in the Spark tasks: {', '.join(sorted(net.im2col_backends))}",
              file=out)
    print(f"parameters saved to {path}", file=out)


def _iteration(net, data, run, path, started, save=True):
    """One iteration of the run's recipe -> its metrics record. Saved if `save`,
    and only if its loss and parameters are finite."""
    images, minibatch, i = run["images"], run["minibatch"], net.iteration
    index = batch_indices(i, minibatch, images, run["seed"], run["order"])
    augment = draw_augmentation(run["seed"], i, minibatch,
                                run["augment_pad"] if run["augment"] else None)
    lr = learning_rate(i, net.lr, run["schedule"], run["schedule_length"], run["warmup"])
    progress = (Progress(minibatch, f"iteration {i + 1}")
                if minibatch >= PROGRESS_FROM else NoProgress())
    record = net.train_iteration(data.images, data.labels, index, progress, augment, lr)
    if not np.isfinite(record["loss"]) or not all(
            np.all(np.isfinite(p)) for p in net.params().values()):
        raise RuntimeError(
            f"training diverged at iteration {net.iteration} (loss {record['loss']}): "
            f"not saved, {path} keeps its last save; try a smaller --lr")
    net.run_info["wall_s"] = time.perf_counter() - started
    saving = time.perf_counter()
    if save:
        net.save(path)
    record["save_s"] = time.perf_counter() - saving
    record["rss_mb"] = rss_mb()
    record["epoch"] = net.iteration * minibatch / images
    record["wall_s"] = time.perf_counter() - started
    return record


def _print_iteration(record, out):
    exchange = ""
    if "store_write_s" in record:
        exchange = (f" stored {record['store_bytes'] / 2**20:.1f} MB "
                    f"(write {record['store_write_s']:.2f}s read {record['store_read_s']:.2f}s)")
    elif record.get("store_bytes"):
        exchange = f" kept {record['store_bytes'] / 2**20:.1f} MB in Spark"
    if record.get("recomputed_batches"):
        exchange += f", {record['recomputed_batches']} lost batches recomputed"
    print(f"iteration {record['iteration']}: forward {record['forward_s']:.2f}s "
          f"backward {record['backward_s']:.2f}s loss {record['loss']:.4f} "
          f"({record['images_per_s']:.0f} images/s){exchange}", file=out, flush=True)
    if "test_accuracy" in record:
        print(f"iteration {record['iteration']}: test accuracy {record['test_accuracy']:.4f} "
              f"(epoch {record['epoch']:.2f}, {record['wall_s']:.0f}s)", file=out, flush=True)


def evaluate(kind, split, args, out=sys.stdout):
    """Print the accuracy of the saved parameters on the first args.images images of a split."""
    settings = Settings.from_flags(args)
    check_settings(exchange_mode(kind, args), settings)
    check_batches(args, args.images)
    path = checkpoint_path(settings, kind)
    data = load_images(settings, split, args.images)
    from .cnn import CNN
    check_fits(CNN.load(path), path, data, settings.data_dir)      # before Spark starts
    with open_network(kind, settings, args, path) as net:
        progress = (Progress(len(data), "evaluating") if len(data) >= PROGRESS_FROM
                    else NoProgress())
        predicted = net.predict(data.images, progress)
    correct = int(np.sum(predicted == data.labels))
    print(f"{correct} of {len(data)} {split} images right (parameters of iteration "
          f"{net.iteration})", file=out)
    if getattr(args, "per_class", False):
        from .evaluation import confusion_matrix, per_class_lines
        matrix = confusion_matrix(data.labels, predicted, net.num_classes)
        for line in per_class_lines(matrix, data.class_names):
            print(line, file=out)
    print(f"accuracy {correct / len(data):.4f} on {len(data)} images", file=out)
