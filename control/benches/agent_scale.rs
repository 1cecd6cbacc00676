//! Agent scale benchmark on a real kube-apiserver (scripts/k8s-lab.sh), not a test:
//! it prints numbers and asserts only correctness.
//!
//! One agent in Kubernetes mode (TUN backend, so no packet memory) in a namespace on
//! the rig's bridge; hybrid overlay Nodes (block, mode and a published VTEP, as the
//! controller and their agents would write them) are created by four kubectl
//! processes at once.
//!
//! 1. 1,000 Nodes: the time from the last one created (kubectl returned) until the
//!    agent's published tables hold all of them (goal: at most 2 s), next to the time
//!    the API server took to create them (the baseline of the same run).
//! 2. 4,000 more (5,000 in all): the agent's resident memory (goal: at most 100 MiB).
//!
//! Run (root): `cargo bench -p hybridway-control --bench agent_scale`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::controller::{BLOCK, MODE, create_parallel};
use common::k8s_lab::KubeLab;
use common::kube_agent::KubeAgent;
use common::wait_for;
use hybridway_lab::Netns;

const WAIT: Duration = Duration::from_secs(600);
const ME: &str = "198.18.127.250";

/// Node `i`'s address (198.18.64.0/18, on the agent's /17) and /28 block of the
/// hybrid CIDR (block 0 is the agent's own).
fn node_of(i: usize) -> (String, String) {
    let n = u32::try_from(i).unwrap();
    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 1)) + n);
    let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) + 16 * (n + 1));
    (addr.to_string(), format!("{block}/28"))
}

fn node_yaml(name: &str, addr: &str, block: &str, vtep: Option<u32>) -> String {
    let flannel = vtep
        .map(|v| {
            format!(
                "    flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"02:00:{:02x}:{:02x}:{:02x}:{:02x}\"}}'\n    flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/public-ip: {addr}\n",
                v >> 24,
                (v >> 16) & 0xff,
                (v >> 8) & 0xff,
                v & 0xff
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    {BLOCK}: \"{block}\"\n    {MODE}: overlay\n{flannel}spec: {{podCIDR: \"{block}\"}}\nstatus:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n"
    )
}

/// Creates peers `from..to` with `procs` kubectl processes in parallel.
fn create_nodes(lab: &KubeLab, from: usize, to: usize, procs: usize) -> Duration {
    let docs: Vec<String> = (from..to)
        .map(|i| {
            let (addr, block) = node_of(i);
            let vtep = u32::try_from(i).unwrap();
            node_yaml(&format!("peer-{i:05}"), &addr, &block, Some(vtep))
        })
        .collect();
    create_parallel(lab, &docs, procs)
}

fn main() {
    if !common::benching("agent_scale") {
        return;
    }
    let lab = KubeLab::up();
    let ns = Netns::create(&format!("agscale{}", std::process::id() % 10_000)).unwrap();
    lab.attach(&ns.name, "eth0", &format!("{ME}/17"));
    let out = lab.apply(&node_yaml("me", ME, "198.19.128.0/28", None));
    assert!(out.status.success());
    let dir = lab.dir().join("agent-scale");
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = KubeAgent::new("me", &ns.name, &dir);
    agent.start(lab.kubeconfig());
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = agent.rss_kib().unwrap();

    let create = create_nodes(&lab, 0, 1000, 4);
    let created = Instant::now();
    wait_for(WAIT, "1,000 nodes in the agent's tables", || {
        (agent.table_nodes().len() == 1000).then_some(())
    });
    let published = created.elapsed();

    let create_more = create_nodes(&lab, 1000, 5000, 4);
    let created = Instant::now();
    wait_for(WAIT, "5,000 nodes in the agent's tables", || {
        (agent.table_nodes().len() == 5000).then_some(())
    });
    let published_5k = created.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss = agent.rss_kib().unwrap();

    println!("agent_scale (kube-apiserver from scripts/k8s-lab.sh, one agent, TUN backend)");
    println!(
        "  1,000 nodes: created in {:.2} s (4 kubectl); in the published tables {:.2} s after the last was created (goal <= 2 s)",
        create.as_secs_f64(),
        published.as_secs_f64(),
    );
    println!(
        "  4,000 more created in {:.2} s; all 5,000 in the tables {:.2} s after the last",
        create_more.as_secs_f64(),
        published_5k.as_secs_f64()
    );
    println!(
        "  agent RSS: {:.1} MiB with no peers, {:.1} MiB with 5,000 (goal <= 100 MiB)",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    drop(agent);
}
