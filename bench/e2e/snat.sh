#!/usr/bin/env bash
# SNAT benchmark (not a test): connections held and short connections to one outside
# ip:port through hybridway (AF_XDP and TUN) beside the kernel's MASQUERADE, in one
# run on the demo's namespace topology; prints each figure and the ratio to the
# kernel. Needs root, python3 and iptables.
# Usage: bench/e2e/snat.sh [--seconds 60] [--connections 30000] [--backend both|af_xdp|tun]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin hybridway --bin hybridway-lab
exec "${CARGO_TARGET_DIR:-target}/release/hybridway-lab" bench-snat "$@"
