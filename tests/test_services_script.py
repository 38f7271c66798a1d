"""scripts/services.sh: a password-protected Redis and HDFS with permissions on.

A second instance of the services runs here with its own runtime folder and
ports, a Redis password file and an HDFS user that is not the superuser; it is
stopped at the end of the module. Using `service_env` puts these tests in the
services tier (Redis and the Hadoop jars are installed by then)."""
import os
import socket
import subprocess
import uuid

import pytest
import redis
from hdfs import InsecureClient
from hdfs.util import HdfsError
from project import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "services.sh")
PORTS = {"SPARK_CNN_REDIS_PORT": "26395", "SPARK_CNN_NN_RPC_PORT": "29100",
         "SPARK_CNN_NN_HTTP_PORT": "29170", "SPARK_CNN_DN_PORT": "29166",
         "SPARK_CNN_DN_HTTP_PORT": "29164", "SPARK_CNN_DN_IPC_PORT": "29167"}
OWNER = "sparkcnn-owner"        # not the user that starts the NameNode, so no superuser


def run(runtime, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CNN_")}
    base.update(PORTS, SPARK_CNN_RUNTIME=str(runtime), SPARK_CNN_HDFS_HEAP="256m",
                SPARK_CNN_HDFS_USER=OWNER, SPARK_CNN_HDFS_ROOT="/owned", **env)
    return subprocess.run(["bash", SCRIPT, *args], env=base, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def exports(proc):
    out = {}
    for line in proc.stdout.splitlines():
        assert line.startswith("export "), proc.stdout
        name, _, value = line[len("export "):].partition("=")
        out[name] = value
    return out


def raw_ping(address, auth=None):
    """The reply of a Redis server to PING (after AUTH `auth`, if given)."""
    if address.startswith("unix://"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(address[len("unix://"):])
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=5)
    with s:
        if auth is not None:
            s.sendall(b"AUTH %s\r\n" % auth.encode())
            reply = s.recv(100)
            if not reply.startswith(b"+OK"):
                return reply
        s.sendall(b"PING\r\n")
        return s.recv(100)


def client(address, password=None):
    if address.startswith("unix://"):
        return redis.Redis(unix_socket_path=address[len("unix://"):], password=password,
                           socket_timeout=5)
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), password=password, socket_timeout=5)


@pytest.fixture(scope="module")
def second(service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("services2")
    runtime = folder / "runtime"
    pwfile = folder / "redis-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (uuid.uuid4().hex + "\n").encode())
    os.close(fd)
    proc = run(runtime, "start", SPARK_CNN_REDIS_PASSWORD_FILE=str(pwfile))
    if proc.returncode != 0:
        run(runtime, "stop")
        pytest.fail(f"services.sh start failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    yield {"runtime": runtime, "pwfile": pwfile, "env": exports(proc)}
    proc = run(runtime, "stop")
    assert proc.returncode == 0, proc.stderr


def test_redis_with_a_password_file(second):
    env = second["env"]
    secret = second["pwfile"].read_text().strip()
    assert env["SPARK_CNN_REDIS_PASSWORD_FILE"] == str(second["pwfile"])
    conf = second["runtime"] / "redis" / "redis.conf"
    assert os.stat(conf).st_mode & 0o777 == 0o600
    addresses = env["SPARK_CNN_REDIS"].split(",")
    assert len(addresses) == 2                      # unix socket and TCP
    for address in addresses:
        assert raw_ping(address).startswith(b"-NOAUTH"), address
        c = client(address, secret)
        assert c.ping()
        c.close()
        assert raw_ping(address, auth="wrong").startswith(b"-WRONGPASS"), address
    for pid in filter(str.isdigit, os.listdir("/proc")):   # never on a command line
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read()
        except OSError:
            pass
    # a plain `start` of the running services reports the password file too
    again = run(second["runtime"], "start")
    assert again.returncode == 0, again.stderr
    assert exports(again) == env
    status = run(second["runtime"], "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "password file" in status.stdout


def test_a_readable_password_file_is_refused(second, tmp_path):
    loose = tmp_path / "pw"
    loose.write_text("secret\n")
    os.chmod(loose, 0o644)
    proc = run(second["runtime"], "start", SPARK_CNN_REDIS_PASSWORD_FILE=str(loose))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "chmod 600" in proc.stderr


def test_hdfs_root_belongs_to_the_hdfs_user_and_others_are_denied(second):
    webhdfs = second["env"]["SPARK_CNN_WEBHDFS"]
    assert second["env"]["SPARK_CNN_HDFS_USER"] == OWNER
    owner = InsecureClient(webhdfs, user=OWNER, timeout=30)
    assert owner.status("/owned")["owner"] == OWNER
    owner.write("/owned/mine", b"data", overwrite=True)
    intruder = InsecureClient(webhdfs, user="intruder", timeout=30)
    with pytest.raises(HdfsError, match="Permission denied"):
        intruder.write("/owned/theirs", b"data")
    with pytest.raises(HdfsError, match="Permission denied"):
        intruder.delete("/owned/mine")
    with owner.read("/owned/mine") as reader:
        assert reader.read() == b"data"
    owner.delete("/owned/mine")


def test_dfs_puts_a_file_as_the_hdfs_user(second, tmp_path):
    """`services.sh dfs` is Hadoop's file system shell on these services, as the HDFS user."""
    local = tmp_path / "block.bin"
    local.write_bytes(os.urandom(5000))
    proc = run(second["runtime"], "dfs", "-put", "-f", str(local), "/owned/block.bin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    owner = InsecureClient(second["env"]["SPARK_CNN_WEBHDFS"], user=OWNER, timeout=30)
    assert owner.status("/owned/block.bin")["owner"] == OWNER
    with owner.read("/owned/block.bin") as reader:
        assert reader.read() == local.read_bytes()
    owner.delete("/owned/block.bin")
    missing = run(second["runtime"], "dfs", "-ls", "/owned/none")
    assert missing.returncode != 0 and "No such file" in missing.stderr
    nothing = run(tmp_path / "no-runtime", "dfs", "-ls", "/")
    assert nothing.returncode == 1 and "not running" in nothing.stderr, nothing.stderr


def test_start_password_generates_one(second):
    runtime = second["runtime"]
    # a running Redis keeps its password: another one needs a stop first
    proc = run(runtime, "start", "--password")
    assert proc.returncode == 1 and "stop" in proc.stderr
    assert run(runtime, "stop").returncode == 0
    proc = run(runtime, "start", "--password")
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = exports(proc)
    generated = runtime / "redis" / "password"
    assert env["SPARK_CNN_REDIS_PASSWORD_FILE"] == str(generated)
    assert os.stat(generated).st_mode & 0o777 == 0o600
    secret = generated.read_text().strip()
    assert len(secret) >= 32
    tcp = env["SPARK_CNN_REDIS"].split(",")[-1]
    assert raw_ping(tcp).startswith(b"-NOAUTH")
    assert client(tcp, secret).ping()


def test_main_services_check_hdfs_permissions(hdfs_settings):
    """The services of the test run: a user without write permission on a folder is refused."""
    folder = f"{hdfs_settings.root}/perm-{uuid.uuid4().hex[:8]}"
    owner = InsecureClient(hdfs_settings.webhdfs, user=hdfs_settings.user, timeout=30)
    owner.makedirs(folder, permission="755")
    try:
        intruder = InsecureClient(hdfs_settings.webhdfs, user="intruder", timeout=30)
        with pytest.raises(HdfsError, match="Permission denied"):
            intruder.write(f"{folder}/x", b"data")
    finally:
        owner.delete(folder, recursive=True)
