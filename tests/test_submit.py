"""spark-submit of the real entry scripts with the built egg on local[2], against
the real Redis and HDFS, then the matching evaluation scripts."""
import json
import re

import pytest
import redis
from hdfs import InsecureClient
from sparkjobs import job_env, submit

from spark.storage.redis_store import parse_redis_addresses


@pytest.mark.parametrize("kind", ["spark", "locality"])
def test_spark_submit_trains_and_evaluates_from_the_egg(kind, egg, synthetic_dir, service_env,
                                                        tmp_path):
    env = job_env(service_env, tmp_path, synthetic_dir)
    root = env["SPARK_CNN_HDFS_ROOT"]
    work = tmp_path / "cwd"                       # the project folder is not importable from here
    work.mkdir()
    metrics = tmp_path / "metrics.jsonl"
    train = submit(egg, f"{kind}_train.py", [250, 3, 3, "--metrics", metrics], env, work)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
    assert "im2col back end in the Spark tasks: native" in train.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["im2col"] == ["native"] and r["backward_partitions"] == 3
        assert 0 < r["store_bytes"] / 250 < 100_000          # bytes stored per image
        for key in ("broadcast_s", "store_write_s", "store_read_s", "forward_s", "backward_s"):
            assert r[key] >= 0
    assert records[-1]["loss"] < records[0]["loss"]

    for script, n in ((f"{kind}_test.py", 120), (f"{kind}_training_test.py", 250)):
        result = submit(egg, script, [n, 3, 4], env, work)
        assert result.returncode == 0, result.stderr[-4000:]
        assert re.fullmatch(rf"accuracy [01]\.\d+ on {n} images",
                            result.stdout.strip().splitlines()[-1])

    # nothing of the runs is left in HDFS or Redis
    hdfs = InsecureClient(service_env["SPARK_CNN_WEBHDFS"], user=service_env["SPARK_CNN_HDFS_USER"])
    assert hdfs.status(root, strict=False) is None or hdfs.list(root) == []
    for address in parse_redis_addresses(service_env["SPARK_CNN_REDIS"]):
        client = (redis.Redis(unix_socket_path=address[len("unix://"):])
                  if address.startswith("unix://")
                  else redis.Redis(host=address.rsplit(":", 1)[0],
                                   port=int(address.rsplit(":", 1)[1])))
        assert list(client.scan_iter(match="spark-cnn:*", count=1000)) == []
        client.close()


def test_unreachable_redis_fails_with_one_line_and_leaves_nothing(egg, synthetic_dir, service_env,
                                                                   tmp_path):
    env = job_env(service_env, tmp_path, synthetic_dir,
                  SPARK_CNN_REDIS="127.0.0.1:1")                # nothing listens there
    root = env["SPARK_CNN_HDFS_ROOT"]
    result = submit(egg, "locality_train.py", [40, 1, 2], env, tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("locality_train.py: error:")]
    assert len(errors) == 1 and "cannot reach Redis at 127.0.0.1:1" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert not (tmp_path / "params" / "locality.npz").exists()
    hdfs = InsecureClient(service_env["SPARK_CNN_WEBHDFS"], user=service_env["SPARK_CNN_HDFS_USER"])
    assert hdfs.status(root, strict=False) is None or hdfs.list(root) == []


def test_locality_train_follows_the_recipe_like_the_local_trainer(egg, synthetic_dir, service_env,
                                                                  tmp_path):
    """The recipe flags through spark-submit: the same losses, rates and test accuracy
    as naive_train.py, evaluation on the test images as a Spark stage."""
    from sparkjobs import run_script
    recipe = ["--minibatch", 60, "--lr", 0.02, "--augment", "--schedule", "cosine", "--warmup", 1,
              "--label-smoothing", 0.1, "--eval-every", 2, "--eval-images", 150, "--seed", 2]
    env = job_env(service_env, tmp_path, synthetic_dir)
    work = tmp_path / "cwd"
    work.mkdir()
    spark_metrics, naive_metrics = tmp_path / "spark.jsonl", tmp_path / "naive.jsonl"
    result = submit(egg, "locality_train.py", [240, 4, 3, *recipe, "--metrics", spark_metrics],
                    env, work)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    naive = run_script("naive_train.py", 240, 4, *recipe, "--metrics", naive_metrics,
                       "--data-dir", synthetic_dir, "--params-dir", tmp_path / "naive-params")
    assert naive.returncode == 0, naive.stderr
    spark_records = [json.loads(line) for line in spark_metrics.read_text().splitlines()]
    naive_records = [json.loads(line) for line in naive_metrics.read_text().splitlines()]
    for key in ("loss", "lr", "epoch"):
        assert [r[key] for r in spark_records] == pytest.approx([r[key] for r in naive_records],
                                                                rel=1e-5), key
    accuracy = [(r["iteration"], r["test_accuracy"]) for r in spark_records if "test_accuracy" in r]
    assert [i for i, _ in accuracy] == [2, 4]
    expected = [r["test_accuracy"] for r in naive_records if "test_accuracy" in r]
    assert [a for _, a in accuracy] == pytest.approx(expected, abs=2 / 150)


def redis_commands(server):
    """How many times a Redis server has run each command (INFO commandstats), but for
    the INFO asking it and the HELLO every new connection (this one too) sends."""
    stats = server.client().info("commandstats")
    return {name: value["calls"] for name, value in stats.items()
            if name not in ("cmdstat_info", "cmdstat_hello")}


@pytest.mark.parametrize("exchange", ["spark", "none"])
def test_spark_submit_with_an_exchange_that_stores_nothing(exchange, egg, synthetic_dir,
                                                           service_env, tmp_path):
    """spark_train.py --exchange spark|none from the egg: the local trainer's losses,
    the mode in every metrics record, then the test scripts with the same flag.
    Their Redis (a server of this test's own) is never sent a command, not even
    a heartbeat, and their HDFS folder is never made."""
    from sparkjobs import RedisServer, run_script
    server = RedisServer(str(tmp_path / "redis"))
    try:
        env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_REDIS=server.address)
        root = env["SPARK_CNN_HDFS_ROOT"]
        hdfs = InsecureClient(service_env["SPARK_CNN_WEBHDFS"],
                              user=service_env["SPARK_CNN_HDFS_USER"])
        untouched = redis_commands(server)                # RedisServer's own ping
        work = tmp_path / "cwd"
        work.mkdir()
        metrics, naive_metrics = tmp_path / "metrics.jsonl", tmp_path / "naive.jsonl"
        train = submit(egg, "spark_train.py",
                       [250, 3, 3, "--exchange", exchange, "--metrics", metrics], env, work)
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
        assert "im2col back end in the Spark tasks: native" in train.stdout
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [r["iteration"] for r in records] == [1, 2, 3]
        for r in records:
            assert r["exchange"] == exchange and r["backward_partitions"] == 3
            assert r["im2col"] == ["native"]
            assert "store_write_s" not in r and "store_read_s" not in r
            if exchange == "none":
                assert r["store_bytes"] == 0
            else:
                assert 0 < r["store_bytes"] / 250 < 100_000 and r["recomputed_batches"] == 0
            for key in ("broadcast_s", "forward_s", "backward_s"):
                assert r[key] >= 0
        naive = run_script("naive_train.py", 250, 3, "--metrics", naive_metrics,
                           "--data-dir", synthetic_dir, "--params-dir", tmp_path / "naive-params")
        assert naive.returncode == 0, naive.stderr
        expected = [json.loads(line)["loss"] for line in naive_metrics.read_text().splitlines()]
        assert [r["loss"] for r in records] == pytest.approx(expected, rel=1e-5)

        for script, n in (("spark_test.py", 120), ("spark_training_test.py", 250)):
            result = submit(egg, script, [n, 3, 4, "--exchange", exchange], env, work)
            assert result.returncode == 0, result.stderr[-4000:]
            last = result.stdout.strip().splitlines()[-1]
            assert re.fullmatch(rf"accuracy [01]\.\d+ on {n} images", last)
        assert redis_commands(server) == untouched
        assert server.keys() == []
        assert hdfs.status(root, strict=False) is None
    finally:
        server.stop()


def test_locality_train_with_exchange_none_needs_no_server(egg, synthetic_dir, service_env,
                                                           tmp_path):
    """Redis and WebHDFS addresses where nothing listens: --exchange none never asks them."""
    env = job_env(service_env, tmp_path, synthetic_dir, SPARK_CNN_REDIS="127.0.0.1:1",
                  SPARK_CNN_WEBHDFS="http://127.0.0.1:1", SPARK_CNN_IO_TIMEOUT=3)
    result = submit(egg, "locality_train.py", [60, 2, 2, "--exchange", "none"], env, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "params" / "locality.npz").exists()
    result = submit(egg, "locality_test.py", [50, 2, 2, "--exchange", "none"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1].endswith("on 50 images")
