//! Claiming the NAT port range from the kernel: while the agent runs, the range is
//! added to `net.ipv4.ip_local_reserved_ports`, so the node's own sockets never
//! autobind a port the dataplane may hand to a pod's flow (a node socket and a
//! masqueraded flow on one 5-tuple would steal each other's replies). Listening
//! sockets and explicit binds are not affected: node services on ports inside the
//! range keep working (their packets are not NAT replies, and the dataplane gives
//! them to the host).
//!
//! The value found at start is written to a file beside the agent's state before
//! the sysctl is changed, and that file, not the live value, is what a restart
//! believes: after a `kill -9` the live value still holds the claim, and restoring
//! it would make the claim permanent. A clean stop writes the original back and
//! removes the file.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::state_file::write_atomically;

/// The sysctl (in the agent's network namespace; it is per namespace).
pub const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The file beside the agent's state that remembers the value found at start.
pub const SAVED_FILE: &str = "ip_local_reserved_ports.orig";

#[derive(Debug, thiserror::Error)]
pub enum ReservedPortsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The claim; dropping it gives the range back.
#[derive(Debug)]
pub struct ReservedPorts {
    sysctl: PathBuf,
    saved: PathBuf,
    original: String,
}

/// The sysctl value that reserves `range` on top of `original` (the kernel accepts
/// overlapping entries, so the original list is kept as written).
pub fn with_range(original: &str, range: &RangeInclusive<u16>) -> String {
    let ours = format!("{}-{}", range.start(), range.end());
    match original.trim() {
        "" => ours,
        list => format!("{list},{ours}"),
    }
}

impl ReservedPorts {
    /// Reserves `range`, remembering the original value in `state_dir`.
    pub fn claim(
        range: &RangeInclusive<u16>,
        state_dir: &Path,
    ) -> Result<Self, ReservedPortsError> {
        Self::claim_at(Path::new(SYSCTL), range, state_dir)
    }

    /// [`ReservedPorts::claim`] on another file standing for the sysctl (tests).
    pub fn claim_at(
        sysctl: &Path,
        range: &RangeInclusive<u16>,
        state_dir: &Path,
    ) -> Result<Self, ReservedPortsError> {
        let saved = state_dir.join(SAVED_FILE);
        let original = match std::fs::read_to_string(&saved) {
            Ok(text) => {
                tracing::info!(file = %saved.display(), "a previous agent did not stop cleanly; restoring its saved ip_local_reserved_ports on stop");
                text.trim().to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let live = read(sysctl)?;
                // Written whole and durably before the sysctl changes: a crash in
                // between leaves a file that names the true original.
                write_atomically(&saved, format!("{live}\n").as_bytes()).map_err(|source| {
                    ReservedPortsError::Write {
                        path: saved.clone(),
                        source,
                    }
                })?;
                live
            }
            Err(source) => {
                return Err(ReservedPortsError::Read {
                    path: saved,
                    source,
                });
            }
        };
        write(sysctl, &with_range(&original, range))?;
        Ok(ReservedPorts {
            sysctl: sysctl.to_owned(),
            saved,
            original,
        })
    }
}

impl Drop for ReservedPorts {
    fn drop(&mut self) {
        match write(&self.sysctl, &self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.saved);
            }
            Err(e) => tracing::warn!(error = %e, "could not restore ip_local_reserved_ports"),
        }
    }
}

fn read(path: &Path) -> Result<String, ReservedPortsError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|source| ReservedPortsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Writes `value` and a newline: the kernel ignores an empty write, and "\n" is
/// what clears the list.
fn write(path: &Path, value: &str) -> Result<(), ReservedPortsError> {
    std::fs::write(path, format!("{value}\n")).map_err(|source| ReservedPortsError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hw-reserved-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_range_is_added_to_what_was_there() {
        assert_eq!(with_range("", &(1024..=32767)), "1024-32767");
        assert_eq!(with_range(" \n", &(1024..=32767)), "1024-32767");
        assert_eq!(
            with_range("5000,6000-6010\n", &(7..=9)),
            "5000,6000-6010,7-9"
        );
    }

    #[test]
    fn claim_then_stop_restores_and_a_restart_after_kill_trusts_the_saved_value() {
        let dir = temp("claim");
        let sysctl = dir.join("sysctl");
        std::fs::write(&sysctl, "5000\n").unwrap();
        let state = dir.join("state");
        let range = 20_000..=20_010;

        let claim = ReservedPorts::claim_at(&sysctl, &range, &state).unwrap();
        assert_eq!(
            std::fs::read_to_string(&sysctl).unwrap(),
            "5000,20000-20010\n"
        );
        assert!(state.join(SAVED_FILE).exists());
        drop(claim);
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "5000\n");
        assert!(
            !state.join(SAVED_FILE).exists(),
            "a clean stop removes the file"
        );

        // kill -9: nothing restored, the claim stays in the live value.
        std::mem::forget(ReservedPorts::claim_at(&sysctl, &range, &state).unwrap());
        assert_eq!(
            std::fs::read_to_string(&sysctl).unwrap(),
            "5000,20000-20010\n"
        );
        // The restart reads the original from the file, not the live value.
        let again = ReservedPorts::claim_at(&sysctl, &range, &state).unwrap();
        assert_eq!(
            std::fs::read_to_string(&sysctl).unwrap(),
            "5000,20000-20010\n"
        );
        drop(again);
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "5000\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
