//! The Internet checksum: full computation (RFC 1071), pseudo-header sums, and
//! incremental update (RFC 1624) for NAT rewrites.
//!
//! Conventions: a *sum* is the folded one's-complement sum of some 16-bit words (what
//! you add up); a *checksum* is the complement of a sum (what goes on the wire). All
//! values are host-order `u16`s of big-endian wire words.
//!
//! Incremental updates use RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which
//! never produces the "negative zero" that equation 2 can. For data that is not all
//! zeros it yields exactly what a full recomputation would; every header we rewrite
//! (IPv4, TCP, UDP with their pseudo-headers, ICMP echo with type 8 or a non-zero
//! identifier) satisfies that.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Folds a 32-bit accumulator into 16 bits with end-around carry.
#[inline]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// One's-complement sum of `data` as big-endian 16-bit words; an odd final byte is
/// padded with a zero byte (RFC 1071).
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    fold(add(0, data))
}

/// `acc` plus the one's-complement sum of `data` (as [`sum`]), folded to 16 bits so
/// callers may add a few more small terms (pseudo-header words, lengths) before
/// [`fold`] and complement.
#[inline]
pub fn add(acc: u32, data: &[u8]) -> u32 {
    // 32-bit words into a 64-bit accumulator: no carry handling in the loop (the
    // ones'-complement sum is the same whatever the word size, once folded). The
    // words are read in native byte order, which the compiler vectorises (a
    // big-endian read costs a byte swap per word and did not vectorise): the sum is
    // independent of byte order up to one swap of the folded result (RFC 1071,
    // section 2(B)), which `from_be` does on little-endian hosts.
    let mut native: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        if let [a, b, c, d] = *w {
            native += u64::from(u32::from_ne_bytes([a, b, c, d]));
        }
    }
    while native >> 16 != 0 {
        native = (native & 0xffff) + (native >> 16);
    }
    let mut acc = u64::from(acc) + u64::from(u16::from_be(native as u16));
    match *words.remainder() {
        [a, b, c] => acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
        [a] => acc += u64::from(a) << 8,
        _ => {}
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// [`sum`] of a 20-byte IPv4 header without options, the common case on the hot path.
#[inline]
pub fn sum_ipv4_header(h: &[u8; 20]) -> u16 {
    let w = |i: usize| -> u64 {
        let mut b = [0u8; 4];
        if let Some(s) = h.get(i..i + 4) {
            b.copy_from_slice(s);
        }
        u64::from(u32::from_be_bytes(b))
    };
    fold64(w(0) + w(4) + w(8) + w(12) + w(16))
}

/// Folds a 64-bit accumulator of 16- or 32-bit words into 16 bits.
#[inline]
const fn fold64(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    fold(acc as u32)
}

/// One's-complement sum of several partial sums.
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u32::from(s)).sum())
}

/// The checksum of `data` (complement of its sum). A correct packet checksums to 0
/// when its checksum field is included.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Sum of the IPv4 pseudo-header for TCP/UDP: addresses, protocol, upper-layer length.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    fold(
        u32::from(u16::from_be_bytes([s[0], s[1]]))
            + u32::from(u16::from_be_bytes([s[2], s[3]]))
            + u32::from(u16::from_be_bytes([d[0], d[1]]))
            + u32::from(u16::from_be_bytes([d[2], d[3]]))
            + u32::from(protocol)
            + u32::from(length),
    )
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1) for TCP/UDP/ICMPv6.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let mut acc: u32 = 0;
    for w in src.segments().into_iter().chain(dst.segments()) {
        acc += u32::from(w);
    }
    acc += length >> 16;
    acc += length & 0xffff;
    acc += u32::from(next_header);
    fold(acc)
}

/// The checksum a TCP/UDP segment carries under IPv4: `segment` with its checksum field
/// zeroed (or the sum of it computed with a zero field).
#[inline]
pub fn transport_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    !combine(&[pseudo_header_v4(src, dst, protocol, len), sum(segment)])
}

/// The checksum a TCP/UDP/ICMPv6 message carries under IPv6.
#[inline]
pub fn transport_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
    !combine(&[pseudo_header_v6(src, dst, next_header, len), sum(segment)])
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word covered by it changed from
/// `old` to `new`.
#[inline]
pub const fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(!checksum as u32 + !old as u32 + new as u32)
}

/// The checksum after a 32-bit value (an IPv4 address) changed: two word updates.
#[inline]
pub const fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    !fold(
        !checksum as u32
            + !(old >> 16) as u16 as u32
            + !(old as u16) as u32
            + (new >> 16)
            + (new & 0xffff),
    )
}

/// The checksum after an IPv4 address changed.
#[inline]
pub fn update_ipv4_addr(checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update_u32(checksum, old.to_bits(), new.to_bits())
}

/// The checksum after an IPv6 address changed (eight word updates).
#[inline]
pub fn update_ipv6_addr(checksum: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    let mut acc = u32::from(!checksum);
    for (o, n) in old.segments().into_iter().zip(new.segments()) {
        acc += u32::from(!o) + u32::from(n);
    }
    !fold(acc)
}

/// A *partial* checksum (the folded pseudo-header sum a TSO/GSO packet carries in its
/// transport checksum field: Linux `CHECKSUM_PARTIAL`, virtio-net `NEEDS_CSUM`) after
/// pseudo-header words changed from `old` to `new` (addresses under NAT; equal
/// lengths, even). This is the sum itself, not its complement: the kernel's
/// `inet_proto_csum_replace4(.., pseudohdr = true)` on a `CHECKSUM_PARTIAL` skb.
/// Words of the transport header (ports) do not enter it: the device sums those.
#[inline]
pub fn partial_update(partial: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u64::from(partial);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        if let ([o0, o1], [n0, n1]) = (o, n) {
            acc += u64::from(!u16::from_be_bytes([*o0, *o1]));
            acc += u64::from(u16::from_be_bytes([*n0, *n1]));
        }
    }
    fold64(acc)
}

/// UDP's variant of [`update_u16`]: a zero checksum means "none" and stays zero; a
/// computed zero is sent as 0xffff (RFC 768).
#[inline]
pub const fn udp_update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    if checksum == 0 {
        return 0;
    }
    udp_nonzero(update_u16(checksum, old, new))
}

/// UDP's variant of [`update_ipv4_addr`] (see [`udp_update_u16`]).
#[inline]
pub fn udp_update_ipv4_addr(checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    if checksum == 0 {
        return 0;
    }
    udp_nonzero(update_ipv4_addr(checksum, old, new))
}

/// A freshly computed UDP checksum of zero is transmitted as all ones (RFC 768).
#[inline]
pub const fn udp_nonzero(checksum: u16) -> u16 {
    if checksum == 0 { 0xffff } else { checksum }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The definition: big-endian 16-bit words, an odd last byte padded with zero.
    fn add_reference(sum: u32, data: &[u8]) -> u32 {
        let mut acc = u64::from(sum);
        for pair in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u32
    }

    #[test]
    fn add_matches_the_big_endian_definition() {
        // Bytes that carry into every position, every length and alignment.
        let data: Vec<u8> = (0..1600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
            .collect();
        for start in 0..4 {
            for len in (0..80).chain([1399, 1400, 1453, 1596]) {
                let d = &data[start..start + len];
                for sum in [0, 1, 0xffff, 0x1_fffe, 6 + 1420] {
                    assert_eq!(
                        !fold(add(sum, d)),
                        !fold(add_reference(sum, d)),
                        "start {start} len {len} sum {sum:#x}"
                    );
                }
            }
        }
        assert_eq!(add(0, &[0xff; 4000]), 0xffff);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length pads with zero; the chunked and tail paths agree.
        assert_eq!(sum(&[0xab]), 0xab00);
        let long: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        let naive = long
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .fold(0u32, |a, w| {
                let s = a + w;
                (s & 0xffff) + (s >> 16)
            });
        assert_eq!(u32::from(sum(&long)), naive);
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // A classic example header; its checksum field is 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0);
        let mut z = hdr;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), 0xb861);
    }

    #[test]
    fn header_fast_path_equals_generic_sum() {
        let mut h = [0u8; 20];
        for seed in 0u32..2000 {
            for (i, b) in h.iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32) >> 7) as u8;
            }
            if seed % 7 == 0 {
                h.fill(0xff);
            }
            assert_eq!(sum_ipv4_header(&h), sum(&h));
        }
    }

    /// A partial checksum updated for a NAT'd address, then completed over the
    /// segment, equals the complete checksum of the translated segment; and it is
    /// what a full recomputation of the pseudo-header sum gives (both ways).
    #[test]
    fn partial_update_follows_the_pseudo_header() {
        let (a, b, nat) = (
            Ipv4Addr::new(198, 19, 128, 5),
            Ipv4Addr::new(198, 18, 200, 9),
            Ipv4Addr::new(198, 18, 64, 1),
        );
        let mut seg: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
        seg[16] = 0;
        seg[17] = 0;
        let len = seg.len() as u16;
        for (old, new) in [
            (a, nat),
            (nat, a),
            (a, a),
            (Ipv4Addr::new(255, 255, 255, 255), Ipv4Addr::UNSPECIFIED),
        ] {
            let partial = pseudo_header_v4(old, b, 6, len);
            let updated = partial_update(partial, &old.octets(), &new.octets());
            let expect = pseudo_header_v4(new, b, 6, len);
            // Equal as ones'-complement numbers (0 and 0xffff are the same).
            assert_eq!(updated % 0xffff, expect % 0xffff, "{old} -> {new}");
            // Completing it as the device would gives the full checksum.
            seg[16..18].copy_from_slice(&updated.to_be_bytes());
            let completed = checksum(&seg);
            assert_eq!(
                completed,
                transport_checksum_v4(new, b, 6, &{
                    let mut z = seg.clone();
                    z[16] = 0;
                    z[17] = 0;
                    z
                })
            );
            seg[16] = 0;
            seg[17] = 0;
        }
        // The complemented form (a complete checksum's update) is not the same thing.
        let partial = pseudo_header_v4(a, b, 6, len);
        assert_ne!(
            partial_update(partial, &a.octets(), &nat.octets()),
            update_ipv4_addr(partial, a, nat)
        );
    }

    #[test]
    fn udp_zero_stays_zero() {
        assert_eq!(udp_update_u16(0, 1234, 4321), 0);
        assert_eq!(
            udp_update_ipv4_addr(
                0,
                Ipv4Addr::new(198, 18, 0, 1),
                Ipv4Addr::new(198, 18, 0, 2)
            ),
            0
        );
        // A result of zero becomes 0xffff: HC=0xffff... choose values so eqn 3 gives 0.
        // ~(~HC + ~m + m') == 0  <=>  ~HC + ~m + m' folds to 0xffff.
        assert_eq!(update_u16(0xfffe, 1, 0), 0);
        assert_eq!(udp_update_u16(0xfffe, 1, 0), 0xffff);
    }
}
