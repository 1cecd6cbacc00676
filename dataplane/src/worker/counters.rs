//! Per-worker counters: packets and bytes per port and direction, drops per reason.
//!
//! Each worker writes only its own [`WorkerCounters`] (single writer), so an update is
//! a relaxed load and store — no locked read-modify-write on the packet path — and the
//! control thread reads them at any time without a lock. Each worker's block is
//! cache-padded so two workers never share a line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam::utils::CachePadded;

use crate::frame::PortId;
use crate::verdict::DropReason;

/// Ports with their own counters; ids at or past this share the last slot.
pub const MAX_COUNTED_PORTS: usize = 256;

/// A counter with one writer: `add` is a plain load and store.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: no other thread stores, so load+store does not lose updates.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Replaces the value (for totals a port keeps itself).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// rx/tx packets and bytes of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames the port itself dropped (see `Port::drops`), refreshed periodically.
    pub rx_dropped: Counter,
    pub tx_dropped: Counter,
    /// The port's burst drops (`PortDrops::overflow`) last seen; what grew since is
    /// added to the `port_rx_overflow` drop reason.
    pub rx_overflow: Counter,
    /// The port's GSO/GRO super-packets and their frames (see `Port::offloads`),
    /// refreshed periodically.
    pub rx_super: Counter,
    pub rx_super_frames: Counter,
    pub tx_super: Counter,
    pub tx_super_frames: Counter,
}

/// Everything one worker counts.
#[derive(Debug)]
pub struct WorkerCounters {
    ports: Box<[PortCounters]>,
    drops: [Counter; DropReason::COUNT],
    /// Frames this worker queued to another worker.
    pub handoff_out: Counter,
    /// Frames another worker queued to this one.
    pub handoff_in: Counter,
    /// Loop iterations that found no frame on any port.
    pub empty_polls: Counter,
    /// Times the worker parked on epoll.
    pub parks: Counter,
    /// Port receive/send errors (the frames involved are counted as drops too).
    pub port_errors: Counter,
    /// Frames the pipeline gave back to the host stack; a port that cannot
    /// re-inject them (AF_XDP) discards them, so the steering program keeps these rare.
    pub to_host: Counter,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            ports: (0..MAX_COUNTED_PORTS)
                .map(|_| PortCounters::default())
                .collect(),
            drops: std::array::from_fn(|_| Counter::default()),
            handoff_out: Counter::default(),
            handoff_in: Counter::default(),
            empty_polls: Counter::default(),
            parks: Counter::default(),
            port_errors: Counter::default(),
            to_host: Counter::default(),
        }
    }
}

impl WorkerCounters {
    pub fn port(&self, port: PortId) -> &PortCounters {
        let i = usize::from(port.0).min(MAX_COUNTED_PORTS - 1);
        // The slice has MAX_COUNTED_PORTS entries and `i` is clamped below it, so the
        // fallback is never used; it only keeps this free of panicking indexing.
        static UNUSED: PortCounters = PortCounters {
            rx_packets: Counter(AtomicU64::new(0)),
            rx_bytes: Counter(AtomicU64::new(0)),
            tx_packets: Counter(AtomicU64::new(0)),
            tx_bytes: Counter(AtomicU64::new(0)),
            rx_dropped: Counter(AtomicU64::new(0)),
            tx_dropped: Counter(AtomicU64::new(0)),
            rx_overflow: Counter(AtomicU64::new(0)),
            rx_super: Counter(AtomicU64::new(0)),
            rx_super_frames: Counter(AtomicU64::new(0)),
            tx_super: Counter(AtomicU64::new(0)),
            tx_super_frames: Counter(AtomicU64::new(0)),
        };
        self.ports.get(i).unwrap_or(&UNUSED)
    }

    #[inline]
    pub fn rx(&self, port: PortId, packets: u64, bytes: u64) {
        let p = self.port(port);
        p.rx_packets.add(packets);
        p.rx_bytes.add(bytes);
    }

    #[inline]
    pub fn tx(&self, port: PortId, packets: u64, bytes: u64) {
        let p = self.port(port);
        p.tx_packets.add(packets);
        p.tx_bytes.add(bytes);
    }

    #[inline]
    pub fn drop(&self, reason: DropReason, n: u64) {
        if let Some(c) = self.drops.get(reason.index()) {
            c.add(n);
        }
    }

    pub fn rx_packets(&self, port: PortId) -> u64 {
        self.port(port).rx_packets.get()
    }

    pub fn tx_packets(&self, port: PortId) -> u64 {
        self.port(port).tx_packets.get()
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).map_or(0, Counter::get)
    }
}

/// All workers' counters plus the port names, shared by workers and the control
/// thread.
#[derive(Debug, Default)]
pub struct Counters {
    workers: Vec<CachePadded<WorkerCounters>>,
    /// Port names for metric labels; written by the control thread when ports come
    /// and go, read only when rendering (never on the packet path).
    names: Mutex<Vec<(PortId, String)>>,
}

impl Counters {
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Counters {
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerCounters::default()))
                .collect(),
            names: Mutex::new(Vec::new()),
        })
    }

    /// The counters of worker `i`; workers past the end share worker 0's (never
    /// happens when the worker count matches `new`).
    pub fn worker(&self, i: usize) -> &WorkerCounters {
        match self.workers.get(i).or_else(|| self.workers.first()) {
            Some(w) => w,
            None => empty(),
        }
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Names `port` in metric labels (replacing an earlier name).
    pub fn name_port(&self, port: PortId, name: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.retain(|(p, _)| *p != port);
            names.push((port, name.to_string()));
            names.sort();
        }
    }

    fn port_name(names: &[(PortId, String)], port: PortId) -> String {
        names
            .iter()
            .find(|(p, _)| *p == port)
            .map_or_else(|| port.to_string(), |(_, n)| n.clone())
    }

    /// Sum of a drop reason over all workers.
    pub fn total_drops(&self, reason: DropReason) -> u64 {
        self.workers.iter().map(|w| w.drops(reason)).sum()
    }

    /// Sum of rx and tx packets of `port` over all workers.
    pub fn port_totals(&self, port: PortId) -> (u64, u64) {
        self.workers.iter().fold((0, 0), |(rx, tx), w| {
            let p = w.port(port);
            (rx + p.rx_packets.get(), tx + p.tx_packets.get())
        })
    }

    /// Prometheus text exposition format (version 0.0.4) of every counter.
    pub fn render_prometheus(&self, out: &mut String) {
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        let port_metrics: [Metric<PortCounters>; 10] = [
            (
                "hybridway_port_rx_dropped_total",
                "Frames the port dropped on receive",
                |p| p.rx_dropped.get(),
            ),
            (
                "hybridway_port_tx_dropped_total",
                "Frames the port dropped on transmit",
                |p| p.tx_dropped.get(),
            ),
            ("hybridway_port_rx_packets_total", "Frames received", |p| {
                p.rx_packets.get()
            }),
            ("hybridway_port_rx_bytes_total", "Bytes received", |p| {
                p.rx_bytes.get()
            }),
            (
                "hybridway_port_tx_packets_total",
                "Frames transmitted",
                |p| p.tx_packets.get(),
            ),
            ("hybridway_port_tx_bytes_total", "Bytes transmitted", |p| {
                p.tx_bytes.get()
            }),
            (
                "hybridway_port_rx_super_packets_total",
                "Super-frames received (a TUN port: TSO/USO reads; the VXLAN socket: GRO trains of one TCP flow merged and decapsulated once)",
                |p| p.rx_super.get(),
            ),
            (
                "hybridway_port_rx_super_frames_total",
                "Frames carried by received super-frames (TSO segments; VXLAN datagrams merged)",
                |p| p.rx_super_frames.get(),
            ),
            (
                "hybridway_port_tx_super_packets_total",
                "GSO super-packets sent (several frames in one write)",
                |p| p.tx_super.get(),
            ),
            (
                "hybridway_port_tx_super_frames_total",
                "Frames carried by sent super-packets",
                |p| p.tx_super_frames.get(),
            ),
        ];
        for (metric, help, get) in port_metrics {
            let _ = writeln!(
                out,
                "# HELP {metric} {help} per worker and port.\n# TYPE {metric} counter"
            );
            for (w, wc) in self.workers.iter().enumerate() {
                for (i, p) in wc.ports.iter().enumerate() {
                    let v = get(p);
                    let id = PortId(u16::try_from(i).unwrap_or(u16::MAX));
                    // Named ports are always listed; unnamed ones only once they count.
                    if v != 0 || names.iter().any(|(n, _)| *n == id) {
                        let name = Self::port_name(&names, id);
                        let _ = writeln!(out, "{metric}{{worker=\"{w}\",port=\"{name}\"}} {v}");
                    }
                }
            }
        }
        let metric = "hybridway_drops_total";
        let _ = writeln!(
            out,
            "# HELP {metric} Frames dropped per worker and reason.\n# TYPE {metric} counter"
        );
        for (w, wc) in self.workers.iter().enumerate() {
            for reason in DropReason::ALL {
                let _ = writeln!(
                    out,
                    "{metric}{{worker=\"{w}\",reason=\"{}\"}} {}",
                    reason.label(),
                    wc.drops(*reason)
                );
            }
        }
        let worker_metrics: [Metric<WorkerCounters>; 6] = [
            (
                "hybridway_to_host_total",
                "Frames the pipeline gave back to the host stack",
                |w| w.to_host.get(),
            ),
            (
                "hybridway_handoff_out_total",
                "Frames handed to another worker",
                |w| w.handoff_out.get(),
            ),
            (
                "hybridway_handoff_in_total",
                "Frames received from another worker",
                |w| w.handoff_in.get(),
            ),
            (
                "hybridway_empty_polls_total",
                "Polls that found nothing",
                |w| w.empty_polls.get(),
            ),
            (
                "hybridway_parks_total",
                "Times the worker parked on epoll",
                |w| w.parks.get(),
            ),
            (
                "hybridway_port_errors_total",
                "Port receive/send errors",
                |w| w.port_errors.get(),
            ),
        ];
        for (metric, help, get) in worker_metrics {
            let _ = writeln!(out, "# HELP {metric} {help}.\n# TYPE {metric} counter");
            for (w, wc) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{metric}{{worker=\"{w}\"}} {}", get(wc));
            }
        }
    }
}

/// Metric name, help text, and how to read it.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

fn empty() -> &'static WorkerCounters {
    static EMPTY: std::sync::OnceLock<WorkerCounters> = std::sync::OnceLock::new();
    EMPTY.get_or_init(WorkerCounters::default)
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
    fn counts_and_renders() {
        let c = Counters::new(2);
        c.name_port(PortId(0), "eth0");
        c.worker(0).rx(PortId(0), 3, 300);
        c.worker(1).rx(PortId(0), 2, 200);
        c.worker(1).tx(PortId(7), 1, 60);
        c.worker(1).drop(DropReason::VxlanUnknownSource, 4);
        c.worker(5000).drop(DropReason::NoRoute, 1); // out of range: worker 0
        c.worker(0).rx(PortId(60000), 1, 1); // clamped into the last slot
        assert_eq!(c.port_totals(PortId(0)), (5, 0));
        assert_eq!(c.total_drops(DropReason::VxlanUnknownSource), 4);
        assert_eq!(c.total_drops(DropReason::NoRoute), 1);
        let mut s = String::new();
        c.render_prometheus(&mut s);
        assert!(
            s.contains("hybridway_port_rx_packets_total{worker=\"0\",port=\"eth0\"} 3\n"),
            "{s}"
        );
        assert!(
            s.contains("hybridway_port_rx_bytes_total{worker=\"1\",port=\"eth0\"} 200\n"),
            "{s}"
        );
        assert!(
            s.contains("hybridway_port_tx_packets_total{worker=\"1\",port=\"port7\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("hybridway_drops_total{worker=\"1\",reason=\"vxlan_unknown_source\"} 4\n"),
            "{s}"
        );
        assert!(
            s.contains("hybridway_drops_total{worker=\"0\",reason=\"no_route\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("port=\"port255\"} 1\n"), "{s}");
        // Every sample line is NAME{LABELS} VALUE.
        for line in s.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}
