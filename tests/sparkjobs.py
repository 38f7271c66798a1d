"""Helpers for tests that run the entry scripts (locally or with spark-submit),
or start their own servers."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil
from project import ROOT


def run_script(script, *args, env=None, timeout=600):
    """A local entry script (naive_*.py) run as a user runs it -> CompletedProcess (text).
    The data and params folders come from the arguments, not from the environment."""
    environ = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    environ.pop("SPARK_CNN_DATA_DIR", None)
    environ.pop("SPARK_CNN_PARAMS_DIR", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, env=environ, timeout=timeout)


@contextlib.contextmanager
def local_spark(app_name, master):
    """An in-process SparkContext on a local master whose workers import the source tree."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    from pyspark import SparkContext

    from spark.spark_context import spark_conf

    context = SparkContext(conf=spark_conf(app_name).setMaster(master))
    context.setLogLevel("ERROR")
    try:
        yield context
    finally:
        context.stop()


def spark_submit():
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def job_env(service_env, tmp_path, data_dir, **extra):
    """The environment of a submitted run: the services, its own HDFS folder, data and params."""
    env = dict(os.environ, **service_env)
    env.update(SPARK_CNN_HDFS_ROOT=f"/spark-cnn-tests-{uuid.uuid4().hex[:8]}",
               SPARK_CNN_DATA_DIR=data_dir, SPARK_CNN_PARAMS_DIR=str(tmp_path / "params"),
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               XDG_CACHE_HOME=str(tmp_path / "cache"),
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    env.pop("PYTHONPATH", None)                   # the code comes from the egg only
    env.update({k: str(v) for k, v in extra.items()})
    return env


def submit_command(egg, script, args, master="local[2]"):
    return [spark_submit(), "--master", master, "--conf", "spark.ui.enabled=false",
            "--py-files", egg, os.path.join(ROOT, script), *map(str, args)]


def submit(egg, script, args, env, cwd, master="local[2]", timeout=600):
    """Run an entry script to its end -> CompletedProcess (text)."""
    return subprocess.run(submit_command(egg, script, args, master), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_submit(egg, script, args, env, cwd, master="local[2]", log=None):
    """Start an entry script in its own process group -> Popen (output to `log` or DEVNULL)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(submit_command(egg, script, args, master), env=env, cwd=cwd,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc):
    """SIGKILL a process started by start_submit and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(condition, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on a free loopback port (optionally with a password).

    With `socket`, it also listens on a unix socket: `addresses` is then the
    list scripts/services.sh exports, one server under two addresses."""

    def __init__(self, folder, password=None, socket=False):
        self.port, self.password = free_port(), password
        self.address = f"127.0.0.1:{self.port}"
        os.makedirs(folder, exist_ok=True)
        config = os.path.join(folder, "redis.conf")
        unix = os.path.join(folder, "redis.sock")
        self.addresses = f"unix://{unix},{self.address}" if socket else self.address
        with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"bind 127.0.0.1\nport {self.port}\nsave \"\"\nappendonly no\n"
                    f"dir {folder}\n" + (f"requirepass {password}\n" if password else "")
                    + (f"unixsocket {unix}\nunixsocketperm 700\n" if socket else ""))
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (scripts/services.sh installs it)"
        self.proc = subprocess.Popen([server, config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_for(self._answers, 10, f"redis-server on {self.address}")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=5)

    def _answers(self):
        try:
            return self.client().ping()
        except Exception:  # noqa: BLE001 - polled while the server starts: not up yet
            return False

    def keys(self):
        return list(self.client().scan_iter(match="spark-cnn*", count=1000))

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


def python_workers():
    """Spark's Python worker processes under this test process (forks of pyspark.daemon)."""
    def is_daemon(p):
        try:
            return "pyspark.daemon" in " ".join(p.cmdline())
        except psutil.Error:
            return False
    return [p for p in psutil.Process().children(recursive=True)
            if is_daemon(p) and p.parent() is not None and is_daemon(p.parent())]


def busy_python_workers(gap=0.3):
    """The Python workers that used CPU time over `gap` seconds: those running tasks."""
    workers = python_workers()
    before = {}
    for p in workers:
        try:
            before[p.pid] = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    time.sleep(gap)
    busy = []
    for p in workers:
        try:
            if sum(p.cpu_times()[:2]) - before.get(p.pid, 0) > 0.02:
                busy.append(p)
        except psutil.Error:
            pass
    return busy
