//! Write-side GRO for the TUN: consecutive TCP/IPv4 segments of one flow, as a batch
//! from the pipeline usually holds them, are merged into one GSO super-packet and
//! written with one syscall; the kernel then carries a single large packet to the
//! pod (or re-segments it) instead of taking dozens of writes.
//!
//! Which segments merge, and how the merged packet's headers are set, is
//! [`crate::port::tcp_run`]'s (the rules the kernel's own GRO applies, each
//! segment's TCP checksum verified); this module only owns the buffer and the
//! virtio-net header.

use super::gso::{VNET_HDR_LEN, VirtioNetHdr};
use crate::port::tcp_run::{MAX_IP_LEN, TcpRun};

/// Builds one super-packet at a time in a buffer it owns.
#[derive(Debug)]
pub struct Coalescer {
    buf: Box<[u8]>,
    run: TcpRun,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer {
            buf: vec![0u8; MAX_IP_LEN].into_boxed_slice(),
            run: TcpRun::new(MAX_IP_LEN),
        }
    }

    /// Segments in the current run (0: none).
    pub fn segments(&self) -> usize {
        self.run.segments()
    }

    /// Adds `packet` to the current run, or starts a run with it when none is open.
    /// `false`: it cannot join (the caller takes the run, then tries again or writes
    /// the packet on its own).
    pub fn push(&mut self, packet: &[u8]) -> bool {
        self.run.push(&mut self.buf, packet)
    }

    /// Ends the run: the virtio-net header and the packet to write (a lone segment
    /// goes out unchanged, without GSO). `None` when no run is open.
    pub fn take(&mut self) -> Option<([u8; VNET_HDR_LEN], &[u8])> {
        let merged = self.run.finish(&mut self.buf)?;
        let packet = self.buf.get(..merged.len)?;
        let hdr = match merged.gso {
            Some(gso) => VirtioNetHdr::for_super(gso, packet)?,
            None => VirtioNetHdr::default(),
        };
        Some((hdr.emit(), packet))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::super::gso::{GSO_TCPV4, Segmenter};
    use super::*;
    use crate::wire::checksum;
    use etherparse::PacketBuilder;

    fn segment(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4([198, 19, 0, 2], [198, 18, 0, 1], 64)
            .tcp(5201, 40000, seq, 500)
            .ack(9);
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out[6] = 0x40; // DF, as TCP sets it
        out[10..12].fill(0);
        let sum = !checksum::fold(checksum::add(0, &out[..20]));
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out
    }

    #[test]
    fn a_run_of_segments_becomes_one_gso_packet_that_segments_back() {
        let mut co = Coalescer::new();
        let mut originals = Vec::new();
        for i in 0..5u32 {
            let payload = vec![i as u8; if i == 4 { 300 } else { 1000 }];
            let seg = segment(100 + i * 1000, &payload, i == 4);
            assert!(co.push(&seg), "segment {i} joins");
            originals.push(seg);
        }
        assert!(
            !co.push(&segment(4400, &[1; 1000], false)),
            "the run is closed after PSH/short"
        );
        let (hdr_bytes, packet) = co.take().unwrap();
        let hdr = VirtioNetHdr::parse(&hdr_bytes).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1000, 40)
        );
        assert_eq!(packet.len(), 40 + 4300);
        // What the kernel would do with it: cut it back into the original segments.
        let seg = Segmenter::new(&hdr, packet).unwrap();
        assert_eq!(seg.count(), 5);
        let mut out = [0u8; 2048];
        for (i, original) in originals.iter().enumerate() {
            let len = seg.write(packet, i, &mut out).unwrap();
            // Same bytes except the IP id (the segmenter increments it).
            assert_eq!(&out[20..len], &original[20..], "segment {i}");
        }
        assert_eq!(co.segments(), 0);
        assert!(co.take().is_none());
    }

    #[test]
    fn what_the_kernel_would_not_merge_is_not_merged() {
        let mut co = Coalescer::new();
        assert!(co.push(&segment(1, &[1; 100], false)));
        assert!(!co.push(&segment(500, &[1; 100], false)), "sequence gap");
        assert!(
            !co.push(&segment(101, &[1; 200], false)),
            "larger than the first"
        );
        let mut other = segment(101, &[1; 100], false);
        other[22..24].copy_from_slice(&1u16.to_be_bytes());
        assert!(!co.push(&other), "another flow");
        let mut corrupt = segment(101, &[1; 100], false);
        corrupt[60] ^= 0xff;
        assert!(!co.push(&corrupt), "bad checksum");
        let mut syn = segment(101, &[1; 100], false);
        syn[33] |= 0x02;
        assert!(!co.push(&syn));
        assert!(co.push(&segment(101, &[1; 100], false)));
        let (hdr, _) = co.take().unwrap();
        assert_eq!(VirtioNetHdr::parse(&hdr).unwrap().gso_type, GSO_TCPV4);
        // A lone segment goes out unchanged, without GSO.
        let lone = segment(7, &[3; 10], false);
        assert!(co.push(&lone));
        let (hdr, packet) = co.take().unwrap();
        assert_eq!(hdr, [0; VNET_HDR_LEN]);
        assert_eq!(packet, &lone[..]);
        for garbage in [&[][..], &[0x45; 10], &[0x45; 60], &[0x60; 80]] {
            assert!(!co.push(garbage));
        }
    }
}
