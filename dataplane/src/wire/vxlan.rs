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
/// The same over IPv6 (outer IPv6 header is 40 bytes).
pub const VXLAN_OVERHEAD_V6: usize = 70;
/// The "valid VNI" flag (first byte, bit 3).
pub const VXLAN_FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A read/write view of a VXLAN header followed by the inner Ethernet frame.
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

    pub fn into_inner(self) -> T {
        self.buffer
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

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(VXLAN_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    fn header_mut(&mut self) -> Option<&mut [u8; VXLAN_HEADER_LEN]> {
        self.buffer
            .as_mut()
            .get_mut(..VXLAN_HEADER_LEN)?
            .try_into()
            .ok()
    }

    /// Sets the flags byte and clears the first reserved field.
    pub fn set_flags(&mut self, flags: u8) {
        if let Some(h) = self.header_mut() {
            h[0] = flags;
            h[1..4].fill(0);
        }
    }

    /// Sets the VNI (masked to 24 bits) and clears the last reserved byte.
    pub fn set_vni(&mut self, vni: u32) {
        if let Some(h) = self.header_mut() {
            let b = (vni & VNI_MAX).to_be_bytes();
            h[4..7].copy_from_slice(&b[1..4]);
            h[7] = 0;
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(VXLAN_HEADER_LEN..)
            .unwrap_or(&mut [])
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

    pub const fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Writes the header (I flag, VNI, zero reserved fields).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(VXLAN_FLAG_I);
        packet.set_vni(self.vni);
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
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 0x123456 });
    }

    #[test]
    fn construct_from_a5() {
        let mut buf = [0xa5u8; 12];
        let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
        VxlanRepr { vni: 0x123456 }.emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, GOLDEN);
        assert_eq!(VxlanRepr { vni: 0x123456 }.to_bytes(), GOLDEN[..8]);
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
