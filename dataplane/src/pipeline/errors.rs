//! When the pipeline answers a packet with an ICMP error instead of forwarding it:
//! whether one may be sent (never about an error, rate limited per worker), from
//! which address and MAC. The bytes are built by [`super::icmp`].

use std::net::{Ipv4Addr, Ipv6Addr};

use super::icmp::{self, IcmpError};
use super::{Pipeline, Step};
use crate::frame::{Frame, PortId};
use crate::tables::NodeSettings;
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::MacAddr;
use crate::wire::classify::{V4, V6};

impl Pipeline {
    /// "Fragmentation needed" for a DF packet over `mtu`. Out of line: every routed
    /// packet passes the size check that leads here, almost none fail it.
    #[cold]
    #[inline(never)]
    pub(super) fn too_big_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        mtu: u16,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        if !ip.df {
            // The dataplane does not fragment; senders that allow it still get no
            // error, as RFC 1191 only covers DF packets.
            return Err(DropReason::FragmentationNeeded);
        }
        let src = if node.is_uplink_side(frame.meta.in_port) {
            node.node_addr
        } else {
            node.gateway_v4
        };
        self.icmp_v4(frame, ip, IcmpError::TooBig { mtu }, src, node, now)
    }

    /// Replaces the frame with an ICMP error about `ip`, or drops it when no error may
    /// be sent. A client's packet the Service stage translated is put back as the
    /// client sent it first, so the error quotes it and goes to the client.
    pub(super) fn icmp_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        kind: IcmpError,
        src: Ipv4Addr,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        if !icmp::may_send_v4(ip) {
            return Err(kind.drop_reason());
        }
        if !self.icmp_limit.allow(now) {
            return Err(DropReason::IcmpRateLimited);
        }
        let untranslated = if self.services.len() == 0 {
            None
        } else {
            self.untranslate_for_error(frame, ip, now)?
        };
        let ip = untranslated.as_ref().unwrap_or(ip);
        let mac = port_mac(frame.meta.in_port, node);
        let id = self.next_ip_id();
        icmp::build_v4(frame, ip, kind, src, mac, id)?;
        Ok(Verdict::Reply)
    }

    /// Replaces the frame with an ICMPv6 error from `src` about `ip`, or drops it when
    /// no error may be sent (or there is no address to send it from).
    pub(super) fn icmp_v6(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V6,
        kind: IcmpError,
        src: Option<Ipv6Addr>,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        let Some(src) = src else {
            return Err(kind.drop_reason());
        };
        if !icmp::may_send_v6(ip) {
            return Err(kind.drop_reason());
        }
        if !self.icmp_limit.allow(now) {
            return Err(DropReason::IcmpRateLimited);
        }
        let mac = port_mac(frame.meta.in_port, node);
        icmp::build_v6(frame, ip, kind, src, mac)?;
        Ok(Verdict::Reply)
    }
}

/// The MAC the dataplane speaks with on `port`.
pub(super) fn port_mac(port: PortId, node: &NodeSettings) -> MacAddr {
    if node.is_uplink_side(port) {
        node.uplink_mac
    } else {
        node.gateway_mac
    }
}
