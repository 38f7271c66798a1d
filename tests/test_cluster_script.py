"""scripts/cluster.sh: the simulated K-node cluster (network namespaces, a Spark
standalone master and workers, HDFS with a DataNode per node, a Redis per node
with a password)."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid

import pytest
import redis
from cluster import Cluster, cluster_leftovers
from hdfs import InsecureClient

pytestmark = pytest.mark.cluster

NODES = 3
IPS = [f"10.231.0.{k}" for k in range(1, NODES + 1)]


def password(cluster) -> str:
    path = cluster.env["SPARK_CNN_REDIS_PASSWORD_FILE"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        return f.read().strip()


def in_node(k, code, *args, timeout=60):
    """Python code run inside node k's namespace."""
    return subprocess.run(["ip", "netns", "exec", f"scn-node{k}", sys.executable, "-c",
                           textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def status_lines(proc):
    """{(node, daemon): 'up' | 'DOWN'} from `cluster.sh status`."""
    out = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].startswith("node"):
            out[(int(words[0][4:]), words[1])] = words[2]
    return out


def test_up_exports_and_status(cluster):
    env = cluster.env
    assert env["SPARK_CNN_MASTER"] == "spark://10.231.0.1:7077"
    assert env["SPARK_CNN_REDIS"] == ",".join(f"{ip}:6379" for ip in IPS)
    assert env["SPARK_CNN_WEBHDFS"] == "http://10.231.0.1:9870"
    assert env["SPARK_CNN_HDFS"] == "hdfs://10.231.0.1:9000"
    assert env["SPARK_CNN_HDFS_ROOT"] == "/spark-cnn"
    password(cluster)                                   # exists, mode 0600

    # a second `up` of a running cluster prints the same exports, quickly
    start = time.monotonic()
    again = cluster.up()
    assert again == env
    assert time.monotonic() - start < 30

    proc = cluster.status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = status_lines(proc)
    expected = {(k, d) for k in range(1, NODES + 1)
                for d in ("network", "redis", "datanode", "worker")}
    expected |= {(1, "master"), (1, "namenode")}
    assert set(states) == expected and set(states.values()) == {"up"}, proc.stdout

    with urllib.request.urlopen("http://10.231.0.1:8080/json", timeout=10) as r:
        master = json.load(r)
    alive = sorted(w["host"] for w in master["workers"] if w["state"] == "ALIVE")
    assert alive == IPS
    assert all(w["cores"] == 1 for w in master["workers"] if w["state"] == "ALIVE")


def test_redis_needs_the_password_everywhere(cluster):
    secret = password(cluster)
    # the password is in no command line
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read(), f"password on the command line of pid {pid}"
        except OSError:
            pass
    # from the root namespace, over the bridge
    for ip in IPS:
        with socket.create_connection((ip, 6379), timeout=5) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100).startswith(b"-NOAUTH"), ip
        client = redis.Redis(host=ip, port=6379, password=secret, socket_timeout=5)
        assert client.ping()
        client.close()
    # from node 1 to node 2
    code = """
        import socket, sys, redis
        secret = open(sys.argv[1]).read().strip()
        with socket.create_connection(("10.231.0.2", 6379), timeout=5) as s:
            s.sendall(b"PING\\r\\n")
            print(s.recv(100).decode().strip())
        print("pong" if redis.Redis(host="10.231.0.2", port=6379, password=secret,
                                    socket_timeout=5).ping() else "no pong")
    """
    proc = in_node(1, code, cluster.env["SPARK_CNN_REDIS_PASSWORD_FILE"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["-NOAUTH Authentication required.", "pong"], proc.stdout


def test_loopback_inside_a_node_is_that_node(cluster):
    secret = password(cluster)
    key = f"spark-cnn:cluster-test:{uuid.uuid4().hex}"
    code = """
        import sys, redis
        secret = open(sys.argv[1]).read().strip()
        r = redis.Redis(host="127.0.0.1", port=6379, password=secret, socket_timeout=5)
        if sys.argv[2] == "set":
            r.set(sys.argv[3], b"node")
        print(r.exists(sys.argv[3]))
    """
    pwfile = cluster.env["SPARK_CNN_REDIS_PASSWORD_FILE"]
    try:
        proc = in_node(2, code, pwfile, "set", key)
        assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stdout + proc.stderr
        proc = in_node(3, code, pwfile, "get", key)
        assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stdout + proc.stderr
        found = {ip: redis.Redis(host=ip, port=6379, password=secret).exists(key) for ip in IPS}
        assert found == {"10.231.0.1": 0, "10.231.0.2": 1, "10.231.0.3": 0}
    finally:
        redis.Redis(host="10.231.0.2", port=6379, password=secret).delete(key)


def test_webhdfs_write_from_a_node_lands_on_its_datanode(cluster):
    env = cluster.env
    folder = f"{env['SPARK_CNN_HDFS_ROOT']}/locality-{uuid.uuid4().hex[:8]}"
    code = """
        import json, sys, urllib.request
        from hdfs import InsecureClient
        webhdfs, user, path = sys.argv[1:4]
        InsecureClient(webhdfs, user=user, timeout=30).write(path, b"x" * 4096)
        url = "%s/webhdfs/v1%s?op=GETFILEBLOCKLOCATIONS&user.name=%s" % (webhdfs, path, user)
        found = json.load(urllib.request.urlopen(url, timeout=30))
        blocks = found["BlockLocations"]["BlockLocation"]
        print(json.dumps([b["names"] for b in blocks]))
    """
    try:
        for k, ip in enumerate(IPS, 1):
            proc = in_node(k, code, env["SPARK_CNN_WEBHDFS"], env["SPARK_CNN_HDFS_USER"],
                           f"{folder}/from-node{k}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert json.loads(proc.stdout) == [[f"{ip}:9866"]], (k, proc.stdout)
    finally:
        InsecureClient(env["SPARK_CNN_WEBHDFS"], user=env["SPARK_CNN_HDFS_USER"]).delete(
            folder, recursive=True)


JOB = """
import json, os, socket, sys, time
from pyspark import SparkContext

def my_ip(_):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("10.231.0.254", 9))          # no packet is sent: only picks the source address
    ip = s.getsockname()[0]
    s.close()
    time.sleep(0.05)
    return ip

sc = SparkContext.getOrCreate()
sc.setLogLevel("ERROR")
tracker = sc._jsc.sc().statusTracker()
deadline = time.time() + 120
while len(tracker.getExecutorInfos()) < 4 and time.time() < deadline:   # 3 executors + the driver
    time.sleep(0.5)
ips = sorted(set(sc.parallelize(range(30), 30).map(my_ip).collect()))
hosts = sorted(i.host() for i in tracker.getExecutorInfos())
print(json.dumps({"master": sc.master, "task_ips": ips, "executor_hosts": hosts,
                  "settings": {k: v for k, v in os.environ.items() if k.startswith("SPARK_CNN_")},
                  "cwd": os.getcwd(), "args": sys.argv[1:]}))
# a line of the JVM's own log (conf/log4j2.properties keeps Spark's quiet): it goes to stderr
sc._jvm.org.apache.logging.log4j.LogManager.getLogger("spark-cnn-test").fatal("the JVM logs")
sc.stop()
print("job says bye", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_submit_runs_on_every_node_and_passes_exit_code_output_and_overrides(cluster, tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    cwd = os.getcwd()
    os.chdir(tmp_path)                               # a relative script path, the caller's folder
    try:
        proc = cluster.submit("job.py", 3, "two words", env={"SPARK_CNN_HDFS_ROOT": "/overridden"})
    finally:
        os.chdir(cwd)
    assert proc.returncode == 3, proc.stderr[-4000:]
    # (spark-submit sends a Python driver's stderr to its stdout)
    assert "job says bye" in proc.stdout + proc.stderr
    assert "the JVM logs" in proc.stderr                            # Spark's own log
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["master"] == "spark://10.231.0.1:7077"
    assert report["task_ips"] == IPS                  # tasks ran in all three nodes
    assert report["executor_hosts"] == ["10.231.0.1"] + IPS   # the driver, then each executor
    assert report["cwd"] == str(tmp_path)
    assert report["args"] == ["3", "two words"]
    settings = report["settings"]
    assert settings["SPARK_CNN_HDFS_ROOT"] == "/overridden"          # the caller's value wins
    for name in ("SPARK_CNN_MASTER", "SPARK_CNN_REDIS", "SPARK_CNN_REDIS_PASSWORD_FILE",
                 "SPARK_CNN_WEBHDFS", "SPARK_CNN_HDFS", "SPARK_CNN_HDFS_USER"):
        assert settings[name] == cluster.env[name]


def test_kill_node_then_up_heals(cluster):
    secret = password(cluster)
    try:
        start = time.monotonic()
        cluster.kill_node(2)
        assert time.monotonic() - start < 15
        proc = cluster.status()
        assert proc.returncode == 1
        states = status_lines(proc)
        assert states[(2, "worker")] == "DOWN" and states[(2, "redis")] == "DOWN", proc.stdout
        assert states[(2, "datanode")] == "up", proc.stdout          # the blocks' only copy stays
        assert [s for key, s in states.items() if key[0] != 2] == ["up"] * (len(states) - 4)
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis(host="10.231.0.2", port=6379, password=secret, socket_timeout=5).ping()
        left = [p for p in subprocess.run(["ip", "netns", "pids", "scn-node2"], capture_output=True,
                                          text=True).stdout.split()]
        assert len(left) == 1, left                                  # the DataNode alone
    finally:
        cluster.up()
    proc = cluster.status()
    assert proc.returncode == 0, proc.stdout
    assert redis.Redis(host="10.231.0.2", port=6379, password=secret, socket_timeout=5).ping()


def free_cluster_net():
    """A network number N (10.231.N.0/24) that no cluster on this machine uses."""
    namespaces = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    for net in range(201, 254):
        if not os.path.exists(f"/sys/class/net/scn{net}br0") and not any(
                name.startswith(f"scn{net}-") for name in namespaces):
            return net
    pytest.fail("no free SPARK_CNN_CLUSTER_NET in 201..253")


def test_down_after_failed_up_and_kill_node_leaves_nothing(tmp_path):
    """A second, one-node cluster on a free 10.231.N.0/24 whose `up` gives up early."""
    net = free_cluster_net()
    small = Cluster(1, extra_env={"SPARK_CNN_CLUSTER_NET": str(net),
                                  "SPARK_CNN_CLUSTER_RUNTIME": str(tmp_path / "runtime"),
                                  "SPARK_CNN_CLUSTER_START_TIMEOUT": "2"})
    try:
        proc = small.run("up", 1)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
        assert "not ready after 2s" in proc.stderr, proc.stderr[-3000:]
        assert os.path.exists(f"/run/netns/scn{net}-node1")
        inode = os.stat(f"/run/netns/scn{net}-node1").st_ino
        # the daemons `up` launched may still come up after it gave up: status
        # answers either way, and `down` must stop them whatever they reached
        status = small.status()
        assert status.returncode in (0, 1) and "node1" in status.stdout, status.stdout
        proc = small.kill_node(1)
        assert proc.returncode == 0
    finally:
        proc = small.down()
    assert proc.returncode == 0, proc.stderr
    assert cluster_leftovers(net, {inode}) == []
    # nothing up: down and status still answer
    assert small.down().returncode == 0
    status = small.status()
    assert status.returncode == 1 and "not up" in status.stdout
