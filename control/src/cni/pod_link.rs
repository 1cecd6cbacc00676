//! The pod's veth: created with the pod's end inside the pod's network namespace,
//! addressed and routed there, deleted again. Changes go through `ip -batch`
//! (iproute2, which the agent already needs for its routes), one process per
//! namespace: two on ADD, one on DEL; lookups of the host end read sysfs. Commands
//! for the pod's namespace run from a thread that has entered it, whose children
//! start there too.
//!
//! Names are derived from the attachment, never stored: the host end is
//! `hwc` + 12 hex digits of a hash of (container ID, interface), the pod end's MAC a
//! locally administered address from the same hash, so DEL and GC find them after
//! any restart.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use hybridway_dataplane::port::netns::NetnsGuard;
use hybridway_dataplane::wire::MacAddr;
use serde_json::Value;

use crate::agent::addresses::AttachmentKey;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("`ip {what}` failed: {detail}")]
    Ip { what: String, detail: String },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Mismatch(String),
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
fn fnv1a(key: &AttachmentKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = key
        .container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.ifname.bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The host end's name for `key` (15 bytes, the kernel's limit).
pub fn host_ifname(key: &AttachmentKey) -> String {
    format!("hwc{:012x}", fnv1a(key) & 0xffff_ffff_ffff)
}

/// The pod end's MAC for `key`: locally administered, unicast.
pub fn pod_mac(key: &AttachmentKey) -> MacAddr {
    let [_, _, _, a, b, c, d, e] = fnv1a(key).to_be_bytes();
    MacAddr([0x02, a, b, c, d, e])
}

/// Runs `ip -batch -` with `lines` in the calling thread's namespace.
fn ip_batch(lines: &[String]) -> Result<(), LinkError> {
    let what = format!("-batch ({})", lines.join("; "));
    let err = |detail: String| LinkError::Ip {
        what: what.clone(),
        detail,
    };
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.join("\n").as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Runs `ip -json args` in the calling thread's namespace.
fn ip_json(args: &[&str]) -> Result<Value, LinkError> {
    let err = |detail: String| LinkError::Ip {
        what: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .arg("-json")
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| err(e.to_string()))
}

fn enter(netns: &str) -> Result<NetnsGuard, LinkError> {
    NetnsGuard::enter_path(netns).map_err(|source| LinkError::Netns {
        path: netns.to_owned(),
        source,
    })
}

/// Whether interface `name` exists in this (the host's) namespace. Read from sysfs,
/// which shows the namespace the plugin runs in: no process to start on the path
/// of every ADD and DEL.
pub fn host_has(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates the veth: `host` here, up; `pod` with `mac` in `netns`, still down.
pub fn create(host: &str, pod: &str, mac: MacAddr, netns: &str) -> Result<(), LinkError> {
    ip_batch(&[
        format!("link add {host} type veth peer name {pod} address {mac} netns {netns}"),
        format!("link set {host} up"),
    ])
}

/// Sets the host end's MTU (the pod end's is set by [`configure_pod`]) through
/// sysfs, like [`host_has`].
pub fn set_host_mtu(host: &str, mtu: u16) -> Result<(), LinkError> {
    let path = std::path::Path::new("/sys/class/net")
        .join(host)
        .join("mtu");
    std::fs::write(&path, mtu.to_string()).map_err(|e| LinkError::Ip {
        what: format!("link set {host} mtu {mtu} (via {})", path.display()),
        detail: e.to_string(),
    })
}

/// Inside `netns`: `pod` gets `ip`/32 and `mtu`, goes up, and routes everything via
/// `gateway` (on-link: the dataplane answers ARP for it).
pub fn configure_pod(
    netns: &str,
    pod: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: u16,
) -> Result<(), LinkError> {
    let _inside = enter(netns)?;
    ip_batch(&[
        "link set lo up".to_owned(),
        format!("link set {pod} mtu {mtu}"),
        format!("addr add {ip}/32 dev {pod}"),
        format!("link set {pod} up"),
        format!("route add {gateway}/32 dev {pod} scope link"),
        format!("route add default via {gateway} dev {pod}"),
    ])
}

/// Deletes the host end (which takes the pod end with it); false when it was gone.
pub fn delete_host(host: &str) -> Result<bool, LinkError> {
    if !host_has(host) {
        return Ok(false);
    }
    ip_batch(&[format!("link del {host}")])?;
    Ok(true)
}

/// CHECK inside `netns`: `pod` exists, is up, has `ip`, and the default route goes
/// via `gateway` through it.
pub fn check_pod(netns: &str, pod: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), LinkError> {
    let _inside = enter(netns)?;
    let addrs = ip_json(&["addr", "show", "dev", pod])?;
    let link = addrs.get(0).cloned().unwrap_or(Value::Null);
    let up = link
        .get("flags")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    if !up {
        return Err(LinkError::Mismatch(format!("{pod} is not up")));
    }
    let has_ip = link
        .get("addr_info")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|i| i.get("local").and_then(Value::as_str) == Some(&ip.to_string()))
        });
    if !has_ip {
        return Err(LinkError::Mismatch(format!("{pod} does not have {ip}")));
    }
    let routes = ip_json(&["route", "show", "default"])?;
    let via_gw = routes.as_array().is_some_and(|r| {
        r.iter().any(|x| {
            x.get("gateway").and_then(Value::as_str) == Some(&gateway.to_string())
                && x.get("dev").and_then(Value::as_str) == Some(pod)
        })
    });
    if !via_gw {
        return Err(LinkError::Mismatch(format!(
            "no default route via {gateway} dev {pod}"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let k = |c: &str, i: &str| AttachmentKey {
            container_id: c.into(),
            ifname: i.into(),
        };
        let a = host_ifname(&k("abc", "eth0"));
        assert_eq!(a, host_ifname(&k("abc", "eth0")));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_ifname(&k("abc", "eth1")));
        assert_ne!(
            host_ifname(&k("ab", "ceth0")),
            host_ifname(&k("abc", "eth0"))
        );
        let mac = pod_mac(&k("abc", "eth0"));
        assert_eq!(mac.0[0], 0x02, "locally administered unicast");
    }
}
