//! The CNI plugin's input parsing: the network configuration on stdin (with its
//! prevResult and GC list), CNI_ARGS and the CNI_* environment. Nothing may panic;
//! a prevResult that parses is extended with our interface and address, last.
#![no_main]

use std::net::Ipv4Addr;

use hybridway_control::cni::config::{CniCommand, Invocation, NetConf, parse_cni_args};
use hybridway_control::cni::result::{Attached, add_result, address_in};
use libfuzzer_sys::fuzz_target;

const COMMANDS: [CniCommand; 6] = [
    CniCommand::Add,
    CniCommand::Del,
    CniCommand::Check,
    CniCommand::Version,
    CniCommand::Status,
    CniCommand::Gc,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // stdin \0 CNI_ARGS \0 CNI_CONTAINERID \0 CNI_IFNAME \0 CNI_NETNS
    let mut parts = rest.split(|b| *b == 0);
    let stdin = parts.next().unwrap_or_default();
    let text = |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
    let (args, id, ifname, netns) = (
        text(parts.next()),
        text(parts.next()),
        text(parts.next()),
        text(parts.next()),
    );
    let command = COMMANDS[usize::from(sel) % COMMANDS.len()];

    let _ = parse_cni_args(&args);
    let env = |k: &str| -> Option<String> {
        Some(match k {
            "CNI_COMMAND" => command.label().to_owned(),
            "CNI_ARGS" => args.clone(),
            "CNI_CONTAINERID" => id.clone(),
            "CNI_IFNAME" => ifname.clone(),
            "CNI_NETNS" => netns.clone(),
            _ => return None,
        })
    };
    if let Ok(inv) = Invocation::from_env(&env) {
        let _ = inv.attachment();
    }
    if let Ok(conf) = NetConf::parse(stdin, command) {
        if let Some(prev) = &conf.prev_result {
            let _ = address_in(prev, "eth0");
            let attached = Attached {
                host_ifname: "hwc000000000000".into(),
                host_mac: None,
                pod_ifname: "eth0".into(),
                pod_mac: "02:00:00:00:00:01".into(),
                netns: "/run/netns/x".into(),
                ip: Ipv4Addr::new(198, 19, 1, 2),
                gateway: Ipv4Addr::new(198, 19, 1, 1),
            };
            let out = add_result(&conf.cni_version, &attached, Some(prev));
            // Ours come last, and our address points at our interface.
            let interfaces = out["interfaces"].as_array().expect("interfaces");
            let ips = out["ips"].as_array().expect("ips");
            let last_ip = ips.last().expect("our address");
            assert_eq!(
                last_ip["interface"].as_u64(),
                Some(interfaces.len() as u64 - 1)
            );
            assert_eq!(last_ip["address"], "198.19.1.2/32");
        }
    }
});
