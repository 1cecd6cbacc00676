//! Not a test but a measurement: time from starting `hybridway bgp-speaker` with
//! 10,000 pod blocks to all of them in FRR's BGP table. Run with
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

#[test]
#[ignore = "benchmark: prints the time, asserts only that the prefixes arrive"]
fn frr_10k_prefixes_time_to_rib() {
    let mut lab = Lab::new("scale", 1);
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
                "198.18.0.20",
                &format!("198.19.{}.{}/32", i / 256, i % 256),
            )
        })
        .collect();
    let start = Instant::now();
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, routes));
    let established = {
        sp.wait_state("Established", Duration::from_secs(30));
        start.elapsed()
    };
    // `show bgp summary` counts received prefixes without dumping 10k routes as JSON.
    wait_for(Duration::from_secs(60), "10,001 prefixes in FRR", || {
        let v = frr.vtysh("show bgp ipv4 unicast summary json")?;
        (v["peers"][speaker_addr(0)]["pfxRcd"].as_u64()? >= 10_001).then_some(())
    });
    let total = start.elapsed();
    println!(
        "BGP scale: Established after {established:?}; 10,000 pod blocks (+1) in FRR's RIB after {total:?} from process start"
    );
}
