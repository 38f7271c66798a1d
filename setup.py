"""Build script for spark-cnn (package ``spark`` + native ``spark.matrix``).

    python3 setup.py build_ext --inplace   # spark/matrix.*.so for local use
    python3 setup.py bdist_egg             # dist/spark_cnn-<ver>-py3.11-linux-x86_64.egg
    pip install .                          # PEP 517 build via pyproject.toml

The egg is a normal zipped egg (what ``spark-submit --py-files`` ships);
spark/native.py knows how to load the extension out of the zip.  Metadata
lives in pyproject.toml (the version, declared dynamic there, is read from
spark/__init__.py here); it is repeated below only for setuptools < 61, which
ignores the [project] table.
"""

import os
import re

import numpy as np
import setuptools
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)  # all paths below are relative to the project root


def read_version():
    with open(os.path.join("spark", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']',
                          f.read(), re.M)
    if not match:
        raise RuntimeError("__version__ not found in spark/__init__.py")
    return match.group(1)


class BuildPy(build_py):
    """Leave spark/setup.py (the in-place build helper) out of the package."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (m[0] == "spark" and m[1] == "setup")]


extensions = [
    Extension(
        "spark.matrix",
        sources=["spark/matrix.pyx", "spark/matrix_c.c"],
        depends=["spark/matrix_c.h"],
        include_dirs=[np.get_include(), "spark"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # Portable code only (no -march=native): the egg runs on other hosts.
        # -g0: no debug info, keeps the shipped .so (and egg) small.
        extra_compile_args=["-O3", "-g0"],
    )
]

metadata = {"version": read_version()}
_major, _minor = (int(v) for v in setuptools.__version__.split(".")[:2])
if (_major, _minor) < (61, 0) or not os.path.exists("pyproject.toml"):
    metadata.update(
        name="spark-cnn",
        python_requires=">=3.9",
        install_requires=["numpy", "psutil", "threadpoolctl", "pillow", "pyarrow"],
        extras_require={"spark": ["pyspark", "hdfs", "redis", "hiredis", "pyzmq", "pandas"],
                        "report": ["matplotlib"], "onnx": ["onnx", "onnxruntime"]},
    )

setup(
    packages=["spark", "spark.data", "spark.storage"],
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
    cmdclass={"build_py": BuildPy},
    # Sources are not needed at run time (setuptools >= 61 would otherwise
    # copy the extension sources listed in SOURCES.txt as package data).
    exclude_package_data={"spark": ["*.c", "*.h", "*.pyx"]},
    zip_safe=True,
    **metadata,
)
