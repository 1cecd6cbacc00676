//! `hybridway controller` against a real kube-apiserver (scripts/k8s-lab.sh): pool
//! nodes get distinct blocks in the right pool and mode, a restart keeps them, a
//! deleted node's block is reused, a foreign podCIDR is left alone with a Warning,
//! and parameters that overlap a cluster range or orphan existing blocks are refused
//! with the message as a Warning Event and a log line. The controller runs with its
//! ServiceAccount's token, so the ClusterRole in deploy/ is proven sufficient.
//! One API server serves the whole sequence (the Lease and ConfigMap are
//! cluster-wide), so it is one test in steps. Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::controller::{
    ControllerProc, PARAMS, create_all, event_notes, install, node_yaml, set_params, wait_blocks,
    written,
};
use common::k8s_lab::KubeLab;
use common::wait_for;

const WAIT: Duration = Duration::from_secs(90);

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn node_ipam_on_a_real_api_server() {
    let lab = KubeLab::up();
    install(&lab);
    set_params(&lab, PARAMS);
    let sa = lab.service_account_kubeconfig("kube-system", "hybridway-controller");
    // A cloud node from another allocator: its podCIDR must be left as it is.
    create_all(
        &lab,
        &[node_yaml(
            "cloud-1",
            None,
            "198.18.0.10",
            Some("198.19.0.0/24"),
        )],
    );
    let mut ctrl = ControllerProc::start(&lab, &sa, "ipam-1");

    // 1. Three pool nodes: distinct blocks, right pool and mode, podCIDR set.
    create_all(
        &lab,
        &[
            node_yaml("h-a1", Some("a"), "198.18.64.11", None),
            node_yaml("h-a2", Some("a"), "198.18.64.12", None),
            node_yaml("h-b1", Some("b"), "198.18.64.21", None),
        ],
    );
    let w = wait_blocks(&lab, &names(&["h-a1", "h-a2", "h-b1"]), WAIT);
    let blocks: BTreeSet<_> = ["h-a1", "h-a2", "h-b1"]
        .iter()
        .map(|n| w[*n].block.clone().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "blocks not distinct: {w:?}");
    for n in ["h-a1", "h-a2", "h-b1"] {
        let x = &w[n];
        let b = x.block.as_deref().unwrap();
        assert!(b.starts_with("198.19.1") && b.ends_with("/24"), "{n}: {b}");
        assert_eq!(x.pod_cidr.as_deref(), Some(b), "{n}: podCIDR");
        let (pool, mode) = if n.starts_with("h-a") {
            ("underlay-a", "underlay")
        } else {
            ("overlay-b", "overlay")
        };
        assert_eq!(
            (x.pool.as_deref(), x.mode.as_deref()),
            (Some(pool), Some(mode)),
            "{n}"
        );
    }
    assert_eq!(w["cloud-1"].block, None);
    assert_eq!(w["cloud-1"].pod_cidr.as_deref(), Some("198.19.0.0/24"));
    let metrics = ctrl.http_get("/metrics").unwrap();
    assert!(
        metrics.contains("hybridway_ipam_blocks_allocated{pool=\"underlay-a\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hybridway_controller_leader 1"),
        "{metrics}"
    );
    assert!(
        ctrl.http_get("/readyz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    // 2. A restart keeps every block; a new node gets a block none holds.
    ctrl.kill();
    let mut ctrl = ControllerProc::start(&lab, &sa, "ipam-2");
    create_all(&lab, &[node_yaml("h-a3", Some("a"), "198.18.64.13", None)]);
    let w2 = wait_blocks(&lab, &names(&["h-a3"]), WAIT);
    for n in ["h-a1", "h-a2", "h-b1"] {
        assert_eq!(w2[n], w[n], "{n} changed across a restart");
    }
    assert!(!blocks.contains(w2["h-a3"].block.as_ref().unwrap()));

    // 3. A deleted node's block is the lowest free one: the next node gets it.
    let freed = w2["h-a2"].block.clone().unwrap();
    lab.kubectl_ok(&["delete", "node", "h-a2"]);
    wait_for(WAIT, "the controller to release h-a2's block", || {
        ctrl.log()
            .contains("node deleted: block released")
            .then_some(())
    });
    create_all(&lab, &[node_yaml("h-b2", Some("b"), "198.18.64.22", None)]);
    let w3 = wait_blocks(&lab, &names(&["h-b2"]), WAIT);
    assert_eq!(w3["h-b2"].block.as_ref(), Some(&freed));
    assert_eq!(w3["h-b2"].mode.as_deref(), Some("overlay"));

    // 4. A podCIDR from another allocator outside the hybrid CIDR: Warning, untouched.
    create_all(
        &lab,
        &[node_yaml(
            "h-a9",
            Some("a"),
            "198.18.64.19",
            Some("10.244.7.0/24"),
        )],
    );
    let notes = wait_for(WAIT, "a PodCIDRConflict event", || {
        let n = event_notes(&lab, "PodCIDRConflict");
        (!n.is_empty()).then_some(n)
    });
    assert!(notes[0].contains("10.244.7.0/24"), "{notes:?}");
    assert_eq!(written(&lab)["h-a9"].block, None);

    // 5. Overlapping parameters are refused: Event on the ConfigMap, a log line, and
    //    no allocation while they stand.
    let overlapping = PARAMS.replace("198.19.128.0/17", "198.19.0.0/16");
    set_params(&lab, &overlapping);
    let want =
        "hybridPodCIDR 198.19.0.0/16 overlaps clusterPodCIDR 198.19.0.0/24 (found on node cloud-1)";
    let notes = wait_for(WAIT, "an InvalidParameters event", || {
        let n = event_notes(&lab, "InvalidParameters");
        n.iter().any(|n| n.contains(want)).then_some(n)
    });
    assert!(
        ctrl.log().contains(want),
        "log lacks the refusal: {notes:?}"
    );
    create_all(&lab, &[node_yaml("h-a4", Some("a"), "198.18.64.14", None)]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        written(&lab)["h-a4"].block,
        None,
        "allocated under refused parameters"
    );

    // The same through a discovered ServiceCIDR (the API server's default one).
    let service = "\
hybridPodCIDR: 198.18.224.0/19
nodePools:
- {name: underlay-a, mode: underlay, nodeSelector: {matchLabels: {hybridway.test/pool: a}}}
checkRanges: {clusterPodCIDRs: [], cloudNodeCIDRs: [], onPremNodeCIDRs: []}
";
    set_params(&lab, service);
    let want = "hybridPodCIDR 198.18.224.0/19 overlaps serviceCIDR 198.18.240.0/20 (found on ServiceCIDR kubernetes)";
    wait_for(WAIT, "the serviceCIDR refusal", || {
        event_notes(&lab, "InvalidParameters")
            .iter()
            .any(|n| n.contains(want))
            .then_some(())
    });

    // Moving the CIDR away from blocks nodes hold is refused too.
    set_params(&lab, &PARAMS.replace("198.19.128.0/17", "198.19.192.0/18"));
    wait_for(WAIT, "the orphaned-block refusal", || {
        event_notes(&lab, "InvalidParameters")
            .iter()
            .any(|n| {
                n.contains("would orphan an existing block")
                    && n.contains("outside hybridPodCIDR 198.19.192.0/18")
            })
            .then_some(())
    });

    // 6. Good parameters again: the waiting node gets its block.
    set_params(&lab, PARAMS);
    let w6 = wait_blocks(&lab, &names(&["h-a4"]), WAIT);
    let all: Vec<_> = w6.values().filter_map(|x| x.block.clone()).collect();
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "{w6:?}");
    assert!(ctrl.running());
}
