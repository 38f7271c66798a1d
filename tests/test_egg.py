"""The zipped egg shipped with ``spark-submit --py-files`` loads the native
im2col extension, both in a bare interpreter and in PySpark Python workers.

The egg is built from scratch into a temporary directory (nothing is read
from or written to dist/ or build/ of the working tree), then used from a
temporary working directory where the project folder is not importable.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def _clean_env(tmp_path, **extra):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "LANG": "C.UTF-8",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for key in ("JAVA_HOME", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import spark, spark.im2col as m
    rng = np.random.default_rng(1)
    ok = True
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 7, 5, 3)).astype(dtype)
        cols = m.im2col(x, 3, 2, 2, 1)
        ok &= cols.tobytes() == m.numpy_im2col(x, 3, 2, 2, 1).tobytes()
        y = rng.standard_normal(cols.shape).astype(dtype)
        ok &= (m.col2im(y, x.shape, 3, 2, 2, 1).tobytes()
               == m.numpy_col2im(y, x.shape, 3, 2, 2, 1).tobytes())
    print(json.dumps({"backend": m.backend(), "error": m.backend_error(),
                      "spark_file": spark.__file__,
                      "so": m.backend_info()["path"],
                      "matrix_file": sys.modules["spark.matrix"].__file__,
                      "ok": bool(ok)}))
""")


def _check_probe_output(stdout, egg, cache):
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["backend"] == "native", res["error"]
    assert res["error"] is None
    assert res["spark_file"].startswith(egg + os.sep), res["spark_file"]
    assert res["so"].startswith(str(cache) + os.sep), res["so"]
    assert res["matrix_file"] == res["so"]
    assert res["ok"]
    return res


def test_egg_loads_native_extension_in_isolation(egg, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    probe = work / "probe.py"
    probe.write_text(PROBE)
    env = _clean_env(tmp_path)
    cache = tmp_path / "cache" / "spark-cnn" / "native"

    # Several processes at once, all extracting into an empty cache.
    procs = [subprocess.Popen([sys.executable, "-I", str(probe), egg],
                              cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(_check_probe_output(out, egg, cache))
    assert len({r["so"] for r in results}) == 1
    sofile = results[0]["so"]
    # <cache>/<sha256>/matrix.*.so, no temp files left behind
    assert len(os.path.basename(os.path.dirname(sofile))) == 64
    assert os.listdir(os.path.dirname(sofile)) == [os.path.basename(sofile)]

    # The project folder itself must not be what got imported.
    proc = subprocess.run([sys.executable, "-I", "-c",
                           "import spark"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'spark'" in proc.stderr

    # A second start reuses the cached file.
    proc = subprocess.run([sys.executable, "-I", str(probe), egg], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _check_probe_output(proc.stdout, egg, cache)["so"] == sofile


SPARK_JOB = textwrap.dedent("""
    import json
    from pyspark import SparkContext

    def probe(i):
        import os
        import numpy as np
        import spark, spark.im2col as m
        x = np.random.default_rng(i).standard_normal((2, 5, 6, 3))
        x = x.astype(np.float32)
        ok = (m.im2col(x, 3, 2, 1, 1).tobytes()
              == m.numpy_im2col(x, 3, 2, 1, 1).tobytes())
        return {"backend": m.backend(), "error": m.backend_error(),
                "file": spark.__file__, "so": m.backend_info()["path"],
                "ok": bool(ok), "pid": os.getpid()}

    sc = SparkContext(appName="spark-cnn-egg-test")
    sc.setLogLevel("ERROR")
    try:
        res = sc.parallelize(range(4), 4).map(probe).collect()
    finally:
        sc.stop()
    print("RESULT " + json.dumps(res))
""")


def _spark_submit():
    try:
        import pyspark
    except ImportError:
        pytest.fail("pyspark is not installed: run scripts/install.sh")
    path = os.path.join(os.path.dirname(pyspark.__file__), "bin",
                        "spark-submit")
    if not os.path.exists(path):
        pytest.fail("spark-submit not found in the pyspark package")
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.fail("java is not installed (Spark needs Java 17)")
    return path


def test_egg_loads_native_extension_in_pyspark_workers(egg, tmp_path):
    submit = _spark_submit()
    work = tmp_path / "cwd"
    work.mkdir()
    job = work / "job.py"
    job.write_text(SPARK_JOB)
    env = _clean_env(tmp_path, PYSPARK_PYTHON=sys.executable,
                     PYSPARK_DRIVER_PYTHON=sys.executable,
                     SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run(
        [submit, "--master", "local[2]", "--py-files", egg,
         "--conf", "spark.ui.enabled=false", str(job)],
        cwd=work, env=env, capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert len(res) == 4
    for r in res:
        assert r["backend"] == "native", r["error"]
        assert r["file"].endswith(os.path.join(
            os.path.basename(egg), "spark", "__init__.py")), r["file"]
        assert r["so"].startswith(str(tmp_path / "cache") + os.sep), r["so"]
        assert r["ok"]
