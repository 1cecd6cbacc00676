#!/usr/bin/env bash
# Captures one VXLAN frame as the Linux kernel emits it, from a VXLAN device set up the
# way flannel's vxlan backend sets it up, and writes it as hex text with a comment
# header: dataplane/tests/fixtures/kernel_vxlan_icmp.hex (or the path given as $1).
#
# Topology (two network namespaces joined by a veth; nothing leaves them):
#
#   ns A  veth hwa (198.18.0.1/24)  <--->  veth hwb (198.18.0.2/24)  ns B
#         flannel.1 198.19.1.0/32                flannel.1 198.19.2.0/32
#         pod block 198.19.1.0/24                pod block 198.19.2.0/24
#
# A pings B's flannel.1 address (198.19.2.0) from its own (198.19.1.0); tcpdump on
# hwa keeps the first UDP/8472 frame A sends. Needs root, iproute2, ethtool, tcpdump, ping, od.
set -euo pipefail

out=${1:-"$(dirname "$0")/../dataplane/tests/fixtures/kernel_vxlan_icmp.hex"}

# Fixed MACs so the fixture says exactly which VTEPs talked.
UNDERLAY_MAC_A=02:00:c6:12:00:01
UNDERLAY_MAC_B=02:00:c6:12:00:02
VTEP_MAC_A=02:00:c6:13:01:00
VTEP_MAC_B=02:00:c6:13:02:00
NODE_IP_A=198.18.0.1
NODE_IP_B=198.18.0.2
VTEP_IP_A=198.19.1.0
VTEP_IP_B=198.19.2.0

a=hwfx-a-$$
b=hwfx-b-$$
tmp=$(mktemp -d)
cleanup() {
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$a"
ip netns add "$b"
ip -n "$a" link add hwa address "$UNDERLAY_MAC_A" type veth peer name hwb netns "$b" address "$UNDERLAY_MAC_B"
ip -n "$a" addr add "$NODE_IP_A/24" dev hwa
ip -n "$b" addr add "$NODE_IP_B/24" dev hwb
for ns in "$a" "$b"; do
  ip -n "$ns" link set lo up
done
ip -n "$a" link set hwa up
# The VXLAN device computes an outer UDP checksum (the kernel default without
# `noudpcsum`, and flannel does not set it). With veth tx checksum offload on,
# tcpdump would see only the partial pseudo-header sum; computing it in software makes
# the captured frame exactly what a NIC would put on the wire.
ip netns exec "$a" ethtool -K hwa tx off >/dev/null
ip -n "$b" link set hwb up

# flannel's vxlan backend (pkg/backend/vxlan): device, address, then per remote node a
# static neighbour (VTEP IP -> VTEP MAC), an FDB entry (VTEP MAC -> node IP) and an
# onlink route for the node's pod block via its VTEP IP.
setup_vtep() { # ns local_ip dev vtep_mac vtep_ip remote_vtep_mac remote_vtep_ip remote_node_ip remote_block
  local ns=$1 local_ip=$2 dev=$3 mac=$4 vip=$5 rmac=$6 rvip=$7 rnode=$8 rblock=$9
  ip -n "$ns" link add flannel.1 address "$mac" type vxlan id 1 local "$local_ip" dev "$dev" dstport 8472 nolearning
  ip -n "$ns" addr add "$vip/32" dev flannel.1
  ip -n "$ns" link set flannel.1 up
  ip -n "$ns" neigh replace "$rvip" lladdr "$rmac" dev flannel.1 nud permanent
  ip netns exec "$ns" bridge fdb append "$rmac" dev flannel.1 dst "$rnode"
  ip -n "$ns" route add "$rblock" via "$rvip" dev flannel.1 onlink
}
setup_vtep "$a" "$NODE_IP_A" hwa "$VTEP_MAC_A" "$VTEP_IP_A" "$VTEP_MAC_B" "$VTEP_IP_B" "$NODE_IP_B" 198.19.2.0/24
setup_vtep "$b" "$NODE_IP_B" hwb "$VTEP_MAC_B" "$VTEP_IP_B" "$VTEP_MAC_A" "$VTEP_IP_A" "$NODE_IP_A" 198.19.1.0/24
# The underlay neighbour is pinned too, so no ARP frame races the capture.
ip -n "$a" neigh replace "$NODE_IP_B" lladdr "$UNDERLAY_MAC_B" dev hwa nud permanent
ip -n "$b" neigh replace "$NODE_IP_A" lladdr "$UNDERLAY_MAC_A" dev hwb nud permanent

ip netns exec "$a" tcpdump -i hwa -n -U -c 1 -w "$tmp/cap.pcap" "udp dst port 8472 and src host $NODE_IP_A" 2>"$tmp/tcpdump.log" &
dump=$!
# Give tcpdump time to attach its filter before the ping goes out.
for _ in $(seq 50); do
  grep -q "listening" "$tmp/tcpdump.log" 2>/dev/null && break
  sleep 0.1
done
ip netns exec "$a" ping -n -c 1 -W 2 -s 56 -p a5 -I "$VTEP_IP_A" "$VTEP_IP_B" >"$tmp/ping.log"
wait "$dump"

# A classic pcap file: 24-byte file header, 16-byte record header, then the frame.
hex=$(od -An -v -tx1 -j40 "$tmp/cap.pcap" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
{
  echo "# One VXLAN frame (outer Ethernet/IPv4/UDP/VXLAN + inner Ethernet/IPv4/ICMP echo"
  echo "# request) as the Linux kernel $(uname -r) VXLAN device emits it."
  echo "# Captured by scripts/capture-vxlan-fixture.sh: two netns joined by a veth; on each"
  echo "# side a flannel-style device:"
  echo "#   ip link add flannel.1 address <vtep mac> type vxlan id 1 local <node ip> dev <veth> dstport 8472 nolearning"
  echo "#   ip addr add <vtep ip>/32 dev flannel.1"
  echo "#   ip neigh replace <remote vtep ip> lladdr <remote vtep mac> dev flannel.1 nud permanent"
  echo "#   bridge fdb append <remote vtep mac> dev flannel.1 dst <remote node ip>"
  echo "#   ip route add <remote pod block> via <remote vtep ip> dev flannel.1 onlink"
  echo "# then, in A: ping -c 1 -s 56 -p a5 -I $VTEP_IP_A $VTEP_IP_B; tcpdump -i hwa 'udp dst port 8472'."
  echo "#"
  echo "# sender (A):   node ip $NODE_IP_A  underlay mac $UNDERLAY_MAC_A  vtep mac $VTEP_MAC_A  vtep ip $VTEP_IP_A  pod block 198.19.1.0/24"
  echo "# receiver (B): node ip $NODE_IP_B  underlay mac $UNDERLAY_MAC_B  vtep mac $VTEP_MAC_B  vtep ip $VTEP_IP_B  pod block 198.19.2.0/24"
  echo "# VNI 1, UDP destination port 8472; outer UDP checksum computed (kernel default,"
  echo "# tx checksum offload turned off on the veth so the capture holds the final value)."
  echo "# Varies between captures: outer IP id/checksum, outer UDP source port (flow hash),"
  echo "# inner IP id/checksum, ICMP id/checksum and the timestamp in the echo payload."
  echo "$hex" | fold -w 96 | sed "s/ *$//"
} >"$out"
echo "wrote $out ($(echo "$hex" | wc -w) bytes)"
