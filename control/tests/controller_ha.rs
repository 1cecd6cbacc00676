//! Leader election for real: three `hybridway controller` replicas on one
//! kube-apiserver; 200 Nodes are created at once and the leader is killed half-way.
//! Every node ends with a distinct block and another replica leads. A leader that
//! is frozen past its lease loses it and exits instead of writing on. Needs root.

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
    ControllerProc, PARAMS, install, lease_holder, pool_nodes, set_params, spawn_create,
    wait_blocks, written,
};
use common::k8s_lab::KubeLab;
use common::wait_for;

const NODES: usize = 200;
const WAIT: Duration = Duration::from_secs(180);

fn signal(proc_: &ControllerProc, sig: &str) {
    let pid = proc_.pid().unwrap().to_string();
    common::sh(&["kill", sig, &pid]);
}

#[test]
fn two_hundred_nodes_while_the_leader_dies() {
    let lab = KubeLab::up();
    install(&lab);
    // 200 nodes need more than the 128 /24s of the /17: /26 blocks.
    set_params(
        &lab,
        &PARAMS.replace("nodeMaskSize: 24", "nodeMaskSize: 26"),
    );
    let kc = lab.kubeconfig().to_path_buf();
    let mut replicas: Vec<ControllerProc> = (0..3)
        .map(|i| ControllerProc::start(&lab, &kc, &format!("replica-{i}")))
        .collect();
    let first = wait_for(WAIT, "a leader", || lease_holder(&lab));

    // Create the nodes from another thread (one kubectl per half) and kill the
    // leader once some of them exist.
    let nodes = pool_nodes("ha", 0, NODES);
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let docs: Vec<String> = nodes.into_iter().map(|(_, y)| y).collect();
    let mut creator = spawn_create(&lab, &docs);
    wait_for(WAIT, "some allocated nodes", || {
        (written(&lab).values().filter(|w| w.block.is_some()).count() >= 20).then_some(())
    });
    let leader = replicas.iter_mut().find(|r| r.identity == first).unwrap();
    leader.kill();
    assert!(creator.wait().unwrap().success());

    let w = wait_blocks(&lab, &names, WAIT);
    let blocks: Vec<_> = names.iter().map(|n| w[n].block.clone().unwrap()).collect();
    let distinct: BTreeSet<_> = blocks.iter().collect();
    assert_eq!(distinct.len(), NODES, "two nodes share a block");
    let second = wait_for(WAIT, "a new leader", || {
        lease_holder(&lab).filter(|h| *h != first)
    });
    let new = replicas.iter_mut().find(|r| r.identity == second).unwrap();
    assert!(new.running() && new.log().contains("leading"));

    // A leader frozen past its lease must not resume as leader: it exits. A fresh
    // replica (as the Deployment would start for any that exited) makes sure a
    // candidate is there.
    replicas.push(ControllerProc::start(&lab, &kc, "replica-3"));
    let new = replicas.iter_mut().find(|r| r.identity == second).unwrap();
    signal(new, "-STOP");
    let third = wait_for(WAIT, "a third leader", || {
        lease_holder(&lab).filter(|h| *h != first && *h != second)
    });
    let new = replicas.iter_mut().find(|r| r.identity == second).unwrap();
    signal(new, "-CONT");
    wait_for(WAIT, "the frozen leader to exit", || {
        (!new.running()).then_some(())
    });
    assert!(new.log().contains("leadership lost"), "{}", new.log());
    assert_eq!(lease_holder(&lab).as_deref(), Some(third.as_str()));
}
