"""Shared pytest fixtures and the hook that puts every test in a tier; the helpers
they use are plain modules beside this file (project.py, services.py, cluster.py,
sparkjobs.py, pngs.py), which the test files import too.

Storage fixtures use the real Redis / HDFS servers: the SPARK_CNN_* variables
printed by ``scripts/services.sh start`` if they are set, otherwise the
fixtures run that script themselves (and export its settings into
``os.environ`` for subprocesses).  Unreachable servers FAIL the test.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import CLUSTER_NODES, Cluster, cluster_leftovers, cluster_namespace_prefix
from project import ROOT
from services import SERVICE_ENV_NAMES, HdfsSettings, parse_exports

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# pngs.py checks with plain asserts: rewritten, as in a test file, for their messages
pytest.register_assert_rewrite("pngs")

# The tiers, pytest markers declared in pyproject.toml: every test is in one.
TIERS = ("quick", "spark", "packaging", "services", "cluster")
# Fixtures that reach the servers of scripts/services.sh: a test using one of
# them (directly or through another fixture) is in the "services" tier.
SERVICE_FIXTURES = {"service_env", "redis_addresses", "hdfs_settings"}
# Fixtures that build the project (the egg spark-submit ships): a test using one
# and no server is in the "packaging" tier.
PACKAGING_FIXTURES = {"egg"}
# Fixtures that start Spark on a local master in the test process (the modules' own
# `sc` / `spark`): with no server fixture, such a test is in the "spark" tier.
SPARK_FIXTURES = {"sc", "spark"}


def pytest_collection_modifyitems(config, items):
    """Put every test in one tier: cluster (marked by hand), services (a server
    fixture), packaging (marked by hand, or the egg fixture), spark (Spark on a
    local master, in this process), or quick."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("cluster"):
            pass
        elif SERVICE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.services)
        elif item.get_closest_marker("packaging"):
            pass
        elif PACKAGING_FIXTURES & fixtures:
            item.add_marker(pytest.mark.packaging)
        elif SPARK_FIXTURES & fixtures:
            item.add_marker(pytest.mark.spark)
        else:
            item.add_marker(pytest.mark.quick)
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid} is in the tiers {', '.join(tiers)}: "
                                    "a test must be in exactly one")


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    """The SPARK_CNN_* settings; starts the services when they are not set."""
    if all(os.environ.get(n) for n in ("SPARK_CNN_REDIS", "SPARK_CNN_WEBHDFS", "SPARK_CNN_HDFS")):
        return {n: os.environ.get(n, "") for n in SERVICE_ENV_NAMES}
    script = Path(ROOT, "scripts", "services.sh")
    try:
        proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} start did not finish in 900 s")
    if proc.returncode != 0:
        pytest.fail(f"{script} start failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    env = parse_exports(proc.stdout)
    missing = [n for n in SERVICE_ENV_NAMES if not env.get(n)]
    if missing:
        pytest.fail(f"{script} start printed no value for {missing}; stdout was:\n{proc.stdout}")
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def redis_addresses(service_env) -> list[str]:
    """Redis addresses (local node first), each checked with a PING."""
    import redis

    from spark.storage.redis_store import parse_redis_addresses

    addresses = parse_redis_addresses(service_env["SPARK_CNN_REDIS"])
    for address in addresses:
        if address.startswith("unix://"):
            client = redis.Redis(unix_socket_path=address[len("unix://"):], socket_timeout=5)
        else:
            host, _, port = address.rpartition(":")
            client = redis.Redis(host=host, port=int(port), socket_timeout=5)
        try:
            client.ping()
        except Exception as e:  # noqa: BLE001 - any failure: one message saying what to start
            pytest.fail(f"Redis at {address} is not reachable: {e}; run scripts/services.sh start")
        finally:
            client.close()
    return addresses


@pytest.fixture(scope="session")
def hdfs_settings(service_env) -> HdfsSettings:
    """HDFS settings, checked with a WebHDFS status call on the root folder."""
    from hdfs import InsecureClient

    settings = HdfsSettings(webhdfs=service_env["SPARK_CNN_WEBHDFS"],
                            hdfs=service_env["SPARK_CNN_HDFS"],
                            user=service_env.get("SPARK_CNN_HDFS_USER") or "root",
                            root=service_env.get("SPARK_CNN_HDFS_ROOT") or "/spark-cnn")
    try:
        InsecureClient(settings.webhdfs, user=settings.user, timeout=10).status("/")
    except Exception as e:  # noqa: BLE001 - any failure: one message saying what to start
        pytest.fail(f"WebHDFS at {settings.webhdfs} is not reachable: {e}; "
                    "run scripts/services.sh start")
    return settings


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """A small learnable data set in the CIFAR-10 python-version layout (2,000 + 500 images)."""
    from spark.data.synthetic import make_synthetic_cifar10

    folder = tmp_path_factory.mktemp("synthetic-cifar-10")
    make_synthetic_cifar10(folder, train=2000, test=500, seed=0)
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_train(synthetic_dir):
    """The synthetic training split, loaded: images (2000, 32, 32, 3) uint8, labels (2000,)."""
    from spark.data.cifar10 import load_cifar10

    return load_cifar10(synthetic_dir, "train")


@pytest.fixture(scope="session")
def egg(tmp_path_factory):
    """The project built from scratch as an egg in a temporary folder (dist/ is not touched)."""
    out = tmp_path_factory.mktemp("egg")
    cmd = [sys.executable, "setup.py", "-q",
           "egg_info", "--egg-base", str(out),
           "build", "--build-base", str(out / "build"),
           "bdist_egg", "--dist-dir", str(out / "dist"),
           "--bdist-dir", str(out / "bdist")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    eggs = glob.glob(str(out / "dist" / "*.egg"))
    assert [os.path.basename(e) for e in eggs] == [
        "spark_cnn-%s-py%d.%d-linux-x86_64.egg"
        % ((__import__('spark').__version__,) + sys.version_info[:2])]
    return eggs[0]


# ---------------------------------------------------------------------------
# The simulated multi-node cluster of scripts/cluster.sh (root only), helpers in
# cluster.py. Tests that use the `cluster` fixture must be marked
# @pytest.mark.cluster.

@pytest.fixture(scope="session")
def cluster():
    """The simulated 3-node cluster (`scripts/cluster.sh up 3`), shared by the
    session; fails (never skips) if it cannot start. Its teardown runs `down`
    and checks that nothing of the cluster is left; a cluster that was already
    fully up before the session (started by hand or by another session) is
    left running."""
    if os.geteuid() != 0:
        pytest.fail("the cluster tier needs root (network namespaces): "
                    "run as root or -m 'not cluster'")
    handle = Cluster(CLUSTER_NODES)
    already_up = handle.status().returncode == 0
    handle.up()
    prefix = cluster_namespace_prefix()
    inodes = {os.stat(f"/run/netns/{prefix}-node{k}").st_ino for k in range(1, handle.nodes + 1)}
    yield handle
    if already_up:
        return
    proc = handle.down()
    assert proc.returncode == 0, f"cluster.sh down failed:\n{proc.stderr[-4000:]}"
    left = cluster_leftovers(0, inodes)
    assert not left, f"left after cluster.sh down: {left}"
