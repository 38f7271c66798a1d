"""Errors for people: one line, naming what is wrong and where, nothing saved lost.

Damaged checkpoints are made from real ones (truncated, bytes flipped); Spark
failures are the texts real Py4J errors carry (captured from pyspark 4.3 on
local[2], stack frames shortened)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from project import ROOT

from spark.cnn import CNN
from spark.errors import one_line


def run_script(script, *args):
    environ = dict(os.environ, PYTHONPATH=ROOT)
    environ.pop("SPARK_CNN_DATA_DIR", None)
    environ.pop("SPARK_CNN_PARAMS_DIR", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, env=environ, timeout=300)


def one_error_line(result, script):
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def real_checkpoint(synthetic_dir, tmp_path_factory):
    """The bytes of a real checkpoint: 40 images, 2 iterations."""
    params = tmp_path_factory.mktemp("real") / "params"
    result = run_script("naive_train.py", 40, 2, "--data-dir", synthetic_dir, "--params-dir", params)
    assert result.returncode == 0, result.stderr
    return (params / "naive.npz").read_bytes()


def flip(data, fraction):
    data = bytearray(data)
    at = int(len(data) * fraction)
    for i in range(at, at + 8):
        data[i] ^= 0xFF
    return bytes(data)


DAMAGE = {
    "truncated": (lambda data: data[: len(data) // 2], "File is not a zip file"),
    "bytes flipped": (lambda data: flip(data, 0.25), "Bad CRC-32"),
    "empty": (lambda data: b"", "the file is empty"),
    "not a zip": (lambda data: b"\x80\x04K*." + data[5:], "not an .npz (zip) archive"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_left_alone(damage, real_checkpoint, synthetic_dir,
                                                      tmp_path):
    make, reason = DAMAGE[damage]
    params = tmp_path / "params"
    params.mkdir()
    path = params / "naive.npz"
    damaged = make(real_checkpoint)
    path.write_bytes(damaged)
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    for script, args in (("naive_test.py", [20]), ("naive_training_test.py", [20]),
                         ("naive_train.py", [40, 4, "--resume"])):
        result = run_script(script, *args, *common)
        assert result.returncode == 1, result.stderr
        line = one_error_line(result, script)
        assert f"{path} is not a readable spark-cnn checkpoint (damaged or not ours" in line, line
        assert reason in line and "pickle" not in line, line
        assert path.read_bytes() == damaged                   # nothing overwritten


def test_a_checkpoint_for_other_images_is_said_in_words(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    arch = ({"type": "conv", "filters": 4, "size": 3, "stride": 1, "pad": 1},
            {"type": "relu"}, {"type": "fc", "outputs": 10})
    CNN(arch, input_shape=(6, 8, 3)).save(params / "naive.npz")
    before = (params / "naive.npz").read_bytes()
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    for script, args in (("naive_test.py", [20]), ("naive_train.py", [40, 3, "--resume"])):
        result = run_script(script, *args, *common)
        assert result.returncode == 1, result.stderr
        line = one_error_line(result, script)
        assert (f"{params / 'naive.npz'} holds a network for 6x8x3 images, but the images of "
                f"{synthetic_dir} are 32x32x3: it is another network's checkpoint") in line, line
        assert "matmul" not in line and "shape" not in line
    assert (params / "naive.npz").read_bytes() == before


def test_a_checkpoint_with_fewer_classes_is_said_in_words(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    arch = ({"type": "conv", "filters": 4, "size": 3, "stride": 1, "pad": 1},
            {"type": "relu"}, {"type": "fc", "outputs": 3})
    CNN(arch).save(params / "naive.npz")
    result = run_script("naive_test.py", 200, "--data-dir", synthetic_dir, "--params-dir", params)
    assert result.returncode == 1
    line = one_error_line(result, "naive_test.py")
    assert f"{params / 'naive.npz'} holds a network with 3 classes, but the labels of" in line


def test_parameters_that_do_not_fit_the_saved_network_are_named(tmp_path, synthetic_dir):
    from spark.checkpoint import load_checkpoint, save_checkpoint

    params = tmp_path / "params"
    CNN().save(params / "naive.npz")
    arrays, meta = load_checkpoint(params / "naive.npz")
    arrays["param/fc4.W"] = arrays["param/fc4.W"][:100]
    save_checkpoint(params / "naive.npz", arrays, meta)
    result = run_script("naive_test.py", 20, "--data-dir", synthetic_dir, "--params-dir", params)
    assert result.returncode == 1
    line = one_error_line(result, "naive_test.py")
    assert f"{params / 'naive.npz'} does not describe a usable network: fc4.W: shape" in line


@pytest.mark.parametrize("group, value", [("param", np.nan), ("velocity", np.inf),
                                          ("param", -np.inf)])
def test_non_finite_parameters_are_refused_with_the_path(group, value, real_checkpoint,
                                                         synthetic_dir, tmp_path):
    from spark.checkpoint import load_checkpoint, save_checkpoint

    params = tmp_path / "params"
    params.mkdir()
    (params / "naive.npz").write_bytes(real_checkpoint)
    arrays, meta = load_checkpoint(params / "naive.npz")
    arrays[f"{group}/conv1.W"].flat[5] = value
    save_checkpoint(params / "naive.npz", arrays, meta)
    before = (params / "naive.npz").read_bytes()
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    words = {"param": "parameter", "velocity": "velocity"}[group]
    for script, args in (("naive_test.py", [20]), ("naive_train.py", [40, 4, "--resume"])):
        result = run_script(script, *args, *common)
        assert result.returncode == 1, result.stderr
        line = one_error_line(result, script)
        assert f"{params / 'naive.npz'} holds NaN or infinite values ({words} conv1.W)" in line
    assert (params / "naive.npz").read_bytes() == before


def test_a_diverging_run_stops_before_saving_nan(real_checkpoint, synthetic_dir, tmp_path):
    params = tmp_path / "params"
    params.mkdir()
    (params / "naive.npz").write_bytes(real_checkpoint)
    result = run_script("naive_train.py", 40, 8, "--resume", "--lr", 1e30,
                        "--data-dir", synthetic_dir, "--params-dir", params)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("note: --lr 1e+30 replaces 0.001 of")
    assert len(lines) == 2 and "training diverged at iteration" in lines[1], lines
    assert "RuntimeWarning" not in result.stderr
    assert np.all([np.all(np.isfinite(p)) for p in CNN.load(params / "naive.npz").params().values()])


# ----- one_line on real Spark failures ----------------------------------------

PY4J = "An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
WORKER = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark"
FRAMES = f"""\
  File "{WORKER}/worker.py", line 4327, in invoke_udf
    run_process()
  File "{WORKER}/worker.py", line 4222, in process
    serializer.dump_stream(out_iter, outfile)
  File "{WORKER}/serializers.py", line 260, in dump_stream
    vs = list(itertools.islice(iterator, batch))
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "{WORKER}/util.py", line 158, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
"""
JAVA_TAIL = """\
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:1097)
	at org.apache.spark.api.python.PythonRunner$$anon$5.read(PythonRunner.scala:1642)
	at py4j.ClientServerConnection.run(ClientServerConnection.java:108)
	at java.base/java.lang.Thread.run(Thread.java:840)
"""

# A task raising ValueError("bad value 42\nsecond line").
PYTHON_ERROR = PY4J + f"""\
: org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
{FRAMES}  File "/work/main/spark/tasks.py", line 6, in forward_task
    raise ValueError("bad value 42\\nsecond line")
ValueError: bad value 42
second line
 SQLSTATE: 38000
{JAVA_TAIL}"""

# A task's own error raised from a lower one (raise ... from e): the task's is reported.
CHAINED = PY4J + f"""\
: org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
  File "/work/main/spark/storage/store.py", line 9, in _redis_client
    raise ConnectionRefusedError(111, "Connection refused")
ConnectionRefusedError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
{FRAMES}  File "/work/main/spark/storage/store.py", line 11, in put
    raise StoreUnavailableError("cannot reach Redis at 127.0.0.1:1 (Connection refused)") from e
spark.storage.store.StoreUnavailableError: cannot reach Redis at 127.0.0.1:1 (Connection refused)
 SQLSTATE: 38000
{JAVA_TAIL}"""

# The Python worker died (os._exit in a task; the same for the OOM killer).
CRASH = PY4J + """\
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 2.0 failed 1 times, most recent failure: Lost task 1.0 in stage 2.0 (TID 5) (localhost executor driver): org.apache.spark.SparkException: Python worker exited unexpectedly (crashed). Consider setting 'spark.sql.execution.pyspark.udf.faulthandler.enabled' or'spark.python.worker.faulthandler.enabled' configuration to 'true' for the better Python traceback.
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:1136)
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:1118)
Caused by: java.io.EOFException
	at java.base/java.io.DataInputStream.readInt(DataInputStream.java:386)
	at org.apache.spark.api.python.PythonRunner$$anon$5.read(PythonRunner.scala:1632)
	... 22 more

Driver stacktrace:
	at org.apache.spark.scheduler.DAGScheduler.$anonfun$abortStage$3(DAGScheduler.scala:4568)
	at scala.Option.getOrElse(Option.scala:201)
Caused by: org.apache.spark.SparkException: Python worker exited unexpectedly (crashed). Consider setting 'spark.sql.execution.pyspark.udf.faulthandler.enabled' or'spark.python.worker.faulthandler.enabled' configuration to 'true' for the better Python traceback.
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:1136)
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:1118)
	... 1 more
Caused by: java.io.EOFException
	at java.base/java.io.DataInputStream.readInt(DataInputStream.java:386)
	at org.apache.spark.api.python.PythonRunner$$anon$5.read(PythonRunner.scala:1632)
	... 22 more
"""

# sc.wholeTextFiles on a folder that is not there (e.g. markers deleted under a run).
MISSING_INPUT = PY4J + """\
: org.apache.hadoop.mapreduce.lib.input.InvalidInputException: Input path does not exist: hdfs://127.0.0.1:19000/spark-cnn/run/markers/it-3
	at org.apache.hadoop.mapreduce.lib.input.FileInputFormat.singleThreadedListStatus(FileInputFormat.java:343)
	at org.apache.hadoop.mapreduce.lib.input.FileInputFormat.listStatus(FileInputFormat.java:282)
Caused by: java.io.IOException: Input path does not exist: hdfs://127.0.0.1:19000/spark-cnn/run/markers/it-3
	at org.apache.hadoop.mapreduce.lib.input.FileInputFormat.singleThreadedListStatus(FileInputFormat.java:316)
	... 31 more
"""

# The NameNode is down.
HDFS_DOWN = PY4J + """\
: java.net.ConnectException: Call From vm/127.0.0.1 to localhost:19000 failed on connection exception: java.net.ConnectException: Connection refused; For more details see:  http://wiki.apache.org/hadoop/ConnectionRefused
	at java.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance0(Native Method)
	at java.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance(NativeConstructorAccessorImpl.java:77)
Caused by: java.net.ConnectException: Connection refused
	at java.base/sun.nio.ch.Net.pollConnect(Native Method)
	at java.base/sun.nio.ch.Net.pollConnectNow(Net.java:672)
	... 58 more
"""

# A task killed by memory, Python side: the exception has no message.
NO_MESSAGE = PY4J + f"""\
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 1.0 failed 1 times, most recent failure: Lost task 0.0 in stage 1.0 (TID 2) (localhost executor driver): org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
{FRAMES}  File "/work/main/spark/conv.py", line 40, in forward
    cols = np.empty((n, k), self.dtype)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
MemoryError
 SQLSTATE: 38000
{JAVA_TAIL}
Driver stacktrace:
	at org.apache.spark.scheduler.DAGScheduler.$anonfun$abortStage$3(DAGScheduler.scala:4568)
Caused by: org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
{FRAMES}  File "/work/main/spark/conv.py", line 40, in forward
    cols = np.empty((n, k), self.dtype)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
MemoryError
 SQLSTATE: 38000
{JAVA_TAIL}"""


class Py4JJavaError(Exception):
    """Shaped like py4j's: str() is the call line, then Java's stack trace."""


@pytest.mark.parametrize("text, expected", [
    (PYTHON_ERROR, "bad value 42 (ValueError in a Spark task)"),
    (CHAINED, "cannot reach Redis at 127.0.0.1:1 (Connection refused) "
              "(StoreUnavailableError in a Spark task)"),
    (CRASH, "Python worker exited unexpectedly (crashed) (SparkException in Spark)"),
    (MISSING_INPUT, "Input path does not exist: hdfs://127.0.0.1:19000/spark-cnn/run/markers/it-3 "
                    "(IOException in Spark)"),
    (HDFS_DOWN, "Call From vm/127.0.0.1 to localhost:19000 failed on connection exception: "
                "Connection refused (ConnectException in Spark)"),
    (NO_MESSAGE, "MemoryError in a Spark task; a Python worker ran out of memory: raise "
                 "spark.executor.pyspark.memory if it is set, or give the executors more memory "
                 "(fewer cores per executor, more and smaller batches)"),
], ids=["python", "chained", "crash", "missing-input", "hdfs-down", "no-message"])
def test_a_failed_spark_job_ends_with_its_deepest_real_cause(text, expected):
    line = one_line(Py4JJavaError(text))
    assert line == expected
    assert "\n" not in line and "An error occurred while calling" not in line
    assert "org.apache" not in line and "java." not in line


def test_one_line_of_ordinary_errors():
    assert one_line(ValueError("plain")) == "plain"
    assert one_line(RuntimeError("first\nsecond")) == "first"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    # a Java failure without any cause line still does not end in Py4J's call line
    assert one_line(Py4JJavaError(PY4J + ": java.lang.IllegalStateException: "
                                         "SparkContext has been shutdown\n\tat x.y(Z.java:1)\n")) \
        == "SparkContext has been shutdown (IllegalStateException in Spark)"


def test_a_py4j_error_whose_jvm_is_gone_is_still_one_line():
    class GoneError(Exception):
        def __str__(self):                 # py4j asks the JVM for the text, and it is dead
            raise ConnectionRefusedError(111, "Connection refused")

    line = one_line(GoneError())
    assert line == ("a Spark call failed and Spark's JVM cannot say why any more "
                    "(GoneError; it has probably stopped)")
