#!/usr/bin/env bash
# The test command: installs and builds (scripts/install.sh), starts the local
# Redis and HDFS (scripts/services.sh), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
eval "$(bash scripts/services.sh start)"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}   # Spark on loopback only
exec "${PYTHON:-python3}" -m pytest "$@"
