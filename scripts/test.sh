#!/usr/bin/env bash
# The test command: installs and builds (scripts/install.sh), starts the local
# Redis and HDFS (scripts/services.sh), then runs pytest. Extra arguments go to
# pytest (e.g. -m quick, -m packaging, -m services, -m cluster for one tier;
# without -m, all four). Services this script started are stopped at the end;
# ones already running are left running.
# The cluster tier brings scripts/cluster.sh up and down itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
if ! bash scripts/services.sh status >/dev/null 2>&1; then
    trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
fi
eval "$(bash scripts/services.sh start)"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}   # Spark on loopback only
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$PWD/conf}    # conf/log4j2.properties
"${PYTHON:-python3}" -m pytest "$@"
