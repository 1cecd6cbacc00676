//! The tokio shell around [`Session`]: sockets, timers, the route feed.
//!
//! ```text
//!  listener task ──accepted TcpStream (by source address)──► peer task (one per peer)
//!  connect task (per attempt) ──Input::Connected / ConnectFailed──► peer task
//!  reader task (per connection) ──Input::Received / DecodeError / Closed──► peer task
//!  routes: watch<Arc<Vec<RouteConfig>>> (agent control thread, SIGHUP) ──► peer tasks
//!  stop: watch<StopMode> ──► listener and peer tasks
//!  peer tasks ──► StatusHandle ◄── status writer / agent
//! ```
//!
//! Each peer task owns its Session and its sockets' write halves, runs the actions
//! the Session returns, and turns expired deadlines into timer events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use hybridway_dataplane::tables::Prefix;

use super::codec::{self, AfiSafi, CodecOptions, Message, Update};
use super::config::{BgpConfig, PeerConfig, RouteConfig};
use super::fsm::{
    Action, ConnId, DownReason, Event, Negotiated, Session, SessionConfig, State, Timer,
};
use super::import::KernelImport;
use super::password::{self, PasswordSource};
use super::rib::{AdjRibOut, PeerContext};
use super::status::{PeerStatus, StatusHandle};
use super::sys;

/// How the speaker stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    Running,
    /// Planned restart: close TCP without a Cease; peers keep our routes as stale.
    Graceful,
    /// Final stop: Cease NOTIFICATION; peers withdraw our routes at once.
    Cease,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot set the TCP-MD5 key for {peer} on the listening socket: {source}")]
    ListenMd5 { peer: IpAddr, source: io::Error },
    #[error("node {0:?} is not one of bgpSpeakers")]
    NotASpeaker(String),
}

/// Time allowed for one TCP connect before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the speaker until `stop` leaves `Running`. Returns once every session has
/// been closed the way `stop` asks.
/// `secrets` serves the peers' `secretKeyRef` passwords.
pub async fn run(
    cfg: BgpConfig,
    routes: watch::Receiver<Arc<Vec<RouteConfig>>>,
    mut stop: watch::Receiver<StopMode>,
    status: StatusHandle,
    secrets: password::SecretStore,
) -> Result<(), SpeakerError> {
    let speaker = cfg
        .speaker()
        .cloned()
        .ok_or_else(|| SpeakerError::NotASpeaker(cfg.node_name.clone()))?;
    let router_id = cfg
        .router_id()
        .ok_or_else(|| SpeakerError::NotASpeaker(cfg.node_name.clone()))?;

    // One listening socket for all peers, signed per peer (RFC 2385 keys are per
    // address, so peers without a password stay unsigned).
    let listen_ip = cfg
        .settings
        .listen_address
        .unwrap_or(IpAddr::from([0u8; 4]));
    let listen_addr = SocketAddr::new(listen_ip, cfg.settings.listen_port);
    let listen_sock = if listen_ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| SpeakerError::Listen {
        addr: listen_addr,
        source,
    })?;
    listen_sock
        .set_reuseaddr(true)
        .map_err(|source| SpeakerError::Listen {
            addr: listen_addr,
            source,
        })?;

    let restarting = cfg.settings.restart_time > 0
        && cfg
            .settings
            .restart_marker
            .as_deref()
            .is_some_and(|p| is_recent(p, cfg.settings.restart_time));
    if restarting {
        tracing::info!("restarting within the graceful-restart time: setting the R bit");
    }
    let marker = cfg
        .settings
        .restart_marker
        .clone()
        .map(|p| tokio::spawn(keep_marker(p)));

    let listen_err = |source| SpeakerError::Listen {
        addr: listen_addr,
        source,
    };
    listen_sock.bind(listen_addr).map_err(listen_err)?;
    let listener = Arc::new(listen_sock.listen(64).map_err(listen_err)?);

    let mut peer_txs: HashMap<IpAddr, mpsc::Sender<TcpStream>> = HashMap::new();
    let mut tasks = Vec::new();
    for peer in &speaker.peers {
        let pw: Option<Arc<dyn PasswordSource>> = match peer
            .auth_password
            .as_ref()
            .map(|r| password::from_ref(r, &secrets))
        {
            None => None,
            Some(Ok(src)) => Some(Arc::from(src)),
            Some(Err(e)) => {
                // A bad reference is reported per peer; the session does not start
                // unauthenticated.
                status.insert(new_status(peer, Some(e.to_string())));
                continue;
            }
        };
        if let Some(pw) = &pw {
            match pw.password() {
                Ok(p) => sys::set_tcp_md5(listener.as_fd(), peer.peer_address, p.bytes()).map_err(
                    |source| SpeakerError::ListenMd5 {
                        peer: peer.peer_address,
                        source,
                    },
                )?,
                // Reported in status by the peer task on its first attempt.
                Err(e) => tracing::warn!(peer = %peer.name, error = %e, "password not available"),
            }
        }
        let (tx, rx) = mpsc::channel(4);
        peer_txs.insert(peer.peer_address, tx);
        let mut scfg = SessionConfig::new(cfg.settings.local_asn, peer.peer_asn, router_id);
        scfg.hold_time = cfg.settings.hold_time;
        scfg.retry_base = Duration::from_millis(cfg.settings.connect_retry_ms.max(1));
        scfg.jitter_seed = random_seed();
        scfg.restart_time = (cfg.settings.restart_time > 0).then_some(cfg.settings.restart_time);
        scfg.restarting = restarting;
        scfg.families = vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST];
        status.insert(new_status(peer, None));
        let task = PeerTask::new(
            peer.clone(),
            scfg,
            pw,
            cfg.settings.listen_address,
            listener.clone(),
            rx,
            routes.clone(),
            stop.clone(),
            status.clone(),
        );
        tasks.push(tokio::spawn(task.run()));
    }

    tracing::info!(%listen_addr, peers = peer_txs.len(), "BGP speaker listening");
    let accept = tokio::spawn(accept_loop(listener, peer_txs, stop.clone()));

    while *stop.borrow() == StopMode::Running {
        if stop.changed().await.is_err() {
            break;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(m) = marker {
        m.abort();
    }
    // A final stop is not a restart: the next start must not claim to be one.
    if *stop.borrow() == StopMode::Cease
        && let Some(p) = &cfg.settings.restart_marker
    {
        let _ = std::fs::remove_file(p);
    }
    accept.abort();
    Ok(())
}

/// Whether the restart marker was touched less than `restart_time` seconds ago.
fn is_recent(path: &std::path::Path, restart_time: u16) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(u64::from(restart_time)))
}

/// Touch the restart marker every second while we run, so its age after a crash
/// says how long ago we were alive.
async fn keep_marker(path: std::path::PathBuf) {
    loop {
        if let Err(e) = std::fs::write(&path, b"hybridway bgp speaker alive\n") {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the restart marker");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn new_status(peer: &PeerConfig, last_error: Option<String>) -> PeerStatus {
    PeerStatus {
        name: peer.name.clone(),
        peer_address: peer.peer_address,
        peer_asn: peer.peer_asn,
        state: State::Idle,
        since: std::time::Instant::now(),
        prefixes_advertised: 0,
        prefixes_received: 0,
        updates_received: 0,
        updates_treated_as_withdraw: 0,
        routes_imported: 0,
        established_count: 0,
        negotiated: None,
        last_error,
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    peers: HashMap<IpAddr, mpsc::Sender<TcpStream>>,
    mut stop: watch::Receiver<StopMode>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, from)) => match peers.get(&from.ip()) {
                    Some(tx) => { let _ = tx.send(stream).await; }
                    // RFC 4271 §8: connections from unconfigured addresses are refused.
                    None => tracing::debug!(%from, "refused connection from unknown address"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() != StopMode::Running { return },
        }
    }
}

/// What the helper tasks tell a peer task.
#[derive(Debug)]
enum Input {
    Connected(TcpStream),
    ConnectFailed(String),
    Received(ConnId, Message),
    DecodeError(ConnId, codec::Notification),
    Closed(ConnId),
}

#[derive(Debug)]
struct Conn {
    writer: OwnedWriteHalf,
    reader: JoinHandle<()>,
    local: SocketAddr,
}

struct PeerTask {
    peer: PeerConfig,
    session: Session,
    password: Option<Arc<dyn PasswordSource>>,
    bind: Option<IpAddr>,
    /// Shared with the accept loop, so a rotated password reaches the listener too.
    listener: Arc<TcpListener>,
    incoming: mpsc::Receiver<TcpStream>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    routes: watch::Receiver<Arc<Vec<RouteConfig>>>,
    stop: watch::Receiver<StopMode>,
    status: StatusHandle,
    conns: HashMap<ConnId, Conn>,
    connecting: Option<JoinHandle<()>>,
    timers: HashMap<Timer, Instant>,
    next_id: u64,
    rib: AdjRibOut,
    ctx: Option<PeerContext>,
    /// The peer's routes in the kernel, when its `importRoutes` is on.
    import: Option<KernelImport>,
    /// TCP-MD5 failure counter when the current connect attempt started.
    md5_failures_before: Option<u64>,
}

impl PeerTask {
    #[allow(clippy::too_many_arguments)]
    fn new(
        peer: PeerConfig,
        scfg: SessionConfig,
        password: Option<Arc<dyn PasswordSource>>,
        bind: Option<IpAddr>,
        listener: Arc<TcpListener>,
        incoming: mpsc::Receiver<TcpStream>,
        routes: watch::Receiver<Arc<Vec<RouteConfig>>>,
        stop: watch::Receiver<StopMode>,
        status: StatusHandle,
    ) -> Self {
        let (inputs_tx, inputs) = mpsc::channel(256);
        let import = peer
            .import_routes
            .then(|| KernelImport::new(scfg.local_asn));
        PeerTask {
            peer,
            session: Session::new(scfg, std::time::Instant::now()),
            password,
            bind,
            listener,
            incoming,
            inputs_tx,
            inputs,
            routes,
            stop,
            status,
            conns: HashMap::new(),
            connecting: None,
            timers: HashMap::new(),
            next_id: 0,
            import,
            rib: AdjRibOut::default(),
            ctx: None,
            md5_failures_before: None,
        }
    }

    fn conn_id(&mut self) -> ConnId {
        self.next_id += 1;
        ConnId(self.next_id)
    }

    async fn run(mut self) {
        self.event(Event::Start).await;
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                Some(input) = self.inputs.recv() => self.input(input).await,
                Some(stream) = self.incoming.recv() => {
                    let id = self.register(stream);
                    self.event(Event::Incoming(id)).await;
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    let expired: Vec<Timer> = self.timers.iter().filter(|(_, d)| **d <= now).map(|(t, _)| *t).collect();
                    for t in expired {
                        self.timers.remove(&t);
                        self.event(Event::TimerExpired(t)).await;
                    }
                }
                r = self.routes.changed() => {
                    if r.is_ok() {
                        self.sync_routes().await;
                    }
                }
                r = self.stop.changed() => {
                    let mode = if r.is_err() { StopMode::Cease } else { *self.stop.borrow() };
                    match mode {
                        StopMode::Running => {}
                        StopMode::Graceful => return self.shutdown(Event::StopGraceful).await,
                        StopMode::Cease => return self.shutdown(Event::Stop).await,
                    }
                }
            }
        }
    }

    async fn shutdown(mut self, ev: Event) {
        self.event(ev).await;
        for (_, c) in self.conns.drain() {
            c.reader.abort();
        }
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        if let Some(i) = &mut self.import {
            i.clear(&self.peer.name);
        }
    }

    fn register(&mut self, stream: TcpStream) -> ConnId {
        let id = self.conn_id();
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0u8; 4]), 0));
        let (r, w) = stream.into_split();
        let reader = tokio::spawn(read_loop(id, r, self.inputs_tx.clone()));
        self.conns.insert(
            id,
            Conn {
                writer: w,
                reader,
                local,
            },
        );
        id
    }

    async fn input(&mut self, input: Input) {
        match input {
            Input::Connected(stream) => {
                self.connecting = None;
                let id = self.register(stream);
                self.event(Event::Connected(id)).await;
            }
            Input::ConnectFailed(why) => {
                self.connecting = None;
                let why = self.explain_connect_failure(why);
                tracing::info!(peer = %self.peer.name, error = %why, "connect failed");
                self.status
                    .update(&self.peer.name, |s| s.last_error = Some(why));
                self.event(Event::ConnectFailed).await;
            }
            Input::Received(id, msg) => self.event(Event::Received(id, msg)).await,
            Input::DecodeError(id, n) => self.event(Event::DecodeError(id, n)).await,
            Input::Closed(id) => {
                if let Some(c) = self.conns.remove(&id) {
                    c.reader.abort();
                }
                self.event(Event::Closed(id)).await;
            }
        }
    }

    /// With TCP-MD5, a password mismatch is silent on the wire: the kernel drops the
    /// unsigned or mis-signed segments. The namespace's TCPMD5Failure counter is the
    /// one place it shows, so say so in status.
    fn explain_connect_failure(&mut self, why: String) -> String {
        if self.password.is_none() {
            return why;
        }
        match (self.md5_failures_before, md5_failure_count()) {
            (Some(b), Some(n)) if n > b => format!(
                "{why}; {} segment(s) from peers failed TCP-MD5 verification since we started connecting: \
                 the peer's password differs from ours",
                n - b
            ),
            _ => format!("{why} (TCP-MD5 is on: a password mismatch drops SYNs silently)"),
        }
    }

    /// Feed one event to the session and carry out what it asks, including events
    /// that those actions cause (e.g. a failed write closes the connection).
    async fn event(&mut self, ev: Event) {
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            let actions = self.session.handle(ev, std::time::Instant::now());
            for a in actions {
                self.act(a, &mut queue).await;
            }
        }
    }

    async fn act(&mut self, action: Action, queue: &mut VecDeque<Event>) {
        match action {
            Action::Connect => self.connect(),
            Action::CancelConnect => {
                if let Some(c) = self.connecting.take() {
                    c.abort();
                }
            }
            Action::Send(id, msg) => {
                if let Message::Notification(n) = &msg {
                    let why = format!("sent NOTIFICATION: {}", n.describe());
                    self.status
                        .update(&self.peer.name, |s| s.last_error = Some(why));
                }
                if let Err(e) = self.send(id, &[msg]).await {
                    tracing::debug!(peer = %self.peer.name, error = %e, "write failed");
                    queue.push_back(Event::Closed(id));
                }
            }
            Action::Close(id) => {
                if let Some(mut c) = self.conns.remove(&id) {
                    c.reader.abort();
                    let _ = c.writer.shutdown().await;
                }
            }
            Action::StartTimer(t, d) => {
                self.timers.insert(t, Instant::now() + d);
            }
            Action::StopTimer(t) => {
                self.timers.remove(&t);
            }
            Action::StateChanged { from, to } => {
                tracing::info!(peer = %self.peer.name, ?from, ?to, "BGP state change");
                self.status.update(&self.peer.name, |s| {
                    s.state = to;
                    s.since = std::time::Instant::now();
                });
            }
            Action::Established(n) => {
                self.md5_failures_before = None;
                self.status.update(&self.peer.name, |s| {
                    s.negotiated = Some(n.clone());
                    s.established_count += 1;
                    s.last_error = None;
                });
                if let Err(e) = self.advertise_initial(n).await {
                    tracing::warn!(peer = %self.peer.name, error = %e, "initial advertisement failed");
                    if let Some(id) = self.session.primary() {
                        queue.push_back(Event::Closed(id));
                    }
                }
            }
            Action::Down {
                reason,
                peer_graceful,
            } => {
                self.rib.clear();
                self.ctx = None;
                if let Some(i) = &mut self.import {
                    i.clear(&self.peer.name);
                }
                let why = match &reason {
                    DownReason::Sent(n) => Some(format!("sent NOTIFICATION: {}", n.describe())),
                    DownReason::Received(n) => {
                        Some(format!("peer sent NOTIFICATION: {}", n.describe()))
                    }
                    DownReason::ConnectionClosed => Some("peer closed the TCP connection".into()),
                    DownReason::PeerRestarted => {
                        Some("peer restarted (graceful restart helper)".into())
                    }
                    DownReason::Stopped => None,
                };
                tracing::info!(peer = %self.peer.name, ?reason, peer_graceful, "session down");
                self.status.update(&self.peer.name, |s| {
                    s.prefixes_advertised = 0;
                    s.routes_imported = 0;
                    s.negotiated = None;
                    if why.is_some() {
                        s.last_error = why;
                    }
                });
            }
            Action::PeerUpdate(u) => {
                let n = u.announced().count() as u64;
                let malformed = u.treat_as_withdraw.as_ref().map(|n| n.describe());
                if let Some(why) = &malformed {
                    tracing::warn!(
                        peer = %self.peer.name,
                        error = %why,
                        withdrawn = u.withdrawn_all().count(),
                        "malformed UPDATE treated as withdraw (RFC 7606)"
                    );
                }
                let imported = self.import.as_mut().map(|i| {
                    i.apply(&self.peer.name, &u);
                    i.len()
                });
                self.status.update(&self.peer.name, |s| {
                    s.routes_imported = imported.unwrap_or(0);
                    s.updates_received += 1;
                    s.prefixes_received += n;
                    if let Some(why) = malformed {
                        s.updates_treated_as_withdraw += 1;
                        s.last_error = Some(why);
                    }
                });
            }
            Action::RouteRefresh(family) => {
                if let (Some(ctx), Some(id)) = (&self.ctx, self.session.primary()) {
                    let mut msgs: Vec<Message> = self
                        .rib
                        .refresh(ctx, family)
                        .into_iter()
                        .map(Message::Update)
                        .collect();
                    msgs.push(Message::Update(Update::end_of_rib(family)));
                    if self.send(id, &msgs).await.is_err() {
                        queue.push_back(Event::Closed(id));
                    }
                }
            }
        }
    }

    fn codec_opts(&self) -> CodecOptions {
        self.session
            .negotiated()
            .map(Negotiated::codec)
            .unwrap_or_default()
    }

    /// Encode `msgs` into one buffer and write it: one syscall for a whole table.
    async fn send(&mut self, id: ConnId, msgs: &[Message]) -> io::Result<()> {
        let opts = self.codec_opts();
        let mut buf = Vec::with_capacity(msgs.len() * 64);
        for m in msgs {
            codec::encode(m, opts, &mut buf).map_err(io::Error::other)?;
        }
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        // A peer that stops reading must not stall this task past its hold time:
        // the hold timer could not fire while we wait.
        let limit = Duration::from_secs(u64::from(self.session.config().hold_time.max(3)));
        match tokio::time::timeout(limit, conn.writer.write_all(&buf)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            )),
        }
    }

    fn connect(&mut self) {
        if let Some(c) = self.connecting.take() {
            // The session gave up on the attempt in flight: nothing answered.
            c.abort();
            let why = self.explain_connect_failure(format!(
                "TCP connect to {}:179: no answer before the connect-retry timer",
                self.peer.peer_address
            ));
            tracing::info!(peer = %self.peer.name, error = %why, "connect attempt abandoned");
            self.status
                .update(&self.peer.name, |s| s.last_error = Some(why));
        }
        let key = match &self.password {
            None => None,
            Some(src) => match src.password() {
                Ok(p) => Some(p),
                Err(e) => {
                    let _ = self.inputs_tx.try_send(Input::ConnectFailed(e.to_string()));
                    return;
                }
            },
        };
        if let Some(key) = &key
            && let Err(e) =
                sys::set_tcp_md5(self.listener.as_fd(), self.peer.peer_address, key.bytes())
        {
            tracing::warn!(peer = %self.peer.name, error = %e, "cannot refresh the listener's TCP-MD5 key");
        }
        if self.md5_failures_before.is_none() {
            self.md5_failures_before = md5_failure_count();
        }
        let peer = SocketAddr::new(self.peer.peer_address, 179);
        let bind = self.bind;
        let tx = self.inputs_tx.clone();
        self.connecting = Some(tokio::spawn(async move {
            let r = async {
                let sock = if peer.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                if let Some(key) = &key {
                    sys::set_tcp_md5(sock.as_fd(), peer.ip(), key.bytes())?;
                }
                if let Some(ip) = bind {
                    sock.bind(SocketAddr::new(ip, 0))?;
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(peer)).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
                }
            }
            .await;
            let input = match r {
                Ok(s) => Input::Connected(s),
                Err(e) => Input::ConnectFailed(format!("TCP connect to {peer}: {e}")),
            };
            let _ = tx.send(input).await;
        }));
    }

    fn context(&self, n: &Negotiated) -> Option<PeerContext> {
        let id = self.session.primary()?;
        let local = self.conns.get(&id)?.local;
        Some(PeerContext {
            local_asn: self.session.config().local_asn,
            peer_asn: self.session.config().peer_asn,
            local_addr: local.ip(),
            shared_subnet: shared_subnet(self.peer.peer_address),
            families: n.families.clone(),
            codec: n.codec(),
        })
    }

    /// The whole table, then End-of-RIB for each negotiated family (RFC 4724 §2).
    async fn advertise_initial(&mut self, n: Negotiated) -> io::Result<()> {
        let ctx = self
            .context(&n)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let id = self
            .session
            .primary()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        self.rib.clear();
        let routes = self.routes.borrow_and_update().clone();
        let wanted = ctx.wanted(&routes);
        let mut msgs: Vec<Message> = self
            .rib
            .sync(&ctx, &wanted)
            .into_iter()
            .map(Message::Update)
            .collect();
        msgs.extend(
            n.families
                .iter()
                .map(|f| Message::Update(Update::end_of_rib(*f))),
        );
        let count = self.rib.len();
        self.ctx = Some(ctx);
        self.send(id, &msgs).await?;
        self.status
            .update(&self.peer.name, |s| s.prefixes_advertised = count);
        tracing::info!(peer = %self.peer.name, prefixes = count, "initial table sent with End-of-RIB");
        Ok(())
    }

    async fn sync_routes(&mut self) {
        let routes = self.routes.borrow_and_update().clone();
        let (Some(ctx), Some(id), State::Established) =
            (&self.ctx, self.session.primary(), self.session.state())
        else {
            return;
        };
        let wanted: BTreeMap<Prefix, IpAddr> = ctx.wanted(&routes);
        let msgs: Vec<Message> = self
            .rib
            .sync(ctx, &wanted)
            .into_iter()
            .map(Message::Update)
            .collect();
        let count = self.rib.len();
        if !msgs.is_empty() && self.send(id, &msgs).await.is_err() {
            self.event(Event::Closed(id)).await;
            return;
        }
        self.status
            .update(&self.peer.name, |s| s.prefixes_advertised = count);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A fresh random seed per session (for connect-retry jitter), from the standard
/// library's per-process random hasher keys: no extra dependency for a timer.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Split the byte stream into messages. A decode error is reported once and ends
/// the reader: the session answers it with a NOTIFICATION and closes.
async fn read_loop(id: ConnId, mut r: OwnedReadHalf, tx: mpsc::Sender<Input>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 65536];
    // Until the peer's OPEN says otherwise, assume 4-octet ASNs (we always offer it).
    let mut opts = CodecOptions {
        four_octet_as: true,
    };
    loop {
        loop {
            let len = match codec::frame_len(&buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Input::DecodeError(id, e.0)).await;
                    return;
                }
            };
            let decoded = codec::decode(buf.get(..len).unwrap_or_default(), opts);
            buf.drain(..len);
            match decoded {
                Ok(msg) => {
                    if let Message::Open(open) = &msg {
                        opts.four_octet_as =
                            open.has(|c| matches!(c, codec::Capability::FourOctetAs(_)));
                    }
                    if tx.send(Input::Received(id, msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Input::DecodeError(id, e.0)).await;
                    return;
                }
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::Closed(id)).await;
                return;
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// The subnet of one of our interface addresses that contains `peer`.
pub fn shared_subnet(peer: IpAddr) -> Option<Prefix> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (ip, len) = match (
            addr.as_sockaddr_in(),
            mask.as_sockaddr_in(),
            addr.as_sockaddr_in6(),
            mask.as_sockaddr_in6(),
        ) {
            (Some(a), Some(m), _, _) => (IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8),
            (_, _, Some(a), Some(m)) => (IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8),
            _ => continue,
        };
        if let Ok(p) = Prefix::new(ip, len)
            && p.contains(peer)
        {
            return Some(p);
        }
    }
    None
}

/// `TcpExt: TCPMD5Failure` + `TCPMD5NotFound` + `TCPMD5Unexpected` for this network
/// namespace: segments the kernel dropped for a bad, missing or unexpected signature.
pub fn md5_failure_count() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let total = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter(|(n, _)| matches!(*n, "TCPMD5Failure" | "TCPMD5NotFound" | "TCPMD5Unexpected"))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum();
        return Some(total);
    }
    None
}
