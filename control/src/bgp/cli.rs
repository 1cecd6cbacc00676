//! `hybridway bgp-speaker --config FILE`: the speaker of an agent's file as a
//! process of its own, without the dataplane (a node whose forwarding is done by
//! something else, a test rig). FILE is the agent's file: its `bgp` section names the
//! peers, its `node`, `pods` and `nodes` are the pool advertised (`agent::bgp`), so
//! the speaker and the agent can never disagree about the nodes.
//!
//! Signals: SIGTERM is a planned restart (TCP closed without a Cease, so switches keep
//! our routes as stale for the restart time); SIGINT is a final stop (Cease: switches
//! withdraw at once); SIGHUP re-reads the file and sends the pool's changes to every
//! Established peer (a change of peers or ASN needs a restart of this process; the
//! agent itself applies those too).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::config::RouteConfig;
use super::runner::SpeakerPlan;
use super::speaker::{self, SpeakerError, StopMode};
use super::status::StatusHandle;
use crate::agent::AgentConfig;
use crate::agent::bgp::{plan, write_files};
use crate::agent::config::ConfigError;

#[derive(Debug, Clone, clap::Args)]
pub struct BgpSpeakerArgs {
    /// The agent's YAML file, with a `bgp:` section listing this node.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}: no bgp section, or node.name is not one of bgp.bgpSpeakers")]
    NotASpeaker(PathBuf),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// The speaker `path` plans.
fn load(path: &Path) -> Result<SpeakerPlan, CliError> {
    let cfg = AgentConfig::load(path)?;
    plan(&cfg, path).ok_or_else(|| CliError::NotASpeaker(path.to_owned()))
}

pub fn run(args: &BgpSpeakerArgs) -> Result<(), CliError> {
    crate::logging::init(false);
    let first = load(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(serve(first, args.config.clone()))
}

async fn serve(first: SpeakerPlan, path: PathBuf) -> Result<(), CliError> {
    let (routes_tx, routes_rx) = watch::channel(Arc::new(first.config.routes.clone()));
    let (stop_tx, stop_rx) = watch::channel(StopMode::Running);
    let status = StatusHandle::default();

    let writer = tokio::spawn(write_status(first.clone(), status.clone()));
    let running = first.clone();
    let signals = tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { let _ = stop_tx.send(StopMode::Graceful); return; }
                _ = int.recv() => { let _ = stop_tx.send(StopMode::Cease); return; }
                _ = hup.recv() => reload(&path, &running, &routes_tx),
            }
        }
    });
    let result = speaker::run(
        first.config.clone(),
        routes_rx,
        stop_rx,
        status.clone(),
        super::password::SecretStore::default(),
    )
    .await;
    signals.abort();
    writer.abort();
    write_files(&first, &status);
    result.map_err(CliError::from)
}

fn reload(path: &Path, running: &SpeakerPlan, tx: &watch::Sender<Arc<Vec<RouteConfig>>>) {
    match load(path) {
        Ok(next) if running.sessions_differ(&next) => tracing::error!(
            "reload: peers, ASN or speaker settings changed; restart hybridway bgp-speaker to apply them (the pool's routes are kept as they were)"
        ),
        Ok(next) => {
            tracing::info!(routes = next.config.routes.len(), "routes reloaded");
            let _ = tx.send(Arc::new(next.config.routes));
        }
        Err(e) => tracing::error!(error = %e, "reload failed; keeping the current routes"),
    }
}

async fn write_status(plan: SpeakerPlan, status: StatusHandle) {
    loop {
        write_files(&plan, &status);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
