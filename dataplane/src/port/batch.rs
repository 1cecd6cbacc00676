//! The worker-owned batch of frame buffers that ports receive into.

use std::fmt;

use crate::frame::{FRAME_BUFFER_SIZE, FRAME_HEADROOM, Frame, FrameMeta, NoRoom, PortId};

use super::BATCH_SIZE;

/// Where a frame's packet lies in its buffer, and where it came from.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    start: u16,
    len: u16,
    meta: FrameMeta,
}

/// `BATCH_SIZE` buffers of `FRAME_BUFFER_SIZE` bytes, allocated once per worker and
/// reused for every poll (no allocation per packet).
///
/// Ports fill it with [`PacketBatch::rx_buffer`] + [`PacketBatch::commit`] (or
/// [`PacketBatch::push`]); the worker runs the pipeline over
/// [`PacketBatch::for_each_frame`] (a frame's window changes made there — pushed
/// headers, pulled headers, replaced contents — are kept), then hands the
/// [`PacketBatch::packet`] bytes to `Port::send` and calls [`PacketBatch::clear`].
pub struct PacketBatch {
    bufs: Box<[u8]>,
    slots: [Slot; BATCH_SIZE],
    len: usize,
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

impl PacketBatch {
    pub fn new() -> Self {
        PacketBatch {
            bufs: vec![0u8; BATCH_SIZE * FRAME_BUFFER_SIZE].into_boxed_slice(),
            slots: [Slot::default(); BATCH_SIZE],
            len: 0,
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
    }

    fn buffer_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let at = i.checked_mul(FRAME_BUFFER_SIZE)?;
        self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE)
    }

    fn buffer(&self, i: usize) -> Option<&[u8]> {
        let at = i.checked_mul(FRAME_BUFFER_SIZE)?;
        self.bufs.get(at..at + FRAME_BUFFER_SIZE)
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
        let end = start.saturating_add(len);
        if end > FRAME_BUFFER_SIZE {
            return Err(NoRoom {
                needed: end - FRAME_BUFFER_SIZE,
            });
        }
        // FRAME_BUFFER_SIZE fits in u16, checked above.
        let slot = Slot {
            start: start as u16,
            len: len as u16,
            meta: FrameMeta { in_port },
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
        let start = usize::from(slot.start);
        self.buffer(i)?.get(start..start + usize::from(slot.len))
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
            let at = i * FRAME_BUFFER_SIZE;
            let Some(buf) = self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE) else {
                break;
            };
            let mut frame = Frame::new(
                buf,
                usize::from(slot.start),
                usize::from(slot.len),
                slot.meta,
            );
            f(i, &mut frame);
            let updated = Slot {
                start: frame.offset() as u16,
                len: frame.len() as u16,
                meta: frame.meta,
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
        let at = i * FRAME_BUFFER_SIZE;
        let buf = self.bufs.get_mut(at..at + FRAME_BUFFER_SIZE)?;
        Some(Frame::new(
            buf,
            usize::from(slot.start),
            usize::from(slot.len),
            slot.meta,
        ))
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
