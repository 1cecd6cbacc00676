//! `hybridway-lab bench-services` (bench/e2e/services.sh): pod → ClusterIP through
//! hybridway's dataplane (TUN and AF_XDP) and through the real kube-proxy
//! (iptables mode) on the kernel, in the same run and on the same topology (the
//! Services cluster of `hybridway_lab::service_lab`), each hybridway figure as a
//! ratio to kube-proxy's.
//!
//! Figures per client node kind, for an endpoint on the client's own node (the
//! Service path alone) and on the other hybrid node (Service path + VXLAN):
//! - **throughput**: one iperf3 TCP stream from the client pod to the ClusterIP;
//! - **new connections per second**: for `--seconds`, two client processes
//!   connect to the ClusterIP, exchange a byte and close, over and over (the SNAT
//!   load generator, `snat_load::churn`); every one is a new Service flow.
//!
//! The other nodes are the same in every run (h2: a hybridway TUN agent, c1:
//! flanneld); offloads are off on every veth (AF_XDP needs them off), so the kernel
//! paths segment in software too.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use clap::Args;

use hybridway_lab::kube_proxy::ProxyMode;
use hybridway_lab::service_lab::{
    Backend, CLIENT, ClientKind, LOCAL, REMOTE_A, ServiceLab, service_yaml, slice_yaml,
};
use hybridway_lab::snat_load::{self, Servers};
use hybridway_lab::traffic::{IPERF_PORT, iperf_through};

#[derive(Debug, Args)]
pub struct BenchServicesArgs {
    /// Seconds of each measurement (throughput, short connections).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Client node kinds besides kube-proxy: af_xdp, tun or both.
    #[arg(long, default_value = "both")]
    pub backend: String,
}

const CONN_PORT: u16 = 7300;

/// One endpoint placement: its Services' ClusterIPs and the endpoint pod.
struct Placement {
    label: &'static str,
    pod: &'static str,
    iperf_ip: Ipv4Addr,
    conn_ip: Ipv4Addr,
}

const PLACEMENTS: [Placement; 2] = [
    Placement {
        label: "same node",
        pod: LOCAL,
        iperf_ip: Ipv4Addr::new(198, 18, 240, 90),
        conn_ip: Ipv4Addr::new(198, 18, 240, 91),
    },
    Placement {
        label: "other node",
        pod: REMOTE_A,
        iperf_ip: Ipv4Addr::new(198, 18, 240, 92),
        conn_ip: Ipv4Addr::new(198, 18, 240, 93),
    },
];

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    bits_per_second: f64,
    connections_per_second: f64,
    failed: u64,
}

/// Creates each placement's two Services and their slices.
fn create_services(lab: &ServiceLab) -> anyhow::Result<()> {
    for p in &PLACEMENTS {
        let endpoint = (lab.pod(p.pod)?.ip, lab.node_of(p.pod)?);
        for (name, ip, port) in [
            ("iperf", p.iperf_ip, IPERF_PORT),
            ("conn", p.conn_ip, CONN_PORT),
        ] {
            let name = format!("{name}-{}", p.pod);
            let service_ports = format!("[{{name: tcp, port: {port}, protocol: TCP}}]");
            lab.apply(&service_yaml(&name, ip, &service_ports, false))?;
            lab.apply(&slice_yaml(&name, &service_ports, &[endpoint]))?;
        }
    }
    Ok(())
}

fn measure(lab: &ServiceLab, p: &Placement, seconds: u32) -> anyhow::Result<Figures> {
    let client = lab.pod(CLIENT)?;
    let server = lab.pod(p.pod)?;
    let helper = snat_load::install_helper(&lab.dir)?;
    let _servers = Servers::start(&helper, &server.ns, server.ip, CONN_PORT, 1)?;
    snat_load::tune_client(&client.ns, 1024, 65000)?;
    // The Service is served once a connection through it gets its byte back.
    let mut ready = String::new();
    for _ in 0..60 {
        ready = snat_load::one(&helper, &client.ns, p.conn_ip, CONN_PORT, 2)?;
        if ready == "ok" {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::ensure!(
        ready == "ok",
        "{}: {} not served: {ready}",
        lab.kind.label(),
        p.conn_ip
    );
    let json = iperf_through(
        &client.ns,
        (&server.ns, server.ip),
        (p.iperf_ip, IPERF_PORT),
        "",
        seconds,
        seconds + 20,
    )?;
    let bits_per_second = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let churn = snat_load::churn(&helper, &client.ns, p.conn_ip, CONN_PORT, seconds, 2)?;
    Ok(Figures {
        bits_per_second,
        connections_per_second: churn.outcome.answered as f64 / f64::from(seconds.max(1)),
        failed: churn.outcome.failed,
    })
}

pub fn run(args: &BenchServicesArgs, exe: &Path) -> anyhow::Result<()> {
    let mut kinds = vec![ClientKind::KubeProxy(ProxyMode::Iptables)];
    if args.backend != "tun" {
        kinds.push(ClientKind::Hybridway(Backend::AfXdp));
    }
    if args.backend != "af_xdp" {
        kinds.push(ClientKind::Hybridway(Backend::Tun));
    }
    println!(
        "pod -> ClusterIP: one TCP stream ({s} s) and short connections ({s} s, 2 clients), same run, same topology",
        s = args.seconds
    );
    println!(
        "{:<26} {:<11} {:>12} {:>12} {:>8}",
        "client node", "endpoint", "Gbit/s", "conns/s", "failed"
    );
    let mut rows: Vec<(ClientKind, &'static str, Figures)> = Vec::new();
    for kind in kinds {
        let lab = ServiceLab::build(kind, exe, true)?;
        create_services(&lab)?;
        for p in &PLACEMENTS {
            let f = measure(&lab, p, args.seconds)?;
            println!(
                "{:<26} {:<11} {:>12.2} {:>12.0} {:>8}",
                kind.label(),
                p.label,
                f.bits_per_second / 1e9,
                f.connections_per_second,
                f.failed
            );
            rows.push((kind, p.label, f));
        }
    }
    println!("\nratio hybridway / kube-proxy (goal >= 1.0):");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for (kind, placement, h) in rows
        .iter()
        .filter(|r| matches!(r.0, ClientKind::Hybridway(_)))
    {
        let Some((_, _, k)) = rows
            .iter()
            .find(|r| matches!(r.0, ClientKind::KubeProxy(_)) && r.1 == *placement)
        else {
            continue;
        };
        println!(
            "  {:<24} {:<11} throughput {:.2}x   new connections/s {:.2}x",
            kind.label(),
            placement,
            ratio(h.bits_per_second, k.bits_per_second),
            ratio(h.connections_per_second, k.connections_per_second)
        );
    }
    Ok(())
}
