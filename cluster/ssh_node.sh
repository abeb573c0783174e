# shellcheck shell=bash
# The part of `cluster/launch.sh ssh` that runs on each host. It is never copied there: launch.sh
# streams this file into `bash -s` over ssh, followed by the node's environment (exports, so
# secrets such as the cluster cookie never appear in a command line) and one call of
# tessera_node, and then keeps that ssh's standard input open without writing to it.
#
# The open stdin is the node's lifeline. When it closes (the launcher stops the cluster, is
# killed, even with SIGKILL, or loses the connection), the node's process gets SIGTERM, and
# SIGKILL if it has not exited after the grace period. So no launch leaves a process behind.

readonly TESSERA_READY_MARKER="tessera-launch: head ready at"

# Prints the HTTP status of GET PATH on HOST:PORT, or nothing if it cannot connect. Plain bash
# (/dev/tcp), so the hosts need no curl. Sends the first key of TESSERA_SERVER__API_KEYS, if set,
# because /ready sits behind the API key like every route but /health.
tessera_http_status() {
    local host=$1 port=$2 path=$3 auth="" status=""
    if [ -n "${TESSERA_SERVER__API_KEYS:-}" ]; then
        auth="Authorization: Bearer ${TESSERA_SERVER__API_KEYS%%,*}"$'\r\n'
    fi
    { exec 4<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 0
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$path" "$host" "$auth" >&4
    IFS=' ' read -r -t 5 _ status _ <&4 || true
    exec 4<&-
    printf '%s' "$status"
}

# Polls the head's /ready until it answers 200 and then prints the marker line that the launcher
# waits for. Gives up silently when the head process is gone (the launcher reports that).
tessera_wait_ready() {
    local host=$1 port=$2 pid=$3 status said_401=""
    while kill -0 "$pid" 2>/dev/null; do
        status=$(tessera_http_status "$host" "$port" /ready)
        if [ "$status" = 200 ]; then
            echo "$TESSERA_READY_MARKER http://$host:$port"
            return 0
        fi
        if [ "$status" = 401 ] && [ -z "$said_401" ]; then
            echo "tessera-launch: /ready answers 401: export TESSERA_SERVER__API_KEYS on the launch host" \
                "(it is forwarded) so the launcher can see when the head is ready" >&2
            said_401=1
        fi
        sleep 1
    done
}

# tessera_node ROLE GRACE_S READY_HOST READY_PORT -- COMMAND...
# Runs COMMAND (the head's `tessera serve` or a `tessera worker`) until it exits or the launcher's
# stdin closes; returns its exit status. For the head, also reports when /ready turns 200.
tessera_node() {
    local role=$1 grace_s=$2 ready_host=$3 ready_port=$4 child watcher poller=""
    shift 4
    [ "${1:-}" = -- ] && shift
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "tessera-launch: $HOSTNAME: no executable '$1' (pass --bin with its path on this host)" >&2
        return 127
    fi
    "$@" </dev/null &
    child=$!
    echo "tessera-launch: $HOSTNAME: started $role (pid $child): $*" >&2
    # Asynchronous commands get /dev/null as stdin, so the watcher reads the lifeline through fd 3.
    exec 3<&0
    (
        # If the connection dropped, stdout and stderr are broken pipes: a message must not kill
        # the watcher before it has stopped the process.
        trap '' PIPE
        while IFS= read -r _ <&3; do :; done
        kill -TERM "$child" 2>/dev/null || exit 0
        echo "tessera-launch: $HOSTNAME: launcher gone or stopping; sent SIGTERM to $role (pid $child)" >&2
        local tenths=0
        while kill -0 "$child" 2>/dev/null; do
            if [ "$tenths" -ge $((grace_s * 10)) ]; then
                kill -KILL "$child" 2>/dev/null
                echo "tessera-launch: $HOSTNAME: $role still running after ${grace_s}s; sent SIGKILL" >&2
                exit 0
            fi
            sleep 0.1
            tenths=$((tenths + 1))
        done
    ) &
    watcher=$!
    exec 3<&-
    if [ "$role" = head ]; then
        tessera_wait_ready "$ready_host" "$ready_port" "$child" &
        poller=$!
    fi
    local status=0
    wait "$child" || status=$?
    kill "$watcher" ${poller:+"$poller"} 2>/dev/null || true
    echo "tessera-launch: $HOSTNAME: $role exited with status $status" >&2
    return "$status"
}
