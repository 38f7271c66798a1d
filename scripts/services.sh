#!/usr/bin/env bash
# scripts/services.sh start|stop|status
#
# Runs the two storage back ends spark-cnn exchanges layer matrices through,
# on this machine only, bound to 127.0.0.1:
#   * our own redis-server instance (not the Debian system service),
#     no persistence, TCP port + unix socket;
#   * a single-node HDFS (NameNode + DataNode) from the Apache Hadoop 3.5.0
#     jars, fetched once from Maven Central with scripts/hadoop/pom.xml.
#
#   eval "$(scripts/services.sh start)"   # start (idempotent) and export settings
#   scripts/services.sh status            # exit status 1 if something is down
#   scripts/services.sh stop
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
#   SPARK_CNN_HDFS_HEAP      -Xmx of each HDFS daemon                 [1g]
#   XDG_CACHE_HOME           jar cache lives in $XDG_CACHE_HOME/spark-cnn/hadoop-3.5.0 [~/.cache]
#
# Exports printed by `start`:
#   SPARK_CNN_REDIS      comma-separated Redis addresses, local node first
#   SPARK_CNN_WEBHDFS    http://127.0.0.1:$SPARK_CNN_NN_HTTP_PORT
#   SPARK_CNN_HDFS       hdfs://127.0.0.1:$SPARK_CNN_NN_RPC_PORT
#   SPARK_CNN_HDFS_USER, SPARK_CNN_HDFS_ROOT
set -euo pipefail

HADOOP_VERSION=3.5.0
HOST=127.0.0.1

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

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
JAR_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/spark-cnn/hadoop-$HADOOP_VERSION
START_TIMEOUT=${SPARK_CNN_START_TIMEOUT:-120}

RUNTIME=${SPARK_CNN_RUNTIME:-$PROJECT_ROOT/.runtime}
mkdir -p "$RUNTIME"
RUNTIME=$(cd "$RUNTIME" && pwd)

REDIS_DIR=$RUNTIME/redis
REDIS_CONF=$REDIS_DIR/redis.conf
REDIS_PID=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_SOCK=$REDIS_DIR/redis.sock

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

# pid_alive PIDFILE MARKER: 0 if the pid in PIDFILE runs a command line
# containing MARKER. Removes stale pidfiles.
pid_alive() {
    local pidfile=$1 marker=$2 pid
    [ -f "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
        return 0
    fi
    rm -f "$pidfile"
    return 1
}

pid_of() { tr -dc '0-9' <"$1"; }

# stop_pid PIDFILE MARKER NAME
stop_pid() {
    local pidfile=$1 marker=$2 name=$3 pid i
    if ! pid_alive "$pidfile" "$marker"; then
        log "$name: not running"
        return 0
    fi
    pid=$(pid_of "$pidfile")
    log "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still alive after 15 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pidfile"
}

# Daemons must not inherit any descriptor but 0-2: one holding the caller's
# stdout (start's fd 3, or a pipe of whoever runs us) would make
# `eval "$(services.sh start)"` wait for the daemons to exit.
CLOSE_FDS='for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done;'
no_extra_fds() { bash -c "$CLOSE_FDS"' exec "$@"' _ "$@"; }

tail_log() {  # file
    if [ -f "$1" ]; then
        echo "---- last lines of $1 ----" >&2
        tail -n 40 "$1" >&2 || true
        echo "----" >&2
    fi
}

# ---------------------------------------------------------------- redis

REDIS_MARKER=redis-server

ensure_redis_installed() {
    command -v redis-server >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ]; then
        die "redis-server is not installed and this is not root: run 'sudo apt-get install -y redis-server'"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "redis-server is not installed and apt-get is missing: install Redis >= 6 by hand"
    log "installing redis-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local lockwait=(-o DPkg::Lock::Timeout=300)
    if ! apt-get "${lockwait[@]}" install -y -q redis-server >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get "${lockwait[@]}" update -q >&2 || die "apt-get update failed"
        apt-get "${lockwait[@]}" install -y -q redis-server >&2 \
            || die "apt-get install -y redis-server failed"
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get install"
}

redis_ping() {  # 0 if our instance answers on the unix socket and on TCP
    [ -S "$REDIS_SOCK" ] || return 1
    python3 - "$REDIS_SOCK" "$HOST" "$REDIS_PORT" <<'PY' 2>/dev/null
import socket, sys
sock, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
for fam, addr in ((socket.AF_UNIX, sock), (socket.AF_INET, (host, port))):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(addr)
    s.sendall(b"PING\r\n")
    if not s.recv(64).startswith(b"+PONG"):
        sys.exit(1)
    s.close()
PY
}

start_redis() {
    if pid_alive "$REDIS_PID" "$REDIS_MARKER"; then
        if redis_ping; then
            log "redis: already running (pid $(pid_of "$REDIS_PID"))"
            return 0
        fi
        die "redis: pid $(pid_of "$REDIS_PID") is alive but does not answer on $HOST:$REDIS_PORT and $REDIS_SOCK; run 'scripts/services.sh stop' and retry"
    fi
    ensure_redis_installed
    if port_open "$REDIS_PORT"; then
        die "port $HOST:$REDIS_PORT is busy (not our redis); set SPARK_CNN_REDIS_PORT to a free port"
    fi
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_SOCK"
    cat >"$REDIS_CONF" <<EOF
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
    log "redis: starting on $HOST:$REDIS_PORT and $REDIS_SOCK"
    no_extra_fds redis-server "$REDIS_CONF" </dev/null >>"$REDIS_LOG" 2>&1 \
        || { tail_log "$REDIS_LOG"; die "redis-server failed to start (log: $REDIS_LOG)"; }
    local i
    for ((i = 0; i < 100; i++)); do
        redis_ping && pid_alive "$REDIS_PID" "$REDIS_MARKER" && {
            log "redis: up (pid $(pid_of "$REDIS_PID"))"
            return 0
        }
        sleep 0.1
    done
    tail_log "$REDIS_LOG"
    die "redis-server did not answer within 10 s (log: $REDIS_LOG)"
}

# ---------------------------------------------------------------- hdfs

NN_CLASS=org.apache.hadoop.hdfs.server.namenode.NameNode
DN_CLASS=org.apache.hadoop.hdfs.server.datanode.DataNode

# Java 17 needs these for Hadoop's reflection into the JDK (the same list
# Hadoop's own launcher scripts add on JDK 17).
JAVA_OPENS=(
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.net=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/sun.nio.cs=ALL-UNNAMED
    --add-opens=java.base/sun.security.action=ALL-UNNAMED
    --add-opens=java.base/sun.util.calendar=ALL-UNNAMED
    --add-exports=java.base/sun.net.dns=ALL-UNNAMED
    --add-exports=java.base/sun.net.util=ALL-UNNAMED
)

check_java() {
    command -v java >/dev/null 2>&1 \
        || die "java not found: install a JDK >= 17 (e.g. apt-get install -y openjdk-17-jdk-headless)"
    local v
    v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$v" ] && (( v >= 17 )) \
        || die "Hadoop $HADOOP_VERSION needs Java >= 17, found: $(java -version 2>&1 | head -n1)"
}

fetch_jars() {
    if [ -f "$JAR_CACHE/.complete" ]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 \
        || die "mvn not found (needed once to fetch the Hadoop jars): apt-get install -y maven"
    log "fetching Hadoop $HADOOP_VERSION jars from Maven Central into $JAR_CACHE"
    mkdir -p "$(dirname "$JAR_CACHE")"
    local tmp mvnlog
    tmp=$(mktemp -d "$JAR_CACHE.tmp.XXXXXX")
    mvnlog=$tmp.log
    if ! mvn -B -q -f "$SCRIPT_DIR/hadoop/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
        tail_log "$mvnlog"
        rm -rf "$tmp"
        die "mvn failed to fetch the Hadoop jars (full log: $mvnlog)"
    fi
    rm -f "$mvnlog"
    ls "$tmp"/hadoop-hdfs-"$HADOOP_VERSION".jar >/dev/null 2>&1 \
        || { rm -rf "$tmp"; die "mvn finished but hadoop-hdfs-$HADOOP_VERSION.jar is missing"; }
    touch "$tmp/.complete"
    rm -rf "$JAR_CACHE"
    mv "$tmp" "$JAR_CACHE"
    log "cached $(ls "$JAR_CACHE" | wc -l) jars in $JAR_CACHE"
}

write_hdfs_conf() {
    mkdir -p "$HDFS_CONF" "$HDFS_DIR/name" "$HDFS_DIR/data" "$HDFS_DIR/tmp"
    # The hadoop-hdfs 3.5.0 jar ships without its webapps/ folder, but the
    # NameNode and DataNode HTTP servers require webapps/<name> on the class
    # path. Empty folders are enough for WebHDFS and /jmx.
    mkdir -p "$HDFS_CONF/webapps/hdfs" "$HDFS_CONF/webapps/datanode" "$HDFS_CONF/webapps/static"
    cat >"$HDFS_CONF/core-site.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by scripts/services.sh; edits are overwritten on start -->
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://$HOST:$NN_RPC_PORT</value></property>
  <property><name>hadoop.tmp.dir</name><value>$HDFS_DIR/tmp</value></property>
  <property><name>hadoop.security.authentication</name><value>simple</value></property>
  <property><name>hadoop.http.staticuser.user</name><value>$HDFS_USER</value></property>
</configuration>
EOF
    cat >"$HDFS_CONF/hdfs-site.xml" <<EOF
<?xml version="1.0"?>
<!-- generated by scripts/services.sh; edits are overwritten on start -->
<configuration>
  <property><name>dfs.namenode.name.dir</name><value>file://$HDFS_DIR/name</value></property>
  <property><name>dfs.datanode.data.dir</name><value>file://$HDFS_DIR/data</value></property>
  <property><name>dfs.replication</name><value>1</value></property>
  <property><name>dfs.namenode.replication.min</name><value>1</value></property>
  <property><name>dfs.permissions.enabled</name><value>false</value></property>
  <property><name>dfs.webhdfs.enabled</name><value>true</value></property>
  <property><name>dfs.http.policy</name><value>HTTP_ONLY</value></property>

  <property><name>dfs.namenode.rpc-address</name><value>$HOST:$NN_RPC_PORT</value></property>
  <property><name>dfs.namenode.rpc-bind-host</name><value>$HOST</value></property>
  <property><name>dfs.namenode.http-address</name><value>$HOST:$NN_HTTP_PORT</value></property>
  <property><name>dfs.namenode.http-bind-host</name><value>$HOST</value></property>
  <property><name>dfs.namenode.https-address</name><value>$HOST:0</value></property>
  <property><name>dfs.namenode.secondary.http-address</name><value>$HOST:0</value></property>
  <property><name>dfs.namenode.secondary.https-address</name><value>$HOST:0</value></property>
  <property><name>dfs.namenode.backup.address</name><value>$HOST:0</value></property>
  <property><name>dfs.namenode.backup.http-address</name><value>$HOST:0</value></property>

  <property><name>dfs.datanode.address</name><value>$HOST:$DN_PORT</value></property>
  <property><name>dfs.datanode.http.address</name><value>$HOST:$DN_HTTP_PORT</value></property>
  <property><name>dfs.datanode.https.address</name><value>$HOST:0</value></property>
  <property><name>dfs.datanode.ipc.address</name><value>$HOST:$DN_IPC_PORT</value></property>
  <!-- register/advertise the DataNode as 127.0.0.1, so WebHDFS redirects
       from the NameNode point at a loopback address -->
  <property><name>dfs.datanode.hostname</name><value>$HOST</value></property>
  <property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>

  <!-- single node: leave safe mode as soon as the blocks are reported -->
  <property><name>dfs.namenode.safemode.extension</name><value>0</value></property>
  <property><name>dfs.namenode.safemode.min.datanodes</name><value>0</value></property>
  <property><name>dfs.namenode.heartbeat.recheck-interval</name><value>30000</value></property>
  <property><name>dfs.heartbeat.interval</name><value>1</value></property>
  <!-- small files (the per-batch marker files) close at once: without these a
       close waits for the block report and retries after 400 ms -->
  <property><name>dfs.namenode.file.close.num-committed-allowed</name><value>1</value></property>
  <property><name>dfs.client.block.write.locateFollowingBlock.initial.delay.ms</name><value>10</value></property>
  <!-- scratch data on a dev box: no reserved space guard that would put the
       NameNode into safe mode on a fullish disk -->
  <property><name>dfs.namenode.resource.du.reserved</name><value>0</value></property>
</configuration>
EOF
    cat >"$HDFS_CONF/log4j.properties" <<'EOF'
# generated by scripts/services.sh
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode.clienttrace=WARN
log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN
log4j.logger.BlockStateChange=WARN
EOF
}

# run_java LOGFILE ARGS... : foreground java with our class path
run_java() {
    local logfile=$1; shift
    java -Xmx"$HDFS_HEAP" "${JAVA_OPENS[@]}" -Djava.net.preferIPv4Stack=true \
        -Dhadoop.log.dir="$HDFS_DIR" -Dlog4j.configuration="file:$HDFS_CONF/log4j.properties" \
        -cp "$HDFS_CONF:$JAR_CACHE/*" "$@" </dev/null >>"$logfile" 2>&1
}

# spawn_java PIDFILE LOGFILE CLASS : detached background daemon; the pidfile
# holds the java pid (bash writes its own pid, then execs java).
spawn_java() {
    local pidfile=$1 logfile=$2 class=$3
    : >"$logfile"
    setsid bash -c "echo \$\$ >\"\$1\"; shift; $CLOSE_FDS"' exec "$@"' _ "$pidfile" \
        java -Xmx"$HDFS_HEAP" "${JAVA_OPENS[@]}" -Djava.net.preferIPv4Stack=true \
        -Dhadoop.log.dir="$HDFS_DIR" -Dlog4j.configuration="file:$HDFS_CONF/log4j.properties" \
        -Dspark-cnn.runtime="$RUNTIME" \
        -cp "$HDFS_CONF:$JAR_CACHE/*" "$class" </dev/null >>"$logfile" 2>&1 &
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$pidfile" ] && return 0
        sleep 0.1
    done
    die "could not launch $class (log: $logfile)"
}

# hdfs_probe MODE: "ready" -> 0 when out of safe mode and a WebHDFS write +
# read + delete round trip works (also creates $HDFS_ROOT). Prints the reason
# on stderr when not ready (with MODE=verbose).
hdfs_probe() {
    python3 - "$HOST" "$NN_HTTP_PORT" "$HDFS_USER" "$HDFS_ROOT" "$1" <<'PY'
import http.client, json, sys, urllib.parse
host, port, user, root, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def req(method, hostport, path, body=None):
    h, p = hostport
    c = http.client.HTTPConnection(h, p, timeout=10)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Location"), data

def q(path, op, **kw):
    kw.update(op=op, **{"user.name": user})
    return "/webhdfs/v1" + urllib.parse.quote(path) + "?" + urllib.parse.urlencode(kw)

def fail(msg):
    if mode == "verbose":
        print("HDFS not ready: " + msg, file=sys.stderr)
    sys.exit(1)

try:
    nn = (host, port)
    s, _, d = req("GET", nn, "/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo")
    if s != 200:
        fail("NameNode /jmx answered %d" % s)
    beans = json.loads(d).get("beans") or [{}]
    safemode = beans[0].get("Safemode", "?")
    if safemode:
        fail("NameNode in safe mode: %s" % safemode)
    live = json.loads(beans[0].get("LiveNodes") or "{}")
    if not live:
        fail("no live DataNode yet")
    probe = root.rstrip("/") + "/.services-probe"
    s, _, d = req("PUT", nn, q(root, "MKDIRS"))
    if s != 200:
        fail("MKDIRS %s -> %d %s" % (root, s, d[:200]))
    s, loc, d = req("PUT", nn, q(probe, "CREATE", overwrite="true", replication=1))
    if s != 307 or not loc:
        fail("CREATE did not redirect: %d %s" % (s, d[:200]))
    u = urllib.parse.urlsplit(loc)
    if not u.hostname.startswith("127."):
        fail("WebHDFS redirects to %s, which is not a loopback address" % u.netloc)
    s, _, d = req("PUT", (u.hostname, u.port), u.path + "?" + u.query, b"spark-cnn")
    if s != 201:
        fail("write to DataNode -> %d %s" % (s, d[:300]))
    s, loc, d = req("GET", nn, q(probe, "OPEN"))
    if s == 307:
        u = urllib.parse.urlsplit(loc)
        s, _, d = req("GET", (u.hostname, u.port), u.path + "?" + u.query)
    if s != 200 or d != b"spark-cnn":
        fail("read back -> %d %r" % (s, d[:100]))
    req("DELETE", nn, q(probe, "DELETE"))
except (OSError, ValueError) as e:
    fail(repr(e))
PY
}

start_hdfs() {
    local nn_up=0 dn_up=0
    pid_alive "$NN_PID" "$NN_CLASS" && nn_up=1
    pid_alive "$DN_PID" "$DN_CLASS" && dn_up=1
    if (( nn_up && dn_up )) && hdfs_probe quiet 2>/dev/null; then
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
        hdfs_probe quiet 2>/dev/null && break
        if (( SECONDS - start >= START_TIMEOUT )); then
            hdfs_probe verbose || true
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
    # unix socket first: measured faster than TCP for large values (see spark/store.py)
    echo "export SPARK_CNN_REDIS=unix://$REDIS_SOCK,$HOST:$REDIS_PORT"
    echo "export SPARK_CNN_WEBHDFS=http://$HOST:$NN_HTTP_PORT"
    echo "export SPARK_CNN_HDFS=hdfs://$HOST:$NN_RPC_PORT"
    printf -v q '%q' "$HDFS_USER"; echo "export SPARK_CNN_HDFS_USER=$q"
    printf -v q '%q' "$HDFS_ROOT"; echo "export SPARK_CNN_HDFS_ROOT=$q"
}

cmd_start() {
    exec 3>&1 1>&2  # stdout carries only the export lines
    start_redis
    start_hdfs
    print_exports >&3
}

cmd_stop() {
    stop_pid "$DN_PID" "$DN_CLASS" datanode
    stop_pid "$NN_PID" "$NN_CLASS" namenode
    stop_pid "$REDIS_PID" "$REDIS_MARKER" redis
    rm -f "$REDIS_SOCK"
}

cmd_status() {
    local bad=0
    if pid_alive "$REDIS_PID" "$REDIS_MARKER" && redis_ping; then
        echo "redis:    up   pid $(pid_of "$REDIS_PID")  $HOST:$REDIS_PORT  unix://$REDIS_SOCK"
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
        if hdfs_probe verbose; then
            echo "webhdfs:  ok   test write under $HDFS_ROOT succeeded"
        else
            echo "webhdfs:  NOT READY"; bad=1
        fi
    fi
    echo "runtime:  $RUNTIME"
    return "$bad"
}

# one start/stop at a time per runtime folder (e.g. two test sessions at once)
lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$RUNTIME/.services.lock"
    flock -w 600 9 || die "another services.sh holds $RUNTIME/.services.lock"
}

case "${1:-}" in
    start) lock; cmd_start ;;
    stop) lock; cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
