//! A packet in flight: a window into a buffer that the port owns, with headroom in
//! front so encapsulation can prepend its headers without moving the payload.

use std::fmt;

/// Bytes kept free in front of every received packet. VXLAN over IPv4 prepends 50
/// bytes (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8); 128 leaves room for an outer
/// 802.1Q tag or IPv6 outer header and keeps the payload cache-line aligned.
pub const FRAME_HEADROOM: usize = 128;

/// Size of one frame buffer (headroom included). 2048 fits a 1500-byte MTU frame plus
/// encapsulation and is half of an AF_XDP 4 KiB chunk.
pub const FRAME_BUFFER_SIZE: usize = 2048;

/// Size of a super-frame buffer (headroom included): the largest IP packet (64 KiB)
/// after the headroom and an Ethernet header, rounded up.
pub const SUPER_FRAME_BUFFER_SIZE: usize = 65_536 + 256;

/// Identifies a port (uplink, a pod interface, a TUN queue group) on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// What the port knows about a frame besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// The port the frame arrived on.
    pub in_port: PortId,
}

/// The transport protocol of a super-frame, which decides how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    TcpV4,
    TcpV6,
    /// UDP over IPv4 or IPv6 cut into datagrams (`UDP_SEGMENT`, `VIRTIO_NET_HDR_GSO_UDP_L4`).
    Udp,
}

/// A super-frame: one IP packet of up to 64 KiB that stands for a train of wire
/// packets (a TSO/GSO read from a TUN), carried whole through the pipeline and cut
/// where it leaves only if the output cannot take it whole.
///
/// The invariant every holder keeps: the transport checksum field holds the *partial*
/// checksum, the folded pseudo-header sum (Linux `CHECKSUM_PARTIAL`; virtio-net
/// `NEEDS_CSUM` with `csum_start` at the transport header), not a complete checksum.
/// Address rewrites update it with [`crate::wire::checksum::partial_update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// Transport payload bytes per wire packet (the MSS for TCP).
    pub size: u16,
    /// IP and transport header bytes of each wire packet.
    pub hdr_len: u16,
    /// Offset of the IP header being segmented from the frame's first byte; kept in
    /// step by [`Frame::push_front`] and [`Frame::pull_front`], so after
    /// encapsulation it points at the inner header.
    pub l3: u16,
}

impl Gso {
    /// The IP length of each wire packet but the last (what MTU checks compare).
    pub fn packet_len(&self) -> usize {
        usize::from(self.hdr_len) + usize::from(self.size)
    }
}

/// Not enough room in the frame buffer for the requested change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame buffer has no room for {needed} more bytes")]
pub struct NoRoom {
    pub needed: usize,
}

/// Why [`Frame::pull_front`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("pulled past the end of the packet")]
    PastTheEnd,
    #[error("pulled off the header a super-frame is segmented by")]
    SegmentedHeader,
}

/// A packet at `buf[start..start + len]`; the bytes before `start` are headroom.
///
/// The frame never grows past its buffer: every operation that would is refused with
/// [`NoRoom`], which the pipeline turns into a counted drop.
pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
    pub meta: FrameMeta,
    gso: Option<Gso>,
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .field("meta", &self.meta)
            .field("gso", &self.gso)
            .finish()
    }
}

impl<'a> Frame<'a> {
    /// A frame over `buf` whose packet is `buf[start..start + len]`; out-of-range
    /// values are clamped to the buffer so a frame is always valid.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize, meta: FrameMeta) -> Self {
        let start = start.min(buf.len());
        let len = len.min(buf.len() - start);
        Frame {
            buf,
            start,
            len,
            meta,
            gso: None,
        }
    }

    /// The same frame marked as a super-frame (`None`: a single packet).
    pub fn with_gso(mut self, gso: Option<Gso>) -> Self {
        self.gso = gso;
        self
    }

    /// `Some` when this frame is a super-frame (see [`Gso`]).
    pub fn gso(&self) -> Option<Gso> {
        self.gso
    }

    /// Copies `packet` into `buf` after [`FRAME_HEADROOM`] bytes (or as much headroom
    /// as the buffer allows). Used by ports that cannot receive in place and by tests.
    pub fn copy_from(buf: &'a mut [u8], packet: &[u8], meta: FrameMeta) -> Result<Self, NoRoom> {
        let headroom = FRAME_HEADROOM.min(buf.len().saturating_sub(packet.len()));
        let end = headroom + packet.len();
        match buf.get_mut(headroom..end) {
            Some(dst) => dst.copy_from_slice(packet),
            None => {
                return Err(NoRoom {
                    needed: end - buf.len(),
                });
            }
        }
        Ok(Frame {
            buf,
            start: headroom,
            len: packet.len(),
            meta,
            gso: None,
        })
    }

    /// The packet bytes.
    // Invariant kept by every constructor and mutator: start + len <= buf.len(), so
    // the window slices below cannot panic.
    #[allow(clippy::indexing_slicing)]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The packet bytes, writable.
    #[allow(clippy::indexing_slicing)] // window invariant, see `data`
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the packet in the buffer (ports need it to build descriptors).
    pub fn offset(&self) -> usize {
        self.start
    }

    pub fn headroom(&self) -> usize {
        self.start
    }

    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }

    /// Grows the packet at the front by `n` bytes and returns them (contents are
    /// whatever was in the headroom; the caller writes every byte).
    #[allow(clippy::indexing_slicing)] // window invariant, see `data`; n <= start checked
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.start {
            return Err(NoRoom {
                needed: n - self.start,
            });
        }
        self.start -= n;
        self.len += n;
        if let Some(g) = self.gso.as_mut() {
            g.l3 = g.l3.saturating_add(n as u16);
        }
        Ok(&mut self.buf[self.start..self.start + n])
    }

    /// Removes `n` bytes from the front (decapsulation). Refused past the end, and
    /// on a super-frame past the header it segments: that would keep only the first
    /// inner packet of a train (e.g. a UDP GSO read of VXLAN datagrams) and lose the
    /// rest without a word.
    pub fn pull_front(&mut self, n: usize) -> Result<(), PullError> {
        if n > self.len {
            return Err(PullError::PastTheEnd);
        }
        let gso = match self.gso {
            Some(g) => Some(Gso {
                l3: usize::from(g.l3)
                    .checked_sub(n)
                    .and_then(|l3| u16::try_from(l3).ok())
                    .ok_or(PullError::SegmentedHeader)?,
                ..g
            }),
            None => None,
        };
        self.start += n;
        self.len -= n;
        self.gso = gso;
        Ok(())
    }

    /// Sets the packet length, keeping the start; growing is limited by the tailroom.
    pub fn set_len(&mut self, len: usize) -> Result<(), NoRoom> {
        let max = self.buf.len() - self.start;
        if len > max {
            return Err(NoRoom { needed: len - max });
        }
        self.len = len;
        Ok(())
    }

    /// Replaces the packet with `bytes`, placed after the standard headroom when the
    /// buffer allows (replies such as ARP answers and ICMP errors are built this way).
    pub fn replace(&mut self, bytes: &[u8]) -> Result<(), NoRoom> {
        let headroom = FRAME_HEADROOM.min(self.buf.len().saturating_sub(bytes.len()));
        let end = headroom + bytes.len();
        match self.buf.get_mut(headroom..end) {
            Some(dst) => dst.copy_from_slice(bytes),
            None => {
                return Err(NoRoom {
                    needed: end - self.buf.len(),
                });
            }
        }
        self.start = headroom;
        self.len = bytes.len();
        // A reply is one packet.
        self.gso = None;
        Ok(())
    }

    /// The whole buffer and the packet's place in it, for code that builds a new
    /// packet in place from parts of the old one (ICMP errors quote the original).
    pub fn raw_parts(&mut self) -> (&mut [u8], usize, usize) {
        (self.buf, self.start, self.len)
    }

    /// Sets the packet's place in the buffer after [`Frame::raw_parts`] edits.
    pub fn set_window(&mut self, start: usize, len: usize) -> Result<(), NoRoom> {
        if start > self.buf.len() || len > self.buf.len() - start {
            return Err(NoRoom {
                needed: (start + len).saturating_sub(self.buf.len()),
            });
        }
        self.start = start;
        self.len = len;
        // A packet built in place (an ICMP error) is one packet.
        self.gso = None;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_stay_inside_the_buffer() {
        let mut buf = [0u8; 256];
        let mut frame = Frame::copy_from(&mut buf, &[1, 2, 3, 4], FrameMeta::default()).unwrap();
        assert_eq!(frame.headroom(), FRAME_HEADROOM);
        frame.push_front(50).unwrap().fill(9);
        assert_eq!(frame.len(), 54);
        assert_eq!(&frame.data()[50..], &[1, 2, 3, 4]);
        frame.pull_front(50).unwrap();
        assert_eq!(frame.data(), &[1, 2, 3, 4]);
        assert!(frame.push_front(FRAME_HEADROOM + 1).is_err());
        assert!(frame.pull_front(5).is_err());
        assert!(frame.set_len(256 - FRAME_HEADROOM + 1).is_err());
        assert_eq!(frame.data(), &[1, 2, 3, 4]);
    }

    #[test]
    fn a_super_frame_keeps_the_header_it_is_segmented_by() {
        let mut buf = [0u8; 512];
        let gso = Gso {
            kind: GsoKind::TcpV4,
            size: 100,
            hdr_len: 40,
            l3: 50,
        };
        let mut frame = Frame::copy_from(&mut buf, &[0; 300], FrameMeta::default())
            .unwrap()
            .with_gso(Some(gso));
        frame.pull_front(50).unwrap();
        assert_eq!(frame.gso(), Some(Gso { l3: 0, ..gso }));
        assert_eq!(frame.pull_front(1), Err(PullError::SegmentedHeader));
        assert_eq!(frame.len(), 250, "a refused pull changes nothing");
        assert_eq!(frame.pull_front(251), Err(PullError::PastTheEnd));
    }

    #[test]
    fn small_buffers_get_less_headroom_not_a_panic() {
        let mut buf = [0u8; 10];
        let frame = Frame::copy_from(&mut buf, &[7; 8], FrameMeta::default()).unwrap();
        assert_eq!(frame.headroom(), 2);
        let mut tiny = [0u8; 4];
        assert!(Frame::copy_from(&mut tiny, &[7; 8], FrameMeta::default()).is_err());
        let mut buf = [0u8; 8];
        let frame = Frame::new(&mut buf, 100, 100, FrameMeta::default());
        assert!(frame.is_empty());
    }
}
