//! `hybridway controller`: leader election, then the Node IPAM and BGPClusterConfig
//! controllers, the parameters watch, metrics and probes.
//!
//! ```text
//!                 ┌────────── Lease kube-system/hybridway-controller ──────────┐
//!  candidate ─────┤ acquire (every retry period)   hold(): renew or give up    │
//!                 └──────────────┬─────────────────────────────┬───────────────┘
//!                                ▼ leading                     ▼ lost → exit(1)
//!  watch Nodes ─► reflector store ─┬─► Node Controller ─► node_ipam::reconcile ─► patch Node
//!        │ Delete / InitDone       │                          ▲ reconcile_all
//!        └─► release blocks        │                          │
//!  watch ConfigMap hybridway-config ─► activate(): parse, discover, check, rebuild
//!                                  └─► BGPClusterConfig Controller ─► status conditions
//!  MetricsServer thread: /metrics /healthz /readyz (reads Metrics + IpamState)
//! ```
//!
//! A replica that loses the lease returns an error so the process exits and stops
//! writing at once; Kubernetes restarts it as a follower.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hybridway_dataplane::worker::MetricsServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use super::bgp_config::{self, BgpConfigContext};
use super::crd::BGPClusterConfig;
use super::discovery;
use super::leader::{self, Attempt, LeaderElector, LeaseTiming};
use super::metrics::Metrics;
use super::node_ipam::{self, IpamContext, IpamState, MANAGER};
use super::params::{CONFIG_KEY, CONFIG_MAP, ControllerParams, NAMESPACE, check_overlaps};

/// Node reconciles (each at most one write) running at once: enough to keep the API
/// server busy, few enough not to flood it when thousands of nodes register.
const NODE_WRITES_IN_FLIGHT: u16 = 16;

/// Name of the leader Lease (in [`NAMESPACE`]).
pub const LEASE_NAME: &str = "hybridway-controller";

/// Command-line arguments of `hybridway controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// kubeconfig to use; default: in-cluster service account, then $KUBECONFIG.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This replica's name in the Lease; default: $POD_NAME, else host name and PID.
    #[arg(long)]
    pub identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_listen: SocketAddr,
    /// Seconds a follower waits on an unrenewed lease before taking it.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds the leader keeps trying to renew before it gives up leadership.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline: u64,
    /// Seconds between renewals and between acquisition attempts.
    #[arg(long, default_value_t = 2)]
    pub retry_period: u64,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] super::client::ClientError),
    #[error("creating the API client: {0}")]
    Client(#[source] kube::Error),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("renew deadline {renew}s must be shorter than the lease duration {lease}s")]
    Timing { renew: u64, lease: u64 },
    #[error("leadership lost: {0}")]
    LostLease(String),
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Runs until a signal (Ok) or until leadership is lost (Err).
pub async fn run(args: &ControllerArgs) -> Result<(), ControllerError> {
    if args.renew_deadline >= args.lease_duration {
        return Err(ControllerError::Timing {
            renew: args.renew_deadline,
            lease: args.lease_duration,
        });
    }
    let config = super::client::config(args.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(config.clone()).map_err(ControllerError::Client)?;
    // The Lease gets a connection of its own: renewals must not queue behind a burst
    // of Node writes, or a busy leader would lose its lease for nothing.
    let lease_client = kube::Client::try_from(config).map_err(ControllerError::Client)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let metrics = Arc::new(Metrics::default());
    let state: Arc<Mutex<Option<IpamState>>> = Arc::default();
    let _server = serve_metrics(args.metrics_listen, &metrics, &state)?;
    let timing = LeaseTiming {
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_deadline: Duration::from_secs(args.renew_deadline),
        retry_period: Duration::from_secs(args.retry_period.max(1)),
    };
    let mut elector = LeaderElector::new(
        Api::<Lease>::namespaced(lease_client, NAMESPACE),
        LEASE_NAME,
        &identity,
        timing.clone(),
    );
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    tracing::info!(
        identity,
        "waiting for the leader lease {NAMESPACE}/{LEASE_NAME}"
    );
    loop {
        let attempt = tokio::select! {
            a = elector.try_acquire_or_renew() => a,
            () = &mut shutdown => return Ok(()),
        };
        match attempt {
            Ok(Attempt::Leading) => break,
            Ok(Attempt::Following) => metrics.set_ready(true),
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            () = tokio::time::sleep(timing.retry_period) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
    metrics.set_ready(true);
    metrics.set_leader(true);
    tracing::info!(identity, "leading");
    let reporter = Reporter {
        controller: MANAGER.to_string(),
        instance: Some(identity.clone()),
    };
    let ipam = Arc::new(IpamContext {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        state,
        unconfirmed: Arc::default(),
        metrics: metrics.clone(),
    });
    let result = tokio::select! {
        () = lead(ipam) => Ok(()),
        why = leader::hold(&mut elector) => Err(ControllerError::LostLease(why)),
        () = &mut shutdown => {
            tracing::info!("stopping: handing the lease back");
            elector.release().await.map_err(ControllerError::from)
        }
    };
    metrics.set_leader(false);
    result
}

/// Everything the leader runs; returns only if every controller stream ended.
async fn lead(ctx: Arc<IpamContext>) {
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store::<Node>();
    let (reconcile_all, all_rx) = mpsc::channel::<()>(4);
    let released = {
        let (ctx, reader) = (ctx.clone(), reader.clone());
        move |ev: &watcher::Event<Node>| on_node_event(&ctx, &reader, ev)
    };
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(keep_what_ipam_reads)
        .reflect(writer)
        .inspect_ok(released)
        .touched_objects();
    let node_controller = Controller::for_stream(nodes, reader.clone())
        .with_config(controller::Config::default().concurrency(NODE_WRITES_IN_FLIGHT))
        .reconcile_all_on(tokio_stream_from(all_rx))
        .run(node_ipam::reconcile, node_ipam::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let bgp_ctx = Arc::new(BgpConfigContext {
        client: client.clone(),
        nodes: reader.clone(),
        metrics: ctx.metrics.clone(),
    });
    let bgp_controller = Controller::new(
        Api::<BGPClusterConfig>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(bgp_config::reconcile, bgp_config::error_policy, bgp_ctx)
    .for_each(|_| futures::future::ready(()));
    let params = watch_params(ctx, reader, reconcile_all);
    tokio::join!(node_controller, bgp_controller, params);
}

/// Drops what no reconciler reads before a Node enters the cache: managed fields,
/// kubectl's last-applied copy and all of status but the addresses (a real node's
/// status carries its image list and conditions, kilobytes per node).
fn keep_what_ipam_reads(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(a) = node.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(status) = node.status.take() {
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses,
            ..Default::default()
        });
    }
}

/// A deleted Node frees its block; a re-list frees blocks of nodes that vanished
/// while the watch was down.
fn on_node_event(ctx: &IpamContext, reader: &Store<Node>, ev: &watcher::Event<Node>) {
    let mut state = ctx.lock();
    match ev {
        watcher::Event::Delete(node) => {
            ctx.unconfirmed().remove(&node.name_any());
        }
        watcher::Event::InitDone => {
            ctx.unconfirmed()
                .retain(|n, _| reader.get(&ObjectRef::new(n)).is_some());
        }
        _ => {}
    }
    let Some(state) = state.as_mut() else { return };
    match ev {
        watcher::Event::Delete(node) => {
            let name = node.name_any();
            if let Some(block) = state.release(&name) {
                tracing::info!(node = %name, %block, "node deleted: block released");
            }
        }
        watcher::Event::InitDone => {
            for (name, block) in state
                .allocator
                .retain(|n| reader.get(&ObjectRef::new(n)).is_some())
            {
                state.pool_of.remove(&name);
                tracing::info!(node = %name, %block, "node gone: block released");
            }
        }
        _ => {}
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<()>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Follows the parameters ConfigMap; each new text is validated and, when valid,
/// becomes the allocator (rebuilt from the Nodes) and every Node is reconciled.
async fn watch_params(ctx: Arc<IpamContext>, nodes: Store<Node>, reconcile_all: mpsc::Sender<()>) {
    if nodes.wait_until_ready().await.is_err() {
        return;
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut last: Option<String> = None;
    let mut seen = false;
    while let Some(ev) = events.next().await {
        let cm = match ev {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!("ConfigMap {NAMESPACE}/{CONFIG_MAP} deleted: allocation stops");
                stop_allocating(&ctx);
                last = None;
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if !seen && last.is_none() {
                    tracing::warn!(
                        "waiting for ConfigMap {NAMESPACE}/{CONFIG_MAP} (key {CONFIG_KEY})"
                    );
                }
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching the parameters");
                continue;
            }
        };
        seen = true;
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .cloned()
            .unwrap_or_default();
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        last = Some(text.clone());
        match activate(&ctx, &nodes, &text).await {
            Ok(()) => {
                let _ = reconcile_all.try_send(());
            }
            Err(message) => {
                tracing::error!("parameters refused: {message}");
                stop_allocating(&ctx);
                node_ipam::publish_about_version(
                    &ctx,
                    &cm,
                    EventType::Warning,
                    "InvalidParameters",
                    message,
                )
                .await;
            }
        }
    }
}

/// No valid parameters: nothing may be allocated (valid ones go through
/// `node_ipam::install`).
fn stop_allocating(ctx: &IpamContext) {
    ctx.metrics.set_config_valid(false);
    *ctx.lock() = None;
}

/// Validates `text` against the cluster, then rebuilds the allocator from the
/// Nodes and installs it (`node_ipam::install`). The error is the message to show
/// (log line and Warning Event).
async fn activate(ctx: &IpamContext, nodes: &Store<Node>, text: &str) -> Result<(), String> {
    let origin = format!("ConfigMap {NAMESPACE}/{CONFIG_MAP}");
    let params = Arc::new(ControllerParams::from_yaml(text, &origin).map_err(|e| e.to_string())?);
    let mut ranges =
        discovery::ranges_from_nodes(&params, nodes.state().iter().map(|n| n.as_ref()));
    ranges.extend(
        discovery::service_cidrs(&ctx.client, &params)
            .await
            .map_err(|e| format!("{origin}: listing ServiceCIDRs: {e}"))?,
    );
    check_overlaps(params.hybrid_pod_cidr, &ranges).map_err(|e| format!("{origin}: {e}"))?;
    // Up to NODE_WRITES_IN_FLIGHT reconciles may be writing blocks decided by the
    // old allocator: `install` counts them, from the Nodes as the cache has them at
    // the moment of the swap.
    let duplicates = node_ipam::install(ctx, params, nodes, &origin)?;
    for (node, note) in duplicates {
        tracing::error!(node = %node.name_any(), "duplicate block found on start: {note}");
        node_ipam::publish(
            ctx,
            node.as_ref(),
            EventType::Warning,
            "DuplicateBlock",
            note,
        )
        .await;
    }
    Ok(())
}

fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

fn serve_metrics(
    addr: SocketAddr,
    metrics: &Arc<Metrics>,
    state: &Arc<Mutex<Option<IpamState>>>,
) -> Result<MetricsServer, ControllerError> {
    let (m, s) = (metrics.clone(), state.clone());
    let ready = metrics.clone();
    MetricsServer::start_with_readiness(
        addr,
        Arc::new(move |out: &mut String| m.render(&s, out)),
        Arc::new(move || ready.is_ready()),
    )
    .map_err(|source| ControllerError::Metrics { addr, source })
}

/// Resolves on SIGTERM (a Deployment's stop) or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ControllerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ControllerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ControllerError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
