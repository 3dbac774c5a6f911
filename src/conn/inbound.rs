//! The accepting side of connections, as the event loop runs them: where
//! the bytes of each read go (frame boundaries, large frames read whole
//! into a buffer of their own), read credit (when to stop reading and
//! when to resume), the response to the reader's verdict on the hello,
//! delivery reports owed to the dialer, link heartbeats, the handshake and
//! read timeouts, and, over all inbound connections, which one to evict
//! when there are too many and which one a redial replaces.
//!
//! Decoding is the reader thread's ([`super::receive`]); it sees every byte
//! that arrived, in order, whatever the reads were.

use super::accept::Verdict;
use super::liveness::{Liveness, LivenessCheck};
use super::outbound::DELIVERED_LEN;
use super::{Batch, ConnId, Outbox, Timing, Transmit};
use crate::config::Config;
use crate::error::CloseReason;
use crate::wire::split::{Split, Splitter};
use crate::wire::{
    AckStatus, FRAME_HEADER_LEN, FrameKind, HELLO_LEN, Lane, Response, encode_frame,
    heartbeat_frame,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::time::Instant;

/// Read credit of one inbound connection, shared by the event loop (which
/// hands bytes over) and the reader thread (which decodes them): bytes
/// handed over and not yet decoded, whether the loop stopped reading for
/// lack of credit, and how many messages the reader has accounted for.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    inflight: AtomicUsize,
    paused: AtomicBool,
    delivered: AtomicU64,
}

impl Credit {
    /// The loop hands `n` bytes to the reader.
    pub fn take(&self, n: usize) {
        self.inflight.fetch_add(n, SeqCst);
    }

    /// Whether the loop may read now. Out of credit, it stops; the reader's
    /// next [`release`](Credit::release) below the cap tells it to resume.
    /// (The flag is set before the second look, and both sides use SeqCst:
    /// a release between the two looks is seen by one of them.)
    pub fn try_read(&self, cap: usize) -> bool {
        if self.inflight.load(SeqCst) < cap {
            return true;
        }
        self.paused.store(true, SeqCst);
        if self.inflight.load(SeqCst) >= cap {
            return false;
        }
        self.paused.store(false, SeqCst);
        true
    }

    /// The reader has decoded `n` bytes. True when the loop had stopped for
    /// lack of credit and must now resume reading.
    pub fn release(&self, n: usize, cap: usize) -> bool {
        let left = self.inflight.fetch_sub(n, SeqCst) - n;
        left < cap && self.paused.swap(false, SeqCst)
    }

    /// Bytes handed over and not yet decoded.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// The reader accounted for `n` more messages (delivered, or dropped
    /// and counted on the receiving side).
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Relaxed);
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }
}

/// Where the event loop gets receive buffers.
pub(crate) trait Buffers {
    /// A read buffer of `read_chunk_len` bytes (contents are garbage).
    fn read_buf(&mut self) -> Vec<u8>;
    /// A buffer of exactly `len` bytes for a frame read whole.
    fn frame_buf(&mut self, len: usize) -> Vec<u8>;
}

/// How an inbound connection's bytes are read: where its frames start, the
/// start of a header kept from the last read, and a large frame being read
/// whole into a buffer of its own (so that the reader thread gets it in one
/// piece instead of copying it together from read-sized ones).
#[derive(Debug)]
pub(crate) struct Intake {
    split: Splitter,
    carry: [u8; FRAME_HEADER_LEN],
    carry_len: usize,
    /// A frame being read whole, and how many of its bytes are in.
    direct: Option<(Vec<u8>, usize)>,
}

impl Intake {
    pub fn new(read_chunk_len: usize, max_frame_len: u32) -> Intake {
        Intake {
            split: Splitter::new(HELLO_LEN, read_chunk_len, max_frame_len),
            carry: [0; FRAME_HEADER_LEN],
            carry_len: 0,
            direct: None,
        }
    }

    /// A large frame is being read whole.
    pub fn filling(&self) -> bool {
        self.direct.is_some()
    }

    /// Where the socket's next bytes go: the rest of the frame being read
    /// whole, or `scratch` after the header bytes kept from the last read.
    pub fn read_into<'a>(&'a mut self, scratch: &'a mut [u8]) -> &'a mut [u8] {
        match &mut self.direct {
            Some((buf, filled)) => &mut buf[*filled..],
            None => {
                let kept = self.carry_len;
                scratch[..kept].copy_from_slice(&self.carry[..kept]);
                &mut scratch[kept..]
            }
        }
    }

    /// `n` bytes arrived where [`read_into`](Intake::read_into) said.
    /// Complete bytes go to `hand`: a frame read whole as its own buffer, a
    /// mostly full read as the read buffer itself (`scratch` is swapped for
    /// a fresh one), a small read copied out to its size (so that what the
    /// reader holds stays close to the read credit it uses).
    pub fn handle_read(
        &mut self,
        n: usize,
        scratch: &mut Vec<u8>,
        bufs: &mut dyn Buffers,
        hand: &mut dyn FnMut(Vec<u8>),
    ) {
        if let Some((buf, filled)) = &mut self.direct {
            *filled += n;
            if *filled == buf.len() {
                hand(std::mem::take(buf));
                self.direct = None;
            }
            return;
        }
        let len = self.carry_len + n;
        self.carry_len = 0;
        let pass = match self.split.split(&scratch[..len]) {
            Split::Pass(pass) => {
                let keep = &scratch[pass..len];
                self.carry[..keep.len()].copy_from_slice(keep);
                self.carry_len = keep.len();
                pass
            }
            Split::Direct { at, total } => {
                let mut buf = bufs.frame_buf(total);
                buf[..len - at].copy_from_slice(&scratch[at..len]);
                self.direct = Some((buf, len - at));
                at
            }
        };
        if pass == 0 {
            return;
        }
        hand(if pass >= scratch.len() / 2 {
            let mut full = std::mem::replace(scratch, bufs.read_buf());
            full.truncate(pass);
            full
        } else {
            scratch[..pass].to_vec()
        });
    }

    /// Bytes read and not handed over: a kept header start, or the part of
    /// a frame read so far.
    pub fn take_unsent(&mut self) -> Vec<u8> {
        let mut out = self.carry[..self.carry_len].to_vec();
        self.carry_len = 0;
        if let Some((mut buf, filled)) = self.direct.take() {
            buf.truncate(filled);
            out.extend_from_slice(&buf);
        }
        out
    }
}

/// One inbound connection, loop side.
#[derive(Debug)]
pub(crate) struct InConn {
    opened: Instant,
    /// Sender and lane, once the reader accepted the hello.
    accepted: Option<(u64, Lane)>,
    /// Close for this reason once the outbox is flushed (after a reject
    /// response, or a refused snapshot); reads are discarded meanwhile.
    closing: Option<CloseReason>,
    intake: Intake,
    outbox: Outbox,
    liveness: Liveness,
    /// The delivered count last reported to the dialer…
    acked: u64,
    /// …and when to look at it again.
    ack_due: Option<Instant>,
    /// Not reading for lack of credit.
    read_paused: bool,
    read_cap: usize,
    timing: Timing,
}

impl InConn {
    pub fn new(config: &Config, now: Instant) -> InConn {
        InConn {
            opened: now,
            accepted: None,
            closing: None,
            intake: Intake::new(config.read_chunk_len, config.max_frame_len),
            outbox: Outbox::default(),
            liveness: Liveness::new(now),
            acked: 0,
            ack_due: None,
            read_paused: false,
            read_cap: config.conn_read_cap,
            timing: Timing::of(config),
        }
    }

    /// Sender and lane, once accepted.
    pub fn accepted(&self) -> Option<(u64, Lane)> {
        self.accepted
    }

    /// Not (yet) authenticated and not on its way out: may be evicted for
    /// a newcomer.
    fn is_stranger(&self) -> bool {
        self.accepted.is_none() && self.closing.is_none()
    }

    /// Whether to read the socket now. Out of read credit the connection
    /// pauses until [`handle_resume`](InConn::handle_resume); a frame being
    /// read whole is finished first (its bytes count once handed over), and
    /// a closing connection's bytes are discarded, not counted.
    pub fn wants_read(&mut self, credit: &Credit) -> bool {
        if self.read_paused {
            return false;
        }
        if self.closing.is_some() || self.intake.filling() {
            return true;
        }
        if credit.try_read(self.read_cap) {
            true
        } else {
            self.read_paused = true;
            false
        }
    }

    /// The reader released credit: read again.
    pub fn handle_resume(&mut self) {
        self.read_paused = false;
    }

    /// Where the next read goes (see [`Intake::read_into`]).
    pub fn read_into<'a>(&'a mut self, scratch: &'a mut [u8]) -> &'a mut [u8] {
        if self.closing.is_some() {
            return scratch;
        }
        self.intake.read_into(scratch)
    }

    /// `n` bytes were read at `now` where [`read_into`](InConn::read_into)
    /// said; complete ones go to `hand`, using read credit.
    pub fn handle_read(
        &mut self,
        n: usize,
        now: Instant,
        credit: &Credit,
        scratch: &mut Vec<u8>,
        bufs: &mut dyn Buffers,
        hand: &mut dyn FnMut(Vec<u8>),
    ) {
        self.liveness.handle_read(now);
        if self.closing.is_some() {
            return; // rejected or refused: discard
        }
        let snapshot = matches!(self.accepted, Some((_, Lane::Snapshot)));
        if self.ack_due.is_none() && !snapshot {
            self.ack_due = Some(now + self.timing.ack_interval);
        }
        self.intake.handle_read(n, scratch, bufs, &mut |bytes| {
            credit.take(bytes.len());
            hand(bytes)
        });
    }

    /// The reader's verdict on the hello: the response goes out; a reject
    /// closes the connection once it is written.
    pub fn handle_verdict(&mut self, verdict: &Verdict, now: Instant) {
        match *verdict {
            Verdict::Accept { from, lane, .. } => {
                self.accepted = Some((from, lane));
                self.outbox.push_control(&Response::Accept.encode());
                self.liveness = Liveness::new(now);
                self.liveness.handle_queued(now);
            }
            Verdict::Reject { reason, .. } => {
                self.outbox.push_control(&Response::Reject(reason).encode());
                self.closing = Some(CloseReason::Rejected(reason));
            }
            // Not a hello at all: the driver closes without an answer.
            Verdict::Violation(_) => {}
        }
    }

    /// The verdict on an incoming snapshot; after anything but `Ok` the
    /// connection closes once it is written (the sender closes after `Ok`).
    pub fn queue_snapshot_ack(&mut self, status: AckStatus, now: Instant) {
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + 1);
        // A 1-byte payload always fits.
        let _ = encode_frame(&mut frame, FrameKind::SnapshotAck, u32::MAX, |b| {
            b.extend_from_slice(&status.encode())
        });
        self.outbox.push_control(&frame);
        self.liveness.handle_queued(now);
        if status != AckStatus::Ok {
            self.closing = Some(CloseReason::SnapshotRefused(status));
        }
    }

    /// Deadlines: the handshake timeout (which also bounds how long a
    /// reject response may take to reach a peer that does not read), the
    /// delivery report owed, link heartbeats, the read timeout. Returns why
    /// the connection must close now, if it must.
    pub fn handle_timeout(&mut self, now: Instant, credit: &Credit) -> Option<CloseReason> {
        let Some((_, lane)) = self.accepted else {
            if now >= self.opened + self.timing.handshake_timeout {
                return Some(
                    self.closing
                        .clone()
                        .unwrap_or(CloseReason::HandshakeTimeout),
                );
            }
            return None;
        };
        if self.read_paused {
            // Silence while we are not reading is ours, not the peer's.
            self.liveness.handle_read(now);
        }
        if lane == Lane::Snapshot {
            // A snapshot's sender hears the verdict, not delivery reports.
            self.ack_due = None;
        } else if self.ack_due.is_some_and(|t| now >= t) {
            // Tell the dialer how many of its messages are delivered, so
            // that only the rest counts as lost if this connection dies.
            // Keep looking while read bytes wait for the reader.
            let delivered = credit.delivered();
            if delivered != self.acked {
                self.acked = delivered;
                self.outbox.push_control(&delivered_frame(delivered));
                self.liveness.handle_queued(now);
            }
            self.ack_due = (credit.inflight() > 0).then_some(now + self.timing.ack_interval);
        }
        let t = &self.timing;
        match self.liveness.check(now, t.heartbeat, t.read_timeout, None) {
            LivenessCheck::SendHeartbeat => {
                self.outbox.push_control(&heartbeat_frame());
                self.liveness.handle_queued(now);
                None
            }
            LivenessCheck::ReadTimeout => Some(CloseReason::ReadTimeout),
            LivenessCheck::Ok | LivenessCheck::WriteTimeout => None,
        }
    }

    /// When [`handle_timeout`](InConn::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.accepted.is_none() {
            return Some(self.opened + self.timing.handshake_timeout);
        }
        let t = &self.timing;
        let live = self
            .liveness
            .next_deadline(t.heartbeat, t.read_timeout, None);
        Some(self.ack_due.map_or(live, |a| a.min(live)))
    }

    /// The close this connection was waiting for, once everything it had
    /// to say is written (`tls_pending`: TLS records still wait for the
    /// socket).
    pub fn done_closing(&self, tls_pending: bool) -> Option<CloseReason> {
        self.closing
            .clone()
            .filter(|_| self.outbox.is_empty() && !tls_pending)
    }

    /// Bytes that arrived and were not handed over (none once closing: the
    /// reader has given up on the connection).
    pub fn take_unsent(&mut self) -> Vec<u8> {
        if self.closing.is_some() {
            return Vec::new();
        }
        self.intake.take_unsent()
    }
}

impl Transmit for InConn {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn handle_written(&mut self, n: usize, now: Instant, done: &mut dyn FnMut(Batch)) {
        self.outbox.advance(n, done);
        self.liveness.handle_written(now, !self.outbox.is_empty());
    }
}

/// A `delivered` frame: the count of messages delivered so far.
pub(crate) fn delivered_frame(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_HEADER_LEN + DELIVERED_LEN);
    // An 8-byte payload always fits.
    let _ = encode_frame(&mut v, FrameKind::Delivered, u32::MAX, |b| {
        b.extend_from_slice(&n.to_be_bytes())
    });
    v
}

/// Whether a new inbound connection may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    /// Admit it after closing this connection: the oldest one that has not
    /// completed its handshake (`CloseReason::Evicted`).
    Evict(ConnId),
    /// Every connection authenticated: refuse the newcomer.
    Refuse,
}

/// Every inbound connection, loop side.
#[derive(Debug)]
pub(crate) struct Inbounds {
    conns: HashMap<ConnId, InConn>,
    /// The accepted lane connection of each sender and lane.
    by_lane: HashMap<(u64, Lane), ConnId>,
    max: usize,
}

impl Inbounds {
    pub fn new(max_inbound_connections: usize) -> Inbounds {
        Inbounds {
            conns: HashMap::new(),
            by_lane: HashMap::new(),
            max: max_inbound_connections,
        }
    }

    /// Keeps inbound connections within `max_inbound_connections`: when
    /// full, the oldest connection that has not completed its handshake
    /// makes room (peers that authenticated are never evicted for a
    /// stranger); if every one has, the newcomer is refused.
    pub fn admission(&self) -> Admission {
        if self.conns.len() < self.max {
            return Admission::Admit;
        }
        self.conns
            .iter()
            .filter(|(_, c)| c.is_stranger())
            .min_by_key(|(id, c)| (c.opened, **id))
            .map_or(Admission::Refuse, |(id, _)| Admission::Evict(*id))
    }

    pub fn insert(&mut self, id: ConnId, conn: InConn) {
        self.conns.insert(id, conn);
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut InConn> {
        self.conns.get_mut(&id)
    }

    /// The verdict on connection `id`'s hello. An accepted lane connection
    /// replaces an older one of the same sender and lane (the peer
    /// redialed): that one is returned, to be closed (`Replaced`).
    /// Snapshots each have a connection of their own, concurrently.
    pub fn handle_verdict(
        &mut self,
        id: ConnId,
        verdict: &Verdict,
        now: Instant,
    ) -> Option<ConnId> {
        let conn = self.conns.get_mut(&id)?;
        conn.handle_verdict(verdict, now);
        match *verdict {
            Verdict::Accept { from, lane, .. } if lane != Lane::Snapshot => self
                .by_lane
                .insert((from, lane), id)
                .filter(|old| *old != id && self.conns.contains_key(old)),
            _ => None,
        }
    }

    /// Forgets connection `id`.
    pub fn remove(&mut self, id: ConnId) -> Option<InConn> {
        let conn = self.conns.remove(&id)?;
        if let Some(key) = conn.accepted
            && self.by_lane.get(&key) == Some(&id)
        {
            self.by_lane.remove(&key);
        }
        Some(conn)
    }

    /// The accepted connections from `peer`.
    pub fn accepted_from(&self, peer: u64) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.accepted, Some((from, _)) if from == peer))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every connection, for the timers.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut InConn)> {
        self.conns.iter_mut().map(|(id, c)| (*id, c))
    }
}
