//! How the transport tells the Raft layer what it cannot see: a peer that
//! cannot be reached, a snapshot's fate, a removed member.

use crate::wire::RejectReason;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// The outcome of a snapshot send (raft's `SnapshotStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// The receiver has the whole snapshot.
    Finish,
    /// The send failed; raft should retry later.
    Failure,
}

/// Callbacks from the transport to the Raft layer (etcd's `Raft` interface
/// without `Process`).
///
/// Every method is called from a transport thread, never from the thread
/// that called into the transport. **Implementations must be quick and must
/// never block**: a slow reporter delays other peers' reports and handshakes.
/// raft-rs users, whose `RawNode` is not `Sync`, use [`ChannelReporter`] and
/// apply the events on the `RawNode`'s own thread.
pub trait Reporter: Send + Sync + 'static {
    /// Messages to `id` were dropped (queue full, connection down, paused).
    /// Coalesced: at most once per peer per
    /// [`Config::unreachable_report_interval`](crate::Config::unreachable_report_interval).
    fn report_unreachable(&self, id: u64);
    /// The fate of a snapshot sent to `id`.
    fn report_snapshot(&self, id: u64, status: SnapshotStatus);
    /// Whether `id` was removed from the cluster; connections from removed
    /// members are rejected during the handshake.
    fn is_id_removed(&self, id: u64) -> bool;
    /// Peer `id` rejected our connection for `reason` (for example because
    /// it considers this node removed). Rate-limited like unreachable
    /// reports. The default does nothing.
    fn report_rejected(&self, id: u64, reason: RejectReason) {
        let _ = (id, reason);
    }
}

/// What [`ChannelReporter`] turns the callbacks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportEvent {
    /// `report_unreachable(id)`: call `RawNode::report_unreachable(id)`.
    Unreachable(u64),
    /// `report_snapshot(id, status)`: call `RawNode::report_snapshot(id, status)`.
    Snapshot(u64, SnapshotStatus),
    /// Peer `peer` rejected our connection for `reason`.
    Rejected(u64, RejectReason),
}

/// A ready-made [`Reporter`] that turns callbacks into [`ReportEvent`]s on a
/// crossbeam channel, to be applied on the thread that owns the Raft node.
///
/// The channel is unbounded so that reporting never blocks; its growth is
/// bounded by the coalescing of unreachable reports (one per peer per
/// interval) and by the number of snapshot sends.
///
/// ```
/// use raftwire::{ChannelReporter, ReportEvent, Reporter};
///
/// let (reporter, events) = ChannelReporter::new();
/// reporter.mark_removed(4);
/// assert!(reporter.is_id_removed(4));
/// reporter.report_unreachable(2);
/// assert_eq!(events.try_recv(), Ok(ReportEvent::Unreachable(2)));
/// ```
#[derive(Debug, Clone)]
pub struct ChannelReporter {
    tx: Sender<ReportEvent>,
    removed: Arc<RwLock<HashSet<u64>>>,
}

impl ChannelReporter {
    /// A reporter and the receiving end of its events.
    pub fn new() -> (ChannelReporter, Receiver<ReportEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            ChannelReporter {
                tx,
                removed: Arc::default(),
            },
            rx,
        )
    }

    /// Records that `id` was removed from the cluster (apply this when a
    /// `ConfChange` removing it commits).
    pub fn mark_removed(&self, id: u64) {
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }
}

impl Reporter for ChannelReporter {
    fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(ReportEvent::Unreachable(id));
    }
    fn report_snapshot(&self, id: u64, status: SnapshotStatus) {
        let _ = self.tx.send(ReportEvent::Snapshot(id, status));
    }
    fn is_id_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }
    fn report_rejected(&self, id: u64, reason: RejectReason) {
        let _ = self.tx.send(ReportEvent::Rejected(id, reason));
    }
}

/// A reporter that ignores everything (no member is ever removed).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopReporter;

impl Reporter for NoopReporter {
    fn report_unreachable(&self, _id: u64) {}
    fn report_snapshot(&self, _id: u64, _status: SnapshotStatus) {}
    fn is_id_removed(&self, _id: u64) -> bool {
        false
    }
}
