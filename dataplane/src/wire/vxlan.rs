//! VXLAN (RFC 7348) header: 8 bytes between the outer UDP header and the inner
//! Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! Linux and flannel use UDP port 8472 (the pre-IANA port) rather than 4789.

use super::WireError;

/// flannel's and the Linux kernel's default VXLAN UDP port.
pub const VXLAN_PORT: u16 = 8472;
/// Size of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// Bytes VXLAN over IPv4 adds in front of the inner frame: outer Ethernet 14 +
/// IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD_V4: usize = 50;
/// The "valid VNI" flag (first byte, bit 3).
pub const VXLAN_FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A read view of a VXLAN header (what follows it, the inner frame, is not its
/// business). The pipeline decapsulates through it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking it; use [`VxlanPacket::new_checked`] on packet data.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures every getter is in bounds.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < VXLAN_HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    fn header(&self) -> [u8; 8] {
        let mut h = [0u8; 8];
        if let Some(src) = self.buffer.as_ref().get(..VXLAN_HEADER_LEN) {
            h.copy_from_slice(src);
        }
        h
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.header()[0]
    }

    /// Whether the I flag (VNI valid) is set.
    pub fn i_flag(&self) -> bool {
        self.flags() & VXLAN_FLAG_I != 0
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let h = self.header();
        u32::from_be_bytes([0, h[4], h[5], h[6]])
    }
}

/// The meaning of a VXLAN header: a VNI, with the I flag required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a checked header; the I flag must be set (RFC 7348 §5), reserved bits
    /// are ignored as the RFC asks of receivers.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(WireError::Invalid);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// The 8 header bytes, for code that writes the whole outer header at once.
    pub const fn to_bytes(&self) -> [u8; 8] {
        let v = (self.vni & VNI_MAX).to_be_bytes();
        [VXLAN_FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const GOLDEN: [u8; 12] = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xde, 0xad, 0xbe, 0xef];

    #[test]
    fn parse_golden() {
        let p = VxlanPacket::new_checked(&GOLDEN[..]).unwrap();
        assert!(p.i_flag());
        assert_eq!(p.vni(), 0x123456);
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 0x123456 });
    }

    #[test]
    fn emit_golden() {
        assert_eq!(VxlanRepr { vni: 0x123456 }.to_bytes(), GOLDEN[..8]);
        assert_eq!(VxlanRepr { vni: 0x1ff_ffff }.to_bytes()[4..7], [0xff; 3]);
    }

    #[test]
    fn rejects_short_and_missing_i_flag() {
        assert_eq!(
            VxlanPacket::new_checked(&GOLDEN[..7]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = GOLDEN;
        bad[0] = 0;
        let p = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap_err(), WireError::Invalid);
    }
}
