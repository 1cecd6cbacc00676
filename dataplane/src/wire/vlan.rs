//! IEEE 802.1Q VLAN tag: the 4 bytes after an Ethernet header's source MAC whose
//! EtherType is 0x8100 (that EtherType is the TPID, the first half of the tag).
//!
//! The view starts at the tag control information (TCI), right after the TPID, so it
//! lines up with [`EthernetFrame::payload`](smoltcp::wire::EthernetFrame::payload) of a
//! frame whose EtherType is 0x8100:
//!
//! ```text
//! | PCP(3) DEI(1) VID(12) | inner EtherType (16) | payload ...
//! ```

use super::WireError;

/// The 802.1Q TPID (the outer EtherType of a tagged frame).
pub const TPID_8021Q: u16 = 0x8100;
/// Bytes of tag following the TPID: TCI + inner EtherType.
pub const VLAN_HEADER_LEN: usize = 4;

/// A view of an 802.1Q tag followed by the payload it tags.
#[derive(Debug, Clone)]
pub struct VlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds the 4-byte tag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < VLAN_HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word(&self, at: usize) -> u16 {
        super::checksum::read_u16(self.buffer.as_ref(), at).unwrap_or(0)
    }

    /// The whole tag control information.
    pub fn tci(&self) -> u16 {
        self.word(0)
    }

    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// EtherType of the tagged payload.
    pub fn ethertype(&self) -> u16 {
        self.word(2)
    }

    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(VLAN_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanPacket<T> {
    pub fn set_tci(&mut self, tci: u16) {
        super::checksum::write_u16(self.buffer.as_mut(), 0, tci);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        super::checksum::write_u16(self.buffer.as_mut(), 2, ethertype);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(VLAN_HEADER_LEN..)
            .unwrap_or(&mut [])
    }
}

/// The meaning of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanRepr {
    pub pcp: u8,
    pub dei: bool,
    /// 0 means "priority tag only"; 4095 is reserved and refused.
    pub vid: u16,
    pub ethertype: u16,
}

impl VlanRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &VlanPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.vid() == 0x0fff {
            return Err(WireError::Invalid);
        }
        Ok(VlanRepr {
            pcp: packet.pcp(),
            dei: packet.dei(),
            vid: packet.vid(),
            ethertype: packet.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        VLAN_HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VlanPacket<T>) {
        let tci =
            (u16::from(self.pcp & 0x7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff);
        packet.set_tci(tci);
        packet.set_ethertype(self.ethertype);
    }
}
