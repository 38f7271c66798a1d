"""pip builds and installs the project (pyproject.toml) with its native core."""
import glob
import os
import subprocess
import sys
import zipfile

import pytest
from project import ROOT

pytestmark = pytest.mark.packaging


def test_pip_wheel_installs_with_the_native_core(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), ROOT],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheels = glob.glob(str(tmp_path / "wheels" / "spark_cnn-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("spark/matrix") and n.endswith(".so") for n in names)
    assert "spark/cnn.py" in names and not any(n.endswith(".pyx") for n in names)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp_path / "site"),
         wheels[0]], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c",
         "import spark, spark.im2col as m; print(spark.__file__); print(m.backend())"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert probe.returncode == 0, probe.stderr
    location, backend = probe.stdout.split()
    assert location.startswith(str(tmp_path / "site")) and backend == "native"
