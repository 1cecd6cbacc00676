//! Per-peer status: what the agent shows (JSON) and exports (Prometheus text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

use super::fsm::{Negotiated, State};

/// One peer, as the speaker last saw it.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub name: String,
    pub peer_address: IpAddr,
    pub peer_asn: u32,
    pub state: State,
    pub since: Instant,
    pub prefixes_advertised: usize,
    pub prefixes_received: u64,
    pub updates_received: u64,
    /// Malformed UPDATEs taken as withdrawals (RFC 7606) instead of a reset.
    pub updates_treated_as_withdraw: u64,
    /// Received routes installed in the kernel (`importRoutes`; always 0 without).
    pub routes_imported: usize,
    pub established_count: u64,
    pub negotiated: Option<Negotiated>,
    pub last_error: Option<String>,
}

/// The rendered form: times become "seconds since".
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusView {
    pub name: String,
    pub peer_address: IpAddr,
    #[serde(rename = "peerASN")]
    pub peer_asn: u32,
    pub state: State,
    pub seconds_in_state: f64,
    pub prefixes_advertised: usize,
    pub prefixes_received: u64,
    pub updates_received: u64,
    /// Malformed UPDATEs taken as withdrawals (RFC 7606) instead of a reset.
    pub updates_treated_as_withdraw: u64,
    /// Received routes installed in the kernel (`importRoutes`; always 0 without).
    pub routes_imported: usize,
    pub established_count: u64,
    pub negotiated: Option<Negotiated>,
    pub last_error: Option<String>,
}

/// Shared between peer tasks (writers) and whoever renders status (readers). A
/// plain mutex: updates happen a few times per second, never on a packet path.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle(Arc<Mutex<BTreeMap<String, PeerStatus>>>);

impl StatusHandle {
    pub fn update(&self, name: &str, f: impl FnOnce(&mut PeerStatus)) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = map.get_mut(name) {
            f(s);
        }
    }

    pub fn insert(&self, status: PeerStatus) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(status.name.clone(), status);
    }

    pub fn snapshot(&self, now: Instant) -> Vec<PeerStatusView> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .map(|s| PeerStatusView {
                name: s.name.clone(),
                peer_address: s.peer_address,
                peer_asn: s.peer_asn,
                state: s.state,
                seconds_in_state: now.saturating_duration_since(s.since).as_secs_f64(),
                prefixes_advertised: s.prefixes_advertised,
                prefixes_received: s.prefixes_received,
                updates_received: s.updates_received,
                updates_treated_as_withdraw: s.updates_treated_as_withdraw,
                routes_imported: s.routes_imported,
                established_count: s.established_count,
                negotiated: s.negotiated.clone(),
                last_error: s.last_error.clone(),
            })
            .collect()
    }
}

/// The speaker the agent runs now, for its control socket: the Kubernetes wiring
/// starts a fresh speaker (and [`StatusHandle`]) whenever its plan changes, so the
/// socket reads whichever is current, or none when no speaker runs on this node.
#[derive(Clone, Debug, Default)]
pub struct CurrentSpeaker(Arc<Mutex<Option<StatusHandle>>>);

impl CurrentSpeaker {
    pub fn set(&self, status: Option<StatusHandle>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// The current speaker's sessions; `None` when no speaker runs.
    pub fn snapshot(&self, now: Instant) -> Option<Vec<PeerStatusView>> {
        let current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|s| s.snapshot(now))
    }
}

pub fn to_json(peers: &[PeerStatusView]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "peers": peers }))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric name, its help text, and how to read it from a peer.
type Gauge = (&'static str, &'static str, fn(&PeerStatusView) -> f64);

/// Prometheus text exposition format.
pub fn to_prometheus(peers: &[PeerStatusView]) -> String {
    let mut out = String::new();
    let states = [
        State::Idle,
        State::Connect,
        State::Active,
        State::OpenSent,
        State::OpenConfirm,
        State::Established,
    ];
    let _ = writeln!(
        out,
        "# HELP hybridway_bgp_peer_state 1 for the peer's current BGP session state."
    );
    let _ = writeln!(out, "# TYPE hybridway_bgp_peer_state gauge");
    for p in peers {
        for s in states {
            let _ = writeln!(
                out,
                "hybridway_bgp_peer_state{{peer=\"{}\",state=\"{:?}\"}} {}",
                label(&p.name),
                s,
                u8::from(p.state == s)
            );
        }
    }
    let gauges: [Gauge; 7] = [
        (
            "hybridway_bgp_peer_seconds_in_state",
            "Seconds since the last state change.",
            |p| p.seconds_in_state,
        ),
        (
            "hybridway_bgp_peer_prefixes_advertised",
            "Prefixes currently advertised to the peer.",
            |p| p.prefixes_advertised as f64,
        ),
        (
            "hybridway_bgp_peer_prefixes_received_total",
            "Prefixes announced by the peer.",
            |p| p.prefixes_received as f64,
        ),
        (
            "hybridway_bgp_peer_updates_received_total",
            "UPDATE messages from the peer.",
            |p| p.updates_received as f64,
        ),
        (
            "hybridway_bgp_peer_updates_treated_as_withdraw_total",
            "Malformed UPDATE messages taken as withdrawals (RFC 7606).",
            |p| p.updates_treated_as_withdraw as f64,
        ),
        (
            "hybridway_bgp_peer_routes_imported",
            "Received routes installed in the kernel (importRoutes).",
            |p| p.routes_imported as f64,
        ),
        (
            "hybridway_bgp_peer_established_total",
            "Times the session reached Established.",
            |p| p.established_count as f64,
        ),
    ];
    for (name, help, get) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", label(&p.name), get(p));
        }
    }
    out
}
