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
//!   unless another flow to the same endpoint already uses it (or, with several
//!   workers, the port is not one of this worker's: see `service`); then a nearby
//!   free one is taken.
//! - **`externalTrafficPolicy: Local`** keeps the client's address; only endpoints on
//!   this node serve, none local drops the packet (`service_no_local_endpoints`, as
//!   kube-proxy's "has no local endpoints" drop), a Service with no endpoint at all
//!   answers ICMP port unreachable from the node.
//! - **Which endpoint**: by the flow hash; with `sessionAffinity: ClientIP` by a hash
//!   of the client address alone (as IPVS's `sh` scheduler), so a client stays on one
//!   endpoint as long as the endpoint list does not change, without state shared
//!   between workers. The affinity timeout is therefore not applied to NodePorts.
//! - **Which worker keeps the flow** (see `service`): the one that owns the
//!   client, here as the SNAT shard owns flows to that address and port (an
//!   endpoint's packet to the client may also be its own masqueraded flow); a
//!   client's packet that arrived elsewhere is handed off untouched before the flow
//!   is looked up, so a flow is found whatever its endpoint became since. Replies
//!   find it by the client's address and port with `Local`, by the gateway port
//!   the owner chose with `Cluster` (`gateway_reply`, also for replies that came
//!   decapsulated from VXLAN).
//! - Translated replies leave with the node's address as their source and are never
//!   masqueraded again (from_pod's `route_v4`).
//! - **A reply goes back to the MAC the client's packets came from**, kept with the
//!   flow (`Flow::client_mac`, moved when they start coming from another): the
//!   client's own on the uplink's subnet, else the router's that brought them. A
//!   reply needs no route and no ARP: a node without a gateway (no `uplink.gateway`,
//!   no default route in the kernel: an isolated segment) answers the clients of its
//!   segment as kube-proxy's kernel would, on-link, and with several routers on the
//!   segment the reply returns through the one the request came through (stateful
//!   firewalls on the path see both directions), not the default route's. The
//!   price: 8 bytes per Service flow (72 → 80, ClusterIP flows carry a zero MAC) and
//!   a 6-byte compare per client packet. Rejected: an on-link route for the uplink's
//!   subnet, which needs neighbour resolution the dataplane does not do (the host
//!   owns ARP on the uplink; asking the kernel's table from the control thread
//!   leaves a new client's first replies unresolved, and entries go stale), and
//!   handing these replies to the kernel through the host port, which puts every
//!   reply packet (most of a NodePort's bytes) through a TUN write and the kernel's
//!   forwarding and netfilter, which never saw the flow's other direction. Only a
//!   client outside the cluster (no route, or the default route) is answered this
//!   way; one with a pod address (another node's pod reaching the node's address
//!   unmasqueraded) is routed into the overlay or underlay as before, where its node
//!   expects its pods' traffic. On the TUN backend the MAC is the one the TUN port
//!   synthesised, and the reply goes to the host port, where the kernel routes it
//!   (its on-link route included: `host_routing`'s rule 111).
//! - ICMP errors about NodePort flows (the endpoint's port unreachable, a router's
//!   or our own "fragmentation needed") reach the outside client as if from
//!   node:NodePort, found and handed off like the replies (see `service`).
//! - Not served here: fragments, endpoints at the node's own address (host-network
//!   pods on this node), endpoints outside the cluster (they would need a second,
//!   source NAT), NodePorts on other addresses than the node's uplink address.

use super::service::{ServiceStep, client_hash, flow_key, outside_client_owner, pick, translate};
use super::{Action, Pipeline};
use crate::frame::Frame;
use crate::tables::services::{Origin, Selection};
use crate::tables::{RouteTarget, Tables};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::classify::{L4, V4};
use crate::wire::{MacAddr, bytes};

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
        let workers = self.snat_config.workers;
        if workers > 1 {
            let owner = outside_client_owner(&self.snat_config, key.proto, key.src, key.src_port);
            if owner != self.worker {
                return Ok(Some(Action::Done(Verdict::HandOff { worker: owner })));
            }
        }
        let client_mac = bytes::rd_mac(frame.data(), 6).ok_or(DropReason::MalformedEthernet)?;
        if let Some(flow) = self.existing_flow(&key, l4.tcp_flags, tables, now) {
            if flow.client_mac != client_mac {
                self.services.follow_client(&key, client_mac);
            }
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
        let flow = self.track(
            &key,
            &l4,
            fe.key,
            (Origin::External, client_mac),
            backend,
            masquerade,
            tables,
            now,
        )?;
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

    /// A NodePort reply `out`, translated back for its flow's client: to a client
    /// outside the cluster (no route, or the default route) out of the uplink, to
    /// `client_mac` (see the module docs); a client in the cluster (a pod of another
    /// node reaching the node's address unmasqueraded) is routed as before.
    pub(super) fn node_port_reply(
        &mut self,
        frame: &mut Frame<'_>,
        out: V4,
        client_mac: MacAddr,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        if let Some(
            RouteTarget::LocalPod { .. }
            | RouteTarget::VxlanNode { .. }
            | RouteTarget::UnderlayNode { .. },
        ) = tables.routes.lookup_v4(out.dst)
        {
            return Ok(ServiceStep::Continue(out));
        }
        if out.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        match self.out_uplink_v4(frame, &out, client_mac, false, tables, now)? {
            Action::Done(v) => Ok(ServiceStep::Done(v)),
            // Only a masquerading call leaves work for the SNAT shard.
            Action::Masquerade(_) | Action::Unmasquerade(_) => Err(DropReason::Unsupported),
        }
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
    ) -> Result<Option<Action>, DropReason> {
        match self.service_reply(frame, ip, tables, now)? {
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
    /// ClusterIP back first.
    pub(super) fn hand_to_host(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        match self.service_reply(frame, ip, tables, now)? {
            ServiceStep::Done(v) => Ok(Action::Done(v)),
            ServiceStep::Continue(_) | ServiceStep::Pass => Ok(Action::Done(Verdict::ToHost)),
        }
    }
}
