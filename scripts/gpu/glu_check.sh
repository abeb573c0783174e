#!/usr/bin/env bash
# gemm_glu (kernels/gemm_glu.cu) on one H100 or H200, in one call: its GPU test against the CPU
# backend and cuBLAS, op_bench's gate|up rows (split path against gemm_glu, 256 to 8,696 rows) for
# the kernel as committed and its cluster variant, then `tessera serve` at concurrency 256 with
# gemm_glu on (the faster variant that passed its test) against off. Logs go to $OUT (or
# ./gpu-logs). Build .gpu/ from the commit under test first (scripts/gpu-build.sh).
#
#   scripts/gpu/glu_check.sh [ROUNDS]      (A/B rounds, default 2; 0 skips the A/B)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
ROUNDS=${1:-2}
LOGS="${OUT:-$PWD/gpu-logs}/glu"
mkdir -p "$LOGS"
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
export TESSERA_GPU_TESTS=1 TESSERA_FIXTURES="$PWD/tests/fixtures/models"
# The GPU test, the kernel as committed then its cluster variant; GG_WAIT_LIMIT makes a broken
# barrier hand-off trap instead of hanging. Passing means run, not skipped.
passed() { grep -q "test result: ok. 1 passed" "$1" && ! grep -q SKIPPED "$1"; }
TESSERA_KERNEL_DEFINES="GG_WAIT_LIMIT=100000000" timeout 120 .gpu/tests/gemm-test --test-threads=1 gemm_glu \
    2>&1 | tee "$LOGS/gemm_glu.log" | tail -20
passed "$LOGS/gemm_glu.log" || { echo "gemm_glu test failed"; exit 1; }
TESSERA_KERNEL_DEFINES="GG_WAIT_LIMIT=100000000 GG_CLUSTER=2" timeout 120 .gpu/tests/gemm-test --test-threads=1 \
    gemm_glu 2>&1 | tee "$LOGS/gemm_glu-cluster.log" | tail -20
timeout 120 .gpu/op_bench --glu-only --reps 5 2>&1 | tee "$LOGS/opbench.log"
TESSERA_KERNEL_DEFINES="GG_CLUSTER=2" timeout 120 .gpu/op_bench --glu-only --reps 5 2>&1 \
    | tee "$LOGS/opbench-cluster.log" | grep OPBENCH
# gemm_glu's time at 8,192 rows in an op_bench log.
us_8192() { sed -n 's/.*rows=8192 .*gemm_glu_us=\([0-9.]*\).*/\1/p' "$1" | head -1; }
base=$(us_8192 "$LOGS/opbench.log")
cluster=$(us_8192 "$LOGS/opbench-cluster.log")
on="TESSERA_GLU_GEMM=1"
if passed "$LOGS/gemm_glu-cluster.log" && [ -n "$cluster" ] && [ -n "$base" ] \
    && python3 -c "import sys; sys.exit(0 if $cluster < $base else 1)"; then
    on="TESSERA_GLU_GEMM=1 GG_CLUSTER=2"
fi
echo "gemm_glu at 8,192 rows: $base us as committed, $cluster us with GG_CLUSTER=2; A/B of '$on'"
if [ "$ROUNDS" -gt 0 ]; then
    SERVE_LOGS="$LOGS/ab" CONC=256 NUM=256 scripts/gpu/ab_serve.sh "$ROUNDS" "$on" TESSERA_GLU_GEMM=0 2>&1 \
        | tee "$LOGS/ab.log" | tail -8
fi
