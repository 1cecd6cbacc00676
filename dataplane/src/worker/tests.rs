//! Workers over real file descriptors: each test port is one end of a Unix datagram
//! socket pair, so receive, send, epoll parking and wake-ups are the kernel's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::frame::PortId;
use crate::port::{PacketBatch, Port, PortError};
use crate::tables::{Mode, NodeSettings, RouteTableBuilder, SharedTables, Tables};
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::MacAddr;

struct SockPort {
    id: PortId,
    name: String,
    sock: UnixDatagram,
    /// What `drops().overflow` reports (a test sets it).
    overflow: Arc<std::sync::atomic::AtomicU64>,
}

impl Port for SockPort {
    fn id(&self) -> PortId {
        self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, PortError> {
        let mut n = 0;
        while let Some(buf) = batch.rx_buffer() {
            match self.sock.recv(buf) {
                Ok(len) => {
                    batch.commit(len, self.id).unwrap();
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(PortError::io(&self.name, "recv", e)),
            }
        }
        Ok(n)
    }
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        for f in frames {
            self.sock
                .send(f)
                .map_err(|e| PortError::io(&self.name, "send", e))?;
        }
        Ok(frames.len())
    }
    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
    fn drops(&self) -> crate::port::PortDrops {
        crate::port::PortDrops {
            overflow: self.overflow.load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        }
    }
}

/// A port for the worker and the test's end of it.
fn port(id: u16) -> (Box<dyn Port>, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (
        Box::new(SockPort {
            id: PortId(id),
            name: format!("sock{id}"),
            sock: a,
            overflow: Arc::default(),
        }),
        b,
    )
}

/// First byte picks the verdict: 1 → port 2, 2 → hand off to worker 1 (which then
/// forwards to port 2), 3 → drop NoRoute, 4 → reply, 5 → to the host; 7 → to the
/// other worker, always; 8 on worker 0 → 9 and to worker 1, 9 on worker 1 → 10 and
/// back to worker 0 (two hand-offs, as a Service reply un-SNATed on another worker),
/// 10 → reply.
struct ByFirstByte(WorkerId);

impl Processor for ByFirstByte {
    fn process(&mut self, frame: &mut crate::Frame<'_>, _t: &Tables, _now: crate::Now) -> Verdict {
        let mark = |frame: &mut crate::Frame<'_>, b: u8, worker: WorkerId| {
            if let Some(first) = frame.data_mut().first_mut() {
                *first = b;
            }
            Verdict::HandOff { worker }
        };
        match (frame.data().first().copied(), self.0) {
            (Some(1), _) | (Some(2), 1) => Verdict::Forward { port: PortId(2) },
            (Some(2), _) => Verdict::HandOff { worker: 1 },
            (Some(7), w) => Verdict::HandOff { worker: 1 - w },
            (Some(8), 0) => mark(frame, 9, 1),
            (Some(9), 1) => mark(frame, 10, 0),
            (Some(10), _) => Verdict::Reply,
            (Some(4), _) => Verdict::Reply,
            (Some(6), _) => Verdict::Refuse(DropReason::SnatPortsExhausted),
            (Some(5), _) => Verdict::ToHost,
            _ => Verdict::Drop(DropReason::NoRoute),
        }
    }
}

fn tables() -> Arc<SharedTables> {
    tables_with_host_port(None)
}

fn tables_with_host_port(host_port: Option<PortId>) -> Arc<SharedTables> {
    Arc::new(SharedTables::new(Tables {
        generation: 0,
        node: NodeSettings {
            mode: Mode::Overlay,
            node_addr: Ipv4Addr::new(198, 18, 0, 1),
            node_addr_v6: None,
            uplink_port: PortId(1),
            routed_port: PortId(1),
            host_port,
            uplink_mac: MacAddr::ZERO,
            uplink_mtu: 1500,
            vtep_mac: MacAddr::ZERO,
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: false,
            gateway_v4: Ipv4Addr::new(198, 19, 1, 1),
            gateway_v6: None,
            gateway_mac: MacAddr::ZERO,
            snat: false,
            host_pod_addr: None,
        },
        routes: RouteTableBuilder::new().build(),
        no_snat: Vec::new(),
        known_vteps: Default::default(),
        services: Default::default(),
    }))
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forwards_hands_off_replies_drops_and_parks() {
    let cfg = PoolConfig {
        workers: 2,
        idle_polls: 8,
        park_timeout: Duration::from_millis(50),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(&cfg, tables(), ByFirstByte).unwrap();
    let (in_port, in_peer) = port(1);
    let (out_port, out_peer) = port(2);
    pool.add_port(0, in_port, true).unwrap();
    // Only worker 1 has port 2: worker 0's forwards travel to it as parcels.
    pool.add_port(1, out_port, true).unwrap();

    // Let both workers go idle and park, so every frame below needs a real wake-up.
    wait_for("workers to park", || {
        pool.counters().worker(0).parks.get() > 0 && pool.counters().worker(1).parks.get() > 0
    });

    in_peer.send(&[1, 0xaa]).unwrap();
    in_peer.send(&[2, 0xbb]).unwrap();
    in_peer.send(&[3, 0xcc]).unwrap();
    in_peer.send(&[4, 0xdd]).unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = out_peer.recv(&mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    got.sort();
    assert_eq!(got, vec![vec![1, 0xaa], vec![2, 0xbb]]);
    let n = in_peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[4, 0xdd]);

    let c = pool.counters().clone();
    // Counters are bumped just after the send the peer already saw: wait for them.
    wait_for("counters", || {
        c.total_drops(DropReason::NoRoute) == 1
            && c.worker(0).tx_packets(PortId(1)) == 1
            && c.worker(1).tx_packets(PortId(2)) == 2
    });
    assert_eq!(c.worker(0).rx_packets(PortId(1)), 4);
    assert_eq!(c.worker(0).handoff_out.get(), 2); // the hand-off and the transmit parcel
    assert_eq!(c.worker(1).handoff_in.get(), 2);
    assert_eq!(c.worker(1).tx_packets(PortId(2)), 2);
    assert_eq!(c.worker(0).tx_packets(PortId(1)), 1);

    // Removing the port stops forwarding to it: counted as no_route, nothing sent.
    pool.remove_port(PortId(2)).unwrap();
    in_peer.send(&[1, 0xee]).unwrap();
    wait_for("no_route after removal", || {
        c.total_drops(DropReason::NoRoute) == 2
    });
    out_peer.set_nonblocking(true).unwrap();
    assert!(out_peer.recv(&mut buf).is_err());
    pool.shutdown();
}

#[test]
fn a_frame_is_handed_off_twice_at_most() {
    let cfg = PoolConfig {
        workers: 2,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(&cfg, tables(), ByFirstByte).unwrap();
    let (in_port, in_peer) = port(1);
    pool.add_port(0, in_port, true).unwrap();
    // Not a timing assertion: a bound so a dropped frame fails instead of hanging.
    in_peer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Worker 0 → 1 → 0, then answered on the port it came in on.
    in_peer.send(&[8, 0xaa]).unwrap();
    let mut buf = [0u8; 64];
    let n = in_peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[10, 0xaa]);
    // Worker 0 → 1 → 0 → (1: a third hand-off) dropped, not circling.
    in_peer.send(&[7, 0xbb]).unwrap();
    let c = pool.counters().clone();
    wait_for("the third hand-off to be dropped", || {
        c.total_drops(DropReason::HandOffQueueFull) == 1
    });
    assert_eq!(
        c.worker(0).handoff_out.get() + c.worker(1).handoff_out.get(),
        4
    );
    pool.shutdown();
}

#[test]
fn frames_for_the_host_go_to_the_host_port_and_without_one_are_counted() {
    for host_port in [Some(PortId(3)), None] {
        let cfg = PoolConfig {
            workers: 1,
            ..PoolConfig::default()
        };
        let pool = WorkerPool::start(&cfg, tables_with_host_port(host_port), ByFirstByte).unwrap();
        let (uplink, uplink_peer) = port(1);
        let (host, host_peer) = port(3);
        pool.add_port(0, uplink, true).unwrap();
        pool.add_port(0, host, true).unwrap();
        uplink_peer.send(&[5, 0x01]).unwrap();
        let mut buf = [0u8; 64];
        let c = pool.counters().clone();
        if host_port.is_some() {
            let n = host_peer.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[5, 0x01]);
        }
        wait_for("the to_host count", || c.worker(0).to_host.get() == 1);
        pool.shutdown();
        host_peer.set_nonblocking(true).unwrap();
        uplink_peer.set_nonblocking(true).unwrap();
        assert!(host_peer.recv(&mut buf).is_err());
        assert!(uplink_peer.recv(&mut buf).is_err());
    }
}

#[test]
fn an_idle_pool_sleeps_instead_of_spinning() {
    let cfg = PoolConfig {
        workers: 1,
        idle_polls: 16,
        park_timeout: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(&cfg, tables(), ByFirstByte).unwrap();
    let (p, _peer) = port(1);
    pool.add_port(0, p, true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let w = pool.counters().worker(0);
    // Parked: each park costs at most 16 empty polls, and parks are bounded by time.
    assert!(w.parks.get() >= 2, "parks {}", w.parks.get());
    assert!(
        w.empty_polls.get() <= (w.parks.get() + 1) * 16,
        "spun: {} empty polls",
        w.empty_polls.get()
    );
    pool.shutdown();
}

#[test]
fn refused_frames_go_back_and_are_counted_and_port_overflow_becomes_a_drop_reason() {
    let cfg = PoolConfig {
        workers: 1,
        sweep_interval: Duration::from_millis(10),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(&cfg, tables(), ByFirstByte).unwrap();
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let overflow = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let port = SockPort {
        id: PortId(1),
        name: "sock1".into(),
        sock: a,
        overflow: Arc::clone(&overflow),
    };
    pool.add_port(0, Box::new(port), true).unwrap();
    // A refusal (the frame holds the error) goes back out of its port, counted.
    b.send(&[6, 0x01]).unwrap();
    let mut buf = [0u8; 16];
    let n = b.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[6, 0x01]);
    let c = pool.counters().clone();
    wait_for("the refusal counted", || {
        c.total_drops(DropReason::SnatPortsExhausted) == 1
    });
    // The port's running total of burst drops: what grows is added, once.
    overflow.store(5, std::sync::atomic::Ordering::Relaxed);
    wait_for("overflow 5", || {
        c.total_drops(DropReason::PortRxOverflow) == 5
    });
    overflow.store(12, std::sync::atomic::Ordering::Relaxed);
    wait_for("overflow 12", || {
        c.total_drops(DropReason::PortRxOverflow) == 12
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.total_drops(DropReason::PortRxOverflow), 12);
    pool.shutdown();
}
