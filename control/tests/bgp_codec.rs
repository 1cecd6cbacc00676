//! Golden-byte round trips for every BGP message and capability we speak, and one
//! test per RFC 4271 §6 error that decoding reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr};

use hybridway_control::bgp::codec::{
    self, AfiSafi, AsSegment, Attribute, Capability, CodecOptions, GrFamily, GracefulRestart,
    Message, Notification, Open, Origin, RouteRefresh, Update, err,
};
use hybridway_dataplane::tables::Prefix;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn msg(len_type: &str, body: &str) -> Vec<u8> {
    hex(&format!("{MARKER} {len_type} {body}"))
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

const OPTS: CodecOptions = CodecOptions {
    four_octet_as: true,
};

/// Decode the golden bytes, compare with the expected value, encode back to the same
/// bytes, and encode once more into a buffer full of 0xa5 (nothing before it touched).
fn round_trip(bytes: &[u8], expected: &Message) {
    let decoded = codec::decode(bytes, OPTS).unwrap();
    assert_eq!(&decoded, expected);
    assert_eq!(codec::encode_to_vec(expected, OPTS).unwrap(), bytes);
    let mut buf = vec![0xa5; 7];
    codec::encode(expected, OPTS, &mut buf).unwrap();
    assert_eq!(&buf[..7], &[0xa5; 7]);
    assert_eq!(&buf[7..], bytes);
    assert_eq!(codec::frame_len(&buf[7..]).unwrap(), Some(bytes.len()));
    assert_eq!(codec::frame_len(&buf[7..buf.len() - 1]).unwrap(), None);
}

#[test]
fn keepalive() {
    round_trip(&msg("0013 04", ""), &Message::Keepalive);
}

#[test]
fn open_with_every_capability() {
    let bytes = msg(
        "003b 01",
        "04 fdf2 005a c6120001 1e 02 1c
         01 04 0001 00 01
         01 04 0002 00 01
         02 00
         40 06 8258 0001 01 80
         41 04 0000fdf2",
    );
    let open = Open {
        version: 4,
        my_as: 65010,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(198, 18, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                restart_time: 600,
                families: vec![GrFamily {
                    family: AfiSafi::IPV4_UNICAST,
                    forwarding_preserved: true,
                }],
            }),
            Capability::FourOctetAs(65010),
        ],
    };
    round_trip(&bytes, &Message::Open(open.clone()));
    assert_eq!(open.asn(), 65010);
}

#[test]
fn open_four_octet_asn_uses_as_trans() {
    let open = Open::new(4_200_000_001, 90, Ipv4Addr::new(198, 18, 0, 1), vec![]);
    assert_eq!(open.my_as, 23456);
    let bytes = msg("0025 01", "04 5ba0 005a c6120001 08 02 06 41 04 fa56ea01");
    round_trip(&bytes, &Message::Open(open.clone()));
    assert_eq!(open.asn(), 4_200_000_001);
}

#[test]
fn open_without_parameters_and_unknown_capability() {
    round_trip(
        &msg("001d 01", "04 fdf2 0000 c6120001 00"),
        &Message::Open(Open {
            version: 4,
            my_as: 65010,
            hold_time: 0,
            bgp_id: Ipv4Addr::new(198, 18, 0, 1),
            capabilities: vec![],
        }),
    );
    // An unknown capability (code 73, FQDN) is kept as bytes.
    round_trip(
        &msg("0022 01", "04 fdf2 0003 c6120001 05 02 03 49 01 aa"),
        &Message::Open(Open {
            version: 4,
            my_as: 65010,
            hold_time: 3,
            bgp_id: Ipv4Addr::new(198, 18, 0, 1),
            capabilities: vec![Capability::Unknown {
                code: 73,
                value: vec![0xaa],
            }],
        }),
    );
}

fn ipv4_attrs() -> Vec<Attribute> {
    vec![
        Attribute::Origin(Origin::Igp),
        Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
        Attribute::NextHop(Ipv4Addr::new(198, 18, 0, 1)),
    ]
}

#[test]
fn update_ipv4_announce() {
    let bytes = msg(
        "002f 02",
        "0000 0014 40 01 01 00  40 02 06 02 01 0000fdf2  40 03 04 c6120001  18 c61301",
    );
    round_trip(
        &bytes,
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: ipv4_attrs(),
            nlri: vec![p("198.19.1.0/24")],
            treat_as_withdraw: None,
        }),
    );
}

#[test]
fn update_ipv4_withdraw() {
    round_trip(
        &msg("001b 02", "0004 18c61301 0000"),
        &Message::Update(Update {
            withdrawn: vec![p("198.19.1.0/24")],
            ..Update::default()
        }),
    );
}

#[test]
fn update_with_med_local_pref_set_and_other() {
    let bytes = msg(
        "0035 02",
        "0000 001e 40 01 01 02  40 02 06 01 01 0000fdf2  80 04 04 00000064  40 05 04 000000c8 c0 08 00",
    );
    round_trip(
        &bytes,
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: vec![
                Attribute::Origin(Origin::Incomplete),
                Attribute::AsPath(vec![AsSegment::Set(vec![65010])]),
                Attribute::Med(100),
                Attribute::LocalPref(200),
                Attribute::Other {
                    flags: 0xc0,
                    code: 8,
                    value: vec![],
                },
            ],
            nlri: vec![],
            treat_as_withdraw: None,
        }),
    );
}

#[test]
fn update_two_octet_as_path() {
    let opts = CodecOptions {
        four_octet_as: false,
    };
    let bytes = msg("0022 02", "0000 000b 40 02 04 02 01 fdf2 40 01 01 01");
    let upd = Update {
        withdrawn: vec![],
        attributes: vec![
            Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
            Attribute::Origin(Origin::Egp),
        ],
        nlri: vec![],
        treat_as_withdraw: None,
    };
    assert_eq!(
        codec::decode(&bytes, opts).unwrap(),
        Message::Update(upd.clone())
    );
    assert_eq!(
        codec::encode_to_vec(&Message::Update(upd), opts).unwrap(),
        bytes
    );
}

#[test]
fn update_ipv6_mp_reach_and_unreach() {
    let reach = msg(
        "0043 02",
        "0000 002c 40 01 01 00  40 02 06 02 01 0000fdf2
         80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001",
    );
    let attrs = vec![
        Attribute::Origin(Origin::Igp),
        Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
        Attribute::MpReach {
            family: AfiSafi::IPV6_UNICAST,
            next_hops: vec!["2001:db8::1".parse::<IpAddr>().unwrap()],
            nlri: vec![p("2001:db8:1::/48")],
        },
    ];
    round_trip(
        &reach,
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: attrs,
            nlri: vec![],
            treat_as_withdraw: None,
        }),
    );

    let unreach = msg("0024 02", "0000 000d 80 0f 0a 0002 01 30 20010db80001");
    round_trip(
        &unreach,
        &Message::Update(Update {
            attributes: vec![Attribute::MpUnreach {
                family: AfiSafi::IPV6_UNICAST,
                withdrawn: vec![p("2001:db8:1::/48")],
            }],
            ..Update::default()
        }),
    );
}

#[test]
fn update_ipv6_global_and_link_local_next_hops() {
    let bytes = msg(
        "0047 02",
        "0000 0030 40 01 01 00 40 02 00
         80 0e 26 0002 01 20 20010db8000000000000000000000001 fe800000000000000000000000000001 00 00",
    );
    let m = codec::decode(&bytes, OPTS).unwrap();
    let Message::Update(u) = &m else {
        panic!("not an update")
    };
    assert!(
        matches!(&u.attributes[2], Attribute::MpReach { next_hops, nlri, .. }
        if next_hops.len() == 2 && nlri == &vec![p("::/0")])
    );
    assert_eq!(codec::encode_to_vec(&m, OPTS).unwrap(), bytes);
}

#[test]
fn end_of_rib_markers() {
    let v4 = msg("0017 02", "0000 0000");
    round_trip(
        &v4,
        &Message::Update(Update::end_of_rib(AfiSafi::IPV4_UNICAST)),
    );
    assert_eq!(
        Update::end_of_rib(AfiSafi::IPV4_UNICAST).end_of_rib_family(),
        Some(AfiSafi::IPV4_UNICAST)
    );
    let v6 = msg("001d 02", "0000 0006 80 0f 03 0002 01");
    round_trip(
        &v6,
        &Message::Update(Update::end_of_rib(AfiSafi::IPV6_UNICAST)),
    );
    assert_eq!(
        Update::end_of_rib(AfiSafi::IPV6_UNICAST).end_of_rib_family(),
        Some(AfiSafi::IPV6_UNICAST)
    );
    let real = Update {
        withdrawn: vec![p("198.19.1.0/24")],
        ..Update::default()
    };
    assert_eq!(real.end_of_rib_family(), None);
}

#[test]
fn notification_and_route_refresh() {
    round_trip(
        &msg("0015 03", "06 02"),
        &Message::Notification(Notification::new(6, 2, vec![])),
    );
    round_trip(
        &msg("0017 03", "02 01 0004"),
        &Message::Notification(Notification::new(
            err::OPEN,
            err::OPEN_UNSUPPORTED_VERSION,
            vec![0, 4],
        )),
    );
    round_trip(
        &msg("0017 05", "0001 00 01"),
        &Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV4_UNICAST,
        }),
    );
    round_trip(
        &msg("0017 05", "0002 00 01"),
        &Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV6_UNICAST,
        }),
    );
}

#[test]
fn long_attribute_uses_extended_length() {
    let nlri: Vec<Prefix> = (0..=255u8)
        .map(|i| p(&format!("2001:db8:{i:x}::/48")))
        .collect();
    let upd = Update {
        withdrawn: vec![],
        attributes: vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(vec![]),
            Attribute::MpReach {
                family: AfiSafi::IPV6_UNICAST,
                next_hops: vec!["2001:db8::1".parse().unwrap()],
                nlri,
            },
        ],
        nlri: vec![],
        treat_as_withdraw: None,
    };
    let bytes = codec::encode_to_vec(&Message::Update(upd.clone()), OPTS).unwrap();
    // ORIGIN (4) + empty AS_PATH (3), then MP_REACH with the extended-length flag.
    assert_eq!(bytes[19 + 4 + 7], 0x90);
    assert_eq!(codec::decode(&bytes, OPTS).unwrap(), Message::Update(upd));
}

#[test]
fn too_long_message_is_an_encode_error() {
    let nlri: Vec<Prefix> = (0..1100u32)
        .map(|i| p(&format!("198.19.{}.{}/32", i / 256, i % 256)))
        .collect();
    let upd = Update {
        withdrawn: vec![],
        attributes: ipv4_attrs(),
        nlri,
        treat_as_withdraw: None,
    };
    assert!(matches!(
        codec::encode_to_vec(&Message::Update(upd), OPTS),
        Err(codec::EncodeError::TooLong(_))
    ));
}

fn decode_err(bytes: &[u8]) -> (u8, u8, Vec<u8>) {
    let e = codec::decode(bytes, OPTS).unwrap_err();
    let n = e.notification();
    (n.code, n.subcode, n.data.clone())
}

#[test]
fn header_errors() {
    let mut bad_marker = msg("0013 04", "");
    bad_marker[3] = 0;
    assert_eq!(decode_err(&bad_marker), (1, 1, vec![]));
    assert!(codec::frame_len(&bad_marker).is_err());
    assert_eq!(decode_err(&msg("0012 04", "")), (1, 2, vec![0, 0x12]));
    assert_eq!(decode_err(&msg("1001 04", "")), (1, 2, vec![0x10, 0x01]));
    assert_eq!(decode_err(&msg("0014 04", "00")), (1, 2, vec![0, 0x14]));
    assert_eq!(decode_err(&msg("0013 09", "")), (1, 3, vec![9]));
    assert_eq!(decode_err(&msg("0016 05", "000100")), (1, 2, vec![0, 0x16]));
    assert_eq!(decode_err(&msg("0014 03", "06")), (1, 2, vec![0, 0x14]));
    // Header says 0x17 bytes but the buffer holds more: the framing is wrong.
    assert_eq!(decode_err(&msg("0017 02", "0000 0000 00")).0, 1);
    assert_eq!(decode_err(&hex("ffff")), (1, 2, vec![]));
}

#[test]
fn open_errors() {
    assert_eq!(
        decode_err(&msg("001d 01", "03 fdf2 005a c6120001 00")),
        (2, 1, vec![0, 4])
    );
    assert_eq!(
        decode_err(&msg("001d 01", "04 fdf2 0001 c6120001 00")),
        (2, 6, vec![])
    );
    assert_eq!(
        decode_err(&msg("001d 01", "04 fdf2 0002 c6120001 00")),
        (2, 6, vec![])
    );
    assert_eq!(
        decode_err(&msg("001d 01", "04 fdf2 005a 00000000 00")),
        (2, 3, vec![])
    );
    assert_eq!(
        decode_err(&msg("0020 01", "04 fdf2 005a c6120001 03 01 01 00")),
        (2, 4, vec![])
    );
    // Parameter length disagrees with what follows.
    assert_eq!(
        decode_err(&msg("001e 01", "04 fdf2 005a c6120001 02 02")).0,
        2
    );
    // Capability length runs past its parameter.
    assert_eq!(
        decode_err(&msg("0021 01", "04 fdf2 005a c6120001 04 02 02 41 04")),
        (2, 0, vec![])
    );
    // Four-octet AS capability with 3 bytes.
    assert_eq!(
        decode_err(&msg(
            "0024 01",
            "04 fdf2 005a c6120001 07 02 05 41 03 000000"
        )),
        (2, 0, vec![])
    );
}

fn decode_update(bytes: &[u8], opts: CodecOptions) -> Update {
    let Message::Update(u) = codec::decode(bytes, opts).unwrap() else {
        panic!("not an UPDATE");
    };
    u
}

/// Decode an UPDATE that RFC 7606 turns into a withdrawal: its withdrawn
/// prefixes (all families) and the error a strict speaker would have sent.
fn treated_as_withdraw(bytes: &[u8]) -> (Vec<Prefix>, (u8, u8, Vec<u8>)) {
    let u = decode_update(bytes, OPTS);
    assert!(u.nlri.is_empty() && u.announced().next().is_none());
    assert_eq!(u.end_of_rib_family(), None);
    let n = u.treat_as_withdraw.clone().expect("treated as withdraw");
    (
        u.withdrawn_all().copied().collect(),
        (n.code, n.subcode, n.data),
    )
}

/// RFC 7606: a malformed attribute withdraws the UPDATE's NLRI, the session stays.
#[test]
fn update_malformed_attributes_are_treat_as_withdraw() {
    let net = || vec![p("198.19.1.0/24")];
    // NLRI without NEXT_HOP (missing well-known, §3(d)).
    assert_eq!(
        treated_as_withdraw(&msg(
            "0028 02",
            "0000 000d 40 01 01 00 40 02 06 02 01 0000fdf2 18 c61301"
        )),
        (net(), (3, 3, vec![3]))
    );
    // MP_REACH without ORIGIN: its IPv6 NLRI is withdrawn.
    assert_eq!(
        treated_as_withdraw(&msg(
            "0036 02",
            "0000 001f 80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001"
        )),
        (vec![p("2001:db8:1::/48")], (3, 3, vec![1]))
    );
    // With a valid ORIGIN, AS_PATH, NEXT_HOP and the prefix 198.19.1.0/24, one
    // attribute broken at a time.
    let good_origin = "40 01 01 00";
    let good_path = "40 02 06 02 01 0000fdf2";
    let good_nh = "40 03 04 c6120001";
    let with = |origin: &str, path: &str, nh: &str| {
        let attrs = hex(&format!("{origin}{path}{nh}"));
        let body = format!("0000 {:04x} {origin}{path}{nh} 18 c61301", attrs.len());
        msg(&format!("{:04x} 02", 19 + 4 + attrs.len() + 4), &body)
    };
    let baseline = decode_update(&with(good_origin, good_path, good_nh), OPTS);
    assert_eq!(baseline.nlri, net());
    assert_eq!(baseline.treat_as_withdraw, None);
    // ORIGIN value 5, ORIGIN flagged optional, ORIGIN of length 2.
    assert_eq!(
        treated_as_withdraw(&with("40 01 01 05", good_path, good_nh)),
        (net(), (3, 6, hex("40010105")))
    );
    assert_eq!(
        treated_as_withdraw(&with("c0 01 01 00", good_path, good_nh)),
        (net(), (3, 4, hex("c0010100")))
    );
    assert_eq!(
        treated_as_withdraw(&with("40 01 02 0000", good_path, good_nh)),
        (net(), (3, 5, hex("4001020000")))
    );
    // AS_PATH segment type 7, and a segment with zero ASNs.
    assert_eq!(
        treated_as_withdraw(&with(good_origin, "40 02 06 07 01 0000fdf2", good_nh)),
        (net(), (3, 11, vec![]))
    );
    assert_eq!(
        treated_as_withdraw(&with(good_origin, "40 02 02 02 00", good_nh)),
        (net(), (3, 11, vec![]))
    );
    // NEXT_HOP 0.0.0.0.
    assert_eq!(
        treated_as_withdraw(&with(good_origin, good_path, "40 03 04 00000000")),
        (net(), (3, 8, hex("40030400000000")))
    );
    // Unknown attribute claiming to be well-known.
    assert_eq!(
        treated_as_withdraw(&with(good_origin, good_path, "40 63 01 00")),
        (net(), (3, 2, hex("40630100")))
    );
}

/// Decode an UPDATE that keeps its route 198.19.1.0/24 despite a discarded attribute.
fn route_kept(bytes: &[u8], opts: CodecOptions) -> Update {
    let u = decode_update(bytes, opts);
    assert_eq!(u.treat_as_withdraw, None);
    assert_eq!(u.nlri, vec![p("198.19.1.0/24")]);
    u
}

/// RFC 7606 §3(g), §7.6: some malformations only cost the attribute.
#[test]
fn update_attribute_discard() {
    // ORIGIN twice: the second is dropped, the route stays.
    let twice = msg(
        "0033 02",
        "0000 0018 40 01 01 00 40 01 01 02 40 02 06 02 01 0000fdf2 40 03 04 c6120001 18 c61301",
    );
    let u = route_kept(&twice, OPTS);
    assert_eq!(u.attributes.first(), Some(&Attribute::Origin(Origin::Igp)));
    assert_eq!(u.attributes.len(), 3);
    // ATOMIC_AGGREGATE flagged optional: discarded, the route stays.
    let atomic = msg(
        "0032 02",
        "0000 0017 40 01 01 00 c0 06 00 40 02 06 02 01 0000fdf2 40 03 04 c6120001 18 c61301",
    );
    let u = route_kept(&atomic, OPTS);
    assert!(u.attributes.iter().all(|a| a.code() != 6));
}

/// What RFC 7606 still answers with a NOTIFICATION and a reset: the message or
/// its NLRI cannot be located.
#[test]
fn update_errors_that_reset() {
    // MP_REACH twice.
    let mp = "80 0e 15 0002 01 10 20010db8000000000000000000000001 00";
    let attrs = hex(&format!("{mp}{mp}"));
    assert_eq!(
        decode_err(&msg(
            &format!("{:04x} 02", 23 + attrs.len()),
            &format!("0000 {:04x} {mp}{mp}", attrs.len())
        )),
        (3, 1, vec![])
    );
    // Withdrawn length longer than the message.
    assert_eq!(decode_err(&msg("0017 02", "0009 0000")), (3, 1, vec![]));
    // Attribute length past the end of the attribute list.
    assert_eq!(
        decode_err(&msg("001b 02", "0000 0004 40 01 09 00")),
        (3, 5, hex("40010900"))
    );
    // A /33 in the IPv4 NLRI.
    assert_eq!(
        decode_err(&msg("001c 02", "0000 0000 21 c6130100")),
        (3, 10, vec![])
    );
    // Truncated prefix bytes in the withdrawn routes.
    assert_eq!(
        decode_err(&msg("0019 02", "0002 18c6 0000")),
        (3, 10, vec![])
    );
    // MP_REACH with a 5-byte IPv6 next hop.
    assert_eq!(
        decode_err(&msg(
            "0024 02",
            "0000 000d 80 0e 0a 0002 01 05 0000000000 00"
        )),
        (3, 9, hex("800e0a000201050000000000 00"))
    );
}

const TWO_OCTET: CodecOptions = CodecOptions {
    four_octet_as: false,
};

fn update_with_path(path: Vec<AsSegment>) -> Message {
    Message::Update(Update {
        attributes: vec![Attribute::Origin(Origin::Igp), Attribute::AsPath(path)],
        ..Update::default()
    })
}

fn decoded_path(bytes: &[u8], opts: CodecOptions) -> (Vec<AsSegment>, usize) {
    let u = decode_update(bytes, opts);
    let path = u
        .attributes
        .iter()
        .find_map(|a| match a {
            Attribute::AsPath(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    (path, u.attributes.len())
}

/// RFC 6793 §4.2.2: a 2-octet peer gets AS_TRANS in AS_PATH plus the real path in
/// AS4_PATH, and decoding both gives the 4-octet path back.
#[test]
fn as4_path_sent_to_two_octet_peers_and_merged_back() {
    let msg_ = update_with_path(vec![AsSegment::Sequence(vec![4_200_000_001, 65010])]);
    let bytes = msg(
        "0031 02",
        "0000 001a 40 01 01 00 40 02 06 02 02 5ba0 fdf2 c0 11 0a 02 02 fa56ea01 0000fdf2",
    );
    assert_eq!(codec::encode_to_vec(&msg_, TWO_OCTET).unwrap(), bytes);
    assert_eq!(codec::decode(&bytes, TWO_OCTET).unwrap(), msg_);
    // Every ASN fits in 2 octets: no AS4_PATH.
    let small = update_with_path(vec![AsSegment::Sequence(vec![65001, 65010])]);
    assert_eq!(
        codec::encode_to_vec(&small, TWO_OCTET).unwrap(),
        msg("0024 02", "0000 000d 40 01 01 00 40 02 06 02 02 fde9 fdf2")
    );
}

/// RFC 6793 §4.2.3: ASNs a 2-octet speaker prepended after the AS4_PATH was built
/// are kept from AS_PATH; an AS4_PATH longer than AS_PATH is ignored; a 4-octet
/// peer's AS4_PATH is dropped.
#[test]
fn as4_path_merge_rules() {
    let cases = [
        (
            "AS_PATH 65001 23456 65010, AS4_PATH 4200000001 65010: 65001 kept",
            "0033 02",
            "0000 001c 40 01 01 00 40 02 08 02 03 fde9 5ba0 fdf2 c0 11 0a 02 02 fa56ea01 0000fdf2",
            TWO_OCTET,
            vec![
                AsSegment::Sequence(vec![65001]),
                AsSegment::Sequence(vec![4_200_000_001, 65010]),
            ],
        ),
        (
            "AS_PATH 23456, AS4_PATH 4200000001 65010: longer, ignored",
            "002f 02",
            "0000 0018 40 01 01 00 40 02 04 02 01 5ba0 c0 11 0a 02 02 fa56ea01 0000fdf2",
            TWO_OCTET,
            vec![AsSegment::Sequence(vec![23456])],
        ),
        (
            "a 4-octet peer must not send AS4_PATH: dropped, AS_PATH as is",
            "0031 02",
            "0000 001a 40 01 01 00 40 02 06 02 01 0000fdf2 c0 11 0a 02 02 fa56ea01 0000fdf2",
            OPTS,
            vec![AsSegment::Sequence(vec![65010])],
        ),
    ];
    for (what, len_type, body, opts, path) in cases {
        assert_eq!(
            decoded_path(&msg(len_type, body), opts),
            (path, 2),
            "{what}"
        );
    }
    // A malformed AS4_PATH (segment of zero ASNs) is discarded, the route stays.
    let bad = msg(
        "0032 02",
        "0000 0017 40 01 01 00 40 02 04 02 01 5ba0 40 03 04 c6120001 c0 11 02 02 00 18 c61301",
    );
    let u = route_kept(&bad, TWO_OCTET);
    assert_eq!(u.attributes.len(), 3);
}

const AGGREGATED_BY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn aggregator(asn: u32) -> Attribute {
    Attribute::Aggregator {
        asn,
        address: AGGREGATED_BY,
    }
}

/// AGGREGATOR (RFC 4271 §5.1.7) with a 4-octet AS between 4-octet speakers.
#[test]
fn aggregator_round_trip() {
    round_trip(
        &msg(
            "002f 02",
            "0000 0018 40 01 01 00 40 02 06 02 01 0000fdf2 c0 07 08 fa56ea01 c6120001",
        ),
        &Message::Update(Update {
            attributes: vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
                aggregator(4_200_000_001),
            ],
            ..Update::default()
        }),
    );
}

/// RFC 6793 §4.2.2: a 2-octet peer gets AS_TRANS in AGGREGATOR plus the real AS in
/// AS4_AGGREGATOR, and decoding both gives the 4-octet aggregator back.
#[test]
fn as4_aggregator_sent_to_two_octet_peers_and_merged_back() {
    let m = Message::Update(Update {
        attributes: vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
            aggregator(4_200_000_001),
        ],
        ..Update::default()
    });
    let bytes = msg(
        "0036 02",
        "0000 001f 40 01 01 00 40 02 04 02 01 fdf2 c0 07 06 5ba0 c6120001 c0 12 08 fa56ea01 c6120001",
    );
    assert_eq!(codec::encode_to_vec(&m, TWO_OCTET).unwrap(), bytes);
    assert_eq!(codec::decode(&bytes, TWO_OCTET).unwrap(), m);
    // An aggregating AS that fits in 2 octets: no AS4_AGGREGATOR.
    let small = Message::Update(Update {
        attributes: vec![Attribute::Origin(Origin::Igp), aggregator(65001)],
        ..Update::default()
    });
    assert_eq!(
        codec::encode_to_vec(&small, TWO_OCTET).unwrap(),
        msg("0024 02", "0000 000d 40 01 01 00 c0 07 06 fde9 c6120001")
    );
}

/// RFC 6793 §4.2.3 for AS4_AGGREGATOR: it replaces an AGGREGATOR of AS_TRANS (and
/// AS4_PATH is merged); an AGGREGATOR naming another AS means a 2-octet speaker
/// aggregated later, so AS4_AGGREGATOR *and* AS4_PATH are ignored; a 4-octet peer's
/// is dropped; a malformed one is discarded (§6).
#[test]
fn as4_aggregator_merge_rules() {
    let origin = "40 01 01 00";
    let as4_path = "c0 11 0a 02 02 0000fde9 fa56ea01";
    let as4_agg = "c0 12 08 fa56ea01 c6120001";
    let update = |attrs: &str| {
        let a = hex(attrs);
        msg(
            &format!("{:04x} 02", 23 + a.len()),
            &format!("0000 {:04x} {attrs}", a.len()),
        )
    };
    let cases = [
        (
            "AGGREGATOR AS_TRANS: AS4_AGGREGATOR and AS4_PATH taken",
            format!(
                "{origin} 40 02 06 02 02 fde9 5ba0 c0 07 06 5ba0 c6120001 {as4_path} {as4_agg}"
            ),
            TWO_OCTET,
            vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(vec![AsSegment::Sequence(vec![65001, 4_200_000_001])]),
                aggregator(4_200_000_001),
            ],
        ),
        (
            "AGGREGATOR 65001: AS4_AGGREGATOR and AS4_PATH ignored",
            format!(
                "{origin} 40 02 06 02 02 fde9 5ba0 c0 07 06 fde9 c6120001 {as4_path} {as4_agg}"
            ),
            TWO_OCTET,
            vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(vec![AsSegment::Sequence(vec![65001, 23456])]),
                aggregator(65001),
            ],
        ),
        (
            "a 4-octet peer must not send AS4_AGGREGATOR: dropped",
            format!("{origin} 40 02 06 02 01 0000fdf2 c0 07 08 0000fde9 c6120001 {as4_agg}"),
            OPTS,
            vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
                aggregator(65001),
            ],
        ),
        (
            "AS4_AGGREGATOR of 7 bytes: discarded, AGGREGATOR kept",
            format!("{origin} 40 02 04 02 01 fdf2 c0 07 06 5ba0 c6120001 c0 12 07 fa56ea01 c61200"),
            TWO_OCTET,
            vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(vec![AsSegment::Sequence(vec![65010])]),
                aggregator(23456),
            ],
        ),
    ];
    for (what, attrs, opts, expected) in cases {
        assert_eq!(
            decode_update(&update(&attrs), opts).attributes,
            expected,
            "{what}"
        );
    }
    // RFC 7606 §7.7: an AGGREGATOR of 8 bytes from a 2-octet peer is discarded, the
    // route stays.
    let bad = msg(
        "0038 02",
        "0000 001d 40 01 01 00 40 02 04 02 01 fdf2 40 03 04 c6120001 c0 07 08 0000fde9 c6120001 18 c61301",
    );
    let u = route_kept(&bad, TWO_OCTET);
    assert!(u.attributes.iter().all(|a| a.code() != 7), "{u:?}");
}

/// The property the `bgp_message` fuzz target checks, over every combination of
/// AGGREGATOR / AS4_AGGREGATOR / AS_PATH / AS4_PATH forms (well-formed, malformed,
/// AS_TRANS or not) for both AS widths: what decodes (and is not a withdrawal)
/// encodes and decodes again to the same message; a 2-octet peer's path merged
/// with AS4_PATH must decode again but may differ (only AS4_PATH's ASNs survive).
#[test]
fn as4_attributes_round_trip_in_every_combination() {
    let fragments = [
        "40 01 01 00",
        "40 02 06 02 02 fde9 5ba0",
        "40 02 06 02 01 0000fdf2",
        "c0 07 06 5ba0 c6120001",
        "c0 07 06 fde9 c6120001",
        "c0 07 08 fa56ea01 c6120001",
        "c0 11 0a 02 02 0000fde9 fa56ea01",
        "c0 12 08 fa56ea01 c6120001",
        "c0 12 07 fa56ea01 c61200",
    ];
    let big_asn_in_path =
        |m: &Message| matches!(m, Message::Update(u) if u.path_needs_four_octets());
    let mut decoded = 0;
    for mask in 0u32..(1 << fragments.len()) {
        let attrs: String = fragments
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, f)| format!("{f} "))
            .collect();
        let a = hex(&attrs);
        let bytes = msg(
            &format!("{:04x} 02", 23 + a.len()),
            &format!("0000 {:04x} {attrs}", a.len()),
        );
        for opts in [OPTS, TWO_OCTET] {
            let Ok(m) = codec::decode(&bytes, opts) else {
                continue;
            };
            if matches!(&m, Message::Update(u) if u.treat_as_withdraw.is_some()) {
                continue;
            }
            decoded += 1;
            let again = codec::encode_to_vec(&m, opts).unwrap();
            let back = codec::decode(&again, opts).unwrap();
            if opts.four_octet_as || !big_asn_in_path(&m) {
                assert_eq!(back, m, "{attrs} four_octet_as={}", opts.four_octet_as);
            }
        }
    }
    assert!(decoded > 500, "{decoded}");
}
