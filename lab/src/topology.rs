//! The demo's (and the end-to-end tests') cluster in network namespaces:
//!
//! ```text
//!   pod ns p{n}{j} (eth0 198.19.n.(10+j)/32, default via 198.19.n.1)
//!        │ veth (host side hwp{j})
//!   node ns n{n} (eth0 198.18.0.n/24, default via 198.18.0.254) ── agent or kernel VXLAN
//!        │ veth
//!   fabric ns fab (bridge br0) ── outside ns out (eth0 198.18.0.254/24,
//!                                                 server 198.18.100.1 on lo)
//! ```
//!
//! Every namespace is named `<tag>-<role>`; dropping the [`Cluster`] stops the agents
//! (SIGTERM, then SIGKILL) and deletes every namespace. The agents are driven as
//! processes: `hybridway agent`, `hybridway pod add`, `hybridway status`, and their
//! metrics endpoint.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::netns::{Netns, run, veth};
use crate::process::Daemon;

/// The outside host's service address (on the outside namespace's loopback).
pub const OUTSIDE_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The uplink gateway (the outside namespace).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// What building or driving the cluster fails with.
pub type ClusterError = LabError;

/// What runs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A hybridway agent.
    Hybridway,
    /// The Linux kernel's VXLAN device configured as flannel does (overlay only).
    KernelVxlan,
    /// Plain kernel routing (underlay only).
    KernelRouting,
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Prefix of every namespace name; keep it short and unique (pid).
    pub tag: String,
    pub overlay: bool,
    pub snat: bool,
    /// `snat.portRange` (min, max) of the agents; `None` keeps the default.
    pub snat_ports: Option<(u16, u16)>,
    pub backend: String,
    pub nodes: Vec<NodeKind>,
    pub pods_per_node: u8,
    /// Worker threads per agent (pinned to consecutive cores, wrapping).
    pub workers: u8,
    /// Leave the veths' checksum/segmentation offloads on (only meaningful for an
    /// all-kernel cluster: the kernel baseline at its best; AF_XDP needs them off).
    pub kernel_offloads: bool,
    /// The `hybridway` executable.
    pub exe: PathBuf,
    /// Where configs, sockets and logs go.
    pub dir: PathBuf,
}

/// One node.
#[derive(Debug)]
pub struct Node {
    pub index: u8,
    pub kind: NodeKind,
    pub ns: Netns,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics_port: u16,
    pub log: PathBuf,
    agent: Option<Daemon>,
}

/// One pod.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: u8,
    pub ip: Ipv4Addr,
    pub ns: Netns,
}

#[derive(Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    // Field order is drop order: pods and nodes go before the fabric.
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub outside: Netns,
    pub fabric: Netns,
}

pub fn node_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

pub fn pod_block(n: u8) -> String {
    format!("198.19.{n}.0/24")
}

pub fn pod_gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, n, 1)
}

pub fn pod_ip(n: u8, j: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, n, 10 + j)
}

pub fn vtep_mac(n: u8) -> String {
    format!("02:76:74:65:70:{n:02x}")
}

fn pod_mac(n: u8, j: u8) -> String {
    format!("02:00:c6:13:{n:02x}:{:02x}", 10 + j)
}

impl Cluster {
    /// Builds the namespaces, starts an agent on every hybridway node and attaches
    /// the pods.
    pub fn build(spec: ClusterSpec) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(&spec.dir)?;
        let tag = spec.tag.clone();
        let spec_offloads = spec.kernel_offloads;
        let fabric = Netns::create(&format!("{tag}-fab"))?;
        fabric.run("ip link add br0 type bridge && ip link set br0 up")?;
        // The fabric stands for the switches between nodes, which run no iptables.
        // With br_netfilter loaded (it is on this CI machine) every bridged frame goes
        // through iptables here: a per-frame cost that the kernel paths' 64 KiB
        // GSO frames amortise and hybridway's per-segment frames do not.
        // HYBRIDWAY_FABRIC_NETFILTER=1 keeps the old behaviour measurable.
        if std::env::var("HYBRIDWAY_FABRIC_NETFILTER").as_deref() != Ok("1") {
            fabric.run(
                "for t in iptables ip6tables arptables; do \
                 f=/proc/sys/net/bridge/bridge-nf-call-$t; [ -e $f ] && echo 0 > $f; done; true",
            )?;
        }
        let outside = Netns::create(&format!("{tag}-out"))?;
        veth(&outside, "eth0", &fabric, "out")?;
        fabric.run("ip link set out master br0")?;
        outside.run(&format!(
            "ip addr add {GATEWAY}/24 dev eth0 && ip addr add {OUTSIDE_SERVER}/32 dev lo"
        ))?;
        if !spec_offloads {
            outside.no_offloads("eth0")?;
        }
        if !spec_offloads {
            fabric.no_offloads("out")?;
        }
        let mut cluster = Cluster {
            spec,
            pods: Vec::new(),
            nodes: Vec::new(),
            outside,
            fabric,
        };
        let count = u8::try_from(cluster.spec.nodes.len()).unwrap_or(2);
        for n in 1..=count {
            cluster.add_node(n)?;
        }
        for n in 1..=count {
            if cluster.node(n).map(|x| x.kind) == Some(NodeKind::Hybridway) {
                cluster.start_agent(n)?;
            }
        }
        for n in 1..=count {
            for j in 1..=cluster.spec.pods_per_node {
                cluster.add_pod(n, j)?;
            }
        }
        Ok(cluster)
    }

    pub fn node(&self, n: u8) -> Option<&Node> {
        self.nodes.iter().find(|x| x.index == n)
    }

    pub fn pod(&self, n: u8, j: u8) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.node == n && p.ip == pod_ip(n, j))
    }

    fn add_node(&mut self, n: u8) -> Result<(), ClusterError> {
        let kind = self
            .spec
            .nodes
            .get(usize::from(n - 1))
            .copied()
            .unwrap_or(NodeKind::Hybridway);
        let ns = Netns::create(&format!("{}-n{n}", self.spec.tag))?;
        veth(&ns, "eth0", &self.fabric, &format!("n{n}"))?;
        self.fabric.run(&format!("ip link set n{n} master br0"))?;
        ns.run(&format!(
            "ip addr add {}/24 dev eth0 && ip route add default via {GATEWAY}",
            node_addr(n)
        ))?;
        if !self.spec.kernel_offloads {
            ns.no_offloads("eth0")?;
            self.fabric.no_offloads(&format!("n{n}"))?;
        }
        // The outside routes pod blocks to their node (what BGP does for underlay /
        // SNAT-off); with SNAT on it never needs them.
        self.outside.run(&format!(
            "ip route replace {} via {}",
            pod_block(n),
            node_addr(n)
        ))?;
        let dir = &self.spec.dir;
        let node = Node {
            index: n,
            kind,
            ns,
            config: dir.join(format!("n{n}.yaml")),
            socket: dir.join(format!("n{n}.sock")),
            metrics_port: 9460 + u16::from(n),
            log: dir.join(format!("n{n}.log")),
            agent: None,
        };
        match kind {
            NodeKind::Hybridway => {
                std::fs::write(&node.config, self.agent_yaml(n))?;
                let _ = std::fs::remove_file(dir.join(format!("n{n}-pods.json")));
                let _ = std::fs::remove_file(dir.join(format!("n{n}-addresses.json")));
            }
            NodeKind::KernelVxlan => self.kernel_vxlan(&node.ns, n)?,
            NodeKind::KernelRouting => self.kernel_routing(&node.ns, n)?,
        }
        self.nodes.push(node);
        Ok(())
    }

    /// The agent configuration of node `n`: every other node is a peer.
    pub fn agent_yaml(&self, n: u8) -> String {
        self.agent_yaml_with_peers(n, &self.peer_indices(n))
    }

    fn peer_indices(&self, n: u8) -> Vec<u8> {
        let count = u8::try_from(self.spec.nodes.len()).unwrap_or(2);
        (1..=count).filter(|m| *m != n).collect()
    }

    /// The agent configuration of node `n` with only `peers` as other nodes.
    pub fn agent_yaml_with_peers(&self, n: u8, peers: &[u8]) -> String {
        let dir = self.spec.dir.display();
        let mut y = format!(
            "# generated by hybridway-lab\n\
             node: {{name: node{n}, address: {addr}}}\n\
             mode: {mode}\n\
             uplink: {{interface: eth0, gateway: {GATEWAY}}}\n\
             pods: {{block: {block}, gateway: {gw}}}\n\
             snat: {{enabled: {snat}{ports}}}\n\
             vxlan: {{vni: 1, port: 8472, vtepMac: \"{vtep}\"}}\n\
             dataplane: {{backend: {backend}, workers: {workers}, cores: [{cores}], hugepages: false, idlePolls: {idle}, parkTimeoutMs: 50}}\n\
             metrics: {{listen: \"127.0.0.1:{metrics}\"}}\n\
             control: {{socket: {dir}/n{n}.sock, stateFile: {dir}/n{n}-pods.json, addressFile: {dir}/n{n}-addresses.json}}\n\
             nodes:\n",
            addr = node_addr(n),
            mode = if self.spec.overlay {
                "overlay"
            } else {
                "underlay"
            },
            block = pod_block(n),
            gw = pod_gateway(n),
            snat = self.spec.snat,
            ports = self
                .spec
                .snat_ports
                .map(|(min, max)| format!(", portRange: {{min: {min}, max: {max}}}"))
                .unwrap_or_default(),
            vtep = vtep_mac(n),
            backend = self.spec.backend,
            metrics = 9460 + u16::from(n),
            // Tuning knob for experiments: empty polls before a worker parks.
            idle = std::env::var("HYBRIDWAY_IDLE_POLLS")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(512),
            workers = self.spec.workers.max(1),
            // Spread the nodes' workers over the cores instead of stacking them.
            cores = {
                let ncores = std::thread::available_parallelism().map_or(1, |c| c.get());
                (0..usize::from(self.spec.workers.max(1)))
                    .map(|w| ((usize::from(n - 1) + w) % ncores).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        for m in peers {
            y.push_str(&format!(
                "  - {{name: node{m}, address: {}, podBlock: {}, vtepMac: \"{}\"}}\n",
                node_addr(*m),
                pod_block(*m),
                vtep_mac(*m)
            ));
        }
        if peers.is_empty() {
            y = y.replace("nodes:\n", "nodes: []\n");
        }
        y
    }

    /// flannel's vxlan backend, by hand: flannel.1 with VNI 1 on port 8472, the
    /// node's pod block gateway, and for every other node a static FDB entry, a
    /// permanent neighbour for its VTEP address and a route via it, onlink.
    fn kernel_vxlan(&self, ns: &Netns, n: u8) -> Result<(), ClusterError> {
        ns.run(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             ip link add flannel.1 type vxlan id 1 local {addr} dev eth0 dstport 8472 nolearning && \
             ip link set flannel.1 address {vtep} mtu 1450 && \
             ip addr add 198.19.{n}.0/32 dev flannel.1 && ip link set flannel.1 up",
            addr = node_addr(n),
            vtep = vtep_mac(n)
        ))?;
        if !self.spec.kernel_offloads {
            ns.no_offloads("flannel.1")?;
        }
        for m in self.peer_indices(n) {
            ns.run(&format!(
                "bridge fdb append {vtep} dev flannel.1 dst {addr} && \
                 ip neigh replace 198.19.{m}.0 lladdr {vtep} dev flannel.1 nud permanent && \
                 ip route replace {block} via 198.19.{m}.0 dev flannel.1 onlink",
                vtep = vtep_mac(m),
                addr = node_addr(m),
                block = pod_block(m)
            ))?;
        }
        Ok(())
    }

    /// Underlay by the kernel: forward, and route every other block via its node.
    fn kernel_routing(&self, ns: &Netns, n: u8) -> Result<(), ClusterError> {
        ns.run("sysctl -qw net.ipv4.ip_forward=1")?;
        for m in self.peer_indices(n) {
            ns.run(&format!(
                "ip route replace {} via {}",
                pod_block(m),
                node_addr(m)
            ))?;
        }
        Ok(())
    }

    /// Starts (or restarts) the agent of node `n` and waits until it answers.
    pub fn start_agent(&mut self, n: u8) -> Result<(), ClusterError> {
        let exe = self.spec.exe.clone();
        let node = self
            .nodes
            .iter_mut()
            .find(|x| x.index == n)
            .ok_or_else(|| ClusterError::Agent(format!("no node {n}")))?;
        let mut cmd = node.ns.command(&exe.display().to_string());
        cmd.args(["agent", "--config", &node.config.display().to_string()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let child = Daemon::spawn(&format!("agent of node{n}"), cmd, &node.log)?;
        node.agent = Some(child);
        // An agent restores its pods before it answers: 100 AF_XDP pods take seconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(agent) = node.agent.as_mut()
                && let Some(status) = agent.exited()
            {
                return Err(ClusterError::Agent(format!(
                    "agent of node{n} exited with {status}:\n{}",
                    agent.log_tail(15)
                )));
            }
            if agent_answers(&exe, &node.socket) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Agent(format!(
                    "agent of node{n} did not answer within 120 s; see {}",
                    node.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent of node `n` with `signal` ("TERM" or "KILL"); waits for it.
    pub fn stop_agent(
        &mut self,
        n: u8,
        signal: &str,
    ) -> Result<Option<std::process::ExitStatus>, ClusterError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|x| x.index == n)
            .ok_or_else(|| ClusterError::Agent(format!("no node {n}")))?;
        Ok(node.stop_agent(signal))
    }

    /// Sends SIGHUP to node `n`'s agent.
    pub fn signal_agent(&self, n: u8, signal: &str) -> Result<(), ClusterError> {
        let node = self
            .node(n)
            .ok_or_else(|| ClusterError::Agent(format!("no node {n}")))?;
        let pid = node
            .agent_pid()
            .ok_or_else(|| ClusterError::Agent(format!("node{n} runs no agent")))?;
        run("kill", &[&format!("-{signal}"), &pid.to_string()])?;
        Ok(())
    }

    /// Creates pod `j` of node `n` and, on a hybridway node, attaches it.
    fn add_pod(&mut self, n: u8, j: u8) -> Result<(), ClusterError> {
        let name = format!("p{n}{j}");
        let ns = Netns::create(&format!("{}-{name}", self.spec.tag))?;
        let node = self
            .node(n)
            .ok_or_else(|| ClusterError::Agent(format!("no node {n}")))?;
        let host_dev = format!("hwp{j}");
        let (ip, gw, mac) = (pod_ip(n, j), pod_gateway(n), pod_mac(n, j));
        let mtu = if self.spec.overlay { 1450 } else { 1500 };
        plug_pod(&ns, &node.ns, &host_dev, ip, gw, &mac, mtu)?;
        if !self.spec.kernel_offloads {
            ns.no_offloads("eth0")?;
            node.ns.no_offloads(&host_dev)?;
        }
        match node.kind {
            NodeKind::Hybridway => {
                let socket = node.socket.display().to_string();
                let ip = ip.to_string();
                run(
                    &self.spec.exe.display().to_string(),
                    &[
                        "pod", "add", "--socket", &socket, "--name", &name, "--ip", &ip, "--mac",
                        &mac, "--port", &host_dev, "--netns", &ns.name,
                    ],
                )
                .map_err(|e| ClusterError::Agent(format!("attaching {name}: {e}")))?;
            }
            NodeKind::KernelVxlan | NodeKind::KernelRouting => {
                node.ns.run(&format!(
                    "sysctl -qw net.ipv4.conf.{host_dev}.proxy_arp=1 && ip route replace {ip}/32 dev {host_dev}"
                ))?;
            }
        }
        self.pods.push(Pod {
            name,
            node: n,
            ip,
            ns,
        });
        Ok(())
    }

    /// `ping` from pod (n, j) to `dst`: true when every probe was answered.
    pub fn ping(&self, from: (u8, u8), dst: Ipv4Addr, count: u32) -> Result<bool, ClusterError> {
        let pod = self
            .pod(from.0, from.1)
            .ok_or_else(|| ClusterError::Agent("no such pod".into()))?;
        let out = pod
            .ns
            .output(&format!("ping -c {count} -i 0.2 -W 2 -q {dst}"))?;
        Ok(out.status.success())
    }

    /// Sum of node `n`'s metric samples named `name` whose line contains `label`.
    pub fn metric_sum(&self, n: u8, name: &str, label: &str) -> Result<u64, ClusterError> {
        Ok(sample_sum(&self.metrics_of(n)?, name, label))
    }

    pub fn metrics_of(&self, n: u8) -> Result<String, ClusterError> {
        let node = self
            .node(n)
            .ok_or_else(|| ClusterError::Agent(format!("no node {n}")))?;
        // The endpoint listens on the node's loopback: ask from inside.
        node.ns.run(&format!(
            "curl -sS --max-time 5 http://127.0.0.1:{}/metrics",
            node.metrics_port
        ))
    }

    pub fn log_path(&self, n: u8) -> Option<&Path> {
        self.node(n).map(|x| x.log.as_path())
    }
}

/// Sum of the samples named `name` whose line contains `label` in one scrape
/// `text` (several values compared with each other come from the same scrape).
pub fn sample_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

/// Wires pod namespace `pod` to its node as a CNI plugin would: a veth (`eth0` in
/// the pod, `host_dev` on the node), the pod's MAC, MTU and /32 address, its gateway
/// on-link and as default route. Attaching it (agent or kernel) is the caller's.
pub fn plug_pod(
    pod: &Netns,
    node: &Netns,
    host_dev: &str,
    ip: Ipv4Addr,
    gw: Ipv4Addr,
    mac: &str,
    mtu: u16,
) -> Result<(), LabError> {
    veth(pod, "eth0", node, host_dev)?;
    pod.run(&format!(
        "ip link set eth0 address {mac} mtu {mtu} && ip addr add {ip}/32 dev eth0 && \
         ip route add {gw} dev eth0 && ip route add default via {gw} dev eth0"
    ))?;
    Ok(())
}

impl Node {
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Daemon::pid)
    }

    fn stop_agent(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        self.agent.take()?.stop(signal)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent("TERM");
    }
}

/// Whether the agent behind `socket` answers `hybridway status` (it opens the socket
/// once its pods are restored).
pub fn agent_answers(exe: &Path, socket: &Path) -> bool {
    agent_status(exe, socket).is_some()
}

/// `hybridway status` of the agent behind `socket`, as JSON; `None` while it does not
/// answer.
pub fn agent_status(exe: &Path, socket: &Path) -> Option<serde_json::Value> {
    let out = std::process::Command::new(exe)
        .arg("status")
        .arg("--socket")
        .arg(socket)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then_some(())?;
    serde_json::from_slice(&out.stdout).ok()
}
