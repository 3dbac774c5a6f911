//! Accounting in one place: every drop, refusal, rejection, protocol
//! violation, lost connection and snapshot outcome goes through
//! [`Accounts::note`], which counts it in the stats, writes its log line
//! (rate-limited, with the node prefix) and, where the Raft layer must
//! know, sends the notice that becomes a `Reporter` call.

use super::channels::Notice;
use super::peers::PeerShared;
use crate::conn::snapshot::SnapshotFailure;
use crate::error::{CloseReason, DropReason, ProtocolViolation};
use crate::lanes::QueuedLane;
use crate::reporter::SnapshotStatus;
use crate::stats::{GlobalCounters, PeerCounters, rate_limit};
use crate::wire::{AckStatus, Lane, RejectReason};
use crossbeam_channel::Sender;
use log::{debug, info, warn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// Something that happened, to be counted, logged and maybe reported.
#[derive(Debug)]
pub(crate) enum Incident<'a> {
    /// `send` refused a message that no peer queue was for (unknown peer,
    /// this node, local-only, transport stopped): counted transport-wide.
    Refused { to: u64, reason: DropReason },
    /// `n` messages to the peer dropped on `lane`. A drop that means the
    /// peer is not being reached (full queue, paused, too large,
    /// unreachable) is logged and reported unreachable; removal, stop and
    /// messages lost in flight are counted only.
    Dropped {
        lane: QueuedLane,
        reason: DropReason,
        n: u64,
    },
    /// A snapshot that could not start; its `Failure` is reported (unless
    /// the transport is stopping).
    SnapshotNotSent { to: u64, reason: DropReason },
    /// A lane connected (again).
    LaneConnected { lane: QueuedLane, reconnect: bool },
    /// A lane's connection failed or could not be made.
    LaneLost {
        lane: QueuedLane,
        addr: Option<SocketAddr>,
        reason: &'a CloseReason,
        was_connected: bool,
        retry_in: Duration,
    },
    /// The peer rejected our hello (`first`: for a new reason).
    RejectedByPeer {
        lane: QueuedLane,
        reason: RejectReason,
        first: bool,
    },
    /// We rejected an inbound hello that claims to come from `claimed`.
    InboundRejected {
        addr: Option<SocketAddr>,
        claimed: Option<u64>,
        reason: RejectReason,
        detail: &'a str,
    },
    /// An inbound connection broke the protocol and is closed.
    Violation {
        addr: Option<SocketAddr>,
        from: Option<u64>,
        violation: &'a ProtocolViolation,
    },
    /// An inbound connection closed (`from`: once accepted).
    InboundClosed {
        addr: Option<SocketAddr>,
        from: Option<(u64, Lane)>,
        reason: &'a CloseReason,
    },
    /// A connection that opens like a TLS handshake, to a node without TLS
    /// (it is closed as a bad hello).
    TlsToPlaintext { addr: Option<SocketAddr> },
    /// Closed to make room under `max_inbound_connections`…
    Evicted { admit: SocketAddr, max: usize },
    /// …or refused, every connection being authenticated.
    InboundRefused { addr: SocketAddr, max: usize },
    /// An accept failed (out of file descriptors, say).
    AcceptFailed { error: &'a std::io::Error },
    /// A message received from the peer and dropped: the peer is paused,
    /// or the message is local-only (the sender is broken).
    ReceivedDropped { local_only: bool },
    /// A snapshot reached the peer, verified.
    SnapshotSent { size: u64, took: Duration },
    /// A snapshot to the peer failed.
    SnapshotSendFailed {
        to: u64,
        /// Bytes of data, where known.
        size: Option<u64>,
        failure: &'a SnapshotFailure,
    },
    /// A snapshot from `from` arrived whole and verified.
    SnapshotReceived { from: u64, size: u64 },
    /// A snapshot from `from` failed here, or was refused with `status`.
    SnapshotReceiveFailed {
        from: u64,
        status: AckStatus,
        failure: Option<&'a SnapshotFailure>,
    },
}

/// The counters, the log and the notices of one transport.
pub(crate) struct Accounts {
    node_id: u64,
    epoch: Instant,
    log_interval: Duration,
    pub global: Arc<GlobalCounters>,
    /// Counters of inbound traffic from ids that are not peers.
    pub non_peers: Arc<PeerCounters>,
    notices: Sender<Notice>,
}

impl Accounts {
    pub fn new(
        node_id: u64,
        epoch: Instant,
        log_interval: Duration,
        notices: Sender<Notice>,
    ) -> Accounts {
        Accounts {
            node_id,
            epoch,
            log_interval,
            global: Arc::default(),
            non_peers: Arc::default(),
            notices,
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Queues a notice for the reporter.
    pub fn notify(&self, n: Notice) {
        let _ = self.notices.send(n);
    }

    /// The counters for a sender: the peer's, or the non-peers'.
    pub fn counters<'a>(&'a self, peer: Option<&'a PeerShared>) -> &'a PeerCounters {
        peer.map_or(&*self.non_peers, |p| &*p.counters)
    }

    fn due(&self, slot: &AtomicU64) -> bool {
        rate_limit(slot, self.epoch.elapsed(), self.log_interval)
    }

    /// Counts, logs and reports one incident. `peer` is the peer it
    /// concerns (`None` for strangers and for ids that are not peers).
    pub fn note(&self, peer: Option<&PeerShared>, incident: Incident<'_>) {
        let c = self.counters(peer);
        let id = peer.map_or(0, |p| p.id);
        match incident {
            Incident::Refused { to, reason } => self.refused(to, reason, 1),
            Incident::Dropped { lane, reason, n } => match peer {
                Some(p) => self.dropped(p, lane, reason, n),
                None => self.refused(0, reason, n),
            },
            Incident::SnapshotNotSent { to, reason } => self.snapshot_not_sent(peer, to, reason),
            Incident::LaneConnected { lane, reconnect } => {
                if reconnect {
                    c.reconnects.fetch_add(1, Relaxed);
                }
                let again = if reconnect { " again" } else { "" };
                info!(
                    "node {}: {lane} lane to peer {id} connected{again}",
                    self.node_id
                );
            }
            Incident::LaneLost {
                lane,
                addr,
                reason,
                was_connected,
                retry_in,
            } => self.lane_lost(c, id, lane, addr, reason, was_connected, retry_in),
            Incident::RejectedByPeer {
                lane,
                reason,
                first,
            } => self.rejected_by_peer(c, id, lane, reason, first),
            Incident::InboundRejected {
                addr,
                claimed,
                reason,
                detail,
            } => self.inbound_rejected(peer, addr, claimed, reason, detail),
            Incident::Violation {
                addr,
                from,
                violation,
            } => self.violation(peer, addr, from, violation),
            Incident::InboundClosed { addr, from, reason } => {
                self.inbound_closed(addr, from, reason)
            }
            Incident::TlsToPlaintext { addr } => {
                if self.due(&self.global.tls_logged_at) {
                    warn!(
                        "node {}: the connection from {addr:?} starts like a TLS handshake, \
                         but this node runs without TLS (is Config::tls missing here?)",
                        self.node_id
                    );
                }
            }
            Incident::Evicted { admit, max } => {
                self.global.inbound_evicted.fetch_add(1, Relaxed);
                if self.due(&self.global.error_logged_at) {
                    warn!(
                        "node {}: {max} inbound connections: closing the oldest one that \
                         has not completed its handshake to admit {admit}",
                        self.node_id
                    );
                }
            }
            Incident::InboundRefused { addr, max } => {
                self.global.inbound_refused.fetch_add(1, Relaxed);
                if self.due(&self.global.error_logged_at) {
                    warn!(
                        "node {}: refusing a connection from {addr}: {max} inbound \
                         connections, all authenticated",
                        self.node_id
                    );
                }
            }
            Incident::AcceptFailed { error } => {
                self.global.accept_errors.fetch_add(1, Relaxed);
                if self.due(&self.global.error_logged_at) {
                    warn!("node {}: accept failed: {error}", self.node_id);
                }
            }
            Incident::ReceivedDropped { local_only } => self.received_dropped(c, id, local_only),
            Incident::SnapshotSent { size, took } => {
                c.snapshots_sent.fetch_add(1, Relaxed);
                c.lane(Lane::Snapshot).msgs_sent.fetch_add(1, Relaxed);
                info!(
                    "node {}: snapshot of {size} bytes to node {id} delivered in {took:?}",
                    self.node_id
                );
            }
            Incident::SnapshotSendFailed { to, size, failure } => {
                c.snapshots_send_failed.fetch_add(1, Relaxed);
                c.set_last_error(format!("snapshot to node {to} failed: {failure}"));
                let of = size.map_or_else(String::new, |n| format!(" of {n} bytes"));
                warn!(
                    "node {}: snapshot{of} to node {to} failed: {failure}",
                    self.node_id
                );
                if let SnapshotFailure::Connection(reason) = failure {
                    self.tls(reason, || "for a snapshot".into());
                }
            }
            Incident::SnapshotReceived { from, size } => {
                c.snapshots_received.fetch_add(1, Relaxed);
                info!(
                    "node {}: snapshot of {size} bytes from node {from} received and verified",
                    self.node_id
                );
            }
            Incident::SnapshotReceiveFailed {
                from,
                status,
                failure,
            } => {
                c.snapshots_receive_failed.fetch_add(1, Relaxed);
                let why = failure.map_or_else(|| status.to_string(), |f| f.to_string());
                c.set_last_error(format!("incoming snapshot failed: {why}"));
                warn!(
                    "node {}: snapshot from node {from} failed: {why}",
                    self.node_id
                );
            }
        }
    }

    /// Messages to a peer dropped on a lane: counted; logged and reported
    /// unreachable unless the drop is the user's doing (removed, stopped)
    /// or a maybe-loss in flight.
    fn dropped(&self, p: &PeerShared, lane: QueuedLane, reason: DropReason, n: u64) {
        let c = &p.counters;
        c.count_drop(lane.lane(), reason, n);
        if matches!(
            reason,
            DropReason::Removed | DropReason::Stopped | DropReason::InFlight
        ) {
            return;
        }
        if self.due(&c.drop_logged_at[reason.index()]) {
            warn!(
                "node {}: dropped {n} message(s) to peer {} on the {lane} lane: {} \
                 ({} so far for this reason)",
                self.node_id,
                p.id,
                reason.name(),
                c.lane(lane.lane()).drops[reason.index()].load(Relaxed)
            );
        }
        if !p.notice_pending.swap(true, AcqRel) {
            self.notify(Notice::Unreachable(p.id));
        }
    }

    fn snapshot_not_sent(&self, peer: Option<&PeerShared>, to: u64, reason: DropReason) {
        match peer {
            Some(p) if !is_transport_wide(reason) => {
                p.counters.count_drop(Lane::Snapshot, reason, 1);
                p.counters.snapshots_send_failed.fetch_add(1, Relaxed);
                let why = match reason {
                    DropReason::QueueFull => "max_outgoing_snapshots already in flight",
                    DropReason::TooLarge => "larger than the snapshot size limit",
                    other => other.name(),
                };
                warn!(
                    "node {}: snapshot to peer {to} not sent: {why}",
                    self.node_id
                );
            }
            _ => self.refused(to, reason, 1),
        }
        if reason != DropReason::Stopped {
            self.notify(Notice::Snapshot(to, SnapshotStatus::Failure));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lane_lost(
        &self,
        c: &PeerCounters,
        id: u64,
        lane: QueuedLane,
        addr: Option<SocketAddr>,
        reason: &CloseReason,
        was_connected: bool,
        retry_in: Duration,
    ) {
        let node = self.node_id;
        let target = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        let what = format!("{lane} lane to peer {id} at {target}: {reason}");
        c.set_last_error(what.clone());
        if was_connected {
            self.notify(Notice::Unreachable(id));
        }
        let quiet = matches!(reason, CloseReason::Rejected(_) | CloseReason::PeerRemoved);
        if !quiet && self.due(&c.error_logged_at) {
            if was_connected {
                warn!("node {node}: lost {what}; redialing");
            } else {
                info!("node {node}: cannot reach {what}; retrying in {retry_in:?}");
            }
        }
        self.tls(reason, || format!("to peer {id} ({lane} lane)"));
    }

    fn rejected_by_peer(
        &self,
        c: &PeerCounters,
        id: u64,
        lane: QueuedLane,
        reason: RejectReason,
        first: bool,
    ) {
        let node = self.node_id;
        c.rejected_by_peer.fetch_add(1, Relaxed);
        if first {
            warn!("node {node}: peer {id} rejected our {lane} connection: {reason}; backing off");
            self.notify(Notice::Rejected(id, reason));
        } else {
            debug!("node {node}: peer {id} rejected our {lane} connection again: {reason}");
        }
    }

    /// The error log slot of a peer, or the transport-wide one.
    fn error_slot<'a>(&'a self, peer: Option<&'a PeerShared>) -> &'a AtomicU64 {
        peer.map_or(&self.global.error_logged_at, |p| {
            &p.counters.error_logged_at
        })
    }

    fn inbound_rejected(
        &self,
        peer: Option<&PeerShared>,
        addr: Option<SocketAddr>,
        claimed: Option<u64>,
        reason: RejectReason,
        detail: &str,
    ) {
        let g = &*self.global;
        g.inbound_rejected.fetch_add(1, Relaxed);
        self.counters(peer).rejected_inbound.fetch_add(1, Relaxed);
        if reason == RejectReason::IdentityMismatch {
            g.tls.wrong_identity.fetch_add(1, Relaxed);
        }
        if self.due(self.error_slot(peer)) {
            warn!(
                "node {}: rejected connection from {addr:?} (claims node {}): {reason} {detail}",
                self.node_id,
                id_or_unknown(claimed)
            );
        }
    }

    fn violation(
        &self,
        peer: Option<&PeerShared>,
        addr: Option<SocketAddr>,
        from: Option<u64>,
        violation: &ProtocolViolation,
    ) {
        self.global.protocol_errors.fetch_add(1, Relaxed);
        if from.is_some() {
            let c = self.counters(peer);
            c.protocol_errors.fetch_add(1, Relaxed);
            c.set_last_error(format!("inbound connection closed: {violation}"));
        }
        if self.due(self.error_slot(peer)) {
            warn!(
                "node {}: closing connection from {addr:?} (node {}): {violation}",
                self.node_id,
                id_or_unknown(from)
            );
        }
    }

    fn inbound_closed(
        &self,
        addr: Option<SocketAddr>,
        from: Option<(u64, Lane)>,
        reason: &CloseReason,
    ) {
        if *reason == CloseReason::HandshakeTimeout {
            self.global.handshake_timeouts.fetch_add(1, Relaxed);
        }
        self.tls(reason, || match addr {
            Some(a) => format!("from {a}"),
            None => "from ?".into(),
        });
        if let Some((from, lane)) = from {
            info!(
                "node {}: inbound {lane} connection from node {from} closed: {reason}",
                self.node_id
            );
        }
    }

    fn received_dropped(&self, c: &PeerCounters, from: u64, local_only: bool) {
        if !local_only {
            c.received_dropped_paused.fetch_add(1, Relaxed);
            return;
        }
        c.received_local_only.fetch_add(1, Relaxed);
        if self.due(&c.error_logged_at) {
            warn!(
                "node {}: dropped a local-only message received from node {from} (it must \
                 never cross the network)",
                self.node_id
            );
        }
    }

    /// A drop counted transport-wide (no peer queue was involved).
    fn refused(&self, to: u64, reason: DropReason, n: u64) {
        let g = &*self.global;
        let counter = match reason {
            DropReason::ToSelf => &g.dropped_to_self,
            DropReason::LocalOnly => &g.dropped_local_only,
            DropReason::Stopped => &g.dropped_stopped,
            _ => &g.dropped_unknown_peer,
        };
        counter.fetch_add(n, Relaxed);
        if self.due(&g.unknown_logged_at) {
            debug!(
                "node {}: dropped a message to {to}: {} (counted in stats)",
                self.node_id,
                reason.name()
            );
        }
    }

    /// Counts and logs (rate-limited) a connection refused by TLS; `who`
    /// says which connection.
    fn tls(&self, reason: &CloseReason, who: impl FnOnce() -> String) {
        if let CloseReason::Tls(f) = reason {
            self.global.tls.count(f);
            if self.due(&self.global.tls_logged_at) {
                warn!(
                    "node {}: TLS connection {} refused: {f}",
                    self.node_id,
                    who()
                );
            }
        }
    }
}

/// Drops that are never a peer's: counted transport-wide even when the id
/// is a peer.
fn is_transport_wide(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::UnknownPeer | DropReason::ToSelf | DropReason::LocalOnly | DropReason::Stopped
    )
}

fn id_or_unknown(id: Option<u64>) -> String {
    id.map_or("?".to_string(), |f| f.to_string())
}
