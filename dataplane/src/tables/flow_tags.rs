//! A SwissTable-style index that places each flow's entry in a slot chosen by its
//! hash and keeps one tag byte per slot in a dense side array.
//!
//! The slots are those of the slab ([`crate::tables::flow_slab::FlowSlab`] is
//! sized to [`FlowTags::slots`]): the index does not map a key to a slot, it *is*
//! the placement, so a hit reads the 16 tags of one group (one `u128`, 1/64 of a
//! cache line per slot, so about 1 MiB per million flows: it stays in the cache)
//! and then the one entry whose tag matches. A miss usually reads no entry at all
//! (a tag collides with probability 1/128 per occupied slot).
//!
//! Tags are 7 bits of the hash; a byte with its high bit set is EMPTY or DELETED.
//! Groups are aligned and probed one after the other from the hash's home group,
//! 16 slots compared at once with plain integer arithmetic (SWAR on a `u128`, no
//! `unsafe`). A lookup stops at the first group that has an EMPTY byte, so a slot
//! removed from a group that has one is marked EMPTY, and only a slot removed
//! from a full group becomes DELETED (a tombstone, reused by the next insert that
//! probes there). Nothing ever moves: the wheel and the inbound index name an
//! entry by its slot for its whole life.
//!
//! Sized at construction for a load of at most 3/4 and never grown, so there is no
//! rehash pause on the packet path, and tombstones stay rare: at 3/4 load few
//! groups are ever full.

use crate::sys::huge_pages;
use crate::sys::prefetch::prefetch_read;

/// Slots per group: one `u128` of tags.
const GROUP: usize = 16;
/// Every byte of a group word set to 0x01 / 0x80.
const LO: u128 = u128::from_ne_bytes([0x01; GROUP]);
const HI: u128 = u128::from_ne_bytes([0x80; GROUP]);
const EMPTY: u8 = 0x80;
const DELETED: u8 = 0xfe;

#[derive(Debug)]
pub(crate) struct FlowTags {
    /// Group `g` holds the tags of slots `16 g .. 16 g + 16`, slot `16 g + i` in
    /// byte `i` (little-endian order of the word).
    groups: Vec<u128>,
    tombstones: usize,
}

/// The bytes of `word` equal to `tag` (a full tag, below 0x80), as a mask of
/// their high bits. May also flag a byte equal to `tag ^ 1` just above a true
/// match (the borrow of the subtraction): also a full tag, so the caller's key
/// comparison rejects it; never an EMPTY or DELETED byte.
#[inline]
fn match_tag(word: u128, tag: u8) -> u128 {
    let x = word ^ (LO * u128::from(tag));
    x.wrapping_sub(LO) & !x & HI
}

/// The EMPTY bytes of `word` (high bit set, bit 1 clear; DELETED has bit 1 set).
#[inline]
fn match_empty(word: u128) -> u128 {
    word & !(word << 6) & HI
}

/// The EMPTY or DELETED bytes of `word`.
#[inline]
fn match_free(word: u128) -> u128 {
    word & HI
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
        let groups = (capacity.saturating_mul(4) / 3).div_ceil(GROUP).max(2);
        let mut v = Vec::with_capacity(groups);
        huge_pages::advise(v.as_ptr(), groups * std::mem::size_of::<u128>());
        v.resize(groups, u128::from_ne_bytes([EMPTY; GROUP]));
        FlowTags {
            groups: v,
            tombstones: 0,
        }
    }

    /// How many slots there are (the slab's size).
    pub fn slots(&self) -> usize {
        self.groups.len() * GROUP
    }

    pub fn memory_bytes(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<u128>()
    }

    /// Slots marked DELETED now.
    #[cfg(test)]
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// The group a hash's probe starts at: the high bits of the hash scaled to
    /// the group count (the tag uses the low bits).
    #[inline]
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.groups.len() as u64) >> 32) as usize
    }

    #[inline]
    fn word(&self, g: usize) -> u128 {
        self.groups.get(g).copied().unwrap_or(HI)
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
        u32::try_from(g * GROUP + i).ok()
    }

    /// The occupied slot whose tag matches `hash` and that satisfies `is_key`.
    #[inline]
    pub fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let n = self.groups.len();
        let tag = tag_of(hash);
        let mut g = self.home(hash);
        // A group with an EMPTY byte ends every probe through it, and the table is
        // at most 3/4 full, so this ends long before the bound; the bound only
        // keeps a logic error from looping forever.
        for _ in 0..n {
            let w = self.word(g);
            for i in positions(match_tag(w, tag)) {
                let slot = (g * GROUP + i) as u32;
                if is_key(slot) {
                    return Some(slot);
                }
            }
            if match_empty(w) != 0 {
                return None;
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
        None
    }

    /// Takes a free slot for a new key with `hash` (the caller made sure the key
    /// is absent and fewer than `slots() * 3 / 4` slots are in use); `None` only
    /// when every slot is taken.
    #[inline]
    pub fn insert(&mut self, hash: u32) -> Option<u32> {
        let n = self.groups.len();
        let mut g = self.home(hash);
        for _ in 0..n {
            let w = self.word(g);
            if let Some(i) = positions(match_free(w)).next() {
                let shift = 8 * i;
                if (w >> shift) as u8 == DELETED {
                    self.tombstones -= 1;
                }
                let w = (w & !(0xff << shift)) | (u128::from(tag_of(hash)) << shift);
                if let Some(word) = self.groups.get_mut(g) {
                    *word = w;
                }
                return u32::try_from(g * GROUP + i).ok();
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
        None
    }

    /// Frees `slot`: EMPTY when its group already has an EMPTY byte (no probe goes
    /// past that group), else a DELETED tombstone so that probes still do.
    pub fn remove(&mut self, slot: u32) {
        let (g, i) = (slot as usize / GROUP, slot as usize % GROUP);
        let Some(word) = self.groups.get_mut(g) else {
            return;
        };
        let shift = 8 * i;
        let old = (*word >> shift) as u8;
        if old & 0x80 != 0 {
            return; // not occupied
        }
        let mark = if match_empty(*word) != 0 {
            EMPTY
        } else {
            self.tombstones += 1;
            DELETED
        };
        *word = (*word & !(0xff << shift)) | (u128::from(mark) << shift);
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
            let s = self.tags.insert(h).expect("room");
            assert_eq!(self.keys[s as usize], None, "slot {s} was taken");
            self.keys[s as usize] = Some(k);
            self.map.insert(k, s);
            s
        }
        fn remove(&mut self, k: u32, h: u32) {
            let s = self.find(k, h).expect("present");
            self.tags.remove(s);
            self.keys[s as usize] = None;
            self.map.remove(&k);
        }
        /// Every key is found where it was put (entries never move).
        fn check(&self, hash: impl Fn(u32) -> u32) {
            for (&k, &s) in &self.map {
                assert_eq!(self.find(k, hash(k)), Some(s), "key {k}");
            }
        }
    }

    #[test]
    fn matching_masks() {
        let mut bytes = [EMPTY; GROUP];
        bytes[0] = 5;
        bytes[1] = 4; // 5 ^ 1 just above a match: the one allowed false positive
        bytes[3] = DELETED;
        bytes[7] = 5;
        let w = u128::from_le_bytes(bytes);
        let m: Vec<usize> = positions(match_tag(w, 5)).collect();
        assert!(m == vec![0, 7] || m == vec![0, 1, 7], "{m:?}");
        let e: Vec<usize> = positions(match_empty(w)).collect();
        assert_eq!(e, vec![2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(positions(match_free(w)).count(), 13);
        // No tag value ever matches an EMPTY or DELETED byte.
        let special = u128::from_le_bytes([
            EMPTY, DELETED, EMPTY, DELETED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        for tag in 1..0x80u8 {
            assert!(
                positions(match_tag(special, tag)).all(|i| i >= 4),
                "tag {tag}"
            );
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
    fn full_groups_wrap_and_tombstones_are_reused() {
        // Every key has the same home group (the last one), so the keys fill it,
        // then spill into the first group: probing wraps around.
        let mut m = Model::new(60);
        let groups = m.tags.groups.len();
        let last_home = u32::MAX; // home(u32::MAX) is the last group
        assert_eq!(m.tags.home(last_home), groups - 1);
        // Same home, distinct tags and some equal ones.
        let hash = |k: u32| last_home & !0x7f | (k % 7);
        let slots: Vec<u32> = (0..40).map(|k| m.insert(k, hash(k))).collect();
        assert!(
            slots.iter().any(|&s| (s as usize) < GROUP),
            "wrapped to group 0"
        );
        m.check(hash);
        // Removing from the (full) last group leaves tombstones, not holes that
        // would hide the keys that spilled over.
        for k in 0..8 {
            m.remove(k, hash(k));
        }
        assert_eq!(m.tags.tombstones(), 8);
        m.check(hash);
        // New keys reuse the tombstones first (they come first in the probe).
        for k in 100..108 {
            let s = m.insert(k, hash(k));
            assert!(s as usize >= (groups - 1) * GROUP, "slot {s}");
        }
        assert_eq!(m.tags.tombstones(), 0);
        m.check(hash);
    }

    #[test]
    fn removal_from_a_group_with_room_leaves_no_tombstone() {
        let mut m = Model::new(100);
        let hash = |k: u32| k.wrapping_mul(0x9e37_79b9);
        for k in 0..10 {
            m.insert(k, hash(k));
        }
        for k in 0..10 {
            m.remove(k, hash(k));
        }
        assert_eq!(m.tags.tombstones(), 0);
    }

    #[test]
    fn entries_never_move_under_churn() {
        // Random inserts and removals at up to 3/4 load with few home groups
        // (many collisions): every key stays in the slot it was given.
        let mut m = Model::new(200);
        let mut x = 0x1234_5678u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let hash = |k: u32| k.wrapping_mul(0x9e37_79b9) | 0xff00_0000; // last groups
        let mut live: Vec<u32> = Vec::new();
        for step in 0..20_000u32 {
            if live.len() < 200 && (live.is_empty() || rnd() % 2 == 0) {
                let k = step;
                m.insert(k, hash(k));
                live.push(k);
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
    }
}
