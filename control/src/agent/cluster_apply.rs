//! Kubernetes mode: hands the Node watch's views to the agent, saves the ones a
//! restart may begin from, and tries a view the agent failed to apply again with
//! back-off. The watch sends a view only when the cluster changes, so without the
//! retry a passing failure (a table that could not be published, say) would leave
//! the node on the old view until the next change somewhere in the cluster.

use tokio::time::Instant;

use super::backoff::Backoff;
use super::config::ClusterFacts;
use super::runtime::AgentError;
use super::saved_view::SavedView;

/// The views in flight between the Node watch, the agent and the saved file.
#[derive(Debug)]
pub struct ClusterApply {
    saved: SavedView,
    /// The newest view the agent failed to apply, and when to try it again.
    unapplied: Option<(ClusterFacts, Instant)>,
    backoff: Backoff,
}

impl ClusterApply {
    pub fn new(saved: SavedView) -> ClusterApply {
        ClusterApply {
            saved,
            unapplied: None,
            backoff: Backoff::default(),
        }
    }

    /// A new view from the watch; it replaces one waiting for a retry.
    pub fn take(
        &mut self,
        facts: ClusterFacts,
        apply: impl FnOnce(ClusterFacts) -> Result<(), AgentError>,
    ) {
        self.backoff.reset();
        self.attempt(facts, apply);
    }

    /// When [`ClusterApply::retry`] has something to do: a view to apply or a save
    /// to try again; `None` when nothing waits.
    pub fn next_try(&self) -> Option<Instant> {
        let apply = self.unapplied.as_ref().map(|(_, at)| *at);
        match (apply, self.saved.next_try()) {
            (Some(a), Some(s)) => Some(a.min(s)),
            (a, s) => a.or(s),
        }
    }

    /// Does what is due: applies the waiting view again, retries the save.
    pub fn retry(&mut self, apply: impl FnOnce(ClusterFacts) -> Result<(), AgentError>) {
        let now = Instant::now();
        if self.saved.next_try().is_some_and(|at| at <= now) {
            self.saved.retry();
        }
        if self.unapplied.as_ref().is_some_and(|(_, at)| *at <= now)
            && let Some((facts, _)) = self.unapplied.take()
        {
            self.attempt(facts, apply);
        }
    }

    /// Hands `facts` to the agent and saves them if it took them, or if they are
    /// valid but only a restart can adopt them (this node's block, mode or address
    /// changed): the next start begins from them. A view the agent refused for any
    /// other reason is not saved (a restart must not begin from it) and is tried
    /// again later.
    fn attempt(
        &mut self,
        facts: ClusterFacts,
        apply: impl FnOnce(ClusterFacts) -> Result<(), AgentError>,
    ) {
        match apply(facts.clone()) {
            Ok(()) => {
                self.unapplied = None;
                self.saved.accepted(facts);
            }
            Err(e @ AgentError::NeedsRestart { .. }) => {
                tracing::error!(error = %e, "cluster change saved for the next agent start, not applied live");
                self.unapplied = None;
                self.saved.accepted(facts);
            }
            Err(e) => {
                let wait = self.backoff.step();
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "cluster change not applied (and not saved); trying again");
                self.unapplied = Some((facts, Instant::now() + wait));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::agent::saved_view::load;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hybridway-apply-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn facts(block: &str, gateway: &str) -> ClusterFacts {
        serde_json::from_str(&format!(
            r#"{{"node":{{"name":"n1","address":"198.18.64.10"}},"mode":"underlay",
                "pods":{{"block":"{block}","gateway":"{gateway}"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn only_facts_the_agent_accepted_are_saved() {
        let dir = scratch("accepted");
        let path = dir.join("cluster.json");
        let mut c = ClusterApply::new(SavedView::new(path.clone()));
        let f = facts("198.19.130.0/24", "198.19.130.1");
        c.take(f.clone(), |_| {
            Err(AgentError::Refused("test: refused".into()))
        });
        assert!(!path.exists(), "a refused view was saved");
        c.take(f.clone(), |_| Ok(()));
        assert_eq!(load(&path, "n1"), Some(f));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_view_only_a_restart_can_adopt_is_saved_for_it() {
        let dir = scratch("restart");
        let path = dir.join("cluster.json");
        let mut c = ClusterApply::new(SavedView::new(path.clone()));
        let f = facts("198.19.131.0/24", "198.19.131.1");
        c.take(f.clone(), |_| {
            Err(AgentError::NeedsRestart { field: "pods" })
        });
        assert_eq!(
            load(&path, "n1"),
            Some(f),
            "the new block would be refused again at every start"
        );
        assert_eq!(c.next_try(), None, "nothing to retry: a restart adopts it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_view_the_agent_failed_to_apply_is_tried_again_until_it_works() {
        let dir = scratch("retry");
        let path = dir.join("cluster.json");
        let mut c = ClusterApply::new(SavedView::new(path.clone()));
        let f = facts("198.19.130.0/24", "198.19.130.1");
        let failing = || Err(AgentError::Refused("test: tables not published".into()));
        c.take(f.clone(), |_| failing());
        let first = c.next_try().expect("a retry is scheduled");
        // Not due yet: nothing is tried.
        c.retry(|_| panic!("tried before it was due"));
        tokio_sleep_until(first);
        c.retry(|_| failing());
        let second = c.next_try().expect("still failing: another retry");
        assert!(
            second - first >= crate::agent::backoff::FIRST * 2,
            "the wait grows"
        );
        tokio_sleep_until(second);
        let mut applied = None;
        c.retry(|g| {
            applied = Some(g);
            Ok(())
        });
        assert_eq!(applied, Some(f.clone()));
        assert_eq!(c.next_try(), None);
        assert_eq!(load(&path, "n1"), Some(f));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tokio_sleep_until(at: Instant) {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
}
