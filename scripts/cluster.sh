#!/usr/bin/env bash
# scripts/cluster.sh up [K] | submit SCRIPT [ARGS...] | kill-node K | status | down
#
# A simulated multi-node Spark standalone cluster on this machine (root only):
# K nodes (default 3), each a Linux network namespace with its own address on
# a private bridge, so that "local" really means one node:
#
#   bridge scnbr0 10.231.0.254/24 in the root namespace
#   node K = namespace scn-nodeK, eth0 10.231.0.K/24 (veth scnvK on the bridge),
#            lo up, default route via the bridge; inside a node, 127.0.0.1 is
#            that node alone
#   node 1:  Spark master spark://10.231.0.1:7077 (web UI :8080), HDFS NameNode
#            hdfs://10.231.0.1:9000 (HTTP/WebHDFS :9870)
#   every node: a Spark worker (1 core, 1g), an HDFS DataNode (replication 1,
#            registered by the node's IP, so blocks are named by node IP and a
#            WebHDFS write from node K lands on node K), and a redis-server on
#            10.231.0.K:6379 and 127.0.0.1:6379 with a password
#
#   eval "$(bash scripts/cluster.sh up)"          # start (idempotent; heals dead daemons)
#   bash scripts/cluster.sh submit job.py ARGS    # spark-submit inside node 1
#   bash scripts/cluster.sh kill-node 2           # node 2 dies (its DataNode stays)
#   bash scripts/cluster.sh status                # exit status 1 if anything is down
#   bash scripts/cluster.sh down                  # stop everything, remove the network
#
# up [K]     Creates what is missing (bridge, namespaces, daemons), waits until
#            all K workers are ALIVE at http://10.231.0.1:8080/json, all K
#            DataNodes are live, a WebHDFS write works (and a WebHDFS CREATE
#            made inside node k is sent to node k's own DataNode), and every
#            Redis answers with the password; then prints ONLY `export` lines
#            on stdout (progress on stderr). A cluster that is up prints them
#            at once; dead daemons (e.g. after kill-node) are restarted.
#            Without K, the size of the cluster that is up (else 3).
# submit SCRIPT [ARGS...]
#            spark-submit --master spark://10.231.0.1:7077 --py-files
#            dist/spark_cnn-*.egg (built by scripts/install.sh) SCRIPT ARGS,
#            run inside node 1 in the caller's working directory, with the
#            exports of `up` in the environment (and in the executors', as
#            spark.executorEnv.*) plus PYSPARK_PYTHON = PYSPARK_DRIVER_PYTHON =
#            the python3 in use and SPARK_LOCAL_IP = SPARK_LOCAL_HOSTNAME =
#            10.231.0.1. A SPARK_CNN_* variable set in the caller's environment
#            wins over the cluster's value. Exit status, stdout and stderr are
#            spark-submit's.
# kill-node K
#            What a dying machine does: SIGKILL node K's Spark worker, its
#            executors and their Python workers, and its Redis server. Node K's
#            DataNode is LEFT RUNNING: with replication 1 a dead DataNode would
#            take the only copy of its blocks. (On node 1 the master and the
#            NameNode are left running too.) `up` brings the node back.
# status     One line per node and daemon, up or DOWN; exit status 1 if
#            anything is down or the cluster is not up.
# down       Stops everything (daemons by pid, then whatever is left in the
#            namespaces), removes the namespaces and the bridge. Works after
#            kill-node, after a failed or partial `up`, and when nothing is up.
#            Data (HDFS, the Redis password) stays in the runtime folder.
#
# Environment (defaults in brackets):
#   SPARK_CNN_CLUSTER_RUNTIME   config, data, pidfiles, logs, password [<project>/.runtime/cluster]
#   SPARK_CNN_CLUSTER_NET       N in 10.231.N.0/24; N>0 names things scnN-nodeK,
#                               scnNbr0, for a second cluster beside the first  [0]
#   SPARK_CNN_HDFS_USER         HDFS user owning SPARK_CNN_HDFS_ROOT          [$USER, else `id -un`]
#   SPARK_CNN_HDFS_ROOT         HDFS working folder                           [/spark-cnn]
#   SPARK_CNN_CLUSTER_DAEMON_MEMORY   heap of the Spark master and workers    [256m]
#   SPARK_CNN_CLUSTER_HDFS_HEAP       heap of the NameNode and DataNodes      [320m]
#   SPARK_CNN_CLUSTER_WORKER_MEMORY   memory a worker offers to executors     [1g]
#   SPARK_CNN_CLUSTER_EXECUTOR_MEMORY executor heap for `submit`              [512m]
#   SPARK_CNN_CLUSTER_START_TIMEOUT   seconds `up` waits for readiness        [300]
#   PYTHON                      the Python of the driver and executors        [python3]
#
# Exports printed by `up`:
#   SPARK_CNN_MASTER               spark://10.231.0.1:7077
#   SPARK_CNN_REDIS                10.231.0.1:6379,10.231.0.2:6379,... (every node)
#   SPARK_CNN_REDIS_PASSWORD_FILE  <runtime>/redis-password (mode 0600; made at the first `up`)
#   SPARK_CNN_WEBHDFS              http://10.231.0.1:9870
#   SPARK_CNN_HDFS                 hdfs://10.231.0.1:9000
#   SPARK_CNN_HDFS_USER, SPARK_CNN_HDFS_ROOT
#
# HDFS checks permissions; root (who starts the NameNode) is the HDFS
# superuser. One cluster per SPARK_CNN_CLUSTER_NET on a machine: the bridge
# carries the runtime folder that owns it as its alias.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

log() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

# shellcheck source=lib/common.sh
. "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=lib/hadoop.sh
. "$SCRIPT_DIR/lib/hadoop.sh"

NET=${SPARK_CNN_CLUSTER_NET:-0}
[[ $NET =~ ^[0-9]{1,3}$ ]] && (( 10#$NET <= 253 )) \
    || die "SPARK_CNN_CLUSTER_NET='$NET' is not a number from 0 to 253"
NET=$((10#$NET))
if (( NET == 0 )); then PREFIX=scn; else PREFIX=scn$NET; fi
SUBNET=10.231.$NET
BRIDGE=${PREFIX}br0
BRIDGE_IP=$SUBNET.254
MASTER_IP=$SUBNET.1
MAX_NODES=20

MASTER_PORT=7077
MASTER_UI_PORT=8080
WORKER_PORT=7078
WORKER_UI_PORT=8081
NN_RPC_PORT=9000
NN_HTTP_PORT=9870
DN_PORT=9866
DN_HTTP_PORT=9864
DN_IPC_PORT=9867
REDIS_PORT=6379

HDFS_USER=${SPARK_CNN_HDFS_USER:-${USER:-}}
[ -n "$HDFS_USER" ] || HDFS_USER=$(id -un)
HDFS_ROOT=${SPARK_CNN_HDFS_ROOT:-/spark-cnn}
HDFS_SUPERUSER=$(id -un)   # whoever starts the NameNode
DAEMON_MEMORY=${SPARK_CNN_CLUSTER_DAEMON_MEMORY:-256m}
HDFS_HEAP=${SPARK_CNN_CLUSTER_HDFS_HEAP:-320m}
WORKER_MEMORY=${SPARK_CNN_CLUSTER_WORKER_MEMORY:-1g}
EXECUTOR_MEMORY=${SPARK_CNN_CLUSTER_EXECUTOR_MEMORY:-512m}
START_TIMEOUT=${SPARK_CNN_CLUSTER_START_TIMEOUT:-300}
[[ $START_TIMEOUT =~ ^[0-9]+$ ]] || die "SPARK_CNN_CLUSTER_START_TIMEOUT='$START_TIMEOUT' is not a number of seconds"
# small daemons, two cores: one GC thread, no C2 compiler warming up
DAEMON_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true"

RUNTIME=${SPARK_CNN_CLUSTER_RUNTIME:-$PROJECT_ROOT/.runtime/cluster}
mkdir -p "$RUNTIME"
RUNTIME=$(cd "$RUNTIME" && pwd)
STATE=$RUNTIME/nodes                 # K of the cluster that is (being) brought up
PASSWORD_FILE=$RUNTIME/redis-password
NN_DIR=$RUNTIME/namenode

# The pieces, by concern; each defines functions only (and a constant or two
# from the settings above).
# shellcheck source=lib/cluster_netns.sh
. "$SCRIPT_DIR/lib/cluster_netns.sh"
# shellcheck source=lib/cluster_daemons.sh
. "$SCRIPT_DIR/lib/cluster_daemons.sh"
# shellcheck source=lib/cluster_status.sh
. "$SCRIPT_DIR/lib/cluster_status.sh"
# shellcheck source=lib/cluster_submit.sh
. "$SCRIPT_DIR/lib/cluster_submit.sh"

recorded_nodes() { tr -dc '0-9' 2>/dev/null <"$STATE" || true; }

# the nodes that may have something: recorded, plus any namespace of our prefix
known_nodes() {
    local k n
    n=$(recorded_nodes)
    {
        [ -z "$n" ] || seq 1 "$n"
        for k in /run/netns/"$PREFIX"-node*; do
            [ -e "$k" ] || continue
            k=${k##*/"$PREFIX"-node}
            [[ $k =~ ^[0-9]+$ ]] && echo "$k"
        done
    } | sort -n -u
}

need_root() {
    [ "$(id -u)" = 0 ] || die "the cluster needs root (network namespaces, a bridge): run as root"
}

# ---------------------------------------------------------------- commands

check_node_count() {  # K
    [[ $1 =~ ^[0-9]+$ ]] && (( 10#$1 >= 1 && 10#$1 <= MAX_NODES )) \
        || die "the node count must be a number from 1 to $MAX_NODES, not '$1'"
}

cmd_up() {
    local n=${1:-} recorded k name started=0
    [ $# -le 1 ] || { echo "usage: $0 up [K]" >&2; exit 2; }
    need_root
    recorded=$(recorded_nodes)
    if [ -z "$n" ]; then n=${recorded:-3}; fi
    check_node_count "$n"
    n=$((10#$n))
    if [ -n "$recorded" ] && [ "$recorded" != "$n" ] && [ -e "/sys/class/net/$BRIDGE" ]; then
        die "a cluster of $recorded nodes is up (runtime $RUNTIME): run '$0 down' first for $n nodes"
    fi
    check_bridge_owner
    exec 3>&1 1>&2   # stdout carries only the export lines
    resolve_tools
    if [ -n "$recorded" ] && all_alive "$n" && cluster_ready quiet "$n" 2>/dev/null; then
        log "cluster of $n nodes already up"
        print_exports "$n" >&3
        return 0
    fi
    command -v java >/dev/null 2>&1 || die "java not found: install a JDK >= 17"
    check_java
    fetch_jars
    new_password "$PASSWORD_FILE"
    check_password_file "$PASSWORD_FILE"
    echo "$n" >"$STATE"
    net_up "$n"
    for ((k = 1; k <= n; k++)); do
        mkdir -p "$(node_dir "$k")/log"
        ns_inode "$k" >"$(node_dir "$k")/netns-inode"
    done
    for ((k = 1; k <= n; k++)); do
        for name in $(daemons_of "$k"); do
            daemon_alive "$k" "$name" && continue
            start_daemon "$k" "$name"
            started=$((started + 1))
        done
    done
    (( started )) || log "all daemons running"
    log "waiting (up to ${START_TIMEOUT}s) for $n workers, $n DataNodes, WebHDFS and Redis"
    local start=$SECONDS
    while :; do
        for ((k = 1; k <= n; k++)); do
            for name in $(daemons_of "$k"); do
                if ! daemon_alive "$k" "$name"; then
                    tail_log "$(logfile "$k" "$name")"
                    die "$name on node $k exited during startup (log: $(logfile "$k" "$name")); '$0 down' cleans up"
                fi
            done
        done
        cluster_ready quiet "$n" 2>/dev/null && break
        if (( SECONDS - start >= START_TIMEOUT )); then
            cluster_ready verbose "$n" || true
            die "cluster not ready after ${START_TIMEOUT}s (logs: $RUNTIME/node*/*.log); '$0 down' cleans up"
        fi
        sleep 1
    done
    log "cluster of $n nodes up in $((SECONDS - start))s"
    print_exports "$n" >&3
}

cmd_down() {
    local nodes k name pid pids=() p i left
    nodes=$(known_nodes)
    if [ -z "$nodes" ] && [ ! -e "/sys/class/net/$BRIDGE" ]; then
        log "nothing is up"
        rm -f "$STATE"
        return 0
    fi
    need_root
    check_bridge_owner
    # 1. every daemon by its pid: SIGTERM, a few seconds to finish
    for k in $nodes; do
        for name in worker master datanode namenode redis; do
            if pid=$(tagged_pid "$k" "$name"); then
                pids+=("$pid")
                log "node$k: stopping $name (pid $pid)"
            fi
            rm -f "$(pidfile "$k" "$name")"
        done
    done
    if (( ${#pids[@]} )); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 80; i++)); do
            left=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
            (( left )) || break
            sleep 0.1
        done
    fi
    # 2. anything left in the namespaces (executors, Python workers, drivers,
    #    daemons that ignored SIGTERM): SIGKILL until none is left
    for ((i = 0; i < 50; i++)); do
        pids=()
        for k in $nodes; do
            for p in $(pids_in_node "$k"); do
                [ -n "$(tr -d '\0' <"/proc/$p/cmdline" 2>/dev/null)" ] && pids+=("$p")
            done
        done
        (( ${#pids[@]} )) || break
        (( i > 0 )) || log "killing ${#pids[@]} processes left in the namespaces"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.1
    done
    (( ${#pids[@]} == 0 )) || die "processes still alive in the cluster's namespaces: ${pids[*]}"
    # 3. the network
    for k in $nodes; do
        if ns_exists "$k"; then
            log "network: removing namespace $(ns_name "$k")"
            ip netns del "$(ns_name "$k")" || die "could not remove namespace $(ns_name "$k")"
        fi
        [ ! -e "/sys/class/net/$(veth_name "$k")" ] || ip link del "$(veth_name "$k")" 2>/dev/null || true
        if grep -qs "spark-cnn scripts/cluster.sh" "/etc/netns/$(ns_name "$k")/resolv.conf"; then
            rm -f "/etc/netns/$(ns_name "$k")/resolv.conf"
            rmdir "/etc/netns/$(ns_name "$k")" /etc/netns 2>/dev/null || true
        fi
        rm -f "$(node_dir "$k")/netns-inode"
    done
    if [ -e "/sys/class/net/$BRIDGE" ]; then
        log "network: removing bridge $BRIDGE"
        ip link del "$BRIDGE" || die "could not remove bridge $BRIDGE"
    fi
    rm -f "$STATE"
    log "down"
}

# one up/down at a time per cluster
lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$RUNTIME/.cluster.lock"
    flock -w 900 9 || die "another cluster.sh holds $RUNTIME/.cluster.lock"
}

usage() {
    echo "usage: $0 up [K] | submit SCRIPT [ARGS...] | kill-node K | status | down" >&2
    exit 2
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case "$cmd" in
    up) lock; cmd_up "$@" ;;
    submit) cmd_submit "$@" ;;
    kill-node) cmd_kill_node "$@" ;;
    status) [ $# -eq 0 ] || usage; cmd_status ;;
    down) [ $# -eq 0 ] || usage; lock; cmd_down ;;
    *) usage ;;
esac
