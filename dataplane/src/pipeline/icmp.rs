//! ICMP the dataplane originates (RFC 792, RFC 1191, RFC 4443): time exceeded and
//! "fragmentation needed"/"packet too big", and echo replies from the pods' gateway.
//!
//! The error is built in place: the original IP packet stays where it is and becomes
//! the quoted part; the new Ethernet, IP and ICMP headers are written into the bytes in
//! front of it (the old Ethernet header and the headroom). Nothing is copied but the
//! headers, and a frame without that much headroom is dropped with `NoRoom`.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::frame::Frame;
use crate::time::Now;
use crate::verdict::DropReason;
use crate::wire::bytes::{put, rd_mac, set_macs, update16, wr8, wr16, wr32};
use crate::wire::classify::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, L4, V4, V6};
use crate::wire::packet::{ETHERNET_HEADER_LEN, ethertype, ip_proto};
use crate::wire::{MacAddr, checksum};

/// ICMPv4 errors quote at most this much of the whole error packet (RFC 1812 4.3.2.3).
const ICMP4_MAX_ERROR_LEN: usize = 576;
/// ICMPv6 errors stay within the IPv6 minimum MTU (RFC 4443 2.4 (c)).
const ICMP6_MAX_ERROR_LEN: usize = 1280;
/// IP, ICMP headers the v4 error adds before the quote.
const V4_ERR_HDRS: usize = 20 + 8;
const V6_ERR_HDRS: usize = 40 + 8;

/// Which error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    TimeExceeded,
    /// IPv4 "fragmentation needed and DF set" / ICMPv6 "packet too big", with the MTU.
    TooBig {
        mtu: u16,
    },
    /// "Communication administratively prohibited": the SNAT had no port for the
    /// flow (its only use, hence its drop reason).
    AdminProhibited,
    /// "Port unreachable": a Service without endpoints (kube-proxy's REJECT).
    PortUnreachable,
}

impl IcmpError {
    /// The reason counted when no error can be sent.
    pub fn drop_reason(self) -> DropReason {
        match self {
            IcmpError::TimeExceeded => DropReason::TtlExpired,
            IcmpError::TooBig { .. } => DropReason::TooBig,
            IcmpError::AdminProhibited => DropReason::SnatPortsExhausted,
            IcmpError::PortUnreachable => DropReason::ServiceNoEndpoints,
        }
    }
}

/// TTL of the echo replies the gateway sends (Linux's default).
const ECHO_REPLY_TTL: u8 = 64;

/// Turns an ICMP echo request to the gateway into the gateway's reply, in place:
/// addresses and MACs swapped, type 0, a fresh TTL. A pod pinging its gateway is the
/// first thing anyone tries; the gateway address lives only in the dataplane (there
/// is no host interface behind it), so nobody else could answer. Requests with a bad
/// ICMP checksum are dropped as the kernel drops them.
pub(crate) fn echo_reply_v4(
    frame: &mut Frame<'_>,
    ip: &V4,
    l4: &L4,
    mac: MacAddr,
) -> Result<(), DropReason> {
    if l4.proto != ip_proto::ICMP || l4.icmp_type != ICMP_ECHO_REQUEST || ip.is_fragment() {
        return Err(DropReason::NoRoute);
    }
    let d = frame.data_mut();
    let message = d
        .get(l4.off..ip.end())
        .ok_or(DropReason::MalformedTransport)?;
    if checksum::sum(message) != 0xffff {
        return Err(DropReason::MalformedTransport);
    }
    let peer = rd_mac(d, 6).ok_or(DropReason::MalformedEthernet)?;
    set_macs(d, 0, peer, mac).ok_or(DropReason::MalformedEthernet)?;
    // Swapping the addresses keeps both checksums (the sum is order-free).
    put(d, ip.l3 + 12, &ip.dst.octets()).ok_or(DropReason::MalformedIpv4)?;
    put(d, ip.l3 + 16, &ip.src.octets()).ok_or(DropReason::MalformedIpv4)?;
    // TTL shares its word with the protocol, the type with the code.
    update16(d, ip.l3 + 8, ip.l3 + 10, |w| {
        u16::from_be_bytes([ECHO_REPLY_TTL, w.to_be_bytes()[1]])
    })
    .ok_or(DropReason::MalformedIpv4)?;
    update16(d, l4.off, l4.off + 2, |w| {
        u16::from_be_bytes([ICMP_ECHO_REPLY, w.to_be_bytes()[1]])
    })
    .ok_or(DropReason::MalformedTransport)
}

/// A token bucket that limits the errors one worker originates (as Linux's
/// `icmp_msgs_per_sec`/`icmp_msgs_burst`), so a flood of expiring packets cannot be
/// turned into a flood of replies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IcmpRateLimit {
    tokens: u32,
    last: Now,
}

impl IcmpRateLimit {
    /// Errors per second and burst, as Linux's defaults.
    const PER_SECOND: u64 = 1000;
    const BURST: u32 = 50;

    pub fn new() -> Self {
        IcmpRateLimit {
            tokens: Self::BURST,
            last: Now(0),
        }
    }

    pub fn allow(&mut self, now: Now) -> bool {
        let elapsed = now.millis().saturating_sub(self.last.millis());
        let refill = elapsed.saturating_mul(Self::PER_SECOND) / 1000;
        if refill > 0 {
            self.tokens = u32::try_from(u64::from(self.tokens).saturating_add(refill))
                .unwrap_or(Self::BURST)
                .min(Self::BURST);
            self.last = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Whether an error may be sent about this IPv4 packet (RFC 1812 4.3.2.7): never about
/// an ICMP error, a non-first fragment, or a packet from a non-unicast source.
pub(crate) fn may_send_v4(ip: &V4) -> bool {
    if ip.frag_offset != 0 {
        return false;
    }
    if ip.src.is_unspecified()
        || ip.src.is_broadcast()
        || ip.src.is_multicast()
        || ip.src.is_loopback()
    {
        return false;
    }
    if ip.proto == ip_proto::ICMP {
        // Only echo and other informational messages may trigger an error.
        return ip
            .l4
            .is_some_and(|l| matches!(l.icmp_type, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18));
    }
    true
}

/// Whether an error may be sent about this IPv6 packet (RFC 4443 2.4 (e)).
pub(crate) fn may_send_v6(ip: &V6) -> bool {
    if ip.src.is_unspecified() || ip.src.is_multicast() || ip.src.is_loopback() {
        return false;
    }
    if ip.proto == ip_proto::ICMPV6 {
        // Types below 128 are errors.
        return ip.l4.is_some_and(|l| l.icmp_type >= 128);
    }
    true
}

/// Turns the frame holding `ip` into an ICMPv4 error addressed to its sender, from
/// `src_ip`/`src_mac`. The caller has checked [`may_send_v4`].
pub(crate) fn build_v4(
    frame: &mut Frame<'_>,
    ip: &V4,
    kind: IcmpError,
    src_ip: Ipv4Addr,
    src_mac: MacAddr,
    ip_id: u16,
) -> Result<(), DropReason> {
    let err = kind.drop_reason();
    let quote = ip.total_len.min(ICMP4_MAX_ERROR_LEN - V4_ERR_HDRS);
    let (buf, start, _) = frame.raw_parts();
    // The new headers end where the original IP header starts.
    let ip_at = start + ip.l3;
    let new_start = ip_at
        .checked_sub(ETHERNET_HEADER_LEN + V4_ERR_HDRS)
        .ok_or(DropReason::NoRoom)?;
    let peer_mac = rd_mac(buf, start + 6).ok_or(err)?;
    let (icmp_type, code, rest) = match kind {
        IcmpError::TimeExceeded => (11u8, 0u8, 0u32),
        IcmpError::TooBig { mtu } => (3, 4, u32::from(mtu)),
        IcmpError::AdminProhibited => (3, 13, 0),
        IcmpError::PortUnreachable => (3, 3, 0),
    };
    let e = new_start;
    set_macs(buf, e, peer_mac, src_mac).ok_or(err)?;
    wr16(buf, e + 12, ethertype::IPV4).ok_or(err)?;
    let h = e + ETHERNET_HEADER_LEN;
    let total = u16::try_from(V4_ERR_HDRS + quote).map_err(|_| err)?;
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    // Internetwork control precedence, as Linux marks the errors it sends.
    iph[1] = 0xc0;
    iph[2..4].copy_from_slice(&total.to_be_bytes());
    iph[4..6].copy_from_slice(&ip_id.to_be_bytes());
    iph[8] = 64;
    iph[9] = ip_proto::ICMP;
    iph[12..16].copy_from_slice(&src_ip.octets());
    iph[16..20].copy_from_slice(&ip.src.octets());
    let c = checksum::checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    put(buf, h, &iph).ok_or(err)?;
    let icmp = h + 20;
    wr8(buf, icmp, icmp_type).ok_or(err)?;
    wr8(buf, icmp + 1, code).ok_or(err)?;
    wr16(buf, icmp + 2, 0).ok_or(err)?;
    wr32(buf, icmp + 4, rest).ok_or(err)?;
    let msg = buf.get(icmp..icmp + 8 + quote).ok_or(err)?;
    let c = checksum::checksum(msg);
    wr16(buf, icmp + 2, c).ok_or(err)?;
    frame
        .set_window(new_start, ETHERNET_HEADER_LEN + V4_ERR_HDRS + quote)
        .map_err(|_| DropReason::NoRoom)
}

/// Turns the frame holding `ip` into an ICMPv6 error addressed to its sender.
pub(crate) fn build_v6(
    frame: &mut Frame<'_>,
    ip: &V6,
    kind: IcmpError,
    src_ip: Ipv6Addr,
    src_mac: MacAddr,
) -> Result<(), DropReason> {
    let err = kind.drop_reason();
    let quote = ip.total_len.min(ICMP6_MAX_ERROR_LEN - V6_ERR_HDRS);
    let (buf, start, _) = frame.raw_parts();
    let ip_at = start + ip.l3;
    let new_start = ip_at
        .checked_sub(ETHERNET_HEADER_LEN + V6_ERR_HDRS)
        .ok_or(DropReason::NoRoom)?;
    let peer_mac = rd_mac(buf, start + 6).ok_or(err)?;
    let (icmp_type, code, rest) = match kind {
        IcmpError::TimeExceeded => (3u8, 0u8, 0u32),
        IcmpError::TooBig { mtu } => (2, 0, u32::from(mtu)),
        // Destination unreachable, "communication with destination administratively
        // prohibited".
        IcmpError::AdminProhibited => (1, 1, 0),
        IcmpError::PortUnreachable => (1, 4, 0),
    };
    let e = new_start;
    set_macs(buf, e, peer_mac, src_mac).ok_or(err)?;
    wr16(buf, e + 12, ethertype::IPV6).ok_or(err)?;
    let h = e + ETHERNET_HEADER_LEN;
    let payload_len = u16::try_from(8 + quote).map_err(|_| err)?;
    let mut iph = [0u8; 40];
    iph[0] = 0x60;
    iph[4..6].copy_from_slice(&payload_len.to_be_bytes());
    iph[6] = ip_proto::ICMPV6;
    iph[7] = 64;
    iph[8..24].copy_from_slice(&src_ip.octets());
    iph[24..40].copy_from_slice(&ip.src.octets());
    put(buf, h, &iph).ok_or(err)?;
    let icmp = h + 40;
    wr8(buf, icmp, icmp_type).ok_or(err)?;
    wr8(buf, icmp + 1, code).ok_or(err)?;
    wr16(buf, icmp + 2, 0).ok_or(err)?;
    wr32(buf, icmp + 4, rest).ok_or(err)?;
    let msg = buf.get(icmp..icmp + 8 + quote).ok_or(err)?;
    let c = checksum::transport_checksum_v6(src_ip, ip.src, ip_proto::ICMPV6, msg);
    wr16(buf, icmp + 2, c).ok_or(err)?;
    frame
        .set_window(new_start, ETHERNET_HEADER_LEN + V6_ERR_HDRS + quote)
        .map_err(|_| DropReason::NoRoom)
}
