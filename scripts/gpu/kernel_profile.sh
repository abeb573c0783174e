#!/usr/bin/env bash
# Per-kernel device time of one prefill step (8 prompts of CONTEXT - 1 tokens) and one eager decode
# step at each batch size, Llama-3-8B shape, dummy weights, GPU 0: decode_bench brackets those steps
# with cuProfilerStart/Stop (DECODE_BENCH_PROFILE=1) and ncu times each kernel inside them
# (gpu__time_duration, kernels serialized, so launch gaps and PDL overlap are not counted).
# Prints, per step, each kernel's count, total ms and share; the CSV goes to $OUT/profile.
#
#   scripts/gpu/kernel_profile.sh [BATCHES] [CONTEXT]     (defaults 256 and 1088)
#
# NCU_ARGS adds ncu options, e.g. "--clock-control none" to time at the clocks the GPU chooses
# (ncu's default locks them to base).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
BATCHES=${1:-256}
CONTEXT=${2:-1088}
LOGS="${OUT:-$PWD/gpu-logs}/profile"
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
NCU=${NCU:-/usr/local/cuda/bin/ncu}
read -r -a ncu_args <<<"${NCU_ARGS:-}"
DECODE_BENCH_PROFILE=1 "$NCU" "${ncu_args[@]}" --profile-from-start off --metrics gpu__time_duration.sum --csv \
    --print-units base .gpu/decode_bench --shape llama-3-8b --batches "$BATCHES" --context "$CONTEXT" \
    --iters 3 --max-model-len 2048 >"$LOGS/ncu.csv" 2>"$LOGS/ncu.err" || { echo "ncu failed"; tail -n 20 "$LOGS/ncu.err"; exit 1; }
python3 - "$LOGS/ncu.csv" "$BATCHES" <<'PY'
import csv, sys
from collections import OrderedDict
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, body = rows[0], rows[1:]
name_i, value_i = head.index("Kernel Name"), head.index("Metric Value")
# Every forward starts with the embedding kernel: it splits the profiled kernels into steps.
steps = []
for r in body:
    name = r[name_i].split("(")[0].split("<")[0].strip()
    if name == "embedding":
        steps.append(OrderedDict())
    if not steps:
        continue
    ns = float(r[value_i].replace(",", ""))
    count, total = steps[-1].get(name, (0, 0.0))
    steps[-1][name] = (count + 1, total + ns)
batches = [int(b) for b in sys.argv[2].split(",")]
# decode_bench prefills 8 sequences a step; the last step has the rest of the largest batch.
last_group = max(batches) % 8 or 8
labels = [f"prefill {last_group} x (context - 1)"] + [f"decode batch {b}" for b in batches]
for label, step in zip(labels, steps):
    total = sum(t for _, t in step.values())
    print(f"== {label}: {total / 1e6:.3f} ms over {sum(c for c, _ in step.values())} kernels")
    for name, (count, t) in sorted(step.items(), key=lambda kv: -kv[1][1]):
        print(f"PROFILE step=\"{label}\" kernel={name} count={count} ms={t / 1e6:.3f} share={100 * t / total:.1f}%")
PY
