//! Per-worker connection tracking with source NAT (masquerade).
//!
//! **Which worker translates a flow: the one that owns its destination.** Every
//! worker allocates from the *whole* NAT port range, and the remote address and
//! port of a flow pick the worker that translates it ([`owner_of_remote`], a fixed
//! hash both directions compute alike: the destination of a pod's packet, the
//! source of a reply). The pipeline hands a pod's packet, or a reply, that arrived
//! on another worker to the owner. The alternative, a slice of the range per
//! worker, strands ports: a pod's traffic often arrives on one worker only (one
//! veth, one queue), and with two workers that pod could reach a destination
//! through half the range while the other half sat idle. Keyed by destination,
//! each destination has every port of the range (tens of thousands with the
//! default range) whatever the number of workers; the price is that one busy
//! destination is translated by one core.
//!
//! Mapping behaviour: **address-and-port-dependent** (RFC 4787 §4.1). A NAT port is
//! unique per (protocol, remote address, remote port, NAT address), so the same port
//! serves many destinations at once and a pod's socket may get different NAT ports
//! for different destinations. Filtering is the same: only the remote a flow was
//! opened to can use it. The pod's own source port is kept when it lies in the
//! range and is free towards that remote, as the kernel's NAT does; other ports
//! are searched as the kernel searches them (`nf_nat_l4proto_unique_tuple`): a
//! bounded number of probes from random offsets (`pick_port`).
//!
//! Port reuse, as the kernel's conntrack and NAT do it: a pod's new SYN for a
//! mapping in TIME_WAIT or CLOSE reopens that mapping (RFC 7857 §2.2), and a new
//! flow that finds no free port towards its remote takes over the port of a closed
//! (TIME_WAIT or CLOSE) or expired flow to that remote. Closing states time out
//! after the kernel's `nf_conntrack_tcp_timeout_*` defaults (see [`Timeouts`]).
//!
//! TCP flows are checked against their sequence window ([`TcpWindow`], the kernel's
//! `tcp_in_window`): a segment outside it changes no state, and a reply RST
//! outside it is not translated, so an off-path sender who guesses a NAT port
//! cannot reset the flow.
//!
//! Layout: flows live in a slab of 64-byte entries (one cache line each, the TCP
//! window included), each in the slot its outbound key's hash placed it in
//! (SwissTable-style tags, [`FlowTags`], at most 3/4 full: a pod's packet reads
//! one entry line); an open-addressing index of 8-byte buckets, at most half full,
//! maps inbound keys to slots; a lazy timing wheel finds expired entries. About
//! 100 bytes per flow, all allocated when the shard is created, so the packet
//! path never allocates.
//!
//! Expiry: a packet for an expired flow never matches it (an outbound packet starts
//! a new flow in its place). Expired entries are reclaimed by [`SnatShard::sweep`],
//! or by a new flow finding the table full, once the 1.024 s wheel tick they
//! expired in has passed.
//!
//! With many flows, prefer [`SnatShard::outbound_batch`] and
//! [`SnatShard::inbound_batch`]: they prefetch the buckets and entries of a group
//! of packets before resolving any, so the cache misses overlap.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use crate::tables::conntrack::{
    Direction, FlowKey, FlowState, L4Proto, TcpSegment, TcpWindow, Timeouts, tcp_flags,
};
use crate::tables::flow_index::FlowIndex;
use crate::tables::flow_slab::{Entry, FlowSlab};
use crate::tables::flow_tags::FlowTags;
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
    #[error("no free SNAT port towards the destination")]
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
    /// Number of workers; each translates the flows to the destinations it owns
    /// ([`owner_of_remote`]).
    pub workers: u16,
    /// NAT ports (and ICMP echo identifiers) to hand out; every worker uses all of
    /// them, each for its own destinations.
    pub port_range: RangeInclusive<u16>,
    /// Flows each worker tracks at most (clamped to [`MAX_CAPACITY_PER_WORKER`]);
    /// each costs about 100 bytes, allocated when the shard is created.
    pub capacity_per_worker: usize,
    pub timeouts: Timeouts,
}

impl Default for SnatConfig {
    fn default() -> Self {
        SnatConfig {
            workers: 1,
            // Ports below 1024 stay out: a remote may treat them as privileged. (The
            // agent's default is narrower: it shares the node with the kernel.)
            port_range: 1024..=65535,
            capacity_per_worker: 262_144,
            timeouts: Timeouts::default(),
        }
    }
}

impl SnatConfig {
    /// Whether `port` is a NAT port (replies to it may be masqueraded flows').
    #[inline]
    pub fn is_nat_port(&self, port: u16) -> bool {
        self.port_range.contains(&port)
    }
}

/// The worker that translates every flow to `remote`:`port` (as on the wire: the
/// destination of a pod's packet, the source of a reply; for ICMP echo the
/// identifier is the pod's, so only the address counts). `None` without workers.
/// A fixed multiplicative hash, so every worker computes the same owner.
#[inline]
pub fn owner_of_remote(
    config: &SnatConfig,
    proto: L4Proto,
    remote: Ipv4Addr,
    port: u16,
) -> Option<WorkerId> {
    if config.workers == 0 {
        return None;
    }
    let x = (u64::from(u32::from(remote)) << 16) | u64::from(remote_port(proto, port));
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    WorkerId::try_from((h * u64::from(config.workers)) >> 32).ok()
}

/// One worker's connection tracking and NAT table. See the module docs.
#[derive(Debug)]
pub struct SnatShard {
    worker: WorkerId,
    slab: FlowSlab,
    /// Where each flow's entry lives in the slab, by outbound key: a pod's packet
    /// reads one entry line (see [`crate::tables::flow_tags`]).
    by_outbound: FlowTags,
    by_inbound: FlowIndex,
    hasher: ahash::RandomState,
    timeouts: Timeouts,
    /// The NAT ports: `range_lo ..= range_lo + range_len - 1`.
    range_lo: u16,
    range_len: u32,
    /// Keys of [`SnatShard::random_offset`]: the same in every shard of a
    /// process, so that shards fed the same flows pick the same ports.
    port_keys: ahash::RandomState,
    /// Port searches started (an input of [`SnatShard::random_offset`]).
    searches: u64,
}

/// The largest `capacity_per_worker` honoured (16 Mi flows, about 1.6 GiB): larger
/// values are clamped rather than attempting an allocation that would abort.
pub const MAX_CAPACITY_PER_WORKER: usize = 1 << 24;

/// How many expired entries a full table examines before giving up.
const RECLAIM_BUDGET: usize = 1024;

/// Ports a new flow examines for a free one before it settles for the port of a
/// closed flow it saw on the way: free ports are preferred (a closed flow's
/// port may still see its stray segments), but not at the price of scanning the
/// whole range for every SYN when most ports sit in TIME_WAIT.
const FREE_PORT_SEARCH: u32 = 64;

/// Ports the first round of a port search examines (the kernel's
/// `NF_NAT_MAX_ATTEMPTS`); each further round, from a new random offset, examines
/// half as many. When a destination's range is full of live flows, every refused
/// SYN would otherwise probe the whole range on the packet path, and a pod
/// hammering one busy destination would stall the worker for every destination it
/// owns: bounded, a refusal costs at most 248 probes (128 + 64 + 32 + 16 + 8), and
/// a range with a tenth of its ports free still finds one at the first few.
const PORT_ATTEMPTS: u32 = 128;

/// The last round of a port search examines fewer than twice this many ports
/// (the kernel stops halving below 16 likewise).
const PORT_ATTEMPTS_MIN: u32 = 16;

/// The keys that make port searches unpredictable, drawn once per process (see
/// [`SnatShard::random_offset`]).
fn port_search_keys() -> ahash::RandomState {
    static KEYS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(ahash::RandomState::new).clone()
}

/// Below this many flows (about 2 MiB of entries and buckets) the shard sits in
/// the L2 cache and batches skip the warming pass.
const WARM_ABOVE: usize = 32_768;

/// How many packets the batch calls look up ahead of resolving them.
const BATCH: usize = 16;

/// Remote port as the index stores it. An ICMP echo reply carries the NAT
/// identifier, not the pod's, so for ICMP only the pod side keeps an identifier.
#[inline]
fn remote_port(proto: L4Proto, port: u16) -> u16 {
    if proto == L4Proto::IcmpEcho { 0 } else { port }
}

/// The outbound index key: a pod's packet as it left the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OutKey {
    pod: u32,
    remote: u32,
    pod_port: u16,
    rport: u16,
    proto: u8,
}

impl OutKey {
    #[inline]
    fn of(key: &FlowKey) -> Self {
        OutKey {
            pod: u32::from(key.src),
            remote: u32::from(key.dst),
            pod_port: key.src_port,
            rport: remote_port(key.proto, key.dst_port),
            proto: key.proto.code(),
        }
    }

    #[inline]
    fn of_entry(e: &Entry) -> Self {
        OutKey {
            pod: e.pod_addr,
            remote: e.remote_addr,
            pod_port: e.pod_port,
            rport: e.remote_port,
            proto: e.proto(),
        }
    }

    #[inline]
    fn matches(&self, e: &Entry) -> bool {
        *self == OutKey::of_entry(e)
    }

    #[inline]
    fn words(&self) -> (u64, u64) {
        let a = (u64::from(self.pod) << 32) | u64::from(self.remote);
        let b = (u64::from(self.pod_port) << 32)
            | (u64::from(self.rport) << 16)
            | u64::from(self.proto);
        (a, b)
    }
}

/// The inbound index key: a reply as it arrives for the NAT address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InKey {
    remote: u32,
    nat: u32,
    rport: u16,
    nat_port: u16,
    proto: u8,
}

impl InKey {
    #[inline]
    fn of(key: &FlowKey) -> Self {
        InKey {
            remote: u32::from(key.src),
            nat: u32::from(key.dst),
            rport: remote_port(key.proto, key.src_port),
            nat_port: key.dst_port,
            proto: key.proto.code(),
        }
    }

    #[inline]
    fn of_entry(e: &Entry) -> Self {
        InKey {
            remote: e.remote_addr,
            nat: e.nat_addr,
            rport: e.remote_port,
            nat_port: e.nat_port,
            proto: e.proto(),
        }
    }

    #[inline]
    fn matches(&self, e: &Entry) -> bool {
        *self == InKey::of_entry(e)
    }

    #[inline]
    fn words(&self) -> (u64, u64) {
        // Different layout from `OutKey` is fine: the two live in separate indexes.
        let a = (u64::from(self.remote) << 32) | u64::from(self.nat);
        let b = (u64::from(self.rport) << 32)
            | (u64::from(self.nat_port) << 16)
            | u64::from(self.proto);
        (a, b)
    }
}

impl SnatShard {
    pub fn new(worker: WorkerId, config: &SnatConfig) -> Self {
        let (lo, hi) = (*config.port_range.start(), *config.port_range.end());
        let (range_lo, range_len) = if hi < lo {
            (0, 0)
        } else {
            (lo, u32::from(hi) - u32::from(lo) + 1)
        };
        let capacity = config.capacity_per_worker.min(MAX_CAPACITY_PER_WORKER);
        let by_outbound = FlowTags::with_capacity(capacity);
        SnatShard {
            worker,
            slab: FlowSlab::new(by_outbound.slots(), capacity),
            by_outbound,
            by_inbound: FlowIndex::with_capacity(capacity),
            hasher: ahash::RandomState::new(),
            timeouts: config.timeouts,
            range_lo,
            range_len,
            port_keys: port_search_keys(),
            searches: 0,
        }
    }

    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// The ports this shard allocates from (empty when it has none).
    pub fn ports(&self) -> RangeInclusive<u16> {
        if self.range_len == 0 {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        let end = u32::from(self.range_lo) + self.range_len - 1;
        self.range_lo..=u16::try_from(end).unwrap_or(u16::MAX)
    }

    #[inline]
    fn hash(&self, words: (u64, u64)) -> u32 {
        self.hasher.hash_one(words) as u32
    }

    #[inline]
    fn find_outbound(&self, k: &OutKey, h: u32) -> Option<u32> {
        let slab = &self.slab;
        self.by_outbound
            .find(h, |s| slab.get(s).is_some_and(|e| k.matches(e)))
    }

    #[inline]
    fn find_inbound(&self, k: &InKey, h: u32) -> Option<u32> {
        let slab = &self.slab;
        self.by_inbound
            .find(h, |s| slab.get(s).is_some_and(|e| k.matches(e)))
            .map(|hit| hit.value)
    }

    /// Removes `slot` from both indexes and frees it.
    fn remove_slot(&mut self, slot: u32) {
        let Some(e) = self.slab.get(slot).copied() else {
            return;
        };
        let oh = self.hash(OutKey::of_entry(&e).words());
        let ih = self.hash(InKey::of_entry(&e).words());
        // The entry is its own outbound slot (whose tags are usually cached): only
        // the inbound bucket is a random line to wait for.
        self.by_inbound.prefetch_home(ih);
        self.by_outbound.remove(slot, oh);
        if let Some(hit) = self.by_inbound.find(ih, |s| s == slot) {
            self.by_inbound.remove(hit.bucket);
        }
        self.slab.free(slot);
    }

    /// Applies one packet to an entry: its TCP window checked, then new state and
    /// refreshed expiry; relinks it in the wheel only when the timeout got shorter.
    /// `false` when the segment lies outside the window and changed nothing.
    #[inline]
    fn touch(&mut self, slot: u32, dir: Direction, seg: &TcpSegment, now: Now) -> bool {
        let timeouts = self.timeouts;
        let Some(e) = self.slab.get_mut(slot) else {
            return false;
        };
        let old = FlowState::from_u8(e.state());
        let Some(new) = old.after_segment(&mut e.tcp, dir, seg) else {
            return false;
        };
        let old_expires = e.expires();
        e.set_proto_state(e.proto(), new as u8);
        e.set_expires(now.after(new.timeout(&timeouts)).millis());
        if e.expires() < old_expires {
            self.slab.requeue(slot);
        }
        true
    }

    /// A pod's outbound packet (key as on the wire, src = pod; `seg` its TCP
    /// header, [`TcpSegment::default`] for UDP and ICMP): the existing binding
    /// refreshed, or a new one (see [`SnatShard::pick_port`]). Returns the
    /// translated source. A segment outside the flow's window is translated but
    /// changes nothing: the pod is trusted with its own flows.
    #[inline]
    pub fn outbound(
        &mut self,
        key: &FlowKey,
        nat_addr: Ipv4Addr,
        seg: TcpSegment,
        now: Now,
    ) -> Result<NatBinding, SnatError> {
        let k = OutKey::of(key);
        let h = self.hash(k.words());
        self.outbound_hashed(&k, h, nat_addr, &seg, now)
    }

    #[inline]
    fn outbound_hashed(
        &mut self,
        k: &OutKey,
        h: u32,
        nat_addr: Ipv4Addr,
        seg: &TcpSegment,
        now: Now,
    ) -> Result<NatBinding, SnatError> {
        let nat = u32::from(nat_addr);
        if let Some(slot) = self.find_outbound(k, h) {
            let (expires, entry_nat, nat_port) = self
                .slab
                .get(slot)
                .map_or((0, 0, 0), |e| (e.expires(), e.nat_addr, e.nat_port));
            if expires > now.millis() && entry_nat == nat {
                self.touch(slot, Direction::Outbound, seg, now);
                return Ok(NatBinding {
                    addr: nat_addr,
                    port: nat_port,
                });
            }
            // Expired, or the node's address changed: start over as a new flow.
            self.remove_slot(slot);
        }
        self.create(k, h, nat, seg, now)
    }

    /// [`SnatShard::outbound`] for `keys[i]` with `segs[i]` into `out[i]`, for
    /// every `i` all three slices have; the results are those of calling it one key
    /// after the other. The index buckets and entries of a group of keys are
    /// prefetched before any key is resolved, so their cache misses overlap: with a million
    /// flows this is several times faster than one call per packet.
    pub fn outbound_batch(
        &mut self,
        keys: &[FlowKey],
        segs: &[TcpSegment],
        nat_addr: Ipv4Addr,
        now: Now,
        out: &mut [Result<NatBinding, SnatError>],
    ) {
        let n = keys.len().min(segs.len()).min(out.len());
        let key = |i: usize| keys.get(i).map(OutKey::of).unwrap_or_default();
        self.batch(n, key, OutKey::words, true, |shard, i, k, h| {
            let seg = segs.get(i).copied().unwrap_or_default();
            let r = shard.outbound_hashed(k, h, nat_addr, &seg, now);
            if let Some(o) = out.get_mut(i) {
                *o = r;
            }
        });
    }

    /// Runs `resolve(shard, i, key(i), hash)` for every `i < n` in order, in groups
    /// of [`BATCH`] with their cache misses overlapped (group prefetching, pipelined
    /// one group ahead): the home buckets of group g+1 are prefetched before group
    /// g is resolved, and the entries of group g after its buckets had that time to
    /// arrive. Above [`WARM_ABOVE`] flows only; below, everything is in cache.
    #[inline]
    fn batch<K: Copy + Default>(
        &mut self,
        n: usize,
        key: impl Fn(usize) -> K,
        words: impl Fn(&K) -> (u64, u64),
        outbound: bool,
        mut resolve: impl FnMut(&mut Self, usize, &K, u32),
    ) {
        let warm = self.slab.len() >= WARM_ABOVE;
        // Keys and hashes of `start..start + BATCH` (fewer at the end); returns the
        // group's length.
        let fill = |shard: &Self, g: &mut ([K; BATCH], [u32; BATCH]), start: usize| {
            let end = (start + BATCH).min(n);
            for (i, (k, h)) in (start..end).zip(g.0.iter_mut().zip(g.1.iter_mut())) {
                *k = key(i);
                *h = shard.hash(words(k));
                if warm {
                    if outbound {
                        shard.by_outbound.prefetch_home(*h);
                    } else {
                        shard.by_inbound.prefetch_home(*h);
                    }
                }
            }
            end.saturating_sub(start)
        };
        // Two groups take turns: one is resolved while the next one fills.
        let mut groups = [([K::default(); BATCH], [0u32; BATCH]); 2];
        let [first, second] = &mut groups;
        let (mut cur, mut next) = (first, second);
        let mut start = 0;
        let mut m = fill(self, cur, 0);
        while m > 0 {
            if warm {
                self.prefetch_entries(outbound, cur.1.get(..m).unwrap_or_default());
            }
            let next_start = start + m;
            let next_m = fill(self, next, next_start);
            for (i, (k, &h)) in cur.0.iter().zip(&cur.1).take(m).enumerate() {
                resolve(self, start + i, k, h);
            }
            std::mem::swap(&mut cur, &mut next); // swaps the references only
            start = next_start;
            m = next_m;
        }
    }

    /// Starts loading the entry each hash's first matching tag or bucket names
    /// (the one the lookup will compare the key of; a mismatch there is rare).
    /// Only hints and reads: no state changes.
    #[inline]
    fn prefetch_entries(&self, outbound: bool, hashes: &[u32]) {
        for &h in hashes {
            let slot = if outbound {
                self.by_outbound.first_candidate(h)
            } else {
                self.by_inbound.find(h, |_| true).map(|hit| hit.value)
            };
            if let Some(slot) = slot {
                self.slab.prefetch(slot);
            }
        }
    }

    fn create(
        &mut self,
        k: &OutKey,
        h: u32,
        nat: u32,
        seg: &TcpSegment,
        now: Now,
    ) -> Result<NatBinding, SnatError> {
        // The pod's own port is tried first: request its inbound bucket now, so it
        // arrives while an expired flow is reclaimed.
        let pod_port_offset = u32::from(k.pod_port).wrapping_sub(u32::from(self.range_lo));
        let pod_probe =
            (pod_port_offset < self.range_len).then(|| self.inbound_probe(k, nat, k.pod_port));
        if let Some((_, ih)) = pod_probe {
            self.by_inbound.prefetch_home(ih);
        }
        // And the entry line the flow will most likely be written to: a random
        // line (the slot is chosen by the hash), so it is requested early too.
        if let Some(slot) = self.by_outbound.insert_hint(h) {
            self.slab.prefetch(slot);
        }
        if self.slab.len() >= self.slab.capacity() {
            self.reclaim(now, RECLAIM_BUDGET, 1);
            if self.slab.len() >= self.slab.capacity() {
                return Err(SnatError::TableFull);
            }
        }
        let proto = match k.proto {
            1 => L4Proto::Tcp,
            2 => L4Proto::Udp,
            _ => L4Proto::IcmpEcho,
        };
        let (nat_port, ih) = self.pick_port(k, nat, pod_probe, now)?;
        let state = FlowState::initial(proto, seg.flags);
        let mut entry = Entry::flow((k.pod, k.pod_port), (k.remote, k.rport), (nat, nat_port));
        entry.set_expires(now.after(state.timeout(&self.timeouts)).millis());
        entry.set_proto_state(k.proto, state as u8);
        if proto == L4Proto::Tcp {
            entry.tcp = TcpWindow::start(seg);
        }
        let slot = self.by_outbound.insert(h).ok_or(SnatError::TableFull)?;
        if !self.slab.alloc_at(slot, entry, now) {
            self.by_outbound.remove(slot, h);
            return Err(SnatError::TableFull);
        }
        self.by_inbound.insert(ih, slot);
        Ok(NatBinding {
            addr: Ipv4Addr::from(nat),
            port: nat_port,
        })
    }

    /// The inbound key and hash a new flow would have with NAT port `port`.
    #[inline]
    fn inbound_probe(&self, k: &OutKey, nat: u32, port: u16) -> (InKey, u32) {
        let ik = InKey {
            remote: k.remote,
            nat,
            rport: k.rport,
            nat_port: port,
            proto: k.proto,
        };
        (ik, self.hash(ik.words()))
    }

    /// A NAT port not in use towards the flow's remote, with the inbound hash it
    /// will be indexed under: the pod's own port when it is in the range and free
    /// (`pod_probe` is its inbound key and hash), else a free one found by the
    /// kernel's bounded search (`nf_nat_l4proto_unique_tuple`): rounds of
    /// [`PORT_ATTEMPTS`], then half as many, down to [`PORT_ATTEMPTS_MIN`], each
    /// from a random offset in the range, so a destination whose range is full
    /// costs a few hundred probes per refused flow, never the whole range. When no
    /// free port turns up, the port of a closed or expired flow to the same remote
    /// seen on the way is taken (that flow is removed); else the flow is refused.
    fn pick_port(
        &mut self,
        k: &OutKey,
        nat: u32,
        pod_probe: Option<(InKey, u32)>,
        now: Now,
    ) -> Result<(u16, u32), SnatError> {
        if let Some((ik, ih)) = pod_probe
            && self.find_inbound(&ik, ih).is_none()
        {
            return Ok((ik.nat_port, ih));
        }
        // The first port seen whose flow is over: (port, hash, slot).
        let mut reusable: Option<(u16, u32, u32)> = None;
        let mut attempts = self.range_len.min(PORT_ATTEMPTS);
        let mut scanned = 0;
        'rounds: loop {
            let mut offset = self.random_offset(k, nat);
            for _ in 0..attempts {
                if scanned >= FREE_PORT_SEARCH && reusable.is_some() {
                    break 'rounds;
                }
                scanned += 1;
                let in_range = offset.checked_rem(self.range_len).unwrap_or(0);
                offset = offset.wrapping_add(1);
                let Ok(port) = u16::try_from(u32::from(self.range_lo) + in_range) else {
                    continue;
                };
                let (ik, ih) = self.inbound_probe(k, nat, port);
                match self.find_inbound(&ik, ih) {
                    None => return Ok((port, ih)),
                    Some(slot) if reusable.is_none() && self.is_over(slot, now) => {
                        reusable = Some((port, ih, slot));
                    }
                    Some(_) => {}
                }
            }
            // One round covered a small range whole; a round below the minimum is
            // not worth starting.
            if attempts >= self.range_len || attempts < PORT_ATTEMPTS_MIN {
                break;
            }
            attempts /= 2;
        }
        let (port, ih, slot) = reusable.ok_or(SnatError::PortsExhausted)?;
        self.remove_slot(slot);
        Ok((port, ih))
    }

    /// Where a port search starts: a keyed hash of the flow and a count of
    /// searches, so successive searches (and rounds) start at unrelated places and
    /// an outsider cannot predict the port a flow gets (RFC 6056 §3.3.3's
    /// hash-based selection; the kernel draws a random number).
    #[inline]
    fn random_offset(&mut self, k: &OutKey, nat: u32) -> u32 {
        self.searches = self.searches.wrapping_add(1);
        let (a, b) = k.words();
        let h = self.port_keys.hash_one((a, b, nat, self.searches));
        (h >> 32) as u32
    }

    /// Whether the flow in `slot` no longer needs its port: expired, or a TCP
    /// connection in TIME_WAIT or CLOSE.
    fn is_over(&self, slot: u32, now: Now) -> bool {
        self.slab.get(slot).is_some_and(|e| {
            e.expires() <= now.millis() || FlowState::from_u8(e.state()).is_closed()
        })
    }

    /// A packet arriving for the NAT address (key as on the wire: src = remote,
    /// dst = nat_addr:nat_port; `seg` its TCP header, [`TcpSegment::default`] for
    /// UDP and ICMP). Returns the original pod address/port, refreshing the
    /// entry. `None` for an unknown or expired flow, and for an RST outside the
    /// flow's window: the kernel's conntrack marks it invalid and its NAT does not
    /// translate it either, so it never reaches the pod.
    #[inline]
    pub fn inbound(&mut self, key: &FlowKey, seg: TcpSegment, now: Now) -> Option<NatBinding> {
        let k = InKey::of(key);
        let h = self.hash(k.words());
        self.inbound_hashed(&k, h, &seg, now)
    }

    #[inline]
    fn inbound_hashed(
        &mut self,
        k: &InKey,
        h: u32,
        seg: &TcpSegment,
        now: Now,
    ) -> Option<NatBinding> {
        let slot = self.find_inbound(k, h)?;
        let e = self.slab.get(slot)?;
        if e.expires() <= now.millis() {
            return None;
        }
        let binding = NatBinding {
            addr: Ipv4Addr::from(e.pod_addr),
            port: e.pod_port,
        };
        let in_window = self.touch(slot, Direction::Inbound, seg, now);
        if !in_window && seg.flags & tcp_flags::RST != 0 {
            return None;
        }
        Some(binding)
    }

    /// [`SnatShard::inbound`] for `keys[i]` with `segs[i]` into `out[i]`, for
    /// every `i` all three slices have, with the cache misses of a group of keys
    /// overlapped as in [`SnatShard::outbound_batch`].
    pub fn inbound_batch(
        &mut self,
        keys: &[FlowKey],
        segs: &[TcpSegment],
        now: Now,
        out: &mut [Option<NatBinding>],
    ) {
        let n = keys.len().min(segs.len()).min(out.len());
        let key = |i: usize| keys.get(i).map(InKey::of).unwrap_or_default();
        self.batch(n, key, InKey::words, false, |shard, i, k, h| {
            let seg = segs.get(i).copied().unwrap_or_default();
            let r = shard.inbound_hashed(k, h, &seg, now);
            if let Some(o) = out.get_mut(i) {
                *o = r;
            }
        });
    }

    /// Same as [`SnatShard::inbound`] but without refreshing or state change (for
    /// ICMP errors quoting a flow). An entry that expired but was not yet swept
    /// still answers: there is no clock here, and an ICMP error for a flow that just
    /// timed out is still useful to the pod.
    pub fn peek_inbound(&self, key: &FlowKey) -> Option<NatBinding> {
        let k = InKey::of(key);
        let slot = self.find_inbound(&k, self.hash(k.words()))?;
        let e = self.slab.get(slot)?;
        Some(NatBinding {
            addr: Ipv4Addr::from(e.pod_addr),
            port: e.pod_port,
        })
    }

    /// The state of the flow a pod's outbound `key` belongs to, if tracked.
    pub fn state_of(&self, key: &FlowKey) -> Option<FlowState> {
        let k = OutKey::of(key);
        let slot = self.find_outbound(&k, self.hash(k.words()))?;
        self.slab.get(slot).map(|e| FlowState::from_u8(e.state()))
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
