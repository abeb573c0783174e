#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no Rust toolchain) into .gpu/ (git-ignored):
# every test binary of the CUDA crate, the engine's CUDA tensor-parallel, GPU sampling and decode
# lookahead tests,
# the `tessera` binary with `--features cuda`, the decode benchmark and the per-operation
# benchmark (op_bench); the fixtures' location is the checkout itself. Binaries are stripped so
# that the working tree sent to the device stays under its size limit. Then run
# scripts/gpu-check.sh (one GPU) or scripts/gpu-check-tp.sh (2 or 4 GPUs) there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
rm -rf .gpu && mkdir -p .gpu/tests

# Copies the test executables a `cargo test --no-run` builds into .gpu/tests/NAME-KIND.
copy_tests() {
    cargo test --release "$@" --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])
' | while read -r name kind exe; do
        cp "$exe" ".gpu/tests/${name}-${kind}"
    done
}
copy_tests -p tessera-cuda --features cuda
copy_tests -p tessera-engine --features cuda --test cuda_tp
# The GPU sampler against the host sampler.
copy_tests -p tessera-engine --features cuda --test gpu_sampling
# Decode lookahead against plain steps through the engine.
copy_tests -p tessera-engine --features cuda --test cuda_lookahead
cargo build --release -p tessera-cli --features cuda
cp "$CARGO_TARGET_DIR/release/tessera" .gpu/tessera
cargo build --release -p tessera-cuda --features cuda --example decode_bench --example op_bench
cp "$CARGO_TARGET_DIR/release/examples/decode_bench" .gpu/decode_bench
cp "$CARGO_TARGET_DIR/release/examples/op_bench" .gpu/op_bench
strip .gpu/tessera .gpu/decode_bench .gpu/op_bench .gpu/tests/*
ls -la .gpu .gpu/tests
du -sh .gpu
