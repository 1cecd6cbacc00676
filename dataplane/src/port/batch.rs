//! The worker-owned batch of frame buffers that ports receive into.

use std::fmt;

use crate::frame::{
    FRAME_BUFFER_SIZE, FRAME_HEADROOM, Frame, FrameMeta, Gso, NoRoom, PortId,
    SUPER_FRAME_BUFFER_SIZE,
};

use super::BATCH_SIZE;

/// Super-frame buffers per batch: a TSO read carries ~45 packets, so four of them
/// move as many bytes as a full batch of single packets.
pub const SUPER_FRAMES_PER_BATCH: usize = 4;

/// Where a frame's packet lies in its buffer, and where it came from.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    start: u32,
    len: u32,
    meta: FrameMeta,
    /// `Some(k)`: the frame lives in super buffer `k`, not in its own buffer.
    big: Option<u8>,
    /// `Some`: the frame is a super-frame.
    gso: Option<Gso>,
}

/// `BATCH_SIZE` buffers of `FRAME_BUFFER_SIZE` bytes, allocated once per worker and
/// reused for every poll (no allocation per packet).
///
/// Ports fill it with [`PacketBatch::rx_buffer`] + [`PacketBatch::commit`] (or
/// [`PacketBatch::push`]); the worker runs the pipeline over
/// [`PacketBatch::for_each_frame`] (a frame's window changes made there — pushed
/// headers, pulled headers, replaced contents — are kept), then hands the
/// [`PacketBatch::packet`] bytes to `Port::send` and calls [`PacketBatch::clear`].
///
/// Beside the single-packet buffers it holds [`SUPER_FRAMES_PER_BATCH`] buffers of
/// [`SUPER_FRAME_BUFFER_SIZE`] for super-frames ([`Gso`]), filled with
/// [`PacketBatch::free_super_buffer`] + [`PacketBatch::commit_super`].
pub struct PacketBatch {
    bufs: Box<[u8]>,
    supers: Box<[u8]>,
    slots: [Slot; BATCH_SIZE],
    len: usize,
    supers_used: usize,
}

impl fmt::Debug for PacketBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketBatch")
            .field("len", &self.len)
            .finish()
    }
}

impl Default for PacketBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// `buf[start..start + len]` lies inside a buffer of `size` bytes.
fn fits(start: usize, len: usize, size: usize) -> Result<(), NoRoom> {
    match start.saturating_add(len).checked_sub(size) {
        Some(over) if over > 0 => Err(NoRoom { needed: over }),
        _ => Ok(()),
    }
}

impl PacketBatch {
    pub fn new() -> Self {
        PacketBatch {
            bufs: vec![0u8; BATCH_SIZE * FRAME_BUFFER_SIZE].into_boxed_slice(),
            supers: vec![0u8; SUPER_FRAMES_PER_BATCH * SUPER_FRAME_BUFFER_SIZE].into_boxed_slice(),
            slots: [Slot::default(); BATCH_SIZE],
            len: 0,
            supers_used: 0,
        }
    }

    /// Number of frames in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= BATCH_SIZE
    }

    /// Free slots left.
    pub fn remaining(&self) -> usize {
        BATCH_SIZE - self.len
    }

    /// Forgets every frame (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
        self.supers_used = 0;
    }

    fn buffer_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let at = i.checked_mul(FRAME_BUFFER_SIZE)?;
        self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE)
    }

    /// The buffer slot `i` uses: its own single-packet buffer or a super buffer.
    fn slot_buffer(&self, i: usize, slot: &Slot) -> Option<&[u8]> {
        match slot.big {
            Some(k) => {
                let at = usize::from(k) * SUPER_FRAME_BUFFER_SIZE;
                self.supers.get(at..at + SUPER_FRAME_BUFFER_SIZE)
            }
            None => {
                let at = i.checked_mul(FRAME_BUFFER_SIZE)?;
                self.bufs.get(at..at + FRAME_BUFFER_SIZE)
            }
        }
    }

    fn slot_buffer_mut(&mut self, i: usize, slot: &Slot) -> Option<&mut [u8]> {
        match slot.big {
            Some(k) => {
                let at = usize::from(k) * SUPER_FRAME_BUFFER_SIZE;
                self.supers.get_mut(at..at + SUPER_FRAME_BUFFER_SIZE)
            }
            None => {
                let at = i.checked_mul(FRAME_BUFFER_SIZE)?;
                self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE)
            }
        }
    }

    /// Super-frame buffers not yet taken.
    pub fn free_super_buffers(&self) -> usize {
        SUPER_FRAMES_PER_BATCH - self.supers_used
    }

    /// The next free super-frame buffer (headroom included) and, beside it, the
    /// next free single-packet buffer, so a port can read into the large one and
    /// still place what turns out to be a single packet in the small one. `None`
    /// when the batch is full or every super buffer is taken.
    pub fn free_super_buffer(&mut self) -> Option<(&mut [u8], &mut [u8])> {
        if self.is_full() || self.supers_used >= SUPER_FRAMES_PER_BATCH {
            return None;
        }
        let at = self.supers_used * SUPER_FRAME_BUFFER_SIZE;
        let big = self.supers.get_mut(at..at + SUPER_FRAME_BUFFER_SIZE)?;
        let at = self.len * FRAME_BUFFER_SIZE;
        let small = self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE)?;
        Some((big, small))
    }

    /// Adds the super-frame a port wrote at `buf[start..start + len]` of the buffer
    /// [`PacketBatch::free_super_buffer`] returned first.
    pub fn commit_super(
        &mut self,
        start: usize,
        len: usize,
        in_port: PortId,
        gso: Gso,
    ) -> Result<(), NoRoom> {
        if self.is_full() || self.supers_used >= SUPER_FRAMES_PER_BATCH {
            return Err(NoRoom { needed: len });
        }
        fits(start, len, SUPER_FRAME_BUFFER_SIZE)?;
        let slot = Slot {
            start: start as u32,
            len: len as u32,
            meta: FrameMeta { in_port },
            big: Some(self.supers_used as u8),
            gso: Some(gso),
        };
        if let Some(s) = self.slots.get_mut(self.len) {
            *s = slot;
        }
        self.len += 1;
        self.supers_used += 1;
        Ok(())
    }

    /// The last frame, when it is a super-frame, from its first byte to the end of
    /// its buffer: a port that continues it in place (more segments of the same
    /// run) writes there, then sets its length with [`PacketBatch::grow_last_super`].
    pub fn last_super_mut(&mut self) -> Option<&mut [u8]> {
        let i = self.len.checked_sub(1)?;
        let slot = *self.slots.get(i)?;
        slot.gso?;
        slot.big?;
        self.slot_buffer_mut(i, &slot)?
            .get_mut(slot.start as usize..)
    }

    /// Sets the last super-frame's length (see [`PacketBatch::last_super_mut`]) and
    /// description.
    pub fn grow_last_super(&mut self, len: usize, gso: Gso) -> Result<(), NoRoom> {
        let Some(i) = self.len.checked_sub(1) else {
            return Err(NoRoom { needed: len });
        };
        let Some(slot) = self.slots.get_mut(i).filter(|s| s.big.is_some()) else {
            return Err(NoRoom { needed: len });
        };
        fits(slot.start as usize, len, SUPER_FRAME_BUFFER_SIZE)?;
        slot.len = len as u32;
        slot.gso = Some(gso);
        Ok(())
    }

    /// The whole next free buffer (headroom included), or `None` when the batch is
    /// full. Nothing is added until [`PacketBatch::commit_at`].
    pub fn free_buffer(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        self.buffer_mut(self.len)
    }

    /// The part of the next free buffer after [`FRAME_HEADROOM`] (where a port
    /// writes a received frame), or `None` when the batch is full.
    pub fn rx_buffer(&mut self) -> Option<&mut [u8]> {
        self.free_buffer().and_then(|b| b.get_mut(FRAME_HEADROOM..))
    }

    /// Adds the frame a port wrote at `FRAME_HEADROOM` into [`PacketBatch::rx_buffer`].
    pub fn commit(&mut self, len: usize, in_port: PortId) -> Result<(), NoRoom> {
        self.commit_at(FRAME_HEADROOM, len, in_port)
    }

    /// Adds the frame a port wrote at `buf[start..start + len]` of
    /// [`PacketBatch::free_buffer`] (ports that synthesise headers in the headroom).
    pub fn commit_at(&mut self, start: usize, len: usize, in_port: PortId) -> Result<(), NoRoom> {
        if self.is_full() {
            return Err(NoRoom { needed: len });
        }
        fits(start, len, FRAME_BUFFER_SIZE)?;
        // FRAME_BUFFER_SIZE fits in u32, checked above.
        let slot = Slot {
            start: start as u32,
            len: len as u32,
            meta: FrameMeta { in_port },
            big: None,
            gso: None,
        };
        if let Some(s) = self.slots.get_mut(self.len) {
            *s = slot;
        }
        self.len += 1;
        Ok(())
    }

    /// Copies `packet` in at `FRAME_HEADROOM` (ports that cannot receive in place,
    /// hand-off queues, tests).
    pub fn push(&mut self, packet: &[u8], in_port: PortId) -> Result<(), NoRoom> {
        let Some(dst) = self.rx_buffer().and_then(|b| b.get_mut(..packet.len())) else {
            return Err(NoRoom {
                needed: packet.len(),
            });
        };
        dst.copy_from_slice(packet);
        self.commit(packet.len(), in_port)
    }

    /// Frame `i`'s packet bytes.
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        if i >= self.len {
            return None;
        }
        let slot = self.slots.get(i)?;
        let start = slot.start as usize;
        self.slot_buffer(i, slot)?
            .get(start..start + slot.len as usize)
    }

    /// Frame `i`'s super-frame description, `None` for a single packet.
    pub fn gso(&self, i: usize) -> Option<Gso> {
        if i >= self.len {
            return None;
        }
        self.slots.get(i)?.gso
    }

    /// Frame `i`'s metadata.
    pub fn meta(&self, i: usize) -> Option<FrameMeta> {
        if i >= self.len {
            return None;
        }
        self.slots.get(i).map(|s| s.meta)
    }

    /// The packets of every frame, in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len).filter_map(move |i| self.packet(i))
    }

    /// Runs `f` on every frame as a [`Frame`] over its buffer; the frame's new window
    /// (after `push_front`, `pull_front`, `replace`, ...) and metadata are kept.
    pub fn for_each_frame(&mut self, mut f: impl FnMut(usize, &mut Frame<'_>)) {
        for i in 0..self.len {
            let Some(slot) = self.slots.get(i).copied() else {
                break;
            };
            let Some(buf) = self.slot_buffer_mut(i, &slot) else {
                break;
            };
            let mut frame = Frame::new(buf, slot.start as usize, slot.len as usize, slot.meta)
                .with_gso(slot.gso);
            f(i, &mut frame);
            // A super-frame the pipeline turned into one packet (a reply) stays in
            // its super buffer, as a single packet.
            let updated = Slot {
                start: frame.offset() as u32,
                len: frame.len() as u32,
                meta: frame.meta,
                big: slot.big,
                gso: frame.gso(),
            };
            if let Some(s) = self.slots.get_mut(i) {
                *s = updated;
            }
        }
    }

    /// Frame `i` as a [`Frame`]; window changes are kept only through
    /// [`PacketBatch::for_each_frame`], so this is for reading and in-place edits.
    pub fn frame(&mut self, i: usize) -> Option<Frame<'_>> {
        if i >= self.len {
            return None;
        }
        let slot = self.slots.get(i).copied()?;
        let buf = self.slot_buffer_mut(i, &slot)?;
        Some(Frame::new(buf, slot.start as usize, slot.len as usize, slot.meta).with_gso(slot.gso))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn frames_land_after_the_headroom_and_keep_window_changes() {
        let mut batch = PacketBatch::new();
        batch.push(&[1, 2, 3], PortId(7)).unwrap();
        let buf = batch.rx_buffer().unwrap();
        buf[..2].copy_from_slice(&[9, 9]);
        batch.commit(2, PortId(8)).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.packet(0), Some(&[1, 2, 3][..]));
        assert_eq!(batch.meta(1).unwrap().in_port, PortId(8));
        batch.for_each_frame(|i, frame| {
            assert_eq!(frame.headroom(), FRAME_HEADROOM);
            if i == 0 {
                frame.push_front(2).unwrap().copy_from_slice(&[0xaa, 0xbb]);
            } else {
                frame.pull_front(1).unwrap();
            }
        });
        assert_eq!(batch.packet(0), Some(&[0xaa, 0xbb, 1, 2, 3][..]));
        assert_eq!(batch.packet(1), Some(&[9][..]));
        assert_eq!(batch.packet(2), None);
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.packets().count(), 0);
    }

    #[test]
    fn a_full_batch_refuses_more() {
        let mut batch = PacketBatch::new();
        for _ in 0..BATCH_SIZE {
            batch.push(&[0; 60], PortId(0)).unwrap();
        }
        assert!(batch.is_full());
        assert!(batch.rx_buffer().is_none());
        assert!(batch.push(&[0; 60], PortId(0)).is_err());
        let mut batch = PacketBatch::new();
        assert!(batch.push(&[0; FRAME_BUFFER_SIZE], PortId(0)).is_err());
        assert!(
            batch
                .commit_at(FRAME_BUFFER_SIZE - 1, 2, PortId(0))
                .is_err()
        );
        assert!(batch.is_empty());
    }
}
