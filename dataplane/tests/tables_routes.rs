//! Route table lookups against a naive longest-prefix scan, for random route sets
//! and addresses, IPv4 and IPv6, single and batch lookups.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hybridway_dataplane::PortId;
use hybridway_dataplane::tables::{Prefix, RouteTable, RouteTableBuilder, RouteTarget};
use hybridway_dataplane::wire::MacAddr;
use proptest::prelude::*;

/// A target that names its route, so a wrong match is visible.
fn target(i: usize) -> RouteTarget {
    let b = (i as u32).to_be_bytes();
    RouteTarget::LocalPod {
        port: PortId(i as u16),
        mac: MacAddr([2, 0, b[0], b[1], b[2], b[3]]),
    }
}

/// The reference: the longest prefix that contains the address, by scanning all.
fn naive(routes: &[(Prefix, RouteTarget)], dst: IpAddr) -> Option<RouteTarget> {
    routes
        .iter()
        .filter(|(p, _)| p.contains(dst))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, t)| *t)
}

fn build(prefixes: &[Prefix]) -> (RouteTable, Vec<(Prefix, RouteTarget)>) {
    let mut b = RouteTableBuilder::new();
    let mut routes = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        if b.add(*p, target(i)).is_ok() {
            routes.push((*p, target(i)));
        }
    }
    (b.build(), routes)
}

fn check_all(
    table: &RouteTable,
    routes: &[(Prefix, RouteTarget)],
    dsts: &[IpAddr],
) -> Result<(), TestCaseError> {
    for &dst in dsts {
        prop_assert_eq!(
            table.lookup(dst).copied(),
            naive(routes, dst),
            "dst {}",
            dst
        );
    }
    let v4: Vec<Ipv4Addr> = dsts
        .iter()
        .filter_map(|d| {
            if let IpAddr::V4(a) = d {
                Some(*a)
            } else {
                None
            }
        })
        .collect();
    let mut out = vec![None; v4.len()];
    table.lookup_v4_batch(&v4, &mut out);
    for (dst, got) in v4.iter().zip(out) {
        prop_assert_eq!(
            got.copied(),
            naive(routes, IpAddr::V4(*dst)),
            "batch dst {}",
            dst
        );
    }
    Ok(())
}

/// Addresses at and around the edges of each prefix, where off-by-one bugs live.
fn edges(prefixes: &[Prefix]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for p in prefixes {
        match p.addr() {
            IpAddr::V4(a) => {
                let net = u32::from(a);
                let host = u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
                for v in [
                    net,
                    net | host,
                    net.wrapping_sub(1),
                    (net | host).wrapping_add(1),
                    net | (host / 2),
                ] {
                    out.push(IpAddr::V4(v.into()));
                }
            }
            IpAddr::V6(a) => {
                let net = u128::from(a);
                let host = u128::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
                for v in [
                    net,
                    net | host,
                    net.wrapping_sub(1),
                    (net | host).wrapping_add(1),
                ] {
                    out.push(IpAddr::V6(v.into()));
                }
            }
        }
    }
    out
}

fn v4_prefix() -> impl Strategy<Value = Prefix> {
    // Few distinct top bits so prefixes overlap and share trie chunks.
    (
        0u32..8,
        any::<u32>(),
        prop_oneof![Just(0u8), Just(32u8), 0u8..=32, 14u8..=26],
    )
        .prop_map(|(top, rest, len)| {
            Prefix::new(IpAddr::V4(((top << 29) | (rest >> 3)).into()), len).unwrap()
        })
}

fn v6_prefix() -> impl Strategy<Value = Prefix> {
    (
        0u128..4,
        any::<u128>(),
        prop_oneof![Just(0u8), Just(128u8), 0u8..=128, 40u8..=72],
    )
        .prop_map(|(top, rest, len)| {
            Prefix::new(IpAddr::V6(((top << 126) | (rest >> 2)).into()), len).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn v4_matches_naive_scan(
        prefixes in prop::collection::vec(v4_prefix(), 0..120),
        random in prop::collection::vec(any::<u32>(), 0..64),
    ) {
        let (table, routes) = build(&prefixes);
        let mut dsts = edges(&prefixes);
        dsts.extend(random.into_iter().map(|a| IpAddr::V4(a.into())));
        check_all(&table, &routes, &dsts)?;
    }

    #[test]
    fn v6_matches_naive_scan(
        prefixes in prop::collection::vec(v6_prefix(), 0..120),
        random in prop::collection::vec(any::<u128>(), 0..64),
    ) {
        let (table, routes) = build(&prefixes);
        let mut dsts = edges(&prefixes);
        dsts.extend(random.into_iter().map(|a| IpAddr::V6(a.into())));
        check_all(&table, &routes, &dsts)?;
    }

    #[test]
    fn mixed_families_do_not_leak_into_each_other(
        v4 in prop::collection::vec(v4_prefix(), 0..40),
        v6 in prop::collection::vec(v6_prefix(), 0..40),
    ) {
        let all: Vec<Prefix> = v4.iter().chain(&v6).copied().collect();
        let (table, routes) = build(&all);
        check_all(&table, &routes, &edges(&all))?;
        // iter: every route once, longest first.
        let lens: Vec<u8> = table.iter().map(|(p, _)| p.len()).collect();
        prop_assert!(lens.windows(2).all(|w| w[0] >= w[1]));
        prop_assert_eq!(table.len(), routes.len());
    }
}

#[test]
fn defaults_hosts_and_overlaps() {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    let prefixes = [
        p("0.0.0.0/0"),
        p("198.18.0.0/15"),
        p("198.19.0.0/16"),
        p("198.19.1.0/24"),
        p("198.19.1.7/32"),
        p("198.19.1.128/25"),
        p("::/0"),
        p("2001:db8::/32"),
        p("2001:db8::1/128"),
    ];
    let (table, routes) = build(&prefixes);
    let at = |s: &str| table.lookup(s.parse().unwrap()).copied();
    assert_eq!(at("8.8.8.8"), Some(routes[0].1));
    assert_eq!(at("198.18.3.4"), Some(routes[1].1));
    assert_eq!(at("198.19.2.1"), Some(routes[2].1));
    assert_eq!(at("198.19.1.6"), Some(routes[3].1));
    assert_eq!(at("198.19.1.7"), Some(routes[4].1));
    assert_eq!(at("198.19.1.200"), Some(routes[5].1));
    assert_eq!(at("2001:db9::1"), Some(routes[6].1));
    assert_eq!(at("2001:db8::2"), Some(routes[7].1));
    assert_eq!(at("2001:db8::1"), Some(routes[8].1));
    assert_eq!(
        table.lookup_v6(Ipv6Addr::LOCALHOST).copied(),
        Some(routes[6].1)
    );

    let mut b = RouteTableBuilder::new();
    b.add(p("198.19.1.0/24"), target(0)).unwrap();
    assert!(
        b.add(p("198.19.1.9/24"), target(1)).is_err(),
        "same prefix after clearing host bits"
    );
    let t = b.build();
    assert_eq!(t.lookup_v4(Ipv4Addr::new(198, 19, 2, 0)), None);
    assert_eq!(t.lookup_v6(Ipv6Addr::LOCALHOST), None);
    assert!(
        RouteTable::default()
            .lookup_v4(Ipv4Addr::BROADCAST)
            .is_none()
    );
}

#[test]
fn ten_thousand_mixed_routes_match_the_scan() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut b = RouteTableBuilder::new();
    let mut routes = Vec::new();
    while routes.len() < 10_000 {
        let len = rng.random_range(16..=32u8);
        let p = Prefix::new(IpAddr::V4(rng.random::<u32>().into()), len).unwrap();
        let t = target(routes.len());
        if b.add(p, t).is_ok() {
            routes.push((p, t));
        }
    }
    let table = b.build();
    assert_eq!(table.len(), 10_000);
    // Naive scans are slow; a few thousand probes, half of them inside routes.
    for i in 0..4000u32 {
        let dst = if i % 2 == 0 {
            let (p, _) = routes[(i as usize * 7) % routes.len()];
            let IpAddr::V4(a) = p.addr() else {
                unreachable!()
            };
            IpAddr::V4((u32::from(a) | (rng.random::<u32>() >> p.len().min(31))).into())
        } else {
            IpAddr::V4(rng.random::<u32>().into())
        };
        assert_eq!(table.lookup(dst).copied(), naive(&routes, dst), "dst {dst}");
    }
}
