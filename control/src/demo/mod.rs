//! `hybridway demo`: two nodes with two pods each in network namespaces; pod-to-pod
//! ping and iperf3 in overlay and underlay, a pod reaching an outside host through
//! SNAT, and the agents' counters. Everything is removed at the end, on failure, and
//! on Ctrl-C (the namespaces and agents belong to guards that clean up on drop, and
//! Ctrl-C is turned into an orderly stop between steps).

pub mod bench;
pub mod bench_snat;
pub mod netns;
pub mod snat_load;
pub mod topology;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

use topology::{Cluster, ClusterSpec, NodeKind, OUTSIDE_SERVER, node_addr, pod_ip};

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

/// Results of the demo's checks.
#[derive(Debug, Default)]
struct Report {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: &str) {
        let line = if detail.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {detail}")
        };
        println!("  [{}] {line}", if ok { "PASS" } else { "FAIL" });
        if ok {
            self.passed.push(line)
        } else {
            self.failed.push(line)
        }
    }
}

fn interrupted(flag: &AtomicBool) -> anyhow::Result<()> {
    if flag.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Turns SIGINT/SIGTERM into a flag the steps check (children in our process group
/// get the signal too and end their step early).
fn watch_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                eprintln!("\ninterrupted: finishing the current step, then cleaning up");
                f.store(true, Ordering::SeqCst);
            });
        });
    flag
}

fn need(tool: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        anyhow::bail!(
            "`{tool}` is missing: run scripts/demo.sh (it installs the prerequisites) or apt-get install it"
        );
    }
    Ok(())
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !nix_is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and attaches XDP programs: run it as root"
        );
    }
    for tool in ["ip", "ping", "iperf3", "ethtool", "bridge"] {
        need(tool)?;
    }
    let stop = watch_signals();
    let exe = std::env::current_exe()?;
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
            exe: exe.clone(),
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
    println!(
        "\n=== summary: {} passed, {} failed ===",
        report.passed.len(),
        report.failed.len()
    );
    for f in &report.failed {
        println!("  FAILED: {f}");
    }
    if !report.failed.is_empty() {
        anyhow::bail!("{} demo checks failed", report.failed.len());
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
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

/// Runs `iperf3 -c … -t seconds ARGS -J` from `client` to a one-shot server on
/// `server` and returns its JSON report; shared by the demo and the end-to-end bench.
/// `timeout_secs` bounds the whole client run.
pub fn iperf_json(
    cluster: &Cluster,
    client: (u8, u8),
    server: (u8, u8),
    args: &str,
    seconds: u32,
    timeout_secs: u32,
) -> anyhow::Result<serde_json::Value> {
    let srv = cluster
        .pod(server.0, server.1)
        .ok_or_else(|| anyhow::anyhow!("no server pod"))?;
    let cli = cluster
        .pod(client.0, client.1)
        .ok_or_else(|| anyhow::anyhow!("no client pod"))?;
    let mut server_proc = srv
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-B", &srv.ip.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The server may need a moment to listen on a busy machine: retry the start.
    let mut result = Err(anyhow::anyhow!("iperf3 did not run"));
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = match cli.ns.try_sh(&format!(
            "timeout {timeout_secs} iperf3 -c {} -t {seconds} {args} --connect-timeout 3000 -J",
            srv.ip
        )) {
            Ok(out) => out,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let refused = text.contains("Connection refused");
        result = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|_| anyhow::anyhow!("iperf3 gave no JSON: {}", text.trim()));
        if !refused {
            break;
        }
    }
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    let json = result?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {err}");
    }
    Ok(json)
}

/// Runs iperf3 between two pods; returns a one-line summary.
pub fn iperf(
    cluster: &Cluster,
    client: (u8, u8),
    server: (u8, u8),
    udp: bool,
    seconds: u32,
) -> anyhow::Result<String> {
    let flags = if udp { "-u -b 100M -l 1200" } else { "" };
    let json = iperf_json(cluster, client, server, flags, seconds, seconds + 10)?;
    let end = json
        .get("end")
        .ok_or_else(|| anyhow::anyhow!("iperf3: no result"))?;
    if udp {
        let sum = end
            .get("sum")
            .ok_or_else(|| anyhow::anyhow!("iperf3: no UDP sum"))?;
        let bps = sum
            .get("bits_per_second")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        let lost = sum
            .get("lost_percent")
            .and_then(|v| v.as_f64())
            .unwrap_or(100.0);
        let packets = sum.get("packets").and_then(|v| v.as_u64()).unwrap_or(0);
        if packets == 0 || lost > 50.0 {
            anyhow::bail!("UDP: {packets} packets, {lost:.1}% lost");
        }
        Ok(format!(
            "{:.0} Mbit/s, {packets} datagrams, {lost:.2}% lost",
            bps / 1e6
        ))
    } else {
        let recv = end
            .get("sum_received")
            .and_then(|s| s.get("bits_per_second"))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if recv <= 0.0 {
            anyhow::bail!("TCP: nothing received");
        }
        Ok(format!("{:.0} Mbit/s received", recv / 1e6))
    }
}

/// Connects from pod `from` to the outside server and returns the source address the
/// outside saw (its iperf3 server reports the peer).
pub fn outside_sees(cluster: &Cluster, from: (u8, u8)) -> anyhow::Result<Ipv4Addr> {
    let cli = cluster
        .pod(from.0, from.1)
        .ok_or_else(|| anyhow::anyhow!("no client pod"))?;
    let log = cluster.spec.dir.join("outside-iperf.json");
    let _ = std::fs::remove_file(&log);
    let mut server = cluster
        .outside
        .command("iperf3")
        .args([
            "-s",
            "-1",
            "-J",
            "-B",
            &OUTSIDE_SERVER.to_string(),
            "--logfile",
            &log.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut out = None;
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = cli.ns.try_sh(&format!(
            "timeout 10 iperf3 -c {OUTSIDE_SERVER} -t 1 --connect-timeout 3000 -J"
        ))?;
        let refused = String::from_utf8_lossy(&o.stdout).contains("Connection refused");
        out = Some(o);
        if !refused {
            break;
        }
    }
    let out = out.ok_or_else(|| anyhow::anyhow!("iperf3 did not run"))?;
    // The server (-1) writes its JSON report as it exits: let it finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && matches!(server.try_wait(), Ok(None)) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    if !out.status.success() {
        anyhow::bail!("the pod could not reach {OUTSIDE_SERVER}");
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("no report from the outside server"))?;
    json.pointer("/start/connected/0/remote_host")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the outside server saw no connection"))
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

/// Where the demo writes its files by default.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir()
}
