#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd + kube-apiserver built from their
# Go modules (scripts/k8s-lab/go.mod pins the versions), cached by version, started
# per test in a directory of its own and reachable from the test's network
# namespaces over a bridge. There is no kubelet, scheduler or controller-manager:
# tests create Node objects themselves, as a kubelet would.
#
#   k8s-lab.sh build                      build and cache kube-apiserver, kubectl, kube-proxy, etcd
#   k8s-lab.sh bin NAME                   path of a cached binary (kube-apiserver, etcd,
#                                         kubectl, kube-proxy, flanneld), built if missing
#   k8s-lab.sh up DIR                     start an instance; last stdout line: kubeconfig
#   k8s-lab.sh down DIR                   stop it by PID, release its address
#   k8s-lab.sh attach DIR NETNS IFNAME ADDR/PREFIX
#                                         veth from a namespace into the lab bridge
#   k8s-lab.sh detach DIR NETNS IFNAME
#   k8s-lab.sh token DIR NAMESPACE SA     path of a kubeconfig for a service account
#   k8s-lab.sh list                       instances holding an address, and their state
#   k8s-lab.sh watch DIR PID              (started by up) run down DIR once PID ends
#
# Environment: HYBRIDWAY_LAB_CACHE (binaries, /var/cache/hybridway-lab),
# HYBRIDWAY_LAB_UP_TIMEOUT (seconds up waits for /readyz, 180: test binaries start two
# instances at once on a loaded 2-core machine; only a broken instance waits that long),
# HYBRIDWAY_LAB_OWNER_PID (up: stop the instance when that process ends).
# Progress goes to stderr; only results go to stdout. Needs root (bridge, addresses).
set -euo pipefail

LAB_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
LAB_SRC="$(dirname "$LAB_SCRIPT")/k8s-lab"
LAB_CACHE="${HYBRIDWAY_LAB_CACHE:-/var/cache/hybridway-lab}"
# Shared run-time state (bridge owner list, address reservations): under /run so a
# reboot, which also removes the bridge, forgets it too.
LAB_RUN=/run/hybridway-lab

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

# The version each project's own build stamps into its binaries (Kubernetes'
# hack/lib/version.sh, flannel's Makefile): without it Kubernetes binaries report
# v0.0.0-master and kubectl warns about version skew.
ldflags_for() {
  local src="$1" flags="-s -w" pkg
  if [[ "$src" == "$LAB_SRC/flannel" ]]; then
    flags+=" -X github.com/flannel-io/flannel/pkg/version.Version=$(module_version "$src/go.mod" github.com/flannel-io/flannel)"
  else
    local minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
  fi
  echo "$flags"
}

# cached NAME...: every one of them is in the cache.
cached() {
  local name
  for name in "$@"; do
    [[ -x "$(cache_dir_of "$name")/$name" ]] || return 1
  done
}

# build_binaries NAME... : compiles the named binaries that are not cached yet, in
# one `go build` per Go module so shared packages compile once, then moves each into
# its cache directory. Serialised by a lock so parallel tests asking for a binary
# wait for one build instead of starting several.
build_binaries() {
  # A binary lands in the cache by rename, whole: if all are there, no lock needed.
  cached "$@" && return 0
  mkdir -p "$LAB_CACHE"
  exec 8>"$LAB_CACHE/k8s-lab.build.lock"
  flock 8
  local name missing=()
  for name in "$@"; do
    cached "$name" || missing+=("$name")
  done
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
  # An older go fetches the toolchain go.mod asks for (a module on the Go proxy).
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  # go.sum is committed: every module download is checked against it.
  local out pkgs=() name
  out="$(mktemp -d "$LAB_CACHE/.build.XXXXXX")"
  for name in "$@"; do
    pkgs+=("$(go_package "$name")")
  done
  log "building $* (Go module ${src#"$(dirname "$LAB_SRC")/"}); a cold build downloads the modules and compiles for many minutes on two cores"
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
    # Static Go binaries, except flanneld: on amd64 its UDP backend is C (as in
    # flannel's own Makefile).
    local cgo=0
    [[ "$src" == "$LAB_SRC/flannel" ]] && cgo=1
    CGO_ENABLED=$cgo nice -n 10 go build -v -trimpath -buildvcs=false -ldflags "$(ldflags_for "$src")" -o "$out/" "${pkgs[@]}"
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
  # kube-proxy (the Service tests' reference) in the same go build: it shares most
  # of its packages with the API server, so it costs little there.
  build_binaries kube-apiserver kubectl kube-proxy etcd
  link_etcd
  log "cached in $K8S_CACHE (etcd $ETCD_VERSION in $ETCD_CACHE)"
}

cmd_bin() {
  local name="${1:-}"
  go_package "$name" >/dev/null || die "unknown binary '$name' (kube-apiserver, etcd, kubectl, kube-proxy, flanneld)"
  build_binaries "$name"
  echo "$(cache_dir_of "$name")/$name"
}

# ---------------------------------------------------------------------------
# Network: one bridge in the root namespace, shared by every instance; each
# instance owns one address on it, each attached test namespace one veth into it.

BRIDGE=hwlab0
LAB_NET=198.18.200 # the rig's /24 (DESIGN.md address plan)
BRIDGE_ADDR=$LAB_NET.1
FIRST_SERVICE_IP=198.18.240.1
SERVICE_CIDR=198.18.240.0/20
API_PORT=6443

# Everything that changes the shared network state (bridge, reservations) runs
# under this lock, so instances starting at once never take the same address.
lock_network() {
  mkdir -p "$LAB_RUN/addr"
  exec 9>"$LAB_RUN/lock"
  flock 9
}
unlock_network() { flock -u 9; }

# pid_alive PIDFILE NAME: the process in PIDFILE lives and is NAME (a PID reused by
# another program after a crash does not count).
pid_alive() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# An instance is alive while its `up`, etcd or kube-apiserver runs.
instance_alive() {
  pid_alive "$1/up.pid" k8s-lab.sh || pid_alive "$1/etcd.pid" etcd ||
    pid_alive "$1/kube-apiserver.pid" kube-apiserver
}

# A reservation whose owner directory is gone, names another address, or runs
# nothing any more (its test was killed before `down`) is stale.
reservation_stale() {
  local n="$1" owner
  owner="$(cat "$LAB_RUN/addr/$n" 2>/dev/null)" || return 0
  [[ "$(cat "$owner/addr" 2>/dev/null)" == "$LAB_NET.$n" ]] || return 0
  ! instance_alive "$owner"
}

release_reservation() {
  ip addr del "$LAB_NET.$1/32" dev "$BRIDGE" 2>/dev/null || true
  rm -f "$LAB_RUN/addr/$1"
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  fi
  # The API server sends from this namespace through the bridge: with tx checksum
  # offload on, its frames reach the attached namespaces with checksums left for a
  # NIC to finish (CHECKSUM_PARTIAL), which no veth does, and an AF_XDP node sees
  # them unfinished. Frames from a real wire are complete: the stack finishes them
  # here instead (on every start, so a bridge made before this also gets it).
  ethtool -K "$BRIDGE" tx off >/dev/null
  ip link set "$BRIDGE" up
}

# Removes the bridge once no live instance holds an address on it.
remove_bridge_if_unused() {
  local f n
  for f in "$LAB_RUN"/addr/*; do
    [[ -e "$f" ]] || continue
    n="$(basename "$f")"
    if reservation_stale "$n"; then
      release_reservation "$n"
    else
      return 0
    fi
  done
  # Veths outlive their bridge (they are only unplugged): remove them with it.
  for f in "$LAB_RUN"/attached/*; do
    [[ -e "$f" ]] && remove_attachment "$f"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# reserve_address DIR -> prints 198.18.200.N, now owned by DIR and on the bridge.
reserve_address() {
  local dir="$1" n
  lock_network
  ensure_bridge
  for n in $(seq 10 250); do
    if [[ -e "$LAB_RUN/addr/$n" ]]; then
      reservation_stale "$n" || continue
      release_reservation "$n"
    fi
    # An address someone configured by hand is not ours to take.
    ip -4 -o addr show dev "$BRIDGE" | grep -q " $LAB_NET.$n/" && continue
    echo "$dir" >"$LAB_RUN/addr/$n"
    echo "$LAB_NET.$n" >"$dir/addr"
    ip addr add "$LAB_NET.$n/32" dev "$BRIDGE"
    unlock_network
    echo "$LAB_NET.$n"
    return 0
  done
  unlock_network
  die "no free address in $LAB_NET.10-250 for a new instance (see $LAB_RUN/addr)"
}

release_address() {
  local dir="$1" addr n
  lock_network
  if addr="$(cat "$dir/addr" 2>/dev/null)"; then
    n="${addr##*.}"
    # Only our own reservation: a stale one may have gone to another instance.
    if [[ "$(cat "$LAB_RUN/addr/$n" 2>/dev/null)" == "$dir" ]]; then
      release_reservation "$n"
    fi
    rm -f "$dir/addr"
  fi
  remove_bridge_if_unused
  unlock_network
}

# ---------------------------------------------------------------------------
# PKI: a CA, serving and client certificates as a kubeadm control plane has them,
# made with openssl (EC P-256: fast to generate, accepted by Go and rustls).

# issue_cert PKI NAME SUBJECT EXTKEYUSAGE [SAN]
issue_cert() {
  local pki="$1" name="$2" subj="$3" eku="$4" san="${5:-}"
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku"
  [[ -n "$san" ]] && ext+="
subjectAltName=$san"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 3650 -extfile <(echo "$ext") \
    -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
}

make_pki() {
  local pki="$1" addr="$2"
  mkdir -p "$pki"
  chmod 700 "$pki"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 -subj "/CN=hybridway-lab-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue_cert "$pki" apiserver "/CN=kube-apiserver" serverAuth \
    "IP:$addr,IP:127.0.0.1,IP:$FIRST_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert "$pki" admin "/O=system:masters/CN=hybridway-lab-admin" clientAuth
  # etcd speaks TLS with client certificates, to clients and to its (single) peer.
  issue_cert "$pki" etcd-server "/CN=etcd" serverAuth,clientAuth "IP:$addr,IP:127.0.0.1"
  issue_cert "$pki" apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth
  # Service-account tokens: kube-apiserver signs with the private key and checks
  # with the public one.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE ADDR CA USER-LINES: a kubeconfig with the CA embedded.
write_kubeconfig() {
  local file="$1" addr="$2" ca="$3" user="$4"
  cat >"$file.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: hybridway-lab
  cluster:
    server: https://$addr:$API_PORT
    certificate-authority-data: $(b64 "$ca")
users:
- name: user
  user:
$user
contexts:
- name: hybridway-lab
  context: {cluster: hybridway-lab, user: user}
current-context: hybridway-lab
KUBECONFIG
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------------------
# Instances

# spawn DIR NAME ARGS...: starts a binary in a session of its own with every file
# descriptor of ours closed (a test reading our output must see EOF when `up`
# exits; the locks must not outlive us), logs in DIR/NAME.log, PID in DIR/NAME.pid.
spawn() {
  local dir="$1" name="$2"
  shift 2
  setsid "$@" </dev/null >"$dir/$name.log" 2>&1 8>&- 9>&- &
  echo $! >"$dir/$name.pid"
}

# stop_process DIR NAME: SIGTERM, then SIGKILL after 10 s.
stop_process() {
  local dir="$1" name="$2" pid i
  if pid_alive "$dir/$name.pid" "$name"; then
    pid="$(cat "$dir/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
      pid_alive "$dir/$name.pid" "$name" || break
      sleep 0.1
    done
    if pid_alive "$dir/$name.pid" "$name"; then
      log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 50); do
        pid_alive "$dir/$name.pid" "$name" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/$name.pid"
}

readyz() {
  local dir="$1" addr="$2"
  curl -sS --max-time 5 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
    --key "$dir/pki/admin.key" "https://$addr:$API_PORT/readyz" 2>/dev/null
}

cmd_up() {
  [[ -n "${1:-}" ]] || die "usage: up DIR"
  mkdir -p "$1"
  local dir
  dir="$(cd "$1" && pwd)"
  [[ ! -e "$dir/addr" ]] || die "$dir already holds an instance ($(cat "$dir/addr")); run: $0 down $dir"
  local timeout="${HYBRIDWAY_LAB_UP_TIMEOUT:-180}"
  build_binaries kube-apiserver kubectl etcd
  link_etcd
  local bin="$K8S_CACHE"
  echo $$ >"$dir/up.pid"
  # Whatever fails from here on leaves nothing running and no address held; the
  # logs stay in DIR.
  UP_DIR="$dir"
  trap 'rc=$?; ((rc == 0)) || stop_instance "$UP_DIR"; rm -f "$UP_DIR/up.pid"' EXIT
  trap 'exit 143' TERM INT
  local start=$SECONDS addr
  addr="$(reserve_address "$dir")"
  log "instance $dir at $addr"
  make_pki "$dir/pki" "$addr"
  local pki="$dir/pki"

  mkdir -p "$dir/etcd-data"
  # --unsafe-no-fsync: the data is thrown away with the test; fsync on a disk shared
  # with several compilers would make every API write wait for it.
  spawn "$dir" etcd "$bin/etcd" --name lab --data-dir "$dir/etcd-data" \
    --listen-client-urls "https://$addr:2379" --advertise-client-urls "https://$addr:2379" \
    --listen-peer-urls "https://$addr:2380" --initial-advertise-peer-urls "https://$addr:2380" \
    --initial-cluster "lab=https://$addr:2380" --initial-cluster-state new \
    --cert-file "$pki/etcd-server.crt" --key-file "$pki/etcd-server.key" \
    --trusted-ca-file "$pki/ca.crt" --client-cert-auth \
    --peer-cert-file "$pki/etcd-server.crt" --peer-key-file "$pki/etcd-server.key" \
    --peer-trusted-ca-file "$pki/ca.crt" --peer-client-cert-auth \
    --unsafe-no-fsync
  # kube-apiserver retries etcd until it answers: both start at once.
  spawn "$dir" kube-apiserver "$bin/kube-apiserver" \
    --bind-address "$addr" --advertise-address "$addr" --secure-port "$API_PORT" \
    --etcd-servers "https://$addr:2379" --etcd-cafile "$pki/ca.crt" \
    --etcd-certfile "$pki/apiserver-etcd-client.crt" --etcd-keyfile "$pki/apiserver-etcd-client.key" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --cert-dir "$pki" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged \
    --profiling=false --v=1

  write_kubeconfig "$dir/kubeconfig" "$addr" "$pki/ca.crt" \
    "    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")"
  {
    printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
    printf 'export LAB_ADDR=%q\n' "$addr"
    printf 'export LAB_BIN=%q\n' "$bin"
    printf 'export LAB_DIR=%q\n' "$dir"
  } >"$dir/env"

  log "waiting for https://$addr:$API_PORT/readyz (at most $timeout s)"
  local name
  until [[ "$(readyz "$dir" "$addr")" == ok ]]; do
    for name in etcd kube-apiserver; do
      pid_alive "$dir/$name.pid" "$name" ||
        die "$name exited during start-up; see $dir/$name.log:
$(tail -n 15 "$dir/$name.log")"
    done
    if ((SECONDS - start >= timeout)); then
      die "kube-apiserver not ready after $timeout s; see $dir/kube-apiserver.log and $dir/etcd.log:
$(grep -v 'FLAG: --' "$dir/kube-apiserver.log" | tail -n 15)"
    fi
    sleep 0.5
  done
  log "ready after $((SECONDS - start)) s; for a shell: . $dir/env"
  if [[ -n "${HYBRIDWAY_LAB_OWNER_PID:-}" ]]; then
    spawn "$dir" watchdog "$LAB_SCRIPT" watch "$dir" "$HYBRIDWAY_LAB_OWNER_PID"
  fi
  echo "$dir/kubeconfig"
}

# start_time PID: when the process started (field 22 of /proc/PID/stat), so that a
# PID reused by another process is not taken for the one we watch.
start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # the command name may hold spaces and parentheses
  echo "$stat" | awk '{print $20}'
}

# watch DIR PID: runs `down DIR` when the process PID ends without having run it
# (a test killed by Ctrl-C or SIGKILL never runs its Drop guard). Started by `up`
# when HYBRIDWAY_LAB_OWNER_PID is set; ends by itself once the instance is down.
cmd_watch() {
  local dir="$1" owner="$2" started
  started="$(start_time "$owner")" || started=gone
  while [[ -e "$dir/addr" && "$(start_time "$owner" || echo gone)" == "$started" && "$started" != gone ]]; do
    sleep 1
  done
  if [[ -e "$dir/addr" ]]; then
    log "owner $owner of $dir ended without down: stopping the instance"
    cmd_down "$dir"
  fi
}

# Stops what an instance runs (in any state of start-up) and frees its network.
stop_instance() {
  local dir="$1" rec owner
  stop_process "$dir" kube-apiserver
  stop_process "$dir" etcd
  # The watchdog, unless it is the one stopping the instance.
  if [[ "$(cat "$dir/watchdog.pid" 2>/dev/null)" != "$$" ]]; then
    pid_alive "$dir/watchdog.pid" "k8s-lab.sh watch" && kill -TERM "$(cat "$dir/watchdog.pid")" 2>/dev/null
  fi
  rm -f "$dir/watchdog.pid"
  lock_network
  for rec in "$LAB_RUN"/attached/*; do
    [[ -e "$rec" ]] || continue
    read -r owner _ <"$rec" || true
    [[ "$owner" == "$dir" ]] && remove_attachment "$rec"
  done
  unlock_network
  release_address "$dir"
}

# Every instance holding an address, for finding one a test left behind.
cmd_list() {
  local f n
  for f in "$LAB_RUN"/addr/*; do
    [[ -e "$f" ]] || continue
    n="$(basename "$f")"
    if reservation_stale "$n"; then
      echo "$LAB_NET.$n $(cat "$f") stale (nothing runs; the next up or down frees it)"
    else
      echo "$LAB_NET.$n $(cat "$f") running"
    fi
  done
}

cmd_down() {
  [[ -n "${1:-}" ]] || die "usage: down DIR"
  [[ -d "$1" ]] || return 0
  local dir
  dir="$(cd "$1" && pwd)"
  # An `up` still running for this directory is stopped first (its exit trap stops
  # what it started), so that it starts nothing after we have looked.
  if pid_alive "$dir/up.pid" k8s-lab.sh; then
    local pid i
    pid="$(cat "$dir/up.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
      pid_alive "$dir/up.pid" k8s-lab.sh || break
      sleep 0.1
    done
  fi
  stop_instance "$dir"
  log "instance $dir stopped"
}

# ---------------------------------------------------------------------------
# Attaching test namespaces

# The root-side veth name: short (IFNAMSIZ), stable per namespace and interface.
veth_name() { echo "hwl$(echo -n "$1/$2" | md5sum | cut -c1-11)"; }

# $LAB_RUN/attached/<veth> records an attachment: "DIR NETNS IFNAME ADDR/PREFIX
# [route]" (the instance, the namespace's side, whether the root namespace got a
# route back). One list for all instances, so no address is attached twice.
remove_attachment() {
  local rec="$1" veth dir netns ifname cidr route
  veth="$(basename "$rec")"
  read -r dir netns ifname cidr route <"$rec" || true
  ip link del "$veth" 2>/dev/null || true
  if [[ "${route:-}" == route ]]; then
    ip route del "${cidr%/*}/32" dev "$BRIDGE" 2>/dev/null || true
  fi
  rm -f "$rec"
}

# Attachments whose veth is gone (the test deleted its namespace) are forgotten;
# prints the record that holds IP, if any. Under the network lock.
attachment_holding() {
  local ip="$1" rec dir netns ifname cidr
  for rec in "$LAB_RUN"/attached/*; do
    [[ -e "$rec" ]] || continue
    if ! ip link show "$(basename "$rec")" >/dev/null 2>&1; then
      remove_attachment "$rec"
      continue
    fi
    read -r dir netns ifname cidr _ <"$rec" || true
    [[ "${cidr%/*}" == "$ip" ]] && echo "$netns/$ifname of $dir"
  done
  return 0
}

cmd_attach() {
  (($# == 4)) || die "usage: attach DIR NETNS IFNAME ADDR/PREFIX"
  local dir netns="$2" ifname="$3" cidr="$4"
  dir="$(cd "$1" 2>/dev/null && pwd)" || die "no instance directory $1"
  [[ -e "$dir/addr" ]] || die "$dir holds no running instance"
  [[ "$cidr" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] ||
    die "ADDR must be an IPv4 address with its prefix length, e.g. 198.18.64.10/24"
  ip netns pids "$netns" >/dev/null 2>&1 || die "no network namespace $netns"
  local ip="${cidr%/*}" veth rec holder route=""
  veth="$(veth_name "$netns" "$ifname")"
  rec="$LAB_RUN/attached/$veth"
  # A node address outside the rig's /24 (the usual case: nodes live in
  # 198.18.0.0/17) reaches the rig on-link, and the root namespace routes back.
  [[ "$ip" == "$LAB_NET".* ]] || route=route
  lock_network
  mkdir -p "$LAB_RUN/attached"
  holder="$(attachment_holding "$ip")"
  if [[ -e "$rec" ]]; then
    unlock_network
    die "$netns/$ifname is already attached ($(cat "$rec")); detach it first"
  fi
  if [[ -n "$holder" ]] || ip -4 -o addr show | grep -q " inet $ip/"; then
    unlock_network
    die "$ip is already in use (${holder:-an address of the root namespace or of an instance})"
  fi
  echo "$dir $netns $ifname $cidr $route" >"$rec"
  if ! {
    ip link add "$veth" type veth peer name "$ifname" netns "$netns" &&
      ip link set "$veth" master "$BRIDGE" up &&
      ip -n "$netns" addr add "$cidr" dev "$ifname" &&
      ip -n "$netns" link set "$ifname" up &&
      ip -n "$netns" link set lo up &&
      if [[ -n "$route" ]]; then
        ip -n "$netns" route add "$LAB_NET.0/24" dev "$ifname" &&
          ip route replace "$ip/32" dev "$BRIDGE"
      fi
  }; then
    remove_attachment "$rec"
    unlock_network
    die "could not attach $netns/$ifname (see the ip error above)"
  fi
  unlock_network
  log "$netns/$ifname ($cidr) attached to $BRIDGE; the API server is https://$(cat "$dir/addr"):$API_PORT"
}

cmd_detach() {
  (($# == 3)) || die "usage: detach DIR NETNS IFNAME"
  local rec
  rec="$LAB_RUN/attached/$(veth_name "$2" "$3")"
  [[ -e "$rec" ]] || return 0
  lock_network
  remove_attachment "$rec"
  unlock_network
}

# ---------------------------------------------------------------------------
# Service-account identities

cmd_token() {
  (($# == 3)) || die "usage: token DIR NAMESPACE SERVICEACCOUNT"
  local dir ns="$2" sa="$3" token
  dir="$(cd "$1" 2>/dev/null && pwd)" || die "no instance directory $1"
  [[ -e "$dir/addr" ]] || die "$dir holds no running instance"
  # 24 h outlasts any test; the token is bound to the service account, so deleting
  # the account revokes it.
  token="$("$K8S_CACHE/kubectl" --kubeconfig "$dir/kubeconfig" -n "$ns" create token "$sa" --duration 24h)" ||
    die "kubectl create token $sa -n $ns failed (does the service account exist?)"
  mkdir -p "$dir/sa"
  write_kubeconfig "$dir/sa/$ns.$sa.kubeconfig" "$(cat "$dir/addr")" "$dir/pki/ca.crt" \
    "    token: $token"
  echo "$dir/sa/$ns.$sa.kubeconfig"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    bin) cmd_bin "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    attach) cmd_attach "$@" ;;
    detach) cmd_detach "$@" ;;
    token) cmd_token "$@" ;;
    watch) cmd_watch "$@" ;;
    list) cmd_list "$@" ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

# One line: bash reads a script while running it, and must not go on into a copy
# edited meanwhile (a checkout during a long build).
main "$@"; exit $?
