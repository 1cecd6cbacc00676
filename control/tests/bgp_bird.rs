//! The speaker against BIRD 2 acting as the switch (eBGP). Needs root; runs for real.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn neighbor(i: usize, password: Option<&str>) -> FrrNeighbor {
    FrrNeighbor {
        addr: speaker_addr(i),
        asn: 65010,
        password: password.map(String::from),
    }
}

fn has(routes: &[(String, String)], prefix: &str, nh: &str) -> bool {
    routes.iter().any(|(p, n)| p == prefix && n == nh)
}

#[test]
fn bird_established_routes_next_hops_and_withdraw() {
    let mut lab = Lab::new("bird", 1);
    let bird = Bird::start(&mut lab, &[neighbor(0, None)]);
    let pool = vec![
        route("node-b", "198.18.0.20", "198.19.1.0/24"),
        route("node-c", "198.18.7.30", "198.19.2.0/24"),
    ];
    let mut sp = start_speaker(&mut lab, SpeakerSpec::new(0, pool.clone()));
    let st = sp.wait_state("Established", T);
    assert_eq!(st["negotiated"]["peerASN"], 65001);
    let routes = wait_for(T, "pod blocks in BIRD", || {
        let r = bird.bgp_routes();
        (r.len() == 3).then_some(r)
    });
    assert!(has(&routes, "198.19.1.0/24", "198.18.0.20"), "{routes:?}");
    assert!(
        has(&routes, "198.19.2.0/24", &speaker_addr(0)),
        "{routes:?}"
    );
    assert!(
        has(&routes, &sp.own_block(), &speaker_addr(0)),
        "{routes:?}"
    );
    let proto = bird.birdc("show protocols speaker0").unwrap();
    assert!(proto.contains("Established"), "{proto}");

    sp.set_routes(&mut lab, vec![pool[1].clone()]);
    wait_for(T, "198.19.1.0/24 withdrawn in BIRD", || {
        let r = bird.bgp_routes();
        (r.len() == 2 && !r.iter().any(|(p, _)| p == "198.19.1.0/24")).then_some(())
    });
}

#[test]
fn bird_md5_and_two_speakers() {
    let mut lab = Lab::new("birdtwo", 2);
    let bird = Bird::start(
        &mut lab,
        &[neighbor(0, Some("bird-pw")), neighbor(1, Some("bird-pw"))],
    );
    let remote = vec![route("node-c", "198.18.7.30", "198.19.2.0/24")];
    let mut specs = Vec::new();
    for i in 0..2 {
        let mut s = SpeakerSpec::new(i, remote.clone());
        s.password_file = Some(password_file(&lab, &format!("pw{i}"), "bird-pw"));
        specs.push(s);
    }
    let sp0 = start_speaker(&mut lab, specs[0].clone());
    let sp1 = start_speaker(&mut lab, specs[1].clone());
    sp0.wait_state("Established", T);
    sp1.wait_state("Established", T);
    wait_for(T, "the pool block via both speakers", || {
        let r = bird
            .birdc("show route 198.19.2.0/24 all")
            .unwrap_or_default();
        let r = parse_bird_routes(&r);
        (has(&r, "198.19.2.0/24", &speaker_addr(0)) && has(&r, "198.19.2.0/24", &speaker_addr(1)))
            .then_some(())
    });
    sp0.signal(&mut lab, "INT");
    sp0.wait_exit(&mut lab, T);
    wait_for(T, "the pool block via speaker 1 only", || {
        let r = parse_bird_routes(
            &bird
                .birdc("show route 198.19.2.0/24 all")
                .unwrap_or_default(),
        );
        (r == vec![("198.19.2.0/24".to_string(), speaker_addr(1))]).then_some(())
    });
}

#[test]
fn bird_graceful_restart_keeps_routes_then_refreshes_or_drops() {
    let mut lab = Lab::new("birdgr", 1);
    let bird = Bird::start(&mut lab, &[neighbor(0, None)]);
    let pool = vec![route("node-b", "198.18.0.20", "198.19.1.0/24")];
    let mut spec = SpeakerSpec::new(0, pool);
    spec.restart_time = 5;
    let sp = start_speaker(&mut lab, spec.clone());
    wait_for(T, "routes in BIRD", || {
        (bird.bgp_routes().len() == 2).then_some(())
    });

    // Killed hard: BIRD keeps the routes while it waits for us (without graceful
    // restart it would drop them as soon as TCP closes).
    sp.kill9(&mut lab);
    wait_for(T, "BIRD notices the session went down", || {
        bird.birdc("show protocols speaker0")
            .filter(|p| !p.contains("Established"))
    });
    assert_eq!(
        bird.bgp_routes().len(),
        2,
        "routes kept during the restart time"
    );
    let sp2 = start_speaker(&mut lab, spec.clone());
    sp2.wait_state("Established", T);
    wait_for(T, "routes refreshed", || {
        (bird.bgp_routes().len() == 2).then_some(())
    });

    // Killed again and not restarted: dropped once the 5 s restart time runs out.
    sp2.kill9(&mut lab);
    let start = std::time::Instant::now();
    wait_for(Duration::from_secs(20), "BIRD drops the routes", || {
        bird.bgp_routes().is_empty().then_some(())
    });
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "dropped only after the restart time"
    );
}

#[test]
fn bird_md5_wrong_password_never_establishes() {
    let mut lab = Lab::new("birdmd5", 1);
    let bird = Bird::start(&mut lab, &[neighbor(0, Some("bird-pw"))]);
    let mut spec = SpeakerSpec::new(0, vec![]);
    spec.password_file = Some(password_file(&lab, "pw", "not-bird-pw"));
    let sp = start_speaker(&mut lab, spec);
    wait_for(T, "status explains the MD5 failure", || {
        sp.status().filter(|p| {
            p["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("password differs"))
        })
    });
    std::thread::sleep(Duration::from_secs(4));
    let st = sp.status().unwrap();
    assert_eq!(st["establishedCount"], 0, "{st}");
    assert!(
        !bird
            .birdc("show protocols speaker0")
            .unwrap()
            .contains("Established")
    );
    assert!(bird.bgp_routes().is_empty());
}
