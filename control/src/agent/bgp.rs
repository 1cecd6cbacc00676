//! The BGP speaker in file mode: the file's `bgp` section names the peers, the
//! same file's `node`, `pods` and `nodes` are the pool whose blocks it advertises
//! (one configuration model: no list of routes of its own), built into routes by
//! the builder Kubernetes mode uses (`bgp::config::pool_routes`).
//!
//! ```text
//!  control loop (start, SIGHUP, `hybridway reload`) ── plan(AgentConfig) ──► watch ──┐
//!                                                                                    ▼
//!  FileSpeaker task: SpeakerRunner (bgp::runner) ── status ──► CurrentSpeaker (`hybridway status`)
//!                                                └─ every 500 ms ► bgp.statusFile / bgp.metricsFile
//! ```
//!
//! The pool in a file is this node and every node of `nodes` reached in this
//! node's mode: a node with a `mode` of its own (a cloud node running flannel, an
//! overlay node seen from an underlay one) belongs to another pool.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::AgentConfig;
use crate::bgp::config::{RouteConfig, pool_routes};
use crate::bgp::runner::{SpeakerPlan, SpeakerRunner};
use crate::bgp::speaker::StopMode;
use crate::bgp::status::{self, CurrentSpeaker, StatusHandle};

/// How often the status and metrics files are rewritten.
const STATUS_FILES_EVERY: Duration = Duration::from_millis(500);

/// The pool's routes: this node's block and those of the nodes in its mode.
pub fn pool(cfg: &AgentConfig) -> Vec<RouteConfig> {
    let own = RouteConfig {
        node: cfg.node.name.clone(),
        node_address: IpAddr::V4(cfg.node.address),
        pod_block: cfg.pods.block,
    };
    let others = cfg
        .nodes
        .iter()
        .filter(|n| n.mode_from(cfg.mode) == cfg.mode)
        .map(|n| RouteConfig {
            node: n.name.clone(),
            node_address: IpAddr::V4(n.address),
            pod_block: n.pod_block,
        });
    pool_routes(std::iter::once(own).chain(others))
}

/// What this node's speaker runs, per the file at `origin`: `None` without a `bgp`
/// section or when `node.name` is not one of its `bgpSpeakers`.
pub fn plan(cfg: &AgentConfig, origin: &Path) -> Option<SpeakerPlan> {
    let section = cfg.bgp.as_ref()?;
    let config = section.speaker_config(&cfg.node.name, cfg.node.address, pool(cfg))?;
    Some(SpeakerPlan {
        resource: origin.display().to_string(),
        config,
    })
}

/// The agent's speaker in file mode, fed a new plan whenever the file is read.
pub struct FileSpeaker {
    origin: std::path::PathBuf,
    plans: watch::Sender<Option<SpeakerPlan>>,
    stop: watch::Sender<StopMode>,
    current: CurrentSpeaker,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FileSpeaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpeaker")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl FileSpeaker {
    /// Starts the speaker `cfg` (read from `origin`) plans, if any. Needs a tokio
    /// runtime.
    pub fn spawn(cfg: &AgentConfig, origin: &Path) -> FileSpeaker {
        let first = plan(cfg, origin);
        if cfg.bgp.is_some() && first.is_none() {
            tracing::info!(node = %cfg.node.name, "not one of bgp.bgpSpeakers: no BGP speaker on this node");
        }
        let (plans, plans_rx) = watch::channel(first);
        let (stop, stop_rx) = watch::channel(StopMode::Running);
        let current = CurrentSpeaker::default();
        let task = tokio::spawn(steer(plans_rx, stop_rx, current.clone()));
        FileSpeaker {
            origin: origin.to_owned(),
            plans,
            stop,
            current,
            task,
        }
    }

    /// The configuration was read again: re-plan (routes follow the file's nodes,
    /// peers and ASN changes restart the speaker gracefully).
    pub fn update(&self, cfg: &AgentConfig) {
        let next = plan(cfg, &self.origin);
        self.plans.send_if_modified(|p| {
            let changed = *p != next;
            *p = next;
            changed
        });
    }

    /// Where `hybridway status` finds the sessions.
    pub fn current(&self) -> CurrentSpeaker {
        self.current.clone()
    }

    /// Stops the speaker: `Graceful` (SIGTERM, a planned restart) keeps our routes
    /// at the peers for the restart time, `Cease` (SIGINT) withdraws them.
    pub async fn stop(self, mode: StopMode) {
        let _ = self.stop.send(mode);
        let _ = self.task.await;
    }
}

async fn steer(
    mut plans: watch::Receiver<Option<SpeakerPlan>>,
    mut stop: watch::Receiver<StopMode>,
    current: CurrentSpeaker,
) {
    let mut runner = SpeakerRunner::default();
    let mut tick = tokio::time::interval(STATUS_FILES_EVERY);
    loop {
        let plan = plans.borrow_and_update().clone();
        runner.apply(plan).await;
        current.set(runner.status());
        loop {
            tokio::select! {
                r = plans.changed() => { if r.is_err() { return stop_with(runner, StopMode::Graceful).await; } break; }
                _ = stop.changed() => {
                    let mode = *stop.borrow();
                    write_status_files(&runner);
                    return stop_with(runner, mode).await;
                }
                _ = tick.tick() => write_status_files(&runner),
            }
        }
    }
}

async fn stop_with(runner: SpeakerRunner, mode: StopMode) {
    let written = runner.plan().cloned();
    let status = runner.status();
    runner.stop(mode).await;
    if let (Some(p), Some(s)) = (written, status) {
        write_files(&p, &s);
    }
}

fn write_status_files(runner: &SpeakerRunner) {
    if let (Some(p), Some(s)) = (runner.plan(), runner.status()) {
        write_files(p, &s);
    }
}

/// `bgp.statusFile` (JSON) and `bgp.metricsFile` (Prometheus text), when set.
pub fn write_files(plan: &SpeakerPlan, status: &StatusHandle) {
    let peers = status.snapshot(std::time::Instant::now());
    if let Some(p) = &plan.config.settings.status_file {
        write_atomic(p, &status::to_json(&peers));
    }
    if let Some(p) = &plan.config.settings.metrics_file {
        write_atomic(p, &status::to_prometheus(&peers));
    }
}

/// Write then rename, so readers never see half a file.
fn write_atomic(path: &Path, text: &str) {
    if let Err(e) = super::state_file::write_atomically(path, text.as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write BGP status");
    }
}
