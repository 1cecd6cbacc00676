//! The agent's window on the cluster: one Node watch feeds a reflector store; a short
//! debounce later the store becomes [`ClusterFacts`] (`cluster_view`), which is
//! handed to the agent's control loop (which saves it once the agent accepted it:
//! `agent::saved_view`). The same pass publishes
//! flannel's annotations on this node's own Node when they differ.
//!
//! ```text
//!  API server ──watch Nodes (re-list, back-off)──► reflector store
//!                                                     │ 50 ms after the last change
//!                                                     ▼
//!                                         cluster_view::build(store)
//!        ┌────────────────────────────────────────────┴───────────────┬──────────────┐
//!        ▼                                                            ▼              ▼
//!  SSA own Node's flannel                                   watch::Sender<facts>  nodes_changed
//!  annotations (field manager                                ──► agent control   ──► agent_bgp
//!  hybridway-agent)                         loop (apply_cluster, then save)  (same store)
//! ```
//!
//! When the API server is gone the watcher retries with back-off and nothing is
//! sent: the agent forwards with the tables it has. An agent started while it is
//! gone begins from the saved facts (`agent::saved_view`).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;

use super::cluster_view::{self, NotReady, Skipped};
use super::flannel::{self, Vtep};
use crate::agent::config::ClusterFacts;

/// Field manager of the agent's writes to its own Node.
pub const MANAGER: &str = "hybridway-agent";

/// How long the watch lets changes settle before one rebuild (a re-list or a burst
/// of Node updates becomes one table build).
const SETTLE: Duration = Duration::from_millis(50);

/// How long a failed annotation write waits before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// What the watch needs to know about this node.
#[derive(Clone, Debug)]
pub struct NodeSource {
    pub node_name: String,
    /// This node's VTEP (VNI and MAC from the local file).
    pub vtep: Vtep,
}

/// Watches Nodes until the sender's last receiver is gone. Never returns an error:
/// the API server being away is a state, retried with back-off.
///
/// `store`: the reflector store this watch fills (`reflector::store()`), shared with
/// the agent's BGP task, which `nodes_changed` wakes after every settled change.
pub async fn run(
    client: kube::Client,
    src: NodeSource,
    store: (Store<Node>, Writer<Node>),
    tx: watch::Sender<Option<ClusterFacts>>,
    nodes_changed: watch::Sender<u64>,
) {
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = store;
    let mut events = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        // Managed fields are most of a Node's bytes and never read here.
        .modify(|n| n.managed_fields_mut().clear())
        .reflect(writer)
        .boxed();
    let mut pass = Pass::default();
    let mut ready = false;
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let sleep = async {
            match due {
                Some(at) if ready => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => {
                    if !ready {
                        tracing::info!("node list received from the API server");
                    }
                    ready = true;
                    due.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
                }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                    due.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Err(e)) => pass.api_error(&e),
                None => return,
            },
            () = sleep => {
                due = None;
                if !pass.rebuild(&reader, &src, &tx) {
                    return;
                }
                nodes_changed.send_modify(|n| *n = n.wrapping_add(1));
                if !pass.publish_annotations(&nodes, &reader, &src).await {
                    due = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }
}

/// What one rebuild remembers of the previous one, so logs say what changed.
#[derive(Debug, Default)]
struct Pass {
    last: Option<ClusterFacts>,
    not_ready: Option<NotReady>,
    skipped: Vec<Skipped>,
    api_down: bool,
}

impl Pass {
    fn api_error(&mut self, e: &watcher::Error) {
        if !self.api_down {
            tracing::warn!(error = %e, "Node watch failed; forwarding with the last tables, retrying with back-off");
        } else {
            tracing::debug!(error = %e, "Node watch still failing");
        }
        self.api_down = true;
    }

    /// Builds the facts; sends them when they changed. False when the
    /// agent is gone.
    fn rebuild(
        &mut self,
        reader: &Store<Node>,
        src: &NodeSource,
        tx: &watch::Sender<Option<ClusterFacts>>,
    ) -> bool {
        if self.api_down {
            tracing::info!("Node watch is back");
            self.api_down = false;
        }
        let nodes = reader.state();
        let view =
            match cluster_view::build(&src.node_name, src.vtep.vni, nodes.iter().map(|n| &**n)) {
                Ok(v) => v,
                Err(why) => {
                    if self.not_ready.as_ref() != Some(&why) {
                        tracing::info!(reason = %why, "not ready");
                        self.not_ready = Some(why);
                    }
                    return !tx.is_closed();
                }
            };
        self.not_ready = None;
        if view.skipped != self.skipped {
            for s in view.skipped.iter().filter(|s| !self.skipped.contains(s)) {
                tracing::warn!(node = %s.node, reason = %s.why, "node left out of the tables");
            }
            self.skipped = view.skipped;
        }
        if self.last.as_ref() == Some(&view.facts) {
            return !tx.is_closed();
        }
        tracing::info!(
            nodes = view.facts.nodes.len(),
            block = %view.facts.pods.block,
            mode = view.facts.mode.as_str(),
            "cluster view changed"
        );
        self.last = Some(view.facts.clone());
        tx.send(Some(view.facts)).is_ok()
    }

    /// Writes flannel's annotations on this node's Node when they differ. False
    /// when the write failed (retried later).
    async fn publish_annotations(
        &mut self,
        api: &Api<Node>,
        reader: &Store<Node>,
        src: &NodeSource,
    ) -> bool {
        let Some(own) = reader.get(&ObjectRef::new(&src.node_name)) else {
            return true;
        };
        let Some(addr) = cluster_view::node_address(&own) else {
            return true;
        };
        let want = flannel::node_annotations(src.vtep, addr);
        let have = own.annotations();
        if want.iter().all(|(k, v)| have.get(k) == Some(v)) {
            return true;
        }
        match apply_annotations(api, &src.node_name, &want).await {
            Ok(()) => {
                tracing::info!(vtep_mac = %src.vtep.mac, public_ip = %addr, "flannel annotations published on this node");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing flannel annotations failed; retrying");
                false
            }
        }
    }
}

/// Server-side apply of exactly the annotations this agent owns on its Node.
async fn apply_annotations(
    api: &Api<Node>,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
    });
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&patch))
        .await
        .map(|_| ())
}
