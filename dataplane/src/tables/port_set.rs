//! A set of TCP/UDP ports as one bit each (8 KiB): membership is one load and a
//! mask, cheap enough to stand in front of a hash lookup on the packet path and
//! turn away the packets that cannot match (Service replies: only a few endpoint
//! ports are ever in use).

/// Ports as bits; empty (and allocation-free) until the first insert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortSet(Vec<u64>);

const WORDS: usize = 65_536 / 64;

impl PortSet {
    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.0
            .get(usize::from(port >> 6))
            .is_some_and(|w| w & (1 << (port & 63)) != 0)
    }

    pub fn insert(&mut self, port: u16) {
        if self.0.is_empty() {
            self.0 = vec![0; WORDS];
        }
        if let Some(w) = self.0.get_mut(usize::from(port >> 6)) {
            *w |= 1 << (port & 63);
        }
    }

    /// Empties the set, keeping its memory.
    pub fn clear(&mut self) {
        self.0.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_ports_inserted() {
        let mut s = PortSet::default();
        assert!(!s.contains(53));
        for p in [0, 53, 63, 64, 5353, u16::MAX] {
            s.insert(p);
        }
        for p in [0, 53, 63, 64, 5353, u16::MAX] {
            assert!(s.contains(p), "{p}");
        }
        assert!(!s.contains(54) && !s.contains(65) && !s.contains(65_534));
        s.clear();
        assert!(!s.contains(53) && !s.contains(u16::MAX));
    }
}
