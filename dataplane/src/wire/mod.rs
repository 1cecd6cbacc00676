//! Zero-copy packet views.
//!
//! The contract (after smoltcp's `wire`): a view wraps `T: AsRef<[u8]>`;
//! `new_checked` validates every length once, after which no getter can panic;
//! protocol-number enums are total (`Unknown(n)`); `Repr::parse` checks meaning and
//! `Repr::emit` writes into a buffer the caller sized with `buffer_len`.
//! Views that smoltcp already provides with this contract are re-exported rather than
//! written again.
//!
//! For the hot path, [`PacketInfo::parse`] classifies a whole frame in one pass;
//! [`checksum`] holds the full and incremental (NAT) checksum arithmetic.

pub mod checksum;
pub mod ipv6_ext;
pub mod mac;
pub mod packet;
pub mod vxlan;

pub use mac::MacAddr;
pub use packet::{Fragment, L3, PacketInfo, ParseError, TcpFlags, Transport};
pub use vxlan::{VXLAN_OVERHEAD_V4, VXLAN_PORT, VxlanPacket, VxlanRepr};

/// Why one of our own views refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header (or a length field) requires.
    #[error("truncated header")]
    Truncated,
    /// Lengths fit but a field's value is not allowed.
    #[error("invalid header field")]
    Invalid,
}
