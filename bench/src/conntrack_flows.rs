//! The flows the conntrack benchmarks track: `--bench conntrack` times them,
//! `--bench conntrack_instructions` counts their instructions, so both measure the
//! same workload.

use std::net::Ipv4Addr;

use hybridway_dataplane::Now;
use hybridway_dataplane::tables::conntrack::tcp_flags::{ACK, SYN};
use hybridway_dataplane::tables::{
    FlowKey, L4Proto, NatBinding, SnatConfig, SnatShard, TcpSegment,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// The node address flows are masqueraded to.
pub const NAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// Flow `i`: pods in 198.19.0.0/16 talking to many remotes in 198.18.0.0/16, so no
/// destination runs out of ports.
pub fn flow(i: u32) -> FlowKey {
    FlowKey {
        proto: L4Proto::Tcp,
        src: Ipv4Addr::from(0xc613_0000 | (i & 0xffff)),
        src_port: 10_000 + (i >> 16) as u16,
        dst: Ipv4Addr::from(0xc612_0000 | (i.wrapping_mul(2_654_435_761) >> 16)),
        dst_port: 443,
    }
}

/// The reply to `k` after translation to `b`, as it arrives on the wire.
pub fn reply(k: &FlowKey, b: NatBinding) -> FlowKey {
    FlowKey {
        proto: k.proto,
        src: k.dst,
        src_port: k.dst_port,
        dst: b.addr,
        dst_port: b.port,
    }
}

/// A TCP segment with `flags` at sequence 0 (every segment of these flows is).
pub fn seg(flags: u8) -> TcpSegment {
    TcpSegment::with_flags(flags)
}

/// The default SNAT configuration with room for `capacity` flows.
pub fn config(capacity: usize) -> SnatConfig {
    SnatConfig {
        capacity_per_worker: capacity,
        ..SnatConfig::default()
    }
}

/// A shard holding `n` established TCP flows, and their keys and replies in
/// random order.
pub fn established(n: usize) -> (SnatShard, Vec<FlowKey>, Vec<FlowKey>) {
    let mut shard = SnatShard::new(0, &config(n));
    let mut out = Vec::with_capacity(n);
    let mut back = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let k = flow(i);
        let Ok(b) = shard.outbound(&k, NAT, seg(SYN), Now(0)) else {
            continue;
        };
        let r = reply(&k, b);
        shard.inbound(&r, seg(SYN | ACK), Now(1));
        out.push(k);
        back.push(r);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    out.shuffle(&mut rng);
    back.shuffle(&mut rng);
    (shard, out, back)
}

/// A table of `full` UDP flows whose oldest flows have always just expired at
/// the time [`FullTable::at`] gives flow `i`: flows span the UDP timeout plus 3 s
/// (about three wheel ticks), so every new flow reclaims one.
#[derive(Debug)]
pub struct FullTable {
    pub shard: SnatShard,
    pub full: u32,
    udp_ms: u64,
}

impl FullTable {
    pub fn new(full: u32) -> Self {
        let mut t = FullTable {
            shard: SnatShard::new(0, &config(full as usize)),
            full,
            udp_ms: SnatConfig::default().timeouts.udp.as_millis() as u64,
        };
        for i in 0..full {
            let _ = t.shard.outbound(&Self::udp(i), NAT, seg(0), t.at(i));
        }
        t
    }

    /// UDP flow `i`.
    pub fn udp(i: u32) -> FlowKey {
        FlowKey {
            proto: L4Proto::Udp,
            ..flow(i)
        }
    }

    /// When flow `i` arrives.
    pub fn at(&self, i: u32) -> Now {
        Now(u64::from(i) * (self.udp_ms + 3000) / u64::from(self.full))
    }
}
