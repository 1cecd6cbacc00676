#!/usr/bin/env bash
# Line coverage of dataplane/src by one fuzz target's corpus and checked-in seeds
# (default: pipeline).
# Usage: scripts/fuzz-coverage.sh [target]   (run the target first to grow its corpus:
# scripts/fuzz-smoke.sh or `cargo fuzz run <target> corpus/<target>`; with an empty
# corpus the figure is the seeds' alone)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=${1:-pipeline}
export RUSTC_BOOTSTRAP=1
# Coverage data is merged and read with llvm-profdata/llvm-cov of rustc's own LLVM
# major version; Debian packages them as llvm-<major> (rustup's llvm-tools component
# is the other source). Installed here, not by install-deps.sh: CI does not run this.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
llvm=/usr/lib/llvm-$llvm_major/bin
if [[ ! -x $llvm/llvm-cov ]]; then
  echo "installing: llvm-$llvm_major (coverage tools matching rustc)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm_major"
fi
[[ -x $llvm/llvm-cov ]] || { echo "no $llvm/llvm-cov (package llvm-$llvm_major)" >&2; exit 1; }
mkdir -p "corpus/$target"
dirs=("corpus/$target")
[[ -d seeds/$target ]] && dirs+=("seeds/$target")
# cargo-fuzz builds the instrumented binary in a directory of its own under
# target/<triple>/coverage; given --target-dir (or CARGO_TARGET_DIR) it would build it
# over the release binary the fuzzer runs instead.
unset CARGO_TARGET_DIR
cargo fuzz coverage "$target" "${dirs[@]}" --llvm-path "$llvm"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="target/$triple/coverage/$triple/release/$target"
"$llvm/llvm-cov" report "$bin" -instr-profile="coverage/$target/coverage.profdata" \
  --ignore-filename-regex='(\.cargo|rustc|/control/|/fuzz/)' | sed "s|$(cd .. && pwd)/||"
