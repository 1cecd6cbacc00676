//! The controller's Prometheus metrics, rendered on demand by the metrics endpoint
//! (the same `MetricsServer` the agent uses, which also answers the probes).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::node_ipam::IpamState;

/// Counters and flags; the IPAM gauges are read from the state when rendering.
#[derive(Debug, Default)]
pub struct Metrics {
    leader: AtomicBool,
    config_valid: AtomicBool,
    ready: AtomicBool,
    node_errors: AtomicU64,
    blocks_written: AtomicU64,
    bgp_errors: AtomicU64,
}

impl Metrics {
    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn set_config_valid(&self, v: bool) {
        self.config_valid.store(v, Ordering::Relaxed);
    }

    /// Ready once the API server has answered us (leader or follower).
    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// One block written on its Node.
    pub fn block_written(&self) {
        self.blocks_written.fetch_add(1, Ordering::Relaxed);
    }

    /// One failed reconcile of `controller` ("node" or "bgpclusterconfig").
    pub fn reconcile_error(&self, controller: &str) {
        let c = if controller == "node" {
            &self.node_errors
        } else {
            &self.bgp_errors
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text for these counters and the IPAM state.
    pub fn render(&self, state: &Arc<Mutex<Option<IpamState>>>, out: &mut String) {
        let flag = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP hybridway_controller_leader 1 while this replica holds the leader lease.\n\
             # TYPE hybridway_controller_leader gauge\n\
             hybridway_controller_leader {}\n\
             # HELP hybridway_controller_config_valid 1 while the parameters passed validation.\n\
             # TYPE hybridway_controller_config_valid gauge\n\
             hybridway_controller_config_valid {}\n\
             # HELP hybridway_controller_reconcile_errors_total Failed reconciles.\n\
             # TYPE hybridway_controller_reconcile_errors_total counter\n\
             hybridway_controller_reconcile_errors_total{{controller=\"node\"}} {}\n\
             hybridway_controller_reconcile_errors_total{{controller=\"bgpclusterconfig\"}} {}\n\
             # HELP hybridway_ipam_blocks_written_total Blocks written on Nodes by this replica.\n\
             # TYPE hybridway_ipam_blocks_written_total counter\n\
             hybridway_ipam_blocks_written_total {}",
            flag(&self.leader),
            flag(&self.config_valid),
            self.node_errors.load(Ordering::Relaxed),
            self.bgp_errors.load(Ordering::Relaxed),
            self.blocks_written.load(Ordering::Relaxed),
        );
        let state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = state.as_ref() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP hybridway_ipam_blocks_allocated Blocks of the hybrid pod CIDR held, per pool.\n\
             # TYPE hybridway_ipam_blocks_allocated gauge"
        );
        for (pool, n) in state.allocated_per_pool() {
            let _ = writeln!(
                out,
                "hybridway_ipam_blocks_allocated{{pool=\"{pool}\"}} {n}"
            );
        }
        let cidr = state.allocator.cidr();
        let _ = writeln!(
            out,
            "# HELP hybridway_ipam_blocks_free Blocks of the hybrid pod CIDR not held (pools share the CIDR).\n\
             # TYPE hybridway_ipam_blocks_free gauge\n\
             hybridway_ipam_blocks_free{{cidr=\"{cidr}\"}} {}",
            state.allocator.free()
        );
    }
}
