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
//! flanneld). The Services cluster turns the offloads off on every veth (AF_XDP
//! needs them off); with `--offloads kernel` (the default) they are turned back on
//! for the pods' veths wherever the kernel or the TUN backend forwards (all but the
//! AF_XDP client node's), as `bench-e2e` does: a pod's TCP on the kernel's path at
//! its best, not segmented in software. `--offloads off` keeps them off everywhere
//! (the runs of 2026-11-30).
//!
//! Under each row, what explains a slow figure: the load average, the slowest
//! second of the short connections, SYNs the client retransmitted and connections
//! the endpoint's listener dropped while they ran, and for hybridway the agent's
//! drop counters and how long its worker thread waited for a CPU each time it woke
//! (`/proc/PID/task/TID/schedstat`): on a loaded 2-core machine a packet through a
//! userspace dataplane waits for that thread to be scheduled, once per crossing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use clap::Args;

use hybridway_lab::kube_proxy::ProxyMode;
use hybridway_lab::net_counters::{self, Counters};
use hybridway_lab::service_lab::{
    Backend, CLIENT, ClientKind, LOCAL, REMOTE_A, ServiceLab, service_yaml, slice_yaml,
};
use hybridway_lab::snat_load::{self, Servers};
use hybridway_lab::traffic::{IPERF_PORT, iperf_through};

use crate::report::load_average;

#[derive(Debug, Args)]
pub struct BenchServicesArgs {
    /// Seconds of each measurement (throughput, short connections).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Client node kinds besides kube-proxy: af_xdp, tun or both.
    #[arg(long, default_value = "both")]
    pub backend: String,
    /// `kernel`: offloads on for every veth but an AF_XDP node's; `off`: off on
    /// every veth.
    #[arg(long, default_value = "kernel")]
    pub offloads: String,
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

#[derive(Debug, Clone, Default)]
struct Figures {
    bits_per_second: f64,
    connections_per_second: f64,
    failed: u64,
    /// What explains the figures (see the module docs), one line.
    why: String,
}

/// Client-side counters that say a connection waited for a lost packet.
const CLIENT_COUNTERS: [&str; 3] = [
    "TcpExt:TCPSynRetrans",
    "Tcp:RetransSegs",
    "TcpExt:TCPTimeouts",
];
/// Endpoint-side counters that say its listener dropped connections.
const SERVER_COUNTERS: [&str; 2] = ["TcpExt:ListenOverflows", "TcpExt:ListenDrops"];

/// The client node's agent: its drop counters (`hybridway status`) and its worker
/// threads' scheduling (`schedstat`: ns on a CPU, ns waiting for one, times run).
#[derive(Debug, Default)]
struct AgentSample {
    drops: BTreeMap<String, u64>,
    worker_run_wait_slices: [u64; 3],
}

fn agent_sample(lab: &ServiceLab) -> Option<AgentSample> {
    let ClientKind::Hybridway(_) = lab.kind else {
        return None;
    };
    let node = lab.client_node().ok()?;
    let status = lab.agent_status(node)?;
    let drops = status
        .get("drops")
        .and_then(|d| d.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let config = lab.dir.join(format!("{}.yaml", node.name));
    let mut sample = AgentSample {
        drops,
        worker_run_wait_slices: [0; 3],
    };
    for task in agent_worker_tasks(&config.display().to_string()) {
        let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
        for (sum, field) in sample
            .worker_run_wait_slices
            .iter_mut()
            .zip(stat.split_whitespace())
        {
            *sum += field.parse::<u64>().unwrap_or(0);
        }
    }
    Some(sample)
}

/// `/proc/PID/task/TID` of the dataplane worker threads (`hw-worker-N`) of the
/// agent started with `--config CONFIG`.
fn agent_worker_tasks(config: &str) -> Vec<std::path::PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let agent = procs.flatten().find(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.windows(2).any(|w| {
                w.first() == Some(&&b"--config"[..]) && w.get(1) == Some(&config.as_bytes())
            })
        })
    });
    let Some(agent) = agent else {
        return Vec::new();
    };
    let Ok(tasks) = std::fs::read_dir(agent.path().join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|t| {
            std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with("hw-worker"))
        })
        .collect()
}

/// One line: the load, the churn's slowest second, the counters that grew and the
/// agent's worker scheduling.
fn explain(
    churn: &snat_load::Churn,
    client: (&Counters, &Counters),
    server: (&Counters, &Counters),
    agent: Option<(&AgentSample, &AgentSample)>,
) -> String {
    let mut parts = vec![format!("load {}", load_average())];
    if let Some(min) = churn.per_second.iter().min() {
        parts.push(format!(
            "slowest second {min} conns, longest stall {} s",
            churn.longest_stall()
        ));
    }
    let mut grown = net_counters::grown(client.0, client.1, &CLIENT_COUNTERS);
    grown.extend(net_counters::grown(server.0, server.1, &SERVER_COUNTERS));
    if let Some((before, after)) = agent {
        for (k, v) in &after.drops {
            let d = v.saturating_sub(*before.drops.get(k).unwrap_or(&0));
            if d > 0 {
                grown.push((format!("drops{{{k}}}"), d));
            }
        }
        let [a_run, a_wait, a_slices] = after.worker_run_wait_slices;
        let [b_run, b_wait, b_slices] = before.worker_run_wait_slices;
        let (run, wait, slices) = (
            a_run.saturating_sub(b_run),
            a_wait.saturating_sub(b_wait),
            a_slices.saturating_sub(b_slices),
        );
        if slices > 0 {
            parts.push(format!(
                "worker: {:.2} s on a CPU, woke {slices} times, waited {:.0} us for a CPU per wake-up",
                run as f64 / 1e9,
                wait as f64 / 1e3 / slices as f64
            ));
        }
    }
    parts.push(if grown.is_empty() {
        "no retransmission, listener drop or dataplane drop".into()
    } else {
        grown
            .iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    parts.join("; ")
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

/// Turns the offloads back on for every veth but the AF_XDP client node's (see the
/// module docs).
fn kernel_offloads(lab: &ServiceLab) -> anyhow::Result<()> {
    let af_xdp_node = match lab.kind {
        ClientKind::Hybridway(Backend::AfXdp) => Some(lab.client_node()?.name),
        _ => None,
    };
    for node in lab.nodes.iter().filter(|n| Some(n.name) != af_xdp_node) {
        // The pods' veths only: the nodes' links stay as a NIC would leave them
        // (checksums filled in). With a veth's offloads on, the kernel's VXLAN from
        // c1 or a kube-proxy h1 reaches h2's dataplane socket with inner TCP
        // checksums never filled, and its pod drops them.
        for dev in node.ns.veths()?.iter().filter(|d| *d != "eth0") {
            node.ns.offloads_on(dev)?;
        }
        for pod in &node.pods {
            pod.ns.offloads_on("eth0")?;
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
    let (client_before, server_before) = (
        net_counters::read(&client.ns)?,
        net_counters::read(&server.ns)?,
    );
    let agent_before = agent_sample(lab);
    let churn = snat_load::churn(&helper, &client.ns, p.conn_ip, CONN_PORT, seconds, 2)?;
    let agent_after = agent_sample(lab);
    let why = explain(
        &churn,
        (&client_before, &net_counters::read(&client.ns)?),
        (&server_before, &net_counters::read(&server.ns)?),
        agent_before.as_ref().zip(agent_after.as_ref()),
    );
    Ok(Figures {
        bits_per_second,
        connections_per_second: churn.outcome.answered as f64 / f64::from(seconds.max(1)),
        failed: churn.outcome.failed,
        why,
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
    anyhow::ensure!(
        ["kernel", "off"].contains(&args.offloads.as_str()),
        "--offloads is kernel or off"
    );
    println!(
        "pod -> ClusterIP: one TCP stream ({s} s) and short connections ({s} s, 2 clients), same run, same topology; offloads {o}",
        s = args.seconds,
        o = args.offloads
    );
    println!(
        "{:<26} {:<11} {:>12} {:>12} {:>8}",
        "client node", "endpoint", "Gbit/s", "conns/s", "failed"
    );
    let mut rows: Vec<(ClientKind, &'static str, Figures)> = Vec::new();
    for kind in kinds {
        let lab = ServiceLab::build(kind, exe, true)?;
        if args.offloads == "kernel" {
            kernel_offloads(&lab)?;
        }
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
            println!("    {}", f.why);
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
