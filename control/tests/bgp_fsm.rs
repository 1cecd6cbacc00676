//! The session state machine, one test per transition and per error path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hybridway_control::bgp::codec::{
    AfiSafi, Capability, GracefulRestart, Message, Notification, Open, RouteRefresh, Update, err,
};
use hybridway_control::bgp::fsm::{
    Action, ConnId, DownReason, Event, Session, SessionConfig, State, Timer,
};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUT: ConnId = ConnId(2);
const IN: ConnId = ConnId(3);

fn cfg() -> SessionConfig {
    let mut c = SessionConfig::new(65010, 65001, LOCAL_ID);
    c.families = vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST];
    c
}

fn peer_open(id: Ipv4Addr, hold: u16, gr: bool) -> Open {
    let mut caps = vec![
        Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
        Capability::RouteRefresh,
    ];
    if gr {
        caps.push(Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            restart_time: 120,
            families: vec![],
        }));
    }
    Open::new(65001, hold, id, caps)
}

fn sent(actions: &[Action]) -> Vec<(ConnId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, m) => Some((*c, m.clone())),
            _ => None,
        })
        .collect()
}

fn notification(actions: &[Action]) -> Option<(u8, u8)> {
    sent(actions).into_iter().find_map(|(_, m)| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

fn has(actions: &[Action], a: &Action) -> bool {
    actions.contains(a)
}

struct Harness {
    s: Session,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        Harness {
            s: Session::new(cfg(), now),
            now,
        }
    }
    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.now += Duration::from_millis(1);
        self.s.handle(e, self.now)
    }
    fn reach_open_sent(&mut self) {
        self.ev(Event::Start);
        self.ev(Event::Connected(OUT));
        assert_eq!(self.s.state(), State::OpenSent);
    }
    fn reach_open_confirm(&mut self, gr: bool) -> Vec<Action> {
        self.reach_open_sent();
        let a = self.ev(Event::Received(
            OUT,
            Message::Open(peer_open(PEER_ID, 30, gr)),
        ));
        assert_eq!(self.s.state(), State::OpenConfirm);
        a
    }
    fn reach_established(&mut self, gr: bool) -> Vec<Action> {
        self.reach_open_confirm(gr);
        let a = self.ev(Event::Received(OUT, Message::Keepalive));
        assert_eq!(self.s.state(), State::Established);
        a
    }
}

#[test]
fn start_connects_and_arms_retry() {
    let mut h = Harness::new();
    let a = h.ev(Event::Start);
    assert_eq!(h.s.state(), State::Connect);
    assert!(has(&a, &Action::Connect));
    assert_jittered(retry_timer(&a), Duration::from_secs(2));
    assert!(has(
        &a,
        &Action::StateChanged {
            from: State::Idle,
            to: State::Connect
        }
    ));
}

/// The connect-retry interval the actions arm.
fn retry_timer(a: &[Action]) -> Duration {
    a.iter()
        .find_map(|a| match a {
            Action::StartTimer(Timer::ConnectRetry, d) => Some(*d),
            _ => None,
        })
        .expect("connect-retry timer armed")
}

/// RFC 4271 §10: the interval is the nominal one scaled by 0.75-1.0.
fn assert_jittered(d: Duration, nominal: Duration) {
    assert!(
        d <= nominal && d >= nominal.mul_f64(0.75),
        "{d:?} not within 0.75-1.0 of {nominal:?}"
    );
}

#[test]
fn failed_connect_goes_active_and_backs_off() {
    let mut h = Harness::new();
    h.ev(Event::Start);
    let a = h.ev(Event::ConnectFailed);
    assert_eq!(h.s.state(), State::Active);
    assert_jittered(retry_timer(&a), Duration::from_secs(4));
    let a = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(h.s.state(), State::Connect);
    assert!(has(&a, &Action::Connect));
    let a = h.ev(Event::ConnectFailed);
    assert_jittered(retry_timer(&a), Duration::from_secs(8));
    // The back-off is capped.
    for _ in 0..10 {
        h.ev(Event::TimerExpired(Timer::ConnectRetry));
        h.ev(Event::ConnectFailed);
    }
    let a = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert_jittered(retry_timer(&a), Duration::from_secs(60));
}

/// The retry intervals a session arms over `n` failed connects with `seed`.
fn retry_sequence(seed: u64, n: usize) -> Vec<Duration> {
    let mut c = cfg();
    c.jitter_seed = seed;
    c.retry_max = Duration::from_secs(2);
    let now = Instant::now();
    let mut s = Session::new(c, now);
    let mut out = vec![retry_timer(&s.handle(Event::Start, now))];
    for _ in 1..n {
        out.push(retry_timer(&s.handle(Event::ConnectFailed, now)));
        s.handle(Event::TimerExpired(Timer::ConnectRetry), now);
    }
    out
}

#[test]
fn connect_retry_jitter_is_seeded_and_varies() {
    let a = retry_sequence(1, 8);
    // Deterministic for a seed: the sans-IO FSM stays reproducible.
    assert_eq!(a, retry_sequence(1, 8));
    // Really jittered: not all at the nominal value, not all equal, and another
    // seed (another speaker) draws other intervals.
    for d in &a {
        assert_jittered(*d, Duration::from_secs(2));
    }
    assert!(a.iter().any(|d| *d < Duration::from_secs(2)));
    assert!(a.windows(2).any(|w| w[0] != w[1]));
    assert_ne!(a, retry_sequence(2, 8));
}

#[test]
fn connected_sends_open_with_our_capabilities() {
    let mut h = Harness::new();
    h.ev(Event::Start);
    let a = h.ev(Event::Connected(OUT));
    assert_eq!(h.s.state(), State::OpenSent);
    assert!(has(&a, &Action::StopTimer(Timer::ConnectRetry)));
    assert!(has(
        &a,
        &Action::StartTimer(Timer::Hold, Duration::from_secs(240))
    ));
    let msgs = sent(&a);
    let [(OUT, Message::Open(open))] = msgs.as_slice() else {
        panic!("expected one OPEN: {msgs:?}")
    };
    assert_eq!(open.asn(), 65010);
    assert_eq!(open.hold_time, 90);
    assert_eq!(
        open.families().collect::<Vec<_>>(),
        vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
    );
    let gr = open.graceful_restart().unwrap();
    assert_eq!(gr.restart_time, 600);
    assert_eq!(gr.families.len(), 2);
    assert!(open.has(|c| matches!(c, Capability::RouteRefresh)));
}

#[test]
fn open_negotiates_hold_and_keepalive() {
    let mut h = Harness::new();
    let a = h.reach_open_confirm(true);
    assert_eq!(sent(&a), vec![(OUT, Message::Keepalive)]);
    assert!(has(
        &a,
        &Action::StartTimer(Timer::Hold, Duration::from_secs(30))
    ));
    assert!(has(
        &a,
        &Action::StartTimer(Timer::Keepalive, Duration::from_secs(10))
    ));
    let n = h.s.negotiated().unwrap();
    assert_eq!((n.hold_time, n.keepalive), (30, 10));
    // The peer only announced IPv4: IPv6 is not negotiated.
    assert_eq!(n.families, vec![AfiSafi::IPV4_UNICAST]);
    assert_eq!(n.graceful_restart, Some(120));
    assert!(n.four_octet_as && n.route_refresh);
}

#[test]
fn keepalive_in_open_confirm_establishes() {
    let mut h = Harness::new();
    let a = h.reach_established(false);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Established(n) if n.peer_id == PEER_ID))
    );
    assert!(has(
        &a,
        &Action::StateChanged {
            from: State::OpenConfirm,
            to: State::Established
        }
    ));
}

#[test]
fn hold_time_zero_disables_timers() {
    let mut h = Harness::new();
    h.reach_open_sent();
    let a = h.ev(Event::Received(
        OUT,
        Message::Open(peer_open(PEER_ID, 0, false)),
    ));
    assert!(has(&a, &Action::StopTimer(Timer::Hold)));
    assert!(has(&a, &Action::StopTimer(Timer::Keepalive)));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Hold | Timer::Keepalive, _)))
    );
}

fn assert_error_path(a: &[Action], h: &Harness, code: (u8, u8)) {
    assert_eq!(notification(a), Some(code));
    assert!(a.contains(&Action::Close(OUT)));
    assert_eq!(h.s.state(), State::Idle);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::ConnectRetry, _))),
        "retry armed: {a:?}"
    );
    assert!(a.iter().any(|a| matches!(a, Action::Down { reason: DownReason::Sent(n), .. } if (n.code, n.subcode) == code)));
}

#[test]
fn wrong_peer_as_is_bad_peer_as() {
    let mut h = Harness::new();
    h.reach_open_sent();
    let open = Open::new(65002, 90, PEER_ID, vec![]);
    let a = h.ev(Event::Received(OUT, Message::Open(open)));
    assert_error_path(&a, &h, (err::OPEN, err::OPEN_BAD_PEER_AS));
}

#[test]
fn own_router_id_is_bad_bgp_identifier() {
    let mut h = Harness::new();
    h.reach_open_sent();
    let a = h.ev(Event::Received(
        OUT,
        Message::Open(peer_open(LOCAL_ID, 90, false)),
    ));
    assert_error_path(&a, &h, (err::OPEN, err::OPEN_BAD_BGP_ID));
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut h = Harness::new();
    h.reach_open_sent();
    let a = h.ev(Event::Received(OUT, Message::Keepalive));
    assert_error_path(&a, &h, (err::FSM, err::FSM_UNEXPECTED_IN_OPEN_SENT));

    let mut h = Harness::new();
    h.reach_open_confirm(false);
    let a = h.ev(Event::Received(OUT, Message::Update(Update::default())));
    assert_error_path(&a, &h, (err::FSM, err::FSM_UNEXPECTED_IN_OPEN_CONFIRM));

    let mut h = Harness::new();
    h.reach_established(false);
    let a = h.ev(Event::Received(
        OUT,
        Message::Open(peer_open(PEER_ID, 90, false)),
    ));
    assert_error_path(&a, &h, (err::FSM, err::FSM_UNEXPECTED_IN_ESTABLISHED));
}

#[test]
fn hold_timer_expiry_in_each_state() {
    let mut h = Harness::new();
    h.reach_open_sent();
    let a = h.ev(Event::TimerExpired(Timer::Hold));
    assert_error_path(&a, &h, (err::HOLD_TIMER_EXPIRED, 0));

    let mut h = Harness::new();
    h.reach_established(false);
    let a = h.ev(Event::TimerExpired(Timer::Hold));
    assert_error_path(&a, &h, (err::HOLD_TIMER_EXPIRED, 0));
}

#[test]
fn keepalive_timer_sends_keepalive_and_rearms() {
    let mut h = Harness::new();
    h.reach_established(false);
    let a = h.ev(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(sent(&a), vec![(OUT, Message::Keepalive)]);
    assert!(has(
        &a,
        &Action::StartTimer(Timer::Keepalive, Duration::from_secs(10))
    ));
    // Messages from the peer restart the hold timer.
    let a = h.ev(Event::Received(OUT, Message::Keepalive));
    assert!(has(
        &a,
        &Action::StartTimer(Timer::Hold, Duration::from_secs(30))
    ));
}

#[test]
fn decode_error_sends_its_notification() {
    let mut h = Harness::new();
    h.reach_established(false);
    let n = Notification::new(err::UPDATE, err::UPDATE_MISSING_WELL_KNOWN, vec![3]);
    let a = h.ev(Event::DecodeError(OUT, n));
    assert_error_path(&a, &h, (err::UPDATE, err::UPDATE_MISSING_WELL_KNOWN));
}

#[test]
fn notification_from_peer_closes() {
    let mut h = Harness::new();
    h.reach_established(true);
    let n = Notification::new(err::CEASE, err::CEASE_ADMIN_RESET, vec![]);
    let a = h.ev(Event::Received(OUT, Message::Notification(n.clone())));
    assert_eq!(
        notification(&a),
        None,
        "never answer a NOTIFICATION with one"
    );
    assert!(has(&a, &Action::Close(OUT)));
    assert!(has(
        &a,
        &Action::Down {
            reason: DownReason::Received(n),
            peer_graceful: true
        }
    ));
    assert_eq!(h.s.state(), State::Idle);
}

#[test]
fn connection_closed_while_established() {
    let mut h = Harness::new();
    h.reach_established(true);
    let a = h.ev(Event::Closed(OUT));
    assert!(has(
        &a,
        &Action::Down {
            reason: DownReason::ConnectionClosed,
            peer_graceful: true
        }
    ));
    assert_eq!(h.s.state(), State::Idle);
    // After the back-off it connects again.
    let a = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert!(has(&a, &Action::Connect));
    assert_eq!(h.s.state(), State::Connect);
}

#[test]
fn stop_sends_cease_but_graceful_stop_does_not() {
    let mut h = Harness::new();
    h.reach_established(true);
    let a = h.ev(Event::Stop);
    assert_eq!(
        notification(&a),
        Some((err::CEASE, err::CEASE_ADMIN_SHUTDOWN))
    );
    assert!(has(&a, &Action::Close(OUT)));
    assert_eq!(h.s.state(), State::Idle);
    // Stopped sessions do not reconnect.
    assert!(h.ev(Event::TimerExpired(Timer::ConnectRetry)).is_empty());

    let mut h = Harness::new();
    h.reach_established(true);
    let a = h.ev(Event::StopGraceful);
    assert_eq!(notification(&a), None);
    assert!(has(&a, &Action::Close(OUT)));
    assert_eq!(h.s.state(), State::Idle);
}

#[test]
fn incoming_connection_in_active_is_adopted() {
    let mut h = Harness::new();
    h.ev(Event::Start);
    h.ev(Event::ConnectFailed);
    let a = h.ev(Event::Incoming(IN));
    assert!(has(&a, &Action::CancelConnect));
    assert_eq!(h.s.state(), State::OpenSent);
    assert_eq!(h.s.primary(), Some(IN));
}

/// Both sides connected at once. `peer_id` decides who wins (RFC 4271 §6.8).
fn collision(peer_id: Ipv4Addr) -> (Harness, Vec<Action>) {
    let mut h = Harness::new();
    h.reach_open_sent();
    let a = h.ev(Event::Incoming(IN));
    assert!(matches!(sent(&a).as_slice(), [(IN, Message::Open(_))]));
    assert_eq!(h.s.primary(), Some(OUT));
    let a = h.ev(Event::Received(
        IN,
        Message::Open(peer_open(peer_id, 90, false)),
    ));
    (h, a)
}

#[test]
fn collision_peer_with_higher_id_keeps_its_connection() {
    let (h, a) = collision(Ipv4Addr::new(198, 18, 0, 200));
    assert!(has(
        &a,
        &Action::Send(OUT, Message::Notification(Notification::new(6, 7, vec![])))
    ));
    assert!(has(&a, &Action::Close(OUT)));
    assert!(has(&a, &Action::Send(IN, Message::Keepalive)));
    assert_eq!(h.s.primary(), Some(IN));
    assert_eq!(h.s.state(), State::OpenConfirm);
}

#[test]
fn collision_we_have_higher_id_keep_ours() {
    let (mut h, a) = collision(PEER_ID);
    assert!(has(
        &a,
        &Action::Send(IN, Message::Notification(Notification::new(6, 7, vec![])))
    ));
    assert!(has(&a, &Action::Close(IN)));
    assert_eq!(h.s.primary(), Some(OUT));
    assert_eq!(h.s.state(), State::OpenSent);
    h.ev(Event::Received(
        OUT,
        Message::Open(peer_open(PEER_ID, 90, false)),
    ));
    h.ev(Event::Received(OUT, Message::Keepalive));
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn new_connection_while_established() {
    // Without graceful restart the new connection loses.
    let mut h = Harness::new();
    h.reach_established(false);
    let a = h.ev(Event::Incoming(IN));
    assert!(has(
        &a,
        &Action::Send(IN, Message::Notification(Notification::new(6, 7, vec![])))
    ));
    assert!(has(&a, &Action::Close(IN)));
    assert_eq!(h.s.state(), State::Established);

    // With it, the peer restarted: helper mode, keep its routes, take the new one.
    let mut h = Harness::new();
    h.reach_established(true);
    let a = h.ev(Event::Incoming(IN));
    assert!(has(&a, &Action::Close(OUT)));
    assert!(has(
        &a,
        &Action::Down {
            reason: DownReason::PeerRestarted,
            peer_graceful: true
        }
    ));
    assert_eq!(notification(&a), None);
    assert_eq!(h.s.state(), State::OpenSent);
    assert_eq!(h.s.primary(), Some(IN));
}

#[test]
fn established_reports_updates_and_refreshes() {
    let mut h = Harness::new();
    h.reach_established(false);
    let u = Update::end_of_rib(AfiSafi::IPV4_UNICAST);
    let a = h.ev(Event::Received(OUT, Message::Update(u.clone())));
    assert!(has(&a, &Action::PeerUpdate(u)));
    let a = h.ev(Event::Received(
        OUT,
        Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV4_UNICAST,
        }),
    ));
    assert!(has(&a, &Action::RouteRefresh(AfiSafi::IPV4_UNICAST)));
    // IPv6 was not negotiated: ignored.
    let a = h.ev(Event::Received(
        OUT,
        Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV6_UNICAST,
        }),
    ));
    assert!(a.is_empty());
}

#[test]
fn messages_on_unknown_connections_are_ignored() {
    let mut h = Harness::new();
    h.reach_established(false);
    assert!(
        h.ev(Event::Received(ConnId(99), Message::Keepalive))
            .is_empty()
    );
    assert!(h.ev(Event::Closed(ConnId(99))).is_empty());
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn restart_bit_set_until_first_established() {
    let now = Instant::now();
    let mut c = cfg();
    c.restarting = true;
    let mut s = Session::new(c, now);
    s.handle(Event::Start, now);
    let a = s.handle(Event::Connected(OUT), now);
    let msgs = sent(&a);
    let [(_, Message::Open(open))] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert!(open.graceful_restart().unwrap().restarting);
    s.handle(
        Event::Received(OUT, Message::Open(peer_open(PEER_ID, 30, true))),
        now,
    );
    s.handle(Event::Received(OUT, Message::Keepalive), now);
    assert_eq!(s.state(), State::Established);
    assert!(!s.local_open().graceful_restart().unwrap().restarting);
}
