//! The CNI plugin driven the way containerd drives it: through libcni (the
//! reference runtime library, in `scripts/cni-driver`), with the network
//! configuration list of `deploy/10-hybridway.conflist` chaining the reference
//! `portmap` plugin, against real agents in network namespaces.
//!
//! Needs root (CI runs as root) and the lab built by `scripts/cni-lab.sh build`
//! (scripts/test.sh does it first); never skips. Tests run one at a time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_lab::Netns;
use hybridway_lab::topology::{Cluster, OUTSIDE_SERVER, node_addr, pod_gateway, pod_ip};
use serde_json::{Value, json};

#[path = "support/mod.rs"]
mod support;
use support::tcp_exchange;

static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of the lab's binaries (cni-driver, portmap, bridge, host-local).
fn lab_bin() -> PathBuf {
    let out = Command::new(repo().join("scripts/cni-lab.sh"))
        .arg("path")
        .output()
        .unwrap();
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin");
    for b in ["cni-driver", "portmap", "bridge", "host-local"] {
        assert!(
            bin.join(b).exists(),
            "{} missing: run `scripts/cni-lab.sh build` first (scripts/test.sh does)",
            bin.join(b).display()
        );
    }
    bin
}

fn cluster(backend: &str, name: &str) -> Cluster {
    // One hand-attached pod per node: p21 is the "pod on another node", and p11
    // holds an address of node 1's block that the CNI must not hand out.
    support::two_node_overlay(&format!("hwc{name}"), backend, 1)
}

/// libcni's view of node `node`: the driver runs in the node's namespace, like
/// containerd on the node.
struct Runtime {
    node_ns: String,
    conflist: PathBuf,
    cache_dir: PathBuf,
    cni_path: String,
    driver: PathBuf,
    log: PathBuf,
}

/// A CNI error object as libcni reports it.
#[derive(Debug)]
struct CniFailure {
    code: u64,
    msg: String,
}

impl Runtime {
    /// The deploy/ conflist, pointed at node `n`'s agent socket and a log file.
    fn new(c: &Cluster, n: u8) -> Runtime {
        let text = std::fs::read_to_string(repo().join("deploy/10-hybridway.conflist")).unwrap();
        let mut list: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["cniVersion"], "1.1.0");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let log = c.spec.dir.join(format!("cni-n{n}.log"));
        list["plugins"][0]["agentSocket"] = json!(c.node(n).unwrap().socket);
        list["plugins"][0]["logFile"] = json!(log);
        Self::with_list(c, n, &list, log)
    }

    fn with_list(c: &Cluster, n: u8, list: &Value, log: PathBuf) -> Runtime {
        let name = list["name"].as_str().unwrap();
        let conflist = c.spec.dir.join(format!("{name}-n{n}.conflist"));
        std::fs::write(&conflist, serde_json::to_string_pretty(list).unwrap()).unwrap();
        let bin = lab_bin();
        let plugin = PathBuf::from(env!("CARGO_BIN_EXE_hybridway-cni"));
        Runtime {
            node_ns: c.node(n).unwrap().ns.name.clone(),
            conflist,
            cache_dir: c.spec.dir.join(format!("cni-cache-n{n}")),
            cni_path: format!("{}:{}", plugin.parent().unwrap().display(), bin.display()),
            driver: bin.join("cni-driver"),
            log,
        }
    }

    fn run(&self, extra: &[&str], args: &[&str]) -> Result<Value, CniFailure> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(&self.driver)
            .arg("-conflist")
            .arg(&self.conflist)
            .args(["-cni-path", &self.cni_path])
            .arg("-cache-dir")
            .arg(&self.cache_dir)
            .args(extra)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            panic!(
                "cni-driver {args:?} printed no JSON: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        match v.get("error") {
            Some(e) => Err(CniFailure {
                code: e["code"].as_u64().unwrap_or(0),
                msg: e["msg"].as_str().unwrap_or_default().to_owned(),
            }),
            None => Ok(v),
        }
    }

    fn add(&self, id: &str, netns: &str) -> Value {
        self.run(&[], &["add", id, netns])
            .unwrap_or_else(|e| panic!("ADD {id}: {e:?}"))
    }

    fn del(&self, id: &str, netns: &str) {
        self.run(&[], &["del", id, netns])
            .unwrap_or_else(|e| panic!("DEL {id}: {e:?}"));
    }

    fn check(&self, id: &str, netns: &str) -> Result<Value, CniFailure> {
        self.run(&[], &["check", id, netns])
    }
}

/// The pod address in an ADD result.
fn address_of(result: &Value) -> Ipv4Addr {
    let ip = result["ips"][0]["address"].as_str().unwrap();
    ip.split_once('/').unwrap().0.parse().unwrap()
}

fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name)
}

fn ping_from(ns: &str, dst: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-q",
        ])
        .arg(dst.to_string())
        .output()
        .unwrap()
        .status
        .success()
}

/// `TcpInCsumErrors` of namespace `ns` (from /proc/net/snmp, which is per namespace).
fn tcp_csum_errors(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names: Vec<&str> = tcp[0].split_whitespace().collect();
    let values: Vec<&str> = tcp[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == "InCsumErrors").unwrap();
    values[i].parse().unwrap()
}

/// TCP between two CNI pods on node 1, and to and from p21 on node 2; nobody
/// counts a checksum error.
fn assert_tcp_works(c: &Cluster, a: (&Netns, Ipv4Addr), b: (&Netns, Ipv4Addr)) {
    let p21 = &c.pod(2, 1).unwrap().ns.name;
    tcp_exchange(&b.0.name, b.1, &a.0.name, 65536);
    tcp_exchange(&a.0.name, a.1, &b.0.name, 65536);
    tcp_exchange(p21, pod_ip(2, 1), &a.0.name, 65536);
    tcp_exchange(&a.0.name, a.1, p21, 65536);
    for ns in [&a.0.name, &b.0.name, p21] {
        assert_eq!(tcp_csum_errors(ns), 0, "TcpInCsumErrors in {ns}");
    }
}

fn agent_status(c: &Cluster, n: u8) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hybridway"))
        .args(["status", "--socket"])
        .arg(&c.node(n).unwrap().socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn attached_ips(c: &Cluster, n: u8) -> Vec<Ipv4Addr> {
    agent_status(c, n)["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ip"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn host_veths(c: &Cluster, n: u8) -> Vec<String> {
    let text = c.node(n).unwrap().ns.run("ip -o link show").unwrap();
    text.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_owned())
        .filter(|n| n.starts_with("hwc"))
        .collect()
}

fn address_file(c: &Cluster, n: u8) -> Value {
    let text = std::fs::read_to_string(c.spec.dir.join(format!("n{n}-addresses.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn libcni_add_check_del_gc_status_and_portmap_on_af_xdp() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = cluster("af_xdp", "life");
    let rt = Runtime::new(&c, 1);
    let tag = c.spec.tag.clone();
    let pods: Vec<Netns> = (0..4)
        .map(|i| Netns::create(&format!("{tag}-c{i}")).unwrap())
        .collect();

    // STATUS and ADD while the agent is down: not available / try again later.
    c.stop_agent(1, "TERM").unwrap();
    let down = rt.run(&[], &["status"]).unwrap_err();
    assert_eq!(down.code, 50, "{down:?}");
    let again = rt
        .run(&[], &["add", "early", &netns_path(&pods[0])])
        .unwrap_err();
    assert_eq!(again.code, 11, "{again:?}");
    assert!(host_veths(&c, 1).is_empty(), "a failed ADD left its veth");
    c.start_agent(1).unwrap();
    rt.run(&[], &["status"]).unwrap();

    // ADD: results validated by libcni; the address is from node 1's block, not
    // the hand-attached p11's, and the MTU is the overlay's.
    let r0 = rt.add("ctr0", &netns_path(&pods[0]));
    assert_eq!(r0["cniVersion"], "1.1.0");
    assert_eq!(r0["interfaces"][1]["name"], "eth0");
    assert_eq!(r0["interfaces"][1]["sandbox"], netns_path(&pods[0]));
    let ip0 = address_of(&r0);
    assert!(ip0.octets()[..3] == [198, 19, 1] && ip0 != pod_ip(1, 1) && ip0 != pod_gateway(1));
    let link = pods[0].run("ip -o link show eth0").unwrap();
    assert!(link.contains("mtu 1450"), "{link}");
    let r1 = rt.add("ctr1", &netns_path(&pods[1]));
    let ip1 = address_of(&r1);
    assert_ne!(ip0, ip1);
    // A repeated ADD of the same attachment keeps its address (and works: TCP below).
    assert_eq!(address_of(&rt.add("ctr1", &netns_path(&pods[1]))), ip1);

    // The pod reaches a pod on another node and the outside (through SNAT).
    assert!(
        ping_from(&pods[0].name, pod_ip(2, 1)),
        "pod -> other node's pod"
    );
    assert!(
        ping_from(&c.pod(2, 1).unwrap().ns.name, ip0),
        "other node's pod -> pod"
    );
    assert!(ping_from(&pods[0].name, OUTSIDE_SERVER), "pod -> outside");
    // TCP on the AF_XDP backend: same node and across nodes, no checksum errors.
    assert_tcp_works(&c, (&pods[0], ip0), (&pods[1], ip1));

    // CHECK passes, and fails once the address is removed by hand.
    rt.check("ctr0", &netns_path(&pods[0])).unwrap();
    pods[0]
        .run(&format!("ip addr del {ip0}/32 dev eth0"))
        .unwrap();
    let bad = rt.check("ctr0", &netns_path(&pods[0])).unwrap_err();
    assert!(bad.msg.contains("does not have"), "{bad:?}");

    // DEL twice; the second finds nothing and succeeds.
    rt.del("ctr0", &netns_path(&pods[0]));
    rt.del("ctr0", &netns_path(&pods[0]));
    assert!(!attached_ips(&c, 1).contains(&ip0));
    assert!(
        pods[0]
            .output("ip link show eth0")
            .unwrap()
            .status
            .success()
            .eq(&false)
    );

    // DEL after the netns is gone.
    let gone = Netns::create(&format!("{tag}-gone")).unwrap();
    let gone_path = netns_path(&gone);
    let rg = rt.add("ctrgone", &gone_path);
    drop(gone);
    rt.del("ctrgone", &gone_path);
    assert!(!attached_ips(&c, 1).contains(&address_of(&rg)));

    // portmap publishes a pod port on the node: a connection to the node's address
    // from the node itself lands in pod 1.
    let rp = rt
        .run(
            &["-port-map", "18080:8080"],
            &["add", "ctrpm", &netns_path(&pods[2])],
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    let ip_pm = address_of(&rp);
    let listener = {
        let _inside = NetnsGuard::enter(&pods[2].name).unwrap();
        std::net::TcpListener::bind((ip_pm, 8080)).unwrap()
    };
    let served = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"from the pod").unwrap();
        peer
    });
    let got = {
        use std::io::Read;
        let _inside = NetnsGuard::enter(&c.node(1).unwrap().ns.name).unwrap();
        let mut s = std::net::TcpStream::connect_timeout(
            &(node_addr(1), 18080).into(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("portmap: connecting to the node's port: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert_eq!(got, "from the pod");
    served.join().unwrap();
    rt.run(
        &["-port-map", "18080:8080"],
        &["del", "ctrpm", &netns_path(&pods[2])],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));

    // GC with a partial valid list: ctr1 stays, the rest goes. The GC runs with an
    // empty libcni cache so that the plugin's GC, not libcni's DELs, frees them.
    rt.add("ctr3", &netns_path(&pods[3]));
    rt.add("ctr4", &netns_path(&pods[0]));
    let empty_cache = c.spec.dir.join("empty-cache");
    let gc = Runtime {
        cache_dir: empty_cache,
        ..Runtime::new(&c, 1)
    };
    gc.run(&[], &["gc", "ctr1/eth0"])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let left: Vec<Ipv4Addr> = address_file(&c, 1)["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(left, vec![ip1]);
    assert_eq!(host_veths(&c, 1).len(), 1, "{:?}", host_veths(&c, 1));
    assert!(
        ping_from(&pods[1].name, pod_ip(2, 1)),
        "the kept pod still works"
    );

    // One log line per invocation, never on stdout (libcni parsed every stdout).
    let log = std::fs::read_to_string(&rt.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("container=ctr0")
            && l.contains("command=ADD")
            && l.contains("outcome=ok")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("command=ADD") && l.contains("code=11")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("command=GC") && l.contains("released=2")),
        "{log}"
    );
}

#[test]
fn pod_add_on_af_xdp_fixes_a_veth_with_default_offloads_and_says_so() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster("af_xdp", "fix");
    let node = &c.node(1).unwrap().ns;
    let pod = Netns::create(&format!("{}-raw", c.spec.tag)).unwrap();
    // A veth as a new user makes it: kernel defaults (checksum offload on).
    node.run(&format!(
        "ip link add hwraw type veth peer name eth0 address 02:00:00:00:aa:01 netns {}",
        pod.name
    ))
    .unwrap();
    node.run("ip link set hwraw up").unwrap();
    let ip = Ipv4Addr::new(198, 19, 1, 200);
    pod.run(&format!(
        "ip link set eth0 mtu 1450 up && ip addr add {ip}/32 dev eth0 && \
         ip route add {gw} dev eth0 && ip route add default via {gw} dev eth0",
        gw = pod_gateway(1)
    ))
    .unwrap();
    assert!(
        pod.run("ethtool -k eth0")
            .unwrap()
            .contains("tx-checksumming: on")
    );
    let add = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hybridway"))
            .args(["pod", "add", "--name", "raw", "--ip", &ip.to_string()])
            .args(["--mac", "02:00:00:00:aa:01", "--port", "hwraw", "--socket"])
            .arg(&c.node(1).unwrap().socket)
            .args(extra)
            .output()
            .unwrap()
    };
    // Without the pod's namespace the agent cannot look at the pod's end: refused.
    let refused = add(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--netns"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let fixed = add(&["--netns", &pod.name]);
    let err = String::from_utf8_lossy(&fixed.stderr);
    assert!(fixed.status.success(), "{err}");
    assert!(
        err.contains("turned off tx-checksumming") && err.contains("the pod's end eth0"),
        "{err}"
    );
    assert!(
        pod.run("ethtool -k eth0")
            .unwrap()
            .contains("tx-checksumming: off")
    );
    // TCP now works both ways across nodes, with no checksum errors.
    let p21 = &c.pod(2, 1).unwrap().ns.name;
    tcp_exchange(p21, pod_ip(2, 1), &pod.name, 65536);
    tcp_exchange(&pod.name, ip, p21, 65536);
    assert_eq!(tcp_csum_errors(&pod.name), 0);
    assert_eq!(tcp_csum_errors(p21), 0);
}

#[test]
fn libcni_pods_talk_tcp_on_the_tun_backend() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster("tun", "tun");
    let rt = Runtime::new(&c, 1);
    let tag = c.spec.tag.clone();
    let a = Netns::create(&format!("{tag}-ta")).unwrap();
    let b = Netns::create(&format!("{tag}-tb")).unwrap();
    let ipa = address_of(&rt.add("tuna", &netns_path(&a)));
    let ipb = address_of(&rt.add("tunb", &netns_path(&b)));
    // The TUN backend leaves the veth's offloads alone: the kernel finishes frames.
    assert!(
        a.run("ethtool -k eth0")
            .unwrap()
            .contains("tx-checksumming: on")
    );
    assert!(ping_from(&a.name, OUTSIDE_SERVER), "pod -> outside");
    assert_tcp_works(&c, (&a, ipa), (&b, ipb));
    rt.check("tuna", &netns_path(&a)).unwrap();
    rt.del("tuna", &netns_path(&a));
    rt.del("tunb", &netns_path(&b));
    assert_eq!(attached_ips(&c, 1), vec![pod_ip(1, 1)]);
    assert!(host_veths(&c, 1).is_empty());
}

/// Runs `f(i)` for every `i` in `range` at once, one thread each.
fn all_at_once<T: Send>(range: std::ops::Range<usize>, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = range
            .map(|i| {
                s.spawn({
                    let f = &f;
                    move || f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_hundred_concurrent_adds_get_distinct_reachable_addresses_and_survive_an_agent_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = cluster("af_xdp", "many");
    let rt = Runtime::new(&c, 1);
    let tag = c.spec.tag.clone();
    let pods: Vec<Netns> = (0..110)
        .map(|i| Netns::create(&format!("{tag}-m{i}")).unwrap())
        .collect();
    let ips: Vec<Ipv4Addr> = all_at_once(0..100, |i| {
        address_of(&rt.add(&format!("many{i}"), &netns_path(&pods[i])))
    });
    let distinct: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        100,
        "an address was handed out twice: {ips:?}"
    );
    assert!(!distinct.contains(&pod_ip(1, 1)) && !distinct.contains(&pod_gateway(1)));
    // Every one of them is reachable from the pod on the other node.
    let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    let unreachable = c
        .pod(2, 1)
        .unwrap()
        .ns
        .run(&format!(
            "for ip in {}; do ping -c 1 -W 2 -q $ip >/dev/null 2>&1 || ping -c 1 -W 2 -q $ip >/dev/null 2>&1 || echo $ip; done",
            list.join(" ")
        ))
        .unwrap();
    assert_eq!(unreachable.trim(), "", "unreachable pods");

    // The agent is killed between the ADDs and the DELs, and restarted.
    c.stop_agent(1, "KILL").unwrap();
    c.start_agent(1).unwrap();
    let mut attached = attached_ips(&c, 1);
    attached.sort();
    let mut expected: Vec<Ipv4Addr> = distinct.iter().copied().chain([pod_ip(1, 1)]).collect();
    expected.sort();
    assert_eq!(
        attached, expected,
        "the restarted agent lost or invented pods"
    );
    // New ADDs after the restart never collide with the old ones.
    let more: Vec<Ipv4Addr> = all_at_once(100..110, |i| {
        address_of(&rt.add(&format!("many{i}"), &netns_path(&pods[i])))
    });
    for ip in &more {
        assert!(
            !distinct.contains(ip),
            "{ip} handed out twice across the restart"
        );
    }
    assert_eq!(more.iter().collect::<BTreeSet<_>>().len(), 10);
    assert!(ping_from(&pods[105].name, pod_ip(2, 1)));

    all_at_once(0..110, |i| {
        rt.del(&format!("many{i}"), &netns_path(&pods[i]))
    });
    assert_eq!(
        attached_ips(&c, 1),
        vec![pod_ip(1, 1)],
        "pods left attached"
    );
    assert_eq!(
        address_file(&c, 1)["allocations"].as_array().unwrap().len(),
        0,
        "addresses leaked"
    );
    assert!(
        host_veths(&c, 1).is_empty(),
        "veths leaked: {:?}",
        host_veths(&c, 1)
    );
}

/// ADD+DEL latency for 100 pods, hybridway-cni against the reference bridge +
/// host-local plugins, in the same run on the same node. Not a pass/fail test (the
/// machine is shared); run it by hand:
/// `sudo cargo test --release -p hybridway-control --test cni_e2e -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run by hand (see the doc comment)"]
fn bench_add_del_latency_against_bridge_and_host_local() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for backend in ["af_xdp", "tun"] {
        bench_on(backend);
    }
}

fn bench_on(backend: &str) {
    let c = cluster(backend, &format!("b{}", &backend[..1]));
    let tag = c.spec.tag.clone();
    let pods: Vec<Netns> = (0..100)
        .map(|i| Netns::create(&format!("{tag}-b{i}")).unwrap())
        .collect();
    let list_file = c.spec.dir.join("bench-netns.txt");
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    std::fs::write(&list_file, paths.join("\n")).unwrap();
    let log = c.spec.dir.join("bench.log");
    let ours = json!({"cniVersion": "1.1.0", "name": "hybridway-bench", "plugins": [{
        "type": "hybridway-cni", "agentSocket": c.node(1).unwrap().socket, "logFile": log}]});
    let reference = json!({"cniVersion": "1.1.0", "name": "reference-bench", "plugins": [{
        "type": "bridge", "bridge": "hwbench0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.19.3.0/24"}]],
                 "dataDir": c.spec.dir.join("host-local")}}]});
    let mut rows = Vec::new();
    for round in 0..2 {
        for (label, list) in [("hybridway-cni", &ours), ("bridge+host-local", &reference)] {
            let rt = Runtime::with_list(&c, 1, list, log.clone());
            let r = rt
                .run(&[], &["bench", list_file.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("{label}: {e:?}"));
            eprintln!("{backend} round {round} {label}: {r}");
            rows.push((round, label, r));
        }
    }
    for round in 0..2 {
        let get = |label: &str, k: &str| {
            rows.iter()
                .find(|(r, l, _)| *r == round && *l == label)
                .map(|(_, _, v)| v[k].as_f64().unwrap())
                .unwrap()
        };
        for k in ["total_p50_ms", "total_p99_ms"] {
            eprintln!(
                "{backend} round {round} {k}: hybridway-cni {:.1} ms, bridge+host-local {:.1} ms, ratio {:.2}x",
                get("hybridway-cni", k),
                get("bridge+host-local", k),
                get("hybridway-cni", k) / get("bridge+host-local", k)
            );
        }
    }
}
