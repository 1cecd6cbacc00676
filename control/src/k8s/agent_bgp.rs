//! BGP inside the agent: `BGPClusterConfig`s, the password Secrets they name for
//! this node (`bgp_secrets`: one watch per name, nothing else of kube-system) and the
//! Node store (shared with `agent_watch`) decide what this node's speaker runs
//! (`bgp_view::plan`); the speaker is `bgp::speaker`, unchanged; its sessions are
//! written back into the resource's status with server-side apply.
//!
//! ```text
//!  watch BGPClusterConfigs ──► store ─┐
//!  watch named Secrets ─► bgp_secrets ┼─► 50 ms settle ─► plan ──┬─ same sessions, new routes ─► routes watch ─► speaker
//!  agent_watch nodes_changed ─────────┘   (Node store)           ├─ peers/ASN/password changed ─► stop (graceful), start anew
//!                                                                 └─ no longer a speaker ────────► stop (Cease)
//!  every 2 s: speaker StatusHandle ─► status.speakers[name = this node] (SSA, field manager per node)
//! ```
//!
//! A changed password restarts the speaker gracefully, which re-keys the listening
//! socket and reconnects with the new key; the switches keep our routes as stale
//! meanwhile (graceful restart). A missing Secret or key shows as the peer's
//! `lastError`, never as a crash.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;

use super::bgp_secrets::{self, SecretWatches};
use super::bgp_view::{self, SpeakerSettings};
use super::crd::{BGPClusterConfig, PeerSessionStatus, SpeakerStatus};
use super::params::NAMESPACE;
use crate::bgp::password::SecretStore;
use crate::bgp::runner::{SpeakerPlan, SpeakerRunner};
use crate::bgp::status::{CurrentSpeaker, StatusHandle};

const SETTLE: Duration = Duration::from_millis(50);
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Field manager of one node's speaker status: one per node, so each agent owns
/// exactly its entry of `status.speakers`.
pub fn field_manager(node: &str) -> String {
    // Field manager names are limited to 128 characters (cut on a character
    // boundary: a node name given by hand need not be ASCII).
    format!("hybridway-agent-{node}")
        .chars()
        .take(128)
        .collect()
}

/// Runs until the process ends. `nodes`: the agent's Node store; `nodes_changed`
/// ticks after each settled Node change. `current`: where the agent's control
/// socket finds the running speaker's sessions.
pub async fn run(
    client: kube::Client,
    node_name: String,
    settings: SpeakerSettings,
    nodes: Store<Node>,
    mut nodes_changed: watch::Receiver<u64>,
    current: CurrentSpeaker,
) {
    let configs_api: Api<BGPClusterConfig> = Api::all(client.clone());
    let secrets_api: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let (configs, cw) = reflector::store::<BGPClusterConfig>();
    let mut config_events = watcher(configs_api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(cw)
        .boxed();
    let (mut secrets, mut secrets_changed) = SecretWatches::new(secrets_api);
    let store = SecretStore::default();
    let mut runner = SpeakerRunner::new(store.clone());
    let mut due: Option<tokio::time::Instant> = None;
    let mut configs_ready = false;
    let mut last_written: Option<(String, Vec<PeerSessionStatus>)> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let soon = || Some(tokio::time::Instant::now() + SETTLE);
    loop {
        let sleep = async {
            match due {
                // A Secret not listed yet holds up only the peers that use it
                // (SecretStore: "not read from the API server yet"), never the
                // plan: one bad name must not freeze every session.
                Some(at) if configs_ready => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = config_events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => {
                    configs_ready = true;
                    secrets.follow(&bgp_secrets::referenced(&node_name, configs.state().iter().map(|c| &**c)));
                    due = due.or_else(soon);
                }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                    if configs_ready {
                        secrets.follow(&bgp_secrets::referenced(&node_name, configs.state().iter().map(|c| &**c)));
                    }
                    due = due.or_else(soon);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "BGPClusterConfig watch failed; retrying"),
                None => return,
            },
            r = secrets_changed.changed() => {
                if r.is_err() { return; }
                due = due.or_else(soon);
            }
            r = nodes_changed.changed() => {
                if r.is_err() { return; }
                due = due.or_else(soon);
            }
            () = sleep => {
                due = None;
                store.replace(secrets.secrets(), secrets.unreadable());
                let node_list = nodes.state();
                let node_refs: Vec<&Node> = node_list.iter().map(|n| &**n).collect();
                let config_list = configs.state();
                let config_refs: Vec<&BGPClusterConfig> = config_list.iter().map(|c| &**c).collect();
                let plan = match bgp_view::plan(&node_name, &node_refs, &config_refs, &settings) {
                    Ok(p) => { last_error = None; p }
                    Err(why) => {
                        if last_error.as_deref() != Some(why.as_str()) {
                            tracing::warn!(reason = %why, "BGPClusterConfig not usable; the speaker keeps its last configuration");
                            last_error = Some(why);
                        }
                        continue;
                    }
                };
                runner.apply(plan).await;
                current.set(runner.status());
            }
            _ = tick.tick() => {
                if let (Some(plan), Some(status)) = (runner.plan(), runner.status()) {
                    write_status(&configs_api, &node_name, plan, &status, &mut last_written).await;
                }
            }
        }
    }
}

/// This speaker's sessions as the resource's status shows them.
fn sessions(status: &StatusHandle) -> Vec<PeerSessionStatus> {
    let now = Instant::now();
    let wall = Timestamp::now();
    status
        .snapshot(now)
        .into_iter()
        .map(|p| {
            let ago = SignedDuration::from_secs(p.seconds_in_state as i64);
            PeerSessionStatus {
                name: p.name,
                state: format!("{:?}", p.state),
                since: wall.checked_sub(ago).ok().map(Time),
                prefixes_advertised: i64::try_from(p.prefixes_advertised).unwrap_or(i64::MAX),
                prefixes_received: i64::try_from(p.prefixes_received).unwrap_or(i64::MAX),
                last_error: p.last_error,
            }
        })
        .collect()
}

/// Writes this node's entry of `status.speakers` when something but the clock moved.
async fn write_status(
    api: &Api<BGPClusterConfig>,
    node: &str,
    plan: &SpeakerPlan,
    status: &StatusHandle,
    last: &mut Option<(String, Vec<PeerSessionStatus>)>,
) {
    let now = sessions(status);
    let key = |v: &[PeerSessionStatus]| -> Vec<PeerSessionStatus> {
        v.iter()
            .cloned()
            .map(|p| PeerSessionStatus { since: None, ..p })
            .collect()
    };
    if let Some((res, prev)) = last
        && *res == plan.resource
        && key(prev) == key(&now)
    {
        return;
    }
    let patch = json!({
        "apiVersion": "network.alibabacloud.com/v1beta1",
        "kind": "BGPClusterConfig",
        "metadata": {"name": plan.resource},
        "status": {"speakers": [SpeakerStatus { name: node.to_string(), peers: now.clone() }]},
    });
    match api
        .patch_status(
            &plan.resource,
            &PatchParams::apply(&field_manager(node)),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => *last = Some((plan.resource.clone(), now)),
        Err(e) => {
            tracing::warn!(error = %e, resource = %plan.resource, "writing BGP session status failed; retrying")
        }
    }
}

#[cfg(test)]
mod field_manager_tests {
    use super::field_manager;

    #[test]
    fn long_non_ascii_node_names_are_cut_on_a_character_boundary() {
        let name = "ü".repeat(200);
        let m = field_manager(&name);
        assert_eq!(m.chars().count(), 128);
        assert!(m.starts_with("hybridway-agent-ü"));
    }
}
