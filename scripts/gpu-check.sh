#!/usr/bin/env bash
# Runs every GPU test and the end-to-end checks on a GPU machine, from the prebuilt binaries in
# .gpu/ (scripts/gpu-build.sh makes them on a development machine; the GPU machine has no Rust).
# Logs go to $OUT (or ./gpu-logs); a summary table is printed last. Exit status: non-zero when
# any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
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

for t in .gpu/tests/*; do
    # --nocapture: the tests print their measured errors, which the closing note quotes.
    run "$(basename "$t")" "$t" --nocapture --test-threads=1
done
run transformers-bf16 env PYTHONUNBUFFERED=1 python3 scripts/gpu/transformers_bf16.py "$TESSERA_FIXTURES"
if [ -x .gpu/tessera ]; then
    run generate-cuda .gpu/tessera generate --device cuda --dummy tiny --prompt "Hello" --max-tokens 16
fi

# The measured figures, in one file.
grep -hE "transformers bf16|relative error|agreement|diverge|identical|profile:|SKIPPED|panicked" "$LOGS"/*.log >"$LOGS/figures.txt" || true
echo
printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.txt"
exit $failed
