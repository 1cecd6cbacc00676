//! Super-frames ([`Gso`]) through the pipeline: the stages rewrite a super-frame's
//! headers exactly as a single packet's, and this module keeps the two things that
//! differ right.
//!
//! - **The partial checksum.** A super-frame's transport checksum field holds the
//!   pseudo-header sum, not a checksum (see [`Gso`]). The NAT stages update checksum
//!   fields as complete checksums (RFC 1624), addresses and ports alike; for a
//!   partial sum only the pseudo-header addresses count (the device sums the ports
//!   with the rest of the segment). So the field is taken before the pipeline runs
//!   and, after it, set from that value and the address change alone
//!   ([`checksum::partial_update`], the kernel's `CHECKSUM_PARTIAL` rule) - one
//!   place, whichever stage rewrote which address.
//! - **The MTU.** What must fit the egress MTU is one wire packet, the headers plus
//!   `Gso::size`, not the super-frame ([`ip_len_on_wire`]).

use crate::frame::{Frame, Gso, GsoKind};
use crate::wire::checksum;

/// A super-frame's pseudo-header addresses and checksum field before the pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) struct PartialChecksum {
    /// Offset of the checksum field from the segmented IP header.
    field: usize,
    /// Offset and length of the addresses from the segmented IP header.
    addrs: (usize, usize),
    old_addrs: [u8; 32],
    old_partial: u16,
}

impl PartialChecksum {
    /// Notes what [`PartialChecksum::restore`] needs; `None` for a single packet.
    pub(super) fn take(frame: &Frame<'_>) -> Option<Self> {
        let gso = frame.gso()?;
        let ip = frame.data().get(usize::from(gso.l3)..)?;
        let (l3_len, addrs) = match gso.kind {
            GsoKind::TcpV4 => (usize::from(ip.first()? & 0x0f) * 4, (12, 8)),
            GsoKind::TcpV6 => (40, (8, 32)),
            GsoKind::Udp if ip.first()? >> 4 == 4 => (usize::from(ip.first()? & 0x0f) * 4, (12, 8)),
            GsoKind::Udp => (40, (8, 32)),
        };
        let field = l3_len + if gso.kind == GsoKind::Udp { 6 } else { 16 };
        let mut old_addrs = [0u8; 32];
        old_addrs
            .get_mut(..addrs.1)?
            .copy_from_slice(ip.get(addrs.0..addrs.0 + addrs.1)?);
        Some(PartialChecksum {
            field,
            addrs,
            old_addrs,
            old_partial: crate::wire::bytes::rd16(ip, field)?,
        })
    }

    /// Sets the checksum field of what is still a super-frame after the pipeline to
    /// the partial sum for its addresses now.
    pub(super) fn restore(&self, frame: &mut Frame<'_>) {
        let Some(gso) = frame.gso() else {
            return;
        };
        let Some(ip) = frame.data_mut().get_mut(usize::from(gso.l3)..) else {
            return;
        };
        let (at, n) = self.addrs;
        let (Some(new), Some(old)) = (ip.get(at..at + n), self.old_addrs.get(..n)) else {
            return;
        };
        let partial = checksum::partial_update(self.old_partial, old, new);
        if let Some(f) = ip.get_mut(self.field..self.field + 2) {
            f.copy_from_slice(&partial.to_be_bytes());
        }
    }
}

/// The IP length of the largest wire packet `frame` stands for: its IP total length
/// `total_len`, or for a super-frame one segment with its headers.
pub(super) fn ip_len_on_wire(frame: &Frame<'_>, total_len: usize) -> usize {
    frame.gso().map_or(total_len, |g: Gso| g.packet_len())
}
