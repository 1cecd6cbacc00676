#!/usr/bin/env bash
# End-to-end benchmark (not a test): pod-to-pod TCP throughput (1 and 4 streams) and
# 64-byte UDP packet rate through hybridway (AF_XDP, overlay and underlay) and through
# the kernel's VXLAN (flannel-style) and routing paths, on the demo's namespace
# topology, in one run; prints each figure and the ratio to the kernel path.
# Needs root. Usage: bench/e2e/run.sh [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin hybridway --bin hybridway-lab
exec "${CARGO_TARGET_DIR:-target}/release/hybridway-lab" bench-e2e "$@"
