"""The SparkContext of a run, and the few things PySpark does not offer itself."""
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
    # On a cluster, start once every executor asked for has registered (up to a
    # minute): the first iteration's batches then spread over all the nodes.
    if not conf.contains("spark.scheduler.minRegisteredResourcesRatio"):
        conf.set("spark.scheduler.minRegisteredResourcesRatio", "1.0")
    if not conf.contains("spark.scheduler.maxRegisteredResourcesWaitingTime"):
        conf.set("spark.scheduler.maxRegisteredResourcesWaitingTime", "60s")
    # A barrier stage (--exchange allreduce) that wants more task slots than
    # there are: Spark gives up after interval x maxFailures (default 10 minutes).
    if not conf.contains("spark.scheduler.barrier.maxConcurrentTasksCheck.interval"):
        conf.set("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "5s")
    if not conf.contains("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures"):
        conf.set("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "12")
    # Broadcasts here are image arrays and parameters, which LZ4 shrinks by under 1%
    # (CIFAR-10's 153 MB: 0.7%); on local[2] that broadcast took 1.79 s compressed
    # and 0.24 s not.
    if not conf.contains("spark.broadcast.compress"):
        conf.set("spark.broadcast.compress", "false")
    cpus = conf.get("spark.task.cpus", "1")
    for variable in BLAS_THREAD_VARIABLES:
        key = f"spark.executorEnv.{variable}"
        if not conf.contains(key):
            conf.set(key, cpus)
    return conf


@contextlib.contextmanager
def spark_context(app_name, debug=False):
    """The SparkContext of a run: a new one, always stopped at the end; or, called
    where one is running already (a Spark ML pipeline's fit), that one, left running."""
    from pyspark import SparkContext

    running = SparkContext._active_spark_context
    if running is not None:
        yield running
        return
    sc = SparkContext.getOrCreate(spark_conf(app_name, debug))
    try:
        yield sc
    finally:
        sc.stop()


def executor_hosts(sc):
    """The hosts Spark's scheduler knows executors by (the driver's included)."""
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    return {info.host() for info in infos}


def located_rdd(sc, items):
    """An RDD of strings, one partition each, with the host Spark should run each on.

    items: [(text, host or None)]. PySpark's parallelize takes no location
    preferences; Scala's SparkContext.makeRDD does, and its RDD of strings
    reads in Python as sc.textFile's does. A host with no live executor is
    no obstacle: Spark runs the task elsewhere after spark.locality.wait.
    """
    from pyspark.rdd import RDD
    from pyspark.serializers import UTF8Deserializer

    jvm = sc._jvm
    to_seq = jvm.scala.jdk.javaapi.CollectionConverters.asScala
    pairs = jvm.java.util.ArrayList()
    for text, host in items:
        hosts = jvm.java.util.ArrayList()
        if host:
            hosts.add(host)
        pairs.add(jvm.scala.Tuple2(text, to_seq(hosts).toSeq()))
    string_tag = jvm.scala.reflect.ClassTag.apply(jvm.java.lang.String._java_lang_class)
    jrdd = sc._jsc.sc().makeRDD(to_seq(pairs).toSeq(), string_tag)
    return RDD(jrdd.toJavaRDD(), sc, UTF8Deserializer())


def group_stages(sc, group):
    """The StageInfos (None for stages Spark has forgotten) of every job of a job group."""
    tracker = sc.statusTracker()
    jobs = [tracker.getJobInfo(job_id) for job_id in tracker.getJobIdsForGroup(group)]
    return [tracker.getStageInfo(stage_id) for job in jobs if job for stage_id in job.stageIds]


def cancel_and_wait(sc, group, timeout):
    """Cancel a job group and wait (up to `timeout` s) until none of its tasks still runs,
    so nothing a cancelled task does can come after the clean-up that follows."""
    import time

    sc.cancelJobGroup(group)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(stage and stage.numActiveTasks for stage in group_stages(sc, group)):
            return True
        time.sleep(0.1)
    return False


def task_slots(sc):
    """How many tasks the cluster runs at once now: what a barrier stage may have
    (Spark's own count, the one its barrier check uses)."""
    jsc = sc._jsc.sc()
    return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))


def task_max_failures(sc):
    """Spark's spark.task.maxFailures for this master: the attempts a task gets
    (local[N] allows 1, local[N,F] F, a cluster 4 unless set)."""
    import re

    match = re.fullmatch(r"local\[(\d+|\*),\s*(\d+)\]", sc.master)
    if match:
        return int(match.group(2))
    if sc.master.startswith("local"):
        return 1
    return int(sc.getConf().get("spark.task.maxFailures", "4"))
