"""Command lines of the entry scripts, and turning errors into one-line messages.

Exit codes: 0 done, 1 the run failed (message says why), 2 bad command line
(usage printed), 130 interrupted. A traceback is shown only with --debug.
"""
import argparse
import math
import re
import sys
import traceback

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
            raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {value}")
        return value
    return parse


_positive_int, _count = _whole_number(1), _whole_number(0)


def _fraction(text):
    """argparse type: a number in [0, 1)."""
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number below 1, got {text}")
    return value


def _arch(text):
    """argparse type: an --arch layer string -> list of layer dicts."""
    from .arch import parse_arch
    try:
        return parse_arch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(text):
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


# Defaults of the training flags. The parser leaves them None so that a run can
# tell a flag given on the command line from one left out: with --resume, what
# was left out comes from the checkpoint (spark.runner.resolve_run).
TRAIN_DEFAULTS = dict(images=1000, batches=4, lr=1e-3, momentum=0.9, reg=5e-4, seed=0,
                      dtype="float32", label_smoothing=0.0, schedule="constant", warmup=0,
                      order="shuffle", augment=False, augment_pad=2, arch=None,
                      schedule_length=None, nesterov=False, exchange_dtype=None)


# --exchange: where a Spark run keeps what its forward stage leaves for its backward stage.
EXCHANGES = ("hdfs", "redis", "spark", "none")
DEFAULT_EXCHANGE = {"spark": "hdfs", "locality": "redis"}     # by script: spark_*.py, locality_*.py


def exchange_mode(kind, args):
    """The exchange of a Spark run: --exchange, else its script's; None for the local trainer."""
    if kind not in DEFAULT_EXCHANGE:
        return None
    return getattr(args, "exchange", None) or DEFAULT_EXCHANGE[kind]


def _common(parser, distributed):
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                        help="CIFAR-10 python-version folder, .tar.gz or binary folder "
                             f"(env {env_name('data_dir')}; default data/cifar-10-batches-py)")
    parser.add_argument("--params-dir", dest="params_dir", metavar="DIR",
                        help=f"where parameters are saved (env {env_name('params_dir')}; default params)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    if distributed:
        parser.add_argument("--exchange", choices=EXCHANGES,
                            help="where the forward stage's layer matrices wait for the backward "
                                 "stage: hdfs files, node-local redis, spark's own block manager "
                                 "(a persisted RDD), or none (forward and backward in one task); "
                                 "default hdfs for spark_*.py, redis for locality_*.py")
        parser.add_argument("--redis", metavar="HOST:PORT,...",
                            help=f"Redis servers, the local node first (env {env_name('redis')})")
        parser.add_argument("--webhdfs", metavar="URL",
                            help=f"NameNode WebHDFS address (env {env_name('webhdfs')})")
        parser.add_argument("--hdfs", metavar="URL",
                            help=f"hdfs:// address Spark reads (env {env_name('hdfs')})")
        parser.add_argument("--hdfs-user", dest="hdfs_user", metavar="USER",
                            help=f"HDFS user (env {env_name('hdfs_user')}; default: you)")
        parser.add_argument("--hdfs-root", dest="hdfs_root", metavar="PATH",
                            help=f"HDFS working folder (env {env_name('hdfs_root')}; default /spark-cnn)")


def train_parser(prog, distributed):
    """Command line of the trainers: [num images] [num iterations] (+ [num batches])."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Train the CNN on the first N CIFAR-10 training images. With --resume, "
                    "settings left out come from the checkpoint.")
    parser.add_argument("images", nargs="?", type=_positive_int,
                        help="number of training images N (default 1000; with --resume, "
                             "the checkpoint's)")
    parser.add_argument("iterations", nargs="?", type=_count, default=20,
                        help="total number of iterations, each one forward + backward pass "
                             "over a batch and one update; --resume trains until the "
                             "checkpoint has this many (default 20)")
    if distributed:
        parser.add_argument("batches", nargs="?", type=_positive_int,
                            help="number of batches B = Spark tasks per stage (default 4; "
                                 "with --resume, the checkpoint's)")
    parser.add_argument("--minibatch", type=_positive_int, metavar="M",
                        help="images per iteration, taken in turn from the N (default N)")
    parser.add_argument("--lr", type=_positive_float, help="learning rate (default 0.001)")
    parser.add_argument("--momentum", type=_positive_float, help="momentum (default 0.9)")
    parser.add_argument("--reg", type=_positive_float,
                        help="L2 regularisation strength (default 5e-4)")
    parser.add_argument("--seed", type=_count, help="weight initialisation seed (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="floating point type (default float32)")
    recipe = parser.add_argument_group("training recipe")
    recipe.add_argument("--arch", type=_arch, metavar="LAYERS",
                        help="the network as a layer string, e.g. conv64-relu-pool-conv128-relu-"
                             "pool-fc10 (default conv64-relu-pool-fc10; see spark/arch.py)")
    recipe.add_argument("--augment", action="store_true", default=None,
                        help="random crop of the image padded by --augment-pad pixels and random "
                             "horizontal flip, drawn per image per iteration from --seed")
    recipe.add_argument("--augment-pad", dest="augment_pad", type=_count, metavar="P",
                        help="padding of the random crop (default 2)")
    recipe.add_argument("--schedule", choices=("constant", "cosine", "step"),
                        help="learning-rate schedule over [num iterations]: constant (default), "
                             "cosine to 0, or step (x0.1 at 50%% and 75%%)")
    recipe.add_argument("--schedule-length", dest="schedule_length", type=_positive_int,
                        metavar="K", help="iterations the schedule spans (default [num "
                                          "iterations]; with --resume, the checkpoint's)")
    recipe.add_argument("--warmup", type=_count, metavar="K",
                        help="first K iterations rise linearly to --lr (default 0)")
    recipe.add_argument("--label-smoothing", dest="label_smoothing", type=_fraction, metavar="E",
                        help="target (1 - E) on the label plus E / classes on every class "
                             "(default 0)")
    recipe.add_argument("--nesterov", action="store_true", default=None,
                        help="Nesterov momentum (default: plain momentum)")
    recipe.add_argument("--exchange-dtype", dest="exchange_dtype", choices=("float32", "float16"),
                        help="float type of the activations kept between the forward and the "
                             "backward pass (what the Spark exchanges store; the local trainer "
                             "rounds the same ones): float16 halves them (default: --dtype, "
                             "nothing rounded)")
    recipe.add_argument("--order", choices=("shuffle", "cycle"),
                        help="minibatches from a new permutation of the N images every epoch "
                             "(shuffle, default; drawn from --seed) or in stored order (cycle)")
    recipe.add_argument("--eval-every", dest="eval_every", type=_count, metavar="K",
                        help="accuracy on the test images every K iterations and at the end, "
                             "printed and in the metrics as test_accuracy (default: never)")
    recipe.add_argument("--eval-images", dest="eval_images", type=_positive_int, metavar="N",
                        help="test images --eval-every uses (default: all of them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the saved run with its settings (--lr, --momentum, --reg "
                             "given here override them) until it has [num iterations]")
    parser.add_argument("--save-every", dest="save_every", type=_positive_int, default=1,
                        metavar="K", help="save the checkpoint every K iterations and at the "
                                          "end (default 1); --resume goes on from the last save")
    parser.add_argument("--metrics", metavar="FILE",
                        help="append one JSON line of timings and loss per iteration to FILE")
    _common(parser, distributed)
    return parser


def test_parser(prog, distributed, split):
    """Command line of the evaluation scripts: [num images] (+ [num iterations] [num batches])."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description=f"Accuracy of the saved parameters on the first N CIFAR-10 {split} images.")
    parser.add_argument("images", nargs="?", type=_positive_int, default=1000,
                        help="number of images N (default 1000)")
    if distributed:
        parser.add_argument("iterations", nargs="?", type=_count, default=0,
                            help="accepted for the training command line's sake; not used")
        parser.add_argument("batches", nargs="?", type=_positive_int, default=4,
                            help="number of batches B = Spark tasks (default 4)")
    parser.add_argument("--per-class", dest="per_class", action="store_true",
                        help="also print the accuracy of every class and the confusion matrix")
    _common(parser, distributed)
    return parser


# The line a Python traceback ends with: "module.Name: message" or a bare "Name".
_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*)(?:: ?(.*))?$")
# A Java exception: "org.pkg.SomeException: message" (message optional).
_JAVA_ERROR = re.compile(r"^((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*)(?:: ?(.*))?$")
_JAVA_CLASS_PREFIX = re.compile(r"\b(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ")
_SPARK_STAGE_FAILURE = re.compile(r"^Job aborted due to stage failure: .*?"
                                  r"most recent failure: Lost task [^:]*: ")


def _python_error(lines):
    """(name, message) of the error the last Python traceback in `lines` ends
    with: the exception the worker raised, after any it was chained from."""
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last):" in line]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if not line.strip() or line[0] in " \t":
            continue                            # frames, source lines, carets
        match = _PYTHON_ERROR.match(line.rstrip())
        if match:
            return match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()
        return None
    return None


def _java_message(message):
    """A Java exception message without the noise: nested class names, wiki pointers."""
    inner = _SPARK_STAGE_FAILURE.sub("", message)
    inner = _JAVA_CLASS_PREFIX.sub("", inner)
    inner = re.sub(r";\s*For more details see:.*$", "", inner)
    inner = re.sub(r"\.?\s*Consider setting .*$", "", inner)       # Spark's faulthandler advice
    return inner.strip()


def _java_error(lines):
    """(class, message) of the deepest Java cause with a message, or None.

    The chain is the exception the Py4J call failed with (the line after
    "An error occurred while calling ...") and every "Caused by:" line. A
    cause's message is replaced by a shallower one of the same class that
    contains it (e.g. Hadoop's "Call From a to b failed on connection
    exception: ...Connection refused" over plain "Connection refused").
    """
    chain = []
    for line in lines:
        text = line.strip()
        if text.startswith("Caused by:"):
            text = text[len("Caused by:"):].strip()
        elif text.startswith(": "):
            text = text[2:].strip()
        else:
            continue
        match = _JAVA_ERROR.match(text)
        if match:
            chain.append((match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()))
    with_message = [(name, message) for name, message in chain if message]
    if not with_message:
        return chain[-1] if chain else None
    name, message = with_message[-1]
    for outer_name, outer in with_message[:-1]:
        if (outer_name == name and message in outer and outer != message
                and not _SPARK_STAGE_FAILURE.match(outer)):
            message = outer
            break
    return name, _java_message(message) or message


def one_line(error):
    """A failure in one line, for people.

    A failed Spark job arrives as a Py4J error whose text is a Java stack trace,
    possibly holding the Python worker's traceback. Reported is the deepest real
    cause: the worker's own error line if there is one, else the last Java
    "Caused by:" with a message, never Py4J's "An error occurred while calling ...".
    """
    try:
        text = str(error).strip() or type(error).__name__
    except Exception:  # noqa: BLE001 - a Py4J error asks the JVM for its text; it may be gone
        return (f"a Spark call failed and Spark's JVM cannot say why any more "
                f"({type(error).__name__}; it has probably stopped)")
    lines = text.splitlines()
    if len(lines) == 1:
        return text
    python = _python_error(lines)
    if python:
        name, message = python
        return f"{message} ({name} in a Spark task)" if message else f"{name} in a Spark task"
    if lines[0].startswith("An error occurred while calling") or any(
            line.lstrip().startswith(("Caused by:", "at ")) for line in lines):
        java = _java_error(lines)
        if java:
            name, message = java
            return f"{message} ({name} in Spark)" if message else f"{name} in Spark"
    return lines[0]


def run(main, parser, argv=None):
    """Parse `argv`, call `main(args)`, and turn failures into one line and an exit code."""
    args = parser.parse_args(argv)
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
