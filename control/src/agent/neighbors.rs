//! What the table builder needs to know about the host: the uplink's MAC, MTU and
//! subnet, the default gateway, and the MAC addresses of next hops.
//!
//! Next-hop MACs come from the kernel's neighbour table (`/proc/net/arp`): the kernel
//! keeps running ARP on the uplink (the XDP program passes ARP to it), so its table is
//! the most robust source and we never answer or send ARP on the uplink ourselves.
//! When an entry is missing we make the kernel resolve it by sending one UDP datagram
//! to the discard port (9) of the next hop out of the uplink, then poll the table
//! briefly. An address that stays unresolved is reported to the caller, which builds
//! the route with a zero MAC (frames go nowhere rather than to the wrong place) and
//! retries on its next refresh.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use hybridway_dataplane::wire::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: String, content: String },
}

fn read(path: &str) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_string(),
        source,
    })
}

/// Facts about the uplink interface, read from sysfs and procfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkInfo {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub mtu: u16,
}

/// Reads the MAC, MTU and ifindex of `ifname`.
pub fn uplink_info(ifname: &str) -> Result<UplinkInfo, HostError> {
    let dir = format!("/sys/class/net/{ifname}");
    if !Path::new(&dir).exists() {
        return Err(HostError::NoSuchInterface(ifname.to_string()));
    }
    let parse_err = |path: &str, content: &str| HostError::Parse {
        path: path.to_string(),
        content: content.to_string(),
    };
    let mac_path = format!("{dir}/address");
    let mac_text = read(&mac_path)?;
    let mac = mac_text
        .trim()
        .parse()
        .map_err(|_| parse_err(&mac_path, &mac_text))?;
    let mtu_path = format!("{dir}/mtu");
    let mtu_text = read(&mtu_path)?;
    let mtu = mtu_text
        .trim()
        .parse()
        .map_err(|_| parse_err(&mtu_path, &mtu_text))?;
    let idx_path = format!("{dir}/ifindex");
    let idx_text = read(&idx_path)?;
    let ifindex = idx_text
        .trim()
        .parse()
        .map_err(|_| parse_err(&idx_path, &idx_text))?;
    Ok(UplinkInfo { ifindex, mac, mtu })
}

/// One row of `/proc/net/route` (IPv4 routes of the main table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dest: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mask: Ipv4Addr,
}

/// Parses `/proc/net/route` text, keeping the routes of `ifname`. Addresses there
/// are the in-memory (network order) bytes printed as a native-endian integer.
pub fn parse_proc_route(text: &str, ifname: &str) -> Vec<KernelRoute> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&ifname) {
                return None;
            }
            Some(KernelRoute {
                dest: hex(f.get(1)?)?,
                gateway: hex(f.get(2)?)?,
                mask: hex(f.get(7)?)?,
            })
        })
        .collect()
}

/// The kernel's default gateway via `ifname`, if any.
pub fn default_gateway(ifname: &str) -> Result<Option<Ipv4Addr>, HostError> {
    let text = read("/proc/net/route")?;
    Ok(parse_proc_route(&text, ifname)
        .into_iter()
        .find(|r| r.dest.is_unspecified() && r.mask.is_unspecified())
        .map(|r| r.gateway))
}

/// Length of the connected subnet on `ifname` that holds `addr` (the kernel's
/// link route), if any.
pub fn connected_prefix_len(ifname: &str, addr: Ipv4Addr) -> Result<Option<u8>, HostError> {
    let text = read("/proc/net/route")?;
    Ok(parse_proc_route(&text, ifname)
        .into_iter()
        .filter(|r| r.gateway.is_unspecified() && !r.mask.is_unspecified())
        .filter(|r| u32::from(addr) & u32::from(r.mask) == u32::from(r.dest))
        .map(|r| u32::from(r.mask).count_ones() as u8)
        .max())
}

/// Parses `/proc/net/arp`, keeping complete entries on `ifname`.
pub fn parse_proc_arp(text: &str, ifname: &str) -> HashMap<Ipv4Addr, MacAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // IP address, HW type, Flags, HW address, Mask, Device
            if f.get(5) != Some(&ifname) {
                return None;
            }
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None; // ATF_COM clear: incomplete
            }
            let ip: Ipv4Addr = f.first()?.parse().ok()?;
            let mac: MacAddr = f.get(3)?.parse().ok()?;
            (mac != MacAddr::ZERO).then_some((ip, mac))
        })
        .collect()
}

/// Resolves the MAC of each address in `ips` on `ifname`; returns what was found.
/// Missing ones are poked (one UDP datagram to port 9) and waited for up to `wait`.
pub fn resolve(ifname: &str, ips: &[Ipv4Addr], wait: Duration) -> HashMap<Ipv4Addr, MacAddr> {
    let snapshot = || {
        read("/proc/net/arp")
            .map(|t| parse_proc_arp(&t, ifname))
            .unwrap_or_default()
    };
    let mut found = snapshot();
    let missing: Vec<Ipv4Addr> = ips
        .iter()
        .copied()
        .filter(|ip| !found.contains_key(ip))
        .collect();
    if missing.is_empty() {
        return found;
    }
    for ip in &missing {
        poke(ifname, *ip);
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        found = snapshot();
        if missing.iter().all(|ip| found.contains_key(ip)) {
            break;
        }
    }
    found
}

/// Makes the kernel ARP for `ip`: a datagram to the discard port out of `ifname`.
fn poke(ifname: &str, ip: Ipv4Addr) {
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return;
    };
    // Binding to the device keeps the datagram on the uplink even when a pod route
    // or policy rule would send it elsewhere; failure is harmless (best effort).
    let _ = sock.bind_device(Some(ifname.as_bytes()));
    let sock: UdpSocket = sock.into();
    let _ = sock.send_to(&[], SocketAddrV4::new(ip, 9));
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

    #[test]
    fn parses_proc_arp() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    198.18.0.2       0x1         0x2         02:00:00:00:00:02     *        eth0\n\
                    198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                    198.18.0.4       0x1         0x2         02:00:00:00:00:04     *        eth1\n";
        let m = parse_proc_arp(text, "eth0");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[&Ipv4Addr::new(198, 18, 0, 2)],
            "02:00:00:00:00:02".parse().unwrap()
        );
    }

    #[test]
    fn parses_proc_route() {
        // 198.18.0.0/24 link route and default via 198.18.0.254, as the kernel prints them.
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\tFE0012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_proc_route(text, "eth0");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gateway, Ipv4Addr::new(198, 18, 0, 254));
        assert_eq!(r[1].dest, Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(r[1].mask, Ipv4Addr::new(255, 255, 255, 0));
        assert!(parse_proc_route(text, "eth1").is_empty());
    }
}
