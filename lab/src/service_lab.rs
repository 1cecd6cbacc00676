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
//! controller would ([`service_yaml`], [`slice_yaml`]).
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
use crate::topology::{agent_answers, plug_pod};

/// The agent's Node annotations (written by the controller; the agent's API is
/// `control/src/k8s/annotations.rs`, which this crate does not link).
const HYBRID_POD_BLOCK: &str = "network.alibabacloud.com/hybrid-pod-block";
const HYBRID_MODE: &str = "network.alibabacloud.com/hybrid-mode";
const HYBRID_POOL: &str = "network.alibabacloud.com/hybrid-pool";
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

    fn socket(&self, dir: &Path) -> PathBuf {
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
    pub kube: KubeLab,
}

impl ServiceLab {
    /// Starts the rig, the three nodes and their pods; returns once the client pod
    /// reaches every other pod (all agents and flanneld have learnt each other).
    /// `exe` is the `hybridway` executable.
    pub fn build(kind: ClientKind, exe: &Path, show_progress: bool) -> Result<Self, LabError> {
        let kube = KubeLab::start(show_progress)?;
        let dir = kube.dir().join("services");
        std::fs::create_dir_all(&dir)?;
        let mut lab = ServiceLab {
            kind,
            dir,
            exe: exe.to_owned(),
            children: Vec::new(),
            nodes: Vec::new(),
            kube,
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
        let Some(node) = self.nodes.get_mut(i) else {
            return Ok(());
        };
        match node.role {
            NodeRole::Hybrid(backend) => {
                let agent = start_agent(&exe, node, backend, agent_kubeconfig, &dir)?;
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
                    let spec = KubeProxySpec {
                        node: node.name,
                        kubeconfig: admin,
                        cluster_cidr: FLANNEL_NETWORK,
                        mode,
                        dir: &dir,
                    };
                    node.kube_proxy = Some(KubeProxy::start(
                        &node.ns,
                        &spec,
                        Duration::from_secs(60),
                        show_progress,
                    )?);
                }
            }
        }
        Ok(())
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

/// `hybridway agent` in Kubernetes mode on `node`; returns once it answers on its
/// control socket (it opens it once it has its Node's block).
fn start_agent(
    exe: &Path,
    node: &ServiceNode,
    backend: Backend,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<Daemon, LabError> {
    let (d, n) = (dir.display(), node.name);
    let socket = node.socket(dir);
    let config = dir.join(format!("{n}.yaml"));
    std::fs::write(
        &config,
        format!(
            "uplink: {{interface: eth0}}\n\
             snat: {{enabled: false}}\n\
             dataplane: {{backend: {backend}, workers: 1, hugepages: false, parkTimeoutMs: 50}}\n\
             metrics: {{listen: null}}\n\
             control: {{socket: {sock}, stateFile: {d}/{n}-pods.json, clusterStateFile: {d}/{n}-cluster.json}}\n",
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

/// The Service's one EndpointSlice as the endpoint controller writes it: every
/// `(address, node)` ready.
pub fn slice_yaml(service: &str, ports: &str, endpoints: &[(Ipv4Addr, &str)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, node)| {
            format!("{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: {ports}\nendpoints: [{}]\n",
        eps.join(", ")
    )
}
