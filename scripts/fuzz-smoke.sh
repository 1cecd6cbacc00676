#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 15 s each), starting from
# its checked-in seeds (fuzz/seeds/<target>/, where a target has them) and the local
# corpus (fuzz/corpus/<target>/, git-ignored, where new inputs go).
# Usage: scripts/fuzz-smoke.sh [seconds-per-target]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-15}
export RUSTC_BOOTSTRAP=1   # cargo fuzz needs nightly flags; this stable toolchain allows them so
targets=$(cargo fuzz list)
cargo fuzz build --release
failed=0
for t in $targets; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [[ -d seeds/$t ]] && dirs+=("seeds/$t")
  if cargo fuzz run --release "$t" "${dirs[@]}" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"/tmp/fuzz-$t.log" 2>&1; then
    echo "fuzz $t: ok ($(grep -o 'Done [0-9]* runs' "/tmp/fuzz-$t.log" | tail -1))"
  else
    echo "fuzz $t: FAILED" ; tail -40 "/tmp/fuzz-$t.log"; failed=$((failed + 1))
  fi
done
n=$(echo $targets | wc -w)
echo "fuzz: $((n - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
