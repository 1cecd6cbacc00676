//! `hybridway controller` as a process against a [`KubeLab`], and the kubectl
//! helpers the controller tests share: install the CRDs, RBAC and parameters, make
//! Nodes as a kubelet would, read back blocks, the Lease and Events.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::k8s_lab::KubeLab;
use super::{unique, wait_for};

pub const BLOCK: &str = "network.alibabacloud.com/hybrid-pod-block";
pub const MODE: &str = "network.alibabacloud.com/hybrid-mode";
pub const POOL: &str = "network.alibabacloud.com/hybrid-pool";

/// Parameters of the DESIGN.md address plan: two pools, ranges discovered.
pub const PARAMS: &str = "\
hybridPodCIDR: 198.19.128.0/17
nodeMaskSize: 24
nodePools:
- name: underlay-a
  mode: underlay
  nodeSelector: {matchLabels: {hybridway.test/pool: a}}
- name: overlay-b
  mode: overlay
  nodeSelector: {matchLabels: {hybridway.test/pool: b}}
";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs the CRDs and the controller's RBAC (with the password Secrets' Role),
/// waits for the CRD to serve.
pub fn install(lab: &KubeLab) {
    for f in fs::read_dir(repo().join("deploy/crds")).unwrap() {
        let path = f.unwrap().path();
        lab.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }
    // The controller's own RBAC, and the Role that lets it (and the agents) read the
    // BGP password Secrets by name.
    for f in ["controller-rbac.yaml", "bgp-secrets-rbac.yaml"] {
        let rbac = repo().join("deploy").join(f);
        lab.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()]);
    }
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bgpclusterconfigs.network.alibabacloud.com",
    ]);
}

/// Creates or replaces the parameters ConfigMap.
pub fn set_params(lab: &KubeLab, text: &str) {
    let indented: String = text.lines().map(|l| format!("    {l}\n")).collect();
    let out = lab.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: hybridway-config, namespace: kube-system}}\ndata:\n  config.yaml: |\n{indented}"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One Node as a kubelet would register it (labels, InternalIP, optional podCIDR).
pub fn node_yaml(name: &str, pool: Option<&str>, addr: &str, pod_cidr: Option<&str>) -> String {
    let labels = pool
        .map(|p| format!("  labels: {{hybridway.test/pool: {p}}}\n"))
        .unwrap_or_default();
    let spec = pod_cidr
        .map(|c| format!("spec: {{podCIDR: {c}, podCIDRs: [{c}]}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{labels}{spec}status:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n"
    )
}

/// `n` pool nodes named `{prefix}-{i:05}` from index `from`, alternately in pools
/// a and b, with on-premises addresses 198.18.64.0/18.
pub fn pool_nodes(prefix: &str, from: usize, n: usize) -> Vec<(String, String)> {
    (from..from + n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}");
            let pool = if i % 2 == 0 { "a" } else { "b" };
            let addr = format!("198.18.{}.{}", 64 + i / 250, 1 + i % 250);
            let yaml = node_yaml(&name, Some(pool), &addr, None);
            (name, yaml)
        })
        .collect()
}

/// Starts `kubectl create -f -` of `docs` in the background (the caller waits).
pub fn spawn_create(lab: &KubeLab, docs: &[String]) -> Child {
    use std::io::Write;
    let mut child = Command::new(lab.kubectl_path())
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn kubectl create");
    let mut stdin = child.stdin.take().expect("kubectl's stdin");
    stdin
        .write_all(docs.join("---\n").as_bytes())
        .expect("write to kubectl");
    drop(stdin);
    child
}

/// Creates many objects with one kubectl (a `---`-separated stream).
pub fn create_all(lab: &KubeLab, docs: &[String]) {
    let out = lab.apply(&docs.join("---\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates `docs` with `procs` kubectl processes at once (as many kubelets register
/// their Nodes); how long the API server took.
pub fn create_parallel(lab: &KubeLab, docs: &[String], procs: usize) -> Duration {
    let start = std::time::Instant::now();
    let children: Vec<Child> = docs
        .chunks(docs.len().div_ceil(procs.max(1)).max(1))
        .map(|chunk| spawn_create(lab, chunk))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    start.elapsed()
}

/// What the controller wrote on a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub block: Option<String>,
    pub mode: Option<String>,
    pub pool: Option<String>,
    pub pod_cidr: Option<String>,
}

/// Every Node's annotations and podCIDR, by name.
pub fn written(lab: &KubeLab) -> BTreeMap<String, Written> {
    let json: serde_json::Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "nodes", "-o", "json"])).unwrap();
    let mut out = BTreeMap::new();
    for item in json["items"].as_array().unwrap() {
        let a = &item["metadata"]["annotations"];
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        out.insert(
            item["metadata"]["name"].as_str().unwrap().to_string(),
            Written {
                block: s(&a[BLOCK]),
                mode: s(&a[MODE]),
                pool: s(&a[POOL]),
                pod_cidr: s(&item["spec"]["podCIDR"]),
            },
        );
    }
    out
}

/// Waits until `names` all carry a block; returns everything written.
pub fn wait_blocks(
    lab: &KubeLab,
    names: &[String],
    timeout: Duration,
) -> BTreeMap<String, Written> {
    wait_for(timeout, "blocks on every node", || {
        let w = written(lab);
        names
            .iter()
            .all(|n| {
                w.get(n)
                    .is_some_and(|x| x.block.is_some() && x.pod_cidr.is_some())
            })
            .then_some(w)
    })
}

/// The Lease's holder, if any.
pub fn lease_holder(lab: &KubeLab) -> Option<String> {
    lab.lease_holder("kube-system", "hybridway-controller")
}

/// Notes of Events with `reason` (any namespace).
pub fn event_notes(lab: &KubeLab, reason: &str) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "json"]))
            .unwrap();
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A free TCP port on 127.0.0.1 for a controller's metrics.
pub fn free_port() -> u16 {
    hybridway_lab::controller::free_port().unwrap()
}

/// One `hybridway controller` process; killed on drop.
pub struct ControllerProc {
    pub identity: String,
    pub metrics_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl ControllerProc {
    /// Starts a replica with a short lease (see `replica_command`).
    pub fn start(lab: &KubeLab, kubeconfig: &Path, identity: &str) -> ControllerProc {
        let metrics_port = free_port();
        let log = lab
            .dir()
            .join(format!("controller-{identity}-{}.log", unique()));
        let child = hybridway_lab::controller::replica_command(
            Path::new(env!("CARGO_BIN_EXE_hybridway")),
            kubeconfig,
            identity,
            metrics_port,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn hybridway controller");
        ControllerProc {
            identity: identity.to_string(),
            metrics_port,
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, as a crashed pod or a lost node.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the metrics endpoint (None while it does not answer).
    pub fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The resident set size of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- controller {} log ---\n{}", self.identity, self.log());
        }
    }
}
