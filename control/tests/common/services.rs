//! The Service scenarios of issue 14, run against any client node of the Services
//! cluster (`hybridway_lab::service_lab`): hybridway on TUN, hybridway on AF_XDP, or
//! the kernel with the real kube-proxy as the reference. The same assertions for
//! each kind, so a difference between them is a failed test, not a footnote.
//!
//! Services (ClusterIP, service CIDR 198.18.240.0/20), endpoints on port 8080 run a
//! server that answers each connection with its pod's name:
//!
//! | Service | ClusterIP | endpoints |
//! |---|---|---|
//! | `web-local` | 198.18.240.83:80 | l (same node as the client) |
//! | `web` | 198.18.240.81:80 | a (the other hybrid node) |
//! | `web-cloud` | 198.18.240.84:80 | f (the flannel cloud node) |
//! | `dns` | 198.18.240.53:53 UDP+TCP | dnsmasq in a |
//! | `sticky` | 198.18.240.85:80, sessionAffinity ClientIP | a, b |
//! | `who` | 198.18.240.82:80 | a, b; one removed while a connection is open |
//! | `cond` | 198.18.240.86:80 (→ 8082) | a, b, through not-ready and terminating conditions |
//! | `near` | 198.18.240.88:80, `internalTrafficPolicy: Local` | l and a, then a and b |
//! | `closed-local` | 198.18.240.89:80 TCP, and UDP to 8089 where nothing listens | l |
//! | `closed` | 198.18.240.90:80 TCP, and UDP to 8089 where nothing listens | a |
//!
//! NodePorts (an outside host on the rig's bridge, on the nodes' subnet, connects to
//! node:NodePort; in `service_test` no node has a default route, so no agent has a
//! gateway) and the node's own traffic use a second server in l and a, on port 8081,
//! that answers with its pod's name and the address it sees the client at:
//!
//! | Service | ClusterIP, NodePort | `externalTrafficPolicy` | endpoint |
//! |---|---|---|---|
//! | `np-remote` | 198.18.240.141:80, 30141 | Cluster | a (not on h1) |
//! | `np-near` | 198.18.240.142:80, 30142 | Cluster | l (on h1) |
//! | `np-local` | 198.18.240.143:80, 30143 | Local | l (on h1) |
//! | `np-far` | 198.18.240.144:80, 30144 | Local | a (h1 has none) |
//!
//! Beside kube-proxy (`agent_beside_kube_proxy_k8s`, after the scenarios above
//! whose Services stay in the cluster), endpoints on port 8080:
//!
//! | Service | ClusterIP, NodePort | `externalTrafficPolicy` | endpoint |
//! |---|---|---|---|
//! | `np-remote` | 198.18.240.151:80, 30181 | Cluster | a (not on h1) |
//! | `np-cloud` | 198.18.240.152:80, 30182 | Cluster | f |
//! | `np-near` | 198.18.240.153:80, 30183 | Cluster | l (on h1) |
//! | `lb-local` | 198.18.240.154:80, 30184, health check 30190 | Local (LoadBalancer) | l (on h1) |
//!
//! Every fixed ClusterIP is in 198.18.240.0/24, the lower band of the /20 that the
//! API server hands out only when asked for an address (random allocation takes the
//! upper band first), so the `kubernetes` Service (.1) is the only other tenant.
//! Two Services of one cluster never share an address: the API server refuses the
//! second ("provided IP is already allocated").

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hybridway_lab::service_lab::{
    CLIENT, CLOUD, ClientKind, Conditions, Extras, LOCAL, OUTSIDE, REMOTE_A, REMOTE_B, ServiceLab,
    ServicePod, TrafficPolicy, service_with_policies_yaml, service_yaml,
    slice_with_conditions_yaml, slice_yaml,
};
use hybridway_lab::{Netns, wait_for};

pub const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 81);
pub const WHO: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 82);
pub const WEB_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 83);
pub const WEB_CLOUD: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 84);
pub const STICKY: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 85);
pub const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 53);
/// The name dnsmasq answers (with `WEB`).
pub const DNS_NAME: &str = "web.svc.test";
pub const CLOSED_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 89);
pub const CLOSED: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 90);
/// `closed`'s ports: TCP 80 to the name server, UDP 80 to a port nothing listens on.
const CLOSED_PORTS: &str = "[{name: http, port: 80, targetPort: 8080, protocol: TCP}, \
     {name: closed, port: 80, targetPort: 8089, protocol: UDP}]";
const CLOSED_SLICE_PORTS: &str =
    "[{name: http, port: 8080, protocol: TCP}, {name: closed, port: 8089, protocol: UDP}]";

const HTTP_PORTS: &str = "[{name: http, port: 80, targetPort: 8080}]";
/// The NodePort Services beside kube-proxy: (name, ClusterIP, NodePort).
pub const NP_REMOTE: (&str, Ipv4Addr, u16) = ("np-remote", Ipv4Addr::new(198, 18, 240, 151), 30181);
pub const NP_CLOUD: (&str, Ipv4Addr, u16) = ("np-cloud", Ipv4Addr::new(198, 18, 240, 152), 30182);
pub const NP_NEAR: (&str, Ipv4Addr, u16) = ("np-near", Ipv4Addr::new(198, 18, 240, 153), 30183);
/// The `externalTrafficPolicy: Local` LoadBalancer beside kube-proxy, and its
/// health check NodePort.
pub const LB_LOCAL: (&str, Ipv4Addr, u16) = ("lb-local", Ipv4Addr::new(198, 18, 240, 154), 30184);
pub const LB_HEALTH: u16 = 30190;

pub const TCP_8080: &str = "[{name: http, port: 8080, protocol: TCP}]";
const DNS_PORTS: &str =
    "[{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]";

/// One Service test: needs root (and fails without it), waits for its turn, runs
/// every scenario with `kind` as the client node.
pub fn service_test(kind: ClientKind) {
    hybridway_lab::require_root();
    // Two workers per agent, as on a node with one per core (the default): Service
    // flows and their replies then meet on different workers and are handed off.
    // The NodePort client is on the nodes' subnet and no node has a default route
    // (an agent then has no gateway): the nodes answer it on-link, as the kernel
    // does. With a gateway: `agent_beside_kube_proxy_k8s`.
    let extras = Extras {
        outside_host: true,
        no_default_route: true,
        workers: 2,
        ..Extras::default()
    };
    // Each part's time goes to stderr (shown with --nocapture): what the CI time
    // is spent on.
    let label = kind.label();
    let timed = |part: &str, start: Instant| eprintln!("{label}: {part}: {:.1?}", start.elapsed());
    let start = Instant::now();
    let lab = build_with(kind, &extras);
    timed("cluster built", start);
    let start = Instant::now();
    let mut lab = run_scenarios_in(lab);
    timed("ClusterIP, DNS, affinity, endpoint removal", start);
    let start = Instant::now();
    endpoint_condition_scenarios(&mut lab);
    timed("endpoint conditions", start);
    let start = Instant::now();
    internal_local_scenarios(&lab);
    timed("internalTrafficPolicy Local", start);
    let start = Instant::now();
    node_port_and_node_scenarios(&mut lab);
    timed("NodePorts and the nodes' own traffic", start);
}

/// Builds the cluster with `kind` as the client node (tests take turns: the
/// cluster holds a machine-wide lock on its fixed addresses while it lives).
pub fn build(kind: ClientKind) -> ServiceLab {
    build_with(kind, &Extras::default())
}

/// [`build`] with `extras` (kube-proxy beside the agent, an outside host).
pub fn build_with(kind: ClientKind, extras: &Extras) -> ServiceLab {
    ServiceLab::build_with(
        kind,
        extras,
        Path::new(env!("CARGO_BIN_EXE_hybridway")),
        false,
    )
    .unwrap_or_else(|e| panic!("building the Services cluster ({}): {e}", kind.label()))
}

/// A TCP server on port 8080 of `pod`: each connection gets the pod's name, then
/// `bye` once the client sends a line (or nothing when it closes first), so a
/// connection can be held open across an endpoint change.
pub fn serve_name(lab: &mut ServiceLab, pod: &str) {
    serve_name_on(lab, pod, 8080);
}

/// [`serve_name`] on `port`: a Service whose endpoints no other Service shares.
pub fn serve_name_on(lab: &mut ServiceLab, pod: &str, port: u16) {
    let server = format!(
        "import socket,threading\n\
         s=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}))\n\
         s.listen(128)\n\
         def talk(c):\n    \
             try:\n        \
                 c.sendall(b'{pod}\\n')\n        \
                 if c.recv(64):\n            \
                     c.sendall(b'bye\\n')\n    \
             except OSError:\n        \
                 pass\n    \
             c.close()\n\
         while True:\n    \
             c,_=s.accept()\n    \
             threading.Thread(target=talk,args=(c,),daemon=True).start()\n"
    );
    lab.spawn_in_pod(pod, "python3", &["-c", &server]).unwrap();
}

/// dnsmasq in `pod`, answering [`DNS_NAME`] with [`WEB`].
pub fn serve_dns(lab: &mut ServiceLab, pod: &str) {
    let answer = format!("--address=/{DNS_NAME}/{WEB}");
    lab.spawn_in_pod(
        pod,
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
    )
    .unwrap();
}

/// The name the server behind `addr`:80 answers with, from `pod`; `None` when the
/// connection fails.
pub fn who_answers(pod: &ServicePod, addr: Ipv4Addr) -> Option<String> {
    who_answers_at(&pod.ns, addr, 80)
}

/// The name a [`serve_name`] server behind `addr:port` answers with, asked from
/// namespace `ns` (a pod, or a node for its own traffic and NodePorts). A lost SYN
/// on the loaded machine costs a retransmission (1 s, then 2 s, 4 s): each try has
/// 10 s, and a try without an answer is repeated, 3 in all, before `None`.
pub fn who_answers_at(ns: &Netns, addr: Ipv4Addr, port: u16) -> Option<String> {
    (0..3).find_map(|_| {
        let out = ns
            .output(&format!(
                "timeout 10 bash -c 'exec 3<>/dev/tcp/{addr}/{port}; head -n1 <&3'"
            ))
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    })
}

/// `dig` for [`DNS_NAME`] at [`DNS`] over TCP or UDP: the answer, empty on failure.
pub fn dig(pod: &ServicePod, tcp: bool) -> String {
    let proto = if tcp { "+tcp" } else { "+notcp" };
    let out = pod
        .ns
        .output(&format!(
            "dig +short +time=2 +tries=1 {proto} @{DNS} {DNS_NAME} A"
        ))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn apply(lab: &ServiceLab, manifest: &str) {
    lab.apply(manifest).unwrap();
}

/// A connection from `pod` to `addr`:80 held open: its server's name is read at
/// once, the rest of the exchange happens in [`HeldConnection::finish`].
pub struct HeldConnection {
    child: std::process::Child,
    lines: BufReader<std::process::ChildStdout>,
    pub server: String,
}

impl HeldConnection {
    pub fn open(pod: &ServicePod, addr: Ipv4Addr) -> HeldConnection {
        let client = format!(
            "import socket,sys\n\
             c=socket.create_connection(('{addr}',80),timeout=20)\n\
             f=c.makefile('rb')\n\
             print(f.readline().decode().strip(),flush=True)\n\
             sys.stdin.readline()\n\
             c.sendall(b'more\\n')\n\
             print(f.readline().decode().strip(),flush=True)\n"
        );
        let mut child = pod
            .ns
            .command("python3")
            .args(["-c", &client])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut server = String::new();
        lines.read_line(&mut server).unwrap();
        HeldConnection {
            child,
            lines,
            server: server.trim().to_string(),
        }
    }

    /// Sends a line on the held connection; returns the server's answer (`bye`
    /// when the connection still works).
    pub fn finish(mut self) -> String {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let mut answer = String::new();
        let _ = self.lines.read_line(&mut answer);
        let _ = self.child.wait();
        answer.trim().to_string()
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every scenario, in one cluster with `kind` as the client node.
pub fn run_service_scenarios(kind: ClientKind) {
    run_scenarios_in(build(kind));
}

/// Every scenario, in a cluster built by [`build`] or [`build_with`]; gives the
/// cluster back, with the Services and servers the scenarios set up.
pub fn run_scenarios_in(mut lab: ServiceLab) -> ServiceLab {
    let kind = lab.kind;
    let label = kind.label();
    for pod in [LOCAL, REMOTE_A, REMOTE_B, CLOUD] {
        serve_name(&mut lab, pod);
    }
    serve_dns(&mut lab, REMOTE_A);
    let ep = |pod: &str| (lab.pod(pod).unwrap().ip, lab.node_of(pod).unwrap());
    let (l, a, b, f) = (ep(LOCAL), ep(REMOTE_A), ep(REMOTE_B), ep(CLOUD));

    for (name, ip, endpoint) in [
        ("web-local", WEB_LOCAL, l),
        ("web", WEB, a),
        ("web-cloud", WEB_CLOUD, f),
    ] {
        apply(&lab, &service_yaml(name, ip, HTTP_PORTS, false));
        apply(&lab, &slice_yaml(name, TCP_8080, &[endpoint]));
    }
    for (name, ip, endpoint) in [("closed-local", CLOSED_LOCAL, l), ("closed", CLOSED, a)] {
        apply(&lab, &service_yaml(name, ip, CLOSED_PORTS, false));
        apply(&lab, &slice_yaml(name, CLOSED_SLICE_PORTS, &[endpoint]));
    }
    apply(&lab, &service_yaml("dns", DNS, DNS_PORTS, false));
    apply(&lab, &slice_yaml("dns", DNS_PORTS, &[a]));
    apply(&lab, &service_yaml("sticky", STICKY, HTTP_PORTS, true));
    apply(&lab, &slice_yaml("sticky", TCP_8080, &[a, b]));
    apply(&lab, &service_yaml("who", WHO, HTTP_PORTS, false));
    apply(&lab, &slice_yaml("who", TCP_8080, &[a, b]));
    let client = lab.pod(CLIENT).unwrap();

    // TCP to a ClusterIP whose endpoint is on the same node, on another hybrid
    // node, on the flannel cloud node.
    for (ip, want) in [(WEB_LOCAL, LOCAL), (WEB, REMOTE_A), (WEB_CLOUD, CLOUD)] {
        let got = wait_for(
            Duration::from_secs(30),
            &format!("{label}: {ip} answers"),
            || who_answers(client, ip),
        );
        assert_eq!(got, want, "{label}: ClusterIP {ip}");
    }

    // UDP to a ClusterIP whose endpoint (same node, other node) has nothing on the
    // target port: the endpoint's ICMP port unreachable, translated back as Linux
    // conntrack translates it (from the ClusterIP, quoting what the client sent),
    // refuses the client's connected socket. The TCP port of the same Service
    // answering first shows the endpoint is in place: the refusal is the
    // endpoint's, not the reject of a Service without endpoints.
    for (ip, want) in [(CLOSED_LOCAL, LOCAL), (CLOSED, REMOTE_A)] {
        let got = wait_for(
            Duration::from_secs(30),
            &format!("{label}: {ip} answers over TCP"),
            || who_answers(client, ip),
        );
        assert_eq!(got, want, "{label}: ClusterIP {ip} over TCP");
        // A lost datagram or error on the loaded machine: up to three tries.
        let got = (0..3)
            .map(|_| udp_attempt(&client.ns, ip, 80))
            .find(|a| *a != Attempt::NoAnswer)
            .unwrap_or(Attempt::NoAnswer);
        assert_eq!(
            got,
            Attempt::Refused,
            "{label}: UDP to {ip}:80 ({want}, nothing on port 8089)"
        );
    }

    // Cluster DNS: a resolver behind a ClusterIP, over UDP and TCP.
    for tcp in [false, true] {
        let over = if tcp { "TCP" } else { "UDP" };
        let got = wait_for(
            Duration::from_secs(20),
            &format!("{label}: DNS over {over}"),
            || Some(dig(client, tcp)).filter(|s| !s.is_empty()),
        );
        assert_eq!(got, WEB.to_string(), "{label}: DNS over {over}");
    }

    // sessionAffinity ClientIP: every connection from the client goes to the
    // endpoint its first one went to.
    let first = wait_for(Duration::from_secs(30), "sticky answers", || {
        who_answers(client, STICKY)
    });
    for _ in 0..16 {
        assert_eq!(
            who_answers(client, STICKY).as_deref(),
            Some(first.as_str()),
            "{label}: session affinity"
        );
    }

    // An endpoint removed while a connection to it is open: no new connection goes
    // to it, the open one still finishes.
    let mut seen = HashSet::new();
    wait_for(Duration::from_secs(30), "both who endpoints answer", || {
        seen.extend(who_answers(client, WHO));
        (seen.len() == 2).then_some(())
    });
    let held = HeldConnection::open(client, WHO);
    let (gone, kept) = if held.server == REMOTE_A {
        (REMOTE_A, b)
    } else {
        assert_eq!(held.server, REMOTE_B, "{label}: held connection to who");
        (REMOTE_B, a)
    };
    apply(&lab, &slice_yaml("who", TCP_8080, &[kept]));
    let remaining = if gone == REMOTE_A { REMOTE_B } else { REMOTE_A };
    wait_for(
        Duration::from_secs(30),
        &format!("{label}: {gone} out of who's endpoints"),
        || {
            (0..8)
                .all(|_| who_answers(client, WHO).as_deref() == Some(remaining))
                .then_some(())
        },
    );
    for _ in 0..16 {
        assert_eq!(
            who_answers(client, WHO).as_deref(),
            Some(remaining),
            "{label}: a new connection went to the removed endpoint"
        );
    }
    assert_eq!(
        held.finish(),
        "bye",
        "{label}: the connection open to the removed endpoint {gone} did not finish"
    );

    // No endpoint left: the client is refused at once (ICMP port unreachable, as
    // kube-proxy's reject rule answers).
    apply(&lab, &slice_yaml("who", TCP_8080, &[]));
    wait_for(
        Duration::from_secs(30),
        &format!("{label}: who refuses"),
        || {
            let out = client
                .ns
                .output(&format!(
                    "timeout 3 bash -c 'exec 3<>/dev/tcp/{WHO}/80' 2>&1"
                ))
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .contains("Connection refused")
                .then_some(())
        },
    );
    lab
}

pub const COND: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 86);
/// The port `cond`'s endpoints listen on (theirs alone).
pub const COND_PORT: u16 = 8082;
pub const NEAR: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 88);
/// The port of [`serve_name_and_peer`].
pub const PEER_PORT: u16 = 8081;
const TCP_8081: &str = "[{name: http, port: 8081, protocol: TCP}]";

/// A TCP server on port [`PEER_PORT`] of `pod`: each connection gets "<pod name>
/// <client address as the pod sees it>" (masqueraded or not), then is closed.
pub fn serve_name_and_peer(lab: &mut ServiceLab, pod: &str) {
    let server = format!(
        "import socket\n\
         s=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{PEER_PORT}))\n\
         s.listen(64)\n\
         while True:\n    \
             c,a=s.accept()\n    \
             c.sendall(('{pod} %s\\n' % a[0]).encode())\n    \
             c.close()\n"
    );
    lab.spawn_in_pod(pod, "python3", &["-c", &server]).unwrap();
}

/// How one connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The server's first line.
    Answered(String),
    /// ICMP port unreachable or a TCP RST: kube-proxy's `REJECT` for a Service
    /// without endpoints.
    Refused,
    /// Nothing within 2 s (the SYN and its first retransmission): dropped
    /// (kube-proxy's `DROP` when a traffic policy leaves no endpoint on this node).
    NoAnswer,
}

/// One connection from `ns` to `addr:port`, told apart by how it ends. Two lost
/// SYNs in a row on the loaded machine would also read as [`Attempt::NoAnswer`].
pub fn attempt(ns: &Netns, addr: Ipv4Addr, port: u16) -> Attempt {
    let out = ns
        .output(&format!(
            "timeout 2 bash -c 'exec 3<>/dev/tcp/{addr}/{port} && head -n1 <&3' 2>&1"
        ))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !text.is_empty() {
        Attempt::Answered(text)
    } else if text.contains("Connection refused") {
        Attempt::Refused
    } else {
        Attempt::NoAnswer
    }
}

/// One UDP exchange from `ns` with `addr:port` on a connected socket: a datagram
/// sent, then an answer awaited for 2 s. An ICMP port unreachable about the
/// datagram reaches the socket (ECONNREFUSED) only when it quotes the datagram as
/// the client sent it, to `addr:port`: [`Attempt::Refused`].
pub fn udp_attempt(ns: &Netns, addr: Ipv4Addr, port: u16) -> Attempt {
    let client = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.settimeout(2)\n\
         s.connect(('{addr}',{port}))\n\
         s.send(b'hello\\n')\n\
         try:\n    \
             print('answered',s.recv(64).decode().strip())\n\
         except ConnectionRefusedError:\n    \
             print('refused')\n\
         except socket.timeout:\n    \
             print('timeout')\n"
    );
    let out = ns
        .command("python3")
        .args(["-c", &client])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.as_str() {
        "refused" => Attempt::Refused,
        "timeout" | "" => Attempt::NoAnswer,
        _ => Attempt::Answered(text),
    }
}

/// Waits until 8 connections in a row from `pod` to `addr`:80 reach `want` (the
/// endpoint change has arrived), then checks 16 more do: a wrong endpoint given a
/// fair share of new flows shows up in 16 with probability 1 - 2^-16.
fn only_answers(pod: &ServicePod, addr: Ipv4Addr, want: &str, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        (0..8)
            .all(|_| who_answers(pod, addr).as_deref() == Some(want))
            .then_some(())
    });
    for _ in 0..16 {
        assert_eq!(who_answers(pod, addr).as_deref(), Some(want), "{what}");
    }
}

/// Waits until connections from `pod` to `addr`:80 have reached every one of `want`.
fn all_answer(pod: &ServicePod, addr: Ipv4Addr, want: &[&str], what: &str) {
    let mut seen = HashSet::new();
    wait_for(Duration::from_secs(30), what, || {
        let got = who_answers(pod, addr)?;
        assert!(want.contains(&got.as_str()), "{what}: answered by {got}");
        seen.insert(got);
        (seen.len() == want.len()).then_some(())
    });
}

/// Waits until a connection from `ns` to `addr:port` ends as `want` (the change has
/// arrived). A connection that still succeeds, or fails the other way, never ends
/// the wait: the test then fails with the last outcome.
fn fails_as(ns: &Netns, addr: Ipv4Addr, port: u16, want: Attempt, what: &str) {
    let mut last = None;
    let found = hybridway_lab::poll(Duration::from_secs(40), || {
        let got = attempt(ns, addr, port);
        let done = (got == want).then_some(());
        last = Some(got);
        done
    });
    assert!(found.is_some(), "{what}: still {last:?}");
}

/// EndpointSlice conditions (kube-proxy `pkg/proxy/topology.go`,
/// `CategorizeEndpoints`): new flows go to ready endpoints; to the serving
/// terminating ones only when no endpoint is ready (KEP-1669); never to one that
/// is neither; a Service left with none of either refuses like one without
/// endpoints. Conditions only steer new flows: an open connection finishes.
///
/// Its endpoints listen on their own port ([`COND_PORT`]): an address:port that
/// no other Service lists, so that its replies are recognised only while `cond`'s
/// slice lists it (what a multi-worker dataplane checks before translating one).
pub fn endpoint_condition_scenarios(lab: &mut ServiceLab) {
    for pod in [REMOTE_A, REMOTE_B] {
        serve_name_on(lab, pod, COND_PORT);
    }
    let lab = &*lab;
    let label = lab.kind.label();
    let ep = |pod: &str| (lab.pod(pod).unwrap().ip, lab.node_of(pod).unwrap());
    let ((a, a_node), (b, b_node)) = (ep(REMOTE_A), ep(REMOTE_B));
    let client = lab.pod(CLIENT).unwrap();
    let ports = format!("[{{name: http, port: 80, targetPort: {COND_PORT}}}]");
    apply(lab, &service_yaml("cond", COND, &ports, false));
    let slice_ports = format!("[{{name: http, port: {COND_PORT}, protocol: TCP}}]");
    let slice = |ca: Conditions, cb: Conditions| {
        apply(
            lab,
            &slice_with_conditions_yaml("cond", &slice_ports, &[(a, a_node, ca), (b, b_node, cb)]),
        );
    };

    slice(Conditions::NOT_READY, Conditions::READY);
    only_answers(
        client,
        COND,
        REMOTE_B,
        &format!("{label}: only the ready endpoint b of cond answers (a is not ready)"),
    );
    slice(Conditions::READY, Conditions::TERMINATING);
    only_answers(
        client,
        COND,
        REMOTE_A,
        &format!("{label}: only the ready endpoint a of cond answers (b is terminating)"),
    );
    // A connection open to a while a terminates, stops serving and the Service is
    // left with no usable endpoint: it finishes (kube-proxy leaves established flows
    // to their endpoint; a terminating pod finishes its connections).
    let held = HeldConnection::open(client, COND);
    assert_eq!(held.server, REMOTE_A, "{label}: held connection to cond");
    slice(Conditions::TERMINATING, Conditions::TERMINATING);
    all_answer(
        client,
        COND,
        &[REMOTE_A, REMOTE_B],
        &format!("{label}: every endpoint of cond terminating, both serve"),
    );
    slice(Conditions::TERMINATING_NOT_SERVING, Conditions::TERMINATING);
    only_answers(
        client,
        COND,
        REMOTE_B,
        &format!("{label}: only the serving terminating endpoint b of cond answers"),
    );
    slice(Conditions::NOT_READY, Conditions::TERMINATING_NOT_SERVING);
    fails_as(
        &client.ns,
        COND,
        80,
        Attempt::Refused,
        &format!("{label}: cond, with no ready or serving endpoint, refuses"),
    );
    assert_eq!(
        held.finish(),
        "bye",
        "{label}: the connection open to a, now terminating and not serving, did not finish"
    );
}

/// `internalTrafficPolicy: Local`: the client pod on h1 reaches h1's endpoint only;
/// a terminating local endpoint still beats a ready remote one (kube-proxy's local
/// fallback); with no endpoint on h1 the connection is dropped, not refused (the
/// Service has endpoints, elsewhere).
pub fn internal_local_scenarios(lab: &ServiceLab) {
    let label = lab.kind.label();
    let ep = |pod: &str| (lab.pod(pod).unwrap().ip, lab.node_of(pod).unwrap());
    let ((l, l_node), (a, a_node), (b, b_node)) = (ep(LOCAL), ep(REMOTE_A), ep(REMOTE_B));
    let client = lab.pod(CLIENT).unwrap();
    apply(
        lab,
        &service_with_policies_yaml("near", NEAR, HTTP_PORTS, TrafficPolicy::Local, None),
    );
    let ready = Conditions::READY;

    apply(
        lab,
        &slice_with_conditions_yaml("near", TCP_8080, &[(l, l_node, ready), (a, a_node, ready)]),
    );
    only_answers(
        client,
        NEAR,
        LOCAL,
        &format!("{label}: near (internal policy Local) answers from l on the client's node"),
    );
    apply(
        lab,
        &slice_with_conditions_yaml(
            "near",
            TCP_8080,
            &[(l, l_node, Conditions::TERMINATING), (a, a_node, ready)],
        ),
    );
    // No change to wait for: l keeps answering throughout.
    only_answers(
        client,
        NEAR,
        LOCAL,
        &format!("{label}: near answers from the terminating local l, not the ready remote a"),
    );
    apply(
        lab,
        &slice_with_conditions_yaml("near", TCP_8080, &[(a, a_node, ready), (b, b_node, ready)]),
    );
    fails_as(
        &client.ns,
        NEAR,
        80,
        Attempt::NoAnswer,
        &format!("{label}: near, with no endpoint on the client's node, drops"),
    );
}

/// A NodePort Service `name` (80 → [`PEER_PORT`]) with `policy` and its
/// EndpointSlice with the one endpoint `pod`, as one manifest.
fn node_port_service(
    lab: &ServiceLab,
    name: &str,
    (ip, node_port): (Ipv4Addr, u16),
    policy: TrafficPolicy,
    pod: &str,
) -> String {
    let ports =
        format!("[{{name: http, port: 80, targetPort: {PEER_PORT}, nodePort: {node_port}}}]");
    let endpoint = (lab.pod(pod).unwrap().ip, lab.node_of(pod).unwrap());
    format!(
        "{}---\n{}",
        service_with_policies_yaml(name, ip, &ports, TrafficPolicy::Cluster, Some(policy)),
        slice_yaml(name, TCP_8081, &[endpoint])
    )
}

/// Splits a [`serve_name_and_peer`] answer into the pod's name and the client
/// address it saw.
fn name_and_peer(answer: &str) -> (String, Ipv4Addr) {
    let (name, peer) = answer
        .split_once(' ')
        .unwrap_or_else(|| panic!("not '<pod> <address>': {answer:?}"));
    (name.to_string(), peer.parse().unwrap())
}

/// NodePorts from an outside host, and the nodes' own traffic to pods on another
/// node and to ClusterIPs (see the module comment for the Services). What the pod
/// sees as the client: the outside host with the `Local` policy, an address of the
/// node (masqueraded) with `Cluster`, the node's pod-network address for the node's
/// own connections.
pub fn node_port_and_node_scenarios(lab: &mut ServiceLab) {
    let label = lab.kind.label();
    for pod in [LOCAL, REMOTE_A] {
        serve_name_and_peer(lab, pod);
    }
    let outside = lab.outside_host().unwrap();
    if lab.no_default_route {
        // What the agents found: no gateway, so the replies below cannot take one.
        for node in &lab.nodes {
            let routes = node.ns.output("ip -4 route show default").unwrap();
            assert!(
                routes.stdout.is_empty(),
                "{label}: {} has a default route",
                node.name
            );
        }
    }
    let lab = &*lab;
    let np_remote = (Ipv4Addr::new(198, 18, 240, 141), 30141);
    let np_near = (Ipv4Addr::new(198, 18, 240, 142), 30142);
    let np_local = (Ipv4Addr::new(198, 18, 240, 143), 30143);
    let np_far = (Ipv4Addr::new(198, 18, 240, 144), 30144);
    // One kubectl for all four.
    let manifests = [
        ("np-remote", np_remote, TrafficPolicy::Cluster, REMOTE_A),
        ("np-near", np_near, TrafficPolicy::Cluster, LOCAL),
        ("np-local", np_local, TrafficPolicy::Local, LOCAL),
        ("np-far", np_far, TrafficPolicy::Local, REMOTE_A),
    ]
    .map(|(name, frontend, policy, pod)| node_port_service(lab, name, frontend, policy, pod));
    apply(lab, &manifests.join("---\n"));
    let h1 = lab.node("h1").unwrap();
    let h2 = lab.node("h2").unwrap();
    let answer = |from: &Netns, addr: Ipv4Addr, port: u16, what: &str| {
        name_and_peer(&wait_for(
            Duration::from_secs(30),
            &format!("{label}: {what}"),
            || who_answers_at(from, addr, port),
        ))
    };

    // The node's own traffic to the pod on the other node, both ways: the pod sees
    // the node's pod-network address.
    for (from, to) in [(h1, REMOTE_A), (h2, LOCAL)] {
        let pod_ip = lab.pod(to).unwrap().ip;
        let what = format!("{} connects to pod {to} on another node", from.name);
        let (name, peer) = answer(&from.ns, pod_ip, PEER_PORT, &what);
        assert_eq!(
            (name.as_str(), peer),
            (to, from.host_pod_addr()),
            "{label}: {what}"
        );
        from.ns
            .run(&format!("ping -c 1 -W 2 {pod_ip}"))
            .unwrap_or_else(|e| panic!("{label}: {} pings pod {to}: {e}", from.name));
    }

    // Cluster policy, endpoint on the other node and on h1: masqueraded to h1.
    for ((_, port), pod) in [(np_remote, REMOTE_A), (np_near, LOCAL)] {
        let what = format!("the outside host connects to h1:{port}");
        let (name, peer) = answer(outside, h1.addr, port, &what);
        assert_eq!(name, pod, "{label}: {what}");
        assert!(
            h1.in_block(peer),
            "{label}: {what}: {pod} sees {peer}, not an address of h1"
        );
        // Which of h1's addresses differs by kind (README "Services"): shown.
        eprintln!("{label}: {what}: {pod} sees {peer}");
    }
    // The other node serves the NodePort too (h2, hybridway on TUN).
    let what = format!("the outside host connects to h2:{}", np_remote.1);
    let (name, peer) = answer(outside, h2.addr, np_remote.1, &what);
    assert_eq!(name, REMOTE_A, "{label}: {what}");
    assert!(h2.in_block(peer), "{label}: {what}: a sees {peer}");

    // Local policy: the client's own address reaches the pod ...
    for (node, (_, port), pod) in [(h1, np_local, LOCAL), (h2, np_far, REMOTE_A)] {
        let what = format!("the outside host connects to {}:{port}", node.name);
        let (name, peer) = answer(outside, node.addr, port, &what);
        assert_eq!((name.as_str(), peer), (pod, OUTSIDE), "{label}: {what}");
    }
    // ... and a node without a local endpoint drops the connection (kube-proxy's
    // "has no local endpoints" rule).
    fails_as(
        outside,
        h1.addr,
        np_far.1,
        Attempt::NoAnswer,
        &format!("{label}: h1:{} (Local, no endpoint on h1) drops", np_far.1),
    );

    // The node's own traffic to ClusterIPs (kube-proxy, or the dataplane with
    // `services.hostClusterIpRanges`): an endpoint on another node sees the node's
    // pod-network address; one on the node itself answers.
    let what = "h1 connects to np-remote's ClusterIP";
    let (name, peer) = answer(&h1.ns, np_remote.0, 80, what);
    assert_eq!(
        (name.as_str(), peer),
        (REMOTE_A, h1.host_pod_addr()),
        "{label}: {what}"
    );
    let what = "h1 connects to np-near's ClusterIP";
    let (name, _) = answer(&h1.ns, np_near.0, 80, what);
    assert_eq!(name, LOCAL, "{label}: {what}");
}
