//! `hybridway-lab cluster` (`scripts/demo.sh`): a small hybrid cluster on one
//! machine, installed from `deploy/` and run as a cluster runs it.
//!
//! ```text
//!  root ns: kube-apiserver + etcd (scripts/k8s-lab.sh, bridge hwlab0, 198.18.200.N)
//!           3 × hybridway controller (leader election over a Lease)
//!  fabric ns: bridge br0, 198.18.0.0/17 on-link
//!   ├── switch ns  198.18.64.1   FRR bgpd AS 65001; the outside host 198.18.150.1
//!   ├── cloud-1    198.18.0.111  flanneld (kube subnet manager, vxlan), pod by hand
//!   ├── underlay-1 198.18.64.111 hybridway agent (Kubernetes mode), BGP speaker
//!   ├── underlay-2 198.18.64.112 hybridway agent, BGP speaker
//!   ├── overlay-1  198.18.64.113 hybridway agent
//!   └── overlay-2  198.18.64.114 hybridway agent
//!  every node also has k8s0 (198.18.66.101-105/32) on hwlab0, for the API server
//! ```
//!
//! There is no kubelet or scheduler: the demo registers the Nodes as kubelets would,
//! runs the controller replicas and the agents as the Deployment and DaemonSet
//! would, and creates pods through the CNI plugin with libcni as containerd would.
//! Every process and namespace belongs to a guard: all is removed at the end, on
//! failure and on Ctrl-C.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use hybridway_lab::controller::{free_port, replica_command};
use hybridway_lab::flannel::start_flanneld;
use hybridway_lab::frr::Bgpd;
use hybridway_lab::kube_lab::KubeLab;
use hybridway_lab::netns::{Netns, veth};
use hybridway_lab::process::Daemon;
use hybridway_lab::topology::agent_answers;
use hybridway_lab::{is_root, poll};

use crate::report::{Report, interrupted, need, watch_signals};

mod bgp;
mod cni;
mod nodes;
mod traffic;

use cni::CniRuntime;
use nodes::{NODES, Node, NodeSpec, OUTSIDE, Pod, Role, SETTLE, SWITCH, cloud_pod, start_agent};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Port backend of the agents (af_xdp or tun).
    #[arg(long, default_value = "af_xdp")]
    pub backend: String,
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Keep the logs (agents, controllers, flanneld, bgpd, the API server) after the
    /// demo, as when a check fails; their directories are printed.
    #[arg(long)]
    pub keep_logs: bool,
}

/// Everything the demo started, dropped in order: agents and pods, the switch,
/// the controllers, then the control plane.
struct Demo {
    nodes: Vec<Node>,
    bgpd: Option<Bgpd>,
    switch: Netns,
    fabric: Netns,
    controllers: Vec<Daemon>,
    lab: KubeLab,
    dir: PathBuf,
    exe: PathBuf,
    tag: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Times a step and says so.
fn timed<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let t0 = Instant::now();
    let r = f();
    println!("  ({what}: {:.1} s)", t0.elapsed().as_secs_f64());
    r
}

fn screen(title: &str) {
    println!("\n=== {title} ===");
}

pub fn run(args: &ClusterArgs, exe: &Path) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and runs a control plane: run it as root"
        );
    }
    for tool in ["ip", "ping", "iperf3", "ethtool", "vtysh", "curl"] {
        need(tool)?;
    }
    let stop = watch_signals();
    let started = Instant::now();
    let mut report = Report::default();

    screen("1/7 control plane: kube-apiserver + etcd, deploy/ (CRDs, RBAC, ConfigMap)");
    println!(
        "  no kubelet, scheduler or controller-manager here: the demo registers Nodes as\n  kubelets would and runs the controller (3 replicas) and the agents (one per\n  hybrid node) as processes, as the Deployment and the DaemonSet would"
    );
    let mut demo = timed("control plane up", || Demo::start(exe))?;
    let result = demo.steps(args, &stop, &mut report);
    if let Err(e) = &result {
        report.check("the demo ran to the end", false, &format!("{e:#}"));
    }
    // The logs stay when asked for or when a check failed (to see why); the
    // namespaces and processes go in every case.
    let keep = args.keep_logs || !report.failed.is_empty();
    if keep {
        demo.lab.keep_logs();
        println!(
            "\nlogs kept in {} and {}",
            demo.dir.display(),
            demo.lab.dir().display()
        );
    }
    let dir = demo.dir.clone();
    screen("cleaning up");
    timed("cleanup", || {
        drop(demo);
        if !keep {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    })?;
    println!("  wall time: {:.1} s", started.elapsed().as_secs_f64());
    report.summary()
}

impl Demo {
    fn start(exe: &Path) -> anyhow::Result<Demo> {
        let tag = format!("hwcl{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Shows the one-time build of the control plane's binaries as it goes.
        let lab = KubeLab::start(true).context("starting the control plane")?;
        let fabric = Netns::create(&format!("{tag}-fab"))?;
        fabric.run("ip link add br0 type bridge && ip link set br0 up")?;
        let switch = Netns::create(&format!("{tag}-sw"))?;
        let demo = Demo {
            nodes: Vec::new(),
            bgpd: None,
            switch,
            fabric,
            controllers: Vec::new(),
            lab,
            dir,
            exe: exe.to_path_buf(),
            tag,
        };
        for f in std::fs::read_dir(repo().join("deploy/crds"))? {
            demo.apply_file(&f?.path())?;
        }
        for f in [
            "controller-rbac.yaml",
            "agent-rbac.yaml",
            "bgp-secrets-rbac.yaml",
            "controller-config.yaml",
        ] {
            demo.apply_file(&repo().join("deploy").join(f))?;
        }
        demo.lab.kubectl_checked(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/bgpclusterconfigs.network.alibabacloud.com",
        ])?;
        println!(
            "  applied deploy/crds, controller-rbac.yaml, agent-rbac.yaml, bgp-secrets-rbac.yaml,\n  controller-config.yaml"
        );
        Ok(demo)
    }

    fn apply_file(&self, path: &Path) -> anyhow::Result<()> {
        let path = path.display().to_string();
        self.lab.kubectl_checked(&["apply", "-f", &path])?;
        Ok(())
    }

    fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let out = self.lab.apply(manifest);
        if !out.status.success() {
            anyhow::bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn steps(
        &mut self,
        args: &ClusterArgs,
        stop: &AtomicBool,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        screen("2/7 the controller: 3 replicas, one leader");
        timed("controllers", || self.start_controllers(report))?;
        interrupted(stop)?;

        screen("3/7 nodes: a flannel cloud node, two hybrid pools of two nodes");
        timed("nodes and blocks", || self.start_nodes(report))?;
        interrupted(stop)?;

        screen("4/7 agents (Kubernetes mode) and pods through the CNI plugin (libcni)");
        timed("agents and pods", || {
            self.start_agents_and_pods(args, report)
        })?;
        interrupted(stop)?;

        screen("5/7 traffic: ping and iperf3, hybrid <-> hybrid and hybrid <-> cloud; SNAT");
        timed("traffic", || self.traffic(args, stop, report))?;
        interrupted(stop)?;

        screen("6/7 BGP: the switch peers with two speakers from a BGPClusterConfig");
        timed("BGP", || self.bgp(report))?;
        interrupted(stop)?;

        screen("7/7 leader failover");
        timed("failover", || self.failover(report))?;
        Ok(())
    }

    fn start_controllers(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let kubeconfig = self
            .lab
            .token_kubeconfig("kube-system", "hybridway-controller")?;
        for i in 1..=3 {
            let identity = format!("controller-{i}");
            let port = free_port()?;
            let cmd = replica_command(&self.exe, &kubeconfig, &identity, port);
            let log = self.dir.join(format!("{identity}.log"));
            self.controllers.push(Daemon::spawn(&identity, cmd, &log)?);
        }
        let leader = poll(SETTLE, || self.leader());
        report.check(
            "a controller replica holds the Lease kube-system/hybridway-controller",
            leader.is_some(),
            leader.as_deref().unwrap_or("no holder"),
        );
        Ok(())
    }

    fn leader(&self) -> Option<String> {
        self.lab.lease_holder("kube-system", "hybridway-controller")
    }

    fn start_nodes(&mut self, report: &mut Report) -> anyhow::Result<()> {
        veth(&self.switch, "eth0", &self.fabric, "sw")?;
        self.fabric.run("ip link set sw master br0")?;
        self.switch.run(&format!(
            "ip addr add {SWITCH}/17 dev eth0 && ip addr add {OUTSIDE}/32 dev lo"
        ))?;
        self.switch.no_offloads("eth0")?;
        self.fabric.no_offloads("sw")?;
        for (i, spec) in NODES.iter().enumerate() {
            let ns = Netns::create(&format!("{}-{}", self.tag, spec.name))?;
            let port = format!("n{i}");
            veth(&ns, "eth0", &self.fabric, &port)?;
            self.fabric.run(&format!("ip link set {port} master br0"))?;
            ns.run(&format!(
                "ip addr add {}/17 dev eth0 && ip route add default via {SWITCH} && sysctl -qw net.ipv4.ip_forward=1",
                spec.addr
            ))?;
            ns.no_offloads("eth0")?;
            self.fabric.no_offloads(&port)?;
            self.lab.connect(&ns.name, "k8s0", &NodeSpec::rig_addr(i))?;
            self.apply(&spec.node_yaml())?;
            self.nodes.push(Node {
                spec,
                agent: None,
                flanneld: None,
                pods: Vec::new(),
                ns,
            });
        }
        println!("  Nodes registered; the controller allocates hybrid blocks:");
        let hybrid: Vec<&str> = NODES
            .iter()
            .filter(|n| n.role != Role::Cloud)
            .map(|n| n.name)
            .collect();
        let all = poll(SETTLE, || {
            let blocks = self.blocks();
            hybrid
                .iter()
                .all(|n| blocks.iter().any(|(name, b, _)| name == n && !b.is_empty()))
                .then_some(blocks)
        });
        println!("{}", indent(&self.node_table()));
        let blocks = all.unwrap_or_else(|| self.blocks());
        for spec in NODES.iter().filter(|n| n.role != Role::Cloud) {
            let got = blocks.iter().find(|(n, _, _)| n == spec.name);
            let want_mode = if spec.role == Role::Underlay {
                "underlay"
            } else {
                "overlay"
            };
            let ok = got.is_some_and(|(_, b, m)| b.starts_with("198.19.") && m == want_mode);
            let detail = got
                .map(|(_, b, m)| format!("{b} ({m})"))
                .unwrap_or_else(|| "no block".into());
            report.check(
                &format!("{} has an {want_mode} block", spec.name),
                ok,
                &detail,
            );
        }
        Ok(())
    }

    /// (node, block, mode) from the controller's annotations.
    fn blocks(&self) -> Vec<(String, String, String)> {
        let text = self
            .lab
            .kubectl_checked(&["get", "nodes", "-o", "json"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let text_at = |n: &serde_json::Value, path: &str| {
            n.pointer(path)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        v.get("items")
            .and_then(|i| i.as_array())
            .into_iter()
            .flatten()
            .map(|n| {
                // `~1` is `/` in a JSON pointer.
                (
                    text_at(n, "/metadata/name"),
                    text_at(
                        n,
                        "/metadata/annotations/network.alibabacloud.com~1hybrid-pod-block",
                    ),
                    text_at(
                        n,
                        "/metadata/annotations/network.alibabacloud.com~1hybrid-mode",
                    ),
                )
            })
            .collect()
    }

    fn node_table(&self) -> String {
        self.lab
            .kubectl_checked(&[
                "get",
                "nodes",
                "-o",
                "custom-columns=NODE:.metadata.name,ADDRESS:.status.addresses[0].address,POOL:.metadata.labels.alibabacloud\\.com/nodepool-id,MODE:.metadata.annotations.network\\.alibabacloud\\.com/hybrid-mode,BLOCK:.metadata.annotations.network\\.alibabacloud\\.com/hybrid-pod-block,PODCIDR:.spec.podCIDR",
            ])
            .unwrap_or_else(|e| e.to_string())
    }

    fn start_agents_and_pods(
        &mut self,
        args: &ClusterArgs,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let agent_kc = self
            .lab
            .token_kubeconfig("kube-system", "hybridway-agent")?;
        let admin = self.lab.kubeconfig().to_path_buf();
        let cni = CniRuntime::new(&self.exe, &self.dir)?;
        for node in &mut self.nodes {
            if node.spec.role == Role::Cloud {
                node.flanneld = Some(start_flanneld(
                    &node.ns,
                    node.spec.name,
                    &admin,
                    &self.dir,
                    true,
                )?);
                continue;
            }
            let agent = start_agent(node, &self.exe, &agent_kc, &self.dir, &args.backend)?;
            node.agent = Some(agent);
        }
        for node in &mut self.nodes {
            let name = node.spec.name;
            if node.spec.role == Role::Cloud {
                continue;
            }
            let socket = self.dir.join(format!("{name}.sock"));
            let exe = &self.exe;
            let up = poll(SETTLE, || {
                if let Some(status) = node.agent.as_mut().and_then(Daemon::exited) {
                    return Some(Err(status));
                }
                agent_answers(exe, &socket).then_some(Ok(()))
            });
            let detail = match &up {
                Some(Ok(())) => String::new(),
                Some(Err(status)) => format!(
                    "exited with {status}: {}",
                    node.agent
                        .as_ref()
                        .map(|a| a.log_tail(5))
                        .unwrap_or_default()
                ),
                None => "did not answer in 60 s".into(),
            };
            report.check(
                &format!("agent of {name} runs"),
                matches!(up, Some(Ok(()))),
                &detail,
            );
        }
        let mut failed = false;
        for node in &mut self.nodes {
            let pod_name = format!("{}-pod", node.spec.name);
            let ns = Netns::create(&format!("{}-{pod_name}", self.tag))?;
            let added = if node.spec.role == Role::Cloud {
                cloud_pod(node, &ns).map_err(anyhow::Error::from)
            } else {
                cni.add(node, &pod_name, &ns)
            };
            match added {
                Ok(ip) => {
                    report.check(&format!("pod {pod_name}"), true, &ip.to_string());
                    node.pods.push(Pod {
                        name: pod_name,
                        ip,
                        ns,
                    });
                }
                Err(e) => {
                    failed = true;
                    report.check(&format!("pod {pod_name}"), false, &format!("{e:#}"));
                }
            }
        }
        if failed {
            anyhow::bail!("not every pod was created");
        }
        Ok(())
    }

    fn pod(&self, node: &str) -> anyhow::Result<&Pod> {
        self.nodes
            .iter()
            .find(|n| n.spec.name == node)
            .and_then(|n| n.pods.first())
            .with_context(|| format!("no pod on {node}"))
    }

    fn failover(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let Some(old) = self.leader() else {
            report.check("leader failover", false, "no leader to stop");
            return Ok(());
        };
        let Some(replica) = self.controllers.iter_mut().find(|c| c.name == old) else {
            report.check("leader failover", false, &format!("{old} is not ours"));
            return Ok(());
        };
        println!("  leader: {old}; killing it (SIGKILL: no graceful Lease release)");
        replica.stop("KILL");
        let t0 = Instant::now();
        let new = poll(SETTLE, || self.leader().filter(|l| *l != old));
        report.check(
            "another replica takes the Lease",
            new.is_some(),
            &format!(
                "{} after {:.1} s (lease duration 8 s)",
                new.as_deref().unwrap_or("nobody"),
                t0.elapsed().as_secs_f64()
            ),
        );
        // The new leader does the work: a node joining the overlay pool gets a block.
        let joiner = NodeSpec {
            name: "overlay-3",
            role: Role::Overlay,
            addr: Ipv4Addr::new(198, 18, 64, 115),
        };
        self.apply(&joiner.node_yaml())?;
        let block = poll(SETTLE, || {
            self.blocks()
                .into_iter()
                .find(|(n, b, _)| n == joiner.name && !b.is_empty())
                .map(|(_, b, _)| b)
        });
        report.check(
            "the new leader gives a joining node (overlay-3) a block",
            block.is_some(),
            block.as_deref().unwrap_or("no block"),
        );
        Ok(())
    }
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
