#!/usr/bin/env bash
# Service benchmark (not a test): pod -> ClusterIP TCP throughput and new connections
# per second through hybridway (AF_XDP and TUN) beside the real kube-proxy (iptables
# mode, built by scripts/k8s-lab.sh from the API server's module), in one run on the
# Services cluster of the tests (a real API server, flanneld on the cloud node);
# prints each figure and the ratio to kube-proxy, and under each row what explains it
# (load, retransmissions, listener and dataplane drops, the worker's wait for a CPU).
# Needs root, python3, iperf3, ethtool. The pods' veths keep the kernel's offloads
# wherever the kernel or TUN forwards (`--offloads kernel`); `--offloads off` turns
# them off on every veth, as AF_XDP needs on its own node.
# Usage: bench/e2e/services.sh [--seconds 10] [--backend both|af_xdp|tun] [--offloads kernel|off]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin hybridway --bin hybridway-lab
exec "${CARGO_TARGET_DIR:-target}/release/hybridway-lab" bench-services "$@"
