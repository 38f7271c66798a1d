"""--resume continues the saved run exactly: its settings, up to a total number of
iterations, and after a SIGKILL of the trainer it ends bit-identical to a run
that was never interrupted (locally and through spark-submit)."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import pytest
from project import ROOT
from sparkjobs import run_script

from spark.atomic import host_tag
from spark.checkpoint import remove_stale_temporaries


def saved_state(path):
    """(meta, arrays) of a checkpoint, read the way the product reads it."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    return meta, arrays


def assert_same_parameters(a, b):
    meta_a, arrays_a = saved_state(a)
    meta_b, arrays_b = saved_state(b)
    assert meta_a["iteration"] == meta_b["iteration"]
    assert sorted(arrays_a) == sorted(arrays_b) and len(arrays_a) >= 4
    for name in arrays_a:                     # parameters and velocities, bit for bit
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert np.array_equal(arrays_a[name], arrays_b[name]), name


def saved_iteration(path):
    """The iteration of the checkpoint at `path`, or -1 while there is none."""
    try:
        return saved_state(path)[0]["iteration"]
    except FileNotFoundError:
        return -1


RUN = ["--minibatch", 20, "--lr", 0.02, "--momentum", 0.5, "--reg", 0.001, "--seed", 3,
       "--dtype", "float64"]


@pytest.fixture(scope="module")
def two_saved(synthetic_dir, tmp_path_factory):
    """A run of 60 images stopped after 2 of its iterations (non-default settings)."""
    params = tmp_path_factory.mktemp("two") / "params"
    result = run_script("naive_train.py", 60, 2, *RUN, "--data-dir", synthetic_dir,
                        "--params-dir", params)
    assert result.returncode == 0, result.stderr
    return params / "naive.npz"


def copy_of(checkpoint, tmp_path):
    params = tmp_path / "params"
    params.mkdir()
    (params / "naive.npz").write_bytes(checkpoint.read_bytes())
    return params


def test_checkpoint_keeps_the_runs_settings(two_saved):
    meta, _ = saved_state(two_saved)
    assert meta["iteration"] == 2
    assert (meta["lr"], meta["momentum"], meta["reg"], meta["seed"], meta["dtype"]) == \
        (0.02, 0.5, 0.001, 3, "float64")
    run = meta["run"]
    assert {k: run[k] for k in ("images", "minibatch", "order", "augment", "schedule",
                                "warmup")} == {"images": 60, "minibatch": 20, "order": "shuffle",
                                               "augment": False, "schedule": "constant",
                                               "warmup": 0}
    assert run["wall_s"] > 0
    assert [layer["type"] for layer in meta["arch"]] == ["conv", "relu", "pool", "fc"]


def test_resume_with_no_flags_continues_the_same_run(two_saved, synthetic_dir, tmp_path):
    params = copy_of(two_saved, tmp_path)
    resumed = run_script("naive_train.py", 60, 5, "--resume", "--data-dir", synthetic_dir,
                         "--params-dir", params)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""                                   # no notes: nothing overridden
    assert "3 iterations of 20 images, from iteration 2 to 5" in resumed.stdout
    assert [line.split(":")[0] for line in resumed.stdout.splitlines()
            if line.startswith("iteration ")] == ["iteration 3", "iteration 4", "iteration 5"]
    whole = tmp_path / "whole"
    straight = run_script("naive_train.py", 60, 5, *RUN, "--data-dir", synthetic_dir,
                          "--params-dir", whole)
    assert straight.returncode == 0, straight.stderr
    assert_same_parameters(params / "naive.npz", whole / "naive.npz")
    meta, _ = saved_state(params / "naive.npz")
    assert (meta["lr"], meta["momentum"], meta["reg"]) == (0.02, 0.5, 0.001)


def test_the_same_command_again_is_already_done(two_saved, synthetic_dir, tmp_path):
    params = copy_of(two_saved, tmp_path)
    before = (params / "naive.npz").read_bytes()
    for total in (2, 1, 0):
        result = run_script("naive_train.py", 60, total, *RUN, "--resume",
                            "--data-dir", synthetic_dir, "--params-dir", params)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (f"{params / 'naive.npz'} is already at iteration 2 "
                                         f"({total} asked for): nothing to train")
        assert (params / "naive.npz").read_bytes() == before


def test_explicit_flags_override_with_one_note_each(two_saved, synthetic_dir, tmp_path):
    params = copy_of(two_saved, tmp_path)
    result = run_script("naive_train.py", 60, 3, "--resume", "--lr", 0.01, "--reg", 0.001,
                        "--momentum", 0.8, "--data-dir", synthetic_dir, "--params-dir", params)
    assert result.returncode == 0, result.stderr
    notes = result.stderr.strip().splitlines()
    assert len(notes) == 2, notes                                 # --reg is unchanged: no note
    assert notes[0].startswith("note: --lr 0.01 replaces 0.02 of ")
    assert notes[1].startswith("note: --momentum 0.8 replaces 0.5 of ")
    meta, _ = saved_state(params / "naive.npz")
    assert (meta["iteration"], meta["lr"], meta["momentum"], meta["reg"]) == (3, 0.01, 0.8, 0.001)
    assert (meta["seed"], meta["dtype"]) == (3, "float64")
    assert (meta["run"]["images"], meta["run"]["minibatch"]) == (60, 20)


@pytest.mark.parametrize("flags, says", [
    (["--dtype", "float32"], "--dtype float32 contradicts"),
    (["--seed", 4], "--seed 4 contradicts"),
    (["--minibatch", 30], "--minibatch 30 contradicts"),
    (["--minibatch", 60], "--minibatch 60 contradicts"),
])
def test_contradicting_the_checkpoint_is_a_usage_error(flags, says, two_saved, synthetic_dir,
                                                       tmp_path):
    params = copy_of(two_saved, tmp_path)
    before = (params / "naive.npz").read_bytes()
    result = run_script("naive_train.py", 60, 4, "--resume", *flags, "--data-dir", synthetic_dir,
                        "--params-dir", params)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert says in last and str(params / "naive.npz") in last, last
    assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert (params / "naive.npz").read_bytes() == before


def test_another_number_of_images_is_refused(two_saved, synthetic_dir, tmp_path):
    params = copy_of(two_saved, tmp_path)
    result = run_script("naive_train.py", 80, 4, "--resume", "--data-dir", synthetic_dir,
                        "--params-dir", params)
    assert result.returncode == 2
    assert "[num images] 80 contradicts" in result.stderr and "whose run has 60" in result.stderr


def test_resume_without_a_checkpoint_says_so(synthetic_dir, tmp_path):
    result = run_script("naive_train.py", 60, 4, "--resume", "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path / "none")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"naive_train.py: error: --resume: no saved parameters at "
                    f"{tmp_path / 'none' / 'naive.npz'}; train without --resume first, or point "
                    "--params-dir / SPARK_CNN_PARAMS_DIR at them")
    assert not (tmp_path / "none").exists()


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    host = host_tag()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".tmp-{dead_pid()}-{host}-abc123.npz",
            "live": f".tmp-{sleeper.pid}-{host}-def456.npz",
            "other-host-new": f".tmp-{os.getpid()}-elsewhere-x1.npz",
            "other-host-old": f".tmp-{os.getpid()}-elsewhere-x2.npz",
            "legacy-old": ".tmp-k2j3h4.npz",
            "legacy-new": ".tmp-a9b8c7.npz",
            "not-ours": "notes.txt",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        hour_ago = time.time() - 3601
        for key in ("other-host-old", "legacy-old"):
            os.utime(tmp_path / names[key], (hour_ago, hour_ago))
        removed = remove_stale_temporaries(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == sorted(
            names[k] for k in ("dead", "other-host-old", "legacy-old"))
        assert sorted(os.listdir(tmp_path)) == sorted(
            names[k] for k in ("live", "other-host-new", "legacy-new", "not-ours"))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_removes_what_a_killed_saver_left(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    params.mkdir()
    host = host_tag()
    leftover = params / f".tmp-{dead_pid()}-{host}-zz9.npz"
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")
    result = run_script("naive_train.py", 20, 1, "--data-dir", synthetic_dir,
                        "--params-dir", params)
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert f"note: removed {leftover}" in result.stderr
    assert sorted(os.listdir(params)) == ["naive.npz"]


# ----- SIGKILL in the middle of a run, then --resume ---------------------------

def kill_when_saved(command, checkpoint, at_least, env, cwd, log, timeout=600):
    """Start `command` in its own process group, SIGKILL the whole group as soon as
    `checkpoint` shows iteration >= `at_least`; -> the iteration saved then.

    Waits (bounded) for every process the command had started to be gone."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    family = []
    try:
        deadline = time.monotonic() + timeout
        while saved_iteration(checkpoint) < at_least:
            assert proc.poll() is None, \
                f"ended before iteration {at_least}: {open(log).read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        gone, alive = psutil.wait_procs(family, timeout=60)
        assert alive == [], f"still running after the kill: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    return saved_iteration(checkpoint)


def test_sigkill_then_resume_ends_bit_identical_locally(synthetic_dir, tmp_path):
    total = 30
    args = [400, total, "--minibatch", 200, "--data-dir", synthetic_dir]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    script = [sys.executable, os.path.join(ROOT, "naive_train.py"), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    at_kill = kill_when_saved(script + ["--params-dir", str(killed)], killed / "naive.npz", 2,
                              env, ROOT, tmp_path / "killed.log")
    assert 2 <= at_kill < total                      # killed in the middle of the run
    print(f"naive: killed at iteration {at_kill} of {total}")
    resumed = run_script("naive_train.py", *args, "--params-dir", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"from iteration {at_kill} to {total}" in resumed.stdout
    assert f"iteration {total}:" in resumed.stdout
    straight = run_script("naive_train.py", *args, "--params-dir", whole)
    assert straight.returncode == 0, straight.stderr
    assert_same_parameters(killed / "naive.npz", whole / "naive.npz")
    assert sorted(os.listdir(killed)) == ["naive.npz"]     # no temporary file left behind


# ----- the same through spark-submit (services tier) ---------------------------

def spark_submit():
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def submit_command(egg, script, args):
    return [spark_submit(), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
            "--py-files", egg, os.path.join(ROOT, script), *map(str, args)]


def clean_hdfs_and_redis(service_env, root):
    """Remove what the runs under HDFS folder `root` left (a killed run cannot clean up)
    -> the names found there."""
    import redis
    from hdfs import InsecureClient

    from spark.storage.redis_store import parse_redis_addresses

    hdfs = InsecureClient(service_env["SPARK_CNN_WEBHDFS"], user=service_env["SPARK_CNN_HDFS_USER"])
    runs = hdfs.list(root) if hdfs.status(root, strict=False) else []
    for address in parse_redis_addresses(service_env["SPARK_CNN_REDIS"]):
        client = (redis.Redis(unix_socket_path=address[len("unix://"):])
                  if address.startswith("unix://")
                  else redis.Redis(host=address.rsplit(":", 1)[0],
                                   port=int(address.rsplit(":", 1)[1])))
        for run in runs:
            for key in client.scan_iter(match=f"spark-cnn:{run}:*", count=1000):
                client.delete(key)
        client.close()
    hdfs.delete(root, recursive=True)
    return runs


@pytest.mark.parametrize("kind", ["spark", "locality"])
def test_sigkill_of_the_spark_driver_then_resume_ends_bit_identical(kind, egg, synthetic_dir,
                                                                    service_env, tmp_path):
    root = f"/spark-cnn-resume-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **service_env)
    env.update(SPARK_CNN_HDFS_ROOT=root, SPARK_CNN_DATA_DIR=synthetic_dir,
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               XDG_CACHE_HOME=str(tmp_path / "cache"),
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    env.pop("PYTHONPATH", None)
    work = tmp_path / "cwd"
    work.mkdir()
    total = 7
    args = [200, total, 2, "--minibatch", 100]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    at_kill = None
    try:
        at_kill = kill_when_saved(
            submit_command(egg, f"{kind}_train.py", args + ["--params-dir", killed]),
            killed / f"{kind}.npz", 2, env, work, tmp_path / "killed.log")
        assert 2 <= at_kill < total
        resumed = subprocess.run(submit_command(egg, f"{kind}_train.py",
                                                args + ["--params-dir", killed, "--resume"]),
                                 env=env, cwd=work, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
        assert f"from iteration {at_kill} to {total}" in resumed.stdout
        straight = subprocess.run(submit_command(egg, f"{kind}_train.py",
                                                 args + ["--params-dir", whole]),
                                  env=env, cwd=work, capture_output=True, text=True, timeout=600)
        assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-4000:]
        assert_same_parameters(killed / f"{kind}.npz", whole / f"{kind}.npz")
        assert sorted(os.listdir(killed)) == [f"{kind}.npz"]
    finally:
        left = clean_hdfs_and_redis(service_env, root)
        print(f"{kind}: killed at iteration {at_kill}; entries left under {root}: {left}")


def test_spark_batches_come_from_the_checkpoint_unless_given(two_saved):
    """resolve_config as the Spark trainers use it: [num batches] left out -> the saved run's."""
    import io

    from spark.cli import train_parser
    from spark.cnn import CNN
    from spark.runner import resolve_config

    saved = CNN.load(two_saved)
    saved.run_info["batches"] = 3
    parser = train_parser("spark_train.py", distributed=True)
    err = io.StringIO()
    run = resolve_config(parser.parse_args(["60", "9", "--resume"]), "spark", saved, "ck.npz", err)
    assert (run.batches, run.images, run.batch_size, run.lr) == (3, 60, 20, 0.02)
    assert err.getvalue() == ""
    run = resolve_config(parser.parse_args(["60", "9", "5", "--resume"]), "spark", saved, "ck.npz",
                         err)
    assert run.batches == 5
    assert err.getvalue() == ("note: 5 batches where ck.npz had 3: gradients are summed in "
                              "another order (results differ in rounding)\n")
    fresh = resolve_config(parser.parse_args([]), "spark", None, "ck.npz", err)
    assert (fresh.batches, fresh.images, fresh.batch_size, fresh.lr) == (4, 1000, 1000, 0.001)


def test_sigkill_of_an_allreduce_driver_then_resume_ends_bit_identical(egg, synthetic_dir,
                                                                      tmp_path):
    """--exchange allreduce saves at every segment's end (here every 4 iterations):
    a driver killed mid-run resumes from the last segment and ends bit-identical."""
    env = dict(os.environ, SPARK_CNN_DATA_DIR=synthetic_dir, PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, XDG_CACHE_HOME=str(tmp_path / "cache"),
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    env.pop("PYTHONPATH", None)
    work = tmp_path / "cwd"
    work.mkdir()
    total = 60
    args = [400, total, 2, "--minibatch", 100, "--exchange", "allreduce", "--save-every", 4,
            "--augment", "--schedule", "cosine"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    at_kill = kill_when_saved(
        submit_command(egg, "locality_train.py", args + ["--params-dir", killed]),
        killed / "locality.npz", 8, env, work, tmp_path / "killed.log")
    assert 8 <= at_kill < total and at_kill % 4 == 0
    resumed = subprocess.run(submit_command(egg, "locality_train.py",
                                            args + ["--params-dir", killed, "--resume"]),
                             env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert f"from iteration {at_kill} to {total}" in resumed.stdout
    # the killed driver's lock (Spark's PythonRunner sends the driver's stderr to stdout)
    assert "note: took over" in resumed.stdout
    straight = subprocess.run(submit_command(egg, "locality_train.py",
                                             args + ["--params-dir", whole]),
                              env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-4000:]
    assert_same_parameters(killed / "locality.npz", whole / "locality.npz")
    assert sorted(os.listdir(killed)) == ["locality.npz"]
    print(f"allreduce: killed at iteration {at_kill} of {total}")


def test_a_second_run_into_the_same_checkpoint_is_refused(synthetic_dir, tmp_path):
    """While a run trains, another run into its checkpoint (a --resume started twice,
    another seed into the same --params-dir) is refused in one line naming the first;
    the lock a SIGKILLed run leaves is taken over with a note."""
    params = tmp_path / "params"
    args = [400, 100000, "--minibatch", 100, "--data-dir", synthetic_dir, "--params-dir", params]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "naive_train.py"),
                              *map(str, args), "--seed", "1"],
                             env=dict(os.environ, PYTHONPATH=ROOT),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while saved_iteration(params / "naive.npz") < 1:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        before = (params / "naive.npz").stat().st_mtime_ns
        second = run_script("naive_train.py", *args, "--seed", "2")
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, lines
        assert lines[0].startswith(f"naive_train.py: error: {params / 'naive.npz'} is in use by "
                                   f"another run (pid {first.pid} on host "), lines
        assert "iteration 1:" not in second.stdout
        assert first.poll() is None                              # the first one goes on
    finally:
        first.kill()
        first.wait(timeout=30)
    assert (params / "naive.npz.lock").exists()                  # a SIGKILL leaves it
    assert (params / "naive.npz").stat().st_mtime_ns >= before
    third = run_script("naive_train.py", 400, 3, "--minibatch", 100, "--data-dir", synthetic_dir,
                       "--params-dir", params, "--seed", "3")
    assert third.returncode == 0, third.stderr
    assert f"note: took over {params / 'naive.npz.lock'}, left by pid {first.pid}" in third.stderr
    assert sorted(os.listdir(params)) == ["naive.npz"]
