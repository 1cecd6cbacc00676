//! A SwissTable-style index that places each flow's entry in a slot chosen by its
//! hash and keeps one tag byte per slot in a dense side array.
//!
//! The slots are those of the slab ([`crate::tables::flow_slab::FlowSlab`] is
//! sized to [`FlowTags::slots`]): the index does not map a key to a slot, it *is*
//! the placement, so a hit reads the tags of one group (one `u128`, about 1.1
//! bytes per slot, so about 1.4 MiB per million flows: it stays in the cache) and
//! then the one entry whose tag matches. A miss usually reads no entry at all (a
//! tag collides with probability 1/128 per occupied slot).
//!
//! A group is 15 slots' tags (7 bits of the hash; 0x80 is EMPTY) and, in its
//! 16th byte, the number of keys that probed past it because it was full (F14's
//! overflow count). Groups are probed one after the other from the hash's home
//! group, 15 tags compared at once with plain integer arithmetic (SWAR on a
//! `u128`, no `unsafe`), and a lookup stops at the first group nobody overflowed.
//! Removing a key frees its slot and takes it off the counts it added, so there
//! are no tombstones: SwissTable's tombstones (or its "EMPTY only if the group was
//! never full" rule) pile up under the churn of a full conntrack table until every
//! miss probes the whole table, and only a rehash, which would move entries, clears
//! them. Nothing ever moves here: the wheel and the inbound index name an entry by
//! its slot for its whole life. (A count that reaches 255 stays there: probes
//! through that group just go on.)
//!
//! Sized at construction for a load of at most 3/4 and never grown, so there is no
//! rehash pause on the packet path.

use crate::sys::huge_pages;
use crate::sys::prefetch::prefetch_read;

/// Slots per group; byte [`SLOTS`] of a group word is its overflow count.
const SLOTS: usize = 15;
/// Byte `i` of a group word is bits `8 i .. 8 i + 8` (little-endian order).
const OVERFLOW_SHIFT: usize = 8 * SLOTS;
/// Every slot byte of a group word set to 0x01 / 0x80 (the count byte left out).
const LO: u128 = u128::from_le_bytes([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
const HI: u128 = LO << 7;
const EMPTY: u8 = 0x80;
/// A group with every slot EMPTY and a zero count.
const EMPTY_GROUP: u128 = HI;

#[derive(Debug)]
pub(crate) struct FlowTags {
    /// Group `g` holds the tags of slots `15 g .. 15 g + 15`.
    groups: Vec<u128>,
}

/// The slot bytes of `word` equal to `tag` (below 0x80), as a mask of their high
/// bits. May also flag a byte equal to `tag ^ 1` just above a true match (the
/// borrow of the subtraction): also an occupied slot, so the caller's key
/// comparison rejects it; never an EMPTY one.
#[inline]
fn match_tag(word: u128, tag: u8) -> u128 {
    let x = word ^ (LO * u128::from(tag));
    x.wrapping_sub(LO) & !x & HI
}

/// The EMPTY slot bytes of `word`.
#[inline]
fn match_empty(word: u128) -> u128 {
    word & HI
}

#[inline]
fn overflow(word: u128) -> u8 {
    (word >> OVERFLOW_SHIFT) as u8
}

/// Byte `i` of `word` replaced by `byte`.
#[inline]
fn with_byte(word: u128, i: usize, byte: u8) -> u128 {
    let shift = 8 * i;
    (word & !(0xff << shift)) | (u128::from(byte) << shift)
}

/// Iterates the byte positions of a match mask, lowest first.
#[inline]
fn positions(mut mask: u128) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize / 8;
        mask &= mask - 1;
        Some(i)
    })
}

#[inline]
fn tag_of(hash: u32) -> u8 {
    (hash & 0x7f) as u8
}

impl FlowTags {
    /// An index with room for `capacity` entries at no more than 3/4 load.
    pub fn with_capacity(capacity: usize) -> Self {
        let groups = (capacity.saturating_mul(4) / 3).div_ceil(SLOTS).max(2);
        let mut v = Vec::with_capacity(groups);
        huge_pages::advise(v.as_ptr(), groups * std::mem::size_of::<u128>());
        v.resize(groups, EMPTY_GROUP);
        FlowTags { groups: v }
    }

    /// How many slots there are (the slab's size).
    pub fn slots(&self) -> usize {
        self.groups.len() * SLOTS
    }

    pub fn memory_bytes(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<u128>()
    }

    /// The group a hash's probe starts at: the high bits of the hash scaled to
    /// the group count (the tag uses the low bits).
    #[inline]
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.groups.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, g: usize) -> usize {
        if g + 1 == self.groups.len() { 0 } else { g + 1 }
    }

    #[inline]
    fn word(&self, g: usize) -> u128 {
        self.groups.get(g).copied().unwrap_or(EMPTY_GROUP)
    }

    #[inline]
    fn slot(g: usize, i: usize) -> u32 {
        (g * SLOTS + i) as u32
    }

    /// Starts loading the home group's tags without waiting for them.
    #[inline]
    pub fn prefetch_home(&self, hash: u32) {
        prefetch_read(self.groups.as_ptr().wrapping_add(self.home(hash)));
    }

    /// The first slot of the home group whose tag matches `hash` (the one a
    /// lookup will most likely read), for prefetching its entry.
    #[inline]
    pub fn first_candidate(&self, hash: u32) -> Option<u32> {
        let g = self.home(hash);
        let i = positions(match_tag(self.word(g), tag_of(hash))).next()?;
        Some(Self::slot(g, i))
    }

    /// The slot [`FlowTags::insert`] would most likely give a key with `hash` (the
    /// first EMPTY one of its home group), for prefetching the entry line a new
    /// flow will be written to.
    #[inline]
    pub fn insert_hint(&self, hash: u32) -> Option<u32> {
        let g = self.home(hash);
        let i = positions(match_empty(self.word(g))).next()?;
        Some(Self::slot(g, i))
    }

    /// The occupied slot whose tag matches `hash` and that satisfies `is_key`.
    #[inline]
    pub fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        let mut g = self.home(hash);
        // Overflow counts end every probe within a few groups at 3/4 load; the
        // bound only keeps a logic error from looping forever.
        for _ in 0..self.groups.len() {
            let w = self.word(g);
            for i in positions(match_tag(w, tag)) {
                let slot = Self::slot(g, i);
                if is_key(slot) {
                    return Some(slot);
                }
            }
            if overflow(w) == 0 {
                return None;
            }
            g = self.next(g);
        }
        None
    }

    /// Takes a free slot for a new key with `hash` (the caller made sure the key
    /// is absent); `None` only when every slot is taken.
    #[inline]
    pub fn insert(&mut self, hash: u32) -> Option<u32> {
        let mut g = self.home(hash);
        for _ in 0..self.groups.len() {
            let w = self.word(g);
            if let Some(i) = positions(match_empty(w)).next() {
                self.set(g, with_byte(w, i, tag_of(hash)));
                self.count_overflow(hash, g, 1);
                return Some(Self::slot(g, i));
            }
            g = self.next(g);
        }
        None
    }

    fn set(&mut self, g: usize, w: u128) {
        if let Some(word) = self.groups.get_mut(g) {
            *word = w;
        }
    }

    /// Adds `delta` (+1 or -1) to the overflow counts of the groups a key with
    /// `hash` passed on its way to group `to`; a count at 255 stays there.
    fn count_overflow(&mut self, hash: u32, to: usize, delta: i8) {
        let mut g = self.home(hash);
        for _ in 0..self.groups.len() {
            if g == to {
                return;
            }
            let w = self.word(g);
            let c = overflow(w);
            if c != u8::MAX {
                self.set(g, with_byte(w, SLOTS, c.wrapping_add_signed(delta)));
            }
            g = self.next(g);
        }
    }

    /// Frees `slot`, which a key with `hash` was given.
    pub fn remove(&mut self, slot: u32, hash: u32) {
        let (g, i) = (slot as usize / SLOTS, slot as usize % SLOTS);
        let w = self.word(g);
        if g >= self.groups.len() || (w >> (8 * i)) as u8 & EMPTY != 0 {
            return; // not occupied
        }
        self.set(g, with_byte(w, i, EMPTY));
        self.count_overflow(hash, g, -1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A table of `capacity` with a slot → key array standing in for the slab.
    struct Model {
        tags: FlowTags,
        keys: Vec<Option<u32>>,
        map: HashMap<u32, u32>,
    }

    impl Model {
        fn new(capacity: usize) -> Self {
            let tags = FlowTags::with_capacity(capacity);
            let keys = vec![None; tags.slots()];
            Model {
                tags,
                keys,
                map: HashMap::new(),
            }
        }
        fn find(&self, k: u32, h: u32) -> Option<u32> {
            self.tags.find(h, |s| self.keys[s as usize] == Some(k))
        }
        fn insert(&mut self, k: u32, h: u32) -> u32 {
            assert_eq!(self.find(k, h), None);
            let hint = self.tags.insert_hint(h);
            let s = self.tags.insert(h).expect("room");
            if let Some(hint) = hint {
                assert_eq!(
                    s, hint,
                    "the hint is where a key goes when its home has room"
                );
            }
            assert_eq!(self.keys[s as usize], None, "slot {s} was taken");
            self.keys[s as usize] = Some(k);
            self.map.insert(k, s);
            s
        }
        fn remove(&mut self, k: u32, h: u32) {
            let s = self.find(k, h).expect("present");
            self.tags.remove(s, h);
            self.keys[s as usize] = None;
            self.map.remove(&k);
        }
        /// Every key is found where it was put (entries never move), and every
        /// overflow count is the number of keys whose probe passed its group.
        fn check(&self, hash: impl Fn(u32) -> u32) {
            let n = self.tags.groups.len();
            let mut counts = vec![0usize; n];
            for (&k, &s) in &self.map {
                assert_eq!(self.find(k, hash(k)), Some(s), "key {k}");
                let mut g = self.tags.home(hash(k));
                while g != s as usize / SLOTS {
                    counts[g] += 1;
                    g = (g + 1) % n;
                }
            }
            for (g, &c) in counts.iter().enumerate() {
                assert_eq!(usize::from(overflow(self.tags.groups[g])), c, "group {g}");
            }
        }
    }

    #[test]
    fn matching_masks() {
        let mut bytes = [EMPTY; 16];
        bytes[0] = 5;
        bytes[1] = 4; // 5 ^ 1 just above a match: the one allowed false positive
        bytes[7] = 5;
        bytes[SLOTS] = 5; // an overflow count is never a tag
        let w = u128::from_le_bytes(bytes);
        let m: Vec<usize> = positions(match_tag(w, 5)).collect();
        assert!(m == vec![0, 7] || m == vec![0, 1, 7], "{m:?}");
        let e: Vec<usize> = positions(match_empty(w)).collect();
        assert_eq!(e, vec![2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(overflow(w), 5);
        // No tag value ever matches an EMPTY byte.
        for tag in 0..0x80u8 {
            assert_eq!(match_tag(EMPTY_GROUP, tag), 0, "tag {tag}");
        }
    }

    #[test]
    fn insert_find_remove() {
        let mut m = Model::new(1000);
        let hash = |k: u32| k.wrapping_mul(0x9e37_79b9);
        for k in 0..1000 {
            m.insert(k, hash(k));
        }
        m.check(hash);
        for k in (0..1000).step_by(2) {
            m.remove(k, hash(k));
        }
        m.check(hash);
        for k in (0..1000).step_by(2) {
            assert_eq!(m.find(k, hash(k)), None);
        }
    }

    #[test]
    fn full_groups_overflow_wrap_around_and_recover() {
        // Every key has the same home group (the last one), so the keys fill it,
        // then spill into the first groups: probing wraps around.
        let mut m = Model::new(60);
        let groups = m.tags.groups.len();
        let last_home = u32::MAX; // home(u32::MAX) is the last group
        assert_eq!(m.tags.home(last_home), groups - 1);
        // Same home, a few distinct tags.
        let hash = |k: u32| (last_home & !0x7f) | (k % 7);
        let slots: Vec<u32> = (0..40).map(|k| m.insert(k, hash(k))).collect();
        assert!(slots.iter().any(|&s| (s as usize) < SLOTS), "wrapped");
        assert_eq!(overflow(m.tags.groups[groups - 1]), 25);
        m.check(hash);
        // Holes in the full home group keep the keys past it reachable; new keys
        // fill the holes first.
        for k in 0..8 {
            m.remove(k, hash(k));
        }
        m.check(hash);
        for k in 100..108 {
            let s = m.insert(k, hash(k));
            assert!(s as usize >= (groups - 1) * SLOTS, "slot {s}");
        }
        m.check(hash);
        // Once the keys that overflowed are gone, a miss stops at the home group.
        for k in 15..40 {
            m.remove(k, hash(k));
        }
        m.check(hash);
        assert_eq!(overflow(m.tags.groups[groups - 1]), 0);
        let mut probed = 0;
        assert_eq!(
            m.tags.find(hash(999), |_| {
                probed += 1;
                false
            }),
            None
        );
        assert!(probed <= SLOTS, "{probed} candidates");
    }

    #[test]
    fn entries_never_move_and_misses_stay_short_under_churn() {
        // A full table's churn: random removals and inserts at 3/4 load, many
        // times the table's size, with every key homed to a few groups (many
        // collisions). Every key stays in the slot it was given, and the overflow
        // counts never drift (a tombstone scheme would fill up here).
        let mut m = Model::new(200);
        let mut x = 0x1234_5678u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let hash = |k: u32| k.wrapping_mul(0x9e37_79b9);
        let mut live: Vec<u32> = Vec::new();
        for step in 0..50_000u32 {
            if live.len() < 200 {
                m.insert(step, hash(step));
                live.push(step);
            } else {
                let i = rnd() as usize % live.len();
                let k = live.swap_remove(i);
                m.remove(k, hash(k));
            }
            if step % 997 == 0 {
                m.check(hash);
            }
        }
        m.check(hash);
        let overflowed = m.tags.groups.iter().filter(|&&w| overflow(w) > 0).count();
        assert!(overflowed < m.tags.groups.len() / 2, "{overflowed} groups");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random inserts and removals against a `HashMap`, with hashes drawn
        /// from a few home groups and tags so that groups fill and probes wrap:
        /// every live key is found in the slot it was given, removed keys are not
        /// found, no slot is handed out twice, overflow counts stay exact.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(
            (proptest::prelude::any::<bool>(), 0u32..300), 1..600),
            home_bits in 1u32..4, tag_bits in 0u32..3)
        {
            let mut m = Model::new(128);
            // Few distinct homes (the top bits) and tags (the low bits).
            let hash = move |k: u32| {
                let home = k.wrapping_mul(0x9e37_79b9) >> (32 - home_bits) << (32 - home_bits);
                home | (k % (1 << tag_bits))
            };
            for (add, k) in ops {
                let present = m.map.contains_key(&k);
                if add && !present && m.map.len() < 128 {
                    m.insert(k, hash(k));
                } else if !add && present {
                    m.remove(k, hash(k));
                }
                proptest::prop_assert_eq!(m.find(k, hash(k)), m.map.get(&k).copied());
            }
            m.check(hash);
        }
    }
}
