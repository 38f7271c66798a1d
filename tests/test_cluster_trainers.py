"""The Spark trainers on the simulated 3-node cluster of scripts/cluster.sh:
the same losses as the local trainer, backward reads on the node that wrote
the batch, a lost node survived, the Redis password kept out of sight."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import redis
from cluster import cluster_namespace_prefix
from project import ROOT
from sparkjobs import wait_for

pytestmark = pytest.mark.cluster

IMAGES, ITERATIONS, BATCHES = 1999, 5, 6       # N not divisible by B; B a multiple of the nodes


def read_metrics(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def load_params(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k.startswith("a/param/")}


def relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.fixture(scope="module")
def naive_run(synthetic_dir, tmp_path_factory):
    """The local trainer with the same data, seed and arguments -> metrics records."""
    folder = tmp_path_factory.mktemp("naive")
    metrics = folder / "metrics.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [sys.executable, os.path.join(ROOT, "naive_train.py"), IMAGES, ITERATIONS,
               "--seed", 3, "--metrics", metrics, "--data-dir", synthetic_dir,
               "--params-dir", folder / "params"]
    result = subprocess.run(list(map(str, command)),
                            env={k: str(v) for k, v in env.items()}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(metrics)


def cluster_job(cluster, script, tmp_path, synthetic_dir, *extra, env=None):
    metrics = tmp_path / f"{script}.jsonl"
    run_env = {"SPARK_CNN_DATA_DIR": synthetic_dir,
               "SPARK_CNN_PARAMS_DIR": str(tmp_path / "params")}
    run_env.update(env or {})
    args = [IMAGES, ITERATIONS, BATCHES, "--seed", 3, "--metrics", metrics, *extra]
    return metrics, args, run_env


def node_ips(cluster):
    return sorted(a.rsplit(":", 1)[0] for a in cluster.env["SPARK_CNN_REDIS"].split(","))


@pytest.mark.parametrize("kind", ["locality", "spark"])
def test_cluster_run_equals_naive_and_reads_locally(kind, cluster, naive_run, synthetic_dir,
                                                    tmp_path):
    cluster.up()
    metrics, args, env = cluster_job(cluster, f"{kind}_train.py", tmp_path, synthetic_dir)
    result = cluster.submit(os.path.join(ROOT, f"{kind}_train.py"), *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_metrics(metrics)
    np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in naive_run],
                               rtol=1e-5)
    hosts = set()
    for r in records[1:]:
        reads = r["backward_reads_local"] + r["backward_reads_remote"]
        assert reads == BATCHES and r["recomputed_batches"] == 0
        assert r["backward_reads_local"] >= 0.9 * reads, r
        hosts |= set(r["backward_hosts"])
    assert sorted(hosts) == node_ips(cluster)          # backward tasks ran on every node


def node_redis_pid(k):
    """The process id of the Redis server in node k's namespace."""
    pids = subprocess.run(["ip", "netns", "pids", f"{cluster_namespace_prefix()}-node{k}"],
                          capture_output=True, text=True, check=True).stdout.split()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"redis-server" in f.read():
                    return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no Redis server in node {k}")


def node_redis(cluster, k):
    password = open(cluster.env["SPARK_CNN_REDIS_PASSWORD_FILE"]).read().strip()
    host, port = cluster.env["SPARK_CNN_REDIS"].split(",")[k - 1].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), password=password, socket_timeout=5), password


def complete_batch_on(client, iteration):
    """Whether a batch of 0-based `iteration` has all its matrices on this Redis."""
    keys = [k.decode() for k in client.scan_iter(match=f"spark-cnn:*:k:iteration-{iteration:06d}/*",
                                                 count=1000)]
    per_batch = {}
    for key in keys:
        batch = key.split("/")[1]
        per_batch[batch] = per_batch.get(batch, 0) + 1
    return any(count >= 3 for count in per_batch.values())      # relu mask, pool argmax, fc input


def test_a_lost_node_is_survived_with_the_same_result(cluster, synthetic_dir, tmp_path):
    cluster.up()
    reference, args, env = cluster_job(cluster, "locality_train.py", tmp_path / "ref",
                                       synthetic_dir)
    result = cluster.submit(os.path.join(ROOT, "locality_train.py"), *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = load_params(tmp_path / "ref" / "params" / "locality.npz")

    metrics, args, env = cluster_job(cluster, "locality_train.py", tmp_path, synthetic_dir)
    command = ["bash", os.path.join(ROOT, "scripts", "cluster.sh"), "submit",
               os.path.join(ROOT, "locality_train.py"), *map(str, args)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CNN_")}
    log = open(tmp_path / "log", "w")
    proc = subprocess.Popen(command, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT)
    node3, password = node_redis(cluster, 3)
    node3_redis = node_redis_pid(3)
    try:
        # the password is nowhere in the driver's UI while the run is on
        ui = f"http://{cluster.env['SPARK_CNN_REDIS'].split(',')[0].rsplit(':', 1)[0]}:4040"
        apps = wait_for(lambda: _json(f"{ui}/api/v1/applications"), 120, "the driver's UI")
        environment = urllib.request.urlopen(
            f"{ui}/api/v1/applications/{apps[0]['id']}/environment", timeout=10).read().decode()
        assert password not in environment
        wait_for(lambda: complete_batch_on(node3, 2), 300, "a batch of iteration 3 on node 3",
                 interval=0.02)
        # Node 3 stops answering at once (its Redis frozen), before the backward
        # stage can read the batch; then the whole node is killed (which takes
        # a moment: by then a fast iteration could have finished).
        os.kill(node3_redis, signal.SIGSTOP)
        cluster.kill_node(3)
        killed = time.monotonic()
        assert proc.wait(timeout=600) == 0, (tmp_path / "log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    records = read_metrics(metrics)
    assert [r["iteration"] for r in records] == list(range(1, ITERATIONS + 1))
    assert records[2]["recomputed_batches"] > 0, records[2]
    assert sum(r["recomputed_batches"] for r in records) == records[2]["recomputed_batches"]
    params = load_params(tmp_path / "params" / "locality.npz")
    for name, value in expected.items():
        assert relative_difference(params[name], value) < 1e-5, name
    print(f"run finished {time.monotonic() - killed:.1f} s after node 3 was killed")
    logs = _cluster_logs()
    assert logs, "no cluster log found"
    for path in logs:
        with open(path, "rb") as f:
            assert password.encode() not in f.read(), path
    cluster.up()                                     # heal node 3 for the tests that follow


def _json(url):
    try:
        return json.loads(urllib.request.urlopen(url, timeout=5).read())
    except (OSError, ValueError):
        return None


def _cluster_logs():
    """The daemons' and executors' log files of the simulated cluster."""
    folder = os.environ.get("SPARK_CNN_CLUSTER_RUNTIME", os.path.join(ROOT, ".runtime", "cluster"))
    found = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith((".log", ".out")) or name in ("stdout", "stderr"):
                found.append(os.path.join(dirpath, name))
    return found


def allreduce_args(tmp_path, synthetic_dir, iterations=ITERATIONS, *extra):
    metrics = tmp_path / "allreduce.jsonl"
    env = {"SPARK_CNN_DATA_DIR": synthetic_dir, "SPARK_CNN_PARAMS_DIR": str(tmp_path / "params")}
    # no [num batches]: one task per slot of the cluster (3 nodes of 1 core)
    args = [IMAGES, iterations, "--seed", 3, "--metrics", metrics, "--exchange", "allreduce",
            *extra]
    return metrics, args, env


def test_cluster_allreduce_equals_naive_with_a_task_on_every_node(cluster, naive_run,
                                                                  synthetic_dir, tmp_path):
    cluster.up()
    metrics, args, env = allreduce_args(tmp_path, synthetic_dir)
    result = cluster.submit(os.path.join(ROOT, "locality_train.py"), *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_metrics(metrics)
    np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in naive_run],
                               rtol=1e-5)
    for r in records:
        assert r["tasks"] == 3 and r["exchange"] == "allreduce"
        assert r["task_hosts"] == node_ips(cluster)        # one task on every node


def test_cluster_allreduce_survives_a_lost_node_with_fewer_tasks(cluster, synthetic_dir,
                                                                 tmp_path):
    """kill-node 3 in the middle of a segment: the segment runs again on the two
    nodes left, and the run ends within 1e-5 of one that lost nothing."""
    cluster.up()
    iterations, every = 90, 30
    extra = ("--minibatch", 100, "--save-every", every)
    _, args, env = allreduce_args(tmp_path / "ref", synthetic_dir, iterations, *extra)
    result = cluster.submit(os.path.join(ROOT, "locality_train.py"), *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = load_params(tmp_path / "ref" / "params" / "locality.npz")

    metrics, args, env = allreduce_args(tmp_path, synthetic_dir, iterations, *extra)
    command = ["bash", os.path.join(ROOT, "scripts", "cluster.sh"), "submit",
               os.path.join(ROOT, "locality_train.py"), *map(str, args)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CNN_")}
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env={**base, **env}, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            # the second segment has begun: its rows are printed as they come
            wait_for(lambda: "iteration 32:" in log_path.read_text(), 300,
                     "a row of the second segment", interval=0.05)
            cluster.kill_node(3)
            assert proc.wait(timeout=600) == 0, log_path.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text()
    assert "running it again" in output and "going on with 2 tasks" in output, output[-4000:]
    records = read_metrics(metrics)
    assert [r["iteration"] for r in records] == list(range(1, iterations + 1))
    # three tasks until the segment that lost the node, two from its rerun on
    tasks = [r["tasks"] for r in records]
    lost = tasks.index(2)
    assert lost % every == 0 and lost >= every, tasks
    assert set(tasks[:lost]) == {3} and set(tasks[lost:]) == {2}, tasks
    params = load_params(tmp_path / "params" / "locality.npz")
    for name, value in expected.items():
        assert relative_difference(params[name], value) < 1e-5, name
    cluster.up()                                     # heal node 3 for the tests that follow
