#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd + kube-apiserver built from their
# Go modules (scripts/k8s-lab/go.mod pins the versions), cached by version, started
# per test in a directory of its own and reachable from the test's network
# namespaces over a bridge. There is no kubelet, scheduler or controller-manager:
# tests create Node objects themselves, as a kubelet would.
#
#   k8s-lab.sh build                      build and cache kube-apiserver, kubectl, etcd
#   k8s-lab.sh bin NAME                   path of a cached binary (kube-apiserver, etcd,
#                                         kubectl, kube-proxy, flanneld), built if missing
#   k8s-lab.sh up DIR                     start an instance; last stdout line: kubeconfig
#   k8s-lab.sh down DIR                   stop it by PID, release its address
#   k8s-lab.sh attach DIR NETNS IFNAME ADDR/PREFIX
#                                         veth from a namespace into the lab bridge
#   k8s-lab.sh detach DIR NETNS IFNAME
#   k8s-lab.sh token DIR NAMESPACE SA     path of a kubeconfig for a service account
#
# Progress goes to stderr; only results go to stdout. Needs root (bridge, addresses).
set -euo pipefail

LAB_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s-lab"
LAB_CACHE="${HYBRIDWAY_LAB_CACHE:-/var/cache/hybridway-lab}"
# Shared run-time state (bridge owner list, address reservations): under /run so a
# reboot, which also removes the bridge, forgets it too.
LAB_RUN="${HYBRIDWAY_LAB_RUN:-/run/hybridway-lab}"

log() { echo "k8s-lab: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Versions: the one home of each version is a go.mod; everything else reads it.

# module_version GOMOD MODULE -> the version GOMOD requires of MODULE
module_version() {
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && $0 ~ / v[0-9]/ {
    for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit }
  }' "$1"
}
K8S_VERSION="$(module_version "$LAB_SRC/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(module_version "$LAB_SRC/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || die "cannot read the k8s.io/kubernetes and etcd versions from $LAB_SRC/go.mod"
K8S_CACHE="$LAB_CACHE/k8s-$K8S_VERSION"
ETCD_CACHE="$LAB_CACHE/etcd-$ETCD_VERSION"

# The Go package that builds each binary, and the cache directory it lands in.
go_package() {
  case "$1" in
    kube-apiserver | kubectl | kube-proxy) echo "k8s.io/kubernetes/cmd/$1" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    flanneld) echo "github.com/flannel-io/flannel" ;;
    *) return 1 ;;
  esac
}
cache_dir_of() {
  case "$1" in
    etcd) echo "$ETCD_CACHE" ;;
    flanneld) echo "$LAB_CACHE/flannel-$(module_version "$LAB_SRC/flannel/go.mod" github.com/flannel-io/flannel)" ;;
    *) echo "$K8S_CACHE" ;;
  esac
}
src_dir_of() {
  case "$1" in
    flanneld) echo "$LAB_SRC/flannel" ;;
    *) echo "$LAB_SRC" ;;
  esac
}

# The version Kubernetes' own build stamps into its binaries (hack/lib/version.sh):
# without it they report v0.0.0-master and kubectl warns about version skew.
k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local pkg flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# build_binaries NAME... : compiles the named binaries that are not cached yet, in
# one `go build` so shared packages compile once, then moves each into its cache
# directory. Serialised by a lock so parallel tests asking for a binary wait for one
# build instead of starting several.
build_binaries() {
  mkdir -p "$LAB_CACHE"
  exec 8>"$LAB_CACHE/build.lock"
  flock 8
  local name missing=()
  for name in "$@"; do
    [[ -x "$(cache_dir_of "$name")/$name" ]] || missing+=("$name")
  done
  if ((${#missing[@]} == 0)); then
    flock -u 8
    return 0
  fi
  # One go build per source module (flannel has a module of its own).
  local src
  for src in $(for name in "${missing[@]}"; do src_dir_of "$name"; done | sort -u); do
    local group=()
    for name in "${missing[@]}"; do
      [[ "$(src_dir_of "$name")" == "$src" ]] && group+=("$name")
    done
    go_build "$src" "${group[@]}"
  done
  flock -u 8
}

go_build() {
  local src="$1"
  shift
  command -v go >/dev/null || die "no Go toolchain on PATH (scripts/install-deps.sh installs one)"
  local out pkgs=() name
  out="$(mktemp -d "$LAB_CACHE/.build.XXXXXX")"
  for name in "$@"; do
    pkgs+=("$(go_package "$name")")
  done
  log "building $* (Go modules in ${src#"$LAB_SRC/../"}); a cold build downloads the modules and compiles for many minutes on two cores"
  local start=$SECONDS
  (
    cd "$src"
    log "downloading modules"
    nice -n 10 go mod download
    # The total number of packages, so progress can say "n of N".
    go list -deps "${pkgs[@]}" 2>/dev/null | wc -l >"$out/.total" || true
  )
  local total
  total="$(cat "$out/.total" 2>/dev/null || echo '?')"
  log "modules ready after $((SECONDS - start)) s; compiling (at most $total packages)"
  # go build -v names every package as it compiles: count those lines, and report
  # once a minute (go build -v prints nothing for packages already in Go's cache).
  local progress="$out/.progress" rc=0
  : >"$progress"
  (
    cd "$src"
    CGO_ENABLED=0 nice -n 10 go build -v -trimpath -ldflags "$(k8s_ldflags)" -o "$out/" "${pkgs[@]}"
  ) 2>"$progress" &
  local build_pid=$! next=60
  while kill -0 "$build_pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS - start >= next)); then
      next=$((next + 60))
      log "still compiling $*: $(((SECONDS - start) / 60)) min elapsed, $(grep -vc '^#\|^go: ' "$progress" || true) of at most $total packages, now $(tail -n 1 "$progress")"
    fi
  done
  wait "$build_pid" || rc=$?
  if ((rc != 0)); then
    cat "$progress" >&2
    rm -rf "$out"
    die "go build of $* failed (exit $rc)"
  fi
  for name in "$@"; do
    local built="$out/$(basename "$(go_package "$name")")"
    # A module path's major-version suffix is not the binary's name: etcd's main
    # package is go.etcd.io/etcd/server/v3, which go build names "server".
    [[ "$(go_package "$name")" == */v[0-9]* ]] && built="$out/$(basename "$(dirname "$(go_package "$name")")")"
    local dest
    dest="$(cache_dir_of "$name")"
    mkdir -p "$dest"
    mv -f "$built" "$dest/$name"
  done
  local took=$((SECONDS - start))
  echo "$* $took s (download + compile, $(date -u +%FT%TZ))" >>"$LAB_CACHE/build-times"
  rm -rf "$out"
  log "built $* in $took s"
}

# The binaries `up` runs live in one directory (LAB_BIN): etcd is linked beside the
# Kubernetes binaries of the release that pins its version.
link_etcd() {
  if [[ ! -e "$K8S_CACHE/etcd" ]]; then
    ln -sfn "$ETCD_CACHE/etcd" "$K8S_CACHE/etcd"
  fi
}

cmd_build() {
  build_binaries kube-apiserver kubectl etcd
  link_etcd
  log "cached in $K8S_CACHE (etcd $ETCD_VERSION in $ETCD_CACHE)"
}

cmd_bin() {
  local name="${1:-}"
  go_package "$name" >/dev/null || die "unknown binary '$name' (kube-apiserver, etcd, kubectl, kube-proxy, flanneld)"
  build_binaries "$name"
  echo "$(cache_dir_of "$name")/$name"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    bin) cmd_bin "$@" ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
