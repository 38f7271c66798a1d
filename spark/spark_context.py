"""Making the SparkContext and the Spark networks for the entry scripts."""
import contextlib
import os

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def spark_conf(app_name, debug=False):
    """SparkConf for a run: spark-submit's settings win; local[*] if no master was given.

    Spark's own log is limited to FATAL unless `debug` (or set by
    SPARK_CNN_SPARK_LOG_LEVEL / spark.log.level): a failed run ends with our
    one-line error, and --debug shows everything.
    Each Python worker's BLAS gets as many threads as a task has cores
    (spark.task.cpus), so concurrent tasks do not oversubscribe the machine.
    """
    from pyspark import SparkConf, SparkContext

    # Start Spark's JVM first: only then does SparkConf see what spark-submit,
    # spark-defaults.conf or PYSPARK_SUBMIT_ARGS set (spark.master among them).
    SparkContext._ensure_initialized()
    conf = SparkConf()
    if not conf.contains("spark.app.name"):
        conf.setAppName(app_name)
    if not conf.contains("spark.master"):
        conf.setMaster("local[*]")
    if not conf.contains("spark.ui.showConsoleProgress"):
        conf.set("spark.ui.showConsoleProgress", "false")    # our own lines say where a run is
    if not conf.contains("spark.log.level"):
        default = "WARN" if debug else "FATAL"
        conf.set("spark.log.level", os.environ.get("SPARK_CNN_SPARK_LOG_LEVEL", default))
    cpus = conf.get("spark.task.cpus", "1")
    for variable in BLAS_THREAD_VARIABLES:
        key = f"spark.executorEnv.{variable}"
        if not conf.contains(key):
            conf.set(key, cpus)
    # sc.wholeTextFiles packs small files into one partition unless opening a
    # file is priced low: each marker file (batch) must get its own partition.
    if not conf.contains("spark.files.openCostInBytes"):
        conf.set("spark.files.openCostInBytes", "1")
    return conf


@contextlib.contextmanager
def spark_context(app_name, debug=False):
    """A SparkContext that is always stopped."""
    from pyspark import SparkContext

    sc = SparkContext.getOrCreate(spark_conf(app_name, debug))
    try:
        yield sc
    finally:
        sc.stop()


def network_class(kind):
    if kind == "spark":
        from .spark_cnn import SparkCNN
        return SparkCNN
    if kind == "locality":
        from .locality_cnn import LocalityCNN
        return LocalityCNN
    raise ValueError(f"unknown trainer {kind!r}")


@contextlib.contextmanager
def spark_network(kind, settings, args, checkpoint=None, **options):
    """A SparkCNN or LocalityCNN on a fresh SparkContext; its intermediates are
    deleted and Spark stopped on the way out, also after a failure."""
    cls = network_class(kind)
    with spark_context(f"spark-cnn {kind}", getattr(args, "debug", False)) as sc:
        extra = dict(sc=sc, settings=settings, batches=args.batches)
        net = cls.load(checkpoint, **extra, **options) if checkpoint else cls(**extra, **options)
        try:
            yield net
        except BaseException:
            net.clear_quietly()
            raise
        net.close()
