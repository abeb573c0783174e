#!/usr/bin/env bash
# `cluster/launch.sh ssh` for real: a private sshd on 127.0.0.1 (scripts/e2e/sshd_loopback.sh),
# three "hosts" node0..node2 that are ssh aliases of it, and the real tessera binary as head +
# two workers (one TP=4 group over 2 + 1 + 1 ranks of the tiny dummy model on the CPU).
# Checks, each bounded in time:
#   1. pre-flight refusals name the problem (hostfile vs cluster.nodes, missing binary, bad path);
#   2. --dry-run prints each node's command;
#   3. the launched cluster reports up and answers a completion; logs carry [nodeN HOST];
#      SIGKILL of one worker makes the launcher stop every node and exit 1 naming that node;
#   4. SIGTERM to the launcher drains the head and stops everything, exit 0;
#   5. SIGKILL of the launcher and its ssh clients still stops every node (the lifelines close).
# After each, no process of this test is left. Needs sshd (openssh-server), ssh, curl, python3.
# Usage: scripts/e2e/launch_ssh_test.sh [PATH_TO_TESSERA_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/e2e/sshd_loopback.sh
source scripts/e2e/sshd_loopback.sh
# shellcheck source=scripts/e2e/launch_test_lib.sh
source scripts/e2e/launch_test_lib.sh

bin=${1:-${CARGO_TARGET_DIR:-target}/debug/tessera}
[ -x "$bin" ] || { echo "no tessera binary at $bin (cargo build -p tessera-cli)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
"$bin" worker --help >/dev/null 2>&1 || { echo "$bin has no 'worker' command" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-launch-test.XXXXXX")
config=$tmp/cluster.toml
launcher=""
passed=0

cleanup() {
    local pid
    [ -z "$launcher" ] || kill -KILL "$launcher" 2>/dev/null || true
    for pid in $(node_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    sshd_loopback_stop "$tmp/ssh"
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for log in "$tmp"/launch*.log; do
        [ -e "$log" ] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
    done
    exit 1
}
launcher_gone() { ! kill -0 "$launcher" 2>/dev/null; }
no_nodes_left() { [ -z "$(node_pids)" ]; }
log_has() { grep -q -- "$2" "$1"; }

http_port=$(free_port)
cluster_port=$(free_port)
cat >"$config" <<EOF
device = "cpu"

[model]
load_format = "dummy"
dummy_shape = "tiny"

[parallel]
tensor_parallel_size = 4

[server]
host = "127.0.0.1"
port = $http_port
shutdown_timeout_ms = 5000

[cluster]
nodes = 3
listen = "127.0.0.1:$cluster_port"
ranks_per_node = [2, 1, 1]
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 2000
join_timeout_ms = 30000
# "wait": the head stays up when a worker dies, so the launcher is what stops every node (the
# behaviour under test). With "exit" the head's own exit races the worker's in the launcher's view
# and either may be named first.
on_node_failure = "wait"
EOF
export TESSERA_CLUSTER__COOKIE="launch-test cookie $RANDOM"
printf 'node0\nnode1  # a worker\n\nnode2\n' >"$tmp/hosts"
printf 'node0\nnode1\n' >"$tmp/hosts2"

sshd_loopback_start "$tmp/ssh" node0 node1 node2 || fail "could not start sshd on loopback"
launch=(cluster/launch.sh ssh --config "$config" --bin "$bin" --ssh-config "$tmp/ssh/ssh_config"
    --head-addr 127.0.0.1 --ready-timeout 60 --stop-timeout 10)

# 1. Pre-flight refusals.
status=0
"${launch[@]}" --hostfile "$tmp/hosts2" >"$tmp/out" 2>&1 || status=$?
expect_refusal() {
    [ "$status" -eq 1 ] || fail "$1: status $status (want 1): $(cat "$tmp/out")"
    log_has "$tmp/out" "$2" || fail "$1: no '$2' in: $(cat "$tmp/out")"
}
expect_refusal "a 2-host hostfile for 3 nodes" "lists 2 hosts but cluster.nodes = 3"
status=0
cluster/launch.sh ssh --hostfile "$tmp/hosts" --config "$config" --bin /nonexistent/tessera \
    --ssh-config "$tmp/ssh/ssh_config" >"$tmp/out" 2>&1 || status=$?
expect_refusal "a missing binary" "node 0 (node0): no tessera binary '/nonexistent/tessera'"
status=0
cluster/launch.sh ssh --hostfile "$tmp/hosts" --config cluster.toml >"$tmp/out" 2>&1 || status=$?
expect_refusal "a relative config path" "must be an absolute path"
pass "pre-flight refusals name the host and the problem"

# 2. Dry run.
"${launch[@]}" --hostfile "$tmp/hosts" --dry-run >"$tmp/out" 2>&1 || fail "dry run: $(cat "$tmp/out")"
log_has "$tmp/out" "node 2 (node2): $bin worker --join 127.0.0.1:$cluster_port --node-rank 2 --config $config" ||
    fail "dry run output: $(cat "$tmp/out")"
[ -z "$(node_pids)" ] || fail "the dry run started processes"
pass "--dry-run prints each node's command and starts nothing"

start_cluster() {
    local log=$1
    "${launch[@]}" --hostfile "$tmp/hosts" >"$log" 2>&1 &
    launcher=$!
    up_or_gone() { log_has "$log" "cluster up: 3 nodes" || launcher_gone; }
    wait_until 90 up_or_gone || true
    log_has "$log" "cluster up: 3 nodes" || fail "the cluster did not come up ($log)"
}

# 3. Up, serving, and a worker's death stops everything.
start_cluster "$tmp/launch1.log"
body='{"model":"tiny","prompt":"Hello from three processes","max_tokens":8,"temperature":0}'
reply=$(curl -sf -m 30 -H 'content-type: application/json' -d "$body" \
    "http://127.0.0.1:$http_port/v1/completions") || fail "the completion request failed"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["usage"]["completion_tokens"]==8, r' \
    "$reply" || fail "unexpected completion: $reply"
for n in 0 1 2; do
    log_has "$tmp/launch1.log" "^\[node$n node$n\] " || fail "no log lines prefixed [node$n node$n]"
done
pass "the cluster came up through ssh and answered a completion"

worker2=$(pgrep -f -- "tessera worker .*--node-rank 2 --config $config") || fail "no worker with rank 2"
kill -KILL "$worker2"
wait_until 30 launcher_gone || fail "the launcher still runs 30 s after worker 2 was killed"
status=0
wait "$launcher" || status=$?
launcher=""
[ "$status" -eq 1 ] || fail "launcher exit status $status after a worker died (want 1)"
log_has "$tmp/launch1.log" "node 2 (node2) exited with status 137" || fail "the launcher did not name node 2"
wait_until 15 no_nodes_left || fail "processes left after a worker died: $(node_pids)"
pass "a worker's death stops every node; the launcher exits 1 naming it"

# 4. SIGTERM to the launcher: the head drains, all stop, exit 0.
start_cluster "$tmp/launch2.log"
kill -TERM "$launcher"
wait_until 40 launcher_gone || fail "the launcher still runs 40 s after SIGTERM"
status=0
wait "$launcher" || status=$?
launcher=""
[ "$status" -eq 0 ] || fail "launcher exit status $status after SIGTERM (want 0)"
log_has "$tmp/launch2.log" "tessera-launch: stopped" || fail "no 'stopped' after SIGTERM"
wait_until 5 no_nodes_left || fail "processes left after SIGTERM: $(node_pids)"
pass "SIGTERM stops every node cleanly (exit 0)"

# 5. The launch machine goes away: SIGKILL to the launcher and its ssh clients. Every node's
#    lifeline closes while its stdout and stderr are broken pipes.
start_cluster "$tmp/launch3.log"
clients=$(pgrep -f -- "^ssh .*-F $tmp/ssh/ssh_config node[0-2] bash -s") || fail "no ssh clients found"
# shellcheck disable=SC2086 # one pid per word
{
    kill -KILL "$launcher" $clients
    wait "$launcher" || true
} 2>/dev/null
launcher=""
wait_until 30 no_nodes_left || fail "processes left 30 s after the launcher was killed: $(node_pids)"
pass "a killed launcher (and its ssh connections) leaves no node running"

echo "launch_ssh_test: $passed passed, 0 failed"
