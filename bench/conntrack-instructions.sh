#!/usr/bin/env bash
# Instructions and simulated last-level-cache data misses per conntrack operation,
# from `benches/conntrack_instructions.rs` run under callgrind: counts that do not
# swing with the load of a shared machine, unlike the wall clock of
# `cargo bench --bench conntrack`. Takes a few minutes (two million-flow tables
# are built under valgrind).
#
#   bench/conntrack-instructions.sh [path/to/conntrack_instructions binary]
#
# Without an argument the bench profile binary is built. Needs valgrind
# (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [[ -z $bin ]]; then
  bin=$(cargo bench -p hybridway-bench --bench conntrack_instructions --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "conntrack_instructions" and m.get("executable"):
        print(m["executable"])')
fi
out=$(mktemp /tmp/conntrack-callgrind.XXXXXX)
trap 'rm -f "$out"' EXIT
ops=200000
printf '%-45s %10s %18s\n' case instr/op 'LL data misses/op'
for run in "established 10000" "established 1000000" "full"; do
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out" "$bin" $run \
    >/dev/null 2>&1
  # Inclusive cost per function: Ir, then the last-level data read and write misses.
  callgrind_annotate --inclusive=yes --show=Ir,DLmr,DLmw --threshold=100 "$out" |
    python3 -c '
import re, sys
ops, run = int(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s.*?([\d,]+)\s.*?([\d,]+)\s.*::(case_\w+)", line)
    if m:
        ir, mr, mw, name = (m.group(1), m.group(2), m.group(3), m.group(4))
        num = lambda s: int(s.replace(",", ""))
        label = f"{name[5:]} ({run})"
        print(f"{label:45} {num(ir) / ops:10.1f} {(num(mr) + num(mw)) / ops:18.2f}")
' "$ops" "$run"
done
