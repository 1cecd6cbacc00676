//! The agent's state and what the control thread does with it: start the workers,
//! open ports, build and publish table snapshots, add and remove pods and nodes
//! while traffic flows, and stop cleanly.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::port::{Backend, HostSupport, PortError};
use hybridway_dataplane::tables::{ServiceTable, SharedTables};
use hybridway_dataplane::wire::MacAddr;
use hybridway_dataplane::worker::{MetricsServer, PoolConfig, PoolError, WorkerPool};
use serde::Serialize;

use hybridway_dataplane::port::ethtool;
use hybridway_dataplane::port::netns::NetnsGuard;

use super::addresses::{AddressError, Allocation, AttachmentKey, PodAddressBook};
use super::attach::{PortOpener, rx_queues};
use super::config::{AgentConfig, BackendConfig, ClusterFacts, ConfigError, LocalConfig};
use super::host_routing::{self, HOST_TUN, POD_TUN};
use super::kernel_routes::{KernelRoutes, RouteError};
use super::neighbors::{self, HostError};
use super::reserved_ports::{ReservedPorts, ReservedPortsError};
use super::state_file::write_atomically;
use super::table_builder::{
    BuildError, LocalPod, OffSubnetPeers, PodAttachment, UplinkFacts, build_tables, next_hops,
};

/// The uplink's port id; pods get 3, 4, ...
pub const UPLINK_PORT: PortId = PortId(0);
/// On the TUN backend every local pod is reached through the pod TUN device: this port.
pub const TUN_PORT: PortId = PortId(1);
/// The host port (both backends).
pub const HOST_PORT: PortId = PortId(2);

/// How long a table build waits for the kernel to resolve a next hop.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("claiming the SNAT port range from the kernel: {0}")]
    ReservedPorts(#[from] ReservedPortsError),
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("{0}")]
    Refused(String),
    /// A valid configuration that changes what the running ports and workers were
    /// built from (this node's block, mode, address, ...): kept for the next start.
    #[error(
        "reload refused: {field} changed, which needs an agent restart; the running configuration is kept"
    )]
    NeedsRestart { field: &'static str },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Gauges the Prometheus endpoint shows next to the workers' counters.
#[derive(Debug, Default)]
struct Gauges {
    generation: AtomicU64,
    pods: AtomicU64,
    nodes: AtomicU64,
    unresolved: AtomicU64,
    skipped_nodes: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

#[derive(Debug)]
struct PodEntry {
    pod: LocalPod,
    port: PortId,
    worker: usize,
}

/// Where the agent's configuration comes from, and what SIGHUP re-reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// One file says everything (the demo, nodes without a cluster).
    File(PathBuf),
    /// The file holds the local knobs ([`LocalConfig`]); the cluster's facts come
    /// from the API server through [`Agent::apply_cluster`].
    Kubernetes { local: PathBuf },
}

/// What `hybridway status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node: String,
    pub address: Ipv4Addr,
    pub mode: String,
    /// This node's VTEP MAC: what a flannel peer needs to reach it.
    pub vtep_mac: String,
    /// `file` or `kubernetes`.
    pub source: String,
    pub backend: String,
    pub workers: usize,
    pub generation: u64,
    pub pods: Vec<PodStatus>,
    pub nodes: Vec<NodeStatus>,
    pub unresolved_next_hops: Vec<Ipv4Addr>,
    pub drops: BTreeMap<String, u64>,
    pub services: ServicesStatus,
}

/// The Service table the workers use now (Kubernetes mode; empty otherwise): what an
/// operator checks first when a Service or NodePort does not answer on this node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServicesStatus {
    /// ClusterIP:port pairs.
    pub frontends: usize,
    /// Service ports left out (SCTP, a ClusterIP:port given twice).
    pub skipped: usize,
    /// `tcp/30080`, `udp/30053`, ...
    pub node_ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub interface: String,
    pub port: u16,
    pub worker: usize,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub pod_block: String,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    source: ConfigSource,
    cfg: AgentConfig,
    backend: Backend,
    opener: PortOpener,
    uplink: UplinkFacts,
    tables: Arc<SharedTables>,
    pool: Option<WorkerPool>,
    pods: BTreeMap<String, PodEntry>,
    neighbors: HashMap<Ipv4Addr, MacAddr>,
    unresolved: Vec<Ipv4Addr>,
    /// Peer nodes left out of the tables (off the uplink subnet, no gateway), so
    /// each is logged once.
    skipped: Vec<String>,
    gauges: Arc<Gauges>,
    metrics: Option<MetricsServer>,
    /// Kernel routes, policy rules and sysctls this agent set (undone on shutdown).
    kernel: KernelRoutes,
    /// The SNAT port range, kept from the node's own sockets (given back on
    /// shutdown).
    reserved_ports: Option<ReservedPorts>,
    /// Pod addresses handed out to the CNI plugin.
    addresses: PodAddressBook,
    /// Kubernetes Services (Kubernetes mode), put into every snapshot.
    services: Arc<ServiceTable>,
}

/// Whether a pod is attached for the first time or restored from the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    New,
    Restored,
}

/// What the CNI plugin is told about an attachment: the pod's address and how the
/// pod's end of the veth is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CniAddress {
    pub ip: Ipv4Addr,
    /// The pods' default gateway (answered by the dataplane).
    pub gateway: Ipv4Addr,
    /// The pod interface's MTU: the uplink's, minus the VXLAN overhead in overlay.
    pub mtu: u16,
}

impl Agent {
    /// Reads `config_path`, starts the workers on the uplink, restores the pods of
    /// the state file and publishes the first snapshot.
    pub fn start(config_path: &Path) -> Result<Self, AgentError> {
        let cfg = AgentConfig::load(config_path)?;
        Self::start_from(cfg, ConfigSource::File(config_path.to_owned()))
    }

    /// Starts from a configuration already loaded (Kubernetes mode: the local file
    /// joined with the cluster's facts).
    pub fn start_from(cfg: AgentConfig, source: ConfigSource) -> Result<Self, AgentError> {
        let addresses =
            PodAddressBook::load(&cfg.control.address_file, cfg.pods.block, cfg.pods.gateway)?;
        let ifname = cfg.uplink.interface.clone();
        let info = neighbors::uplink_info(&ifname)?;
        let prefix_len = match cfg.uplink.prefix_len {
            Some(l) => l,
            None => neighbors::connected_prefix_len(&ifname, cfg.node.address)?.ok_or_else(|| {
                AgentError::Refused(format!(
                    "uplink {ifname} has no subnet holding node.address {}; assign the address or set uplink.prefixLen",
                    cfg.node.address
                ))
            })?,
        };
        let gateway = match cfg.uplink.gateway {
            Some(g) => Some(g),
            None => neighbors::default_gateway(&ifname)?,
        };
        let mut uplink = UplinkFacts {
            port: UPLINK_PORT,
            routed_port: UPLINK_PORT,
            host_port: None,
            mac: info.mac,
            mtu: info.mtu,
            prefix_len,
            gateway,
        };

        let wanted = match cfg.dataplane.backend {
            BackendConfig::Auto => Backend::Auto,
            BackendConfig::AfXdp => Backend::AfXdp,
            BackendConfig::Tun => Backend::Tun,
        };
        let mut backend = HostSupport::probe().resolve(wanted, &ifname)?;
        let mut opener = PortOpener::new(backend, &cfg);

        let mut neighbors = neighbors::resolve(&ifname, &next_hops(&cfg, &uplink), RESOLVE_WAIT);
        neighbors.retain(|_, m| *m != MacAddr::ZERO);
        let built = build_tables(&cfg, &uplink, &[], &neighbors, off_subnet_peers(&source))?;
        let tables = Arc::new(SharedTables::new(built.tables));

        let workers = cfg.worker_count();
        let cores: Vec<Option<usize>> = if cfg.dataplane.cores.is_empty() {
            (0..workers).map(Some).collect()
        } else {
            cfg.dataplane.cores.iter().copied().map(Some).collect()
        };
        let pool_cfg = PoolConfig {
            workers,
            cores,
            idle_polls: cfg.dataplane.idle_polls,
            park_timeout: Duration::from_millis(cfg.dataplane.park_timeout_ms),
            ..PoolConfig::default()
        };
        let snat = cfg.snat.dataplane_config(workers);
        let snat_ports = snat.port_range.clone();
        let state_dir = cfg
            .control
            .state_file
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned();
        warn_if_kernel_ephemeral_ports_shrink(&snat_ports);
        let reserved_ports = Some(ReservedPorts::claim(&snat_ports, &state_dir)?);
        let pool = WorkerPool::start(&pool_cfg, Arc::clone(&tables), move |w| {
            Pipeline::new(w, &snat)
        })?;

        // One uplink queue per worker while the device has queues; a single-queue
        // uplink belongs to worker 0 and the others hand it their frames.
        let queues = rx_queues(&ifname).min(workers);
        // The SNAT switch can be flipped by a reload, so replies are always steered.
        let mut kernel = KernelRoutes::with_journal(cfg.control.host_journal());
        let (mut queues, mut sole) = match backend {
            // UDP sockets with SO_REUSEPORT: one per worker.
            Backend::Tun => (workers, false),
            _ => (queues, queues < workers),
        };
        let ports = match opener.open_uplink(
            &cfg,
            UPLINK_PORT,
            queues,
            Some(snat_ports.clone()),
            info.mac,
        ) {
            Ok(ports) => ports,
            // `auto`: an interface that refuses the XDP program means TUN.
            Err(e)
                if wanted == Backend::Auto
                    && backend == Backend::AfXdp
                    && !matches!(e, PortError::NoSuchInterface(_)) =>
            {
                tracing::warn!(uplink = %ifname, error = %e, "the uplink refused AF_XDP; using the TUN backend");
                backend = Backend::Tun;
                opener = PortOpener::new(backend, &cfg);
                (queues, sole) = (workers, false);
                opener.open_uplink(
                    &cfg,
                    UPLINK_PORT,
                    queues,
                    Some(snat_ports.clone()),
                    info.mac,
                )?
            }
            Err(e) => return Err(e.into()),
        };
        for (w, port) in ports.into_iter().enumerate() {
            pool.add_port(w, port, sole)?;
        }
        // The host port: the kernel's door into the dataplane, on both backends.
        for (w, port) in opener
            .open_tun(HOST_TUN, workers, HOST_PORT, info.mtu, Some(info.mac))?
            .into_iter()
            .enumerate()
        {
            pool.add_port(w, port, false)?;
        }
        uplink.host_port = Some(HOST_PORT);
        if backend == Backend::Tun {
            // The kernel owns the NIC: plain packets leave through the host port.
            uplink.routed_port = HOST_PORT;
            let mtu = cfg.pod_mtu(info.mtu);
            for (w, port) in opener
                .open_tun(POD_TUN, workers, TUN_PORT, mtu, None)?
                .into_iter()
                .enumerate()
            {
                pool.add_port(w, port, false)?;
            }
        }
        host_routing::apply(&host_routing::plan(backend, &cfg, &snat_ports), &mut kernel)?;

        let gauges = Arc::new(Gauges::default());
        let mut agent = Agent {
            source,
            cfg,
            backend,
            opener,
            uplink,
            tables,
            pool: Some(pool),
            pods: BTreeMap::new(),
            neighbors,
            unresolved: built.unresolved,
            skipped: Vec::new(),
            gauges,
            metrics: None,
            kernel,
            reserved_ports,
            addresses,
            services: Arc::default(),
        };
        agent.restore_pods();
        agent.publish()?;
        agent.start_metrics()?;
        tracing::info!(
            node = %agent.cfg.node.name, backend = %agent.backend, workers, uplink = %ifname,
            mode = ?agent.cfg.mode, vtep_mac = %agent.cfg.vtep_mac(), "agent started"
        );
        Ok(agent)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    fn pool(&self) -> Result<&WorkerPool, AgentError> {
        self.pool
            .as_ref()
            .ok_or_else(|| AgentError::Refused("the agent is stopping".into()))
    }

    fn start_metrics(&mut self) -> Result<(), AgentError> {
        let Some(addr) = self.cfg.metrics.listen else {
            return Ok(());
        };
        let counters = Arc::clone(self.pool()?.counters());
        let gauges = Arc::clone(&self.gauges);
        let render = Arc::new(move |out: &mut String| {
            use std::fmt::Write as _;
            counters.render_prometheus(out);
            let g = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                    v.load(Ordering::Relaxed)
                );
            };
            g(
                out,
                "hybridway_tables_generation",
                "Generation of the published table snapshot.",
                &gauges.generation,
            );
            g(
                out,
                "hybridway_local_pods",
                "Pods attached on this node.",
                &gauges.pods,
            );
            g(
                out,
                "hybridway_remote_nodes",
                "Other nodes in the tables.",
                &gauges.nodes,
            );
            g(
                out,
                "hybridway_unresolved_next_hops",
                "Next hops without a known MAC.",
                &gauges.unresolved,
            );
            g(
                out,
                "hybridway_skipped_nodes",
                "Other nodes left out of the tables: off the uplink subnet and no gateway known.",
                &gauges.skipped_nodes,
            );
            g(
                out,
                "hybridway_config_reloads",
                "Successful configuration reloads.",
                &gauges.reloads,
            );
            g(
                out,
                "hybridway_config_reload_failures",
                "Refused configuration reloads.",
                &gauges.reload_failures,
            );
        });
        let server = MetricsServer::start(addr, render)
            .map_err(|source| AgentError::Metrics { addr, source })?;
        tracing::info!(addr = %server.local_addr(), "Prometheus metrics at /metrics");
        self.metrics = Some(server);
        Ok(())
    }

    fn attachments(&self) -> Vec<PodAttachment> {
        self.pods
            .values()
            .map(|e| PodAttachment {
                pod: e.pod.clone(),
                port: e.port,
            })
            .collect()
    }

    /// Builds a snapshot from the current state and publishes it.
    fn publish(&mut self) -> Result<(), AgentError> {
        let off_subnet = off_subnet_peers(&self.source);
        let underlay =
            host_routing::underlay_routes(self.backend, &self.cfg, &self.uplink, off_subnet)?;
        self.kernel
            .sync(host_routing::is_underlay_route, &underlay)?;
        let peers = host_routing::peer_routes(&self.cfg, self.uplink.mtu);
        let cfg = &self.cfg;
        self.kernel
            .sync(|r| host_routing::is_peer_route(r, cfg), &peers)?;
        let built = build_tables(
            &self.cfg,
            &self.uplink,
            &self.attachments(),
            &self.neighbors,
            off_subnet,
        )?;
        for name in newly_skipped(&self.skipped, &built.skipped) {
            tracing::warn!(node = %name, "node left out of the tables: off the uplink subnet and no gateway known (set uplink.gateway)");
        }
        self.skipped = built.skipped;
        // On the TUN backend the kernel resolves next hops; the MACs are never used.
        self.unresolved = if self.backend == Backend::Tun {
            Vec::new()
        } else {
            built.unresolved
        };
        if !self.unresolved.is_empty() {
            tracing::warn!(next_hops = ?self.unresolved, "next hops without a MAC yet; their routes go nowhere until resolved");
        }
        let mut tables = built.tables;
        tables.services = Arc::clone(&self.services);
        self.tables.publish(tables);
        let generation = self.tables.load().generation;
        self.gauges.generation.store(generation, Ordering::Relaxed);
        self.gauges
            .pods
            .store(self.pods.len() as u64, Ordering::Relaxed);
        self.gauges.nodes.store(
            (self.cfg.nodes.len() - self.skipped.len()) as u64,
            Ordering::Relaxed,
        );
        self.gauges
            .skipped_nodes
            .store(self.skipped.len() as u64, Ordering::Relaxed);
        self.gauges
            .unresolved
            .store(self.unresolved.len() as u64, Ordering::Relaxed);
        tracing::debug!(generation, "tables published");
        Ok(())
    }

    /// Looks up next-hop MACs again; republishes when something changed. Called
    /// periodically by the control loop.
    pub fn refresh_neighbors(&mut self) -> Result<(), AgentError> {
        if self.backend == Backend::Tun {
            return Ok(());
        }
        let hops = next_hops(&self.cfg, &self.uplink);
        let wait = if self.unresolved.is_empty() {
            Duration::ZERO
        } else {
            RESOLVE_WAIT
        };
        let mut found = neighbors::resolve(&self.cfg.uplink.interface, &hops, wait);
        found.retain(|ip, _| hops.contains(ip));
        // Keep what we knew if the kernel's entry went stale and vanished for a moment.
        let mut merged = self.neighbors.clone();
        merged.extend(found);
        if merged != self.neighbors {
            self.neighbors = merged;
            self.publish()?;
        }
        Ok(())
    }

    /// Re-reads the configuration file (SIGHUP). Peers, SNAT ranges and the uplink
    /// gateway change live; what the running ports and workers were built from (node,
    /// mode, uplink interface, pod block, VXLAN port, backend, workers) needs a restart
    /// and is refused. A refused file leaves the running tables untouched.
    pub fn reload(&mut self) -> Result<(), AgentError> {
        let result = self.try_reload();
        match &result {
            Ok(()) => self.gauges.reloads.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.gauges.reload_failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn try_reload(&mut self) -> Result<(), AgentError> {
        let next = match &self.source {
            ConfigSource::File(path) => AgentConfig::load(path)?,
            ConfigSource::Kubernetes { local } => {
                AgentConfig::from_parts(LocalConfig::load(local)?, self.cfg.cluster_facts())?
            }
        };
        self.replace_config(next)
    }

    /// Kubernetes mode: the Service watch built a new service table.
    pub fn apply_services(&mut self, table: Arc<ServiceTable>) -> Result<(), AgentError> {
        self.services = table;
        self.publish()
    }

    /// Kubernetes mode: the Node watch saw the cluster change. Other nodes change
    /// live; this node's own facts (address, block, mode) need a restart, as in
    /// [`Agent::reload`] ([`AgentError::NeedsRestart`]).
    pub fn apply_cluster(&mut self, facts: ClusterFacts) -> Result<(), AgentError> {
        let next = AgentConfig::from_parts(self.cfg.local_config(), facts)?;
        self.replace_config(next)
    }

    /// Swaps in `next` when what the running ports and workers were built from is
    /// unchanged, and publishes; a refused or failing configuration leaves the
    /// running one in place.
    fn replace_config(&mut self, next: AgentConfig) -> Result<(), AgentError> {
        let cur = &self.cfg;
        let fixed: [(&str, bool); 10] = [
            (
                "node",
                next.node.name == cur.node.name && next.node.address == cur.node.address,
            ),
            ("mode", next.mode == cur.mode),
            (
                "uplink.interface",
                next.uplink.interface == cur.uplink.interface,
            ),
            (
                "pods",
                next.pods.block == cur.pods.block && next.pods.gateway == cur.pods.gateway,
            ),
            ("vxlan.port", next.vxlan.port == cur.vxlan.port),
            (
                "dataplane.backend",
                next.dataplane.backend == cur.dataplane.backend,
            ),
            (
                "dataplane.workers",
                next.dataplane.workers == cur.dataplane.workers,
            ),
            (
                "snat (portRange, timeouts, maxFlowsPerWorker)",
                next.snat.port_range == cur.snat.port_range
                    && next.snat.timeouts == cur.snat.timeouts
                    && next.snat.max_flows_per_worker == cur.snat.max_flows_per_worker,
            ),
            ("control.socket", next.control.socket == cur.control.socket),
            (
                "control.addressFile",
                next.control.address_file == cur.control.address_file,
            ),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(AgentError::NeedsRestart { field });
        }
        if let Some(g) = next.uplink.gateway {
            self.uplink.gateway = Some(g);
        }
        let before: Vec<String> = self.cfg.nodes.iter().map(|n| n.name.clone()).collect();
        let previous = std::mem::replace(&mut self.cfg, next);
        let hops = next_hops(&self.cfg, &self.uplink);
        let missing: Vec<Ipv4Addr> = hops
            .iter()
            .copied()
            .filter(|h| !self.neighbors.contains_key(h))
            .collect();
        if !missing.is_empty() && self.backend != Backend::Tun {
            self.neighbors.extend(neighbors::resolve(
                &self.cfg.uplink.interface,
                &missing,
                RESOLVE_WAIT,
            ));
        }
        if let Err(e) = self.publish() {
            self.cfg = previous;
            return Err(e);
        }
        let after: Vec<String> = self.cfg.nodes.iter().map(|n| n.name.clone()).collect();
        tracing::info!(?before, ?after, "configuration applied");
        Ok(())
    }

    fn free_port_id(&self) -> Option<PortId> {
        (3..=u16::MAX)
            .map(PortId)
            .find(|id| self.pods.values().all(|e| e.port != *id))
    }

    /// Attaches a pod: opens its port on the least loaded worker, then publishes a
    /// snapshot with its route. Nothing else stops. Returns notes for the caller
    /// (what was fixed on the pod's veth).
    pub fn add_pod(&mut self, pod: LocalPod) -> Result<Vec<String>, AgentError> {
        let notes = self.attach_pod(pod, Attach::New)?;
        self.save_pods();
        Ok(notes)
    }

    /// On the AF_XDP backend, makes both ends of the pod's veth send finished frames
    /// (checksums computed, no super-frames; see `port::ethtool` for why), turning
    /// the offloads off where they are on and saying so. The pod's end lives in the
    /// pod's namespace, which the request must name. The TUN backend leaves frames
    /// to the kernel, which finishes them itself.
    fn veth_finishes_frames(&self, pod: &LocalPod) -> Result<Vec<String>, AgentError> {
        if self.backend == Backend::Tun {
            return Ok(Vec::new());
        }
        let Some(netns) = &pod.netns else {
            return Err(AgentError::Refused(format!(
                "pod {}: on the AF_XDP backend the pod's end of the veth must compute its own checksums, \
                 which the agent checks in the pod's network namespace; name it (--netns NAME|PATH)",
                pod.name
            )));
        };
        let host = &pod.interface;
        let refused = |what: String| AgentError::Refused(format!("pod {}: {what}", pod.name));
        let peer_index: u32 = std::fs::read_to_string(format!("/sys/class/net/{host}/iflink"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| refused(format!("no interface {host} on this node")))?;
        let path = if netns.contains('/') {
            netns.clone()
        } else {
            format!("/run/netns/{netns}")
        };
        let mut notes = Vec::new();
        let mut note = |dev: &str, end: &str, changed: &[ethtool::TxOffload]| {
            if !changed.is_empty() {
                let names: Vec<&str> = changed.iter().map(|o| o.label()).collect();
                notes.push(format!(
                    "pod {}: turned off {} on {end} {dev}: the AF_XDP backend takes frames as the veth carries them, and a veth never finishes checksums or segments",
                    pod.name,
                    names.join(", ")
                ));
            }
        };
        let changed = ethtool::finish_frames_in_software(host)
            .map_err(|e| refused(format!("offloads of {host}: {e}")))?;
        note(host, "the host's end", &changed);
        let (peer, changed) = {
            let _inside = NetnsGuard::enter_path(&path)
                .map_err(|e| refused(format!("network namespace {path}: {e}")))?;
            let peer = ethtool::interface_name(peer_index).map_err(|e| {
                refused(format!(
                    "the peer of {host} (index {peer_index}) is not in {path}: {e}"
                ))
            })?;
            let changed = ethtool::finish_frames_in_software(&peer)
                .map_err(|e| refused(format!("offloads of {peer} in {path}: {e}")))?;
            (peer, changed)
        };
        note(&peer, "the pod's end", &changed);
        Ok(notes)
    }

    fn cni_address(&self, ip: Ipv4Addr) -> CniAddress {
        CniAddress {
            ip,
            gateway: self.cfg.pods.gateway,
            mtu: self.cfg.pod_mtu(self.uplink.mtu),
        }
    }

    /// CNI ADD: gives the attachment its address (the one it already has, when the
    /// runtime retries) and attaches its veth. An address is written down before
    /// the pod is attached and released when attaching fails, so a crash in between
    /// leaves at worst an allocation that DEL or GC frees, never an address in use
    /// twice.
    pub fn cni_add(
        &mut self,
        key: &AttachmentKey,
        interface: &str,
        mac: MacAddr,
        netns: &str,
    ) -> Result<(CniAddress, Vec<String>), AgentError> {
        let name = key.to_string();
        // A repeated ADD comes with a new veth (the plugin replaces what a failed or
        // repeated ADD left): the old port is bound to an interface that is gone.
        // The address stays the attachment's.
        if self.pods.contains_key(&name) {
            self.remove_pod(&name)?;
        }
        let pods = &self.pods;
        let taken = |ip: Ipv4Addr| pods.values().any(|e| e.pod.ip == ip);
        let alloc = self.addresses.allocate(key, interface, mac, &taken)?;
        let pod = LocalPod {
            name,
            ip: alloc.ip,
            mac,
            interface: interface.to_owned(),
            netns: Some(netns.to_owned()),
        };
        match self.add_pod(pod) {
            Ok(notes) => Ok((self.cni_address(alloc.ip), notes)),
            Err(e) => {
                if let Err(r) = self.addresses.release(key) {
                    tracing::error!(attachment = %key, error = %r, "could not release the address of a failed ADD");
                }
                Err(e)
            }
        }
    }

    /// CNI CHECK: the attachment has an address and its pod is attached with it.
    pub fn cni_check(&self, key: &AttachmentKey) -> Result<CniAddress, AgentError> {
        let alloc = self
            .addresses
            .get(key)
            .ok_or_else(|| AgentError::Refused(format!("{key} has no address on this node")))?;
        match self.pods.get(&key.to_string()) {
            Some(e) if e.pod.ip == alloc.ip && e.pod.interface == alloc.interface => {
                Ok(self.cni_address(alloc.ip))
            }
            _ => Err(AgentError::Refused(format!(
                "{key} has address {} but its veth {} is not attached",
                alloc.ip, alloc.interface
            ))),
        }
    }

    /// CNI DEL: detaches the attachment's pod, then frees its address (in this order,
    /// so a crash in between leaks an address until GC rather than reusing one that
    /// a restored pod still holds). Nothing to do is not an error.
    pub fn cni_del(&mut self, key: &AttachmentKey) -> Result<Option<Allocation>, AgentError> {
        let name = key.to_string();
        if self.pods.contains_key(&name) {
            self.remove_pod(&name)?;
        }
        Ok(self.addresses.release(key)?)
    }

    /// CNI GC: detaches and frees every attachment not in `valid`; returns them so
    /// the plugin can delete what is left of their veths.
    pub fn cni_gc(&mut self, valid: &[AttachmentKey]) -> Result<Vec<Allocation>, AgentError> {
        let valid: std::collections::HashSet<&AttachmentKey> = valid.iter().collect();
        let stale: Vec<AttachmentKey> = self
            .addresses
            .allocations()
            .map(|a| a.key.clone())
            .filter(|k| !valid.contains(k))
            .collect();
        for key in &stale {
            let name = key.to_string();
            if self.pods.contains_key(&name)
                && let Err(e) = self.detach(&name)
            {
                tracing::warn!(attachment = %key, error = %e, "GC: detaching failed");
            }
        }
        self.save_pods();
        let gone = self.addresses.release_unless(|k| !stale.contains(k))?;
        tracing::info!(released = gone.len(), kept = valid.len(), "CNI GC");
        Ok(gone)
    }

    fn attach_pod(&mut self, pod: LocalPod, how: Attach) -> Result<Vec<String>, AgentError> {
        if self.pods.contains_key(&pod.name) {
            return Err(AgentError::Refused(format!(
                "pod {} is already attached; remove it first",
                pod.name
            )));
        }
        if let Some(other) = self
            .pods
            .values()
            .find(|e| e.pod.interface == pod.interface)
        {
            return Err(AgentError::Refused(format!(
                "interface {} already belongs to pod {}",
                pod.interface, other.pod.name
            )));
        }
        // Validate against the tables before touching the interface.
        let mut trial = self.attachments();
        trial.push(PodAttachment {
            pod: pod.clone(),
            port: PortId(u16::MAX),
        });
        build_tables(
            &self.cfg,
            &self.uplink,
            &trial,
            &self.neighbors,
            off_subnet_peers(&self.source),
        )?;

        if self.backend == Backend::Tun {
            // The kernel delivers to the pod: a /32 route to its veth, proxy ARP for
            // its gateway; the dataplane reaches it through the TUN device.
            let dev = pod.interface.clone();
            self.kernel
                .sysctl(&format!("net.ipv4.conf.{dev}.proxy_arp"), "1")?;
            self.kernel.add(&format!("{}/32", pod.ip), &dev)?;
            let name = pod.name.clone();
            self.pods.insert(
                name.clone(),
                PodEntry {
                    pod,
                    port: TUN_PORT,
                    worker: 0,
                },
            );
            if let Err(e) = self.publish() {
                let _ = self.detach(&name);
                return Err(e);
            }
            return Ok(Vec::new());
        }
        // A restored pod's veth was checked when it was added.
        let notes = match how {
            Attach::New => self.veth_finishes_frames(&pod)?,
            Attach::Restored => Vec::new(),
        };
        let id = self
            .free_port_id()
            .ok_or_else(|| AgentError::Refused("no free port ids".into()))?;
        let workers = self.pool()?.workers();
        let mut load = vec![0usize; workers];
        for e in self.pods.values() {
            if let Some(l) = load.get_mut(e.worker) {
                *l += 1;
            }
        }
        let worker = (0..workers)
            .min_by_key(|w| load.get(*w).copied().unwrap_or(0))
            .unwrap_or(0);
        let port = self.opener.open_pod(&pod.interface, id)?;
        self.pool()?.add_port(worker, port, true)?;
        tracing::info!(pod = %pod.name, ip = %pod.ip, interface = %pod.interface, %id, worker, "pod attached");
        let name = pod.name.clone();
        self.pods.insert(
            name.clone(),
            PodEntry {
                pod,
                port: id,
                worker,
            },
        );
        if let Err(e) = self.publish() {
            let _ = self.detach(&name);
            return Err(e);
        }
        Ok(notes)
    }

    /// Detaches a pod: its route leaves the tables first, then its port closes.
    pub fn remove_pod(&mut self, name: &str) -> Result<(), AgentError> {
        self.detach(name)?;
        self.save_pods();
        Ok(())
    }

    fn detach(&mut self, name: &str) -> Result<(), AgentError> {
        let entry = self
            .pods
            .remove(name)
            .ok_or_else(|| AgentError::Refused(format!("no pod named {name}")))?;
        self.publish()?;
        if self.backend == Backend::Tun {
            self.kernel
                .remove(&format!("{}/32", entry.pod.ip), &entry.pod.interface);
        } else {
            self.pool()?.remove_port(entry.port)?;
        }
        tracing::info!(pod = name, "pod detached");
        Ok(())
    }

    fn save_pods(&self) {
        let path = &self.cfg.control.state_file;
        let pods: Vec<&LocalPod> = self.pods.values().map(|e| &e.pod).collect();
        let result = serde_json::to_vec_pretty(&pods)
            .map_err(|e| e.to_string())
            .and_then(|text| write_atomically(path, &text).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not save the pod list; it will not survive a restart");
        }
    }

    fn restore_pods(&mut self) {
        let path = self.cfg.control.state_file.clone();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let pods: Vec<LocalPod> = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable pod state file");
                return;
            }
        };
        for pod in pods {
            let name = pod.name.clone();
            if let Err(e) = self.attach_pod(pod, Attach::Restored) {
                tracing::warn!(pod = %name, error = %e, "could not restore pod");
            }
        }
    }

    pub fn status(&self) -> Status {
        let counters = self.pool.as_ref().map(|p| Arc::clone(p.counters()));
        let pods = self
            .pods
            .values()
            .map(|e| {
                let (rx, tx) = counters.as_ref().map_or((0, 0), |c| c.port_totals(e.port));
                PodStatus {
                    name: e.pod.name.clone(),
                    ip: e.pod.ip,
                    mac: e.pod.mac.to_string(),
                    interface: e.pod.interface.clone(),
                    port: e.port.0,
                    worker: e.worker,
                    rx_packets: rx,
                    tx_packets: tx,
                }
            })
            .collect();
        let mut drops = BTreeMap::new();
        if let Some(c) = &counters {
            for r in hybridway_dataplane::DropReason::ALL {
                let n = c.total_drops(*r);
                if n > 0 {
                    drops.insert(r.label().to_string(), n);
                }
            }
        }
        Status {
            node: self.cfg.node.name.clone(),
            address: self.cfg.node.address,
            mode: self.cfg.mode.as_str().to_string(),
            vtep_mac: self.cfg.vtep_mac().to_string(),
            source: match self.source {
                ConfigSource::File(_) => "file",
                ConfigSource::Kubernetes { .. } => "kubernetes",
            }
            .to_string(),
            backend: self.backend.to_string(),
            workers: self.pool.as_ref().map_or(0, WorkerPool::workers),
            generation: self.tables.load().generation,
            pods,
            nodes: self
                .cfg
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    address: n.address,
                    pod_block: n.pod_block.to_string(),
                })
                .collect(),
            unresolved_next_hops: self.unresolved.clone(),
            drops,
            services: ServicesStatus {
                frontends: self.services.len(),
                skipped: self.services.skipped(),
                node_ports: self
                    .services
                    .node_ports()
                    .into_iter()
                    .map(|(proto, port)| format!("{}/{port}", proto.label()))
                    .collect(),
            },
        }
    }

    /// Stops the workers and closes every port, which detaches every XDP program
    /// this agent attached. The pod list stays in the state file for the next start.
    pub fn shutdown(&mut self) {
        self.metrics = None;
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
        // The TUN device went with its queues; its routes with it. The rest:
        self.kernel.clear();
        self.reserved_ports = None;
        tracing::info!(
            "agent stopped; XDP programs detached, TUN device, routes and sysctls removed"
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reserving the NAT range takes any ports it shares with the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`) away from the node's own outgoing
/// connections; say so when it leaves the node fewer than 10,000.
/// File mode refuses a peer it cannot reach (the file is wrong); Kubernetes mode
/// leaves it out and keeps the rest (one unreachable Node must not stop every
/// other change).
fn off_subnet_peers(source: &ConfigSource) -> OffSubnetPeers {
    match source {
        ConfigSource::File(_) => OffSubnetPeers::Refuse,
        ConfigSource::Kubernetes { .. } => OffSubnetPeers::Skip,
    }
}

/// The names in `now` that `before` did not have (logged once each).
fn newly_skipped<'a>(before: &'a [String], now: &'a [String]) -> impl Iterator<Item = &'a String> {
    now.iter().filter(move |n| !before.contains(n))
}

fn warn_if_kernel_ephemeral_ports_shrink(nat: &std::ops::RangeInclusive<u16>) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else {
        return;
    };
    let (nlo, nhi) = (u32::from(*nat.start()), u32::from(*nat.end()));
    let shared = hi.min(nhi).saturating_add(1).saturating_sub(lo.max(nlo));
    let left = (hi + 1).saturating_sub(lo).saturating_sub(shared);
    if shared > 0 && left < 10_000 {
        tracing::warn!(
            kernel_range = %format_args!("{lo}-{hi}"),
            nat_range = %format_args!("{nlo}-{nhi}"),
            left,
            "snat.portRange overlaps the kernel's ephemeral ports; the node's own connections keep only the rest"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::newly_skipped;

    #[test]
    fn a_skipped_node_is_reported_once() {
        let none: Vec<String> = Vec::new();
        let c = vec!["node-c".to_string()];
        let cd = vec!["node-c".to_string(), "node-d".to_string()];
        assert_eq!(newly_skipped(&none, &c).collect::<Vec<_>>(), ["node-c"]);
        assert!(newly_skipped(&c, &c).next().is_none(), "already reported");
        assert_eq!(newly_skipped(&c, &cd).collect::<Vec<_>>(), ["node-d"]);
    }
}
