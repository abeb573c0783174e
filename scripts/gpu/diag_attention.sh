#!/usr/bin/env bash
# Where the attention kernels of the concurrency-256 workload stand against the device: ncu's
# detailed sections (speed of light, memory, scheduler, warp stalls) for one decode_attention
# launch of a batch-256 decode step and one prefill_attention launch of an 8-prompt prefill step
# (Llama-3-8B shape, context 1,088, decode_bench under DECODE_BENCH_PROFILE=1, clocks left to the
# GPU), and the device's read-only bandwidth (torch sum) beside its copy bandwidth: what a
# kernel that only reads K/V can expect (a best measured rate, not a hard ceiling).
#
#   scripts/gpu/diag_attention.sh            (reports to $OUT/diag or gpu-logs/diag)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
LOGS="${OUT:-$PWD/gpu-logs}/diag"
mkdir -p "$LOGS"
NCU=${NCU:-/usr/local/cuda/bin/ncu}
for kernel in decode_attention prefill_attention; do
    DECODE_BENCH_PROFILE=1 "$NCU" --clock-control none --profile-from-start off -k "regex:^$kernel" \
        --launch-count 1 --set detailed --section WarpStateStats --section SchedulerStats \
        .gpu/decode_bench --shape llama-3-8b --batches 256 --context 1088 --iters 3 --max-model-len 2048 \
        >"$LOGS/ncu_$kernel.txt" 2>&1 || echo "ncu $kernel failed"
    grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Issued Ipc|No Eligible|Warp Cycles Per Issued|Stall|L2 Hit|L1/TEX Hit|Theoretical Occ|Block Limit" \
        "$LOGS/ncu_$kernel.txt" | head -n 40
done
python3 - <<'PY'
import torch
x = torch.empty(2 << 30, dtype=torch.bfloat16, device="cuda").normal_()
y = torch.empty_like(x)
def ms(f, n=10):
    f(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n): f()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / n
nbytes = x.numel() * 2
print(f"READ_BW sum {nbytes / ms(lambda: x.sum()) / 1e6:.0f} GB/s; COPY_BW {2 * nbytes / ms(lambda: y.copy_(x)) / 1e6:.0f} GB/s")
PY
