//! The control loop and the local control socket.
//!
//! Protocol: one JSON request per connection on a Unix stream socket, one JSON
//! response back, then the connection closes. Requests:
//! `{"op":"pod_add","pod":{"name":..,"ip":..,"mac":..,"interface":..}}`,
//! `{"op":"pod_remove","name":..}`, `{"op":"status"}`, `{"op":"reload"}`, and the
//! CNI plugin's `cni_add` / `cni_check` / `cni_del` / `cni_gc` (the agent owns pod
//! addresses; see `agent::addresses`).
//! Responses: `{"ok":true,"status":{..}}` or `{"ok":false,"error":".."}`, with
//! `address` (cni_add, cni_check), `released` (cni_del, cni_gc) and `notes` (what
//! the agent fixed on the way, e.g. a veth's offloads) when there are any.
//!
//! ```text
//!  accept task ──► one task per connection: read the line (5 s) ──Incoming──► control loop
//!                                          write the answer ◄──── oneshot ───  (owns the Agent)
//! ```
//!
//! Connections are read and answered outside the control loop, so a client that
//! connects and sends nothing (or reads its answer slowly) delays nobody else; the
//! loop only runs requests that arrived whole, one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hybridway_dataplane::tables::ServiceTable;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use super::addresses::{Allocation, AttachmentKey};
use super::bgp::FileSpeaker;
use super::cluster_apply::ClusterApply;
use super::config::ClusterFacts;
use super::runtime::{Agent, AgentError, CniAddress, Status};
use super::saved_view::SavedView;
use super::table_builder::LocalPod;
use crate::bgp::speaker::StopMode;
use crate::bgp::status::CurrentSpeaker;
use crate::k8s::services_watch::ServiceUpdates;

/// How often next-hop MACs are looked up again.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(2);

/// How long a connection may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests read but not yet run by the control loop (more wait in their tasks).
const QUEUED: usize = 64;

/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// Connections read or answered at once. More wait in the socket's listen backlog
/// (not accepted), so a client opening connections in a loop cannot exhaust the
/// agent's descriptors or memory; each open one ends within `READ_TIMEOUT` unless
/// its request is being served.
const MAX_CONNECTIONS: usize = 128;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    PodAdd {
        pod: LocalPod,
    },
    PodRemove {
        name: String,
    },
    Status,
    Reload,
    /// Give `attachment` an address and attach its veth (host end `interface`).
    CniAdd {
        attachment: AttachmentKey,
        interface: String,
        #[serde(with = "super::table_builder::mac_string")]
        mac: hybridway_dataplane::wire::MacAddr,
        netns: String,
    },
    CniCheck {
        attachment: AttachmentKey,
    },
    CniDel {
        attachment: AttachmentKey,
    },
    /// Free every attachment not in `valid`.
    CniGc {
        valid: Vec<AttachmentKey>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<CniAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Allocation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Response {
    fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            status: None,
            address: None,
            released: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn refused(error: String) -> Self {
        Response {
            ok: false,
            error: Some(error),
            ..Response::ok()
        }
    }
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

fn respond(agent: &mut Agent, req: Request, bgp: Option<&CurrentSpeaker>) -> Response {
    let ok = Response::ok();
    let result: Result<Response, AgentError> = match req {
        Request::PodAdd { pod } => agent.add_pod(pod).map(|notes| {
            for n in &notes {
                tracing::warn!("{n}");
            }
            Response { notes, ..ok }
        }),
        Request::PodRemove { name } => agent.remove_pod(&name).map(|()| ok),
        Request::Status => Ok(Response {
            status: status_with_bgp(&agent.status(), bgp),
            ..ok
        }),
        Request::Reload => agent.reload().map(|()| ok),
        Request::CniAdd {
            attachment,
            interface,
            mac,
            netns,
        } => agent
            .cni_add(&attachment, &interface, mac, &netns)
            .map(|(address, notes)| {
                for n in &notes {
                    tracing::info!(%attachment, "{n}");
                }
                Response {
                    address: Some(address),
                    notes,
                    ..ok
                }
            }),
        Request::CniCheck { attachment } => agent.cni_check(&attachment).map(|a| Response {
            address: Some(a),
            ..ok
        }),
        Request::CniDel { attachment } => agent.cni_del(&attachment).map(|gone| Response {
            released: gone.into_iter().collect(),
            ..ok
        }),
        Request::CniGc { valid } => agent
            .cni_gc(&valid)
            .map(|released| Response { released, ..ok }),
    };
    result.unwrap_or_else(|e| Response::refused(e.to_string()))
}

/// The agent's status, with its BGP speaker's sessions under `bgp.peers` when it
/// runs one (Kubernetes mode with a `BGPClusterConfig` naming this node).
fn status_with_bgp(status: &Status, bgp: Option<&CurrentSpeaker>) -> Option<serde_json::Value> {
    let mut v = serde_json::to_value(status).ok()?;
    let peers = bgp.and_then(|b| b.snapshot(std::time::Instant::now()));
    if let (Some(peers), Some(fields)) = (peers, v.as_object_mut()) {
        fields.insert("bgp".into(), serde_json::json!({ "peers": peers }));
    }
    Some(v)
}

/// A request read whole from one connection, and where its answer goes.
struct Incoming {
    request: Result<Request, String>,
    reply: oneshot::Sender<Response>,
}

/// Runs one request on the agent (the control loop's part of a connection);
/// returns its `op` (empty when it was not understood).
fn serve(agent: &mut Agent, incoming: Incoming, bgp: Option<&CurrentSpeaker>) -> String {
    let mut served = String::new();
    let resp = match incoming.request {
        Ok(req) => {
            let started = std::time::Instant::now();
            let op = serde_json::to_value(&req)
                .ok()
                .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let resp = respond(agent, req, bgp);
            tracing::debug!(
                op,
                ok = resp.ok,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "control request served"
            );
            served = op;
            resp
        }
        Err(e) => Response::refused(e),
    };
    // The client may have gone meanwhile: nothing to tell it.
    let _ = incoming.reply.send(resp);
    served
}

/// Accepts connections until the control loop is gone, each read and answered in
/// its own task, at most `max_connections` at once.
async fn accept_requests(
    listener: UnixListener,
    read_timeout: Duration,
    max_connections: usize,
    tx: mpsc::Sender<Incoming>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // A slot first, then the connection: past the cap, clients wait in the backlog.
        let slot = tokio::select! {
            () = tx.closed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return, // never closed
            },
        };
        tokio::select! {
            () = tx.closed() => return,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = exchange(stream, read_timeout, &tx).await {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: give the open ones time to end.
                    tracing::warn!(error = %e, "accept on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One connection: its request line to the control loop, the answer back.
async fn exchange(
    stream: UnixStream,
    read_timeout: Duration,
    tx: &mpsc::Sender<Incoming>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST);
    tokio::time::timeout(read_timeout, rd.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let request =
        serde_json::from_str::<Request>(line.trim()).map_err(|e| format!("bad request: {e}"));
    let (reply, answer) = oneshot::channel();
    if tx.send(Incoming { request, reply }).await.is_err() {
        return Ok(()); // the agent is stopping
    }
    let Ok(resp) = answer.await else {
        return Ok(());
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

/// Kubernetes mode: where the facts come from and where accepted ones are saved.
#[derive(Debug)]
pub struct Cluster {
    pub updates: ClusterUpdates,
    pub saved: SavedView,
}

/// Sleeps until `at`; pending forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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

/// The next service table from the Service watch; pending forever in file mode or
/// once the watch is gone.
async fn next_services(updates: &mut Option<ServiceUpdates>) -> Option<Arc<ServiceTable>> {
    let Some(rx) = updates else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *updates = None;
        return None;
    }
    Some(Arc::clone(&rx.borrow_and_update()))
}

/// Runs the control loop until SIGTERM or SIGINT, then shuts the agent down.
/// `cluster`: the Node watch's facts and the saved view in Kubernetes mode;
/// `services`: the Service watch's tables (Kubernetes mode); `bgp`: the speaker the
/// agent runs, shown by `status`; `speaker`: file mode's speaker, re-planned after
/// each reload and stopped with the agent (SIGTERM: gracefully, so the switches keep
/// our routes while we restart; SIGINT: with a Cease).
pub async fn run(
    mut agent: Agent,
    cluster: Option<Cluster>,
    mut services: Option<ServiceUpdates>,
    bgp: Option<CurrentSpeaker>,
    speaker: Option<FileSpeaker>,
) -> Result<(), ControlError> {
    let bgp = bgp.or_else(|| speaker.as_ref().map(FileSpeaker::current));
    let (mut updates, mut applier) = match cluster {
        Some(c) => (Some(c.updates), Some(ClusterApply::new(c.saved))),
        None => (None, None),
    };
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
    let (tx, mut requests) = mpsc::channel(QUEUED);
    tokio::spawn(accept_requests(listener, READ_TIMEOUT, MAX_CONNECTIONS, tx));
    tracing::info!(socket = %path.display(), "control socket ready");
    // The file's speaker is re-planned whenever the file was read again.
    let replan = |agent: &Agent| {
        if let Some(s) = &speaker {
            s.update(agent.config());
        }
    };
    let stop = loop {
        let cluster_retry = applier.as_ref().and_then(ClusterApply::next_try);
        tokio::select! {
            _ = hup.recv() => match agent.reload() {
                Ok(()) => replan(&agent),
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not applied"),
            },
            Some(facts) = next_facts(&mut updates) => {
                if let Some(applier) = applier.as_mut() {
                    applier.take(facts, |f| agent.apply_cluster(f));
                }
            }
            () = sleep_until(cluster_retry) => {
                if let Some(applier) = applier.as_mut() {
                    applier.retry(|f| agent.apply_cluster(f));
                }
            }
            Some(table) = next_services(&mut services) => {
                if let Err(e) = agent.apply_services(table) {
                    tracing::error!(error = %e, "service change not applied");
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break StopMode::Graceful; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break StopMode::Cease; }
            _ = tick.tick() => {
                if let Err(e) = agent.refresh_neighbors() {
                    tracing::warn!(error = %e, "neighbour refresh failed");
                }
            }
            Some(incoming) = requests.recv() => {
                if serve(&mut agent, incoming, bgp.as_ref()) == "reload" {
                    replan(&agent);
                }
            }
        }
    };
    if let Some(s) = speaker {
        s.stop(stop).await;
    }
    // Closing the queue ends the accept task and every connection still waiting.
    drop(requests);
    agent.shutdown();
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// How long [`call`] waits for the answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the agent at `socket` and returns its response.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    call_within(socket, req, CALL_TIMEOUT)
}

/// [`call`], waiting up to `timeout` for the answer. The agent runs one request
/// at a time, so a caller queued behind many others (a burst of CNI ADDs, each
/// attaching a veth) waits for all of them; a client that sends nothing does not
/// hold anyone up.
pub fn call_within(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let err = |source| ControlError::Socket {
        path: socket.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
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
    use crate::agent::runtime::ServicesStatus;

    #[test]
    fn status_shows_the_running_speakers_sessions() {
        let status = Status {
            node: "n1".into(),
            address: "198.18.0.10".parse().unwrap(),
            mode: "overlay".into(),
            vtep_mac: "02:00:00:00:00:01".into(),
            source: "kubernetes".into(),
            backend: "tun".into(),
            workers: 1,
            generation: 1,
            pods: Vec::new(),
            nodes: Vec::new(),
            unresolved_next_hops: Vec::new(),
            drops: Default::default(),
            services: ServicesStatus::default(),
        };
        // No speaker (file mode, or none planned for this node): no `bgp` key.
        assert!(status_with_bgp(&status, None).unwrap().get("bgp").is_none());
        let current = CurrentSpeaker::default();
        assert!(
            status_with_bgp(&status, Some(&current))
                .unwrap()
                .get("bgp")
                .is_none()
        );
        let sessions = crate::bgp::status::StatusHandle::default();
        sessions.insert(crate::bgp::status::PeerStatus {
            name: "switch-1".into(),
            peer_address: "198.18.0.1".parse().unwrap(),
            peer_asn: 65001,
            state: crate::bgp::fsm::State::Idle,
            since: std::time::Instant::now(),
            prefixes_advertised: 2,
            prefixes_received: 0,
            updates_received: 0,
            updates_treated_as_withdraw: 0,
            routes_imported: 0,
            established_count: 0,
            negotiated: None,
            last_error: None,
        });
        current.set(Some(sessions));
        let v = status_with_bgp(&status, Some(&current)).unwrap();
        assert_eq!(v["node"], "n1");
        assert_eq!(v["bgp"]["peers"][0]["name"], "switch-1", "{v}");
        assert_eq!(v["bgp"]["peers"][0]["peerASN"], 65001, "{v}");
        assert_eq!(v["bgp"]["peers"][0]["prefixesAdvertised"], 2, "{v}");
        // The speaker stopped: its sessions go with it.
        current.set(None);
        assert!(
            status_with_bgp(&status, Some(&current))
                .unwrap()
                .get("bgp")
                .is_none()
        );
    }

    /// A client that connects and sends nothing must not hold up the next client's
    /// request (the control loop used to read each connection in turn, up to 5 s).
    /// The read timeout here is an hour: served in turn, the second request would
    /// not arrive within the guard below.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_does_not_hold_up_the_next() {
        let dir = std::env::temp_dir().join(format!("hybridway-control-{}", std::process::id()));
        let path = dir.join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut requests) = mpsc::channel(QUEUED);
        tokio::spawn(accept_requests(
            listener,
            Duration::from_secs(3600),
            MAX_CONNECTIONS,
            tx,
        ));
        let silent = UnixStream::connect(&path).await.unwrap();
        let p = path.clone();
        let caller = tokio::task::spawn_blocking(move || call(&p, &Request::Status));
        let incoming = tokio::time::timeout(Duration::from_secs(60), requests.recv())
            .await
            .expect("the second client's request waited behind the silent one")
            .unwrap();
        assert!(matches!(incoming.request, Ok(Request::Status)));
        incoming.reply.send(Response::ok()).unwrap();
        assert!(caller.await.unwrap().unwrap().ok);
        drop(silent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Past the connection cap a client waits in the backlog instead of getting a
    /// task (and a descriptor) of its own; it is served once a slot frees. Without
    /// the cap the third request would arrive while the two silent clients hold on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_cap_wait_for_a_slot() {
        let dir = std::env::temp_dir().join(format!("hybridway-cap-{}", std::process::id()));
        let path = dir.join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut requests) = mpsc::channel(QUEUED);
        tokio::spawn(accept_requests(listener, Duration::from_secs(3600), 2, tx));
        let silent_one = UnixStream::connect(&path).await.unwrap();
        let _silent_two = UnixStream::connect(&path).await.unwrap();
        let p = path.clone();
        let caller = tokio::task::spawn_blocking(move || call(&p, &Request::Status));
        let early = tokio::time::timeout(Duration::from_secs(2), requests.recv()).await;
        assert!(
            early.is_err(),
            "a third connection was served past a cap of two"
        );
        // The first silent client leaves: its empty line is refused, its slot frees.
        drop(silent_one);
        let mut served_status = false;
        while !served_status {
            let incoming = tokio::time::timeout(Duration::from_secs(60), requests.recv())
                .await
                .expect("the waiting client was never served")
                .unwrap();
            served_status = matches!(incoming.request, Ok(Request::Status));
            let _ = incoming.reply.send(Response::ok());
        }
        assert!(caller.await.unwrap().unwrap().ok);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let pod = LocalPod {
            name: "p1".into(),
            ip: "198.19.1.10".parse().unwrap(),
            mac: "02:00:00:00:01:0a".parse().unwrap(),
            interface: "hwp1".into(),
            netns: None,
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
