//! `hybridway agent` in Kubernetes mode as a process inside a node's network
//! namespace: a local file (TUN backend, no metrics), a kubeconfig, the node name.
//! Stopped with SIGTERM on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hybridway_control::agent::control::{self, Request};

use super::wait_for;

pub struct KubeAgent {
    pub node: String,
    pub netns: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl KubeAgent {
    /// An agent for Node `node` in namespace `netns` (uplink `eth0`); files in `dir`.
    pub fn new(node: &str, netns: &str, dir: &Path) -> KubeAgent {
        KubeAgent {
            node: node.to_string(),
            netns: netns.to_string(),
            dir: dir.to_owned(),
            child: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.node))
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.node))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts the agent; waits until it answers (it opens its socket only once it
    /// has this node's block).
    pub fn start(&mut self, kubeconfig: &Path) {
        self.start_on(kubeconfig, "tun");
    }

    /// [`KubeAgent::start`] with `backend` (`dataplane.backend`: "tun", "af_xdp").
    pub fn start_on(&mut self, kubeconfig: &Path, backend: &str) {
        let (d, n) = (self.dir.display(), &self.node);
        let cfg = self.dir.join(format!("{n}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "uplink: {{interface: eth0}}\n\
                 snat: {{enabled: false}}\n\
                 dataplane: {{backend: {backend}, workers: 1, hugepages: false, parkTimeoutMs: 50}}\n\
                 metrics: {{listen: null}}\n\
                 control: {{socket: {sock}, stateFile: {d}/{n}-pods.json, clusterStateFile: {d}/{n}-cluster.json}}\n",
                sock = self.socket().display(),
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                env!("CARGO_BIN_EXE_hybridway"),
            ])
            .args(["agent", "--config", cfg.to_str().unwrap(), "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--node-name", &self.node])
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let name = self.node.clone();
        wait_for(
            Duration::from_secs(60),
            &format!("agent {name} answering"),
            || {
                if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                    panic!("agent {name} exited with {st}:\n{}", self.log_text());
                }
                self.status()
            },
        );
    }

    /// `hybridway status` as JSON, while the agent answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        control::call(&self.socket(), &Request::Status)
            .ok()
            .and_then(|r| r.status)
    }

    /// Names of the other nodes in the agent's tables.
    pub fn table_nodes(&self) -> Vec<String> {
        let Some(st) = self.status() else {
            return Vec::new();
        };
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The agent's resident set size in KiB (`ip netns exec` execs it: same pid).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// Sends `signal` ("TERM", "KILL", ...) and waits for the process to end.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        self.stop("TERM");
    }
}
