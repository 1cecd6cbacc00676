//! Shared helpers for the tests that need root: FRR, BIRD, the `hybridway
//! bgp-speaker` process, the controller and the Kubernetes-mode agent as processes;
//! namespaces, `wait_for` and (`k8s_lab`) a real Kubernetes API server come from the
//! lab crate (`hybridway_lab`), re-exported here under their old paths.
//! Everything the helpers start or create is stopped or removed by a `Drop` guard,
//! also when a test fails.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod controller;
pub mod k8s_lab;
pub mod kube_agent;
pub mod services;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// The namespace plumbing lives in the lab crate; these names keep the tests' paths.
#[allow(unused_imports)] // each test binary uses its own part of the plumbing
pub use hybridway_lab::{Netns, require_root, sh, unique, wait_for};

/// A lab: one switch namespace with a bridge `br0` at 198.18.0.1/24 and N speaker
/// namespaces, speaker i at 198.18.0.(10+i)/24 on a veth into the bridge.
pub struct Lab {
    pub switch: String,
    pub speakers: Vec<String>,
    pub dir: PathBuf,
    children: Vec<Child>,
}

pub const SWITCH_ADDR: &str = "198.18.0.1";

pub fn speaker_addr(i: usize) -> String {
    format!("198.18.0.{}", 10 + i)
}

impl Lab {
    pub fn new(tag: &str, speakers: usize) -> Lab {
        require_root();
        let id = format!("{}-{}", std::process::id(), unique());
        let dir = std::env::temp_dir().join(format!("hw-bgp-{tag}-{id}"));
        fs::create_dir_all(&dir).unwrap();
        let switch = format!("hwbgp-{tag}-sw-{id}");
        let mut lab = Lab {
            switch: switch.clone(),
            speakers: vec![],
            dir,
            children: vec![],
        };
        sh(&["ip", "netns", "add", &switch]);
        sh(&["ip", "-n", &switch, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &switch,
            "addr",
            "add",
            &format!("{SWITCH_ADDR}/24"),
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..speakers {
            let ns = format!("hwbgp-{tag}-sp{i}-{id}");
            sh(&["ip", "netns", "add", &ns]);
            lab.speakers.push(ns.clone());
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("sp{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ]);
            sh(&["ip", "-n", &switch, "link", "set", &port, "master", "br0"]);
            sh(&["ip", "-n", &switch, "link", "set", &port, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", speaker_addr(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Start a daemon in `ns`; the lab kills it on drop.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> usize {
        let log = fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn child(&mut self, idx: usize) -> &mut Child {
        &mut self.children[idx]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.speakers.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("HW_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// Another node of the speaker's pool: a `nodes:` entry of the agent's file.
#[derive(Clone, Debug)]
pub struct Route {
    pub node: String,
    pub node_address: String,
    pub block: String,
}

pub fn route(node: &str, addr: &str, block: &str) -> Route {
    Route {
        node: node.into(),
        node_address: addr.into(),
        block: block.into(),
    }
}

/// Settings for one `hybridway bgp-speaker`.
#[derive(Clone, Debug)]
pub struct SpeakerSpec {
    pub index: usize,
    pub local_asn: u32,
    pub peer_asn: u32,
    pub password_file: Option<PathBuf>,
    pub restart_time: u16,
    /// The other nodes of the pool (`nodes:` of the agent's file).
    pub routes: Vec<Route>,
    /// The switch peer's `importRoutes`.
    pub import_routes: bool,
}

impl SpeakerSpec {
    pub fn new(index: usize, routes: Vec<Route>) -> Self {
        SpeakerSpec {
            index,
            local_asn: 65010,
            peer_asn: 65001,
            password_file: None,
            restart_time: 600,
            routes,
            import_routes: false,
        }
    }
}

/// A running speaker process (the lab owns the process; this remembers how to
/// reach it).
pub struct Speaker {
    pub idx: usize,
    pub config: PathBuf,
    pub status: PathBuf,
    pub metrics: PathBuf,
    pub spec: SpeakerSpec,
    ns: String,
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The agent's file for speaker `spec.index`: this node in underlay mode, the
/// spec's routes as the other nodes of its pool, and a `bgp` section naming the
/// switch. `hybridway bgp-speaker` advertises the pool from exactly these nodes.
pub fn write_speaker_config(lab: &Lab, spec: &SpeakerSpec) -> (PathBuf, PathBuf, PathBuf) {
    let i = spec.index;
    let config = lab.path(&format!("speaker{i}.yaml"));
    let status = lab.path(&format!("speaker{i}-status.json"));
    let metrics = lab.path(&format!("speaker{i}.prom"));
    let auth = match &spec.password_file {
        Some(p) => format!(", authPassword: {{file: {}}}", p.display()),
        None => String::new(),
    };
    let import = if spec.import_routes {
        ", importRoutes: true"
    } else {
        ""
    };
    let block = 20 + i;
    let mut yaml = format!(
        "node: {{name: {node}, address: {addr}}}\nmode: underlay\nuplink: {{interface: eth0}}\n\
         pods: {{block: 198.19.{block}0.0/24, gateway: 198.19.{block}0.1}}\n\
         metrics: {{listen: null}}\n\
         bgp:\n  localASN: {}\n  connectRetryMs: 300\n  restartTime: {}\n  restartMarker: {}\n  statusFile: {}\n  metricsFile: {}\n  bgpSpeakers:\n  - name: {node}\n    peers:\n    - {{name: switch, peerASN: {}, peerAddress: {SWITCH_ADDR}{auth}{import}}}\nnodes:\n",
        spec.local_asn,
        spec.restart_time,
        lab.path(&format!("speaker{i}.marker")).display(),
        status.display(),
        metrics.display(),
        spec.peer_asn,
        node = node_name(i),
        addr = speaker_addr(i),
    );
    for r in &spec.routes {
        yaml.push_str(&format!(
            "- {{name: {}, address: \"{}\", podBlock: \"{}\"}}\n",
            r.node, r.node_address, r.block
        ));
    }
    fs::write(&config, yaml).unwrap();
    (config, status, metrics)
}

pub fn start_speaker(lab: &mut Lab, spec: SpeakerSpec) -> Speaker {
    let (config, status, metrics) = write_speaker_config(lab, &spec);
    let _ = fs::remove_file(&status);
    let ns = lab.speakers[spec.index].clone();
    let bin = env!("CARGO_BIN_EXE_hybridway");
    let idx = lab.spawn(
        &ns,
        &[bin, "bgp-speaker", "--config", config.to_str().unwrap()],
        &format!("speaker{}-{}.log", spec.index, unique()),
    );
    Speaker {
        idx,
        config,
        status,
        metrics,
        spec,
        ns,
    }
}

impl Speaker {
    /// Replace the pool's other nodes and tell the running process (SIGHUP).
    pub fn set_routes(&mut self, lab: &mut Lab, routes: Vec<Route>) {
        self.spec.routes = routes;
        write_speaker_config(lab, &self.spec);
        self.signal(lab, "HUP");
    }

    pub fn signal(&self, lab: &mut Lab, sig: &str) {
        let pid = lab.child(self.idx).id().to_string();
        sh(&["kill", &format!("-{sig}"), &pid]);
    }

    /// SIGKILL: the process dies without closing anything itself.
    pub fn kill9(&self, lab: &mut Lab) {
        let c = lab.child(self.idx);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub fn wait_exit(&self, lab: &mut Lab, timeout: Duration) {
        let c = lab.child(self.idx);
        wait_for(timeout, "speaker exit", || c.try_wait().unwrap());
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let text = fs::read_to_string(&self.status).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(v["peers"][0].clone())
    }

    pub fn wait_state(&self, state: &str, timeout: Duration) -> serde_json::Value {
        wait_for(
            timeout,
            &format!("speaker {} state {state}", self.spec.index),
            || self.status().filter(|p| p["state"] == state),
        )
    }

    pub fn own_block(&self) -> String {
        format!("198.19.{}0.0/24", 20 + self.spec.index)
    }
}

/// FRR's bgpd acting as the switch, alone (no zebra: `-Z`), in the switch namespace.
pub struct Frr {
    pub dir: PathBuf,
    pub idx: usize,
}

pub struct FrrNeighbor {
    pub addr: String,
    pub asn: u32,
    pub password: Option<String>,
}

impl Frr {
    pub fn start(lab: &mut Lab, neighbors: &[FrrNeighbor]) -> Frr {
        Frr::start_with(lab, neighbors, "")
    }

    /// Start with extra lines appended under `router bgp`.
    pub fn start_with(lab: &mut Lab, neighbors: &[FrrNeighbor], extra: &str) -> Frr {
        let dir = lab.path(&format!("frr{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "frr defaults datacenter\nhostname switch\nlog file {}/bgpd.log\nrouter bgp 65001\n bgp router-id {SWITCH_ADDR}\n no bgp ebgp-requires-policy\n bgp graceful-restart\n bgp graceful-restart stalepath-time 30\n",
            dir.display()
        );
        for n in neighbors {
            conf.push_str(&format!(
                " neighbor {} remote-as {}\n neighbor {} timers connect 1\n",
                n.addr, n.asn, n.addr
            ));
            if let Some(p) = &n.password {
                conf.push_str(&format!(" neighbor {} password {p}\n", n.addr));
            }
        }
        conf.push_str(extra);
        let cfg = dir.join("bgpd.conf");
        fs::write(&cfg, conf).unwrap();
        let ns = lab.switch.clone();
        let d = dir.display().to_string();
        let idx = lab.spawn(
            &ns,
            &[
                "/usr/lib/frr/bgpd",
                "-Z",
                "-S",
                "-u",
                "root",
                "-g",
                "root",
                "-f",
                cfg.to_str().unwrap(),
                "-i",
                &format!("{d}/bgpd.pid"),
                "-z",
                &format!("{d}/zserv.api"),
                "--vty_socket",
                &d,
                "-P",
                "0",
            ],
            &format!("frr{}.out", unique()),
        );
        let frr = Frr { dir, idx };
        wait_for(Duration::from_secs(10), "bgpd vty socket", || {
            frr.vtysh("show bgp summary json")
        });
        frr
    }

    pub fn vtysh(&self, cmd: &str) -> Option<serde_json::Value> {
        let out = Command::new("vtysh")
            .args(["--vty_socket", self.dir.to_str().unwrap(), "-c", cmd])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Prefix → paths (each with nexthops, flags) in FRR's IPv4 unicast table.
    pub fn routes(&self) -> serde_json::Map<String, serde_json::Value> {
        self.vtysh("show bgp ipv4 unicast json")
            .and_then(|v| v["routes"].as_object().cloned())
            .unwrap_or_default()
    }

    pub fn peer_state(&self, addr: &str) -> Option<String> {
        let v = self.vtysh("show bgp summary json")?;
        v["ipv4Unicast"]["peers"][addr]["state"]
            .as_str()
            .map(String::from)
    }

    /// Next hops of the paths for `prefix`, and whether each path is stale.
    pub fn paths(&self, prefix: &str) -> Vec<(String, bool)> {
        let routes = self.routes();
        let Some(paths) = routes.get(prefix).and_then(|p| p.as_array()) else {
            return vec![];
        };
        paths
            .iter()
            .map(|p| {
                let nh = p["nexthops"][0]["ip"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (nh, p["stale"].as_bool().unwrap_or(false))
            })
            .collect()
    }
}

/// BIRD 2 acting as the switch.
pub struct Bird {
    pub sock: PathBuf,
}

impl Bird {
    pub fn start(lab: &mut Lab, neighbors: &[FrrNeighbor]) -> Bird {
        let dir = lab.path(&format!("bird{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "router id {SWITCH_ADDR};\nlog \"{}/bird.log\" all;\nprotocol device {{ scan time 1; }}\nprotocol direct {{ ipv4; interface \"br0\"; }}\n",
            dir.display()
        );
        for (i, n) in neighbors.iter().enumerate() {
            let pw = n
                .password
                .as_ref()
                .map(|p| format!("  password \"{p}\";\n"))
                .unwrap_or_default();
            conf.push_str(&format!(
                "protocol bgp speaker{i} {{\n  local {SWITCH_ADDR} as 65001;\n  neighbor {} as {};\n  connect retry time 1;\n  graceful restart on;\n{pw}  ipv4 {{ import all; export none; }};\n}}\n",
                n.addr, n.asn
            ));
        }
        let cfg = dir.join("bird.conf");
        fs::write(&cfg, conf).unwrap();
        let sock = dir.join("bird.ctl");
        let ns = lab.switch.clone();
        lab.spawn(
            &ns,
            &[
                "bird",
                "-f",
                "-c",
                cfg.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
            ],
            "bird.out",
        );
        let bird = Bird { sock };
        wait_for(Duration::from_secs(10), "bird control socket", || {
            bird.birdc("show status")
                .filter(|s| s.contains("Daemon is up"))
        });
        bird
    }

    pub fn birdc(&self, cmd: &str) -> Option<String> {
        let mut args = vec!["-s", self.sock.to_str().unwrap()];
        args.extend(cmd.split_whitespace());
        let out = Command::new("birdc").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Prefix → next hops of BGP routes, from `show route protocol ... all`-style output.
    pub fn bgp_routes(&self) -> Vec<(String, String)> {
        let Some(text) = self.birdc("show route where source = RTS_BGP") else {
            return vec![];
        };
        parse_bird_routes(&text)
    }
}

/// Parse `birdc show route` output into (prefix, next hop) pairs.
pub fn parse_bird_routes(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut prefix = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('/') && first.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            prefix = first.to_string();
        } else if first == "via"
            && let Some(nh) = words.next()
        {
            out.push((prefix.clone(), nh.to_string()));
        }
    }
    out
}

pub fn password_file(lab: &Lab, name: &str, password: &str) -> PathBuf {
    let p = lab.path(name);
    fs::write(&p, format!("{password}\n")).unwrap();
    p
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// For the benchmark harnesses under `control/benches`: `cargo bench` passes
/// `--bench`, `cargo test --all-targets` (CI) does not, and a minutes-long
/// measurement is not a test. False, after saying how to run it, when not benching.
pub fn benching(name: &str) -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    println!(
        "{name}: measurement only, run it with `cargo bench -p hybridway-control --bench {name}`"
    );
    false
}
