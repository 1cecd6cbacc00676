//! One worker's loop: poll every port it owns, run the pipeline on each batch,
//! transmit per port, exchange parcels with the other workers, and sleep on epoll
//! when nothing has arrived for a while.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::frame::{FRAME_BUFFER_SIZE, Gso, PortId};
use crate::port::tun::gso::Segmenter;
use crate::port::{BATCH_SIZE, PacketBatch, Port, SuperSend};
use crate::tables::{SharedTables, Tables};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};

use super::Processor;
use super::backoff::IdleBackoff;
use super::counters::{Counters, WorkerCounters};
use super::handoff::{MAX_HAND_OFFS, Parcel, ParcelKind};
use super::pool::{Command, Mesh, PoolConfig};

/// Token of the waker (ports use their slot index, always below this).
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Where a frame goes after the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Port(PortId),
    Dropped,
}

pub(crate) struct WorkerLoop<P> {
    index: usize,
    poll: Poll,
    events: Events,
    commands: Receiver<Command>,
    mesh: Arc<Mesh>,
    tables: Arc<SharedTables>,
    counters: Arc<Counters>,
    processor: P,
    ports: Vec<Box<dyn Port>>,
    /// Ports that were sent to since the last flush.
    dirty: Vec<bool>,
    /// Per port: how many loop turns it is skipped while idle.
    backoff: Vec<IdleBackoff>,
    batch: PacketBatch,
    /// Single packets cut from a super-frame for a port that cannot take it whole.
    cut: PacketBatch,
    outs: [Out; BATCH_SIZE],
    /// Per frame of `batch` taken from the inbox: how often it was handed off.
    hops: [u8; BATCH_SIZE],
    epoch: Instant,
    idle_polls: u32,
    park_timeout: Duration,
    sweep_every: Duration,
    next_sweep: Instant,
}

impl<P: Processor> WorkerLoop<P> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        cfg: &PoolConfig,
        poll: Poll,
        commands: Receiver<Command>,
        mesh: Arc<Mesh>,
        tables: Arc<SharedTables>,
        counters: Arc<Counters>,
        processor: P,
    ) -> Self {
        let now = Instant::now();
        WorkerLoop {
            index,
            poll,
            events: Events::with_capacity(64),
            commands,
            mesh,
            tables,
            counters,
            processor,
            ports: Vec::new(),
            dirty: Vec::new(),
            backoff: Vec::new(),
            batch: PacketBatch::new(),
            cut: PacketBatch::new(),
            outs: [Out::Dropped; BATCH_SIZE],
            hops: [0; BATCH_SIZE],
            epoch: now,
            idle_polls: cfg.idle_polls,
            park_timeout: cfg.park_timeout,
            sweep_every: cfg.sweep_interval,
            next_sweep: now + cfg.sweep_interval,
        }
    }

    fn my_counters(&self) -> &WorkerCounters {
        self.counters.worker(self.index)
    }

    pub(crate) fn run(mut self) {
        let mut empty_run: u32 = 0;
        while !self.mesh.stop.load(Ordering::Relaxed) {
            self.apply_commands();
            // One snapshot per loop; the Arc keeps it alive while `self` is borrowed mutably.
            let tables: Arc<Tables> = Arc::clone(&self.tables.load());
            // One clock read per loop: while busy-polling an idle queue this loop
            // runs hundreds of thousands of times a second, and two reads per turn
            // showed up in profiles as much as all the packet processing.
            let wall = Instant::now();
            let now = Now(
                u64::try_from(wall.saturating_duration_since(self.epoch).as_millis())
                    .unwrap_or(u64::MAX),
            );
            let mut moved = self.drain_inbox(&tables, now);
            for slot in 0..self.ports.len() {
                if self.backoff.get_mut(slot).is_none_or(IdleBackoff::due) {
                    let n = self.poll_port(slot, &tables, now);
                    if let Some(b) = self.backoff.get_mut(slot) {
                        b.polled(n);
                    }
                    moved += n;
                }
            }
            self.flush_dirty();
            if moved == 0 {
                empty_run = empty_run.saturating_add(1);
                self.my_counters().empty_polls.add(1);
                if empty_run >= self.idle_polls {
                    self.park();
                    empty_run = 0;
                }
            } else {
                empty_run = 0;
            }
            if wall >= self.next_sweep {
                self.processor.sweep(now);
                self.publish_port_totals();
                self.next_sweep = wall + self.sweep_every;
            }
        }
        // Leaving: push out what is queued; ports close when dropped.
        self.flush_all();
    }

    fn apply_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddPort(port) => {
                    let slot = self.ports.len();
                    if let Some(fd) = port.poll_fd()
                        && let Err(e) = self.poll.registry().register(
                            &mut SourceFd(&fd),
                            Token(slot),
                            Interest::READABLE,
                        )
                    {
                        tracing::warn!(port = port.name(), error = %e, "cannot watch port on epoll; it is polled only while busy");
                    }
                    tracing::debug!(worker = self.index, port = port.name(), "port added");
                    self.ports.push(port);
                    self.dirty.push(false);
                    self.backoff.push(IdleBackoff::default());
                }
                Command::RemovePort(id, ack) => {
                    self.flush_all();
                    // Re-register every remaining port: tokens are slot indices.
                    for port in &self.ports {
                        if let Some(fd) = port.poll_fd() {
                            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                        }
                    }
                    self.ports.retain(|p| p.id() != id);
                    self.dirty = vec![false; self.ports.len()];
                    self.backoff = vec![IdleBackoff::default(); self.ports.len()];
                    for (slot, port) in self.ports.iter().enumerate() {
                        if let Some(fd) = port.poll_fd() {
                            let _ = self.poll.registry().register(
                                &mut SourceFd(&fd),
                                Token(slot),
                                Interest::READABLE,
                            );
                        }
                    }
                    let _ = ack.send(());
                }
            }
        }
    }

    /// Receives one batch from the port in `slot` and dispatches it.
    fn poll_port(&mut self, slot: usize, tables: &Tables, now: Now) -> usize {
        self.batch.clear();
        let Some(port) = self.ports.get_mut(slot) else {
            return 0;
        };
        let in_port = port.id();
        let n = match port.recv(&mut self.batch) {
            Ok(n) => n,
            Err(e) => {
                let c = self.counters.worker(self.index);
                c.port_errors.add(1);
                tracing::debug!(port = port.name(), error = %e, "receive failed");
                0
            }
        };
        if n == 0 {
            return 0;
        }
        let bytes: usize = self.batch.packets().map(<[u8]>::len).sum();
        self.my_counters().rx(in_port, n as u64, bytes as u64);
        self.process_batch(tables, now, false);
        n
    }

    /// Takes up to one batch of parcels from this worker's inbox.
    fn drain_inbox(&mut self, tables: &Tables, now: Now) -> usize {
        let mut moved = 0;
        self.batch.clear();
        while !self.batch.is_full() {
            let Some(parcel) = self.mesh.inboxes.get(self.index).and_then(|q| q.pop()) else {
                break;
            };
            moved += 1;
            self.my_counters().handoff_in.add(1);
            match parcel.kind {
                ParcelKind::Process { hops } => {
                    if let Some(h) = self.hops.get_mut(self.batch.len()) {
                        *h = hops;
                    }
                    if self.batch.push(parcel.bytes(), parcel.in_port).is_err() {
                        self.my_counters().drop(DropReason::NoRoom, 1);
                    }
                }
                ParcelKind::Transmit(port) => self.transmit_one(port, parcel.bytes()),
            }
        }
        if !self.batch.is_empty() {
            self.process_batch(tables, now, true);
        }
        moved
    }

    /// Runs the pipeline over the batch and sends every frame where it belongs.
    /// `from_inbox`: these frames were handed off already (`hops` says how often);
    /// past [`MAX_HAND_OFFS`] a hand-off is dropped, it could loop.
    fn process_batch(&mut self, tables: &Tables, now: Now, from_inbox: bool) {
        let counters = self.counters.worker(self.index);
        let (processor, outs, mesh) = (&mut self.processor, &mut self.outs, &self.mesh);
        let hops = &self.hops;
        self.batch.for_each_frame(|i, frame| {
            let hops = if from_inbox {
                hops.get(i).copied().unwrap_or(MAX_HAND_OFFS)
            } else {
                0
            };
            let out = match processor.process(frame, tables, now) {
                Verdict::Forward { port } => Out::Port(port),
                Verdict::Reply => Out::Port(frame.meta.in_port),
                Verdict::Refuse(reason) => {
                    counters.drop(reason, 1);
                    Out::Port(frame.meta.in_port)
                }
                Verdict::HandOff { worker } if hops < MAX_HAND_OFFS => {
                    let process = ParcelKind::Process { hops: hops + 1 };
                    let (in_port, to) = (frame.meta.in_port, usize::from(worker));
                    match frame.gso() {
                        // Parcels carry single packets: the owner gets the segments.
                        Some(gso) => for_each_segment(frame.data(), gso, counters, |seg| {
                            let parcel = Parcel::new(process, in_port, seg);
                            hand_off(mesh, counters, to, parcel);
                        }),
                        None => {
                            let parcel = Parcel::new(process, in_port, frame.data());
                            hand_off(mesh, counters, to, parcel);
                        }
                    }
                    Out::Dropped
                }
                Verdict::HandOff { .. } => {
                    counters.drop(DropReason::HandOffQueueFull, 1);
                    Out::Dropped
                }
                // The host port is the kernel's way in; without one (an AF_XDP queue
                // has no path back into the kernel) the frame is counted and discarded.
                Verdict::ToHost => {
                    counters.to_host.add(1);
                    match tables.node.host_port {
                        Some(host) => Out::Port(host),
                        None => Out::Dropped,
                    }
                }
                Verdict::Drop(reason) => {
                    counters.drop(reason, 1);
                    Out::Dropped
                }
            };
            if let Some(slot) = outs.get_mut(i) {
                *slot = out;
            }
        });
        self.transmit_batch();
    }

    /// Sends the batch's frames grouped by output port, one `send` per port (and
    /// per super-frame, which leaves on its own, in order).
    fn transmit_batch(&mut self) {
        let len = self.batch.len();
        let mut done = [false; BATCH_SIZE];
        for first in 0..len {
            let Some(Out::Port(port)) = self.outs.get(first).copied() else {
                continue;
            };
            if done.get(first).copied().unwrap_or(true) {
                continue;
            }
            let mut frames: [&[u8]; BATCH_SIZE] = [&[]; BATCH_SIZE];
            let mut count = 0;
            for i in first..len {
                if self.outs.get(i) != Some(&Out::Port(port))
                    || done.get(i).copied().unwrap_or(true)
                {
                    continue;
                }
                let (Some(d), Some(bytes)) = (done.get_mut(i), self.batch.packet(i)) else {
                    continue;
                };
                *d = true;
                if let Some(gso) = self.batch.gso(i) {
                    let out = &mut Outputs {
                        ports: &mut self.ports,
                        dirty: &mut self.dirty,
                        mesh: &self.mesh,
                        counters: self.counters.worker(self.index),
                    };
                    out.send(port, frames.get(..count).unwrap_or_default());
                    count = 0;
                    out.send_super(port, bytes, gso, &mut self.cut);
                    continue;
                }
                if let Some(slot) = frames.get_mut(count) {
                    *slot = bytes;
                    count += 1;
                }
            }
            Outputs {
                ports: &mut self.ports,
                dirty: &mut self.dirty,
                mesh: &self.mesh,
                counters: self.counters.worker(self.index),
            }
            .send(port, frames.get(..count).unwrap_or_default());
        }
    }

    fn transmit_one(&mut self, port: PortId, bytes: &[u8]) {
        send_on(
            &mut self.ports,
            &mut self.dirty,
            &self.mesh,
            self.counters.worker(self.index),
            port,
            &[bytes],
        );
    }

    /// Copies the ports' own totals (drops, super-packets) into this worker's counters.
    fn publish_port_totals(&self) {
        let c = self.counters.worker(self.index);
        for port in &self.ports {
            let d = port.drops();
            let pc = c.port(port.id());
            pc.rx_dropped.set(d.rx);
            pc.tx_dropped.set(d.tx);
            let seen = pc.rx_overflow.get();
            if d.overflow > seen {
                c.drop(DropReason::PortRxOverflow, d.overflow - seen);
            }
            pc.rx_overflow.set(d.overflow);
            let o = port.offloads();
            pc.rx_super.set(o.rx_super);
            pc.rx_super_frames.set(o.rx_super_frames);
            pc.tx_super.set(o.tx_super);
            pc.tx_super_frames.set(o.tx_super_frames);
        }
    }

    fn flush_dirty(&mut self) {
        for (port, dirty) in self.ports.iter_mut().zip(self.dirty.iter_mut()) {
            if std::mem::take(dirty)
                && let Err(e) = port.flush()
            {
                self.counters.worker(self.index).port_errors.add(1);
                tracing::debug!(port = port.name(), error = %e, "flush failed");
            }
        }
    }

    fn flush_all(&mut self) {
        for port in &mut self.ports {
            let _ = port.flush();
        }
    }

    /// Sleeps on epoll until a port is readable, a parcel or command arrives, or the
    /// park timeout passes.
    fn park(&mut self) {
        let me = self.index;
        self.my_counters().parks.add(1);
        // Going idle: publish the ports' totals now, so a scrape after a burst sees
        // it without waiting for the next sweep (a burst can start and end inside
        // one sweep interval).
        self.publish_port_totals();
        if let Some(p) = self.mesh.parked.get(me) {
            p.store(true, Ordering::SeqCst);
        }
        // A parcel queued before `parked` was visible would not wake us: look again.
        let inbox_empty = self.mesh.inboxes.get(me).is_none_or(|q| q.is_empty());
        if inbox_empty && self.commands.is_empty() && !self.mesh.stop.load(Ordering::SeqCst) {
            let slept = self.poll.poll(&mut self.events, Some(self.park_timeout));
            if let Err(e) = slept
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::warn!(worker = me, error = %e, "epoll failed");
            }
        }
        if let Some(p) = self.mesh.parked.get(me) {
            p.store(false, Ordering::SeqCst);
        }
        // Whatever woke us, every port is polled on the next turn.
        self.backoff.fill(IdleBackoff::default());
    }
}

/// The worker's ports and what sending on them touches.
struct Outputs<'a> {
    ports: &'a mut [Box<dyn Port>],
    dirty: &'a mut [bool],
    mesh: &'a Mesh,
    counters: &'a WorkerCounters,
}

impl Outputs<'_> {
    fn send(&mut self, port: PortId, frames: &[&[u8]]) {
        send_on(
            self.ports,
            self.dirty,
            self.mesh,
            self.counters,
            port,
            frames,
        );
    }

    /// Sends super-frame `frame` whole on this worker's queue of `port` when the
    /// port takes it; otherwise cuts it into single packets (in `cut`) and sends
    /// those, as `send` would.
    fn send_super(&mut self, port: PortId, frame: &[u8], gso: Gso, cut: &mut PacketBatch) {
        let local = self.ports.iter().position(|p| p.id() == port);
        if let Some((p, d)) =
            local.and_then(|s| Some((self.ports.get_mut(s)?, self.dirty.get_mut(s)?)))
        {
            let mut result = p.send_super(frame, gso);
            if matches!(result, Ok(SuperSend::Full)) {
                // As `send_on`: kick the kernel, then try once more.
                let _ = p.flush();
                result = p.send_super(frame, gso);
            }
            match result {
                Ok(SuperSend::Sent) => {
                    *d = true;
                    self.counters.tx(port, 1, frame.len() as u64);
                    return;
                }
                Ok(SuperSend::Full) => {
                    self.counters.drop(DropReason::TxRingFull, 1);
                    return;
                }
                Ok(SuperSend::Refused) => {}
                Err(e) => {
                    self.counters.port_errors.add(1);
                    tracing::debug!(port = p.name(), error = %e, "send failed");
                    return;
                }
            }
        }
        cut.clear();
        let counters = self.counters;
        for_each_segment(frame, gso, counters, |seg| {
            if cut.is_full() {
                send_all(self.ports, self.dirty, self.mesh, counters, port, cut);
                cut.clear();
            }
            if cut.push(seg, port).is_err() {
                counters.drop(DropReason::NoRoom, 1);
            }
        });
        send_all(self.ports, self.dirty, self.mesh, counters, port, cut);
        cut.clear();
    }
}

/// [`send_on`] for every packet of `batch`.
fn send_all(
    ports: &mut [Box<dyn Port>],
    dirty: &mut [bool],
    mesh: &Mesh,
    counters: &WorkerCounters,
    port: PortId,
    batch: &PacketBatch,
) {
    let mut frames: [&[u8]; BATCH_SIZE] = [&[]; BATCH_SIZE];
    let mut n = 0;
    for (slot, packet) in frames.iter_mut().zip(batch.packets()) {
        *slot = packet;
        n += 1;
    }
    send_on(
        ports,
        dirty,
        mesh,
        counters,
        port,
        frames.get(..n).unwrap_or_default(),
    );
}

/// Cuts super-frame `frame` into single packets (the one segmentation code, see
/// [`Segmenter`]) and hands each to `f`; what cannot be cut is a counted drop.
fn for_each_segment(frame: &[u8], gso: Gso, counters: &WorkerCounters, mut f: impl FnMut(&[u8])) {
    let Ok(segmenter) = Segmenter::for_frame(frame, gso) else {
        counters.drop(DropReason::MalformedTransport, 1);
        return;
    };
    let mut buf = [0u8; FRAME_BUFFER_SIZE];
    for i in 0..segmenter.count() {
        match segmenter.write_frame(frame, gso, i, &mut buf) {
            Ok(len) => f(buf.get(..len).unwrap_or_default()),
            Err(_) => counters.drop(DropReason::NoRoom, 1),
        }
    }
}

/// Sends `frames` on `port`: on this worker's queue of it when it has one, else to the
/// worker that owns the port. What cannot be sent is a counted drop.
fn send_on(
    ports: &mut [Box<dyn Port>],
    dirty: &mut [bool],
    mesh: &Mesh,
    counters: &WorkerCounters,
    port: PortId,
    frames: &[&[u8]],
) {
    if frames.is_empty() {
        return;
    }
    if let Some(slot) = ports.iter().position(|p| p.id() == port) {
        let (Some(p), Some(d)) = (ports.get_mut(slot), dirty.get_mut(slot)) else {
            return;
        };
        let try_send = |p: &mut Box<dyn Port>, frames: &[&[u8]]| match p.send(frames) {
            Ok(n) => n.min(frames.len()),
            Err(e) => {
                counters.port_errors.add(1);
                tracing::debug!(port = p.name(), error = %e, "send failed");
                0
            }
        };
        let mut sent = try_send(p, frames);
        if sent < frames.len() {
            // A full ring: kick the kernel and reclaim completions, then try the rest
            // once more before counting them as drops.
            let _ = p.flush();
            sent += try_send(p, frames.get(sent..).unwrap_or_default());
        }
        *d = true;
        let bytes: usize = frames.iter().take(sent).map(|f| f.len()).sum();
        counters.tx(port, sent as u64, bytes as u64);
        counters.drop(DropReason::TxRingFull, (frames.len() - sent) as u64);
        return;
    }
    match mesh.owner_of(port) {
        Some(owner) => {
            for f in frames {
                hand_off(
                    mesh,
                    counters,
                    usize::from(owner),
                    Parcel::new(ParcelKind::Transmit(port), port, f),
                );
            }
        }
        // The port went away (a pod removed) between the snapshot and now.
        None => counters.drop(DropReason::NoRoute, frames.len() as u64),
    }
}

fn hand_off(mesh: &Mesh, counters: &WorkerCounters, to: usize, parcel: Option<Parcel>) {
    match parcel.map(|p| mesh.send(to, p)) {
        Some(true) => counters.handoff_out.add(1),
        Some(false) => counters.drop(DropReason::HandOffQueueFull, 1),
        None => counters.drop(DropReason::NoRoom, 1),
    }
}
