#!/usr/bin/env bash
# Installs what spark-cnn needs and builds it: Python packages, the native
# im2col core (in place) and the egg that spark-submit ships (dist/*.egg).
# Redis and HDFS are installed and started by scripts/services.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

command -v java >/dev/null || { echo "install.sh: Java 17 is needed for Spark and HDFS (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
echo "install.sh: installing Python packages" >&2
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt >&2
echo "install.sh: building the native im2col core" >&2
"$PYTHON" spark/setup.py -q build_ext --inplace >&2
"$PYTHON" -c "import spark.im2col as m; assert m.backend() == 'native', m.backend_error()" >&2
echo "install.sh: building the egg" >&2
rm -rf dist/spark_cnn-*.egg
"$PYTHON" setup.py -q bdist_egg >/dev/null 2>&1 || "$PYTHON" setup.py bdist_egg >&2
ls dist/spark_cnn-*.egg >&2
