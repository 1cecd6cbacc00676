//! Ports: the only code that touches the operating system.
//!
//! A port moves *batches* of Ethernet frames between a worker and the OS. Every
//! backend presents the same picture to the pipeline:
//!
//! * **Frames are always Ethernet.** Backends that carry IP packets (a TUN device in
//!   layer-3 mode, the VXLAN UDP socket) synthesise the missing headers on receive and
//!   strip them on transmit:
//!   - TUN (L3): rx prepends `dst = TunConfig::mac, src = TunConfig::peer_mac,
//!     ethertype = 0x0800/0x86dd` (taken from the IP version nibble); tx drops the
//!     first 14 bytes and writes the IP packet.
//!   - VXLAN UDP socket: rx places the UDP payload (the VXLAN header and inner frame)
//!     after `FRAME_HEADROOM + 42` bytes and writes a synthetic outer
//!     Ethernet/IPv4/UDP header in front of it (source = the datagram's sender, so the
//!     pipeline validates the sending node exactly as for a real VXLAN frame); tx
//!     parses the outer headers the pipeline built, sends the UDP payload to the outer
//!     destination address and port, and ignores the rest of the outer header.
//! * **Received packets start at [`FRAME_HEADROOM`](crate::frame::FRAME_HEADROOM)** in a [`FRAME_BUFFER_SIZE`](crate::frame::FRAME_BUFFER_SIZE)
//!   buffer owned by the worker's [`PacketBatch`], so encapsulation can prepend its
//!   headers in place.
//! * **Super-frames.** A port may hand over a TSO/GSO read whole as one frame in a
//!   64 KiB buffer of the batch ([`PacketBatch::commit_super`], marked with
//!   [`Gso`](crate::frame::Gso)); the pipeline rewrites its headers once. Where it
//!   leaves, [`Port::send_super`] sends it whole (TUN: one GSO `writev`; the VXLAN
//!   socket: `UDP_SEGMENT` sends) or refuses, and the worker cuts it into single
//!   packets with the one segmentation code (`tun::gso::Segmenter`) for `send`.
//! * **`send` copies** the frames out (into the UMEM, the TUN fd, the socket) so the
//!   batch can be reused at once; a frame the port cannot take now is not accepted and
//!   the worker counts it as a `TxRingFull` drop.
//!
//! On the TUN backend the kernel keeps the node's layer 2: pods keep their veths and
//! the kernel routes whatever the agent's routes point into the TUN device (other
//! nodes' pod blocks; outside destinations when SNAT is on) to the dataplane, one
//! queue per worker. Set `TunConfig::mac` to the MAC the pipeline expects on frames
//! from pods (the gateway MAC) so TUN frames look like frames from a pod. In overlay
//! the [`udp`] port is the uplink: VXLAN leaves through it and arrives on it, and
//! decapsulated packets are written back into the TUN for the kernel to deliver.
//!
//! One poll of a worker, in outline:
//!
//! ```
//! use hybridway_dataplane::port::{BATCH_SIZE, PacketBatch, Port, PortError};
//!
//! fn poll_once(port: &mut dyn Port, batch: &mut PacketBatch) -> Result<usize, PortError> {
//!     batch.clear();
//!     port.recv(batch)?;
//!     batch.for_each_frame(|_, _frame| { /* pipeline: rewrite, encapsulate, decide */ });
//!     let mut out: [&[u8]; BATCH_SIZE] = [&[]; BATCH_SIZE];
//!     let mut n = 0;
//!     for (slot, packet) in out.iter_mut().zip(batch.packets()) {
//!         *slot = packet;
//!         n += 1;
//!     }
//!     let sent = port.send(out.get(..n).unwrap_or_default())?; // n - sent: TxRingFull drops
//!     port.flush()?;
//!     Ok(sent)
//! }
//! ```
//!
//! Backends: `xdp` (AF_XDP sockets with an XDP steering program), `tun`
//! (multi-queue TUN with the virtio-net header) and `udp` (the VXLAN side of the
//! overlay on the TUN backend). [`Backend`] chooses between them.

pub mod batch;
pub mod ethtool;
pub mod netns;
mod probe;
pub mod select;
mod sys_result;
pub mod tcp_run;
pub mod tun;
pub mod udp;
pub mod xdp;

pub use batch::PacketBatch;
pub use select::{Backend, Chosen, HostSupport, ParseBackendError, choose};

use std::os::fd::RawFd;

use crate::frame::{Gso, PortId};

/// Most frames a worker handles per poll.
pub const BATCH_SIZE: usize = 64;

/// A source and sink of Ethernet frames owned by one worker (one queue of a device).
pub trait Port: Send {
    /// The id the pipeline uses for this port (`FrameMeta::in_port`,
    /// `Verdict::Forward { port }`).
    fn id(&self) -> PortId;

    /// Human-readable name (`eth0/q1`, `hw0/q0`, `vxlan:198.18.0.1:8472`).
    fn name(&self) -> &str;

    /// Appends received frames to `batch` without blocking; returns how many were
    /// appended (0 when nothing waits or the batch is full).
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, PortError>;

    /// Queues `frames` (Ethernet, see the module docs) for transmission, copying them
    /// out; returns how many were accepted, in order. The rest were not sent and count
    /// as `TxRingFull` drops.
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError>;

    /// Transmits super-frame `frame` ([`Gso`]) whole, as one GSO write or send.
    /// [`SuperSend::Refused`] (the default: ports that cannot) asks the caller to cut
    /// it into single packets and [`Port::send`] those.
    fn send_super(&mut self, _frame: &[u8], _gso: Gso) -> Result<SuperSend, PortError> {
        Ok(SuperSend::Refused)
    }

    /// Makes the kernel transmit what `send` queued (the AF_XDP `sendto` kick) and
    /// reclaims completed buffers. A no-op for backends that write synchronously.
    fn flush(&mut self) -> Result<(), PortError>;

    /// A file descriptor that becomes readable when frames wait, so an idle worker
    /// can park on epoll (`mio::unix::SourceFd`) instead of spinning.
    fn poll_fd(&self) -> Option<RawFd>;

    /// Frames the port itself dropped (malformed or oversized from the OS, refused
    /// by the kernel on send), for the worker's counters.
    fn drops(&self) -> PortDrops {
        PortDrops::default()
    }

    /// Totals of the port's GSO/GRO super-packets, for the worker's counters.
    fn offloads(&self) -> PortOffloads {
        PortOffloads::default()
    }
}

/// What became of a super-frame offered to [`Port::send_super`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperSend {
    /// Queued or written whole.
    Sent,
    /// The queue is full now; like a `send` that accepted nothing.
    Full,
    /// This port cannot carry it whole: cut it into single packets.
    Refused,
}

/// Totals of super-packets a port moved (TSO/USO reads, or GRO trains merged into
/// super-frames on the VXLAN socket, on receive; GSO writes and sends on transmit)
/// and of the frames they carried: frames per super-packet is what decides how much
/// per-packet kernel and pipeline work the port costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortOffloads {
    pub rx_super: u64,
    pub rx_super_frames: u64,
    pub tx_super: u64,
    pub tx_super_frames: u64,
}

/// Totals of frames a port dropped on its own, outside the pipeline's verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortDrops {
    pub rx: u64,
    pub tx: u64,
    /// Frames the kernel dropped because the dataplane did not read them in time
    /// (a burst): AF_XDP's receive ring full or no buffer to fill, the TUN
    /// device's queue full (its `tx_dropped`). A running total, like the others.
    pub overflow: u64,
}

/// Errors from setting up or driving a port. Messages name what is missing and
/// what to use instead.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("AF_XDP unavailable on {ifname}: {missing}; use backend: tun")]
    XdpUnavailable { ifname: String, missing: String },
    #[error("TUN unavailable: {missing}")]
    TunUnavailable { missing: String },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("{what} on {port}: {source}")]
    Io {
        port: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the XDP steering program: {0}")]
    Program(String),
    #[error("invalid port configuration: {0}")]
    Config(String),
}

impl PortError {
    /// An I/O error with the port and the operation that failed.
    pub fn io(port: &str, what: &'static str, source: std::io::Error) -> Self {
        PortError::Io {
            port: port.to_owned(),
            what,
            source,
        }
    }

    /// The last OS error (`errno`) as a [`PortError::Io`].
    pub fn last_os(port: &str, what: &'static str) -> Self {
        Self::io(port, what, std::io::Error::last_os_error())
    }
}
