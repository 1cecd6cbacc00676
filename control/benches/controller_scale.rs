//! Controller scale benchmark on a real kube-apiserver (scripts/k8s-lab.sh), not a
//! test: it prints numbers and asserts only correctness.
//!
//! A. 1,000 Nodes exist before the controller starts: time until every one has its
//!    block written (the controller's own throughput).
//! B. 1,000 more are created by four kubectl processes while it runs: time until the
//!    last is written, next to the time creating them alone took (the baseline of the
//!    same run: the ratio says how far the controller lags behind registration).
//! C. 3,000 more (5,000 in all): the controller's resident memory.
//!
//! Run (root): `cargo bench -p hybridway-control --bench controller_scale`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::controller::{
    ControllerProc, PARAMS, install, pool_nodes, set_params, spawn_create, written,
};
use common::k8s_lab::KubeLab;
use common::wait_for;

const WAIT: Duration = Duration::from_secs(600);

/// Creates nodes `from..to` with `procs` kubectl processes in parallel.
fn create_nodes(lab: &KubeLab, from: usize, to: usize, procs: usize) -> Duration {
    let start = Instant::now();
    let docs: Vec<String> = pool_nodes("scale", from, to - from)
        .into_iter()
        .map(|(_, y)| y)
        .collect();
    let children: Vec<_> = docs
        .chunks(docs.len().div_ceil(procs))
        .map(|chunk| spawn_create(lab, chunk))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    start.elapsed()
}

/// `hybridway_ipam_blocks_written_total` of the controller.
fn blocks_written(ctrl: &ControllerProc) -> u64 {
    ctrl.http_get("/metrics")
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("hybridway_ipam_blocks_written_total "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if !common::benching("controller_scale") {
        return;
    }
    let lab = KubeLab::up();
    install(&lab);
    // 5,000 nodes need 5,000 blocks: /30s of the /17 give 8,192.
    set_params(
        &lab,
        &PARAMS.replace("nodeMaskSize: 24", "nodeMaskSize: 30"),
    );

    // A. 1,000 nodes registered while no controller runs, then one starts: the
    //    controller's own time (lease, list, 1,000 writes).
    let create_a = create_nodes(&lab, 0, 1000, 4);
    let start = Instant::now();
    let ctrl = ControllerProc::start(&lab, lab.kubeconfig(), "scale");
    wait_for(WAIT, "1,000 blocks written", || {
        (blocks_written(&ctrl) >= 1000).then_some(())
    });
    let catch_up = start.elapsed();

    // B. 1,000 more while it runs: done when the last is written.
    let start = Instant::now();
    let create_b = create_nodes(&lab, 1000, 2000, 4);
    wait_for(WAIT, "2,000 blocks written", || {
        (blocks_written(&ctrl) >= 2000).then_some(())
    });
    let live = start.elapsed();

    // C. Up to 5,000: resident memory.
    create_nodes(&lab, 2000, 5000, 4);
    wait_for(WAIT, "5,000 blocks written", || {
        (blocks_written(&ctrl) >= 5000).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let rss = ctrl.rss_kib().unwrap();
    let w = written(&lab);
    let blocks: BTreeSet<_> = w.values().filter_map(|x| x.block.clone()).collect();
    assert_eq!(blocks.len(), 5000, "distinct blocks on 5,000 nodes");

    println!(
        "controller_scale (kube-apiserver from scripts/k8s-lab.sh, one controller replica, 4 kubectl creating)"
    );
    println!(
        "  A. 1,000 existing nodes, controller started: all written after {:.2} s (creating them took {:.2} s)",
        catch_up.as_secs_f64(),
        create_a.as_secs_f64()
    );
    println!(
        "  B. 1,000 nodes created while it runs: all written {:.2} s after the first create; creating alone {:.2} s (ratio {:.2})",
        live.as_secs_f64(),
        create_b.as_secs_f64(),
        live.as_secs_f64() / create_b.as_secs_f64()
    );
    println!(
        "  C. controller RSS at 5,000 nodes: {:.1} MiB",
        rss as f64 / 1024.0
    );
}
