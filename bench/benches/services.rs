//! Building the service table (issue 14's goal: 10,000 Services × 10 endpoints in
//! at most 1 s, far below kube-proxy's iptables resync at that size).
//!
//! Run: `cargo bench -p hybridway-bench --bench services -- --warm-up-time 1 --measurement-time 5`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};

/// `count` Services with one TCP port and `per` ready endpoints each, ClusterIPs in
/// the service CIDR (198.18.240.0/20 holds 4096: larger counts spill over, which the
/// table does not care about), endpoints in the hybrid pod CIDR.
fn services(count: u32, per: u32) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| ServiceSpec {
            name: format!("default/svc-{i}"),
            cluster_ips: vec![Ipv4Addr::from_bits(0xc612_f000 + i)],
            ports: vec![ServicePortSpec {
                proto: ServiceProto::Tcp,
                port: 80,
                node_port: None,
                endpoints: (0..per)
                    .map(|j| EndpointSpec {
                        addr: Ipv4Addr::from_bits(0xc613_8000 + (i * per + j) % 32_768),
                        port: 8080,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: j == 0,
                    })
                    .collect(),
            }],
            ..ServiceSpec::default()
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("service_table_build");
    group.sample_size(10);
    for count in [1_000u32, 10_000] {
        let specs = services(count, 10);
        group.throughput(Throughput::Elements(u64::from(count)));
        group.bench_with_input(
            BenchmarkId::new("services_x10_endpoints", count),
            &specs,
            |b, s| b.iter(|| black_box(ServiceTable::build(s))),
        );
    }
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
