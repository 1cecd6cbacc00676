//! Storage for tracked flows: a slab of compact entries plus a lazy timing wheel that
//! finds expired entries without scanning.
//!
//! Refreshing a flow only moves its `expires` forward and leaves the entry in the
//! wheel slot it was queued in; when that slot comes due the entry is either expired
//! (reclaimed) or re-queued at its real expiry. A packet therefore never touches
//! another entry's cache line. Only a change to a shorter timeout (a FIN after
//! established) relinks the entry, which happens a few times per flow at most.

use crate::sys::huge_pages;
use crate::sys::prefetch::prefetch_read;
use crate::tables::conntrack::TcpWindow;
use crate::time::Now;

/// Marks "no entry" in links and the free list.
const NIL: u32 = u32::MAX;
/// A `prev` with this bit set means "head of wheel slot (prev & !HEAD)".
const HEAD: u32 = 1 << 31;
/// Largest slot number; keeps `HEAD | slot` and `NIL` distinct from entry indexes.
pub(crate) const MAX_SLOTS: usize = (HEAD - 1) as usize;

/// Wheel tick length: 1024 ms (a shift, not a division).
const TICK_SHIFT: u32 = 10;
/// 8192 ticks ≈ 2 h 20 min, just over the default TCP established timeout, so
/// default entries are queued once at their true expiry.
const WHEEL_SLOTS: usize = 8192;
const WHEEL_MASK: u64 = WHEEL_SLOTS as u64 - 1;

/// Largest expiry an entry can hold: 2^40 ms, about 34 years of worker uptime.
const MAX_EXPIRES: u64 = (1 << 40) - 1;

/// One tracked flow: 64 bytes with its TCP window, aligned to a cache line so
/// that a lookup costs one line here.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// Low 32 bits of the expiry, in [`Now`] milliseconds.
    expires_lo: u32,
    pub pod_addr: u32,
    pub remote_addr: u32,
    pub nat_addr: u32,
    // Wheel links, owned by `FlowSlab`; set by `Entry::new` for new entries.
    pub(super) prev: u32,
    pub(super) next: u32,
    pub pod_port: u16,
    /// Zero for ICMP echo: the reply's identifier is the NAT one.
    pub remote_port: u16,
    pub nat_port: u16,
    /// Bits 32..40 of the expiry.
    expires_hi: u8,
    /// Protocol code in the high nibble, flow state in the low one.
    proto_state: u8,
    /// TCP sequence tracking (zero for other protocols).
    pub tcp: TcpWindow,
}

impl Entry {
    pub const fn new() -> Self {
        Entry {
            expires_lo: 0,
            pod_addr: 0,
            remote_addr: 0,
            nat_addr: 0,
            prev: NIL,
            next: NIL,
            pod_port: 0,
            remote_port: 0,
            nat_port: 0,
            expires_hi: 0,
            proto_state: 0,
            tcp: TcpWindow::ZERO,
        }
    }

    /// An entry for a flow, not yet queued; expiry, protocol and state are set
    /// separately.
    pub const fn flow(pod: (u32, u16), remote: (u32, u16), nat: (u32, u16)) -> Self {
        let mut e = Entry::new();
        e.pod_addr = pod.0;
        e.pod_port = pod.1;
        e.remote_addr = remote.0;
        e.remote_port = remote.1;
        e.nat_addr = nat.0;
        e.nat_port = nat.1;
        e
    }

    /// When the flow is idle too long, in [`Now`] milliseconds.
    #[inline]
    pub fn expires(&self) -> u64 {
        (u64::from(self.expires_hi) << 32) | u64::from(self.expires_lo)
    }

    /// Sets the expiry, saturating at about 34 years.
    #[inline]
    pub fn set_expires(&mut self, ms: u64) {
        let ms = ms.min(MAX_EXPIRES);
        self.expires_lo = ms as u32;
        self.expires_hi = (ms >> 32) as u8;
    }

    /// Protocol code ([`crate::tables::L4Proto`]'s, 0..16).
    #[inline]
    pub fn proto(&self) -> u8 {
        self.proto_state >> 4
    }

    /// [`crate::tables::FlowState`] as `u8` (0..16).
    #[inline]
    pub fn state(&self) -> u8 {
        self.proto_state & 0x0f
    }

    #[inline]
    pub fn set_proto_state(&mut self, proto: u8, state: u8) {
        self.proto_state = (proto << 4) | (state & 0x0f);
    }
}

/// The entries, each in the slot the outbound index ([`crate::tables::flow_tags`])
/// placed it in for its whole life, and the wheel that finds expired ones.
#[derive(Debug)]
pub(crate) struct FlowSlab {
    entries: Vec<Entry>,
    capacity: usize,
    len: usize,
    wheel: Vec<u32>,
    /// The next tick to process; every earlier tick has been processed.
    cur_tick: u64,
}

fn tick_of(ms: u64) -> u64 {
    ms >> TICK_SHIFT
}

impl FlowSlab {
    /// `slots` entries (all allocated now), at most `capacity` of them in use.
    pub fn new(slots: usize, capacity: usize) -> Self {
        let slots = slots.min(MAX_SLOTS);
        let mut entries = Vec::with_capacity(slots);
        huge_pages::advise(entries.as_ptr(), slots * std::mem::size_of::<Entry>());
        entries.resize(slots, Entry::new());
        FlowSlab {
            entries,
            capacity: capacity.min(slots),
            len: 0,
            wheel: vec![NIL; WHEEL_SLOTS],
            cur_tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.wheel.len() * std::mem::size_of::<u32>()
    }

    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Entry> {
        self.entries.get(slot as usize)
    }

    /// Starts loading `slot`'s entry (one cache line) without waiting for it.
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        if (slot as usize) < self.entries.len() {
            prefetch_read(self.entries.as_ptr().wrapping_add(slot as usize));
        }
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.entries.get_mut(slot as usize)
    }

    /// Puts `entry` in the free `slot` the index gave it and queues it for its
    /// expiry; `false` when the slab is at capacity or the slot does not exist.
    pub fn alloc_at(&mut self, slot: u32, entry: Entry, now: Now) -> bool {
        if self.len >= self.capacity {
            return false;
        }
        if self.len == 0 {
            // Nothing is queued, so the wheel may jump to the present.
            self.cur_tick = tick_of(now.millis());
        }
        let Some(e) = self.entries.get_mut(slot as usize) else {
            return false;
        };
        *e = entry;
        self.len += 1;
        self.enqueue(slot);
        true
    }

    /// Empties `slot`; the caller removed it from the indexes.
    pub fn free(&mut self, slot: u32) {
        let Some(queued) = self.entries.get(slot as usize).map(|e| e.prev != NIL) else {
            return;
        };
        if !queued {
            return; // already free
        }
        self.unlink(slot);
        if let Some(e) = self.entries.get_mut(slot as usize) {
            e.set_expires(0);
            self.len -= 1;
        }
    }

    /// Moves a slot whose expiry got earlier to the wheel slot of its new expiry.
    pub fn requeue(&mut self, slot: u32) {
        self.unlink(slot);
        self.enqueue(slot);
    }

    fn enqueue(&mut self, slot: u32) {
        let Some(expires) = self.entries.get(slot as usize).map(Entry::expires) else {
            return;
        };
        // Never before the tick being processed, never a full turn ahead of it.
        let tick = tick_of(expires).clamp(self.cur_tick, self.cur_tick + WHEEL_MASK);
        let w = (tick & WHEEL_MASK) as usize;
        let old_head = self.wheel.get(w).copied().unwrap_or(NIL);
        if let Some(e) = self.entries.get_mut(slot as usize) {
            e.prev = HEAD | w as u32;
            e.next = old_head;
        }
        if let Some(h) = self.entries.get_mut(old_head as usize) {
            h.prev = slot;
        }
        if let Some(head) = self.wheel.get_mut(w) {
            *head = slot;
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Some(&Entry { prev, next, .. }) = self.entries.get(slot as usize) else {
            return;
        };
        if prev == NIL {
            return; // not queued (already free)
        }
        if prev & HEAD != 0 {
            if let Some(head) = self.wheel.get_mut((prev & !HEAD) as usize) {
                *head = next;
            }
        } else if let Some(p) = self.entries.get_mut(prev as usize) {
            p.next = next;
        }
        if let Some(n) = self.entries.get_mut(next as usize) {
            n.prev = prev;
        }
        if let Some(e) = self.entries.get_mut(slot as usize) {
            e.prev = NIL;
            e.next = NIL;
        }
    }

    /// The next expired entry in a due wheel slot, re-queueing refreshed entries on
    /// the way; at most `budget` entries are examined (the count is decremented).
    /// The caller must [`FlowSlab::free`] the returned slot before asking again.
    pub fn next_expired(&mut self, now: Now, budget: &mut usize) -> Option<u32> {
        let now_tick = tick_of(now.millis());
        if self.len == 0 {
            self.cur_tick = self.cur_tick.max(now_tick);
            return None;
        }
        // Ticks more than a turn behind share slots with the last turn: visiting the
        // last turn's ticks covers every slot once.
        if now_tick > self.cur_tick + WHEEL_MASK + 1 {
            self.cur_tick = now_tick - WHEEL_MASK - 1;
        }
        // A tick is due once it has fully passed: every entry queued there whose
        // expiry was not pushed later is then expired.
        while self.cur_tick < now_tick {
            let w = (self.cur_tick & WHEEL_MASK) as usize;
            loop {
                let head = self.wheel.get(w).copied().unwrap_or(NIL);
                if head == NIL {
                    break;
                }
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                let expires = self.entries.get(head as usize).map_or(0, Entry::expires);
                if expires <= now.millis() {
                    return Some(head);
                }
                // Refreshed since it was queued: `expires > now` puts its tick after
                // this one, so re-queueing cannot land in this slot again.
                self.requeue(head);
            }
            self.cur_tick += 1;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entry(expires: u64) -> Entry {
        let mut e = Entry::new();
        e.set_expires(expires);
        e
    }

    #[test]
    fn entry_stays_compact() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert_eq!(std::mem::align_of::<Entry>(), 64);
        let mut e = Entry::new();
        e.set_expires(0x12_3456_789a);
        e.set_proto_state(3, 4);
        assert_eq!((e.expires(), e.proto(), e.state()), (0x12_3456_789a, 3, 4));
        e.set_expires(u64::MAX);
        assert_eq!(e.expires(), MAX_EXPIRES);
    }

    #[test]
    fn expire_finds_only_expired_and_requeues_refreshed() {
        let mut slab = FlowSlab::new(8, 8);
        let (a, b, c) = (5, 2, 7);
        assert!(slab.alloc_at(a, entry(5_000), Now(0)));
        assert!(slab.alloc_at(b, entry(5_000), Now(0)));
        assert!(slab.alloc_at(c, entry(60_000), Now(0)));
        // Refresh `a` lazily: only its expiry moves.
        if let Some(e) = slab.get_mut(a) {
            e.set_expires(20_000);
        }
        let drain = |slab: &mut FlowSlab, now: u64| {
            let mut gone = Vec::new();
            let mut budget = usize::MAX;
            while let Some(slot) = slab.next_expired(Now(now), &mut budget) {
                gone.push(slot);
                slab.free(slot);
            }
            gone
        };
        assert_eq!(drain(&mut slab, 10_000), vec![b]);
        assert_eq!(drain(&mut slab, 30_000), vec![a]);
        assert_eq!(slab.len(), 1);
        // Hours later, a full turn of the wheel behind: still found.
        assert_eq!(drain(&mut slab, 100_000_000), vec![c]);
        assert_eq!(slab.len(), 0);
    }

    #[test]
    fn capacity_is_enforced_and_freed_slots_count_once() {
        let mut slab = FlowSlab::new(4, 2);
        assert!(slab.alloc_at(0, entry(1), Now(0)));
        assert!(slab.alloc_at(3, entry(1), Now(0)));
        assert!(!slab.alloc_at(1, entry(1), Now(0)), "at capacity");
        slab.free(0);
        slab.free(0); // already free: no effect
        assert_eq!(slab.len(), 1);
        assert!(slab.alloc_at(1, entry(1), Now(0)));
        assert!(!slab.alloc_at(9, entry(1), Now(0)) && slab.len() == 2);
    }
}
