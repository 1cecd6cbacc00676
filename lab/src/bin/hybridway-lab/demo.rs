//! `hybridway-lab demo` (`scripts/demo.sh --quick`): two nodes with two pods each in network namespaces; pod-to-pod
//! ping and iperf3 in overlay and underlay, a pod reaching an outside host through
//! SNAT, and the agents' counters. Everything is removed at the end, on failure, and
//! on Ctrl-C (the namespaces and agents belong to guards that clean up on drop, and
//! Ctrl-C is turned into an orderly stop between steps).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use clap::Args;
use hybridway_lab::is_root;
use hybridway_lab::topology::{Cluster, ClusterSpec, NodeKind, OUTSIDE_SERVER, node_addr, pod_ip};
use hybridway_lab::traffic::{iperf, outside_sees};

use crate::report::{Report, interrupted, need, watch_signals};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Port backend of the agents (af_xdp or tun).
    #[arg(long, default_value = "af_xdp")]
    pub backend: String,
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 3)]
    pub seconds: u32,
    /// Only the overlay part.
    #[arg(long)]
    pub overlay_only: bool,
    /// Turn SNAT off (the outside routes pod blocks to their nodes, as BGP would
    /// teach it, and sees pod addresses).
    #[arg(long)]
    pub no_snat: bool,
    /// Keep the namespaces after the demo (remove them with `ip -all netns del`).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &DemoArgs, exe: &Path) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and attaches XDP programs: run it as root"
        );
    }
    for tool in ["ip", "ping", "iperf3", "ethtool", "bridge"] {
        need(tool)?;
    }
    let stop = watch_signals();
    let mut report = Report::default();
    let tag = format!("hwd{}", std::process::id() % 10_000);
    let modes: &[bool] = if args.overlay_only {
        &[true]
    } else {
        &[true, false]
    };
    for &overlay in modes {
        interrupted(&stop)?;
        let name = if overlay {
            "overlay (VXLAN, UDP 8472)"
        } else {
            "underlay (plain routing)"
        };
        println!("\n=== {name}, backend {} ===", args.backend);
        let dir = std::env::temp_dir().join(format!(
            "{tag}-{}",
            if overlay { "overlay" } else { "underlay" }
        ));
        let spec = ClusterSpec {
            tag: tag.clone(),
            overlay,
            snat: !args.no_snat,
            snat_ports: None,
            backend: args.backend.clone(),
            nodes: vec![NodeKind::Hybridway, NodeKind::Hybridway],
            pods_per_node: 2,
            workers: 1,
            kernel_offloads: false,
            exe: exe.to_path_buf(),
            dir: dir.clone(),
        };
        println!(
            "building 2 nodes x 2 pods in namespaces {tag}-*; agent logs in {}",
            dir.display()
        );
        let cluster = Cluster::build(spec)?;
        let result = run_mode(&cluster, args, overlay, &stop, &mut report);
        print_counters(&cluster);
        if args.keep {
            println!("keeping namespaces {tag}-* (--keep)");
            std::mem::forget(cluster);
        }
        result?;
    }
    report.summary()
}

fn run_mode(
    cluster: &Cluster,
    args: &DemoArgs,
    overlay: bool,
    stop: &AtomicBool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mode = if overlay { "overlay" } else { "underlay" };
    println!("-- ping");
    for (from, to, what) in [
        ((1, 1), pod_ip(2, 1), "pod p11 -> p21 (other node)"),
        ((2, 1), pod_ip(1, 1), "pod p21 -> p11 (other node)"),
        ((1, 1), pod_ip(1, 2), "pod p11 -> p12 (same node)"),
        ((2, 2), pod_ip(1, 2), "pod p22 -> p12 (other node)"),
    ] {
        interrupted(stop)?;
        let ok = cluster.ping(from, to, 3)?;
        report.check(&format!("{mode}: ping {what}"), ok, "");
    }
    println!("-- iperf3 TCP and UDP between nodes");
    for (client, server, udp) in [
        ((1, 1), (2, 1), false),
        ((2, 2), (1, 2), false),
        ((1, 2), (2, 2), true),
    ] {
        interrupted(stop)?;
        let what = format!(
            "{mode}: iperf3 {} p{}{} -> p{}{}",
            if udp { "UDP" } else { "TCP" },
            client.0,
            client.1,
            server.0,
            server.1
        );
        match iperf(cluster, client, server, udp, args.seconds) {
            Ok(summary) => report.check(&what, true, &summary),
            Err(e) => report.check(&what, false, &e.to_string()),
        }
    }
    interrupted(stop)?;
    println!(
        "-- SNAT {}: pod p11 -> outside host {OUTSIDE_SERVER}",
        if cluster.spec.snat { "on" } else { "off" }
    );
    match outside_sees(cluster, (1, 1)) {
        Ok(seen) => {
            let (want, what) = if cluster.spec.snat {
                (node_addr(1), "node")
            } else {
                (pod_ip(1, 1), "pod")
            };
            report.check(
                &format!("{mode}: outside sees the {what} address"),
                seen == want,
                &format!("connection came from {seen} (expected {want})"),
            );
        }
        Err(e) => report.check(&format!("{mode}: SNAT to outside"), false, &e.to_string()),
    }
    Ok(())
}

fn print_counters(cluster: &Cluster) {
    println!("-- agent counters (non-zero)");
    for node in &cluster.nodes {
        if node.kind != NodeKind::Hybridway {
            continue;
        }
        match cluster.metrics_of(node.index) {
            Ok(text) => {
                println!("  node{}:", node.index);
                for line in text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                {
                    println!("    {line}");
                }
            }
            Err(e) => println!("  node{}: metrics unavailable: {e}", node.index),
        }
    }
}
