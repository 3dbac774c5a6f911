//! Counters: per peer and lane, plus transport-wide ones. Updated with
//! relaxed atomics on the hot path; [`Transport::stats`](crate::Transport::stats)
//! takes a snapshot.

use crate::error::DropReason;
use crate::wire::Lane;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters of one lane of one peer.
#[derive(Debug, Default)]
pub(crate) struct LaneCounters {
    pub msgs_sent: AtomicU64,
    pub msgs_direct: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub msgs_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub drops: [AtomicU64; DropReason::ALL.len()],
    pub queued_bytes: AtomicU64,
}

/// Counters of one peer (or of all non-peer senders together).
#[derive(Debug)]
pub(crate) struct PeerCounters {
    pub lanes: [LaneCounters; 3],
    pub snapshots_sent: AtomicU64,
    pub snapshots_send_failed: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshots_receive_failed: AtomicU64,
    pub reconnects: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub rejected_by_peer: AtomicU64,
    pub rejected_inbound: AtomicU64,
    pub received_dropped_paused: AtomicU64,
    pub received_local_only: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Per drop reason: when a drop of that reason was last logged (ns since
    /// the transport epoch), for rate limiting.
    pub drop_logged_at: [AtomicU64; DropReason::ALL.len()],
    pub error_logged_at: AtomicU64,
}

impl Default for PeerCounters {
    fn default() -> Self {
        PeerCounters {
            lanes: Default::default(),
            snapshots_sent: AtomicU64::new(0),
            snapshots_send_failed: AtomicU64::new(0),
            snapshots_received: AtomicU64::new(0),
            snapshots_receive_failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            rejected_by_peer: AtomicU64::new(0),
            rejected_inbound: AtomicU64::new(0),
            received_dropped_paused: AtomicU64::new(0),
            received_local_only: AtomicU64::new(0),
            last_error: Mutex::new(None),
            drop_logged_at: Default::default(),
            error_logged_at: AtomicU64::new(0),
        }
    }
}

impl PeerCounters {
    pub fn lane(&self, lane: Lane) -> &LaneCounters {
        &self.lanes[lane.index()]
    }

    pub fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    pub fn count_drop(&self, lane: Lane, reason: DropReason, n: u64) {
        self.lane(lane).drops[reason.index()].fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self, since: crate::lanes::PerLane<Option<Instant>>) -> PeerStats {
        let lane = |l: &LaneCounters, connected_since: Option<Instant>| LaneStats {
            connected_since,
            msgs_sent: l.msgs_sent.load(Relaxed),
            msgs_direct: l.msgs_direct.load(Relaxed),
            bytes_sent: l.bytes_sent.load(Relaxed),
            msgs_received: l.msgs_received.load(Relaxed),
            bytes_received: l.bytes_received.load(Relaxed),
            queued_bytes: l.queued_bytes.load(Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (*r, l.drops[r.index()].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        PeerStats {
            message_lane: lane(&self.lanes[0], since.message),
            append_lane: lane(&self.lanes[1], since.append),
            snapshot_lane: lane(&self.lanes[2], None),
            snapshots_sent: self.snapshots_sent.load(Relaxed),
            snapshots_send_failed: self.snapshots_send_failed.load(Relaxed),
            snapshots_received: self.snapshots_received.load(Relaxed),
            snapshots_receive_failed: self.snapshots_receive_failed.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            rejected_by_peer: self.rejected_by_peer.load(Relaxed),
            rejected_inbound: self.rejected_inbound.load(Relaxed),
            received_dropped_paused: self.received_dropped_paused.load(Relaxed),
            received_local_only: self.received_local_only.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            active_since: since.message,
        }
    }
}

/// True at most once per `interval` per slot: a lock-free rate limiter for
/// log lines. `now` is nanoseconds since the transport epoch (never 0 in
/// practice: the epoch is taken before any thread starts).
pub(crate) fn rate_limit(slot: &AtomicU64, now: Duration, interval: Duration) -> bool {
    let now = now.as_nanos() as u64 + 1;
    let last = slot.load(Relaxed);
    if last != 0 && now.saturating_sub(last) < interval.as_nanos() as u64 {
        return false;
    }
    slot.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
}

/// Transport-wide counters.
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters {
    pub dropped_unknown_peer: AtomicU64,
    pub dropped_to_self: AtomicU64,
    pub dropped_stopped: AtomicU64,
    pub dropped_local_only: AtomicU64,
    pub dropped_removed: AtomicU64,
    pub inbound_accepted: AtomicU64,
    pub inbound_rejected: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub accept_errors: AtomicU64,
    pub inbound_evicted: AtomicU64,
    pub inbound_refused: AtomicU64,
    pub tls: TlsCounters,
    pub tls_logged_at: AtomicU64,
    /// Sockets the event loop holds (listener excluded).
    pub connections: AtomicU64,
    pub unknown_logged_at: AtomicU64,
    pub error_logged_at: AtomicU64,
}

/// TLS counters (all zero without the `tls` feature).
#[derive(Debug, Default)]
pub(crate) struct TlsCounters {
    pub handshakes: AtomicU64,
    pub not_tls: AtomicU64,
    pub bad_certificate: AtomicU64,
    pub expired: AtomicU64,
    pub no_certificate: AtomicU64,
    pub no_identity: AtomicU64,
    pub wrong_identity: AtomicU64,
    pub refused_by_peer: AtomicU64,
    pub other: AtomicU64,
    pub header_only_checksums: AtomicU64,
}

impl TlsCounters {
    /// Counts a refused connection under its reason.
    pub fn count(&self, f: &crate::error::TlsFailure) {
        use crate::error::TlsFailure as F;
        let c = match f {
            F::NotTls => &self.not_tls,
            F::BadCertificate(_) => &self.bad_certificate,
            F::Expired => &self.expired,
            F::NoCertificate => &self.no_certificate,
            F::NoIdentity => &self.no_identity,
            F::WrongIdentity { .. } => &self.wrong_identity,
            F::RefusedByPeer(_) => &self.refused_by_peer,
            F::Other(_) => &self.other,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> TlsStats {
        TlsStats {
            handshakes: self.handshakes.load(Relaxed),
            not_tls: self.not_tls.load(Relaxed),
            bad_certificate: self.bad_certificate.load(Relaxed),
            expired: self.expired.load(Relaxed),
            no_certificate: self.no_certificate.load(Relaxed),
            no_identity: self.no_identity.load(Relaxed),
            wrong_identity: self.wrong_identity.load(Relaxed),
            refused_by_peer: self.refused_by_peer.load(Relaxed),
            other: self.other.load(Relaxed),
            header_only_checksums: self.header_only_checksums.load(Relaxed),
        }
    }
}

/// TLS outcomes, inbound and outbound together (feature `tls`; all zero
/// without it). Each refusal is counted once, under the reason this node
/// saw: the node that rejects a certificate counts `bad_certificate`, the
/// node whose certificate was rejected counts `refused_by_peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// TLS handshakes completed with a verified peer certificate that names
    /// a node id of this cluster.
    pub handshakes: u64,
    /// Inbound connections that did not speak TLS (plaintext peers).
    pub not_tls: u64,
    /// Peer certificates rejected: unknown CA, bad signature or encoding,
    /// wrong key usage.
    pub bad_certificate: u64,
    /// Peer certificates expired or not yet valid.
    pub expired: u64,
    /// Peers that presented no certificate.
    pub no_certificate: u64,
    /// Valid certificates that name no node id of this cluster.
    pub no_identity: u64,
    /// Identity mismatches: a dialed peer whose certificate names another
    /// node, or a hello claiming another id than the certificate's
    /// (the latter is also counted as a rejected handshake).
    pub wrong_identity: u64,
    /// Handshakes the peer refused with an alert (it rejected our certificate).
    pub refused_by_peer: u64,
    /// Other TLS errors.
    pub other: u64,
    /// Inbound connections accepted whose dialer checksums only frame
    /// headers, TLS authenticating the payload (the default between
    /// raftwire nodes under TLS; see `TlsConfig::with_payload_checksums`).
    /// Not a failure.
    pub header_only_checksums: u64,
}

impl TlsStats {
    /// All refused connections, every reason.
    pub fn failures(&self) -> u64 {
        self.not_tls
            + self.bad_certificate
            + self.expired
            + self.no_certificate
            + self.no_identity
            + self.wrong_identity
            + self.refused_by_peer
            + self.other
    }
}

/// A snapshot of one lane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaneStats {
    /// Messages written to the socket.
    pub msgs_sent: u64,
    /// Messages that `send` handed to the event loop itself because the
    /// lane was idle ([`Config::direct_send`](crate::Config::direct_send)),
    /// skipping the writer thread; counted in `msgs_sent` too once written.
    pub msgs_direct: u64,
    /// Frame bytes written to the socket (headers included).
    pub bytes_sent: u64,
    /// Messages received and delivered to a receive channel.
    pub msgs_received: u64,
    /// Frame bytes received (headers included).
    pub bytes_received: u64,
    /// Bytes (encoded size) waiting in the send queue right now.
    pub queued_bytes: u64,
    /// Messages dropped on the way out, by reason (only non-zero reasons).
    pub drops: BTreeMap<DropReason, u64>,
    /// Since when this lane's outbound connection has been up, if it is.
    pub connected_since: Option<Instant>,
}

impl LaneStats {
    /// Total dropped messages, all reasons.
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    /// Dropped messages for one reason.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }
}

/// A snapshot of one peer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The message lane (heartbeats, votes, responses, proposals).
    pub message_lane: LaneStats,
    /// The append lane.
    pub append_lane: LaneStats,
    /// Snapshot streams (bytes of all snapshot connections; `msgs_*` count
    /// snapshots).
    pub snapshot_lane: LaneStats,
    /// Snapshots sent and acknowledged by this peer (`Finish` reported).
    pub snapshots_sent: u64,
    /// Snapshots to this peer that failed (`Failure` reported).
    pub snapshots_send_failed: u64,
    /// Snapshots received from this peer, verified and consumed.
    pub snapshots_received: u64,
    /// Snapshots from this peer that failed on the receiving side.
    pub snapshots_receive_failed: u64,
    /// Outbound connections established after the first one, over all lanes.
    pub reconnects: u64,
    /// Inbound connections from this peer closed because it broke the
    /// protocol (bad frame, checksum, decode error, …).
    pub protocol_errors: u64,
    /// Our outbound connections that this peer rejected in the handshake.
    pub rejected_by_peer: u64,
    /// Inbound connections from this peer id that we rejected.
    pub rejected_inbound: u64,
    /// Messages received from this peer while it was paused, and dropped.
    pub received_dropped_paused: u64,
    /// Local-only messages received from this peer, and dropped (they must
    /// never cross the network; the sender is broken).
    pub received_local_only: u64,
    /// The most recent connection error, as a sentence.
    pub last_error: Option<String>,
    /// Since when the message lane has been connected, if it is.
    pub active_since: Option<Instant>,
}

impl PeerStats {
    /// The stats of one lane.
    pub fn lane(&self, lane: Lane) -> &LaneStats {
        match lane {
            Lane::Message => &self.message_lane,
            Lane::Append => &self.append_lane,
            Lane::Snapshot => &self.snapshot_lane,
        }
    }

    /// Drops over both lanes for one reason.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.message_lane.dropped_for(reason) + self.append_lane.dropped_for(reason)
    }
}

/// A snapshot of all counters, from [`Transport::stats`](crate::Transport::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Per peer (and remote).
    pub peers: BTreeMap<u64, PeerStats>,
    /// Traffic and errors of inbound connections from ids that are not peers.
    pub non_peers: PeerStats,
    /// Messages dropped by `send` because `to` was not a peer.
    pub dropped_unknown_peer: u64,
    /// Messages dropped by `send` because `to` was this node.
    pub dropped_to_self: u64,
    /// Messages dropped by `send` after `stop`.
    pub dropped_stopped: u64,
    /// Local-only messages refused by `send` (a caller bug: they must
    /// never cross the network).
    pub dropped_local_only: u64,
    /// Messages still queued for peers when they were removed.
    pub dropped_removed: u64,
    /// Inbound connections that completed the handshake.
    pub inbound_accepted: u64,
    /// Inbound connections we rejected in the handshake, all reasons.
    pub inbound_rejected: u64,
    /// Inbound connections closed for breaking the protocol, all senders
    /// (including connections that never completed a handshake).
    pub protocol_errors: u64,
    /// Inbound connections closed because the handshake did not complete in time.
    pub handshake_timeouts: u64,
    /// Inbound connections closed before their handshake to make room under
    /// `max_inbound_connections`.
    pub inbound_evicted: u64,
    /// Inbound connections refused at once: `max_inbound_connections`
    /// reached and every one of them authenticated.
    pub inbound_refused: u64,
    /// Accepts that failed (for example out of file descriptors).
    pub accept_errors: u64,
    /// TCP connections open right now (inbound and outbound, any state; the
    /// listener is not counted).
    pub connections: u64,
    /// TLS handshakes and refusals (feature `tls`).
    pub tls: TlsStats,
}

impl Stats {
    /// One peer's stats (default, all zero, for an unknown id).
    pub fn peer(&self, id: u64) -> PeerStats {
        self.peers.get(&id).cloned().unwrap_or_default()
    }
}
