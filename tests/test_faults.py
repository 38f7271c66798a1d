"""Faults done to real processes and servers while the Spark trainers run.

In-process on local[2,3] (Spark retries a failed task up to 3 times): a
killed Python worker, a flushed Redis, deleted HDFS files. Through
spark-submit: a stalled Redis or DataNode (SIGSTOP), a killed driver, a Redis
that wants a password, a Redis down at the start, spark-submit's --master.
"""
import os
import signal
import subprocess
import threading
import time
import uuid

import numpy as np
import psutil
import pytest
from hdfs import InsecureClient
from project import ROOT
from sparkjobs import (
    RedisServer,
    job_env,
    kill_group,
    local_spark,
    python_workers,
    start_submit,
    submit,
    submit_command,
    wait_for,
)

from spark.locality_cnn import LocalityCNN
from spark.memory_cnn import CachedCNN
from spark.settings import Settings
from spark.spark_cnn import SparkCNN
from spark.spark_context import group_stages

KINDS = {"spark": SparkCNN, "locality": LocalityCNN, "spark-exchange": CachedCNN}


@pytest.fixture(scope="module")
def sc():
    with local_spark("spark-cnn fault tests", "local[2,3]") as context:
        yield context


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(str(tmp_path / "redis"))
    yield server
    server.stop()


def make_settings(redis, hdfs_settings, **extra):
    return Settings(data_dir="", params_dir="", redis=redis, webhdfs=hdfs_settings.webhdfs,
                    hdfs=hdfs_settings.hdfs, hdfs_user=hdfs_settings.user,
                    hdfs_root=f"/spark-cnn-faults/{uuid.uuid4().hex[:8]}", **extra)


def stage_running(sc, group):
    """Whether a job of `group` has a task running now."""
    return any(stage and stage.numActiveTasks > 0 for stage in group_stages(sc, group))


def failed_tasks(sc, group):
    return sum(stage.numFailedTasks for stage in group_stages(sc, group) if stage)


def kill_python_workers():
    """SIGKILL every Python worker running now -> their pids."""
    killed = []
    for worker in python_workers():
        try:
            worker.kill()
            killed.append(worker.pid)
        except psutil.NoSuchProcess:
            pass
    return killed


def kill_python_workers_of(sc, group, rounds=2, gap=0.05):
    """SIGKILL the Python workers while `group`'s stage runs, and once more after
    `gap` s if none of its tasks failed yet: a task can be active in the JVM
    before it reaches a worker, and killing idle workers fails nothing. Two
    rounds fail a task at most twice, under spark.task.maxFailures (3).
    -> the pids killed."""
    killed = []
    for _ in range(rounds):
        killed += kill_python_workers()
        time.sleep(gap)
        if failed_tasks(sc, group) or not stage_running(sc, group):
            break
    return killed


def train_with_fault(net, images, labels, iterations, fault_iteration, stage, fault):
    """Train, doing `fault()` from another thread once iteration `fault_iteration`'s
    `stage` has tasks running -> (metrics records, the fault's result)."""
    done = {}

    def inject():
        group = f"{net.run_id}-{fault_iteration}-{stage}"
        wait_for(lambda: stage_running(net.sc, group), 300, f"{group} to run", interval=0.01)
        done["result"] = fault()

    thread = threading.Thread(target=inject, daemon=True)
    thread.start()
    records = [net.train_iteration(images, labels) for _ in range(iterations)]
    thread.join(timeout=60)
    assert "result" in done, "the fault was never injected"
    return records, done["result"]


def reference_params(kind, settings, sc, images, labels, iterations):
    net = KINDS[kind](sc=sc, settings=settings, batches=4, seed=3, chunk=32)
    for _ in range(iterations):
        net.train_iteration(images, labels)
    net.close()
    return net.params()


def assert_same_params(a, b):
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("stage", ["forward", "backward"])
def test_killed_python_worker_is_retried_and_changes_nothing(stage, sc, redis_addresses,
                                                             hdfs_settings, synthetic_train):
    images, labels = synthetic_train.images[:1200], synthetic_train.labels[:1200]
    settings = make_settings(",".join(redis_addresses), hdfs_settings)
    expected = reference_params("locality", settings, sc, images, labels, 2)
    net = LocalityCNN(sc=sc, settings=settings, batches=4, seed=3, chunk=32)
    _, killed = train_with_fault(net, images, labels, 2, 2, stage, lambda: kill_python_workers_of(
        sc, f"{net.run_id}-2-{stage}"))
    assert killed, "no Python worker was running"
    assert failed_tasks(sc, f"{net.run_id}-2-{stage}") >= 1        # Spark saw the loss and retried
    net.close()
    assert_same_params(net.params(), expected)


def test_flushed_redis_matrices_are_recomputed(sc, own_redis, hdfs_settings, synthetic_train):
    images, labels = synthetic_train.images[:1200], synthetic_train.labels[:1200]
    settings = make_settings(own_redis.address, hdfs_settings)
    expected = reference_params("locality", settings, sc, images, labels, 3)
    net = LocalityCNN(sc=sc, settings=settings, batches=4, seed=3, chunk=32)
    records, _ = train_with_fault(net, images, labels, 3, 2, "backward",
                                  lambda: own_redis.client().flushall())
    assert records[1]["recomputed_batches"] > 0
    assert records[0]["recomputed_batches"] == records[2]["recomputed_batches"] == 0
    net.close()
    assert_same_params(net.params(), expected)
    assert own_redis.keys() == []


def test_deleted_hdfs_matrices_are_recomputed(sc, redis_addresses, hdfs_settings,
                                              synthetic_train):
    images, labels = synthetic_train.images[:1200], synthetic_train.labels[:1200]
    settings = make_settings(",".join(redis_addresses), hdfs_settings)
    expected = reference_params("spark", settings, sc, images, labels, 3)
    net = SparkCNN(sc=sc, settings=settings, batches=4, seed=3, chunk=32)
    client = InsecureClient(hdfs_settings.webhdfs, user=hdfs_settings.user)
    folder = f"{settings.hdfs_root}/{net.run_id}"
    records, deleted = train_with_fault(net, images, labels, 3, 2, "backward",
                                        lambda: client.delete(folder, recursive=True))
    assert deleted
    assert records[1]["recomputed_batches"] > 0
    net.close()
    assert_same_params(net.params(), expected)
    assert client.status(folder, strict=False) is None


def test_spark_exchange_survives_a_killed_python_worker_in_the_backward_stage(
        sc, redis_addresses, hdfs_settings, synthetic_train):
    """--exchange spark: the backward task whose worker died is retried on the
    persisted forward partition; the run ends as a fault-free one does."""
    images, labels = synthetic_train.images[:1200], synthetic_train.labels[:1200]
    settings = make_settings(",".join(redis_addresses), hdfs_settings)
    expected = reference_params("spark-exchange", settings, sc, images, labels, 2)
    net = CachedCNN(sc=sc, settings=settings, batches=4, seed=3, chunk=32)
    records, killed = train_with_fault(
        net, images, labels, 2, 2, "backward",
        lambda: kill_python_workers_of(sc, f"{net.run_id}-2-backward"))
    assert killed, "no Python worker was running"
    assert failed_tasks(sc, f"{net.run_id}-2-backward") >= 1
    assert [r["exchange"] for r in records] == ["spark", "spark"]
    net.close()
    assert_same_params(net.params(), expected)
    assert sorted(sc._jsc.getPersistentRDDs().keys()) == []


def test_spark_exchange_recomputes_lost_blocks_from_lineage(sc, redis_addresses, hdfs_settings,
                                                            synthetic_train):
    """--exchange spark: the persisted forward blocks are dropped from Spark's block
    managers while the backward stage runs; Spark recomputes the missing
    partitions from lineage, and the run ends as a fault-free one does. Eight
    batches on two cores: most backward tasks start after the blocks are gone."""
    images, labels = synthetic_train.images[:1200], synthetic_train.labels[:1200]
    settings = make_settings(",".join(redis_addresses), hdfs_settings)
    reference = CachedCNN(sc=sc, settings=settings, batches=8, seed=3, chunk=32)
    for _ in range(3):
        reference.train_iteration(images, labels)
    reference.close()
    net = CachedCNN(sc=sc, settings=settings, batches=8, seed=3, chunk=32)

    def drop_blocks():
        rdds = list(sc._jsc.getPersistentRDDs().keys())
        for rdd_id in rdds:
            # Removes the blocks from every block manager; the RDD keeps its storage
            # level, so the tasks that still need a partition compute it again.
            sc._jsc.sc().unpersistRDD(rdd_id, True)
        return rdds

    records, dropped = train_with_fault(net, images, labels, 3, 2, "backward", drop_blocks)
    assert len(dropped) == 1
    assert records[1]["recomputed_batches"] > 0
    assert records[0]["recomputed_batches"] == records[2]["recomputed_batches"] == 0
    net.close()
    assert_same_params(net.params(), reference.params())
    assert sorted(sc._jsc.getPersistentRDDs().keys()) == []


# ---------------------------------------------------------------- spark-submit


def one_error_line(result, script):
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith(f"{script}: error:")]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output
    return errors[0]


@pytest.mark.parametrize("master", ["local[1]", "local[2,3]"])
def test_spark_submit_master_reaches_the_context(master, egg, tmp_path):
    script = tmp_path / "master.py"
    script.write_text("from spark.spark_context import spark_context\n"
                      "with spark_context('master check') as sc:\n"
                      "    print('master', sc.master)\n")
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PYTHONPATH", None)
    result = submit(egg, str(script), [], env, tmp_path, master=master)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"master {master}" in result.stdout.splitlines()


def test_redis_password_missing_wrong_and_right(egg, synthetic_dir, service_env, tmp_path):
    password = "pw-" + uuid.uuid4().hex
    server = RedisServer(str(tmp_path / "redis"), password=password)
    try:
        env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_REDIS=server.address)
        env.pop("SPARK_CNN_REDIS_PASSWORD", None)
        env.pop("SPARK_CNN_REDIS_PASSWORD_FILE", None)
        started = time.monotonic()
        missing = submit(egg, "locality_train.py", [40, 1, 2], env, tmp_path)
        assert missing.returncode == 1
        line = one_error_line(missing, "locality_train.py")
        assert f"Redis at {server.address}: authentication required" in line
        assert time.monotonic() - started < 60

        wrong = submit(egg, "locality_train.py", [40, 1, 2],
                       dict(env, SPARK_CNN_REDIS_PASSWORD="not-" + password), tmp_path)
        assert wrong.returncode == 1
        line = one_error_line(wrong, "locality_train.py")
        assert f"Redis at {server.address}: the password was refused" in line
        assert "not-" + password not in wrong.stdout + wrong.stderr

        secret = tmp_path / "password"
        secret.write_text(password + "\n")
        metrics = tmp_path / "metrics.jsonl"
        right = submit(egg, "locality_train.py", [40, 2, 2, "--metrics", metrics, "--debug"],
                       dict(env, SPARK_CNN_REDIS_PASSWORD_FILE=str(secret),
                            # the Redis exchange needs no HDFS
                            SPARK_CNN_WEBHDFS="http://127.0.0.1:1"),
                       tmp_path)
        assert right.returncode == 0, right.stderr[-3000:]
        assert password not in right.stdout + right.stderr + metrics.read_text()
        assert server.keys() == []
    finally:
        server.stop()


def test_a_redis_down_at_the_start_is_named(egg, synthetic_dir, service_env, redis_addresses,
                                            tmp_path):
    from sparkjobs import free_port
    dead = f"127.0.0.1:{free_port()}"
    env = job_env(service_env, tmp_path, synthetic_dir,
                  SPARK_CNN_REDIS=",".join([redis_addresses[0], dead]))
    started = time.monotonic()
    result = submit(egg, "locality_train.py", [40, 1, 2], env, tmp_path)
    assert result.returncode == 1
    assert f"cannot reach Redis at {dead}: connection refused" in one_error_line(
        result, "locality_train.py")
    assert time.monotonic() - started < 30 + 20           # + Spark's start and stop
    assert not (tmp_path / "params" / "locality.npz").exists()


def iteration_done(metrics, n):
    def check():
        if not metrics.exists():
            return False
        return len(metrics.read_text().splitlines()) >= n
    return check


@pytest.mark.parametrize("kind", ["locality", "spark"])
def test_a_stalled_server_ends_the_run_within_twice_the_timeout(kind, egg, synthetic_dir,
                                                                  service_env, tmp_path):
    """SIGSTOP of the run's Redis (locality) or of the DataNode (spark: a spare HDFS).

    The Redis is listed as scripts/services.sh lists it, under a unix socket and a
    TCP port: the clean-up must not wait for the same server once per address."""
    timeout = 5
    if kind == "locality":
        server = RedisServer(str(tmp_path / "redis"), socket=True)
        env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_REDIS=server.addresses,
                      SPARK_CNN_IO_TIMEOUT=timeout)
        stalled, name = server.proc.pid, "Redis at unix://"
    else:
        server = None
        env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_IO_TIMEOUT=timeout)
        stalled = datanode_pid()
        name = "the HDFS DataNode at 127.0.0.1:"
    metrics = tmp_path / "metrics.jsonl"
    proc = start_submit(egg, f"{kind}_train.py", [400, 50, 2, "--metrics", metrics], env,
                        tmp_path, log=tmp_path / "log")
    try:
        wait_for(iteration_done(metrics, 1), 180, "the first iteration", interval=0.2)
        os.kill(stalled, signal.SIGSTOP)
        stopped = time.monotonic()
        proc.wait(timeout=120)
        elapsed = time.monotonic() - stopped
    finally:
        os.kill(stalled, signal.SIGCONT)
        kill_group(proc)
        if server:
            server.stop()
    output = (tmp_path / "log").read_text()
    assert proc.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith(f"{kind}_train.py: error:")]
    assert len(errors) == 1 and name in errors[0], output[-3000:]
    assert "did not answer within 5 s" in errors[0]
    # the error comes within 2 x the timeout; Spark's own shutdown adds a few seconds
    assert elapsed < 2 * timeout + 15, elapsed


def datanode_pid():
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        # scripts/services.sh's runtime folder (.runtime/hdfs), not a cluster node's
        if "org.apache.hadoop.hdfs.server.datanode.DataNode" in cmdline and \
                os.path.join(ROOT, ".runtime", "hdfs") in cmdline:
            return p.pid
    raise AssertionError("no DataNode of scripts/services.sh is running")


@pytest.mark.parametrize("kind", ["locality", "spark"])
def test_what_a_killed_driver_left_is_removed_by_the_next_run(kind, egg, synthetic_dir,
                                                              service_env, tmp_path):
    server = RedisServer(str(tmp_path / "redis"))
    env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_REDIS=server.address)
    hdfs = InsecureClient(env["SPARK_CNN_WEBHDFS"], user=env["SPARK_CNN_HDFS_USER"])
    root = env["SPARK_CNN_HDFS_ROOT"]

    def leftovers():
        if kind == "locality":
            return [k for k in server.keys() if b":k:" in k]
        folders = hdfs.list(root) if hdfs.status(root, strict=False) else []
        return [f for f in folders if f != ".runs" and hdfs.content(f"{root}/{f}")["fileCount"]]

    try:
        proc = start_submit(egg, f"{kind}_train.py", [400, 50, 2], env, tmp_path)
        try:
            wait_for(leftovers, 180, "the run's matrices", interval=0.01)
        finally:
            kill_group(proc)
        assert leftovers(), "the killed driver left nothing to clean"
        left = leftovers()
        result = submit(egg, f"{kind}_train.py", [40, 1, 2], env, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr          # spark-submit merges the two
        assert "left in" in output and "its driver is gone" in output, \
            f"left before: {left[:3]}, after: {leftovers()[:3]}\n{output[-3000:]}"
        assert server.keys() == []
        assert hdfs.status(root, strict=False) is None or hdfs.list(root) == []
    finally:
        server.stop()


def test_an_hdfs_write_the_user_may_not_make_is_one_clear_line(egg, synthetic_dir, service_env,
                                                                tmp_path):
    """HDFS checks permissions: a folder of the superuser, 0755, is not the user's to write."""
    superuser = InsecureClient(service_env["SPARK_CNN_WEBHDFS"],
                               user=service_env["SPARK_CNN_HDFS_USER"])
    locked = f"/spark-cnn-locked-{uuid.uuid4().hex[:8]}"
    superuser.makedirs(locked, permission="755")
    try:
        env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_HDFS_USER="spark-cnn-guest",
                      SPARK_CNN_HDFS_ROOT=f"{locked}/work")
        result = submit(egg, "spark_train.py", [40, 1, 2], env, tmp_path)
        assert result.returncode == 1
        line = one_error_line(result, "spark_train.py")
        assert f"HDFS refused writing {locked}/work/" in line, line
        assert "to user 'spark-cnn-guest'" in line and "Permission denied" in line, line
        assert superuser.list(locked) == []
        assert not (tmp_path / "params" / "spark.npz").exists()
    finally:
        superuser.delete(locked, recursive=True)


def test_a_stalled_redis_is_not_waited_for_twice_in_a_row(service_env, tmp_path):
    """After one timeout, calls to the same server fail at once for the next
    `timeout` seconds (the clean-up after a stall costs no further timeouts),
    and wait again after that."""
    from spark.storage.redis_store import RedisStore
    from spark.storage.store import StoreTimeoutError
    server = RedisServer(str(tmp_path / "redis"))
    store = RedisStore([server.address], namespace=f"stall-{uuid.uuid4().hex[:8]}", timeout=1.5)
    store.put("a", np.arange(4))
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        durations = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreTimeoutError, match="did not answer within 1.5 s"):
                store.get("a")
            durations.append(time.monotonic() - started)
        assert durations[0] >= 1.4 and max(durations[1:]) < 0.5, durations
        assert store.delete_all() == 0                      # skipped at once, with a warning
        time.sleep(1.6)
        started = time.monotonic()
        with pytest.raises(StoreTimeoutError):
            store.get("a")
        assert time.monotonic() - started >= 1.4            # waited for again
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(1.6)                                     # past the last timeout's window
        assert store.get("a").tolist() == [0, 1, 2, 3]      # answering again: read as before
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_a_stalled_datanode_is_not_waited_for_twice_in_a_row(hdfs_settings):
    """The same for HDFS: after a WebHDFS call to the stalled DataNode timed
    out, reads and writes that need it fail at once for the next `timeout`
    seconds (the NameNode, still answering, is asked as before), and wait
    again after that."""
    from spark.storage.hdfs_store import HdfsStore
    from spark.storage.store import StoreTimeoutError
    store = HdfsStore(hdfs_settings.webhdfs, hdfs_settings.user, hdfs_settings.root,
                      namespace=f"stall-{uuid.uuid4().hex[:8]}", timeout=1.5)
    store.put("a", np.arange(4))
    datanode = datanode_pid()
    stalled = r"the HDFS DataNode at 127\.0\.0\.1:\d+ did not answer within 1\.5 s"
    os.kill(datanode, signal.SIGSTOP)
    try:
        durations = []
        for call in (lambda: store.get("a"), lambda: store.get("a"),
                     lambda: store.put("b", np.zeros(3))):
            started = time.monotonic()
            with pytest.raises(StoreTimeoutError, match=stalled):
                call()
            durations.append(time.monotonic() - started)
        assert durations[0] >= 1.4 and max(durations[1:]) < 0.5, durations
        time.sleep(1.6)
        started = time.monotonic()
        with pytest.raises(StoreTimeoutError, match=stalled):
            store.get("a")
        assert time.monotonic() - started >= 1.4            # waited for again
        os.kill(datanode, signal.SIGCONT)
        time.sleep(1.6)                                     # past the last timeout's window
        assert store.get("a").tolist() == [0, 1, 2, 3]      # answering again: read as before
    finally:
        os.kill(datanode, signal.SIGCONT)
        store.delete_all()


def test_a_python_worker_out_of_memory_is_one_line_saying_what_to_raise(egg, synthetic_dir,
                                                                       service_env, tmp_path):
    """spark.executor.pyspark.memory caps the Python workers: a batch too big for it
    fails with a real MemoryError, reported in one line with the setting to raise."""
    env = job_env(service_env, tmp_path, synthetic_dir)
    command = submit_command(egg, "locality_train.py", [2000, 1, 1, "--exchange", "none"])
    command[1:1] = ["--conf", "spark.executor.pyspark.memory=150m"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    line = one_error_line(result, "locality_train.py")
    assert "MemoryError in a Spark task" in line and "raise spark.executor.pyspark.memory" in line
    assert not (tmp_path / "params" / "locality.npz").exists()


def test_spark_jvm_out_of_memory_ends_with_one_line_from_conf(tmp_path):
    """When Spark's JVM runs out of memory it exits (code 52) and the Python driver's
    output, which goes through it, is cut off: conf/log4j2.properties makes the JVM's
    last word one line naming the setting to raise. A task result larger than the
    driver's heap does it here."""
    script = tmp_path / "big_result.py"
    script.write_text("from pyspark import SparkContext\n"
                      "sc = SparkContext.getOrCreate()\n"
                      "sc.parallelize([0], 1).map(lambda _: b'x' * (400 << 20)).collect()\n")
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_CONF_DIR=os.path.join(ROOT, "conf"))
    command = submit_command(None, str(script), [])
    command = [word for word in command if word not in ("--py-files", None)]
    command[1:1] = ["--driver-memory", "450m"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 52, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("spark-cnn: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Spark's JVM stopped: Java heap space" in lines[0]
    assert "raise spark-submit --driver-memory" in lines[0]
    assert "INFO" not in result.stderr
    assert "Using Spark's default log4j profile" not in result.stderr


def test_allreduce_under_dynamic_allocation_is_one_line_saying_what_to_set(egg, synthetic_dir,
                                                                          service_env, tmp_path):
    """Spark refuses barrier stages under dynamic allocation; the run says so at once."""
    env = job_env(service_env, tmp_path, synthetic_dir)
    command = submit_command(egg, "locality_train.py", [40, 2, "--exchange", "allreduce"])
    command[1:1] = ["--conf", "spark.dynamicAllocation.enabled=true",
                    "--conf", "spark.shuffle.service.enabled=true"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    line = one_error_line(result, "locality_train.py")
    assert "dynamic allocation" in line and "spark.dynamicAllocation.enabled=false" in line
    assert not (tmp_path / "params" / "locality.npz").exists()
