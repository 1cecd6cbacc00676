//! Bounds-checked reads and writes of big-endian fields at fixed offsets.
//!
//! The one home of the dataplane's big-endian field access. The pipeline rewrites
//! headers in place at offsets it validated once while classifying; these helpers
//! keep every access checked anyway, so a bug in an offset becomes a counted drop
//! instead of a panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::MacAddr;

#[inline]
pub fn rd8(d: &[u8], at: usize) -> Option<u8> {
    d.get(at).copied()
}

#[inline]
pub fn rd16(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

#[inline]
pub fn rd32(d: &[u8], at: usize) -> Option<u32> {
    rd_array::<4>(d, at).map(u32::from_be_bytes)
}

#[inline]
pub fn rd_array<const N: usize>(d: &[u8], at: usize) -> Option<[u8; N]> {
    d.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[inline]
pub fn rd_ip4(d: &[u8], at: usize) -> Option<Ipv4Addr> {
    rd_array::<4>(d, at).map(Ipv4Addr::from)
}

#[inline]
pub fn rd_ip6(d: &[u8], at: usize) -> Option<Ipv6Addr> {
    rd_array::<16>(d, at).map(Ipv6Addr::from)
}

#[inline]
pub fn rd_mac(d: &[u8], at: usize) -> Option<MacAddr> {
    rd_array::<6>(d, at).map(MacAddr)
}

#[inline]
pub fn put(d: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    d.get_mut(at..at.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

#[inline]
pub fn wr8(d: &mut [u8], at: usize, v: u8) -> Option<()> {
    *d.get_mut(at)? = v;
    Some(())
}

#[inline]
pub fn wr16(d: &mut [u8], at: usize, v: u16) -> Option<()> {
    put(d, at, &v.to_be_bytes())
}

/// Rewrites the 16-bit word at `at` with `f(old)` and updates the one's-complement
/// checksum at `checksum_at` that covers it (RFC 1624).
#[inline]
pub fn update16(
    d: &mut [u8],
    at: usize,
    checksum_at: usize,
    f: impl FnOnce(u16) -> u16,
) -> Option<()> {
    let old = rd16(d, at)?;
    let sum = rd16(d, checksum_at)?;
    let new = f(old);
    wr16(d, at, new)?;
    wr16(d, checksum_at, super::checksum::update_u16(sum, old, new))
}

#[inline]
pub fn wr32(d: &mut [u8], at: usize, v: u32) -> Option<()> {
    put(d, at, &v.to_be_bytes())
}

/// Writes destination and source MAC of the Ethernet header at `at`.
#[inline]
pub fn set_macs(d: &mut [u8], at: usize, dst: MacAddr, src: MacAddr) -> Option<()> {
    let mut both = [0u8; 12];
    both[..6].copy_from_slice(&dst.0);
    both[6..].copy_from_slice(&src.0);
    put(d, at, &both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_none_not_a_panic() {
        let mut d = [1u8, 2, 3];
        assert_eq!(rd16(&d, 1), Some(0x0203));
        assert_eq!(rd16(&d, 2), None);
        assert_eq!(rd16(&d, usize::MAX), None);
        assert_eq!(rd_ip4(&d, 0), None);
        assert_eq!(wr16(&mut d, 2, 7), None);
        assert_eq!(put(&mut d, usize::MAX, &[1]), None);
        assert_eq!(d, [1, 2, 3]);
    }
}
