//! Routes a peer sends us, installed in the kernel's main routing table where that
//! peer's `importRoutes` asks for it (off by default: a speaker that advertises pod
//! blocks has no business changing the node's routing on a switch's word).
//!
//! Installed with `proto bgp`, so `ip route show proto bgp` lists exactly these;
//! removed again when the peer withdraws them and when the session goes down. A
//! route whose AS_PATH already holds our AS is a loop (RFC 4271 §9.1.2): the switch
//! passing another speaker's pool blocks back to us; it is never installed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hybridway_dataplane::tables::Prefix;

use super::codec::{AsSegment, Attribute, Update};
use crate::agent::kernel_routes::ip;

/// What one peer's routes put in the kernel.
#[derive(Debug)]
pub struct KernelImport {
    local_asn: u32,
    installed: BTreeMap<Prefix, IpAddr>,
}

impl KernelImport {
    /// Imports for a speaker of AS `local_asn`.
    pub fn new(local_asn: u32) -> Self {
        KernelImport {
            local_asn,
            installed: BTreeMap::new(),
        }
    }

    /// Applies one UPDATE: withdrawals first, then announcements (RFC 4271 §9).
    /// A route the kernel refuses (a next hop it cannot reach) is logged and
    /// skipped; the session is not at fault.
    pub fn apply(&mut self, peer: &str, update: &Update) {
        for p in update.withdrawn_all() {
            self.remove(peer, p);
        }
        if has_asn(update, self.local_asn) {
            // A loop: what we hold from before stays withdrawn.
            for p in update.announced() {
                self.remove(peer, p);
            }
            return;
        }
        for (p, nh) in announced_with_next_hop(update) {
            if self.installed.get(&p) == Some(&nh) {
                continue;
            }
            let (dst, via) = (p.to_string(), nh.to_string());
            match ip(&["route", "replace", &dst, "via", &via, "proto", "bgp"]) {
                Ok(_) => {
                    tracing::info!(peer, prefix = %p, next_hop = %nh, "route imported");
                    self.installed.insert(p, nh);
                }
                Err(e) => tracing::warn!(peer, prefix = %p, error = %e, "route not imported"),
            }
        }
    }

    /// How many routes are installed.
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// The session went down: its routes go too.
    pub fn clear(&mut self, peer: &str) {
        let all: Vec<Prefix> = self.installed.keys().copied().collect();
        for p in &all {
            self.remove(peer, p);
        }
    }

    fn remove(&mut self, peer: &str, p: &Prefix) {
        let Some(nh) = self.installed.remove(p) else {
            return;
        };
        let (dst, via) = (p.to_string(), nh.to_string());
        if let Err(e) = ip(&["route", "del", &dst, "via", &via, "proto", "bgp"]) {
            tracing::warn!(peer, prefix = %p, error = %e, "imported route already gone");
        }
    }
}

/// Each announced prefix with its next hop: NEXT_HOP for the base IPv4 NLRI, the
/// first (global) next hop of MP_REACH for its NLRI.
fn announced_with_next_hop(update: &Update) -> Vec<(Prefix, IpAddr)> {
    let mut out = Vec::new();
    for a in &update.attributes {
        match a {
            Attribute::NextHop(nh) => {
                out.extend(update.nlri.iter().map(|p| (*p, IpAddr::V4(*nh))));
            }
            Attribute::MpReach {
                next_hops, nlri, ..
            } => {
                if let Some(nh) = next_hops.first() {
                    out.extend(nlri.iter().map(|p| (*p, *nh)));
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether the UPDATE's AS_PATH holds `asn`.
fn has_asn(update: &Update, asn: u32) -> bool {
    update.attributes.iter().any(|a| match a {
        Attribute::AsPath(segments) => segments.iter().any(|s| match s {
            AsSegment::Set(v)
            | AsSegment::Sequence(v)
            | AsSegment::ConfedSequence(v)
            | AsSegment::ConfedSet(v) => v.contains(&asn),
        }),
        _ => false,
    })
}
