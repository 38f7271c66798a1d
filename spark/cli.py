"""Command lines of the entry scripts, and their exit codes.

Exit codes: 0 done, 1 the run failed (one line says why), 2 bad command line
(usage printed), 130 interrupted. A traceback is shown only with --debug.

The training flags are made from the fields of spark.config.RunConfig, which
holds their defaults; the parser leaves every one of them None when it is not
given, so that --resume can tell a flag given from one left out.
"""
import argparse
import math
import sys
import traceback

from . import config
from .errors import one_line
from .settings import env_name


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2)."""


def _whole_number(minimum):
    """argparse type: a whole number of at least `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a number of at least {minimum}, got {value}")
        return value
    return parse


def _number(text):
    """argparse type: a finite number of at least 0 (no inf, no nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def _fraction(text):
    """argparse type: a number in [0, 1)."""
    value = _number(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number below 1, got {text}")
    return value


def _arch(text):
    """argparse type: an --arch layer string -> its canonical form."""
    from .arch import canonical_arch
    try:
        return canonical_arch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text):
    """argparse type: an --image-size "HxW" -> its canonical spelling "HxW"."""
    try:
        height, width = config.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return f"{height}x{width}"


def _open_fraction(text):
    """argparse type: a number strictly between 0 and 1."""
    value = _fraction(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


_positive, _count = _whole_number(1), _whole_number(0)
_TYPES = {"positive": _positive, "count": _count, "number": _number, "fraction": _fraction,
          "arch": _arch, "size": _size, "open_fraction": _open_fraction}
_GROUPS = {"recipe": "training recipe", "allreduce": "--exchange allreduce",
           "data": "the data (--data-dir)"}
# The data flags a test script takes too (by default it reads them from the checkpoint).
DATA_FLAGS = ("labels", "test_fraction", "image_size", "crop", "data_format", "image_column",
              "label_column")


def _add_config_flags(parser, distributed, only=None):
    """One flag per RunConfig field that has one (--exchange and the
    --exchange allreduce flags on the Spark scripts only; `only`: these fields)."""
    groups = {}
    for f in config.fields():
        cli = dict(f.metadata["cli"])
        if (not cli and f.name != "exchange") or (only is not None and f.name not in only):
            continue                                    # a positional argument
        group_name = cli.pop("group", None)
        if group_name == "allreduce" and not distributed:
            continue
        if f.name == "exchange":
            if distributed:
                parser.add_argument(
                    "--exchange", choices=config.EXCHANGES,
                    help="how the Spark tasks of an iteration combine their work: the forward "
                         "stage's layer matrices wait for the backward stage in hdfs files, "
                         "node-local redis or spark's own block manager (a persisted RDD); none: "
                         "forward and backward in one task; allreduce: one long Spark stage "
                         "whose tasks sum their gradients among themselves every iteration "
                         "(default hdfs for spark_*.py, redis for locality_*.py)")
            continue
        target = parser
        if group_name:
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(_GROUPS[group_name])
            target = groups[group_name]
        kind = cli.pop("kind", None)
        help_text = cli.pop("help")
        if only is not None:
            help_text = help_text.split(" (default")[0] + " (default: as the checkpoint's run)"
        elif f.default not in (None, False) and "default" not in help_text:
            help_text += f" (default {f.default})"
        options = dict(dest=f.name, help=help_text, **cli)
        if kind == "flag":
            options.update(action="store_true", default=None)
        elif kind is not None:
            options["type"] = _TYPES[kind]
        target.add_argument(f.metadata["word"], **options)


def _common(parser, distributed):
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                        help="the images: CIFAR-10 (python-version folder, .tar.gz or binary "
                             "folder), CIFAR-100, MNIST, an image folder tree, or Parquet (a "
                             "file, a folder, or hdfs:// / webhdfs://) "
                             f"(env {env_name('data_dir')}; default data/cifar-10-batches-py)")
    parser.add_argument("--params-dir", dest="params_dir", metavar="DIR",
                        help=f"where parameters are saved (env {env_name('params_dir')}; "
                             "default params)")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors, and Spark's own log")
    if distributed:
        parser.add_argument("--redis", metavar="HOST:PORT,...",
                            help=f"Redis servers, the local node first (env {env_name('redis')})")
        parser.add_argument("--webhdfs", metavar="URL",
                            help=f"NameNode WebHDFS address (env {env_name('webhdfs')})")
        parser.add_argument("--hdfs", metavar="URL", help=argparse.SUPPRESS)   # deprecated
        parser.add_argument("--hdfs-user", dest="hdfs_user", metavar="USER",
                            help=f"HDFS user (env {env_name('hdfs_user')}; default: you)")
        parser.add_argument("--hdfs-root", dest="hdfs_root", metavar="PATH",
                            help=f"HDFS working folder (env {env_name('hdfs_root')}; "
                                 "default /spark-cnn)")


def train_parser(prog, distributed):
    """Command line of the trainers: [num images] [num iterations] (+ [num batches])."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Train the CNN on the first N CIFAR-10 training images. With --resume, "
                    "settings left out come from the checkpoint.")
    parser.add_argument("images", nargs="?", type=_positive,
                        help=f"number of training images N (default {config.RunConfig.images}; "
                             "with --resume, the checkpoint's)")
    parser.add_argument("iterations", nargs="?", type=_count, default=20,
                        help="total number of iterations, each one forward + backward pass "
                             "over a batch and one update; --resume trains until the "
                             "checkpoint has this many (default 20)")
    if distributed:
        parser.add_argument("batches", nargs="?", type=_positive,
                            help="number of batches B = Spark tasks per stage (default "
                                 f"{config.DEFAULT_BATCHES}, --exchange allreduce: the task slots "
                                 "the cluster has; with --resume, the checkpoint's)")
    _add_config_flags(parser, distributed)
    parser.add_argument("--resume", action="store_true",
                        help="continue the saved run with its settings (--lr, --momentum, --reg "
                             "given here override them) until it has [num iterations]")
    parser.add_argument("--metrics", metavar="FILE",
                        help="append one JSON line of timings and loss per iteration to FILE")
    _common(parser, distributed)
    return parser


def test_parser(prog, distributed, split):
    """Command line of the evaluation scripts: [num images] (+ [num iterations] [num batches])."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description=f"Accuracy of the saved parameters on the first N CIFAR-10 {split} images.")
    parser.add_argument("images", nargs="?", type=_positive, default=1000,
                        help="number of images N (default 1000)")
    if distributed:
        parser.add_argument("iterations", nargs="?", type=_count, default=0,
                            help="accepted for the training command line's sake; not used")
        parser.add_argument("batches", nargs="?", type=_positive, default=config.DEFAULT_BATCHES,
                            help=f"number of batches B = Spark tasks (default "
                                 f"{config.DEFAULT_BATCHES})")
        parser.add_argument("--exchange", choices=config.EXCHANGES,
                            help="accepted for the training command line's sake: prediction is "
                                 "one Spark stage whatever the exchange")
    parser.add_argument("--per-class", dest="per_class", action="store_true",
                        help="also print the confusion matrix")
    _add_config_flags(parser, distributed, only=DATA_FLAGS)
    _common(parser, distributed)
    return parser


def given_settings(args):
    """{RunConfig field: the value on the command line, or None} for spark.config.resolve."""
    return {f.name: getattr(args, f.name, None) for f in config.fields()}


def run(main, parser, argv=None):
    """Parse `argv`, call `main(args)`, and turn failures into one line and an exit code."""
    args = parser.parse_args(argv)
    if getattr(args, "hdfs", None):
        print(f"{parser.prog}: note: --hdfs is no longer read (the backward tasks are placed "
              "without marker files); leave it out", file=sys.stderr)
    try:
        main(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one readable line
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0
