# scripts/lib/cluster_submit.sh: the settings a cluster of scripts/cluster.sh
# gives its users (`up` prints them) and `submit` (sourced by it, not run; uses
# its settings and the other scripts/lib pieces).

print_exports() {  # K
    local q redis
    redis=$(redis_addresses "$1" | paste -sd, -)
    echo "export SPARK_CNN_MASTER=spark://$MASTER_IP:$MASTER_PORT"
    echo "export SPARK_CNN_REDIS=$redis"
    printf -v q '%q' "$PASSWORD_FILE"; echo "export SPARK_CNN_REDIS_PASSWORD_FILE=$q"
    echo "export SPARK_CNN_WEBHDFS=http://$MASTER_IP:$NN_HTTP_PORT"
    echo "export SPARK_CNN_HDFS=hdfs://$MASTER_IP:$NN_RPC_PORT"
    printf -v q '%q' "$HDFS_USER"; echo "export SPARK_CNN_HDFS_USER=$q"
    printf -v q '%q' "$HDFS_ROOT"; echo "export SPARK_CNN_HDFS_ROOT=$q"
}

cmd_submit() {
    [ $# -ge 1 ] || { echo "usage: $0 submit SCRIPT [ARGS...]" >&2; exit 2; }
    local n egg var value envs=() confs=() line master=
    n=$(recorded_nodes)
    [ -n "$n" ] && ns_exists 1 && daemon_alive 1 master \
        || die "the cluster is not up (runtime $RUNTIME): run 'bash scripts/cluster.sh up' first"
    egg=$(ls -t "$PROJECT_ROOT"/dist/spark_cnn-*.egg 2>/dev/null | head -n1 || true)
    [ -n "$egg" ] || die "no egg in $PROJECT_ROOT/dist: run 'bash scripts/install.sh' first"
    resolve_tools >/dev/null
    # the cluster's settings; a SPARK_CNN_* already in the environment wins
    while read -r line; do
        line=${line#export }
        var=${line%%=*}
        eval "value=${line#*=}"
        [ -n "${!var:-}" ] && value=${!var}
        envs+=("$var=$value")
        [ "$var" != SPARK_CNN_MASTER ] || master=$value
        confs+=(--conf "spark.executorEnv.$var=$value")
    done < <(print_exports "$n")
    exec ip netns exec "$(ns_name 1)" env "${envs[@]}" \
        "SPARK_LOCAL_IP=$MASTER_IP" "SPARK_LOCAL_HOSTNAME=$MASTER_IP" \
        "PYSPARK_PYTHON=$PY_EXE" "PYSPARK_DRIVER_PYTHON=$PY_EXE" \
        "SPARK_CONF_DIR=${SPARK_CONF_DIR:-$PROJECT_ROOT/conf}" \
        "$SPARK_HOME/bin/spark-submit" --master "$master" \
        --executor-memory "$EXECUTOR_MEMORY" --py-files "$egg" "${confs[@]}" "$@"
}
