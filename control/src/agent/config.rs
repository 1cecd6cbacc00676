//! The agent's YAML configuration: what this node is, which other nodes exist, and
//! how the dataplane runs.
//!
//! Two sources, one model: in file mode this file is the whole truth about the
//! cluster for one agent (SIGHUP re-reads it); in Kubernetes mode the file holds only
//! the node's local knobs ([`LocalConfig`]) and the cluster's part ([`ClusterFacts`]:
//! this node, its mode and block, the other nodes) comes from the Node objects
//! (`k8s::cluster_view`). Both become one [`AgentConfig`], which the table builder
//! reads. `deploy/agent-example.yaml` documents every field. [`AgentConfig::load`] parses *and* validates: a configuration that would
//! build a wrong table (overlapping pod blocks, a gateway outside its block, two nodes
//! with one address) is refused with the field path that is wrong, never half-applied.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::ops::RangeInclusive;
use std::time::Duration;

use hybridway_dataplane::tables::{Prefix, SnatConfig, Timeouts};
use hybridway_dataplane::wire::MacAddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default VXLAN UDP port: the one Linux and flannel use (not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = hybridway_dataplane::wire::VXLAN_PORT;
/// Default VNI, as flannel uses.
pub const DEFAULT_VNI: u32 = 1;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// A configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, an unknown field, a missing field or a value of the wrong type;
    /// serde_yaml's message names the field and the line.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Parsed, but the values contradict each other or the network; `line`: where
    /// `field` is in the file, when it was read from one.
    #[error("invalid configuration at {field}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        field: String,
        message: String,
        line: Option<usize>,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// How pod traffic crosses between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeConfig {
    Overlay,
    Underlay,
}

impl ModeConfig {
    /// The name used in configuration files and in the `hybrid-mode` Node annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeConfig::Overlay => "overlay",
            ModeConfig::Underlay => "underlay",
        }
    }
}

impl From<ModeConfig> for hybridway_dataplane::tables::Mode {
    fn from(m: ModeConfig) -> Self {
        match m {
            ModeConfig::Overlay => hybridway_dataplane::tables::Mode::Overlay,
            ModeConfig::Underlay => hybridway_dataplane::tables::Mode::Underlay,
        }
    }
}

/// Which port backend the dataplane uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendConfig {
    /// AF_XDP where the kernel and NIC allow it, else TUN.
    #[default]
    Auto,
    AfXdp,
    Tun,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub node: NodeConfig,
    pub mode: ModeConfig,
    pub uplink: UplinkConfig,
    pub pods: PodNetworkConfig,
    #[serde(default)]
    pub nodes: Vec<PeerNodeConfig>,
    #[serde(default)]
    pub snat: SnatSection,
    #[serde(default)]
    pub services: ServicesSection,
    #[serde(default)]
    pub vxlan: VxlanSection,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub control: ControlSection,
    /// The BGP speaker (file mode; in Kubernetes mode `BGPClusterConfig`s say it).
    /// It advertises this node's pool from the sections above, never a list of
    /// its own (`agent::bgp`).
    #[serde(default)]
    pub bgp: Option<crate::bgp::config::BgpSection>,
}

/// The file in Kubernetes mode: what only this host knows. The cluster's part comes
/// from the API server as [`ClusterFacts`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub snat: SnatSection,
    #[serde(default)]
    pub services: ServicesSection,
    #[serde(default)]
    pub vxlan: VxlanSection,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub control: ControlSection,
}

/// What the cluster says about this node and the others: the file in file mode, the
/// Node objects in Kubernetes mode (where it is also persisted, so that a restart
/// without the API server forwards from the last view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterFacts {
    pub node: NodeConfig,
    pub mode: ModeConfig,
    pub pods: PodNetworkConfig,
    #[serde(default)]
    pub nodes: Vec<PeerNodeConfig>,
}

/// This node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node name (the Kubernetes Node name).
    pub name: String,
    /// The node's IPv4 address on the uplink: VXLAN source, SNAT address.
    pub address: Ipv4Addr,
}

/// The interface that connects the node to the other nodes and the outside.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkConfig {
    pub interface: String,
    /// Next hop for destinations outside the cluster; defaults to the kernel's
    /// default route via this interface.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Prefix length of the uplink subnet; nodes outside it are reached via
    /// `gateway`. Defaults to the interface's configured prefix.
    #[serde(default)]
    pub prefix_len: Option<u8>,
}

/// This node's pod block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNetworkConfig {
    #[serde(deserialize_with = "de_prefix", serialize_with = "ser_display")]
    pub block: Prefix,
    /// The pods' default gateway; ARP for it is answered by the dataplane.
    pub gateway: Ipv4Addr,
}

impl PodNetworkConfig {
    /// The host's own address in the pod network: the block's first address, which
    /// no pod is given (flannel puts the same address on `flannel.1`). The kernel
    /// reaches pods on other nodes from it, so their replies come back as pod
    /// traffic. `None` for a block too small to spare it, or when it is the gateway.
    pub fn host_addr(&self) -> Option<Ipv4Addr> {
        let std::net::IpAddr::V4(net) = self.block.addr() else {
            return None;
        };
        (self.block.len() < 31 && net != self.gateway).then_some(net)
    }
}

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerNodeConfig {
    pub name: String,
    pub address: Ipv4Addr,
    #[serde(deserialize_with = "de_prefix", serialize_with = "ser_display")]
    pub pod_block: Prefix,
    /// How this node's pods are reached when it differs from this node's mode: a
    /// cloud node running flannel, or an overlay pool's node seen from an underlay
    /// node, is reached over VXLAN whatever this node's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeConfig>,
    /// The node's VTEP MAC (flannel's `VtepMAC`); needed in overlay mode.
    #[serde(
        default,
        deserialize_with = "de_opt_mac",
        serialize_with = "ser_opt_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub vtep_mac: Option<MacAddr>,
}

impl PeerNodeConfig {
    /// How this node's pods are reached from a node in mode `own`.
    pub fn mode_from(&self, own: ModeConfig) -> ModeConfig {
        self.mode.unwrap_or(own)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnatSection {
    /// Masquerade pod traffic leaving the cluster to the node address.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Destinations never masqueraded besides the pod blocks and node addresses,
    /// which are always exempt (service CIDR, cloud pod CIDR, on-prem node CIDRs).
    #[serde(default, deserialize_with = "de_prefixes")]
    pub cluster_ranges: Vec<Prefix>,
    /// The NAT ports (and ICMP echo identifiers); each destination (remote address
    /// and port) can have this many flows at once. Claimed from the kernel through
    /// `net.ipv4.ip_local_reserved_ports` while the agent runs.
    #[serde(default)]
    pub port_range: PortRangeConfig,
    /// Idle timeouts per flow state, in seconds.
    #[serde(default)]
    pub timeouts: SnatTimeoutsConfig,
    /// Flows each worker tracks at most (about 65 bytes each, allocated at start).
    #[serde(default = "default_flows_per_worker")]
    pub max_flows_per_worker: usize,
}

impl Default for SnatSection {
    fn default() -> Self {
        SnatSection {
            enabled: true,
            cluster_ranges: Vec::new(),
            port_range: PortRangeConfig::default(),
            timeouts: SnatTimeoutsConfig::default(),
            max_flows_per_worker: default_flows_per_worker(),
        }
    }
}

impl SnatSection {
    /// The dataplane's SNAT settings for `workers` workers.
    pub fn dataplane_config(&self, workers: usize) -> SnatConfig {
        SnatConfig {
            workers: u16::try_from(workers).unwrap_or(u16::MAX),
            port_range: self.port_range.range(),
            capacity_per_worker: self.max_flows_per_worker,
            timeouts: self.timeouts.to_timeouts(),
        }
    }
}

/// `{min, max}`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRangeConfig {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRangeConfig {
    /// 1024-29999: 28,976 ports for every destination. Below 1024 a remote may
    /// treat a port as privileged; from 30000 the NodePort range (kube-apiserver's
    /// default `--service-node-port-range`, [`ServicesSection`]) and, from 32768,
    /// the kernel's default ephemeral range (`ip_local_port_range` 32768-60999,
    /// the node's own connections' ports).
    fn default() -> Self {
        PortRangeConfig {
            min: 1024,
            max: 29999,
        }
    }
}

/// Kubernetes Services on this node.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicesSection {
    /// The cluster's NodePort range (kube-apiserver `--service-node-port-range`,
    /// default 30000-32767). The uplink hands TCP and UDP to the node's address on
    /// these ports to the dataplane (XDP program; TUN: policy rules), whether a
    /// Service uses the port or not: a fixed range rather than the Services present,
    /// because the steering is set once at start (the XDP program's constants, the
    /// kernel's rules). Ports no Service has go on to the host. Must not overlap
    /// `snat.portRange`: a NodePort and a NAT port would claim the same replies.
    #[serde(default = "default_node_port_range")]
    pub node_port_range: PortRangeConfig,
    /// The service CIDRs whose ClusterIPs the node itself reaches through the
    /// dataplane (routed into the host port from its pod-network address). For nodes
    /// without kube-proxy; empty (the default) leaves the host's ClusterIP traffic to
    /// kube-proxy. See README "Services".
    #[serde(default, deserialize_with = "de_prefixes")]
    pub host_cluster_ip_ranges: Vec<Prefix>,
}

impl Default for ServicesSection {
    fn default() -> Self {
        ServicesSection {
            node_port_range: default_node_port_range(),
            host_cluster_ip_ranges: Vec::new(),
        }
    }
}

fn default_node_port_range() -> PortRangeConfig {
    PortRangeConfig {
        min: 30000,
        max: 32767,
    }
}

impl PortRangeConfig {
    pub fn range(&self) -> RangeInclusive<u16> {
        self.min..=self.max
    }

    /// A range within 1..=[`MAX_NAT_PORT`] (the kernel's policy rules take no 65535),
    /// or the error for `field`.
    fn check(&self, field: &str) -> Result<(), ConfigError> {
        if self.min == 0 || self.min > self.max || self.max > MAX_NAT_PORT {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{}-{} is not a range within 1..={MAX_NAT_PORT} with min <= max",
                    self.min, self.max
                ),
            ));
        }
        Ok(())
    }
}

/// The highest NAT port: the kernel's policy rules, which steer replies on the TUN
/// backend, refuse a port range that ends at 65535.
pub const MAX_NAT_PORT: u16 = 65534;

/// [`Timeouts`] in whole seconds, each defaulting to the dataplane's default (the
/// kernel's `nf_conntrack_tcp_timeout_*` for the closing states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SnatTimeoutsConfig {
    pub tcp_syn_sent: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_last_ack: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for SnatTimeoutsConfig {
    fn default() -> Self {
        let t = Timeouts::default();
        SnatTimeoutsConfig {
            tcp_syn_sent: t.tcp_syn_sent.as_secs(),
            tcp_established: t.tcp_established.as_secs(),
            tcp_fin_wait: t.tcp_fin_wait.as_secs(),
            tcp_last_ack: t.tcp_last_ack.as_secs(),
            tcp_time_wait: t.tcp_time_wait.as_secs(),
            tcp_close: t.tcp_close.as_secs(),
            udp: t.udp.as_secs(),
            icmp: t.icmp.as_secs(),
        }
    }
}

impl SnatTimeoutsConfig {
    pub fn to_timeouts(&self) -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            tcp_syn_sent: s(self.tcp_syn_sent),
            tcp_established: s(self.tcp_established),
            tcp_fin_wait: s(self.tcp_fin_wait),
            tcp_last_ack: s(self.tcp_last_ack),
            tcp_time_wait: s(self.tcp_time_wait),
            tcp_close: s(self.tcp_close),
            udp: s(self.udp),
            icmp: s(self.icmp),
        }
    }

    /// Every field with its YAML name, for validation messages.
    fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("tcpSynSent", self.tcp_syn_sent),
            ("tcpEstablished", self.tcp_established),
            ("tcpFinWait", self.tcp_fin_wait),
            ("tcpLastAck", self.tcp_last_ack),
            ("tcpTimeWait", self.tcp_time_wait),
            ("tcpClose", self.tcp_close),
            ("udp", self.udp),
            ("icmp", self.icmp),
        ]
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanSection {
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// This node's VTEP MAC; derived from the node name when absent, so it is stable
    /// across restarts.
    #[serde(default, deserialize_with = "de_opt_mac")]
    pub vtep_mac: Option<MacAddr>,
    /// Set DF on the VXLAN packets we send (the kernel's `df set`).
    #[serde(default)]
    pub df: bool,
}

impl VxlanSection {
    /// The VTEP MAC of node `name`: configured, or derived from the name so that it
    /// is stable across restarts (and known before the node's block is).
    pub fn vtep_mac_of(&self, name: &str) -> MacAddr {
        self.vtep_mac
            .unwrap_or_else(|| MacAddr::local_from(name.as_bytes()))
    }
}

impl Default for VxlanSection {
    fn default() -> Self {
        VxlanSection {
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            vtep_mac: None,
            df: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneSection {
    #[serde(default)]
    pub backend: BackendConfig,
    /// Worker threads, one per core; 0 means one per available core.
    #[serde(default = "one")]
    pub workers: usize,
    /// Cores to pin workers to, in order; empty pins worker i to core i.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// Put AF_XDP packet memory on 2 MiB hugepages (falls back with a warning).
    #[serde(default = "yes")]
    pub hugepages: bool,
    /// Empty polls in a row before a worker parks on epoll.
    #[serde(default = "default_idle_polls")]
    pub idle_polls: u32,
    /// Longest a parked worker sleeps before looking again (ms); bounds SNAT sweep lag.
    #[serde(default = "default_park_ms")]
    pub park_timeout_ms: u64,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            backend: BackendConfig::Auto,
            workers: 1,
            cores: Vec::new(),
            hugepages: true,
            idle_polls: default_idle_polls(),
            park_timeout_ms: default_park_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the Prometheus endpoint (`GET /metrics`); `null` turns it off.
    #[serde(default = "default_metrics")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: default_metrics(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlSection {
    /// Unix socket for `hybridway pod add|remove` and `hybridway status`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where local pods are remembered across restarts.
    #[serde(default = "default_state")]
    pub state_file: PathBuf,
    /// Where the pod addresses handed out to the CNI plugin are kept (the one
    /// owner of address allocations on this node; see `agent::addresses`).
    #[serde(default = "default_address_file")]
    pub address_file: PathBuf,
    /// Kubernetes mode: where the last view of the cluster is kept, so that an agent
    /// restarted while the API server is away forwards from it.
    #[serde(default = "default_cluster_state")]
    pub cluster_state_file: PathBuf,
}

impl ControlSection {
    /// Where the node's settings from before the agent's first start are kept until
    /// a clean stop (`kernel_routes`): beside the pod state file and named after it,
    /// so that agents with their own state files never share one.
    pub fn host_journal(&self) -> PathBuf {
        let stem = self
            .state_file
            .file_stem()
            .map_or_else(|| "pods".into(), |s| s.to_string_lossy());
        self.state_file
            .with_file_name(format!("{stem}.host-originals.json"))
    }
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: default_socket(),
            state_file: default_state(),
            address_file: default_address_file(),
            cluster_state_file: default_cluster_state(),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_vni() -> u32 {
    DEFAULT_VNI
}
fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_idle_polls() -> u32 {
    256
}
fn default_flows_per_worker() -> usize {
    SnatConfig::default().capacity_per_worker
}
fn default_park_ms() -> u64 {
    100
}
fn default_metrics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
}
/// Where the agent serves its control socket unless configured: what `hybridway`'s
/// subcommands and the CNI plugin call by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/hybridway/agent.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}
fn default_state() -> PathBuf {
    PathBuf::from("/var/lib/hybridway/pods.json")
}
fn default_address_file() -> PathBuf {
    PathBuf::from("/var/lib/hybridway/addresses.json")
}

fn default_cluster_state() -> PathBuf {
    PathBuf::from("/var/lib/hybridway/cluster.json")
}

fn ser_display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_display<T: std::fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A prefix exactly as written: host bits set (`198.19.41.5/24`) is refused with
/// what was probably meant, never normalised silently (the file's blocks and the
/// controller's block annotations alike).
pub fn exact_prefix(s: &str) -> Result<Prefix, String> {
    let p = Prefix::from_str(s).map_err(|e| e.to_string())?;
    let written = s
        .split('/')
        .next()
        .and_then(|a| std::net::IpAddr::from_str(a.trim()).ok());
    if written != Some(p.addr()) {
        return Err(format!("{s} has host bits set (the prefix would be {p})"));
    }
    Ok(p)
}

/// A scalar written as text (a prefix, a MAC) and parsed *inside* the string
/// visitor: serde_yaml stamps an error raised there with that scalar's own path and
/// line (`nodes[0].podBlock ... at line 10`), while an error raised after the
/// string is returned is stamped with the enclosing mapping's (`nodes[0]`, its first
/// line) - which is what a user would have to hunt for.
trait TextScalar: Sized {
    const EXPECTING: &'static str;
    fn parse_text(s: &str) -> Result<Self, String>;
}

impl TextScalar for Prefix {
    const EXPECTING: &'static str = "an IPv4 prefix such as 198.19.1.0/24";
    fn parse_text(s: &str) -> Result<Self, String> {
        exact_prefix(s)
    }
}

impl TextScalar for MacAddr {
    const EXPECTING: &'static str = "a MAC address such as 02:00:00:00:00:01";
    fn parse_text(s: &str) -> Result<Self, String> {
        MacAddr::from_str(s).map_err(|e| e.to_string())
    }
}

/// Deserializes a [`TextScalar`] through `deserialize_str` (see there for why).
struct Text<T>(T);

impl<'de, T: TextScalar> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: TextScalar> serde::de::Visitor<'_> for V<T> {
            type Value = Text<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<T>, E> {
                T::parse_text(s).map(Text).map_err(E::custom)
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
    Text::<Prefix>::deserialize(d).map(|t| t.0)
}

fn de_prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    let v = Vec::<Text<Prefix>>::deserialize(d)?;
    Ok(v.into_iter().map(|t| t.0).collect())
}

fn de_opt_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MacAddr>, D::Error> {
    Ok(Option::<Text<MacAddr>>::deserialize(d)?.map(|t| t.0))
}

impl AgentConfig {
    /// The pods' MTU on an uplink of `uplink_mtu`: in overlay every pod packet
    /// carries the VXLAN headers too.
    pub fn pod_mtu(&self, uplink_mtu: u16) -> u16 {
        match self.mode {
            ModeConfig::Overlay => uplink_mtu.saturating_sub(
                u16::try_from(hybridway_dataplane::wire::VXLAN_OVERHEAD_V4).unwrap_or(u16::MAX),
            ),
            ModeConfig::Underlay => uplink_mtu,
        }
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_named(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_named(text, "<config>")
    }

    fn from_yaml_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { field, message, .. } => ConfigError::Invalid {
                line: crate::config_lines::line_of(text, &field),
                field,
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Kubernetes mode: the local file and the cluster's facts, validated as one.
    pub fn from_parts(local: LocalConfig, facts: ClusterFacts) -> Result<Self, ConfigError> {
        let cfg = AgentConfig {
            node: facts.node,
            mode: facts.mode,
            uplink: local.uplink,
            pods: facts.pods,
            nodes: facts.nodes,
            snat: local.snat,
            services: local.services,
            vxlan: local.vxlan,
            dataplane: local.dataplane,
            metrics: local.metrics,
            control: local.control,
            bgp: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The local part of this configuration.
    pub fn local_config(&self) -> LocalConfig {
        LocalConfig {
            uplink: self.uplink.clone(),
            snat: self.snat.clone(),
            services: self.services.clone(),
            vxlan: self.vxlan.clone(),
            dataplane: self.dataplane.clone(),
            metrics: self.metrics.clone(),
            control: self.control.clone(),
        }
    }

    /// The cluster's part of this configuration.
    pub fn cluster_facts(&self) -> ClusterFacts {
        ClusterFacts {
            node: self.node.clone(),
            mode: self.mode,
            pods: self.pods.clone(),
            nodes: self.nodes.clone(),
        }
    }

    /// This node's VTEP MAC: configured, or derived from the node name.
    pub fn vtep_mac(&self) -> MacAddr {
        self.vxlan.vtep_mac_of(&self.node.name)
    }

    /// Number of workers to start (0 in the file means one per core).
    pub fn worker_count(&self) -> usize {
        match self.dataplane.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// Checks everything that serde cannot: consistency between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.trim().is_empty() {
            return Err(ConfigError::invalid("node.name", "must not be empty"));
        }
        check_unicast("node.address", self.node.address)?;
        if self.uplink.interface.is_empty() || self.uplink.interface.len() > 15 {
            return Err(ConfigError::invalid(
                "uplink.interface",
                "must be an interface name of 1 to 15 characters",
            ));
        }
        if let Some(len) = self.uplink.prefix_len
            && (len == 0 || len > 32)
        {
            return Err(ConfigError::invalid(
                "uplink.prefixLen",
                format!("{len} is not 1..=32"),
            ));
        }
        if let Some(gw) = self.uplink.gateway {
            check_unicast("uplink.gateway", gw)?;
        }

        let block = self.pods.block;
        if !block.is_ipv4() {
            return Err(ConfigError::invalid("pods.block", "must be an IPv4 prefix"));
        }
        if block.len() > 30 {
            return Err(ConfigError::invalid(
                "pods.block",
                format!("{block} is too small for pods (at most /30)"),
            ));
        }
        if !block.contains(self.pods.gateway.into()) {
            return Err(ConfigError::invalid(
                "pods.gateway",
                format!("{} is outside the pod block {block}", self.pods.gateway),
            ));
        }
        if block.contains(self.node.address.into()) {
            return Err(ConfigError::invalid(
                "node.address",
                format!(
                    "{} is inside this node's pod block {block}",
                    self.node.address
                ),
            ));
        }

        let mut names = HashSet::from([self.node.name.as_str()]);
        let mut addrs = HashSet::from([self.node.address]);
        for (i, peer) in self.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            if peer.name.trim().is_empty() {
                return Err(ConfigError::invalid(at("name"), "must not be empty"));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(ConfigError::invalid(
                    at("name"),
                    format!("node name {:?} is used twice", peer.name),
                ));
            }
            check_unicast(&at("address"), peer.address)?;
            if !addrs.insert(peer.address) {
                return Err(ConfigError::invalid(
                    at("address"),
                    format!("address {} is already used by another node", peer.address),
                ));
            }
            if !peer.pod_block.is_ipv4() {
                return Err(ConfigError::invalid(
                    at("podBlock"),
                    "must be an IPv4 prefix",
                ));
            }
            if peer.pod_block.overlaps(&block) {
                return Err(ConfigError::invalid(
                    at("podBlock"),
                    format!("{} overlaps this node's pod block {block}", peer.pod_block),
                ));
            }
            if peer.mode_from(self.mode) == ModeConfig::Overlay {
                match peer.vtep_mac {
                    None => {
                        return Err(ConfigError::invalid(
                            at("vtepMac"),
                            "is required to reach a node over VXLAN (overlay)",
                        ));
                    }
                    Some(mac) if mac.is_multicast() || mac == MacAddr::ZERO => {
                        return Err(ConfigError::invalid(
                            at("vtepMac"),
                            format!("{mac} is not a unicast MAC"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }

        if let Some((i, j)) = first_overlap(&self.nodes)
            && let (Some(peer), Some(other)) = (self.nodes.get(i), self.nodes.get(j))
        {
            return Err(ConfigError::invalid(
                format!("nodes[{i}].podBlock"),
                format!(
                    "{} overlaps nodes[{j}] ({}) block {}",
                    peer.pod_block, other.name, other.pod_block
                ),
            ));
        }

        for (i, p) in self.snat.cluster_ranges.iter().enumerate() {
            if !p.is_ipv4() {
                return Err(ConfigError::invalid(
                    format!("snat.clusterRanges[{i}]"),
                    "must be an IPv4 prefix",
                ));
            }
            if p.len() == 0 && self.snat.enabled {
                return Err(ConfigError::invalid(
                    format!("snat.clusterRanges[{i}]"),
                    "0.0.0.0/0 exempts everything; set snat.enabled: false instead",
                ));
            }
        }

        let ports = self.snat.port_range;
        ports.check("snat.portRange")?;
        let node_ports = self.services.node_port_range;
        node_ports.check("services.nodePortRange")?;
        for (i, p) in self.services.host_cluster_ip_ranges.iter().enumerate() {
            if !p.is_ipv4() || p.len() == 0 {
                return Err(ConfigError::invalid(
                    format!("services.hostClusterIpRanges[{i}]"),
                    "must be an IPv4 prefix other than 0.0.0.0/0",
                ));
            }
        }
        if self.snat.enabled && node_ports.min <= ports.max && ports.min <= node_ports.max {
            return Err(ConfigError::invalid(
                "services.nodePortRange",
                format!(
                    "{}-{} overlaps snat.portRange {}-{}: a reply to a masqueraded flow and a NodePort would share ports",
                    node_ports.min, node_ports.max, ports.min, ports.max
                ),
            ));
        }
        for (name, secs) in self.snat.timeouts.named() {
            // Beyond a year is a typo, and would overflow nothing but help no one.
            if secs == 0 || secs > 366 * 24 * 3600 {
                return Err(ConfigError::invalid(
                    format!("snat.timeouts.{name}"),
                    format!("{secs} s is not 1 s to a year"),
                ));
            }
        }
        if self.snat.max_flows_per_worker == 0 {
            return Err(ConfigError::invalid(
                "snat.maxFlowsPerWorker",
                "must be at least 1",
            ));
        }

        if self.vxlan.vni == 0 || self.vxlan.vni > MAX_VNI {
            return Err(ConfigError::invalid(
                "vxlan.vni",
                format!("{} is not 1..={MAX_VNI}", self.vxlan.vni),
            ));
        }
        if self.vxlan.port == 0 {
            return Err(ConfigError::invalid("vxlan.port", "must not be 0"));
        }
        if let Some(mac) = self.vxlan.vtep_mac
            && (mac.is_multicast() || mac == MacAddr::ZERO)
        {
            return Err(ConfigError::invalid(
                "vxlan.vtepMac",
                format!("{mac} is not a unicast MAC"),
            ));
        }

        if self.dataplane.workers > 256 {
            return Err(ConfigError::invalid("dataplane.workers", "at most 256"));
        }
        let cores = core_count();
        for (i, c) in self.dataplane.cores.iter().enumerate() {
            if *c >= cores {
                return Err(ConfigError::invalid(
                    format!("dataplane.cores[{i}]"),
                    format!("core {c} does not exist (this host has {cores})"),
                ));
            }
        }
        if self.dataplane.park_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "dataplane.parkTimeoutMs",
                "must be at least 1",
            ));
        }
        if self.control.socket.as_os_str().is_empty() {
            return Err(ConfigError::invalid("control.socket", "must not be empty"));
        }
        if let Some(bgp) = &self.bgp {
            bgp.validate()
                .map_err(|e| ConfigError::invalid(format!("bgp.{}", e.field), e.message))?;
        }
        Ok(())
    }
}

impl LocalConfig {
    /// Reads and parses the Kubernetes-mode file; what can be checked without the
    /// cluster's facts is checked when they join it ([`AgentConfig::from_parts`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// Two nodes whose (IPv4) blocks overlap, as (later, earlier) in file order: one
/// sort and one sweep, so a file of 10,000 nodes is checked in milliseconds (the
/// pairwise comparison took 50 million). Blocks are prefixes: two overlap exactly
/// when one holds the other's first address, so after sorting by first address
/// each block need only be compared with the widest-reaching one before it.
fn first_overlap(nodes: &[PeerNodeConfig]) -> Option<(usize, usize)> {
    let range = |p: &Prefix| match p.addr() {
        std::net::IpAddr::V4(a) => {
            let start = u64::from(u32::from(a));
            Some((
                start,
                start + (1u64 << (32 - u32::from(p.len().min(32)))) - 1,
            ))
        }
        std::net::IpAddr::V6(_) => None,
    };
    let mut sorted: Vec<(u64, u64, usize)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| range(&n.pod_block).map(|(s, e)| (s, e, i)))
        .collect();
    sorted.sort_unstable();
    let mut reach: Option<(u64, usize)> = None;
    for (start, end, i) in sorted {
        if let Some((far, j)) = reach
            && start <= far
        {
            return Some((i.max(j), i.min(j)));
        }
        if reach.is_none_or(|(far, _)| end > far) {
            reach = Some((end, i));
        }
    }
    None
}

fn core_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn check_unicast(field: &str, a: Ipv4Addr) -> Result<(), ConfigError> {
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(ConfigError::invalid(
            field,
            format!("{a} is not a unicast host address"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
node: {name: node-a, address: 198.18.0.1}
mode: overlay
uplink: {interface: eth0, gateway: 198.18.0.254}
pods: {block: 198.19.1.0/24, gateway: 198.19.1.1}
nodes:
  - {name: node-b, address: 198.18.0.2, podBlock: 198.19.2.0/24, vtepMac: "02:00:00:00:00:02"}
snat: {enabled: true, clusterRanges: [10.96.0.0/12]}
"#;

    fn err_of(yaml: &str) -> String {
        match AgentConfig::from_yaml(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let cfg = AgentConfig::from_yaml(GOOD).unwrap();
        assert_eq!(cfg.vxlan.vni, 1);
        assert_eq!(cfg.vxlan.port, 8472);
        assert_eq!(cfg.dataplane.backend, BackendConfig::Auto);
        assert_eq!(cfg.nodes.len(), 1);
        assert_eq!(cfg.vtep_mac(), MacAddr::local_from(b"node-a"));
        assert!(cfg.snat.enabled);
    }

    #[test]
    fn example_in_deploy_is_valid() {
        let text = include_str!("../../../deploy/agent-example.yaml");
        let cfg = AgentConfig::from_yaml(text).unwrap();
        // The example spells out the defaults.
        assert_eq!(cfg.snat.port_range, PortRangeConfig::default());
        assert_eq!(cfg.snat.timeouts, SnatTimeoutsConfig::default());
        assert_eq!(cfg.snat.max_flows_per_worker, default_flows_per_worker());
    }

    #[test]
    fn snat_port_range_timeouts_and_capacity_reach_the_dataplane() {
        let cfg = AgentConfig::from_yaml(&GOOD.replace(
            "snat: {enabled: true, clusterRanges: [10.96.0.0/12]}",
            "snat: {portRange: {min: 20000, max: 29999}, timeouts: {tcpTimeWait: 30, udp: 60}, maxFlowsPerWorker: 1000}",
        ))
        .unwrap();
        let d = cfg.snat.dataplane_config(2);
        assert_eq!(d.workers, 2);
        assert_eq!(d.port_range, 20000..=29999);
        assert_eq!(d.capacity_per_worker, 1000);
        assert_eq!(d.timeouts.tcp_time_wait, Duration::from_secs(30));
        assert_eq!(d.timeouts.udp, Duration::from_secs(60));
        // Unnamed timeouts keep the kernel's defaults.
        assert_eq!(d.timeouts.tcp_fin_wait, Timeouts::default().tcp_fin_wait);
        let default = AgentConfig::from_yaml(GOOD)
            .unwrap()
            .snat
            .dataplane_config(1);
        assert_eq!(default.port_range, 1024..=29999);
        assert!(
            default.port_range.len() >= 28_000,
            "tens of thousands per destination"
        );
    }

    #[test]
    fn node_port_range_defaults_to_the_api_servers_and_must_stay_out_of_the_snat_range() {
        let cfg = AgentConfig::from_yaml(GOOD).unwrap();
        assert_eq!(cfg.services.node_port_range.range(), 30000..=32767);
        let e = AgentConfig::from_yaml(&format!(
            "{GOOD}services: {{nodePortRange: {{min: 20000, max: 22767}}}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("services.nodePortRange") && e.contains("overlaps"),
            "{e}"
        );
        let e = AgentConfig::from_yaml(&format!(
            "{GOOD}services: {{nodePortRange: {{min: 32767, max: 30000}}}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("services.nodePortRange"), "{e}");
        // Without SNAT nothing competes for the ports.
        let cfg = AgentConfig::from_yaml(
            &(GOOD.replace("snat: {enabled: true,", "snat: {enabled: false,")
                + "services: {nodePortRange: {min: 20000, max: 22767}}\n"),
        )
        .unwrap();
        assert_eq!(cfg.services.node_port_range.min, 20000);
    }

    #[test]
    fn the_hosts_pod_network_address_is_the_blocks_first() {
        let cfg = AgentConfig::from_yaml(GOOD).unwrap();
        let std::net::IpAddr::V4(net) = cfg.pods.block.addr() else {
            panic!("IPv4 block")
        };
        assert_eq!(cfg.pods.host_addr(), Some(net));
        let mut pods = cfg.pods.clone();
        pods.gateway = net;
        assert_eq!(pods.host_addr(), None, "never the gateway");
    }

    #[test]
    fn bad_snat_settings_name_their_field() {
        let with = |snat: &str| {
            err_of(&GOOD.replace(
                "snat: {enabled: true, clusterRanges: [10.96.0.0/12]}",
                &format!("snat: {snat}"),
            ))
        };
        for range in [
            "{min: 0, max: 10}",
            "{min: 300, max: 200}",
            "{min: 1024, max: 65535}",
        ] {
            let e = with(&format!("{{portRange: {range}}}"));
            assert!(e.contains("snat.portRange"), "{range}: {e}");
        }
        let e = with("{timeouts: {tcpClose: 0}}");
        assert!(e.contains("snat.timeouts.tcpClose"), "{e}");
        let e = with("{timeouts: {tcpClosing: 5}}");
        assert!(e.contains("tcpClosing"), "unknown fields are refused: {e}");
        let e = with("{maxFlowsPerWorker: 0}");
        assert!(e.contains("snat.maxFlowsPerWorker"), "{e}");
    }

    #[test]
    fn kubernetes_example_in_deploy_is_a_local_config() {
        let text = include_str!("../../../deploy/agent-kubernetes.yaml");
        let local: LocalConfig = serde_yaml::from_str(text).unwrap();
        assert_eq!(
            local.control.cluster_state_file,
            PathBuf::from("/var/lib/hybridway/cluster.json")
        );
        // The cluster's part is not this file's: a node section is refused.
        let e = serde_yaml::from_str::<LocalConfig>(&format!("{text}node: {{name: x}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of(&GOOD.replace("198.19.1.1}", "198.19.9.1}"));
        assert!(
            e.contains("pods.gateway") && e.contains("outside the pod block"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("198.19.2.0/24", "198.19.1.128/25"));
        assert!(
            e.contains("nodes[0].podBlock") && e.contains("overlaps"),
            "{e}"
        );
        let e = err_of(&GOOD.replace(", vtepMac: \"02:00:00:00:00:02\"", ""));
        assert!(
            e.contains("nodes[0].vtepMac") && e.contains("overlay"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("address: 198.18.0.2", "address: 198.18.0.1"));
        assert!(e.contains("nodes[0].address"), "{e}");
        let e = err_of(&GOOD.replace("mode: overlay", "mode: sideways"));
        assert!(e.contains("mode") && e.contains("sideways"), "{e}");
        let e = err_of(&format!("{GOOD}vxlan: {{vni: 0}}\n"));
        assert!(e.contains("vxlan.vni"), "{e}");
        let e = err_of(&format!("{GOOD}bogus: 1\n"));
        assert!(e.contains("bogus"), "{e}");
        let e = err_of(&GOOD.replace("198.19.1.0/24", "198.19.1.0/33"));
        assert!(e.contains("pods") && e.contains("33"), "{e}");
        let e = err_of(&GOOD.replace("02:00:00:00:00:02", "03:00:00:00:00:02"));
        assert!(e.contains("nodes[0].vtepMac"), "{e}");
        let e = err_of(&format!("{GOOD}dataplane: {{cores: [4096]}}\n"));
        assert!(e.contains("dataplane.cores[0]"), "{e}");
    }

    #[test]
    fn a_block_with_host_bits_is_refused_with_what_was_meant() {
        let e = err_of(&GOOD.replace("198.19.2.0/24", "198.19.41.5/24"));
        assert!(
            e.contains("host bits") && e.contains("198.19.41.0/24") && e.contains("line"),
            "{e}"
        );
    }

    /// A malformed text scalar is reported by its full path at its own line, not
    /// by its section at the section's first line.
    #[test]
    fn malformed_scalars_are_reported_at_their_own_path_and_line() {
        let block = |bad_block: &str, bad_node: &str, bad_range: &str, bad_mac: &str| {
            format!(
                "node: {{name: node-a, address: 198.18.0.1}}\n\
                 mode: overlay\n\
                 uplink: {{interface: eth0, gateway: 198.18.0.254}}\n\
                 pods:\n  gateway: 198.19.1.1\n  block: {bad_block}\n\
                 nodes:\n  - name: node-b\n    address: 198.18.0.2\n    \
                 vtepMac: \"{bad_mac}\"\n    podBlock: {bad_node}\n\
                 snat:\n  enabled: true\n  clusterRanges:\n    - {bad_range}\n"
            )
        };
        let (ok_b, ok_n, ok_r, ok_m) = (
            "198.19.1.0/24",
            "198.19.2.0/24",
            "10.96.0.0/12",
            "02:00:00:00:00:02",
        );
        AgentConfig::from_yaml(&block(ok_b, ok_n, ok_r, ok_m)).unwrap();
        let e = err_of(&block("198.19.1.0/33", ok_n, ok_r, ok_m));
        assert!(e.contains("pods.block: ") && e.contains("line 6"), "{e}");
        let e = err_of(&block(ok_b, "198.19.2.0/99", ok_r, ok_m));
        assert!(
            e.contains("nodes[0].podBlock: ") && e.contains("line 11"),
            "{e}"
        );
        let e = err_of(&block(ok_b, "198.19.2.5/24", ok_r, ok_m));
        assert!(
            e.contains("nodes[0].podBlock: ") && e.contains("host bits") && e.contains("line 11"),
            "{e}"
        );
        let e = err_of(&block(ok_b, ok_n, ok_r, "zz:00:00:00:00:02"));
        assert!(
            e.contains("nodes[0].vtepMac: ") && e.contains("line 10"),
            "{e}"
        );
        let e = err_of(&block(ok_b, ok_n, "10.96.0.0/40", ok_m));
        assert!(
            e.contains("snat.clusterRanges[0]: ") && e.contains("line 15"),
            "{e}"
        );
    }

    #[test]
    fn two_peers_overlapping_each_other_are_refused() {
        let yaml = format!(
            "{GOOD}  - {{name: node-c, address: 198.18.0.3, podBlock: 198.19.2.0/23, vtepMac: \"02:00:00:00:00:03\"}}\n"
        )
        .replace("snat: {enabled: true, clusterRanges: [10.96.0.0/12]}\n", "");
        let e = err_of(&yaml);
        assert!(
            e.contains("nodes[1].podBlock") && e.contains("nodes[0]"),
            "{e}"
        );
    }

    /// The overlap check sorts and sweeps: a /16 listed last that covers a block
    /// listed first among 10,000 is found, and named by both file positions.
    #[test]
    fn an_overlap_among_ten_thousand_nodes_is_found() {
        let node = |i: u32, block: String| PeerNodeConfig {
            name: format!("n{i}"),
            address: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 1)) + i),
            pod_block: block.parse().unwrap(),
            mode: None,
            vtep_mac: None,
        };
        let mut nodes: Vec<PeerNodeConfig> = (0..10_000u32)
            .map(|i| node(i, format!("198.19.{}.{}/32", 128 + i / 256, i % 256)))
            .collect();
        assert_eq!(first_overlap(&nodes), None);
        nodes.push(node(10_000, "198.19.0.0/16".into()));
        assert_eq!(first_overlap(&nodes), Some((10_000, 0)));
    }

    #[test]
    fn underlay_does_not_need_vtep_macs() {
        let yaml = GOOD
            .replace("mode: overlay", "mode: underlay")
            .replace(", vtepMac: \"02:00:00:00:00:02\"", "");
        AgentConfig::from_yaml(&yaml).unwrap();
    }
}
