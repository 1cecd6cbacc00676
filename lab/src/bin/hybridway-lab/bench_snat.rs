//! `hybridway-lab bench-snat` (bench/e2e/snat.sh): source NAT under load, hybridway beside the kernel's
//! `MASQUERADE` in the same run and topology (one node, one pod, one outside
//! server ip:port), with each hybridway figure as a ratio to the kernel's.
//!
//! Figures per path:
//! - **connections held**: the pod opens `--connections` TCP connections to the one
//!   outside ip:port, each exchanging a byte, and keeps them all open; counted are
//!   those that got their byte back;
//! - **short connections**: for `--seconds`, two client processes connect, send a
//!   byte, read it back and close, over and over; counted are completed
//!   connections, their rate and the slowest second (a stall shows as 0).
//!
//! The pod is tuned alike on every path (ephemeral ports 1024-65000 and
//! `tcp_tw_reuse`), so the pod's own stack is not what limits the figures.

use std::path::Path;

use clap::Args;

use hybridway_lab::snat_load::{self, Servers};
use hybridway_lab::topology::{Cluster, ClusterSpec, NodeKind, OUTSIDE_SERVER, pod_block};

#[derive(Debug, Args)]
pub struct BenchSnatArgs {
    /// Seconds of short connections per path.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Connections to hold open per path.
    #[arg(long, default_value_t = 30_000)]
    pub connections: usize,
    /// Hybridway backends to measure: af_xdp, tun or both.
    #[arg(long, default_value = "both")]
    pub backend: String,
}

const PORT: u16 = 7200;
/// Connections one client process holds at most (the machine caps open files).
const PER_PROCESS: usize = 8_000;

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    held: u64,
    held_failed: u64,
    short: u64,
    short_failed: u64,
    slowest_second: u64,
}

fn build(tag: &str, kernel: bool, backend: &str, exe: &Path) -> anyhow::Result<Cluster> {
    let kind = if kernel {
        NodeKind::KernelRouting
    } else {
        NodeKind::Hybridway
    };
    let c = Cluster::build(ClusterSpec {
        tag: tag.to_string(),
        overlay: false,
        snat: true,
        snat_ports: None,
        backend: backend.into(),
        nodes: vec![kind],
        pods_per_node: 1,
        workers: 1,
        kernel_offloads: kernel || backend == "tun",
        exe: exe.to_path_buf(),
        dir: std::env::temp_dir().join(tag),
    })?;
    if kernel {
        let node = c
            .node(1)
            .ok_or_else(|| anyhow::anyhow!("the kernel node is missing"))?;
        node.ns.run(&format!(
            "iptables -t nat -A POSTROUTING -s {} -o eth0 -j MASQUERADE",
            pod_block(1)
        ))?;
    }
    Ok(c)
}

fn measure(c: &Cluster, args: &BenchSnatArgs) -> anyhow::Result<Figures> {
    let helper = snat_load::install_helper(&c.spec.dir)?;
    let procs = args.connections.div_ceil(PER_PROCESS).max(1);
    let _servers = Servers::start(&helper, &c.outside, OUTSIDE_SERVER, PORT, procs)?;
    let pod = c
        .pod(1, 1)
        .ok_or_else(|| anyhow::anyhow!("the pod is missing"))?;
    snat_load::tune_client(&pod.ns, 1024, 65000)?;
    let held = snat_load::hold(
        &helper,
        &pod.ns,
        OUTSIDE_SERVER,
        PORT,
        args.connections,
        procs,
    )?;
    let mut f = Figures {
        held: held.outcome.answered,
        held_failed: held.outcome.failed,
        ..Figures::default()
    };
    if held.outcome.failed > 0 {
        println!(
            "    held connections that failed: {:?}",
            held.outcome.errors
        );
    }
    drop(held);
    let churn = snat_load::churn(&helper, &pod.ns, OUTSIDE_SERVER, PORT, args.seconds, 2)?;
    f.short = churn.outcome.answered;
    f.short_failed = churn.outcome.failed;
    f.slowest_second = churn.per_second.iter().copied().min().unwrap_or(0);
    if churn.outcome.failed > 0 {
        println!(
            "    short connections that failed: {:?}",
            churn.outcome.errors
        );
    }
    if f.slowest_second == 0 {
        println!("    connections per second: {:?}", churn.per_second);
    }
    if c.node(1).is_some_and(|n| n.kind == NodeKind::Hybridway) {
        let drops: Vec<String> = c
            .metrics_of(1)?
            .lines()
            .filter(|l| l.starts_with("hybridway_drops_total") && !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect();
        if !drops.is_empty() {
            println!("    {}", drops.join("\n    "));
        }
    }
    Ok(f)
}

pub fn run(args: &BenchSnatArgs, exe: &Path) -> anyhow::Result<()> {
    let base = format!("hws{}", std::process::id() % 10_000);
    let mut paths = vec![("kernel MASQUERADE", true, "tun")];
    if args.backend != "tun" {
        paths.push(("hybridway AF_XDP", false, "af_xdp"));
    }
    if args.backend != "af_xdp" {
        paths.push(("hybridway TUN", false, "tun"));
    }
    println!(
        "SNAT to one outside ip:port: {} connections held, then {} s of short connections (same run, same topology)",
        args.connections, args.seconds
    );
    println!(
        "{:<20} {:>8} {:>8} {:>12} {:>10} {:>8} {:>14}",
        "path", "held", "failed", "short conns", "per s", "failed", "slowest second"
    );
    let mut rows: Vec<(&str, bool, Figures)> = Vec::new();
    for (name, kernel, backend) in paths {
        let tag = format!("{base}{}{}", if kernel { "k" } else { "h" }, &backend[..1]);
        let cluster = build(&tag, kernel, backend, exe)?;
        let f = measure(&cluster, args)?;
        drop(cluster);
        println!(
            "{name:<20} {:>8} {:>8} {:>12} {:>10.0} {:>8} {:>14}",
            f.held,
            f.held_failed,
            f.short,
            f.short as f64 / f64::from(args.seconds.max(1)),
            f.short_failed,
            f.slowest_second
        );
        rows.push((name, kernel, f));
    }
    let Some(k) = rows.iter().find(|r| r.1).map(|r| r.2) else {
        return Ok(());
    };
    println!("\nratio hybridway / kernel MASQUERADE (goal >= 1.0):");
    let r = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    for (name, _, h) in rows.iter().filter(|r| !r.1) {
        println!(
            "  {name:<18} held {:.2}x   short connections {:.2}x",
            r(h.held, k.held),
            r(h.short, k.short)
        );
    }
    Ok(())
}
