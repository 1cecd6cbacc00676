#!/usr/bin/env bash
# Builds what the CNI tests drive, cached by version under
# /var/cache/hybridway-lab/cni-<versions>/ (nothing is rebuilt when it is there):
#   bin/cni-driver   scripts/cni-driver, a small runtime on libcni (the library
#                    containerd and CRI-O use), rebuilt when its source changes
#   bin/portmap, bin/bridge, bin/host-local   the reference plugins, built from
#                    github.com/containernetworking/plugins (Debian's 1.1.1 cannot
#                    read a cniVersion 1.1.0 list)
# Everything comes from the Go module proxy; scripts/install-deps.sh provides Go.
#
#   scripts/cni-lab.sh build   build what is missing, showing progress
#   scripts/cni-lab.sh path    print the cache directory (tests read it)
set -euo pipefail
cd "$(dirname "$0")/.."

LIBCNI_VERSION=v1.3.0      # must match scripts/cni-driver/go.mod; has STATUS and GC
PLUGINS_VERSION=v1.7.1     # speaks CNI 1.1.0
PLUGINS=(portmap bridge host-local)
dir="/var/cache/hybridway-lab/cni-libcni-${LIBCNI_VERSION}-plugins-${PLUGINS_VERSION}"

case "${1:-build}" in
  path) echo "$dir"; exit 0 ;;
  build) ;;
  *) echo "usage: $0 build|path" >&2; exit 64 ;;
esac

command -v go >/dev/null 2>&1 || { echo "cni-lab: no Go on PATH (scripts/install-deps.sh puts one there)" >&2; exit 1; }
mkdir -p "$dir/bin"
export GOFLAGS=-mod=mod GOBIN="$dir/bin"

for p in "${PLUGINS[@]}"; do
  if [[ -x "$dir/bin/$p" ]]; then
    echo "cni-lab: $p $PLUGINS_VERSION cached"
  else
    echo "cni-lab: building $p $PLUGINS_VERSION (containernetworking/plugins) ..."
    nice -n 10 go install "github.com/containernetworking/plugins/plugins/$( [[ $p == host-local ]] && echo ipam || echo "$( [[ $p == portmap ]] && echo meta || echo main)")/$p@$PLUGINS_VERSION"
  fi
done

sum=$(cat scripts/cni-driver/go.mod scripts/cni-driver/go.sum scripts/cni-driver/*.go | sha256sum | cut -c1-16)
if [[ -x "$dir/bin/cni-driver" && "$(cat "$dir/cni-driver.sum" 2>/dev/null)" == "$sum" ]]; then
  echo "cni-lab: cni-driver (libcni $LIBCNI_VERSION) cached"
else
  echo "cni-lab: building cni-driver on libcni $LIBCNI_VERSION ..."
  (cd scripts/cni-driver && nice -n 10 go build -o "$dir/bin/cni-driver" .)
  echo "$sum" >"$dir/cni-driver.sum"
fi
echo "cni-lab: ready in $dir/bin"
