//! Screen 5: pod-to-pod ping and iperf3 across pools and to the cloud, and SNAT to
//! the outside host.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use hybridway_lab::poll;
use hybridway_lab::traffic::{iperf_between, iperf_flags, source_seen, summarize};

use super::nodes::{NODES, OUTSIDE};
use super::{ClusterArgs, Demo};
use crate::report::{Report, interrupted};

impl Demo {
    pub(super) fn traffic(
        &self,
        args: &ClusterArgs,
        stop: &AtomicBool,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        println!("-- ping (pod -> pod)");
        let pairs = [
            (
                "underlay-1",
                "underlay-2",
                "hybrid <-> hybrid, underlay pool",
            ),
            ("overlay-1", "overlay-2", "hybrid <-> hybrid, overlay pool"),
            ("underlay-1", "overlay-2", "hybrid <-> hybrid, across pools"),
            ("overlay-1", "underlay-2", "hybrid <-> hybrid, across pools"),
            ("underlay-2", "cloud-1", "hybrid <-> cloud"),
            ("overlay-1", "cloud-1", "hybrid <-> cloud"),
            ("cloud-1", "underlay-1", "cloud <-> hybrid"),
            ("cloud-1", "overlay-2", "cloud <-> hybrid"),
        ];
        for (from, to, what) in pairs {
            interrupted(stop)?;
            let (a, b) = (self.pod(from)?, self.pod(to)?);
            // The first packets may wait for tables to converge: retry for a while.
            let ok = poll(Duration::from_secs(20), || {
                a.ns.output(&format!("ping -c 2 -i 0.2 -W 2 -q {}", b.ip))
                    .ok()
                    .filter(|o| o.status.success())
            })
            .is_some();
            report.check(
                &format!("ping {} -> {} ({what})", a.name, b.name),
                ok,
                &b.ip.to_string(),
            );
        }
        println!("-- iperf3 (pod -> pod)");
        for (from, to, udp) in [
            ("underlay-1", "overlay-1", false),
            ("overlay-2", "underlay-2", true),
            ("overlay-1", "cloud-1", false),
            ("cloud-1", "underlay-2", false),
        ] {
            interrupted(stop)?;
            let (a, b) = (self.pod(from)?, self.pod(to)?);
            let what = format!(
                "iperf3 {} {} -> {}",
                if udp { "UDP" } else { "TCP" },
                a.name,
                b.name
            );
            let result = iperf_between(
                &a.ns,
                (&b.ns, b.ip),
                iperf_flags(udp),
                args.seconds,
                args.seconds + 15,
            )
            .and_then(|json| summarize(&json, udp));
            match result {
                Ok(line) => report.check(&what, true, &line),
                Err(e) => report.check(&what, false, &e.to_string()),
            }
        }
        println!("-- SNAT: pods -> the outside host {OUTSIDE}");
        for from in ["underlay-1", "overlay-2"] {
            interrupted(stop)?;
            let pod = self.pod(from)?;
            let node_addr = NODES
                .iter()
                .find(|n| n.name == from)
                .map(|n| n.addr)
                .context("node")?;
            let log = self.dir.join(format!("outside-{from}.json"));
            let what = format!("{} -> outside host: it sees the node's address", pod.name);
            match source_seen(&pod.ns, (&self.switch, OUTSIDE), &log) {
                Ok(seen) => report.check(
                    &what,
                    seen == node_addr,
                    &format!("seen {seen}, node {node_addr}, pod {}", pod.ip),
                ),
                Err(e) => report.check(&what, false, &e.to_string()),
            }
        }
        Ok(())
    }
}
