//! The node addresses VXLAN is accepted from, as a set the workers probe per packet.
//!
//! Built once per snapshot by the control thread (allocation happens then, never on
//! the packet path). A cluster has hundreds of nodes: a scan, or even a binary
//! search with its chain of dependent loads, per VXLAN packet would cost more than
//! the decapsulation itself; an open-addressing table at most half full answers with
//! one multiply and, nearly always, one probe.

use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VtepSet {
    /// Power-of-two sized, at most half full; 0 (0.0.0.0, never a node) is empty.
    slots: Vec<u32>,
    len: usize,
}

impl VtepSet {
    /// Whether `addr` is one of the nodes.
    #[inline]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let key = addr.to_bits();
        if key == 0 {
            return false;
        }
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = home(key) & mask;
        // At most half full, so an empty slot ends every probe sequence.
        for _ in 0..self.slots.len() {
            match self.slots.get(at) {
                Some(&k) if k == key => return true,
                Some(0) | None => return false,
                Some(_) => at = (at + 1) & mask,
            }
        }
        false
    }

    /// Number of distinct nodes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The nodes, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.slots
            .iter()
            .filter(|k| **k != 0)
            .map(|k| Ipv4Addr::from_bits(*k))
    }
}

impl FromIterator<Ipv4Addr> for VtepSet {
    fn from_iter<I: IntoIterator<Item = Ipv4Addr>>(addrs: I) -> Self {
        let keys: Vec<u32> = addrs
            .into_iter()
            .map(Ipv4Addr::to_bits)
            .filter(|k| *k != 0)
            .collect();
        let size = (keys.len() * 2).next_power_of_two().max(2);
        let mut set = VtepSet {
            slots: vec![0; size],
            len: 0,
        };
        let mask = size - 1;
        for key in keys {
            let mut at = home(key) & mask;
            while let Some(slot) = set.slots.get_mut(at) {
                if *slot == key {
                    break;
                }
                if *slot == 0 {
                    *slot = key;
                    set.len += 1;
                    break;
                }
                at = (at + 1) & mask;
            }
        }
        set
    }
}

impl<const N: usize> From<[Ipv4Addr; N]> for VtepSet {
    fn from(addrs: [Ipv4Addr; N]) -> Self {
        addrs.into_iter().collect()
    }
}

/// Fibonacci hashing: node addresses are often consecutive.
#[inline]
fn home(key: u32) -> usize {
    (key.wrapping_mul(0x9e37_79b9) >> 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_what_it_was_built_from() {
        let nodes: Vec<Ipv4Addr> = (0..=255u8)
            .flat_map(|a| [Ipv4Addr::new(198, 18, 0, a), Ipv4Addr::new(198, 18, a, 1)])
            .collect();
        let set: VtepSet = nodes.iter().copied().collect();
        assert_eq!(set.len(), 511, "198.18.0.1 twice, counted once");
        for a in &nodes {
            assert!(set.contains(*a), "{a}");
        }
        for a in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(10, 0, 0, 1),
        ] {
            assert!(!set.contains(a), "{a}");
        }
        let mut back: Vec<Ipv4Addr> = set.iter().collect();
        back.sort_unstable();
        let mut want = nodes.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(back, want);
    }

    #[test]
    fn empty_and_unspecified_contain_nothing() {
        assert!(!VtepSet::default().contains(Ipv4Addr::new(198, 18, 0, 1)));
        let set = VtepSet::from([Ipv4Addr::UNSPECIFIED]);
        assert!(set.is_empty());
        assert!(!set.contains(Ipv4Addr::UNSPECIFIED));
    }
}
