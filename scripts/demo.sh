#!/usr/bin/env bash
# The README's "run" command: installs the prerequisites, builds hybridway and runs
# the two-node demo (overlay and underlay, SNAT, counters) in network namespaces.
# Needs root. Everything the demo creates is removed when it ends, fails or is
# interrupted with Ctrl-C. Extra arguments go to `hybridway-lab demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
  echo "the demo creates network namespaces and attaches XDP programs: run it as root" >&2
  exit 1
fi
. scripts/install-deps.sh   # sourced: it may put a fresh rustup toolchain on PATH
cargo build --release --bin hybridway --bin hybridway-lab
exec "${CARGO_TARGET_DIR:-target}/release/hybridway-lab" demo "$@"
