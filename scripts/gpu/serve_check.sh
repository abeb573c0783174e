#!/usr/bin/env bash
# `tessera serve --device cuda` answers one completion: starts the server on a dummy model, waits
# for /ready, sends one request, prints the answer, stops the server. Exit status: the request's.
set -uo pipefail
BIN=${1:-.gpu/tessera}
PORT=${PORT:-8011}
"$BIN" serve --device cuda --dummy tiny --port "$PORT" --host 127.0.0.1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
    kill -0 $pid 2>/dev/null || { echo "server exited before ready"; exit 1; }
    sleep 0.5
done
body='{"model":"tiny","prompt":"Hello from the GPU","max_tokens":16,"temperature":0}'
resp=$(curl -sf -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$PORT/v1/completions") || {
    echo "request failed"; exit 1; }
echo "$resp"
echo "$resp" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["usage"]["completion_tokens"]>0, r; print("completion tokens:", r["usage"]["completion_tokens"])'
