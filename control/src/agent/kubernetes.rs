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
//! Start-up: the facts saved by the last run, when there are any (so a node
//! whose API server is away forwards at once), else the first facts the watch
//! finds: the agent is not ready, and says so in its log, until the controller has
//! given this node a block. Facts are saved only once the agent runs with them
//! (`saved_view`).

use std::path::PathBuf;
use std::sync::Arc;

use super::AgentConfig;
use super::config::{ConfigError, LocalConfig};
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
    let from_file = persisted.is_some();
    let facts = match persisted {
        Some(f) => {
            tracing::info!(path = %state_file.display(), "starting from the persisted cluster view; the Node watch catches up");
            f
        }
        None => {
            tracing::info!(node = %src.node_name, vtep_mac = %src.vtep.mac, "waiting for this node's block from the API server");
            rt.block_on(async {
                rx.wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|f| f.clone())
            })
            .ok_or(KubernetesModeError::WatchEnded)?
        }
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
