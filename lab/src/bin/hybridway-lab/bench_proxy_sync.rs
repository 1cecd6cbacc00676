//! `hybridway-lab bench-proxy-sync`: how long the real kube-proxy takes to rewrite
//! its rules when a cluster has `--services` Services of `--endpoints` endpoints
//! each, the reference for hybridway's Service table build (`cargo bench -p
//! hybridway-bench --bench services`).
//!
//! A real API server (the rig) and one node namespace running kube-proxy. The
//! Services and EndpointSlices are created through the API before kube-proxy
//! starts, by one `curl` posting JSON bodies over multiplexed HTTP/2 streams
//! (`--parallel` of them at once): `kubectl create` of multi-document files took 23
//! min for 10,000 x 10 while a running kube-proxy re-synced after every batch on
//! the same 2 cores. kube-proxy then starts on the full set: its first sync is the
//! full resync at this size (every rule written:
//! `kubeproxy_sync_full_proxy_rules_duration_seconds`), waited for up to `--wait`
//! minutes with progress every 30 s (the `iptables-restore` running and its CPU
//! time). Then partial syncs at this size (`kubeproxy_sync_proxy_rules_duration_
//! seconds`): `--add` more Services with their slices, and one endpoint changed.
//!
//! 10,000 Services need more ClusterIPs than the rig's service CIDR (a /20) has:
//! two more `ServiceCIDR` objects (198.18.208.0/20, 198.18.224.0/20, unused by the
//! address plan) give the API server 12,000 addresses.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use hybridway_lab::flannel::FLANNEL_NETWORK;
use hybridway_lab::kube_lab::KubeLab;
use hybridway_lab::kube_proxy::{
    FULL_SYNC_DURATION, KubeProxy, KubeProxySpec, ProxyMode, SYNC_DURATION, SyncTotals,
};
use hybridway_lab::{Netns, poll};
use serde_json::json;

use crate::report::load_average;

#[derive(Debug, Args)]
pub struct BenchProxySyncArgs {
    #[arg(long, default_value_t = 10_000)]
    pub services: u32,
    #[arg(long, default_value_t = 10)]
    pub endpoints: u32,
    /// Requests in flight while the objects are created (HTTP/2 streams of one
    /// curl).
    #[arg(long, default_value_t = 32)]
    pub parallel: u32,
    /// Minutes to wait for kube-proxy's first (full) sync.
    #[arg(long, default_value_t = 40)]
    pub wait: u64,
    /// Services (with their slices) added once the full sync is done: partial
    /// syncs at this size.
    #[arg(long, default_value_t = 10)]
    pub add: u32,
}

const NODE: &str = "kps1";
// Not .89: the Services cluster's outside host (service_lab::OUTSIDE) has it.
const NODE_ADDR: &str = "198.18.64.95/17";
const EXTRA_SERVICE_CIDRS: [&str; 2] = ["198.18.208.0/20", "198.18.224.0/20"];

/// Endpoint `j` of Service `i`: addresses of the cloud pod CIDR (198.19.0.0/17),
/// reused across Services (kube-proxy writes one chain per Service and endpoint
/// whatever the address).
fn endpoint(i: u32, j: u32, per_service: u32) -> Ipv4Addr {
    let n = i * per_service + j;
    let third = u8::try_from((n / 254) % 128).unwrap_or(0);
    let fourth = u8::try_from(n % 254 + 1).unwrap_or(1);
    Ipv4Addr::new(198, 19, third, fourth)
}

/// Services `range` and their slices as one multi-document manifest.
fn manifest(range: std::ops::Range<u32>, per_service: u32) -> String {
    let mut out = String::new();
    for i in range {
        let eps: Vec<String> = (0..per_service)
            .map(|j| {
                format!(
                    "{{addresses: [\"{}\"], conditions: {{ready: true}}}}",
                    endpoint(i, j, per_service)
                )
            })
            .collect();
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
            eps.join(", ")
        ));
    }
    out
}

/// Service `i` and its slice as API objects (the same as [`manifest`]).
fn objects(i: u32, per_service: u32) -> (serde_json::Value, serde_json::Value) {
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    });
    let endpoints: Vec<_> = (0..per_service)
        .map(|j| json!({"addresses": [endpoint(i, j, per_service).to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    (service, slice)
}

/// Creates Services `0..services` and their slices through the API: one curl,
/// `parallel` POSTs in flight on HTTP/2 (every Service before any slice; kube-proxy
/// is not running yet). Returns how long it took.
fn create_objects(
    kube: &KubeLab,
    dir: &Path,
    services: u32,
    per_service: u32,
    parallel: u32,
) -> anyhow::Result<Duration> {
    let bodies = dir.join("bodies");
    std::fs::create_dir_all(&bodies)?;
    let server = kube.server();
    let mut services_cfg = String::new();
    let mut slices_cfg = String::new();
    for i in 0..services {
        let (service, slice) = objects(i, per_service);
        for (kind, value, cfg, path) in [
            (
                "svc",
                service,
                &mut services_cfg,
                "api/v1/namespaces/default/services",
            ),
            (
                "eps",
                slice,
                &mut slices_cfg,
                "apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            ),
        ] {
            let file: PathBuf = bodies.join(format!("{kind}-{i}.json"));
            std::fs::write(&file, value.to_string())?;
            cfg.push_str(&format!(
                "upload-file = \"{}\"\nurl = \"{server}/{path}\"\noutput = \"/dev/null\"\n",
                file.display()
            ));
        }
    }
    let config = dir.join("create.curl");
    std::fs::write(&config, services_cfg + &slices_cfg)?;
    let pki = kube.dir().join("pki");
    let t0 = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--parallel", "--parallel-max"])
        .arg(parallel.to_string())
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .args(["-w", "%{http_code}\\n", "-K"])
        .arg(&config)
        .stderr(Stdio::piped())
        .output()
        .context("curl")?;
    let took = t0.elapsed();
    let codes = String::from_utf8_lossy(&out.stdout);
    let created = codes.lines().filter(|c| c.trim() == "201").count();
    let want = usize::try_from(services * 2).unwrap_or(usize::MAX);
    anyhow::ensure!(
        created == want,
        "{created} of {want} objects created (answers other than 201: {:?}); curl: {}",
        codes
            .lines()
            .filter(|c| c.trim() != "201")
            .take(5)
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// The `iptables-restore`/`iptables-nft-restore` processes running now and their
/// CPU seconds (user + system), for progress lines.
fn restores_running() -> Vec<(u32, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        // The command line, not `comm`: that is cut to 15 bytes ("iptables-restor").
        let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = argv0.split(|b| *b == 0).next()?;
        if !String::from_utf8_lossy(argv0).ends_with("tables-restore") {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.split_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        // After the comm: state is field 3, utime 14 and stime 15 (1-based).
        let cpu = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((pid, cpu / ticks))
    })
    .collect()
}

/// Prints a progress line every 30 s until `done` is set.
fn progress(what: &str, t0: Instant, done: &AtomicBool) {
    let mut next = Duration::from_secs(30);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        if t0.elapsed() >= next {
            let restores: Vec<String> = restores_running()
                .iter()
                .map(|(pid, cpu)| format!("pid {pid} {cpu:.0} s CPU"))
                .collect();
            println!(
                "    {what}: {:.0} s; iptables-restore running: {}; load {}",
                t0.elapsed().as_secs_f64(),
                if restores.is_empty() {
                    "none".into()
                } else {
                    restores.join(", ")
                },
                load_average()
            );
            next += Duration::from_secs(30);
        }
    }
}

/// Runs `f` while printing progress lines.
fn with_progress<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| progress(what, t0, &done));
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// Waits (up to `timeout`, checking every 2 s) for a sync recorded in histogram
/// `name` after `earlier`.
fn wait_sync(
    proxy: &KubeProxy,
    name: &str,
    earlier: &SyncTotals,
    timeout: Duration,
) -> anyhow::Result<SyncTotals> {
    let t0 = Instant::now();
    loop {
        if let Ok(now) = proxy.sync_totals(name)
            && now.count > earlier.count
        {
            return Ok(now);
        }
        anyhow::ensure!(
            t0.elapsed() < timeout,
            "kube-proxy recorded no {name} within {timeout:?}; log {}",
            proxy.log().display()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The number of Service-endpoint chains (`KUBE-SEP-*`) in `ns`'s nat table.
fn endpoint_chains(ns: &Netns) -> anyhow::Result<usize> {
    let out = ns.run("iptables-save -t nat")?;
    Ok(out.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count())
}

pub fn run(args: &BenchProxySyncArgs, _exe: &Path) -> anyhow::Result<()> {
    let kube = KubeLab::start(true)?;
    let dir = kube.dir().join("proxy-sync");
    std::fs::create_dir_all(&dir)?;
    for (k, cidr) in EXTRA_SERVICE_CIDRS.iter().enumerate() {
        kube.apply_checked(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: bench-{k}}}\nspec: {{cidrs: [\"{cidr}\"]}}\n"
        ))?;
    }
    let node_ip = NODE_ADDR.split('/').next().unwrap_or_default();
    kube.apply_checked(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nspec: {{podCIDR: \"198.19.189.0/24\"}}\nstatus:\n  addresses: [{{type: InternalIP, address: {node_ip}}}]\n"
    ))?;
    let ns = Netns::create(&format!("kps{}-n", std::process::id() % 10_000))?;
    kube.connect(&ns.name, "eth0", NODE_ADDR)?;

    let (services, per) = (args.services, args.endpoints);
    let parallel = args.parallel.clamp(1, 256);
    println!(
        "kube-proxy (iptables) full resync at {services} Services x {per} endpoints; load {}",
        load_average()
    );
    let created = create_objects(&kube, &dir, services, per, parallel)?;
    println!(
        "  {} objects created through the API in {:.1} s ({parallel} in flight, kube-proxy not running)",
        services * 2,
        created.as_secs_f64()
    );

    let spec = KubeProxySpec {
        node: NODE,
        kubeconfig: kube.kubeconfig(),
        cluster_cidr: FLANNEL_NETWORK,
        mode: ProxyMode::Iptables,
        dir: &dir,
    };
    let wait = Duration::from_secs(args.wait.saturating_mul(60));
    let t1 = Instant::now();
    // Its first sync writes every rule: the full resync at this size. Healthy may
    // come before it: wait for the histogram.
    let (proxy, full) = with_progress("waiting for the full sync", || -> anyhow::Result<_> {
        let proxy = KubeProxy::start(&ns, &spec, wait, true)?;
        let full = wait_sync(&proxy, FULL_SYNC_DURATION, &SyncTotals::default(), wait)?;
        Ok((proxy, full))
    })?;
    let synced = t1.elapsed();
    let want = usize::try_from(services * per).unwrap_or(usize::MAX);
    let chains = endpoint_chains(&ns)?;
    anyhow::ensure!(
        chains >= want,
        "only {chains} of {want} endpoint chains after the full sync; see {}",
        proxy.log().display()
    );
    if let Some(d) = full.mean_since(&SyncTotals::default()) {
        println!(
            "  full resync (kube-proxy's first sync, every rule written): {:.1} s from start to synced \
             ({chains} endpoint chains); its histogram: {} full syncs, {:.1} s in all, {:.1} s each; load {}",
            synced.as_secs_f64(),
            full.count,
            full.seconds,
            d.as_secs_f64(),
            load_average()
        );
    }

    // Partial syncs at this size: a few Services added, then one endpoint changed.
    if args.add > 0 {
        let before = proxy.sync_totals(SYNC_DURATION)?;
        let t2 = Instant::now();
        kube.apply_checked(&manifest(services..services + args.add, per))?;
        let want = usize::try_from((services + args.add) * per).unwrap_or(usize::MAX);
        let mut have = 0;
        let added = with_progress("waiting for the added Services", || {
            poll(wait, || {
                have = endpoint_chains(&ns).unwrap_or(have);
                (have >= want).then_some(())
            })
        });
        anyhow::ensure!(added.is_some(), "only {have} of {want} endpoint chains");
        let after = proxy.sync_totals(SYNC_DURATION)?;
        if let Some(d) = after.mean_since(&before) {
            println!(
                "  {} Services added: {} partial syncs, {:.0} ms each, all in {:.1} s after the apply",
                args.add,
                after.count - before.count,
                d.as_secs_f64() * 1e3,
                t2.elapsed().as_secs_f64()
            );
        }
    }
    let before = proxy.sync_totals(SYNC_DURATION)?;
    let moved = manifest(0..1, per).replace(
        &format!("\"{}\"", endpoint(0, 0, per)),
        "\"198.19.127.254\"",
    );
    kube.apply_checked(&moved)?;
    let after = with_progress("waiting for the changed endpoint", || {
        wait_sync(&proxy, SYNC_DURATION, &before, wait)
    })?;
    if let Some(d) = after.mean_since(&before) {
        println!(
            "  one endpoint changed (partial sync), mean of {}: {:.0} ms; load {}",
            after.count - before.count,
            d.as_secs_f64() * 1e3,
            load_average()
        );
    }
    drop(proxy);
    drop(ns);
    Ok(())
}
