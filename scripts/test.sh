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
# Spark's scratch folders (blockmgr-*, spark-*) in one folder removed at the end:
# the drivers that the fault tests kill with SIGKILL cannot remove their own.
local_dirs=$(mktemp -d "${TMPDIR:-/tmp}/spark-cnn-tests.XXXXXX")
export SPARK_LOCAL_DIRS=$local_dirs
cleanup='rm -rf "$local_dirs"'
if ! bash scripts/services.sh status >/dev/null 2>&1; then
    cleanup="bash scripts/services.sh stop >/dev/null 2>&1 || true; $cleanup"
fi
trap "$cleanup" EXIT
eval "$(bash scripts/services.sh start)"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}   # Spark on loopback only
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$PWD/conf}    # conf/log4j2.properties
"${PYTHON:-python3}" -m pytest "$@"
