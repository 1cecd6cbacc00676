//! The speaker against FRR's bgpd acting as the data-centre switch (eBGP), each in
//! its own network namespace. Needs root; runs for real.

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

fn neighbor(i: usize) -> FrrNeighbor {
    FrrNeighbor {
        addr: speaker_addr(i),
        asn: 65010,
        password: None,
    }
}

/// FRR's view of our graceful-restart capability.
fn grace_info(frr: &Frr) -> serde_json::Value {
    let v = frr
        .vtysh(&format!("show bgp neighbors {} json", speaker_addr(0)))
        .unwrap();
    v[speaker_addr(0)]["gracefulRestartInfo"].clone()
}

fn pool() -> Vec<Route> {
    vec![
        // On the subnet shared with the switch: next hop is the node itself.
        route("node-b", "198.18.0.20", "198.19.1.0/24"),
        // In another layer-3 domain: next hop is the speaker.
        route("node-c", "198.18.7.30", "198.19.2.0/24"),
    ]
}

#[test]
fn frr_established_routes_next_hops_and_withdraw() {
    let mut lab = Lab::new("frr", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let mut sp = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));

    wait_for(T, "FRR Established", || {
        frr.peer_state(&speaker_addr(0))
            .filter(|s| s == "Established")
    });
    let st = sp.wait_state("Established", T);
    assert_eq!(st["negotiated"]["peerASN"], 65001);
    assert_eq!(st["negotiated"]["fourOctetAs"], true);
    assert_eq!(st["negotiated"]["routeRefresh"], true);
    assert_eq!(st["negotiated"]["families"][0], "ipv4-unicast");

    wait_for(T, "three pod blocks in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    assert_eq!(
        frr.paths("198.19.1.0/24"),
        vec![("198.18.0.20".to_string(), false)]
    );
    assert_eq!(frr.paths("198.19.2.0/24"), vec![(speaker_addr(0), false)]);
    assert_eq!(frr.paths(&sp.own_block()), vec![(speaker_addr(0), false)]);
    let routes = frr.routes();
    assert_eq!(routes["198.19.1.0/24"][0]["path"], "65010");
    wait_for(T, "status counts 3 prefixes", || {
        sp.status().filter(|p| p["prefixesAdvertised"] == 3)
    });

    // Remove one block and add another while the session runs.
    let mut changed = pool();
    changed.remove(0);
    changed.push(route("node-d", "198.18.0.40", "198.19.4.0/24"));
    sp.set_routes(&mut lab, changed);
    wait_for(
        T,
        "198.19.1.0/24 withdrawn and 198.19.4.0/24 announced",
        || {
            let r = frr.routes();
            (!r.contains_key("198.19.1.0/24") && r.contains_key("198.19.4.0/24")).then_some(())
        },
    );
    assert_eq!(
        frr.paths("198.19.4.0/24"),
        vec![("198.18.0.40".to_string(), false)]
    );
    assert_eq!(
        frr.peer_state(&speaker_addr(0)).as_deref(),
        Some("Established"),
        "no session reset"
    );

    let metrics = std::fs::read_to_string(&sp.metrics).unwrap();
    assert!(
        metrics.contains("hybridway_bgp_peer_state{peer=\"switch\",state=\"Established\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hybridway_bgp_peer_prefixes_advertised{peer=\"switch\"} 3"),
        "{metrics}"
    );
}

#[test]
fn frr_md5_matching_password_establishes() {
    let mut lab = Lab::new("md5ok", 1);
    let frr = Frr::start(
        &mut lab,
        &[FrrNeighbor {
            password: Some("s3cret-pw".into()),
            ..neighbor(0)
        }],
    );
    let mut spec = SpeakerSpec::new(0, pool());
    spec.password_file = Some(password_file(&lab, "pw", "s3cret-pw"));
    let sp = start_speaker(&mut lab, spec);
    sp.wait_state("Established", T);
    wait_for(T, "routes in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    let log = std::fs::read_dir(&lab.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("speaker0-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        !log.contains("s3cret-pw"),
        "the password must never be logged"
    );
}

#[test]
fn frr_md5_wrong_password_never_establishes_and_status_says_why() {
    let mut lab = Lab::new("md5bad", 1);
    let frr = Frr::start(
        &mut lab,
        &[FrrNeighbor {
            password: Some("switch-pw".into()),
            ..neighbor(0)
        }],
    );
    let mut spec = SpeakerSpec::new(0, pool());
    spec.password_file = Some(password_file(&lab, "pw", "other-pw"));
    let sp = start_speaker(&mut lab, spec);
    let st = wait_for(T, "status explains the MD5 failure", || {
        sp.status().filter(|p| {
            p["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("password differs"))
        })
    });
    assert_ne!(st["state"], "Established");
    // Give it several retry rounds: it must never come up.
    std::thread::sleep(Duration::from_secs(6));
    assert_ne!(sp.status().unwrap()["state"], "Established");
    assert_eq!(sp.status().unwrap()["establishedCount"], 0);
    assert_ne!(
        frr.peer_state(&speaker_addr(0)).as_deref(),
        Some("Established")
    );
    assert!(frr.routes().is_empty());
}

#[test]
fn frr_missing_password_source_is_reported_not_a_crash() {
    let mut lab = Lab::new("md5none", 1);
    let _frr = Frr::start(
        &mut lab,
        &[FrrNeighbor {
            password: Some("switch-pw".into()),
            ..neighbor(0)
        }],
    );
    let mut spec = SpeakerSpec::new(0, pool());
    spec.password_file = Some(lab.path("does-not-exist"));
    let sp = start_speaker(&mut lab, spec);
    let st = wait_for(T, "status names the missing password file", || {
        sp.status().filter(|p| {
            p["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("cannot read password file"))
        })
    });
    assert_ne!(st["state"], "Established");
    assert!(
        lab.child(sp.idx).try_wait().unwrap().is_none(),
        "speaker still running"
    );
}

#[test]
fn frr_graceful_restart_kill_and_come_back() {
    let mut lab = Lab::new("grback", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    wait_for(T, "routes in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    let st = sp.wait_state("Established", T);
    assert!(
        st["negotiated"]["gracefulRestartTime"].is_number(),
        "GR negotiated: {st}"
    );

    assert_eq!(
        grace_info(&frr)["rBit"],
        false,
        "a first start is not a restart"
    );

    sp.kill9(&mut lab);
    wait_for(T, "FRR marks our routes stale", || {
        frr.paths("198.19.1.0/24")
            .first()
            .filter(|(_, stale)| *stale)
            .map(|_| ())
    });
    assert_eq!(frr.routes().len(), 3, "routes kept while we restart");
    assert!(frr.paths("198.19.2.0/24")[0].1);

    // Come back (same config) within the restart time.
    let sp2 = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    sp2.wait_state("Established", T);
    // The restart marker was fresh: this OPEN says "I restarted" (R bit), with
    // forwarding preserved (F bit) and our restart time.
    let gr = grace_info(&frr);
    assert_eq!(gr["rBit"], true, "{gr}");
    assert_eq!(gr["ipv4Unicast"]["fBit"], true, "{gr}");
    assert_eq!(gr["timers"]["receivedRestartTimer"], 600, "{gr}");
    wait_for(T, "stale marks cleared after End-of-RIB", || {
        let r = frr.routes();
        let fresh = ["198.19.1.0/24", "198.19.2.0/24"]
            .iter()
            .all(|p| frr.paths(p).iter().all(|(_, s)| !s));
        (r.len() == 3 && fresh).then_some(())
    });
    assert_eq!(
        frr.paths("198.19.1.0/24"),
        vec![("198.18.0.20".to_string(), false)]
    );
}

#[test]
fn frr_graceful_restart_routes_dropped_when_not_back_in_time() {
    let mut lab = Lab::new("grgone", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let mut spec = SpeakerSpec::new(0, pool());
    spec.restart_time = 5;
    let sp = start_speaker(&mut lab, spec);
    wait_for(T, "routes in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    sp.kill9(&mut lab);
    wait_for(T, "stale", || {
        frr.paths("198.19.1.0/24")
            .first()
            .filter(|(_, s)| *s)
            .map(|_| ())
    });
    let start = std::time::Instant::now();
    wait_for(
        Duration::from_secs(20),
        "FRR drops the stale routes",
        || frr.routes().is_empty().then_some(()),
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "dropped only after the restart time, not at once ({waited:?})"
    );
}

#[test]
fn frr_planned_stop_keeps_routes_stale_but_final_stop_withdraws() {
    let mut lab = Lab::new("stop", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    wait_for(T, "routes in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    // SIGTERM: planned restart, no Cease.
    sp.signal(&mut lab, "TERM");
    sp.wait_exit(&mut lab, T);
    wait_for(T, "stale after planned stop", || {
        frr.paths("198.19.1.0/24")
            .first()
            .filter(|(_, s)| *s)
            .map(|_| ())
    });

    let sp2 = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    sp2.wait_state("Established", T);
    wait_for(T, "fresh again", || {
        frr.paths("198.19.1.0/24")
            .first()
            .filter(|(_, s)| !*s)
            .map(|_| ())
    });
    // SIGINT: final stop with a Cease: FRR withdraws immediately.
    sp2.signal(&mut lab, "INT");
    sp2.wait_exit(&mut lab, T);
    // "Immediately" is the protocol's (no graceful-restart hold), not a time: a
    // retained stale path would stay for the 600 s restart time, far beyond T.
    wait_for(T, "routes withdrawn after Cease", || {
        frr.routes().is_empty().then_some(())
    });
}

#[test]
fn frr_two_speakers_one_pool_survives_one_stopping() {
    let mut lab = Lab::new("two", 2);
    let frr = Frr::start(&mut lab, &[neighbor(0), neighbor(1)]);
    let remote = vec![route("node-c", "198.18.7.30", "198.19.2.0/24")];
    let sp0 = start_speaker(&mut lab, SpeakerSpec::new(0, remote.clone()));
    let _sp1 = start_speaker(&mut lab, SpeakerSpec::new(1, remote));
    wait_for(T, "two paths for the pool block", || {
        (frr.paths("198.19.2.0/24").len() == 2).then_some(())
    });
    let mut hops: Vec<String> = frr
        .paths("198.19.2.0/24")
        .into_iter()
        .map(|(nh, _)| nh)
        .collect();
    hops.sort();
    assert_eq!(hops, vec![speaker_addr(0), speaker_addr(1)]);

    // Final stop of speaker 0: its path goes, the block stays reachable via speaker 1.
    sp0.signal(&mut lab, "INT");
    sp0.wait_exit(&mut lab, T);
    wait_for(T, "one path left, via speaker 1", || {
        (frr.paths("198.19.2.0/24") == vec![(speaker_addr(1), false)]).then_some(())
    });
}

#[test]
fn frr_restart_is_survived_as_helper_and_table_resent() {
    let mut lab = Lab::new("peerrestart", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    wait_for(T, "routes in FRR", || {
        (frr.routes().len() == 3).then_some(())
    });
    let st = sp.wait_state("Established", T);
    assert!(st["negotiated"]["gracefulRestartTime"].is_number());

    // The switch's BGP process dies hard and comes back.
    let c = lab.child(frr.idx);
    c.kill().unwrap();
    c.wait().unwrap();
    wait_for(T, "speaker notices the peer went away", || {
        sp.status()
            .filter(|p| p["state"] != "Established" && p["lastError"].as_str().is_some())
    });
    let frr2 = Frr::start(&mut lab, &[neighbor(0)]);
    wait_for(T, "table re-sent to the restarted switch", || {
        (frr2.routes().len() == 3).then_some(())
    });
    let st = sp.wait_state("Established", T);
    // At least the first session and the one after the restart; a connection
    // collision as FRR comes back may legitimately establish (and drop) one more.
    let established = st["establishedCount"].as_u64().unwrap_or(0);
    assert!(
        established >= 2,
        "sessions established: {established}, status {st}"
    );
    assert_eq!(
        frr2.paths("198.19.1.0/24"),
        vec![("198.18.0.20".to_string(), false)]
    );
}

/// The speaker's routes in the kernel of namespace `ns` (`proto bgp`: only what an
/// import installed).
fn imported(ns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "route", "show", "proto", "bgp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the switch announces is installed only where the peer's `importRoutes` is
/// on: speaker 0 (default) receives the prefix and installs nothing, speaker 1
/// installs it via the switch (but not the pool blocks the switch echoes back), and
/// removes it again when its session ends.
#[test]
fn frr_routes_are_imported_only_where_configured() {
    let mut lab = Lab::new("imp", 2);
    let announce = " no bgp network import-check\n address-family ipv4 unicast\n  network 198.18.250.0/24\n exit-address-family\n";
    let _frr = Frr::start_with(&mut lab, &[neighbor(0), neighbor(1)], announce);
    let sp0 = start_speaker(&mut lab, SpeakerSpec::new(0, pool()));
    let mut spec1 = SpeakerSpec::new(1, pool());
    spec1.import_routes = true;
    let sp1 = start_speaker(&mut lab, spec1);
    let (ns0, ns1) = (lab.speakers[0].clone(), lab.speakers[1].clone());
    for sp in [&sp0, &sp1] {
        wait_for(T, "the switch's prefix received", || {
            sp.status()
                .filter(|s| s["prefixesReceived"].as_u64() >= Some(1))
        });
    }
    let route = wait_for(T, "the prefix installed by speaker 1", || {
        Some(imported(&ns1)).filter(|r| r.contains("198.18.250.0/24"))
    });
    assert!(route.contains(&format!("via {SWITCH_ADDR}")), "{route}");
    wait_for(T, "status counts the import", || {
        sp1.status().filter(|s| s["routesImported"] == 1)
    });
    // The switch also passes speaker 0's pool blocks on to speaker 1: AS_PATH holds
    // our own AS, a loop, never installed.
    wait_for(T, "speaker 0's blocks reach speaker 1", || {
        sp1.status()
            .filter(|s| s["prefixesReceived"].as_u64() >= Some(4))
    });
    assert_eq!(imported(&ns1).lines().count(), 1, "{}", imported(&ns1));
    assert_eq!(imported(&ns0), "", "speaker 0 does not import");
    assert_eq!(sp0.status().unwrap()["routesImported"], 0);

    sp1.signal(&mut lab, "INT");
    sp1.wait_exit(&mut lab, T);
    assert_eq!(imported(&ns1), "", "the import ends with the session");
}

/// The agent itself (file mode, TUN backend) runs the speaker of its file: FRR
/// gets the pool's blocks from the same `nodes:` the tables are built from,
/// `hybridway status` shows the session, a node added to the file and
/// `hybridway reload` advertise its block, SIGINT withdraws them all.
#[test]
fn the_agent_in_file_mode_advertises_its_pool_and_follows_reloads() {
    let mut lab = Lab::new("agent", 1);
    let frr = Frr::start(&mut lab, &[neighbor(0)]);
    let spec = SpeakerSpec::new(0, pool());
    let (config, _, _) = write_speaker_config(&lab, &spec);
    let socket = lab.path("agent.sock");
    let local = format!(
        "uplink: {{interface: eth0, gateway: {SWITCH_ADDR}}}\ndataplane: {{backend: tun}}\n\
         control: {{socket: {}, stateFile: {}, addressFile: {}, clusterStateFile: {}}}\n",
        socket.display(),
        lab.path("pods.json").display(),
        lab.path("addresses.json").display(),
        lab.path("cluster.json").display(),
    );
    let agent_yaml = |text: String| text.replace("uplink: {interface: eth0}\n", &local);
    std::fs::write(
        &config,
        agent_yaml(std::fs::read_to_string(&config).unwrap()),
    )
    .unwrap();
    let ns = lab.speakers[0].clone();
    let bin = env!("CARGO_BIN_EXE_hybridway");
    let idx = lab.spawn(
        &ns,
        &[bin, "agent", "--config", config.to_str().unwrap()],
        "agent.log",
    );
    let status = || -> Option<serde_json::Value> {
        let out = std::process::Command::new(bin)
            .args(["status", "--socket"])
            .arg(&socket)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let st = wait_for(T, "the agent's session Established", || {
        status().filter(|s| s["bgp"]["peers"][0]["state"] == "Established")
    });
    assert_eq!(st["bgp"]["peers"][0]["name"], "switch", "{st}");
    let routes = wait_for(T, "the pool in FRR", || {
        Some(frr.routes()).filter(|r| r.len() == 3)
    });
    assert!(routes.contains_key("198.19.1.0/24") && routes.contains_key("198.19.200.0/24"));

    let mut more = spec.clone();
    more.routes
        .push(route("node-d", "198.18.0.40", "198.19.4.0/24"));
    let (config2, _, _) = write_speaker_config(&lab, &more);
    std::fs::write(
        &config2,
        agent_yaml(std::fs::read_to_string(&config2).unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for(T, "the added node's block in FRR", || {
        frr.routes().contains_key("198.19.4.0/24").then_some(())
    });

    let pid = lab.child(idx).id().to_string();
    sh(&["kill", "-INT", &pid]);
    wait_for(T, "the agent exits", || lab.child(idx).try_wait().unwrap());
    wait_for(T, "SIGINT withdraws the pool", || {
        frr.routes().is_empty().then_some(())
    });
}
