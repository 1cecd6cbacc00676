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
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use hybridway_lab::controller::{free_port, replica_command};
use hybridway_lab::flannel::start_flanneld;
use hybridway_lab::frr::{Bgpd, Neighbor};
use hybridway_lab::kube_lab::KubeLab;
use hybridway_lab::netns::{Netns, veth};
use hybridway_lab::process::Daemon;
use hybridway_lab::topology::{agent_answers, plug_pod};
use hybridway_lab::traffic::{iperf_between, iperf_flags, source_seen, summarize};
use hybridway_lab::{is_root, poll};

use crate::report::{Report, interrupted, need, watch_signals};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Port backend of the agents (af_xdp or tun).
    #[arg(long, default_value = "af_xdp")]
    pub backend: String,
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Keep the logs (agents, controllers, flanneld, bgpd, the API server) after the
    /// demo; their directory is printed.
    #[arg(long)]
    pub keep_logs: bool,
}

const SWITCH: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 1);
const SWITCH_ASN: u32 = 65001;
const SPEAKER_ASN: u32 = 65010;
/// The outside host (the switch's loopback), off every cluster range.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 150, 1);
const BGP_PASSWORD: &str = "demo-bgp-secret";
/// The hybrid pools of deploy/controller-config.yaml select nodes by this label.
const POOL_LABEL: &str = "alibabacloud.com/nodepool-id";
const CLOUD_POD_CIDR: &str = "198.19.1.0/24";
/// The overlay MTU: every pod may reach a node through VXLAN.
const POD_MTU: u16 = 1450;
/// Per step: how long the cluster may take to settle.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Cloud,
    Underlay,
    Overlay,
}

struct NodeSpec {
    name: &'static str,
    role: Role,
    addr: Ipv4Addr,
}

const NODES: [NodeSpec; 5] = [
    NodeSpec {
        name: "cloud-1",
        role: Role::Cloud,
        addr: Ipv4Addr::new(198, 18, 0, 111),
    },
    NodeSpec {
        name: "underlay-1",
        role: Role::Underlay,
        addr: Ipv4Addr::new(198, 18, 64, 111),
    },
    NodeSpec {
        name: "underlay-2",
        role: Role::Underlay,
        addr: Ipv4Addr::new(198, 18, 64, 112),
    },
    NodeSpec {
        name: "overlay-1",
        role: Role::Overlay,
        addr: Ipv4Addr::new(198, 18, 64, 113),
    },
    NodeSpec {
        name: "overlay-2",
        role: Role::Overlay,
        addr: Ipv4Addr::new(198, 18, 64, 114),
    },
];

impl NodeSpec {
    /// The node's address on the rig's bridge (API server traffic only); `index` is
    /// its place in [`NODES`].
    fn rig_addr(index: usize) -> String {
        format!("198.18.66.{}/32", 101 + index)
    }

    fn pool(&self) -> Option<&'static str> {
        match self.role {
            Role::Cloud => None,
            Role::Underlay => Some("np-underlay"),
            Role::Overlay => Some("np-overlay"),
        }
    }

    /// The Node as its kubelet registers it (the cloud node's podCIDR as the cloud's
    /// node IPAM would set it).
    fn node_yaml(&self) -> String {
        let labels = self
            .pool()
            .map(|p| format!("  labels: {{{POOL_LABEL}: {p}}}\n"))
            .unwrap_or_default();
        let spec = match self.role {
            Role::Cloud => format!("spec: {{podCIDR: \"{CLOUD_POD_CIDR}\"}}\n"),
            _ => String::new(),
        };
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n{labels}{spec}status:\n  addresses: [{{type: InternalIP, address: {}}}]\n",
            self.name, self.addr
        )
    }
}

/// One node: its namespace and what runs on it. Field order is drop order: the
/// processes stop before the namespaces go.
struct Node {
    spec: &'static NodeSpec,
    agent: Option<Daemon>,
    flanneld: Option<Daemon>,
    pods: Vec<Pod>,
    ns: Netns,
}

struct Pod {
    name: String,
    ip: Ipv4Addr,
    ns: Netns,
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
    if args.keep_logs {
        demo.lab.keep_logs();
        println!(
            "\nlogs kept in {} and {}",
            demo.dir.display(),
            demo.lab.dir().display()
        );
    }
    screen("cleaning up");
    timed("cleanup", || {
        drop(demo);
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
            "  applied deploy/crds, controller-rbac.yaml, agent-rbac.yaml, controller-config.yaml"
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

    fn traffic(
        &self,
        args: &ClusterArgs,
        stop: &AtomicBool,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        println!("-- ping (pod -> pod)");
        let pairs = [
            (
                "underlay-1",
                "underlay-2",
                "hybrid <-> hybrid, underlay pool",
            ),
            ("overlay-1", "overlay-2", "hybrid <-> hybrid, overlay pool"),
            ("underlay-1", "overlay-2", "hybrid <-> hybrid, across pools"),
            ("overlay-1", "underlay-2", "hybrid <-> hybrid, across pools"),
            ("underlay-2", "cloud-1", "hybrid <-> cloud"),
            ("overlay-1", "cloud-1", "hybrid <-> cloud"),
            ("cloud-1", "underlay-1", "cloud <-> hybrid"),
            ("cloud-1", "overlay-2", "cloud <-> hybrid"),
        ];
        for (from, to, what) in pairs {
            interrupted(stop)?;
            let (a, b) = (self.pod(from)?, self.pod(to)?);
            // The first packets may wait for tables to converge: retry for a while.
            let ok = poll(Duration::from_secs(20), || {
                a.ns.output(&format!("ping -c 2 -i 0.2 -W 2 -q {}", b.ip))
                    .ok()
                    .filter(|o| o.status.success())
            })
            .is_some();
            report.check(
                &format!("ping {} -> {} ({what})", a.name, b.name),
                ok,
                &b.ip.to_string(),
            );
        }
        println!("-- iperf3 (pod -> pod)");
        for (from, to, udp) in [
            ("underlay-1", "overlay-1", false),
            ("overlay-2", "underlay-2", true),
            ("overlay-1", "cloud-1", false),
            ("cloud-1", "underlay-2", false),
        ] {
            interrupted(stop)?;
            let (a, b) = (self.pod(from)?, self.pod(to)?);
            let what = format!(
                "iperf3 {} {} -> {}",
                if udp { "UDP" } else { "TCP" },
                a.name,
                b.name
            );
            let result = iperf_between(
                &a.ns,
                (&b.ns, b.ip),
                iperf_flags(udp),
                args.seconds,
                args.seconds + 15,
            )
            .and_then(|json| summarize(&json, udp));
            match result {
                Ok(line) => report.check(&what, true, &line),
                Err(e) => report.check(&what, false, &e.to_string()),
            }
        }
        println!("-- SNAT: pods -> the outside host {OUTSIDE}");
        for from in ["underlay-1", "overlay-2"] {
            interrupted(stop)?;
            let pod = self.pod(from)?;
            let node_addr = NODES
                .iter()
                .find(|n| n.name == from)
                .map(|n| n.addr)
                .context("node")?;
            let log = self.dir.join(format!("outside-{from}.json"));
            let what = format!("{} -> outside host: it sees the node's address", pod.name);
            match source_seen(&pod.ns, (&self.switch, OUTSIDE), &log) {
                Ok(seen) => report.check(
                    &what,
                    seen == node_addr,
                    &format!("seen {seen}, node {node_addr}, pod {}", pod.ip),
                ),
                Err(e) => report.check(&what, false, &e.to_string()),
            }
        }
        Ok(())
    }

    fn bgp(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let speakers: Vec<&NodeSpec> = NODES.iter().filter(|n| n.role == Role::Underlay).collect();
        let neighbors: Vec<Neighbor> = speakers
            .iter()
            .map(|s| Neighbor {
                addr: s.addr,
                asn: SPEAKER_ASN,
                password: Some(BGP_PASSWORD.into()),
            })
            .collect();
        self.bgpd = Some(Bgpd::start(
            &self.switch,
            &self.dir.join("frr"),
            SWITCH_ASN,
            SWITCH,
            &neighbors,
        )?);
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: bgp-password, namespace: kube-system}}\nstringData: {{password: {BGP_PASSWORD}}}\n"
        ))?;
        let peers: String = speakers
            .iter()
            .map(|s| {
                format!(
                    "  - name: {}\n    peers:\n    - {{name: switch, peerASN: {SWITCH_ASN}, peerAddress: {SWITCH}, authPassword: {{secretKeyRef: {{name: bgp-password, key: password}}}}}}\n",
                    s.name
                )
            })
            .collect();
        self.apply(&format!(
            "apiVersion: network.alibabacloud.com/v1beta1\nkind: BGPClusterConfig\nmetadata: {{name: underlay}}\nspec:\n  localASN: {SPEAKER_ASN}\n  nodeSelector: {{matchLabels: {{{POOL_LABEL}: np-underlay}}}}\n  bgpSpeakers:\n{peers}"
        ))?;
        println!("  applied Secret kube-system/bgp-password and BGPClusterConfig underlay");
        let bgpd = self.bgpd.as_ref().context("bgpd")?;
        let underlay_blocks: Vec<String> = self
            .blocks()
            .into_iter()
            .filter(|(_, _, m)| m == "underlay")
            .map(|(_, b, _)| b)
            .collect();
        let settled = poll(SETTLE, || {
            let up = speakers
                .iter()
                .all(|s| bgpd.peer_state(s.addr).as_deref() == Some("Established"));
            let routes = bgpd.routes();
            let all = underlay_blocks
                .iter()
                .all(|b| routes.iter().any(|(p, _)| p == b));
            (up && all).then_some(())
        });
        for s in &speakers {
            let state = bgpd.peer_state(s.addr).unwrap_or_else(|| "none".into());
            report.check(
                &format!("switch <-> {} session (TCP MD5 from the Secret)", s.name),
                state == "Established",
                &state,
            );
        }
        println!("-- the switch's routes (vtysh: show bgp ipv4 unicast)");
        println!("{}", indent(&bgpd.vtysh_text("show bgp ipv4 unicast")));
        let routes = bgpd.routes();
        for spec in &speakers {
            let block = self
                .blocks()
                .into_iter()
                .find(|(n, _, _)| n == spec.name)
                .map(|(_, b, _)| b)
                .unwrap_or_default();
            let hops = routes
                .iter()
                .find(|(p, _)| *p == block)
                .map(|(_, h)| h.join(","))
                .unwrap_or_default();
            report.check(
                &format!("the switch routes {block} ({}) via its node", spec.name),
                settled.is_some() && hops == spec.addr.to_string(),
                &format!("next hops: {hops}"),
            );
        }
        // The status the speakers report, where users look for it.
        let status_ok = poll(SETTLE, || {
            let text = self
                .lab
                .kubectl_checked(&["get", "bgpclusterconfig", "underlay", "-o", "json"])
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let peers: Vec<&serde_json::Value> = v
                .pointer("/status/speakers")?
                .as_array()?
                .iter()
                .flat_map(|s| {
                    s.get("peers")
                        .and_then(|p| p.as_array())
                        .into_iter()
                        .flatten()
                })
                .collect();
            (peers.len() == speakers.len() && peers.iter().all(|p| p["state"] == "Established"))
                .then_some(())
        });
        println!("-- kubectl get bgpclusterconfig");
        println!(
            "{}",
            indent(
                &self
                    .lab
                    .kubectl_checked(&["get", "bgpclusterconfig"])
                    .unwrap_or_else(|e| e.to_string())
            )
        );
        println!(
            "{}",
            indent(
                &self
                    .lab
                    .kubectl_checked(&[
                        "get",
                        "bgpclusterconfig",
                        "underlay",
                        "-o",
                        "jsonpath={range .status.speakers[*]}{.name}{\": \"}{range .peers[*]}{.name} {.state}, {.prefixesAdvertised} prefixes advertised{\"\\n\"}{end}{end}",
                    ])
                    .unwrap_or_else(|e| e.to_string())
            )
        );
        report.check(
            "BGPClusterConfig status: every speaker's session Established",
            status_ok.is_some(),
            "",
        );
        Ok(())
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

/// `hybridway agent` in Kubernetes mode on `node`, with the service account's
/// kubeconfig, as the DaemonSet runs it.
fn start_agent(
    node: &Node,
    exe: &Path,
    kubeconfig: &Path,
    dir: &Path,
    backend: &str,
) -> anyhow::Result<Daemon> {
    let n = node.spec.name;
    let d = dir.display();
    let cfg = dir.join(format!("{n}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "# generated by hybridway-lab cluster: the local part of deploy/agent-kubernetes.yaml\n\
             uplink: {{interface: eth0, gateway: {SWITCH}}}\n\
             snat: {{enabled: true}}\n\
             dataplane: {{backend: {backend}, workers: 1, hugepages: false, parkTimeoutMs: 50}}\n\
             metrics: {{listen: \"127.0.0.1:9460\"}}\n\
             control: {{socket: {d}/{n}.sock, stateFile: {d}/{n}-pods.json, clusterStateFile: {d}/{n}-cluster.json}}\n"
        ),
    )?;
    let mut cmd = node.ns.command(&exe.display().to_string());
    cmd.arg("agent")
        .arg("--config")
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", n])
        .env("RUST_LOG", "info,kube=warn");
    Ok(Daemon::spawn(
        &format!("agent of {n}"),
        cmd,
        &dir.join(format!("{n}.log")),
    )?)
}

/// The cloud node's pod, wired as flannel's CNI bridge would: the pods' gateway on
/// the node's side, a /32 route to the pod.
fn cloud_pod(node: &Node, pod: &Netns) -> Result<Ipv4Addr, hybridway_lab::LabError> {
    let ip = Ipv4Addr::new(198, 19, 1, 10);
    let gw = Ipv4Addr::new(198, 19, 1, 1);
    plug_pod(pod, &node.ns, "hwp1", ip, gw, "02:00:c6:13:01:0a", POD_MTU)?;
    pod.no_offloads("eth0")?;
    node.ns.no_offloads("hwp1")?;
    node.ns.run(&format!(
        "ip addr add {gw}/32 dev hwp1 && ip route replace {ip}/32 dev hwp1"
    ))?;
    Ok(ip)
}

/// libcni (scripts/cni-driver) with deploy/10-hybridway.conflist, run in a node's
/// namespace as containerd runs it on the node.
struct CniRuntime {
    driver: PathBuf,
    cni_path: String,
    template: serde_json::Value,
    dir: PathBuf,
}

impl CniRuntime {
    fn new(exe: &Path, dir: &Path) -> anyhow::Result<CniRuntime> {
        // Cached after the first run; its progress shows while it builds.
        let script = repo().join("scripts/cni-lab.sh");
        if !Command::new(&script).arg("build").status()?.success() {
            anyhow::bail!("scripts/cni-lab.sh build failed");
        }
        let out = Command::new(&script).arg("path").output()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin");
        let plugins = exe.parent().context("the directory of hybridway")?;
        if !plugins.join("hybridway-cni").is_file() {
            anyhow::bail!(
                "{} is missing: cargo build --bin hybridway-cni",
                plugins.join("hybridway-cni").display()
            );
        }
        let text = std::fs::read_to_string(repo().join("deploy/10-hybridway.conflist"))?;
        Ok(CniRuntime {
            driver: bin.join("cni-driver"),
            cni_path: format!("{}:{}", plugins.display(), bin.display()),
            template: serde_json::from_str(&text)?,
            dir: dir.to_path_buf(),
        })
    }

    /// CNI ADD of `pod` (namespace `ns`) on `node`; the pod's address.
    fn add(&self, node: &Node, pod: &str, ns: &Netns) -> anyhow::Result<Ipv4Addr> {
        let n = node.spec.name;
        let mut list = self.template.clone();
        let plugin = list
            .pointer_mut("/plugins/0")
            .and_then(|p| p.as_object_mut())
            .context("deploy/10-hybridway.conflist has no plugin")?;
        plugin.insert(
            "agentSocket".into(),
            serde_json::json!(self.dir.join(format!("{n}.sock"))),
        );
        plugin.insert(
            "logFile".into(),
            serde_json::json!(self.dir.join(format!("cni-{n}.log"))),
        );
        let conflist = self.dir.join(format!("cni-{n}.conflist"));
        std::fs::write(&conflist, serde_json::to_string_pretty(&list)?)?;
        let out = node
            .ns
            .command(&self.driver.display().to_string())
            .arg("-conflist")
            .arg(&conflist)
            .args(["-cni-path", &self.cni_path])
            .arg("-cache-dir")
            .arg(self.dir.join(format!("cni-cache-{n}")))
            .args(["add", pod, &format!("/run/netns/{}", ns.name)])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "cni-driver printed no JSON: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(e) = v.get("error") {
            anyhow::bail!("CNI ADD failed: {e}");
        }
        let ip = v
            .pointer("/ips/0/address")
            .and_then(|a| a.as_str())
            .and_then(|a| a.split_once('/'))
            .and_then(|(ip, _)| ip.parse().ok())
            .with_context(|| format!("no address in the CNI result {v}"))?;
        Ok(ip)
    }
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
