//! The running transport: its threads (event loop, reader, notifier, a
//! writer per peer lane, a sender per outgoing snapshot), the channels
//! between them, the peer table, and the ways in: queueing a message,
//! starting a snapshot, adding and removing peers, stopping.

use super::account::{Accounts, Incident};
use super::channels::{self, LoopCmd, LoopHandle, Notice, ReaderMsg, Returned};
use super::event_loop::{EventLoop, LoopParts};
use super::notify::Notifier;
use super::peers::{LaneQueue, PeerEntry, PeerKind, PeerMap, PeerShared, PeerTable};
use super::reader::{Outputs, Reader};
use super::shared::Shared;
use super::snapshot_send::{SendJob, run_sender};
use super::writer::{Writer, WriterCtx};
use crate::config::Config;
use crate::conn::snapshot::SnapshotFailure;
use crate::error::{Error, SendError};
use crate::lanes::{PerLane, QueuedLane};
use crate::message::Message;
use crate::reporter::Reporter;
use crate::snapshot::IncomingSnapshot;
use crossbeam_channel::{Receiver, Sender};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// One running transport.
pub(crate) struct Runtime<M> {
    pub shared: Arc<Shared<M>>,
    pub local_addr: SocketAddr,
    pub loop_handle: LoopHandle,
    pub messages_rx: Receiver<M>,
    /// Takes so far through `Transport::try_recv` (see `inbox`).
    pub take_turn: std::sync::atomic::AtomicU32,
    pub proposals_rx: Receiver<M>,
    pub appends_rx: Receiver<M>,
    pub snapshots_rx: Receiver<IncomingSnapshot<M>>,
    /// Distinguishes this transport's thread names from others'.
    pub instance: u64,
    pub stopped: AtomicBool,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    reporter: Arc<dyn Reporter>,
    outgoing_snapshots: Arc<AtomicUsize>,
    next_snapshot: AtomicU64,
    snapshot_threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The receiving ends of the threads' inputs, until the threads start.
struct Inputs<M> {
    reader_rx: Receiver<ReaderMsg>,
    notice_rx: Receiver<Notice>,
    outputs: Outputs<M>,
}

impl<M: Message> Runtime<M> {
    /// Binds the listener and starts the event loop, reader and notifier.
    pub fn start(config: Config, reporter: Arc<dyn Reporter>) -> Result<Arc<Runtime<M>>, Error> {
        config.validate()?;
        let instance = INSTANCES.fetch_add(1, Relaxed);
        let epoch = std::time::Instant::now();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (notice_tx, notice_rx) = crossbeam_channel::unbounded();
        let (reader_tx, reader_rx) = crossbeam_channel::unbounded();
        let (messages_tx, messages_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (proposals_tx, proposals_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (appends_tx, appends_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (snapshots_tx, snapshots_rx) =
            crossbeam_channel::bounded(config.max_incoming_snapshots);
        let accounts = Arc::new(Accounts::new(
            config.node_id,
            epoch,
            config.log_interval,
            notice_tx,
        ));
        // Receive buffers the reader is done with, back to the loop.
        let (recycler, pools) = channels::buffer_pools(&config);
        let event_loop = EventLoop::bind(LoopParts {
            config: config.clone(),
            reader_tx: reader_tx.clone(),
            accounts: accounts.clone(),
            pools,
            #[cfg(feature = "tls")]
            tls: match &config.tls {
                Some(t) => Some(Arc::new(crate::tls::TlsContext::build(
                    t,
                    config.cluster_id,
                )?)),
                None => None,
            },
        })
        .map_err(Error::Io)?;
        let rt = Arc::new(Runtime {
            shared: Arc::new(Shared {
                config,
                peers: PeerTable::default(),
                accounts,
            }),
            local_addr: event_loop.local_addr(),
            loop_handle: event_loop.handle(),
            messages_rx,
            take_turn: std::sync::atomic::AtomicU32::new(0),
            proposals_rx,
            appends_rx,
            snapshots_rx,
            instance,
            stopped: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            threads: Mutex::new(Vec::new()),
            reporter,
            outgoing_snapshots: Arc::new(AtomicUsize::new(0)),
            next_snapshot: AtomicU64::new(1),
            snapshot_threads: Mutex::new(Vec::new()),
        });
        let inputs = Inputs {
            reader_rx,
            notice_rx,
            outputs: Outputs {
                messages: messages_tx,
                proposals: proposals_tx,
                appends: appends_tx,
                snapshots: snapshots_tx,
                wake_tx: reader_tx,
                recycler,
            },
        };
        if let Err(e) = rt.spawn_threads(event_loop, inputs) {
            rt.shutdown();
            return Err(Error::Io(e));
        }
        log::debug!(
            "node {}: listening on {}, checksum kernel {}",
            rt.shared.config.node_id,
            rt.local_addr,
            crate::wire::crc::implementation()
        );
        Ok(rt)
    }

    fn spawn(&self, role: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let t = std::thread::Builder::new()
            .name(format!("raftwire{}-{role}", self.instance))
            .spawn(f)?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t);
        Ok(())
    }

    fn spawn_threads(
        self: &Arc<Self>,
        event_loop: EventLoop,
        inputs: Inputs<M>,
    ) -> std::io::Result<()> {
        self.spawn("loop", move || event_loop.run())?;
        let reader = Reader::new(
            self.shared.clone(),
            self.reporter.clone(),
            inputs.reader_rx,
            self.loop_handle.clone(),
            inputs.outputs,
            self.stop_rx.clone(),
        );
        self.spawn("reader", move || reader.run())?;
        let shared = self.shared.clone();
        let notifier = Notifier::new(
            self.reporter.clone(),
            inputs.notice_rx,
            self.stop_rx.clone(),
            self.shared.config.unreachable_report_interval,
            Box::new(move |id| {
                if let Some(p) = shared.peers.shared(id) {
                    p.notice_pending.store(false, Release);
                }
            }),
        );
        self.spawn("notify", move || notifier.run())
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn accounts(&self) -> &Accounts {
        &self.shared.accounts
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Acquire)
    }

    /// Starts a peer's writers and tells the loop to dial it.
    pub fn spawn_peer(
        &self,
        id: u64,
        addrs: Vec<SocketAddr>,
        kind: PeerKind,
    ) -> std::io::Result<Arc<PeerEntry<M>>> {
        let config = &self.shared.config;
        let shared = Arc::new(PeerShared {
            id,
            ..PeerShared::default()
        });
        let (close_tx, close_rx) = crossbeam_channel::bounded::<()>(0);
        let queues = PerLane::new(|lane| {
            let (tx, rx) = crossbeam_channel::bounded(config.send_queue_len);
            let (ret_tx, ret_rx) =
                crossbeam_channel::bounded::<Returned>(config.max_inflight_batches);
            let max_bytes = match lane {
                QueuedLane::Message => config.message_queue_bytes,
                QueuedLane::Append => config.append_queue_bytes,
            } as u64;
            (LaneQueue { tx, max_bytes }, rx, ret_tx, ret_rx)
        });
        let returns = queues.map(|_, q| q.2.clone());
        let entry = Arc::new(PeerEntry {
            id,
            shared: shared.clone(),
            queues: queues.map(|_, q| LaneQueue {
                tx: q.0.tx.clone(),
                max_bytes: q.0.max_bytes,
            }),
            kind: Mutex::new(kind),
            close: Mutex::new(Some(close_tx)),
            writers: Mutex::new(Vec::new()),
            direct: std::sync::OnceLock::new(),
        });
        self.loop_handle.send(LoopCmd::AddPeer {
            id,
            addrs,
            peer: shared.clone(),
            returns,
        });
        let mut writers = Vec::new();
        for (lane, q) in queues.iter() {
            let ctx = WriterCtx {
                peer_id: id,
                peer: shared.clone(),
                lane,
                returns: q.3.clone(),
                close: close_rx.clone(),
                stop: self.stop_rx.clone(),
                loop_handle: self.loop_handle.clone(),
                accounts: self.shared.accounts.clone(),
                config: config.clone(),
            };
            let mut w = Writer::<M>::new(ctx, q.1.clone());
            if lane == QueuedLane::Message && config.direct_send {
                entry.set_direct(w.share());
            }
            let spawned = std::thread::Builder::new()
                .name(format!(
                    "raftwire{}-w{id}{}",
                    self.instance,
                    &lane.lane().name()[..1]
                ))
                .spawn(move || w.run());
            match spawned {
                Ok(h) => writers.push(h),
                Err(e) => {
                    *entry.writers.lock().unwrap_or_else(|p| p.into_inner()) = writers;
                    self.loop_handle.send(LoopCmd::RemovePeer { id });
                    entry.finish();
                    return Err(e);
                }
            }
        }
        *entry.writers.lock().unwrap_or_else(|p| p.into_inner()) = writers;
        Ok(entry)
    }

    /// Queues one message on its lane, or starts its snapshot (a
    /// snapshot-class message), or gives it back with the reason.
    pub fn route(&self, peers: &PeerMap<Arc<PeerEntry<M>>>, m: M) -> Result<(), SendError<M>> {
        if self.stopped.load(Relaxed) {
            return Err(SendError::Stopped(m));
        }
        let Some(lane) = m.class().lane().queued() else {
            return self.start_inline_snapshot(peers, m);
        };
        let to = m.to();
        if m.is_local_only() {
            return Err(SendError::LocalOnly(m));
        }
        if to == self.shared.config.node_id {
            return Err(SendError::ToSelf(m));
        }
        let Some(peer) = peers.get(&to) else {
            return Err(SendError::UnknownPeer(m));
        };
        if peer.shared.paused.load(Relaxed) {
            return Err(SendError::Paused(m));
        }
        let len = m.encoded_len() as u64;
        if len > self.shared.config.max_frame_len as u64 {
            return Err(SendError::TooLarge(m));
        }
        peer.enqueue(m, lane, len)
    }

    /// Counts, logs and reports a message `send` could not route.
    pub fn record_send_drop(&self, peers: &PeerMap<Arc<PeerEntry<M>>>, e: &SendError<M>) {
        let (m, reason) = (e.message(), e.reason());
        let to = m.to();
        let peer = peers.get(&to).map(|p| &*p.shared);
        let incident = match m.class().lane().queued() {
            None => Incident::SnapshotNotSent { to, reason },
            Some(_) if peer.is_none() || is_transport_wide(e) => Incident::Refused { to, reason },
            Some(lane) => Incident::Dropped { lane, reason, n: 1 },
        };
        self.shared.accounts.note(peer, incident);
    }

    /// Checks whether a snapshot to `peer` may start now, and takes an
    /// outgoing slot if so.
    fn snapshot_preflight(
        &self,
        peer: Option<&PeerEntry<M>>,
        m: M,
        size: u64,
        inline: bool,
    ) -> Result<(M, Arc<PeerShared>), SendError<M>> {
        let cfg = &self.shared.config;
        if self.stopped.load(Acquire) {
            return Err(SendError::Stopped(m));
        }
        if m.is_local_only() {
            return Err(SendError::LocalOnly(m));
        }
        if m.to() == cfg.node_id {
            return Err(SendError::ToSelf(m));
        }
        let Some(peer) = peer else {
            return Err(SendError::UnknownPeer(m));
        };
        if peer.shared.paused.load(Relaxed) {
            return Err(SendError::Paused(m));
        }
        let limit = if inline {
            cfg.max_inline_snapshot_len as u64
        } else {
            cfg.max_snapshot_len
        };
        if size > limit {
            return Err(SendError::TooLarge(m));
        }
        if self.outgoing_snapshots.fetch_add(1, AcqRel) >= cfg.max_outgoing_snapshots {
            self.outgoing_snapshots.fetch_sub(1, AcqRel);
            return Err(SendError::Full(m));
        }
        Ok((m, peer.shared.clone()))
    }

    fn start_inline_snapshot(
        &self,
        peers: &PeerMap<Arc<PeerEntry<M>>>,
        m: M,
    ) -> Result<(), SendError<M>> {
        let size = m.encoded_len() as u64;
        let peer = peers.get(&m.to()).map(|p| &**p);
        let (m, shared) = self.snapshot_preflight(peer, m, size, true)?;
        self.spawn_snapshot(shared, move |job| {
            let mut bytes = Vec::with_capacity(m.encoded_len());
            m.encode(&mut bytes);
            job.size = bytes.len() as u64;
            job.data = Box::new(std::io::Cursor::new(bytes));
            job.message = None;
        });
        Ok(())
    }

    /// Streams `size` bytes of `data` after `msg`; see
    /// `Transport::send_snapshot`.
    pub fn send_snapshot<R: Read + Send + 'static>(
        &self,
        msg: M,
        data: R,
        size: u64,
    ) -> Result<(), SendError<M>> {
        let peer = self.shared.peers.get(msg.to());
        let (msg, shared) = self.snapshot_preflight(peer.as_deref(), msg, size, false)?;
        let mut message = Vec::with_capacity(msg.encoded_len());
        msg.encode(&mut message);
        self.spawn_snapshot(shared, move |job| {
            job.message = Some(message);
            job.data = Box::new(data);
            job.size = size;
        });
        Ok(())
    }

    /// Starts a snapshot sender thread; `fill` sets the job's data on that
    /// thread. The outgoing slot taken by the preflight is released by the
    /// thread (or here, if it cannot start).
    fn spawn_snapshot(
        &self,
        peer: Arc<PeerShared>,
        fill: impl FnOnce(&mut SendJob) + Send + 'static,
    ) {
        let to = peer.id;
        let mut job = SendJob {
            snap: self.next_snapshot.fetch_add(1, Relaxed),
            to,
            size: 0,
            message: None,
            data: Box::new(std::io::empty()),
            config: self.shared.config.clone(),
            loop_handle: self.loop_handle.clone(),
            reporter: self.reporter.clone(),
            peer,
            accounts: self.shared.accounts.clone(),
            stop: self.stop_rx.clone(),
            outgoing: self.outgoing_snapshots.clone(),
        };
        let shared = job.peer.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("raftwire{}-snap{to}", self.instance))
            .spawn(move || {
                fill(&mut job);
                run_sender(job)
            });
        let mut threads = self
            .snapshot_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                self.outgoing_snapshots.fetch_sub(1, AcqRel);
                let failure = SnapshotFailure::NoThread(e.kind());
                let failed = Incident::SnapshotSendFailed {
                    to,
                    size: None,
                    failure: &failure,
                };
                self.shared.accounts.note(Some(&shared), failed);
                let failure = crate::reporter::SnapshotStatus::Failure;
                self.shared.accounts.notify(Notice::Snapshot(to, failure));
            }
        }
    }

    /// Stops everything and joins every thread. Idempotent.
    pub fn shutdown(&self) {
        // Whoever stops first holds this lock until every thread is joined; a
        // concurrent stop() waits here and then finds the work done.
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped.swap(true, AcqRel) {
            return;
        }
        self.stop_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Snapshot senders see the stop, report Failure and end.
        let snaps = std::mem::take(
            &mut *self
                .snapshot_threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let me = std::thread::current().id();
        for t in snaps {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        self.loop_handle.send(LoopCmd::Stop);
        // Peers stay in the table so that `stats()` still shows them.
        for p in self.shared.peers.all() {
            p.finish();
        }
        for t in threads.drain(..) {
            // stop() called from a reporter callback must not join its own thread.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// Refusals that `send` counts transport-wide even for a peer's id.
fn is_transport_wide<M>(e: &SendError<M>) -> bool {
    matches!(
        e,
        SendError::UnknownPeer(_)
            | SendError::ToSelf(_)
            | SendError::LocalOnly(_)
            | SendError::Stopped(_)
    )
}
