#!/usr/bin/env bash
# Instructions per packet of the pipeline, per path (64-byte packets, batches of 64,
# after a warm-up), counted by valgrind's callgrind: a figure that does not swing with
# the machine's load as times do. Release build (the bench profile's settings).
# Usage: bench/instructions.sh [batches]          (default 1000 batches per path;
#        PATHS="dnat snat" to count only some; nodeport, npreply: NodePort flows)
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-1000}
command -v valgrind >/dev/null || { echo "valgrind is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
cargo build --release -q -p hybridway-bench --bin pipeline_instructions
bin="${CARGO_TARGET_DIR:-target}/release/pipeline_instructions"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-8s %12s\n' path instr/packet
for path in ${PATHS:-encap decap snat unsnat dnat nodeport npreply}; do
  valgrind --tool=callgrind --toggle-collect='*counted_batch*' \
    --callgrind-out-file="$out/$path.cg" "$bin" "$path" "$batches" >"$out/$path.log" 2>&1 ||
    { cat "$out/$path.log" >&2; exit 1; }
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$path.cg")
  awk -v ir="$ir" -v n="$((batches * 64))" -v p="$path" 'BEGIN { printf "%-8s %12.1f\n", p, ir / n }'
done
