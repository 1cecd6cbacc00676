//! BGPClusterConfig on a real kube-apiserver: the generated CRD makes the API server
//! refuse bad objects with the rule's message; the controller reports what CEL cannot
//! see (a missing Secret, a speaker outside the selector) in `status.conditions`; and
//! the controller's RBAC in deploy/ grants what it needs and no more
//! (`kubectl auth can-i` as its ServiceAccount). Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::controller::{ControllerProc, PARAMS, create_all, install, node_yaml, set_params};
use common::k8s_lab::KubeLab;
use common::wait_for;

const WAIT: Duration = Duration::from_secs(90);

fn config(speakers: &[&str], peer_asn: &str, address: &str) -> String {
    let speakers: String = speakers
        .iter()
        .map(|s| {
            format!(
                "  - name: {s}\n    peers:\n    - name: switch-1\n      peerASN: {peer_asn}\n      peerAddress: \"{address}\"\n      authPassword: {{secretKeyRef: {{name: bgp-secret, key: password}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: network.alibabacloud.com/v1beta1\nkind: BGPClusterConfig\nmetadata: {{name: bgp}}\nspec:\n  localASN: 65010\n  nodeSelector: {{matchLabels: {{hybridway.test/pool: a}}}}\n  bgpSpeakers:\n{speakers}"
    )
}

fn refused(lab: &KubeLab, manifest: &str, message: &str) {
    let out = lab.apply(manifest);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{manifest}");
    assert!(err.contains(message), "want {message:?} in:\n{err}");
}

fn condition(lab: &KubeLab, type_: &str) -> String {
    let out = lab.kubectl(&[
        "get",
        "bgpclusterconfig",
        "bgp",
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].reason}}: {{.status.conditions[?(@.type==\"{type_}\")].message}}"),
    ]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn bgp_cluster_config_validation_status_and_rbac() {
    let lab = KubeLab::up();
    install(&lab);

    // The API server refuses what the schema and CEL rules forbid.
    refused(
        &lab,
        &config(&["h1"], "0", "198.18.64.1"),
        "peerASN must be between 1 and 4294967295",
    );
    refused(
        &lab,
        &config(&["h1"], "65001", "198.18.64.300"),
        "peerAddress must be an IPv4 or IPv6 address",
    );
    refused(
        &lab,
        &config(&["h1", "h1"], "65001", "198.18.64.1"),
        "Duplicate value",
    );
    refused(
        &lab,
        &config(&["h1"], "65001", "198.18.64.1").replace("  localASN: 65010\n", ""),
        "spec.localASN: Required value",
    );

    // What only the controller can check shows in conditions.
    set_params(&lab, PARAMS);
    create_all(
        &lab,
        &[
            node_yaml("h1", Some("a"), "198.18.64.11", None),
            node_yaml("c1", None, "198.18.0.11", None),
        ],
    );
    let _ctrl = ControllerProc::start(&lab, lab.kubeconfig(), "bgp-1");
    let out = lab.apply(&config(&["h1", "c1"], "65001", "198.18.64.1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let valid = wait_for(WAIT, "the Valid condition", || {
        let c = condition(&lab, "Valid");
        c.starts_with("Secret").then_some(c)
    });
    assert!(
        valid.contains("Secret kube-system/bgp-secret does not exist"),
        "{valid}"
    );
    assert!(
        valid.contains("speaker c1 is not matched by nodeSelector"),
        "{valid}"
    );
    assert!(!valid.contains("password\""), "{valid}");
    assert!(condition(&lab, "Ready").starts_with("NoSessionStatus"));
    assert!(condition(&lab, "Redundant").starts_with("TwoOrMoreSpeakers"));

    // With the Secret and a selected second speaker the config is valid.
    lab.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "generic",
        "bgp-secret",
        "--from-literal=password=s3cret-md5",
    ]);
    lab.kubectl_ok(&["label", "node", "c1", "hybridway.test/pool=a"]);
    wait_for(WAIT, "Valid=True", || {
        condition(&lab, "Valid").starts_with("Valid:").then_some(())
    });
    let table = lab.kubectl_ok(&["get", "bgpcc"]);
    assert!(
        table.contains("LOCAL ASN") && table.contains("SESSIONS UP"),
        "{table}"
    );
    assert!(table.contains("65010") && table.contains("0/2"), "{table}");

    // RBAC: what the controller needs, and nothing more.
    let can = |verb: &str, what: &str, ns: Option<&str>| -> bool {
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            "--as",
            "system:serviceaccount:kube-system:hybridway-controller",
        ];
        match what.strip_suffix("/status") {
            Some(resource) => args.extend([resource, "--subresource", "status"]),
            None => args.push(what),
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        String::from_utf8_lossy(&lab.kubectl(&args).stdout).trim() == "yes"
    };
    for (verb, what, ns) in [
        ("watch", "nodes", None),
        ("patch", "nodes", None),
        ("list", "servicecidrs.networking.k8s.io", None),
        ("watch", "bgpclusterconfigs.network.alibabacloud.com", None),
        (
            "patch",
            "bgpclusterconfigs.network.alibabacloud.com/status",
            None,
        ),
        ("create", "events.events.k8s.io", Some("default")),
        (
            "update",
            "leases.coordination.k8s.io/hybridway-controller",
            Some("kube-system"),
        ),
        ("create", "leases.coordination.k8s.io", Some("kube-system")),
        ("watch", "configmaps/hybridway-config", Some("kube-system")),
        // Only the password Secrets deploy/bgp-secrets-rbac.yaml names.
        ("get", "secrets/bgp-secret", Some("kube-system")),
    ] {
        assert!(can(verb, what, ns), "cannot {verb} {what} in {ns:?}");
    }
    for (verb, what, ns) in [
        ("delete", "nodes", None),
        ("update", "nodes", None),
        ("create", "nodes", None),
        ("patch", "bgpclusterconfigs.network.alibabacloud.com", None),
        ("delete", "bgpclusterconfigs.network.alibabacloud.com", None),
        ("list", "secrets", Some("kube-system")),
        ("get", "secrets/other", Some("kube-system")),
        ("get", "secrets", Some("default")),
        (
            "update",
            "leases.coordination.k8s.io/other-lease",
            Some("kube-system"),
        ),
        ("get", "configmaps/other", Some("kube-system")),
        ("list", "pods", None),
    ] {
        assert!(!can(verb, what, ns), "may {verb} {what} in {ns:?}");
    }
}
