//! A GRO train decapsulated once: the VXLAN datagrams of one UDP GRO read that carry
//! consecutive TCP/IPv4 segments of one inner flow become one super-frame, so the
//! pipeline decapsulates, checks and routes them once and the TUN port writes them
//! with one GSO `writev`.
//!
//! A run is datagrams with the same VXLAN header and inner Ethernet header (IPv4)
//! whose inner packets [`TcpRun`] merges (the kernel's GRO rules, each segment's
//! checksum verified). The super-frame is laid out as the port lays out a single
//! datagram, only longer: `OUTER_LEN` bytes for the synthetic outer header the port
//! writes, the first datagram's VXLAN and inner Ethernet headers, the merged inner
//! packet. Whatever does not merge stays a datagram of its own, in train order.

use super::OUTER_LEN;
use crate::frame::Gso;
use crate::port::tcp_run::{MAX_IP_LEN, TcpRun};
use crate::wire::bytes::rd16;
use crate::wire::packet::{ETHERNET_HEADER_LEN, IPV4_MIN_HEADER_LEN, UDP_HEADER_LEN, ethertype};
use crate::wire::vxlan::VXLAN_HEADER_LEN;

/// Bytes in front of the inner IPv4 packet in each datagram: VXLAN header and inner
/// Ethernet header.
pub const DATAGRAM_PREFIX_LEN: usize = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
/// The largest merged inner packet: the outer IPv4 total length must still fit 16 bits.
const MAX_INNER_LEN: usize =
    MAX_IP_LEN - IPV4_MIN_HEADER_LEN - UDP_HEADER_LEN - DATAGRAM_PREFIX_LEN;
/// Where the inner IPv4 header of a super-frame lies.
const INNER_L3: usize = OUTER_LEN + DATAGRAM_PREFIX_LEN;

/// A run of datagrams merged at the start of a train.
#[derive(Clone, Copy, Debug)]
pub struct TrainRun {
    /// Datagrams merged into it.
    pub datagrams: usize,
    /// Bytes of the super-frame, its `OUTER_LEN` bytes of outer header included.
    pub len: usize,
    /// The super-frame: `l3` is the inner IPv4 header, `size` the MSS.
    pub gso: Gso,
    /// The merge, kept open for the next read's datagrams.
    run: TcpRun,
}

impl TrainRun {
    /// Bytes of a train that its first `datagrams` datagrams take (the last maybe
    /// short).
    pub fn train_bytes(train: &[u8], size: usize, datagrams: usize) -> usize {
        datagrams.saturating_mul(size).min(train.len())
    }

    /// Appends the datagrams at the start of `train` (the next read from the same
    /// sender: a GRO train of `size`-byte datagrams, or one datagram) that continue
    /// this run, merged in `frame` from its first byte as [`merge_run`] left it: a
    /// 64 KiB write that one `UDP_SEGMENT` send could not carry whole arrives as
    /// two trains (44 datagrams, then the rest), and is written to the pod as one.
    /// Returns how many datagrams joined; `len` and the headers follow.
    pub fn continue_with(&mut self, train: &[u8], size: usize, frame: &mut [u8]) -> usize {
        let Some((head, body)) = frame.split_at_mut_checked(INNER_L3) else {
            return 0;
        };
        let Some(prefix) = head.get(OUTER_LEN..) else {
            return 0;
        };
        let mut joined = 0;
        for datagram in train.chunks(size.max(1)) {
            match split(datagram) {
                Some((p, inner)) if p == prefix && self.run.push(body, inner) => joined += 1,
                _ => break,
            }
        }
        if joined > 0 {
            match self.run.seal(body) {
                Some(merged) => {
                    self.datagrams += joined;
                    self.len = INNER_L3 + merged.len;
                }
                None => return 0,
            }
        }
        joined
    }
}

/// The inner packet of a VXLAN datagram that may join a run, with the prefix its
/// run's datagrams must share; `None` for anything but inner IPv4.
fn split(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    let (prefix, inner) = datagram.split_at_checked(DATAGRAM_PREFIX_LEN)?;
    (rd16(prefix, DATAGRAM_PREFIX_LEN - 2)? == ethertype::IPV4).then_some((prefix, inner))
}

/// Merges the run of datagrams at the start of `train` (a GRO read: datagrams of
/// `size` bytes, the last maybe shorter) into `out` from its first byte, leaving
/// `out[..OUTER_LEN]` for the caller's outer header. `None` when fewer than two
/// datagrams merge: the first then goes on as a datagram of its own.
pub fn merge_run(train: &[u8], size: usize, out: &mut [u8]) -> Option<TrainRun> {
    if size == 0 || size >= train.len() {
        return None;
    }
    let mut datagrams = train.chunks(size);
    let (prefix, first) = split(datagrams.next()?)?;
    let (head, body) = out.split_at_mut_checked(INNER_L3)?;
    let mut run = TcpRun::new(MAX_INNER_LEN);
    if !run.push(body, first) {
        return None;
    }
    for datagram in datagrams {
        match split(datagram) {
            Some((p, inner)) if p == prefix && run.push(body, inner) => {}
            _ => break,
        }
    }
    let merged = run.seal(body)?;
    let gso = merged.gso?;
    head.get_mut(OUTER_LEN..)?.copy_from_slice(prefix);
    Some(TrainRun {
        datagrams: merged.segments,
        len: INNER_L3 + merged.len,
        gso: Gso {
            l3: u16::try_from(INNER_L3).ok()?,
            ..gso
        },
        run,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::port::tun::gso::Segmenter;
    use crate::wire::checksum;
    use etherparse::PacketBuilder;

    /// A VXLAN datagram (VNI 1) carrying a TCP segment of one flow, DF, IP id `id`.
    fn datagram(seq: u32, payload: &[u8], psh: bool, id: u16) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 19, 0, 2], [198, 19, 1, 2], 63)
            .tcp(40000, 5201, seq, 500)
            .ack(9);
        if psh {
            b = b.psh();
        }
        let mut inner = Vec::new();
        b.write(&mut inner, payload).unwrap();
        let ip = &mut inner[14..];
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6] = 0x40; // DF, as TCP sets it
        ip[10..12].fill(0);
        let sum = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(&inner);
        d
    }

    /// A train of `n` full datagrams (MSS `mss`) and a short last one with PSH.
    fn train(n: usize, mss: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let datagrams: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let last = i + 1 == n;
                let len = if last { mss / 3 } else { mss };
                let payload: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
                datagram(1000 + (i * mss) as u32, &payload, last, 7 + i as u16)
            })
            .collect();
        let bytes = datagrams.concat();
        (datagrams, bytes)
    }

    fn segment_back(frame: &[u8], gso: Gso) -> Vec<Vec<u8>> {
        let l3 = usize::from(gso.l3);
        let ip = &frame[l3..];
        let seg = Segmenter::for_frame(frame, gso).unwrap();
        let mut out = vec![0u8; 2048];
        (0..seg.count())
            .map(|i| {
                let len = seg.write(ip, i, &mut out).unwrap();
                let mut d = frame[OUTER_LEN..l3].to_vec();
                d.extend_from_slice(&out[..len]);
                d
            })
            .collect()
    }

    #[test]
    fn a_run_becomes_one_super_frame_that_segments_back_byte_for_byte() {
        let mss = 1398;
        let (datagrams, bytes) = train(44, mss);
        let mut out = vec![0xa5; 65_536 + 256];
        let run = merge_run(&bytes, datagrams[0].len(), &mut out).unwrap();
        assert_eq!(run.datagrams, 44);
        assert_eq!(
            TrainRun::train_bytes(&bytes, datagrams[0].len(), run.datagrams),
            bytes.len()
        );
        assert_eq!(run.gso.size as usize, mss);
        assert_eq!((run.gso.hdr_len, run.gso.l3), (40, (OUTER_LEN + 22) as u16));
        let frame = &out[..run.len];
        let ip = &frame[usize::from(run.gso.l3)..];
        assert_eq!(usize::from(rd16(ip, 2).unwrap()), ip.len());
        assert_eq!(
            checksum::checksum(&ip[..20]),
            0,
            "valid IPv4 header checksum"
        );
        assert_eq!(ip[33] & 0x08, 0x08, "PSH from the last segment");
        // The TCP checksum field is the partial (pseudo-header) sum.
        let pseudo = checksum::pseudo_header_v4(
            [198, 19, 0, 2].into(),
            [198, 19, 1, 2].into(),
            6,
            (ip.len() - 20) as u16,
        );
        assert_eq!(rd16(ip, 36).unwrap(), pseudo);
        // The one segmenter gives back exactly what went in (IP ids increment).
        assert_eq!(segment_back(frame, run.gso), datagrams);
    }

    #[test]
    fn what_the_kernel_would_not_merge_is_not_merged() {
        let (d, _) = train(4, 1000);
        let merges = |ds: &[Vec<u8>]| {
            let bytes = ds.concat();
            let mut out = vec![0u8; 70_000];
            merge_run(&bytes, ds[0].len(), &mut out).map(|r| r.datagrams)
        };
        assert_eq!(merges(&d), Some(4));
        let gap = datagram(1000 + 2000, &[1; 1000], false, 0);
        assert_eq!(merges(&[d[0].clone(), gap, d[2].clone()]), None, "seq gap");
        let mut other = d[1].clone();
        other[22 + 20..22 + 22].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(merges(&[d[0].clone(), other]), None, "another flow");
        let mut vni = d[1].clone();
        vni[6] = 2;
        assert_eq!(merges(&[d[0].clone(), vni]), None, "another VNI");
        let mut mac = d[1].clone();
        mac[8] = 4;
        assert_eq!(merges(&[d[0].clone(), mac]), None, "another inner MAC");
        let mut syn = d[1].clone();
        syn[22 + 33] |= 0x02;
        assert_eq!(merges(&[d[0].clone(), syn]), None, "SYN");
        let mut urgent = d[1].clone();
        urgent[22 + 39] = 1;
        assert_eq!(merges(&[d[0].clone(), urgent]), None, "urgent pointer");
        // The run ends where the flow changes; the rest is left for the next run.
        let mut three = d.clone();
        three[3][22 + 23] ^= 1;
        assert_eq!(merges(&three), Some(3));
        // Not TCP, not IPv4, a lone datagram, garbage: never merged, never a panic.
        let udp = {
            let mut inner = Vec::new();
            PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
                .udp(1, 2)
                .write(&mut inner, &[0; 1000])
                .unwrap();
            let mut dg = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            dg.extend_from_slice(&inner);
            dg
        };
        assert_eq!(merges(&[udp.clone(), udp]), None);
        assert_eq!(merges(&[d[0].clone()]), None);
        let mut out = [0u8; 100];
        for garbage in [&[][..], &[0x45; 10], &[0x08; 90]] {
            for size in 0..12 {
                assert!(merge_run(garbage, size, &mut out).is_none());
            }
        }
        // Too small an output buffer: not merged.
        let bytes = d.concat();
        assert!(merge_run(&bytes, d[0].len(), &mut out).is_none());
    }

    #[test]
    fn the_next_read_continues_the_run_as_if_merged_at_once() {
        let mss = 1398;
        let (datagrams, bytes) = train(46, mss);
        let size = datagrams[0].len();
        let mut once = vec![0u8; 70_000];
        let whole = merge_run(&bytes, size, &mut once).unwrap();
        assert_eq!(whole.datagrams, 46);
        // 44 in one train, then the rest as a second read (2 datagrams).
        let mut out = vec![0u8; 70_000];
        let mut run = merge_run(&bytes[..44 * size], size, &mut out).unwrap();
        assert_eq!(run.continue_with(&bytes[44 * size..], size, &mut out), 2);
        assert_eq!(
            (run.datagrams, run.len, run.gso),
            (46, whole.len, whole.gso)
        );
        assert_eq!(out[..run.len], once[..whole.len]);
        assert_eq!(segment_back(&out[..run.len], run.gso), datagrams);
        // Nothing more joins a run closed by PSH; a single datagram of another run
        // does not join either.
        assert_eq!(run.continue_with(&datagrams[0], size, &mut out), 0);
        let mut run = merge_run(&bytes[..2 * size], size, &mut out).unwrap();
        assert_eq!(
            run.continue_with(&datagrams[3], datagrams[3].len(), &mut out),
            0,
            "a gap"
        );
        assert_eq!(
            run.continue_with(&datagrams[2], datagrams[2].len(), &mut out),
            1
        );
        assert_eq!(run.continue_with(&[], 0, &mut out), 0);
        assert_eq!(run.continue_with(&datagrams[3], size, &mut out[..10]), 0);
    }

    #[test]
    fn a_corrupt_segment_ends_the_run() {
        let (mut d, _) = train(5, 1000);
        d[2][22 + 60] ^= 0xff;
        let bytes = d.concat();
        let mut out = vec![0u8; 70_000];
        let run = merge_run(&bytes, d[0].len(), &mut out).unwrap();
        assert_eq!(run.datagrams, 2, "merged up to the corrupt segment");
        assert_eq!(segment_back(&out[..run.len], run.gso), d[..2]);
        let rest = &bytes[TrainRun::train_bytes(&bytes, d[0].len(), run.datagrams)..];
        assert!(
            merge_run(rest, d[0].len(), &mut out).is_none(),
            "the corrupt one stays on its own"
        );
        let after = &rest[d[0].len()..];
        assert_eq!(merge_run(after, d[0].len(), &mut out).unwrap().datagrams, 2);
    }
}
