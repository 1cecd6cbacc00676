#!/usr/bin/env bash
# Line coverage of dataplane/src by one fuzz target's corpus (default: pipeline).
# Usage: scripts/fuzz-coverage.sh [target]   (run the target first to grow its corpus:
# scripts/fuzz-smoke.sh or `cargo fuzz run <target> corpus/<target>`)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=${1:-pipeline}
export RUSTC_BOOTSTRAP=1
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
llvm=/usr/lib/llvm-$llvm_major/bin
[[ -x $llvm/llvm-cov ]] || { echo "no $llvm/llvm-cov: scripts/install-deps.sh installs llvm-$llvm_major" >&2; exit 1; }
mkdir -p "corpus/$target"
target_dir=${CARGO_TARGET_DIR:-target}
cargo fuzz coverage "$target" "corpus/$target" --target-dir "$target_dir" --llvm-path "$llvm"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="$target_dir/$triple/coverage/$triple/release/$target"
"$llvm/llvm-cov" report "$bin" -instr-profile="coverage/$target/coverage.profdata" \
  --ignore-filename-regex='(\.cargo|rustc|/control/|/fuzz/)' | sed "s|$(cd .. && pwd)/||"
