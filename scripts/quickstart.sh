#!/usr/bin/env bash
# The main job on a fresh machine: install and build (scripts/install.sh),
# start a local Redis and HDFS (scripts/services.sh), find or make data, train
# the Redis-exchange CNN with spark-submit on a local master, then evaluate it.
#
#   bash scripts/quickstart.sh [num images] [num iterations] [num batches]
#
# Data: $SPARK_CNN_DATA_DIR if set, else data/cifar-10-batches-py if present,
# else a synthetic CIFAR-10-shaped set is generated in data/synthetic-cifar-10.
# Master: $SPARK_CNN_MASTER (default local[2]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
IMAGES=${1:-5000}
ITERATIONS=${2:-30}
BATCHES=${3:-4}
MINIBATCH=${SPARK_CNN_MINIBATCH:-500}
MASTER=${SPARK_CNN_MASTER:-local[2]}

bash scripts/install.sh
eval "$(bash scripts/services.sh start)"

if [ -z "${SPARK_CNN_DATA_DIR:-}" ]; then
    if [ -d data/cifar-10-batches-py ]; then
        export SPARK_CNN_DATA_DIR=data/cifar-10-batches-py
    else
        export SPARK_CNN_DATA_DIR=data/synthetic-cifar-10
        [ -f "$SPARK_CNN_DATA_DIR/batches.meta" ] ||
            "$PYTHON" -m spark.data.synthetic "$SPARK_CNN_DATA_DIR" --train 10000 --test 2000
    fi
fi

SUBMIT=$("$PYTHON" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')
EGG=$(ls dist/spark_cnn-*.egg | tail -n 1)
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$(command -v "$PYTHON")}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}
case "$MASTER" in local*) export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1} ;; esac   # loopback only
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$PWD/conf}    # Spark quiet but for our lines (conf/log4j2.properties)

echo "quickstart: training on $IMAGES images of $SPARK_CNN_DATA_DIR, $ITERATIONS iterations of $MINIBATCH images, $BATCHES batches, master $MASTER" >&2
"$SUBMIT" --master "$MASTER" --py-files "$EGG" \
    locality_train.py "$IMAGES" "$ITERATIONS" "$BATCHES" --minibatch "$MINIBATCH"
"$SUBMIT" --master "$MASTER" --py-files "$EGG" \
    locality_test.py 1000 "$ITERATIONS" "$BATCHES"
