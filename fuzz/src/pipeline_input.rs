//! How the `pipeline` target's input bytes become a frame, so that a mutation
//! reaches every path of the pipeline instead of dying in the parser: VXLAN from a
//! known VTEP, a pod's packet to a ClusterIP, a reply to a masqueraded or Service
//! flow, IPv6, ARP and neighbour solicitations, ICMP errors about tracked flows.
//!
//! Layout: byte 0 picks the node ([`Setup`]), byte 1 the [`Kind`] of frame; then
//! each field of that kind takes one byte (two or four where a value is free) in
//! the order the code below reads them, most picking from a short list whose first
//! entry is the usual value. Missing bytes read as zero, so a short input is a
//! well-formed packet of the usual kind; what is left after the fields is the
//! payload. One field can damage the built frame (cut it short, change a byte) so
//! the error paths stay reachable from well-formed starts; [`Kind::Raw`] sends the
//! bytes as they are.

use std::net::{Ipv4Addr, Ipv6Addr};

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::wire::MacAddr;

use crate::frames::{self, Ext6, Ip4, Ip6, L4, Vxlan};
use crate::pipeline_node::*;

/// Byte 0: which of [`all_tables`] (bits 0-1: SNAT, TUN backend) and which of the
/// two workers (bit 2).
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub tables: usize,
    pub worker: u16,
}

impl Setup {
    pub fn from_byte(b: u8) -> Setup {
        Setup {
            tables: usize::from(b & 3),
            worker: u16::from((b >> 2) & 1),
        }
    }

    pub fn byte(self) -> u8 {
        (self.tables as u8 & 3) | ((self.worker as u8 & 1) << 2)
    }
}

/// Byte 1: what kind of frame the rest builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The bytes as they are, from a port the first byte picks; a second byte may
    /// fix the IPv4 header checksums (outer and VXLAN inner).
    Raw = 0,
    PodV4,
    UplinkV4,
    VxlanV4,
    PodV6,
    UplinkV6,
    VxlanV6,
    Arp,
}

const KINDS: [Kind; 8] = [
    Kind::Raw,
    Kind::PodV4,
    Kind::UplinkV4,
    Kind::VxlanV4,
    Kind::PodV6,
    Kind::UplinkV6,
    Kind::VxlanV6,
    Kind::Arp,
];

/// A frame to process and the port it arrives on.
#[derive(Clone, Debug)]
pub struct Input {
    pub in_port: PortId,
    pub frame: Vec<u8>,
}

/// Reads fields off the input: missing bytes are zero.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        let i = usize::from(self.byte()) % list.len();
        list[i]
    }

    fn rest(self) -> Vec<u8> {
        self.0.to_vec()
    }
}

/// IPv4 addresses a field picks from (the last: four more bytes).
const V4: [Ipv4Addr; 18] = [
    OUTSIDE,
    REMOTE_POD,
    POD1,
    POD2,
    UNDERLAY_POD,
    VIP,
    VIP_NO_ENDPOINTS,
    VIP_LOCAL_POLICY,
    // In the service CIDR, above every ClusterIP.
    Ipv4Addr::new(198, 18, 240, 200),
    NODE,
    GATEWAY,
    REMOTE_NODE,
    UNDERLAY_NODE,
    Ipv4Addr::BROADCAST,
    Ipv4Addr::new(224, 0, 0, 251),
    Ipv4Addr::UNSPECIFIED,
    Ipv4Addr::new(198, 19, 2, 77),
    HOST_POD_ADDR,
];
pub const V4_POD1: u8 = 3;
pub const V4_POD2: u8 = 4;
pub const V4_VIP: u8 = 6;
pub const V4_NODE: u8 = 10;
pub const V4_GATEWAY: u8 = 11;
pub const V4_REMOTE_POD: u8 = 2;
pub const V4_HOST_POD_ADDR: u8 = V4.len() as u8;
pub const V4_RANDOM: u8 = V4.len() as u8 + 1;

/// Index 0 is `default`, then [`V4`], then a free address.
fn v4(f: &mut Fields<'_>, default: Ipv4Addr) -> Ipv4Addr {
    match usize::from(f.byte()) % (V4.len() + 2) {
        0 => default,
        i if i <= V4.len() => V4[i - 1],
        _ => Ipv4Addr::from_bits(f.u32()),
    }
}

const V6: [Ipv6Addr; 11] = [
    OUTSIDE6,
    REMOTE_POD6,
    POD1_6,
    POD2_6,
    UNDERLAY_POD6,
    GATEWAY6,
    NODE6,
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    // The gateway's solicited-node multicast address.
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1),
    Ipv6Addr::UNSPECIFIED,
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x77),
];
pub const V6_SOLICITED: u8 = 9;

fn v6(f: &mut Fields<'_>, default: Ipv6Addr) -> Ipv6Addr {
    match usize::from(f.byte()) % (V6.len() + 2) {
        0 => default,
        i if i <= V6.len() => V6[i - 1],
        _ => Ipv6Addr::from_bits(u128::from(f.u32()) << 96 | u128::from(f.u32())),
    }
}

/// Port field indices (0 is the kind's usual port).
pub const PORT_UDP: u8 = 2;
pub const PORT_TCP: u8 = 3;
pub const PORT_ENDPOINT: u8 = 4;
pub const PORT_NAT_TCP: u8 = 6;
pub const PORT_NAT_PING: u8 = 7;

fn port(f: &mut Fields<'_>, default: u16, s: &Seeded) -> u16 {
    let list = [
        default,
        SERVICE_PORT,
        SEED_UDP_PORT,
        SEED_TCP_PORT,
        ENDPOINT_PORT,
        s.nat_udp,
        s.nat_tcp,
        s.nat_ping,
        8472,
        NODE_PORT,
        80,
        0,
        NODE_PORT_LOCAL,
    ];
    match usize::from(f.byte()) % (list.len() + 1) {
        i if i < list.len() => list[i],
        _ => f.u16(),
    }
}

/// Transport field values.
pub const L4_UDP: u8 = 0;
pub const L4_TCP: u8 = 1;
pub const L4_ECHO_REQUEST: u8 = 2;
pub const L4_ECHO_REPLY: u8 = 3;
pub const L4_ERROR: u8 = 4;
pub const L4_NS: u8 = 7;

/// The usual ports of a transport header: (source, destination).
#[derive(Clone, Copy)]
struct Ports(u16, u16);

/// A transport header: which (byte), its ports, then what that protocol has.
fn l4(f: &mut Fields<'_>, usual: Ports, s: &Seeded, is_v6: bool) -> L4 {
    let which = f.byte() % 8;
    let sport = port(f, usual.0, s);
    let dport = port(f, usual.1, s);
    match which {
        L4_UDP => L4::Udp {
            sport,
            dport,
            checksum: true,
        },
        L4_TCP => L4::Tcp {
            sport,
            dport,
            flags: f.pick(&[0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x00, 0x3f]),
            seq: match f.byte() % 3 {
                0 => SEED_TCP_SEQ,
                1 => SEED_TCP_SEQ + 1,
                _ => f.u32(),
            },
            ack: match f.byte() % 3 {
                0 => SEED_TCP_SEQ + 1,
                1 => 0,
                _ => f.u32(),
            },
            window: f.pick(&[65_535, 0, 512]),
            window_scale: f.pick(&[None, Some(7), Some(14), Some(15)]),
        },
        L4_ECHO_REQUEST | L4_ECHO_REPLY => L4::Echo {
            request: which == L4_ECHO_REQUEST,
            id: sport,
        },
        L4_ERROR => error(f, s, is_v6),
        5 => L4::Other(f.byte()),
        6 => L4::Udp {
            sport,
            dport,
            checksum: false,
        },
        _ if is_v6 => L4::NeighborSolicit {
            target: v6(f, GATEWAY6),
        },
        _ => L4::Other(47),
    }
}

/// An ICMP error about a packet the node sent (by default the seeded masqueraded
/// UDP flow's packet to the outside), cut where a field says.
fn error(f: &mut Fields<'_>, s: &Seeded, is_v6: bool) -> L4 {
    let (kind, code) = if is_v6 {
        (f.pick(&[1, 3, 2, 4, 200]), f.byte() % 5)
    } else {
        (f.pick(&[3, 11, 12, 4, 5, 200]), f.byte() % 16)
    };
    let proto = f.byte() % 3;
    let quoted_l4 = match proto {
        0 => L4::Udp {
            sport: port(f, s.nat_udp, s),
            dport: port(f, SERVICE_PORT, s),
            checksum: true,
        },
        1 => L4::Tcp {
            sport: port(f, s.nat_tcp, s),
            dport: port(f, SERVICE_PORT, s),
            flags: 0x02,
            seq: SEED_TCP_SEQ,
            ack: 0,
            window: 65_535,
            window_scale: None,
        },
        _ => L4::Echo {
            request: true,
            id: port(f, s.nat_ping, s),
        },
    };
    let mut quote = if is_v6 {
        frames::ipv6(&Ip6 {
            src: v6(f, OUTSIDE6),
            dst: v6(f, POD1_6),
            l4: quoted_l4,
            ..Ip6::default()
        })
    } else {
        frames::ipv4(&Ip4 {
            src: v4(f, NODE),
            dst: v4(f, OUTSIDE),
            l4: quoted_l4,
            payload: vec![0x5a; 16],
            ..Ip4::default()
        })
    };
    let cut = match f.byte() % 5 {
        0 => 28,
        1 => quote.len(),
        2 => 20,
        3 => 24,
        _ => usize::from(f.byte()),
    };
    quote.truncate(cut);
    L4::Error { kind, code, quote }
}

/// Zero bytes added to the payload: sizes around the uplink MTU (1500) and the
/// overlay MTU (1450).
const PAD: [usize; 8] = [0, 0, 0, 1400, 1430, 1451, 1472, 1480];

/// The IPv4 packet a kind's remaining fields describe (`src` and `dst` are the
/// usual addresses).
fn ipv4(f: &mut Fields<'_>, src: Ipv4Addr, dst: Ipv4Addr, ports: Ports, s: &Seeded) -> Vec<u8> {
    let dst = v4(f, dst);
    let l4 = l4(f, ports, s, false);
    let src = v4(f, src);
    let ttl = f.pick(&[64, 1, 0, 2, 255]);
    let flags_frag = match f.byte() % 7 {
        0 => 0x4000,
        1 => 0,
        2 => 0x2000,
        3 => 0x0001,
        4 => 0x2001,
        5 => 0x8000,
        _ => f.u16(),
    };
    let option_words = f.pick(&[0, 0, 0, 1, 3, 10]);
    let tos = f.byte();
    let mut payload = vec![0; f.pick(&PAD)];
    let damage = f.byte();
    payload.extend(f.0);
    let mut p = frames::ipv4(&Ip4 {
        src,
        dst,
        ttl,
        tos,
        id: 1,
        flags_frag,
        option_words,
        l4,
        payload,
    });
    damaged(&mut p, damage);
    p
}

fn ipv6(f: &mut Fields<'_>, src: Ipv6Addr, dst: Ipv6Addr, ports: Ports, s: &Seeded) -> Vec<u8> {
    let dst = v6(f, dst);
    let l4 = l4(f, ports, s, true);
    let src = v6(f, src);
    let hop_limit = f.pick(&[64, 1, 0, 255]);
    let ext = match f.byte() % 6 {
        0 | 1 => Ext6::None,
        2 => Ext6::HopByHop,
        3 => Ext6::Fragment {
            offset: 0,
            more: true,
        },
        4 => Ext6::Fragment {
            offset: 1,
            more: false,
        },
        _ => Ext6::Fragment {
            offset: f.u16() >> 3,
            more: f.byte() & 1 == 1,
        },
    };
    let traffic_class = f.byte();
    let mut payload = vec![0; f.pick(&PAD)];
    let damage = f.byte();
    payload.extend(f.0);
    let mut p = frames::ipv6(&Ip6 {
        src,
        dst,
        hop_limit,
        traffic_class,
        ext,
        l4,
        payload,
    });
    damaged(&mut p, damage);
    p
}

/// Damage `d` done to a packet: 0 none; 1-63 cut to that many 64ths of its length;
/// 64-127 one byte (the low six bits say which, counted from the start) xored
/// with 0xa5; above, none.
fn damaged(p: &mut Vec<u8>, d: u8) {
    match d {
        1..=63 => p.truncate(p.len() * usize::from(d) / 64),
        64..=127 => {
            if let Some(b) = p.get_mut(usize::from(d & 0x3f)) {
                *b ^= 0xa5;
            }
        }
        _ => {}
    }
}

fn uplink_port(f: &mut Fields<'_>) -> PortId {
    f.pick(&[UPLINK, HOST])
}

fn uplink_mac(f: &mut Fields<'_>) -> MacAddr {
    f.pick(&[
        UPLINK_MAC,
        MacAddr([0xff; 6]),
        MacAddr([2, 0, 0, 0, 0, 0x77]),
    ])
}

/// The outer headers of a VXLAN frame (by default from the known VTEP to us).
fn vxlan_outer(f: &mut Fields<'_>) -> Vxlan {
    Vxlan {
        src: f.pick(&[
            REMOTE_NODE,
            UNDERLAY_NODE,
            OUTSIDE,
            Ipv4Addr::new(198, 18, 0, 9),
        ]),
        dst: f.pick(&[NODE, REMOTE_NODE]),
        dport: f.pick(&[8472, 4789]),
        flags: f.pick(&[0x08, 0x00, 0x0c, 0x88]),
        vni: f.pick(&[1, 2, 0x00ff_ffff]),
        udp_checksum: f.byte() & 1 == 1,
    }
}

/// The frame `rest` (the input after byte 0) describes, for a pipeline seeded as `s`.
pub fn decode(rest: &[u8], s: &Seeded) -> Input {
    let mut f = Fields(rest);
    let kind = KINDS[usize::from(f.byte()) % KINDS.len()];
    let pod_ports = Ports(SEED_UDP_PORT, SERVICE_PORT);
    // A reply to the seeded masqueraded UDP flow.
    let reply_ports = Ports(SERVICE_PORT, s.nat_udp);
    match kind {
        Kind::Raw => {
            let in_port = f.pick(&[UPLINK, POD_PORTS[0], POD_PORTS[1], HOST]);
            let fix = f.byte() & 1 == 1;
            let mut frame = f.rest();
            if fix {
                fix_ipv4_checksum(&mut frame, 14);
                fix_ipv4_checksum(&mut frame, 14 + 50);
            }
            Input { in_port, frame }
        }
        Kind::PodV4 | Kind::PodV6 => {
            let pod = usize::from(f.byte() & 1);
            let dst_mac = f.pick(&[GATEWAY_MAC, MacAddr([0xff; 6]), POD_MACS[1]]);
            let packet = if kind == Kind::PodV4 {
                ipv4(&mut f, [POD1, POD2][pod], OUTSIDE, pod_ports, s)
            } else {
                ipv6(&mut f, [POD1_6, POD2_6][pod], REMOTE_POD6, pod_ports, s)
            };
            Input {
                in_port: POD_PORTS[pod],
                frame: frames::ethernet(dst_mac, POD_MACS[pod], &packet),
            }
        }
        Kind::UplinkV4 | Kind::UplinkV6 => {
            let in_port = uplink_port(&mut f);
            let dst_mac = uplink_mac(&mut f);
            let packet = if kind == Kind::UplinkV4 {
                ipv4(&mut f, OUTSIDE, NODE, reply_ports, s)
            } else {
                ipv6(&mut f, OUTSIDE6, POD1_6, reply_ports, s)
            };
            Input {
                in_port,
                frame: frames::ethernet(dst_mac, ROUTER_MAC, &packet),
            }
        }
        Kind::VxlanV4 | Kind::VxlanV6 => {
            let in_port = uplink_port(&mut f);
            let outer = vxlan_outer(&mut f);
            let inner_dst = f.pick(&[VTEP_MAC, MacAddr([2, 0, 0, 0, 0x0f, 9])]);
            let remote_ports = Ports(SEED_UDP_PORT + 1, SERVICE_PORT);
            let inner = if kind == Kind::VxlanV4 {
                ipv4(&mut f, REMOTE_POD, POD1, remote_ports, s)
            } else {
                ipv6(&mut f, REMOTE_POD6, POD1_6, remote_ports, s)
            };
            let inner = frames::ethernet(inner_dst, REMOTE_VTEP_MAC, &inner);
            let packet = frames::vxlan(&outer, &inner);
            Input {
                in_port,
                frame: frames::ethernet(UPLINK_MAC, REMOTE_NODE_MAC, &packet),
            }
        }
        Kind::Arp => {
            let in_port = f.pick(&[POD_PORTS[0], POD_PORTS[1], UPLINK]);
            let op = f.pick(&[1, 2, 3]);
            let target = v4(&mut f, GATEWAY);
            let sender = v4(&mut f, POD1);
            let mut frame = frames::arp_request(POD_MACS[0], sender, target, op);
            damaged(&mut frame, f.byte());
            Input { in_port, frame }
        }
    }
}

/// Lets raw inputs past header checksum validation.
fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let Some(&ver_ihl) = f.get(l3) else { return };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return;
    }
    let Some(header) = f.get_mut(l3..l3 + ihl) else {
        return;
    };
    header[10] = 0;
    header[11] = 0;
    let c = hybridway_dataplane::wire::checksum::checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Seed inputs, one per path worth starting from (named for the file each goes
/// to): every destination a pod's IPv4 or IPv6 packet may have over UDP, TCP and
/// ping; replies to the seeded masqueraded and Service flows from a pod, the uplink
/// and VXLAN; ICMP errors about them; TTL expiry, oversized and fragmented packets;
/// neighbour resolution. For each node set-up of worker 0, and some for worker 1.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for worker in 0..2u16 {
        for tables in 0..4 {
            let setup = Setup { tables, worker }.byte();
            let mut add = |name: &str, kind: Kind, fields: &[u8]| {
                let mut bytes = vec![setup, kind as u8];
                bytes.extend_from_slice(fields);
                out.push((format!("{setup}-{name}"), bytes));
            };
            paths(&mut add, worker == 0);
        }
    }
    out
}

/// The seeds of one set-up (`all`: every destination, else the replies and errors).
fn paths(add: &mut impl FnMut(&str, Kind, &[u8]), all: bool) {
    use Kind::*;
    // PodV4 fields: pod, destination MAC, then [`ipv4`]'s: destination, transport,
    // source port, destination port (then TCP's or the error's own), source, TTL,
    // fragment, options, TOS, padding, damage.
    if all {
        for dst in 0..=V4_RANDOM {
            for l4 in [L4_UDP, L4_TCP, L4_ECHO_REQUEST] {
                add(&format!("pod4-dst{dst}-l4{l4}"), PodV4, &[0, 0, dst, l4]);
            }
        }
        for dst in 0..=V6.len() as u8 + 1 {
            for l4 in [L4_UDP, L4_TCP, L4_ECHO_REQUEST] {
                add(&format!("pod6-dst{dst}-l4{l4}"), PodV6, &[0, 0, dst, l4]);
            }
        }
    }
    let (udp, tcp) = (PORT_UDP, PORT_TCP);
    // Replies from the Service's endpoints: POD2, POD1 itself (hairpin, to the
    // gateway), through the uplink from the outside and over VXLAN from REMOTE_POD.
    let ep = PORT_ENDPOINT;
    add(
        "svc-reply-pod2-udp",
        PodV4,
        &[1, 0, V4_POD1, L4_UDP, ep, udp],
    );
    add(
        "svc-reply-pod2-synack",
        PodV4,
        &[1, 0, V4_POD1, L4_TCP, ep, tcp, 1],
    );
    add(
        "svc-reply-hairpin",
        PodV4,
        &[0, 0, V4_GATEWAY, L4_UDP, ep, udp],
    );
    add("svc-affinity-new-flow", PodV4, &[0, 0, V4_VIP, L4_UDP, 10]);
    add(
        "svc-reply-uplink",
        UplinkV4,
        &[0, 0, V4_POD1, L4_UDP, ep, udp],
    );
    add(
        "svc-reply-vxlan",
        VxlanV4,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, L4_UDP, ep, udp],
    );
    // Decapsulated replies whose flow the other worker may keep: to the gateway (a
    // masqueraded flow, owned by its port) and to the host's pod-network address.
    let (gw, host) = (V4_GATEWAY, V4_HOST_POD_ADDR);
    add(
        "svc-reply-vxlan-gateway",
        VxlanV4,
        &[0, 0, 0, 0, 0, 0, 0, 0, gw, L4_UDP, ep, udp],
    );
    add(
        "svc-reply-vxlan-host",
        VxlanV4,
        &[0, 0, 0, 0, 0, 0, 0, 0, host, L4_TCP, ep, tcp],
    );
    // Uplink fields: port, destination MAC, then [`ipv4`]'s.
    add("snat-reply-udp", UplinkV4, &[0, 0, 0, L4_UDP]);
    add(
        "snat-reply-synack",
        UplinkV4,
        &[0, 0, 0, L4_TCP, 0, PORT_NAT_TCP, 1],
    );
    add(
        "snat-reply-rst",
        UplinkV4,
        &[0, 0, 0, L4_TCP, 0, PORT_NAT_TCP, 5],
    );
    add(
        "snat-reply-ping",
        UplinkV4,
        &[0, 0, 0, L4_ECHO_REPLY, PORT_NAT_PING, PORT_NAT_PING],
    );
    add("to-node-vxlan-port", UplinkV4, &[0, 0, 0, L4_UDP, 0, 8]);
    for (i, kind) in [0u8, 1, 2, 3].into_iter().enumerate() {
        for proto in 0..3u8 {
            let name = format!("snat-icmp-error{i}-quoting{proto}");
            add(&name, UplinkV4, &[0, 0, 0, L4_ERROR, 0, 0, kind, 0, proto]);
        }
    }
    // ICMP errors about the seeded Service flow (POD1:5000 to the ClusterIP, sent to
    // an endpoint's port 5353): port unreachable (code 3) and fragmentation needed
    // (4) from each endpoint it may have gone to: POD2, POD1 itself (hairpin: to the
    // gateway), REMOTE_POD over VXLAN, OUTSIDE (masqueraded too: to the node).
    // Fields after the transport byte and its two ports: the error's kind, code,
    // quoted protocol, quoted ports, quoted source and destination, cut (1: whole).
    let (pod1, pod2, remote) = (V4_POD1, V4_POD2, V4_REMOTE_POD);
    for code in [3u8, 4] {
        let about = |from: u8, to: u8| [0, code, 0, udp, ep, from, to, 1];
        let to_pod1 = [&[1, 0, pod1, L4_ERROR, 0, 0][..], &about(pod1, pod2)].concat();
        add(&format!("svc-icmp-error{code}-pod2"), PodV4, &to_pod1);
        let to_gw = [&[0, 0, gw, L4_ERROR, 0, 0][..], &about(gw, pod1)].concat();
        add(&format!("svc-icmp-error{code}-hairpin"), PodV4, &to_gw);
        let outer = [0u8; 8];
        let vxlan = [&outer[..], &[pod1, L4_ERROR, 0, 0], &about(pod1, remote)].concat();
        add(&format!("svc-icmp-error{code}-vxlan"), VxlanV4, &vxlan);
        let uplink = [&[0, 0, 0, L4_ERROR, 0, 0][..], &about(0, 0)].concat();
        add(&format!("svc-icmp-error{code}-outside"), UplinkV4, &uplink);
    }
    add("uplink-to-pod", UplinkV4, &[0, 0, V4_POD1, L4_UDP]);
    add(
        "uplink-to-pod-ttl1",
        UplinkV4,
        &[0, 0, V4_POD1, L4_UDP, 0, 0, 0, 1],
    );
    add(
        "uplink-to-remote-pod",
        UplinkV4,
        &[0, 0, V4_REMOTE_POD, L4_UDP],
    );
    add("host-port-to-pod", UplinkV4, &[1, 0, V4_POD1, L4_UDP]);
    add(
        "host-port-to-other",
        UplinkV4,
        &[1, 0, V4_REMOTE_POD, L4_UDP],
    );
    // Pod packets the router answers or refuses.
    let remote = V4_REMOTE_POD;
    add("pod4-ttl1", PodV4, &[0, 0, remote, L4_UDP, 0, 0, 0, 1]);
    add("pod4-outside-ttl1", PodV4, &[0, 0, 0, L4_UDP, 0, 0, 0, 1]);
    add(
        "pod4-too-big-overlay",
        PodV4,
        &[0, 0, remote, L4_UDP, 0, 0, 0, 0, 0, 0, 0, 5],
    );
    add(
        "pod4-too-big-uplink",
        PodV4,
        &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 0, 0, 0, 7],
    );
    add(
        "pod4-too-big-no-df",
        PodV4,
        &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 1, 0, 0, 7],
    );
    add("pod4-fragment", PodV4, &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 3]);
    add(
        "pod4-fragment-to-vip",
        PodV4,
        &[0, 0, V4_VIP, L4_UDP, 0, 0, 0, 0, 2],
    );
    add(
        "pod4-options",
        PodV4,
        &[0, 0, remote, L4_TCP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4],
    );
    add("pod4-spoofed", PodV4, &[0, 0, 0, L4_UDP, 0, 0, V4_POD2]);
    add(
        "pod4-to-vip-tcp-ack",
        PodV4,
        &[0, 0, V4_VIP, L4_TCP, tcp, 0, 2, 1],
    );
    // The seeded Service flow's next packet, out of TTL after DNAT or too big (DF,
    // 1480 bytes of padding) for the way to its endpoint: our own error about it
    // quotes the packet as the client sent it.
    add("pod4-vip-ttl1", PodV4, &[0, 0, V4_VIP, L4_UDP, 0, 0, 0, 1]);
    add(
        "pod4-vip-too-big",
        PodV4,
        &[0, 0, V4_VIP, L4_UDP, 0, 0, 0, 0, 0, 0, 0, 7],
    );
    add("pod4-no-endpoints", PodV4, &[0, 0, V4_VIP + 1, L4_UDP]);
    add("pod4-vip-other-port", PodV4, &[0, 0, V4_VIP, L4_UDP, 0, 10]);
    add(
        "pod4-echo-gateway",
        PodV4,
        &[0, 0, V4_GATEWAY, L4_ECHO_REQUEST],
    );
    // IPv6.
    add(
        "pod6-ns-gateway",
        PodV6,
        &[0, 0, V6_SOLICITED, L4_NS, 0, 0, 0, 0, 3],
    );
    add("pod6-hop-limit1", PodV6, &[0, 0, 0, L4_UDP, 0, 0, 0, 1]);
    add(
        "pod6-too-big",
        PodV6,
        &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 0, 0, 5],
    );
    add("pod6-hop-by-hop", PodV6, &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 2]);
    add("pod6-fragment", PodV6, &[0, 0, 0, L4_UDP, 0, 0, 0, 0, 4]);
    add("uplink6-to-pod", UplinkV6, &[0, 0]);
    add(
        "uplink6-to-pod-hop-limit1",
        UplinkV6,
        &[0, 0, 0, L4_UDP, 0, 0, 0, 1],
    );
    add("host-port6-to-pod", UplinkV6, &[1, 0]);
    // VXLAN fields: port, outer source, destination, UDP port, flags, VNI, UDP
    // checksum, inner destination MAC, then [`ipv4`]'s or [`ipv6`]'s.
    add("vxlan4", VxlanV4, &[]);
    add("vxlan4-tcp", VxlanV4, &[0, 0, 0, 0, 0, 0, 0, 0, 0, L4_TCP]);
    add("vxlan4-udp-checksum", VxlanV4, &[0, 0, 0, 0, 0, 0, 1]);
    add("vxlan4-unknown-vtep", VxlanV4, &[0, 1]);
    add(
        "vxlan4-spoofed",
        VxlanV4,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, L4_UDP, 0, 0, 1],
    );
    add(
        "vxlan4-ttl1",
        VxlanV4,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, L4_UDP, 0, 0, 0, 1],
    );
    add("vxlan4-no-i-flag", VxlanV4, &[0, 0, 0, 0, 1]);
    add("vxlan6", VxlanV6, &[]);
    add("arp-gateway", Arp, &[]);
    add("arp-uplink", Arp, &[2]);
    add("raw-uplink", Raw, &[0, 1]);
}
