//! Runs the speaker a [`SpeakerPlan`] describes, and steers it as plans follow one
//! another: new routes go to the running sessions, new peers, ASN or passwords
//! restart it gracefully, no plan stops it with a Cease. Both sources of plans use
//! it: the agent's file (`agent::bgp`) and `BGPClusterConfig`s (`k8s::agent_bgp`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{BgpConfig, RouteConfig};
use super::password::SecretStore;
use super::speaker::{self, StopMode};
use super::status::StatusHandle;

/// How long a speaker that failed to start waits before the next attempt.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// What this node's speaker runs: where the plan came from and the speaker's
/// configuration (peers, ASN, routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerPlan {
    /// The `BGPClusterConfig` this node speaks for (its status gets our sessions),
    /// or the agent's file.
    pub resource: String,
    pub config: BgpConfig,
}

impl SpeakerPlan {
    /// Whether `other` needs the sessions re-made (peers or identity changed), as
    /// opposed to new routes on the same sessions.
    pub fn sessions_differ(&self, other: &SpeakerPlan) -> bool {
        let strip = |c: &BgpConfig| BgpConfig {
            routes: Vec::new(),
            ..c.clone()
        };
        self.resource != other.resource || strip(&self.config) != strip(&other.config)
    }
}

/// A running speaker and how to steer it.
struct Running {
    plan: SpeakerPlan,
    /// The password bytes the sessions were keyed with (peer name → bytes).
    keys: BTreeMap<String, Option<Vec<u8>>>,
    routes: watch::Sender<Arc<Vec<RouteConfig>>>,
    stop: watch::Sender<StopMode>,
    status: StatusHandle,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self, mode: StopMode) {
        let _ = self.stop.send(mode);
        let _ = self.task.await;
    }
}

/// The speaker, running or not. `secrets` serves `secretKeyRef` passwords (kept
/// current by the Secret watch in Kubernetes mode, empty in file mode).
#[derive(Default)]
pub struct SpeakerRunner {
    running: Option<Running>,
    secrets: SecretStore,
}

impl std::fmt::Debug for SpeakerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerRunner")
            .field("plan", &self.plan())
            .finish_non_exhaustive()
    }
}

impl SpeakerRunner {
    pub fn new(secrets: SecretStore) -> Self {
        SpeakerRunner {
            running: None,
            secrets,
        }
    }

    /// The running plan, if any.
    pub fn plan(&self) -> Option<&SpeakerPlan> {
        self.running.as_ref().map(|r| &r.plan)
    }

    /// The running speaker's sessions, if any.
    pub fn status(&self) -> Option<StatusHandle> {
        self.running.as_ref().map(|r| r.status.clone())
    }

    /// Applies a new plan to the running speaker.
    pub async fn apply(&mut self, plan: Option<SpeakerPlan>) {
        self.running = match (self.running.take(), plan) {
            (None, None) => None,
            (Some(r), None) => {
                tracing::info!(resource = %r.plan.resource, "no longer a BGP speaker: withdrawing");
                r.stop(StopMode::Cease).await;
                None
            }
            (None, Some(plan)) => Some(start(plan, &self.secrets)),
            (Some(r), Some(plan)) => {
                let keys = keys_of(&plan, &self.secrets);
                if r.plan.sessions_differ(&plan) || r.keys != keys {
                    tracing::info!(resource = %plan.resource, "BGP peers, ASN or passwords changed: restarting the speaker (graceful)");
                    r.stop(StopMode::Graceful).await;
                    Some(start(plan, &self.secrets))
                } else {
                    if r.plan.config.routes != plan.config.routes {
                        tracing::info!(
                            routes = plan.config.routes.len(),
                            "advertised pod blocks changed"
                        );
                        let _ = r.routes.send(Arc::new(plan.config.routes.clone()));
                    }
                    Some(Running { plan, ..r })
                }
            }
        };
    }

    /// Stops the speaker: `Graceful` keeps our routes at the peers for the restart
    /// time, `Cease` withdraws them.
    pub async fn stop(mut self, mode: StopMode) {
        if let Some(r) = self.running.take() {
            r.stop(mode).await;
        }
    }
}

fn keys_of(plan: &SpeakerPlan, store: &SecretStore) -> BTreeMap<String, Option<Vec<u8>>> {
    plan.config
        .settings
        .bgp_speakers
        .iter()
        .flat_map(|s| &s.peers)
        .map(|p| {
            let key = p
                .auth_password
                .as_ref()
                .and_then(|a| a.secret_key_ref.as_ref())
                .and_then(|r| store.get(&r.name, &r.key).ok());
            (p.name.clone(), key)
        })
        .collect()
}

fn start(plan: SpeakerPlan, store: &SecretStore) -> Running {
    let (routes, routes_rx) = watch::channel(Arc::new(plan.config.routes.clone()));
    let (stop, stop_rx) = watch::channel(StopMode::Running);
    let status = StatusHandle::default();
    let cfg = plan.config.clone();
    let (st, secrets) = (status.clone(), store.clone());
    tracing::info!(resource = %plan.resource, peers = cfg.settings.bgp_speakers.iter().map(|s| s.peers.len()).sum::<usize>(), routes = cfg.routes.len(), "starting the BGP speaker");
    let task = tokio::spawn(async move {
        // A speaker that cannot start (the previous one's listening socket not yet
        // closed, an address not configured yet) tries again until it is stopped.
        loop {
            let run = speaker::run(
                cfg.clone(),
                routes_rx.clone(),
                stop_rx.clone(),
                st.clone(),
                secrets.clone(),
            );
            match run.await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "BGP speaker could not start; retrying"),
            }
            if *stop_rx.borrow() != StopMode::Running {
                return;
            }
            tokio::time::sleep(RESTART_DELAY).await;
        }
    });
    Running {
        keys: keys_of(&plan, store),
        plan,
        routes,
        stop,
        status,
        task,
    }
}
