//! Per-worker connection tracking with source NAT (masquerade).
//!
//! Every worker owns one [`SnatShard`] and a disjoint slice of the SNAT port range
//! ([`port_slice`]), so the destination port of a reply names the worker that owns
//! the flow ([`owner_of_port`]); the pipeline hands replies that RSS put elsewhere to
//! that worker.
//!
//! Mapping behaviour: **address-and-port-dependent** (RFC 4787 §4.1). A NAT port is
//! unique per (protocol, remote address, remote port, NAT address), so the same port
//! serves many destinations at once and a pod's socket may get different NAT ports
//! for different destinations. Filtering is the same: only the remote a flow was
//! opened to can use it.
//!
//! Layout: flows live in a slab of 40-byte entries; two open-addressing indexes of
//! 8-byte buckets (outbound key, inbound key) at most half full map keys to slab
//! slots, and a lazy timing wheel finds expired entries. All of it is allocated when
//! the shard is created, so the packet path never allocates.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use crate::tables::conntrack::{Direction, FlowKey, FlowState, L4Proto, Timeouts};
use crate::tables::flow_index::FlowIndex;
use crate::tables::flow_slab::{Entry, FlowSlab};
use crate::time::Now;
use crate::verdict::{DropReason, WorkerId};

/// The address and port a flow is translated to (outbound) or from (inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatBinding {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// Why a new flow could not be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SnatError {
    #[error("connection tracking table is full and no entry has expired")]
    TableFull,
    #[error("no free SNAT port in this worker's slice for the destination")]
    PortsExhausted,
}

impl From<SnatError> for DropReason {
    fn from(e: SnatError) -> Self {
        match e {
            SnatError::TableFull => DropReason::ConntrackFull,
            SnatError::PortsExhausted => DropReason::SnatPortsExhausted,
        }
    }
}

/// How SNAT is split between workers and how big each shard is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatConfig {
    /// Number of workers sharing the port range.
    pub workers: u16,
    /// NAT ports (and ICMP echo identifiers) to hand out, split between workers.
    pub port_range: RangeInclusive<u16>,
    /// Flows each worker tracks at most.
    pub capacity_per_worker: usize,
    pub timeouts: Timeouts,
}

impl Default for SnatConfig {
    fn default() -> Self {
        SnatConfig {
            workers: 1,
            // Ports below 1024 stay out: a remote may treat them as privileged.
            port_range: 1024..=65535,
            capacity_per_worker: 262_144,
            timeouts: Timeouts::default(),
        }
    }
}

/// The ports `worker` allocates from: slice `worker` of `workers` near-equal slices.
/// `None` when the worker does not exist or its slice is empty.
pub fn port_slice(config: &SnatConfig, worker: WorkerId) -> Option<RangeInclusive<u16>> {
    let lo = u64::from(*config.port_range.start());
    let hi = u64::from(*config.port_range.end());
    let workers = u64::from(config.workers);
    let w = u64::from(worker);
    if hi < lo || w >= workers {
        return None;
    }
    let len = hi - lo + 1;
    let start = lo + w * len / workers;
    let end = lo + (w + 1) * len / workers; // exclusive
    if end <= start {
        return None;
    }
    Some(u16::try_from(start).ok()?..=u16::try_from(end - 1).ok()?)
}

/// The worker whose slice holds `port`; `None` outside the SNAT range.
pub fn owner_of_port(config: &SnatConfig, port: u16) -> Option<WorkerId> {
    let lo = u64::from(*config.port_range.start());
    let hi = u64::from(*config.port_range.end());
    let p = u64::from(port);
    if config.workers == 0 || p < lo || p > hi {
        return None;
    }
    let len = hi - lo + 1;
    // Inverse of `port_slice`: the largest w with lo + w*len/workers <= p.
    let w = ((p - lo + 1) * u64::from(config.workers) - 1) / len;
    WorkerId::try_from(w).ok()
}

/// One worker's connection tracking and NAT table. See the module docs.
#[derive(Debug)]
pub struct SnatShard {
    worker: WorkerId,
    slab: FlowSlab,
    by_outbound: FlowIndex,
    by_inbound: FlowIndex,
    hasher: ahash::RandomState,
    timeouts: Timeouts,
    /// This worker's ports: `slice_lo ..= slice_lo + slice_len - 1`.
    slice_lo: u16,
    slice_len: u32,
    /// Offset in the slice where the next port search starts.
    cursor: u32,
}

/// How many expired entries a full table examines before giving up.
const RECLAIM_BUDGET: usize = 1024;

/// Pod side of a flow, normalised: ICMP echo keeps its identifier on the pod side
/// only, since the reply carries the NAT identifier.
#[inline]
fn remote_port(proto: L4Proto, port: u16) -> u16 {
    if proto == L4Proto::IcmpEcho { 0 } else { port }
}

impl SnatShard {
    pub fn new(worker: WorkerId, config: &SnatConfig) -> Self {
        let (slice_lo, slice_len) = match port_slice(config, worker) {
            Some(r) => (*r.start(), u32::from(*r.end()) - u32::from(*r.start()) + 1),
            None => (0, 0),
        };
        let capacity = config
            .capacity_per_worker
            .min(crate::tables::flow_slab::MAX_SLOTS);
        SnatShard {
            worker,
            slab: FlowSlab::with_capacity(capacity),
            by_outbound: FlowIndex::with_capacity(capacity),
            by_inbound: FlowIndex::with_capacity(capacity),
            hasher: ahash::RandomState::new(),
            timeouts: config.timeouts,
            slice_lo,
            slice_len,
            cursor: 0,
        }
    }

    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// The ports this shard allocates from (empty when it has none).
    pub fn ports(&self) -> RangeInclusive<u16> {
        if self.slice_len == 0 {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        let end = u32::from(self.slice_lo) + self.slice_len - 1;
        self.slice_lo..=u16::try_from(end).unwrap_or(u16::MAX)
    }

    #[inline]
    fn hash(&self, proto: L4Proto, a1: u32, p1: u16, a2: u32, p2: u16) -> u32 {
        let a = (u64::from(a1) << 32) | u64::from(a2);
        let b = (u64::from(p1) << 32) | (u64::from(p2) << 16) | u64::from(proto.code());
        self.hasher.hash_one((a, b)) as u32
    }

    #[inline]
    fn out_hash(&self, proto: L4Proto, pod: u32, pod_port: u16, remote: u32, rport: u16) -> u32 {
        self.hash(proto, pod, pod_port, remote, rport)
    }

    #[inline]
    fn in_hash(&self, proto: L4Proto, remote: u32, rport: u16, nat: u32, nat_port: u16) -> u32 {
        self.hash(proto, remote, rport, nat, nat_port)
    }

    fn find_outbound(
        &self,
        proto: L4Proto,
        pod: u32,
        pod_port: u16,
        remote: u32,
        rport: u16,
    ) -> Option<u32> {
        let h = self.out_hash(proto, pod, pod_port, remote, rport);
        let code = proto.code();
        let slab = &self.slab;
        self.by_outbound
            .find(h, |s| {
                slab.get(s).is_some_and(|e| {
                    e.pod_addr == pod
                        && e.remote_addr == remote
                        && e.pod_port == pod_port
                        && e.remote_port == rport
                        && e.proto == code
                })
            })
            .map(|hit| hit.slot)
    }

    fn find_inbound(
        &self,
        proto: L4Proto,
        remote: u32,
        rport: u16,
        nat: u32,
        nat_port: u16,
    ) -> Option<u32> {
        let h = self.in_hash(proto, remote, rport, nat, nat_port);
        let code = proto.code();
        let slab = &self.slab;
        self.by_inbound
            .find(h, |s| {
                slab.get(s).is_some_and(|e| {
                    e.remote_addr == remote
                        && e.nat_addr == nat
                        && e.remote_port == rport
                        && e.nat_port == nat_port
                        && e.proto == code
                })
            })
            .map(|hit| hit.slot)
    }

    /// Removes `slot` from both indexes and frees it.
    fn remove_slot(&mut self, slot: u32) {
        let Some(e) = self.slab.get(slot).copied() else {
            return;
        };
        let proto = match e.proto {
            1 => L4Proto::Tcp,
            2 => L4Proto::Udp,
            _ => L4Proto::IcmpEcho,
        };
        let oh = self.out_hash(proto, e.pod_addr, e.pod_port, e.remote_addr, e.remote_port);
        if let Some(hit) = self.by_outbound.find(oh, |s| s == slot) {
            self.by_outbound.remove(hit.bucket);
        }
        let ih = self.in_hash(proto, e.remote_addr, e.remote_port, e.nat_addr, e.nat_port);
        if let Some(hit) = self.by_inbound.find(ih, |s| s == slot) {
            self.by_inbound.remove(hit.bucket);
        }
        self.slab.free(slot);
    }

    /// Applies one packet to an entry: new state, refreshed expiry; relinks it in the
    /// wheel only when the timeout got shorter.
    #[inline]
    fn touch(&mut self, slot: u32, dir: Direction, tcp_flags: u8, now: Now) {
        let timeouts = self.timeouts;
        let Some(e) = self.slab.get_mut(slot) else {
            return;
        };
        let old = FlowState::from_u8(e.state);
        let new = old.next(dir, tcp_flags);
        let old_expires = e.expires;
        e.state = new as u8;
        e.expires = now.after(new.timeout(&timeouts)).millis();
        if e.expires < old_expires {
            self.slab.requeue(slot);
        }
    }

    /// A pod's outbound packet (key as on the wire, src = pod): the existing binding
    /// refreshed, or a new one from this worker's port slice. Returns the translated
    /// source.
    pub fn outbound(
        &mut self,
        key: &FlowKey,
        nat_addr: Ipv4Addr,
        tcp_flags: u8,
        now: Now,
    ) -> Result<NatBinding, SnatError> {
        let proto = key.proto;
        let pod = u32::from(key.src);
        let remote = u32::from(key.dst);
        let rport = remote_port(proto, key.dst_port);
        let nat = u32::from(nat_addr);
        if let Some(slot) = self.find_outbound(proto, pod, key.src_port, remote, rport) {
            let (expires, entry_nat, nat_port) = self
                .slab
                .get(slot)
                .map_or((0, 0, 0), |e| (e.expires, e.nat_addr, e.nat_port));
            if expires > now.millis() && entry_nat == nat {
                self.touch(slot, Direction::Outbound, tcp_flags, now);
                return Ok(NatBinding {
                    addr: nat_addr,
                    port: nat_port,
                });
            }
            // Expired, or the node's address changed: start over as a new flow.
            self.remove_slot(slot);
        }
        self.create(proto, pod, key.src_port, remote, rport, nat, tcp_flags, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        proto: L4Proto,
        pod: u32,
        pod_port: u16,
        remote: u32,
        rport: u16,
        nat: u32,
        tcp_flags: u8,
        now: Now,
    ) -> Result<NatBinding, SnatError> {
        if self.slab.len() >= self.slab.capacity() {
            self.reclaim(now, RECLAIM_BUDGET, 1);
            if self.slab.len() >= self.slab.capacity() {
                return Err(SnatError::TableFull);
            }
        }
        let nat_port = self.pick_port(proto, remote, rport, nat)?;
        let state = FlowState::initial(proto, tcp_flags);
        let entry = Entry {
            expires: now.after(state.timeout(&self.timeouts)).millis(),
            pod_addr: pod,
            remote_addr: remote,
            nat_addr: nat,
            pod_port,
            remote_port: rport,
            nat_port,
            proto: proto.code(),
            state: state as u8,
            ..Entry::new()
        };
        let slot = self.slab.alloc(entry, now).ok_or(SnatError::TableFull)?;
        let oh = self.out_hash(proto, pod, pod_port, remote, rport);
        self.by_outbound.insert(oh, slot);
        let ih = self.in_hash(proto, remote, rport, nat, nat_port);
        self.by_inbound.insert(ih, slot);
        Ok(NatBinding {
            addr: Ipv4Addr::from(nat),
            port: nat_port,
        })
    }

    /// A port of this worker's slice not in use towards (proto, remote, rport).
    ///
    /// The search starts where the last one ended, so in steady state the first
    /// candidate is free. It may visit the whole slice when one destination holds
    /// most of it; that is bounded (a slice has at most 64 Ki ports) and only happens
    /// when the alternative is refusing the flow.
    fn pick_port(
        &mut self,
        proto: L4Proto,
        remote: u32,
        rport: u16,
        nat: u32,
    ) -> Result<u16, SnatError> {
        for _ in 0..self.slice_len {
            let offset = self.cursor;
            self.cursor = if offset + 1 >= self.slice_len {
                0
            } else {
                offset + 1
            };
            let Ok(port) = u16::try_from(u32::from(self.slice_lo) + offset) else {
                continue;
            };
            if self.find_inbound(proto, remote, rport, nat, port).is_none() {
                return Ok(port);
            }
        }
        Err(SnatError::PortsExhausted)
    }

    /// A packet arriving for the NAT address (key as on the wire: src = remote,
    /// dst = nat_addr:nat_port). Returns the original pod address/port, refreshing
    /// the entry.
    pub fn inbound(&mut self, key: &FlowKey, tcp_flags: u8, now: Now) -> Option<NatBinding> {
        let slot = self.inbound_slot(key)?;
        let e = self.slab.get(slot)?;
        if e.expires <= now.millis() {
            return None;
        }
        let binding = NatBinding {
            addr: Ipv4Addr::from(e.pod_addr),
            port: e.pod_port,
        };
        self.touch(slot, Direction::Inbound, tcp_flags, now);
        Some(binding)
    }

    /// Same as [`SnatShard::inbound`] but without refreshing or state change (for
    /// ICMP errors quoting a flow). An entry that expired but was not yet swept
    /// still answers: there is no clock here, and an ICMP error for a flow that just
    /// timed out is still useful to the pod.
    pub fn peek_inbound(&self, key: &FlowKey) -> Option<NatBinding> {
        let slot = self.inbound_slot(key)?;
        let e = self.slab.get(slot)?;
        Some(NatBinding {
            addr: Ipv4Addr::from(e.pod_addr),
            port: e.pod_port,
        })
    }

    #[inline]
    fn inbound_slot(&self, key: &FlowKey) -> Option<u32> {
        let proto = key.proto;
        self.find_inbound(
            proto,
            u32::from(key.src),
            remote_port(proto, key.src_port),
            u32::from(key.dst),
            key.dst_port,
        )
    }

    /// The state of the flow a pod's outbound `key` belongs to, if tracked.
    pub fn state_of(&self, key: &FlowKey) -> Option<FlowState> {
        let proto = key.proto;
        let rport = remote_port(proto, key.dst_port);
        let slot = self.find_outbound(
            proto,
            u32::from(key.src),
            key.src_port,
            u32::from(key.dst),
            rport,
        )?;
        self.slab.get(slot).map(|e| FlowState::from_u8(e.state))
    }

    fn reclaim(&mut self, now: Now, mut budget: usize, stop_after: usize) -> usize {
        let mut reclaimed = 0;
        while reclaimed < stop_after {
            let Some(slot) = self.slab.next_expired(now, &mut budget) else {
                break;
            };
            self.remove_slot(slot);
            reclaimed += 1;
        }
        reclaimed
    }

    /// Reclaims expired entries, examining at most `budget` of them; returns how
    /// many were reclaimed. Call it regularly (e.g. once per idle poll).
    pub fn sweep(&mut self, now: Now, budget: usize) -> usize {
        self.reclaim(now, budget, usize::MAX)
    }

    /// Flows tracked now (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    /// Flows this shard tracks at most.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Heap bytes this shard holds (slab, both indexes and the wheel).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.slab.memory_bytes()
            + self.by_outbound.memory_bytes()
            + self.by_inbound.memory_bytes()
    }
}
