#!/usr/bin/env bash
# Starts `tessera serve` on a dummy model, runs the official openai Python client against it
# (installed from PyPI into a throwaway virtualenv), and stops the server.
# Usage: scripts/e2e/run_openai_compat.sh [PATH_TO_TESSERA_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."

binary=${1:-target/debug/tessera}
if [ ! -x "$binary" ]; then
    echo "no tessera binary at $binary" >&2
    exit 1
fi
mkdir -p target
venv=${OPENAI_VENV:-target/openai-venv}
port=${PORT:-18731}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi

"$binary" serve --dummy tiny --port "$port" --api-key sk-e2e >target/openai-compat-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
    sleep 0.1
done

"$venv/bin/python" scripts/e2e/openai_compat.py "http://127.0.0.1:$port" tiny
kill -TERM "$server"
wait "$server"
echo "server drained and exited with 0"
