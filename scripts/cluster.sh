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

ns_name() { echo "$PREFIX-node$1"; }
veth_name() { echo "${PREFIX}v$1"; }
node_ip() { echo "$SUBNET.$1"; }
node_dir() { echo "$RUNTIME/node$1"; }
pidfile() { echo "$RUNTIME/node$1/$2.pid"; }
logfile() { echo "$RUNTIME/node$1/$2.log"; }
# tag NODE NAME: names a daemon; spawn puts SPARK_CNN_CLUSTER_DAEMON=<tag> in
# its environment (there from the first exec on, unlike the final command line
# of spark-class) and the JVMs also get it as -Dspark-cnn.cluster=<tag>
tag() { echo "$PREFIX-node$1-$2"; }
daemons_of() {  # node -> its daemons, in start order
    if (( $1 == 1 )); then echo "redis namenode master datanode worker"; else echo "redis datanode worker"; fi
}

ns_exists() { [ -e "/run/netns/$(ns_name "$1")" ]; }
ns_inode() { stat -L -c %i "/run/netns/$(ns_name "$1")" 2>/dev/null; }

# in_ns PID NODE: 0 if PID lives in node NODE's network namespace
in_ns() {
    local ino
    ino=$(ns_inode "$2") || return 1
    [ "$(readlink "/proc/$1/ns/net" 2>/dev/null)" = "net:[$ino]" ]
}

# is_tagged PID NODE NAME: 0 if PID is that daemon. Redis, once started,
# writes its title over its environment: it is known by that title (address
# and port) or by its config file on the command line.
is_tagged() {
    grep -qzx "SPARK_CNN_CLUSTER_DAEMON=$(tag "$2" "$3")" "/proc/$1/environ" 2>/dev/null && return 0
    [ "$3" = redis ] || return 1
    local title
    title=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $title == "redis-server $(node_ip "$2"):$REDIS_PORT "* \
        || $title == "redis-server $(node_dir "$2")/redis/redis.conf "* ]] && return 0
    [[ $title == "redis-server "* ]] && in_ns "$1" "$2"     # another title template
}

# tagged_pid NODE NAME: prints the daemon's pid if its pidfile names a live
# process that is that daemon; removes a stale pidfile
tagged_pid() {
    local pf pid
    pf=$(pidfile "$1" "$2")
    [ -f "$pf" ] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null <"$pf" || true)
    if [ -n "$pid" ] && is_tagged "$pid" "$1" "$2"; then
        echo "$pid"
        return 0
    fi
    rm -f "$pf"
    return 1
}

# daemon_alive NODE NAME: 0 if the daemon runs, inside its node
daemon_alive() {
    local pid
    pid=$(tagged_pid "$1" "$2") && in_ns "$pid" "$1"
}

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

port_open() {  # host port -> 0 if something accepts connections there
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------- tools

PY_EXE=
resolve_tools() {
    ensure_command ip iproute2
    ensure_command ps procps
    ensure_command redis-server redis-server
    command -v setsid >/dev/null 2>&1 || die "setsid not found (package util-linux)"
    command -v "${PYTHON:-python3}" >/dev/null 2>&1 || die "${PYTHON:-python3} not found"
    PY_EXE=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)') \
        || die "${PYTHON:-python3} does not run"
    # the probes below run python3: take the real interpreter, not a shim
    PATH=$(dirname "$PY_EXE"):$PATH
    SPARK_HOME=$("$PY_EXE" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null) \
        || die "pyspark is not installed for $PY_EXE: run 'bash scripts/install.sh'"
    [ -x "$SPARK_HOME/bin/spark-class" ] || die "$SPARK_HOME/bin/spark-class is missing"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "the cluster needs root (network namespaces, a bridge): run as root"
}

# ---------------------------------------------------------------- network

bridge_owner() { cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true; }
OWNER_TAG="spark-cnn cluster $RUNTIME"

check_bridge_owner() {
    [ -e "/sys/class/net/$BRIDGE" ] || return 0
    local owner
    owner=$(bridge_owner)
    [ -z "$owner" ] || [ "$owner" = "$OWNER_TAG" ] \
        || die "bridge $BRIDGE belongs to another cluster (${owner#spark-cnn cluster }): use SPARK_CNN_CLUSTER_RUNTIME=${owner#spark-cnn cluster } or another SPARK_CNN_CLUSTER_NET"
}

net_up() {  # K
    local n=$1 k ns veth ip addrs
    check_bridge_owner
    if [ ! -e "/sys/class/net/$BRIDGE" ]; then
        log "network: bridge $BRIDGE $BRIDGE_IP/24"
        ip link add "$BRIDGE" type bridge
    fi
    ip link set "$BRIDGE" alias "$OWNER_TAG"
    # (the listing in a variable first: `ip | grep -q` fails under pipefail
    # when grep stops reading early)
    addrs=$(ip -o addr show dev "$BRIDGE")
    [[ $addrs == *" $BRIDGE_IP/24 "* ]] || ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((k = 1; k <= n; k++)); do
        ns=$(ns_name "$k"); veth=$(veth_name "$k"); ip=$(node_ip "$k")
        ns_exists "$k" || { log "network: namespace $ns $ip"; ip netns add "$ns"; }
        # No DNS server is reachable from a node: a lookup there (Java asks for
        # the name of every peer address) would wait 10 s for a timeout. `ip
        # netns exec` shows /etc/netns/NS/resolv.conf as the node's
        # /etc/resolv.conf: a local, absent server fails at once.
        mkdir -p "/etc/netns/$ns" || die "cannot create /etc/netns/$ns"
        printf '%s\n' "# generated by spark-cnn scripts/cluster.sh: no DNS inside the simulated nodes" \
            "nameserver 127.0.0.1" "options timeout:1 attempts:1" >"/etc/netns/$ns/resolv.conf"
        if [ ! -e "/sys/class/net/$veth" ]; then
            ip -n "$ns" link del eth0 2>/dev/null || true
            ip link add "$veth" type veth peer name eth0 netns "$ns"
        fi
        ip link set "$veth" master "$BRIDGE" up
        addrs=$(ip -n "$ns" -o addr show dev eth0)
        [[ $addrs == *" $ip/24 "* ]] || ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" route replace default via "$BRIDGE_IP"
    done
}

# ---------------------------------------------------------------- daemons

# The daemons' environment: these variables of ours and nothing else of the
# caller's (no SPARK_CONF_DIR, PYTHONPATH, SPARK_CNN_* ... of whoever ran `up`).
daemon_base_env() {
    local v
    for v in PATH HOME USER LOGNAME LANG LC_ALL TZ TMPDIR JAVA_HOME XDG_CACHE_HOME; do
        [ -z "${!v:-}" ] || printf '%s\0' "$v=${!v}"
    done
}

# spawn NODE NAME CMD... : CMD detached (own session, stdin /dev/null, output
# appended to the daemon's log, the environment of daemon_base_env) inside
# node NODE; the pidfile gets CMD's pid (bash writes its own pid, then execs).
spawn() {
    local k=$1 name=$2 pf lf i base
    shift 2
    pf=$(pidfile "$k" "$name"); lf=$(logfile "$k" "$name")
    mapfile -d '' base < <(daemon_base_env)
    rm -f "$pf"
    echo "==== $(date '+%F %T') cluster.sh starts $name" >>"$lf"
    setsid ip netns exec "$(ns_name "$k")" \
        env -i "${base[@]}" "SPARK_CNN_CLUSTER_DAEMON=$(tag "$k" "$name")" \
        bash -c "echo \$\$ >\"\$1\"; shift; $CLOSE_FDS"' exec "$@"' _ "$pf" "$@" \
        </dev/null >>"$lf" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [ -s "$pf" ] && return 0
        sleep 0.1
    done
    tail_log "$lf"
    die "could not launch $name on node $k (log: $lf)"
}

start_redis() {  # node
    local k=$1 d ip
    d=$(node_dir "$k")/redis; ip=$(node_ip "$k")
    mkdir -p "$d"
    rm -f "$d/redis.conf"
    # 0600: holds the password
    (umask 077; cat >"$d/redis.conf") <<EOF
# generated by scripts/cluster.sh; edits are overwritten on up
bind $ip 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
logfile ""
dir $d
save ""
appendonly no
databases 1
EOF
    redis_conf_password "$PASSWORD_FILE" >>"$d/redis.conf"
    log "node$k: redis on $ip:$REDIS_PORT and 127.0.0.1:$REDIS_PORT"
    spawn "$k" redis redis-server "$d/redis.conf"
}

spark_env() {  # node -> env assignments for a Spark daemon of that node
    local k=$1 ip
    ip=$(node_ip "$k")
    printf '%s\0' "SPARK_HOME=$SPARK_HOME" "SPARK_LOCAL_IP=$ip" "SPARK_LOCAL_HOSTNAME=$ip" \
        "SPARK_DAEMON_MEMORY=$DAEMON_MEMORY" "PYSPARK_PYTHON=$PY_EXE" \
        "SPARK_LOG_DIR=$(node_dir "$k")/log" "SPARK_PID_DIR=$(node_dir "$k")"
}

start_master() {
    local env
    mapfile -d '' env < <(spark_env 1)
    mkdir -p "$(node_dir 1)/master"
    log "node1: Spark master spark://$MASTER_IP:$MASTER_PORT (web UI :$MASTER_UI_PORT)"
    ( cd "$(node_dir 1)/master" && spawn 1 master env "${env[@]}" \
        "SPARK_DAEMON_JAVA_OPTS=$DAEMON_JVM_OPTS -Dspark-cnn.cluster=$(tag 1 master)" \
        "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
        --host "$MASTER_IP" --port "$MASTER_PORT" --webui-port "$MASTER_UI_PORT" )
}

start_worker() {  # node
    local k=$1 d env
    d=$(node_dir "$k")/worker
    mkdir -p "$d/work" "$d/local"
    mapfile -d '' env < <(spark_env "$k")
    log "node$k: Spark worker $(node_ip "$k") (1 core, $WORKER_MEMORY)"
    ( cd "$d" && spawn "$k" worker env "${env[@]}" \
        "SPARK_DAEMON_JAVA_OPTS=$DAEMON_JVM_OPTS -Dspark-cnn.cluster=$(tag "$k" worker)" \
        "SPARK_WORKER_DIR=$d/work" "SPARK_LOCAL_DIRS=$d/local" \
        "SPARK_WORKER_OPTS=-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=3600" \
        "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
        "spark://$MASTER_IP:$MASTER_PORT" --host "$(node_ip "$k")" --port "$WORKER_PORT" \
        --webui-port "$WORKER_UI_PORT" --cores 1 --memory "$WORKER_MEMORY" --work-dir "$d/work" )
}

# hdfs_cmd CONFDIR LOGDIR -> the java command (NUL-separated) of an HDFS daemon
hdfs_cmd() {
    hdfs_java_command "$HDFS_HEAP" "$1" "$2"
    # shellcheck disable=SC2086
    printf '%s\0' $DAEMON_JVM_OPTS
}

write_namenode_conf() {
    mkdir -p "$NN_DIR/name"
    hdfs_write_conf "$NN_DIR/conf" "hdfs://$MASTER_IP:$NN_RPC_PORT" "$HDFS_USER" "$NN_DIR/tmp" \
        "dfs.namenode.name.dir=file://$NN_DIR/name" \
        "dfs.namenode.rpc-address=$MASTER_IP:$NN_RPC_PORT" \
        "dfs.namenode.http-address=$MASTER_IP:$NN_HTTP_PORT" \
        "dfs.namenode.https-address=$MASTER_IP:0" \
        "dfs.namenode.secondary.http-address=$MASTER_IP:0" \
        "dfs.namenode.secondary.https-address=$MASTER_IP:0" \
        "dfs.namenode.backup.address=$MASTER_IP:0" \
        "dfs.namenode.backup.http-address=$MASTER_IP:0" \
        "dfs.namenode.safemode.threshold-pct=0" \
        "dfs.namenode.redundancy.considerLoad=false"
    # (no safe mode wait for blocks of nodes that are gone; and the writer's
    # own DataNode is always chosen, however busy: that is the locality)
}

start_namenode() {
    local cmd
    write_namenode_conf
    mapfile -d '' cmd < <(hdfs_cmd "$NN_DIR/conf" "$NN_DIR")
    if [ ! -f "$NN_DIR/name/current/VERSION" ]; then
        log "node1: formatting the NameNode in $NN_DIR/name"
        rm -rf "$NN_DIR/name" "$RUNTIME"/node*/datanode/data
        mkdir -p "$NN_DIR/name"
        ip netns exec "$(ns_name 1)" "${cmd[@]}" "$NN_CLASS" -format -nonInteractive \
            -clusterid "spark-cnn-cluster" </dev/null >"$NN_DIR/format.log" 2>&1 \
            || { tail_log "$NN_DIR/format.log"; die "NameNode format failed (log: $NN_DIR/format.log)"; }
    fi
    log "node1: HDFS NameNode hdfs://$MASTER_IP:$NN_RPC_PORT (WebHDFS :$NN_HTTP_PORT)"
    spawn 1 namenode "${cmd[@]}" "-Dspark-cnn.cluster=$(tag 1 namenode)" "$NN_CLASS"
}

start_datanode() {  # node
    local k=$1 d ip cmd
    d=$(node_dir "$k")/datanode; ip=$(node_ip "$k")
    mkdir -p "$d/data"
    hdfs_write_conf "$d/conf" "hdfs://$MASTER_IP:$NN_RPC_PORT" "$HDFS_USER" "$d/tmp" \
        "dfs.datanode.data.dir=file://$d/data" \
        "dfs.namenode.rpc-address=$MASTER_IP:$NN_RPC_PORT" \
        "dfs.datanode.address=$ip:$DN_PORT" \
        "dfs.datanode.http.address=$ip:$DN_HTTP_PORT" \
        "dfs.datanode.https.address=$ip:0" \
        "dfs.datanode.ipc.address=$ip:$DN_IPC_PORT" \
        "dfs.datanode.hostname=$ip"
    mapfile -d '' cmd < <(hdfs_cmd "$d/conf" "$d")
    log "node$k: HDFS DataNode $ip:$DN_PORT (http :$DN_HTTP_PORT)"
    spawn "$k" datanode "${cmd[@]}" "-Dspark-cnn.cluster=$(tag "$k" datanode)" "$DN_CLASS"
}

start_daemon() {  # node name
    case $2 in
        redis) start_redis "$1" ;;
        namenode) start_namenode ;;
        master) start_master ;;
        datanode) start_datanode "$1" ;;
        worker) start_worker "$1" ;;
    esac
}

# ---------------------------------------------------------------- readiness

redis_addresses() {  # K -> 10.231.0.1:6379 ... (one per argument)
    local k
    for ((k = 1; k <= $1; k++)); do echo "$(node_ip "$k"):$REDIS_PORT"; done
}

# spark_ready MODE K: every node's worker ALIVE at the master
spark_ready() {
    python3 - "$1" "http://$MASTER_IP:$MASTER_UI_PORT/json" "$(seq -s, 1 "$2" | sed "s/[0-9]\+/$SUBNET.&/g")" <<'PY'
import json, sys, urllib.request
mode, url, hosts = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
def fail(msg):
    if mode == "verbose":
        print("Spark not ready: " + msg, file=sys.stderr)
    sys.exit(1)
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        state = json.load(r)
except (OSError, ValueError) as e:
    fail("master %s: %r" % (url, e))
alive = {w.get("host") for w in state.get("workers", []) if w.get("state") == "ALIVE"}
if not hosts <= alive:
    fail("workers not ALIVE at the master: %s" % ", ".join(sorted(hosts - alive)))
PY
}

# local_write_check MODE K: a WebHDFS CREATE made inside node k is redirected
# to node k's DataNode (the NameNode sees the client as that DataNode), for all k
local_write_check() {
    local mode=$1 k
    for ((k = 1; k <= $2; k++)); do
        ip netns exec "$(ns_name "$k")" python3 - "$mode" "$MASTER_IP" "$NN_HTTP_PORT" \
            "$HDFS_USER" "$HDFS_ROOT" "$(node_ip "$k")" <<'PY' || return 1
import http.client, sys, urllib.parse
mode, host, port, user, root, me = sys.argv[1:7]
path = "/webhdfs/v1" + urllib.parse.quote(root.rstrip("/") + "/.locality-probe") + "?" + \
    urllib.parse.urlencode({"op": "CREATE", "overwrite": "true", "user.name": user})
try:
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("PUT", path)       # no data: the NameNode only answers where to write
    r = c.getresponse()
    r.read()
    where = urllib.parse.urlsplit(r.getheader("Location") or "").hostname
except OSError as e:
    where = repr(e)
if where != me:
    if mode == "verbose":
        print("HDFS not ready: a WebHDFS write from %s is sent to %s, not to its own DataNode" % (me, where),
              file=sys.stderr)
    sys.exit(1)
PY
    done
}

# cluster_ready MODE K
cluster_ready() {
    local mode=$1 n=$2 why
    if ! why=$(redis_ping "$PASSWORD_FILE" $(redis_addresses "$n") 2>&1); then
        [ "$mode" != verbose ] || echo "Redis not ready: $why" >&2
        return 1
    fi
    spark_ready "$mode" "$n" || return 1
    hdfs_probe "$mode" "$MASTER_IP" "$NN_HTTP_PORT" "$HDFS_USER" "$HDFS_ROOT" "$HDFS_SUPERUSER" "$n" "" \
        || return 1
    local_write_check "$mode" "$n"
}

all_alive() {  # K
    local k name
    for ((k = 1; k <= $1; k++)); do
        ns_exists "$k" || return 1
        for name in $(daemons_of "$k"); do
            daemon_alive "$k" "$name" || return 1
        done
    done
}

# ---------------------------------------------------------------- commands

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

# pids_in_node NODE: every process in the node's network namespace
pids_in_node() {
    local ino
    ino=$(cat "$(node_dir "$1")/netns-inode" 2>/dev/null || ns_inode "$1" || true)
    {
        ! ns_exists "$1" || ip netns pids "$(ns_name "$1")" 2>/dev/null || true
        # also those of a namespace whose name is gone but whose processes are not
        if [ -n "$ino" ]; then
            local p
            for p in /proc/[0-9]*; do
                [ "$(readlink "$p/ns/net" 2>/dev/null)" = "net:[$ino]" ] && echo "${p#/proc/}"
            done
        fi
    } | sort -n -u
}

cmd_kill_node() {
    [ $# -eq 1 ] || { echo "usage: $0 kill-node K" >&2; exit 2; }
    need_root
    local k=$1 n victims=() p worker redis args
    check_node_count "$k"
    k=$((10#$k))
    n=$(recorded_nodes)
    [ -n "$n" ] && (( k <= n )) && ns_exists "$k" \
        || die "node $k is not part of a cluster that is up (runtime $RUNTIME)"
    if worker=$(tagged_pid "$k" worker); then
        victims+=("$worker")
        # its executors and their Python workers
        victims+=($(ps -e -o pid=,ppid= | awk -v root="$worker" '
            { kids[$2] = kids[$2] " " $1 }
            END { n = split(kids[root], q, " "); i = 1
                  while (i <= n) { p = q[i++]; print p; m = split(kids[p], c, " ")
                                   for (j = 1; j <= m; j++) q[++n] = c[j] } }'))
    fi
    if redis=$(tagged_pid "$k" redis); then
        victims+=("$redis")
    fi
    # executors or Python workers of the node left without a parent
    for p in $(pids_in_node "$k"); do
        args=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
        case $args in
            *CoarseGrainedExecutorBackend*|*pyspark.daemon*|*pyspark.worker*) victims+=("$p") ;;
        esac
    done
    if (( ${#victims[@]} )); then
        mapfile -t victims < <(printf '%s\n' "${victims[@]}" | sort -n -u)
        kill -KILL "${victims[@]}" 2>/dev/null || true
    fi
    local i
    for ((i = 0; i < 30; i++)); do
        local left=0
        for p in "${victims[@]}"; do
            [ -n "$(tr -d '\0' <"/proc/$p/cmdline" 2>/dev/null)" ] && left=1
        done
        (( left )) || break
        sleep 0.1
    done
    rm -f "$(pidfile "$k" worker)" "$(pidfile "$k" redis)"
    log "node$k: killed ${#victims[@]} processes (worker ${worker:-not running}, redis ${redis:-not running}, executors, Python workers); its DataNode is left running"
}

cmd_status() {
    local n k name bad=0 pf state detail ip
    n=$(recorded_nodes)
    if [ -z "$n" ] || [ ! -e "/sys/class/net/$BRIDGE" ]; then
        echo "cluster: not up (runtime $RUNTIME)"
        return 1
    fi
    for ((k = 1; k <= n; k++)); do
        ip=$(node_ip "$k")
        if ns_exists "$k"; then
            printf '%-7s %-9s %-5s %s\n' "node$k" network up "$(ns_name "$k") $ip"
        else
            printf '%-7s %-9s %-5s %s\n' "node$k" network DOWN "$(ns_name "$k") missing"; bad=1
        fi
        for name in $(daemons_of "$k"); do
            pf=$(pidfile "$k" "$name")
            state=DOWN detail=""
            if ns_exists "$k" && daemon_alive "$k" "$name"; then
                case $name in
                    redis) detail="$ip:$REDIS_PORT"
                           redis_ping "$PASSWORD_FILE" "$ip:$REDIS_PORT" 2>/dev/null && state=up ;;
                    master) detail="spark://$MASTER_IP:$MASTER_PORT http://$MASTER_IP:$MASTER_UI_PORT"
                            port_open "$MASTER_IP" "$MASTER_PORT" && state=up ;;
                    namenode) detail="hdfs://$MASTER_IP:$NN_RPC_PORT http://$MASTER_IP:$NN_HTTP_PORT"
                              port_open "$MASTER_IP" "$NN_HTTP_PORT" && state=up ;;
                    worker) detail="$ip http://$ip:$WORKER_UI_PORT"
                            port_open "$ip" "$WORKER_UI_PORT" && state=up ;;
                    datanode) detail="$ip:$DN_PORT http://$ip:$DN_HTTP_PORT"
                              port_open "$ip" "$DN_HTTP_PORT" && state=up ;;
                esac
                detail="pid $(pid_of "$pf") $detail"
            fi
            [ "$state" = up ] || bad=1
            printf '%-7s %-9s %-5s %s\n' "node$k" "$name" "$state" "$detail"
        done
    done
    echo "runtime: $RUNTIME"
    return "$bad"
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
