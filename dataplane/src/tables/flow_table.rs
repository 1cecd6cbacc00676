//! Storage for tracked flows: an open-addressing table whose buckets are the flow
//! entries themselves, keyed by the outbound hash, plus a lazy timing wheel that
//! finds expired entries without scanning.
//!
//! **One cache line per lookup.** An entry is 64 bytes, aligned to a line, and
//! holds everything a packet of an established flow reads and writes (key, NAT
//! binding, state, expiry, TCP window), so a pod's packet costs the line of its home
//! bucket, and a reply the line of its inbound index bucket plus this one. An index
//! that pointed into a slab cost one more random read per packet; with a million
//! flows that read is a cache miss.
//!
//! Linear probing with backward-shift deletion keeps the table free of
//! tombstones: removing an entry may move later members of its probe run back;
//! the wheel links of a moved entry's neighbours follow it, and the caller is told
//! so that the inbound index, which names entries by bucket, follows too. The
//! table is sized at construction for at most [`LOAD_NUM`]/[`LOAD_DEN`] load and
//! never grows: no rehash pause on the packet path.
//!
//! Expiry: refreshing a flow only moves its `expires` forward and leaves the entry
//! in the wheel slot it was queued in; when that slot comes due the entry is either
//! expired (reclaimed) or re-queued at its real expiry. Only a change to a shorter
//! timeout (a FIN after established) relinks the entry, a few times per flow at most.

use crate::sys::huge_pages;
use crate::sys::prefetch::prefetch_read;
use crate::tables::conntrack::TcpWindow;
use crate::time::Now;

/// Marks "no entry" in links.
const NIL: u32 = u32::MAX;
/// A `prev` with this bit set means "head of wheel slot (prev & !HEAD)".
const HEAD: u32 = 1 << 31;
/// Most flows a table holds: keeps bucket numbers below [`HEAD`].
pub(crate) const MAX_FLOWS: usize = 1 << 28;

/// Buckets per flow: the table is at most `LOAD_NUM / LOAD_DEN` full. At 5/8 a hit
/// probes 1.8 buckets on average (Knuth's ½(1 + 1/(1 − α))), the second one
/// usually the next line, which the CPU's adjacent-line prefetch brings along; a
/// full table costs 102 bytes of buckets per flow.
const LOAD_NUM: usize = 5;
const LOAD_DEN: usize = 8;

/// Wheel tick length: 1024 ms (a shift, not a division).
const TICK_SHIFT: u32 = 10;
/// 8192 ticks ≈ 2 h 20 min, just over the default TCP established timeout, so
/// default entries are queued once at their true expiry.
const WHEEL_SLOTS: usize = 8192;
const WHEEL_MASK: u64 = WHEEL_SLOTS as u64 - 1;

/// Largest expiry an entry can hold: 2^40 ms, about 34 years of worker uptime.
const MAX_EXPIRES: u64 = (1 << 40) - 1;

/// Protocol code of an empty bucket (flows use 1..=3).
const EMPTY: u8 = 0;

/// One tracked flow, which is also its bucket: one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// Hash of the outbound key: picks the home bucket and is compared before
    /// the key.
    pub out_hash: u32,
    pub pod_addr: u32,
    pub remote_addr: u32,
    pub nat_addr: u32,
    pub pod_port: u16,
    /// Zero for ICMP echo: the reply's identifier is the NAT one.
    pub remote_port: u16,
    pub nat_port: u16,
    /// Protocol code in the high nibble ([`EMPTY`] for a free bucket), flow state
    /// in the low one.
    proto_state: u8,
    /// Bits 32..40 of the expiry.
    expires_hi: u8,
    /// Low 32 bits of the expiry, in [`Now`] milliseconds.
    expires_lo: u32,
    // Wheel links (bucket numbers), owned by `FlowTable`.
    prev: u32,
    next: u32,
    /// TCP sequence tracking (zero for other protocols).
    pub tcp: TcpWindow,
}

impl Entry {
    const EMPTY: Entry = Entry {
        out_hash: 0,
        pod_addr: 0,
        remote_addr: 0,
        nat_addr: 0,
        pod_port: 0,
        remote_port: 0,
        nat_port: 0,
        proto_state: EMPTY << 4,
        expires_hi: 0,
        expires_lo: 0,
        prev: NIL,
        next: NIL,
        tcp: TcpWindow::ZERO,
    };

    /// An entry for a flow, not yet in a table; expiry, protocol, state and
    /// window are set separately.
    pub const fn flow(out_hash: u32, pod: (u32, u16), remote: (u32, u16), nat: (u32, u16)) -> Self {
        let mut e = Entry::EMPTY;
        e.out_hash = out_hash;
        e.pod_addr = pod.0;
        e.pod_port = pod.1;
        e.remote_addr = remote.0;
        e.remote_port = remote.1;
        e.nat_addr = nat.0;
        e.nat_port = nat.1;
        e
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.proto() == EMPTY
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

    /// Protocol code ([`crate::tables::L4Proto`]'s, 1..16).
    #[inline]
    pub fn proto(&self) -> u8 {
        self.proto_state >> 4
    }

    /// [`crate::tables::FlowState`] as `u8` (0..16).
    #[inline]
    pub fn state(&self) -> u8 {
        self.proto_state & 0x0f
    }

    /// The entry queued after this one in its wheel slot (a bucket number, or
    /// none).
    #[inline]
    pub fn next(&self) -> u32 {
        self.next
    }

    #[inline]
    pub fn set_proto_state(&mut self, proto: u8, state: u8) {
        self.proto_state = (proto << 4) | (state & 0x0f);
    }
}

#[derive(Debug)]
pub(crate) struct FlowTable {
    buckets: Vec<Entry>,
    capacity: usize,
    len: usize,
    wheel: Vec<u32>,
    /// The next tick to process; every earlier tick has been processed.
    cur_tick: u64,
}

fn tick_of(ms: u64) -> u64 {
    ms >> TICK_SHIFT
}

impl FlowTable {
    /// A table for up to `capacity` flows (clamped to [`MAX_FLOWS`]).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.min(MAX_FLOWS);
        let n = (capacity * LOAD_DEN / LOAD_NUM).max(16);
        let mut buckets = Vec::with_capacity(n);
        huge_pages::advise(buckets.as_ptr(), n * std::mem::size_of::<Entry>());
        buckets.resize(n, Entry::EMPTY);
        FlowTable {
            buckets,
            capacity,
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
        self.buckets.capacity() * std::mem::size_of::<Entry>()
            + self.wheel.len() * std::mem::size_of::<u32>()
    }

    /// The home bucket of `hash`: the hash scaled to the table (Lemire's
    /// multiply-shift), so the table need not be a power of two.
    #[inline]
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn step(&self, pos: usize) -> usize {
        if pos + 1 >= self.buckets.len() {
            0
        } else {
            pos + 1
        }
    }

    /// Starts loading the home bucket of `hash` without waiting for it.
    #[inline]
    pub fn prefetch_home(&self, hash: u32) {
        // `home` is always below the length, and a prefetch never faults anyway.
        prefetch_read(self.buckets.as_ptr().wrapping_add(self.home(hash)));
    }

    /// The bucket of the entry with `hash` that satisfies `is_key`.
    #[inline]
    pub fn find(&self, hash: u32, mut is_key: impl FnMut(&Entry) -> bool) -> Option<u32> {
        let mut pos = self.home(hash);
        // The table is never full, so probing ends at an empty bucket; the bound
        // only guards against a logic error turning into an endless loop.
        for _ in 0..self.buckets.len() {
            let e = self.buckets.get(pos)?;
            if e.is_empty() {
                return None;
            }
            if e.out_hash == hash && is_key(e) {
                return u32::try_from(pos).ok();
            }
            pos = self.step(pos);
        }
        None
    }

    #[inline]
    pub fn get(&self, pos: u32) -> Option<&Entry> {
        self.buckets.get(pos as usize).filter(|e| !e.is_empty())
    }

    #[inline]
    pub fn get_mut(&mut self, pos: u32) -> Option<&mut Entry> {
        self.buckets.get_mut(pos as usize).filter(|e| !e.is_empty())
    }

    /// Stores `entry` in the first free bucket of its probe run and queues it for
    /// its expiry; `None` when the table holds `capacity` flows. The caller made
    /// sure the key is absent.
    pub fn insert(&mut self, entry: Entry, now: Now) -> Option<u32> {
        if self.len >= self.capacity || entry.is_empty() {
            return None;
        }
        if self.len == 0 {
            // Nothing is queued, so the wheel may jump to the present.
            self.cur_tick = tick_of(now.millis());
        }
        let mut pos = self.home(entry.out_hash);
        for _ in 0..self.buckets.len() {
            let b = self.buckets.get_mut(pos)?;
            if b.is_empty() {
                *b = entry;
                self.len += 1;
                let pos = u32::try_from(pos).ok()?;
                self.enqueue(pos);
                return Some(pos);
            }
            pos = self.step(pos);
        }
        None
    }

    /// Removes the entry in bucket `pos` and shifts later members of its probe
    /// run back, so that every entry stays reachable from its home bucket without
    /// tombstones; `moved(entry, from, to)` hears of every entry that moved.
    pub fn remove(&mut self, pos: u32, mut moved: impl FnMut(&Entry, u32, u32)) {
        if self.get(pos).is_none() {
            return;
        }
        self.unlink(pos);
        self.len -= 1;
        let n = self.buckets.len();
        let mut hole = pos as usize;
        let mut cur = hole;
        loop {
            cur = self.step(cur);
            let Some(&e) = self.buckets.get(cur) else {
                break;
            };
            if e.is_empty() || cur == pos as usize {
                break;
            }
            // `e` may fill the hole only if its home is not cyclically in (hole, cur].
            let home = self.home(e.out_hash);
            let dist_home = (cur + n - home) % n;
            let dist_hole = (cur + n - hole) % n;
            if dist_home >= dist_hole {
                self.move_entry(cur, hole);
                moved(&e, cur as u32, hole as u32);
                hole = cur;
            }
        }
        if let Some(h) = self.buckets.get_mut(hole) {
            *h = Entry::EMPTY;
        }
    }

    /// Copies the entry at `from` to the empty bucket `to` and points its wheel
    /// neighbours at the new place.
    fn move_entry(&mut self, from: usize, to: usize) {
        let Some(&e) = self.buckets.get(from) else {
            return;
        };
        let (Ok(to32), Some(dst)) = (u32::try_from(to), self.buckets.get_mut(to)) else {
            return;
        };
        *dst = e;
        if e.prev & HEAD != 0 {
            if let Some(head) = self.wheel.get_mut((e.prev & !HEAD) as usize) {
                *head = to32;
            }
        } else if let Some(p) = self.buckets.get_mut(e.prev as usize) {
            p.next = to32;
        }
        if let Some(nx) = self.buckets.get_mut(e.next as usize) {
            nx.prev = to32;
        }
    }

    /// Moves an entry whose expiry got earlier to the wheel slot of its new expiry.
    pub fn requeue(&mut self, pos: u32) {
        self.unlink(pos);
        self.enqueue(pos);
    }

    fn enqueue(&mut self, pos: u32) {
        let Some(expires) = self.get(pos).map(Entry::expires) else {
            return;
        };
        // Never before the tick being processed, never a full turn ahead of it.
        let tick = tick_of(expires).clamp(self.cur_tick, self.cur_tick + WHEEL_MASK);
        let w = (tick & WHEEL_MASK) as usize;
        let old_head = self.wheel.get(w).copied().unwrap_or(NIL);
        if let Some(e) = self.buckets.get_mut(pos as usize) {
            e.prev = HEAD | w as u32;
            e.next = old_head;
        }
        if let Some(h) = self.buckets.get_mut(old_head as usize) {
            h.prev = pos;
        }
        if let Some(head) = self.wheel.get_mut(w) {
            *head = pos;
        }
    }

    fn unlink(&mut self, pos: u32) {
        let Some(&Entry { prev, next, .. }) = self.get(pos) else {
            return;
        };
        if prev == NIL {
            return; // not queued
        }
        if prev & HEAD != 0 {
            if let Some(head) = self.wheel.get_mut((prev & !HEAD) as usize) {
                *head = next;
            }
        } else if let Some(p) = self.buckets.get_mut(prev as usize) {
            p.next = next;
        }
        if let Some(n) = self.buckets.get_mut(next as usize) {
            n.prev = prev;
        }
        if let Some(e) = self.buckets.get_mut(pos as usize) {
            e.prev = NIL;
            e.next = NIL;
        }
    }

    /// The entry [`FlowTable::next_expired`] examines first (if it is due then),
    /// without changing anything: for prefetching.
    #[inline]
    pub fn next_to_examine(&self) -> Option<&Entry> {
        let head = self.wheel.get((self.cur_tick & WHEEL_MASK) as usize)?;
        self.get(*head)
    }

    /// Starts loading the bucket `pos` without waiting for it.
    #[inline]
    pub fn prefetch(&self, pos: u32) {
        if let Some(e) = self.buckets.get(pos as usize) {
            prefetch_read(e);
        }
    }

    /// The next expired entry in a due wheel slot, re-queueing refreshed entries on
    /// the way; at most `budget` entries are examined (the count is decremented).
    /// The caller must [`FlowTable::remove`] the returned bucket before asking again.
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
                let Some(e) = self.get(head) else {
                    // Cannot happen (only entries are queued); unqueue the stray head.
                    if let Some(h) = self.wheel.get_mut(w) {
                        *h = NIL;
                    }
                    break;
                };
                // The entry after this one is examined next: start loading it.
                if let Some(next) = self.buckets.get(e.next as usize) {
                    prefetch_read(next);
                }
                if e.expires() <= now.millis() {
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
    use std::collections::HashMap;

    fn entry(hash: u32, expires: u64) -> Entry {
        let mut e = Entry::flow(hash, (hash, 0), (0, 0), (0, 0));
        e.set_proto_state(2, 8);
        e.set_expires(expires);
        e
    }

    #[test]
    fn entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert_eq!(std::mem::align_of::<Entry>(), 64);
        let mut e = Entry::EMPTY;
        e.set_expires(0x12_3456_789a);
        e.set_proto_state(3, 4);
        assert_eq!((e.expires(), e.proto(), e.state()), (0x12_3456_789a, 3, 4));
        e.set_expires(u64::MAX);
        assert_eq!(e.expires(), MAX_EXPIRES);
    }

    fn drain(t: &mut FlowTable, now: u64) -> Vec<u32> {
        let mut gone = Vec::new();
        let mut budget = usize::MAX;
        while let Some(pos) = t.next_expired(Now(now), &mut budget) {
            gone.push(t.get(pos).unwrap().pod_addr);
            t.remove(pos, |_, _, _| {});
        }
        gone.sort_unstable();
        gone
    }

    fn pos_of(t: &FlowTable, hash: u32) -> u32 {
        t.find(hash, |e| e.pod_addr == hash).expect("present")
    }

    #[test]
    fn expire_finds_only_expired_and_requeues_refreshed() {
        let mut t = FlowTable::with_capacity(8);
        for (h, exp) in [(1, 5_000), (2, 5_000), (3, 60_000)] {
            t.insert(entry(h, exp), Now(0)).expect("room");
        }
        // Refresh 1 lazily: only its expiry moves.
        let p = pos_of(&t, 1);
        t.get_mut(p).unwrap().set_expires(20_000);
        assert_eq!(drain(&mut t, 10_000), vec![2]);
        assert_eq!(drain(&mut t, 30_000), vec![1]);
        assert_eq!(t.len(), 1);
        // Hours later, a full turn of the wheel behind: still found.
        assert_eq!(drain(&mut t, 100_000_000), vec![3]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn capacity_is_enforced_and_freed_room_reused() {
        let mut t = FlowTable::with_capacity(2);
        t.insert(entry(1, 1), Now(0)).expect("room");
        t.insert(entry(2, 1), Now(0)).expect("room");
        assert!(t.insert(entry(3, 1), Now(0)).is_none());
        t.remove(pos_of(&t, 1), |_, _, _| {});
        assert!(t.insert(entry(3, 1), Now(0)).is_some());
    }

    #[test]
    fn colliding_entries_survive_removals_with_their_wheel_links() {
        // Every key hashes to a handful of homes near the end, so probe runs wrap
        // and interleave, and removals move entries that sit in wheel lists.
        let mut t = FlowTable::with_capacity(40);
        let n = t.buckets.len() as u64;
        let hash_of = |k: u32| {
            let home = n - 8 + u64::from(k % 5);
            // The smallest hash whose home is `home`, plus `k` in the low bits.
            (home << 32).div_ceil(n) as u32 + k
        };
        let mut model: HashMap<u32, u64> = HashMap::new();
        for k in 0..30u32 {
            let exp = 1_000 * u64::from(k % 7 + 2);
            let mut e = entry(hash_of(k), exp);
            e.pod_addr = k;
            t.insert(e, Now(0)).expect("room");
            model.insert(k, exp);
        }
        for k in (0..30u32).step_by(3) {
            let p = t.find(hash_of(k), |e| e.pod_addr == k).expect("present");
            t.remove(p, |_, _, _| {});
            model.remove(&k);
        }
        for k in 0..30u32 {
            let found = t
                .find(hash_of(k), |e| e.pod_addr == k)
                .map(|p| t.get(p).unwrap().expires());
            assert_eq!(found, model.get(&k).copied(), "key {k}");
        }
        // Every remaining entry is still on the wheel, at its own expiry.
        for secs in 2..=9u64 {
            let mut gone = Vec::new();
            let mut budget = usize::MAX;
            while let Some(pos) = t.next_expired(Now(secs * 1_000 + 1_024), &mut budget) {
                let e = *t.get(pos).unwrap();
                assert!(e.expires() <= secs * 1_000 + 1_024);
                gone.push(e.pod_addr);
                t.remove(pos, |_, _, _| {});
            }
            for k in gone {
                assert!(model.remove(&k).is_some());
            }
        }
        assert!(model.is_empty() && t.len() == 0, "left: {model:?}");
    }
}
