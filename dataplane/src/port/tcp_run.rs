//! The one home of the rules for merging a run of TCP/IPv4 segments into a super-packet
//! (a GSO packet with a partial checksum), shared by the TUN port's write-side
//! coalescer and the VXLAN socket port's receive side (a GRO train decapsulated once).
//!
//! Only segments that the kernel's own GRO would merge are merged: IPv4 without
//! options, DF set, not a fragment, TCP with only ACK (PSH ends a run), same
//! addresses, ports, TOS, TTL, IP flags, ACK number, TCP header length and reserved
//! bits, window, urgent pointer and TCP options, contiguous sequence numbers, equal payload sizes (the last may be
//! shorter). Each segment's TCP checksum is verified first, because the merged
//! packet's checksum is left partial for the kernel to complete: a corrupt segment
//! stays on its own, and the kernel drops it as it would without merging. The
//! fields that do not have to be equal (the IP id, the checksums) are exactly those
//! the kernel's segmentation ([`super::tun::gso::Segmenter`]) rewrites, so cutting a
//! merged packet gives back its segments.

use crate::frame::{Gso, GsoKind};
use crate::wire::bytes::{rd16, rd32, wr16};
use crate::wire::checksum;
use crate::wire::packet::IPV4_MIN_HEADER_LEN as IP_HEADER_LEN;

/// The largest IPv4 packet.
pub const MAX_IP_LEN: usize = 65_535;
/// The most segments in one run (the kernel's GRO and GSO caps).
pub const MAX_SEGMENTS: usize = 64;
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
    /// `packet` (an IPv4 packet, nothing after it) as a segment that may join a run;
    /// `None` when it may not, its TCP checksum included.
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
        if tcp_len < 20 || IP_HEADER_LEN + tcp_len > total {
            return None;
        }
        let flags = *packet.get(33)?;
        let payload = total - IP_HEADER_LEN - tcp_len;
        if flags & !TCP_PSH != TCP_ACK || payload == 0 {
            return None;
        }
        // The segment must be intact before its checksum is handed to the kernel.
        let sum = checksum::add(
            pseudo_sum(packet, total - IP_HEADER_LEN)?,
            packet.get(IP_HEADER_LEN..)?,
        );
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
            // TOS (1), IP flags (6..8), TTL (8), addresses (12..20)
            && a.get(1) == b.get(1)
            && a.get(6..9) == b.get(6..9)
            && a.get(12..20) == b.get(12..20)
            // ports (20..24), ACK number (28..32), data offset and reserved bits
            // (32), window (34..36), urgent pointer (38..40), options (40..)
            && a.get(20..24) == b.get(20..24)
            && a.get(28..33) == b.get(28..33)
            && a.get(34..36) == b.get(34..36)
            && a.get(38..IP_HEADER_LEN + self.tcp_len)
                == b.get(38..IP_HEADER_LEN + next.tcp_len)
    }

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

/// One run being merged into a buffer the caller owns (the TUN coalescer's own, a
/// batch's super-frame buffer): the first segment whole, then each next segment's
/// payload appended. The buffer is passed to every call, starting at the IPv4 header.
#[derive(Clone, Copy, Debug)]
pub struct TcpRun {
    max_len: usize,
    len: usize,
    tcp_len: usize,
    seg_size: usize,
    segments: usize,
    next_seq: u32,
    closed: bool,
}

/// What [`TcpRun::finish`] left in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergedRun {
    /// Bytes of the packet at the buffer's start.
    pub len: usize,
    /// Segments merged into it.
    pub segments: usize,
    /// The super-frame (with `l3` 0, the packet's own IPv4 header); `None` for a
    /// lone segment, left unchanged.
    pub gso: Option<Gso>,
}

impl TcpRun {
    /// A run whose merged packet may grow to `max_len` bytes (at most
    /// [`MAX_IP_LEN`]; less when headers go in front of it).
    pub fn new(max_len: usize) -> Self {
        TcpRun {
            max_len: max_len.min(MAX_IP_LEN),
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

    /// Adds `packet` to the run being built in `buf`, or starts a run with it when
    /// none is open. `false`: it cannot join (the caller ends the run, then tries
    /// again or passes the packet on on its own).
    pub fn push(&mut self, buf: &mut [u8], packet: &[u8]) -> bool {
        let Some(seg) = Segment::parse(packet) else {
            return false;
        };
        if self.segments == 0 {
            if packet.len() > self.max_len {
                return false;
            }
            let Some(dst) = buf.get_mut(..packet.len()) else {
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
        let Some(first) = buf.get(..self.len).and_then(Segment::first_header) else {
            return false;
        };
        if self.closed
            || self.segments >= MAX_SEGMENTS
            || seg.seq != self.next_seq
            || seg.payload > self.seg_size
            || self.len + seg.payload > self.max_len
            || !first.same_flow(&seg)
        {
            return false;
        }
        let data = packet
            .get(IP_HEADER_LEN + seg.tcp_len..)
            .unwrap_or_default();
        let Some(dst) = buf.get_mut(self.len..self.len + data.len()) else {
            return false;
        };
        dst.copy_from_slice(data);
        self.len += data.len();
        self.segments += 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < self.seg_size || seg.flags & TCP_PSH != 0 {
            self.closed = true;
            if let Some(f) = buf.get_mut(33) {
                *f |= seg.flags & TCP_PSH;
            }
        }
        true
    }

    /// Ends the run built in `buf` ([`TcpRun::seal`], then no run is open). `None`
    /// when no run is open.
    pub fn finish(&mut self, buf: &mut [u8]) -> Option<MergedRun> {
        let merged = self.seal(buf);
        self.segments = 0;
        merged
    }

    /// Sets the headers of the run built in `buf` so far, leaving it open (more
    /// segments may join, then seal again): a merged packet gets its IPv4 total
    /// length and header checksum, and as its TCP checksum the partial
    /// (pseudo-header) sum a super-frame carries (see [`Gso`]). `None` when no run
    /// is open.
    pub fn seal(&self, buf: &mut [u8]) -> Option<MergedRun> {
        let (segments, len) = (self.segments, self.len);
        if segments == 0 {
            return None;
        }
        if segments == 1 {
            return Some(MergedRun {
                len,
                segments,
                gso: None,
            });
        }
        let packet = buf.get_mut(..len)?;
        wr16(packet, 2, u16::try_from(len).ok()?)?;
        wr16(packet, 10, 0)?;
        let ip_sum = checksum::checksum(packet.get(..IP_HEADER_LEN)?);
        wr16(packet, 10, ip_sum)?;
        let pseudo = checksum::fold(pseudo_sum(packet, len - IP_HEADER_LEN)?);
        wr16(packet, IP_HEADER_LEN + 16, pseudo)?;
        Some(MergedRun {
            len,
            segments,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                size: u16::try_from(self.seg_size).ok()?,
                hdr_len: u16::try_from(IP_HEADER_LEN + self.tcp_len).ok()?,
                l3: 0,
            }),
        })
    }
}
