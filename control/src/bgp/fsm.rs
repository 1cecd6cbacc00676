//! The BGP session state machine (RFC 4271 §8), sans-IO.
//!
//! [`Session::handle`] takes one [`Event`] and `now` and returns [`Action`]s: messages
//! to send on a connection, connections to open or close, timers to (re)arm, and
//! reports for the speaker (state changes, session up/down, peer updates). The tokio
//! shell in `speaker` owns sockets and timers and does nothing else.
//!
//! Connections are named by a [`ConnId`] chosen by the shell, because during a
//! connection collision (RFC 4271 §6.8) two connections to the same peer live at
//! once: the `primary` one that drives [`State`], and a `candidate` that stays until
//! its OPEN tells us the peer's BGP Identifier and one of the two is closed with a
//! Cease (Connection Collision Resolution).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::codec::{
    AfiSafi, Capability, CodecOptions, GrFamily, GracefulRestart, Message, Notification, Open,
    Update, err,
};

/// RFC 4271 §8.2.2 session states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// A TCP connection, as numbered by the I/O shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// Who opened the TCP connection; decides collisions (RFC 4271 §6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We connected to the peer.
    Outgoing,
    /// The peer connected to us.
    Incoming,
}

/// Timers the shell runs for us. Re-arming a running timer replaces its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer; also used as the back-off before leaving Idle after an
    /// error (RFC 4271 §8.1.1's IdleHoldTimer, which it names optional).
    ConnectRetry,
    Hold,
    Keepalive,
}

/// Inputs (RFC 4271 §8.1 events, grouped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// ManualStart / AutomaticStart (events 1, 3).
    Start,
    /// ManualStop (event 2): NOTIFICATION Cease, close, stay Idle.
    Stop,
    /// A planned shutdown with graceful restart: close TCP **without** a Cease so
    /// the peer keeps our routes as stale (RFC 4724 §4).
    StopGraceful,
    TimerExpired(Timer),
    /// Our outgoing connection completed (events 16/17).
    Connected(ConnId),
    /// Our outgoing connection failed (event 18).
    ConnectFailed,
    /// The peer connected to us (an accepted socket whose source is this peer).
    Incoming(ConnId),
    /// The connection was closed or reset by the other side (event 18).
    Closed(ConnId),
    Received(ConnId, Message),
    /// Bytes that did not decode; the NOTIFICATION says why (events 21-25, 28).
    DecodeError(ConnId, Notification),
}

/// Why a session left Established (or never got there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    Sent(Notification),
    /// The peer sent this NOTIFICATION.
    Received(Notification),
    /// TCP went away without a NOTIFICATION.
    ConnectionClosed,
    /// The peer opened a new connection while Established with graceful restart
    /// negotiated: it restarted (RFC 4724 §4.2), we act as helper.
    PeerRestarted,
    /// Event::Stop or Event::StopGraceful.
    Stopped,
}

/// Outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer (cancelling any attempt in flight).
    Connect,
    /// Stop an outgoing attempt that is still in flight.
    CancelConnect,
    Send(ConnId, Message),
    /// Close the connection after flushing what was sent on it.
    Close(ConnId),
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    StateChanged {
        from: State,
        to: State,
    },
    /// The session is up: advertise the table for these capabilities, then
    /// End-of-RIB per family.
    Established(Negotiated),
    /// The session went down. `peer_graceful` is true when the peer negotiated
    /// graceful restart, so routes learned from it are kept as stale (helper).
    Down {
        reason: DownReason,
        peer_graceful: bool,
    },
    /// An UPDATE from the peer (we do not import routes; the speaker counts them).
    PeerUpdate(Update),
    /// The peer asked for a family again (RFC 2918).
    RouteRefresh(AfiSafi),
}

/// What both sides agreed on in their OPENs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Negotiated {
    #[serde(rename = "peerASN")]
    pub peer_asn: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    /// Families both announced with the multiprotocol capability.
    #[serde(serialize_with = "ser_families")]
    pub families: Vec<AfiSafi>,
    /// The peer's graceful-restart restart time when both announced the capability.
    #[serde(rename = "gracefulRestartTime")]
    pub graceful_restart: Option<u16>,
}

impl Negotiated {
    pub fn codec(&self) -> CodecOptions {
        CodecOptions {
            four_octet_as: self.four_octet_as,
        }
    }
}

fn ser_families<S: serde::Serializer>(f: &[AfiSafi], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(f.iter().map(|f| f.name()))
}

/// Per-session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_asn: u32,
    pub peer_asn: u32,
    pub router_id: Ipv4Addr,
    /// Hold time we propose (RFC 4271 suggests 90 s).
    pub hold_time: u16,
    /// First connect-retry interval; doubled after each failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Seeds the connect-retry jitter (RFC 4271 §10: each interval is scaled by a
    /// random 0.75-1.0 so that peers restarted together do not retry in lockstep).
    /// The speaker draws it at random; tests fix it to stay deterministic.
    pub jitter_seed: u64,
    /// Families we announce (multiprotocol capability) and advertise routes for.
    pub families: Vec<AfiSafi>,
    /// Graceful restart: our restart time (1-4095 s), `None` to not announce it.
    pub restart_time: Option<u16>,
    /// We are coming back from a restart: set the Restart State ("R") bit in our
    /// OPENs until the first session is Established (RFC 4724 §4.1).
    pub restarting: bool,
}

impl SessionConfig {
    pub fn new(local_asn: u32, peer_asn: u32, router_id: Ipv4Addr) -> Self {
        SessionConfig {
            local_asn,
            peer_asn,
            router_id,
            hold_time: 90,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            jitter_seed: 0,
            families: vec![AfiSafi::IPV4_UNICAST],
            restart_time: Some(600),
            restarting: false,
        }
    }
}

/// SplitMix64: a small, well-mixed generator, enough for timer jitter (not for
/// anything secret) and deterministic for a given seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hold timer while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 min).
const LARGE_HOLD: Duration = Duration::from_secs(240);

#[derive(Clone, Debug)]
struct Conn {
    id: ConnId,
    dir: Direction,
}

/// One peer's session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    /// Automatic restart after errors; cleared by Stop.
    running: bool,
    primary: Option<Conn>,
    candidate: Option<Conn>,
    /// The peer's OPEN on the primary connection, once received.
    remote_open: Option<Open>,
    negotiated: Option<Negotiated>,
    /// Consecutive failures, for the connect-retry back-off.
    failures: u32,
    /// State of the jitter generator, seeded from `cfg.jitter_seed`.
    jitter_state: u64,
    last_change: Instant,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        Session {
            jitter_state: cfg.jitter_seed,
            cfg,
            state: State::Idle,
            running: false,
            primary: None,
            candidate: None,
            remote_open: None,
            negotiated: None,
            failures: 0,
            last_change: now,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn last_change(&self) -> Instant {
        self.last_change
    }
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }
    /// The connection carrying the session, if any.
    pub fn primary(&self) -> Option<ConnId> {
        self.primary.as_ref().map(|c| c.id)
    }

    /// The OPEN we send.
    pub fn local_open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .cfg
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::RouteRefresh);
        if let Some(t) = self.cfg.restart_time {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarting: self.cfg.restarting,
                restart_time: t.clamp(1, 4095),
                // Forwarding survives a speaker restart: the dataplane runs on.
                families: self
                    .cfg
                    .families
                    .iter()
                    .map(|f| GrFamily {
                        family: *f,
                        forwarding_preserved: true,
                    })
                    .collect(),
            }));
        }
        Open::new(
            self.cfg.local_asn,
            self.cfg.hold_time,
            self.cfg.router_id,
            caps,
        )
    }

    /// Exponential back-off, capped, then jittered down by up to a quarter.
    fn retry_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(16)).unwrap_or(u32::MAX);
        let delay = self
            .cfg
            .retry_base
            .saturating_mul(factor)
            .min(self.cfg.retry_max);
        let random = splitmix64(&mut self.jitter_state);
        // The top 53 bits as a fraction in [0, 1): exact in an f64.
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        Duration::try_from_secs_f64(delay.as_secs_f64() * (0.75 + 0.25 * unit)).unwrap_or(delay)
    }

    fn goto(&mut self, to: State, now: Instant, out: &mut Vec<Action>) {
        if self.state != to {
            out.push(Action::StateChanged {
                from: self.state,
                to,
            });
            self.state = to;
            self.last_change = now;
        }
    }

    fn is_primary(&self, id: ConnId) -> bool {
        self.primary.as_ref().is_some_and(|c| c.id == id)
    }
    fn is_candidate(&self, id: ConnId) -> bool {
        self.candidate.as_ref().is_some_and(|c| c.id == id)
    }

    /// Process one event.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.step(event, now, &mut out);
        out
    }

    fn step(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        use Event as E;
        use State as S;
        match (self.state, event) {
            (S::Idle, E::Start) => {
                self.running = true;
                self.failures = 0;
                self.start_connect(now, out);
            }
            (_, E::Start) => {}
            (_, E::Stop) => self.stop(
                Some(Notification::new(
                    err::CEASE,
                    err::CEASE_ADMIN_SHUTDOWN,
                    Vec::new(),
                )),
                now,
                out,
            ),
            (_, E::StopGraceful) => self.stop(None, now, out),

            (S::Idle | S::Active, E::TimerExpired(Timer::ConnectRetry)) if self.running => {
                self.start_connect(now, out)
            }
            (S::Connect, E::TimerExpired(Timer::ConnectRetry)) => {
                // The attempt got no answer in time (RFC 4271 §8.2.2: drop it, retry).
                // Count it, so an unreachable peer or a silent MD5 mismatch backs off.
                self.failures = self.failures.saturating_add(1);
                self.start_connect(now, out)
            }
            (_, E::TimerExpired(Timer::ConnectRetry)) => {}

            (S::Connect, E::ConnectFailed) => {
                // RFC 4271 §8.2.2: Connect -> Active on a failed attempt, retry later.
                self.failures = self.failures.saturating_add(1);
                out.push(Action::StartTimer(Timer::ConnectRetry, self.retry_delay()));
                self.goto(S::Active, now, out);
            }
            (_, E::ConnectFailed) => {}

            (S::Connect | S::Active, E::Connected(id)) => {
                self.adopt(id, Direction::Outgoing, now, out)
            }
            (S::Connect | S::Active, E::Incoming(id)) => {
                out.push(Action::CancelConnect);
                self.adopt(id, Direction::Incoming, now, out);
            }
            (S::OpenSent | S::OpenConfirm, E::Connected(id)) if self.candidate.is_none() => {
                self.add_candidate(id, Direction::Outgoing, out)
            }
            (S::OpenSent | S::OpenConfirm, E::Incoming(id)) if self.candidate.is_none() => {
                self.add_candidate(id, Direction::Incoming, out)
            }
            // While backing off in Idle, a peer that connects to us is accepted: it
            // saves a round of retries, and the peer's own back-off may be long.
            (S::Idle, E::Incoming(id)) if self.running => {
                out.push(Action::StopTimer(Timer::ConnectRetry));
                self.adopt(id, Direction::Incoming, now, out);
            }
            (S::Established, E::Incoming(id))
                if self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.graceful_restart.is_some()) =>
            {
                // RFC 4724 §4.2: a new connection while Established means the peer
                // restarted. Drop the old connection quietly and keep its routes.
                if let Some(old) = self.primary.take() {
                    out.push(Action::Close(old.id));
                }
                self.session_down(DownReason::PeerRestarted, now, out);
                self.adopt(id, Direction::Incoming, now, out);
            }
            (S::Established, E::Incoming(id) | E::Connected(id)) => {
                // RFC 4271 §6.8: collision with an Established session: the new
                // connection loses.
                out.push(Action::Send(id, Message::Notification(cease_collision())));
                out.push(Action::Close(id));
            }
            (_, E::Incoming(id) | E::Connected(id)) => out.push(Action::Close(id)),

            (_, E::Closed(id)) if self.is_candidate(id) => self.candidate = None,
            (_, E::Closed(id)) if self.is_primary(id) => {
                self.primary = None;
                self.fail(DownReason::ConnectionClosed, now, out);
            }
            (_, E::Closed(_)) => {}

            (_, E::DecodeError(id, n)) if self.is_candidate(id) => {
                out.push(Action::Send(id, Message::Notification(n)));
                out.push(Action::Close(id));
                self.candidate = None;
            }
            (_, E::DecodeError(id, n)) if self.is_primary(id) => self.error(n, now, out),
            (_, E::DecodeError(..)) => {}

            (_, E::Received(id, msg)) if self.is_candidate(id) => {
                self.candidate_message(id, msg, now, out)
            }
            (_, E::Received(id, _)) if !self.is_primary(id) => {}
            (_, E::Received(_, Message::Notification(n))) => {
                self.close_primary(out);
                self.fail(DownReason::Received(n), now, out);
            }
            (S::OpenSent, E::Received(_, Message::Open(open))) => {
                self.open_received(open, now, out)
            }
            (S::OpenSent, E::Received(..)) => {
                self.error(fsm_error(err::FSM_UNEXPECTED_IN_OPEN_SENT), now, out)
            }
            (S::OpenConfirm, E::Received(_, Message::Keepalive)) => {
                self.failures = 0;
                self.cfg.restarting = false;
                self.restart_hold(out);
                self.goto(S::Established, now, out);
                if let Some(n) = &self.negotiated {
                    out.push(Action::Established(n.clone()));
                }
            }
            (S::OpenConfirm, E::Received(..)) => {
                self.error(fsm_error(err::FSM_UNEXPECTED_IN_OPEN_CONFIRM), now, out)
            }
            (S::Established, E::Received(_, Message::Keepalive)) => self.restart_hold(out),
            (S::Established, E::Received(_, Message::Update(u))) => {
                self.restart_hold(out);
                out.push(Action::PeerUpdate(u));
            }
            (S::Established, E::Received(_, Message::RouteRefresh(rr))) => {
                let ok = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.route_refresh && n.families.contains(&rr.family));
                // RFC 2918 §4: ignore a refresh for a family we did not negotiate.
                if ok {
                    out.push(Action::RouteRefresh(rr.family));
                }
            }
            (S::Established, E::Received(_, Message::Open(_))) => {
                self.error(fsm_error(err::FSM_UNEXPECTED_IN_ESTABLISHED), now, out)
            }
            (_, E::Received(..)) => {}

            (S::OpenSent | S::OpenConfirm | S::Established, E::TimerExpired(Timer::Hold)) => self
                .error(
                    Notification::new(err::HOLD_TIMER_EXPIRED, 0, Vec::new()),
                    now,
                    out,
                ),
            (S::OpenConfirm | S::Established, E::TimerExpired(Timer::Keepalive)) => {
                if let (Some(p), Some(n)) = (&self.primary, &self.negotiated) {
                    out.push(Action::Send(p.id, Message::Keepalive));
                    out.push(Action::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(u64::from(n.keepalive)),
                    ));
                }
            }
            (_, E::TimerExpired(Timer::Hold | Timer::Keepalive)) => {}
        }
    }

    /// A second connection to the same peer: keep it until its OPEN resolves the
    /// collision (RFC 4271 §6.8).
    fn add_candidate(&mut self, id: ConnId, dir: Direction, out: &mut Vec<Action>) {
        self.candidate = Some(Conn { id, dir });
        out.push(Action::Send(id, Message::Open(self.local_open())));
    }

    fn start_connect(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Connect);
        out.push(Action::StartTimer(Timer::ConnectRetry, self.retry_delay()));
        self.goto(State::Connect, now, out);
    }

    /// Take `id` as the session's connection and send our OPEN.
    fn adopt(&mut self, id: ConnId, dir: Direction, now: Instant, out: &mut Vec<Action>) {
        self.primary = Some(Conn { id, dir });
        self.remote_open = None;
        self.negotiated = None;
        out.push(Action::StopTimer(Timer::ConnectRetry));
        out.push(Action::Send(id, Message::Open(self.local_open())));
        out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD));
        self.goto(State::OpenSent, now, out);
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(n) = &self.negotiated
            && n.hold_time > 0
        {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(n.hold_time)),
            ));
        }
    }

    /// Check a peer's OPEN; the NOTIFICATION to send when it is unacceptable.
    fn check_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        if open.asn() != self.cfg.peer_asn {
            let data = open.my_as.to_be_bytes().to_vec();
            return Err(Notification::new(err::OPEN, err::OPEN_BAD_PEER_AS, data));
        }
        if open.bgp_id == self.cfg.router_id {
            return Err(Notification::new(
                err::OPEN,
                err::OPEN_BAD_BGP_ID,
                Vec::new(),
            ));
        }
        let hold_time = open.hold_time.min(self.cfg.hold_time);
        let peer_families: Vec<AfiSafi> = open.families().collect();
        // RFC 4760 §8: a peer without any multiprotocol capability speaks IPv4 unicast.
        let families = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| {
                if peer_families.is_empty() {
                    *f == AfiSafi::IPV4_UNICAST
                } else {
                    peer_families.contains(f)
                }
            })
            .collect();
        Ok(Negotiated {
            peer_asn: open.asn(),
            peer_id: open.bgp_id,
            hold_time,
            keepalive: hold_time / 3,
            four_octet_as: open.has(|c| matches!(c, Capability::FourOctetAs(_))),
            route_refresh: open.has(|c| matches!(c, Capability::RouteRefresh)),
            families,
            graceful_restart: match (self.cfg.restart_time, open.graceful_restart()) {
                (Some(_), Some(gr)) => Some(gr.restart_time),
                _ => None,
            },
        })
    }

    fn open_received(&mut self, open: Open, now: Instant, out: &mut Vec<Action>) {
        let negotiated = match self.check_open(&open) {
            Ok(n) => n,
            Err(n) => return self.error(n, now, out),
        };
        let Some(primary) = self.primary.clone() else {
            return;
        };
        out.push(Action::Send(primary.id, Message::Keepalive));
        if negotiated.hold_time > 0 {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(negotiated.hold_time)),
            ));
            out.push(Action::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(u64::from(negotiated.keepalive)),
            ));
        } else {
            // Hold time 0: no keepalives and no hold timer (RFC 4271 §4.4).
            out.push(Action::StopTimer(Timer::Hold));
            out.push(Action::StopTimer(Timer::Keepalive));
        }
        self.remote_open = Some(open);
        self.negotiated = Some(negotiated);
        self.goto(State::OpenConfirm, now, out);
    }

    /// A message on the collision candidate. Only its OPEN matters: it carries the
    /// BGP Identifier that decides which connection survives (RFC 4271 §6.8).
    fn candidate_message(&mut self, id: ConnId, msg: Message, now: Instant, out: &mut Vec<Action>) {
        let Message::Open(open) = msg else {
            if matches!(msg, Message::Notification(_)) {
                out.push(Action::Close(id));
                self.candidate = None;
            }
            return;
        };
        let Some(candidate) = self.candidate.take() else {
            return;
        };
        if let Err(n) = self.check_open(&open) {
            out.push(Action::Send(id, Message::Notification(n)));
            out.push(Action::Close(id));
            return;
        }
        // The connection opened by the side with the higher BGP Identifier wins.
        let keep_dir = if u32::from(self.cfg.router_id) < u32::from(open.bgp_id) {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        let primary_dir = self.primary.as_ref().map(|c| c.dir);
        if primary_dir == Some(keep_dir) || candidate.dir != keep_dir {
            out.push(Action::Send(id, Message::Notification(cease_collision())));
            out.push(Action::Close(id));
            return;
        }
        // The candidate wins: close the primary with a Cease, promote the candidate
        // (which already sent its OPEN) and process its OPEN as if it were first.
        if let Some(old) = self.primary.take() {
            out.push(Action::Send(
                old.id,
                Message::Notification(cease_collision()),
            ));
            out.push(Action::Close(old.id));
        }
        self.primary = Some(candidate);
        self.remote_open = None;
        self.negotiated = None;
        // Not a visible transition: the session stays in OpenConfirm, on a new TCP.
        self.state = State::OpenSent;
        self.open_received(open, now, out);
    }

    fn close_primary(&mut self, out: &mut Vec<Action>) {
        if let Some(p) = self.primary.take() {
            out.push(Action::Close(p.id));
        }
    }

    /// A protocol error on the primary connection: NOTIFICATION, close, back off.
    fn error(&mut self, n: Notification, now: Instant, out: &mut Vec<Action>) {
        if let Some(p) = &self.primary {
            out.push(Action::Send(p.id, Message::Notification(n.clone())));
        }
        self.close_primary(out);
        self.fail(DownReason::Sent(n), now, out);
    }

    /// The session ended on its own (error or close): report, go Idle, and schedule
    /// the next attempt with back-off.
    fn fail(&mut self, reason: DownReason, now: Instant, out: &mut Vec<Action>) {
        self.session_down(reason, now, out);
        self.failures = self.failures.saturating_add(1);
        out.push(Action::StopTimer(Timer::Hold));
        out.push(Action::StopTimer(Timer::Keepalive));
        if self.running {
            out.push(Action::StartTimer(Timer::ConnectRetry, self.retry_delay()));
        }
        self.goto(State::Idle, now, out);
    }

    fn session_down(&mut self, reason: DownReason, _now: Instant, out: &mut Vec<Action>) {
        let peer_graceful = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.graceful_restart.is_some());
        out.push(Action::Down {
            reason,
            peer_graceful,
        });
        self.remote_open = None;
        self.negotiated = None;
    }

    fn stop(&mut self, cease: Option<Notification>, now: Instant, out: &mut Vec<Action>) {
        self.running = false;
        for conn in [self.primary.take(), self.candidate.take()]
            .into_iter()
            .flatten()
        {
            if let Some(n) = &cease {
                out.push(Action::Send(conn.id, Message::Notification(n.clone())));
            }
            out.push(Action::Close(conn.id));
        }
        out.push(Action::CancelConnect);
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(t));
        }
        if self.state != State::Idle {
            self.session_down(DownReason::Stopped, now, out);
        }
        self.goto(State::Idle, now, out);
    }
}

fn fsm_error(subcode: u8) -> Notification {
    Notification::new(err::FSM, subcode, Vec::new())
}

fn cease_collision() -> Notification {
    Notification::new(err::CEASE, err::CEASE_COLLISION, Vec::new())
}
