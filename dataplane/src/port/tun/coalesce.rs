//! Write-side GRO for the TUN: consecutive TCP/IPv4 segments of one flow, as a batch
//! from the pipeline usually holds them, are merged into one GSO super-packet and
//! written with one syscall; the kernel then carries a single large packet to the
//! pod (or re-segments it) instead of taking dozens of writes.
//!
//! Only segments that the kernel's own GRO would merge are merged: IPv4 without
//! options, DF set, not a fragment, TCP with only ACK (PSH ends a run), same
//! addresses, ports, TOS, TTL, ACK number, window and TCP options, contiguous
//! sequence numbers, equal payload sizes (the last may be shorter). Each segment's
//! TCP checksum is verified first, because the merged packet's checksum is left for
//! the kernel to complete: a corrupt segment is written on its own, and dropped by
//! the kernel as it would be without coalescing.

use super::gso::{F_NEEDS_CSUM, GSO_TCPV4};
use super::gso::{VNET_HDR_LEN, VirtioNetHdr};
use crate::wire::bytes::{rd16, rd32};
use crate::wire::checksum;

const MAX_LEN: usize = 65_535;
const MAX_SEGMENTS: usize = 64;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// A TCP/IPv4 segment that may be merged, with the fields runs are keyed on.
#[derive(Clone, Copy, Debug)]
struct Segment<'a> {
    packet: &'a [u8],
    tcp_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// The pseudo-header sum of a TCP/IPv4 packet with `tcp_len` bytes of TCP.
fn pseudo_sum(packet: &[u8], tcp_len: usize) -> Option<u32> {
    let sum = checksum::add(0, packet.get(12..20)?);
    Some(sum + 6 + tcp_len as u32)
}

impl<'a> Segment<'a> {
    fn parse(packet: &'a [u8]) -> Option<Self> {
        let ver_ihl = *packet.first()?;
        let total = usize::from(rd16(packet, 2)?);
        let frag = rd16(packet, 6)?;
        if ver_ihl != 0x45
            || total != packet.len()
            || frag & 0x7fff != 0x4000
            || *packet.get(9)? != 6
        {
            return None; // not IPv4 without options, DF, unfragmented TCP
        }
        let tcp_len = usize::from(*packet.get(32)? >> 4) * 4;
        if tcp_len < 20 || 20 + tcp_len > total {
            return None;
        }
        let flags = *packet.get(33)?;
        let payload = total - 20 - tcp_len;
        if flags & !TCP_PSH != TCP_ACK || payload == 0 {
            return None;
        }
        // The segment must be intact before its checksum is handed to the kernel.
        let sum = checksum::add(pseudo_sum(packet, total - 20)?, packet.get(20..)?);
        if !checksum::fold(sum) != 0 {
            return None;
        }
        Some(Segment {
            packet,
            tcp_len,
            seq: rd32(packet, 24)?,
            flags,
            payload,
        })
    }

    /// Can `next` follow `self` (the run's first segment) in the same super-packet?
    fn same_flow(&self, next: &Segment<'_>) -> bool {
        let a = self.packet;
        let b = next.packet;
        self.tcp_len == next.tcp_len
            // TOS (1), TTL (8), addresses (12..20)
            && a.get(1) == b.get(1)
            && a.get(8) == b.get(8)
            && a.get(12..20) == b.get(12..20)
            // ports (20..24), ACK number (28..32), window (34..36), options (40..)
            && a.get(20..24) == b.get(20..24)
            && a.get(28..32) == b.get(28..32)
            && a.get(34..36) == b.get(34..36)
            && a.get(40..20 + self.tcp_len) == b.get(40..20 + next.tcp_len)
    }
}

/// Builds one super-packet at a time in a buffer it owns.
#[derive(Debug)]
pub struct Coalescer {
    buf: Box<[u8]>,
    len: usize,
    tcp_len: usize,
    seg_size: usize,
    segments: usize,
    next_seq: u32,
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer {
            buf: vec![0u8; MAX_LEN].into_boxed_slice(),
            len: 0,
            tcp_len: 0,
            seg_size: 0,
            segments: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// Segments in the current run (0: none).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Adds `packet` to the current run, or starts a run with it when none is open.
    /// `false`: it cannot join (the caller takes the run, then tries again or writes
    /// the packet on its own).
    pub fn push(&mut self, packet: &[u8]) -> bool {
        let Some(seg) = Segment::parse(packet) else {
            return false;
        };
        if self.segments == 0 {
            let Some(dst) = self.buf.get_mut(..packet.len()) else {
                return false;
            };
            dst.copy_from_slice(packet);
            self.len = packet.len();
            self.tcp_len = seg.tcp_len;
            self.seg_size = seg.payload;
            self.segments = 1;
            self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
            self.closed = seg.flags & TCP_PSH != 0;
            return true;
        }
        let Some(first) = self.buf.get(..self.len).and_then(Segment::first_header) else {
            return false;
        };
        if self.closed
            || self.segments >= MAX_SEGMENTS
            || seg.seq != self.next_seq
            || seg.payload > self.seg_size
            || self.len + seg.payload > MAX_LEN
            || !first.same_flow(&seg)
        {
            return false;
        }
        let data = packet.get(20 + seg.tcp_len..).unwrap_or_default();
        let Some(dst) = self.buf.get_mut(self.len..self.len + data.len()) else {
            return false;
        };
        dst.copy_from_slice(data);
        self.len += data.len();
        self.segments += 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < self.seg_size || seg.flags & TCP_PSH != 0 {
            self.closed = true;
            if let Some(f) = self.buf.get_mut(33) {
                *f |= seg.flags & TCP_PSH;
            }
        }
        true
    }

    /// Ends the run: the virtio-net header and the packet to write (a lone segment
    /// goes out unchanged, without GSO). `None` when no run is open.
    pub fn take(&mut self) -> Option<([u8; VNET_HDR_LEN], &[u8])> {
        if self.segments == 0 {
            return None;
        }
        let segments = std::mem::take(&mut self.segments);
        let len = self.len;
        if segments == 1 {
            return Some((VirtioNetHdr::default().emit(), self.buf.get(..len)?));
        }
        let packet = self.buf.get_mut(..len)?;
        packet
            .get_mut(2..4)?
            .copy_from_slice(&(len as u16).to_be_bytes());
        packet.get_mut(10..12)?.copy_from_slice(&[0, 0]);
        let ip_sum = !checksum::fold(checksum::add(0, packet.get(..20)?));
        packet
            .get_mut(10..12)?
            .copy_from_slice(&ip_sum.to_be_bytes());
        // Partial checksum: the field holds the folded pseudo-header sum and the
        // kernel adds the TCP header and payload.
        let pseudo = checksum::fold(pseudo_sum(packet, len - 20)?);
        packet
            .get_mut(36..38)?
            .copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (20 + self.tcp_len) as u16,
            gso_size: self.seg_size as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        Some((hdr.emit(), self.buf.get(..len)?))
    }
}

impl Segment<'_> {
    /// The run's first segment's headers, read back from the run buffer (its
    /// checksum is no longer checked: only the header fields are compared).
    fn first_header(buf: &[u8]) -> Option<Segment<'_>> {
        let tcp_len = usize::from(*buf.get(32)? >> 4) * 4;
        Some(Segment {
            packet: buf,
            tcp_len,
            seq: rd32(buf, 24)?,
            flags: *buf.get(33)?,
            payload: 0,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::super::gso::Segmenter;
    use super::*;
    use etherparse::PacketBuilder;

    fn segment(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4([198, 19, 0, 2], [198, 18, 0, 1], 64)
            .tcp(5201, 40000, seq, 500)
            .ack(9);
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out[6] = 0x40; // DF, as TCP sets it
        out[10..12].fill(0);
        let sum = !checksum::fold(checksum::add(0, &out[..20]));
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out
    }

    #[test]
    fn a_run_of_segments_becomes_one_gso_packet_that_segments_back() {
        let mut co = Coalescer::new();
        let mut originals = Vec::new();
        for i in 0..5u32 {
            let payload = vec![i as u8; if i == 4 { 300 } else { 1000 }];
            let seg = segment(100 + i * 1000, &payload, i == 4);
            assert!(co.push(&seg), "segment {i} joins");
            originals.push(seg);
        }
        assert!(
            !co.push(&segment(4400, &[1; 1000], false)),
            "the run is closed after PSH/short"
        );
        let (hdr_bytes, packet) = co.take().unwrap();
        let hdr = VirtioNetHdr::parse(&hdr_bytes).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1000, 40)
        );
        assert_eq!(packet.len(), 40 + 4300);
        // What the kernel would do with it: cut it back into the original segments.
        let seg = Segmenter::new(&hdr, packet).unwrap();
        assert_eq!(seg.count(), 5);
        let mut out = [0u8; 2048];
        for (i, original) in originals.iter().enumerate() {
            let len = seg.write(packet, i, &mut out).unwrap();
            // Same bytes except the IP id (the segmenter increments it).
            assert_eq!(&out[20..len], &original[20..], "segment {i}");
        }
        assert_eq!(co.segments(), 0);
        assert!(co.take().is_none());
    }

    #[test]
    fn what_the_kernel_would_not_merge_is_not_merged() {
        let mut co = Coalescer::new();
        assert!(co.push(&segment(1, &[1; 100], false)));
        assert!(!co.push(&segment(500, &[1; 100], false)), "sequence gap");
        assert!(
            !co.push(&segment(101, &[1; 200], false)),
            "larger than the first"
        );
        let mut other = segment(101, &[1; 100], false);
        other[22..24].copy_from_slice(&1u16.to_be_bytes());
        assert!(!co.push(&other), "another flow");
        let mut corrupt = segment(101, &[1; 100], false);
        corrupt[60] ^= 0xff;
        assert!(!co.push(&corrupt), "bad checksum");
        let mut syn = segment(101, &[1; 100], false);
        syn[33] |= 0x02;
        assert!(!co.push(&syn));
        assert!(co.push(&segment(101, &[1; 100], false)));
        let (hdr, _) = co.take().unwrap();
        assert_eq!(VirtioNetHdr::parse(&hdr).unwrap().gso_type, GSO_TCPV4);
        // A lone segment goes out unchanged, without GSO.
        let lone = segment(7, &[3; 10], false);
        assert!(co.push(&lone));
        let (hdr, packet) = co.take().unwrap();
        assert_eq!(hdr, [0; VNET_HDR_LEN]);
        assert_eq!(packet, &lone[..]);
        for garbage in [&[][..], &[0x45; 10], &[0x45; 60], &[0x60; 80]] {
            assert!(!co.push(garbage));
        }
    }
}
