//! A long-running process of the lab (an agent, a controller, flanneld, bgpd) with
//! its output in a log file; stopped on drop, politely first (SIGTERM, then SIGKILL
//! after a grace period), so a demo or test that fails still leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::netns::run;

#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon, LabError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// The process id (`ip netns exec` execs its program: the same pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let count = text.lines().count();
        let tail: Vec<&str> = text.lines().skip(count.saturating_sub(lines)).collect();
        tail.join("\n")
    }

    /// Sends `signal` ("TERM", "KILL") and waits up to 10 s for the end (then
    /// SIGKILL).
    pub fn stop(&mut self, signal: &str) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = run("kill", &[&format!("-{signal}"), &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop("TERM");
    }
}
