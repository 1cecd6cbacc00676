//! Frames moving between workers over bounded lock-free queues.
//!
//! Two reasons to move a frame: a NAT reply that RSS delivered to a worker that does
//! not own its flow (the owner must run the pipeline on it), and a frame forwarded
//! to a port whose only queue another worker owns (a single-queue pod veth).
//! Parcels carry the bytes inline so the queue never allocates; a full queue is a
//! counted `HandOffQueueFull` drop, never a block.

use crossbeam::queue::ArrayQueue;

use crate::frame::{FRAME_BUFFER_SIZE, FRAME_HEADROOM, PortId};

/// How many times one frame may be handed off; a verdict that would hand it off
/// again is a counted drop. Two, for a pod's Service flow to an endpoint outside
/// the cluster (DNATed, then masqueraded): its client's packet goes to the worker
/// that keeps the Service flow, then, translated, to the one that keeps the SNAT
/// flow; the reply to the SNAT flow's worker, then, un-SNATed, to the Service
/// flow's (see `pipeline::service`). Each hand-off goes to the keeper of the next
/// translation, never back, so a frame cannot circle; the bound makes sure.
pub const MAX_HAND_OFFS: u8 = 2;

/// Largest frame a parcel carries (what fits after the headroom in a buffer).
pub const PARCEL_MAX: usize = FRAME_BUFFER_SIZE - FRAME_HEADROOM;

/// What the receiving worker does with a parcel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParcelKind {
    /// Run the pipeline on it as if it had arrived on `in_port`; `hops`: how many
    /// times it has been handed off, this time included.
    Process { hops: u8 },
    /// Transmit it unchanged on this port.
    Transmit(PortId),
}

/// One frame in flight between workers.
pub struct Parcel {
    pub kind: ParcelKind,
    pub in_port: PortId,
    len: u16,
    data: [u8; PARCEL_MAX],
}

impl std::fmt::Debug for Parcel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parcel")
            .field("kind", &self.kind)
            .field("in_port", &self.in_port)
            .field("len", &self.len)
            .finish()
    }
}

impl Parcel {
    /// A parcel holding a copy of `frame`, or `None` when it is too large.
    pub fn new(kind: ParcelKind, in_port: PortId, frame: &[u8]) -> Option<Self> {
        let mut data = [0u8; PARCEL_MAX];
        data.get_mut(..frame.len())?.copy_from_slice(frame);
        Some(Parcel {
            kind,
            in_port,
            len: u16::try_from(frame.len()).ok()?,
            data,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// The inbox of one worker.
pub type Inbox = ArrayQueue<Parcel>;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn parcels_copy_and_bound_sizes() {
        let p = Parcel::new(ParcelKind::Process { hops: 1 }, PortId(3), &[1, 2, 3]).unwrap();
        assert_eq!(p.bytes(), &[1, 2, 3]);
        assert!(
            Parcel::new(
                ParcelKind::Process { hops: 1 },
                PortId(3),
                &[0; PARCEL_MAX + 1]
            )
            .is_none()
        );
        let q = Inbox::new(1);
        q.push(p).unwrap();
        assert!(
            q.push(Parcel::new(ParcelKind::Transmit(PortId(1)), PortId(0), &[9]).unwrap())
                .is_err()
        );
    }
}
