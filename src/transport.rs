//! The handle users hold: send, receive channels, membership, stats, stop.

use crate::config::Config;
use crate::error::{DropReason, Error, SendError};
use crate::io::event_loop::EventLoop;
use crate::io::notify::Notifier;
use crate::io::reader::{Outputs, Reader};
use crate::io::writer::{Writer, WriterCtx};
use crate::io::{LoopCmd, LoopHandle, Notice, PeerLink, Queued, Returned};
use crate::message::MessageClass;
use crate::message::{Envelope, Message};
use crate::reporter::Reporter;
use crate::reporter::SnapshotStatus;
use crate::snapshot::{IncomingSnapshot, SendJob, encode_inline, run_sender};
use crate::stats::{GlobalCounters, PeerCounters, Stats, rate_limit};
use crate::wire::Lane;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, warn};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Peers by node id. Every `send` looks its target up here, so the id is
/// hashed with one multiplication instead of SipHash: the keys are node
/// ids the application added, not attacker-chosen, and lookups of other
/// ids cost no more than the chains of the few keys present.
pub(crate) type PeerMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A multiplicative hash for `u64` ids (Fibonacci hashing, halves swapped
/// so that both the bucket bits and the tag bits are well mixed).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One lane's send queue: bounded in messages by the channel and in bytes
/// by an atomic counter.
pub(crate) struct LaneQueue<M> {
    tx: Sender<Queued<M>>,
    max_bytes: u64,
}

/// Whether an id is a member or a remote (a not-yet-member being caught up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    Member,
    Remote,
}

/// Everything the sending side knows about one peer.
pub(crate) struct PeerHandle<M> {
    pub id: u64,
    lanes: [LaneQueue<M>; 2],
    pub link: Arc<PeerLink>,
    pub paused: AtomicBool,
    kind: Mutex<PeerKind>,
    /// Set when an unreachable notice is on its way to the notifier, so a
    /// burst of drops sends one notice, not one per message.
    pub notice_pending: Arc<AtomicBool>,
    /// Dropping this sender tells the peer's writers to finish.
    close: Mutex<Option<Sender<()>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
}

impl<M> PeerHandle<M> {
    pub fn counters(&self) -> &PeerCounters {
        &self.link.counters
    }
}

pub(crate) struct Inner<M> {
    pub config: Config,
    pub epoch: Instant,
    local_addr: SocketAddr,
    pub peers: RwLock<PeerMap<Arc<PeerHandle<M>>>>,
    pub stopped: AtomicBool,
    pub global: Arc<GlobalCounters>,
    pub non_peers: Arc<PeerCounters>,
    loop_handle: LoopHandle,
    notice_tx: Sender<Notice>,
    messages_rx: Receiver<M>,
    proposals_rx: Receiver<M>,
    appends_rx: Receiver<M>,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    instance: u64,
    snapshots_rx: Receiver<IncomingSnapshot<M>>,
    reporter: Arc<dyn Reporter>,
    outgoing_snapshots: Arc<AtomicUsize>,
    next_snapshot: AtomicU64,
    snapshot_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<M> Inner<M> {
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// A running transport. Cheap to clone; every clone drives the same
/// threads and sockets, and the handle is `Send + Sync`, so any number of
/// threads may send. The transport stops when [`stop`](Transport::stop) is
/// called or the last clone is dropped.
pub struct Transport<M: Message = Envelope> {
    inner: Arc<Inner<M>>,
    _guard: Arc<StopGuard<M>>,
}

impl<M: Message> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            inner: self.inner.clone(),
            _guard: self._guard.clone(),
        }
    }
}

impl<M: Message> std::fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<u64> = {
            let map = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<u64> = map.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        f.debug_struct("Transport")
            .field("node_id", &self.inner.config.node_id)
            .field("local_addr", &self.inner.local_addr)
            .field("peers", &peers)
            .field("stopped", &self.inner.stopped.load(Acquire))
            .finish_non_exhaustive()
    }
}

/// Stops the transport when the last user handle goes away (threads hold
/// `Inner`, not the guard).
struct StopGuard<M: Message>(Arc<Inner<M>>);

impl<M: Message> Drop for StopGuard<M> {
    fn drop(&mut self) {
        shutdown(&self.0);
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(1);

impl<M: Message> Transport<M> {
    /// Binds the listener and starts the event loop, reader and notifier
    /// threads. Peers are added afterwards with [`add_peer`](Transport::add_peer).
    pub fn start(config: Config, reporter: impl Reporter) -> Result<Transport<M>, Error> {
        config.validate()?;
        let reporter: Arc<dyn Reporter> = Arc::new(reporter);
        let instance = INSTANCES.fetch_add(1, Relaxed);
        let epoch = Instant::now();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (notice_tx, notice_rx) = crossbeam_channel::unbounded();
        let (reader_tx, reader_rx) = crossbeam_channel::unbounded();
        let (messages_tx, messages_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (proposals_tx, proposals_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (appends_tx, appends_rx) = crossbeam_channel::bounded(config.recv_queue_len);
        let (snapshots_tx, snapshots_rx) =
            crossbeam_channel::bounded(config.max_incoming_snapshots);
        let wake_tx = reader_tx.clone();
        let global = Arc::new(GlobalCounters::default());
        let non_peers = Arc::new(PeerCounters::default());

        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(crate::tls::TlsContext::build(
                t,
                config.cluster_id,
            )?)),
            None => None,
        };
        // Receive buffers the reader is done with, back to the loop.
        let (recycler, pools) = crate::io::buffer_pools(&config);
        let event_loop = EventLoop::bind(
            config.clone(),
            epoch,
            reader_tx,
            notice_tx.clone(),
            global.clone(),
            pools,
            #[cfg(feature = "tls")]
            tls,
        )
        .map_err(Error::Io)?;
        let local_addr = event_loop.local_addr();
        let loop_handle = event_loop.handle();

        let inner = Arc::new(Inner {
            config: config.clone(),
            epoch,
            local_addr,
            peers: RwLock::new(PeerMap::default()),
            stopped: AtomicBool::new(false),
            global: global.clone(),
            non_peers: non_peers.clone(),
            loop_handle: loop_handle.clone(),
            notice_tx,
            messages_rx,
            proposals_rx,
            appends_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx: stop_rx.clone(),
            threads: Mutex::new(Vec::new()),
            instance,
            snapshots_rx,
            reporter: reporter.clone(),
            outgoing_snapshots: Arc::new(AtomicUsize::new(0)),
            next_snapshot: AtomicU64::new(1),
            snapshot_threads: Mutex::new(Vec::new()),
        });

        let mut threads = Vec::new();
        let spawn = |role: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("raftwire{instance}-{role}"))
                .spawn(f)
        };
        let started = (|| -> std::io::Result<()> {
            threads.push(spawn("loop", Box::new(move || event_loop.run()))?);
            let reader = Reader::new(
                inner.clone(),
                reporter.clone(),
                reader_rx,
                loop_handle.clone(),
                Outputs {
                    messages: messages_tx,
                    proposals: proposals_tx,
                    appends: appends_tx,
                    snapshots: snapshots_tx,
                    wake_tx,
                    recycler,
                },
                stop_rx.clone(),
            );
            threads.push(spawn("reader", Box::new(move || reader.run()))?);
            let notifier = Notifier::new(
                reporter,
                notice_rx,
                stop_rx,
                config.unreachable_report_interval,
                {
                    let inner = inner.clone();
                    Box::new(move |id| {
                        if let Some(p) = inner
                            .peers
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&id)
                        {
                            p.notice_pending.store(false, Release);
                        }
                    })
                },
            );
            threads.push(spawn("notify", Box::new(move || notifier.run()))?);
            Ok(())
        })();
        *inner.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        if let Err(e) = started {
            shutdown(&inner);
            return Err(Error::Io(e));
        }
        Ok(Transport {
            _guard: Arc::new(StopGuard(inner.clone())),
            inner,
        })
    }

    /// The address the listener is bound to (the real port when the
    /// configured port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// The configuration the transport runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Queues messages for their peers (routed by `to`) and returns at once.
    /// A message that cannot be queued (full queue, unknown peer, paused
    /// peer, too large, local-only, stopped) is dropped and counted; for
    /// drops that mean the peer is not being reached (full, paused, too
    /// large) the reporter is told `report_unreachable(to)`, coalesced per
    /// peer.
    pub fn send(&self, msgs: impl IntoIterator<Item = M>) {
        let inner = &self.inner;
        let peers = inner.peers.read().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            let to = m.to();
            if m.class() == MessageClass::Snapshot {
                // Inline snapshots take the snapshot path; a refusal is
                // reported as a failed snapshot.
                if let Err(e) = start_inline_snapshot(inner, &peers, m) {
                    record_send_drop(inner, peers.get(&to).map(|p| &**p), to, &e);
                    if !matches!(e, SendError::Stopped(_)) {
                        let _ = inner
                            .notice_tx
                            .send(Notice::Snapshot(to, SnapshotStatus::Failure));
                    }
                }
                continue;
            }
            if let Err(e) = enqueue(inner, &peers, m) {
                record_send_drop(inner, peers.get(&to).map(|p| &**p), to, &e);
            }
        }
    }

    /// Streams a snapshot to `msg.to()` on a connection of its own: `msg`
    /// goes first (for raft: the `MsgSnapshot`, its data left out), then
    /// `size` bytes read from `data`, in chunks, in constant memory, while
    /// the peer's message and append lanes keep flowing.
    ///
    /// Every call that returns `Ok` ends in exactly one
    /// `Reporter::report_snapshot(to, ..)`: `Finish` once the receiver has
    /// read and verified every byte, `Failure` otherwise (size mismatch
    /// either way, checksum, connection lost, timeouts, peer removed or
    /// paused or unknown, receiver refused, too many snapshots at once,
    /// transport stopped). Only a call after `stop` returns an error, and
    /// is not reported.
    ///
    /// `data` is read on a thread of the transport; a source that blocks
    /// forever keeps that thread (and `stop`) waiting.
    pub fn send_snapshot<R: Read + Send + 'static>(
        &self,
        msg: M,
        data: R,
        size: u64,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let to = msg.to();
        let peers = inner.peers.read().unwrap_or_else(|e| e.into_inner());
        let peer = peers.get(&to).cloned();
        drop(peers);
        let check = snapshot_preflight(inner, peer.as_deref(), msg, size, false);
        match check {
            Err(SendError::Stopped(_)) => Err(Error::Stopped),
            Err(e) => {
                record_send_drop(inner, peer.as_deref(), to, &e);
                let _ = inner
                    .notice_tx
                    .send(Notice::Snapshot(to, SnapshotStatus::Failure));
                Ok(())
            }
            Ok((msg, counters)) => {
                let mut message = Vec::with_capacity(msg.encoded_len());
                msg.encode(&mut message);
                spawn_snapshot(inner, to, counters, move |job| {
                    job.message = Some(message);
                    job.data = Box::new(data);
                    job.size = size;
                });
                Ok(())
            }
        }
    }

    /// Snapshots arriving from peers, each with a reader over its data.
    /// (Snapshot-class messages that carried their data inline arrive on
    /// [`messages`](Transport::messages) instead, once complete.)
    pub fn snapshots(&self) -> &Receiver<IncomingSnapshot<M>> {
        &self.inner.snapshots_rx
    }

    /// Queues one message, or gives it back with the reason it cannot be
    /// queued. A refused message is not counted as a drop and not reported:
    /// the caller has it back.
    /// A snapshot-class message starts its snapshot stream (see
    /// [`send_snapshot`](Transport::send_snapshot)); `Full` then means
    /// `max_outgoing_snapshots` are already in flight.
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        if msg.class() == MessageClass::Snapshot {
            return start_inline_snapshot(&self.inner, &peers, msg);
        }
        enqueue(&self.inner, &peers, msg)
    }

    /// Received messages other than proposals (etcd's `recvc`). Poll it, or
    /// `select!` over it with your own channels.
    pub fn messages(&self) -> &Receiver<M> {
        &self.inner.messages_rx
    }

    /// Received proposals (`MessageClass::Proposal`, etcd's `propc`).
    pub fn proposals(&self) -> &Receiver<M> {
        &self.inner.proposals_rx
    }

    /// Received appends (`MessageClass::Append`) when
    /// [`Config::separate_appends`] is set; otherwise they arrive on
    /// [`messages`](Transport::messages) and this channel stays empty.
    ///
    /// ```
    /// # use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), raftwire::Error> {
    /// let mut config = Config::new(2, "127.0.0.1:0".parse().unwrap());
    /// config.separate_appends = true;
    /// let node: Transport<Envelope> = Transport::start(config, NoopReporter)?;
    /// // A Raft loop that takes heartbeats and votes before appends:
    /// let next = node.messages().try_recv().ok().or_else(|| {
    ///     crossbeam_channel::select! {
    ///         recv(node.messages()) -> m => m.ok(),
    ///         recv(node.appends()) -> m => m.ok(),
    ///         default(Duration::from_millis(10)) => None,
    ///     }
    /// });
    /// assert!(next.is_none()); // nobody has sent anything yet
    /// node.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn appends(&self) -> &Receiver<M> {
        &self.inner.appends_rx
    }

    /// Adds a cluster member and starts dialing it (both lanes), with
    /// backoff, forever, until it is removed. Adding an id that is a remote
    /// promotes it to a member and takes the new addresses.
    pub fn add_peer<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        self.add(id, addrs, PeerKind::Member)
    }

    /// Adds a remote: a node that is not (yet) a member but must be caught
    /// up, such as a member being added. It is sent to like a peer but is
    /// not listed by [`active_peers`](Transport::active_peers). Adding an id
    /// that is already a peer or remote does nothing.
    pub fn add_remote<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        match self.add(id, addrs, PeerKind::Remote) {
            Err(Error::DuplicatePeer(_)) => Ok(()),
            r => r,
        }
    }

    fn add<A: ToString>(&self, id: u64, addrs: &[A], kind: PeerKind) -> Result<(), Error> {
        let inner = &self.inner;
        self.check_running()?;
        if id == 0 || id == inner.config.node_id {
            return Err(Error::InvalidPeerId(id));
        }
        let addrs = resolve(&self.inner.config, id, addrs)?;
        let mut peers = inner.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.get(&id) {
            let mut k = p.kind.lock().unwrap_or_else(|e| e.into_inner());
            if kind == PeerKind::Member && *k == PeerKind::Remote {
                *k = PeerKind::Member;
                drop(k);
                inner.loop_handle.send(LoopCmd::UpdatePeer { id, addrs });
                return Ok(());
            }
            return Err(Error::DuplicatePeer(id));
        }
        let handle = spawn_peer(inner, id, addrs, kind).map_err(Error::Io)?;
        peers.insert(id, handle);
        Ok(())
    }

    /// Removes a peer or remote: closes its connections and ends its
    /// writers; messages still queued for it are dropped and counted in
    /// [`Stats::dropped_removed`] (the peer's own entry leaves `stats()`). Inbound connections from it are not refused by this
    /// alone: make [`Reporter::is_id_removed`] say so.
    pub fn remove_peer(&self, id: u64) -> Result<(), Error> {
        self.check_running()?;
        let handle = self
            .inner
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .ok_or(Error::UnknownPeer(id))?;
        self.inner.loop_handle.send(LoopCmd::RemovePeer { id });
        let _ = self.inner.notice_tx.send(Notice::Forget(id));
        finish_peer(&handle);
        // The peer's entry leaves stats(); keep its last drops visible.
        let removed: u64 = handle
            .counters()
            .lanes
            .iter()
            .map(|l| l.drops[DropReason::Removed.index()].load(Relaxed))
            .sum();
        self.inner
            .global
            .dropped_removed
            .fetch_add(removed, Relaxed);
        Ok(())
    }

    /// Replaces a peer's addresses. Connections to an address that is no
    /// longer listed are closed and redialed at the new ones.
    pub fn update_peer<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        self.check_running()?;
        let addrs = resolve(&self.inner.config, id, addrs)?;
        if !self.peer_exists(id) {
            return Err(Error::UnknownPeer(id));
        }
        self.inner
            .loop_handle
            .send(LoopCmd::UpdatePeer { id, addrs });
        Ok(())
    }

    /// Since when the peer's message lane has been connected, or `None`
    /// while it is not (etcd's `ActiveSince`).
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&id)
            .and_then(|p| active_since(&self.inner, &p.link))
    }

    /// Members (not remotes) whose message lane is connected, sorted.
    pub fn active_peers(&self) -> Vec<u64> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u64> = peers
            .values()
            .filter(|p| *p.kind.lock().unwrap_or_else(|e| e.into_inner()) == PeerKind::Member)
            .filter(|p| p.link.connected[0].load(Acquire) != 0)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every member and remote id, sorted.
    pub fn peers(&self) -> Vec<u64> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u64> = peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops traffic with a peer: messages to it are dropped (counted as
    /// `paused`, reported unreachable) and messages from it are dropped on
    /// receipt (counted). Connections stay up. Used to simulate partitions.
    pub fn pause(&self, id: u64) -> Result<(), Error> {
        self.set_paused(id, true)
    }

    /// Undoes [`pause`](Transport::pause).
    pub fn resume(&self, id: u64) -> Result<(), Error> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: u64, paused: bool) -> Result<(), Error> {
        self.check_running()?;
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        let p = peers.get(&id).ok_or(Error::UnknownPeer(id))?;
        p.paused.store(paused, Release);
        Ok(())
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let g = &inner.global;
        let peers = inner.peers.read().unwrap_or_else(|e| e.into_inner());
        Stats {
            peers: peers
                .iter()
                .map(|(id, p)| {
                    let since = Lane::QUEUED.map(|l| lane_since(inner, &p.link, l));
                    (*id, p.counters().snapshot(since))
                })
                .collect(),
            non_peers: inner.non_peers.snapshot([None, None]),
            dropped_unknown_peer: g.dropped_unknown_peer.load(Relaxed),
            dropped_to_self: g.dropped_to_self.load(Relaxed),
            dropped_stopped: g.dropped_stopped.load(Relaxed),
            dropped_local_only: g.dropped_local_only.load(Relaxed),
            dropped_removed: g.dropped_removed.load(Relaxed),
            inbound_accepted: g.inbound_accepted.load(Relaxed),
            inbound_rejected: g.inbound_rejected.load(Relaxed),
            protocol_errors: g.protocol_errors.load(Relaxed),
            handshake_timeouts: g.handshake_timeouts.load(Relaxed),
            connections: g.connections.load(Relaxed),
            inbound_evicted: g.inbound_evicted.load(Relaxed),
            inbound_refused: g.inbound_refused.load(Relaxed),
            tls: g.tls.snapshot(),
            accept_errors: g.accept_errors.load(Relaxed),
        }
    }

    /// Stops the transport: closes every socket and the listener, ends and
    /// joins every thread, and drops what is still queued (counted as
    /// `stopped`). Later calls return [`Error::Stopped`]; `send` drops.
    /// Idempotent; also done when the last handle is dropped.
    pub fn stop(&self) {
        shutdown(&self.inner);
    }

    /// Whether [`stop`](Transport::stop) has been called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Acquire)
    }

    /// The prefix of every thread name of this transport (`raftwire<N>-`),
    /// for tests that check no thread outlives `stop`.
    pub fn thread_name_prefix(&self) -> String {
        format!("raftwire{}-", self.inner.instance)
    }

    /// Replaces this node's TLS certificate chain, key and CAs (feature
    /// `tls`): connections made from now on, in both directions, use the
    /// new ones; open connections keep their session. The new
    /// configuration is checked first (an unreadable key, a key that does
    /// not match the certificate, no CA): on error nothing changes.
    ///
    /// A transport started without TLS cannot switch to it
    /// ([`Error::Tls`]).
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self, tls: crate::tls::TlsConfig) -> Result<(), Error> {
        self.check_running()?;
        if !self.inner.config.has_tls() {
            return Err(Error::Tls(
                "this transport was started without TLS; TLS cannot be turned on while it runs"
                    .into(),
            ));
        }
        let ctx = crate::tls::TlsContext::build(&tls, self.inner.config.cluster_id)?;
        self.inner
            .loop_handle
            .send(LoopCmd::ReloadTls(Arc::new(ctx)));
        Ok(())
    }

    fn check_running(&self) -> Result<(), Error> {
        if self.inner.stopped.load(Acquire) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    fn peer_exists(&self, id: u64) -> bool {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }
}

fn active_since<M>(inner: &Inner<M>, link: &PeerLink) -> Option<Instant> {
    lane_since(inner, link, Lane::Message)
}

fn lane_since<M>(inner: &Inner<M>, link: &PeerLink, lane: Lane) -> Option<Instant> {
    match link.connected[lane.index()].load(Acquire) {
        0 => None,
        ns => Some(inner.epoch + Duration::from_nanos(ns - 1)),
    }
}

fn resolve<A: ToString>(config: &Config, peer: u64, addrs: &[A]) -> Result<Vec<SocketAddr>, Error> {
    if addrs.is_empty() {
        return Err(Error::NoAddresses { peer });
    }
    let mut out = Vec::new();
    for a in addrs {
        let s = a.to_string();
        let resolved = s.to_socket_addrs().map_err(|e| Error::BadAddress {
            peer,
            addr: s.clone(),
            reason: e.to_string(),
        })?;
        let before = out.len();
        out.extend(resolved);
        if let Some(open) = out[before..]
            .iter()
            .find(|a| !config.plaintext_allowed(**a))
        {
            return Err(Error::BadAddress {
                peer,
                addr: s,
                reason: format!(
                    "{open} is not a loopback address and this transport runs without TLS \
                     (set Config::tls, or Config::insecure_plaintext if the network is trusted)"
                ),
            });
        }
        if out.len() == before {
            return Err(Error::BadAddress {
                peer,
                addr: s,
                reason: "resolved to no address".into(),
            });
        }
    }
    Ok(out)
}

fn spawn_peer<M: Message>(
    inner: &Arc<Inner<M>>,
    id: u64,
    addrs: Vec<SocketAddr>,
    kind: PeerKind,
) -> std::io::Result<Arc<PeerHandle<M>>> {
    let config = &inner.config;
    let link = Arc::new(PeerLink {
        counters: Arc::new(PeerCounters::default()),
        connected: Default::default(),
    });
    let (close_tx, close_rx) = crossbeam_channel::bounded::<()>(0);
    let mut queues = Vec::new();
    let mut rxs = Vec::new();
    let mut rets = Vec::new();
    for lane in Lane::QUEUED {
        let (tx, rx) = crossbeam_channel::bounded(config.send_queue_len);
        queues.push(LaneQueue {
            tx,
            max_bytes: config.queue_bytes(lane) as u64,
        });
        rxs.push(rx);
        rets.push(crossbeam_channel::bounded::<Returned>(
            config.max_inflight_batches,
        ));
    }
    let [q0, q1]: [LaneQueue<M>; 2] = queues.try_into().ok().expect("two lanes");
    let handle = Arc::new(PeerHandle {
        id,
        lanes: [q0, q1],
        link: link.clone(),
        paused: AtomicBool::new(false),
        kind: Mutex::new(kind),
        notice_pending: Arc::new(AtomicBool::new(false)),
        close: Mutex::new(Some(close_tx)),
        writers: Mutex::new(Vec::new()),
    });
    let returns = [rets[0].0.clone(), rets[1].0.clone()];
    inner.loop_handle.send(LoopCmd::AddPeer {
        id,
        addrs,
        link,
        returns,
    });
    let mut writers = Vec::new();
    for (lane, (rx, (_, ret_rx))) in Lane::QUEUED.into_iter().zip(rxs.into_iter().zip(rets)) {
        let ctx = WriterCtx {
            peer: id,
            lane,
            queue: rx,
            returns: ret_rx,
            close: close_rx.clone(),
            stop: inner.stop_rx.clone(),
            loop_handle: inner.loop_handle.clone(),
            notice_tx: inner.notice_tx.clone(),
            notice_pending: handle.notice_pending.clone(),
            counters: handle.link.counters.clone(),
            config: config.clone(),
            epoch: inner.epoch,
        };
        let w = Writer::<M>::new(ctx);
        let spawned = std::thread::Builder::new()
            .name(format!(
                "raftwire{}-w{id}{}",
                inner.instance,
                &lane.name()[..1]
            ))
            .spawn(move || w.run());
        match spawned {
            Ok(h) => writers.push(h),
            Err(e) => {
                *handle.writers.lock().unwrap_or_else(|p| p.into_inner()) = writers;
                inner.loop_handle.send(LoopCmd::RemovePeer { id });
                finish_peer(&handle);
                return Err(e);
            }
        }
    }
    *handle.writers.lock().unwrap_or_else(|p| p.into_inner()) = writers;
    Ok(handle)
}

/// Ends a removed peer's writers and waits for them.
fn finish_peer<M>(handle: &PeerHandle<M>) {
    handle
        .close
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let writers = std::mem::take(&mut *handle.writers.lock().unwrap_or_else(|e| e.into_inner()));
    for w in writers {
        let _ = w.join();
    }
}

/// Checks whether a snapshot to `peer` may start now, and takes an
/// outgoing slot if so.
fn snapshot_preflight<M: Message>(
    inner: &Inner<M>,
    peer: Option<&PeerHandle<M>>,
    m: M,
    size: u64,
    inline: bool,
) -> Result<(M, Arc<PeerCounters>), SendError<M>> {
    let cfg = &inner.config;
    if inner.stopped.load(Acquire) {
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
    if peer.paused.load(Relaxed) {
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
    if inner.outgoing_snapshots.fetch_add(1, AcqRel) >= cfg.max_outgoing_snapshots {
        inner.outgoing_snapshots.fetch_sub(1, AcqRel);
        return Err(SendError::Full(m));
    }
    Ok((m, peer.link.counters.clone()))
}

fn start_inline_snapshot<M: Message>(
    inner: &Arc<Inner<M>>,
    peers: &PeerMap<Arc<PeerHandle<M>>>,
    m: M,
) -> Result<(), SendError<M>> {
    let size = m.encoded_len() as u64;
    let (m, counters) = snapshot_preflight(inner, peers.get(&m.to()).map(|p| &**p), m, size, true)?;
    let to = m.to();
    spawn_snapshot(inner, to, counters, move |job| {
        let bytes = encode_inline(&m);
        job.size = bytes.len() as u64;
        job.data = Box::new(std::io::Cursor::new(bytes));
        job.message = None;
    });
    Ok(())
}

/// Starts a snapshot sender thread; `fill` sets the job's data on that
/// thread. The outgoing slot taken by the preflight is released by the
/// thread (or here, if it cannot start).
fn spawn_snapshot<M: Message>(
    inner: &Arc<Inner<M>>,
    to: u64,
    counters: Arc<PeerCounters>,
    fill: impl FnOnce(&mut SendJob) + Send + 'static,
) {
    let mut job = SendJob {
        snap: inner.next_snapshot.fetch_add(1, Relaxed),
        peer: to,
        size: 0,
        message: None,
        data: Box::new(std::io::empty()),
        config: inner.config.clone(),
        loop_handle: inner.loop_handle.clone(),
        reporter: inner.reporter.clone(),
        counters,
        stop: inner.stop_rx.clone(),
        outgoing: inner.outgoing_snapshots.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("raftwire{}-snap{to}", inner.instance))
        .spawn(move || {
            fill(&mut job);
            run_sender(job)
        });
    let mut threads = inner
        .snapshot_threads
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| !t.is_finished());
    match spawned {
        Ok(t) => threads.push(t),
        Err(e) => {
            inner.outgoing_snapshots.fetch_sub(1, AcqRel);
            warn!(
                "node {}: cannot start a snapshot thread: {e}",
                inner.config.node_id
            );
            let _ = inner
                .notice_tx
                .send(Notice::Snapshot(to, SnapshotStatus::Failure));
        }
    }
}

fn enqueue<M: Message>(
    inner: &Inner<M>,
    peers: &PeerMap<Arc<PeerHandle<M>>>,
    m: M,
) -> Result<(), SendError<M>> {
    if inner.stopped.load(Relaxed) {
        return Err(SendError::Stopped(m));
    }
    let to = m.to();
    if m.is_local_only() {
        return Err(SendError::LocalOnly(m));
    }
    if to == inner.config.node_id {
        return Err(SendError::ToSelf(m));
    }
    let Some(peer) = peers.get(&to) else {
        return Err(SendError::UnknownPeer(m));
    };
    if peer.paused.load(Relaxed) {
        return Err(SendError::Paused(m));
    }
    let len = m.encoded_len() as u64;
    if len > inner.config.max_frame_len as u64 {
        return Err(SendError::TooLarge(m));
    }
    let lane = m.class().lane();
    debug_assert!(lane != Lane::Snapshot, "snapshots are never queued");
    let q = &peer.lanes[lane.index()];
    let queued = &peer.counters().lane(lane).queued_bytes;
    let before = queued.fetch_add(len, AcqRel);
    // One message larger than the byte bound may pass an empty queue, or it
    // could never be sent at all.
    if before > 0 && before + len > q.max_bytes {
        queued.fetch_sub(len, AcqRel);
        return Err(SendError::Full(m));
    }
    match q.tx.try_send(Queued { msg: m, len }) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(q)) | Err(TrySendError::Disconnected(q)) => {
            queued.fetch_sub(len, AcqRel);
            Err(SendError::Full(q.msg))
        }
    }
}

fn record_send_drop<M: Message>(
    inner: &Inner<M>,
    peer: Option<&PeerHandle<M>>,
    to: u64,
    e: &SendError<M>,
) {
    let reason = e.reason();
    let now = inner.now();
    match (reason, peer) {
        (
            DropReason::UnknownPeer
            | DropReason::ToSelf
            | DropReason::LocalOnly
            | DropReason::Stopped,
            _,
        )
        | (_, None) => {
            let g = &inner.global;
            let counter = match reason {
                DropReason::ToSelf => &g.dropped_to_self,
                DropReason::LocalOnly => &g.dropped_local_only,
                DropReason::Stopped => &g.dropped_stopped,
                _ => &g.dropped_unknown_peer,
            };
            counter.fetch_add(1, Relaxed);
            if rate_limit(&g.unknown_logged_at, now, inner.config.log_interval) {
                debug!(
                    "node {}: dropped a message to {to}: {} (counted in stats)",
                    inner.config.node_id,
                    reason.name()
                );
            }
        }
        (_, Some(p)) => {
            let lane = e.message().class().lane();
            let c = p.counters();
            c.count_drop(lane, reason, 1);
            if lane == Lane::Snapshot {
                // The snapshot's Failure report is what Raft needs here.
                c.snapshots_send_failed.fetch_add(1, Relaxed);
                warn!(
                    "node {}: snapshot to peer {to} not sent: {}",
                    inner.config.node_id,
                    match reason {
                        DropReason::QueueFull => "max_outgoing_snapshots already in flight",
                        DropReason::TooLarge => "larger than the snapshot size limit",
                        other => other.name(),
                    }
                );
                return;
            }
            if rate_limit(
                &c.drop_logged_at[reason.index()],
                now,
                inner.config.log_interval,
            ) {
                warn!(
                    "node {}: dropping messages to peer {to} on the {lane} lane: {} \
                     ({} dropped so far for this reason)",
                    inner.config.node_id,
                    reason.name(),
                    c.lane(lane).drops[reason.index()].load(Relaxed)
                );
            }
            if !p.notice_pending.swap(true, AcqRel) {
                let _ = inner.notice_tx.send(Notice::Unreachable(to));
            }
        }
    }
}

/// Stops everything and joins every thread. Idempotent.
pub(crate) fn shutdown<M>(inner: &Inner<M>) {
    // Whoever stops first holds this lock until every thread is joined; a
    // concurrent stop() waits here and then finds the work done.
    let mut threads = inner.threads.lock().unwrap_or_else(|e| e.into_inner());
    if inner.stopped.swap(true, AcqRel) {
        return;
    }
    inner
        .stop_tx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Snapshot senders see the stop, report Failure and end.
    let snaps = std::mem::take(
        &mut *inner
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
    inner.loop_handle.send(LoopCmd::Stop);
    // Peers stay in the map so that `stats()` still shows them.
    let peers: Vec<_> = inner
        .peers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for p in &peers {
        finish_peer(p);
    }
    for t in threads.drain(..) {
        // stop() called from a reporter callback must not join its own thread.
        if t.thread().id() != me {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_sync_clone_debug() {
        fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
        assert_send_sync::<Transport<Envelope>>();
        let t: Transport = Transport::start(
            Config::new(1, "127.0.0.1:0".parse().unwrap()),
            crate::NoopReporter,
        )
        .unwrap();
        t.add_peer(3, &["127.0.0.1:9"]).unwrap();
        let shown = format!("{t:?}");
        assert!(
            shown.contains("node_id: 1") && shown.contains("peers: [3]"),
            "{shown}"
        );
        t.stop();
        assert!(format!("{t:?}").contains("stopped: true"));
    }
}
