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

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hybridway_lab::service_lab::{
    CLIENT, CLOUD, ClientKind, LOCAL, REMOTE_A, REMOTE_B, ServiceLab, ServicePod, service_yaml,
    slice_yaml,
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

const HTTP_PORTS: &str = "[{name: http, port: 80, targetPort: 8080}]";
const TCP_8080: &str = "[{name: http, port: 8080, protocol: TCP}]";
const DNS_PORTS: &str =
    "[{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]";

/// The Services cluster uses fixed node addresses on the rig's shared bridge: the
/// tests of one binary that build it take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One Service test: needs root (and fails without it), waits for its turn, runs
/// every scenario with `kind` as the client node.
pub fn service_test(kind: ClientKind) {
    hybridway_lab::require_root();
    let _turn = one_at_a_time();
    run_service_scenarios(kind);
}

/// Builds the cluster with `kind` as the client node (the caller holds
/// [`one_at_a_time`]).
pub fn build(kind: ClientKind) -> ServiceLab {
    ServiceLab::build(kind, Path::new(env!("CARGO_BIN_EXE_hybridway")), false)
        .unwrap_or_else(|e| panic!("building the Services cluster ({}): {e}", kind.label()))
}

/// A TCP server on port 8080 of `pod`: each connection gets the pod's name, then
/// `bye` once the client sends a line (or nothing when it closes first), so a
/// connection can be held open across an endpoint change.
pub fn serve_name(lab: &mut ServiceLab, pod: &str) {
    let server = format!(
        "import socket,threading\n\
         s=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',8080))\n\
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
    let mut lab = build(kind);
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
}
