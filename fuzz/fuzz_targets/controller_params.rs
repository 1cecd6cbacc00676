//! The controller's parameters (ConfigMap text from users): parsing and validation
//! must refuse with a message, never panic; accepted parameters must give a working
//! allocator and pool lookup.
#![no_main]

use hybridway_control::ipam::NodeBlockAllocator;
use hybridway_control::k8s::params::ControllerParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = ControllerParams::from_yaml(text, "fuzz") {
        let mut a = NodeBlockAllocator::new(p.hybrid_pod_cidr, p.node_mask_size)
            .expect("validated parameters make an allocator");
        let _ = a.allocate("n");
        let _ = p.pool_for(&Default::default());
    }
});
