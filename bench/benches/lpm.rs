//! IPv4 longest-prefix match: 10,000 routes of mixed lengths (/16–/32), random
//! destinations; single lookups, batch lookups, and the table build itself.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::PortId;
use hybridway_dataplane::tables::{Prefix, RouteTable, RouteTableBuilder, RouteTarget};
use hybridway_dataplane::wire::MacAddr;
use rand::{Rng, SeedableRng};

const ROUTES: usize = 10_000;
const LOOKUPS: usize = 1 << 16;

fn routes(rng: &mut impl Rng) -> Vec<(Prefix, RouteTarget)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(ROUTES);
    while out.len() < ROUTES {
        let len = rng.random_range(16..=32u8);
        let Ok(p) = Prefix::new(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())), len) else {
            continue;
        };
        if seen.insert(p) {
            let t = RouteTarget::LocalPod {
                port: PortId(out.len() as u16),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
            };
            out.push((p, t));
        }
    }
    out
}

fn build(routes: &[(Prefix, RouteTarget)]) -> RouteTable {
    let mut b = RouteTableBuilder::new();
    for (p, t) in routes {
        // Prefixes are distinct by construction.
        let _ = b.add(*p, *t);
    }
    b.build()
}

fn bench_lpm(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let routes = routes(&mut rng);
    let table = build(&routes);
    // Half the destinations fall inside some route so that every trie level is
    // exercised, half are uniformly random (mostly the first level).
    let dsts: Vec<Ipv4Addr> = (0..LOOKUPS)
        .map(|i| {
            if i % 2 == 0 {
                let (p, _) = routes[rng.random_range(0..routes.len())];
                let IpAddr::V4(a) = p.addr() else {
                    return Ipv4Addr::UNSPECIFIED;
                };
                let host = u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
                Ipv4Addr::from(u32::from(a) | (rng.random::<u32>() & host))
            } else {
                Ipv4Addr::from(rng.random::<u32>())
            }
        })
        .collect();
    println!(
        "lpm: {ROUTES} routes, IPv4 trie {} KiB",
        table.v4_memory_bytes() / 1024
    );

    let mut g = c.benchmark_group("lpm_v4");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("single_10k_routes", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for &d in &dsts {
                hits += usize::from(table.lookup_v4(black_box(d)).is_some());
            }
            black_box(hits)
        })
    });
    let mut out = vec![None; 64];
    g.bench_function("batch64_10k_routes", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for chunk in dsts.chunks(64) {
                table.lookup_v4_batch(black_box(chunk), &mut out);
                hits += out.iter().filter(|t| t.is_some()).count();
            }
            black_box(hits)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("lpm_build");
    g.throughput(Throughput::Elements(ROUTES as u64));
    g.sample_size(20);
    g.bench_function("build_10k_routes", |b| b.iter(|| black_box(build(&routes))));
    g.finish();
}

criterion_group!(benches, bench_lpm);
criterion_main!(benches);
