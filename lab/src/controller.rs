//! `hybridway controller` as a replica of the Deployment runs it, for the demo and
//! the controller tests: its service account's kubeconfig, an identity, a metrics
//! port of its own.

use std::path::Path;
use std::process::Command;

/// The command of one replica. The Lease is shorter than the defaults (15 s, renew
/// deadline 10 s, retry 2 s): 8 s, 5 s, 1 s make a failover fit a test or a demo,
/// and are still long enough that a busy 2-core machine does not miss a renewal.
pub fn replica_command(
    exe: &Path,
    kubeconfig: &Path,
    identity: &str,
    metrics_port: u16,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("controller")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--identity", identity])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--lease-duration",
            "8",
            "--renew-deadline",
            "5",
            "--retry-period",
            "1",
        ])
        .env("RUST_LOG", "info,kube=warn");
    cmd
}

/// A TCP port on 127.0.0.1 that nothing listens on now (for metrics endpoints).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
