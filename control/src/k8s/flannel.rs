//! flannel's Node annotations (its kube subnet manager, vxlan backend): the one home
//! of their names and of the `backend-data` JSON. Hybrid nodes read them to reach
//! cloud nodes running flannel and write the same on their own Node, so flannel's
//! nodes program their FDB, neighbour and route entries towards hybrid pods: one
//! VXLAN fabric, two implementations.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hybridway_dataplane::wire::MacAddr;
use serde::{Deserialize, Serialize};

/// `{"VNI":1,"VtepMAC":"…"}` for the vxlan backend.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The backend's name: `vxlan` is the one both implementations speak.
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// The node's VTEP address (outer source of its VXLAN packets).
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// `true` on nodes whose subnet comes from `spec.podCIDR` (kube subnet manager).
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// The only backend type hybridway speaks.
pub const VXLAN: &str = "vxlan";

/// The vxlan backend's `backend-data`, as flannel writes it (Go field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanBackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// A `backend-data` value that is not a vxlan VTEP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendDataError {
    #[error("backend-data is not vxlan's JSON ({0})")]
    Json(String),
    #[error("backend-data VtepMAC {0:?} is not a unicast MAC")]
    Mac(String),
}

/// A peer's VTEP as its annotations describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vtep {
    pub vni: u32,
    pub mac: MacAddr,
}

/// Parses `backend-data` (bytes from the API server: never trusted).
pub fn parse_backend_data(text: &str) -> Result<Vtep, BackendDataError> {
    let data: VxlanBackendData =
        serde_json::from_str(text).map_err(|e| BackendDataError::Json(e.to_string()))?;
    let mac: MacAddr = data
        .vtep_mac
        .parse()
        .map_err(|_| BackendDataError::Mac(data.vtep_mac.clone()))?;
    if mac.is_multicast() || mac == MacAddr::ZERO {
        return Err(BackendDataError::Mac(data.vtep_mac));
    }
    Ok(Vtep { vni: data.vni, mac })
}

/// The annotations a hybrid node publishes on its own Node.
pub fn node_annotations(vtep: Vtep, public_ip: Ipv4Addr) -> BTreeMap<String, String> {
    let data = VxlanBackendData {
        vni: vtep.vni,
        vtep_mac: vtep.mac.to_string(),
    };
    // Serialising two plain fields cannot fail; an empty string would be refused by
    // every reader rather than misread.
    let data = serde_json::to_string(&data).unwrap_or_default();
    BTreeMap::from([
        (BACKEND_DATA.to_string(), data),
        (BACKEND_TYPE.to_string(), VXLAN.to_string()),
        (PUBLIC_IP.to_string(), public_ip.to_string()),
        (KUBE_SUBNET_MANAGER.to_string(), "true".to_string()),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn backend_data_round_trips_in_flannels_spelling() {
        let vtep = Vtep {
            vni: 1,
            mac: "0a:1b:2c:3d:4e:5f".parse().unwrap(),
        };
        let a = node_annotations(vtep, Ipv4Addr::new(198, 18, 64, 10));
        // What flannel's vxlan backend writes (Go's encoding/json of its struct).
        assert_eq!(
            a[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}"#
        );
        assert_eq!(a[BACKEND_TYPE], "vxlan");
        assert_eq!(a[PUBLIC_IP], "198.18.64.10");
        assert_eq!(a[KUBE_SUBNET_MANAGER], "true");
        assert_eq!(parse_backend_data(&a[BACKEND_DATA]).unwrap(), vtep);
    }

    #[test]
    fn bad_backend_data_is_an_error() {
        for bad in [
            "",
            "{",
            r#"{"VNI":1}"#,
            r#"{"VNI":-1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}"#,
            r#"{"VNI":1,"VtepMAC":"nonsense"}"#,
            r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#,
            r#"{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}"#,
        ] {
            assert!(parse_backend_data(bad).is_err(), "{bad}");
        }
    }
}
