"""python3 -m spark.report as a user runs it: PNG plots of --metrics files, errors in one line."""
import json
import math
import os
import subprocess
import sys

import pytest
from pngs import check_png
from project import ROOT

ALL_PLOTS = ["loss_iteration.png", "loss_wall.png", "lr_iteration.png",
             "accuracy_iteration.png", "accuracy_wall.png", "time_split.png"]


def report(*args, pythonpath=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, ROOT]))
    return subprocess.run([sys.executable, "-m", "spark.report", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def write_lines(path, records):
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path


def local_records(n=150):
    """What naive_train.py --metrics writes: minibatches of 128."""
    return [dict(iteration=i, loss=2.3 * math.exp(-i / 60) + 0.9 + 0.05 * math.sin(i),
                 forward_s=0.012, backward_s=0.016, update_s=0.002, images=128,
                 images_per_s=4200.0 + 10 * (i % 7), rss_mb=210.5, save_s=0.008)
            for i in range(1, n + 1)]


def spark_records(n=12):
    """What locality_train.py --metrics writes, plus lr and an occasional test accuracy."""
    records = []
    for i in range(1, n + 1):
        record = dict(iteration=i, loss=2.3 - 0.03 * i, forward_s=1.96, backward_s=2.33,
                      update_s=0.01, broadcast_s=0.02, store_write_s=0.99, store_read_s=1.72,
                      store_bytes=450_500_000, task_forward_s=3.1, task_backward_s=3.9,
                      backward_partitions=4, im2col=["native"], backward_reads_local=4,
                      backward_reads_remote=0, backward_hosts=["127.0.0.1"],
                      recomputed_batches=0, store_read_bytes_remote=0, images=5000,
                      images_per_s=5000 / 4.5, rss_mb=320.0, save_s=0.05,
                      lr=0.01 if i <= 6 else 0.005)
        if i % 4 == 0:
            record["test_accuracy"] = 0.1 + 0.02 * i
        records.append(record)
    return records


def test_two_runs_give_every_plot(tmp_path):
    local = write_lines(tmp_path / "naive.jsonl", local_records())
    spark = write_lines(tmp_path / "locality.jsonl", spark_records())
    out = tmp_path / "plots"
    result = report(local, spark, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"wrote {out / name}" for name in ALL_PLOTS]
    assert sorted(os.listdir(out)) == sorted(ALL_PLOTS)
    for name in ALL_PLOTS:
        check_png(out / name)


def test_local_run_alone_has_no_lr_or_accuracy_plots(tmp_path):
    local = write_lines(tmp_path / "m.jsonl", local_records(5))
    out = tmp_path / "plots"
    result = report(local, "--out", out)
    assert result.returncode == 0, result.stderr
    written = ["loss_iteration.png", "loss_wall.png", "time_split.png"]
    assert result.stdout.splitlines() == [f"wrote {out / name}" for name in written]
    for name in written:
        check_png(out / name)


def test_wall_time_and_time_split():
    from spark import report as r
    records = [dict(iteration=1, loss=2.0, images=100, images_per_s=50.0, save_s=0.5,
                    forward_s=1.0, backward_s=0.8, update_s=0.1),
               dict(iteration=2, loss=1.9, images=100, images_per_s=100.0),
               dict(iteration=3, loss=1.8, images=100, images_per_s=100.0, wall_s=9.0)]
    assert r.wall_times(records) == [2.5, 3.5, 9.0]
    assert r.wall_times([dict(iteration=1, loss=1.0)]) is None
    split = r.time_split(records[:1])
    assert split == pytest.approx(dict(forward=1.0, backward=0.8, update=0.1, save=0.5,
                                       other=0.1))
    assert r.store_split(records) == {}
    assert r.labels_for(["a/m.jsonl", "b/m.jsonl", "c/n.jsonl"]) == \
        ["a/m.jsonl", "b/m.jsonl", "n.jsonl"]


@pytest.mark.parametrize("content, message", [
    ('{"iteration": 1, "loss": 2.3}\n{"iteration": 2, "loss": \n', "line 2: not JSON"),
    ("\n\n", "no iterations"),
    ("", "no iterations"),
    ('[1, 2]\n', "line 1: not a JSON object"),
    ('{"loss": 2.3}\n', "line 1: no whole-number 'iteration'"),
    ('{"iteration": 1}\n', "line 1: no 'loss'"),
    ('{"iteration": 1, "loss": "low"}\n', "line 1: 'loss' is not a number"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = tmp_path / "plots"
    result = report(bad, "--out", out)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python3 -m spark.report: error: ")
    assert f"{bad}" in lines[0] and message in lines[0], lines[0]
    assert not out.exists()


def test_missing_file_is_one_line_and_exit_1(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", local_records(3))
    result = report(good, tmp_path / "missing.jsonl", "--out", tmp_path / "plots")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"python3 -m spark.report: error: cannot read {tmp_path / 'missing.jsonl'}: "
        "No such file or directory"]


@pytest.mark.parametrize("args", [[], ["m.jsonl"], ["--out", "x"], ["m.jsonl", "--ou", "x"],
                                  ["m.jsonl", "--out", "x", "--bogus"]])
def test_bad_command_lines_exit_2(args):
    result = report(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_without_matplotlib_says_how_to_install(tmp_path):
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("No module named matplotlib")\n')
    metrics = write_lines(tmp_path / "m.jsonl", local_records(3))
    result = report(metrics, "--out", tmp_path / "plots", pythonpath=[str(blocker.parent)])
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "pip install spark-cnn[report]" in lines[0], result.stderr
    assert "pip install matplotlib" in lines[0]
