//! The Services cluster on a real API server ([`KubeLab`]), the same for hybridway
//! and for the reference (kube-proxy), so that Service tests and the Service
//! benchmark run one topology against each kind of client node:
//!
//! ```text
//!   hwlab0 (the rig's bridge, API server 198.18.200.N)
//!     ├── h1 198.18.64.81/17  the client node, one of
//!     │                         hybridway agent (TUN or AF_XDP backend, overlay)
//!     │                         kube-proxy + flanneld (kernel routing and VXLAN)
//!     │       pod c 198.19.181.10 (client), pod l 198.19.181.11 (endpoint, same node)
//!     ├── h2 198.18.64.82/17  hybridway agent (TUN, overlay)
//!     │       pod a 198.19.182.10, pod b 198.19.182.11
//!     └── c1 198.18.0.81/17   flanneld (the cloud node, kube subnet manager, vxlan)
//!             pod f 198.19.81.10
//! ```
//!
//! Pods are wired the same way on every node (`plug_pod`: a veth, a /32, the
//! block's gateway); a hybrid node attaches them to its agent with `hybridway pod
//! add`, a kernel node routes them (the gateway address on the host side, a /32
//! route). Services and EndpointSlices are written through the API as the endpoint
//! controller would ([`service_yaml`], [`slice_yaml`]; traffic policies and
//! endpoint conditions with [`service_with_policies_yaml`] and
//! [`slice_with_conditions_yaml`]).
//!
//! [`Extras`] add what the plain scenarios do not need: the real kube-proxy beside
//! the agent on a hybridway client node (the usual install keeps it on every node),
//! and an outside host on the nodes' subnet, the client of NodePorts: their default
//! gateway, or nobody's (nodes without a default route, as in an isolated segment).
//!
//! Dropping the lab stops the pods' programs, the agents, kube-proxy and flanneld,
//! deletes the namespaces and stops the API server, in that order.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::flannel::{FLANNEL_NETWORK, start_flanneld};
use crate::kube_lab::{KubeLab, SERVICE_CIDR};
use crate::kube_proxy::{KubeProxy, KubeProxySpec, ProxyMode};
use crate::netns::{Netns, run, unique};
use crate::process::Daemon;
use crate::topology::{agent_answers, agent_status, plug_pod};

/// The agent's Node annotations (written by the controller; the agent's API is
/// `control/src/k8s/annotations.rs`, which this crate does not link).
const HYBRID_POD_BLOCK: &str = "network.alibabacloud.com/hybrid-pod-block";
const HYBRID_MODE: &str = "network.alibabacloud.com/hybrid-mode";
const HYBRID_POOL: &str = "network.alibabacloud.com/hybrid-pool";
/// The outside host's address ([`Extras::outside_host`]).
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 89);
/// Every pod uses the overlay MTU (1500-byte uplinks, VXLAN between all nodes).
const POD_MTU: u16 = 1450;

/// The client pod (on h1).
pub const CLIENT: &str = "c";
/// The endpoint pod on the client's node.
pub const LOCAL: &str = "l";
/// The endpoint pods on the other hybrid node.
pub const REMOTE_A: &str = "a";
pub const REMOTE_B: &str = "b";
/// The endpoint pod on the flannel cloud node.
pub const CLOUD: &str = "f";

/// The hybridway port backend of a hybrid client node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tun,
    AfXdp,
}

impl Backend {
    /// The agent configuration's `dataplane.backend`.
    pub fn config_name(self) -> &'static str {
        match self {
            Backend::Tun => "tun",
            Backend::AfXdp => "af_xdp",
        }
    }
}

/// What serves Services on the client node h1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// A hybridway agent (its dataplane serves Services).
    Hybridway(Backend),
    /// The kernel (flanneld's VXLAN, routes) with the real kube-proxy.
    KubeProxy(ProxyMode),
}

impl ClientKind {
    /// A short name for reports: "hybridway-tun", "kube-proxy-iptables".
    pub fn label(self) -> String {
        match self {
            ClientKind::Hybridway(b) => format!("hybridway-{}", b.config_name()),
            ClientKind::KubeProxy(m) => format!("kube-proxy-{}", m.flag()),
        }
    }
}

/// A pod: its namespace and address.
#[derive(Debug)]
pub struct ServicePod {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub ns: Netns,
}

/// What runs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeRole {
    Hybrid(Backend),
    /// flanneld, and kube-proxy when `Some`.
    Kernel(Option<ProxyMode>),
}

/// A node namespace on the rig's bridge, what runs on it and its pods.
#[derive(Debug)]
pub struct ServiceNode {
    pub name: &'static str,
    pub addr: Ipv4Addr,
    /// Third octet of the pod block 198.19.X.0/24.
    block: u8,
    role: NodeRole,
    // Field order is drop order: processes, then pods, then the node.
    pub kube_proxy: Option<KubeProxy>,
    daemons: Vec<Daemon>,
    pub pods: Vec<ServicePod>,
    pub ns: Netns,
}

impl ServiceNode {
    fn block(&self) -> String {
        format!("198.19.{}.0/24", self.block)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.block, 1)
    }

    /// The node's own address in the pod network, its block's first address: what
    /// it speaks from to pods on other nodes (flannel's `flannel.1`, hybridway's
    /// `hwhost`), and what those pods see.
    pub fn host_pod_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.block, 0)
    }

    /// Whether `ip` is in the node's pod block (an address the node masquerades to:
    /// its pod-network address or its pods' gateway).
    pub fn in_block(&self, ip: Ipv4Addr) -> bool {
        matches!(ip.octets(), [198, 19, b, _] if b == self.block)
    }

    /// The agent's control socket (`hybridway status --socket`), in `dir`
    /// ([`ServiceLab::dir`]).
    pub fn socket(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.sock", self.name))
    }

    /// The Node as a kubelet registers it and, on a hybrid node, the controller
    /// annotates it.
    fn node_yaml(&self) -> String {
        let annotations = match self.role {
            NodeRole::Hybrid(_) => format!(
                "  annotations: {{{HYBRID_POD_BLOCK}: \"{b}\", {HYBRID_MODE}: overlay, {HYBRID_POOL}: pool-overlay}}\n",
                b = self.block()
            ),
            NodeRole::Kernel(_) => String::new(),
        };
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{annotations}spec: {{podCIDR: \"{b}\", podCIDRs: [\"{b}\"]}}\nstatus:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n",
            name = self.name,
            b = self.block(),
            addr = self.addr,
        )
    }
}

/// The cluster; see the module comment.
#[derive(Debug)]
pub struct ServiceLab {
    pub kind: ClientKind,
    /// Configs, sockets and logs (inside the rig's directory).
    pub dir: PathBuf,
    exe: PathBuf,
    // Field order is drop order: the pods' programs, the nodes, the API server.
    children: Vec<Child>,
    pub nodes: Vec<ServiceNode>,
    /// The outside host ([`Extras::outside_host`]).
    pub outside: Option<Netns>,
    /// [`Extras::snat`].
    snat: bool,
    /// [`Extras::workers`].
    workers: u16,
    /// [`Extras::no_default_route`].
    pub no_default_route: bool,
    pub kube: KubeLab,
    /// Held until everything above is gone: see [`take_the_addresses`].
    _addresses: std::fs::File,
}

/// Where Services clusters of every process on this machine take turns.
const ADDRESSES_LOCK: &str = "/run/hybridway-service-lab.lock";

/// Waits until no other Services cluster on this machine (another test binary, a
/// benchmark, a run by hand) holds the fixed node addresses, and takes them: they
/// are on the rig's shared bridge, and two clusters at once fail with "already in
/// use". Released when the file is closed, also when the process dies.
fn take_the_addresses() -> Result<std::fs::File, LabError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ADDRESSES_LOCK)?;
    file.lock()?;
    Ok(file)
}

/// What a Services cluster may run beyond the bare topology ([`ServiceLab::build_with`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    /// The real kube-proxy on the hybridway client node h1, beside its agent, as the
    /// usual install keeps it on every node; started (and in sync) before the agent.
    pub kube_proxy_beside_agent: Option<ProxyMode>,
    /// A host outside the cluster on the rig's bridge at [`OUTSIDE`], on the nodes'
    /// subnet, every node's default gateway (a router would be; an agent reads its
    /// gateway when it starts, and sends all but cluster traffic there): the client
    /// of NodePorts.
    pub outside_host: bool,
    /// With `outside_host`: the nodes get no default route (a segment with no way
    /// out, or one whose routers the nodes are not told about), so the outside host
    /// is reached on-link only and an agent finds no gateway.
    pub no_default_route: bool,
    /// Source NAT on in every agent (the agents' default; off in the bare cluster,
    /// which has no router to the outside): with the outside host, pods reach
    /// addresses outside the cluster, such as the API server behind the
    /// `kubernetes` Service.
    pub snat: bool,
    /// Dataplane workers of every agent (0: one). More than one spreads Service
    /// flows and their replies over workers (the VXLAN socket's and the TUN's
    /// queues spread packets by flow), as on a node with one worker per core.
    pub workers: u16,
}

impl ServiceLab {
    /// Starts the rig, the three nodes and their pods; returns once the client pod
    /// reaches every other pod (all agents and flanneld have learnt each other).
    /// `exe` is the `hybridway` executable.
    pub fn build(kind: ClientKind, exe: &Path, show_progress: bool) -> Result<Self, LabError> {
        Self::build_with(kind, &Extras::default(), exe, show_progress)
    }

    /// [`ServiceLab::build`] with `extras` too.
    pub fn build_with(
        kind: ClientKind,
        extras: &Extras,
        exe: &Path,
        show_progress: bool,
    ) -> Result<Self, LabError> {
        let addresses = take_the_addresses()?;
        let kube = KubeLab::start(show_progress)?;
        let dir = kube.dir().join("services");
        std::fs::create_dir_all(&dir)?;
        let mut lab = ServiceLab {
            kind,
            dir,
            exe: exe.to_owned(),
            children: Vec::new(),
            nodes: Vec::new(),
            outside: None,
            snat: extras.snat,
            workers: extras.workers.max(1),
            no_default_route: extras.no_default_route,
            kube,
            _addresses: addresses,
        };
        let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-rbac.yaml");
        lab.kube
            .kubectl_checked(&["apply", "-f", &rbac.display().to_string()])?;
        let agent_kubeconfig = lab
            .kube
            .token_kubeconfig("kube-system", "hybridway-agent")?;
        let admin = lab.kube.kubeconfig().to_owned();

        let tag = format!("sv{}{}", std::process::id() % 10_000, unique());
        let h1_role = match kind {
            ClientKind::Hybridway(b) => NodeRole::Hybrid(b),
            ClientKind::KubeProxy(m) => NodeRole::Kernel(Some(m)),
        };
        let plans: [(&'static str, Ipv4Addr, u8, NodeRole, &[&'static str]); 3] = [
            (
                "h1",
                Ipv4Addr::new(198, 18, 64, 81),
                181,
                h1_role,
                &[CLIENT, LOCAL],
            ),
            (
                "h2",
                Ipv4Addr::new(198, 18, 64, 82),
                182,
                NodeRole::Hybrid(Backend::Tun),
                &[REMOTE_A, REMOTE_B],
            ),
            (
                "c1",
                Ipv4Addr::new(198, 18, 0, 81),
                81,
                NodeRole::Kernel(None),
                &[CLOUD],
            ),
        ];
        for (name, addr, block, role, pods) in plans {
            let node = lab.add_node(&tag, name, addr, block, role, pods)?;
            lab.nodes.push(node);
        }
        if extras.outside_host {
            lab.add_outside_host(&tag)?;
        }
        if let Some(mode) = extras.kube_proxy_beside_agent {
            lab.start_kube_proxy_beside_agent(mode, show_progress)?;
        }
        for i in 0..lab.nodes.len() {
            lab.start_node(i, &agent_kubeconfig, &admin, show_progress)?;
        }
        // Every path the scenarios use works before they start.
        for pod in [LOCAL, REMOTE_A, REMOTE_B, CLOUD] {
            let ip = lab.pod(pod)?.ip;
            lab.wait_ping(ip, Duration::from_secs(90))?;
        }
        Ok(lab)
    }

    fn add_node(
        &self,
        tag: &str,
        name: &'static str,
        addr: Ipv4Addr,
        block: u8,
        role: NodeRole,
        pods: &[&'static str],
    ) -> Result<ServiceNode, LabError> {
        let mut node = ServiceNode {
            name,
            addr,
            block,
            role,
            kube_proxy: None,
            daemons: Vec::new(),
            pods: Vec::new(),
            ns: Netns::create(&format!("{tag}-{name}"))?,
        };
        self.kube.apply_checked(&node.node_yaml())?;
        self.kube
            .connect(&node.ns.name, "eth0", &format!("{addr}/17"))?;
        node.ns.no_offloads("eth0")?;
        // A real node's default route covers the service CIDR; the rig gives none.
        // kube-proxy rejects a Service without endpoints in FORWARD, which a packet
        // with no route never reaches.
        node.ns.run(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && ip route add {SERVICE_CIDR} dev eth0"
        ))?;
        for (j, pod_name) in (0u8..).zip(pods) {
            let ip = Ipv4Addr::new(198, 19, block, 10 + j);
            let ns = Netns::create(&format!("{tag}-{name}{pod_name}"))?;
            let dev = format!("hwp{j}");
            plug_pod(
                &ns,
                &node.ns,
                &dev,
                ip,
                node.gateway(),
                &pod_mac(ip),
                POD_MTU,
            )?;
            ns.no_offloads("eth0")?;
            node.ns.no_offloads(&dev)?;
            node.pods.push(ServicePod {
                name: pod_name,
                ip,
                ns,
            });
        }
        Ok(node)
    }

    /// Starts what runs on node `i` and attaches its pods.
    fn start_node(
        &mut self,
        i: usize,
        agent_kubeconfig: &Path,
        admin: &Path,
        show_progress: bool,
    ) -> Result<(), LabError> {
        let dir = self.dir.clone();
        let exe = self.exe.clone();
        let (snat, workers) = (self.snat, self.workers);
        let Some(node) = self.nodes.get_mut(i) else {
            return Ok(());
        };
        match node.role {
            NodeRole::Hybrid(backend) => {
                let agent =
                    start_agent(&exe, node, backend, snat, workers, agent_kubeconfig, &dir)?;
                node.daemons.push(agent);
                for (j, pod) in node.pods.iter().enumerate() {
                    run(
                        &exe.display().to_string(),
                        &[
                            "pod",
                            "add",
                            "--socket",
                            &node.socket(&dir).display().to_string(),
                            "--name",
                            &format!("{}-{}", node.name, pod.name),
                            "--ip",
                            &pod.ip.to_string(),
                            "--mac",
                            &pod_mac(pod.ip),
                            "--port",
                            &format!("hwp{j}"),
                            "--netns",
                            &pod.ns.name,
                        ],
                    )?;
                }
            }
            NodeRole::Kernel(proxy) => {
                let flanneld = start_flanneld(&node.ns, node.name, admin, &dir, show_progress)?;
                node.daemons.push(flanneld);
                // The kernel delivers to the pods as a CNI bridge would: the block's
                // gateway on the node's side of each veth, a /32 route per pod.
                for (j, pod) in node.pods.iter().enumerate() {
                    node.ns.run(&format!(
                        "ip addr add {gw}/32 dev hwp{j} && ip route replace {ip}/32 dev hwp{j}",
                        gw = node.gateway(),
                        ip = pod.ip
                    ))?;
                }
                if let Some(mode) = proxy {
                    node.kube_proxy =
                        Some(start_kube_proxy(node, mode, admin, &dir, show_progress)?);
                }
            }
        }
        Ok(())
    }

    /// Starts kube-proxy on h1 ([`Extras::kube_proxy_beside_agent`]); returns once
    /// its rules are in sync.
    fn start_kube_proxy_beside_agent(
        &mut self,
        mode: ProxyMode,
        show_progress: bool,
    ) -> Result<(), LabError> {
        let admin = self.kube.kubeconfig().to_owned();
        let dir = self.dir.clone();
        let node = self
            .nodes
            .first_mut()
            .filter(|n| matches!(n.role, NodeRole::Hybrid(_)))
            .ok_or_else(|| LabError::Kube("the client node is no hybridway node".into()))?;
        node.kube_proxy = Some(start_kube_proxy(node, mode, &admin, &dir, show_progress)?);
        Ok(())
    }

    /// The outside host ([`Extras::outside_host`]) and, unless
    /// [`Extras::no_default_route`], every node's default route to it.
    fn add_outside_host(&mut self, tag: &str) -> Result<(), LabError> {
        let ns = Netns::create(&format!("{tag}-out"))?;
        self.kube
            .connect(&ns.name, "eth0", &format!("{OUTSIDE}/17"))?;
        ns.no_offloads("eth0")?;
        // A router: what the nodes send it for the rig's services goes on to them.
        ns.run("sysctl -qw net.ipv4.ip_forward=1")?;
        if !self.no_default_route {
            for node in &self.nodes {
                node.ns
                    .run(&format!("ip route add default via {OUTSIDE} dev eth0"))?;
            }
        }
        self.outside = Some(ns);
        Ok(())
    }

    /// The outside host; fails unless the lab was built with one.
    pub fn outside_host(&self) -> Result<&Netns, LabError> {
        self.outside
            .as_ref()
            .ok_or_else(|| LabError::Kube("the lab was built without an outside host".into()))
    }

    /// The pod named `name` ([`CLIENT`], [`LOCAL`], ...).
    pub fn pod(&self, name: &str) -> Result<&ServicePod, LabError> {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::Kube(format!("no pod {name}")))
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &str) -> Result<&'static str, LabError> {
        self.nodes
            .iter()
            .find(|n| n.pods.iter().any(|p| p.name == pod))
            .map(|n| n.name)
            .ok_or_else(|| LabError::Kube(format!("no pod {pod}")))
    }

    /// The node named `name` (h1, h2, c1).
    pub fn node(&self, name: &str) -> Result<&ServiceNode, LabError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Kube(format!("no node {name}")))
    }

    /// `hybridway status` of `node`'s agent (hybridway nodes), as JSON; `None` while
    /// it does not answer.
    pub fn agent_status(&self, node: &ServiceNode) -> Option<serde_json::Value> {
        agent_status(&self.exe, &node.socket(&self.dir))
    }

    /// Whether `node`'s agent serves NodePort `proto`/`port` (`"tcp"`, 30080) in the
    /// tables its workers use: before that, the node's kernel (kube-proxy's rules,
    /// where it runs) answers the port.
    pub fn agent_serves_node_port(&self, node: &ServiceNode, proto: &str, port: u16) -> bool {
        let want = format!("{proto}/{port}");
        self.agent_status(node).is_some_and(|st| {
            st.pointer("/services/node_ports")
                .and_then(|p| p.as_array())
                .is_some_and(|ports| ports.iter().any(|p| p.as_str() == Some(want.as_str())))
        })
    }

    /// The client node (h1).
    pub fn client_node(&self) -> Result<&ServiceNode, LabError> {
        self.nodes
            .first()
            .ok_or_else(|| LabError::Kube("no client node".into()))
    }

    /// `kubectl apply` of a manifest; fails with kubectl's message.
    pub fn apply(&self, manifest: &str) -> Result<(), LabError> {
        self.kube.apply_checked(manifest)
    }

    /// Waits until the client pod pings `dst`.
    pub fn wait_ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<(), LabError> {
        let client = self.pod(CLIENT)?;
        let deadline = Instant::now() + timeout;
        loop {
            let out = client.ns.output(&format!("ping -c 1 -W 1 -q {dst}"))?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Traffic(format!(
                    "{}: the client pod does not reach {dst} within {timeout:?}; logs in {}",
                    self.kind.label(),
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Starts `program args` in pod `pod`; stopped when the lab drops.
    pub fn spawn_in_pod(
        &mut self,
        pod: &str,
        program: &str,
        args: &[&str],
    ) -> Result<(), LabError> {
        let child = self
            .pod(pod)?
            .ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for ServiceLab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// kube-proxy on `node` with the rig's admin kubeconfig. `--cluster-cidr` is the
/// whole pod network (flannel's network covers the cloud pod CIDR and the hybrid
/// pod CIDR): pods' flows are not masqueraded, the host's and the outside's are.
fn start_kube_proxy(
    node: &ServiceNode,
    mode: ProxyMode,
    admin: &Path,
    dir: &Path,
    show_progress: bool,
) -> Result<KubeProxy, LabError> {
    let spec = KubeProxySpec {
        node: node.name,
        kubeconfig: admin,
        cluster_cidr: FLANNEL_NETWORK,
        mode,
        dir,
    };
    KubeProxy::start(&node.ns, &spec, Duration::from_secs(60), show_progress)
}

/// `hybridway agent` in Kubernetes mode on `node`; returns once it answers on its
/// control socket (it opens it once it has its Node's block). Unless kube-proxy
/// runs beside it (and serves them), the node's own connections to ClusterIPs go
/// through the dataplane, as on a node without kube-proxy
/// (`services.hostClusterIpRanges`).
fn start_agent(
    exe: &Path,
    node: &ServiceNode,
    backend: Backend,
    snat: bool,
    workers: u16,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<Daemon, LabError> {
    let (d, n) = (dir.display(), node.name);
    let socket = node.socket(dir);
    let config = dir.join(format!("{n}.yaml"));
    let host_cluster_ips = if node.kube_proxy.is_none() {
        format!("services: {{hostClusterIpRanges: [{SERVICE_CIDR}]}}\n")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "uplink: {{interface: eth0}}\n\
             snat: {{enabled: {snat}}}\n\
             dataplane: {{backend: {backend}, workers: {workers}, hugepages: false, parkTimeoutMs: 50}}\n\
             metrics: {{listen: null}}\n\
             control: {{socket: {sock}, stateFile: {d}/{n}-pods.json, clusterStateFile: {d}/{n}-cluster.json}}\n\
             {host_cluster_ips}",
            backend = backend.config_name(),
            sock = socket.display(),
        ),
    )?;
    let mut cmd = node.ns.command(&exe.display().to_string());
    cmd.args(["agent", "--config", &config.display().to_string()])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", n])
        .env("RUST_LOG", "info,kube=warn");
    let mut agent = Daemon::spawn(&format!("agent of {n}"), cmd, &dir.join(format!("{n}.log")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent_answers(exe, &socket) {
        if let Some(status) = agent.exited() {
            return Err(LabError::Agent(format!(
                "agent of {n} exited with {status}:\n{}",
                agent.log_tail(20)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Agent(format!(
                "agent of {n} did not answer within 60 s:\n{}",
                agent.log_tail(20)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(agent)
}

fn pod_mac(ip: Ipv4Addr) -> String {
    let [_, _, c, d] = ip.octets();
    format!("02:00:c6:13:{c:02x}:{d:02x}")
}

/// A ClusterIP Service in `default`; `ports` is the YAML flow list of its ports;
/// `client_ip_affinity` sets `sessionAffinity: ClientIP`.
pub fn service_yaml(name: &str, ip: Ipv4Addr, ports: &str, client_ip_affinity: bool) -> String {
    let affinity = if client_ip_affinity {
        "  sessionAffinity: ClientIP\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n{affinity}  ports: {ports}\n"
    )
}

/// A NodePort Service in `default` (`externalTrafficPolicy: Cluster`): TCP `port`
/// on the ClusterIP `ip` and on every node's `node_port`, to the endpoints'
/// `target_port`.
pub fn node_port_service_yaml(
    name: &str,
    ip: Ipv4Addr,
    port: u16,
    node_port: u16,
    target_port: u16,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  externalTrafficPolicy: Cluster\n  ports: [{{name: http, port: {port}, targetPort: {target_port}, nodePort: {node_port}, protocol: TCP}}]\n"
    )
}

/// A LoadBalancer Service in `default` with `externalTrafficPolicy: Local` (no
/// load balancer controller runs: only its NodePort and ClusterIP serve): TCP `port`
/// on `ip` and every node's `node_port`, to the endpoints' `target_port`. kube-proxy
/// answers a load balancer's health check on every node's `health_node_port`
/// (`spec.healthCheckNodePort`): 200 where the Service has local endpoints.
pub fn local_load_balancer_yaml(
    name: &str,
    ip: Ipv4Addr,
    (port, node_port, target_port): (u16, u16, u16),
    health_node_port: u16,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: {ip}\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health_node_port}\n  ports: [{{name: http, port: {port}, targetPort: {target_port}, nodePort: {node_port}, protocol: TCP}}]\n"
    )
}

/// The Service's one EndpointSlice as the endpoint controller writes it: every
/// `(address, node)` ready.
pub fn slice_yaml(service: &str, ports: &str, endpoints: &[(Ipv4Addr, &str)]) -> String {
    let eps: Vec<(Ipv4Addr, &str, Conditions)> = endpoints
        .iter()
        .map(|&(ip, node)| (ip, node, Conditions::READY))
        .collect();
    slice_with_conditions_yaml(service, ports, &eps)
}

/// An endpoint's EndpointSlice `conditions`, as the endpoint controller sets them
/// through a pod's life (kube-proxy reads them in `pkg/proxy/topology.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    /// A running pod that passes its readiness probe.
    pub const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    /// A running pod that fails its readiness probe.
    pub const NOT_READY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
    /// A pod being deleted that still passes its readiness probe (finishing its
    /// connections; `ready` is false for every terminating pod).
    pub const TERMINATING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    /// A pod being deleted that no longer passes its readiness probe.
    pub const TERMINATING_NOT_SERVING: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: true,
    };
}

/// The Service's one EndpointSlice with each endpoint's `(address, node,
/// conditions)` as given.
pub fn slice_with_conditions_yaml(
    service: &str,
    ports: &str,
    endpoints: &[(Ipv4Addr, &str, Conditions)],
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, c)| {
            format!(
                "{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: {}, serving: {}, terminating: {}}}}}",
                c.ready, c.serving, c.terminating
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: {ports}\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// A Service traffic policy: every endpoint, or this node's only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

impl TrafficPolicy {
    fn name(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// A Service in `default` with its traffic policies: `internal` for pods' and the
/// nodes' traffic to the ClusterIP; `external`, when given, makes it a NodePort
/// Service (`ports`, the YAML flow list, then names each port's `nodePort`).
pub fn service_with_policies_yaml(
    name: &str,
    ip: Ipv4Addr,
    ports: &str,
    internal: TrafficPolicy,
    external: Option<TrafficPolicy>,
) -> String {
    let node_port = external
        .map(|p| format!("  type: NodePort\n  externalTrafficPolicy: {}\n", p.name()))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  internalTrafficPolicy: {internal}\n{node_port}  ports: {ports}\n",
        internal = internal.name()
    )
}
