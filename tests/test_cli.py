"""The local entry scripts as a user runs them: command lines, outputs, exit codes."""
import json
import re

import pytest
from sparkjobs import run_script


@pytest.mark.parametrize("script, args", [
    ("naive_train.py", ["--bogus"]),
    ("naive_train.py", ["ten"]),
    ("naive_train.py", ["0"]),
    ("naive_train.py", ["10", "-1"]),
    ("naive_train.py", ["10", "2", "--lr", "fast"]),
    ("naive_test.py", ["1", "2"]),
    ("naive_training_test.py", ["-5"]),
    ("naive_train.py", ["10", "2", "--minibatch", "11"]),
    ("spark_train.py", ["3", "1", "5"]),               # more batches than images
    ("locality_train.py", ["5000", "100", "0"]),
    ("locality_test.py", ["10", "1", "x"]),
    ("naive_train.py", ["10", "2", "--lr", "inf"]),
    ("naive_train.py", ["10", "2", "--lr", "nan"]),
    ("naive_train.py", ["10", "2", "--lr", "-inf"]),
    ("naive_train.py", ["10", "2", "--momentum", "nan"]),
    ("naive_train.py", ["10", "2", "--reg", "inf"]),
    ("naive_train.py", ["10", "2", "--min", "5"]),      # abbreviations are not flags
    ("naive_train.py", ["10", "2", "--res"]),
    ("naive_test.py", ["10", "--data", "x"]),
    ("spark_train.py", ["10", "2", "2", "--exchange", "memory"]),
    ("locality_test.py", ["10", "--exchange", "disk"]),
    ("naive_train.py", ["10", "2", "--exchange", "none"]),   # the local trainer has no exchange
    ("naive_train.py", ["10", "2", "--exchange-dtype", "float8"]),
    ("locality_train.py", ["10", "2", "2", "--exchange-dtype", "float64"]),
])
def test_bad_command_lines_get_usage_and_exit_2(script, args):
    result = run_script(script, *args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{script}: error:")


def no_spark_env(tmp_path):
    """An environment in which starting Spark fails (exit 1): an exit code 2
    shows that the command line was refused before Spark was started."""
    empty = tmp_path / "no-spark"
    empty.mkdir(exist_ok=True)
    return {"SPARK_HOME": str(empty), "JAVA_HOME": str(empty)}


@pytest.mark.parametrize("script, args", [
    ("spark_test.py", ["3", "1", "5"]),                  # more batches than images
    ("locality_training_test.py", ["4", "0", "9"]),
    ("locality_train.py", ["40", "1", "2", "--redis", "127.0.0.1:6390,nohost"]),
    ("locality_train.py", ["40", "1", "2", "--redis", "127.0.0.1:99999"]),
    ("locality_test.py", ["40", "1", "2", "--redis", ","]),
    ("spark_train.py", ["40", "1", "2", "--exchange", "redis", "--redis", ","]),
    ("spark_train.py", ["40", "1", "2", "--resume"]),     # nothing to resume
])
def test_spark_usage_errors_exit_2_before_spark_starts(script, args, synthetic_dir, tmp_path):
    result = run_script(script, *args, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path / "params", env=no_spark_env(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage:") and lines[-1].startswith(f"{script}: error:"), lines
    assert all(line.startswith(" ") for line in lines[1:-1]), lines     # the usage, wrapped
    assert "Traceback" not in result.stderr


def test_the_spark_check_above_would_see_spark_start(synthetic_dir, tmp_path):
    """The environment of the test above really stops Spark: a valid command fails with 1."""
    result = run_script("spark_train.py", 8, 1, 2, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path / "params", env=no_spark_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "params" / "spark.npz").exists()


def test_non_finite_flags_say_finite(tmp_path):
    result = run_script("naive_train.py", 10, 2, "--lr", "inf")
    assert "--lr: expected a finite number, got inf" in result.stderr


def test_zero_iterations_train_and_save_nothing(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    result = run_script("naive_train.py", 10, 0, "--data-dir", synthetic_dir,
                        "--params-dir", params)
    assert result.returncode == 0, result.stderr
    assert "nothing trained, nothing saved" in result.stdout
    assert "parameters saved" not in result.stdout and not params.exists()


@pytest.mark.parametrize("where", ["folder is a file", "is a folder"])
def test_unwritable_metrics_file_is_refused_before_the_first_iteration(where, synthetic_dir,
                                                                       tmp_path):
    params = tmp_path / "params"
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    assert run_script("naive_train.py", 30, 1, *common).returncode == 0
    saved = (params / "naive.npz").read_bytes()
    if where == "folder is a file":
        (tmp_path / "plain").write_text("x")
        metrics = tmp_path / "plain" / "metrics.jsonl"
    else:
        metrics = tmp_path / "metrics-folder"
        metrics.mkdir()
    result = run_script("naive_train.py", 30, 3, "--resume", "--metrics", metrics, *common)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("naive_train.py: error: --metrics: cannot write the metrics file")
    assert str(metrics) in last and "Traceback" not in result.stderr
    assert "iteration 2:" not in result.stdout
    assert (params / "naive.npz").read_bytes() == saved


def test_help_describes_the_arguments():
    result = run_script("naive_train.py", "--help")
    assert result.returncode == 0
    for word in ("images", "iterations", "--minibatch", "--metrics", "--data-dir",
                 "SPARK_CNN_DATA_DIR"):
        assert word in result.stdout


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_script("naive_train.py", 10, 1, "--data-dir", tmp_path / "nowhere",
                        "--params-dir", tmp_path / "params")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "params").exists()


def test_train_then_evaluate_end_to_end(synthetic_dir, tmp_path):
    params, metrics = tmp_path / "params", tmp_path / "metrics.jsonl"
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    result = run_script("naive_train.py", 400, 6, "--minibatch", 150, "--metrics", metrics, *common)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"iteration \d+: forward .*s backward .*s loss \d", result.stdout)) == 6
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 7))
    for key in ("loss", "forward_s", "backward_s", "update_s", "images_per_s", "rss_mb"):
        assert all(isinstance(r[key], float) and r[key] >= 0 for r in records), key
    assert all(r["images"] == 150 for r in records)
    for script, split_size in (("naive_test.py", 200), ("naive_training_test.py", 300)):
        result = run_script(script, split_size, *common)
        assert result.returncode == 0, result.stderr
        last = result.stdout.strip().splitlines()[-1]
        match = re.fullmatch(rf"accuracy (\d\.\d+) on {split_size} images", last)
        assert match and 0.0 <= float(match.group(1)) <= 1.0, last


def test_resume_continues_and_failures_keep_saved_parameters(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    assert run_script("naive_train.py", 50, 2, *common).returncode == 0
    saved = (params / "naive.npz").read_bytes()
    # a run that fails (too many images) leaves the saved parameters as they were
    failed = run_script("naive_train.py", 10**6, 1, "--resume", *common)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert (params / "naive.npz").read_bytes() == saved
    resumed = run_script("naive_train.py", 50, 3, "--resume", *common)
    assert resumed.returncode == 0 and "iteration 3:" in resumed.stdout
    assert "iteration 4:" not in resumed.stdout


def test_evaluating_without_saved_parameters_says_so(synthetic_dir, tmp_path):
    result = run_script("naive_test.py", 10, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path / "empty")
    assert result.returncode == 1
    assert "no saved parameters" in result.stderr and "Traceback" not in result.stderr


def test_exchange_defaults_by_script_and_picks_the_network_class():
    from spark.cli import test_parser, train_parser
    from spark.config import exchange_of
    from spark.trainers import trainer_class

    train = train_parser("spark_train.py", distributed=True)
    test = test_parser("locality_test.py", distributed=True, split="test")
    assert exchange_of("spark", train.parse_args([]).exchange) == "hdfs"
    assert exchange_of("locality", test.parse_args([]).exchange) == "redis"
    assert exchange_of("locality", train.parse_args(["--exchange", "none"]).exchange) == "none"
    assert exchange_of("spark", test.parse_args(["--exchange", "spark"]).exchange) == "spark"
    assert exchange_of("naive", train.parse_args(["--exchange", "redis"]).exchange) == "local"
    modes = ("hdfs", "redis", "spark", "none", "allreduce")
    assert {mode: trainer_class(mode).__name__ for mode in modes} == {
        "hdfs": "SparkCNN", "redis": "LocalityCNN", "spark": "CachedCNN", "none": "FusedCNN",
        "allreduce": "AllReduceCNN"}
    assert [trainer_class(mode).store_kind for mode in modes] == list(modes)
    assert trainer_class("local").__name__ == "CNN"
