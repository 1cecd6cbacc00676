//! The virtio-net header that prefixes every packet on a TUN with `IFF_VNET_HDR`, and
//! user-space segmentation of the GSO super-packets it announces.
//!
//! The kernel hands one up-to-64 KiB TCP or UDP packet per read, with `gso_size`
//! saying how large each wire segment must be. The pipeline works on single packets,
//! so [`Segmenter`] cuts it into MTU-size packets exactly as the kernel's software GSO
//! would: headers copied to each segment; IPv4 total length, id and header checksum,
//! IPv6 payload length, TCP sequence number, flags (FIN/PSH only on the last segment,
//! CWR only on the first) and checksum, UDP length and checksum rewritten.
//! A packet without GSO but with a partial checksum (`NEEDS_CSUM`) gets its
//! checksum completed. All of this is pure code over byte slices; nothing panics on
//! bad input.

use crate::frame::{Gso, GsoKind};
use crate::wire::bytes::{rd16, rd32, wr16};
use crate::wire::checksum;
use crate::wire::packet::{ETHERNET_HEADER_LEN, ip_proto};

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

pub(super) const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
pub(super) const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// The virtio-net header fields hybridway uses (little-endian on the wire, as TUN
/// uses on little-endian hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]));
        Some(VirtioNetHdr {
            flags: *b.first()?,
            gso_type: *b.get(1)?,
            hdr_len: u16_at(2)?,
            gso_size: u16_at(4)?,
            csum_start: u16_at(6)?,
            csum_offset: u16_at(8)?,
        })
    }

    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The header that announces super-frame `gso` whose IP packet is `ip`: GSO
    /// type and size, and the partial checksum (`NEEDS_CSUM`) the super-frame
    /// carries (see [`Gso`]). `None` when `ip` is too short for its headers.
    pub fn for_super(gso: Gso, ip: &[u8]) -> Option<Self> {
        let (gso_type, csum_offset) = match gso.kind {
            GsoKind::TcpV4 => (GSO_TCPV4, 16),
            GsoKind::TcpV6 => (GSO_TCPV6, 16),
            GsoKind::Udp => (GSO_UDP_L4, 6),
        };
        let csum_start = match ip.first()? >> 4 {
            4 => u16::from(ip.first()? & 0x0f) * 4,
            _ => 40,
        };
        if usize::from(gso.hdr_len) > ip.len() || csum_start + csum_offset + 2 > gso.hdr_len {
            return None;
        }
        Some(VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: gso.hdr_len,
            gso_size: gso.size,
            csum_start,
            csum_offset,
        })
    }
}

/// Why a packet from the TUN could not be turned into single packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("truncated or inconsistent IP/TCP/UDP headers")]
    Malformed,
    #[error("GSO type not supported")]
    Unsupported,
    #[error("segment does not fit the output buffer")]
    NoRoom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L3 {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// How to cut one packet into single packets (one, if it is not a GSO packet).
#[derive(Clone, Copy, Debug)]
pub struct Segmenter {
    gso: bool,
    l3: L3,
    l4: Option<L4>,
    l3_len: usize,
    /// Offset of the payload (end of the L4 header).
    hdr_len: usize,
    gso_size: usize,
    count: usize,
    csum: Option<(usize, usize)>,
}

impl Segmenter {
    /// Inspects `packet` (an IP packet, as read from a layer-3 TUN after the
    /// virtio-net header) under `hdr`.
    pub fn new(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<Self, GsoError> {
        let version = packet.first().ok_or(GsoError::Malformed)? >> 4;
        let (l3, l3_len, proto) = match version {
            4 => {
                let ihl = usize::from(packet.first().ok_or(GsoError::Malformed)? & 0x0f) * 4;
                let total = usize::from(rd16(packet, 2).ok_or(GsoError::Malformed)?);
                if ihl < 20 || total < ihl || total > packet.len() {
                    return Err(GsoError::Malformed);
                }
                (L3::V4, ihl, *packet.get(9).ok_or(GsoError::Malformed)?)
            }
            6 => {
                let payload = usize::from(rd16(packet, 4).ok_or(GsoError::Malformed)?);
                if 40 + payload > packet.len() {
                    return Err(GsoError::Malformed);
                }
                // Extension headers are not followed: GSO packets from the kernel's
                // TCP/UDP stacks carry none.
                (L3::V6, 40, *packet.get(6).ok_or(GsoError::Malformed)?)
            }
            _ => return Err(GsoError::Malformed),
        };
        let ip_len = match l3 {
            L3::V4 => usize::from(rd16(packet, 2).ok_or(GsoError::Malformed)?),
            L3::V6 => 40 + usize::from(rd16(packet, 4).ok_or(GsoError::Malformed)?),
        };
        let l4 = match proto {
            ip_proto::TCP => Some(L4::Tcp),
            ip_proto::UDP => Some(L4::Udp),
            _ => None,
        };
        let l4_hdr = match l4 {
            Some(L4::Tcp) => {
                usize::from(packet.get(l3_len + 12).ok_or(GsoError::Malformed)? >> 4) * 4
            }
            Some(L4::Udp) => 8,
            None => 0,
        };
        if l4.is_some() && (l4_hdr < 8 || l3_len + l4_hdr > ip_len) {
            return Err(GsoError::Malformed);
        }
        let hdr_len = l3_len + l4_hdr;
        let csum = if hdr.needs_csum() {
            let start = usize::from(hdr.csum_start);
            let field = start + usize::from(hdr.csum_offset);
            if field + 2 > ip_len {
                return Err(GsoError::Malformed);
            }
            Some((start, field))
        } else {
            None
        };
        if !hdr.is_gso() {
            return Ok(Segmenter {
                gso: false,
                l3,
                l4,
                l3_len,
                hdr_len: ip_len,
                gso_size: ip_len,
                count: 1,
                csum,
            });
        }
        let matches = match (hdr.gso_type & !GSO_ECN, l3, l4) {
            (GSO_TCPV4, L3::V4, Some(L4::Tcp)) | (GSO_TCPV6, L3::V6, Some(L4::Tcp)) => true,
            (GSO_UDP_L4, _, Some(L4::Udp)) => true,
            (GSO_UDP, _, _) => return Err(GsoError::Unsupported),
            _ => false,
        };
        if !matches {
            return Err(GsoError::Malformed);
        }
        let gso_size = usize::from(hdr.gso_size);
        if gso_size == 0 {
            return Err(GsoError::Malformed);
        }
        let payload = ip_len - hdr_len;
        let count = payload.div_ceil(gso_size).max(1);
        Ok(Segmenter {
            gso: true,
            l3,
            l4,
            l3_len,
            hdr_len,
            gso_size,
            count,
            csum,
        })
    }

    /// Number of single packets.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The packet as a super-frame that can cross the pipeline whole, with its IP
    /// header at offset `l3` of the frame: a GSO packet whose checksum is partial at
    /// the transport header, as the kernel hands TSO/USO packets over. `None` for a
    /// single packet or a checksum state that needs segmenting to fix.
    pub fn super_frame(&self, l3: usize) -> Option<Gso> {
        let (start, field) = self.csum?;
        let kind = match (self.l3, self.l4?) {
            (L3::V4, L4::Tcp) => GsoKind::TcpV4,
            (L3::V6, L4::Tcp) => GsoKind::TcpV6,
            (_, L4::Udp) => GsoKind::Udp,
        };
        let csum_offset = if kind == GsoKind::Udp { 6 } else { 16 };
        if !self.gso || start != self.l3_len || field != start + csum_offset {
            return None;
        }
        Some(Gso {
            kind,
            size: u16::try_from(self.gso_size).ok()?,
            hdr_len: u16::try_from(self.hdr_len).ok()?,
            l3: u16::try_from(l3).ok()?,
        })
    }

    /// How to cut super-frame `frame` (an Ethernet frame whose segmented IP packet
    /// starts at `gso.l3`, behind whatever headers encapsulate it).
    pub fn for_frame(frame: &[u8], gso: Gso) -> Result<Self, GsoError> {
        let ip = frame
            .get(usize::from(gso.l3)..)
            .ok_or(GsoError::Malformed)?;
        let hdr = VirtioNetHdr::for_super(gso, ip).ok_or(GsoError::Malformed)?;
        Segmenter::new(&hdr, ip)
    }

    /// Writes single packet `index` of super-frame `frame` into `out` as a whole
    /// frame: the headers in front of the segmented packet copied, their lengths
    /// (an outer IPv4/IPv6 and UDP header: VXLAN) and outer IPv4 checksum fixed.
    pub fn write_frame(
        &self,
        frame: &[u8],
        gso: Gso,
        index: usize,
        out: &mut [u8],
    ) -> Result<usize, GsoError> {
        let l3 = usize::from(gso.l3);
        let (prefix, ip) = (
            frame.get(..l3).ok_or(GsoError::Malformed)?,
            frame.get(l3..).ok_or(GsoError::Malformed)?,
        );
        let (head, rest) = out.split_at_mut_checked(l3).ok_or(GsoError::NoRoom)?;
        let len = self.write(ip, index, rest)?;
        head.copy_from_slice(prefix);
        fix_outer_lengths(head, len).ok_or(GsoError::Malformed)?;
        Ok(l3 + len)
    }

    /// Writes single packet `index` (< [`Segmenter::count`]) of `packet` into `out`
    /// and returns its length.
    pub fn write(&self, packet: &[u8], index: usize, out: &mut [u8]) -> Result<usize, GsoError> {
        if index >= self.count {
            return Err(GsoError::Malformed);
        }
        if !self.gso {
            // Not GSO: copy, completing a partial checksum.
            let len = self.hdr_len;
            let dst = out.get_mut(..len).ok_or(GsoError::NoRoom)?;
            dst.copy_from_slice(packet.get(..len).ok_or(GsoError::Malformed)?);
            if let Some((start, field)) = self.csum {
                // The field holds the pseudo-header sum; sum everything from start.
                let sum = checksum::add(0, dst.get(start..).ok_or(GsoError::Malformed)?);
                let mut value = !checksum::fold(sum);
                if value == 0 && self.l4 == Some(L4::Udp) {
                    value = 0xffff;
                }
                wr16(dst, field, value).ok_or(GsoError::Malformed)?;
            }
            return Ok(len);
        }
        let data = self.payload(packet, index)?;
        let len = self.hdr_len + data.len();
        let seg = out.get_mut(..len).ok_or(GsoError::NoRoom)?;
        let (hdr, body) = seg.split_at_mut(self.hdr_len);
        hdr.copy_from_slice(packet.get(..self.hdr_len).ok_or(GsoError::Malformed)?);
        let data = packet.get(data).ok_or(GsoError::Malformed)?;
        body.copy_from_slice(data);
        self.fix_headers(hdr, body, index)
            .ok_or(GsoError::Malformed)?;
        Ok(len)
    }

    /// Writes only the headers of single packet `index` of the GSO `packet` into
    /// `out` (fixed as [`Segmenter::write`] fixes them, the checksum summed over
    /// the payload where it lies) and returns their length and where in `packet`
    /// the payload is: for senders that gather the payload from the super-frame
    /// itself instead of copying it.
    pub fn write_headers(
        &self,
        packet: &[u8],
        index: usize,
        out: &mut [u8],
    ) -> Result<(usize, std::ops::Range<usize>), GsoError> {
        if index >= self.count || !self.gso {
            return Err(GsoError::Malformed);
        }
        let range = self.payload(packet, index)?;
        let hdr = out.get_mut(..self.hdr_len).ok_or(GsoError::NoRoom)?;
        hdr.copy_from_slice(packet.get(..self.hdr_len).ok_or(GsoError::Malformed)?);
        let data = packet.get(range.clone()).ok_or(GsoError::Malformed)?;
        self.fix_headers(hdr, data, index)
            .ok_or(GsoError::Malformed)?;
        Ok((self.hdr_len, range))
    }

    /// Where segment `index`'s payload lies in the GSO `packet`.
    fn payload(&self, packet: &[u8], index: usize) -> Result<std::ops::Range<usize>, GsoError> {
        let ip_len = match self.l3 {
            L3::V4 => usize::from(rd16(packet, 2).ok_or(GsoError::Malformed)?),
            L3::V6 => 40 + usize::from(rd16(packet, 4).ok_or(GsoError::Malformed)?),
        };
        let from = self.hdr_len + index * self.gso_size;
        let to = (from + self.gso_size).min(ip_len);
        if from > to || to > packet.len() {
            return Err(GsoError::Malformed);
        }
        Ok(from..to)
    }

    /// Fixes the copied headers `seg` of segment `index` whose payload is
    /// `payload`: lengths, IPv4 id and checksum, TCP sequence and flags, and the
    /// transport checksum over headers and payload.
    fn fix_headers(&self, seg: &mut [u8], payload: &[u8], index: usize) -> Option<()> {
        let last = index + 1 == self.count;
        let total = seg.len() + payload.len();
        let l4_len = total - self.l3_len;
        // IP header and the pseudo-header sum.
        let pseudo = match self.l3 {
            L3::V4 => {
                wr16(seg, 2, total as u16)?;
                let id = rd16(seg, 4)?.wrapping_add(index as u16);
                wr16(seg, 4, id)?;
                wr16(seg, 10, 0)?;
                let sum = !checksum::fold(checksum::add(0, seg.get(..self.l3_len)?));
                wr16(seg, 10, sum)?;
                let mut s = checksum::add(0, seg.get(12..20)?);
                s = s.wrapping_add(u32::from(*seg.get(9)?));
                s.wrapping_add(l4_len as u32)
            }
            L3::V6 => {
                wr16(seg, 4, l4_len as u16)?;
                let mut s = checksum::add(0, seg.get(8..40)?);
                s = s.wrapping_add(u32::from(*seg.get(6)?));
                s.wrapping_add(l4_len as u32)
            }
        };
        let l4 = self.l3_len;
        match self.l4? {
            L4::Tcp => {
                let seq = rd32(seg, l4 + 4)?.wrapping_add((index * self.gso_size) as u32);
                seg.get_mut(l4 + 4..l4 + 8)?
                    .copy_from_slice(&seq.to_be_bytes());
                let flags = seg.get_mut(l4 + 13)?;
                if !last {
                    *flags &= !(0x01 | 0x08); // FIN, PSH
                }
                if index > 0 {
                    *flags &= !0x80; // CWR
                }
                wr16(seg, l4 + 16, 0)?;
                // The header is of even length: the payload's sum continues it.
                let head = checksum::add(pseudo, seg.get(l4..)?);
                let sum = !checksum::fold(checksum::add(head, payload));
                wr16(seg, l4 + 16, sum)?;
            }
            L4::Udp => {
                wr16(seg, l4 + 4, (8 + payload.len()) as u16)?;
                wr16(seg, l4 + 6, 0)?;
                let head = checksum::add(pseudo, seg.get(l4..)?);
                let mut sum = !checksum::fold(checksum::add(head, payload));
                if sum == 0 {
                    sum = 0xffff;
                }
                wr16(seg, l4 + 6, sum)?;
            }
        }
        Some(())
    }
}

/// Fixes the lengths of the headers `prefix` (an Ethernet header, then optionally an
/// outer IPv4 or IPv6 header with UDP and what UDP carries) in front of an inner
/// packet of `inner` bytes. The outer UDP checksum is set to zero, as hybridway
/// sends VXLAN (RFC 7348); over IPv6 it is left as the encapsulation wrote it.
fn fix_outer_lengths(prefix: &mut [u8], inner: usize) -> Option<()> {
    const ETH: usize = ETHERNET_HEADER_LEN;
    if prefix.len() <= ETH {
        return Some(());
    }
    let l3_len = prefix.len() - ETH + inner;
    let (proto, udp) = match rd16(prefix, 12)? {
        0x0800 => {
            let ihl = usize::from(prefix.get(ETH)? & 0x0f) * 4;
            wr16(prefix, ETH + 2, u16::try_from(l3_len).ok()?)?;
            wr16(prefix, ETH + 10, 0)?;
            let sum = checksum::checksum(prefix.get(ETH..ETH + ihl)?);
            wr16(prefix, ETH + 10, sum)?;
            (*prefix.get(ETH + 9)?, ETH + ihl)
        }
        0x86dd => {
            wr16(prefix, ETH + 4, u16::try_from(l3_len - 40).ok()?)?;
            (*prefix.get(ETH + 6)?, ETH + 40)
        }
        _ => return None,
    };
    if proto == ip_proto::UDP {
        let udp_len = u16::try_from(prefix.len() - udp + inner).ok()?;
        wr16(prefix, udp + 4, udp_len)?;
        if rd16(prefix, 12)? == 0x0800 {
            wr16(prefix, udp + 6, 0)?;
        }
    }
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use etherparse::{IpHeaders, PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_super_packet(payload: &[u8], fin_psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4([198, 19, 0, 2], [198, 19, 1, 2], 64)
            .tcp(40000, 5201, 1000, 64000)
            .ack(7);
        if fin_psh {
            b = b.psh().fin();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        // Like the kernel: checksum left partial (here: wrong), header says so.
        out[20 + 16] = 0xde;
        out
    }

    fn check_tcp(seg: &[u8]) -> (u32, u8, Vec<u8>) {
        let p = SlicedPacket::from_ip(seg).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!()
        };
        let expected = tcp
            .to_header()
            .calc_checksum_ipv4(&h, tcp.payload())
            .unwrap();
        assert_eq!(tcp.checksum(), expected);
        (tcp.sequence_number(), seg[20 + 13], tcp.payload().to_vec())
    }

    #[test]
    fn a_tcp_super_packet_becomes_mss_sized_segments() {
        let payload: Vec<u8> = (0..3500u32).map(|i| i as u8).collect();
        let packet = tcp_super_packet(&payload, true);
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::parse(&hdr.emit()), Some(hdr));
        let seg = Segmenter::new(&hdr, &packet).unwrap();
        assert_eq!(seg.count(), 3);
        let mut joined = Vec::new();
        let mut out = [0u8; 2000];
        for i in 0..3 {
            let len = seg.write(&packet, i, &mut out).unwrap();
            let (seq, flags, data) = check_tcp(&out[..len]);
            assert_eq!(seq, 1000 + (i * 1448) as u32);
            let id = u16::from_be_bytes([out[4], out[5]]);
            assert_eq!(
                id,
                u16::from_be_bytes([packet[4], packet[5]]).wrapping_add(i as u16)
            );
            assert_eq!(
                flags & 0x09 != 0,
                i == 2,
                "FIN/PSH only on the last segment"
            );
            assert_eq!(
                len,
                if i < 2 {
                    40 + 1448
                } else {
                    40 + 3500 - 2 * 1448
                }
            );
            joined.extend(data);
        }
        assert_eq!(joined, payload);
        assert_eq!(seg.write(&packet, 3, &mut out), Err(GsoError::Malformed));
        let mut small = [0u8; 100];
        assert_eq!(seg.write(&packet, 0, &mut small), Err(GsoError::NoRoom));
    }

    #[test]
    fn udp_l4_over_ipv6_is_segmented_with_valid_checksums() {
        let payload = vec![0x5a; 2500];
        let mut packet = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1000, 2000)
            .write(&mut packet, &payload)
            .unwrap();
        let hdr = VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            gso_size: 1200,
            ..Default::default()
        };
        let seg = Segmenter::new(&hdr, &packet).unwrap();
        assert_eq!(seg.count(), 3);
        let mut out = [0u8; 2000];
        let mut total = 0;
        for i in 0..3 {
            let len = seg.write(&packet, i, &mut out).unwrap();
            let p = SlicedPacket::from_ip(&out[..len]).unwrap();
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!()
            };
            let Some(IpHeaders::Ipv6(ip, _)) = IpHeaders::from_slice(&out[..len]).ok().map(|h| h.0)
            else {
                panic!()
            };
            assert_eq!(
                udp.checksum(),
                udp.to_header()
                    .calc_checksum_ipv6(&ip, udp.payload())
                    .unwrap()
            );
            assert_eq!(usize::from(udp.length()), 8 + udp.payload().len());
            total += udp.payload().len();
        }
        assert_eq!(total, 2500);
    }

    #[test]
    fn a_partial_checksum_is_completed_on_a_single_packet() {
        let payload = b"hello";
        let mut packet = Vec::new();
        PacketBuilder::ipv4([198, 19, 0, 2], [198, 19, 1, 2], 64)
            .udp(1, 2)
            .write(&mut packet, payload)
            .unwrap();
        let good = packet.clone();
        // The kernel leaves the pseudo-header sum in the field.
        let pseudo = checksum::add(checksum::add(0, &packet[12..20]), &[0, 17, 0, 13]);
        let folded = checksum::fold(pseudo);
        packet[26..28].copy_from_slice(&folded.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        let seg = Segmenter::new(&hdr, &packet).unwrap();
        assert_eq!(seg.count(), 1);
        let mut out = [0u8; 100];
        let len = seg.write(&packet, 0, &mut out).unwrap();
        assert_eq!(&out[..len], &good[..]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let hdr = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            flags: F_NEEDS_CSUM,
            csum_start: 60000,
            ..Default::default()
        };
        for packet in [
            &[][..],
            &[0x45],
            &[0x45, 0, 0, 200],
            &[0x60; 39],
            &[0x45; 60],
            &[0x4f; 80],
        ] {
            assert!(
                Segmenter::new(&hdr, packet).is_err()
                    || Segmenter::new(&hdr, packet).unwrap().count() >= 1
            );
        }
        let hdr = VirtioNetHdr {
            gso_type: GSO_UDP,
            gso_size: 100,
            ..Default::default()
        };
        let mut packet = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .udp(1, 2)
            .write(&mut packet, &[0; 300])
            .unwrap();
        assert_eq!(
            Segmenter::new(&hdr, &packet).unwrap_err(),
            GsoError::Unsupported
        );
        let hdr = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            ..Default::default()
        };
        assert_eq!(
            Segmenter::new(&hdr, &packet).unwrap_err(),
            GsoError::Malformed,
            "TCP GSO on a UDP packet"
        );
        let hdr = VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            gso_size: 0,
            ..Default::default()
        };
        assert_eq!(
            Segmenter::new(&hdr, &packet).unwrap_err(),
            GsoError::Malformed
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut out = [0u8; 2048];
        for _ in 0..20_000 {
            let len = rng.random_range(0..200);
            let mut packet: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(b) = packet.first_mut() {
                *b = if rng.random() { 0x45 } else { 0x60 };
            }
            let hdr_bytes: [u8; VNET_HDR_LEN] = rng.random();
            let Some(hdr) = VirtioNetHdr::parse(&hdr_bytes) else {
                continue;
            };
            if let Ok(seg) = Segmenter::new(&hdr, &packet) {
                for i in 0..seg.count().min(50) {
                    let _ = seg.write(&packet, i, &mut out);
                }
            }
        }
    }
}
