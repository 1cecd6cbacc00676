#!/usr/bin/env bash
# Regenerates the checked-in seed inputs of the fuzz targets that make their own
# (fuzz/seeds/<target>/, used by fuzz-smoke.sh and fuzz-coverage.sh): today the
# `pipeline` target, whose seeds follow its input layout (fuzz/src/pipeline_input.rs).
# Run it after changing that layout, and commit the result. Inputs named
# `regression-*` (crashes found once, kept so they are replayed) are not generated:
# they are carried over.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
for t in pipeline; do
  cargo fuzz build --release "$t"
  kept="$(mktemp -d)"
  cp seeds/"$t"/regression-* "$kept"/ 2>/dev/null || true
  HYBRIDWAY_FUZZ_WRITE_SEEDS="seeds/$t" cargo fuzz run --release "$t" -- -runs=0
  cp "$kept"/* seeds/"$t"/ 2>/dev/null || true
  rm -rf "$kept"
done
