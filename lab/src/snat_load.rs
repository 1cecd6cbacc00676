//! Many TCP connections from a pod to one outside ip:port, for the SNAT load tests
//! and `hybridway-lab bench-snat`. The work is done by a small Python program
//! (`snat_conns.py`, embedded here and written next to the cluster's files) run in
//! several processes on each side, because a process may hold only so many open
//! files (20,000 on the project's machine).
//!
//! ```text
//!  pod namespace                         outside namespace
//!  hold/churn × procs ──TCP──► SNAT ──► serve × procs (SO_REUSEPORT, one port)
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};

use crate::netns::Netns;

/// The helper program.
const HELPER: &str = include_str!("snat_conns.py");

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("snat load helper: {0}")]
    Io(#[from] std::io::Error),
    #[error("snat load helper said {line:?}: {message}")]
    Output { line: String, message: String },
}

/// Writes the helper into `dir`; returns its path.
pub fn install_helper(dir: &Path) -> Result<PathBuf, LoadError> {
    let path = dir.join("snat_conns.py");
    std::fs::write(&path, HELPER)?;
    Ok(path)
}

/// Echo servers on `addr:port` in `ns`; killed on drop.
#[derive(Debug)]
pub struct Servers {
    children: Vec<Child>,
}

impl Servers {
    pub fn start(
        helper: &Path,
        ns: &Netns,
        addr: Ipv4Addr,
        port: u16,
        procs: usize,
    ) -> Result<Self, LoadError> {
        let mut servers = Servers {
            children: Vec::new(),
        };
        for _ in 0..procs.max(1) {
            let mut child = ns
                .command("python3")
                .arg(helper)
                .args(["serve", &addr.to_string(), &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let ready = child
                .stdout
                .take()
                .map(|out| {
                    let mut line = String::new();
                    BufReader::new(out).read_line(&mut line).map(|_| line)
                })
                .transpose()?
                .unwrap_or_default();
            servers.children.push(child);
            if ready.trim() != "ready" {
                return Err(LoadError::Output {
                    line: ready,
                    message: "the echo server did not start".into(),
                });
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a set of connections got: answered, failed, and the failures by errno name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub answered: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Outcome {
    fn add(&mut self, v: &serde_json::Value) {
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        self.answered += n("answered");
        self.failed += n("failed");
        if let Some(map) = v.get("errors").and_then(|e| e.as_object()) {
            for (k, c) in map {
                *self.errors.entry(k.clone()).or_default() += c.as_u64().unwrap_or(0);
            }
        }
    }
}

/// Connections held open by the `hold` processes until this is dropped.
#[derive(Debug)]
pub struct Held {
    pub outcome: Outcome,
    children: Vec<(Child, Option<ChildStdin>)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for (c, stdin) in &mut self.children {
            drop(stdin.take());
            let _ = c.wait();
        }
    }
}

fn json_line(child: &mut Child) -> Result<serde_json::Value, LoadError> {
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    serde_json::from_str(line.trim()).map_err(|e| LoadError::Output {
        line,
        message: e.to_string(),
    })
}

/// Opens `total` connections from `ns` to `addr:port`, split over `procs`
/// processes, each exchanging one byte; returns once every process reported, with
/// the connections still open.
pub fn hold(
    helper: &Path,
    ns: &Netns,
    addr: Ipv4Addr,
    port: u16,
    total: usize,
    procs: usize,
) -> Result<Held, LoadError> {
    let procs = procs.max(1);
    let mut held = Held {
        outcome: Outcome::default(),
        children: Vec::new(),
    };
    for i in 0..procs {
        let n = total / procs + usize::from(i < total % procs);
        let mut child = ns
            .command("python3")
            .arg(helper)
            .args(["hold", &addr.to_string(), &port.to_string(), &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        held.children.push((child, stdin));
    }
    for (child, _) in &mut held.children {
        let v = json_line(child)?;
        held.outcome.add(&v);
    }
    Ok(held)
}

/// Short connections for `seconds` from `procs` processes.
#[derive(Debug, Default, Clone)]
pub struct Churn {
    /// Connections completed in each second (of the machine's monotonic clock,
    /// shared by the processes), summed over the processes; from the first
    /// process's first second to the last one's last.
    pub per_second: Vec<u64>,
    pub outcome: Outcome,
}

impl Churn {
    /// The longest run of consecutive seconds in which no connection completed.
    /// One SYN lost in every process (a 1 s retransmission) can empty one second;
    /// a NAT stall (ports stuck in TIME_WAIT) empties many.
    pub fn longest_stall(&self) -> usize {
        let (mut longest, mut run) = (0, 0);
        for n in &self.per_second {
            run = if *n == 0 { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        longest
    }

    /// Adds one process's seconds (`first`: its first second on the shared clock)
    /// to the sum whose first second is `base`.
    fn add_seconds(&mut self, base: u64, first: u64, seconds: &[u64]) {
        let offset = usize::try_from(first.saturating_sub(base)).unwrap_or(usize::MAX);
        let end = offset.saturating_add(seconds.len());
        if self.per_second.len() < end {
            self.per_second.resize(end, 0);
        }
        for (slot, n) in self.per_second.iter_mut().skip(offset).zip(seconds) {
            *slot += n;
        }
    }
}

pub fn churn(
    helper: &Path,
    ns: &Netns,
    addr: Ipv4Addr,
    port: u16,
    seconds: u32,
    procs: usize,
) -> Result<Churn, LoadError> {
    let mut children = Vec::new();
    for _ in 0..procs.max(1) {
        children.push(
            ns.command("python3")
                .arg(helper)
                .args([
                    "churn",
                    &addr.to_string(),
                    &port.to_string(),
                    &seconds.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
    }
    let mut reports = Vec::new();
    for child in &mut children {
        let v = json_line(child)?;
        let _ = child.wait();
        reports.push(v);
    }
    let first = |v: &serde_json::Value| v.get("first_second").and_then(|f| f.as_u64()).unwrap_or(0);
    let base = reports.iter().map(first).min().unwrap_or(0);
    let mut churn = Churn::default();
    for v in &reports {
        let seconds: Vec<u64> = v
            .get("per_second")
            .and_then(|p| p.as_array())
            .map(|list| list.iter().map(|n| n.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default();
        churn.add_seconds(base, first(v), &seconds);
        churn.outcome.add(v);
    }
    churn.outcome.answered = churn.per_second.iter().sum();
    Ok(churn)
}

/// One connection with one echoed byte: "ok", or the errno name ("EHOSTUNREACH"),
/// or "timeout".
pub fn one(
    helper: &Path,
    ns: &Netns,
    addr: Ipv4Addr,
    port: u16,
    timeout_s: u32,
) -> Result<String, LoadError> {
    let mut child = ns
        .command("python3")
        .arg(helper)
        .args([
            "one",
            &addr.to_string(),
            &port.to_string(),
            &timeout_s.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let v = json_line(&mut child)?;
    let _ = child.wait();
    Ok(v.get("result")
        .and_then(|r| r.as_str())
        .unwrap_or_default()
        .to_string())
}

/// Lets `ns` (a pod) reuse a port of its own TIME_WAIT connections for new ones to
/// the same destination (`tcp_tw_reuse`), and gives it `lo..=hi` as ephemeral
/// ports: without them a pod is limited by its own TIME_WAIT (28,232 ports per 60 s
/// by default), not by the NAT under test.
pub fn tune_client(ns: &Netns, lo: u16, hi: u16) -> Result<(), crate::LabError> {
    ns.run(&format!(
        "sysctl -qw net.ipv4.tcp_tw_reuse=1 && sysctl -qw net.ipv4.ip_local_port_range='{lo} {hi}'"
    ))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::Churn;

    #[test]
    fn seconds_of_processes_line_up_on_the_shared_clock() {
        let mut c = Churn::default();
        c.add_seconds(100, 100, &[5, 0, 7, 0]);
        // Started a second later: its seconds are shifted, not summed index by index.
        c.add_seconds(100, 101, &[3, 0, 0, 4]);
        assert_eq!(c.per_second, [5, 3, 7, 0, 4]);
        assert_eq!(c.longest_stall(), 1);
    }

    #[test]
    fn a_stall_is_the_longest_run_of_empty_seconds() {
        let mut c = Churn::default();
        c.add_seconds(7, 7, &[5, 0, 7, 0, 0, 0, 3, 0]);
        assert_eq!(c.longest_stall(), 3);
    }
}
