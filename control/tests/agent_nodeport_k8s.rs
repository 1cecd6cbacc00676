//! NodePorts served by the agent's dataplane from the uplink, and the node's own
//! traffic to pods on another node, against a real API server (`KubeLab`), on each
//! backend of the node under test (h1):
//!
//! ```text
//!   hwlab0 (the rig's bridge, API server 198.18.200.N)
//!     ├── out 198.18.64.<o>/17   an outside host; also the nodes' default gateway
//!     ├── h1  198.18.64.<a>/17   agent (backend under test, overlay)  pod h1-p0
//!     └── h2  198.18.64.<a+1>/17 agent (TUN, overlay)                 pod h2-p0
//! ```
//!
//! Endpoints answer each connection with their name and the address they see the
//! client at. Services (written by hand, as the endpoint controller would):
//! - `np-remote`, NodePort 30141, `externalTrafficPolicy: Cluster`, endpoint h2-p0:
//!   the outside reaches h1:30141; the pod sees h1's gateway address (masqueraded).
//! - `np-near`, NodePort 30142, Cluster, endpoint h1-p0: the same, on h1 itself.
//! - `np-local`, NodePort 30143, `Local`, endpoint h1-p0: the pod sees the outside
//!   host's own address; h2 has no local endpoint, so h2:30143 answers nothing.
//!
//! And the node's own namespace pings and connects to the pod on the other node (h1
//! to h2-p0, h2 to h1-p0): the pod sees the node's pod-network address (its block's
//! first address); h1 (`services.hostClusterIpRanges`) reaches ClusterIPs itself.
//!
//! Needs root (CI runs as root). The node setup is this file's own until the shared
//! Services cluster (`hybridway_lab::service_lab`, branch kp14) can host it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::controller::{BLOCK, MODE, POOL};
use common::k8s_lab::KubeLab;
use common::kube_agent::KubeAgent;
use common::{require_root, wait_for};
use hybridway_control::agent::LocalPod;
use hybridway_control::agent::control::{self, Request};
use hybridway_lab::Netns;
use hybridway_lab::topology::plug_pod;

/// Overlay pod MTU under a 1500-byte uplink.
const POD_MTU: u16 = 1450;
const NP_REMOTE: u16 = 30141;
const NP_NEAR: u16 = 30142;
const NP_LOCAL: u16 = 30143;

/// One node: its namespace on the bridge, its agent and one pod.
struct Node {
    name: &'static str,
    addr: Ipv4Addr,
    /// Third octet of its block 198.19.X.0/24.
    block: u8,
    agent: KubeAgent,
    children: Vec<Child>,
    pod: Netns,
    ns: Netns,
}

impl Node {
    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.block, 1)
    }

    /// The host's own address in the pod network.
    fn host_pod_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.block, 0)
    }

    fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.block, 10)
    }

    fn pod_name(&self) -> String {
        format!("{}-p0", self.name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.agent.stop("TERM");
    }
}

/// The Node object, namespace, default route (via the outside host) and pod of a
/// hybrid node; the agent is not started yet.
fn node(lab: &KubeLab, tag: &str, name: &'static str, octet: u8, gw: Ipv4Addr, dir: &Path) -> Node {
    let addr = Ipv4Addr::new(198, 18, 64, octet);
    let block = octet;
    let cidr = format!("198.19.{block}.0/24");
    apply(
        lab,
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations: {{{BLOCK}: \"{cidr}\", {MODE}: overlay, {POOL}: pool-overlay}}\nspec: {{podCIDR: \"{cidr}\", podCIDRs: [\"{cidr}\"]}}\nstatus:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n"
        ),
    );
    let ns = Netns::create(&format!("{tag}{name}")).unwrap();
    lab.attach(&ns.name, "eth0", &format!("{addr}/17"));
    ns.no_offloads("eth0").unwrap();
    ns.run(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && ip route add default via {gw} dev eth0"
    ))
    .unwrap();
    let pod = Netns::create(&format!("{tag}{name}p")).unwrap();
    let ip = Ipv4Addr::new(198, 19, block, 10);
    let gateway = Ipv4Addr::new(198, 19, block, 1);
    let mac = format!("02:00:c6:13:{block:02x}:0a");
    plug_pod(&pod, &ns, "hwp0", ip, gateway, &mac, POD_MTU).unwrap();
    pod.no_offloads("eth0").unwrap();
    ns.no_offloads("hwp0").unwrap();
    pod.run("ip link set lo up").unwrap();
    Node {
        name,
        addr,
        block,
        agent: KubeAgent::new(name, &ns.name, dir),
        children: Vec::new(),
        pod,
        ns,
    }
}

/// Attaches the node's pod to its agent and starts its server: each connection on
/// 8080 gets "<pod name> <client address as the pod sees it>".
fn attach_and_serve(n: &mut Node) {
    let pod = LocalPod {
        name: n.pod_name(),
        ip: n.pod_ip(),
        mac: format!("02:00:c6:13:{:02x}:0a", n.block).parse().unwrap(),
        interface: "hwp0".into(),
        netns: Some(n.pod.name.clone()),
    };
    control::call(&n.agent.socket(), &Request::PodAdd { pod }).unwrap();
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(64)\nwhile True:\n    c,a=s.accept()\n    c.sendall(('{} %s\\n' % a[0]).encode())\n    c.close()\n",
        n.pod_name()
    );
    let child = n
        .pod
        .command("python3")
        .args(["-c", &server])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    n.children.push(child);
}

/// What the server at `addr`:`port` answers `from`; `None` when nothing does.
fn answer(from: &Netns, addr: Ipv4Addr, port: u16) -> Option<String> {
    let out = from
        .output(&format!(
            "timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}; cat <&3'"
        ))
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn apply(lab: &KubeLab, yaml: &str) {
    let out = lab.apply(yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A NodePort Service (80 → 8080) and its EndpointSlice with `endpoint` on `node`.
fn node_port_service(
    lab: &KubeLab,
    name: &str,
    cluster_ip: Ipv4Addr,
    node_port: u16,
    policy: &str,
    endpoint: (Ipv4Addr, &str),
) {
    apply(
        lab,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {cluster_ip}\n  externalTrafficPolicy: {policy}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]\n"
        ),
    );
    let (ip, node) = endpoint;
    apply(
        lab,
        &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}]\n"
        ),
    );
}

/// The scenario on h1 running `backend`; `octet`: h1's last address octet and block
/// (h2 takes the next), so the two backends' runs never share an address.
fn node_ports_and_node_traffic(backend: &str, octet: u8, outside_octet: u8) {
    require_root();
    let lab = KubeLab::up();
    let tag = format!("np{}{}", std::process::id() % 10_000, &backend[..1]);
    let dir = lab.dir().join("nodeport");
    std::fs::create_dir_all(&dir).unwrap();
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-rbac.yaml");
    lab.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()]);
    let kubeconfig = lab.service_account_kubeconfig("kube-system", "hybridway-agent");

    let outside_addr = Ipv4Addr::new(198, 18, 64, outside_octet);
    let outside = Netns::create(&format!("{tag}out")).unwrap();
    lab.attach(&outside.name, "eth0", &format!("{outside_addr}/17"));
    outside.no_offloads("eth0").unwrap();

    let mut h1 = node(&lab, &tag, "h1", octet, outside_addr, &dir);
    let mut h2 = node(&lab, &tag, "h2", octet + 1, outside_addr, &dir);
    // h1 also serves its own ClusterIP traffic (no kube-proxy on these nodes).
    h1.agent.start_with(
        &kubeconfig,
        backend,
        "services: {hostClusterIpRanges: [198.18.240.0/20]}\n",
    );
    h2.agent.start_on(&kubeconfig, "tun");
    attach_and_serve(&mut h1);
    attach_and_serve(&mut h2);
    wait_for(
        Duration::from_secs(60),
        "h1 and h2 learn each other",
        || {
            (h1.agent.table_nodes().contains(&"h2".to_string())
                && h2.agent.table_nodes().contains(&"h1".to_string()))
            .then_some(())
        },
    );

    // The node's own traffic to the pod on the other node, both ways.
    for (from, to) in [(&h1, &h2), (&h2, &h1)] {
        let got = wait_for(
            Duration::from_secs(30),
            &format!("{} reaches {}'s pod", from.name, to.name),
            || answer(&from.ns, to.pod_ip(), 8080),
        );
        assert_eq!(
            got,
            format!("{} {}", to.pod_name(), from.host_pod_addr()),
            "the pod sees the node's pod-network address"
        );
        from.ns
            .run(&format!("ping -c 2 -W 2 {}", to.pod_ip()))
            .unwrap_or_else(|e| panic!("{} pings {}'s pod: {e}", from.name, to.name));
    }

    node_port_service(
        &lab,
        "np-remote",
        Ipv4Addr::new(198, 18, 240, 141),
        NP_REMOTE,
        "Cluster",
        (h2.pod_ip(), "h2"),
    );
    node_port_service(
        &lab,
        "np-near",
        Ipv4Addr::new(198, 18, 240, 142),
        NP_NEAR,
        "Cluster",
        (h1.pod_ip(), "h1"),
    );
    node_port_service(
        &lab,
        "np-local",
        Ipv4Addr::new(198, 18, 240, 143),
        NP_LOCAL,
        "Local",
        (h1.pod_ip(), "h1"),
    );

    // Cluster policy: the endpoint on the other node, then the one on h1, each sees
    // h1's gateway address (masqueraded, as kube-proxy does).
    for (port, pod) in [(NP_REMOTE, h2.pod_name()), (NP_NEAR, h1.pod_name())] {
        let got = wait_for(
            Duration::from_secs(30),
            &format!("h1:{port} answers the outside host"),
            || answer(&outside, h1.addr, port),
        );
        assert_eq!(got, format!("{pod} {}", h1.gateway()), "NodePort {port}");
    }
    // Local policy: the client's own address reaches the pod.
    let got = wait_for(
        Duration::from_secs(30),
        "h1:30143 answers the outside host",
        || answer(&outside, h1.addr, NP_LOCAL),
    );
    assert_eq!(got, format!("{} {outside_addr}", h1.pod_name()));
    // ... and a node without a local endpoint does not answer (h2 serves NodePorts
    // too: it has np-remote's endpoint itself).
    let got = wait_for(
        Duration::from_secs(30),
        "h2:30141 answers the outside host",
        || answer(&outside, h2.addr, NP_REMOTE),
    );
    assert_eq!(got, format!("{} {}", h2.pod_name(), h2.gateway()));
    assert_eq!(answer(&outside, h2.addr, NP_LOCAL), None);

    // The node itself reaches ClusterIPs through its dataplane (no kube-proxy): an
    // endpoint on the other node sees the node's pod-network address.
    let got = wait_for(
        Duration::from_secs(30),
        "h1 reaches np-remote's ClusterIP",
        || answer(&h1.ns, Ipv4Addr::new(198, 18, 240, 141), 80),
    );
    assert_eq!(got, format!("{} {}", h2.pod_name(), h1.host_pod_addr()));
    let got = wait_for(
        Duration::from_secs(30),
        "h1 reaches np-near's ClusterIP",
        || answer(&h1.ns, Ipv4Addr::new(198, 18, 240, 142), 80),
    );
    assert!(got.starts_with(&format!("{} ", h1.pod_name())), "{got}");

    drop(h1);
    drop(h2);
}

#[test]
fn node_ports_and_node_traffic_on_tun() {
    node_ports_and_node_traffic("tun", 141, 149);
}

#[test]
fn node_ports_and_node_traffic_on_af_xdp() {
    node_ports_and_node_traffic("af_xdp", 144, 148);
}
