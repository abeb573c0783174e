#!/usr/bin/env python3
"""Prints the benchmark issue's results table (markdown) from the JSON files bench_8b.sh writes.

Rooflines use the GPU limits `bench latency` measured in the same run (copy bandwidth, bf16 GEMM
rate). For `bench serve` the roofline is an upper bound on output throughput from lower bounds on
the duration, whichever is largest:
  - all prefill FLOPs at the GEMM rate, then (output_len - 1) decode steps of the request whose
    prompt finished last, each reading the weights at least once;
  - N * (output_len - 1) / C steps (a step makes at most C tokens), each reading the weights and C
    sequences' KV at the mean context;
  - at concurrency 1 nothing overlaps: N times (one prefill + output_len - 1 steps of one).

The transformers figures of the serve rows come from transformers_baseline.py: at concurrency 1,
16 and 64 its `serve` entries (static batches of C through `generate`; the cell says on how many
prompts), at 256 its `throughput` workload. A baseline that made fewer tokens than asked
is shown with the shortfall and left out of the ratio.
"""

import json
import math
import pathlib
import sys


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def baseline_serve(base, c, s):
    """(output tok/s, cell text) of the baseline at concurrency c beside Tessera's serve run s, or
    (None, '-') when the baseline has no run of the same lengths at c. Its TTFT and TPOT are means
    over its static batches (every request of a batch has the same ones)."""
    if c == 256:
        r = base.get("throughput")
    else:
        r = next((e for e in base.get("serve", []) if e["max_concurrency"] == c), None)
    if not r or (r["input_len"], r["output_len"]) != (s["input_len"], s["output_len"]):
        return None, "-"
    if c == 256:
        note = f"{r['num_prompts']} prompts, {r['mode']}"
    else:
        note = (f"measured on {r['num_prompts']} prompts; TTFT {r['mean_ttft_ms']:.0f} ms, "
                f"TPOT {r['mean_tpot_ms']:.2f} ms")
    cell = f"{r['output_throughput']:.0f} ({note})"
    # Older baseline JSON has no expected count; every prompt asks for output_len tokens.
    expected = r.get("expected_output_tokens", r["num_prompts"] * r["output_len"])
    if r["total_output_tokens"] < expected:
        return None, f"{cell}, SHORT: made {r['total_output_tokens']} of {expected} tokens"
    return r["output_throughput"], cell


def main(logs):
    logs = pathlib.Path(logs)
    base = load(logs / "transformers.json") or {}
    base_lat = {r["batch_size"]: r for r in base.get("latency", [])}
    lat = {b: load(logs / f"latency-b{b}.json") for b in (1, 64)}
    print("| workload | Tessera | transformers | roofline | Tessera / roofline | Tessera / transformers |")
    print("|---|---|---|---|---|---|")
    for b, r in lat.items():
        if not r:
            continue
        ours = r["median_decode_step_ms"]
        roof = r.get("roofline_decode_step_ms")
        theirs = base_lat.get(b, {}).get("median_decode_step_ms")
        print(
            f"| decode step, batch {b}, {r['input_len']} in / {r['output_len']} out (ms) | {ours:.2f} | "
            f"{theirs and f'{theirs:.2f}' or '-'} | {roof and f'{roof:.2f}' or '-'} | "
            f"{roof and f'{roof / ours:.1%}' or '-'} | {theirs and f'{theirs / ours:.1f}x' or '-'} |"
        )
    ref = lat.get(1)
    for c in (1, 16, 64, 256):
        s = load(logs / f"serve-c{c}.json")
        if not s:
            continue
        n, out = s["completed"], s["total_output_tokens"]
        roof = None
        if ref and ref.get("hardware") and n:
            hw, cost = ref["hardware"], ref["cost"]
            input_len, output_len = ref["input_len"], ref["output_len"]
            mean_ctx = input_len + output_len / 2
            kv_per_token = cost["kv_bytes_per_decode_step"] / mean_ctx
            bandwidth = hw["bandwidth_gbps"] * 1e9
            weights = cost.get("decode_weight_bytes", cost["weight_bytes"])
            prefill = n * cost["prefill_flops"] / (hw["matrix_tflops"] * 1e12)
            step = (weights + min(c, n) * mean_ctx * kv_per_token) / bandwidth
            duration = max(prefill + (output_len - 1) * weights / bandwidth, n * (output_len - 1) / min(c, n) * step)
            if c == 1:
                duration = max(duration, prefill + n * (output_len - 1) * step)
            roof = out / duration
        theirs, their_cell = baseline_serve(base, c, s)
        ours = s["output_throughput"]
        print(
            f"| serve {n} prompts, concurrency {c}: output tok/s (TTFT {s['median_ttft_ms']:.0f} ms, "
            f"TPOT {s['median_tpot_ms']:.2f} ms, failed {s['failed']}) | {ours:.0f} | "
            f"{their_cell} | {roof and f'{roof:.0f}' or '-'} | "
            f"{roof and f'{ours / roof:.1%}' or '-'} | {theirs and f'{ours / theirs:.1f}x' or '-'} |"
        )
    if base:
        print(f"\nbaseline: transformers {base.get('transformers_version')}, torch {base.get('torch_version')}, "
              f"throughput mode: {base.get('throughput', {}).get('mode')}")
    if ref and ref.get("hardware"):
        hw = ref["hardware"]
        print(f"measured: {hw['bandwidth_gbps']:.0f} GB/s copy, {hw['matrix_tflops']:.0f} TFLOP/s bf16 GEMM")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu-logs/bench")
