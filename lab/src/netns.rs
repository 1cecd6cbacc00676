//! Network namespaces and veths: uniquely named, deleted on drop (which deletes every
//! interface inside them), and commands run inside them.
//!
//! Two flavours of the same operations: the fallible ones (`create`, `run`,
//! `output`, `read_mac`) for the demo and the benches, which report a failed step
//! and clean up; and the checked ones (`new`, `sh`, `try_sh`, `mac`, [`sh`],
//! [`veth_pair`]) for tests, where a failed setup command is a failed test and
//! panics with the command's output.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::LabError;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number no other namespace or directory of this process has used.
pub fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
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

/// Runs a program (outside any namespace); fails with its output.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, LabError> {
    let line = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| LabError::command(&line, e.to_string()))?;
    if !out.status.success() {
        return Err(LabError::command(&line, out_text(&out)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run`] for tests: `args[0]` is the program; panics when it fails.
#[track_caller]
pub fn sh(args: &[&str]) -> String {
    let (cmd, rest) = args.split_first().unwrap_or((&"true", &[]));
    run(cmd, rest).unwrap_or_else(|e| fail(e))
}

/// The one place the checked helpers give up: tests want the command's output in
/// the failure, not a Result to unwrap at every line.
#[track_caller]
#[allow(clippy::panic)]
fn fail(e: LabError) -> ! {
    panic!("{e}")
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (an old one of the same name is removed first: a
    /// demo killed with SIGKILL leaves its names behind) with its loopback up.
    pub fn create(name: &str) -> Result<Self, LabError> {
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.run("ip link set lo up")?;
        Ok(ns)
    }

    /// A namespace named `hw<tag>-<pid>-<counter>`: tests running in parallel, in
    /// one process or several, never share one.
    pub fn unique(tag: &str) -> Result<Self, LabError> {
        Netns::create(&format!("hw{tag}-{}-{}", std::process::id(), unique()))
    }

    /// [`Netns::unique`] for tests; panics when it fails.
    #[track_caller]
    pub fn new(tag: &str) -> Self {
        Netns::unique(tag).unwrap_or_else(|e| fail(e))
    }

    /// `sh -c cmd` inside the namespace; fails with the command's output.
    pub fn run(&self, cmd: &str) -> Result<String, LabError> {
        let out = self.output(cmd)?;
        if !out.status.success() {
            return Err(LabError::command(
                &format!("[{}] {cmd}", self.name),
                out_text(&out),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c cmd` inside the namespace, whatever its exit status.
    pub fn output(&self, cmd: &str) -> Result<Output, LabError> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map_err(|e| LabError::command(&format!("[{}] {cmd}", self.name), e.to_string()))
    }

    /// [`Netns::run`] for tests: returns stdout, panics with the output on failure.
    #[track_caller]
    pub fn sh(&self, cmd: &str) -> String {
        self.run(cmd).unwrap_or_else(|e| fail(e))
    }

    /// [`Netns::output`] for tests (panics only when `ip` cannot be started).
    #[track_caller]
    pub fn try_sh(&self, cmd: &str) -> Output {
        self.output(cmd).unwrap_or_else(|e| fail(e))
    }

    /// A command to run inside the namespace (for children the caller manages).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The MAC address of `dev` here.
    pub fn read_mac(&self, dev: &str) -> Result<[u8; 6], LabError> {
        let text = self.run(&format!("cat /sys/class/net/{dev}/address"))?;
        let bad = || LabError::command(&format!("[{}] MAC of {dev}", self.name), text.clone());
        let mut mac = [0u8; 6];
        let mut parts = text.trim().split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(mac)
    }

    /// [`Netns::read_mac`] for tests.
    #[track_caller]
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        self.read_mac(dev).unwrap_or_else(|e| fail(e))
    }

    /// Turns off checksum and segmentation offloads on `dev`. AF_XDP hands frames
    /// over as they are on the wire of the veth: a checksum left for "hardware" to
    /// fill (CHECKSUM_PARTIAL) or a 64 KiB TSO super-frame would leave the node
    /// wrong or not at all. A real NIC computes them; a veth never does.
    pub fn no_offloads(&self, dev: &str) -> Result<(), LabError> {
        self.run(&format!(
            "ethtool -K {dev} tx off tso off gso off gro off >/dev/null 2>&1 || ethtool -K {dev} tx off"
        ))
        .map(|_| ())
    }

    /// Undoes [`Netns::no_offloads`]: the kernel's defaults for a veth (checksum
    /// and segmentation offloads on, GRO on), for a benchmark's kernel paths.
    pub fn offloads_on(&self, dev: &str) -> Result<(), LabError> {
        self.run(&format!(
            "ethtool -K {dev} tx on tso on gso on gro on >/dev/null 2>&1 || ethtool -K {dev} tx on"
        ))
        .map(|_| ())
    }

    /// The veths in the namespace.
    pub fn veths(&self) -> Result<Vec<String>, LabError> {
        Ok(link_names(&self.run("ip -o link show type veth")?))
    }
}

/// The device names of `ip -o link` lines (`7: eth0@if8: <...> ...`; a veth's
/// name ends at the `@` of its peer's index).
fn link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next().map(str::to_string))
        .collect()
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair with `a_dev` in `a` and `b_dev` in `b`, both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<(), LabError> {
    run(
        "ip",
        &[
            "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
            &b.name,
        ],
    )?;
    a.run(&format!("ip link set {a_dev} up"))?;
    b.run(&format!("ip link set {b_dev} up"))?;
    Ok(())
}

/// [`veth`] for tests, with an address (`198.18.0.1/24`) on each end.
#[track_caller]
pub fn veth_pair(a: &Netns, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) {
    veth(a, a_dev, b, b_dev).unwrap_or_else(|e| fail(e));
    a.sh(&format!("ip addr add {a_addr} dev {a_dev}"));
    b.sh(&format!("ip addr add {b_addr} dev {b_dev}"));
}

/// Whether this process runs as root (namespaces, XDP and routing daemons need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// For tests that need root: they must fail, not pass silently, without it.
#[track_caller]
pub fn require_root() {
    if !is_root() {
        fail(LabError::NotRoot);
    }
}

#[cfg(test)]
mod tests {
    use super::link_names;

    #[test]
    fn link_names_end_at_the_peer_index() {
        let text = "2: eth0@if883: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\n\
                    5: hwp0@if4: <BROADCAST,MULTICAST,UP> mtu 1450\n\
                    6: lo: <LOOPBACK,UP> mtu 65536\n";
        assert_eq!(link_names(text), ["eth0", "hwp0", "lo"]);
        assert!(link_names("").is_empty());
    }
}
