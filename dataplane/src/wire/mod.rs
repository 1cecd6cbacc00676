//! Zero-copy packet views.
//!
//! The contract (after smoltcp's `wire`): a view wraps `T: AsRef<[u8]>`;
//! `new_checked` validates every length once, after which no getter can panic;
//! protocol-number enums are total (`Unknown(n)`); `Repr::parse` checks meaning and
//! `Repr::emit` writes into a buffer the caller sized with `buffer_len`.
//! Views that smoltcp already provides with this contract are re-exported rather than
//! written again: after `new_checked`, the getters of `EthernetFrame`, `ArpPacket`,
//! `Ipv4Packet`, `Ipv6Packet`, `UdpPacket`, `TcpPacket`, `Icmpv4Packet` and
//! `Icmpv6Packet` only read within the lengths `check_len` verified (the `wire_*`
//! fuzz targets call every getter we use on arbitrary bytes to hold that). Note that
//! smoltcp's `verify_checksum` methods return `true` when built with `cfg(fuzzing)`,
//! so checksum agreement is tested in unit and property tests, not by the fuzzers.
//!
//! Where smoltcp falls short we have our own:
//! - 802.1Q tags ([`vlan`]) and VXLAN ([`vxlan`]) are not in smoltcp;
//! - `Ipv4Repr::parse` refuses fragments, so fragments are recognised by
//!   [`PacketInfo`] from the raw flags/offset;
//! - `Icmpv4Repr::parse` needs the quoted packet whole (its total length within the
//!   quote), but routers quote only the header + 8 bytes: [`icmp_quote`] reads that;
//! - smoltcp has no walk over a whole IPv6 extension-header chain ([`ipv6_ext`]).
//!
//! For the hot path, [`PacketInfo::parse`] classifies a whole frame in one pass;
//! [`checksum`] holds the full and incremental (NAT) checksum arithmetic.

pub mod bytes;
pub mod checksum;
pub mod classify;
pub mod icmp_quote;
pub mod ipv6_ext;
pub mod mac;
pub mod packet;
pub mod rewrite;
pub mod vlan;
pub mod vxlan;

pub use icmp_quote::{QuotedPacket, QuotedSide, QuotedTransport};
pub use mac::MacAddr;
pub use packet::{Fragment, L3, PacketInfo, ParseError, TcpFlags, Transport};
pub use rewrite::RewriteError;
pub use vlan::{VlanPacket, VlanRepr};
pub use vxlan::{VXLAN_OVERHEAD_V4, VXLAN_PORT, VxlanPacket, VxlanRepr};

pub use smoltcp::phy::ChecksumCapabilities;
pub use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr,
    Icmpv4TimeExceeded, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

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
