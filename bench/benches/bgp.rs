//! BGP UPDATE encoding and decoding rates: how fast the speaker can turn a pool's
//! pod blocks into wire bytes (the initial table after a restart), in prefixes/s.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hybridway_control::bgp::codec::{self, AfiSafi, CodecOptions, Message};
use hybridway_control::bgp::config::RouteConfig;
use hybridway_control::bgp::rib::{AdjRibOut, PeerContext};
use hybridway_dataplane::tables::Prefix;

const PREFIXES: u32 = 10_000;

fn routes() -> Vec<RouteConfig> {
    (0..PREFIXES)
        .map(|i| RouteConfig {
            node: format!("node-{i}"),
            node_address: IpAddr::from([198, 18, (i / 250) as u8, (i % 250) as u8 + 1]),
            pod_block: Prefix::new(
                IpAddr::from([198, 19, (i / 256) as u8, (i % 256) as u8]),
                32,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        })
        .collect()
}

fn ctx() -> PeerContext {
    PeerContext {
        local_asn: 65010,
        peer_asn: 65001,
        local_addr: IpAddr::from([198, 18, 0, 10]),
        shared_subnet: None,
        families: vec![AfiSafi::IPV4_UNICAST],
        codec: CodecOptions::default(),
    }
}

fn bench(c: &mut Criterion) {
    let ctx = ctx();
    let routes = routes();
    let wanted = ctx.wanted(&routes);
    let mut g = c.benchmark_group("bgp_update");
    g.throughput(Throughput::Elements(u64::from(PREFIXES)));
    g.bench_function("pack_and_encode_10k_prefixes", |b| {
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut rib = AdjRibOut::default();
            buf.clear();
            for u in rib.sync(&ctx, black_box(&wanted)) {
                codec::encode(&Message::Update(u), ctx.codec, &mut buf)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            black_box(buf.len())
        })
    });
    let mut rib = AdjRibOut::default();
    let mut wire = Vec::new();
    for u in rib.sync(&ctx, &wanted) {
        codec::encode(&Message::Update(u), ctx.codec, &mut wire).unwrap_or_else(|e| panic!("{e}"));
    }
    g.bench_function("decode_10k_prefixes", |b| {
        b.iter(|| {
            let mut rest = black_box(wire.as_slice());
            let mut n = 0;
            while let Ok(Some(len)) = codec::frame_len(rest) {
                let (msg, tail) = rest.split_at(len);
                if let Ok(Message::Update(u)) = codec::decode(msg, ctx.codec) {
                    n += u.nlri.len();
                }
                rest = tail;
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
