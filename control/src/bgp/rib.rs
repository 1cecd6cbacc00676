//! What we advertise to one peer (its Adj-RIB-Out), and UPDATE packing.
//!
//! Pure: the speaker computes the wanted table from the pool's pod blocks and the
//! session's addresses, [`AdjRibOut::sync`] returns the UPDATEs that move the peer
//! from what it has to what we want.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hybridway_dataplane::tables::Prefix;

use super::codec::{
    self, AfiSafi, AsSegment, Attribute, CodecOptions, MAX_MESSAGE_LEN, Message, Origin, Update,
    prefix_wire_len,
};
use super::config::RouteConfig;

/// Facts about one session that decide next hops and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerContext {
    pub local_asn: u32,
    pub peer_asn: u32,
    /// Our end of the TCP session: the next hop for nodes the peer cannot reach.
    pub local_addr: IpAddr,
    /// The subnet we share with the peer (from our interface addresses), if any.
    pub shared_subnet: Option<Prefix>,
    pub families: Vec<AfiSafi>,
    pub codec: CodecOptions,
}

impl PeerContext {
    fn family_of(p: &Prefix) -> AfiSafi {
        if p.is_ipv4() {
            AfiSafi::IPV4_UNICAST
        } else {
            AfiSafi::IPV6_UNICAST
        }
    }

    /// The next hop for a node's block: the node itself when it is on the subnet we
    /// share with the peer (the switch forwards straight to it), else ourselves.
    pub fn next_hop(&self, route: &RouteConfig) -> IpAddr {
        let on_shared = self
            .shared_subnet
            .is_some_and(|s| s.contains(route.node_address));
        let same_family = route.node_address.is_ipv4() == route.pod_block.is_ipv4();
        if on_shared && same_family {
            return route.node_address;
        }
        match (route.pod_block.is_ipv4(), self.local_addr) {
            (true, a @ IpAddr::V4(_)) | (false, a @ IpAddr::V6(_)) => a,
            // An IPv6 block over an IPv4 session: IPv4-mapped next hop, as FRR does.
            (false, IpAddr::V4(a)) => IpAddr::V6(a.to_ipv6_mapped()),
            (true, IpAddr::V6(_)) => route.node_address,
        }
    }

    /// The table we want the peer to have.
    pub fn wanted(&self, routes: &[RouteConfig]) -> BTreeMap<Prefix, IpAddr> {
        routes
            .iter()
            .filter(|r| self.families.contains(&Self::family_of(&r.pod_block)))
            .map(|r| (r.pod_block, self.next_hop(r)))
            .collect()
    }

    fn base_attributes(&self) -> Vec<Attribute> {
        let ebgp = self.local_asn != self.peer_asn;
        let mut attrs = vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(if ebgp {
                vec![AsSegment::Sequence(vec![self.local_asn])]
            } else {
                vec![]
            }),
        ];
        if !ebgp {
            attrs.push(Attribute::LocalPref(100));
        }
        attrs
    }

    /// Announcements of `prefixes` via `next_hop`, packed into as few UPDATEs as the
    /// 4096-byte limit allows.
    pub fn announce(&self, next_hop: IpAddr, prefixes: &[Prefix]) -> Vec<Update> {
        let v4 = prefixes.first().is_some_and(Prefix::is_ipv4);
        let attrs = self.base_attributes();
        let template = |nlri: Vec<Prefix>, attrs: &[Attribute]| -> Update {
            let mut attrs = attrs.to_vec();
            match next_hop {
                IpAddr::V4(nh) if v4 => {
                    attrs.push(Attribute::NextHop(nh));
                    Update {
                        withdrawn: vec![],
                        attributes: attrs,
                        nlri,
                        treat_as_withdraw: None,
                    }
                }
                nh => {
                    attrs.push(Attribute::MpReach {
                        family: family(v4),
                        next_hops: vec![nh],
                        nlri,
                    });
                    Update {
                        withdrawn: vec![],
                        attributes: attrs,
                        nlri: vec![],
                        treat_as_withdraw: None,
                    }
                }
            }
        };
        // +1: MP_REACH may switch to a 2-byte length once it grows.
        let fixed = encoded_len(&template(vec![], &attrs), self.codec) + 1;
        let mut out = Vec::new();
        for chunk in pack(prefixes, MAX_MESSAGE_LEN.saturating_sub(fixed)) {
            out.push(template(chunk, &attrs));
        }
        out
    }

    /// Withdrawals of `prefixes` (one family), packed.
    pub fn withdraw(&self, prefixes: &[Prefix]) -> Vec<Update> {
        let v4 = prefixes.first().is_some_and(Prefix::is_ipv4);
        let make = |p: Vec<Prefix>| {
            if v4 {
                Update {
                    withdrawn: p,
                    ..Update::default()
                }
            } else {
                Update {
                    attributes: vec![Attribute::MpUnreach {
                        family: family(v4),
                        withdrawn: p,
                    }],
                    ..Update::default()
                }
            }
        };
        let fixed = encoded_len(&make(vec![]), self.codec) + 1;
        pack(prefixes, MAX_MESSAGE_LEN.saturating_sub(fixed))
            .into_iter()
            .map(make)
            .collect()
    }
}

fn family(v4: bool) -> AfiSafi {
    if v4 {
        AfiSafi::IPV4_UNICAST
    } else {
        AfiSafi::IPV6_UNICAST
    }
}

fn encoded_len(u: &Update, opts: CodecOptions) -> usize {
    codec::encode_to_vec(&Message::Update(u.clone()), opts)
        .map(|b| b.len())
        .unwrap_or(MAX_MESSAGE_LEN)
}

/// Split prefixes into chunks whose NLRI encoding fits `budget` bytes.
fn pack(prefixes: &[Prefix], budget: usize) -> Vec<Vec<Prefix>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0;
    for p in prefixes {
        let n = prefix_wire_len(p);
        if used + n > budget && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        cur.push(*p);
        used += n;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The routes one peer has from us.
#[derive(Debug, Default, Clone)]
pub struct AdjRibOut {
    advertised: BTreeMap<Prefix, IpAddr>,
}

impl AdjRibOut {
    pub fn len(&self) -> usize {
        self.advertised.len()
    }
    pub fn is_empty(&self) -> bool {
        self.advertised.is_empty()
    }
    pub fn clear(&mut self) {
        self.advertised.clear();
    }

    /// The UPDATEs that turn what the peer has into `wanted`, and the new state.
    pub fn sync(&mut self, ctx: &PeerContext, wanted: &BTreeMap<Prefix, IpAddr>) -> Vec<Update> {
        let mut out = Vec::new();
        for v4 in [true, false] {
            let gone: Vec<Prefix> = self
                .advertised
                .keys()
                .filter(|p| p.is_ipv4() == v4 && !wanted.contains_key(p))
                .copied()
                .collect();
            if !gone.is_empty() {
                out.extend(ctx.withdraw(&gone));
            }
        }
        // Group new or changed routes by next hop: one attribute set per UPDATE.
        let mut by_hop: BTreeMap<(bool, IpAddr), Vec<Prefix>> = BTreeMap::new();
        for (p, nh) in wanted {
            if self.advertised.get(p) != Some(nh) {
                by_hop.entry((p.is_ipv4(), *nh)).or_default().push(*p);
            }
        }
        for ((_, nh), prefixes) in by_hop {
            out.extend(ctx.announce(nh, &prefixes));
        }
        self.advertised = wanted.clone();
        out
    }

    /// Every advertised route of `family`, for a ROUTE-REFRESH.
    pub fn refresh(&self, ctx: &PeerContext, fam: AfiSafi) -> Vec<Update> {
        let mut by_hop: BTreeMap<IpAddr, Vec<Prefix>> = BTreeMap::new();
        for (p, nh) in &self.advertised {
            if PeerContext::family_of(p) == fam {
                by_hop.entry(*nh).or_default().push(*p);
            }
        }
        by_hop
            .into_iter()
            .flat_map(|(nh, ps)| ctx.announce(nh, &ps))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ctx() -> PeerContext {
        PeerContext {
            local_asn: 65010,
            peer_asn: 65001,
            local_addr: "198.18.0.10".parse().unwrap(),
            shared_subnet: Some("198.18.0.0/24".parse().unwrap()),
            families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
            codec: CodecOptions::default(),
        }
    }

    fn route(node: &str, addr: &str, block: &str) -> RouteConfig {
        RouteConfig {
            node: node.into(),
            node_address: addr.parse().unwrap(),
            pod_block: block.parse().unwrap(),
        }
    }

    #[test]
    fn next_hop_is_node_on_shared_subnet_else_us() {
        let c = ctx();
        assert_eq!(
            c.next_hop(&route("a", "198.18.0.20", "198.19.1.0/24")),
            "198.18.0.20".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.next_hop(&route("b", "198.18.7.20", "198.19.2.0/24")),
            "198.18.0.10".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.next_hop(&route("c", "198.18.7.20", "2001:db8:1::/64")),
            "::ffff:198.18.0.10".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn sync_announces_withdraws_and_packs() {
        let c = ctx();
        let mut rib = AdjRibOut::default();
        let routes: Vec<RouteConfig> = (0..3000u32)
            .map(|i| {
                route(
                    "n",
                    "198.18.0.20",
                    &format!("198.19.{}.{}/32", i / 256, i % 256),
                )
            })
            .collect();
        let ups = rib.sync(&c, &c.wanted(&routes));
        assert!(ups.len() >= 3, "3000 /32s need several UPDATEs");
        let mut total = 0;
        for u in &ups {
            let bytes = codec::encode_to_vec(&Message::Update(u.clone()), c.codec).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            total += u.nlri.len();
        }
        assert_eq!(total, 3000);
        assert_eq!(rib.len(), 3000);
        // Nothing changed: nothing to send.
        assert!(rib.sync(&c, &c.wanted(&routes)).is_empty());
        // Remove one: one withdrawal.
        let ups = rib.sync(&c, &c.wanted(&routes[1..]));
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].withdrawn, vec![routes[0].pod_block]);
    }
}
