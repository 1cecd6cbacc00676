//! Longest-prefix-match route table: where does a destination address live?
//!
//! IPv4 uses a DIR-16-8-8 multibit trie (`lpm_v4`), IPv6 per-length hash
//! maps (`lpm_v6`); both map an address to a route number, an index into
//! one `Vec` of routes, so each target is stored once. The built table is behind an
//! `Arc`: cloning a [`RouteTable`] (or the snapshot holding it) copies no cells.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use crate::frame::PortId;
use crate::tables::lpm_v4::Dir16_8_8;
use crate::tables::lpm_v6::PerLengthV6;
use crate::wire::MacAddr;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix string or value that is not a valid CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("invalid prefix {0:?}: expected ADDRESS/LENGTH such as 198.19.1.0/24")]
    Syntax(String),
    #[error("prefix length {len} is too long for {addr} (at most {max})")]
    LengthTooLong { addr: IpAddr, len: u8, max: u8 },
}

impl Prefix {
    /// A prefix; host bits in `addr` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::LengthTooLong { addr, len, max });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(len))),
        };
        Ok(Prefix { addr, len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits (a prefix is never "empty": /0 holds everything).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.len) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

pub(crate) fn mask_v4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

pub(crate) fn mask_v6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.to_string()))?;
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let len: u8 = len
            .trim()
            .parse()
            .map_err(|_| PrefixError::Syntax(s.to_string()))?;
        Prefix::new(addr, len)
    }
}

/// Where packets for a prefix go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// A pod on this node: deliver on `port` with destination MAC `mac`.
    LocalPod { port: PortId, mac: MacAddr },
    /// A pod block on another node, reached over VXLAN (overlay mode).
    /// `next_hop_mac` is the outer destination MAC: the node itself when it shares
    /// the uplink's subnet, else the uplink's gateway router.
    VxlanNode {
        node_addr: Ipv4Addr,
        vtep_mac: MacAddr,
        vni: u32,
        next_hop_mac: MacAddr,
    },
    /// A pod block on another node, routed as is (underlay mode).
    UnderlayNode {
        next_hop: IpAddr,
        next_hop_mac: MacAddr,
    },
    /// Not in the cluster: out of the uplink to its default next hop (SNAT applies
    /// here when enabled and the destination is outside the no-SNAT ranges).
    Outside { next_hop_mac: MacAddr },
}

/// Duplicate prefix in one table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route table already has an entry for {0}")]
pub struct DuplicateRoute(pub Prefix);

/// Collects routes, then builds an immutable [`RouteTable`].
#[derive(Debug, Default, Clone)]
pub struct RouteTableBuilder {
    entries: Vec<(Prefix, RouteTarget)>,
    seen: HashSet<Prefix>,
}

impl RouteTableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; a second route for the same prefix is refused.
    pub fn add(
        &mut self,
        prefix: Prefix,
        target: RouteTarget,
    ) -> Result<&mut Self, DuplicateRoute> {
        if !self.seen.insert(prefix) {
            return Err(DuplicateRoute(prefix));
        }
        self.entries.push((prefix, target));
        Ok(self)
    }

    /// Routes added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn build(mut self) -> RouteTable {
        // Longest first is the order `iter` promises; route numbers index this Vec.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        // The trie paints shortest first, so walk the routes backwards.
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, (p, _)) in self.entries.iter().enumerate().rev() {
            let Ok(i) = u32::try_from(i) else { continue };
            match p.addr() {
                IpAddr::V4(a) => v4.push((u32::from(a), p.len(), i)),
                IpAddr::V6(a) => v6.push((u128::from(a), p.len(), i)),
            }
        }
        // More than 2^31 routes cannot be numbered; such a table is not buildable in
        // memory anyway, so an empty trie (no route) is the honest outcome.
        let v4 = Dir16_8_8::build(&v4).unwrap_or_default();
        let v6 = PerLengthV6::build(&v6);
        RouteTable {
            inner: Arc::new(Lpm {
                entries: self.entries,
                v4,
                v6,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Lpm {
    entries: Vec<(Prefix, RouteTarget)>,
    v4: Dir16_8_8,
    v6: PerLengthV6,
}

/// How many addresses [`RouteTable::lookup_v4_batch`] resolves level by level at once.
const BATCH: usize = 16;

/// Immutable longest-prefix-match table for IPv4 and IPv6.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    inner: Arc<Lpm>,
}

impl RouteTable {
    #[inline]
    pub fn lookup_v4(&self, dst: Ipv4Addr) -> Option<&RouteTarget> {
        self.target(self.inner.v4.lookup(u32::from(dst)).checked_sub(1)?)
    }

    pub fn lookup_v6(&self, dst: Ipv6Addr) -> Option<&RouteTarget> {
        self.target(self.inner.v6.lookup(u128::from(dst))?)
    }

    pub fn lookup(&self, dst: IpAddr) -> Option<&RouteTarget> {
        match dst {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// Looks up `dsts[i]` into `out[i]` for every `i` both slices have, with the
    /// memory accesses of a batch overlapped (see `lpm_v4`); the same
    /// results as [`RouteTable::lookup_v4`] one by one.
    pub fn lookup_v4_batch<'a>(&'a self, dsts: &[Ipv4Addr], out: &mut [Option<&'a RouteTarget>]) {
        let mut dst_chunks = dsts.chunks_exact(BATCH);
        let mut out_chunks = out.chunks_exact_mut(BATCH);
        for (d, o) in (&mut dst_chunks).zip(&mut out_chunks) {
            let mut addrs = [0u32; BATCH];
            for (a, &ip) in addrs.iter_mut().zip(d) {
                *a = u32::from(ip);
            }
            let mut routes = [0u32; BATCH];
            self.inner.v4.lookup_batch(&addrs, &mut routes);
            for (slot, r) in o.iter_mut().zip(routes) {
                *slot = r.checked_sub(1).and_then(|r| self.target(r));
            }
        }
        for (&ip, slot) in dst_chunks
            .remainder()
            .iter()
            .zip(out_chunks.into_remainder())
        {
            *slot = self.lookup_v4(ip);
        }
    }

    #[inline]
    fn target(&self, route: u32) -> Option<&RouteTarget> {
        self.inner.entries.get(route as usize).map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Every route, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &RouteTarget)> {
        self.inner.entries.iter().map(|(p, t)| (p, t))
    }

    /// Bytes held by the IPv4 trie (for logs and the benchmark report).
    pub fn v4_memory_bytes(&self) -> usize {
        self.inner.v4.memory_bytes()
    }
}
