//! The YAML files users write for the agent (its own file, with the `bgp` section
//! the speaker reads, and the Kubernetes-mode local file): parsing, validation and
//! the speaker's plan refuse with a message, never panic, whatever the text
//! (`hybridway check-config` and `hybridway bgp-speaker` run these).
#![no_main]

use hybridway_control::agent::AgentConfig;
use hybridway_control::agent::config::LocalConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = AgentConfig::from_yaml(text) {
        let _ = cfg.pod_mtu(1500);
        let _ = cfg.snat.dataplane_config(cfg.worker_count());
        let _ = hybridway_control::agent::bgp::plan(&cfg, std::path::Path::new("fuzz"));
    }
    let _ = serde_yaml::from_str::<LocalConfig>(text);
});
