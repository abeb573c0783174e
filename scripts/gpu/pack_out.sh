#!/usr/bin/env bash
# Packs everything under $OUT into the one file $OUT/NAME.tgz and removes the rest, for a runner
# that returns only a few files from $OUT (the device tool: at most 8, two folders down), so that
# bench_8b.sh's JSON and gpu-check.sh's logs all come back. End a GPU call with it:
#
#   bash scripts/gpu-check.sh; bash scripts/gpu/bench_8b.sh tessera; bash scripts/gpu/pack_out.sh results
set -euo pipefail
NAME=${1:?usage: pack_out.sh NAME}
: "${OUT:?OUT must name the folder to pack}"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
tar czf "$staging/$NAME.tgz" -C "$OUT" .
find "$OUT" -mindepth 1 -delete
mv "$staging/$NAME.tgz" "$OUT/"
echo "packed into $OUT/$NAME.tgz ($(du -h "$OUT/$NAME.tgz" | cut -f1))"
