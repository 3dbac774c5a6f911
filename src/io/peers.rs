//! The one home of per-peer state that threads share: for each peer id,
//! its counters, whether it is paused, since when each lane is connected,
//! whether an unreachable notice is on its way, and (on the sending side)
//! its lane queues, its kind (member or remote) and its writer threads.
//!
//! The event loop holds each peer's [`PeerShared`]; the reader looks peers
//! up in the [`PeerTable`]; `send` routes through it.

use crate::error::SendError;
use crate::lanes::{PerLane, QueuedLane};
use crate::message::Message;
use crate::stats::PeerCounters;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// Per-peer state every thread of the transport may touch: lock-free.
#[derive(Debug, Default)]
pub(crate) struct PeerShared {
    pub id: u64,
    pub counters: Arc<PeerCounters>,
    pub paused: AtomicBool,
    /// Per lane: nanoseconds since the transport epoch (+1) at which the
    /// lane's outbound connection was accepted; 0 while it is not
    /// connected. The message lane's value is the peer's `active_since`.
    pub connected: PerLane<AtomicU64>,
    /// Set when an unreachable notice is on its way to the notifier, so a
    /// burst of drops sends one notice, not one per message.
    pub notice_pending: AtomicBool,
}

impl PeerShared {
    /// Since when `lane` has been connected, if it is.
    pub fn connected_since(&self, epoch: Instant, lane: QueuedLane) -> Option<Instant> {
        match self.connected[lane].load(Acquire) {
            0 => None,
            ns => Some(epoch + Duration::from_nanos(ns - 1)),
        }
    }

    /// Records that `lane` connected at `at` (`None`: it is down).
    pub fn set_connected(&self, epoch: Instant, lane: QueuedLane, at: Option<Instant>) {
        let ns = at.map_or(0, |t| {
            t.saturating_duration_since(epoch).as_nanos() as u64 + 1
        });
        self.connected[lane].store(ns, Release);
    }
}

/// A message in a lane's send queue, with the encoded size `send` counted
/// into the queue's byte bound (so the writer need not compute it again).
pub(crate) struct Queued<M> {
    pub msg: M,
    pub len: u64,
}

/// Sends one message straight to the event loop when its lane is idle
/// (nothing queued, nothing in flight), skipping the writer thread's
/// wake-up; gives it back when the lane is busy or its writer is busy.
/// Implemented by the writer's encoder (`io::writer`).
pub(crate) trait DirectSend<M>: Send + Sync {
    fn try_direct(&self, m: Queued<M>, queue: &Sender<Queued<M>>) -> Result<(), Queued<M>>;
}

/// One lane's send queue: bounded in messages by the channel and in bytes
/// by the lane's `queued_bytes` counter.
pub(crate) struct LaneQueue<M> {
    pub tx: Sender<Queued<M>>,
    pub max_bytes: u64,
}

/// Whether an id is a member or a remote (a not-yet-member being caught up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerKind {
    Member,
    Remote,
}

/// Everything the transport knows about one peer.
pub(crate) struct PeerEntry<M> {
    pub id: u64,
    pub shared: Arc<PeerShared>,
    pub queues: PerLane<LaneQueue<M>>,
    pub kind: Mutex<PeerKind>,
    /// Dropping this sender tells the peer's writers to finish.
    pub close: Mutex<Option<Sender<()>>>,
    pub writers: Mutex<Vec<JoinHandle<()>>>,
    /// The message lane's direct path (`Config::direct_send`), set once
    /// its writer is started.
    pub direct: std::sync::OnceLock<Arc<dyn DirectSend<M>>>,
}

impl<M> PeerEntry<M> {
    pub fn counters(&self) -> &PeerCounters {
        &self.shared.counters
    }

    pub fn kind(&self) -> PeerKind {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_kind(&self, kind: PeerKind) {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = kind;
    }

    /// Lets `enqueue` send on the message lane directly while it is idle.
    pub fn set_direct(&self, d: Arc<dyn DirectSend<M>>) {
        let _ = self.direct.set(d);
    }

    /// Ends the peer's writers and waits for them.
    pub fn finish(&self) {
        self.close.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in writers {
            let _ = w.join();
        }
    }
}

impl<M: Message> PeerEntry<M> {
    /// Queues `m` on `lane`, or gives it back. A message larger than the
    /// byte bound may pass an empty queue, or it could never be sent.
    pub fn enqueue(&self, m: M, lane: QueuedLane, len: u64) -> Result<(), SendError<M>> {
        let q = &self.queues[lane];
        let m = match self.direct.get() {
            Some(d) if lane == QueuedLane::Message && q.tx.is_empty() => {
                match d.try_direct(Queued { msg: m, len }, &q.tx) {
                    Ok(()) => return Ok(()),
                    Err(back) => back.msg,
                }
            }
            _ => m,
        };
        let queued = &self.counters().lane(lane.lane()).queued_bytes;
        let before = queued.fetch_add(len, AcqRel);
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
}

/// Every peer and remote by id.
pub(crate) struct PeerTable<M> {
    map: RwLock<PeerMap<Arc<PeerEntry<M>>>>,
}

impl<M> Default for PeerTable<M> {
    fn default() -> Self {
        PeerTable {
            map: RwLock::new(PeerMap::default()),
        }
    }
}

impl<M> PeerTable<M> {
    pub fn read(&self) -> RwLockReadGuard<'_, PeerMap<Arc<PeerEntry<M>>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, PeerMap<Arc<PeerEntry<M>>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<Arc<PeerEntry<M>>> {
        self.read().get(&id).cloned()
    }

    /// The shared state of peer `id`, if it is one.
    pub fn shared(&self, id: u64) -> Option<Arc<PeerShared>> {
        self.read().get(&id).map(|p| p.shared.clone())
    }

    pub fn contains(&self, id: u64) -> bool {
        self.read().contains_key(&id)
    }

    /// Every id, sorted.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn all(&self) -> Vec<Arc<PeerEntry<M>>> {
        self.read().values().cloned().collect()
    }
}
