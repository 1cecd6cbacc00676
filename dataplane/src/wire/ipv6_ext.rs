//! Walking an IPv6 extension-header chain to the upper-layer header.
//!
//! Hop-by-hop (0), routing (43), fragment (44), destination options (60) and
//! authentication (51) headers are skipped; the walk stops at ESP (50, the rest is
//! encrypted) and "no next header" (59), and at the first protocol that is not an
//! extension header. It never reads past the packet: a header whose length runs off
//! the end is an error.

/// Extension header and upper-layer protocol numbers used in the walk.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTIONS: u8 = 60;
}

/// Fixed IPv6 header length.
const FIXED_LEN: usize = 40;

/// The chain is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ipv6ExtError {
    /// A header (fixed or extension) runs past the end of the packet.
    #[error("IPv6 extension header runs past the packet")]
    Truncated,
    /// Hop-by-hop not first (RFC 8200 §4.1).
    #[error("IPv6 extension header chain invalid")]
    Invalid,
}

/// The contents of an IPv6 fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6FragmentHeader {
    /// Offset of the fragment's data in bytes.
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// Where the walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Walk {
    /// The upper-layer protocol (or ESP / no-next-header when `stopped`).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment header, when one was present.
    pub fragment: Option<Ipv6FragmentHeader>,
    /// The walk stopped at ESP or no-next-header: nothing readable follows.
    pub stopped: bool,
    /// Number of extension headers skipped.
    pub ext_count: u8,
}

/// Walks the chain of `packet` (an IPv6 packet starting with its fixed header, cut
/// to its payload length) whose fixed header says `next`.
pub fn walk(packet: &[u8], mut next: u8) -> Result<Ipv6Walk, Ipv6ExtError> {
    use next_header::*;
    let mut offset = FIXED_LEN;
    if packet.len() < FIXED_LEN {
        return Err(Ipv6ExtError::Truncated);
    }
    let mut fragment = None;
    let mut ext_count: u8 = 0;
    loop {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS => {
                if next == HOP_BY_HOP && ext_count != 0 {
                    return Err(Ipv6ExtError::Invalid);
                }
                let hdr_len = *packet.get(offset + 1).ok_or(Ipv6ExtError::Truncated)?;
                (usize::from(hdr_len) + 1) * 8
            }
            AH => {
                // AH counts in 4-byte units minus 2 (RFC 4302 §2.2).
                let payload_len = *packet.get(offset + 1).ok_or(Ipv6ExtError::Truncated)?;
                (usize::from(payload_len) + 2) * 4
            }
            FRAGMENT => {
                let h = packet
                    .get(offset..offset + 8)
                    .ok_or(Ipv6ExtError::Truncated)?;
                if let [_, _, o0, o1, i0, i1, i2, i3] = *h {
                    let off = u16::from_be_bytes([o0, o1]);
                    fragment = Some(Ipv6FragmentHeader {
                        offset: off & 0xfff8,
                        more: off & 1 != 0,
                        id: u32::from_be_bytes([i0, i1, i2, i3]),
                    });
                }
                8
            }
            ESP | NO_NEXT => {
                return Ok(Ipv6Walk {
                    protocol: next,
                    offset,
                    fragment,
                    stopped: true,
                    ext_count,
                });
            }
            _ => {
                return Ok(Ipv6Walk {
                    protocol: next,
                    offset,
                    fragment,
                    stopped: false,
                    ext_count,
                });
            }
        };
        if offset + len > packet.len() {
            return Err(Ipv6ExtError::Truncated);
        }
        next = *packet.get(offset).ok_or(Ipv6ExtError::Truncated)?;
        offset += len;
        ext_count = ext_count.saturating_add(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::next_header::*;
    use super::*;

    fn packet(exts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; FIXED_LEN];
        p[0] = 0x60;
        p.extend_from_slice(exts);
        p
    }

    #[test]
    fn walks_hbh_routing_fragment_dest_ah_to_udp() {
        #[rustfmt::skip]
        let exts = [
            ROUTING, 0, 1, 2, 3, 4, 5, 6,                          // hop-by-hop, 8 bytes
            FRAGMENT, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // routing, 16 bytes
            DEST_OPTIONS, 0, 0x00, 0x19, 0xde, 0xad, 0xbe, 0xef,   // fragment: offset 24, MF
            AH, 0, 1, 4, 0, 0, 0, 0,                               // destination options
            17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                   // AH: (1+2)*4 = 12
            0, 1, 0, 2, 0, 8, 0, 0,                                // UDP
        ];
        let p = packet(&exts);
        let w = walk(&p, HOP_BY_HOP).unwrap();
        assert_eq!(w.protocol, 17);
        assert_eq!(w.offset, FIXED_LEN + 8 + 16 + 8 + 8 + 12);
        assert_eq!(w.ext_count, 5);
        assert!(!w.stopped);
        assert_eq!(
            w.fragment,
            Some(Ipv6FragmentHeader {
                offset: 24,
                more: true,
                id: 0xdeadbeef
            })
        );
    }

    #[test]
    fn stops_at_esp_and_no_next() {
        let p = packet(&[ESP, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        let w = walk(&p, DEST_OPTIONS).unwrap();
        assert_eq!((w.protocol, w.offset, w.stopped), (ESP, 48, true));
        let w = walk(&packet(&[]), NO_NEXT).unwrap();
        assert!(w.stopped);
    }

    #[test]
    fn never_past_the_packet() {
        // Routing header claiming 8*(255+1) bytes.
        let p = packet(&[17, 255, 0, 0, 0, 0, 0, 0]);
        assert_eq!(walk(&p, ROUTING), Err(Ipv6ExtError::Truncated));
        // Header length byte itself missing.
        assert_eq!(
            walk(&packet(&[17]), DEST_OPTIONS),
            Err(Ipv6ExtError::Truncated)
        );
        assert_eq!(
            walk(&packet(&[17, 0, 0]), FRAGMENT),
            Err(Ipv6ExtError::Truncated)
        );
        assert_eq!(walk(&[0u8; 10], 17), Err(Ipv6ExtError::Truncated));
        // Hop-by-hop only first.
        let p = packet(&[HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(walk(&p, DEST_OPTIONS), Err(Ipv6ExtError::Invalid));
    }
}
