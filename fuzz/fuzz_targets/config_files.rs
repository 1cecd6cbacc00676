//! The YAML files users write for the agent (its own file and the Kubernetes-mode
//! local file) and for the BGP speaker: parsing and validation refuse with a
//! message, never panic, whatever the text (`hybridway check-config` runs these).
#![no_main]

use hybridway_control::agent::AgentConfig;
use hybridway_control::agent::config::LocalConfig;
use hybridway_control::bgp::config::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = AgentConfig::from_yaml(text) {
        let _ = cfg.pod_mtu(1500);
        let _ = cfg.snat.dataplane_config(cfg.worker_count());
    }
    let _ = serde_yaml::from_str::<LocalConfig>(text);
    if let Ok(file) = serde_yaml::from_str::<ConfigFile>(text) {
        let _ = file.bgp.validate();
    }
});
