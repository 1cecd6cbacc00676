//! [`Pipeline::process_batch`]'s two passes over a group of frames: classify and
//! route every frame, collecting the SNAT lookups; then resolve those together so
//! their cache misses overlap, and finish the frames that waited for them.

use std::net::Ipv4Addr;

use super::{Action, MAX_BATCH, Pending, Pipeline};
use crate::frame::Frame;
use crate::tables::{FlowKey, L4Proto, SnatError, Tables, TcpSegment};
use crate::time::Now;
use crate::verdict::Verdict;

impl Pipeline {
    pub(super) fn process_group(
        &mut self,
        frames: &mut [Frame<'_>],
        tables: &Tables,
        now: Now,
        verdicts: &mut [Verdict],
    ) {
        // Most groups hold no super-frame (never on AF_XDP): skip the checksum care
        // and its per-group array.
        if !frames.iter().any(|f| f.gso().is_some()) {
            self.lookup_group(frames, tables, now, verdicts);
            return;
        }
        let mut partials = [None; MAX_BATCH];
        for (p, frame) in partials.iter_mut().zip(frames.iter()) {
            *p = super::super_frame::PartialChecksum::take(frame);
        }
        self.lookup_group(frames, tables, now, verdicts);
        for (p, frame) in partials.iter().zip(frames.iter_mut()) {
            if let Some(p) = p {
                p.restore(frame);
            }
        }
    }

    /// [`Pipeline::process_group`] without the super-frames' checksum care.
    fn lookup_group(
        &mut self,
        frames: &mut [Frame<'_>],
        tables: &Tables,
        now: Now,
        verdicts: &mut [Verdict],
    ) {
        let mut outs = Lookups::new();
        let mut ins = Lookups::new();
        for (i, (frame, verdict)) in frames.iter_mut().zip(verdicts.iter_mut()).enumerate() {
            *verdict = match self.step(frame, tables, now) {
                Ok(Action::Done(v)) => v,
                Ok(Action::Masquerade(p)) => {
                    outs.push(i, p);
                    continue;
                }
                Ok(Action::Unmasquerade(p)) => {
                    ins.push(i, p);
                    continue;
                }
                Err(reason) => Verdict::Drop(reason),
            };
        }
        if outs.len > 0 {
            let mut results = [Err(SnatError::TableFull); MAX_BATCH];
            let res = results.get_mut(..outs.len).unwrap_or_default();
            let node_addr = tables.node.node_addr;
            self.snat
                .outbound_batch(outs.keys(), outs.segments(), node_addr, now, res);
            for (j, r) in res.iter().enumerate() {
                let Some((i, p)) = outs.get(j) else { continue };
                if let (Some(frame), Some(v)) = (frames.get_mut(i), verdicts.get_mut(i)) {
                    *v = self
                        .finish_masquerade(frame, p, *r, tables, now)
                        .unwrap_or_else(Verdict::Drop);
                }
            }
        }
        if ins.len > 0 {
            let mut results = [None; MAX_BATCH];
            let res = results.get_mut(..ins.len).unwrap_or_default();
            self.snat
                .inbound_batch(ins.keys(), ins.segments(), now, res);
            for (j, r) in res.iter().enumerate() {
                let Some((i, p)) = ins.get(j) else { continue };
                if let (Some(frame), Some(v)) = (frames.get_mut(i), verdicts.get_mut(i)) {
                    *v = self
                        .finish_unmasquerade(frame, p, *r, tables, now)
                        .unwrap_or_else(Verdict::Drop);
                }
            }
        }
    }
}

/// The SNAT lookups of one group of frames: frame index and pending state per key,
/// keys and TCP segments in the contiguous slices the batch calls take.
struct Lookups {
    len: usize,
    keys: [FlowKey; MAX_BATCH],
    segments: [TcpSegment; MAX_BATCH],
    pending: [Option<(usize, Pending)>; MAX_BATCH],
}

impl Lookups {
    fn new() -> Self {
        const NO_KEY: FlowKey = FlowKey {
            proto: L4Proto::Udp,
            src: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_port: 0,
        };
        Lookups {
            len: 0,
            keys: [NO_KEY; MAX_BATCH],
            segments: [TcpSegment::default(); MAX_BATCH],
            pending: [None; MAX_BATCH],
        }
    }

    fn push(&mut self, frame: usize, p: Pending) {
        if let (Some(k), Some(f), Some(slot)) = (
            self.keys.get_mut(self.len),
            self.segments.get_mut(self.len),
            self.pending.get_mut(self.len),
        ) {
            *k = p.key;
            *f = p.tcp;
            *slot = Some((frame, p));
            self.len += 1;
        }
    }

    fn keys(&self) -> &[FlowKey] {
        self.keys.get(..self.len).unwrap_or_default()
    }

    fn segments(&self) -> &[TcpSegment] {
        self.segments.get(..self.len).unwrap_or_default()
    }

    fn get(&self, j: usize) -> Option<(usize, &Pending)> {
        self.pending.get(j)?.as_ref().map(|(i, p)| (*i, p))
    }
}
