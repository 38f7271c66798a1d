# scripts/lib/cluster_status.sh: is the cluster of scripts/cluster.sh up?
# (sourced by it, not run; uses its settings and the other scripts/lib pieces):
# the readiness probes `up` waits on, and `status`.

port_open() {  # host port -> 0 if something accepts connections there
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
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
