//! The dialing side of one connection, a lane's or a snapshot's: connect,
//! hello, the acceptor's response, then the frames the acceptor may send
//! back (link heartbeats; delivery reports on a lane; the verdict on a
//! snapshot), liveness, and what was written but not yet reported
//! delivered, which a dying connection turns into drops.

use super::liveness::{Liveness, LivenessCheck};
use super::{Batch, Outbox, Timing, Transmit};
use crate::error::{CloseReason, ProtocolViolation};
use crate::wire::{
    AckStatus, Deframer, Frame, FrameKind, Hello, Lane, RESPONSE_LEN, RejectReason, Response,
    heartbeat_frame,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Bytes of a `delivered` frame's payload: a u64 count.
pub(crate) const DELIVERED_LEN: usize = 8;

/// Where a dialed connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The TCP connect is in progress; it fails at `deadline`.
    Connecting { deadline: Instant },
    /// The hello is queued; the response is due by `deadline`.
    Handshaking { deadline: Instant },
    /// Accepted by the peer at `since`.
    Open { since: Instant },
    /// Failed; an [`OutEvent::Failed`] said why. Takes no more input.
    Closed,
}

/// What a dialed connection tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutEvent {
    /// The peer accepted the hello.
    Accepted,
    /// The peer rejected the hello (a [`Failed`](OutEvent::Failed) follows).
    Rejected(RejectReason),
    /// The receiver's verdict on a snapshot stream.
    SnapshotAck(AckStatus),
    /// The connection is over; close the socket.
    Failed(CloseReason),
}

/// The dialing side of one connection.
#[derive(Debug)]
pub(crate) struct OutConn {
    hello: Hello,
    lane: Lane,
    addr: SocketAddr,
    phase: Phase,
    /// The peer accepted the hello (kept once the connection is closed).
    accepted: bool,
    response: [u8; RESPONSE_LEN],
    response_len: usize,
    /// Frames from the acceptor (after its response).
    deframer: Deframer,
    outbox: Outbox,
    /// Messages written whole to the socket…
    written: u64,
    /// …and how many of them the receiver has reported delivered.
    acked: u64,
    liveness: Liveness,
    timing: Timing,
    events: VecDeque<OutEvent>,
}

impl OutConn {
    /// A connection being dialed to `addr` that will open with `hello`.
    pub fn new(hello: Hello, addr: SocketAddr, timing: Timing, now: Instant) -> OutConn {
        OutConn {
            lane: Lane::from_u8(hello.lane).unwrap_or(Lane::Message),
            hello,
            addr,
            phase: Phase::Connecting {
                deadline: now + timing.dial_timeout,
            },
            accepted: false,
            response: [0; RESPONSE_LEN],
            response_len: 0,
            deframer: Deframer::new(DELIVERED_LEN as u32),
            outbox: Outbox::default(),
            written: 0,
            acked: 0,
            liveness: Liveness::new(now),
            timing,
            events: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer this connection goes to.
    pub fn peer(&self) -> u64 {
        self.hello.to
    }

    /// Whether the peer accepted this connection (it may be closed since).
    pub fn was_accepted(&self) -> bool {
        self.accepted
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// The TCP connect completed: the hello goes out first.
    pub fn handle_connected(&mut self, now: Instant) {
        if let Phase::Connecting { .. } = self.phase {
            self.phase = Phase::Handshaking {
                deadline: now + self.timing.handshake_timeout,
            };
            self.outbox.push_control(&self.hello.encode());
            self.liveness.handle_queued(now);
        }
    }

    /// Bytes from the acceptor.
    pub fn handle_read(&mut self, mut bytes: &[u8], now: Instant) {
        match self.phase {
            Phase::Connecting { .. } | Phase::Closed => return,
            Phase::Handshaking { .. } => {
                self.liveness.handle_read(now);
                let take = (RESPONSE_LEN - self.response_len).min(bytes.len());
                self.response[self.response_len..self.response_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.response_len += take;
                bytes = &bytes[take..];
                match Response::decode(&self.response[..self.response_len]) {
                    None => return,
                    Some(Ok(Response::Accept)) => {
                        self.phase = Phase::Open { since: now };
                        self.accepted = true;
                        self.liveness = Liveness::new(now);
                        self.events.push_back(OutEvent::Accepted);
                    }
                    Some(Ok(Response::Reject(r))) => {
                        self.events.push_back(OutEvent::Rejected(r));
                        return self.fail(CloseReason::Rejected(r));
                    }
                    Some(Err(_)) => {
                        return self
                            .fail(CloseReason::PeerMisbehaved(ProtocolViolation::BadResponse));
                    }
                }
            }
            Phase::Open { .. } => self.liveness.handle_read(now),
        }
        let handed = self.written + self.outbox.queued_msgs();
        let mut cursor = self.deframer.feed(bytes);
        while let Some(frame) = cursor.next() {
            let step = frame
                .map_err(ProtocolViolation::Frame)
                .and_then(|f| acceptor_frame(self.lane, &f, handed, &mut self.acked));
            match step {
                Ok(None) => {}
                Ok(Some(status)) => self.events.push_back(OutEvent::SnapshotAck(status)),
                Err(v) => return self.fail(CloseReason::PeerMisbehaved(v)),
            }
        }
    }

    /// The socket failed (an I/O or TLS error the driver saw).
    pub fn handle_failed(&mut self, reason: CloseReason) {
        self.fail(reason);
    }

    fn fail(&mut self, reason: CloseReason) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.events.push_back(OutEvent::Failed(reason));
        }
    }

    /// Queues a batch of frames for the socket.
    pub fn queue_batch(&mut self, batch: Batch, now: Instant) {
        self.outbox.push_batch(batch);
        self.liveness.handle_queued(now);
    }

    /// Messages written and not reported delivered: maybe lost if the
    /// connection dies now (maybe delivered after the last report).
    pub fn in_flight(&self) -> u64 {
        self.written.saturating_sub(self.acked)
    }

    /// Every batch not yet written whole, for a connection that goes away.
    pub fn take_batches(&mut self) -> Vec<Batch> {
        self.outbox.take_batches()
    }

    fn write_timeout(&self) -> Option<std::time::Duration> {
        // A lane whose writes are stuck while its peer keeps sending
        // heartbeats is backpressure, not failure: the queue fills and
        // drops are reported. Only a snapshot has a write deadline.
        (self.lane == Lane::Snapshot).then_some(self.timing.snapshot_progress)
    }

    /// When [`handle_timeout`](OutConn::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timing;
        match self.phase {
            Phase::Connecting { deadline } | Phase::Handshaking { deadline } => Some(deadline),
            Phase::Open { .. } => Some(self.liveness.next_deadline(
                t.heartbeat,
                t.read_timeout,
                self.write_timeout(),
            )),
            Phase::Closed => None,
        }
    }

    /// Deadlines: dial and handshake timeouts, link heartbeats, the read
    /// timeout (and a snapshot's write timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.timing;
        match self.phase {
            Phase::Connecting { deadline } if now >= deadline => {
                self.fail(CloseReason::DialTimeout)
            }
            Phase::Handshaking { deadline } if now >= deadline => {
                self.fail(CloseReason::HandshakeTimeout)
            }
            Phase::Open { .. } => {
                match self
                    .liveness
                    .check(now, t.heartbeat, t.read_timeout, self.write_timeout())
                {
                    LivenessCheck::Ok => {}
                    LivenessCheck::SendHeartbeat => {
                        self.outbox.push_control(&heartbeat_frame());
                        self.liveness.handle_queued(now);
                    }
                    LivenessCheck::ReadTimeout => self.fail(CloseReason::ReadTimeout),
                    LivenessCheck::WriteTimeout => self.fail(CloseReason::WriteTimeout),
                }
            }
            _ => {}
        }
    }

    /// The next thing the owner must know.
    pub fn poll_event(&mut self) -> Option<OutEvent> {
        self.events.pop_front()
    }
}

impl Transmit for OutConn {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn can_write(&self) -> bool {
        matches!(self.phase, Phase::Handshaking { .. } | Phase::Open { .. })
    }

    fn handle_written(&mut self, n: usize, now: Instant, done: &mut dyn FnMut(Batch)) {
        let written = &mut self.written;
        self.outbox.advance(n, &mut |b| {
            *written += u64::from(b.msgs);
            done(b)
        });
        self.liveness.handle_written(now, !self.outbox.is_empty());
    }
}

/// A dialing machine as the driver feeds it: a lane's
/// [`LaneLink`](super::link::LaneLink) (through its connection of the
/// moment), or a snapshot's [`OutConn`].
pub(crate) trait Dialer {
    /// Where the connection of the moment stands, if there is one.
    fn phase(&self) -> Option<Phase>;
    /// The TCP connect completed.
    fn handle_connected(&mut self, now: Instant);
    /// Bytes from the acceptor.
    fn handle_read(&mut self, bytes: &[u8], now: Instant);
    /// The socket failed.
    fn handle_failed(&mut self, reason: CloseReason, now: Instant);
}

impl Dialer for OutConn {
    fn phase(&self) -> Option<Phase> {
        Some(self.phase)
    }
    fn handle_connected(&mut self, now: Instant) {
        OutConn::handle_connected(self, now)
    }
    fn handle_read(&mut self, bytes: &[u8], now: Instant) {
        OutConn::handle_read(self, bytes, now)
    }
    fn handle_failed(&mut self, reason: CloseReason, _now: Instant) {
        OutConn::handle_failed(self, reason)
    }
}

/// What a frame from the acceptor means: a link heartbeat (nothing), a
/// delivery report on a lane (counted into `acked`), or the verdict on a
/// snapshot. Anything else breaks the protocol.
fn acceptor_frame(
    lane: Lane,
    f: &Frame<'_>,
    handed: u64,
    acked: &mut u64,
) -> Result<Option<AckStatus>, ProtocolViolation> {
    match f.kind {
        FrameKind::Heartbeat if f.payload.is_empty() => Ok(None),
        FrameKind::Delivered if lane != Lane::Snapshot => {
            // A batch being written may already be partly delivered: the
            // bound is what was handed to this connection, not what was
            // written whole.
            match <[u8; DELIVERED_LEN]>::try_from(f.payload).map(u64::from_be_bytes) {
                Ok(n) if n <= handed => {
                    *acked = (*acked).max(n);
                    Ok(None)
                }
                _ => Err(ProtocolViolation::UnexpectedFrame),
            }
        }
        FrameKind::SnapshotAck if lane == Lane::Snapshot => AckStatus::decode(f.payload)
            .map(Some)
            .map_err(|_| ProtocolViolation::UnexpectedFrame),
        _ => Err(ProtocolViolation::UnexpectedFrame),
    }
}
