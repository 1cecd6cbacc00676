//! Conntrack/SNAT shard operations in fixed numbers, one never-inlined function per
//! case, for `bench/conntrack-instructions.sh`: it runs this binary under
//! `valgrind --tool=callgrind --cache-sim=yes` and divides each case's inclusive
//! instructions and simulated last-level data misses by [`OPS`]. Unlike the wall
//! clock of `--bench conntrack`, those counts do not swing with the load of a
//! shared machine. The workloads are `--bench conntrack`'s.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use hybridway_bench::conntrack_flows::{FullTable, NAT, established, seg};
use hybridway_dataplane::Now;
use hybridway_dataplane::tables::conntrack::tcp_flags::ACK;
use hybridway_dataplane::tables::{FlowKey, NatBinding, SnatShard};

/// Operations per case.
const OPS: usize = 200_000;

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

/// `resolve` over `keys` in chunks of 64 until [`OPS`] keys are done, summing the
/// ports it returns.
fn in_batches(keys: &[FlowKey], mut resolve: impl FnMut(&[FlowKey]) -> u32) -> u32 {
    keys.chunks_exact(64)
        .cycle()
        .take(OPS / 64)
        .fold(0u32, |ports, chunk| ports.wrapping_add(resolve(chunk)))
}

fn port_sum<'a>(bindings: impl Iterator<Item = &'a NatBinding>) -> u32 {
    bindings.fold(0, |a, nb| a.wrapping_add(u32::from(nb.port)))
}

#[inline(never)]
fn case_established_outbound_batch64(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let segs = [seg(ACK); 64];
    let mut res = [Ok(NatBinding { addr: NAT, port: 0 }); 64];
    in_batches(keys, |chunk| {
        shard.outbound_batch(chunk, &segs, NAT, Now(1000), &mut res);
        port_sum(res.iter().flatten())
    })
}

#[inline(never)]
fn case_established_inbound_batch64(shard: &mut SnatShard, keys: &[FlowKey]) -> u32 {
    let segs = [seg(ACK); 64];
    let mut res = [None; 64];
    in_batches(keys, |chunk| {
        shard.inbound_batch(chunk, &segs, Now(1000), &mut res);
        port_sum(res.iter().flatten())
    })
}

/// New UDP flows into a full table whose oldest flows have just expired, as
/// `new_flow_full_table_1000000` of `--bench conntrack`.
#[inline(never)]
fn case_new_flow_full_table(table: &mut FullTable) -> u32 {
    let mut refused = 0;
    for i in table.full..table.full + OPS as u32 {
        let now = table.at(i);
        refused += u32::from(
            table
                .shard
                .outbound(&FullTable::udp(i), NAT, seg(0), now)
                .is_err(),
        );
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
            let mut table = FullTable::new(1_000_000);
            let refused = case_new_flow_full_table(&mut table);
            assert_eq!(refused, 0, "every new flow found an expired one to replace");
            println!("full table: {} flows", table.shard.len());
        }
        // `cargo bench` runs every bench target with `--bench`: nothing to time here.
        _ => println!("usage: conntrack_instructions established <flows> | full"),
    }
}
