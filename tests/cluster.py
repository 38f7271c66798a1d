"""The simulated multi-node cluster of scripts/cluster.sh (root only), for the
`cluster` fixture of conftest.py and the cluster tier's tests: a handle that runs
the script's verbs, and what a cluster leaves behind. Tests that use the
`cluster` fixture must be marked @pytest.mark.cluster."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from project import ROOT
from services import parse_exports

CLUSTER_SCRIPT = Path(ROOT, "scripts", "cluster.sh")
CLUSTER_NODES = 3


def _cluster_base_env(extra=None) -> dict[str, str]:
    """os.environ without SPARK_CNN_* (those of scripts/services.sh would win over
    the cluster's in `cluster.sh submit`), SPARK_CNN_CLUSTER_* kept, then `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SPARK_CNN_") or k.startswith("SPARK_CNN_CLUSTER_")}
    env.update(extra or {})
    return env


class Cluster:
    """Handle on the cluster of scripts/cluster.sh: `.env` holds its exports
    (SPARK_CNN_MASTER, SPARK_CNN_REDIS, SPARK_CNN_REDIS_PASSWORD_FILE, ...)."""

    def __init__(self, nodes: int = CLUSTER_NODES, extra_env=None):
        self.nodes = nodes
        self.extra_env = dict(extra_env or {})
        self.env: dict[str, str] = {}

    def run(self, *args, env=None, timeout=900, check=False) -> subprocess.CompletedProcess:
        """`bash scripts/cluster.sh ARGS...` with text output."""
        proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), *map(str, args)],
                              env=_cluster_base_env({**self.extra_env, **(env or {})}),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"cluster.sh {' '.join(map(str, args))} failed "
                        f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc

    def up(self) -> dict[str, str]:
        """Start the cluster, or restart whatever of it is dead; fails the test if it cannot."""
        try:
            proc = self.run("up", self.nodes, check=True)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{CLUSTER_SCRIPT} up {self.nodes} did not finish in 900 s")
        self.env = parse_exports(proc.stdout)
        missing = [n for n in ("SPARK_CNN_MASTER", "SPARK_CNN_REDIS",
                               "SPARK_CNN_REDIS_PASSWORD_FILE", "SPARK_CNN_WEBHDFS",
                               "SPARK_CNN_HDFS", "SPARK_CNN_HDFS_USER", "SPARK_CNN_HDFS_ROOT")
                   if not self.env.get(n)]
        if missing:
            pytest.fail(f"cluster.sh up printed no value for {missing}; stdout was:\n{proc.stdout}")
        return self.env

    def submit(self, script, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
        """`cluster.sh submit SCRIPT ARGS...` (in the current folder); `env` entries
        (e.g. a SPARK_CNN_* override) win over the cluster's settings."""
        return self.run("submit", script, *args, env=env, timeout=timeout)

    def kill_node(self, k: int) -> subprocess.CompletedProcess:
        return self.run("kill-node", k, check=True, timeout=120)

    def status(self) -> subprocess.CompletedProcess:
        return self.run("status", timeout=120)

    def down(self) -> subprocess.CompletedProcess:
        return self.run("down", timeout=300)


def cluster_namespace_prefix(net: int = 0) -> str:
    return "scn" if net == 0 else f"scn{net}"


def cluster_leftovers(net: int = 0, netns_inodes=()) -> list[str]:
    """What is left of the cluster on network N: namespaces, bridge, listeners on
    10.231.N.x, processes in its namespaces (by inode) or started as its daemons."""
    prefix = cluster_namespace_prefix(net)
    left = []
    if os.path.isdir("/run/netns"):
        left += [f"namespace {n}" for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    if os.path.exists(f"/sys/class/net/{prefix}br0"):
        left.append(f"bridge {prefix}br0")
    if os.path.isdir("/etc/netns"):
        left += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if n.startswith(prefix + "-")]
    subnet = f"10.231.{net}."
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port = fields[1].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            if ip.startswith(subnet) and (table.endswith("udp") or fields[3] == "0A"):
                left.append(f"listener {ip}:{int(port, 16)} ({table})")
    inodes = {f"net:[{i}]" for i in netns_inodes}
    tag = f"SPARK_CNN_CLUSTER_DAEMON={prefix}-node".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") in inodes:
                left.append(f"process {pid} in a cluster namespace")
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(v.startswith(tag) for v in f.read().split(b"\0")):
                    left.append(f"process {pid}: a cluster daemon")
        except OSError:
            continue
    return left
