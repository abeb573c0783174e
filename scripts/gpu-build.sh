#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no Rust toolchain) into .gpu/ (git-ignored):
# every test binary of the CUDA crate and the engine's GPU sampling test, the `tessera` binary
# with `--features cuda`, the fixtures' location is the checkout itself. Binaries are stripped so that the working tree sent to the
# device stays under its size limit. Then run scripts/gpu-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
rm -rf .gpu && mkdir -p .gpu/tests
# Copies the test binaries a `cargo test --no-run --message-format=json` reports into .gpu/tests.
collect_tests() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])
' | while read -r name kind exe; do
        cp "$exe" ".gpu/tests/${name}-${kind}"
    done
}
cargo test --release -p tessera-cuda --features cuda --no-run --message-format=json 2>/dev/null | collect_tests
# The engine's GPU tests: the GPU sampler against the host sampler.
cargo test --release -p tessera-engine --features cuda --test gpu_sampling --no-run --message-format=json 2>/dev/null \
    | collect_tests
cargo build --release -p tessera-cli --features cuda
cp "$CARGO_TARGET_DIR/release/tessera" .gpu/tessera
cargo build --release -p tessera-cuda --features cuda --example decode_bench
cp "$CARGO_TARGET_DIR/release/examples/decode_bench" .gpu/decode_bench
strip .gpu/tessera .gpu/decode_bench .gpu/tests/*
ls -la .gpu .gpu/tests
du -sh .gpu
