//! Not a test but a measurement: time from starting `hybridway bgp-speaker` with
//! 10,000 nodes of the pool in its agent file (one /32 block each) to all of them
//! in FRR's BGP table. Run with
//! `cargo test --release -p hybridway-control --test bgp_frr_scale -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn time_to_rib(tag: &str, node_address: impl Fn(u32) -> String) {
    let mut lab = Lab::new(tag, 1);
    let frr = Frr::start(
        &mut lab,
        &[FrrNeighbor {
            addr: speaker_addr(0),
            asn: 65010,
            password: None,
        }],
    );
    let routes: Vec<Route> = (0..10_000u32)
        .map(|i| {
            route(
                &format!("n{i}"),
                &node_address(i),
                &format!("198.19.{}.{}/32", i / 256, i % 256),
            )
        })
        .collect();
    let start = Instant::now();
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, routes));
    // `show bgp summary` counts received prefixes without dumping 10k routes as JSON.
    wait_for(Duration::from_secs(60), "10,001 prefixes in FRR", || {
        let v = frr.vtysh("show bgp ipv4 unicast summary json")?;
        (v["peers"][speaker_addr(0)]["pfxRcd"].as_u64()? >= 10_001).then_some(())
    });
    let total = start.elapsed();
    let established = sp.wait_state("Established", Duration::from_secs(5));
    println!(
        "BGP scale ({tag}): 10,000 pod blocks (+1) in FRR's RIB {total:?} after process start; peer status: {} s in Established",
        established["secondsInState"]
    );
}

/// Node `i`'s address outside the subnet shared with the switch (198.18.64.0/18).
fn behind_the_speaker(i: u32) -> String {
    format!("198.18.{}.{}", 64 + i / 250, 1 + i % 250)
}

#[test]
#[ignore = "benchmark: prints the time, asserts only that the prefixes arrive"]
fn frr_10k_prefixes_one_next_hop() {
    // Every node outside the shared subnet: one next hop (ours), so the table packs
    // into ~10 UPDATEs.
    time_to_rib("onehop", behind_the_speaker);
}

#[test]
#[ignore = "benchmark: prints the time, asserts only that the prefixes arrive"]
fn frr_10k_prefixes_200_next_hops() {
    // 200 nodes on the shared subnet (their own next hops), the rest behind us: 201
    // attribute sets.
    time_to_rib("manyhops", |i| {
        if i < 200 {
            format!("198.18.0.{}", 20 + i)
        } else {
            behind_the_speaker(i)
        }
    });
}
