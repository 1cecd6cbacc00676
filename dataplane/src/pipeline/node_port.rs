//! NodePorts: a TCP or UDP packet from outside to the node's address on a Service's
//! NodePort is sent to one of the Service's endpoints (on this node, on another
//! node over VXLAN or the underlay, or a cloud pod), and the endpoint's replies leave
//! from the node's address and NodePort again. kube-proxy's `KUBE-NODEPORTS`, done
//! here because on AF_XDP the steering program hands these packets to the dataplane
//! before netfilter could see them.
//!
//! Decisions worth knowing:
//! - **`externalTrafficPolicy: Cluster`** masquerades every flow, as kube-proxy's
//!   `KUBE-EXT-*` chain does (`KUBE-MARK-MASQ`): the endpoint sees the node's
//!   **gateway address** (its own address in its pod block), not the client's. The
//!   gateway rather than the uplink address because replies to it are routed like
//!   any pod traffic, over VXLAN or the underlay back into this node's dataplane on
//!   both backends; replies to the uplink address from a remote endpoint would have
//!   to be steered off the NIC by port. kube-proxy with flannel does the same: the
//!   masquerade address is that of the interface towards the endpoint (`cni0`,
//!   `flannel.1`), the node's address in the pod network. The client's port is kept
//!   unless another flow to the same endpoint already uses it; then a nearby free
//!   one is taken.
//! - **`externalTrafficPolicy: Local`** keeps the client's address; only endpoints on
//!   this node serve, none local drops the packet (`service_no_local_endpoints`, as
//!   kube-proxy's "has no local endpoints" drop), a Service with no endpoint at all
//!   answers ICMP port unreachable from the node.
//! - **Which endpoint**: by the flow hash; with `sessionAffinity: ClientIP` by a hash
//!   of the client address alone (as IPVS's `sh` scheduler), so a client stays on one
//!   endpoint as long as the endpoint list does not change, without state shared
//!   between workers. The affinity timeout is therefore not applied to NodePorts.
//! - **Which worker keeps the flow** (see `service`): the one that owns the address
//!   replies are sent to: the client's with `Local`, the endpoint's with `Cluster`
//!   (its replies go to the gateway, where the endpoint is what tells flows apart).
//!   The endpoint choice needs no per-worker state, so any worker computes it and
//!   hands the packet to the owner untouched.
//! - Translated replies leave with the node's address as their source and are never
//!   masqueraded again (from_pod's `route_v4`).
//! - Not served here: fragments, ICMP errors about NodePort flows, endpoints at the
//!   node's own address (host-network pods on this node), endpoints outside the
//!   cluster (they would need a second, source NAT), NodePorts on other addresses
//!   than the node's uplink address.

use super::service::{ServiceStep, client_hash, client_owner, flow_key, new_flow, pick, translate};
use super::{Action, Pipeline};
use crate::frame::Frame;
use crate::tables::services::{Origin, Selection};
use crate::tables::{NatBinding, RouteTarget, Tables};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::classify::{L4, V4};

/// How many ports after the client's a masqueraded NodePort flow tries before it
/// gives up on a busy endpoint (`service_flow_conflict`).
const MASQUERADE_PORT_TRIES: u16 = 16;

impl Pipeline {
    /// A packet to the node's address: the NodePort path when it is for one, `None`
    /// for everything else (VXLAN, NAT replies, the host's own traffic).
    pub(super) fn node_port(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Option<Action>, DropReason> {
        let services = &tables.services;
        if !services.has_node_ports() || ip.frag_offset != 0 {
            return Ok(None);
        }
        let Some(l4) = ip.l4 else {
            return Ok(None);
        };
        let Some(key) = flow_key(ip, &l4) else {
            return Ok(None);
        };
        let Some(fe) = services.node_port(key.proto, key.dst_port) else {
            return Ok(None);
        };
        if let Some(flow) = self.existing_flow(&key, l4.tcp_flags, tables, now) {
            return self
                .forward_translated(frame, ip, &l4, &flow, tables, now)
                .map(Some);
        }
        let list = match services.select(fe, Origin::External) {
            Selection::Endpoints(list) => list,
            Selection::Reject => {
                return match self.reject(frame, ip, tables, now)? {
                    ServiceStep::Done(v) => Ok(Some(Action::Done(v))),
                    ServiceStep::Continue(_) | ServiceStep::Pass => {
                        Err(DropReason::ServiceNoEndpoints)
                    }
                };
            }
            Selection::Drop => return Err(DropReason::ServiceNoLocalEndpoints),
        };
        let hash = if fe.affinity.is_some() {
            client_hash(ip.src)
        } else {
            ip.flow_hash()
        };
        let backend = pick(list, hash).ok_or(DropReason::ServiceNoEndpoints)?;
        if backend.addr == tables.node.node_addr {
            // A host-network endpoint on this node: the kernel's to serve.
            return Err(DropReason::Unsupported);
        }
        if matches!(
            tables.routes.lookup_v4(backend.addr),
            None | Some(RouteTarget::Outside { .. })
        ) {
            // An endpoint outside the cluster (an EndpointSlice naming an external
            // address): the translated packet would need source NAT too, owned by
            // another worker than this flow's, and would be handed off translated.
            return Err(DropReason::Unsupported);
        }
        let masquerade = !fe.external_local;
        let workers = self.snat_config.workers;
        if workers > 1 {
            let replies_to = if masquerade { backend.addr } else { key.src };
            let owner = client_owner(workers, replies_to);
            if owner != self.worker {
                return Ok(Some(Action::Done(Verdict::HandOff { worker: owner })));
            }
        }
        let timeouts = self.services.timeouts();
        let gateway = tables.node.gateway_v4;
        let flow = if masquerade {
            let Some(flow) = (0..MASQUERADE_PORT_TRIES)
                .filter_map(|i| masquerade_port(key.src_port, i))
                .map(|port| {
                    let to = NatBinding {
                        addr: gateway,
                        port,
                    };
                    new_flow(
                        &key,
                        &l4,
                        fe.key,
                        Origin::External,
                        backend,
                        Some(to),
                        tables,
                        now,
                        timeouts,
                    )
                })
                .find(|f| !self.services.reply_taken(&f.reply, &key, now))
            else {
                return Err(DropReason::ServiceFlowConflict);
            };
            flow
        } else {
            let flow = new_flow(
                &key,
                &l4,
                fe.key,
                Origin::External,
                backend,
                None,
                tables,
                now,
                timeouts,
            );
            if self.services.reply_taken(&flow.reply, &key, now) {
                return Err(DropReason::ServiceFlowConflict);
            }
            flow
        };
        if !self.services.has_room(now) || !self.services.insert(flow) {
            return Err(DropReason::ConntrackFull);
        }
        self.forward_translated(frame, ip, &l4, &flow, tables, now)
            .map(Some)
    }

    /// Translates a NodePort packet for its flow and routes it to the endpoint.
    fn forward_translated(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        l4: &L4,
        flow: &super::service::Flow,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let out = match translate(frame, ip, l4, flow)? {
            ServiceStep::Continue(out) => out,
            ServiceStep::Pass => *ip,
            ServiceStep::Done(v) => return Ok(Action::Done(v)),
        };
        self.route_translated(frame, &out, tables, now)
    }

    /// Routes a packet the Service stage rewrote (a NodePort packet to its endpoint,
    /// an endpoint's reply to its NodePort client): like a pod's packet, without the
    /// pod's checks; an expiring TTL drops it (no ICMP error from a translated flow).
    pub(super) fn route_translated(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let target = *tables.routes.lookup_v4(ip.dst).ok_or(DropReason::NoRoute)?;
        self.route_v4(frame, ip, target, tables, now)
    }

    /// A packet to the gateway address from the uplink side (an underlay endpoint, or
    /// decapsulated VXLAN): the reply to a masqueraded NodePort flow, routed on to its
    /// client. `None` when it is no such reply.
    pub(super) fn gateway_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
        may_hand_off: bool,
    ) -> Result<Option<Action>, DropReason> {
        match self.service_reply(frame, ip, tables, now, may_hand_off)? {
            ServiceStep::Done(v) => Ok(Some(Action::Done(v))),
            ServiceStep::Continue(out) if out.dst != ip.dst => {
                self.route_translated(frame, &out, tables, now).map(Some)
            }
            ServiceStep::Continue(_) | ServiceStep::Pass => Ok(None),
        }
    }
}

impl Pipeline {
    /// The host's own packet to a ClusterIP, from its pod-network address: sent to
    /// an endpoint as a pod's would be (`Origin::Pod`: the internal traffic policy
    /// applies, as kube-proxy applies it to the node's traffic), then routed on.
    pub(super) fn host_to_cluster_ip(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        match self.service_from_pod(frame, ip, tables, now)? {
            ServiceStep::Done(v) => Ok(Action::Done(v)),
            ServiceStep::Continue(out) if out.dst != ip.dst => {
                self.route_translated(frame, &out, tables, now)
            }
            // A ClusterIP-range address that is no ClusterIP: nothing routes it.
            ServiceStep::Continue(_) | ServiceStep::Pass => Err(DropReason::NoRoute),
        }
    }

    /// A packet for the host's pod-network address: a Service reply gets its
    /// ClusterIP back first. `may_hand_off`: the frame is still as it arrived.
    pub(super) fn hand_to_host(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
        may_hand_off: bool,
    ) -> Result<Action, DropReason> {
        match self.service_reply(frame, ip, tables, now, may_hand_off)? {
            ServiceStep::Done(v) => Ok(Action::Done(v)),
            ServiceStep::Continue(_) | ServiceStep::Pass => Ok(Action::Done(Verdict::ToHost)),
        }
    }
}

/// The `i`-th port tried for a masqueraded flow: the client's first, then the next
/// ones (above the well-known ports, wrapping).
fn masquerade_port(client_port: u16, i: u16) -> Option<u16> {
    let p = client_port.wrapping_add(i);
    (p >= 1024 || i == 0).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_ports_start_at_the_clients_and_skip_well_known_ones() {
        assert_eq!(masquerade_port(40000, 0), Some(40000));
        assert_eq!(masquerade_port(40000, 3), Some(40003));
        assert_eq!(masquerade_port(65535, 1), None);
        assert_eq!(masquerade_port(80, 0), Some(80));
    }
}
