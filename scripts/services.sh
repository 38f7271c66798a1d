#!/usr/bin/env bash
# scripts/services.sh start [--password]|stop|status|dfs ARGS...
#
# Runs the two storage back ends spark-cnn exchanges layer matrices through,
# on this machine only, bound to 127.0.0.1:
#   * our own redis-server instance (not the Debian system service),
#     no persistence, TCP port + unix socket;
#   * a single-node HDFS (NameNode + DataNode) from the Apache Hadoop 3.5.0
#     jars, fetched once from Maven Central with scripts/hadoop/pom.xml.
#
#   eval "$(scripts/services.sh start)"   # start (idempotent) and export settings
#   eval "$(scripts/services.sh start --password)"   # the same, Redis with a password
#   scripts/services.sh status            # exit status 1 if something is down
#   scripts/services.sh stop
#   scripts/services.sh dfs -put big.parquet /data/   # Hadoop's `hdfs dfs` on this HDFS
#
# Redis password: with SPARK_CNN_REDIS_PASSWORD_FILE set at `start` (a file of
# mode 0600 holding one line), or with `start --password` (a random password
# generated once into $SPARK_CNN_RUNTIME/redis/password, mode 0600), Redis
# requires that password (requirepass in its 0600 config file, never on a
# command line) and `start` exports SPARK_CNN_REDIS_PASSWORD_FILE. Without
# either, Redis has no password. A running Redis is not changed: `stop` first.
#
# HDFS checks permissions (dfs.permissions.enabled=true). The user running this
# script starts the NameNode and so is the HDFS superuser; `start` makes
# SPARK_CNN_HDFS_ROOT as that user and hands it to SPARK_CNN_HDFS_USER.
#
# `start` prints ONLY `export ...` lines on stdout; progress goes to stderr.
#
# Environment (defaults in brackets):
#   SPARK_CNN_RUNTIME        runtime folder: config, data, pidfiles, logs [<project>/.runtime]
#   SPARK_CNN_REDIS_PORT     Redis TCP port                          [6390]
#   SPARK_CNN_NN_RPC_PORT    NameNode RPC (fs.defaultFS)              [19000]
#   SPARK_CNN_NN_HTTP_PORT   NameNode HTTP, WebHDFS                   [19870]
#   SPARK_CNN_DN_PORT        DataNode data transfer                   [19866]
#   SPARK_CNN_DN_HTTP_PORT   DataNode HTTP (WebHDFS redirect target)  [19864]
#   SPARK_CNN_DN_IPC_PORT    DataNode IPC                             [19867]
#   SPARK_CNN_HDFS_USER      user name for WebHDFS requests           [$USER, else `id -un`]
#   SPARK_CNN_HDFS_ROOT      HDFS folder the project writes under     [/spark-cnn]
#   SPARK_CNN_REDIS_PASSWORD_FILE  Redis password file (see above)    [none: no password]
#   SPARK_CNN_HDFS_HEAP      -Xmx of each HDFS daemon                 [1g]
#   XDG_CACHE_HOME           jar cache lives in $XDG_CACHE_HOME/spark-cnn/hadoop-3.5.0 [~/.cache]
#
# Exports printed by `start`:
#   SPARK_CNN_REDIS      comma-separated Redis addresses, local node first
#   SPARK_CNN_WEBHDFS    http://127.0.0.1:$SPARK_CNN_NN_HTTP_PORT
#   SPARK_CNN_HDFS       hdfs://127.0.0.1:$SPARK_CNN_NN_RPC_PORT
#   SPARK_CNN_HDFS_USER, SPARK_CNN_HDFS_ROOT
#   SPARK_CNN_REDIS_PASSWORD_FILE   only when Redis has a password
set -euo pipefail

HOST=127.0.0.1

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=lib/common.sh
. "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=lib/hadoop.sh
. "$SCRIPT_DIR/lib/hadoop.sh"

REDIS_PORT=${SPARK_CNN_REDIS_PORT:-6390}
NN_RPC_PORT=${SPARK_CNN_NN_RPC_PORT:-19000}
NN_HTTP_PORT=${SPARK_CNN_NN_HTTP_PORT:-19870}
DN_PORT=${SPARK_CNN_DN_PORT:-19866}
DN_HTTP_PORT=${SPARK_CNN_DN_HTTP_PORT:-19864}
DN_IPC_PORT=${SPARK_CNN_DN_IPC_PORT:-19867}
HDFS_USER=${SPARK_CNN_HDFS_USER:-${USER:-}}
[ -n "$HDFS_USER" ] || HDFS_USER=$(id -un)
HDFS_ROOT=${SPARK_CNN_HDFS_ROOT:-/spark-cnn}
HDFS_HEAP=${SPARK_CNN_HDFS_HEAP:-1g}
HDFS_SUPERUSER=$(id -un)   # whoever starts the NameNode
REDIS_PASSWORD_FILE=${SPARK_CNN_REDIS_PASSWORD_FILE:-}
START_TIMEOUT=${SPARK_CNN_START_TIMEOUT:-120}

RUNTIME=${SPARK_CNN_RUNTIME:-$PROJECT_ROOT/.runtime}
mkdir -p "$RUNTIME"
RUNTIME=$(cd "$RUNTIME" && pwd)

REDIS_DIR=$RUNTIME/redis
REDIS_CONF=$REDIS_DIR/redis.conf
REDIS_PID=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_SOCK=$REDIS_DIR/redis.sock
REDIS_GENERATED_PASSWORD=$REDIS_DIR/password
REDIS_PASSWORD_RECORD=$REDIS_DIR/password-file   # path of the running server's password file

HDFS_DIR=$RUNTIME/hdfs
HDFS_CONF=$HDFS_DIR/conf
NN_PID=$HDFS_DIR/namenode.pid
NN_LOG=$HDFS_DIR/namenode.log
DN_PID=$HDFS_DIR/datanode.pid
DN_LOG=$HDFS_DIR/datanode.log

log() { echo "services.sh: $*" >&2; }
die() { echo "services.sh: error: $*" >&2; exit 1; }

for p in REDIS_PORT NN_RPC_PORT NN_HTTP_PORT DN_PORT DN_HTTP_PORT DN_IPC_PORT; do
    [[ ${!p} =~ ^[0-9]{1,5}$ ]] && (( 10#${!p} > 0 && 10#${!p} < 65536 )) \
        || die "SPARK_CNN_$p='${!p}' is not a valid port number"
    printf -v "$p" '%d' "$((10#${!p}))"
done

# A unix socket path must fit in sun_path (108 bytes with the NUL); fall back to
# a short path in /tmp when the runtime folder is too deep.
if (( ${#REDIS_SOCK} > 100 )); then
    REDIS_SOCK=/tmp/spark-cnn-redis-$(id -u)-$(printf '%s' "$RUNTIME" | cksum | cut -d' ' -f1).sock
fi

# ---------------------------------------------------------------- helpers

port_open() {  # port -> 0 if something listens on 127.0.0.1:port
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# ---------------------------------------------------------------- redis

REDIS_MARKER=redis-server

# our instance answers on the unix socket and on TCP (with the password, if any)
redis_ok() { [ -S "$REDIS_SOCK" ] && redis_ping "$REDIS_PASSWORD_FILE" "$REDIS_SOCK" "$HOST:$REDIS_PORT"; }

# running_password_file: the password file the running server was started with ("" if none)
running_password_file() { cat "$REDIS_PASSWORD_RECORD" 2>/dev/null || true; }

start_redis() {
    if [ -n "$REDIS_PASSWORD_FILE" ]; then
        check_password_file "$REDIS_PASSWORD_FILE"
        REDIS_PASSWORD_FILE=$(cd "$(dirname "$REDIS_PASSWORD_FILE")" && pwd)/$(basename "$REDIS_PASSWORD_FILE")
    fi
    if pid_alive "$REDIS_PID" "$REDIS_MARKER"; then
        local why running
        running=$(running_password_file)
        # a running server keeps its password: a plain `start` reports it,
        # another password file needs a `stop` first
        if [ -z "$REDIS_PASSWORD_FILE" ]; then
            REDIS_PASSWORD_FILE=$running
        elif [ "$REDIS_PASSWORD_FILE" != "$running" ]; then
            die "redis: already running with ${running:+the password of }${running:-no password}; run 'scripts/services.sh stop' first to start it with the password of $REDIS_PASSWORD_FILE"
        fi
        [ -z "$REDIS_PASSWORD_FILE" ] || check_password_file "$REDIS_PASSWORD_FILE"
        if why=$(redis_ok 2>&1); then
            log "redis: already running (pid $(pid_of "$REDIS_PID"))"
            return 0
        fi
        die "redis: pid $(pid_of "$REDIS_PID") is alive but does not answer as asked on $HOST:$REDIS_PORT and $REDIS_SOCK ($why; password file: ${REDIS_PASSWORD_FILE:-none}); run 'scripts/services.sh stop' and retry"
    fi
    ensure_command redis-server redis-server
    if port_open "$REDIS_PORT"; then
        die "port $HOST:$REDIS_PORT is busy (not our redis); set SPARK_CNN_REDIS_PORT to a free port"
    fi
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_SOCK" "$REDIS_CONF"
    # 0600: the config file may hold the password
    (umask 077; cat >"$REDIS_CONF") <<EOF
# generated by scripts/services.sh; edits are overwritten on start
bind $HOST
protected-mode yes
port $REDIS_PORT
unixsocket $REDIS_SOCK
unixsocketperm 700
daemonize yes
pidfile $REDIS_PID
logfile $REDIS_LOG
dir $REDIS_DIR
save ""
appendonly no
databases 1
EOF
    if [ -n "$REDIS_PASSWORD_FILE" ]; then
        redis_conf_password "$REDIS_PASSWORD_FILE" >>"$REDIS_CONF"
    fi
    printf '%s\n' "$REDIS_PASSWORD_FILE" >"$REDIS_PASSWORD_RECORD"
    log "redis: starting on $HOST:$REDIS_PORT and $REDIS_SOCK${REDIS_PASSWORD_FILE:+ (password from $REDIS_PASSWORD_FILE)}"
    no_extra_fds redis-server "$REDIS_CONF" </dev/null >>"$REDIS_LOG" 2>&1 \
        || { tail_log "$REDIS_LOG"; die "redis-server failed to start (log: $REDIS_LOG)"; }
    local i
    for ((i = 0; i < 100; i++)); do
        redis_ok 2>/dev/null && pid_alive "$REDIS_PID" "$REDIS_MARKER" && {
            log "redis: up (pid $(pid_of "$REDIS_PID"))"
            return 0
        }
        sleep 0.1
    done
    tail_log "$REDIS_LOG"
    die "redis-server did not answer within 10 s (log: $REDIS_LOG)"
}

# ---------------------------------------------------------------- hdfs

write_hdfs_conf() {
    mkdir -p "$HDFS_CONF" "$HDFS_DIR/name" "$HDFS_DIR/data"
    hdfs_write_conf "$HDFS_CONF" "hdfs://$HOST:$NN_RPC_PORT" "$HDFS_USER" "$HDFS_DIR/tmp" \
        "dfs.namenode.name.dir=file://$HDFS_DIR/name" \
        "dfs.datanode.data.dir=file://$HDFS_DIR/data" \
        "dfs.namenode.rpc-address=$HOST:$NN_RPC_PORT" \
        "dfs.namenode.rpc-bind-host=$HOST" \
        "dfs.namenode.http-address=$HOST:$NN_HTTP_PORT" \
        "dfs.namenode.http-bind-host=$HOST" \
        "dfs.namenode.https-address=$HOST:0" \
        "dfs.namenode.secondary.http-address=$HOST:0" \
        "dfs.namenode.secondary.https-address=$HOST:0" \
        "dfs.namenode.backup.address=$HOST:0" \
        "dfs.namenode.backup.http-address=$HOST:0" \
        "dfs.datanode.address=$HOST:$DN_PORT" \
        "dfs.datanode.http.address=$HOST:$DN_HTTP_PORT" \
        "dfs.datanode.https.address=$HOST:0" \
        "dfs.datanode.ipc.address=$HOST:$DN_IPC_PORT" \
        "dfs.datanode.hostname=$HOST"
    # (the DataNode registers and is advertised as 127.0.0.1, so WebHDFS
    # redirects from the NameNode point at a loopback address)
}

# run_java LOGFILE ARGS... : foreground java with our class path
run_java() {
    local logfile=$1 cmd; shift
    mapfile -d '' cmd < <(hdfs_java_command "$HDFS_HEAP" "$HDFS_CONF" "$HDFS_DIR")
    "${cmd[@]}" "$@" </dev/null >>"$logfile" 2>&1
}

# spawn_java PIDFILE LOGFILE CLASS : detached background daemon; the pidfile
# holds the java pid (bash writes its own pid, then execs java).
spawn_java() {
    local pidfile=$1 logfile=$2 class=$3 cmd
    mapfile -d '' cmd < <(hdfs_java_command "$HDFS_HEAP" "$HDFS_CONF" "$HDFS_DIR")
    : >"$logfile"
    setsid bash -c "echo \$\$ >\"\$1\"; shift; $CLOSE_FDS"' exec "$@"' _ "$pidfile" \
        "${cmd[@]}" -Dspark-cnn.runtime="$RUNTIME" "$class" </dev/null >>"$logfile" 2>&1 &
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$pidfile" ] && return 0
        sleep 0.1
    done
    die "could not launch $class (log: $logfile)"
}

# hdfs_ready MODE: 0 when out of safe mode, $HDFS_ROOT exists and belongs to
# $HDFS_USER (made by the superuser if needed) and a WebHDFS write + read +
# delete round trip as $HDFS_USER works, redirected to the loopback DataNode.
# MODE=verbose prints the reason on stderr when not ready.
hdfs_ready() {
    hdfs_probe "$1" "$HOST" "$NN_HTTP_PORT" "$HDFS_USER" "$HDFS_ROOT" "$HDFS_SUPERUSER" 1 127.
}

start_hdfs() {
    local nn_up=0 dn_up=0
    pid_alive "$NN_PID" "$NN_CLASS" && nn_up=1
    pid_alive "$DN_PID" "$DN_CLASS" && dn_up=1
    if (( nn_up && dn_up )) && hdfs_ready quiet 2>/dev/null; then
        log "hdfs: already running (namenode pid $(pid_of "$NN_PID"), datanode pid $(pid_of "$DN_PID"))"
        return 0
    fi
    check_java
    command -v python3 >/dev/null 2>&1 || die "python3 not found"
    command -v setsid >/dev/null 2>&1 || die "setsid not found (package util-linux)"
    fetch_jars
    write_hdfs_conf

    if (( ! nn_up )); then
        local p
        for p in "$NN_RPC_PORT" "$NN_HTTP_PORT"; do
            if port_open "$p"; then
                die "port $HOST:$p is busy (not our NameNode); set SPARK_CNN_NN_RPC_PORT / SPARK_CNN_NN_HTTP_PORT"
            fi
        done
        if [ ! -f "$HDFS_DIR/name/current/VERSION" ]; then
            log "hdfs: formatting the NameNode in $HDFS_DIR/name"
            rm -rf "$HDFS_DIR/name" "$HDFS_DIR/data"
            mkdir -p "$HDFS_DIR/name" "$HDFS_DIR/data"
            run_java "$HDFS_DIR/format.log" "$NN_CLASS" -format -nonInteractive -clusterid spark-cnn \
                || { tail_log "$HDFS_DIR/format.log"; die "NameNode format failed (log: $HDFS_DIR/format.log)"; }
        fi
        log "hdfs: starting NameNode on $HOST:$NN_RPC_PORT (http $NN_HTTP_PORT)"
        spawn_java "$NN_PID" "$NN_LOG" "$NN_CLASS"
    fi
    if (( ! dn_up )); then
        local p
        for p in "$DN_PORT" "$DN_HTTP_PORT" "$DN_IPC_PORT"; do
            if port_open "$p"; then
                die "port $HOST:$p is busy (not our DataNode); set SPARK_CNN_DN_PORT / SPARK_CNN_DN_HTTP_PORT / SPARK_CNN_DN_IPC_PORT"
            fi
        done
        log "hdfs: starting DataNode on $HOST:$DN_PORT (http $DN_HTTP_PORT, ipc $DN_IPC_PORT)"
        spawn_java "$DN_PID" "$DN_LOG" "$DN_CLASS"
    fi

    log "hdfs: waiting (up to ${START_TIMEOUT}s) for safe mode off and a WebHDFS test write"
    local start=$SECONDS
    while :; do
        if ! pid_alive "$NN_PID" "$NN_CLASS"; then
            tail_log "$NN_LOG"; die "NameNode exited during startup (log: $NN_LOG)"
        fi
        if ! pid_alive "$DN_PID" "$DN_CLASS"; then
            tail_log "$DN_LOG"; die "DataNode exited during startup (log: $DN_LOG)"
        fi
        hdfs_ready quiet 2>/dev/null && break
        if (( SECONDS - start >= START_TIMEOUT )); then
            hdfs_ready verbose || true
            tail_log "$NN_LOG"; tail_log "$DN_LOG"
            die "HDFS not ready after ${START_TIMEOUT}s (logs: $NN_LOG, $DN_LOG)"
        fi
        sleep 1
    done
    log "hdfs: up in $((SECONDS - start))s (namenode pid $(pid_of "$NN_PID"), datanode pid $(pid_of "$DN_PID"))"
}

# ---------------------------------------------------------------- commands

print_exports() {
    local q
    # unix socket first: measured faster than TCP for large values (see spark/storage/store.py)
    echo "export SPARK_CNN_REDIS=unix://$REDIS_SOCK,$HOST:$REDIS_PORT"
    echo "export SPARK_CNN_WEBHDFS=http://$HOST:$NN_HTTP_PORT"
    echo "export SPARK_CNN_HDFS=hdfs://$HOST:$NN_RPC_PORT"
    printf -v q '%q' "$HDFS_USER"; echo "export SPARK_CNN_HDFS_USER=$q"
    printf -v q '%q' "$HDFS_ROOT"; echo "export SPARK_CNN_HDFS_ROOT=$q"
    if [ -n "$REDIS_PASSWORD_FILE" ]; then
        printf -v q '%q' "$REDIS_PASSWORD_FILE"; echo "export SPARK_CNN_REDIS_PASSWORD_FILE=$q"
    fi
}

cmd_start() {
    case "${1:-}" in
        "") ;;
        --password)
            if [ -z "$REDIS_PASSWORD_FILE" ]; then
                new_password "$REDIS_GENERATED_PASSWORD"
                REDIS_PASSWORD_FILE=$REDIS_GENERATED_PASSWORD
            fi ;;
        *) echo "usage: $0 start [--password]" >&2; exit 2 ;;
    esac
    exec 3>&1 1>&2  # stdout carries only the export lines
    start_redis
    start_hdfs
    print_exports >&3
}

cmd_stop() {
    stop_pid "$DN_PID" "$DN_CLASS" datanode
    stop_pid "$NN_PID" "$NN_CLASS" namenode
    stop_pid "$REDIS_PID" "$REDIS_MARKER" redis
    rm -f "$REDIS_SOCK" "$REDIS_PASSWORD_RECORD"
}

cmd_status() {
    local bad=0
    REDIS_PASSWORD_FILE=$(running_password_file)
    if pid_alive "$REDIS_PID" "$REDIS_MARKER" && redis_ok; then
        echo "redis:    up   pid $(pid_of "$REDIS_PID")  $HOST:$REDIS_PORT  unix://$REDIS_SOCK${REDIS_PASSWORD_FILE:+  password file $REDIS_PASSWORD_FILE}"
    else
        echo "redis:    DOWN"; bad=1
    fi
    if pid_alive "$NN_PID" "$NN_CLASS"; then
        echo "namenode: up   pid $(pid_of "$NN_PID")  hdfs://$HOST:$NN_RPC_PORT  http://$HOST:$NN_HTTP_PORT"
    else
        echo "namenode: DOWN"; bad=1
    fi
    if pid_alive "$DN_PID" "$DN_CLASS"; then
        echo "datanode: up   pid $(pid_of "$DN_PID")  $HOST:$DN_PORT  http://$HOST:$DN_HTTP_PORT"
    else
        echo "datanode: DOWN"; bad=1
    fi
    if (( ! bad )); then
        if hdfs_ready verbose; then
            echo "webhdfs:  ok   test write under $HDFS_ROOT succeeded"
        else
            echo "webhdfs:  NOT READY"; bad=1
        fi
    fi
    echo "runtime:  $RUNTIME"
    return "$bad"
}

# cmd_dfs ARGS...: Hadoop's own file system shell (`hdfs dfs`) against this
# HDFS, as SPARK_CNN_HDFS_USER, e.g. `dfs -put big.parquet /data/`; its exit status.
cmd_dfs() {
    (( $# )) || die "usage: $0 dfs -put LOCAL HDFS_PATH | -ls PATH | ... (Hadoop's FsShell)"
    [ -f "$HDFS_CONF/core-site.xml" ] && pid_alive "$NN_PID" "$NN_CLASS" \
        || die "HDFS is not running here: run '$0 start' first"
    local quiet=$HDFS_CONF/log4j-shell.properties cmd
    printf '%s\n' "log4j.rootLogger=WARN,console" "log4j.appender.console=org.apache.log4j.ConsoleAppender" \
        "log4j.appender.console.target=System.err" "log4j.appender.console.layout=org.apache.log4j.PatternLayout" \
        "log4j.appender.console.layout.ConversionPattern=%p %c{2}: %m%n" \
        "log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR" >"$quiet"
    mapfile -d '' cmd < <(hdfs_java_command 256m "$HDFS_CONF" "$HDFS_DIR")
    HADOOP_USER_NAME=$HDFS_USER "${cmd[@]}" -Dlog4j.configuration="file:$quiet" \
        org.apache.hadoop.fs.FsShell "$@" </dev/null
}

# one start/stop at a time per runtime folder (e.g. two test sessions at once)
lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$RUNTIME/.services.lock"
    flock -w 600 9 || die "another services.sh holds $RUNTIME/.services.lock"
}

case "${1:-}" in
    start) lock; shift; cmd_start "$@" ;;
    stop) lock; cmd_stop ;;
    status) cmd_status ;;
    dfs) shift; cmd_dfs "$@" ;;
    *) echo "usage: $0 start [--password]|stop|status|dfs ARGS..." >&2; exit 2 ;;
esac
