//! Controller scale benchmark on a real kube-apiserver (scripts/k8s-lab.sh), not a
//! test: it prints numbers and asserts only correctness.
//!
//! 1. 1,000 Nodes are created by four kubectl processes at once; we report the time
//!    until every one has its block written, next to the time the API server took
//!    just to create them (the baseline of the same run: their ratio says how much
//!    the controller lags behind node registration).
//! 2. 4,000 more (5,000 in all); we report the controller's resident memory.
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
    ControllerProc, PARAMS, create_parallel, install, lease_holder, node_yaml, set_params, written,
};
use common::k8s_lab::KubeLab;
use common::wait_for;

const WAIT: Duration = Duration::from_secs(600);

/// Creates nodes `from..to` with `procs` kubectl processes in parallel.
fn create_nodes(lab: &KubeLab, from: usize, to: usize, procs: usize) -> Duration {
    let docs: Vec<String> = (from..to)
        .map(|i| {
            let pool = if i % 2 == 0 { "a" } else { "b" };
            let addr = format!("198.18.{}.{}", 64 + i / 250, 1 + i % 250);
            node_yaml(&format!("scale-{i:05}"), Some(pool), &addr, None)
        })
        .collect();
    create_parallel(lab, &docs, procs)
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
    // `cargo bench` passes --bench; `cargo test --all-targets` (CI) does not, and
    // this minutes-long measurement is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "controller_scale: measurement only, run it with `cargo bench -p hybridway-control --bench controller_scale`"
        );
        return;
    }
    let lab = KubeLab::up();
    install(&lab);
    // 5,000 nodes need 5,000 blocks: /30s of the /17 give 8,192.
    set_params(
        &lab,
        &PARAMS.replace("nodeMaskSize: 24", "nodeMaskSize: 30"),
    );
    let ctrl = ControllerProc::start(&lab, lab.kubeconfig(), "scale");
    wait_for(WAIT, "the controller to lead", || lease_holder(&lab));
    let idle_rss = wait_for(WAIT, "the controller's RSS", || ctrl.rss_kib());

    let start = Instant::now();
    let create = create_nodes(&lab, 0, 1000, 4);
    wait_for(WAIT, "1,000 blocks written", || {
        (blocks_written(&ctrl) >= 1000).then_some(())
    });
    let all_allocated = start.elapsed();
    let w = written(&lab);
    let blocks: BTreeSet<_> = w.values().filter_map(|x| x.block.clone()).collect();
    assert_eq!(blocks.len(), 1000, "distinct blocks on 1,000 nodes");

    let create_more = create_nodes(&lab, 1000, 5000, 4);
    wait_for(WAIT, "5,000 blocks written", || {
        (blocks_written(&ctrl) >= 5000).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let rss = ctrl.rss_kib().unwrap();
    let w = written(&lab);
    let blocks: BTreeSet<_> = w.values().filter_map(|x| x.block.clone()).collect();
    assert_eq!(blocks.len(), 5000, "distinct blocks on 5,000 nodes");

    println!("controller_scale (kube-apiserver from scripts/k8s-lab.sh, one controller replica)");
    println!(
        "  1,000 nodes: created in {:.2} s (4 kubectl), all blocks written after {:.2} s (ratio {:.2})",
        create.as_secs_f64(),
        all_allocated.as_secs_f64(),
        all_allocated.as_secs_f64() / create.as_secs_f64()
    );
    println!(
        "  4,000 more nodes created in {:.2} s",
        create_more.as_secs_f64()
    );
    println!(
        "  controller RSS: {:.1} MiB idle, {:.1} MiB at 5,000 nodes",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
}
