#!/usr/bin/env bash
# Measures compile-time variants of the kernels against each other in one run: each variant is a
# TESSERA_KERNEL_DEFINES value (NVRTC compiles the kernels with those -D definitions; "-" is the
# kernels as committed), and the variants take turns, ROUNDS times, in `decode_bench --graphs`.
#
#   scripts/gpu/ab_defines.sh ROUNDS VARIANT...
#   scripts/gpu/ab_defines.sh 2 - "NAME=VALUE"   (NAME: a macro the kernel defines only #ifndef)
#
# BATCHES (default 1,8), CONTEXT (1088) and MAX_MODEL_LEN (2048; with context 1088 the shape of
# `bench latency`'s mean decode step at 1024 in / 128 out). Prints one AB line per run and
# variant, then each variant's runs side by side. CHECK="TEST [FILTER...]" (e.g. "gemm-test
# gemv_against linear_silu_mul") first runs that test binary of .gpu/tests under each variant,
# with the GPU tests on, and prints CHECK PASS or FAIL per variant: a faster variant counts only
# if it is correct. LATENCY="1" (or "1,64") also runs `tessera bench latency` at those batch sizes
# (1024 in / 128 out, as scripts/gpu/bench_8b.sh) in each round and variant: the engine's step.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
ROUNDS=${1:?usage: ab_defines.sh ROUNDS VARIANT...}
shift
BATCHES=${BATCHES:-1,8}
CONTEXT=${CONTEXT:-1088}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-2048}
LATENCY=${LATENCY:-}
results=$(mktemp)
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
read -r -a model <<<"$MODEL_8B"
if [ -n "${CHECK:-}" ]; then
    read -r -a check <<<"$CHECK"
    for variant in "$@"; do
        defines=$(defines_of "$variant")
        if TESSERA_GPU_TESTS=1 TESSERA_KERNEL_DEFINES="$defines" ".gpu/tests/${check[0]}" "${check[@]:1}" \
            --test-threads=1 >"$results.check" 2>&1; then
            echo "CHECK PASS variant=\"$variant\" ($CHECK)"
        else
            echo "CHECK FAIL variant=\"$variant\" ($CHECK):"
            tail -n 20 "$results.check"
        fi
    done
    rm -f "$results.check"
fi
for round in $(seq 1 "$ROUNDS"); do
    for variant in "$@"; do
        defines=$(defines_of "$variant")
        TESSERA_KERNEL_DEFINES="$defines" .gpu/decode_bench --batches "$BATCHES" --context "$CONTEXT" \
            --max-model-len "$MAX_MODEL_LEN" --graphs 2>&1 \
            | awk -v v="$variant" -v r="$round" '/^BENCH mode=graph/ {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                printf "AB round=%s variant=\"%s\" batch=%s step_ms=%s fraction=%s argmax_mismatches=%s\n",
                    r, v, f["batch"], f["wall_ms"], f["fraction"], f["argmax_mismatches"] }' \
            | tee -a "$results"
        for batch in ${LATENCY//,/ }; do
            rm -f "$results.json"
            TESSERA_KERNEL_DEFINES="$defines" .gpu/tessera bench latency "${model[@]}" \
                --batch-size "$batch" --input-len 1024 --output-len 128 --num-iters 3 \
                --json "$results.json" >"$results.log" 2>&1 || tail -n 5 "$results.log"
            python3 - "$results.json" "$round" "$variant" "$batch" <<'PY' | tee -a "$results"
import json, sys
path, round_, variant, batch = sys.argv[1:]
try:
    r = json.load(open(path))
    print(f'LAT round={round_} variant="{variant}" batch={batch} step_ms={r["median_decode_step_ms"]:.3f} '
          f'fraction={r["decode_fraction"]:.4f}')
except (OSError, ValueError, KeyError, TypeError) as e:
    print(f'LAT round={round_} variant="{variant}" batch={batch} step_ms=FAILED ({e})')
PY
        done
    done
done
rm -f "$results.json" "$results.log"
for kind in AB LAT; do
    grep -q "^$kind " "$results" || continue
    echo "== $kind: step ms per variant and batch (rounds in order)"
    batches=$BATCHES
    [ "$kind" = LAT ] && batches=$LATENCY
    for variant in "$@"; do
        for batch in ${batches//,/ }; do
            runs=$(grep -F "variant=\"$variant\" batch=$batch " "$results" | grep "^$kind " \
                | sed 's/.*step_ms=\([^ ]*\).*/\1/' | tr '\n' ' ')
            [ -n "$runs" ] && echo "variant=\"$variant\" batch=$batch: $runs"
        done
    done
done
rm -f "$results"
