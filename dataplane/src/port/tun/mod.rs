//! The TUN backend: a layer-3 multi-queue TUN device (one queue per worker) with the
//! virtio-net header, so the kernel hands over TCP/UDP GSO super-packets in one read.
//!
//! The device is driven with ioctls on `/dev/net/tun` (`sys`) rather than the `tun`
//! crate, which opens one queue per device only and has no `TUNSETOFFLOAD` or
//! `TUNSETVNETHDRSZ` (README, "Dependencies we do not use").
//!
//! Frames are Ethernet towards the pipeline (see the `port` module docs): rx prepends
//! `dst = TunConfig::mac, src = TunConfig::peer_mac` and the EtherType of the IP
//! version; tx drops the Ethernet header (a frame that is not IPv4/IPv6 cannot cross
//! a layer-3 device and is counted in [`TunCounters::tx_not_ip`]).
//!
//! GSO super-packets (TSO/USO reads) are read straight into one of the batch's
//! super-frame buffers and handed to the pipeline whole, as super-frames
//! ([`Gso`], partial checksum kept), when `TunConfig::super_frames` is on (the
//! default; TCP only, UDP GSO reads are cut): one pipeline pass per read. [`Port::send_super`] writes a super-frame
//! back with one `writev` and a virtio-net GSO header. A single packet read into a
//! super buffer is copied into a single-packet buffer (its partial checksum
//! completed). With super-frames off, for a UDP GSO read, or for a GSO read without
//! a partial checksum, reads are cut into single packets on receive ([`gso::Segmenter`], the one
//! segmentation code, also used where a super-frame meets a port that cannot take
//! it). Single packets are written one per `writev`, or merged into one GSO write
//! when they continue one TCP flow ([`coalesce`]).
//!
//! The device is created non-persistent, so the kernel removes it when the last
//! queue closes: dropping every [`TunPort`] of a device removes it (and its routes).
//! A device that already existed is attached to and left as it was.

pub mod coalesce;
pub mod gso;
mod sys;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{PacketBatch, Port, PortDrops, PortError, PortOffloads, SuperSend};
use crate::frame::{FRAME_BUFFER_SIZE, FRAME_HEADROOM, Gso, GsoKind, PortId};
use crate::wire::MacAddr;
use coalesce::Coalescer;
use gso::{GsoError, Segmenter, VNET_HDR_LEN, VirtioNetHdr};

use crate::wire::packet::ETHERNET_HEADER_LEN as ETH_LEN;
/// Largest packet a read returns: 64 KiB of GSO payload plus the headers.
const READ_BUFFER: usize = VNET_HDR_LEN + 65_536 + 256;

/// Settings of a TUN device and its queues.
#[derive(Clone, Debug)]
pub struct TunConfig {
    /// Device name (`hw0`); created when missing.
    pub name: String,
    /// Queues to open (one per worker).
    pub queues: usize,
    /// The port id every queue reports.
    pub port_id: PortId,
    /// Destination MAC of synthesised Ethernet headers (what the pipeline expects
    /// frames from this port to be addressed to).
    pub mac: MacAddr,
    /// Source MAC of synthesised Ethernet headers (the "host side" of the TUN).
    pub peer_mac: MacAddr,
    /// MTU to set, or `None` to leave the device's.
    pub mtu: Option<u32>,
    /// Ask the kernel for TSO/USO super-packets and partial checksums.
    pub offload: bool,
    /// Merge runs of TCP segments of one flow into one GSO write ([`coalesce`]).
    pub coalesce: bool,
    /// Hand TSO/USO reads to the pipeline whole, as super-frames ([`Gso`]),
    /// instead of cutting them into single packets on receive (TCP only: UDP GSO
    /// reads are cut, see `TunPort::read_super`). On by default.
    pub super_frames: bool,
}

impl TunConfig {
    pub fn new(name: &str, queues: usize, port_id: PortId) -> Self {
        TunConfig {
            name: name.to_owned(),
            queues,
            port_id,
            mac: MacAddr::local_from(format!("{name}-dp").as_bytes()),
            peer_mac: MacAddr::local_from(format!("{name}-host").as_bytes()),
            mtu: None,
            offload: true,
            coalesce: true,
            super_frames: true,
        }
    }
}

/// Per-queue counters of what could not cross as-is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunCounters {
    /// GSO super-packets read.
    pub rx_gso_packets: u64,
    /// Single packets produced from them.
    pub rx_gso_segments: u64,
    /// Packets dropped on receive: bad headers or an unsupported GSO type.
    pub rx_malformed: u64,
    /// Segments larger than a frame buffer (dropped).
    pub rx_oversize: u64,
    /// Frames dropped on send because they carry neither IPv4 nor IPv6.
    pub tx_not_ip: u64,
    /// GSO super-packets written (super-frames and merged TCP runs).
    pub tx_gso_packets: u64,
    /// Segments merged into them.
    pub tx_gso_segments: u64,
}

/// A packet read from the device whose segments did not all fit the last batch.
#[derive(Debug)]
struct Pending {
    len: usize,
    segmenter: Segmenter,
    next: usize,
}

/// Packets the kernel may queue per TUN queue before dropping (counted as the
/// device's `tx_dropped`, our `port_rx_overflow`). The kernel's default, 500, lost
/// SYNs when a pod opened 1,000-3,000 connections at once while the worker was
/// descheduled; the queue only holds pointers, and packets only while a burst lasts.
const TX_QUEUE_LEN: u32 = 4096;

/// One queue of a TUN device.
#[derive(Debug)]
pub struct TunPort {
    id: PortId,
    name: String,
    ifname: String,
    fd: OwnedFd,
    mac: MacAddr,
    peer_mac: MacAddr,
    created: bool,
    offloads: u32,
    buf: Box<[u8]>,
    pending: Option<Pending>,
    coalescer: Option<Coalescer>,
    super_frames: bool,
    counters: TunCounters,
    /// Which queue of the device this is; queue 0 reports the device's counters.
    queue: usize,
}

impl TunPort {
    /// Opens `config.queues` queues of the device, creating it when missing, sets
    /// the MTU and brings it up.
    pub fn open(config: &TunConfig) -> Result<Vec<TunPort>, PortError> {
        if config.queues == 0 {
            return Err(PortError::Config(format!(
                "{}: a TUN device needs at least one queue",
                config.name
            )));
        }
        super::probe::tun_device().map_err(|missing| PortError::TunUnavailable { missing })?;
        let existed = super::probe::ifindex(&config.name).is_some();
        let mut ports = Vec::with_capacity(config.queues);
        let mut ifname = config.name.clone();
        let mut offloads = 0;
        for queue in 0..config.queues {
            let (fd, name) = sys::open_queue(&ifname).map_err(|e| PortError::TunUnavailable {
                missing: format!("cannot open queue {queue} of TUN device {ifname} ({e}); multi-queue TUN needs Linux 3.8+ and CAP_NET_ADMIN"),
            })?;
            ifname = name;
            let raw = fd.as_raw_fd();
            sys::set_vnet_hdr_size(raw, VNET_HDR_LEN)
                .map_err(|e| PortError::io(&ifname, "TUNSETVNETHDRSZ", e))?;
            if config.offload {
                offloads = set_best_offload(raw)
                    .map_err(|e| PortError::io(&ifname, "TUNSETOFFLOAD", e))?;
            }
            ports.push(TunPort {
                id: config.port_id,
                name: format!("{ifname}/q{queue}"),
                ifname: ifname.clone(),
                fd,
                mac: config.mac,
                peer_mac: config.peer_mac,
                created: !existed,
                offloads,
                buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
                pending: None,
                coalescer: config.coalesce.then(Coalescer::new),
                super_frames: config.super_frames && offloads != 0,
                counters: TunCounters::default(),
                queue,
            });
        }
        if let Some(mtu) = config.mtu {
            sys::set_mtu(&ifname, mtu).map_err(|e| PortError::io(&ifname, "setting the MTU", e))?;
        }
        sys::set_tx_queue_len(&ifname, TX_QUEUE_LEN)
            .map_err(|e| PortError::io(&ifname, "setting the queue length", e))?;
        sys::set_up(&ifname).map_err(|e| PortError::io(&ifname, "bringing the device up", e))?;
        tracing::info!(
            ifname,
            queues = config.queues,
            created = !existed,
            offloads,
            "TUN device ready"
        );
        Ok(ports)
    }

    /// The device name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Did this process create the device (it disappears when every queue closes)?
    pub fn created(&self) -> bool {
        self.created
    }

    /// The `TUN_F_*` offloads in force.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    pub fn counters(&self) -> TunCounters {
        self.counters
    }

    /// Writes the open TCP run, if any; false when the queue is full (the run is
    /// then dropped by the caller's accounting).
    fn write_run(&mut self) -> Result<bool, PortError> {
        let Some(co) = self.coalescer.as_mut() else {
            return Ok(true);
        };
        let segments = co.segments() as u64;
        let Some((hdr, packet)) = co.take() else {
            return Ok(true);
        };
        match sys::writev(self.fd.as_raw_fd(), &hdr, packet) {
            Ok(true) => {
                if segments > 1 {
                    self.counters.tx_gso_packets += 1;
                    self.counters.tx_gso_segments += segments;
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.counters.tx_not_ip += segments;
                Ok(true)
            }
            Err(e) => Err(PortError::io(&self.name, "writing to the TUN queue", e)),
        }
    }

    /// Moves segments of the pending packet into `batch`; returns how many.
    fn drain_pending(&mut self, batch: &mut PacketBatch) -> usize {
        let Some(pending) = self.pending.as_mut() else {
            return 0;
        };
        let packet = self.buf.get(VNET_HDR_LEN..pending.len).unwrap_or_default();
        let mut added = 0;
        while pending.next < pending.segmenter.count() {
            let Some(buf) = batch.free_buffer() else {
                break;
            };
            let index = pending.next;
            pending.next += 1;
            let Some(out) = buf.get_mut(FRAME_HEADROOM + ETH_LEN..) else {
                break;
            };
            let len = match pending.segmenter.write(packet, index, out) {
                Ok(len) => len,
                Err(GsoError::NoRoom) => {
                    self.counters.rx_oversize += 1;
                    continue;
                }
                Err(_) => {
                    self.counters.rx_malformed += 1;
                    continue;
                }
            };
            let ethertype = ethertype_of(out);
            if let Some(eth) = buf.get_mut(FRAME_HEADROOM..FRAME_HEADROOM + ETH_LEN) {
                eth.copy_from_slice(&eth_header(self.mac, self.peer_mac, ethertype));
            }
            if batch.commit(ETH_LEN + len, self.id).is_ok() {
                added += 1;
            }
        }
        if pending.next >= pending.segmenter.count() {
            self.pending = None;
        }
        added
    }
}

/// What one read into a super buffer gave.
enum SuperRead {
    /// Frames added to the batch (0: the packet was malformed, or waits as pending).
    Added(usize),
    /// Nothing waits on the queue.
    Empty,
    /// The batch has no free super buffer.
    NoBuffer,
}

/// Where a read into a super buffer starts: the virtio-net header lands just
/// before the Ethernet header's place, so the IP packet needs no move.
const SUPER_READ_AT: usize = FRAME_HEADROOM + ETH_LEN - VNET_HDR_LEN;

impl TunPort {
    /// Reads one packet straight into the batch's next super buffer. A TSO/USO
    /// packet stays there as a super-frame; a single packet is copied into a
    /// single-packet buffer (its checksum completed); a GSO packet that cannot
    /// cross whole (no partial checksum) is segmented as without super-frames.
    fn read_super(&mut self, batch: &mut PacketBatch) -> Result<SuperRead, PortError> {
        let (mac, peer_mac) = (self.mac, self.peer_mac);
        let Some((big, small)) = batch.free_super_buffer() else {
            return Ok(SuperRead::NoBuffer);
        };
        let Some(dst) = big.get_mut(SUPER_READ_AT..) else {
            return Ok(SuperRead::NoBuffer);
        };
        let n = match sys::read(self.fd.as_raw_fd(), dst) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(SuperRead::Empty),
            Err(e) => return Err(PortError::io(&self.name, "reading the TUN queue", e)),
        };
        let read = dst.get(..n).unwrap_or_default();
        let parsed = VirtioNetHdr::parse(read).and_then(|hdr| {
            let packet = read.get(VNET_HDR_LEN..)?;
            Some((hdr, Segmenter::new(&hdr, packet).ok()?, packet))
        });
        let Some((hdr, segmenter, packet)) = parsed else {
            self.counters.rx_malformed += 1;
            return Ok(SuperRead::Added(0));
        };
        let ethertype = ethertype_of(packet);
        if hdr.is_gso() {
            self.counters.rx_gso_packets += 1;
            self.counters.rx_gso_segments += segmenter.count() as u64;
            let ip_len = packet.len();
            // Only TCP crosses whole. A UDP GSO read is a train of datagrams that
            // may each carry a packet of its own: VXLAN from a peer node, which the
            // kernel merged (GRO) and routes to the host port. Decapsulating it
            // strips the segmented header, leaving one frame that stands for the
            // first inner packet only (the rest was lost: TCP through the overlay
            // stalled). Cut on receive, every datagram is decapsulated.
            let whole = segmenter
                .super_frame(ETH_LEN)
                .filter(|g| g.kind != GsoKind::Udp);
            if let Some(gso) = whole {
                if let Some(eth) = big.get_mut(FRAME_HEADROOM..FRAME_HEADROOM + ETH_LEN) {
                    eth.copy_from_slice(&eth_header(mac, peer_mac, ethertype));
                }
                return match batch.commit_super(FRAME_HEADROOM, ETH_LEN + ip_len, self.id, gso) {
                    Ok(()) => Ok(SuperRead::Added(1)),
                    Err(_) => {
                        self.counters.rx_oversize += 1;
                        Ok(SuperRead::Added(0))
                    }
                };
            }
            // UDP, or rare (no partial checksum): segment it from the port's own
            // buffer.
            let Some(keep) = self.buf.get_mut(..n) else {
                self.counters.rx_oversize += 1;
                return Ok(SuperRead::Added(0));
            };
            keep.copy_from_slice(read);
            self.pending = Some(Pending {
                len: n,
                segmenter,
                next: 0,
            });
            return Ok(SuperRead::Added(self.drain_pending(batch)));
        }
        let Some(out) = small.get_mut(FRAME_HEADROOM + ETH_LEN..) else {
            return Ok(SuperRead::NoBuffer);
        };
        let len = match segmenter.write(packet, 0, out) {
            Ok(len) => len,
            Err(GsoError::NoRoom) => {
                self.counters.rx_oversize += 1;
                return Ok(SuperRead::Added(0));
            }
            Err(_) => {
                self.counters.rx_malformed += 1;
                return Ok(SuperRead::Added(0));
            }
        };
        if let Some(eth) = small.get_mut(FRAME_HEADROOM..FRAME_HEADROOM + ETH_LEN) {
            eth.copy_from_slice(&eth_header(mac, peer_mac, ethertype));
        }
        Ok(SuperRead::Added(usize::from(
            batch.commit(ETH_LEN + len, self.id).is_ok(),
        )))
    }
}

/// The EtherType of an IP packet, from its version nibble.
fn ethertype_of(ip: &[u8]) -> [u8; 2] {
    match ip.first().map(|b| b >> 4) {
        Some(6) => [0x86, 0xdd],
        _ => [0x08, 0x00],
    }
}

/// An Ethernet header `dst, src, ethertype`.
pub(crate) fn eth_header(dst: MacAddr, src: MacAddr, ethertype: [u8; 2]) -> [u8; ETH_LEN] {
    let mut eth = [0u8; ETH_LEN];
    for (d, s) in eth.iter_mut().zip(
        dst.octets()
            .into_iter()
            .chain(src.octets())
            .chain(ethertype),
    ) {
        *d = s;
    }
    eth
}

fn set_best_offload(fd: RawFd) -> std::io::Result<u32> {
    let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    // USO (Linux 6.2+) lets UDP GSO cross too; older kernels refuse the flag.
    let uso = tso | libc::TUN_F_USO4 | libc::TUN_F_USO6;
    match sys::set_offload(fd, uso) {
        Ok(()) => Ok(uso),
        Err(_) => sys::set_offload(fd, tso).map(|()| tso),
    }
}

impl Port for TunPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, PortError> {
        let mut added = self.drain_pending(batch);
        while !batch.is_full() && self.pending.is_none() {
            if self.super_frames {
                match self.read_super(batch)? {
                    SuperRead::Added(n) => {
                        added += n;
                        continue;
                    }
                    SuperRead::Empty => break,
                    // Every super buffer of the batch is taken: the rest waits.
                    SuperRead::NoBuffer => break,
                }
            }
            let n = match sys::read(self.fd.as_raw_fd(), &mut self.buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(PortError::io(&self.name, "reading the TUN queue", e)),
            };
            let parsed = self.buf.get(..n).and_then(|b| {
                let hdr = VirtioNetHdr::parse(b)?;
                Some((hdr, b.get(VNET_HDR_LEN..)?))
            });
            let Some((hdr, packet)) = parsed else {
                self.counters.rx_malformed += 1;
                continue;
            };
            match Segmenter::new(&hdr, packet) {
                Ok(segmenter) => {
                    if hdr.is_gso() {
                        self.counters.rx_gso_packets += 1;
                        self.counters.rx_gso_segments += segmenter.count() as u64;
                    }
                    let whole = segmenter.count() <= batch.remaining();
                    self.pending = Some(Pending {
                        len: n,
                        segmenter,
                        next: 0,
                    });
                    // A super-packet whose segments do not all fit waits for the
                    // next batch rather than being cut in two: kept whole, it
                    // leaves the uplink in one GSO send and comes back as one GRO
                    // train (cut at batch boundaries, it took two of each).
                    if !whole && !batch.is_empty() {
                        break;
                    }
                    added += self.drain_pending(batch);
                }
                Err(_) => self.counters.rx_malformed += 1,
            }
        }
        Ok(added)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        // A complete packet: an all-zero header, no offload.
        let hdr = VirtioNetHdr::default().emit();
        // Index of the first frame of the open TCP run: if writing the run fails,
        // the frames from there on were not accepted.
        let mut run_start = 0;
        for (i, frame) in frames.iter().enumerate() {
            let ip = match (frame.get(12..14), frame.get(ETH_LEN..)) {
                (Some([0x08, 0x00]) | Some([0x86, 0xdd]), Some(ip)) if !ip.is_empty() => ip,
                _ => {
                    self.counters.tx_not_ip += 1;
                    continue;
                }
            };
            if let Some(co) = self.coalescer.as_mut() {
                if co.segments() > 0 && co.push(ip) {
                    continue;
                }
                if !self.write_run()? {
                    return Ok(run_start);
                }
                run_start = i;
                if self.coalescer.as_mut().is_some_and(|co| co.push(ip)) {
                    continue;
                }
            }
            match sys::writev(self.fd.as_raw_fd(), &hdr, ip) {
                Ok(true) => {}
                Ok(false) => return Ok(i),
                // The kernel refuses a malformed packet with EINVAL: drop just that one.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.counters.tx_not_ip += 1,
                Err(e) => return Err(PortError::io(&self.name, "writing to the TUN queue", e)),
            }
            run_start = i + 1;
        }
        if !self.write_run()? {
            return Ok(run_start);
        }
        Ok(frames.len())
    }

    fn send_super(&mut self, frame: &[u8], gso: Gso) -> Result<SuperSend, PortError> {
        let ip = match frame.get(ETH_LEN..) {
            Some(ip) if usize::from(gso.l3) == ETH_LEN => ip,
            // Encapsulated: not for a layer-3 device.
            _ => return Ok(SuperSend::Refused),
        };
        let Some(hdr) = VirtioNetHdr::for_super(gso, ip) else {
            return Ok(SuperSend::Refused);
        };
        match sys::writev(self.fd.as_raw_fd(), &hdr.emit(), ip) {
            Ok(true) => {
                let payload = ip.len().saturating_sub(usize::from(gso.hdr_len));
                self.counters.tx_gso_packets += 1;
                self.counters.tx_gso_segments +=
                    payload.div_ceil(usize::from(gso.size).max(1)) as u64;
                Ok(SuperSend::Sent)
            }
            Ok(false) => Ok(SuperSend::Full),
            // The kernel refuses what it finds malformed: let it see the packets.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(SuperSend::Refused),
            Err(e) => Err(PortError::io(&self.name, "writing to the TUN queue", e)),
        }
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn drops(&self) -> PortDrops {
        let c = self.counters;
        PortDrops {
            rx: c.rx_malformed + c.rx_oversize,
            tx: c.tx_not_ip,
            overflow: if self.queue == 0 {
                device_tx_dropped(&self.ifname)
            } else {
                0
            },
        }
    }

    fn offloads(&self) -> PortOffloads {
        let c = self.counters;
        PortOffloads {
            rx_super: c.rx_gso_packets,
            rx_super_frames: c.rx_gso_segments,
            tx_super: c.tx_gso_packets,
            tx_super_frames: c.tx_gso_segments,
        }
    }
}

// A received single packet must fit a frame buffer after the headroom and the
// synthesised Ethernet header.
const _: () = assert!(FRAME_BUFFER_SIZE > FRAME_HEADROOM + ETH_LEN + 1500);

/// The device's `tx_dropped`: frames the kernel could not queue to the device's
/// readers (us) because their queues were full. One counter for all queues, so only
/// queue 0 reports it. Read from `/proc/thread-self/net/dev` (the calling thread's
/// namespace, which sysfs would not follow) when the worker refreshes its counters
/// (twice a second), never per packet.
fn device_tx_dropped(ifname: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    tx_dropped_in(&text, ifname).unwrap_or(0)
}

/// The transmit "drop" column of `ifname` in `/proc/net/dev` text: after the name,
/// 8 receive columns, then transmit bytes, packets, errs, drop.
fn tx_dropped_in(text: &str, ifname: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        counters.split_whitespace().nth(11)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tx_dropped_is_the_twelfth_counter() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes ...\n    lo:  1 2 3 4 5 6 7 8  9 10 11 12 13 14 15 16\n  hw0: 10 20 0 0 0 0 0 0 30 40 0 77 0 0 0 0\n";
        assert_eq!(super::tx_dropped_in(text, "hw0"), Some(77));
        assert_eq!(super::tx_dropped_in(text, "lo"), Some(12));
        assert_eq!(super::tx_dropped_in(text, "hw1"), None);
        assert_eq!(super::tx_dropped_in("hw0: 1 2", "hw0"), None);
    }
}
