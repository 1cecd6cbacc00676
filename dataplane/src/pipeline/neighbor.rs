//! Neighbour resolution for the pods' gateway: ARP (RFC 826) requests for the IPv4
//! gateway and NDP neighbour solicitations (RFC 4861) for the IPv6 gateway are
//! answered by the dataplane with the gateway MAC, so pods need no host stack behind
//! their interface. Anything else is not ours to answer.

use crate::frame::Frame;
use crate::tables::NodeSettings;
use crate::verdict::DropReason;
use crate::wire::bytes::{put, rd_array, rd_ip4, rd_ip6, rd_mac, rd8, rd16, set_macs, wr16};
use crate::wire::checksum;
use crate::wire::classify::V6;
use crate::wire::packet::{ETHERNET_HEADER_LEN, ethertype, ip_proto};

const ARP_LEN: usize = 28;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Answers an ARP request for the gateway address in place (`Ok` means "send the
/// frame back"); other ARP is `ArpNotForUs`.
pub(crate) fn answer_arp(frame: &mut Frame<'_>, node: &NodeSettings) -> Result<(), DropReason> {
    use DropReason::MalformedArp;
    let d = frame.data();
    let arp = d
        .get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + ARP_LEN)
        .ok_or(MalformedArp)?;
    // Ethernet hardware (1), IPv4 protocol, 6-byte and 4-byte addresses.
    if rd_array::<6>(arp, 0) != Some([0x00, 0x01, 0x08, 0x00, 6, 4]) {
        return Err(MalformedArp);
    }
    let op = rd16(arp, 6).ok_or(MalformedArp)?;
    let sender_mac = rd_array::<6>(arp, 8).ok_or(MalformedArp)?;
    let sender_ip = rd_array::<4>(arp, 14).ok_or(MalformedArp)?;
    let target_ip = rd_ip4(arp, 24).ok_or(MalformedArp)?;
    if op != ARP_REQUEST || target_ip != node.gateway_v4 {
        return Err(DropReason::ArpNotForUs);
    }
    let gw = node.gateway_mac;
    let mut reply = [0u8; ETHERNET_HEADER_LEN + ARP_LEN];
    reply[0..6].copy_from_slice(&sender_mac);
    reply[6..12].copy_from_slice(&gw.0);
    reply[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    reply[14..20].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]);
    reply[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
    reply[22..28].copy_from_slice(&gw.0);
    reply[28..32].copy_from_slice(&node.gateway_v4.octets());
    reply[32..38].copy_from_slice(&sender_mac);
    reply[38..42].copy_from_slice(&sender_ip);
    frame.replace(&reply).map_err(|_| DropReason::NoRoom)
}

const NDP_NEIGHBOR_SOLICIT: u8 = 135;
const NDP_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 header 4 + reserved 4 + target 16.
const NDP_NS_MIN: usize = 24;

/// Whether `ip` is a neighbour solicitation (the caller answers or drops it; it is
/// never routed).
pub(crate) fn is_neighbor_solicit(ip: &V6) -> bool {
    ip.l4
        .is_some_and(|l| l.proto == ip_proto::ICMPV6 && l.icmp_type == NDP_NEIGHBOR_SOLICIT)
}

/// Answers a neighbour solicitation for the IPv6 gateway with a solicited, overriding
/// router advertisement of the gateway MAC.
pub(crate) fn answer_ns(
    frame: &mut Frame<'_>,
    ip: &V6,
    node: &NodeSettings,
) -> Result<(), DropReason> {
    let gw_ip = node.gateway_v6.ok_or(DropReason::ArpNotForUs)?;
    let d = frame.data();
    let icmp_off = ip.l4.map(|l| l.off).ok_or(DropReason::MalformedTransport)?;
    let ns = d
        .get(icmp_off..ip.end())
        .ok_or(DropReason::MalformedTransport)?;
    // RFC 4861 7.1.1: hop limit 255 and code 0, else the message is invalid.
    if ns.len() < NDP_NS_MIN || ip.hop_limit != 255 || rd8(ns, 1) != Some(0) {
        return Err(DropReason::MalformedTransport);
    }
    let target = rd_ip6(ns, 8).ok_or(DropReason::MalformedTransport)?;
    if target != gw_ip {
        return Err(DropReason::ArpNotForUs);
    }
    if ip.src.is_unspecified() {
        // Duplicate address detection for the gateway's address: stay silent, as a
        // router that owns the address would answer to all-nodes instead; pods never
        // claim it.
        return Err(DropReason::ArpNotForUs);
    }
    let peer_mac = rd_mac(d, 6).ok_or(DropReason::MalformedEthernet)?;
    let gw = node.gateway_mac;
    const NA_LEN: usize = 32;
    let mut reply = [0u8; ETHERNET_HEADER_LEN + 40 + NA_LEN];
    set_macs(&mut reply, 0, peer_mac, gw).ok_or(DropReason::NoRoom)?;
    wr16(&mut reply, 12, ethertype::IPV6).ok_or(DropReason::NoRoom)?;
    let h = ETHERNET_HEADER_LEN;
    let mut iph = [0u8; 40];
    iph[0] = 0x60;
    iph[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    iph[6] = ip_proto::ICMPV6;
    iph[7] = 255;
    iph[8..24].copy_from_slice(&gw_ip.octets());
    iph[24..40].copy_from_slice(&ip.src.octets());
    put(&mut reply, h, &iph).ok_or(DropReason::NoRoom)?;
    let mut na = [0u8; NA_LEN];
    na[0] = NDP_NEIGHBOR_ADVERT;
    // Router, Solicited, Override.
    na[4] = 0xe0;
    na[8..24].copy_from_slice(&gw_ip.octets());
    // Option 2: target link-layer address, length 1 (8 bytes).
    na[24] = 2;
    na[25] = 1;
    na[26..32].copy_from_slice(&gw.0);
    let c = checksum::transport_checksum_v6(gw_ip, ip.src, ip_proto::ICMPV6, &na);
    na[2..4].copy_from_slice(&c.to_be_bytes());
    put(&mut reply, h + 40, &na).ok_or(DropReason::NoRoom)?;
    frame.replace(&reply).map_err(|_| DropReason::NoRoom)
}
