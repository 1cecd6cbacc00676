//! Kubernetes mode: the local file's knobs joined with the cluster's facts from the
//! Node watch (`k8s::agent_watch`), fed to the same agent the file mode runs.
//!
//! ```text
//!  tokio runtime (2 threads)
//!   ├─ k8s::agent_watch::run ──watch::channel(facts)──┐
//!   │        │ Node store + nodes_changed             │
//!   │        ▼                                        │
//!   ├─ k8s::agent_bgp::run (BGP speaker, its status)  │
//!   ├─ k8s::services_watch::run ──watch::channel(table)─┤ Agent::apply_services
//!   └─ control::run (control loop) ◄──────────────────┘ Agent::apply_cluster
//! ```
//!
//! Start-up: the first facts the watch finds when the API server answers within
//! [`FRESH_VIEW_WAIT`] (the cluster may have changed this node's block while no
//! agent ran), else the facts saved by the last run, when there are any (so a node
//! whose API server is away forwards at once), else the watch's first facts
//! whenever they come: the agent is not ready, and says so in its log, until the
//! controller has given this node a block. Facts are saved once the agent runs
//! with them, or when only a restart can adopt them (`saved_view`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::AgentConfig;
use super::config::{ClusterFacts, ConfigError, LocalConfig};
use super::control::{self, ControlError};
use super::runtime::{Agent, AgentError, ConfigSource};
use super::saved_view::{self, SavedView};
use k8s_openapi::api::core::v1::Node;

use crate::bgp::status::CurrentSpeaker;
use crate::k8s::agent_bgp;
use crate::k8s::agent_watch::{self, NodeSource};
use crate::k8s::bgp_view::SpeakerSettings;
use crate::k8s::client::{self, ClientError};
use crate::k8s::flannel::Vtep;
use crate::k8s::services_watch;

/// How the agent finds its cluster.
#[derive(Clone, Debug)]
pub struct KubernetesMode {
    /// The local file ([`LocalConfig`]).
    pub config: PathBuf,
    /// A kubeconfig; `None`: in-cluster service account, then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's Node name (the downward API's `spec.nodeName`).
    pub node_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesModeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the Node watch stopped before this node had a block")]
    WatchEnded,
}

/// How long a start with a saved view waits for the API server's view first.
const FRESH_VIEW_WAIT: Duration = Duration::from_secs(5);

/// The facts the agent starts from, and where they came from.
#[derive(Debug, PartialEq)]
enum StartView {
    /// The Node watch's: the cluster as it is now.
    Watched(ClusterFacts),
    /// The last run's: the API server did not answer within the wait.
    Saved(ClusterFacts),
}

/// Prefers the watch's view when it comes within `wait` (with a saved view) and
/// waits for it without end otherwise; `None`: the watch ended with nothing.
async fn start_view(
    updates: &mut control::ClusterUpdates,
    persisted: Option<ClusterFacts>,
    wait: Duration,
) -> Option<StartView> {
    let watched = async {
        updates
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|f| f.clone())
    };
    match persisted {
        None => watched.await.map(StartView::Watched),
        Some(saved) => match tokio::time::timeout(wait, watched).await {
            Ok(Some(f)) => Some(StartView::Watched(f)),
            Ok(None) | Err(_) => Some(StartView::Saved(saved)),
        },
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(mode: &KubernetesMode) -> Result<(), KubernetesModeError> {
    let local = LocalConfig::load(&mode.config)?;
    let src = NodeSource {
        node_name: mode.node_name.clone(),
        vtep: Vtep {
            vni: local.vxlan.vni,
            mac: local.vxlan.vtep_mac_of(&mode.node_name),
        },
    };
    let state_file = local.control.cluster_state_file.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(KubernetesModeError::Runtime)?;
    let kube = rt.block_on(client::client(mode.kubeconfig.as_deref()))?;
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let persisted = saved_view::load(&state_file, &src.node_name);
    let (nodes, writer) = kube::runtime::reflector::store::<Node>();
    let (nodes_changed, nodes_rx) = tokio::sync::watch::channel(0u64);
    rt.spawn(agent_watch::run(
        kube.clone(),
        src.clone(),
        (nodes.clone(), writer),
        tx,
        nodes_changed,
    ));
    let bgp = SpeakerSettings {
        restart_marker: Some(state_file.with_file_name("bgp-restart-marker")),
        ..SpeakerSettings::default()
    };
    let bgp_status = CurrentSpeaker::default();
    let (services_tx, services_rx) = tokio::sync::watch::channel(Arc::default());
    rt.spawn(services_watch::run(
        kube.clone(),
        src.node_name.clone(),
        services_tx,
    ));
    rt.spawn(agent_bgp::run(
        kube,
        src.node_name.clone(),
        bgp,
        nodes,
        nodes_rx,
        bgp_status.clone(),
    ));
    let mut saved = SavedView::new(state_file.clone());
    if persisted.is_none() {
        tracing::info!(node = %src.node_name, vtep_mac = %src.vtep.mac, "waiting for this node's block from the API server");
    }
    let (facts, from_file) = match rt.block_on(start_view(&mut rx, persisted, FRESH_VIEW_WAIT)) {
        Some(StartView::Watched(f)) => (f, false),
        Some(StartView::Saved(f)) => {
            tracing::info!(path = %state_file.display(), "starting from the persisted cluster view; the Node watch catches up");
            (f, true)
        }
        None => return Err(KubernetesModeError::WatchEnded),
    };
    let cfg = AgentConfig::from_parts(local, facts.clone())?;
    let agent = Agent::start_from(
        cfg,
        ConfigSource::Kubernetes {
            local: mode.config.clone(),
        },
    )?;
    if !from_file {
        saved.accepted(facts);
    }
    tracing::info!("ready");
    let cluster = control::Cluster { updates: rx, saved };
    rt.block_on(control::run(
        agent,
        Some(cluster),
        Some(services_rx),
        Some(bgp_status),
        None,
    ))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(block: &str, gateway: &str) -> ClusterFacts {
        serde_json::from_str(&format!(
            r#"{{"node":{{"name":"n1","address":"198.18.64.10"}},"mode":"underlay",
                "pods":{{"block":"{block}","gateway":"{gateway}"}}}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_start_prefers_the_api_servers_view_to_the_saved_one() {
        let saved = facts("198.19.130.0/24", "198.19.130.1");
        let now = facts("198.19.131.0/24", "198.19.131.1");
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        tx.send(Some(now.clone())).unwrap();
        let got = start_view(&mut rx, Some(saved), Duration::from_secs(3600)).await;
        assert_eq!(got, Some(StartView::Watched(now)));
    }

    #[tokio::test]
    async fn a_start_without_the_api_server_uses_the_saved_view() {
        let saved = facts("198.19.130.0/24", "198.19.130.1");
        let (_tx, mut rx) = tokio::sync::watch::channel(None);
        let got = start_view(&mut rx, Some(saved.clone()), Duration::from_millis(10)).await;
        assert_eq!(got, Some(StartView::Saved(saved)));
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        drop(tx);
        assert_eq!(start_view(&mut rx, None, Duration::ZERO).await, None);
    }
}
