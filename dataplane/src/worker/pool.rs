//! Starting, steering and stopping the workers.
//!
//! ```text
//!  control thread ──Command (AddPort/RemovePort)──► worker k  (crossbeam channel + mio Waker)
//!  control thread ──SharedTables::publish──────────► all workers (load once per batch)
//!  worker j ──Parcel (Process | Transmit)──► inbox of worker k (ArrayQueue, wake if parked)
//!  workers ──WorkerCounters (relaxed, single writer)──► control thread / Prometheus
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender};

use crate::frame::PortId;
use crate::port::Port;
use crate::tables::SharedTables;
use crate::verdict::WorkerId;

use super::Processor;
use super::counters::Counters;
use super::handoff::{Inbox, Parcel};
use super::run::{WAKER, WorkerLoop};

/// How workers run.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: usize,
    /// Core of each worker, in order; `None` leaves a worker unpinned.
    pub cores: Vec<Option<usize>>,
    /// Empty polls in a row before parking on epoll.
    pub idle_polls: u32,
    /// Longest park (also bounds how late a conntrack sweep runs).
    pub park_timeout: Duration,
    /// How often each worker sweeps expired flows.
    pub sweep_interval: Duration,
    /// Parcels each worker's inbox holds.
    pub inbox_capacity: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 1,
            cores: Vec::new(),
            idle_polls: 256,
            park_timeout: Duration::from_millis(100),
            sweep_interval: Duration::from_millis(500),
            // 4096 parcels of 2 KiB: 8 MiB per worker, enough for a TCP burst at line rate.
            inbox_capacity: 4096,
        }
    }
}

/// Instructions from the control thread.
pub enum Command {
    /// Start polling this port (one queue of a device).
    AddPort(Box<dyn Port>),
    /// Stop polling the port and drop it (closing its socket); the sender is told
    /// when it is gone so the caller may delete the device.
    RemovePort(PortId, Sender<()>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::AddPort(p) => write!(f, "AddPort({})", p.name()),
            Command::RemovePort(id, _) => write!(f, "RemovePort({id})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("creating the epoll instance of worker {worker}: {source}")]
    Epoll {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("spawning worker {worker}: {source}")]
    Spawn {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {0} does not exist")]
    NoSuchWorker(usize),
    #[error("worker {0} has stopped")]
    WorkerGone(usize),
}

/// What the workers share with each other and the control thread.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub inboxes: Vec<Inbox>,
    /// Set while a worker sleeps in epoll; a sender wakes it only then.
    pub parked: Vec<AtomicBool>,
    pub wakers: Vec<mio::Waker>,
    /// Which worker transmits on a port that not every worker has a queue of.
    pub port_owner: ArcSwap<Vec<Option<WorkerId>>>,
    pub stop: AtomicBool,
}

impl Mesh {
    /// Queues `parcel` to worker `to`, waking it if it sleeps; `false` (and the
    /// parcel dropped) when the inbox is full or the worker does not exist.
    pub fn send(&self, to: usize, parcel: Parcel) -> bool {
        let Some(inbox) = self.inboxes.get(to) else {
            return false;
        };
        if inbox.push(parcel).is_err() {
            return false;
        }
        // SeqCst pairs with the worker's store of `parked` before its final inbox check.
        if self
            .parked
            .get(to)
            .is_some_and(|p| p.load(Ordering::SeqCst))
            && let Some(w) = self.wakers.get(to)
        {
            let _ = w.wake();
        }
        true
    }

    pub fn owner_of(&self, port: PortId) -> Option<WorkerId> {
        self.port_owner
            .load()
            .get(usize::from(port.0))
            .copied()
            .flatten()
    }
}

/// The running workers.
#[derive(Debug)]
pub struct WorkerPool {
    mesh: Arc<Mesh>,
    commands: Vec<Sender<Command>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl WorkerPool {
    /// Starts `config.workers` threads; `make` builds each worker's processor
    /// (its pipeline and SNAT shard) on the worker's own thread.
    pub fn start<P, F>(
        config: &PoolConfig,
        tables: Arc<SharedTables>,
        make: F,
    ) -> Result<Self, PoolError>
    where
        P: Processor + 'static,
        F: Fn(WorkerId) -> P + Send + Sync + 'static,
    {
        let n = config.workers.max(1);
        let counters = Counters::new(n);
        let mut polls = Vec::with_capacity(n);
        let mut wakers = Vec::with_capacity(n);
        for worker in 0..n {
            let poll = mio::Poll::new().map_err(|source| PoolError::Epoll { worker, source })?;
            let waker = mio::Waker::new(poll.registry(), WAKER)
                .map_err(|source| PoolError::Epoll { worker, source })?;
            polls.push(poll);
            wakers.push(waker);
        }
        let mesh = Arc::new(Mesh {
            inboxes: (0..n)
                .map(|_| Inbox::new(config.inbox_capacity.max(1)))
                .collect(),
            parked: (0..n).map(|_| AtomicBool::new(false)).collect(),
            wakers,
            port_owner: ArcSwap::from_pointee(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let make = Arc::new(make);
        let mut commands = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (i, poll) in polls.into_iter().enumerate() {
            let (tx, rx): (Sender<Command>, Receiver<Command>) = crossbeam::channel::unbounded();
            commands.push(tx);
            let core = config.cores.get(i).copied().flatten();
            let (mesh, tables, counters, make) =
                (mesh.clone(), tables.clone(), counters.clone(), make.clone());
            let cfg = config.clone();
            let thread = std::thread::Builder::new()
                .name(format!("hw-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                    {
                        tracing::warn!(
                            worker = i,
                            core,
                            "could not pin worker to core; running unpinned"
                        );
                    }
                    let id = WorkerId::try_from(i).unwrap_or(WorkerId::MAX);
                    let processor = make(id);
                    WorkerLoop::new(i, &cfg, poll, rx, mesh, tables, counters, processor).run();
                })
                .map_err(|source| PoolError::Spawn { worker: i, source })?;
            threads.push(thread);
        }
        Ok(WorkerPool {
            mesh,
            commands,
            threads,
            counters,
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn workers(&self) -> usize {
        self.commands.len()
    }

    /// Gives `port` to `worker`. When `sole_owner`, frames that other workers forward
    /// to this port are handed to `worker` for transmission.
    pub fn add_port(
        &self,
        worker: usize,
        port: Box<dyn Port>,
        sole_owner: bool,
    ) -> Result<(), PoolError> {
        let id = port.id();
        self.counters.name_port(id, port.name());
        if sole_owner {
            self.set_owner(id, WorkerId::try_from(worker).ok());
        }
        self.command(worker, Command::AddPort(port))
    }

    fn set_owner(&self, port: PortId, owner: Option<WorkerId>) {
        let mut owners = (**self.mesh.port_owner.load()).clone();
        let i = usize::from(port.0);
        if owners.len() <= i {
            owners.resize(i + 1, None);
        }
        if let Some(slot) = owners.get_mut(i) {
            *slot = owner;
        }
        self.mesh.port_owner.store(Arc::new(owners));
    }

    /// Removes `port` from every worker and waits (up to 2 s) until each dropped it.
    pub fn remove_port(&self, port: PortId) -> Result<(), PoolError> {
        self.set_owner(port, None);
        let mut acks = Vec::new();
        for w in 0..self.workers() {
            let (tx, rx) = crossbeam::channel::bounded(1);
            self.command(w, Command::RemovePort(port, tx))?;
            acks.push((w, rx));
        }
        for (w, rx) in acks {
            rx.recv_timeout(Duration::from_secs(2))
                .map_err(|_| PoolError::WorkerGone(w))?;
        }
        Ok(())
    }

    fn command(&self, worker: usize, cmd: Command) -> Result<(), PoolError> {
        let tx = self
            .commands
            .get(worker)
            .ok_or(PoolError::NoSuchWorker(worker))?;
        tx.send(cmd).map_err(|_| PoolError::WorkerGone(worker))?;
        if let Some(w) = self.mesh.wakers.get(worker) {
            let _ = w.wake();
        }
        Ok(())
    }

    /// Stops every worker (they finish their batch, flush and drop their ports).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.mesh.stop.store(true, Ordering::SeqCst);
        for w in &self.mesh.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
