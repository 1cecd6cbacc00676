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
# A 2 MiB last-level cache (an L2 of today's server cores) that 10,000 flows fit
# and 1,000,000 do not: its misses are the cache lines an operation waits for
# from memory. The host's own LL can be hundreds of MiB and hide them.
# CONNTRACK_LLC=size,assoc,line overrides it (e.g. 33554432,16,64 for a 32 MiB
# L3, which keeps the outbound index's tags but not the entries).
llc=${CONNTRACK_LLC:-2097152,16,64}
printf '%-45s %10s %16s\n' case instr/op 'LL misses/op'
for run in "established 10000" "established 1000000" "full"; do
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --cache-sim=yes --LL=$llc --callgrind-out-file="$out" \
    "$bin" $run >/dev/null 2>&1
  # Inclusive cost of each case function: Ir, then LL data read and write misses.
  callgrind_annotate --inclusive=yes --show=Ir,DLmr,DLmw "$out" 2>/dev/null |
    python3 -c '
import re, sys
ops, run = int(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    m = re.search(r"conntrack_instructions\.rs:conntrack_instructions::(case_\w+) \[", line)
    if not m:
        continue
    cols = re.sub(r"\(\s*[\d.]+%\)", "", line[: m.start()]).split()
    ir, mr, mw = (0 if c == "." else int(c.replace(",", "")) for c in cols[:3])
    label = f"{m.group(1)[5:]} ({run})"
    print(f"{label:45} {ir / ops:10.1f} {(mr + mw) / ops:16.2f}")
' "$ops" "$run"
done
