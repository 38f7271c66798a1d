"""Which network class trains a run, by its exchange, and opening one.

The registry sits above the classes it lists: spark_context and the network
modules import nothing from here.
"""
import contextlib

from .cnn import CNN


def trainer_class(exchange):
    """The network class of an exchange ("local" or a --exchange mode)."""
    if exchange == "local":
        return CNN
    if exchange == "hdfs":
        from .spark_cnn import SparkCNN
        return SparkCNN
    if exchange == "redis":
        from .locality_cnn import LocalityCNN
        return LocalityCNN
    if exchange == "spark":
        from .memory_cnn import CachedCNN
        return CachedCNN
    if exchange == "none":
        from .memory_cnn import FusedCNN
        return FusedCNN
    if exchange == "allreduce":
        from .allreduce_cnn import AllReduceCNN
        return AllReduceCNN
    raise ValueError(f"unknown exchange {exchange!r}")


@contextlib.contextmanager
def open_trainer(exchange, batches, script, settings, debug=False, checkpoint=None, **options):
    """The network of an exchange, fresh or loaded from `checkpoint` (its saved
    settings replaced by `options`), ready to use.

    The Spark ones run B = `batches` tasks (None: see the class) on a
    SparkContext of their own (application "spark-cnn <script>"); their
    intermediates are deleted and Spark stopped on the way out, also after a
    failure.
    """
    cls = trainer_class(exchange)
    if cls is CNN:
        yield CNN.load(checkpoint, **options) if checkpoint else CNN(**options)
        return
    from .spark_context import spark_context
    with spark_context(f"spark-cnn {script}", debug) as sc:
        extra = dict(sc=sc, settings=settings, batches=batches)
        net = cls.load(checkpoint, **extra, **options) if checkpoint else cls(**extra, **options)
        try:
            yield net
        except BaseException:
            net.close(quietly=True)
            raise
        net.close()
