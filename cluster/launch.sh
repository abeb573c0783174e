#!/usr/bin/env bash
# Starts a multi-node Tessera deployment from one config file: the head (`tessera serve`: HTTP API,
# scheduler, coordinator and its local ranks) and a `tessera worker` on every other node.
# docs/multi-node.md explains the cluster, the config and each mode. Needs bash 4.4 or newer.
set -euo pipefail

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<'EOF'
Usage:
  cluster/launch.sh ssh   --hostfile FILE --config FILE [options]
      From any machine that reaches every host by ssh (keys, no passwords). The first host in
      FILE is the head. Nothing is copied: the binary and config must be at the same paths on
      every host. Checks every host, starts the head and the workers, prefixes their logs with
      [nodeN HOST], reports when the head's /ready turns 200, and stops every node when one
      exits or on Ctrl-C / SIGTERM (the head first, so it drains in-flight requests).
  cluster/launch.sh slurm --config FILE [options]
      As every task of `srun --ntasks-per-node=1` in an allocation (see cluster/slurm/): the node
      rank is SLURM_NODEID and the head is the first host of the step's node list.
  cluster/launch.sh k8s   --config FILE [options]
      As the container command in a LeaderWorkerSet pod (see cluster/k8s/): the leader
      (LWS_WORKER_INDEX=0) serves, the others join LWS_LEADER_ADDRESS; LWS_GROUP_SIZE must equal
      cluster.nodes.

Options (every mode):
  --config FILE        Tessera config with a [cluster] section (an absolute path in ssh mode)
  --bin PATH           the tessera binary on the nodes (default: tessera, found on PATH)
  --head-addr ADDR     address the workers use to reach the head (ssh: the head's host name in
                       the hostfile; slurm: the first node's host name; k8s: LWS_LEADER_ADDRESS)
  --dry-run            check everything, print the commands each node would run, start nothing
  -h, --help           this text
Options (ssh mode):
  --hostfile FILE      one host per line ([user@]host or an ssh alias); '#' starts a comment
  --ssh-config FILE    ssh client config (ssh -F FILE)
  --ssh-opt OPTION     an ssh option such as Port=2222 (ssh -o OPTION); may be repeated
  --env NAME=VALUE     set a variable on every node; may be repeated. TESSERA_*, NCCL_*,
                       RUST_LOG and RUST_BACKTRACE of this shell are forwarded as they are
                       (through ssh's stdin, never on a command line), except TESSERA_NODE_RANK.
  --ready-timeout S    how long to wait for the head's /ready (default 900)
  --stop-timeout S     grace a node gets after SIGTERM before SIGKILL (default 45; the head's
                       server.shutdown_timeout_ms is 30 s by default)

Exit status: 0 when the cluster was stopped by a signal and the head drained cleanly (or, with
--dry-run, when every check passed); 1 when a check failed, a node exited on its own, or the head
did not become ready in time; 2 for a usage error.
EOF
}

say() { echo "tessera-launch: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
usage_error() {
    say "error: $*"
    say "run '$0 --help' for usage"
    exit 2
}
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

MODE="" CONFIG="" BIN=tessera HEAD_ADDR="" DRY_RUN="" HOSTFILE="" SSH_CONFIG=""
READY_TIMEOUT=900 STOP_TIMEOUT=45
SSH_OPTS=() EXTRA_ENV=()

parse_args() {
    [ $# -gt 0 ] || usage_error "name a mode: ssh, slurm or k8s"
    case $1 in
        -h | --help) usage && exit 0 ;;
        ssh | slurm | k8s) MODE=$1 ;;
        *) usage_error "unknown mode '$1' (ssh, slurm or k8s)" ;;
    esac
    shift
    while [ $# -gt 0 ]; do
        case $1 in
            -h | --help) usage && exit 0 ;;
            --dry-run) DRY_RUN=1 && shift && continue ;;
        esac
        [ $# -ge 2 ] || usage_error "$1 needs a value"
        case $1 in
            --config) CONFIG=$2 ;;
            --bin) BIN=$2 ;;
            --head-addr) HEAD_ADDR=$2 ;;
            --hostfile) HOSTFILE=$2 ;;
            --ssh-config) SSH_CONFIG=$2 ;;
            --ssh-opt) SSH_OPTS+=("$2") ;;
            --env) EXTRA_ENV+=("$2") ;;
            --ready-timeout) READY_TIMEOUT=$2 ;;
            --stop-timeout) STOP_TIMEOUT=$2 ;;
            *) usage_error "unknown option '$1'" ;;
        esac
        shift 2
    done
    [ -n "$CONFIG" ] || usage_error "--config FILE is required (the cluster's config file)"
    is_uint "$READY_TIMEOUT" || usage_error "--ready-timeout takes whole seconds, not '$READY_TIMEOUT'"
    is_uint "$STOP_TIMEOUT" || usage_error "--stop-timeout takes whole seconds, not '$STOP_TIMEOUT'"
    if [ "$MODE" != ssh ]; then
        local flag
        for flag in HOSTFILE SSH_CONFIG; do
            [ -z "${!flag}" ] || usage_error "--$(tr 'A-Z_' 'a-z-' <<<"$flag") is only for the ssh mode"
        done
        [ ${#SSH_OPTS[@]} -eq 0 ] || usage_error "--ssh-opt is only for the ssh mode"
        [ ${#EXTRA_ENV[@]} -eq 0 ] || usage_error "--env is only for the ssh mode (set the variables in the job or pod)"
    fi
}

# The effective config, as `tessera config show` prints it (TOML), flattened to
# SETTINGS[section.key]=value. Only scalars are read; that is all the launcher needs.
declare -A SETTINGS=()
parse_settings() {
    local line section="" value
    while IFS= read -r line; do
        if [[ $line =~ ^\[([A-Za-z0-9_.]+)\]$ ]]; then
            section=${BASH_REMATCH[1]}.
        elif [[ $line =~ ^([A-Za-z0-9_]+)\ =\ (.*)$ ]]; then
            value=${BASH_REMATCH[2]}
            value=${value#\"}
            SETTINGS[$section${BASH_REMATCH[1]}]=${value%\"}
        fi
    done
}

# Sets NODES, CLUSTER_PORT, HTTP_HOST and HTTP_PORT from SETTINGS. $1 names where the config was
# read, for messages.
read_layout() {
    local where=$1 listen
    HTTP_PORT=${SETTINGS[server.port]:-}
    is_uint "$HTTP_PORT" || die "$where: 'config show' printed no server.port: is $BIN a tessera binary?"
    HTTP_HOST=${SETTINGS[server.host]:-127.0.0.1}
    NODES=${SETTINGS[cluster.nodes]:-1}
    if ! is_uint "$NODES" || [ "$NODES" -lt 1 ]; then
        die "$where: cluster.nodes is '$NODES', not a count"
    fi
    listen=${SETTINGS[cluster.listen]:-0.0.0.0:7450}
    CLUSTER_PORT=${listen##*:}
    is_uint "$CLUSTER_PORT" || die "$where: cluster.listen '$listen' has no port"
}

# Reads the config with the binary on this machine (slurm and k8s modes run on the node itself).
load_local_settings() {
    local out
    command -v "$BIN" >/dev/null 2>&1 || die "no tessera binary '$BIN' on $HOSTNAME (pass --bin PATH)"
    [ -r "$CONFIG" ] || die "cannot read the config file $CONFIG on $HOSTNAME"
    out=$("$BIN" --config "$CONFIG" config show) || die "$BIN rejected $CONFIG (message above)"
    parse_settings <<<"$out"
    read_layout "$CONFIG on $HOSTNAME"
}

# HOST:PORT for --join, with brackets around an IPv6 address.
join_address() {
    if [[ $1 == *:* && $1 != \[* ]]; then
        printf '[%s]:%s' "$1" "$2"
    else
        printf '%s:%s' "$1" "$2"
    fi
}

# NODE_CMD: the command of node RANK (0 = head) joining HEAD.
node_command() {
    local rank=$1 head=$2
    if ! is_uint "$rank" || [ "$rank" -ge "$NODES" ]; then
        die "node rank '$rank' is not in 0..$((NODES - 1)) (cluster.nodes = $NODES)"
    fi
    if [ "$rank" -eq 0 ]; then
        NODE_CMD=("$BIN" serve --config "$CONFIG")
    else
        [ -n "$head" ] || die "no head address for node $rank to join"
        NODE_CMD=("$BIN" worker --join "$(join_address "$head" "$CLUSTER_PORT")" --node-rank "$rank"
            --config "$CONFIG")
    fi
}

# In Kubernetes the leader's name resolves only once its pod has an address, which can be after
# a worker pod starts; `tessera worker` retries connecting, not resolving. So a worker waits here
# for the name, up to cluster.join_timeout_ms (the head waits that long for it too).
wait_for_head_name() {
    local name=$1 timeout_s deadline
    command -v getent >/dev/null 2>&1 || return 0
    timeout_s=$(((${SETTINGS[cluster.join_timeout_ms]:-300000} + 999) / 1000))
    deadline=$((SECONDS + timeout_s))
    until getent hosts "$name" >/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "the head's address '$name' did not resolve within ${timeout_s}s (cluster.join_timeout_ms)"
        [ $((SECONDS % 10)) -ne 0 ] || say "waiting for the head's address '$name' to resolve"
        sleep 1
    done
}

# Replaces this shell with node RANK's process, so it gets the scheduler's signals directly.
exec_node() {
    node_command "$1" "$2"
    say "node $1 of $NODES on $HOSTNAME: ${NODE_CMD[*]}"
    if [ -n "$DRY_RUN" ]; then
        printf '%q ' "${NODE_CMD[@]}"
        echo
        exit 0
    fi
    [ "$1" -eq 0 ] || wait_for_head_name "$2"
    exec "${NODE_CMD[@]}"
}

slurm_mode() {
    local rank=${SLURM_NODEID:-} list=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}} out
    [ -n "$rank" ] || die "SLURM_NODEID is not set: run this as an srun task inside an allocation" \
        "(see cluster/slurm/tessera.sbatch)"
    [ -n "$list" ] || die "neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set: run this under srun"
    need_cmd scontrol "the slurm mode expands the node list with 'scontrol show hostnames'"
    out=$(scontrol show hostnames "$list") || die "scontrol show hostnames '$list' failed"
    local hosts
    mapfile -t hosts <<<"$out"
    local tasks=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-${#hosts[@]}}}
    [ "$tasks" = "${#hosts[@]}" ] ||
        die "srun started $tasks tasks on ${#hosts[@]} nodes: start one per node (srun --ntasks-per-node=1)"
    load_local_settings
    [ "$NODES" = "${#hosts[@]}" ] ||
        die "the Slurm step has ${#hosts[@]} nodes ($list) but cluster.nodes = $NODES in $CONFIG"
    exec_node "$rank" "${HEAD_ADDR:-${hosts[0]}}"
}

k8s_mode() {
    local var
    for var in LWS_WORKER_INDEX LWS_GROUP_SIZE LWS_LEADER_ADDRESS; do
        [ -n "${!var:-}" ] || die "$var is not set: the k8s mode runs in a LeaderWorkerSet pod" \
            "(see cluster/k8s/tessera-lws.yaml)"
    done
    load_local_settings
    [ "$LWS_GROUP_SIZE" = "$NODES" ] ||
        die "LWS_GROUP_SIZE=$LWS_GROUP_SIZE (leaderWorkerTemplate.size) but cluster.nodes = $NODES in $CONFIG"
    exec_node "$LWS_WORKER_INDEX" "${HEAD_ADDR:-$LWS_LEADER_ADDRESS}"
}

main() {
    parse_args "$@"
    case $MODE in
        slurm) slurm_mode ;;
        k8s) k8s_mode ;;
        ssh)
            # shellcheck source=cluster/ssh_mode.sh
            source "$CLUSTER_DIR/ssh_mode.sh"
            ssh_mode
            ;;
    esac
}

main "$@"
