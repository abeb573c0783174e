# shellcheck shell=bash
# Helpers sourced by the scripts of scripts/gpu/.

# What every GPU run needs: the CUDA libraries, NVLink multicast off (see ../shared/GPU.md) and a
# kernel cache shared between runs.
gpu_env() {
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export NCCL_NVLS_ENABLE=0
    export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
}

# The server arguments of the Llama-3-8B benchmarks (dummy weights on GPU 0).
# shellcheck disable=SC2034  # read by the scripts that source this file
MODEL_8B="--device cuda --dummy llama-3-8b --max-model-len 2048"

# Waits until the server on 127.0.0.1:PORT answers /ready: returns 0 then, or 1 (saying why on
# stderr, with the end of LOG) if process PID exits first or 300 s pass.
wait_ready() { # port, pid, log
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            echo "server exited before ready; the end of $3:" >&2
            tail -n 20 "$3" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "server not ready after 300 s; see $3" >&2
    return 1
}

# A variant is "-" (the kernels as committed) or words: NAME=VALUE definitions for
# TESSERA_KERNEL_DEFINES, and TESSERA_*=VALUE environment settings (e.g.
# TESSERA_ROPE=scalar, a kernel the launcher picks), and BIN=PATH, another `tessera` binary (e.g.
# an earlier commit's, copied into .gpu/). defines_of prints the first, env_of the second, bin_of
# the third.
defines_of() { words_of "$1" | grep -v '^TESSERA_\|^BIN=' | tr '\n' ' ' | sed 's/ $//'; }
env_of() { words_of "$1" | grep '^TESSERA_' | tr '\n' ' ' | sed 's/ $//'; }
# The binary a variant's BIN=PATH word names, else $1.
bin_of() { words_of "$2" | sed -n 's/^BIN=//p' | grep . || echo "$1"; }
words_of() { [ "$1" = "-" ] || tr -s ' ' '\n' <<<"$1" | grep -v '^$'; }

# One line of LABEL and the figures of `bench serve --json` file JSON (output tok/s, mean TTFT,
# median TPOT, failed requests), or output_tok_s=FAILED and why.
serve_summary() { # json, label
    python3 - "$1" "$2" <<'PY'
import json, sys
path, label = sys.argv[1:]
try:
    r = json.load(open(path))
    print(f"{label} output_tok_s={r['output_throughput']:.1f} ttft_ms={r['mean_ttft_ms']:.1f} "
          f"tpot_ms={r['median_tpot_ms']:.3f} failed={r['failed']}")
except (OSError, ValueError, KeyError, TypeError) as e:
    print(f"{label} output_tok_s=FAILED ({e})")
PY
}
