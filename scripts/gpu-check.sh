#!/usr/bin/env bash
# Runs every GPU test and the end-to-end checks on a GPU machine, from the prebuilt binaries in
# .gpu/ (scripts/gpu-build.sh makes them on a development machine; the GPU machine has no Rust).
# Logs go to $OUT (or ./gpu-logs); a summary table is printed last. Exit status: non-zero when
# any check failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
ROOT=$PWD
LOGS="${OUT:-$ROOT/gpu-logs}"
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
export TESSERA_GPU_TESTS=1
export TESSERA_FIXTURES="$ROOT/tests/fixtures/models"
export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
export RUST_BACKTRACE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
declare -a SUMMARY
failed=0
run() {
    local name=$1; shift
    local start=$SECONDS
    if "$@" >"$LOGS/$name.log" 2>&1; then
        SUMMARY+=("PASS  $name ($((SECONDS - start)) s)")
    else
        SUMMARY+=("FAIL  $name ($((SECONDS - start)) s): see $name.log")
        failed=1
    fi
}

# The Llama 3.2 1B-shaped checkpoint and its transformers reference (tests/llama1b.rs reads it).
export TESSERA_LLAMA1B=/tmp/tessera-llama1b
run llama1b-reference env PYTHONUNBUFFERED=1 python3 scripts/gpu/llama1b_reference.py "$TESSERA_LLAMA1B" "$TESSERA_FIXTURES"

for t in .gpu/tests/*; do
    # --nocapture: the tests print their measured errors, which the closing note quotes.
    run "$(basename "$t")" "$t" --nocapture --test-threads=1
done
run transformers-bf16 env PYTHONUNBUFFERED=1 python3 scripts/gpu/transformers_bf16.py "$TESSERA_FIXTURES"
if [ -x .gpu/tessera ]; then
    run generate-cuda .gpu/tessera generate --device cuda --dummy tiny --prompt "Hello" --max-tokens 16
    # The same with every step eager (no CUDA graphs): the two logs should show the same text.
    run generate-cuda-eager env TESSERA_ENGINE__CUDA_GRAPHS=false \
        .gpu/tessera generate --device cuda --dummy tiny --prompt "Hello" --max-tokens 16
    run generate-cuda-llama .gpu/tessera generate --device cuda --model "$TESSERA_FIXTURES/llama" --prompt "Hello" --max-tokens 16
    run serve-cuda scripts/gpu/serve_check.sh .gpu/tessera
fi
if [ -x .gpu/decode_bench ]; then
    # Eager steps and CUDA-graph replays side by side (BENCH_RATIO lines: graph speed-up).
    run decode-bench .gpu/decode_bench --shape llama-3-8b --batches 1,64 --context 1024 --graphs
    cat "$LOGS/decode-bench.log"
fi

if [ -x .gpu/op_bench ]; then
    # Per-operation device times: GEMV against cuBLAS per layer and batch, norms, attention.
    run op-bench .gpu/op_bench
    cat "$LOGS/op-bench.log"
fi

# The measured figures, in one file.
grep -hE "reference f32|llama-3.2-1b shape|diverges|transformers bf16|relative error|agreement|diverge|identical|profile:|graph|BENCH_RATIO|OPBENCH_GEMV_MAX_M|gpu sampling|argmax_rows|SKIPPED|panicked" "$LOGS"/*.log >"$LOGS/figures.txt" || true
echo
printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.txt"
exit $failed
