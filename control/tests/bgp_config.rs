//! The agent file's `bgp` section and the speaker it plans, password sources and
//! status rendering.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;

/// An agent's file with a `bgp` section (`{bgp}`, indented two spaces) and nodes
/// in two modes.
fn agent_file(bgp: &str) -> String {
    format!(
        "node: {{name: hybrid-node-1, address: 198.18.64.10}}
mode: underlay
uplink: {{interface: eth0}}
pods: {{block: 198.19.128.0/24, gateway: 198.19.128.1}}
nodes:
- {{name: hybrid-node-2, address: 198.18.64.11, podBlock: 198.19.129.0/24}}
- {{name: hybrid-node-3, address: 198.18.70.12, podBlock: 198.19.130.0/24}}
- {{name: cloud-1, address: 198.18.0.20, podBlock: 198.19.1.0/24, mode: overlay, vtepMac: \"02:00:00:00:00:20\"}}
bgp:
{bgp}"
    )
}

const SECTION: &str = "  localASN: 65010
  bgpSpeakers:
  - name: hybrid-node-1
    peers:
    - name: switch-1
      peerASN: 65001
      peerAddress: 198.18.64.1
      authPassword:
        secretKeyRef: {name: bgp-secret, key: password}
";

/// One configuration model: the speaker's routes are the file's own node and the
/// nodes of its pool (its mode), next to the peers of the `bgp` section; nothing
/// lists them twice.
#[test]
fn the_speaker_advertises_the_pool_of_the_agents_file() {
    use hybridway_control::agent::{AgentConfig, bgp};
    let cfg = AgentConfig::from_yaml(&agent_file(SECTION)).unwrap();
    let plan = bgp::plan(&cfg, std::path::Path::new("agent.yaml")).unwrap();
    let c = &plan.config;
    assert_eq!(c.settings.local_asn, 65010);
    assert_eq!(
        c.settings.restart_time, 600,
        "graceful restart defaults to 600 s"
    );
    assert_eq!(c.router_id(), Some(Ipv4Addr::new(198, 18, 64, 10)));
    let routes: Vec<(String, String)> = c
        .routes
        .iter()
        .map(|r| (r.node.clone(), r.pod_block.to_string()))
        .collect();
    assert_eq!(
        routes,
        [
            ("hybrid-node-1".to_string(), "198.19.128.0/24".to_string()),
            ("hybrid-node-2".into(), "198.19.129.0/24".into()),
            ("hybrid-node-3".into(), "198.19.130.0/24".into()),
        ],
        "the cloud node (another mode) is not in the pool"
    );
    let peer = &c.speaker().unwrap().peers[0];
    assert_eq!(peer.peer_asn, 65001);
    assert!(
        !peer.import_routes,
        "received routes are not imported by default"
    );
    let src = hybridway_control::bgp::password::from_ref(
        peer.auth_password.as_ref().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let err = src.password().unwrap_err().to_string();
    assert!(err.contains("bgp-secret"), "{err}");

    // A node not listed under bgpSpeakers runs no speaker; no section, none either.
    let other = agent_file(SECTION).replace("- name: hybrid-node-1", "- name: hybrid-node-2");
    let cfg = AgentConfig::from_yaml(&other).unwrap();
    assert_eq!(bgp::plan(&cfg, std::path::Path::new("a")), None);
}

/// Errors in the section name the field under `bgp.` (and, from the parser, the
/// line); the old separate route list is refused as an unknown field.
#[test]
fn errors_in_the_bgp_section_name_the_field() {
    use hybridway_control::agent::AgentConfig;
    let err = |section: &str| {
        AgentConfig::from_yaml(&agent_file(section))
            .unwrap_err()
            .to_string()
    };
    let e = err(&format!("{SECTION}  restartTime: 4096\n"));
    assert!(
        e.contains("bgp.restartTime (line 19)") && e.contains("4095"),
        "{e}"
    );
    let e = err(&format!("{SECTION}  holdTime: 2\n"));
    assert!(e.contains("bgp.holdTime"), "{e}");
    let e = err(&SECTION.replace("peerASN: 65001", "peerASN: 0"));
    assert!(
        e.contains("bgp.bgpSpeakers[0].peers[0].peerASN (line 15)"),
        "{e}"
    );
    let e = err(&SECTION.replace("peerAddress: 198.18.64.1", "peerAddress: 198.18.64"));
    assert!(
        e.contains("bgp.bgpSpeakers[0].peers[0].peerAddress") && e.contains("line 16"),
        "{e}"
    );
    let e = err(&format!(
        "{SECTION}  routes:\n  - {{node: x, nodeAddress: 198.18.0.1, podBlock: 198.19.1.0/24}}\n"
    ));
    assert!(
        e.contains("unknown field `routes`") && e.contains("line"),
        "{e}"
    );
}

/// The agent in file mode runs the speaker in-process from its own file, where
/// `hybridway status` finds its sessions, and a re-read file re-plans it (here: the
/// section removed stops it). No root: it listens on a high port of 127.0.0.1
/// towards a peer that never answers.
#[tokio::test]
async fn the_agent_runs_the_speaker_of_its_file_and_follows_reloads() {
    use hybridway_control::agent::AgentConfig;
    use hybridway_control::agent::bgp::FileSpeaker;
    let section = SECTION
        .replace("peerAddress: 198.18.64.1", "peerAddress: 127.0.0.2")
        .replace(
            "      authPassword:\n        secretKeyRef: {name: bgp-secret, key: password}\n",
            "",
        )
        + &format!(
            "  listenAddress: 127.0.0.1\n  listenPort: {}\n",
            20000 + std::process::id() % 20000
        );
    let cfg = AgentConfig::from_yaml(&agent_file(&section)).unwrap();
    let path = std::path::Path::new("agent.yaml");
    let speaker = FileSpeaker::spawn(&cfg, path);
    let current = speaker.current();
    let peers = loop {
        if let Some(p) = current.snapshot(std::time::Instant::now()) {
            break p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].name, "switch-1");
    assert_eq!(peers[0].peer_asn, 65001);

    // The file loses its bgp section: the speaker stops, status says none runs.
    let mut without = cfg.clone();
    without.bgp = None;
    speaker.update(&without);
    loop {
        if current.snapshot(std::time::Instant::now()).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    speaker
        .stop(hybridway_control::bgp::speaker::StopMode::Cease)
        .await;
}

#[test]
fn password_file_and_redacted_debug() {
    use hybridway_control::bgp::password::{FilePassword, PasswordSource};
    let path = std::env::temp_dir().join(format!("hw-bgp-pw-{}", std::process::id()));
    std::fs::write(&path, "hunter2\n").unwrap();
    let pw = FilePassword(path.clone()).password().unwrap();
    assert_eq!(pw.bytes(), b"hunter2");
    assert!(!format!("{pw:?}").contains("hunter2"));
    std::fs::write(&path, "x".repeat(81)).unwrap();
    assert!(FilePassword(path.clone()).password().is_err());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn status_renders_json_and_prometheus() {
    use hybridway_control::bgp::fsm::State;
    use hybridway_control::bgp::status::{self, PeerStatus, StatusHandle};
    let h = StatusHandle::default();
    let now = std::time::Instant::now();
    h.insert(PeerStatus {
        name: "switch-1".into(),
        peer_address: "198.18.0.1".parse().unwrap(),
        peer_asn: 65001,
        state: State::Active,
        since: now,
        prefixes_advertised: 7,
        prefixes_received: 0,
        updates_received: 0,
        updates_treated_as_withdraw: 2,
        routes_imported: 0,
        established_count: 1,
        negotiated: None,
        last_error: Some("peer sent NOTIFICATION: cease (6/2)".into()),
    });
    let peers = h.snapshot(now + std::time::Duration::from_secs(5));
    assert_eq!(peers[0].seconds_in_state, 5.0);
    let json: serde_json::Value = serde_json::from_str(&status::to_json(&peers)).unwrap();
    assert_eq!(json["peers"][0]["state"], "Active");
    assert_eq!(
        json["peers"][0]["lastError"],
        "peer sent NOTIFICATION: cease (6/2)"
    );
    let prom = status::to_prometheus(&peers);
    assert!(prom.contains("hybridway_bgp_peer_state{peer=\"switch-1\",state=\"Active\"} 1"));
    assert!(prom.contains("hybridway_bgp_peer_state{peer=\"switch-1\",state=\"Established\"} 0"));
    assert!(prom.contains("hybridway_bgp_peer_prefixes_advertised{peer=\"switch-1\"} 7"));
    assert!(prom.contains("hybridway_bgp_peer_seconds_in_state{peer=\"switch-1\"} 5"));
    assert!(
        prom.contains("hybridway_bgp_peer_updates_treated_as_withdraw_total{peer=\"switch-1\"} 2")
    );
    assert_eq!(json["peers"][0]["updatesTreatedAsWithdraw"], 2);
}
