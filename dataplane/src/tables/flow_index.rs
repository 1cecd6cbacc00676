//! A fixed-size open-addressing index from a flow hash to a slab slot.
//!
//! Each bucket is one `u64`: the low 32 bits of the key's hash next to the slot
//! number plus one (zero means empty). Probing compares the stored hash before
//! touching the slot, so a lookup usually costs one cache line here and one in the
//! slab. Linear probing with backward-shift deletion keeps the table free of
//! tombstones; it is sized at construction for at most half load and never grows,
//! so there is no rehash pause on the packet path.

use crate::sys::huge_pages;
use crate::sys::prefetch::prefetch_read;

#[derive(Debug)]
pub(crate) struct FlowIndex {
    buckets: Vec<u64>,
    mask: usize,
}

/// Where a key was found: its bucket and the value stored there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub bucket: usize,
    pub value: u32,
}

impl FlowIndex {
    /// An index for up to `capacity` keys (at most 2^31).
    pub fn with_capacity(capacity: usize) -> Self {
        let buckets = capacity.saturating_mul(2).max(16).next_power_of_two();
        let mut v = Vec::with_capacity(buckets);
        huge_pages::advise(v.as_ptr(), buckets * std::mem::size_of::<u64>());
        v.resize(buckets, 0);
        FlowIndex {
            buckets: v,
            mask: buckets - 1,
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<u64>()
    }

    #[inline]
    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask
    }

    /// Starts loading the home bucket of `hash` into the cache without waiting
    /// for it; batches issue these for a group of keys before probing any.
    #[inline]
    pub fn prefetch_home(&self, hash: u32) {
        // `home` is always below the length, and a prefetch never faults anyway.
        prefetch_read(self.buckets.as_ptr().wrapping_add(self.home(hash)));
    }

    /// Finds the value whose key has `hash` and satisfies `is_key`.
    #[inline]
    pub fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<Hit> {
        let mut pos = self.home(hash);
        // The table is at most half full, so probing ends at an empty bucket; the
        // bound only guards against a logic error turning into an endless loop.
        for _ in 0..=self.mask {
            let b = self.buckets.get(pos).copied().unwrap_or(0);
            if b == 0 {
                return None;
            }
            if (b >> 32) as u32 == hash {
                let value = (b as u32).wrapping_sub(1);
                if is_key(value) {
                    return Some(Hit { bucket: pos, value });
                }
            }
            pos = (pos + 1) & self.mask;
        }
        None
    }

    /// Adds `value` (not `u32::MAX`) under `hash`; the caller made sure the key is
    /// absent and the index is below its capacity.
    #[inline]
    pub fn insert(&mut self, hash: u32, value: u32) {
        let mut pos = self.home(hash);
        for _ in 0..=self.mask {
            if let Some(b) = self.buckets.get_mut(pos)
                && *b == 0
            {
                *b = (u64::from(hash) << 32) | u64::from(value.wrapping_add(1));
                return;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Empties `bucket` and shifts later members of its probe run back so that every
    /// key stays reachable from its home bucket without tombstones.
    pub fn remove(&mut self, bucket: usize) {
        let mut hole = bucket & self.mask;
        let mut pos = hole;
        loop {
            pos = (pos + 1) & self.mask;
            let b = self.buckets.get(pos).copied().unwrap_or(0);
            if b == 0 || pos == hole {
                break;
            }
            let home = self.home((b >> 32) as u32);
            // `b` may fill the hole only if its home is not cyclically in (hole, pos].
            let dist_home = pos.wrapping_sub(home) & self.mask;
            let dist_hole = pos.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                if let Some(h) = self.buckets.get_mut(hole) {
                    *h = b;
                }
                hole = pos;
            }
        }
        if let Some(h) = self.buckets.get_mut(hole) {
            *h = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn colliding_keys_survive_removals() {
        // Every key hashes to a handful of buckets so probe runs wrap and interleave.
        let mut idx = FlowIndex::with_capacity(32);
        let mut model: HashMap<u32, u32> = HashMap::new();
        let hash_of = |k: u32| (k % 5) * 13 + 60; // homes near the end, so runs wrap
        for k in 0..30u32 {
            idx.insert(hash_of(k), k);
            model.insert(k, k);
        }
        for k in (0..30u32).step_by(3) {
            let hit = idx.find(hash_of(k), |s| s == k).expect("present");
            idx.remove(hit.bucket);
            model.remove(&k);
        }
        for k in 0..30u32 {
            let found = idx.find(hash_of(k), |s| s == k).map(|h| h.value);
            assert_eq!(found, model.get(&k).copied(), "key {k}");
        }
    }
}
