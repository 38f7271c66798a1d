# scripts/lib/common.sh: helpers shared by scripts/services.sh and
# scripts/cluster.sh (sourced, not run). The sourcing script defines
#   log MESSAGE   (progress on stderr)     die MESSAGE   (error on stderr, exit 1)

# pid_alive PIDFILE MARKER: 0 if the pid in PIDFILE runs a command line
# containing MARKER. Removes stale pidfiles.
pid_alive() {
    local pidfile=$1 marker=$2 pid
    [ -f "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] \
        && [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *"$marker"* ]]; then
        return 0
    fi
    rm -f "$pidfile"
    return 1
}

pid_of() { tr -dc '0-9' <"$1"; }

# stop_pid PIDFILE MARKER NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (15).
stop_pid() {
    local pidfile=$1 marker=$2 name=$3 wait=${4:-15} pid i
    if ! pid_alive "$pidfile" "$marker"; then
        log "$name: not running"
        return 0
    fi
    pid=$(pid_of "$pidfile")
    log "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still alive after $wait s, sending SIGKILL"
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

# ensure_command COMMAND DEBIAN_PACKAGE: installs the package with apt-get
# (as root) when COMMAND is missing.
ensure_command() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ]; then
        die "$cmd is not installed and this is not root: run 'sudo apt-get install -y $pkg'"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "$cmd is not installed and apt-get is missing: install $pkg by hand"
    log "installing $pkg with apt-get (for $cmd)"
    local lockwait=(-o DPkg::Lock::Timeout=300)
    if ! DEBIAN_FRONTEND=noninteractive apt-get "${lockwait[@]}" install -y -q "$pkg" </dev/null >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get "${lockwait[@]}" update -q </dev/null >&2 \
            || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get "${lockwait[@]}" install -y -q "$pkg" </dev/null >&2 \
            || die "apt-get install -y $pkg failed"
    fi
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after apt-get install -y $pkg"
}

# new_password FILE: writes a random password (48 hex digits) to FILE, mode 0600,
# unless FILE already exists.
new_password() {
    local file=$1
    [ -s "$file" ] && return 0
    mkdir -p "$(dirname "$file")"
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(24))' >"$file.tmp.$$") \
        || die "could not write a password to $file"
    mv -f "$file.tmp.$$" "$file"
}

# check_password_file FILE: dies unless FILE is a readable, non-empty file that
# only its owner can read (mode 0600 or stricter) with a one-line password
# redis accepts in a config file.
check_password_file() {
    local file=$1 mode
    [ -f "$file" ] && [ -r "$file" ] || die "Redis password file $file does not exist or is not readable"
    [ -s "$file" ] || die "Redis password file $file is empty"
    mode=$(stat -c %a "$file")
    (( (8#$mode & 8#077) == 0 )) \
        || die "Redis password file $file has mode $mode: others can read it; run 'chmod 600 $file'"
    [ "$(wc -l <"$file")" -le 1 ] && ! LC_ALL=C grep -q '[[:space:]"'\'']' <(head -n1 "$file") \
        || die "Redis password file $file must hold one line without spaces or quotes"
}

# redis_conf_password FILE: the requirepass line for a redis config file.
redis_conf_password() {
    printf 'requirepass %s\n' "$(head -n1 "$1")"
}

# redis_ping PASSWORD_FILE ADDRESS...: 0 if every address (host:port or a unix
# socket path) answers PING, authenticating first when PASSWORD_FILE is not
# empty. Prints why not on stderr.
redis_ping() {
    python3 - "$@" <<'PY'
import socket, sys
password_file, addresses = sys.argv[1], sys.argv[2:]
password = open(password_file, "rb").read().splitlines()[0] if password_file else None

def command(*words):
    out = b"*%d\r\n" % len(words)
    for w in words:
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    return out

for address in addresses:
    try:
        if address.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = address
        else:
            host, _, port = address.rpartition(":")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, int(port))
        s.settimeout(2)
        s.connect(target)
        if password is not None:
            s.sendall(command(b"AUTH", password))
            reply = s.recv(256)
            if not reply.startswith(b"+OK"):
                sys.exit("redis at %s refused the password: %s" % (address, reply.strip().decode(errors="replace")))
        s.sendall(command(b"PING"))
        reply = s.recv(256)
        s.close()
    except OSError as e:
        sys.exit("redis at %s: %s" % (address, e))
    if not reply.startswith(b"+PONG"):
        sys.exit("redis at %s answered %s" % (address, reply.strip().decode(errors="replace")))
PY
}
