//! The small-packet rate a path carries, with a sender that is not the bottleneck:
//! `trafgen` (netsniff-ng) floods 64-byte UDP frames (18 bytes of payload, 60 on
//! the veth, 64 with the FCS a wire would add) from one pod's interface through its
//! `PACKET_MMAP` ring, pinned to the machine's last core, and the receiving pod's
//! kernel counts what arrives (`Udp: NoPorts` of `/proc/net/snmp`: the datagrams go
//! to a port nobody listens on, so that counter is exactly them). iperf3's 64-byte
//! figure, by contrast, is bounded by iperf3's own send loop of one `sendto` per
//! datagram.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::netns::Netns;
use crate::topology::Cluster;

/// The UDP destination port of the flood: discard, with no listener.
const FLOOD_PORT: u16 = 9;

/// What one flood sent and what arrived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flood {
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

impl Flood {
    /// Datagrams received per second, in thousands.
    pub fn received_kpps(&self) -> f64 {
        self.received as f64 / self.seconds.max(0.001) / 1e3
    }

    pub fn sent_kpps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(0.001) / 1e3
    }
}

macro_rules! flood {
    ($($arg:tt)*) => {
        LabError::Traffic(format!($($arg)*))
    };
}

/// Floods pod `to` from pod `from` for `seconds`.
pub fn udp64(
    cluster: &Cluster,
    from: (u8, u8),
    to: (u8, u8),
    seconds: u32,
) -> Result<Flood, LabError> {
    let cli = cluster
        .pod(from.0, from.1)
        .ok_or_else(|| flood!("no pod {from:?}"))?;
    let srv = cluster
        .pod(to.0, to.1)
        .ok_or_else(|| flood!("no pod {to:?}"))?;
    let (dev, src, dst_mac) = first_hop(&cli.ns, srv.ip)?;
    let src_mac = cli
        .ns
        .run(&format!("cat /sys/class/net/{dev}/address"))?
        .trim()
        .to_string();
    let config = cluster.spec.dir.join(format!("flood-{}.cfg", cli.name));
    std::fs::create_dir_all(&cluster.spec.dir)?;
    std::fs::write(
        &config,
        format!(
            "{{ eth(da={dst_mac}, sa={src_mac}, type=0x0800), \
             ipv4(saddr={src}, daddr={dst}, ttl=64, df), \
             udp(sport=40000, dport={FLOOD_PORT}), fill(0x61, 18) }}\n",
            dst = srv.ip
        ),
    )?;
    let core = std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0);
    let before = udp_no_ports(&srv.ns)?;
    let start = Instant::now();
    // trafgen prints its totals when the signal stops it.
    let out = cli.ns.output(&format!(
        "timeout -s INT {seconds} taskset -c {core} trafgen --dev {dev} --conf {} --cpus 1 -C",
        config.display()
    ))?;
    let elapsed = start.elapsed().as_secs_f64();
    // What is still in flight arrives within this.
    std::thread::sleep(Duration::from_millis(300));
    let received = udp_no_ports(&srv.ns)?.saturating_sub(before);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let sent = text
        .lines()
        .find_map(|l| l.trim().strip_suffix("packets outgoing"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| flood!("trafgen gave no total: {}", text.trim()))?;
    Ok(Flood {
        sent,
        received,
        seconds: elapsed,
    })
}

/// The device, source address and next hop's MAC address `ns` sends `dst` with.
fn first_hop(ns: &Netns, dst: Ipv4Addr) -> Result<(String, Ipv4Addr, String), LabError> {
    let route: serde_json::Value =
        serde_json::from_str(&ns.run(&format!("ip -j route get {dst}"))?)
            .map_err(|e| flood!("ip route get {dst}: {e}"))?;
    let route = route.get(0).ok_or_else(|| flood!("no route to {dst}"))?;
    let field = |k: &str| route.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let dev = field("dev").ok_or_else(|| flood!("route to {dst} names no device"))?;
    let src: Ipv4Addr = field("prefsrc")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| flood!("route to {dst} names no source"))?;
    let hop = field("gateway").unwrap_or_else(|| dst.to_string());
    // One echo resolves the next hop's address (the frames are built by hand).
    let _ = ns.output(&format!("ping -c 1 -W 2 {dst}"));
    let neigh: serde_json::Value =
        serde_json::from_str(&ns.run(&format!("ip -j neigh show {hop} dev {dev}"))?)
            .map_err(|e| flood!("ip neigh show {hop}: {e}"))?;
    let mac = neigh
        .get(0)
        .and_then(|n| n.get("lladdr"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| flood!("next hop {hop} on {dev} is not resolved"))?;
    Ok((dev, src, mac.to_string()))
}

/// `Udp: NoPorts` of the namespace's `/proc/net/snmp`.
fn udp_no_ports(ns: &Netns) -> Result<u64, LabError> {
    crate::net_counters::read(ns)?
        .get("Udp:NoPorts")
        .copied()
        .ok_or_else(|| flood!("no Udp NoPorts in /proc/net/snmp"))
}
