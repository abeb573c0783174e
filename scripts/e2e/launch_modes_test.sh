#!/usr/bin/env bash
# cluster/launch.sh without a cluster: usage errors; the slurm and k8s modes with the variables
# Slurm and LeaderWorkerSet would set (scontrol is a stub); the k8s mode for real on loopback
# (three processes, a completion, SIGTERM to the leader stops all); and the shipped templates
# (cluster/examples, the ConfigMap in cluster/k8s/tessera-lws.yaml) accepted by the real binary.
# Needs curl and python3 with PyYAML.
# Usage: scripts/e2e/launch_modes_test.sh [PATH_TO_TESSERA_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/e2e/launch_test_lib.sh
source scripts/e2e/launch_test_lib.sh

bin=${1:-${CARGO_TARGET_DIR:-target}/debug/tessera}
[ -x "$bin" ] || { echo "no tessera binary at $bin (cargo build -p tessera-cli)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
python3 -c 'import yaml' 2>/dev/null || { echo "python3 needs PyYAML (pip install pyyaml)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-modes-test.XXXXXX")
config=$tmp/cluster.toml
passed=0
cleanup() {
    local pid
    for pid in $(node_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for log in "$tmp"/*.log; do
        [ -e "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
    done
    exit 1
}

# expect STATUS TEXT -- ENV... COMMAND...: runs COMMAND under `env -i` plus ENV (so no variable of
# this shell leaks in) and checks its exit status and that TEXT is in its output.
expect() {
    local want=$1 text=$2 status=0
    shift 3
    env -i PATH="$tmp/bin:$PATH" HOME="$HOME" TESSERA_CLUSTER__COOKIE=test-cookie "$@" \
        >"$tmp/out" 2>&1 || status=$?
    [ "$status" -eq "$want" ] || fail "$*: status $status (want $want): $(cat "$tmp/out")"
    grep -qF -- "$text" "$tmp/out" || fail "$*: no '$text' in: $(cat "$tmp/out")"
}

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
join_timeout_ms = 30000
on_node_failure = "exit"
EOF
launch=cluster/launch.sh

# Usage errors: exit 2 and say what is wrong.
expect 2 "name a mode" -- "$launch"
expect 2 "unknown mode 'mpi'" -- "$launch" mpi --config "$config"
expect 2 "--config FILE is required" -- "$launch" k8s
expect 2 "--hostfile is only for the ssh mode" -- "$launch" k8s --config "$config" --hostfile x
expect 2 "--ready-timeout takes whole seconds" -- "$launch" ssh --config "$config" --ready-timeout 1m
expect 2 "the ssh mode needs --hostfile" -- "$launch" ssh --config "$config"
expect 0 "Usage:" -- "$launch" --help
pass "usage errors exit 2 and name the problem"

# Slurm: a stub scontrol expands the node list the way the real one does.
mkdir -p "$tmp/bin"
cat >"$tmp/bin/scontrol" <<'EOF'
#!/usr/bin/env bash
[ "$1 $2 $3" = "show hostnames gpu[07-09]" ] || { echo "stub scontrol: unexpected '$*'" >&2; exit 1; }
printf 'gpu07\ngpu08\ngpu09\n'
EOF
chmod +x "$tmp/bin/scontrol"
slurm=(SLURM_JOB_NODELIST="gpu[07-09]" SLURM_NTASKS=3)
expect 1 "SLURM_NODEID is not set" -- "${slurm[@]}" "$launch" slurm --config "$config" --bin "$bin"
expect 0 "$bin serve --config $config" -- \
    "${slurm[@]}" SLURM_NODEID=0 "$launch" slurm --config "$config" --bin "$bin" --dry-run
expect 0 "$bin worker --join gpu07:$cluster_port --node-rank 2 --config $config" -- \
    "${slurm[@]}" SLURM_NODEID=2 "$launch" slurm --config "$config" --bin "$bin" --dry-run
expect 0 "worker --join 10.0.0.7:$cluster_port --node-rank 1" -- "${slurm[@]}" SLURM_NODEID=1 \
    "$launch" slurm --config "$config" --bin "$bin" --head-addr 10.0.0.7 --dry-run
expect 1 "srun started 6 tasks on 3 nodes" -- SLURM_JOB_NODELIST="gpu[07-09]" SLURM_NTASKS=6 \
    SLURM_NODEID=1 "$launch" slurm --config "$config" --bin "$bin" --dry-run
expect 1 "the Slurm step has 3 nodes (gpu[07-09]) but cluster.nodes = 2" -- "${slurm[@]}" \
    SLURM_NODEID=1 TESSERA_CLUSTER__NODES=2 TESSERA_CLUSTER__RANKS_PER_NODE=2,2 \
    "$launch" slurm --config "$config" --bin "$bin" --dry-run
expect 1 "no tessera binary '/nonexistent/tessera'" -- "${slurm[@]}" SLURM_NODEID=1 \
    "$launch" slurm --config "$config" --bin /nonexistent/tessera
pass "slurm mode: rank from SLURM_NODEID, head from the node list, mismatches refused"

# k8s: what a LeaderWorkerSet sets.
lws=(LWS_LEADER_ADDRESS=tessera-0.tessera.default LWS_GROUP_SIZE=3)
expect 1 "LWS_WORKER_INDEX is not set" -- "${lws[@]}" "$launch" k8s --config "$config" --bin "$bin"
expect 0 "$bin worker --join tessera-0.tessera.default:$cluster_port --node-rank 2 --config $config" -- \
    "${lws[@]}" LWS_WORKER_INDEX=2 "$launch" k8s --config "$config" --bin "$bin" --dry-run
expect 1 "LWS_GROUP_SIZE=4 (leaderWorkerTemplate.size) but cluster.nodes = 3" -- \
    LWS_LEADER_ADDRESS=x LWS_GROUP_SIZE=4 LWS_WORKER_INDEX=1 "$launch" k8s --config "$config" --bin "$bin"
expect 1 "node rank '3' is not in 0..2" -- "${lws[@]}" LWS_WORKER_INDEX=3 \
    "$launch" k8s --config "$config" --bin "$bin" --dry-run
expect 1 "the head's address 'no-such-host.invalid' did not resolve within 1s" -- \
    LWS_LEADER_ADDRESS=no-such-host.invalid LWS_GROUP_SIZE=3 LWS_WORKER_INDEX=1 \
    TESSERA_CLUSTER__JOIN_TIMEOUT_MS=500 "$launch" k8s --config "$config" --bin "$bin"
pass "k8s mode: leader serves, workers join LWS_LEADER_ADDRESS (once it resolves), group size checked"

# k8s for real on loopback: three pods' worth of processes, the leader found by name.
pods=()
for index in 0 1 2; do
    env LWS_LEADER_ADDRESS=localhost LWS_GROUP_SIZE=3 LWS_WORKER_INDEX=$index \
        TESSERA_CLUSTER__COOKIE=loopback-cookie "$launch" k8s --config "$config" --bin "$bin" \
        >"$tmp/pod$index.log" 2>&1 &
    pods+=($!)
done
ready() { curl -sf -m 2 "http://127.0.0.1:$http_port/ready" >/dev/null; }
wait_until 60 ready || fail "the k8s-mode cluster did not become ready"
body='{"model":"tiny","prompt":"Hello from pods","max_tokens":4,"temperature":0}'
reply=$(curl -sf -m 30 -H 'content-type: application/json' -d "$body" \
    "http://127.0.0.1:$http_port/v1/completions") || fail "completion through the k8s-mode cluster failed"
grep -q '"completion_tokens":4' <<<"$reply" || fail "unexpected completion: $reply"
kill -TERM "${pods[0]}"
gone() { ! kill -0 "${pods[0]}" 2>/dev/null && ! kill -0 "${pods[1]}" 2>/dev/null && ! kill -0 "${pods[2]}" 2>/dev/null; }
wait_until 30 gone || fail "pods still running 30 s after SIGTERM to the leader: $(node_pids)"
status=0
wait "${pods[0]}" || status=$?
[ "$status" -eq 0 ] || fail "the leader exited with $status after SIGTERM (want 0)"
pass "k8s mode on loopback: up, serves, SIGTERM to the leader stops every node"

# The shipped templates are valid configs for this binary.
for example in cluster/examples/*.toml; do
    TESSERA_CLUSTER__COOKIE=x "$bin" --config "$example" config show >/dev/null ||
        fail "$example is not a valid config"
done
python3 - "$tmp/lws.toml" "$tmp/lws.size" <<'EOF' || fail "cluster/k8s/tessera-lws.yaml"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open("cluster/k8s/tessera-lws.yaml"))}
open(sys.argv[1], "w").write(docs["ConfigMap"]["data"]["cluster.toml"])
lws = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
for role in ("leaderTemplate", "workerTemplate"):
    pod = lws[role]["spec"]
    command = pod["containers"][0]["command"]
    assert command[1:4] == ["k8s", "--config", "/etc/tessera/cluster.toml"], (role, command)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["config"] == "/etc/tessera", (role, mounts)
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "TESSERA_CLUSTER__COOKIE" in env, (role, env)
open(sys.argv[2], "w").write(str(lws["size"]))
EOF
size=$(cat "$tmp/lws.size")
TESSERA_CLUSTER__COOKIE=x "$bin" --config "$tmp/lws.toml" config show >"$tmp/lws.show" ||
    fail "the ConfigMap's cluster.toml is not a valid config"
grep -qx "nodes = $size" "$tmp/lws.show" || fail "leaderWorkerTemplate.size $size != the ConfigMap's cluster.nodes"
pass "cluster/examples and the LeaderWorkerSet's config are valid; size matches cluster.nodes"

echo "launch_modes_test: $passed passed, 0 failed"
