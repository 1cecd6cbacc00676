#!/usr/bin/env bash
# Installs what hybridway's build, tests, demo and fuzzing need on Debian.
# Idempotent: installs only what is missing. Needs root (CI runs as root).
set -euo pipefail

packages=(
  # building: clang compiles the XDP steering program (dataplane/bpf) for -target bpf
  clang llvm libelf-dev zlib1g-dev pkg-config m4 make gcc curl ca-certificates
  # network namespaces and real peers for the tests and the demo
  iproute2 iputils-ping tcpdump iperf3 netsniff-ng ethtool
  # the SNAT load tests and benchmark: a Python connection driver, the kernel's MASQUERADE;
  # the CNI tests chain the reference portmap plugin (iptables rules);
  # scripts/cni-lab.sh may unpack a Go toolchain
  python3 iptables unzip
  frr bird2 gobgpd
  # the Kubernetes test rig (scripts/k8s-lab.sh): certificates, readiness probes, locks
  openssl curl util-linux
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged daemons must not run on their own: tests start their own instances.
for svc in frr bird gobgpd; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

# Go builds the Kubernetes test rig's binaries (scripts/k8s-lab/go.mod). Debian's Go
# may be older than that go.mod asks for: k8s-lab.sh then lets it fetch the right
# toolchain, itself a Go module, from the module proxy (GOTOOLCHAIN=auto).
if ! command -v go >/dev/null 2>&1; then
  if [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  else
    echo "installing: golang-go"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "no Rust toolchain on PATH: installing one with rustup (needs access to static.rust-lang.org)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
