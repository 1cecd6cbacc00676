//! Network namespaces and veths for the demo and the end-to-end tests: uniquely
//! named, deleted on drop (which deletes every interface inside them).

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
}

fn out_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

/// Runs a program (outside any namespace) and fails with its output.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, NetError> {
    let line = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| NetError::Command {
            cmd: line.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: line,
            detail: out_text(&out),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (an old one of the same name is removed first) with
    /// its loopback up.
    pub fn new(name: &str) -> Result<Self, NetError> {
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    /// `sh -c cmd` inside the namespace; fails with the command's output.
    pub fn sh(&self, cmd: &str) -> Result<String, NetError> {
        let out = self.try_sh(cmd)?;
        if !out.status.success() {
            return Err(NetError::Command {
                cmd: format!("[{}] {cmd}", self.name),
                detail: out_text(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c cmd` inside the namespace, whatever its exit status.
    pub fn try_sh(&self, cmd: &str) -> Result<Output, NetError> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map_err(|e| NetError::Command {
                cmd: format!("[{}] {cmd}", self.name),
                detail: e.to_string(),
            })
    }

    /// A command to run inside the namespace (for children the caller manages).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// MAC address of `dev` here.
    pub fn mac(&self, dev: &str) -> Result<String, NetError> {
        Ok(self
            .sh(&format!("cat /sys/class/net/{dev}/address"))?
            .trim()
            .to_string())
    }

    /// Turns off checksum and segmentation offloads on `dev`. AF_XDP hands frames
    /// over as they are on the wire of the veth: a checksum left for "hardware" to
    /// fill (CHECKSUM_PARTIAL) or a 64 KiB TSO super-frame would leave the node
    /// wrong or not at all. A real NIC computes them; a veth never does.
    pub fn no_offloads(&self, dev: &str) -> Result<(), NetError> {
        self.sh(&format!("ethtool -K {dev} tx off tso off gso off gro off >/dev/null 2>&1 || ethtool -K {dev} tx off"))
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair with `a_dev` in `a` and `b_dev` in `b`, both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<(), NetError> {
    // Created in `a` with a temporary peer name so that names never clash in the root namespace.
    a.sh(&format!(
        "ip link add {a_dev} type veth peer name hwtmp{}",
        std::process::id() % 100_000
    ))?;
    a.sh(&format!(
        "ip link set hwtmp{} netns {} name {b_dev}",
        std::process::id() % 100_000,
        b.name
    ))?;
    a.sh(&format!("ip link set {a_dev} up"))?;
    b.sh(&format!("ip link set {b_dev} up"))?;
    Ok(())
}
