//! The control loop and the local control socket.
//!
//! Protocol: one JSON request per connection on a Unix stream socket, one JSON
//! response back, then the connection closes. Requests:
//! `{"op":"pod_add","pod":{"name":..,"ip":..,"mac":..,"interface":..}}`,
//! `{"op":"pod_remove","name":..}`, `{"op":"status"}`, `{"op":"reload"}`.
//! Responses: `{"ok":true,"status":{..}}` or `{"ok":false,"error":".."}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

use super::config::ClusterFacts;
use super::runtime::{Agent, AgentError, Status};
use super::table_builder::LocalPod;

/// How often next-hop MACs are looked up again.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    PodAdd { pod: LocalPod },
    PodRemove { name: String },
    Status,
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent answered with something that is not a response: {0}")]
    BadResponse(String),
    #[error("the agent refused: {0}")]
    Refused(String),
}

fn respond(agent: &mut Agent, req: Request) -> Response {
    let result: Result<Option<Status>, AgentError> = match req {
        Request::PodAdd { pod } => agent.add_pod(pod).map(|()| None),
        Request::PodRemove { name } => agent.remove_pod(&name).map(|()| None),
        Request::Status => Ok(Some(agent.status())),
        Request::Reload => agent.reload().map(|()| None),
    };
    match result {
        Ok(status) => Response {
            ok: true,
            error: None,
            status: status.and_then(|s| serde_json::to_value(s).ok()),
        },
        Err(e) => Response {
            ok: false,
            error: Some(e.to_string()),
            status: None,
        },
    }
}

async fn serve_one(agent: &mut Agent, stream: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(64 * 1024);
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let resp = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => respond(agent, req),
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request: {e}")),
            status: None,
        },
    };
    let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    wr.shutdown().await
}

use tokio::io::AsyncReadExt as _;

fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by an agent that was killed hard would make bind fail.
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(err)
}

/// The cluster's facts as the Node watch publishes them (Kubernetes mode).
pub type ClusterUpdates = tokio::sync::watch::Receiver<Option<ClusterFacts>>;

/// The next facts from the Node watch; pending forever in file mode or once the
/// watch is gone (the agent keeps forwarding with what it has).
async fn next_facts(updates: &mut Option<ClusterUpdates>) -> Option<ClusterFacts> {
    let Some(rx) = updates else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *updates = None;
        return None;
    }
    rx.borrow_and_update().clone()
}

/// Runs the control loop until SIGTERM or SIGINT, then shuts the agent down.
/// `cluster`: the Node watch's facts in Kubernetes mode.
pub async fn run(
    mut agent: Agent,
    mut cluster: Option<ClusterUpdates>,
) -> Result<(), ControlError> {
    let path = agent.config().control.socket.clone();
    let listener = bind(&path)?;
    let sig_err = |source| ControlError::Socket {
        path: PathBuf::from("<signals>"),
        source,
    };
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut tick = tokio::time::interval(NEIGHBOR_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(socket = %path.display(), "control socket ready");
    loop {
        tokio::select! {
            _ = hup.recv() => match agent.reload() {
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not applied"),
            },
            Some(facts) = next_facts(&mut cluster) => {
                if let Err(e) = agent.apply_cluster(facts) {
                    tracing::error!(error = %e, "cluster change not applied");
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = tick.tick() => {
                if let Err(e) = agent.refresh_neighbors() {
                    tracing::warn!(error = %e, "neighbour refresh failed");
                }
            }
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    if let Err(e) = serve_one(&mut agent, stream).await {
                        tracing::debug!(error = %e, "control connection failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept on the control socket failed"),
            },
        }
    }
    agent.shutdown();
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Sends one request to the agent at `socket` and returns its response.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let err = |source| ControlError::Socket {
        path: socket.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(err)?;
    let mut text =
        serde_json::to_string(req).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(err)?;
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(err)?;
    let resp: Response =
        serde_json::from_str(line.trim()).map_err(|_| ControlError::BadResponse(line.clone()))?;
    if !resp.ok {
        return Err(ControlError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let pod = LocalPod {
            name: "p1".into(),
            ip: "198.19.1.10".parse().unwrap(),
            mac: "02:00:00:00:01:0a".parse().unwrap(),
            interface: "hwp1".into(),
        };
        let text = serde_json::to_string(&Request::PodAdd { pod: pod.clone() }).unwrap();
        assert_eq!(
            text,
            r#"{"op":"pod_add","pod":{"name":"p1","ip":"198.19.1.10","mac":"02:00:00:00:01:0a","interface":"hwp1"}}"#
        );
        match serde_json::from_str::<Request>(&text).unwrap() {
            Request::PodAdd { pod: back } => assert_eq!(back, pod),
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }
}
