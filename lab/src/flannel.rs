//! flanneld as a cloud node runs it: the Kubernetes subnet manager (its block is its
//! Node's `spec.podCIDR`) and the vxlan backend on the node's `eth0`. The binary is
//! the rig's (`scripts/k8s-lab.sh bin flanneld`), built from its Go module once.

use std::path::Path;

use crate::LabError;
use crate::kube_lab::lab_binary_path;
use crate::netns::Netns;
use crate::process::Daemon;

/// The cluster network flanneld is told about: every pod range of the address plan.
pub const FLANNEL_NETWORK: &str = "198.19.0.0/16";

/// Starts flanneld for Node `node` in `ns` with `kubeconfig`; its files (net-conf,
/// subnet file, log) go to `dir`. Stopped when the returned guard drops.
pub fn start_flanneld(
    ns: &Netns,
    node: &str,
    kubeconfig: &Path,
    dir: &Path,
    show_progress: bool,
) -> Result<Daemon, LabError> {
    let binary = lab_binary_path("flanneld", show_progress)?;
    let conf = dir.join(format!("{node}-net-conf.json"));
    std::fs::write(
        &conf,
        format!(r#"{{"Network": "{FLANNEL_NETWORK}", "Backend": {{"Type": "vxlan"}}}}"#),
    )?;
    let mut cmd = ns.command(&binary.display().to_string());
    cmd.arg("--kube-subnet-mgr")
        .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
        .arg("--iface=eth0")
        .arg(format!("--net-config-path={}", conf.display()))
        .arg(format!(
            "--subnet-file={}",
            dir.join(format!("{node}-subnet.env")).display()
        ))
        .arg("--ip-masq=false")
        .env("NODE_NAME", node);
    Daemon::spawn("flanneld", cmd, &dir.join(format!("{node}-flanneld.log")))
}
