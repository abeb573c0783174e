#!/usr/bin/env bash
# Measures kernel variants (TESSERA_KERNEL_DEFINES values and TESSERA_* settings, "-" = the
# kernels as committed; see lib.sh's defines_of) against each other through the server, the way bench_8b.sh
# measures it: for each round and variant, `tessera serve` (Llama-3-8B shape, dummy weights) is
# started with the variant, `bench serve` sends NUM prompts of 1024 in / 128 out at max
# concurrency CONC, and the server is stopped. Prints one SERVE line per run, then each
# variant's output tok/s side by side.
#
#   scripts/gpu/ab_serve.sh ROUNDS VARIANT...
#   CONC=256 NUM=256 scripts/gpu/ab_serve.sh 2 - "NAME=VALUE"
#   CONC=256 NUM=256 scripts/gpu/ab_serve.sh 2 - BIN=.gpu/tessera-old   (another build's server)
#
# MODEL (default lib.sh's MODEL_8B), INPUT_LEN and
# OUTPUT_LEN (1024, 128) change the workload, e.g. MODEL="--dummy tiny" for a dry run on a CPU.
# SERVE_LOGS=DIR keeps each run's server log as DIR/serve-ROUND-VARIANTINDEX.log, with one line a
# step (RUST_LOG=info,tessera::step=debug; scripts/gpu/step_trace.py reads them) and, where
# nvidia-smi is, the GPU's clocks and power every 100 ms as DIR/smi-ROUND-VARIANTINDEX.csv. A
# relative DIR is taken from the repository root. SERVE_RUST_LOG replaces that RUST_LOG (e.g.
# "info,tessera::step=debug,tessera::gemm=debug" adds GEMM tuning's per-shape lines).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
ROUNDS=${1:?usage: ab_serve.sh ROUNDS VARIANT...}
shift
CONC=${CONC:-256}
NUM=${NUM:-256}
PORT=${PORT:-8031}
BIN=${BIN:-.gpu/tessera}
INPUT_LEN=${INPUT_LEN:-1024}
OUTPUT_LEN=${OUTPUT_LEN:-128}
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
read -r -a model <<<"${MODEL:-$MODEL_8B}"
work=$(mktemp -d)
[ -n "${SERVE_LOGS:-}" ] && mkdir -p "$SERVE_LOGS"
trap 'rm -rf "$work"' EXIT

# One run: serve with the variant, one bench serve, stop. Prints its SERVE line.
run() {
    local round=$1 variant=$2 index=$3 pid settings smi="" bin
    read -r -a settings <<<"$(env_of "$variant")"
    local log_env=()
    [ -n "${SERVE_LOGS:-}" ] && log_env=("RUST_LOG=${SERVE_RUST_LOG:-info,tessera::step=debug}")
    bin=$(bin_of "$BIN" "$variant")
    env "${settings[@]}" "${log_env[@]}" TESSERA_KERNEL_DEFINES="$(defines_of "$variant")" "$bin" serve "${model[@]}" \
        --max-num-seqs 256 --host 127.0.0.1 --port "$PORT" >"$work/serve.log" 2>&1 &
    pid=$!
    if ! wait_ready "$PORT" "$pid" "$work/serve.log"; then
        kill "$pid" 2>/dev/null
        [ -n "${SERVE_LOGS:-}" ] && cp "$work/serve.log" "$SERVE_LOGS/serve-$round-$index.log"
        echo "SERVE round=$round variant=\"$variant\" concurrency=$CONC output_tok_s=FAILED (the server did not get ready)"
        return
    fi
    rm -f "$work/r.json"
    if [ -n "${SERVE_LOGS:-}" ] && command -v nvidia-smi >/dev/null; then
        # Bounded, so that a run cut short does not leave it sampling.
        timeout 900 nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu \
            --format=csv,noheader,nounits -lms 100 >"$SERVE_LOGS/smi-$round-$index.csv" 2>/dev/null &
        smi=$!
    fi
    "$BIN" bench serve --url "http://127.0.0.1:$PORT" --num-prompts "$NUM" --input-len "$INPUT_LEN" \
        --output-len "$OUTPUT_LEN" --max-concurrency "$CONC" --seed 0 --json "$work/r.json" >"$work/bench.log" 2>&1 \
        || tail -n 5 "$work/bench.log"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ -n "$smi" ] && kill "$smi" 2>/dev/null
    [ -n "${SERVE_LOGS:-}" ] && cp "$work/serve.log" "$SERVE_LOGS/serve-$round-$index.log"
    serve_summary "$work/r.json" "SERVE round=$round variant=\"$variant\" concurrency=$CONC"
}

for round in $(seq 1 "$ROUNDS"); do
    index=0
    for variant in "$@"; do
        index=$((index + 1))
        run "$round" "$variant" "$index" | tee -a "$work/results"
    done
done
echo "== output tok/s per variant at concurrency $CONC (rounds in order)"
for variant in "$@"; do
    runs=$(grep -F "variant=\"$variant\" " "$work/results" | sed 's/.*output_tok_s=\([^ ]*\).*/\1/' | tr '\n' ' ')
    echo "variant=\"$variant\": $runs"
done
