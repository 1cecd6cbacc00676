//! `hybridway-lab bench-e2e` (bench/e2e/run.sh): pod-to-pod throughput on the demo's namespace topology,
//! through hybridway and through the kernel, in one run, with the ratio of each
//! hybridway figure to the kernel's path in the same mode.
//!
//! Figures per path: TCP throughput with one and with four streams (iperf3, 128 KiB
//! writes) and the 64-byte UDP packet rate (iperf3 `-u -l 18 -b 0`: 18 bytes of
//! payload make a 60-byte frame, 64 with the FCS a real wire would add), measured
//! as datagrams received per second; and the same 64-byte frames flooded by
//! `trafgen` pinned to the last core ([`hybridway_lab::flood`]), counted where they
//! arrive: the rate the path carries when the sender is not the bottleneck.
//!
//! Paths: hybridway AF_XDP overlay and underlay; the kernel's VXLAN configured like
//! flannel (overlay baseline) and kernel routing (underlay baseline), both with the
//! veths' offloads left on — the kernel at its best. The AF_XDP paths' veths run
//! with offloads off because AF_XDP sees frames as they are (see
//! `Netns::no_offloads`). The TUN backend runs both modes with the offloads on: its
//! veths and uplink are ordinary kernel devices, so TSO super-packets reach the TUN
//! and UDP GSO/GRO work on the uplink, as on a real node. SNAT is on everywhere (it
//! does not touch pod-to-pod traffic, but its steering rules are in place).

use std::path::Path;

use clap::Args;

use hybridway_lab::topology::{Cluster, ClusterSpec, NodeKind};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Measure only the paths whose name contains this text (and their kernel
    /// baseline), e.g. `AF_XDP overlay`.
    #[arg(long)]
    pub only: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    udp64_kpps: f64,
    flood64_kpps: f64,
    /// What trafgen sent, to show it was not the bottleneck.
    flood64_sent_kpps: f64,
}

/// Pod 1 on node 1 to pod 1 on node 2, the path every figure measures.
fn iperf_json(c: &Cluster, args: &str, seconds: u32) -> anyhow::Result<serde_json::Value> {
    Ok(hybridway_lab::traffic::iperf_json(
        c,
        (1, 1),
        (2, 1),
        args,
        seconds,
        seconds + 15,
    )?)
}

fn measure(c: &Cluster, seconds: u32) -> anyhow::Result<Figures> {
    let tcp = |streams: u32| -> anyhow::Result<f64> {
        let j = iperf_json(c, &format!("-P {streams}"), seconds)?;
        Ok(j.pointer("/end/sum_received/bits_per_second")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
            / 1e9)
    };
    let tcp1_gbps = tcp(1)?;
    let tcp4_gbps = tcp(4)?;
    let j = iperf_json(c, "-u -l 18 -b 0", seconds)?;
    let sum = j
        .pointer("/end/sum")
        .ok_or_else(|| anyhow::anyhow!("no UDP summary"))?;
    let packets = sum.get("packets").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let lost = sum
        .get("lost_packets")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let secs = sum
        .get("seconds")
        .and_then(|v| v.as_f64())
        .unwrap_or(f64::from(seconds))
        .max(0.001);
    let flood = hybridway_lab::flood::udp64(c, (1, 1), (2, 1), seconds)?;
    Ok(Figures {
        tcp1_gbps,
        tcp4_gbps,
        udp64_kpps: (packets - lost).max(0.0) / secs / 1e3,
        flood64_kpps: flood.received_kpps(),
        flood64_sent_kpps: flood.sent_kpps(),
    })
}

fn build(
    tag: &str,
    overlay: bool,
    kernel: bool,
    backend: &str,
    exe: &std::path::Path,
) -> anyhow::Result<Cluster> {
    let kind = match (kernel, overlay) {
        (false, _) => NodeKind::Hybridway,
        (true, true) => NodeKind::KernelVxlan,
        (true, false) => NodeKind::KernelRouting,
    };
    Ok(Cluster::build(ClusterSpec {
        tag: tag.to_string(),
        overlay,
        snat: true,
        snat_ports: None,
        backend: backend.into(),
        nodes: vec![kind, kind],
        pods_per_node: 1,
        workers: 1,
        // Only AF_XDP needs the veths' offloads off (it sees frames as they are on
        // the veth). On the TUN backend every veth and the uplink are ordinary kernel
        // devices, as on a real node, so they keep their offloads like the kernel's
        // paths: TSO super-packets reach the TUN and UDP GSO/GRO work on the uplink.
        kernel_offloads: kernel || backend == "tun",
        exe: exe.to_path_buf(),
        dir: std::env::temp_dir().join(tag),
    })?)
}

pub fn run(args: &BenchArgs, exe: &Path) -> anyhow::Result<()> {
    let base = format!("hwb{}", std::process::id() % 10_000);
    println!(
        "end-to-end pod-to-pod benchmark, {} s per figure (same run, same topology)",
        args.seconds
    );
    println!(
        "{:<34} {:>12} {:>12} {:>14} {:>16} {:>12}",
        "path", "TCP x1 Gb/s", "TCP x4 Gb/s", "UDP 64B kpps", "flood 64B kpps", "(sent kpps)"
    );
    let mut rows: Vec<(String, bool, bool, Figures)> = Vec::new();
    for (name, overlay, kernel, backend) in [
        ("kernel VXLAN (flannel-style)", true, true, "af_xdp"),
        ("hybridway AF_XDP overlay", true, false, "af_xdp"),
        ("hybridway TUN overlay", true, false, "tun"),
        ("kernel routing (underlay)", false, true, "af_xdp"),
        ("hybridway AF_XDP underlay", false, false, "af_xdp"),
        ("hybridway TUN underlay", false, false, "tun"),
    ] {
        if let Some(only) = &args.only {
            if !kernel && !name.contains(only.as_str()) {
                continue;
            }
            if kernel && !only.contains(if overlay { "overlay" } else { "underlay" }) {
                continue;
            }
        }
        let tag = format!(
            "{base}{}{}{}",
            if overlay { "o" } else { "u" },
            if kernel { "k" } else { "h" },
            &backend[..1]
        );
        let cluster = build(&tag, overlay, kernel, backend, exe)?;
        let f = measure(&cluster, args.seconds)?;
        drop(cluster);
        println!(
            "{name:<34} {:>12.2} {:>12.2} {:>14.1} {:>16.1} {:>12.1}",
            f.tcp1_gbps, f.tcp4_gbps, f.udp64_kpps, f.flood64_kpps, f.flood64_sent_kpps
        );
        rows.push((name.to_string(), overlay, kernel, f));
    }
    println!("\nratio hybridway / kernel (goal >= 1.0):");
    for row in rows.iter().filter(|r| !r.2) {
        let overlay = row.1;
        let k = rows.iter().find(|r| r.1 == overlay && r.2).map(|r| r.3);
        if let (Some(k), h) = (k, row.3) {
            let r = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            println!(
                "  {:<26} TCP x1 {:.2}x   TCP x4 {:.2}x   UDP 64B {:.2}x   flood 64B {:.2}x",
                row.0,
                r(h.tcp1_gbps, k.tcp1_gbps),
                r(h.tcp4_gbps, k.tcp4_gbps),
                r(h.udp64_kpps, k.udp64_kpps),
                r(h.flood64_kpps, k.flood64_kpps)
            );
        }
    }
    Ok(())
}
