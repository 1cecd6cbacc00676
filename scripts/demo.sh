#!/usr/bin/env bash
# The README's "run" command: installs the prerequisites, builds hybridway and runs
# the demo. Needs root. Everything the demo creates is removed when it ends, fails
# or is interrupted with Ctrl-C; the exit status is non-zero when a check failed.
#
#   scripts/demo.sh [ARGS]          a hybrid cluster on this machine: a local
#                                   kube-apiserver, deploy/, 3 controllers, a flannel
#                                   cloud node, two hybrid pools of two nodes, pods
#                                   through the CNI plugin, BGP to an FRR switch, a
#                                   leader failover (`hybridway-lab cluster --help`)
#   scripts/demo.sh --quick [ARGS]  the standalone two-node demo without Kubernetes
#                                   (overlay, underlay, SNAT; `hybridway-lab demo --help`)
#
# The first run builds the control plane's binaries from their Go modules (many
# minutes, progress shown; cached in /var/cache/hybridway-lab); later runs start at
# once. HYBRIDWAY_DEMO_PROFILE=debug uses a debug build (faster to build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
  echo "the demo creates network namespaces and attaches XDP programs: run it as root" >&2
  exit 1
fi
. scripts/install-deps.sh   # sourced: it may put a fresh rustup toolchain on PATH

demo=cluster
if [[ "${1:-}" == "--quick" ]]; then
  demo=demo
  shift
fi
profile="${HYBRIDWAY_DEMO_PROFILE:-release}"
if [[ "$profile" == release ]]; then
  cargo build --release --bin hybridway --bin hybridway-cni --bin hybridway-lab
else
  cargo build --bin hybridway --bin hybridway-cni --bin hybridway-lab
fi
exec "${CARGO_TARGET_DIR:-target}/$profile/hybridway-lab" "$demo" "$@"
