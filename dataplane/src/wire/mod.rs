//! The packet stack the forwarding path runs, and the fuzzers with it: zero-copy
//! reads and in-place rewrites of Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP and VXLAN
//! headers. Nothing here is only for tests: every item is on the pipeline's path.
//!
//! - [`classify`]: one pass over the headers a frame is judged on (untagged IPv4 by
//!   a specialised parser, everything else through [`PacketInfo::parse`], with the
//!   IPv6 extension-header walk of [`ipv6_ext`]); after it succeeds every offset it
//!   returns is inside the frame and the IPv4 header checksum is right.
//! - [`bytes`]: the bounds-checked big-endian field access everything else uses.
//! - [`rewrite`]: NAT and forwarding rewrites with incremental checksum updates;
//!   [`checksum`]: the full and incremental checksum arithmetic.
//! - [`icmp_quote`]: the packet an ICMP error quotes (routers quote only the header
//!   + 8 bytes, which smoltcp's `Icmpv4Repr::parse` refuses).
//! - [`vxlan`]: the VXLAN header view and constants.
//!
//! The tests build and check packets with smoltcp's views (a dev-dependency), an
//! implementation independent of ours.

pub mod bytes;
pub mod checksum;
pub mod classify;
pub mod icmp_quote;
pub mod ipv6_ext;
pub mod mac;
pub mod packet;
pub mod rewrite;
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
