#!/usr/bin/env bash
# Tensor parallelism on a machine with 2 or 4 GPUs (H200s), from the prebuilt binaries in .gpu/
# (scripts/gpu-build.sh makes them on a development machine): the collective and watchdog tests,
# TP=2/4 against TP=1 and transformers (fixtures and the 1B shape), the engine's TP parity and
# injected hangs, then the decode benchmarks (eager and CUDA graphs): Llama-3-70B shape at TP = number of GPUs (or
# $BENCH_70B_TP, e.g. "2 4"), batches 1 and 64, and the 8B shape at batch 64, TP=1 vs TP=2.
#
# Logs go to $OUT (or ./gpu-logs-tp); bench.txt holds the BENCH lines, figures.txt the measured
# figures, summary.txt the verdicts. Every step has a time limit and the whole run stops starting
# new steps after $BUDGET_S seconds (default 510), so it ends inside a 10-minute call.
# Exit status: non-zero when any check failed or was cut short.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
ROOT=$PWD
LOGS="${OUT:-$ROOT/gpu-logs-tp}"
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TESSERA_GPU_TESTS=1
export TESSERA_FIXTURES="$ROOT/tests/fixtures/models"
export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
export TESSERA_LLAMA1B="${TESSERA_LLAMA1B:-/tmp/tessera-llama1b}"
export RUST_BACKTRACE=1
BUDGET_S="${BUDGET_S:-510}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
NGPU=$(nvidia-smi -L | wc -l)
echo "GPUs: $NGPU" | tee -a "$LOGS/gpu.txt"
declare -a SUMMARY
failed=0
# run NAME LIMIT_S COMMAND...: runs with the smaller of LIMIT_S and what is left of the budget.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 30 ]; then
        SUMMARY+=("SKIP  $name: out of time (budget ${BUDGET_S} s)")
        failed=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        SUMMARY+=("PASS  $name ($((SECONDS - start)) s)")
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        SUMMARY+=("FAIL  $name: killed after ${limit} s: see $name.log")
        failed=1
    else
        SUMMARY+=("FAIL  $name ($((SECONDS - start)) s, exit $rc): see $name.log")
        failed=1
    fi
}
test_bin() { # the built test binary named NAME (the build names them NAME-test)
    echo ".gpu/tests/$1-test"
}

# Correctness first: cheap, and everything else depends on it.
run collectives 90 "$(test_bin collectives)" --nocapture --test-threads=1
run nccl-faults 120 "$(test_bin nccl_faults)" --nocapture --test-threads=1
run engine-tp 180 "$(test_bin cuda_tp)" --nocapture --test-threads=1

# The benchmarks.
for tp in ${BENCH_70B_TP:-$NGPU}; do
    run "bench-70b-tp$tp" 240 .gpu/decode_bench --shape llama-3-70b --tp "$tp" --batches 1,64 --context 1024 --iters 20 --graphs
done
run bench-8b-tp1 120 .gpu/decode_bench --shape llama-3-8b --tp 1 --batches 64 --context 1024 --iters 20 --graphs
run bench-8b-tp2 120 .gpu/decode_bench --shape llama-3-8b --tp 2 --batches 64 --context 1024 --iters 20 --graphs
if [ "$NGPU" -ge 4 ]; then
    run bench-8b-tp4 120 .gpu/decode_bench --shape llama-3-8b --tp 4 --batches 64 --context 1024 --iters 20 --graphs
fi

# TP=2/4 against TP=1 and transformers; the 1B reference is made once per machine.
if [ ! -f "$TESSERA_LLAMA1B/expected.json" ]; then
    run llama1b-reference 150 env PYTHONUNBUFFERED=1 python3 scripts/gpu/llama1b_reference.py "$TESSERA_LLAMA1B" "$TESSERA_FIXTURES"
fi
run tp-vs-tp1-and-transformers 240 "$(test_bin tp)" --nocapture --test-threads=1

cat "$LOGS"/bench-*.log 2>/dev/null | grep -h '^BENCH' >"$LOGS/bench.txt" || true
# Scaling efficiency of the 8B shape at batch 64: TP=2 (and TP=4) throughput over TP=1, and per GPU.
python3 - "$LOGS/bench.txt" <<'PY' | tee -a "$LOGS/bench.txt"
import sys
rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in open(sys.argv[1]) if line.startswith("BENCH")]
# Graph replays (what the engine runs by default) where the bench captured them.
mode = "graph" if any(r["mode"] == "graph" for r in rows) else "eager"
tps = {int(r["tp"]): float(r["tokens_per_s"]) for r in rows
       if r["shape"] == "llama-3-8b" and r["batch"] == "64" and r["mode"] == mode}
for tp in sorted(t for t in tps if t > 1 and 1 in tps):
    s = tps[tp] / tps[1]
    print(f"SCALING llama-3-8b batch=64 mode={mode} tp1_tokens_per_s={tps[1]:.0f} tp{tp}_tokens_per_s={tps[tp]:.0f} speedup={s:.3f} efficiency={s / tp:.3f}")
PY
grep -hE "relative difference|identical|agreement|failed after|freed after|detected|rebuilt|exact|rank-major|KV blocks|SKIPPED|panicked|loaded in|prefill:|copy:|^\| " "$LOGS"/*.log >"$LOGS/figures.txt" || true
cat "$LOGS/bench.txt"
echo
printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.txt"
exit $failed
