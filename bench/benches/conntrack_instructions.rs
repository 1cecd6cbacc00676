//! Conntrack/SNAT shard operations in fixed numbers, one never-inlined function per
//! case, for `bench/conntrack-instructions.sh`: it runs this binary under
//! `valgrind --tool=callgrind --cache-sim=yes` and divides each case's inclusive
//! instructions and simulated last-level data misses by [`OPS`]. Unlike the wall
//! clock of `--bench conntrack`, those counts do not swing with the load of a
//! shared machine. The workloads are `--bench conntrack`'s.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use hybridway_dataplane::Now;
use hybridway_dataplane::tables::conntrack::tcp_flags::{ACK, SYN};
use hybridway_dataplane::tables::{
    FlowKey, L4Proto, NatBinding, SnatConfig, SnatShard, TcpSegment,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const NAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Operations per case.
const OPS: usize = 200_000;

/// Flow `i`, as in `benches/conntrack.rs`.
fn flow(i: u32) -> FlowKey {
    FlowKey {
        proto: L4Proto::Tcp,
        src: Ipv4Addr::from(0xc613_0000 | (i & 0xffff)),
        src_port: 10_000 + (i >> 16) as u16,
        dst: Ipv4Addr::from(0xc612_0000 | (i.wrapping_mul(2_654_435_761) >> 16)),
        dst_port: 443,
    }
}

fn seg(flags: u8) -> TcpSegment {
    TcpSegment::with_flags(flags)
}

fn config(capacity: usize) -> SnatConfig {
    SnatConfig {
        capacity_per_worker: capacity,
        ..SnatConfig::default()
    }
}

/// A shard with `n` established TCP flows, their keys and replies shuffled.
fn established(n: usize) -> (SnatShard, Vec<FlowKey>, Vec<FlowKey>) {
    let mut shard = SnatShard::new(0, &config(n));
    let mut out = Vec::with_capacity(n);
    let mut back = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let k = flow(i);
        let Ok(b) = shard.outbound(&k, NAT, seg(SYN), Now(0)) else {
            continue;
        };
        let r = FlowKey {
            proto: k.proto,
            src: k.dst,
            src_port: k.dst_port,
            dst: b.addr,
            dst_port: b.port,
        };
        shard.inbound(&r, seg(SYN | ACK), Now(1));
        out.push(k);
        back.push(r);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    out.shuffle(&mut rng);
    back.shuffle(&mut rng);
    (shard, out, back)
}

#[inline(never)]
fn case_established_outbound(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let mut ports = 0u32;
    for k in keys.iter().cycle().take(OPS) {
        if let Ok(nb) = shard.outbound(k, NAT, seg(ACK), Now(1000)) {
            ports = ports.wrapping_add(u32::from(nb.port));
        }
    }
    ports
}

#[inline(never)]
fn case_established_inbound(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let mut ports = 0u32;
    for k in keys.iter().cycle().take(OPS) {
        if let Some(nb) = shard.inbound(k, seg(ACK), Now(1000)) {
            ports = ports.wrapping_add(u32::from(nb.port));
        }
    }
    ports
}

#[inline(never)]
fn case_established_outbound_batch64(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let segs = vec![seg(ACK); 64];
    let mut res = vec![Ok(NatBinding { addr: NAT, port: 0 }); 64];
    let mut ports = 0u32;
    for chunk in keys.chunks_exact(64).cycle().take(OPS / 64) {
        shard.outbound_batch(chunk, &segs, NAT, Now(1000), &mut res);
        ports = res
            .iter()
            .flatten()
            .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
    }
    ports
}

#[inline(never)]
fn case_established_inbound_batch64(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let segs = vec![seg(ACK); 64];
    let mut res = vec![None; 64];
    let mut ports = 0u32;
    for chunk in keys.chunks_exact(64).cycle().take(OPS / 64) {
        shard.inbound_batch(chunk, &segs, Now(1000), &mut res);
        ports = res
            .iter()
            .flatten()
            .fold(ports, |a, nb| a.wrapping_add(u32::from(nb.port)));
    }
    ports
}

/// New UDP flows into a full table whose oldest flows have just expired, as
/// `new_flow_full_table_1000000` of `--bench conntrack`.
#[inline(never)]
fn case_new_flow_full_table(
    shard: &mut SnatShard,
    first: u32,
    udp: impl Fn(u32) -> FlowKey,
    at: impl Fn(u32) -> Now,
) -> u32 {
    let mut refused = 0;
    for i in first..first + OPS as u32 {
        refused += u32::from(shard.outbound(&udp(i), NAT, seg(0), at(i)).is_err());
    }
    refused
}

/// `established <flows>` or `full`: one table per process, so that callgrind's
/// per-function totals hold one table size each.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["established", n] => {
            let n: usize = n.parse().expect("a number of flows");
            let (mut shard, out, back) = established(n);
            println!(
                "{n}: {} {} {} {}",
                black_box(case_established_outbound(&mut shard, &out)),
                black_box(case_established_inbound(&mut shard, &back)),
                black_box(case_established_outbound_batch64(&mut shard, &out)),
                black_box(case_established_inbound_batch64(&mut shard, &back)),
            );
        }
        ["full"] => {
            let full = 1_000_000u32;
            let mut shard = SnatShard::new(0, &config(full as usize));
            let udp_ms = SnatConfig::default().timeouts.udp.as_millis() as u64;
            let at = |i: u32| Now(u64::from(i) * (udp_ms + 3000) / u64::from(full));
            let udp = |i: u32| FlowKey {
                proto: L4Proto::Udp,
                ..flow(i)
            };
            for i in 0..full {
                let _ = shard.outbound(&udp(i), NAT, seg(0), at(i));
            }
            let refused = case_new_flow_full_table(&mut shard, full, udp, at);
            assert_eq!(refused, 0, "every new flow found an expired one to replace");
            println!("full table: {} flows", shard.len());
        }
        // `cargo bench` runs every bench target with `--bench`: nothing to time here.
        _ => println!("usage: conntrack_instructions established <flows> | full"),
    }
}
