//! What the plugin prints on stdout: results in each CNI version runtimes still
//! send, and error objects with the specification's codes.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// The versions this plugin answers in (VERSION lists them).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes of the CNI specification (section "Error"), plus ours from 100 up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    /// The agent is not reachable (yet): the runtime should retry.
    TryAgainLater,
    /// STATUS: the plugin cannot serve ADDs now.
    NotAvailable,
    /// CHECK: the pod's interface is not what ADD left.
    CheckMismatch,
    Internal,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::CheckMismatch => 100,
            ErrorCode::Internal => 999,
        }
    }
}

/// A failed invocation, printed as the specification's error object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {})", code.code())]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object, in `version` (or the newest when the request's is unknown).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({
            "cniVersion": version,
            "code": self.code.code(),
            "msg": self.msg,
        });
        if let (false, Some(o)) = (self.details.is_empty(), v.as_object_mut()) {
            o.insert("details".into(), Value::String(self.details.clone()));
        }
        v
    }
}

/// What ADD made: both ends of the veth and the pod's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: Option<String>,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Versions before 1.0.0 tag each IP with its family.
fn ips_carry_version(version: &str) -> bool {
    version.starts_with("0.")
}

/// The ADD result in `version`, appended to `prev` (the previous plugin's result
/// when chained behind one): our interfaces after its, our IP pointing at ours.
pub fn add_result(version: &str, attached: &Attached, prev: Option<&Value>) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let dns = prev
        .and_then(|p| p.get("dns"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut host = serde_json::Map::new();
    host.insert("name".into(), Value::String(attached.host_ifname.clone()));
    if let Some(mac) = &attached.host_mac {
        host.insert("mac".into(), Value::String(mac.clone()));
    }
    let host = Value::Object(host);
    interfaces.push(host);
    interfaces.push(json!({
        "name": attached.pod_ifname,
        "mac": attached.pod_mac,
        "sandbox": attached.netns,
    }));
    let pod_index = interfaces.len() - 1;
    let mut ip = serde_json::Map::new();
    ip.insert("address".into(), format!("{}/32", attached.ip).into());
    ip.insert("gateway".into(), attached.gateway.to_string().into());
    ip.insert("interface".into(), pod_index.into());
    if ips_carry_version(version) {
        ip.insert("version".into(), "4".into());
    }
    let ip = Value::Object(ip);
    ips.push(ip);
    routes.push(json!({ "dst": "0.0.0.0/0", "gw": attached.gateway.to_string() }));
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// The address a previous ADD result gave interface `ifname` in `netns`, if any.
pub fn address_in(prev: &Value, ifname: &str) -> Option<Ipv4Addr> {
    let interfaces = prev.get("interfaces")?.as_array()?;
    let index = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    })?;
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let points_here = ip.get("interface").and_then(Value::as_u64) == Some(index as u64);
        let addr = ip.get("address")?.as_str()?;
        let (a, _) = addr.split_once('/')?;
        points_here.then(|| a.parse().ok()).flatten()
    })
}

/// VERSION's answer.
pub fn version_result(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            host_ifname: "hwc0123456789ab".into(),
            host_mac: None,
            pod_ifname: "eth0".into(),
            pod_mac: "02:11:22:33:44:55".into(),
            netns: "/run/netns/p".into(),
            ip: Ipv4Addr::new(198, 19, 1, 7),
            gateway: Ipv4Addr::new(198, 19, 1, 1),
        }
    }

    #[test]
    fn results_per_version_and_chained_after_a_previous_plugin() {
        let r = add_result("1.1.0", &attached(), None);
        assert_eq!(r["ips"][0]["address"], "198.19.1.7/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["routes"][0]["gw"], "198.19.1.1");
        let old = add_result("0.3.1", &attached(), None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.3.1");
        let prev = json!({"cniVersion":"1.1.0","interfaces":[{"name":"x0"}],
            "ips":[{"address":"10.0.0.1/24","interface":0}],"dns":{"nameservers":["1.1.1.1"]}});
        let chained = add_result("1.1.0", &attached(), Some(&prev));
        assert_eq!(chained["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(chained["ips"][1]["interface"], 2);
        assert_eq!(chained["dns"]["nameservers"][0], "1.1.1.1");
        assert_eq!(
            address_in(&chained, "eth0"),
            Some(Ipv4Addr::new(198, 19, 1, 7))
        );
        assert_eq!(address_in(&chained, "x0"), None, "x0 has no sandbox");
    }

    #[test]
    fn error_objects_carry_the_specs_codes() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent down").with_details("socket");
        let v = e.to_json("1.1.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["details"], "socket");
        assert_eq!(ErrorCode::NotAvailable.code(), 50);
    }
}
