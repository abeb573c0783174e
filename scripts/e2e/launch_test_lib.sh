#!/usr/bin/env bash
# Helpers shared by the launch-script tests (launch_modes_test.sh, launch_ssh_test.sh); sourced,
# not run. The caller sets `config` (its cluster config path) and `passed=0` before using them.
# shellcheck disable=SC2154  # `config` is the caller's.

# Processes of the caller's cluster: tessera serve/worker with its config.
node_pids() { pgrep -f -- "tessera (serve|worker) .*--config $config" || true; }

pass() {
    passed=$((passed + 1))
    echo "ok: $*"
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    local port
    while :; do
        port=$((30000 + (RANDOM % 20000)))
        (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_until() {
    local tenths=$(($1 * 10))
    shift
    until "$@"; do
        tenths=$((tenths - 1))
        [ "$tenths" -gt 0 ] || return 1
        sleep 0.1
    done
}
