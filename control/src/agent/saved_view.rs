//! The cluster view an agent restarted without the API server begins from
//! (`control.clusterStateFile`, Kubernetes mode).
//!
//! Only a view the agent has accepted is saved: `cluster_apply` calls
//! [`SavedView::accepted`] after `Agent::apply_cluster` succeeded, or refused it
//! only because this node's own facts changed (`AgentError::NeedsRestart`: a
//! valid view the next start adopts), or the agent started from it; so a view
//! the agent found invalid can never be the one a restart loads. A failed write (disk full, read-only mount) is tried again with back-off
//! until it succeeds or a newer view replaces it.

use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::backoff::Backoff;
use super::config::ClusterFacts;
use super::state_file::write_atomically;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("encoding the cluster view: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The view saved by an earlier run of this node's agent, if readable and about
/// this node.
pub fn load(path: &Path, node_name: &str) -> Option<ClusterFacts> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<ClusterFacts>(&text) {
        Ok(f) if f.node.name == node_name => Some(f),
        Ok(f) => {
            tracing::warn!(path = %path.display(), found = %f.node.name, node_name, "ignoring cluster state of another node");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cluster state");
            None
        }
    }
}

fn save(path: &Path, facts: &ClusterFacts) -> Result<(), SaveError> {
    let text = serde_json::to_string_pretty(facts)?;
    write_atomically(path, text.as_bytes()).map_err(|source| SaveError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The accepted view not saved yet, and when to try again.
#[derive(Debug)]
pub struct SavedView {
    path: PathBuf,
    unsaved: Option<ClusterFacts>,
    retry_in: Backoff,
    next_try: Option<Instant>,
}

impl SavedView {
    pub fn new(path: PathBuf) -> SavedView {
        SavedView {
            path,
            unsaved: None,
            retry_in: Backoff::default(),
            next_try: None,
        }
    }

    /// The agent runs with `facts` now: save them (a pending older view is dropped).
    pub fn accepted(&mut self, facts: ClusterFacts) {
        self.unsaved = Some(facts);
        self.retry_in.reset();
        self.try_save();
    }

    /// When the next attempt is due; `None` when everything is saved.
    pub fn next_try(&self) -> Option<Instant> {
        self.next_try
    }

    /// Tries the pending save again (the control loop calls it at [`Self::next_try`]).
    pub fn retry(&mut self) {
        self.try_save();
    }

    fn try_save(&mut self) {
        let Some(facts) = &self.unsaved else {
            self.next_try = None;
            return;
        };
        match save(&self.path, facts) {
            Ok(()) => {
                if self.next_try.is_some() {
                    tracing::info!(path = %self.path.display(), "cluster view saved");
                }
                self.unsaved = None;
                self.next_try = None;
            }
            Err(e) => {
                let wait = self.retry_in.step();
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "could not save the cluster view; a restart without the API server will not have it");
                self.next_try = Some(Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::agent::config::{ModeConfig, NodeConfig, PodNetworkConfig};

    fn facts(node: &str) -> ClusterFacts {
        ClusterFacts {
            node: NodeConfig {
                name: node.into(),
                address: "198.18.64.10".parse().unwrap(),
            },
            mode: ModeConfig::Underlay,
            pods: PodNetworkConfig {
                block: "198.19.130.0/24".parse().unwrap(),
                gateway: "198.19.130.1".parse().unwrap(),
            },
            nodes: Vec::new(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hybridway-saved-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_failed_save_is_retried_with_back_off_until_it_works() {
        let dir = scratch("retry");
        // A file where the state directory should be: every write fails.
        let blocker = dir.join("state");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("cluster.json");
        let mut saved = SavedView::new(path.clone());
        saved.accepted(facts("n1"));
        let first = saved.next_try().expect("a retry is scheduled");
        saved.retry();
        let second = saved.next_try().expect("still failing: another retry");
        assert!(second > first, "the wait grows");
        assert_eq!(saved.retry_in.peek(), crate::agent::backoff::FIRST * 4);
        // The disk is back.
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir_all(&blocker).unwrap();
        saved.retry();
        assert_eq!(saved.next_try(), None);
        assert_eq!(load(&path, "n1"), Some(facts("n1")));
        assert_eq!(load(&path, "other"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_view_replaces_the_unsaved_one() {
        let dir = scratch("newer");
        let path = dir.join("cluster.json");
        let mut saved = SavedView::new(path.clone());
        saved.accepted(facts("n1"));
        assert_eq!(saved.next_try(), None);
        let mut next = facts("n1");
        next.mode = ModeConfig::Overlay;
        saved.accepted(next.clone());
        assert_eq!(load(&path, "n1"), Some(next));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
