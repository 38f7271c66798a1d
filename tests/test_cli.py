"""The local entry scripts as a user runs them: command lines, outputs, exit codes."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, env=None):
    environ = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    environ.pop("SPARK_CNN_DATA_DIR", None)
    environ.pop("SPARK_CNN_PARAMS_DIR", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, env=environ, timeout=300)


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
])
def test_bad_command_lines_get_usage_and_exit_2(script, args):
    result = run_script(script, *args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_help_describes_the_arguments():
    result = run_script("naive_train.py", "--help")
    assert result.returncode == 0
    for word in ("images", "iterations", "--minibatch", "--metrics", "--data-dir", "SPARK_CNN_DATA_DIR"):
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
    resumed = run_script("naive_train.py", 50, 1, "--resume", *common)
    assert resumed.returncode == 0 and "iteration 3:" in resumed.stdout


def test_evaluating_without_saved_parameters_says_so(synthetic_dir, tmp_path):
    result = run_script("naive_test.py", 10, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path / "empty")
    assert result.returncode == 1
    assert "no saved parameters" in result.stderr and "Traceback" not in result.stderr
