//! The Node reconciler: gives each Node of a hybrid pool its block and writes it on
//! the Node (`spec.podCIDR(s)` when empty, plus the block/mode/pool annotations).
//!
//! The allocator lives in [`IpamState`], set by `k8s::controller` only when the
//! parameters passed validation (`None` = nothing may be allocated). Every write is a
//! merge patch that carries the `resourceVersion` the decision was made on: if the
//! Node changed meanwhile the API server answers 409, the fresh block is released and
//! the reconcile runs again on the new object.
//!
//! New parameters rebuild the allocator from the Nodes in the cache ([`install`]).
//! A fresh block stays "unconfirmed" from the decision until the cache shows it on
//! its Node (its write in flight, or done and the watch event not in yet); the
//! rebuild claims those too, under the state lock, so no reconcile hands one out a
//! second time.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::MutexGuard;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hybridway_dataplane::tables::Prefix;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::annotations;
use super::cluster_view::exact_prefix;
use super::metrics::Metrics;
use super::params::ControllerParams;
use crate::ipam::{AllocError, ClaimError, NodeBlockAllocator};

/// Field manager (and event reporter) name of the controller.
pub const MANAGER: &str = "hybridway-controller";

/// Why a reconcile failed (it is retried by [`error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("writing block {block} on node {node}: {source}")]
    Write {
        node: String,
        block: Prefix,
        #[source]
        source: kube::Error,
    },
    #[error("node object without a name")]
    Unnamed,
}

/// Valid parameters and the allocator built from them and the Nodes.
#[derive(Debug)]
pub struct IpamState {
    pub params: Arc<ControllerParams>,
    pub allocator: NodeBlockAllocator,
    /// Pool name of each node holding a block (for the per-pool metrics).
    pub pool_of: HashMap<String, String>,
}

impl IpamState {
    pub fn new(params: Arc<ControllerParams>, allocator: NodeBlockAllocator) -> Self {
        IpamState {
            params,
            allocator,
            pool_of: HashMap::new(),
        }
    }

    /// Frees a node's block (the Node was deleted).
    pub fn release(&mut self, node: &str) -> Option<Prefix> {
        self.pool_of.remove(node);
        self.allocator.release(node)
    }

    /// Blocks held per pool, for metrics.
    pub fn allocated_per_pool(&self) -> Vec<(String, u64)> {
        self.params
            .node_pools
            .iter()
            .map(|p| {
                let n = self.pool_of.values().filter(|v| **v == p.name).count();
                (p.name.clone(), n as u64)
            })
            .collect()
    }
}

/// Shared by every Node reconcile.
#[derive(Clone)]
pub struct IpamContext {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub state: Arc<Mutex<Option<IpamState>>>,
    /// Fresh blocks decided whose Node the cache does not show holding them yet
    /// (node → block). Locked only while `state` is: lock order state, then this.
    pub unconfirmed: Arc<Mutex<HashMap<String, Prefix>>>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for IpamContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamContext").finish_non_exhaustive()
    }
}

impl IpamContext {
    pub fn lock(&self) -> MutexGuard<'_, Option<IpamState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take only while holding [`Self::lock`].
    pub fn unconfirmed(&self) -> MutexGuard<'_, HashMap<String, Prefix>> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A rebuilt allocator and the duplicate blocks found on the way (node, note), to
/// be reported as Events.
#[derive(Debug)]
pub struct Rebuilt {
    pub state: IpamState,
    pub duplicates: Vec<(Arc<Node>, String)>,
}

/// The allocator for `params` from the blocks the Nodes hold (oldest Node first, so
/// of two nodes with one block the older keeps it) and the `unconfirmed` ones. The
/// error is the message to show (log line and Warning Event).
pub fn rebuild(
    params: Arc<ControllerParams>,
    nodes: &[Arc<Node>],
    unconfirmed: &HashMap<String, Prefix>,
    origin: &str,
) -> Result<Rebuilt, String> {
    let mut all = nodes.to_vec();
    all.sort_by(|a, b| {
        let key = |n: &Node| {
            (
                n.metadata.creation_timestamp.clone().map(|t| t.0),
                n.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut allocator = NodeBlockAllocator::new(params.hybrid_pod_cidr, params.node_mask_size)
        .map_err(|e| format!("{origin}: {e}"))?;
    let mut pools = Vec::new();
    let mut duplicates = Vec::new();
    for node in &all {
        let name = node.name_any();
        let annotated = node.annotations().get(annotations::HYBRID_POD_BLOCK);
        let spec = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        let held = match (annotated, spec) {
            // The agents read the annotation strictly; so does the allocator.
            (Some(a), _) => exact_prefix(a).ok(),
            // A podCIDR outside the hybrid CIDR is another allocator's business.
            (None, Some(s)) => Prefix::from_str(s)
                .ok()
                .filter(|b| params.hybrid_pod_cidr.contains(b.addr())),
            (None, None) => None,
        };
        let Some(block) = held else { continue };
        match allocator.claim(&name, block) {
            Ok(()) => {
                let pool = node
                    .annotations()
                    .get(annotations::HYBRID_POOL)
                    .cloned()
                    .or_else(|| params.pool_for(node.labels()).map(|p| p.name.clone()));
                if let Some(pool) = pool {
                    pools.push((name, pool));
                }
            }
            Err(ClaimError::Taken(d)) => {
                let note = format!(
                    "block {} is held by node {} and by node {}: kept for {}, reported here",
                    d.block, d.owner, d.node, d.owner
                );
                duplicates.push((node.clone(), note));
            }
            Err(e) if annotated.is_some() => {
                return Err(format!(
                    "{origin}: hybridPodCIDR {} / nodeMaskSize {} would orphan an existing block: {e}",
                    params.hybrid_pod_cidr, params.node_mask_size
                ));
            }
            Err(_) => {}
        }
    }
    // Blocks being written (or written, not in the cache yet): without them the next
    // new node could be given one of them.
    for (name, block) in unconfirmed {
        if allocator.block_of(name).is_some() {
            continue; // the cache shows its block already
        }
        if let Err(e) = allocator.claim(name, *block) {
            tracing::warn!(node = %name, %block, error = %e, "a block being written does not fit the new parameters; the node is reported once it holds it");
        }
    }
    let mut state = IpamState::new(params, allocator);
    state.pool_of.extend(pools);
    Ok(Rebuilt { state, duplicates })
}

/// Rebuilds the allocator for `params` from the Nodes as `nodes` has them now and
/// installs it, all under the state lock: no reconcile decides in between, and the
/// unconfirmed blocks are claimed too. Returns the duplicates to report.
pub fn install(
    ctx: &IpamContext,
    params: Arc<ControllerParams>,
    nodes: &Store<Node>,
    origin: &str,
) -> Result<Vec<(Arc<Node>, String)>, String> {
    let mut current = ctx.lock();
    let rebuilt = rebuild(params, &nodes.state(), &ctx.unconfirmed(), origin)?;
    let s = &rebuilt.state;
    tracing::info!(
        hybrid_pod_cidr = %s.allocator.cidr(),
        mask = s.allocator.mask_size(),
        blocks = s.allocator.allocated(),
        "parameters accepted"
    );
    ctx.metrics.set_config_valid(true);
    *current = Some(rebuilt.state);
    Ok(rebuilt.duplicates)
}

/// What a reconcile decided, before any I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// Not in any pool, or already written: nothing to do.
    Nothing,
    /// Parameters missing or refused: look again later.
    NotActive,
    /// Write `block` (and the pool's mode) on the node.
    Write {
        block: Prefix,
        pool: String,
        mode: &'static str,
        set_pod_cidr: bool,
        fresh: bool,
    },
    /// Tell the node's owner something is wrong; change nothing.
    Warn { reason: &'static str, note: String },
}

fn decide(node: &Node, state: &mut Option<IpamState>) -> Decision {
    let Some(state) = state.as_mut() else {
        return Decision::NotActive;
    };
    let name = node.name_any();
    let Some(pool) = state.params.pool_for(node.labels()) else {
        return Decision::Nothing;
    };
    let (pool_name, mode) = (pool.name.clone(), pool.mode.as_str());
    let spec_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
    let spec_block = spec_cidr.as_deref().and_then(|s| Prefix::from_str(s).ok());
    let annotated = node
        .annotations()
        .get(annotations::HYBRID_POD_BLOCK)
        .and_then(|s| exact_prefix(s).ok());
    let cidr = state.allocator.cidr();
    let ours = spec_block.is_some_and(|b| cidr.contains(b.addr()));
    if let Some(theirs) = spec_cidr.as_ref().filter(|_| !ours) {
        return Decision::Warn {
            reason: "PodCIDRConflict",
            note: format!(
                "spec.podCIDR {theirs} was set by another allocator outside hybridPodCIDR {cidr}; node left alone"
            ),
        };
    }
    // A block decided for this node earlier whose write the cache does not show yet
    // (a reconcile from a stale copy) comes back from `allocate` as the same block,
    // not a fresh one: a conflict must not release it while the first write may
    // have landed.
    let earlier = state.allocator.block_of(&name);
    let (block, fresh) = match annotated.or(spec_block) {
        Some(held) => match state.allocator.claim(&name, held) {
            Ok(()) => (held, false),
            Err(ClaimError::Taken(d)) => {
                return Decision::Warn {
                    reason: "DuplicateBlock",
                    note: format!(
                        "block {} is also held by node {}; it stays with {}, this node needs a new block (remove its annotation {})",
                        d.block,
                        d.owner,
                        d.owner,
                        annotations::HYBRID_POD_BLOCK
                    ),
                };
            }
            Err(e) => {
                return Decision::Warn {
                    reason: "ForeignBlock",
                    note: e.to_string(),
                };
            }
        },
        None => match state.allocator.allocate(&name) {
            Ok(b) => (b, earlier.is_none()),
            Err(e @ AllocError::Exhausted { .. }) => {
                return Decision::Warn {
                    reason: "HybridCIDRExhausted",
                    note: e.to_string(),
                };
            }
            Err(e) => {
                return Decision::Warn {
                    reason: "InvalidParameters",
                    note: e.to_string(),
                };
            }
        },
    };
    state.pool_of.insert(name, pool_name.clone());
    let block_s = block.to_string();
    let a = node.annotations();
    let up_to_date = a.get(annotations::HYBRID_POD_BLOCK) == Some(&block_s)
        && a.get(annotations::HYBRID_MODE).map(String::as_str) == Some(mode)
        && a.get(annotations::HYBRID_POOL) == Some(&pool_name)
        && spec_cidr.is_some();
    if up_to_date {
        return Decision::Nothing;
    }
    Decision::Write {
        block,
        pool: pool_name,
        mode,
        set_pod_cidr: spec_cidr.is_none(),
        fresh,
    }
}

/// The merge patch that records `block` on a node read at `resource_version`.
fn block_patch(
    resource_version: Option<&str>,
    block: Prefix,
    pool: &str,
    mode: &str,
    set_pod_cidr: bool,
) -> serde_json::Value {
    let metadata = json!({
        "resourceVersion": resource_version,
        "annotations": {
            annotations::HYBRID_POD_BLOCK: block.to_string(),
            annotations::HYBRID_MODE: mode,
            annotations::HYBRID_POOL: pool,
        }
    });
    if set_pod_cidr {
        let b = block.to_string();
        json!({"metadata": metadata, "spec": {"podCIDR": b, "podCIDRs": [b]}})
    } else {
        json!({"metadata": metadata})
    }
}

/// Reconciles one Node.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<IpamContext>) -> Result<Action, IpamError> {
    let name = node.metadata.name.clone().ok_or(IpamError::Unnamed)?;
    let decision = {
        let mut state = ctx.lock();
        let decision = decide(&node, &mut state);
        // Still under the state lock, so a rebuild sees the decision and its record
        // together.
        match &decision {
            Decision::Write {
                block, fresh: true, ..
            } => {
                ctx.unconfirmed().insert(name.clone(), *block);
            }
            // Up to date: the cache shows the block on the Node.
            Decision::Nothing => {
                ctx.unconfirmed().remove(&name);
            }
            _ => {}
        }
        decision
    };
    match decision {
        Decision::Nothing => Ok(Action::await_change()),
        Decision::NotActive => Ok(Action::requeue(Duration::from_secs(5))),
        Decision::Warn { reason, note } => {
            tracing::warn!(node = %name, reason, "{note}");
            publish(&ctx, node.as_ref(), EventType::Warning, reason, note).await;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Decision::Write {
            block,
            pool,
            mode,
            set_pod_cidr,
            fresh,
        } => {
            let patch = block_patch(
                node.metadata.resource_version.as_deref(),
                block,
                &pool,
                mode,
                set_pod_cidr,
            );
            let api: Api<Node> = Api::all(ctx.client.clone());
            let params = PatchParams::default();
            match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    ctx.metrics.block_written();
                    tracing::info!(node = %name, %block, pool, mode, "block written");
                    if fresh {
                        let note = format!("block {block} of pool {pool} ({mode})");
                        publish(
                            &ctx,
                            node.as_ref(),
                            EventType::Normal,
                            "BlockAllocated",
                            note,
                        )
                        .await;
                    }
                    Ok(Action::await_change())
                }
                Err(source) => {
                    // A block we just took must not leak: when the API server
                    // refused the write, the next reconcile sees the current Node
                    // and decides again. Any other failure (a 5xx, the reply lost)
                    // may have come after the write landed: the block stays claimed
                    // and unconfirmed until the cache shows the Node, and the retry
                    // writes the same block. A block the Node already held stays
                    // claimed too (only its mode or pool was being rewritten):
                    // releasing it would hand it to the next new node while this one
                    // still holds it.
                    if fresh && not_applied(&source) {
                        let mut state = ctx.lock();
                        if let Some(state) = state.as_mut() {
                            state.release(&name);
                        }
                        ctx.unconfirmed().remove(&name);
                    }
                    Err(IpamError::Write {
                        node: name,
                        block,
                        source,
                    })
                }
            }
        }
    }
}

/// True when the API server answered the write with a refusal (a 4xx but a
/// request timeout), so the Node is as it was.
fn not_applied(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 408)
}

/// Retry soon on a conflict (someone wrote the Node), later on other errors.
pub fn error_policy(node: Arc<Node>, err: &IpamError, ctx: Arc<IpamContext>) -> Action {
    ctx.metrics.reconcile_error("node");
    tracing::warn!(node = %node.name_any(), error = %err, "node reconcile failed");
    match err {
        IpamError::Write {
            source: kube::Error::Api(s),
            ..
        } if s.code == 409 => Action::requeue(Duration::from_millis(200)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Publishes an Event on `obj`; a failure to publish is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &IpamContext,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_about(&ctx.recorder, obj.object_ref(&()), type_, reason, note).await;
}

/// Publishes an Event about one *version* of `obj`. The recorder folds repeats with
/// the same reason about the same reference into one Event (a series, first note
/// kept); naming the version gives each new version of, say, the parameters its own
/// Event and message.
pub async fn publish_about_version<K: Resource<DynamicType = ()>>(
    ctx: &IpamContext,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut reference = obj.object_ref(&());
    reference.resource_version = obj.meta().resource_version.clone();
    publish_about(&ctx.recorder, reference, type_, reason, note).await;
}

async fn publish_about(
    recorder: &Recorder,
    reference: ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Allocate".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        tracing::warn!(error = %e, reason, "could not publish an event");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn params() -> Arc<ControllerParams> {
        Arc::new(
            ControllerParams::from_yaml(
                "hybridPodCIDR: 198.19.128.0/17\nnodePools:\n- {name: a, mode: underlay, nodeSelector: {matchLabels: {pool: a}}}\n",
                "t",
            )
            .unwrap(),
        )
    }

    fn state() -> Option<IpamState> {
        let p = params();
        let alloc = NodeBlockAllocator::new(p.hybrid_pod_cidr, p.node_mask_size).unwrap();
        Some(IpamState::new(p, alloc))
    }

    fn node(name: &str, pool: Option<&str>, pod_cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: pool.map(|p| [("pool".to_string(), p.to_string())].into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: pod_cidr.map(Into::into),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn decisions() {
        let mut st = state();
        assert_eq!(
            decide(&node("n", Some("a"), None), &mut None),
            Decision::NotActive
        );
        assert_eq!(
            decide(&node("c", Some("cloud"), None), &mut st),
            Decision::Nothing
        );
        let d = decide(&node("n1", Some("a"), None), &mut st);
        assert!(
            matches!(
                d,
                Decision::Write {
                    fresh: true,
                    set_pod_cidr: true,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = decide(&node("n2", Some("a"), Some("10.0.0.0/24")), &mut st);
        assert!(
            matches!(
                d,
                Decision::Warn {
                    reason: "PodCIDRConflict",
                    ..
                }
            ),
            "{d:?}"
        );
        // A block already on spec.podCIDR inside the CIDR is adopted, not reallocated.
        let d = decide(&node("n3", Some("a"), Some("198.19.140.0/24")), &mut st);
        assert!(
            matches!(
                d,
                Decision::Write {
                    fresh: false,
                    set_pod_cidr: false,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = decide(&node("n4", Some("a"), Some("198.19.140.0/24")), &mut st);
        assert!(
            matches!(
                d,
                Decision::Warn {
                    reason: "DuplicateBlock",
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn patch_carries_resource_version_and_pod_cidr_only_when_empty() {
        let b = Prefix::from_str("198.19.128.0/24").unwrap();
        let p = block_patch(Some("42"), b, "a", "underlay", true);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["spec"]["podCIDRs"][0], "198.19.128.0/24");
        assert_eq!(
            p["metadata"]["annotations"][annotations::HYBRID_MODE],
            "underlay"
        );
        assert!(
            block_patch(Some("42"), b, "a", "underlay", false)
                .get("spec")
                .is_none()
        );
    }

    mod scenarios {
        use super::*;
        use crate::k8s::mock_api::{self, Exchange};
        use kube::runtime::events::Reporter;

        fn ctx(client: kube::Client) -> Arc<IpamContext> {
            let reporter = Reporter {
                controller: MANAGER.into(),
                instance: Some("test".into()),
            };
            Arc::new(IpamContext {
                recorder: Recorder::new(client.clone(), reporter),
                client,
                state: Arc::new(Mutex::new(state())),
                unconfirmed: Arc::default(),
                metrics: Arc::default(),
            })
        }

        /// A context whose API server answers n1's PATCH with `code`, and that
        /// server (it ends after the one exchange).
        fn one_patch_answered(
            code: u16,
            reason: &str,
        ) -> (Arc<IpamContext>, tokio::task::JoinHandle<()>) {
            let (client, handle) = mock_api::client();
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![Exchange {
                    method: "PATCH",
                    path: "/api/v1/nodes/n1",
                    body_has: vec!["198.19.128.0/24"],
                    status: code,
                    response: mock_api::status(code, reason),
                }],
            ));
            (ctx(client), server)
        }

        fn held(ctx: &IpamContext, node: &str) -> Option<Prefix> {
            ctx.lock().as_ref().and_then(|s| s.allocator.block_of(node))
        }

        /// Someone changed the Node between read and write: 409, the fresh block is
        /// released (no leak), no Event, and the retry comes soon.
        #[tokio::test]
        async fn conflict_releases_the_fresh_block() {
            let (client, handle) = mock_api::client();
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![Exchange {
                    method: "PATCH",
                    path: "/api/v1/nodes/n1",
                    body_has: vec!["\"resourceVersion\":\"7\"", "198.19.128.0/24"],
                    status: 409,
                    response: mock_api::status(409, "Conflict"),
                }],
            ));
            let ctx = ctx(client);
            let err = reconcile(Arc::new(node("n1", Some("a"), None)), ctx.clone())
                .await
                .unwrap_err();
            assert_eq!(held(&ctx, "n1"), None);
            let action = error_policy(Arc::new(node("n1", Some("a"), None)), &err, ctx.clone());
            assert_eq!(action, Action::requeue(Duration::from_millis(200)));
            drop(ctx);
            server.await.unwrap();
        }

        /// A failed write of a block the Node already held (only its annotations
        /// were missing) keeps the block claimed: released, it would be the next
        /// one handed to a new node while this Node still holds it.
        #[tokio::test]
        async fn failed_write_keeps_a_block_the_node_already_held() {
            let (ctx, server) = one_patch_answered(409, "Conflict");
            let held_block = Prefix::from_str("198.19.128.0/24").unwrap();
            let n = Arc::new(node("n1", Some("a"), Some("198.19.128.0/24")));
            reconcile(n, ctx.clone()).await.unwrap_err();
            assert_eq!(held(&ctx, "n1"), Some(held_block));
            let next = ctx
                .lock()
                .as_mut()
                .map(|s| s.allocator.allocate("n2").unwrap());
            assert_ne!(next, Some(held_block), "a held block was handed out again");
            drop(ctx);
            server.await.unwrap();
        }

        /// The Node was deleted meanwhile: 404 also releases; a later retry is slow.
        #[tokio::test]
        async fn vanished_node_releases_and_backs_off() {
            let (ctx, server) = one_patch_answered(404, "NotFound");
            let n = Arc::new(node("n1", Some("a"), None));
            let err = reconcile(n.clone(), ctx.clone()).await.unwrap_err();
            assert_eq!(held(&ctx, "n1"), None);
            assert_eq!(
                error_policy(n, &err, ctx.clone()),
                Action::requeue(Duration::from_secs(5))
            );
            drop(ctx);
            server.await.unwrap();
        }

        /// The API server failed after the write may have landed (504): the fresh
        /// block stays claimed and unconfirmed, so the next new node gets another
        /// one and the retry rewrites the same block.
        #[tokio::test]
        async fn a_write_that_may_have_landed_keeps_the_fresh_block() {
            let (ctx, server) = one_patch_answered(504, "Timeout");
            let n1 = Arc::new(node("n1", Some("a"), None));
            reconcile(n1.clone(), ctx.clone()).await.unwrap_err();
            let b1 = Prefix::from_str("198.19.128.0/24").unwrap();
            assert_eq!(
                held(&ctx, "n1"),
                Some(b1),
                "released after an unclear failure"
            );
            assert_eq!(ctx.unconfirmed().get("n1"), Some(&b1));
            let d = decide(&node("n2", Some("a"), None), &mut ctx.lock());
            assert!(
                matches!(d, Decision::Write { block, .. } if block != b1),
                "one block handed out twice: {d:?}"
            );
            let d = decide(&n1, &mut ctx.lock());
            assert!(
                matches!(d, Decision::Write { block, fresh: false, .. } if block == b1),
                "the retry must rewrite the same block: {d:?}"
            );
            drop(ctx);
            server.await.unwrap();
        }

        /// Success writes the block and announces it with one Normal Event.
        #[tokio::test]
        async fn success_writes_then_publishes_one_event() {
            let (client, handle) = mock_api::client();
            let mut written = node("n1", Some("a"), Some("198.19.128.0/24"));
            written.metadata.resource_version = Some("8".into());
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![
                    Exchange {
                        method: "PATCH",
                        path: "/api/v1/nodes/n1",
                        body_has: vec!["\"podCIDRs\":[\"198.19.128.0/24\"]"],
                        status: 200,
                        response: serde_json::to_value(&written).unwrap(),
                    },
                    Exchange {
                        method: "POST",
                        path: "/apis/events.k8s.io/v1/namespaces/default/events",
                        body_has: vec![
                            "BlockAllocated",
                            "block 198.19.128.0/24 of pool a (underlay)",
                        ],
                        status: 201,
                        response: serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
                    },
                ],
            ));
            let ctx = ctx(client);
            let action = reconcile(Arc::new(node("n1", Some("a"), None)), ctx.clone())
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            assert_eq!(
                held(&ctx, "n1").map(|b| b.to_string()).as_deref(),
                Some("198.19.128.0/24")
            );
            drop(ctx);
            server.await.unwrap();
        }

        /// New parameters while a fresh block's write is in flight (the cache does
        /// not show it yet): the rebuilt allocator still counts that block, so the
        /// next new node gets another one, and a reconcile of the writing node from
        /// its stale copy rewrites the same block as not fresh (a conflict then
        /// does not release it).
        #[tokio::test]
        async fn new_parameters_keep_blocks_whose_write_is_in_flight() {
            let (client, mut handle) = mock_api::client();
            let ctx = ctx(client);
            let n1 = Arc::new(node("n1", Some("a"), None));
            let writing = tokio::spawn(reconcile(n1.clone(), ctx.clone()));
            // n1's PATCH reaches the API server and is not answered yet.
            let (req, answer) = handle.next_request().await.unwrap();
            assert_eq!(req.uri().path(), "/api/v1/nodes/n1");
            let b1 = held(&ctx, "n1").unwrap();
            // The parameters change (same CIDR, another mode) while the cache
            // still shows n1 without a block.
            let (cache, mut writer) = kube::runtime::reflector::store::<Node>();
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*n1).clone()));
            let changed = Arc::new(
                ControllerParams::from_yaml(
                    "hybridPodCIDR: 198.19.128.0/17\nnodePools:\n- {name: a, mode: overlay, nodeSelector: {matchLabels: {pool: a}}}\n",
                    "t",
                )
                .unwrap(),
            );
            install(&ctx, changed, &cache, "t").unwrap();
            assert_eq!(
                held(&ctx, "n1"),
                Some(b1),
                "the block being written was dropped"
            );
            let d = decide(&node("n2", Some("a"), None), &mut ctx.lock());
            assert!(
                matches!(d, Decision::Write { block, fresh: true, .. } if block != b1),
                "one block handed out twice: {d:?}"
            );
            let d = decide(&n1, &mut ctx.lock());
            assert!(
                matches!(d, Decision::Write { block, fresh: false, .. } if block == b1),
                "the stale copy's rewrite must be the same block, not fresh: {d:?}"
            );
            // The write lands; the Event follows.
            let mut written = node("n1", Some("a"), Some(&b1.to_string()));
            written.metadata.resource_version = Some("8".into());
            answer.send_response(
                http::Response::builder()
                    .status(200)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&written).unwrap(),
                    ))
                    .unwrap(),
            );
            let (req, answer) = handle.next_request().await.unwrap();
            assert_eq!(req.method().as_str(), "POST");
            answer.send_response(
                http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null})).unwrap(),
                    ))
                    .unwrap(),
            );
            assert_eq!(writing.await.unwrap().unwrap(), Action::await_change());
            assert_eq!(
                ctx.unconfirmed().get("n1"),
                Some(&b1),
                "not in the cache yet"
            );
        }

        /// Without valid parameters nothing is written; the node is looked at later.
        #[tokio::test]
        async fn refused_parameters_make_no_call() {
            let (client, handle) = mock_api::client();
            let server = tokio::spawn(mock_api::serve(handle, vec![]));
            let ctx = ctx(client);
            *ctx.lock() = None;
            let action = reconcile(Arc::new(node("n1", Some("a"), None)), ctx.clone())
                .await
                .unwrap();
            assert_eq!(action, Action::requeue(Duration::from_secs(5)));
            drop(ctx);
            server.await.unwrap();
        }
    }
}
