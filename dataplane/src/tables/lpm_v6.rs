//! IPv6 longest-prefix match: one hash map per prefix length in use, searched from
//! the longest length down. A node has few IPv6 prefix lengths (pod blocks, node
//! routes, a default), so a lookup is a handful of hash probes.

use std::collections::HashMap;

use crate::tables::routes::mask_v6;

#[derive(Debug, Clone, Default)]
pub(crate) struct PerLengthV6 {
    /// Longest length first.
    levels: Vec<(u8, HashMap<u128, u32, ahash::RandomState>)>,
}

impl PerLengthV6 {
    /// Builds from `(network, length, route number)` with host bits cleared.
    pub fn build(routes: &[(u128, u8, u32)]) -> Self {
        let mut levels: Vec<(u8, HashMap<u128, u32, ahash::RandomState>)> = Vec::new();
        for &(net, len, route) in routes {
            let pos = match levels.binary_search_by(|(l, _)| len.cmp(l)) {
                Ok(pos) => pos,
                Err(pos) => {
                    levels.insert(pos, (len, HashMap::default()));
                    pos
                }
            };
            if let Some((_, map)) = levels.get_mut(pos) {
                map.insert(net, route);
            }
        }
        PerLengthV6 { levels }
    }

    /// The route number of the longest prefix holding `addr`.
    #[inline]
    pub fn lookup(&self, addr: u128) -> Option<u32> {
        self.levels
            .iter()
            .find_map(|(len, map)| map.get(&(addr & mask_v6(*len))).copied())
    }
}
