//! `hybridway-lab bench-proxy-sync`: how long the real kube-proxy takes to rewrite
//! its rules when a cluster has `--services` Services of `--endpoints` endpoints
//! each, the reference for hybridway's Service table build (`cargo bench -p
//! hybridway-bench --bench services`).
//!
//! A real API server (the rig) and one node namespace running kube-proxy; the
//! Services and EndpointSlices are created through the API by parallel `kubectl
//! create` of generated multi-document files. Read from kube-proxy's own metrics:
//! the duration of a full sync (every rule rewritten:
//! `kubeproxy_sync_full_proxy_rules_duration_seconds`), which kube-proxy does when
//! it starts, so it is restarted once all the rules are in; the time from the first
//! object created to the last rule in; and a partial sync (one endpoint changed).
//!
//! 10,000 Services need more ClusterIPs than the rig's service CIDR (a /20) has:
//! two more `ServiceCIDR` objects (198.18.208.0/20, 198.18.224.0/20, unused by the
//! address plan) give the API server 12,000 addresses.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use hybridway_lab::flannel::FLANNEL_NETWORK;
use hybridway_lab::kube_lab::KubeLab;
use hybridway_lab::kube_proxy::{
    FULL_SYNC_DURATION, KubeProxy, KubeProxySpec, ProxyMode, SYNC_DURATION, SyncTotals,
};
use hybridway_lab::{Netns, poll};

#[derive(Debug, Args)]
pub struct BenchProxySyncArgs {
    #[arg(long, default_value_t = 10_000)]
    pub services: u32,
    #[arg(long, default_value_t = 10)]
    pub endpoints: u32,
    /// Parallel kubectl processes creating the objects.
    #[arg(long, default_value_t = 8)]
    pub parallel: u32,
}

const NODE: &str = "kps1";
const NODE_ADDR: &str = "198.18.64.89/17";
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
    let spec = KubeProxySpec {
        node: NODE,
        kubeconfig: kube.kubeconfig(),
        cluster_cidr: FLANNEL_NETWORK,
        mode: ProxyMode::Iptables,
        dir: &dir,
    };
    let proxy = KubeProxy::start(&ns, &spec, Duration::from_secs(60), true)?;

    let (services, per) = (args.services, args.endpoints);
    let parallel = args.parallel.clamp(1, 64);
    let chunk = services.div_ceil(parallel);
    let mut files = Vec::new();
    for p in 0..parallel {
        let range = (p * chunk)..((p + 1) * chunk).min(services);
        let file = dir.join(format!("objects-{p}.yaml"));
        std::fs::write(&file, manifest(range, per))?;
        files.push(file);
    }
    println!(
        "kube-proxy (iptables) resync: creating {services} Services x {per} endpoints ({parallel} kubectl in parallel)"
    );
    let t0 = Instant::now();
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            Command::new(kube.kubectl_path())
                .arg("--kubeconfig")
                .arg(kube.kubeconfig())
                .args(["create", "-f"])
                .arg(f)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect();
    for c in children {
        let out = c.context("kubectl")?.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let created = t0.elapsed();
    println!("  objects created in {:.1} s", created.as_secs_f64());
    let want = usize::try_from(services * per).unwrap_or(usize::MAX);
    let mut have = 0;
    let all_in = poll(Duration::from_secs(600), || {
        have = endpoint_chains(&ns).unwrap_or(have);
        (have >= want).then_some(())
    });
    anyhow::ensure!(
        all_in.is_some(),
        "only {have} of {want} endpoint chains after 600 s; see {}",
        proxy.log().display()
    );
    let all_in = t0.elapsed();
    println!(
        "  every endpoint chain in the nat table {:.1} s after the first object was created",
        all_in.as_secs_f64()
    );
    let during = proxy.sync_totals(SYNC_DURATION)?;
    println!(
        "  while the objects came in: {} syncs, {:.1} s in all",
        during.count, during.seconds
    );
    // kube-proxy rewrites every rule only when it starts (or after an error);
    // later syncs touch the changed Services only. A restarted kube-proxy's first
    // sync is the full resync at this size.
    drop(proxy);
    let t1 = Instant::now();
    let proxy = KubeProxy::start(&ns, &spec, Duration::from_secs(600), true)?;
    // Healthy may come before the first sync: wait for it.
    let full = proxy.wait_sync_after(
        FULL_SYNC_DURATION,
        &SyncTotals::default(),
        Duration::from_secs(600),
    )?;
    let restarted = t1.elapsed();
    if let Some(d) = full.mean_since(&SyncTotals::default()) {
        println!(
            "  full resync after a restart (every rule rewritten), mean of {}: {:.0} ms ({:.1} s from start to synced)",
            full.count,
            d.as_secs_f64() * 1e3,
            restarted.as_secs_f64()
        );
    }
    // One endpoint changed: a partial sync.
    let before = proxy.sync_totals(SYNC_DURATION)?;
    let moved = manifest(0..1, per).replace(
        &format!("\"{}\"", endpoint(0, 0, per)),
        "\"198.19.127.254\"",
    );
    kube.apply_checked(&moved)?;
    let after = proxy.wait_sync_after(SYNC_DURATION, &before, Duration::from_secs(60))?;
    if let Some(d) = after.mean_since(&before) {
        println!(
            "  one endpoint changed (partial sync), mean of {}: {:.0} ms",
            after.count - before.count,
            d.as_secs_f64() * 1e3
        );
    }
    drop(proxy);
    drop(ns);
    Ok(())
}
