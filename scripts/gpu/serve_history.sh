#!/usr/bin/env bash
# Does a server's history change its concurrency-1 speed? One fresh `tessera serve` (Llama-3-8B
# shape, dummy weights), then `bench serve` at the concurrencies RUNS names in turn (default
# "1 16 1 1": concurrency 1 on NUM1 prompts, default 32, others on 64 prompts). Prints each
# run's output tok/s, TPOT and TTFT, and for the concurrency-1 runs what /metrics counted
# meanwhile (decode lookahead used / discarded, time and count of each step phase).
#
# Why: bench_8b.sh's concurrency-1 row (run last, after 256, 64 and 16 on the same server) gave
# 172 - 173 tok/s, a server started for concurrency 1 alone 167 (session 12, H100). Session 14
# found that every run here and in bench_8b.sh sent the same prompts (--seed 0), so each run after
# the first found its prompts in the prefix cache. Each run now has its own seed (its place in
# RUNS) unless SAME_SEED=1, which repeats the old runs; the counted lines include the prefix
# cache's hits.
#
# BIN, MODEL (lib.sh's MODEL_8B), INPUT_LEN and
# OUTPUT_LEN (1024, 128) as in ab_serve.sh; MODEL="--dummy tiny" for a dry run on a CPU.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
PORT=${PORT:-8041}
BIN=${BIN:-.gpu/tessera}
NUM1=${NUM1:-32}
# shellcheck source=scripts/gpu/lib.sh
. scripts/gpu/lib.sh
gpu_env
read -r -a model <<<"${MODEL:-$MODEL_8B}"
work=$(mktemp -d)

"$BIN" serve "${model[@]}" --max-num-seqs 256 --host 127.0.0.1 --port "$PORT" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
wait_ready "$PORT" "$pid" "$work/serve.log" || exit 1

scrape() { curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^tessera_(decode_lookahead|step_phase_seconds_(sum|count)|prefix_cache)' >"$work/m$1"; }
bench() { # concurrency, prompts, seed
    "$BIN" bench serve --url "http://127.0.0.1:$PORT" --num-prompts "$2" --input-len "${INPUT_LEN:-1024}" \
        --output-len "${OUTPUT_LEN:-128}" --max-concurrency "$1" --seed "$3" --json "$work/r.json" >"$work/bench.log" 2>&1 \
        || tail -n 5 "$work/bench.log"
    serve_summary "$work/r.json" "RUN concurrency=$1 prompts=$2"
}
counted() { # before, after
    python3 - "$work/m$1" "$work/m$2" <<'PY'
import sys
def read(path):
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in open(path) if " " in line)}
a, b = read(sys.argv[1]), read(sys.argv[2])
print("  counted: " + "; ".join(f"{k.removeprefix('tessera_')}={b[k] - a.get(k, 0):.4g}"
                                for k in sorted(b) if b[k] != a.get(k, 0)))
PY
}

# RUNS: the concurrencies in order; 1 runs NUM1 prompts (with what /metrics counted during it),
# anything else 64. The default answers "after a concurrency-16 run?"; "1 1 16 1" tells a
# server's second concurrency-1 run from one after concurrency 16.
i=0
scrape 0
for conc in ${RUNS:-1 16 1 1}; do
    i=$((i + 1))
    seed=$i
    [ "${SAME_SEED:-0}" = 1 ] && seed=0
    if [ "$conc" = 1 ]; then
        bench 1 "$NUM1" "$seed"; scrape "$i"; counted $((i - 1)) "$i"
    else
        bench "$conc" 64 "$seed"; scrape "$i"
    fi
done
