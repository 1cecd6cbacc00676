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
  # the CNI tests chain the reference portmap plugin (iptables rules)
  python3 iptables
  frr bird2 gobgpd
  # instructions per packet of the pipeline (bench/instructions.sh)
  valgrind
  # the Kubernetes test rig (scripts/k8s-lab.sh): certificates, readiness probes, locks
  openssl curl util-linux
  # cluster DNS through a Service in the Service tests: a resolver pod and a client
  dnsmasq-base bind9-dnsutils
  # the reference kube-proxy's nftables mode (its rules go through the nft program)
  nftables
  # instruction counts that do not swing with load (bench/conntrack-instructions.sh)
  valgrind
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

# Go builds the test peers (scripts/k8s-lab: kube-apiserver, etcd, kubectl, flanneld;
# scripts/cni-lab.sh: libcni's driver and the reference plugins); it is never part of
# the product. Use a Go >= 1.23 on PATH or in /usr/local/go; else take a release from
# the Go module proxy, where it is published as the module golang.org/toolchain, with
# Debian's older go doing the download (it knows the proxy). Newer releases that a
# go.mod asks for are then fetched by go itself (GOTOOLCHAIN=auto in k8s-lab.sh).
GO_FALLBACK=1.24.6
go_new_enough() {
  command -v go >/dev/null 2>&1 || return 1
  local v
  v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  [[ $(printf '%s\n1.23\n' "${v%%[a-z]*}" | sort -V | head -1) == 1.23 ]]
}
if ! go_new_enough && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! go_new_enough; then
  godir=/var/cache/hybridway-lab/go$GO_FALLBACK
  if [[ ! -x $godir/bin/go ]]; then
    command -v go >/dev/null 2>&1 || {
      echo "installing: golang-go (only to download Go $GO_FALLBACK)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go
    }
    echo "fetching Go $GO_FALLBACK from the Go module proxy (golang.org/toolchain)"
    modcache=$(mktemp -d)
    toolchain="golang.org/toolchain@v0.0.1-go$GO_FALLBACK.linux-amd64"
    GOMODCACHE="$modcache" GOFLAGS=-mod=mod go mod download "$toolchain"
    mkdir -p "$(dirname "$godir")"
    cp -r "$modcache/$toolchain" "$godir"
    chmod -R u+w "$modcache" "$godir" && rm -rf "$modcache"
    # Module zips keep no file modes: the tools must be made executable again.
    chmod +x "$godir"/bin/* "$godir"/pkg/tool/*/*
  fi
  export PATH="$godir/bin:$PATH"
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
