//! BGP inside the agent, configured only through a `BGPClusterConfig` and a Secret
//! on a real API server, against FRR as the switch:
//!
//! ```text
//!  switch ns: FRR bgpd (AS 65001) on br0 198.18.0.1/24
//!     ├── s0 ns: eth0 198.18.0.10/24, agent of Node s0 (speaker, block 198.19.150.0/24)
//!     └── s1 ns: eth0 198.18.0.11/24, agent of Node s1 (speaker, block 198.19.151.0/24)
//!  Node n2: same pool, no agent here, 198.18.5.20 (off the switch's subnet), 198.19.152.0/24
//!  s0, s1 also reach the API server through k8s0 on the rig's bridge.
//! ```
//!
//! Routes for every block of the pool with the right next hops (the owning node on
//! the switch's subnet, else the speaker); status through `kubectl`; a Secret
//! rotation re-establishes with the new password; the second speaker keeps the
//! routes when the first stops; a Secret the shared Role does not name is never
//! read (status and log say so). The agent runs with deploy/agent-rbac.yaml and
//! deploy/bgp-secrets-rbac.yaml, which names only `bgp-secret`. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::controller::{BLOCK, MODE, install};
use common::k8s_lab::KubeLab;
use common::kube_agent::KubeAgent;
use common::{Frr, FrrNeighbor, Lab, SWITCH_ADDR, speaker_addr, wait_for};

const T: Duration = Duration::from_secs(60);

fn node_yaml(name: &str, addr: &str, block: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{hybridway.test/pool: bgp}}\n  annotations: {{{BLOCK}: \"{block}\", {MODE}: underlay}}\nspec: {{podCIDR: \"{block}\"}}\nstatus:\n  addresses: [{{type: InternalIP, address: {addr}}}]\n"
    )
}

fn secret_yaml(password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bgp-secret, namespace: kube-system}}\nstringData: {{password: {password}}}\n"
    )
}

const RESOURCE: &str = "\
apiVersion: network.alibabacloud.com/v1beta1
kind: BGPClusterConfig
metadata: {name: bgp}
spec:
  localASN: 65010
  nodeSelector: {matchLabels: {hybridway.test/pool: bgp}}
  bgpSpeakers:
  - name: s0
    peers:
    - {name: switch-1, peerASN: 65001, peerAddress: 198.18.0.1, authPassword: {secretKeyRef: {name: bgp-secret, key: password}}}
  - name: s1
    peers:
    - {name: switch-1, peerASN: 65001, peerAddress: 198.18.0.1, authPassword: {secretKeyRef: {name: bgp-secret, key: password}}}
";

fn apply(lab: &KubeLab, manifest: &str) {
    let out = lab.apply(manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Speaker → (peer state, prefixes advertised, last error) from the resource's status.
fn sessions(lab: &KubeLab) -> Vec<(String, String, i64, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "bgpclusterconfig", "bgp", "-o", "json"]))
            .unwrap();
    let mut out = Vec::new();
    for s in v["status"]["speakers"].as_array().into_iter().flatten() {
        for p in s["peers"].as_array().into_iter().flatten() {
            out.push((
                s["name"].as_str().unwrap_or_default().to_string(),
                p["state"].as_str().unwrap_or_default().to_string(),
                p["prefixesAdvertised"].as_i64().unwrap_or(0),
                p["lastError"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// How many times FRR's session with speaker `i` reached Established.
fn established_count(frr: &Frr, i: usize) -> u64 {
    let a = speaker_addr(i);
    frr.vtysh(&format!("show bgp neighbors {a} json"))
        .and_then(|v| v[&a]["connectionsEstablished"].as_u64())
        .unwrap_or(0)
}

fn frr_password(frr: &Frr, peer: &str, password: &str) {
    let out = Command::new("vtysh")
        .args(["--vty_socket", frr.dir.to_str().unwrap()])
        .args(["-c", "configure terminal", "-c", "router bgp 65001"])
        .args(["-c", &format!("neighbor {peer} password {password}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn speakers_follow_the_bgpclusterconfig_and_its_secret() {
    let lab = KubeLab::up();
    install(&lab);
    for rbac in ["agent-rbac.yaml", "bgp-secrets-rbac.yaml"] {
        let rbac = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(rbac);
        lab.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()]);
    }
    let kubeconfig = lab.service_account_kubeconfig("kube-system", "hybridway-agent");

    let mut net = Lab::new("akb", 2);
    for (i, ns) in net.speakers.iter().enumerate() {
        lab.attach(ns, "k8s0", &format!("198.18.64.{}/32", 90 + i));
        // n2 is off the switch's subnet: reached through the switch.
        common::sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            SWITCH_ADDR,
        ]);
    }
    apply(&lab, &node_yaml("s0", &speaker_addr(0), "198.19.150.0/24"));
    apply(&lab, &node_yaml("s1", &speaker_addr(1), "198.19.151.0/24"));
    apply(&lab, &node_yaml("n2", "198.18.5.20", "198.19.152.0/24"));
    apply(&lab, &secret_yaml("pw-one"));
    apply(&lab, RESOURCE);
    let neighbors: Vec<FrrNeighbor> = (0..2)
        .map(|i| FrrNeighbor {
            addr: speaker_addr(i),
            asn: 65010,
            password: Some("pw-one".into()),
        })
        .collect();
    let frr = Frr::start(&mut net, &neighbors);

    let dir = net.dir.clone();
    let mut agents: Vec<KubeAgent> = (0..2)
        .map(|i| KubeAgent::new(&format!("s{i}"), &net.speakers[i], &dir))
        .collect();
    for a in &mut agents {
        a.start(&kubeconfig);
    }

    // Every block of the pool, next hop the owner when it shares the switch's
    // subnet, else the speaker that advertised it.
    // FRR may show both sessions Established before the UPDATEs land: the next
    // hops are part of what is waited for, and shown when they never come.
    let nh = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = frr.paths(p).into_iter().map(|(nh, _)| nh).collect();
        v.sort();
        v.dedup();
        v
    };
    let want = vec![
        vec![speaker_addr(0)],
        vec![speaker_addr(1)],
        vec![speaker_addr(0), speaker_addr(1)],
    ];
    let mut seen = Vec::new();
    let settled = hybridway_lab::poll(T, || {
        let up = (0..2).all(|i| frr.peer_state(&speaker_addr(i)).as_deref() == Some("Established"));
        seen = ["198.19.150.0/24", "198.19.151.0/24", "198.19.152.0/24"]
            .map(nh)
            .to_vec();
        (up && seen == want).then_some(())
    });
    assert!(
        settled.is_some(),
        "both sessions up and every block in FRR with its next hops (150, 151, 152): {seen:?}, want {want:?}"
    );

    // Status where users look.
    let st = wait_for(T, "status shows both sessions Established", || {
        let s = sessions(&lab);
        (s.len() == 2 && s.iter().all(|x| x.1 == "Established" && x.2 == 3)).then_some(s)
    });
    eprintln!("status.speakers: {st:?}");
    let wide = lab.kubectl_ok(&["get", "bgpclusterconfig", "bgp", "-o", "yaml"]);
    assert!(
        !wide.contains("pw-one"),
        "the password must never be in status"
    );

    // A block added to the pool is advertised without restarting anything.
    apply(&lab, &node_yaml("n3", "198.18.5.21", "198.19.153.0/24"));
    wait_for(T, "the new block in FRR", || {
        frr.routes().contains_key("198.19.153.0/24").then_some(())
    });
    lab.kubectl_ok(&["delete", "node", "n3"]);
    wait_for(T, "the deleted node's block withdrawn", || {
        (!frr.routes().contains_key("198.19.153.0/24")).then_some(())
    });

    // Secret rotation: the switch and the Secret change; the sessions come back
    // (new connections, counted by FRR).
    let before: Vec<u64> = (0..2).map(|i| established_count(&frr, i)).collect();
    for i in 0..2 {
        frr_password(&frr, &speaker_addr(i), "pw-two");
    }
    // FRR resets a session whose password changes.
    apply(&lab, &secret_yaml("pw-two"));
    wait_for(T, "sessions re-established with the new password", || {
        (0..2)
            .all(|i| {
                frr.peer_state(&speaker_addr(i)).as_deref() == Some("Established")
                    && established_count(&frr, i) > before[i]
            })
            .then_some(())
    });
    let logs: String = agents.iter().map(KubeAgent::log_text).collect();
    assert!(logs.contains("passwords changed"), "no re-key in the logs");
    assert!(!logs.contains("pw-two") && !logs.contains("pw-one"));

    // The first speaker stops for good: the second keeps every route.
    agents[0].stop("KILL");
    wait_for(T, "FRR sees s0 gone", || {
        (frr.peer_state(&speaker_addr(0)).as_deref() != Some("Established")).then_some(())
    });
    for p in ["198.19.150.0/24", "198.19.151.0/24", "198.19.152.0/24"] {
        let paths = frr.paths(p);
        assert!(
            paths
                .iter()
                .any(|(nh, stale)| !stale && (nh == &speaker_addr(1) || p == "198.19.150.0/24")),
            "{p}: {paths:?}"
        );
    }

    // A Secret key that does not exist is a status reason, not a crash.
    apply(
        &lab,
        &RESOURCE.replace("key: password}}}\n", "key: nope}}}\n"),
    );
    wait_for(T, "status names the missing key", || {
        sessions(&lab)
            .iter()
            .any(|s| s.0 == "s1" && s.3.contains("no key nope"))
            .then_some(())
    });
    assert!(agents[1].status().is_some(), "the agent is still running");

    // A Secret the shared Role does not name (deploy/bgp-secrets-rbac.yaml
    // resourceNames) is never read: the peer's status says the agent may not read
    // it (not that it is missing), the log says what to add.
    apply(
        &lab,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: other-secret, namespace: kube-system}\nstringData: {password: pw-two}\n",
    );
    apply(
        &lab,
        &RESOURCE.replace(
            "name: bgp-secret, key: password",
            "name: other-secret, key: password",
        ),
    );
    wait_for(T, "status names the unreadable Secret", || {
        sessions(&lab)
            .iter()
            .any(|s| s.0 == "s1" && s.3.contains("other-secret is not readable by the agent"))
            .then_some(())
    });
    assert!(
        agents[1]
            .log_text()
            .contains("may not read this BGP password Secret"),
        "no hint in the agent's log"
    );
    assert!(!agents[1].log_text().contains("pw-two"));
}
