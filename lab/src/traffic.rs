//! Traffic between namespaces: iperf3 runs (the demos, the end-to-end bench and
//! tests) and what source address an outside host sees (SNAT on or off); for the
//! namespace cluster's pods by index, or between any two namespaces.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::LabError;
use crate::netns::Netns;
use crate::topology::{Cluster, OUTSIDE_SERVER};

macro_rules! traffic {
    ($($arg:tt)*) => {
        LabError::Traffic(format!($($arg)*))
    };
}

/// iperf3's default port, where its servers here listen unless told otherwise.
pub const IPERF_PORT: u16 = 5201;

/// How long a freshly started server may take to listen: a process start on the
/// shared, loaded 2-core machine may take seconds; only a broken one waits this long.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until something in `ns` listens on TCP `port` (`ss` inside the namespace,
/// polled), at most `timeout`: a client started before its server listens is
/// refused, and how long a start takes is the machine's, not the test's.
pub fn wait_listening(ns: &Netns, port: u16, timeout: Duration) -> Result<(), LabError> {
    let query = format!("ss -Hltn 'sport = :{port}'");
    crate::wait::poll(timeout, || {
        let out = ns.output(&query).ok()?;
        (out.status.success() && !out.stdout.trim_ascii().is_empty()).then_some(())
    })
    .ok_or_else(|| {
        traffic!(
            "nothing listens on TCP port {port} in {} after {timeout:?}",
            ns.name
        )
    })
}

/// Runs `iperf3 -c … -t seconds ARGS -J` from `client` to a one-shot server on
/// `server` and returns its JSON report; shared by the demo and the end-to-end bench.
/// `timeout_secs` bounds the whole client run.
pub fn iperf_json(
    cluster: &Cluster,
    client: (u8, u8),
    server: (u8, u8),
    args: &str,
    seconds: u32,
    timeout_secs: u32,
) -> Result<serde_json::Value, LabError> {
    let srv = cluster
        .pod(server.0, server.1)
        .ok_or_else(|| traffic!("no server pod"))?;
    let cli = cluster
        .pod(client.0, client.1)
        .ok_or_else(|| traffic!("no client pod"))?;
    iperf_between(&cli.ns, (&srv.ns, srv.ip), args, seconds, timeout_secs)
}

/// [`iperf_json`] between any two namespaces: the server listens on `server.1`
/// inside `server.0`.
pub fn iperf_between(
    cli: &Netns,
    server: (&Netns, Ipv4Addr),
    args: &str,
    seconds: u32,
    timeout_secs: u32,
) -> Result<serde_json::Value, LabError> {
    iperf_through(
        cli,
        server,
        (server.1, IPERF_PORT),
        args,
        seconds,
        timeout_secs,
    )
}

/// [`iperf_between`] with the client connecting to `target` (a Service's
/// ClusterIP and port, say) and the server listening on `target`'s port.
pub fn iperf_through(
    cli: &Netns,
    server: (&Netns, Ipv4Addr),
    target: (Ipv4Addr, u16),
    args: &str,
    seconds: u32,
    timeout_secs: u32,
) -> Result<serde_json::Value, LabError> {
    let (srv_ns, srv_ip) = server;
    let (dst, port) = target;
    let mut server_proc = srv_ns
        .command("iperf3")
        .args([
            "-s",
            "-1",
            "-B",
            &srv_ip.to_string(),
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Wait until the server listens, and still retry a refused start (a client
    // refused once more costs 300 ms).
    let mut result = wait_listening(srv_ns, port, LISTEN_TIMEOUT).map(|()| serde_json::Value::Null);
    if result.is_ok() {
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            let out = match cli.output(&format!(
                "timeout {timeout_secs} iperf3 -c {dst} -p {port} -t {seconds} {args} --connect-timeout 3000 -J"
            )) {
                Ok(out) => out,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let refused = text.contains("Connection refused");
            result = serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|_| traffic!("iperf3 gave no JSON: {}", text.trim()));
            if !refused {
                break;
            }
        }
    }
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    let json = result?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(traffic!("iperf3: {err}"));
    }
    Ok(json)
}

/// Runs iperf3 between two pods; returns a one-line summary.
pub fn iperf(
    cluster: &Cluster,
    client: (u8, u8),
    server: (u8, u8),
    udp: bool,
    seconds: u32,
) -> Result<String, LabError> {
    let json = iperf_json(
        cluster,
        client,
        server,
        iperf_flags(udp),
        seconds,
        seconds + 10,
    )?;
    summarize(&json, udp)
}

/// The iperf3 flags of [`iperf`]: UDP at 20 Mbit/s in 1200-byte datagrams (below
/// the overlay MTU), or TCP. A check that datagrams cross, not a benchmark (that is
/// `bench-e2e`): at 100 Mbit/s, 10,400 datagrams a second, a TUN path lost 50-58 %
/// while the shared 2-core machine ran at load 18-22 (the same tests pass on a quiet
/// machine): a loss threshold at that rate measured the machine, not the path.
pub fn iperf_flags(udp: bool) -> &'static str {
    if udp { "-u -b 20M -l 1200" } else { "" }
}

/// One line from an iperf3 JSON report: Mbit/s (and loss for UDP); fails when
/// nothing arrived. For UDP that is the check (datagrams cross the path): how many
/// were lost at 20 Mbit/s depends on the machine's load as much as on the path.
pub fn summarize(json: &serde_json::Value, udp: bool) -> Result<String, LabError> {
    let end = json
        .get("end")
        .ok_or_else(|| traffic!("iperf3: no result"))?;
    if udp {
        let sum = end
            .get("sum")
            .ok_or_else(|| traffic!("iperf3: no UDP sum"))?;
        let bps = sum
            .get("bits_per_second")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        let lost = sum
            .get("lost_percent")
            .and_then(|v| v.as_f64())
            .unwrap_or(100.0);
        let packets = sum.get("packets").and_then(|v| v.as_u64()).unwrap_or(0);
        if packets == 0 || lost >= 100.0 {
            return Err(traffic!("UDP: {packets} packets, {lost:.1}% lost"));
        }
        Ok(format!(
            "{:.0} Mbit/s, {packets} datagrams, {lost:.2}% lost",
            bps / 1e6
        ))
    } else {
        let recv = end
            .get("sum_received")
            .and_then(|s| s.get("bits_per_second"))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if recv <= 0.0 {
            return Err(traffic!("TCP: nothing received"));
        }
        Ok(format!("{:.0} Mbit/s received", recv / 1e6))
    }
}

/// Connects from pod `from` to the outside server and returns the source address the
/// outside saw (its iperf3 server reports the peer).
pub fn outside_sees(cluster: &Cluster, from: (u8, u8)) -> Result<Ipv4Addr, LabError> {
    let cli = cluster
        .pod(from.0, from.1)
        .ok_or_else(|| traffic!("no client pod"))?;
    let log = cluster.spec.dir.join("outside-iperf.json");
    source_seen(&cli.ns, (&cluster.outside, OUTSIDE_SERVER), &log)
}

/// Connects from namespace `cli` to an iperf3 server on `server.1` in `server.0` and
/// returns the source address the server saw; its report goes to `log`.
pub fn source_seen(
    cli: &Netns,
    server: (&Netns, Ipv4Addr),
    log: &Path,
) -> Result<Ipv4Addr, LabError> {
    let (outside, addr) = server;
    let _ = std::fs::remove_file(log);
    let mut server = outside
        .command("iperf3")
        .args([
            "-s",
            "-1",
            "-J",
            "-B",
            &addr.to_string(),
            "--logfile",
            &log.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    if let Err(e) = wait_listening(outside, IPERF_PORT, LISTEN_TIMEOUT) {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    let mut out = None;
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let o = cli.output(&format!(
            "timeout 10 iperf3 -c {addr} -t 1 --connect-timeout 3000 -J"
        ))?;
        let refused = String::from_utf8_lossy(&o.stdout).contains("Connection refused");
        out = Some(o);
        if !refused {
            break;
        }
    }
    let out = out.ok_or_else(|| traffic!("iperf3 did not run"))?;
    // The server (-1) writes its JSON report as it exits: let it finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && matches!(server.try_wait(), Ok(None)) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    if !out.status.success() {
        return Err(traffic!("{} could not reach {addr}", cli.name));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| traffic!("no report from the outside server"))?;
    json.pointer("/start/connected/0/remote_host")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| traffic!("the outside server saw no connection"))
}

/// Which echo requests of a `ping -c sent` run (without `-q`) were answered: a
/// check that traffic was "not interrupted" asks how many in a row went missing,
/// not whether one was lost on a noisy machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingReplies {
    /// Requests sent, numbered `icmp_seq` 1..=sent.
    pub sent: u16,
    /// The sequence numbers that came back (duplicates counted once).
    pub answered: std::collections::BTreeSet<u16>,
}

impl PingReplies {
    /// Reads the reply lines (`… bytes from …: icmp_seq=N …`) of iputils ping's
    /// output; error lines (`From … icmp_seq=N Destination Host Unreachable`) are
    /// not replies.
    pub fn parse(output: &str, sent: u16) -> Self {
        let answered = output
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .filter_map(|l| {
                let (_, rest) = l.split_once("icmp_seq=")?;
                let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
                digits.parse().ok()
            })
            .filter(|seq| (1..=sent).contains(seq))
            .collect();
        PingReplies { sent, answered }
    }

    /// The longest run of consecutive requests without a reply.
    pub fn longest_gap(&self) -> u16 {
        let (mut longest, mut run) = (0, 0);
        for seq in 1..=self.sent {
            run = if self.answered.contains(&seq) {
                0
            } else {
                run + 1
            };
            longest = longest.max(run);
        }
        longest
    }

    /// How many requests were answered, in percent of those sent.
    pub fn answered_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.answered.len() as f64 * 100.0 / f64::from(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::PingReplies;

    const OUTPUT: &str = "PING 198.19.71.10 (198.19.71.10) 56(84) bytes of data.
64 bytes from 198.19.71.10: icmp_seq=1 ttl=62 time=0.41 ms
From 198.19.172.1 icmp_seq=2 Destination Host Unreachable
64 bytes from 198.19.71.10: icmp_seq=4 ttl=62 time=0.38 ms
64 bytes from 198.19.71.10: icmp_seq=4 ttl=62 time=0.39 ms (DUP!)
64 bytes from 198.19.71.10: icmp_seq=6 ttl=62 time=0.52 ms

--- 198.19.71.10 ping statistics ---
6 packets transmitted, 3 received, +1 duplicates, 50% packet loss, time 501ms
";

    #[test]
    fn replies_and_gaps_come_from_reply_lines_only() {
        let r = PingReplies::parse(OUTPUT, 7);
        assert_eq!(r.answered.iter().copied().collect::<Vec<_>>(), [1, 4, 6]);
        // 2, 3 missing (an error line is not a reply); 7 never answered.
        assert_eq!(r.longest_gap(), 2);
        assert!((r.answered_percent() - 300.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn a_silent_run_is_one_gap() {
        let r = PingReplies::parse("garbage\nicmp_seq=x bytes from\n", 5);
        assert!(r.answered.is_empty());
        assert_eq!(r.longest_gap(), 5);
    }
}
