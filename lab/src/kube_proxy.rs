//! The real kube-proxy as the reference Service implementation: built by the rig
//! (`scripts/k8s-lab.sh bin kube-proxy`) from the same `k8s.io/kubernetes` module as
//! the API server, run in a node's network namespace with a kubeconfig for the rig.
//! Its rules, its metrics (127.0.0.1 in the namespace) and its health check stay
//! inside that namespace; the process is stopped when the guard drops, and the rules
//! go with the namespace.
//!
//! Tests and benchmarks compare hybridway's Service path with this one on the same
//! topology (`service_lab`), so the figures are ratios measured in one run.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::kube_lab::lab_binary_path;
use crate::netns::Netns;
use crate::process::Daemon;
use crate::wait::poll;

/// kube-proxy's metrics endpoint, on the node namespace's loopback.
pub const METRICS_PORT: u16 = 10249;
/// kube-proxy's health check (200 once its rules are in sync), on the loopback too.
pub const HEALTHZ_PORT: u16 = 10256;
/// The histogram of every rule sync (full and partial).
pub const SYNC_DURATION: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
/// The histogram of full syncs only (every rule rewritten).
pub const FULL_SYNC_DURATION: &str = "kubeproxy_sync_full_proxy_rules_duration_seconds";

/// Which of kube-proxy's Linux backends writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// `iptables-restore` of the whole nat/filter tables (the default mode).
    Iptables,
    /// One `nft` transaction per sync (needs the `nft` program).
    Nftables,
}

impl ProxyMode {
    pub fn flag(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// Where and as whom kube-proxy runs.
#[derive(Clone, Copy, Debug)]
pub struct KubeProxySpec<'a> {
    /// The Node it serves (`--hostname-override`); it must exist in the API.
    pub node: &'a str,
    pub kubeconfig: &'a Path,
    /// The pods' CIDR: traffic from it is not masqueraded (`--cluster-cidr`).
    pub cluster_cidr: &'a str,
    pub mode: ProxyMode,
    /// Where its log goes (`kube-proxy-<node>.log`).
    pub dir: &'a Path,
}

/// A running kube-proxy; stopped on drop.
#[derive(Debug)]
pub struct KubeProxy {
    pub mode: ProxyMode,
    netns: String,
    daemon: Daemon,
}

/// Sum and count of one of kube-proxy's duration histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncTotals {
    pub seconds: f64,
    pub count: u64,
}

impl SyncTotals {
    /// The mean duration of the syncs between `earlier` and `self`.
    pub fn mean_since(&self, earlier: &SyncTotals) -> Option<Duration> {
        let count = self.count.checked_sub(earlier.count).filter(|c| *c > 0)?;
        let seconds = (self.seconds - earlier.seconds) / count as f64;
        Duration::try_from_secs_f64(seconds).ok()
    }
}

impl KubeProxy {
    /// Starts kube-proxy in `ns` and waits (up to `timeout`) until its health check
    /// says the rules are in sync.
    pub fn start(
        ns: &Netns,
        spec: &KubeProxySpec<'_>,
        timeout: Duration,
        show_progress: bool,
    ) -> Result<KubeProxy, LabError> {
        if spec.mode == ProxyMode::Nftables && crate::netns::run("nft", &["--version"]).is_err() {
            return Err(LabError::Kube(
                "kube-proxy's nftables mode needs the `nft` program (Debian package nftables); \
                 use the iptables mode or install it"
                    .into(),
            ));
        }
        let binary = lab_binary_path("kube-proxy", show_progress)?;
        let mut cmd = ns.command(&binary.display().to_string());
        cmd.arg(format!("--proxy-mode={}", spec.mode.flag()))
            .arg(format!("--kubeconfig={}", spec.kubeconfig.display()))
            .arg(format!("--hostname-override={}", spec.node))
            .arg(format!("--cluster-cidr={}", spec.cluster_cidr))
            .arg(format!("--metrics-bind-address=127.0.0.1:{METRICS_PORT}"))
            .arg(format!("--healthz-bind-address=127.0.0.1:{HEALTHZ_PORT}"))
            // The conntrack table size is the host's (a module parameter no
            // namespace may set): leave it, and the timeouts, as they are.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0")
            // Every change is synced at once, as hybridway's agent applies it.
            .arg("--iptables-min-sync-period=0")
            .arg("--v=1");
        let log = spec.dir.join(format!("kube-proxy-{}.log", spec.node));
        let daemon = Daemon::spawn(&format!("kube-proxy of {}", spec.node), cmd, &log)?;
        let mut proxy = KubeProxy {
            mode: spec.mode,
            netns: ns.name.clone(),
            daemon,
        };
        proxy.wait_healthy(timeout)?;
        Ok(proxy)
    }

    /// Waits until the health check answers 200 (rules synced since the last
    /// change); fails if the process ends first.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.daemon.exited() {
                return Err(LabError::Kube(format!(
                    "kube-proxy exited with {status}:\n{}",
                    self.daemon.log_tail(20)
                )));
            }
            if self.get(HEALTHZ_PORT, "/healthz").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Kube(format!(
                    "kube-proxy not healthy within {timeout:?}; log {}:\n{}",
                    self.daemon.log.display(),
                    self.daemon.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its Prometheus metrics.
    pub fn metrics(&self) -> Result<String, LabError> {
        self.get(METRICS_PORT, "/metrics")
    }

    /// Sum and count of the histogram `name` ([`SYNC_DURATION`],
    /// [`FULL_SYNC_DURATION`]); zero before the first sync.
    pub fn sync_totals(&self, name: &str) -> Result<SyncTotals, LabError> {
        let text = self.metrics()?;
        Ok(SyncTotals {
            seconds: sample(&text, &format!("{name}_sum")).unwrap_or(0.0),
            count: sample(&text, &format!("{name}_count")).map_or(0, |c| c as u64),
        })
    }

    /// Waits (up to `timeout`) for a sync recorded in histogram `name` after
    /// `earlier` (a reading of the same histogram); returns the new totals.
    pub fn wait_sync_after(
        &self,
        name: &str,
        earlier: &SyncTotals,
        timeout: Duration,
    ) -> Result<SyncTotals, LabError> {
        poll(timeout, || {
            self.sync_totals(name)
                .ok()
                .filter(|now| now.count > earlier.count)
        })
        .ok_or_else(|| {
            LabError::Kube(format!(
                "kube-proxy recorded no {name} within {timeout:?}; log {}",
                self.daemon.log.display()
            ))
        })
    }

    pub fn log(&self) -> &Path {
        &self.daemon.log
    }

    /// Whether the node's kernel holds a connection to `dst:port` whose destination
    /// it translated (kube-proxy's DNAT: the reply comes from another address), as
    /// opposed to none (the packets never met netfilter) or one passed on as it was.
    pub fn translated_a_flow_to(&self, dst: Ipv4Addr, port: u16) -> Result<bool, LabError> {
        let table = crate::netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "cat",
                "/proc/net/nf_conntrack",
            ],
        )?;
        Ok(table
            .lines()
            .filter_map(conntrack_flow)
            .any(|f| f.dst == dst && f.dport == port && f.reply_src != dst))
    }

    /// GET from one of its loopback endpoints, inside its namespace; fails unless
    /// the answer is a 2xx.
    fn get(&self, port: u16, path: &str) -> Result<String, LabError> {
        crate::netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sSf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
        )
    }
}

/// What [`KubeProxy::translated_a_flow_to`] needs of one `/proc/net/nf_conntrack`
/// line: the original direction's destination and port, the reply's source.
#[derive(Debug, PartialEq, Eq)]
struct ConntrackFlow {
    dst: Ipv4Addr,
    dport: u16,
    reply_src: Ipv4Addr,
}

/// `ipv4 2 tcp 6 117 TIME_WAIT src=A dst=B sport=P dport=Q src=C dst=D sport=R
/// dport=S [ASSURED] ...`: the first `dst=`/`dport=` are the original direction's,
/// the second `src=` the reply's. `None` for lines without ports (ICMP).
fn conntrack_flow(line: &str) -> Option<ConntrackFlow> {
    let field = |key: &str, nth: usize| {
        line.split_whitespace()
            .filter_map(|w| w.strip_prefix(key))
            .nth(nth)
    };
    Some(ConntrackFlow {
        dst: field("dst=", 0)?.parse().ok()?,
        dport: field("dport=", 0)?.parse().ok()?,
        reply_src: field("src=", 1)?.parse().ok()?,
    })
}

/// The sum of the samples `name` in Prometheus text, whatever their labels
/// (kube-proxy labels its histograms with the IP family).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_histograms_sum_and_count() {
        let text = "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
                    kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0\n\
                    kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 1.5\n\
                    kubeproxy_sync_proxy_rules_duration_seconds_count 3\n";
        assert_eq!(
            sample(text, "kubeproxy_sync_proxy_rules_duration_seconds_sum"),
            Some(1.5)
        );
        assert_eq!(
            sample(text, "kubeproxy_sync_proxy_rules_duration_seconds_count"),
            Some(3.0)
        );
        let before = SyncTotals {
            seconds: 0.5,
            count: 1,
        };
        let after = SyncTotals {
            seconds: 1.5,
            count: 3,
        };
        assert_eq!(after.mean_since(&before), Some(Duration::from_millis(500)));
        assert_eq!(after.mean_since(&after), None);
    }

    #[test]
    fn reads_a_conntrack_line() {
        let dnat = "ipv4     2 tcp      6 117 TIME_WAIT src=198.19.181.10 dst=198.18.240.81 \
                    sport=40000 dport=80 src=198.19.182.10 dst=198.19.181.10 sport=8080 \
                    dport=40000 [ASSURED] mark=0 zone=0 use=2";
        assert_eq!(
            conntrack_flow(dnat),
            Some(ConntrackFlow {
                dst: Ipv4Addr::new(198, 18, 240, 81),
                dport: 80,
                reply_src: Ipv4Addr::new(198, 19, 182, 10),
            })
        );
        let icmp = "ipv4     2 icmp     1 29 src=198.19.181.10 dst=198.19.182.10 type=8 \
                    code=0 id=7 src=198.19.182.10 dst=198.19.181.10 type=0 code=0 id=7";
        assert_eq!(conntrack_flow(icmp), None);
        assert_eq!(conntrack_flow("garbage dst=x dport=y"), None);
    }
}
