#!/usr/bin/env bash
# Runs every hybridway test on a fresh Debian machine, as root: installs what is
# missing, builds the Kubernetes test rig's binaries once (scripts/k8s-lab.sh), runs
# the unit, property and network-namespace tests (TUN, AF_XDP, FRR, BIRD and Linux
# VXLAN peers, a real kube-apiserver), the demo's hybrid cluster, then a short run of
# every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "scripts/test.sh must run as root: the tests create network namespaces, TUN devices and XDP sockets" >&2
  exit 1
fi

# Each phase's start, in seconds since this script started: what a cold run spends
# where (CI has 90 minutes; a cold run should stay under 60).
phase() { echo "== $* [${SECONDS} s]"; }

. scripts/install-deps.sh   # sourced: it may put a fresh rustup toolchain on PATH

phase "CNI lab (libcni driver, reference plugins; cached)"
scripts/cni-lab.sh build

phase "formatting"
cargo fmt --all -- --check

phase "Kubernetes test rig: etcd, kube-apiserver, kubectl, kube-proxy (cached by version; a cold build compiles for many minutes)"
./scripts/k8s-lab.sh build
# The cloud node of the agent's Kubernetes tests (control/tests/agent_k8s.rs).
./scripts/k8s-lab.sh bin flanneld >/dev/null

phase "unit, property and namespace tests"
cargo test --workspace --all-targets --no-fail-fast
cargo test --workspace --doc

# The README's demo, as a check that it runs: about a minute once the rig is cached
# (the binaries are already built by the tests above; hybridway-lab is small).
phase "the demo: a hybrid cluster on this machine"
cargo build --bin hybridway --bin hybridway-cni --bin hybridway-lab
"${CARGO_TARGET_DIR:-target}/debug/hybridway-lab" cluster --seconds 1

phase "fuzz smoke run"
./scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-15}"
phase "all tests passed"
