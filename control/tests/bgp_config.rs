//! The `bgp` configuration section, password sources and status rendering.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;

#[test]
fn config_section_mirrors_bgp_cluster_config() {
    use hybridway_control::bgp::config::{BgpConfig, ConfigError};
    let dir = std::env::temp_dir().join(format!("hw-bgp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    write(
        "bgp:
  localASN: 65010
  nodeName: hybrid-node-1
  bgpSpeakers:
  - name: hybrid-node-1
    peers:
    - name: switch-1
      peerASN: 65001
      peerAddress: 198.18.0.1
      authPassword:
        secretKeyRef: {name: bgp-secret, key: password}
  routes:
  - {node: hybrid-node-1, nodeAddress: 198.18.0.10, podBlock: 198.19.1.0/24}
",
    );
    let cfg = BgpConfig::load(&path).unwrap();
    assert_eq!(cfg.local_asn, 65010);
    assert_eq!(cfg.restart_time, 600, "graceful restart defaults to 600 s");
    assert_eq!(cfg.router_id(), Some(Ipv4Addr::new(198, 18, 0, 10)));
    let peer = &cfg.speaker().unwrap().peers[0];
    assert_eq!(peer.peer_asn, 65001);
    let src = hybridway_control::bgp::password::from_ref(
        peer.auth_password.as_ref().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let err = src.password().unwrap_err().to_string();
    assert!(err.contains("bgp-secret"), "{err}");

    write(
        "bgp:\n  localASN: 65010\n  nodeName: x\n  restartTime: 4096\n  bgpSpeakers: [{name: x, peers: []}]\n  routerID: 198.18.0.1\n",
    );
    assert!(matches!(BgpConfig::load(&path), Err(ConfigError::Invalid(m)) if m.contains("4095")));
    write(
        "bgp:\n  localASN: 65010\n  nodeName: y\n  bgpSpeakers: [{name: x, peers: []}]\n  routerID: 198.18.0.1\n",
    );
    assert!(
        matches!(BgpConfig::load(&path), Err(ConfigError::Invalid(m)) if m.contains("bgpSpeakers"))
    );
    write(
        "bgp:\n  localASN: 65010\n  nodeName: x\n  bgpSpeakers: [{name: x, peers: []}]\n  routerID: 198.18.0.1\n  routes: [{node: x, nodeAddress: 198.18.0.1, podBlock: 198.19.1.0/33}]\n",
    );
    assert!(matches!(
        BgpConfig::load(&path),
        Err(ConfigError::Yaml { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
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
