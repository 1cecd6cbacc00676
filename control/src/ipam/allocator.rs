//! One block of `mask_size` bits per node, carved from one IPv4 CIDR, lowest free first.
//!
//! Lowest-free (rather than round-robin) keeps blocks dense and makes allocation a
//! pure function of the set of taken blocks, so a controller that restarts and
//! rebuilds from the Nodes hands out exactly what its predecessor would have.
//! Blocks are numbered by their offset in the CIDR; `taken` maps number -> node and
//! `by_node` is its inverse. `free_floor` is a lower bound on the lowest free number
//! so a run of allocations does not rescan the taken prefix each time.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use hybridway_dataplane::tables::Prefix;

/// The smallest block: a gateway address and at least one pod (plus network and
/// broadcast) needs a /30.
pub const MAX_MASK_SIZE: u8 = 30;

/// Parameters that cannot describe any block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("hybridPodCIDR {0} is not an IPv4 CIDR")]
    NotIpv4(Prefix),
    #[error(
        "nodeMaskSize {mask} does not fit hybridPodCIDR {cidr} (it must be between {} and {MAX_MASK_SIZE})",
        cidr.len()
    )]
    MaskDoesNotFit { cidr: Prefix, mask: u8 },
    #[error("hybridPodCIDR {cidr} has no free /{mask} block left ({total} blocks, all taken)")]
    Exhausted { cidr: Prefix, mask: u8, total: u64 },
}

/// Why a node cannot keep a block it already holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("block {block} of node {node} is outside hybridPodCIDR {cidr}")]
    Outside {
        node: String,
        block: Prefix,
        cidr: Prefix,
    },
    #[error("block {block} of node {node} is not a /{mask} block (nodeMaskSize is {mask})")]
    WrongSize {
        node: String,
        block: Prefix,
        mask: u8,
    },
    #[error("block {} of node {} already belongs to node {}", .0.block, .0.node, .0.owner)]
    Taken(Duplicate),
    #[error("node {node} already holds block {held}, not {block}")]
    NodeHoldsOther {
        node: String,
        held: Prefix,
        block: Prefix,
    },
}

/// Two nodes that claim one block: `owner` keeps it, `node` does not get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub block: Prefix,
    pub owner: String,
    pub node: String,
}

/// Sans-IO allocator of per-node blocks.
#[derive(Clone, Debug)]
pub struct NodeBlockAllocator {
    base: u32,
    cidr: Prefix,
    mask: u8,
    total: u64,
    taken: BTreeMap<u64, String>,
    by_node: HashMap<String, u64>,
    free_floor: u64,
}

impl NodeBlockAllocator {
    /// An empty allocator for `cidr` split into `/mask` blocks.
    pub fn new(cidr: Prefix, mask: u8) -> Result<Self, AllocError> {
        let IpAddr::V4(base) = cidr.addr() else {
            return Err(AllocError::NotIpv4(cidr));
        };
        if mask < cidr.len() || mask > MAX_MASK_SIZE {
            return Err(AllocError::MaskDoesNotFit { cidr, mask });
        }
        Ok(NodeBlockAllocator {
            base: u32::from(base),
            cidr,
            mask,
            total: 1u64 << (mask - cidr.len()),
            taken: BTreeMap::new(),
            by_node: HashMap::new(),
            free_floor: 0,
        })
    }

    pub fn cidr(&self) -> Prefix {
        self.cidr
    }

    pub fn mask_size(&self) -> u8 {
        self.mask
    }

    /// Number of blocks the CIDR holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn allocated(&self) -> u64 {
        self.taken.len() as u64
    }

    pub fn free(&self) -> u64 {
        self.total - self.allocated()
    }

    /// The block `node` holds, if any.
    pub fn block_of(&self, node: &str) -> Option<Prefix> {
        self.by_node.get(node).map(|&n| self.block(n))
    }

    /// The node holding `block`, if any.
    pub fn owner_of(&self, block: &Prefix) -> Option<&str> {
        let n = self.number(block).ok()?;
        self.taken.get(&n).map(String::as_str)
    }

    /// Records that `node` already holds `block` (rebuilding from the Nodes, or adopting
    /// a block written by an earlier run). Idempotent for the same pair.
    pub fn claim(&mut self, node: &str, block: Prefix) -> Result<(), ClaimError> {
        let n = self.number(&block).map_err(|e| e.for_node(node))?;
        if let Some(&held) = self.by_node.get(node) {
            if held == n {
                return Ok(());
            }
            return Err(ClaimError::NodeHoldsOther {
                node: node.to_string(),
                held: self.block(held),
                block,
            });
        }
        if let Some(owner) = self.taken.get(&n) {
            return Err(ClaimError::Taken(Duplicate {
                block,
                owner: owner.clone(),
                node: node.to_string(),
            }));
        }
        self.taken.insert(n, node.to_string());
        self.by_node.insert(node.to_string(), n);
        Ok(())
    }

    /// The block of `node`: the one it holds, else the lowest free one (now its).
    pub fn allocate(&mut self, node: &str) -> Result<Prefix, AllocError> {
        if let Some(b) = self.block_of(node) {
            return Ok(b);
        }
        let mut n = self.free_floor;
        // `taken` is ordered: walk the run of taken numbers starting at the floor.
        for (&t, _) in self.taken.range(n..) {
            if t != n {
                break;
            }
            n += 1;
        }
        if n >= self.total {
            return Err(AllocError::Exhausted {
                cidr: self.cidr,
                mask: self.mask,
                total: self.total,
            });
        }
        self.taken.insert(n, node.to_string());
        self.by_node.insert(node.to_string(), n);
        self.free_floor = n + 1;
        Ok(self.block(n))
    }

    /// Frees the block of `node` (deleted, or its write failed). Returns it.
    pub fn release(&mut self, node: &str) -> Option<Prefix> {
        let n = self.by_node.remove(node)?;
        self.taken.remove(&n);
        self.free_floor = self.free_floor.min(n);
        Some(self.block(n))
    }

    /// Frees every block whose node `keep` rejects (nodes gone while nobody watched).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<(String, Prefix)> {
        let gone: Vec<String> = self.by_node.keys().filter(|n| !keep(n)).cloned().collect();
        gone.into_iter()
            .filter_map(|n| self.release(&n).map(|b| (n, b)))
            .collect()
    }

    /// Every (node, block), in block order.
    pub fn blocks(&self) -> impl Iterator<Item = (&str, Prefix)> {
        self.taken
            .iter()
            .map(|(&n, node)| (node.as_str(), self.block(n)))
    }

    fn block(&self, n: u64) -> Prefix {
        // n < total <= 2^(32 - cidr.len()) blocks of 2^(32 - mask) addresses: fits in u32.
        let offset = (n << (32 - u32::from(self.mask))) as u32;
        let addr = Ipv4Addr::from(self.base.wrapping_add(offset));
        Prefix::new(IpAddr::V4(addr), self.mask).unwrap_or(self.cidr)
    }

    fn number(&self, block: &Prefix) -> Result<u64, BlockError> {
        let IpAddr::V4(addr) = block.addr() else {
            return Err(BlockError::Outside(*block, self.cidr));
        };
        if block.len() < self.cidr.len() || !self.cidr.contains(block.addr()) {
            return Err(BlockError::Outside(*block, self.cidr));
        }
        if block.len() != self.mask {
            return Err(BlockError::WrongSize(*block, self.mask));
        }
        Ok(u64::from(u32::from(addr) - self.base) >> (32 - u32::from(self.mask)))
    }
}

/// A block that is not one of ours, before we know whose it is.
enum BlockError {
    Outside(Prefix, Prefix),
    WrongSize(Prefix, u8),
}

impl BlockError {
    fn for_node(self, node: &str) -> ClaimError {
        match self {
            BlockError::Outside(block, cidr) => ClaimError::Outside {
                node: node.to_string(),
                block,
                cidr,
            },
            BlockError::WrongSize(block, mask) => ClaimError::WrongSize {
                node: node.to_string(),
                block,
                mask,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::collections::HashSet;
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::from_str(s).unwrap()
    }

    fn hybrid() -> NodeBlockAllocator {
        NodeBlockAllocator::new(p("198.19.128.0/17"), 24).unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_is_idempotent() {
        let mut a = hybrid();
        assert_eq!(a.total(), 128);
        assert_eq!(a.allocate("n1").unwrap(), p("198.19.128.0/24"));
        assert_eq!(a.allocate("n2").unwrap(), p("198.19.129.0/24"));
        assert_eq!(a.allocate("n1").unwrap(), p("198.19.128.0/24"));
        assert_eq!(a.release("n1"), Some(p("198.19.128.0/24")));
        assert_eq!(a.allocate("n3").unwrap(), p("198.19.128.0/24"));
        assert_eq!(a.allocate("n4").unwrap(), p("198.19.130.0/24"));
        assert_eq!((a.allocated(), a.free()), (3, 125));
    }

    #[test]
    fn rebuild_reports_duplicates_and_foreign_blocks() {
        let mut a = hybrid();
        a.claim("n1", p("198.19.130.0/24")).unwrap();
        a.claim("n1", p("198.19.130.0/24")).unwrap();
        assert_eq!(
            a.claim("n2", p("198.19.130.0/24")),
            Err(ClaimError::Taken(Duplicate {
                block: p("198.19.130.0/24"),
                owner: "n1".into(),
                node: "n2".into()
            }))
        );
        let e = a.claim("n3", p("198.19.0.0/24")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "block 198.19.0.0/24 of node n3 is outside hybridPodCIDR 198.19.128.0/17"
        );
        assert!(matches!(
            a.claim("n4", p("198.19.131.0/25")),
            Err(ClaimError::WrongSize { .. })
        ));
        assert!(matches!(
            a.claim("n1", p("198.19.131.0/24")),
            Err(ClaimError::NodeHoldsOther { .. })
        ));
        // The claimed block is skipped; the two below it are handed out first.
        assert_eq!(a.allocate("x").unwrap(), p("198.19.128.0/24"));
        assert_eq!(a.allocate("y").unwrap(), p("198.19.129.0/24"));
        assert_eq!(a.allocate("z").unwrap(), p("198.19.131.0/24"));
    }

    #[test]
    fn mask_must_fit_and_exhaustion_is_an_error() {
        let e = NodeBlockAllocator::new(p("198.19.128.0/17"), 16).unwrap_err();
        assert_eq!(
            e.to_string(),
            "nodeMaskSize 16 does not fit hybridPodCIDR 198.19.128.0/17 (it must be between 17 and 30)"
        );
        assert!(NodeBlockAllocator::new(p("198.19.128.0/17"), 31).is_err());
        assert!(NodeBlockAllocator::new(p("2001:db8::/64"), 80).is_err());
        let mut a = NodeBlockAllocator::new(p("198.19.128.0/23"), 24).unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        assert!(matches!(
            a.allocate("c"),
            Err(AllocError::Exhausted { total: 2, .. })
        ));
        assert_eq!(
            a.retain(|n| n != "a"),
            vec![("a".into(), p("198.19.128.0/24"))]
        );
        assert_eq!(a.allocate("c").unwrap(), p("198.19.128.0/24"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u8),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40).prop_map(Op::Allocate),
            (0u8..40).prop_map(Op::Release)
        ]
    }

    proptest! {
        /// Whatever the order of allocations and releases: no block has two nodes,
        /// every block is inside the CIDR and of the mask size, each allocation is
        /// the lowest free block, and a rebuild from the blocks gives the same answers.
        #[test]
        fn never_two_nodes_per_block(ops in proptest::collection::vec(op(), 0..200)) {
            let cidr = p("198.19.128.0/19");
            let mut a = NodeBlockAllocator::new(cidr, 24).unwrap();
            for op in ops {
                match op {
                    Op::Allocate(n) => {
                        let name = format!("n{n}");
                        let had = a.block_of(&name);
                        let lowest = (0..a.total())
                            .map(|i| a.block(i))
                            .find(|b| a.owner_of(b).is_none());
                        match a.allocate(&name) {
                            Ok(b) => {
                                prop_assert!(cidr.contains(b.addr()) && b.len() == 24);
                                prop_assert_eq!(Some(b), had.or(lowest));
                            }
                            Err(_) => prop_assert!(had.is_none() && lowest.is_none()),
                        }
                    }
                    Op::Release(n) => { a.release(&format!("n{n}")); }
                }
                let blocks: Vec<_> = a.blocks().map(|(n, b)| (n.to_string(), b)).collect();
                let distinct: HashSet<_> = blocks.iter().map(|(_, b)| *b).collect();
                prop_assert_eq!(distinct.len(), blocks.len());
                let mut rebuilt = NodeBlockAllocator::new(cidr, 24).unwrap();
                for (n, b) in &blocks {
                    rebuilt.claim(n, *b).unwrap();
                }
                let mut probe = a.clone();
                prop_assert_eq!(rebuilt.allocate("probe").ok(), probe.allocate("probe").ok());
            }
        }
    }
}
