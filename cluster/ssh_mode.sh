# shellcheck shell=bash
# `cluster/launch.sh ssh`, sourced by launch.sh (which holds the flags, SETTINGS and node_command).
#
# One ssh connection per node runs `bash -s` fed with cluster/ssh_node.sh and that node's
# environment and command. The connection's stdin is a FIFO whose only writer is this launcher:
# closing it, or this process dying in any way, makes the node stop its process (ssh_node.sh).
# Node 0 is the head; its log carries a marker line when its /ready turns 200.

# shellcheck source=cluster/ssh_node.sh
source "$CLUSTER_DIR/ssh_node.sh"

HOSTS=() SSH_ARGS=() PIDS=() LIFELINES=() WORK="" STOP_SIGNAL="" NODE_STATUS="" HEAD_STATUS=""

read_hostfile() {
    local line n=0
    local -a fields
    [ -r "$HOSTFILE" ] || die "cannot read the hostfile $HOSTFILE"
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%%#*}
        read -r -a fields <<<"$line"
        [ ${#fields[@]} -gt 0 ] || continue
        [ ${#fields[@]} -eq 1 ] || die "$HOSTFILE line $n: one host per line, got '${fields[*]}'"
        HOSTS+=("${fields[0]}")
    done <"$HOSTFILE"
    [ ${#HOSTS[@]} -gt 0 ] || die "$HOSTFILE lists no hosts (one per line, the head first)"
}

# Paths are opened on other machines, where a relative path would mean something else.
check_paths() {
    [[ $CONFIG == /* ]] || die "--config must be an absolute path: it is opened on every host ('$CONFIG')"
    [[ $BIN == /* || $BIN != */* ]] ||
        die "--bin must be an absolute path or a name on the hosts' PATH ('$BIN')"
}

# The variables every node gets, as `export` lines read by the remote bash (never in argv).
write_env_prelude() {
    local name kv
    while IFS= read -r name; do
        case $name in
            TESSERA_NODE_RANK) ;;
            TESSERA_* | NCCL_* | RUST_LOG | RUST_BACKTRACE) printf 'export %s=%q\n' "$name" "${!name}" ;;
        esac
    done < <(compgen -e)
    for kv in "${EXTRA_ENV[@]}"; do
        [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes NAME=VALUE, not '$kv'"
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
}

# Runs one command on HOST (stdin: the env prelude, then `exec COMMAND`).
remote_run() {
    local host=$1
    shift
    { cat "$WORK/env.sh" && printf 'exec' && printf ' %q' "$@" && echo; } |
        ssh "${SSH_ARGS[@]}" "$host" bash -s
}

# The gist of a failed command's stderr: tessera's "Error: ..." lines without the backtrace that
# RUST_BACKTRACE adds, or else the last lines (ssh's or bash's complaint).
error_message() {
    if grep -q '^Error: ' "$1"; then
        sed -n '/^Error: /,/^Stack backtrace:/p' "$1" | grep -v '^Stack backtrace:' | grep -v '^$' | head -n 8
    else
        tail -n 5 "$1"
    fi
}

# Pre-flight from the launcher: every host answers over ssh, has the binary, and accepts the
# config with the same cluster.nodes as the head. (The head's own pre-flight then checks
# versions, config hashes, models, devices and a collective before any weight is loaded.)
preflight() {
    local i status err
    say "checking ${#HOSTS[@]} hosts: ssh, $BIN, $CONFIG"
    for i in "${!HOSTS[@]}"; do
        remote_run "${HOSTS[i]}" "$BIN" --config "$CONFIG" config show \
            >"$WORK/config.$i" 2>"$WORK/config.$i.err" &
        PIDS[i]=$!
    done
    for i in "${!HOSTS[@]}"; do
        status=0
        wait "${PIDS[i]}" || status=$?
        [ "$status" -eq 0 ] && continue
        err=$(error_message "$WORK/config.$i.err")
        case $status in
            255) die "node $i (${HOSTS[i]}): ssh failed: $err" ;;
            126 | 127) die "node $i (${HOSTS[i]}): no tessera binary '$BIN' there: $err" ;;
            *) die "node $i (${HOSTS[i]}): $BIN rejected $CONFIG (status $status): $err" ;;
        esac
    done
    PIDS=()
    parse_settings <"$WORK/config.0"
    read_layout "$CONFIG on ${HOSTS[0]}"
    [ "$NODES" -eq ${#HOSTS[@]} ] ||
        die "$HOSTFILE lists ${#HOSTS[@]} hosts but cluster.nodes = $NODES ($CONFIG on ${HOSTS[0]})"
    local head_nodes=$NODES
    for i in "${!HOSTS[@]}"; do
        SETTINGS=()
        parse_settings <"$WORK/config.$i"
        [ "${SETTINGS[cluster.nodes]:-1}" = "$head_nodes" ] ||
            die "node $i (${HOSTS[i]}) reads cluster.nodes = ${SETTINGS[cluster.nodes]:-1} from $CONFIG;" \
                "the head reads $head_nodes: the config files differ"
    done
    parse_settings <"$WORK/config.0"
}

# Where the head itself polls /ready: its listen address, or loopback for a wildcard one.
ready_host() {
    case $HTTP_HOST in
        0.0.0.0 | "") echo 127.0.0.1 ;;
        :: | "[::]") echo ::1 ;;
        *) echo "$HTTP_HOST" ;;
    esac
}

# Copies a node's output to ours, each line prefixed; the head's ready marker touches $WORK/ready.
# Ignores SIGINT so that a Ctrl-C still shows the nodes' drain logs.
prefix_lines() {
    local label=$1 index=$2 line
    trap '' INT
    while IFS= read -r line || [ -n "$line" ]; do
        if [ "$index" -eq 0 ] && [[ $line == "$TESSERA_READY_MARKER"* ]]; then
            : >"$WORK/ready"
        fi
        printf '%s %s\n' "$label" "$line"
    done
}

start_node() {
    local i=$1 role=$2 host=${HOSTS[$1]} fifo=$WORK/lifeline.$1 fd
    shift 2
    mkfifo "$fifo"
    {
        cat "$CLUSTER_DIR/ssh_node.sh" "$WORK/env.sh"
        # One line: bash -s reads the next line only after this one finished, and nothing follows.
        printf 'tessera_node %q %q %q %q --' "$role" "$STOP_TIMEOUT" "$(ready_host)" "$HTTP_PORT"
        printf ' %q' "$@"
        printf '; exit $?\n'
    } >"$WORK/payload.$i"
    (
        # Only the launcher may hold a node's lifeline, or that node would outlive it.
        for fd in "${LIFELINES[@]}"; do exec {fd}>&-; done
        # Its own session: a Ctrl-C reaches the launcher, which stops the head first.
        session=()
        if command -v setsid >/dev/null 2>&1; then session=(setsid); fi
        exec "${session[@]}" ssh "${SSH_ARGS[@]}" "$host" bash -s <"$fifo" \
            > >(prefix_lines "[node$i $host]" "$i") 2>&1
    ) &
    PIDS[i]=$!
    # Read-write, so the open never blocks on the reader.
    exec {fd}<>"$fifo"
    LIFELINES[i]=$fd
    cat "$WORK/payload.$i" >&"$fd"
}

close_lifeline() {
    local fd=${LIFELINES[$1]:-}
    [ -n "$fd" ] || return 0
    exec {fd}>&-
    unset 'LIFELINES[$1]'
}

# Waits up to S seconds for node I's ssh to end. Sets NODE_STATUS to its exit status, or to ""
# when it is still running (or was reaped before). No subshells here: they would close and wait
# on copies of the launcher's descriptors and children.
wait_node() {
    local i=$1 tenths=$(($2 * 10)) status=0
    NODE_STATUS=""
    [ -n "${PIDS[i]:-}" ] || return 0
    while kill -0 "${PIDS[i]}" 2>/dev/null && [ "$tenths" -gt 0 ]; do
        # A Ctrl-C kills sleep too; that must not end the launcher (set -e) mid-stop.
        sleep 0.1 || true
        tenths=$((tenths - 1))
    done
    kill -0 "${PIDS[i]}" 2>/dev/null && return 0
    wait "${PIDS[i]}" || status=$?
    unset 'PIDS[i]'
    NODE_STATUS=$status
}

# The head first: it drains in-flight requests and then tells the workers to exit. Then every
# worker's lifeline closes too (SIGTERM there if it is still running). Sets HEAD_STATUS.
stop_nodes() {
    local i
    close_lifeline 0
    wait_node 0 $((STOP_TIMEOUT + 10))
    HEAD_STATUS=$NODE_STATUS
    for i in "${!LIFELINES[@]}"; do close_lifeline "$i"; done
    for i in "${!PIDS[@]}"; do
        wait_node "$i" $((STOP_TIMEOUT + 10))
        if [ -z "$NODE_STATUS" ]; then
            say "node $i (${HOSTS[i]}) did not stop; closing its ssh connection"
            kill "${PIDS[i]}" 2>/dev/null || true
        fi
    done
}

on_exit() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -z "$WORK" ] || rm -rf "$WORK"
}

# How long the launcher waits, once a node has ended, for others that end with it.
EXIT_SETTLE_S=1

# Reaps every node whose ssh has ended and names them all in one line.
report_exits() {
    local i status ended=""
    for i in "${!PIDS[@]}"; do
        kill -0 "${PIDS[i]}" 2>/dev/null && continue
        status=0
        wait "${PIDS[i]}" || status=$?
        unset 'PIDS[i]'
        close_lifeline "$i"
        [ "$status" -ne 255 ] || status="255 (ssh failed or the connection dropped)"
        ended+="${ended:+; }node $i (${HOSTS[i]}) exited with status $status"
    done
    say "$ended: stopping every node"
}

# Until a node exits, a signal arrives, or the head is not ready in time.
monitor() {
    local deadline=$((SECONDS + READY_TIMEOUT)) up="" i status
    while :; do
        if [ -n "$STOP_SIGNAL" ]; then
            say "SIG$STOP_SIGNAL: stopping the cluster (the head drains first)"
            stop_nodes
            [ "$HEAD_STATUS" = 0 ] || die "the head exited with status ${HEAD_STATUS:-unknown} while stopping"
            say "stopped"
            exit 0
        fi
        for i in "${!PIDS[@]}"; do
            kill -0 "${PIDS[i]}" 2>/dev/null && continue
            # One node's end often ends others (a lost worker stops a head configured with
            # on_node_failure = "exit", a lost head its workers), and which ssh the launcher sees
            # end first is a race: wait a moment and name every node that ended, not only the
            # first one seen.
            sleep "$EXIT_SETTLE_S" || true
            report_exits
            stop_nodes
            exit 1
        done
        if [ -z "$up" ] && [ -e "$WORK/ready" ]; then
            up=1
            say "cluster up: $NODES nodes; the API is on ${HOSTS[0]} at http://$HTTP_HOST:$HTTP_PORT" \
                "(Ctrl-C or SIGTERM stops every node)"
        fi
        if [ -z "$up" ] && [ "$SECONDS" -ge "$deadline" ]; then
            say "the head's /ready did not turn 200 within ${READY_TIMEOUT}s: stopping every node"
            stop_nodes
            exit 1
        fi
        sleep 0.2 || true
    done
}

ssh_mode() {
    [ -n "$HOSTFILE" ] || usage_error "the ssh mode needs --hostfile FILE (one host per line, the head first)"
    read_hostfile
    check_paths
    need_cmd ssh "the ssh mode starts every node over ssh"
    need_cmd mkfifo "the ssh mode keeps one FIFO per node"
    SSH_ARGS=(-T -o BatchMode=yes)
    [ -z "$SSH_CONFIG" ] || SSH_ARGS+=(-F "$SSH_CONFIG")
    local opt
    for opt in "${SSH_OPTS[@]}"; do SSH_ARGS+=(-o "$opt"); done

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-launch.XXXXXX")
    trap on_exit EXIT
    write_env_prelude >"$WORK/env.sh"
    preflight
    local head=${HEAD_ADDR:-${HOSTS[0]#*@}} i
    if [ -n "$DRY_RUN" ]; then
        for i in "${!HOSTS[@]}"; do
            node_command "$i" "$head"
            printf 'node %d (%s):' "$i" "${HOSTS[i]}"
            printf ' %q' "${NODE_CMD[@]}"
            echo
        done
        exit 0
    fi

    trap 'STOP_SIGNAL=INT' INT
    trap 'STOP_SIGNAL=TERM' TERM
    trap 'STOP_SIGNAL=HUP' HUP
    for i in "${!HOSTS[@]}"; do
        node_command "$i" "$head"
        start_node "$i" "$([ "$i" -eq 0 ] && echo head || echo worker)" "${NODE_CMD[@]}"
    done
    say "started ${#HOSTS[@]} nodes; waiting up to ${READY_TIMEOUT}s for the head's /ready"
    monitor
}
