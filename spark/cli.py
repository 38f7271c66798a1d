"""Command lines of the entry scripts, and turning errors into one-line messages.

Exit codes: 0 done, 1 the run failed (message says why), 2 bad command line
(usage printed), 130 interrupted. A traceback is shown only with --debug.
"""
import argparse
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


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def _common(parser, distributed):
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                        help="CIFAR-10 python-version folder, .tar.gz or binary folder "
                             f"(env {env_name('data_dir')}; default data/cifar-10-batches-py)")
    parser.add_argument("--params-dir", dest="params_dir", metavar="DIR",
                        help=f"where parameters are saved (env {env_name('params_dir')}; default params)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    if distributed:
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
        prog=prog, description="Train the CNN on the first N CIFAR-10 training images.")
    parser.add_argument("images", nargs="?", type=_positive_int, default=1000,
                        help="number of training images N (default 1000)")
    parser.add_argument("iterations", nargs="?", type=_count, default=20,
                        help="number of iterations, each one forward + backward pass "
                             "over a batch and one update (default 20)")
    if distributed:
        parser.add_argument("batches", nargs="?", type=_positive_int, default=4,
                            help="number of batches B = Spark tasks per stage (default 4)")
    parser.add_argument("--minibatch", type=_positive_int, metavar="M",
                        help="images per iteration, taken in turn from the N (default N)")
    parser.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 0.001)")
    parser.add_argument("--momentum", type=_positive_float, default=0.9, help="momentum (default 0.9)")
    parser.add_argument("--reg", type=_positive_float, default=5e-4,
                        help="L2 regularisation strength (default 5e-4)")
    parser.add_argument("--seed", type=_count, default=0, help="weight initialisation seed (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="floating point type (default float32)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the saved parameters instead of starting afresh")
    parser.add_argument("--metrics", metavar="FILE",
                        help="append one JSON line of timings and loss per iteration to FILE")
    _common(parser, distributed)
    return parser


def test_parser(prog, distributed, split):
    """Command line of the evaluation scripts: [num images] (+ [num iterations] [num batches])."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Accuracy of the saved parameters on the first N CIFAR-10 {split} images.")
    parser.add_argument("images", nargs="?", type=_positive_int, default=1000,
                        help="number of images N (default 1000)")
    if distributed:
        parser.add_argument("iterations", nargs="?", type=_count, default=0,
                            help="accepted for the training command line's sake; not used")
        parser.add_argument("batches", nargs="?", type=_positive_int, default=4,
                            help="number of batches B = Spark tasks (default 4)")
    _common(parser, distributed)
    return parser


_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def one_line(error):
    """A failure in one line. A Spark job failure carries the Python worker's
    traceback inside a Java one: report the worker's own error line."""
    text = str(error).strip() or type(error).__name__
    lines = text.splitlines()
    if len(lines) > 1:
        raised = [m for m in map(_PYTHON_ERROR.match, lines) if m]
        if raised:
            name, message = raised[-1].groups()
            return f"{message} ({name.rsplit('.', 1)[-1]} in a Spark task)"
        return lines[0]
    return text


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
