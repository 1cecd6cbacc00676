//! Longest-prefix-match route table: where does a destination address live?
//!
//! NOTE(skeleton): the lookup here is a correct linear scan so that the pipeline can be
//! written against the final API; `tables` work replaces it with a fast structure
//! without changing the public signatures.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::frame::PortId;
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
        if self.entries.iter().any(|(p, _)| *p == prefix) {
            return Err(DuplicateRoute(prefix));
        }
        self.entries.push((prefix, target));
        Ok(self)
    }

    pub fn build(mut self) -> RouteTable {
        self.entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        RouteTable {
            entries: self.entries,
        }
    }
}

/// Immutable longest-prefix-match table for IPv4 and IPv6.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    entries: Vec<(Prefix, RouteTarget)>,
}

impl RouteTable {
    pub fn lookup_v4(&self, dst: Ipv4Addr) -> Option<&RouteTarget> {
        self.lookup(IpAddr::V4(dst))
    }

    pub fn lookup_v6(&self, dst: Ipv6Addr) -> Option<&RouteTarget> {
        self.lookup(IpAddr::V6(dst))
    }

    pub fn lookup(&self, dst: IpAddr) -> Option<&RouteTarget> {
        self.entries
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every route, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &RouteTarget)> {
        self.entries.iter().map(|(p, t)| (p, t))
    }
}
