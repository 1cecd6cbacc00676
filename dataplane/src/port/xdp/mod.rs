//! The AF_XDP backend: one socket per (interface, queue), its own UMEM on huge pages
//! (ordinary pages with a logged warning when none are free), and the steering XDP
//! program ([`XdpSteering`]) that sends only hybridway's traffic to the sockets.
//!
//! The rings are driven directly through `linux/if_xdp.h` (`sys`) rather than
//! through `xsk-rs`, which compiles libxdp and libbpf from C at build time for
//! ring helpers we have here, and leaves multi-buffer chaining to the caller
//! anyway (README, "Dependencies we do not use"). The program is loaded with
//! `aya`.
//!
//! UMEM layout: `frames` chunks of [`CHUNK_SIZE`] bytes; half start in the fill ring
//! (receive), half on the free list (transmit). Received frames are copied into the
//! worker's [`PacketBatch`] at `FRAME_HEADROOM` and the chunk goes straight back to
//! the fill ring; sent frames are copied into a free chunk, which returns to the
//! free list through the completion ring.

pub mod hugetlb_cgroup;
mod program;
mod sys;

pub use program::{AttachMode, SnatSteer, SteerRules, VXLAN_PORT, XdpSteering};
pub use sys::XdpStatistics;

use std::os::fd::RawFd;
use std::sync::Arc;

use super::{PacketBatch, Port, PortDrops, PortError};
use crate::frame::PortId;

/// Size of one UMEM chunk: one frame buffer.
pub const CHUNK_SIZE: u32 = crate::frame::FRAME_BUFFER_SIZE as u32;

/// sendto calls per flush at most (ring size / 32 covers a full ring in copy mode).
const MAX_KICKS: usize = 64;

/// Copy or zero-copy socket mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Zero-copy where the driver supports it, else copy mode.
    #[default]
    Auto,
    Copy,
    ZeroCopy,
}

/// Where the UMEM lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UmemBacking {
    HugePages,
    OrdinaryPages,
}

/// Settings of one AF_XDP port (one queue of one interface).
#[derive(Clone, Debug)]
pub struct XdpConfig {
    pub ifname: String,
    pub queue: u32,
    pub port_id: PortId,
    /// UMEM chunks (power of two); half receive, half transmit.
    pub frames: u32,
    /// Entries of each of the four rings (power of two).
    pub ring_size: u32,
    /// Try 2 MiB huge pages for the UMEM.
    pub hugepages: bool,
    pub mode: XdpMode,
}

impl XdpConfig {
    pub fn new(ifname: &str, queue: u32, port_id: PortId) -> Self {
        XdpConfig {
            ifname: ifname.to_owned(),
            queue,
            port_id,
            frames: 4096,
            ring_size: 2048,
            hugepages: true,
            mode: XdpMode::Auto,
        }
    }
}

/// An AF_XDP socket bound to one queue, with its UMEM and rings.
#[derive(Debug)]
pub struct XdpPort {
    id: PortId,
    name: String,
    rings: sys::XskRings,
    umem: sys::Mapping,
    backing: UmemBacking,
    free_frames: Vec<u64>,
    tx_in_flight: u32,
    rx_oversize: u64,
    // Keeps the program attached while this socket lives.
    steering: Arc<XdpSteering>,
}

impl XdpPort {
    /// Creates the socket for `config.queue` of `config.ifname` and registers it with
    /// `steering` (which must be attached to the same interface).
    pub fn open(config: &XdpConfig, steering: Arc<XdpSteering>) -> Result<Self, PortError> {
        let name = format!("{}/q{}", config.ifname, config.queue);
        if steering.ifname() != config.ifname {
            return Err(PortError::Config(format!(
                "{name}: the steering program is attached to {}, not {}",
                steering.ifname(),
                config.ifname
            )));
        }
        if !config.frames.is_power_of_two()
            || !config.ring_size.is_power_of_two()
            || config.frames < 4
        {
            return Err(PortError::Config(format!(
                "{name}: frames ({}) and ring_size ({}) must be powers of two",
                config.frames, config.ring_size
            )));
        }
        let ifindex = super::probe::ifindex(&config.ifname)
            .ok_or_else(|| PortError::NoSuchInterface(config.ifname.clone()))?;
        let (mut umem, backing) = allocate_umem(
            &name,
            config.frames as usize * CHUNK_SIZE as usize,
            config.hugepages,
        )?;

        let modes: &[u16] = match config.mode {
            XdpMode::Auto => &[sys::XDP_ZEROCOPY, sys::XDP_COPY],
            XdpMode::Copy => &[sys::XDP_COPY],
            XdpMode::ZeroCopy => &[sys::XDP_ZEROCOPY],
        };
        let mut last = None;
        let mut rings = None;
        for &mode in modes {
            let fd = sys::xsk_socket().map_err(|e| PortError::XdpUnavailable {
                ifname: config.ifname.clone(),
                missing: format!(
                    "cannot create an XDP socket ({e}); the kernel needs CONFIG_XDP_SOCKETS"
                ),
            })?;
            match sys::setup(
                fd,
                &mut umem,
                CHUNK_SIZE,
                config.ring_size,
                ifindex,
                config.queue,
                mode | sys::XDP_USE_NEED_WAKEUP,
            ) {
                Ok(r) => {
                    rings = Some(r);
                    break;
                }
                Err(e) => {
                    tracing::debug!(port = %name, step = e.step, error = %e.error, zero_copy = mode == sys::XDP_ZEROCOPY, "AF_XDP bind attempt failed");
                    last = Some(e);
                }
            }
        }
        let Some(mut rings) = rings else {
            let (step, error) = match last {
                Some(e) => (e.step, e.error.to_string()),
                None => ("binding", "no mode tried".to_owned()),
            };
            return Err(PortError::XdpUnavailable {
                ifname: config.ifname.clone(),
                missing: format!(
                    "queue {} refused an XDP socket while {step}: {error}",
                    config.queue
                ),
            });
        };

        // Half the chunks receive, half transmit.
        let rx_frames = (config.frames / 2).min(config.ring_size);
        let mut free_frames: Vec<u64> = (0..u64::from(config.frames))
            .map(|i| i * u64::from(CHUNK_SIZE))
            .collect();
        let granted = rings.fill.free(rx_frames).min(rx_frames);
        for _ in 0..granted {
            if let Some(addr) = free_frames.pop() {
                rings.fill.push(addr);
            }
        }
        rings.fill.submit();
        steering.register(config.queue, rings.fd())?;
        tracing::info!(port = %name, zero_copy = rings.zero_copy, ?backing, native = steering.is_native(), "AF_XDP socket ready");
        Ok(XdpPort {
            id: config.port_id,
            name,
            rings,
            umem,
            backing,
            free_frames,
            tx_in_flight: 0,
            rx_oversize: 0,
            steering,
        })
    }

    /// Where the UMEM ended up (huge pages, or ordinary pages after the fallback).
    pub fn umem_backing(&self) -> UmemBacking {
        self.backing
    }

    /// Is the socket in zero-copy mode?
    pub fn is_zero_copy(&self) -> bool {
        self.rings.zero_copy
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> Result<XdpStatistics, PortError> {
        self.rings
            .statistics()
            .map_err(|e| PortError::io(&self.name, "reading XDP_STATISTICS", e))
    }

    /// Received frames too large for a frame buffer (dropped).
    pub fn rx_oversize(&self) -> u64 {
        self.rx_oversize
    }

    pub fn steering(&self) -> &Arc<XdpSteering> {
        &self.steering
    }

    fn reclaim_completions(&mut self) {
        let done = self.rings.comp.ready();
        for _ in 0..done {
            let addr = self.rings.comp.pop();
            self.free_frames.push(addr & !(u64::from(CHUNK_SIZE) - 1));
        }
        if done > 0 {
            self.rings.comp.release();
            self.tx_in_flight = self.tx_in_flight.saturating_sub(done);
        }
    }
}

/// Receive queues of interface `ifname` (one AF_XDP socket, and so one worker, per
/// queue); 1 when sysfs does not say.
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0)
        .max(1)
}

fn allocate_umem(
    name: &str,
    len: usize,
    hugepages: bool,
) -> Result<(sys::Mapping, UmemBacking), PortError> {
    let huge_len = len.div_ceil(sys::HUGE_PAGE_SIZE) * sys::HUGE_PAGE_SIZE;
    let headroom = hugetlb_cgroup::huge_page_headroom();
    let within_limit = headroom.is_none_or(|left| left >= huge_len as u64);
    if hugepages && !within_limit {
        // Mapped past the limit, the UMEM could not be registered (module docs).
        tracing::warn!(
            port = name,
            needed_bytes = huge_len,
            cgroup_allows_bytes = headroom,
            "the cgroup's hugetlb limit (the pod's hugepages-2Mi) leaves too little for the UMEM; using ordinary pages"
        );
    }
    if hugepages && within_limit {
        match sys::Mapping::anonymous(huge_len, true) {
            Ok(m) => return Ok((m, UmemBacking::HugePages)),
            Err(e) => tracing::warn!(
                port = name,
                error = %e,
                needed_pages = huge_len / sys::HUGE_PAGE_SIZE,
                "no free 2 MiB huge pages for the UMEM (reserve them with vm.nr_hugepages or the pod's hugepages-2Mi limit); using ordinary pages"
            ),
        }
    }
    sys::Mapping::anonymous(len, false)
        .map(|m| (m, UmemBacking::OrdinaryPages))
        .map_err(|e| PortError::io(name, "allocating the UMEM", e))
}

impl Port for XdpPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, PortError> {
        if self.rings.fill.needs_wakeup() {
            self.rings.kick_rx();
        }
        let n = self.rings.rx.ready().min(batch.remaining() as u32);
        let mut received = 0;
        let chunk_mask = !(u64::from(CHUNK_SIZE) - 1);
        for _ in 0..n {
            let desc = self.rings.rx.pop();
            let start = usize::try_from(desc.addr).unwrap_or(usize::MAX);
            let packet = self.umem.get(start, desc.len as usize);
            let copied = match (packet, batch.rx_buffer()) {
                (Some(packet), Some(dst)) => match dst.get_mut(..packet.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(packet);
                        Some(packet.len())
                    }
                    None => None,
                },
                _ => None,
            };
            match copied.map(|len| batch.commit(len, self.id)) {
                Some(Ok(())) => received += 1,
                _ => self.rx_oversize += 1,
            }
            // The chunk goes straight back to the kernel; the fill ring has room
            // because every chunk is in exactly one ring or on the free list.
            if self.rings.fill.free(1) > 0 {
                self.rings.fill.push(desc.addr & chunk_mask);
            } else {
                self.free_frames.push(desc.addr & chunk_mask);
            }
        }
        if n > 0 {
            self.rings.rx.release();
            self.rings.fill.submit();
        }
        Ok(received)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        self.reclaim_completions();
        let room = self.rings.tx.free(frames.len() as u32) as usize;
        let mut sent = 0;
        for frame in frames.iter().take(room) {
            if frame.len() > CHUNK_SIZE as usize {
                break;
            }
            let Some(addr) = self.free_frames.pop() else {
                break;
            };
            let start = addr as usize;
            match self.umem.get_mut(start, frame.len()) {
                Some(dst) => dst.copy_from_slice(frame),
                None => {
                    self.free_frames.push(addr);
                    break;
                }
            }
            self.rings.tx.push(sys::XdpDesc {
                addr,
                len: frame.len() as u32,
                options: 0,
            });
            sent += 1;
        }
        if sent > 0 {
            self.rings.tx.submit();
            self.tx_in_flight += sent as u32;
        }
        Ok(sent)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        // Copy mode always needs the kick; zero-copy only when the driver asks.
        // In copy mode each sendto transmits at most 32 frames (the kernel's
        // TX_BATCH_SIZE), so kick until the ring is drained, a bounded number of times.
        for _ in 0..MAX_KICKS {
            if self.rings.tx.unconsumed() == 0
                || (self.rings.zero_copy && !self.rings.tx.needs_wakeup())
            {
                break;
            }
            self.rings
                .kick_tx()
                .map_err(|e| PortError::io(&self.name, "kicking AF_XDP transmit (sendto)", e))?;
        }
        self.reclaim_completions();
        Ok(())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.rings.fd())
    }

    fn drops(&self) -> PortDrops {
        let kernel = self.rings.statistics().unwrap_or_default();
        PortDrops {
            rx: self.rx_oversize
                + kernel.rx_dropped
                + kernel.rx_ring_full
                + kernel.rx_invalid_descs,
            tx: kernel.tx_invalid_descs,
            overflow: kernel.rx_dropped + kernel.rx_ring_full,
        }
    }
}
