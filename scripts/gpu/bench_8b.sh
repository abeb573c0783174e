#!/usr/bin/env bash
# The benchmark issue's GPU runs, Llama-3-8B shape with dummy weights on GPU 0:
#   tessera   - `bench latency` at batch 1 and 64 (1024 in / 128 out), then `tessera serve` and
#               `bench serve` at max concurrency 256, 64, 16 (256 prompts each) and 1;
#   baseline  - scripts/bench/transformers_baseline.py on the same shape and workloads: latency at
#               batch 1 and 64, serve at concurrency 1/16/64 as static batches of C (16 prompts at
#               1, where 256 would take ~11 min; all 256 at 16 and 64; ~3 min), and the 256
#               prompts (concurrency 256's row).
# Run both modes back to back on one machine so that they are measured in one session. JSON and
# logs go to $OUT/bench (or ./gpu-logs/bench); a table is printed by scripts/gpu/bench_table.py.
#
#   scripts/gpu/bench_8b.sh tessera|baseline [BIN]
#
# CONC1_PROMPTS (default 32) sets the prompts at concurrency 1: there every request runs alone, so
# 32 give the same per-request figures as 256 in an eighth of the device time.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
MODE=${1:?usage: bench_8b.sh tessera|baseline [BIN]}
BIN=${2:-.gpu/tessera}
LOGS="${OUT:-$PWD/gpu-logs}/bench"
PORT=${PORT:-8021}
CONC1_PROMPTS=${CONC1_PROMPTS:-32}
mkdir -p "$LOGS"
status=0
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
read -r -a model <<<"$MODEL_8B"

tessera() {
    for b in 1 64; do
        "$BIN" bench latency "${model[@]}" --batch-size "$b" \
            --input-len 1024 --output-len 128 --num-iters 3 --json "$LOGS/latency-b$b.json" \
            >"$LOGS/latency-b$b.log" 2>&1 || { echo "bench latency batch $b failed"; status=1; }
        tail -n 15 "$LOGS/latency-b$b.log"
    done

    "$BIN" serve "${model[@]}" --max-num-seqs 256 \
        --host 127.0.0.1 --port "$PORT" >"$LOGS/serve.log" 2>&1 &
    local pid=$!
    trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' RETURN
    wait_ready "$PORT" "$pid" "$LOGS/serve.log" || return 1
    # Each concurrency has its own seed, so no run finds an earlier run's prompts in the prefix
    # cache (until session 14 all used seed 0: the runs after the first were ~98% cache hits).
    for c in 256 64 16 1; do
        local n=256
        [ "$c" = 1 ] && n=$CONC1_PROMPTS
        curl -sf "http://127.0.0.1:$PORT/metrics" >"$LOGS/metrics-before-c$c.txt" || true
        "$BIN" bench serve --url "http://127.0.0.1:$PORT" --num-prompts "$n" --input-len 1024 \
            --output-len 128 --max-concurrency "$c" --seed "$c" --json "$LOGS/serve-c$c.json" \
            >"$LOGS/serve-c$c.log" 2>&1 || { echo "bench serve concurrency $c failed"; status=1; }
        tail -n 25 "$LOGS/serve-c$c.log"
        curl -sf "http://127.0.0.1:$PORT/metrics" >"$LOGS/metrics-after-c$c.txt" || true
        step_phases "$LOGS/metrics-before-c$c.txt" "$LOGS/metrics-after-c$c.txt" | tee "$LOGS/phases-c$c.txt"
    done
}

# Mean time per step of each phase (tessera_step_phase_seconds) between two /metrics scrapes, and
# the prefix cache's hits among the tokens looked up meanwhile (prompts at admission; a preempted
# sequence admitted again looks up its output tokens too, and may hit its own blocks).
step_phases() {
    python3 - "$1" "$2" <<'PY'
import re, sys
def read(path):
    values = {}
    for line in open(path):
        m = re.match(r'tessera_step_phase_seconds_(sum|count)\{phase="(\w+)"\} ([0-9.e+-]+)', line)
        if m:
            values[(m[2], m[1])] = float(m[3])
    return values
a, b = read(sys.argv[1]), read(sys.argv[2])
phases = sorted({p for p, _ in b})
parts = []
for p in phases:
    n = b.get((p, "count"), 0) - a.get((p, "count"), 0)
    t = b.get((p, "sum"), 0) - a.get((p, "sum"), 0)
    if n > 0:
        parts.append(f"{p} {1e3 * t / n:.2f} ms x {n:.0f}")
print("step phases (mean): " + "; ".join(parts))

def counter(path, name):
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
hit, asked = (counter(sys.argv[2], f"tessera_prefix_cache_{k}_total") - counter(sys.argv[1], f"tessera_prefix_cache_{k}_total")
              for k in ("hits", "queries"))
print(f"prefix cache: {hit:.0f} of {asked:.0f} prompt tokens were hits")
PY
}

baseline() {
    PYTHONUNBUFFERED=1 python3 scripts/bench/transformers_baseline.py --shape llama-3-8b \
        --num-prompts 256 --latency-iters 1 >"$LOGS/transformers.json" 2>"$LOGS/transformers.log" \
        || { echo "baseline failed"; tail -n 30 "$LOGS/transformers.log"; status=1; }
    cat "$LOGS/transformers.json"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu-$MODE.txt"
case $MODE in
    tessera) tessera ;;
    baseline) baseline ;;
    *) echo "unknown mode $MODE"; exit 2 ;;
esac
python3 scripts/gpu/bench_table.py "$LOGS" || status=1
exit $status
