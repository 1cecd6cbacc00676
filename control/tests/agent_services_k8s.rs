//! Kubernetes Services served by the agent's dataplane, against a real API server
//! (`KubeLab`): Services and EndpointSlices written by hand as the endpoint
//! controller would, pods on hybrid nodes reaching them by ClusterIP.
//!
//! ```text
//!   hwlab0 (the rig's bridge, API server 198.18.200.N)
//!     ├── h1  198.18.64.81/17  agent (TUN backend, overlay)  pod c  198.19.181.10 (client)
//!     └── h2  198.18.64.82/17  agent (TUN backend, overlay)  pod a  198.19.182.10
//!                                                             pod b  198.19.182.11
//! ```
//!
//! - `web` (198.18.240.81:80 → 8080): TCP to a pod on the other hybrid node.
//! - `dns` (198.18.240.53:53 UDP and TCP → dnsmasq in pod a) resolves a name.
//! - `who` (198.18.240.82:80 → 8080 on a and b): a endpoint removed from the slice
//!   gets no new connections.
//!
//! Needs root (CI runs as root).

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
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 81);
const WHO: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 82);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 53);

/// A hybrid node namespace with its agent and pods.
struct HybridNode {
    name: &'static str,
    agent: KubeAgent,
    /// Helper processes (servers in the pods), killed first.
    children: Vec<Child>,
    pods: Vec<(Netns, Ipv4Addr)>,
    /// Held so the node's namespace lives as long as the node (dropped last).
    _ns: Netns,
}

impl HybridNode {
    fn new(lab: &KubeLab, tag: &str, name: &'static str, index: u8, pods: u8, dir: &Path) -> Self {
        let addr = Ipv4Addr::new(198, 18, 64, 80 + index);
        let block = format!("198.19.{}.0/24", 180 + index);
        let out = lab.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations: {{{BLOCK}: \"{block}\", {MODE}: overlay, {POOL}: pool-overlay}}\nspec: {{podCIDR: \"{block}\", podCIDRs: [\"{block}\"]}}\nstatus:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n"
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns::create(&format!("{tag}-{name}")).unwrap();
        lab.attach(&ns.name, "eth0", &format!("{addr}/17"));
        ns.no_offloads("eth0").unwrap();
        ns.run("sysctl -qw net.ipv4.ip_forward=1").unwrap();
        let gateway = Ipv4Addr::new(198, 19, 180 + index, 1);
        let pods = (0..pods)
            .map(|i| {
                let ip = Ipv4Addr::new(198, 19, 180 + index, 10 + i);
                let pod = Netns::create(&format!("{tag}-{name}p{i}")).unwrap();
                let mac = format!("02:00:c6:13:{:02x}:{:02x}", 180 + index, 10 + i);
                plug_pod(&pod, &ns, &format!("hwp{i}"), ip, gateway, &mac, POD_MTU).unwrap();
                pod.no_offloads("eth0").unwrap();
                ns.no_offloads(&format!("hwp{i}")).unwrap();
                pod.run("ip link set lo up").unwrap();
                (pod, ip)
            })
            .collect();
        HybridNode {
            name,
            agent: KubeAgent::new(name, &ns.name, dir),
            children: Vec::new(),
            pods,
            _ns: ns,
        }
    }

    fn attach_pods(&self) {
        for (i, (pod, ip)) in self.pods.iter().enumerate() {
            let mac = format!("02:00:c6:13:{:02x}:{:02x}", ip.octets()[2], ip.octets()[3]);
            let pod = LocalPod {
                name: format!("{}-pod{i}", self.name),
                ip: *ip,
                mac: mac.parse().unwrap(),
                interface: format!("hwp{i}"),
                netns: Some(pod.name.clone()),
            };
            control::call(&self.agent.socket(), &Request::PodAdd { pod }).unwrap();
        }
    }

    /// A TCP server on port 8080 of pod `i` that answers every connection with its
    /// name and closes.
    fn serve_name(&mut self, i: usize) {
        let name = format!("{}-pod{i}", self.name);
        let server = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(64)\nwhile True:\n    c,_=s.accept()\n    c.sendall(b'{name}\\n')\n    c.close()\n"
        );
        self.spawn_in_pod(i, "python3", &["-c", &server]);
    }

    /// dnsmasq in pod `i`, answering `web.svc.test` with the `web` ClusterIP.
    fn serve_dns(&mut self, i: usize) {
        let answer = format!("--address=/web.svc.test/{WEB}");
        self.spawn_in_pod(
            i,
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file",
                "--port=53",
                &answer,
            ],
        );
    }

    /// Starts `program` in pod `i`, stopped when the node is dropped.
    fn spawn_in_pod(&mut self, i: usize, program: &str, args: &[&str]) {
        let child = self.pods[i]
            .0
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for HybridNode {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The name the server behind `addr`:80 answers with, from pod `pod`; `None` when
/// the connection fails.
fn who_answers(pod: &Netns, addr: Ipv4Addr) -> Option<String> {
    let out = pod
        .output(&format!(
            "timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/80; cat <&3'"
        ))
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn dig(pod: &Netns, tcp: bool) -> String {
    let proto = if tcp { "+tcp" } else { "+notcp" };
    let out = pod
        .output(&format!(
            "dig +short +time=2 +tries=1 {proto} @{DNS} web.svc.test A"
        ))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn service_yaml(name: &str, ip: Ipv4Addr, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: {ports}\n"
    )
}

fn slice_yaml(service: &str, ports: &str, endpoints: &[(Ipv4Addr, &str)]) -> String {
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

fn apply(lab: &KubeLab, yaml: &str) {
    let out = lab.apply(yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pods_on_hybrid_nodes_reach_services_by_cluster_ip() {
    require_root();
    let lab = KubeLab::up();
    let tag = format!("svc{}", std::process::id() % 10_000);
    let dir = lab.dir().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-rbac.yaml");
    lab.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()]);
    let kubeconfig = lab.service_account_kubeconfig("kube-system", "hybridway-agent");

    let mut h1 = HybridNode::new(&lab, &tag, "h1", 1, 1, &dir);
    let mut h2 = HybridNode::new(&lab, &tag, "h2", 2, 2, &dir);
    h1.agent.start(&kubeconfig);
    h2.agent.start(&kubeconfig);
    h1.attach_pods();
    h2.attach_pods();
    h2.serve_name(0);
    h2.serve_name(1);
    h2.serve_dns(0);
    let (a, b) = (h2.pods[0].1, h2.pods[1].1);
    let client = &h1.pods[0].0;
    wait_for(Duration::from_secs(60), "h1 learns h2", || {
        h1.agent
            .table_nodes()
            .contains(&"h2".to_string())
            .then_some(())
    });

    let tcp8080 = "[{name: http, port: 8080, protocol: TCP}]";
    apply(
        &lab,
        &service_yaml("web", WEB, "[{name: http, port: 80, targetPort: 8080}]"),
    );
    apply(&lab, &slice_yaml("web", tcp8080, &[(a, "h2")]));
    let dns_ports =
        "[{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]";
    apply(&lab, &service_yaml("dns", DNS, dns_ports));
    apply(&lab, &slice_yaml("dns", dns_ports, &[(a, "h2")]));
    apply(
        &lab,
        &service_yaml("who", WHO, "[{name: http, port: 80, targetPort: 8080}]"),
    );
    apply(&lab, &slice_yaml("who", tcp8080, &[(a, "h2"), (b, "h2")]));

    // TCP to a ClusterIP whose endpoint is on the other hybrid node.
    let answer = wait_for(Duration::from_secs(30), "web answers by ClusterIP", || {
        who_answers(client, WEB)
    });
    assert_eq!(answer, "h2-pod0");

    // Cluster DNS: a resolver behind a ClusterIP, over UDP and TCP.
    for tcp in [false, true] {
        let got = wait_for(Duration::from_secs(20), "dns answers", || {
            Some(dig(client, tcp)).filter(|s| !s.is_empty())
        });
        assert_eq!(
            got,
            WEB.to_string(),
            "DNS over {}",
            if tcp { "TCP" } else { "UDP" }
        );
    }

    // Both endpoints of `who` serve new connections; once a is out of the slice,
    // none goes to it any more.
    let mut seen = std::collections::HashSet::new();
    wait_for(Duration::from_secs(30), "both who endpoints answer", || {
        seen.extend(who_answers(client, WHO));
        (seen.len() == 2).then_some(())
    });
    apply(&lab, &slice_yaml("who", tcp8080, &[(b, "h2")]));
    wait_for(Duration::from_secs(30), "a out of who's endpoints", || {
        (0..8)
            .all(|_| who_answers(client, WHO).as_deref() == Some("h2-pod1"))
            .then_some(())
    });
    for _ in 0..16 {
        assert_eq!(who_answers(client, WHO).as_deref(), Some("h2-pod1"));
    }

    // No endpoint left: the client is refused at once (ICMP port unreachable).
    apply(&lab, &slice_yaml("who", tcp8080, &[]));
    wait_for(Duration::from_secs(30), "who refuses", || {
        let out = client
            .output(&format!(
                "timeout 3 bash -c 'exec 3<>/dev/tcp/{WHO}/80' 2>&1"
            ))
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .contains("Connection refused")
            .then_some(())
    });
    drop(h1);
    drop(h2);
}
