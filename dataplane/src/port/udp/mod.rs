//! The VXLAN UDP socket port: the uplink side of the overlay on the TUN backend.
//!
//! The kernel keeps the outer headers; the port makes the pipeline see VXLAN frames
//! all the same (see the `port` module docs):
//!
//! * rx: each datagram's payload (VXLAN header + inner frame) is placed after
//!   `FRAME_HEADROOM + 42` bytes and a synthetic outer Ethernet/IPv4/UDP header is
//!   written in front of it: Ethernet `dst = UdpConfig::mac, src =
//!   UdpConfig::peer_mac`, IPv4 `src = sender, dst = local address`, TTL 64, DF, a
//!   valid header checksum, UDP `sport = sender port, dport = local port`, checksum
//!   0. The pipeline then checks the sending node exactly as for a real VXLAN frame.
//!   With UDP GRO the kernel may return a train of equal-size datagrams in one read:
//!   a run of its datagrams carrying one inner TCP flow's consecutive segments
//!   becomes one super-frame in a batch's super-frame buffer ([`merge`]: decapsulated
//!   and routed once, written to the pod as one GSO packet); every other datagram
//!   becomes its own frame, in train order.
//! * tx: the outer headers the pipeline built are parsed for the destination address
//!   and port and the source port; the UDP payload is sent to the destination from
//!   one of `UdpConfig::tx_source_ports` sockets bound to the node address on
//!   ephemeral ports, chosen by the pipeline's source port (a hash of the inner
//!   flow), so a flow keeps one outer source port and flows spread over several for
//!   ECMP and the receiver's RSS. The rest of the outer header (TTL, DF) is the
//!   kernel's.
//!   Consecutive frames to one destination with equal payload sizes leave in one
//!   `sendmsg` with `UDP_SEGMENT` (GSO) when the kernel allows it.
//!
//! Several sockets may share the port with `SO_REUSEPORT` (one per worker).

pub mod merge;
mod sys;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::tun::gso::Segmenter;
use super::{BATCH_SIZE, PacketBatch, Port, PortDrops, PortError, PortOffloads, SuperSend};
use crate::frame::{FRAME_HEADROOM, Gso, PortId};
use crate::wire::{MacAddr, checksum};

/// Bytes of the synthetic outer Ethernet (14) + IPv4 (20) + UDP (8) header.
pub const OUTER_LEN: usize = 42;
const SCRATCH: usize = 65_536;
/// Largest GSO send: the kernel caps UDP GSO at 64 segments and 64 KiB.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Settings of the VXLAN socket(s).
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// Node address and VXLAN port to bind (`198.18.0.1:8472`).
    pub local: SocketAddrV4,
    pub port_id: PortId,
    /// Destination MAC of the synthetic outer Ethernet header.
    pub mac: MacAddr,
    /// Source MAC of the synthetic outer Ethernet header.
    pub peer_mac: MacAddr,
    /// Ask for UDP GRO on receive.
    pub gro: bool,
    /// Use UDP GSO (`UDP_SEGMENT`) on send.
    pub gso: bool,
    /// Sockets on distinct ephemeral source ports to send from (0: send from the
    /// VXLAN port itself, one outer source port for every flow).
    pub tx_source_ports: usize,
}

impl UdpConfig {
    pub fn new(local: SocketAddrV4, port_id: PortId) -> Self {
        UdpConfig {
            local,
            port_id,
            mac: MacAddr::local_from(format!("{local}-vtep").as_bytes()),
            peer_mac: MacAddr::local_from(format!("{local}-net").as_bytes()),
            gro: true,
            gso: true,
            tx_source_ports: 8,
        }
    }
}

/// What the socket did besides plain datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Reads that returned a GRO train of several datagrams.
    pub rx_gro_trains: u64,
    /// Datagrams those trains carried.
    pub rx_gro_datagrams: u64,
    /// Super-frames built from runs of a train's datagrams (one inner TCP flow).
    pub rx_merged: u64,
    /// Datagrams merged into those super-frames.
    pub rx_merged_datagrams: u64,
    /// Datagrams that did not fit a frame buffer (dropped).
    pub rx_oversize: u64,
    /// `sendmsg` calls that carried several datagrams (GSO).
    pub tx_gso_sends: u64,
    /// Datagrams those calls carried.
    pub tx_gso_datagrams: u64,
    /// Frames that were not Ethernet/IPv4/UDP (dropped).
    pub tx_invalid: u64,
    /// Datagrams the kernel refused (unreachable, too big; dropped).
    pub tx_errors: u64,
}

/// The super-frame the batch ends with, still open for the next read's datagrams.
#[derive(Debug)]
struct OpenRun {
    from: SocketAddrV4,
    run: merge::TrainRun,
}

#[derive(Debug)]
struct Pending {
    len: usize,
    from: SocketAddrV4,
    size: usize,
    offset: usize,
}

/// One VXLAN UDP socket.
#[derive(Debug)]
pub struct UdpPort {
    id: PortId,
    name: String,
    fd: OwnedFd,
    tx_fds: Vec<OwnedFd>,
    local: SocketAddrV4,
    mac: MacAddr,
    peer_mac: MacAddr,
    gro: bool,
    gso: bool,
    scratch: Box<[u8]>,
    /// The headers of a super-frame's datagrams for one `UDP_SEGMENT` send.
    tx_buf: Box<[u8]>,
    pending: Option<Pending>,
    /// Valid within one `recv` only: the batch may be cleared between calls.
    open_run: Option<OpenRun>,
    counters: UdpCounters,
}

impl UdpPort {
    /// Binds `sockets` sockets to `config.local` (sharing it with `SO_REUSEPORT`
    /// when more than one, so the kernel spreads flows over the workers).
    pub fn open(config: &UdpConfig, sockets: usize) -> Result<Vec<UdpPort>, PortError> {
        let name = format!("vxlan:{}", config.local);
        if sockets == 0 {
            return Err(PortError::Config(format!("{name}: at least one socket")));
        }
        let mut ports = Vec::with_capacity(sockets);
        for i in 0..sockets {
            let fd = sys::bind(config.local, sockets > 1)
                .map_err(|e| PortError::io(&name, "binding the VXLAN UDP socket", e))?;
            let local = sys::local_addr(fd.as_raw_fd())
                .map_err(|e| PortError::io(&name, "getsockname", e))?;
            let gro = config.gro && sys::enable_gro(fd.as_raw_fd()).is_ok();
            if config.gro && !gro {
                tracing::info!(socket = %name, "the kernel refused UDP_GRO (needs Linux 5.0+); one datagram per read");
            }
            let tx_fds = (0..config.tx_source_ports)
                .map(|_| sys::bind(SocketAddrV4::new(*config.local.ip(), 0), false))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PortError::io(&name, "binding the VXLAN source-port sockets", e))?;
            ports.push(UdpPort {
                id: config.port_id,
                name: if sockets > 1 {
                    format!("vxlan:{local}/{i}")
                } else {
                    format!("vxlan:{local}")
                },
                fd,
                tx_fds,
                local,
                mac: config.mac,
                peer_mac: config.peer_mac,
                gro,
                gso: config.gso,
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                tx_buf: vec![0u8; SCRATCH].into_boxed_slice(),
                pending: None,
                open_run: None,
                counters: UdpCounters::default(),
            });
        }
        Ok(ports)
    }

    /// The bound address (the port is the kernel's choice when 0 was asked).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// Is UDP GRO on for this socket?
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Places the pending train's datagrams in `batch`, in order: the datagrams
    /// that continue the super-frame the batch ends with (merged from the previous
    /// read of this `recv`) join it; each run that [`merge::merge_run`] merges
    /// becomes one super-frame (while the batch has a super-frame buffer free);
    /// every other datagram a frame of its own.
    fn drain_pending(&mut self, batch: &mut PacketBatch) -> usize {
        let Some(p) = self.pending.as_mut() else {
            return 0;
        };
        let mut added = 0;
        while p.offset < p.len && !batch.is_full() {
            let rest = self.scratch.get(p.offset..p.len).unwrap_or_default();
            if let Some(open) = self.open_run.as_mut()
                && open.from == p.from
                && let Some(frame) = batch.last_super_mut()
            {
                let joined = open.run.continue_with(rest, p.size, frame);
                if joined > 0 {
                    let header = outer_header(
                        self.mac,
                        self.peer_mac,
                        p.from,
                        self.local,
                        open.run.len - OUTER_LEN,
                    );
                    put_front(frame, &header);
                    p.offset += merge::TrainRun::train_bytes(rest, p.size, joined);
                    if batch.grow_last_super(open.run.len, open.run.gso).is_ok() {
                        self.counters.rx_merged_datagrams += joined as u64;
                    } else {
                        // Not reached (the run stays inside the buffer it was
                        // given), but never lose datagrams without a count.
                        self.counters.rx_oversize += joined as u64;
                    }
                    continue;
                }
            }
            self.open_run = None;
            if p.size < rest.len()
                && let Some((big, _)) = batch.free_super_buffer()
                && let Some(frame) = big.get_mut(FRAME_HEADROOM..)
                && let Some(run) = merge::merge_run(rest, p.size, frame)
            {
                let header = outer_header(
                    self.mac,
                    self.peer_mac,
                    p.from,
                    self.local,
                    run.len - OUTER_LEN,
                );
                put_front(frame, &header);
                p.offset += merge::TrainRun::train_bytes(rest, p.size, run.datagrams);
                if batch
                    .commit_super(FRAME_HEADROOM, run.len, self.id, run.gso)
                    .is_ok()
                {
                    self.counters.rx_merged += 1;
                    self.counters.rx_merged_datagrams += run.datagrams as u64;
                    self.open_run = Some(OpenRun { from: p.from, run });
                    added += 1;
                } else {
                    self.counters.rx_oversize += run.datagrams as u64;
                }
                continue;
            }
            let Some(buf) = batch.free_buffer() else {
                break;
            };
            let payload = rest.get(..p.size.min(rest.len())).unwrap_or_default();
            p.offset += payload.len().max(1);
            let at = FRAME_HEADROOM + OUTER_LEN;
            let Some(dst) = buf.get_mut(at..at + payload.len()) else {
                self.counters.rx_oversize += 1;
                continue;
            };
            dst.copy_from_slice(payload);
            let header = outer_header(self.mac, self.peer_mac, p.from, self.local, payload.len());
            put_front(buf.get_mut(FRAME_HEADROOM..).unwrap_or_default(), &header);
            if batch
                .commit_at(FRAME_HEADROOM, OUTER_LEN + payload.len(), self.id)
                .is_ok()
            {
                added += 1;
            }
        }
        if p.offset >= p.len {
            self.pending = None;
        }
        added
    }

    /// The socket that sends frames whose outer source port is `sport`.
    fn tx_fd(&self, sport: u16) -> RawFd {
        match self.tx_fds.len() {
            0 => self.fd.as_raw_fd(),
            n => self
                .tx_fds
                .get(usize::from(sport) % n)
                .map_or(self.fd.as_raw_fd(), |fd| fd.as_raw_fd()),
        }
    }

    /// The outer source ports this port sends from (the bound port when none).
    pub fn tx_source_ports(&self) -> Vec<u16> {
        if self.tx_fds.is_empty() {
            return vec![self.local.port()];
        }
        self.tx_fds
            .iter()
            .filter_map(|fd| sys::local_addr(fd.as_raw_fd()).ok())
            .map(|a| a.port())
            .collect()
    }

    /// Sends one group of datagrams to `to` from `fd`; false when the socket buffer
    /// is full.
    fn send_group(
        &mut self,
        fd: RawFd,
        to: SocketAddrV4,
        parts: &[&[u8]],
    ) -> Result<bool, PortError> {
        let size = parts.first().map_or(0, |p| p.len());
        if self.gso && parts.len() > 1 {
            match sys::send(fd, to, parts, u16::try_from(size).ok()) {
                Ok(sent) => {
                    if sent {
                        self.counters.tx_gso_sends += 1;
                        self.counters.tx_gso_datagrams += parts.len() as u64;
                    }
                    return Ok(sent);
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::info!(socket = %self.name, error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso = false;
                }
                Err(e) => return self.send_error(e, parts.len()),
            }
        }
        for part in parts {
            match sys::send(fd, to, &[part], None) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => {
                    self.send_error(e, 1)?;
                }
            }
        }
        Ok(true)
    }

    /// A refused datagram (unreachable, too big) is a counted drop; a broken socket
    /// is an error.
    fn send_error(&mut self, e: std::io::Error, datagrams: usize) -> Result<bool, PortError> {
        match e.raw_os_error() {
            Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => {
                Err(PortError::io(&self.name, "sending VXLAN datagrams", e))
            }
            _ => {
                self.counters.tx_errors += datagrams as u64;
                Ok(true)
            }
        }
    }
}

/// The synthetic outer header for a datagram of `payload` bytes from `from` to `to`.
/// Writes the synthetic outer `header` over the first bytes of `frame` (a frame too
/// short for it is left alone: the port sizes every frame to hold one).
fn put_front(frame: &mut [u8], header: &[u8; OUTER_LEN]) {
    if let Some(dst) = frame.get_mut(..OUTER_LEN) {
        dst.copy_from_slice(header);
    }
}

fn outer_header(
    mac: MacAddr,
    peer_mac: MacAddr,
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: usize,
) -> [u8; OUTER_LEN] {
    let mut h = [0u8; OUTER_LEN];
    let ip_len = (20 + 8 + payload) as u16;
    let udp_len = (8 + payload) as u16;
    let parts: [&[u8]; 12] = [
        &mac.octets(),
        &peer_mac.octets(),
        &[0x08, 0x00, 0x45, 0x00],
        &ip_len.to_be_bytes(),
        &[0, 0, 0x40, 0x00, 64, 17, 0, 0],
        &from.ip().octets(),
        &to.ip().octets(),
        &from.port().to_be_bytes(),
        &to.port().to_be_bytes(),
        &udp_len.to_be_bytes(),
        &[0, 0],
        &[],
    ];
    for (d, s) in h.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
        *d = *s;
    }
    let sum = !checksum::fold(checksum::add(0, h.get(14..34).unwrap_or_default()));
    if let Some(c) = h.get_mut(24..26) {
        c.copy_from_slice(&sum.to_be_bytes());
    }
    h
}

/// The outer destination and UDP payload of an Ethernet/IPv4/UDP frame (what the
/// port sends, and where); `None` for anything else.
pub fn parse_outer(frame: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    outer(frame).map(|(_, to, payload)| (to, payload))
}

/// [`parse_outer`] with the outer UDP source port first.
fn outer(frame: &[u8]) -> Option<(u16, SocketAddrV4, &[u8])> {
    let (sport, to, udp) = outer_addresses(frame)?;
    let ip = frame.get(14..)?;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let udp_len = usize::from(u16::from_be_bytes([
        *frame.get(udp + 4)?,
        *frame.get(udp + 5)?,
    ]));
    if total + 14 < udp + 8 {
        return None;
    }
    let payload = frame.get(14..14 + total)?.get(udp - 14..)?;
    Some((sport, to, payload.get(8..udp_len)?))
}

/// The outer UDP source port, the destination, and the offset of the UDP header of
/// an Ethernet/IPv4/UDP frame, its lengths not read (a super-frame's are set per
/// datagram).
fn outer_addresses(frame: &[u8]) -> Option<(u16, SocketAddrV4, usize)> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ver_ihl = *ip.first()?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let dst = Ipv4Addr::new(*ip.get(16)?, *ip.get(17)?, *ip.get(18)?, *ip.get(19)?);
    let udp = ip.get(ihl..ihl + 8)?;
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    Some((sport, SocketAddrV4::new(dst, dport), 14 + ihl))
}

/// One datagram of a super-frame's send: its headers in the header buffer, its
/// payload where it lies in the super-frame.
#[derive(Clone, Debug, Default)]
struct Datagram {
    headers: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

/// Plans the datagrams of an encapsulated super-frame from segment `first` on, up
/// to the `UDP_SEGMENT` caps: each is the UDP payload in front of the inner packet
/// (VXLAN and inner Ethernet headers) and the inner headers of one segment, fixed
/// by the [`Segmenter`] and written into `headers`, followed by that segment's
/// payload, summed for the inner checksum where it lies and never copied (the
/// kernel's copy into the socket buffer is the only one). Returns (datagrams, size
/// of each but the last).
fn plan_datagrams(
    frame: &[u8],
    gso: Gso,
    segmenter: &Segmenter,
    udp_payload: usize,
    first: usize,
    headers: &mut [u8],
    plan: &mut [Datagram; GSO_MAX_SEGMENTS],
) -> Option<(usize, usize)> {
    let l3 = usize::from(gso.l3);
    let prefix = frame.get(udp_payload..l3)?;
    let inner = frame.get(l3..)?;
    let (mut n, mut at, mut bytes, mut size) = (0, 0, 0, 0);
    for (i, slot) in (first..segmenter.count()).zip(plan.iter_mut()) {
        let full = prefix.len() + usize::from(gso.hdr_len) + usize::from(gso.size);
        if bytes + full > GSO_MAX_BYTES {
            break;
        }
        let dst = headers.get_mut(at..)?;
        dst.get_mut(..prefix.len())?.copy_from_slice(prefix);
        let (hdr_len, payload) = segmenter
            .write_headers(inner, i, dst.get_mut(prefix.len()..)?)
            .ok()?;
        let datagram = prefix.len() + hdr_len + payload.len();
        if n == 0 {
            size = datagram;
        }
        *slot = Datagram {
            headers: at..at + prefix.len() + hdr_len,
            payload: l3 + payload.start..l3 + payload.end,
        };
        at += prefix.len() + hdr_len;
        bytes += datagram;
        n += 1;
    }
    Some((n, size))
}

impl Port for UdpPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, PortError> {
        self.open_run = None;
        let mut added = self.drain_pending(batch);
        while !batch.is_full() {
            // A train read now could only be merged into a super-frame buffer: when
            // they are all taken, it waits for the next batch.
            if self.gro && batch.free_super_buffers() == 0 && !batch.is_empty() {
                break;
            }
            let got = sys::recv(self.fd.as_raw_fd(), &mut self.scratch)
                .map_err(|e| PortError::io(&self.name, "receiving VXLAN datagrams", e))?;
            let Some(r) = got else { break };
            let size = r.gro_size.unwrap_or(r.len).max(1);
            if size < r.len {
                self.counters.rx_gro_trains += 1;
                self.counters.rx_gro_datagrams += r.len.div_ceil(size) as u64;
            }
            self.pending = Some(Pending {
                len: r.len,
                from: r.from,
                size,
                offset: 0,
            });
            // A GRO train that does not fit whole waits for the next batch, so the
            // TUN side can merge it into one write instead of two.
            if r.len.div_ceil(size) > batch.remaining() && !batch.is_empty() {
                break;
            }
            added += self.drain_pending(batch);
        }
        Ok(added)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        let mut i = 0;
        while i < frames.len() {
            let Some((sport, to, first)) = frames.get(i).and_then(|f| outer(f)) else {
                self.counters.tx_invalid += 1;
                i += 1;
                continue;
            };
            // Gather the run of frames that one GSO send can carry: same destination
            // and sending socket, same payload size (the last may be shorter).
            let fd = self.tx_fd(sport);
            let mut parts: [&[u8]; BATCH_SIZE] = [&[]; BATCH_SIZE];
            parts[0] = first;
            let mut n = 1;
            let mut bytes = first.len();
            if self.gso {
                while n < GSO_MAX_SEGMENTS.min(BATCH_SIZE) {
                    let Some((next_sport, next_to, payload)) =
                        frames.get(i + n).and_then(|f| outer(f))
                    else {
                        break;
                    };
                    if next_to != to
                        || self.tx_fd(next_sport) != fd
                        || payload.len() > first.len()
                        || bytes + payload.len() > GSO_MAX_BYTES
                    {
                        break;
                    }
                    if let Some(slot) = parts.get_mut(n) {
                        *slot = payload;
                    }
                    n += 1;
                    bytes += payload.len();
                    if payload.len() < first.len() {
                        break;
                    }
                }
            }
            if !self.send_group(fd, to, parts.get(..n).unwrap_or_default())? {
                return Ok(i);
            }
            i += n;
        }
        Ok(frames.len())
    }

    /// An encapsulated super-frame leaves as few `UDP_SEGMENT` sends as the caps
    /// allow (64 datagrams, 64 KiB), each datagram gathered from its headers (built
    /// in `tx_buf`) and its payload in the super-frame (see `plan_datagrams`): no
    /// copy in user space, one checksum pass.
    fn send_super(&mut self, frame: &[u8], gso: Gso) -> Result<SuperSend, PortError> {
        let Some((sport, to, udp)) = outer_addresses(frame) else {
            self.counters.tx_invalid += 1;
            return Ok(SuperSend::Sent);
        };
        if !self.gso {
            return Ok(SuperSend::Refused);
        }
        let Ok(segmenter) = Segmenter::for_frame(frame, gso) else {
            return Ok(SuperSend::Refused);
        };
        let fd = self.tx_fd(sport);
        let mut plan: [Datagram; GSO_MAX_SEGMENTS] = std::array::from_fn(|_| Datagram::default());
        let mut next = 0;
        while next < segmenter.count() {
            let Some((n, size)) = plan_datagrams(
                frame,
                gso,
                &segmenter,
                udp + 8,
                next,
                &mut self.tx_buf,
                &mut plan,
            ) else {
                return Ok(SuperSend::Refused);
            };
            if n == 0 {
                return Ok(SuperSend::Refused);
            }
            let mut parts: [&[u8]; 2 * GSO_MAX_SEGMENTS] = [&[]; 2 * GSO_MAX_SEGMENTS];
            for (d, pair) in plan.iter().take(n).zip(parts.chunks_exact_mut(2)) {
                if let [h, p] = pair {
                    *h = self.tx_buf.get(d.headers.clone()).unwrap_or_default();
                    *p = frame.get(d.payload.clone()).unwrap_or_default();
                }
            }
            let parts = parts.get(..2 * n).unwrap_or_default();
            let segment = if n > 1 {
                u16::try_from(size).ok()
            } else {
                None
            };
            match sys::send(fd, to, parts, segment) {
                Ok(true) => {
                    if n > 1 {
                        self.counters.tx_gso_sends += 1;
                        self.counters.tx_gso_datagrams += n as u64;
                    }
                }
                // Nothing sent yet: the caller may retry the whole frame.
                Ok(false) if next == 0 => return Ok(SuperSend::Full),
                Ok(false) => {
                    self.counters.tx_errors += (segmenter.count() - next) as u64;
                    return Ok(SuperSend::Sent);
                }
                Err(e)
                    if next == 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
                        ) =>
                {
                    return Ok(SuperSend::Refused);
                }
                Err(e) => {
                    self.send_error(e, n)?;
                }
            }
            next += n;
        }
        Ok(SuperSend::Sent)
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
            rx: c.rx_oversize,
            tx: c.tx_invalid + c.tx_errors,
            overflow: 0,
        }
    }

    fn offloads(&self) -> PortOffloads {
        let c = self.counters;
        PortOffloads {
            rx_super: c.rx_merged,
            rx_super_frames: c.rx_merged_datagrams,
            tx_super: c.tx_gso_sends,
            tx_super_frames: c.tx_gso_datagrams,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_outer_header_parses_back_with_a_valid_checksum() {
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);
        let to = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8472);
        let mut frame = outer_header(MacAddr([2; 6]), MacAddr([4; 6]), from, to, 5).to_vec();
        frame.extend_from_slice(b"hello");
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            (h.source, h.destination, h.time_to_live),
            ([198, 18, 0, 2], [198, 18, 0, 1], 64)
        );
        assert!(h.dont_fragment);
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!(
            (udp.source_port(), udp.destination_port(), udp.payload()),
            (40000, 8472, &b"hello"[..])
        );
        assert_eq!(&frame[..12], &[2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4]);
        // parse_outer reads what the pipeline would build for the way out.
        let (dst, payload) = parse_outer(&frame).unwrap();
        assert_eq!((dst, payload), (to, &b"hello"[..]));
    }

    #[test]
    fn frames_that_are_not_ipv4_udp_do_not_parse() {
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 1);
        let good = outer_header(MacAddr([2; 6]), MacAddr([4; 6]), from, from, 0).to_vec();
        assert!(parse_outer(&good).is_some());
        for cut in 0..good.len() {
            assert!(parse_outer(&good[..cut]).is_none(), "truncated at {cut}");
        }
        let mut tcp = good.clone();
        tcp[14 + 9] = 6;
        assert!(parse_outer(&tcp).is_none());
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(parse_outer(&arp).is_none());
        let mut long = good;
        long[14 + 8 + 20 - 4] = 0xff; // UDP length past the end
        assert!(parse_outer(&long).is_none());
    }
}
