//! FRR's bgpd as a top-of-rack switch: alone (no zebra, `-Z`), in a namespace, with
//! its vty socket in a directory of its own so `vtysh` can ask it for sessions and
//! routes as JSON.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::LabError;
use crate::netns::Netns;
use crate::process::Daemon;
use crate::wait::poll;

/// One BGP neighbour of the switch.
#[derive(Clone, Debug)]
pub struct Neighbor {
    pub addr: Ipv4Addr,
    pub asn: u32,
    pub password: Option<String>,
}

#[derive(Debug)]
pub struct Bgpd {
    pub dir: PathBuf,
    _daemon: Daemon,
}

impl Bgpd {
    /// Starts bgpd in `ns` as AS `asn` with router ID `router_id`; files in `dir`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        asn: u32,
        router_id: Ipv4Addr,
        neighbors: &[Neighbor],
    ) -> Result<Bgpd, LabError> {
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        let mut conf = format!(
            "frr defaults datacenter\nhostname switch\nlog file {d}/bgpd.log\nrouter bgp {asn}\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n bgp graceful-restart\n"
        );
        for n in neighbors {
            conf.push_str(&format!(
                " neighbor {a} remote-as {asn}\n neighbor {a} timers connect 1\n",
                a = n.addr,
                asn = n.asn
            ));
            if let Some(p) = &n.password {
                conf.push_str(&format!(" neighbor {} password {p}\n", n.addr));
            }
        }
        let cfg = dir.join("bgpd.conf");
        std::fs::write(&cfg, conf)?;
        let mut cmd = ns.command("/usr/lib/frr/bgpd");
        cmd.args(["-Z", "-S", "-u", "root", "-g", "root", "-f"])
            .arg(&cfg)
            .arg("-i")
            .arg(dir.join("bgpd.pid"))
            .arg("-z")
            .arg(dir.join("zserv.api"))
            .arg("--vty_socket")
            .arg(dir)
            .args(["-P", "0"]);
        let bgpd = Bgpd {
            dir: dir.to_path_buf(),
            _daemon: Daemon::spawn("bgpd", cmd, &dir.join("bgpd.out"))?,
        };
        poll(Duration::from_secs(15), || {
            bgpd.vtysh("show bgp summary json")
        })
        .ok_or_else(|| LabError::Agent(format!("bgpd did not start; see {d}/bgpd.out")))?;
        Ok(bgpd)
    }

    /// `vtysh -c cmd` (a `json` command), parsed.
    pub fn vtysh(&self, cmd: &str) -> Option<serde_json::Value> {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `vtysh -c cmd` as text, for people.
    pub fn vtysh_text(&self, cmd: &str) -> String {
        Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The BGP state of the session with `addr` ("Established", ...).
    pub fn peer_state(&self, addr: Ipv4Addr) -> Option<String> {
        let v = self.vtysh("show bgp summary json")?;
        v.pointer(&format!("/ipv4Unicast/peers/{addr}/state"))?
            .as_str()
            .map(String::from)
    }

    /// Prefix → next hops of its paths in the IPv4 unicast table.
    pub fn routes(&self) -> Vec<(String, Vec<String>)> {
        let Some(v) = self.vtysh("show bgp ipv4 unicast json") else {
            return Vec::new();
        };
        let Some(routes) = v.get("routes").and_then(|r| r.as_object()) else {
            return Vec::new();
        };
        routes
            .iter()
            .map(|(prefix, paths)| {
                let mut hops: Vec<String> = paths
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.pointer("/nexthops/0/ip")?.as_str().map(String::from))
                    .collect();
                hops.sort();
                hops.dedup();
                (prefix.clone(), hops)
            })
            .collect()
    }
}
