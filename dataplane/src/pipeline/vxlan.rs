//! VXLAN (RFC 7348) encapsulation and decapsulation as the Linux kernel's VXLAN device
//! and flannel's vxlan backend do it: UDP port 8472 by default, the I flag set, the
//! inner Ethernet header addressed from our VTEP MAC to the remote VTEP MAC, and the
//! outer UDP source port hashed from the inner flow.
//!
//! Encapsulation prepends 50 bytes into the frame's headroom; decapsulation only moves
//! the frame's start past them, so a frame not written since can be given its outer
//! header back ([`restore_outer`]: a hand-off to the worker that keeps the flow).
//! The payload never moves.

use std::net::Ipv4Addr;

use crate::frame::{Frame, PullError};
use crate::tables::NodeSettings;
use crate::verdict::DropReason;
use crate::wire::bytes::{rd_mac, rd16, set_macs};
use crate::wire::classify::V4;
use crate::wire::packet::{ETHERNET_HEADER_LEN, UDP_HEADER_LEN, ethertype, ip_proto};
use crate::wire::vxlan::{VXLAN_HEADER_LEN, VXLAN_OVERHEAD_V4, VxlanPacket, VxlanRepr};
use crate::wire::{MacAddr, checksum};

/// Outer TTL: what a Linux VXLAN device configured by flannel (ttl 0, "inherit from
/// route") sends, the default IPv4 hop limit.
const OUTER_TTL: u8 = 64;
/// Linux's default ephemeral port range, which `udp_flow_src_port` scales the flow
/// hash into: [32768, 61000).
const SRC_PORT_MIN: u32 = 32768;
const SRC_PORT_MAX: u32 = 61000;

/// Where an encapsulated frame goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tunnel {
    pub remote: Ipv4Addr,
    pub remote_vtep: MacAddr,
    pub vni: u32,
    pub next_hop_mac: MacAddr,
}

/// The outer UDP source port for an inner flow hash, scaled like Linux's
/// `udp_flow_src_port` so the spread matches the kernel's.
#[inline]
pub fn source_port(hash: u32) -> u16 {
    let h = hash ^ (hash << 16);
    let port =
        ((u64::from(h) * u64::from(SRC_PORT_MAX - SRC_PORT_MIN)) >> 32) as u32 + SRC_PORT_MIN;
    u16::try_from(port).unwrap_or(SRC_PORT_MIN as u16)
}

/// ECN bits of the outer header from the inner TOS (RFC 6040 normal mode, as Linux's
/// `INET_ECN_encapsulate`): ECT copied, CE sent as ECT(0). DSCP is not inherited
/// (flannel leaves the device's `tos` at 0).
#[inline]
fn outer_tos(inner_tos: u8) -> u8 {
    match inner_tos & 0x03 {
        0x03 => 0x02,
        ecn => ecn,
    }
}

/// Rewrites the inner Ethernet header and prepends outer Ethernet, IPv4, UDP and
/// VXLAN headers. `hash` is the inner flow hash; `inner_tos` the inner IP TOS/traffic
/// class.
#[inline]
pub(crate) fn encapsulate(
    frame: &mut Frame<'_>,
    node: &NodeSettings,
    tunnel: &Tunnel,
    hash: u32,
    ip_id: u16,
    inner_tos: u8,
) -> Result<(), DropReason> {
    set_macs(frame.data_mut(), 0, tunnel.remote_vtep, node.vtep_mac)
        .ok_or(DropReason::MalformedEthernet)?;
    let inner_len = frame.len();
    let (udp_len, ip_len) = match u16::try_from(8 + 8 + 20 + inner_len) {
        Ok(ip_len) => (ip_len - 20, ip_len),
        // A super-frame's outer lengths are set per datagram when it is cut or sent
        // (`Segmenter::write_frame`, the UDP port); past 64 KiB they read 0, as
        // the kernel's BIG TCP marks IPv4 packets longer than the field can say.
        Err(_) if frame.gso().is_some() => (0, 0),
        Err(_) => return Err(DropReason::TooBig),
    };
    let room = frame
        .push_front(VXLAN_OVERHEAD_V4)
        .map_err(|_| DropReason::NoRoom)?;
    // A fixed-size view, so every store below has a constant offset and no bounds check.
    let h: &mut [u8; VXLAN_OVERHEAD_V4] = room.try_into().map_err(|_| DropReason::NoRoom)?;
    h[0..6].copy_from_slice(&tunnel.next_hop_mac.0);
    h[6..12].copy_from_slice(&node.uplink_mac.0);
    h[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    h[14] = 0x45;
    h[15] = outer_tos(inner_tos);
    h[16..18].copy_from_slice(&ip_len.to_be_bytes());
    h[18..20].copy_from_slice(&ip_id.to_be_bytes());
    h[20..22].copy_from_slice(&(if node.vxlan_df { 0x4000u16 } else { 0 }).to_be_bytes());
    h[22] = OUTER_TTL;
    h[23] = ip_proto::UDP;
    h[24..26].fill(0);
    h[26..30].copy_from_slice(&node.node_addr.octets());
    h[30..34].copy_from_slice(&tunnel.remote.octets());
    let c = ipv4_header_checksum(h);
    h[24..26].copy_from_slice(&c.to_be_bytes());
    h[34..36].copy_from_slice(&source_port(hash).to_be_bytes());
    h[36..38].copy_from_slice(&node.vxlan_port.to_be_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: allowed for IPv4 outer headers (RFC 7348 5) and what flannel's
    // VXLAN device sends unless told otherwise.
    h[40..42].fill(0);
    h[42..50].copy_from_slice(&VxlanRepr { vni: tunnel.vni }.to_bytes());
    Ok(())
}

/// The checksum of the option-less outer IPv4 header at `h[14..34]` (checksum field
/// zero): ten words, a loop the compiler unrolls.
#[inline]
fn ipv4_header_checksum(h: &[u8; VXLAN_OVERHEAD_V4]) -> u16 {
    let mut sum = 0u32;
    for pair in h.get(14..34).unwrap_or_default().chunks_exact(2) {
        if let [a, b] = *pair {
            sum += u32::from(u16::from_be_bytes([a, b]));
        }
    }
    !checksum::fold(sum)
}

/// Checks a VXLAN packet addressed to this node (`outer` is its parsed IPv4 header,
/// UDP to our VXLAN port) and strips the outer headers, leaving the inner Ethernet
/// frame. The inner frame is not yet checked beyond its Ethernet header.
#[inline]
pub(crate) fn decapsulate(
    frame: &mut Frame<'_>,
    outer: &V4,
    known_source: bool,
    node: &NodeSettings,
) -> Result<(), DropReason> {
    if outer.is_fragment() {
        // We do not reassemble; Linux would, but flannel sets the overlay MTU so that
        // VXLAN is never fragmented.
        return Err(DropReason::VxlanMalformed);
    }
    if !known_source {
        return Err(DropReason::VxlanUnknownSource);
    }
    let d = frame.data();
    let udp = outer.l3 + outer.ihl;
    let udp_len = usize::from(rd16(d, udp + 4).ok_or(DropReason::VxlanMalformed)?);
    let vx = udp + UDP_HEADER_LEN;
    let inner = vx + VXLAN_HEADER_LEN;
    let end = udp + udp_len;
    if end < inner + ETHERNET_HEADER_LEN || end > outer.end() {
        return Err(DropReason::VxlanMalformed);
    }
    let header = d.get(vx..inner).ok_or(DropReason::VxlanMalformed)?;
    let vxlan = VxlanPacket::new_checked(header)
        .and_then(|p| VxlanRepr::parse(&p))
        .map_err(|_| DropReason::VxlanMalformed)?;
    if vxlan.vni != node.vni {
        return Err(DropReason::VxlanWrongVni);
    }
    if rd_mac(d, inner) != Some(node.vtep_mac) {
        return Err(DropReason::VxlanNotForUs);
    }
    frame.pull_front(inner).map_err(|e| match e {
        // A train of VXLAN datagrams kept whole: ports cut those on receive.
        PullError::SegmentedHeader => DropReason::Unsupported,
        PullError::PastTheEnd => DropReason::VxlanMalformed,
    })?;
    frame
        .set_len(end - inner)
        .map_err(|_| DropReason::VxlanMalformed)
}

/// Undoes [`decapsulate`] on a frame whose bytes were not written since: the
/// packet `outer` describes, from the outer Ethernet header to the outer IPv4
/// packet's end (the bytes are still in the buffer in front of and behind the inner
/// frame). Only link-layer padding after the IPv4 packet is not restored, which a
/// VXLAN frame (over 60 bytes) never has. Nothing is kept from decapsulation for
/// this: what it would hold stays live through the whole decapsulated path and cost
/// every packet there (the one-worker path) instructions.
pub(crate) fn restore_outer(frame: &mut Frame<'_>, outer: &V4) -> Result<(), DropReason> {
    let inner = outer.l3 + outer.ihl + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
    frame.push_front(inner).map_err(|_| DropReason::NoRoom)?;
    frame.set_len(outer.end()).map_err(|_| DropReason::NoRoom)
}
