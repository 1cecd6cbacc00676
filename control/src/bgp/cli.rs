//! `hybridway bgp-speaker --config FILE`: the speaker as a process of its own.
//!
//! Signals: SIGTERM is a planned restart (TCP closed without a Cease, so switches keep
//! our routes as stale for the restart time); SIGINT is a final stop (Cease: switches
//! withdraw at once); SIGHUP re-reads `routes` from the file and sends the difference
//! to every Established peer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::config::{BgpConfig, ConfigError};
use super::speaker::{self, SpeakerError, StopMode};
use super::status::{self, StatusHandle};

#[derive(Debug, Clone, clap::Args)]
pub struct BgpSpeakerArgs {
    /// YAML file with a `bgp:` section.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn run(args: &BgpSpeakerArgs) -> Result<(), CliError> {
    crate::logging::init(false);
    let cfg = BgpConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(serve(cfg, args.config.clone()))
}

async fn serve(cfg: BgpConfig, path: PathBuf) -> Result<(), CliError> {
    let (routes_tx, routes_rx) = watch::channel(Arc::new(cfg.routes.clone()));
    let (stop_tx, stop_rx) = watch::channel(StopMode::Running);
    let status = StatusHandle::default();

    let writer = tokio::spawn(write_status(
        status.clone(),
        cfg.status_file.clone(),
        cfg.metrics_file.clone(),
    ));
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
                _ = hup.recv() => reload(&path, &routes_tx),
            }
        }
    });
    let result = speaker::run(
        cfg.clone(),
        routes_rx,
        stop_rx,
        status.clone(),
        super::password::SecretStore::default(),
    )
    .await;
    signals.abort();
    writer.abort();
    write_once(
        &status,
        cfg.status_file.as_deref(),
        cfg.metrics_file.as_deref(),
    );
    result.map_err(CliError::from)
}

fn reload(path: &Path, tx: &watch::Sender<Arc<Vec<super::config::RouteConfig>>>) {
    match BgpConfig::load(path) {
        Ok(cfg) => {
            tracing::info!(routes = cfg.routes.len(), "routes reloaded");
            let _ = tx.send(Arc::new(cfg.routes));
        }
        Err(e) => tracing::error!(error = %e, "reload failed; keeping the current routes"),
    }
}

async fn write_status(status: StatusHandle, json: Option<PathBuf>, metrics: Option<PathBuf>) {
    loop {
        write_once(&status, json.as_deref(), metrics.as_deref());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_once(status: &StatusHandle, json: Option<&Path>, metrics: Option<&Path>) {
    let peers = status.snapshot(std::time::Instant::now());
    if let Some(p) = json {
        write_atomic(p, &status::to_json(&peers));
    }
    if let Some(p) = metrics {
        write_atomic(p, &status::to_prometheus(&peers));
    }
}

/// Write then rename, so readers never see half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write status");
    }
}
