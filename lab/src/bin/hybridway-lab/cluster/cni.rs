//! libcni with the CNI plugin: pods created on a node as containerd creates them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use hybridway_lab::netns::Netns;

use super::nodes::Node;
use super::repo;

/// libcni (scripts/cni-driver) with deploy/10-hybridway.conflist, run in a node's
/// namespace as containerd runs it on the node.
pub(super) struct CniRuntime {
    driver: PathBuf,
    cni_path: String,
    template: serde_json::Value,
    dir: PathBuf,
}

impl CniRuntime {
    pub(super) fn new(exe: &Path, dir: &Path) -> anyhow::Result<CniRuntime> {
        // Cached after the first run; its progress shows while it builds.
        let script = repo().join("scripts/cni-lab.sh");
        if !Command::new(&script).arg("build").status()?.success() {
            anyhow::bail!("scripts/cni-lab.sh build failed");
        }
        let out = Command::new(&script).arg("path").output()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin");
        let plugins = exe.parent().context("the directory of hybridway")?;
        if !plugins.join("hybridway-cni").is_file() {
            anyhow::bail!(
                "{} is missing: cargo build --bin hybridway-cni",
                plugins.join("hybridway-cni").display()
            );
        }
        let text = std::fs::read_to_string(repo().join("deploy/10-hybridway.conflist"))?;
        Ok(CniRuntime {
            driver: bin.join("cni-driver"),
            cni_path: format!("{}:{}", plugins.display(), bin.display()),
            template: serde_json::from_str(&text)?,
            dir: dir.to_path_buf(),
        })
    }

    /// CNI ADD of `pod` (namespace `ns`) on `node`; the pod's address.
    pub(super) fn add(&self, node: &Node, pod: &str, ns: &Netns) -> anyhow::Result<Ipv4Addr> {
        let n = node.spec.name;
        let mut list = self.template.clone();
        let plugin = list
            .pointer_mut("/plugins/0")
            .and_then(|p| p.as_object_mut())
            .context("deploy/10-hybridway.conflist has no plugin")?;
        plugin.insert(
            "agentSocket".into(),
            serde_json::json!(self.dir.join(format!("{n}.sock"))),
        );
        plugin.insert(
            "logFile".into(),
            serde_json::json!(self.dir.join(format!("cni-{n}.log"))),
        );
        let conflist = self.dir.join(format!("cni-{n}.conflist"));
        std::fs::write(&conflist, serde_json::to_string_pretty(&list)?)?;
        let out = node
            .ns
            .command(&self.driver.display().to_string())
            .arg("-conflist")
            .arg(&conflist)
            .args(["-cni-path", &self.cni_path])
            .arg("-cache-dir")
            .arg(self.dir.join(format!("cni-cache-{n}")))
            .args(["add", pod, &format!("/run/netns/{}", ns.name)])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "cni-driver printed no JSON: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(e) = v.get("error") {
            anyhow::bail!("CNI ADD failed: {e}");
        }
        let ip = v
            .pointer("/ips/0/address")
            .and_then(|a| a.as_str())
            .and_then(|a| a.split_once('/'))
            .and_then(|(ip, _)| ip.parse().ok())
            .with_context(|| format!("no address in the CNI result {v}"))?;
        Ok(ip)
    }
}
