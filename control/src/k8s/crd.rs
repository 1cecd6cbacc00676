//! `BGPClusterConfig` (`network.alibabacloud.com/v1beta1`, cluster-scoped): which
//! nodes speak BGP to which switches. The spec is exactly the schema of DESIGN.md;
//! what the API server can check by itself (required fields, ranges, addresses,
//! unique names) is in the derived schema as limits and CEL rules, so `kubectl apply`
//! refuses a bad object with the rule's message. What needs other objects (nodes,
//! Secrets) the controller checks and reports in `status.conditions`.
//!
//! Status has two writers (DESIGN.md "one writer per fact"): the controller owns
//! `conditions` and the summary counts; each speaker's agent owns its entry of
//! `speakers` (server-side apply, one field manager per node).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of hybridway's resources.
pub const GROUP: &str = "network.alibabacloud.com";

/// Longest object name Kubernetes allows (DNS subdomain); bounds CEL cost.
const NAME_MAX: u32 = 253;
/// An object name most kinds take (RFC 1123 subdomain, as the API server checks it).
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "network.alibabacloud.com",
    version = "v1beta1",
    kind = "BGPClusterConfig",
    plural = "bgpclusterconfigs",
    shortname = "bgpcc",
    doc = "Which nodes of a hybrid pool speak BGP, and to which switches.",
    status = "BGPClusterConfigStatus",
    printcolumn = r#"{"name":"Local ASN","type":"integer","jsonPath":".spec.localASN"}"#,
    printcolumn = r#"{"name":"Speakers","type":"integer","jsonPath":".status.speakerCount"}"#,
    printcolumn = r#"{"name":"Sessions Up","type":"string","jsonPath":".status.sessionsUp"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPClusterConfigSpec {
    /// This cluster's AS number; the private range 64512-65535 is advised.
    #[serde(rename = "localASN")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4294967295").message("localASN must be between 1 and 4294967295"))]
    pub local_asn: i64,
    /// The nodes this configuration applies to; every speaker must be one of them.
    pub node_selector: LabelSelector,
    /// The nodes that speak BGP, at least two per pool to avoid a single point of
    /// failure.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub bgp_speakers: Vec<BgpSpeaker>,
}

/// One speaker: a node and its BGP peers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpSpeaker {
    /// The node's name.
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub name: String,
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.peerAddress == p.peerAddress))").message("two peers of one speaker have the same peerAddress"))]
    pub peers: Vec<BgpPeer>,
}

/// A switch (or router) a speaker holds a session with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeer {
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub name: String,
    #[serde(rename = "peerASN")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4294967295").message("peerASN must be between 1 and 4294967295"))]
    pub peer_asn: i64,
    /// IPv4 or IPv6 address of the peer.
    #[schemars(length(min = 1, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("peerAddress must be an IPv4 or IPv6 address such as 10.10.0.1"))]
    pub peer_address: String,
    /// TCP MD5 password (RFC 2385) from a Secret in kube-system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<AuthPassword>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthPassword {
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in `kube-system`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name in kube-system.
    // A DNS subdomain: the agent's watch of any other name gets a 400, so the CRD
    // refuses it where the user sees it.
    #[schemars(length(min = 1, max = NAME_MAX), pattern(DNS_SUBDOMAIN))]
    pub name: String,
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub key: String,
}

/// Written by the controller (conditions, counts) and the agents (`speakers`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BGPClusterConfigStatus {
    /// `Valid` (speakers exist and are selected, Secrets exist), `Ready` (every
    /// session established) and `Redundant` (at least two speakers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of speakers in the spec (a printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_count: Option<i32>,
    /// "established/total" sessions, as the agents report them (a printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_up: Option<String>,
    /// One entry per speaker, each written by that speaker's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub speakers: Vec<SpeakerStatus>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerStatus {
    /// The speaker's node name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub peers: Vec<PeerSessionStatus>,
}

/// One BGP session as its speaker last saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerSessionStatus {
    /// The peer's name in the spec.
    pub name: String,
    /// RFC 4271 state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// When the session entered `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(default)]
    pub prefixes_advertised: i64,
    #[serde(default)]
    pub prefixes_received: i64,
    /// The last NOTIFICATION or socket error, if any (never a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The state string of an established session.
pub const SESSION_ESTABLISHED: &str = "Established";
