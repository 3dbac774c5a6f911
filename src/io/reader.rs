//! The reader thread: for every inbound connection, the verdict on its
//! hello (with the user's `is_id_removed`), then its frames decoded by the
//! rules of `conn::receive` and delivered into the receive channels.
//!
//! Receive-side overload is handled by backpressure, never by dropping: when
//! the caller does not drain a receive channel, delivery blocks, the reader
//! stops taking bytes off inbound connections, their read credit runs out,
//! the event loop stops reading those sockets, TCP windows close, and the
//! senders' queues fill, which is where drops happen and are reported to
//! Raft. Connections are served round-robin, at most
//! `reader_fairness_budget` frames at a time, so a flood from one peer
//! delays another peer's messages by at most a few budgets of deliveries.

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, ReaderMsg, Recycler};
use super::delivery::{Charge, Delivery, Stopped};
use super::peers::PeerShared;
use super::shared::Shared;
use super::snapshot_recv::{Flow, Port, StreamOut};
use crate::conn::ConnId;
use crate::conn::accept::{Acceptor, HelloBuf, Verdict};
use crate::conn::inbound::Credit;
use crate::conn::receive::{SnapLimits, SnapRecv, SnapStep, check_addresses, lane_frame};
use crate::conn::snapshot::SnapshotFailure;
use crate::conn::turns::{Class, Lines};
use crate::error::{CloseReason, ProtocolViolation};
use crate::message::{Message, MessageClass};
use crate::reporter::Reporter;
use crate::snapshot::{IncomingSnapshot, Parking, SnapItem, SnapshotReader};
use crate::wire::{
    AckStatus, Checksums, Cursor, Deframer, FRAME_HEADER_LEN, Frame, HelloError, HelloParse, Lane,
};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, select};
use log::debug;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Duration;

/// How much one connection may be served before the next one's turn: a
/// number of frames and a number of bytes, whichever runs out first.
struct Budget {
    frames: usize,
    bytes: usize,
}

impl Budget {
    fn left(&self) -> bool {
        self.frames > 0 && self.bytes > 0
    }

    /// The next frame while budget is left, charged to the budget.
    fn next<'c>(
        &mut self,
        cursor: &'c mut Cursor<'_, '_>,
    ) -> Option<Result<Frame<'c>, ProtocolViolation>> {
        if !self.left() {
            return None;
        }
        let frame = match cursor.next()? {
            Ok(f) => f,
            Err(e) => return Some(Err(ProtocolViolation::Frame(e))),
        };
        self.frames -= 1;
        self.bytes = self
            .bytes
            .saturating_sub(frame.payload.len() + FRAME_HEADER_LEN);
        Some(Ok(frame))
    }
}

/// Messages of one connection accounted for (delivered, or dropped and
/// counted) by one call of `consume`: added to the count the event loop
/// acknowledges to the sender once per call (and before any wait), not per
/// message, which would write a cache line the loop reads on every read.
#[derive(Default)]
struct Tally(u64);

impl Tally {
    fn publish(&mut self, credit: &Credit) {
        if self.0 > 0 {
            credit.add_delivered(self.0);
            self.0 = 0;
        }
    }
}

enum State {
    /// Waiting for the hello.
    Hello(HelloBuf),
    /// Accepted: frames from `from` on `lane`.
    Open { from: u64, lane: Lane },
    /// Rejected or failed: further bytes are discarded.
    Done,
}

/// A snapshot connection: the receive machine, and the stream to the
/// application once it has begun.
#[derive(Default)]
struct SnapIn {
    recv: SnapRecv,
    out: Option<StreamOut>,
}

impl SnapIn {
    /// Offers a parked item to the application again.
    fn push_pending(&mut self) -> Flow {
        self.out.as_mut().map_or(Flow::Go, |o| o.push_pending())
    }
}

impl Incoming {
    /// How urgent the connection's frames are.
    fn class(&self) -> Class {
        match self.state {
            State::Open { lane, .. } => Class::of(Some(lane)),
            _ => Class::Urgent,
        }
    }
}

/// Bytes read from one connection, as the event loop handed them over.
/// A message lane's chunk is shared on first use: its messages' payloads
/// are slices of it, and it returns to the pools when the last is dropped.
/// A snapshot connection's stays a plain buffer (a chunk frame that fills
/// it is handed to the application as it is).
enum Chunk {
    Raw(Vec<u8>),
    Shared { bytes: Bytes, cap: usize },
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Raw(v) => v,
            Chunk::Shared { bytes, .. } => bytes,
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// The chunk as a plain buffer (a snapshot connection's: never shared,
    /// so never copied here).
    fn raw(&mut self) -> &mut Vec<u8> {
        if let Chunk::Shared { bytes, .. } = self {
            *self = Chunk::Raw(bytes.to_vec());
        }
        match self {
            Chunk::Raw(v) => v,
            Chunk::Shared { .. } => unreachable!("made raw above"),
        }
    }

    /// The chunk to slice payloads from, and the buffer capacity a slice
    /// keeps alive.
    fn share(&mut self, recycler: &Recycler) -> (&Bytes, usize) {
        if let Chunk::Raw(v) = self {
            let buf = std::mem::take(v);
            let cap = buf.capacity();
            *self = Chunk::Shared {
                bytes: recycler.share(buf),
                cap,
            };
        }
        match self {
            Chunk::Shared { bytes, cap } => (bytes, *cap),
            Chunk::Raw(_) => unreachable!("shared above"),
        }
    }
}

/// `payload` as a slice of `chunk` if it lies in it.
fn slice_of(chunk: &Bytes, payload: &[u8]) -> Option<Bytes> {
    let (base, p) = (chunk.as_ptr() as usize, payload.as_ptr() as usize);
    (p >= base && p + payload.len() <= base + chunk.len()).then(|| chunk.slice_ref(payload))
}

/// One inbound connection, reader side.
struct Incoming {
    peer_addr: Option<SocketAddr>,
    credit: Arc<Credit>,
    state: State,
    deframer: Deframer,
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already consumed.
    offset: usize,
    /// The loop closed the connection; finish once the chunks are drained.
    closed: Option<CloseReason>,
    queued: bool,
    /// Set on the snapshot lane.
    snap: Option<SnapIn>,
    /// An older connection of the same sender and lane that still has
    /// frames to deliver: this one waits, so that order holds across a
    /// reconnection.
    behind: Option<ConnId>,
    /// With TLS: the node id named by the dialer's certificate.
    tls_node: Option<u64>,
}

pub(crate) struct Reader<M: Message> {
    shared: Arc<Shared<M>>,
    accounts: Arc<Accounts>,
    acceptor: Acceptor,
    reporter: Arc<dyn Reporter>,
    input: Receiver<ReaderMsg>,
    loop_handle: LoopHandle,
    messages: Delivery<M>,
    proposals: Delivery<M>,
    /// With `separate_appends`.
    appends: Delivery<M>,
    /// Appends that found the appends channel full, each holding back its
    /// connection (at most one per connection), in arrival order.
    held: VecDeque<(ConnId, M, Charge)>,
    snapshots: Delivery<IncomingSnapshot<M>>,
    /// For `SnapshotReader`s to wake this thread.
    wake_tx: Sender<ReaderMsg>,
    recycler: Recycler,
    incoming_snapshots: Arc<AtomicUsize>,
    stop: Receiver<()>,
    conns: HashMap<ConnId, Incoming>,
    /// Connections with work: message lanes first (`conn::turns::Lines`).
    ready: Lines,
}

/// The channels the reader delivers into.
pub(crate) struct Outputs<M> {
    pub messages: Sender<M>,
    pub proposals: Sender<M>,
    pub appends: Sender<M>,
    pub snapshots: Sender<IncomingSnapshot<M>>,
    /// A sender into the reader's own input, for snapshot wake-ups.
    pub wake_tx: Sender<ReaderMsg>,
    /// Spent receive buffers go back to the event loop for its next reads.
    pub recycler: Recycler,
}

impl<M: Message> Reader<M> {
    pub fn new(
        shared: Arc<Shared<M>>,
        reporter: Arc<dyn Reporter>,
        input: Receiver<ReaderMsg>,
        loop_handle: LoopHandle,
        out: Outputs<M>,
        stop: Receiver<()>,
    ) -> Self {
        let cfg = &shared.config;
        let max_bytes = cfg.recv_queue_bytes;
        Reader {
            accounts: shared.accounts.clone(),
            acceptor: Acceptor {
                cluster_id: cfg.cluster_id,
                node_id: cfg.node_id,
                tls: cfg.has_tls(),
            },
            reporter,
            input,
            loop_handle,
            messages: Delivery::new(out.messages, max_bytes),
            proposals: Delivery::new(out.proposals, max_bytes),
            appends: Delivery::new(out.appends, max_bytes),
            held: VecDeque::new(),
            snapshots: Delivery::new(out.snapshots, max_bytes),
            wake_tx: out.wake_tx,
            recycler: out.recycler,
            incoming_snapshots: Arc::new(AtomicUsize::new(0)),
            stop,
            conns: HashMap::new(),
            ready: Lines::default(),
            shared,
        }
    }

    pub fn run(mut self) {
        loop {
            if self.ready.is_empty() {
                // Held appends wait for the caller to drain: the channel
                // cannot signal that, so look again every millisecond.
                let wait = if self.held.is_empty() {
                    Duration::MAX
                } else {
                    Duration::from_millis(1)
                };
                select! {
                    recv(self.input) -> m => match m {
                        Ok(m) => self.handle_input(m),
                        Err(_) => return,
                    },
                    recv(self.stop) -> _ => return,
                    default(wait) => {}
                }
            }
            while let Ok(m) = self.input.try_recv() {
                self.handle_input(m);
            }
            if !self.held.is_empty() && self.release_held().is_err() {
                return;
            }
            if let Some(id) = self.ready.pop()
                && self.serve(id).is_err()
            {
                return;
            }
        }
    }

    /// Puts a connection in line to be served (once): message lanes are
    /// served before append lanes and snapshots.
    fn wake(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.queued
        {
            c.queued = true;
            self.ready.push(id, c.class());
        }
    }

    fn handle_input(&mut self, m: ReaderMsg) {
        match m {
            ReaderMsg::Opened {
                conn,
                peer_addr,
                credit,
            } => {
                let c = Incoming {
                    peer_addr,
                    credit,
                    state: State::Hello(HelloBuf::default()),
                    deframer: Deframer::new(self.shared.config.max_frame_len),
                    chunks: VecDeque::new(),
                    offset: 0,
                    closed: None,
                    queued: false,
                    snap: None,
                    behind: None,
                    tls_node: None,
                };
                self.conns.insert(conn, c);
            }
            #[cfg(feature = "tls")]
            ReaderMsg::Identity { conn, node } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.tls_node = Some(node);
                }
            }
            ReaderMsg::Data { conn, bytes } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.chunks.push_back(Chunk::Raw(bytes));
                    self.wake(conn);
                }
            }
            ReaderMsg::Closed { conn, reason } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.closed = Some(reason);
                    self.wake(conn);
                }
            }
            ReaderMsg::Wake { conn } => self.wake(conn),
        }
    }

    /// Delivers held appends while the appends channel has room, and lets
    /// their connections go on.
    fn release_held(&mut self) -> Result<(), Stopped> {
        while let Some((id, m, size)) = self.held.pop_front() {
            if let Err(m) = self.appends.try_deliver(m, size)? {
                self.held.push_front((id, m, size));
                break;
            }
            self.wake(id);
        }
        Ok(())
    }

    /// Whether connection `c` (`id`) must wait before it is served.
    fn waits(&self, id: ConnId, c: &mut Incoming) -> bool {
        if self.held.iter().any(|(h, _, _)| *h == id) {
            return true; // woken when its held append is delivered
        }
        if c.behind.is_some_and(|old| self.conns.contains_key(&old)) {
            return true; // woken when the older connection finishes
        }
        c.behind = None;
        if c.closed.is_some() {
            // A stream cut short is a failed snapshot: nothing waits for
            // its parked chunk any more.
            if let Some(out) = c.snap.as_mut().and_then(|s| s.out.as_mut()) {
                out.abandon();
            }
            return false;
        }
        // Woken by the SnapshotReader when it takes a chunk.
        c.snap
            .as_mut()
            .is_some_and(|s| s.push_pending() == Flow::Park)
    }

    /// Serves one connection for up to one fairness budget of frames.
    fn serve(&mut self, id: ConnId) -> Result<(), Stopped> {
        let Some(mut c) = self.conns.remove(&id) else {
            return Ok(());
        };
        c.queued = false;
        if self.waits(id, &mut c) {
            self.conns.insert(id, c);
            return Ok(());
        }
        let cfg = &self.shared.config;
        let mut budget = Budget {
            frames: cfg.reader_fairness_budget,
            bytes: cfg.read_chunk_len,
        };
        let cap = cfg.conn_read_cap;
        let peer = match c.state {
            State::Open { from, .. } => self.shared.peers.shared(from),
            _ => None,
        };
        while budget.left() {
            let Some(mut chunk) = c.chunks.pop_front() else {
                break;
            };
            // (A snapshot chunk that is the whole buffer takes the buffer.)
            let len = chunk.len();
            let mut off = c.offset;
            let result = self.consume(
                id,
                &mut c,
                &mut chunk,
                &mut off,
                &mut budget,
                peer.as_deref(),
            );
            if off < len && matches!(c.state, State::Open { .. }) {
                c.offset = off;
                c.chunks.push_front(chunk);
            } else {
                c.offset = 0;
                if c.credit.release(len, cap) {
                    self.loop_handle.send(LoopCmd::ResumeRead { conn: id });
                }
                // Reused by the loop for its next reads: no allocation and
                // no zeroing (the pools are small; the rest is freed). A
                // shared chunk goes back when its last slice is dropped.
                if let Chunk::Raw(buf) = chunk {
                    self.recycler.recycle(buf);
                }
            }
            if result? == Flow::Park {
                self.conns.insert(id, c);
                return Ok(());
            }
        }
        if !c.chunks.is_empty() {
            c.queued = true;
            self.ready.push(id, c.class());
        } else if let Some(reason) = c.closed.take() {
            self.finish(&c, reason);
            // Let a newer connection of the same sender and lane go on.
            let behind: Vec<ConnId> = self
                .conns
                .iter_mut()
                .filter(|(_, n)| n.behind == Some(id))
                .map(|(next, n)| {
                    n.behind = None;
                    *next
                })
                .collect();
            for next in behind {
                self.wake(next);
            }
            return Ok(());
        }
        self.conns.insert(id, c);
        Ok(())
    }

    /// Consumes bytes of one chunk from `*off`: the hello, then frames.
    fn consume(
        &mut self,
        id: ConnId,
        c: &mut Incoming,
        chunk: &mut Chunk,
        off: &mut usize,
        budget: &mut Budget,
        peer: Option<&PeerShared>,
    ) -> Result<Flow, Stopped> {
        if let State::Hello(h) = &mut c.state {
            let (took, parsed) = h.handle_bytes(&chunk.bytes()[*off..]);
            *off += took;
            match parsed {
                None => return Ok(Flow::Go),
                Some(parsed) => self.handshake(id, c, parsed),
            }
        }
        let State::Open { from, lane } = c.state else {
            *off = chunk.len();
            return Ok(Flow::Go);
        };
        if c.behind.is_some() {
            // Just accepted while an older connection of the same sender
            // and lane still delivers: wait for it.
            return Ok(Flow::Park);
        }
        let looked_up;
        let peer = match peer {
            Some(p) => Some(p),
            None => {
                looked_up = self.shared.peers.shared(from);
                looked_up.as_deref()
            }
        };
        if lane == Lane::Snapshot {
            return self.consume_snapshot(id, c, from, chunk.raw(), off, budget, peer);
        }
        let (chunk, cap) = chunk.share(&self.recycler);
        let mut cursor = c.deframer.feed(&chunk[*off..]);
        let mut violation = None;
        let mut flow = Flow::Go;
        // (Lost if the transport stops meanwhile: nothing is acknowledged
        // after that.)
        let mut tally = Tally::default();
        let node_id = self.shared.config.node_id;
        while let Some(frame) = budget.next(&mut cursor) {
            let (kind, sliced) = match frame {
                Ok(f) => (f.kind, slice_of(chunk, f.payload)),
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            };
            // The payload as a slice of the read buffer, or, for a frame
            // that arrived over several reads, the buffer it was put
            // together in: never a copy.
            let (payload, charge) = match sliced {
                Some(p) => (p, Charge::shared(chunk.as_ptr() as usize, cap)),
                None => {
                    let buf = cursor.take_reassembled().unwrap_or_default();
                    let charge = Charge::from(buf.capacity());
                    let mut whole = Bytes::from(buf);
                    (whole.split_off(FRAME_HEADER_LEN.min(whole.len())), charge)
                }
            };
            match lane_frame::<M>(node_id, from, kind, payload) {
                Ok(None) => {}
                Ok(Some((m, size))) => {
                    // Accounted for here from now on, whatever happens
                    // next: the sender may stop counting it as in flight.
                    tally.0 += 1;
                    let size = (size, charge);
                    if self.deliver(id, m, size, lane, peer, &c.credit, &mut tally)? == Flow::Park {
                        flow = Flow::Park;
                        break;
                    }
                }
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            }
        }
        tally.publish(&c.credit);
        *off = chunk.len() - cursor.remaining();
        if let Some(v) = violation {
            self.violation(id, c, peer, Some(from), v);
            *off = chunk.len();
        }
        Ok(flow)
    }

    /// Delivers one message of a lane into its receive channel (or drops
    /// and counts it: paused sender, local-only message).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        id: ConnId,
        m: M,
        (size, charge): (usize, Charge),
        lane: Lane,
        peer: Option<&PeerShared>,
        credit: &Credit,
        tally: &mut Tally,
    ) -> Result<Flow, Stopped> {
        if peer.is_some_and(|p| p.paused.load(Relaxed)) {
            let dropped = Incident::ReceivedDropped { local_only: false };
            self.accounts.note(peer, dropped);
            return Ok(Flow::Go);
        }
        if m.is_local_only() {
            let dropped = Incident::ReceivedDropped { local_only: true };
            self.accounts.note(peer, dropped);
            return Ok(Flow::Go);
        }
        // Counted before the caller can see it.
        let lc = self.accounts.counters(peer).lane(lane);
        lc.msgs_received.fetch_add(1, Relaxed);
        lc.bytes_received
            .fetch_add((size + FRAME_HEADER_LEN) as u64, Relaxed);
        let d = match m.class() {
            MessageClass::Proposal => &mut self.proposals,
            MessageClass::Append if self.shared.config.separate_appends => {
                // A full appends channel holds back this connection only,
                // not the reader.
                if let Err(m) = self.appends.try_deliver(m, charge)? {
                    self.held.push_back((id, m, charge));
                    return Ok(Flow::Park);
                }
                return Ok(Flow::Go);
            }
            _ => &mut self.messages,
        };
        if let Err(m) = d.try_deliver(m, charge)? {
            // About to wait for the caller: what was delivered so far is
            // acknowledged first.
            tally.publish(credit);
            d.deliver(m, charge, &self.stop)?;
        }
        Ok(Flow::Go)
    }

    /// Consumes frames of a snapshot connection.
    #[allow(clippy::too_many_arguments)]
    fn consume_snapshot(
        &mut self,
        id: ConnId,
        c: &mut Incoming,
        from: u64,
        chunk: &mut Vec<u8>,
        off: &mut usize,
        budget: &mut Budget,
        peer: Option<&PeerShared>,
    ) -> Result<Flow, Stopped> {
        let cfg = &self.shared.config;
        let limits = SnapLimits {
            max_snapshot_len: cfg.max_snapshot_len,
            max_inline_len: cfg.max_inline_snapshot_len as u64,
        };
        let mut snap = c.snap.take().unwrap_or_default();
        let mut cursor = c.deframer.feed(&chunk[*off..]);
        let mut violation = None;
        let mut flow = Flow::Go;
        // A chunk frame that is the whole input buffer: the buffer itself
        // goes to the application (after the cursor lets go of it).
        let mut whole_chunk = None;
        let whole = chunk.get(FRAME_HEADER_LEN..).map(|p| (p.as_ptr(), p.len()));
        while flow == Flow::Go {
            let frame = match budget.next(&mut cursor) {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(v)) => {
                    violation = Some(v);
                    break;
                }
            };
            self.accounts
                .counters(peer)
                .lane(Lane::Snapshot)
                .bytes_received
                .fetch_add((frame.payload.len() + FRAME_HEADER_LEN) as u64, Relaxed);
            let step = match snap.recv.handle(&frame, limits) {
                Ok(step) => step,
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            };
            let p = frame.payload;
            if step == SnapStep::Chunk && whole == Some((p.as_ptr(), p.len())) {
                // The last frame of this input, so nothing follows it in
                // this loop.
                whole_chunk = Some(frame.payload_crc);
                continue;
            }
            match self.snapshot_step(id, from, peer, &mut snap, step, &frame)? {
                Ok(f) => flow = f,
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            }
        }
        *off = chunk.len() - cursor.remaining();
        if let (Some(crc), Some(out)) = (whole_chunk, &mut snap.out) {
            let item = SnapItem::Chunk {
                buf: std::mem::take(chunk),
                start: FRAME_HEADER_LEN,
                crc,
            };
            flow = out.push(item);
        }
        c.snap = Some(snap);
        if let Some(v) = violation {
            if let Some(s) = &mut c.snap {
                s.recv.finish();
            }
            self.violation(id, c, peer, Some(from), v);
            *off = chunk.len();
            return Ok(Flow::Go);
        }
        Ok(flow)
    }

    /// Does what the snapshot receive machine asked after `frame`.
    fn snapshot_step(
        &mut self,
        id: ConnId,
        from: u64,
        peer: Option<&PeerShared>,
        snap: &mut SnapIn,
        step: SnapStep<'_>,
        frame: &Frame<'_>,
    ) -> Result<Result<Flow, ProtocolViolation>, Stopped> {
        match step {
            SnapStep::Nothing => {}
            SnapStep::Begin { size, message } => {
                let checksums = snap.recv.checksums();
                match self.snapshot_begin(id, from, (size, checksums), message, peer)? {
                    Ok(Some(out)) => {
                        snap.recv.streaming();
                        snap.out = Some(out);
                    }
                    Ok(None) => snap.recv.finish(),
                    Err(v) => return Ok(Err(v)),
                }
            }
            SnapStep::Chunk => {
                if let Some(out) = &mut snap.out {
                    let item = SnapItem::Chunk {
                        buf: frame.payload.to_vec(),
                        start: 0,
                        crc: frame.payload_crc,
                    };
                    return Ok(Ok(out.push(item)));
                }
            }
            SnapStep::End(end) => {
                if let Some(out) = &mut snap.out {
                    // Kept until the end is taken.
                    return Ok(Ok(out.push(SnapItem::End(end))));
                }
            }
            SnapStep::Inline(buf) => self.inline_end(id, from, peer, buf)?,
            SnapStep::Refuse(status, failure) => {
                self.refuse(id, from, peer, status, failure.as_ref())
            }
        }
        Ok(Ok(Flow::Go))
    }

    /// A streamed snapshot begins: checks its message and the number of
    /// snapshots coming in, then hands the application an
    /// `IncomingSnapshot`. `Ok(None)`: refused (the sender is told why).
    fn snapshot_begin(
        &mut self,
        id: ConnId,
        from: u64,
        (size, checksums): (u64, Checksums),
        message: &[u8],
        peer: Option<&PeerShared>,
    ) -> Result<Result<Option<StreamOut>, ProtocolViolation>, Stopped> {
        let cfg = &self.shared.config;
        let m = match M::decode(Bytes::copy_from_slice(message)) {
            Ok(m) => m,
            Err(e) => return Ok(Err(ProtocolViolation::Decode(e.0))),
        };
        if let Err(v) = check_addresses(cfg.node_id, from, &m) {
            return Ok(Err(v));
        }
        let active = self.incoming_snapshots.fetch_add(1, AcqRel);
        if active >= cfg.max_incoming_snapshots {
            self.incoming_snapshots.fetch_sub(1, AcqRel);
            self.refuse(id, from, peer, AckStatus::TooMany, None);
            return Ok(Ok(None));
        }
        self.accounts
            .counters(peer)
            .lane(Lane::Snapshot)
            .msgs_received
            .fetch_add(1, Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(cfg.snapshot_inflight_chunks);
        let parking = Arc::new(Parking::default());
        let port = Port {
            conn: id,
            from,
            loop_handle: self.loop_handle.clone(),
            reader_wake: self.wake_tx.clone(),
            parking: parking.clone(),
            active: self.incoming_snapshots.clone(),
            peer: self.shared.peers.shared(from),
            accounts: self.accounts.clone(),
            recycler: self.recycler.clone(),
        };
        let reader = SnapshotReader::new(
            rx,
            size,
            from,
            cfg.snapshot_progress_timeout,
            Box::new(port),
            checksums,
        );
        log::info!(
            "node {}: receiving a snapshot of {size} bytes from node {from}",
            cfg.node_id
        );
        let incoming = IncomingSnapshot {
            message: m,
            size,
            data: reader,
        };
        if self
            .snapshots
            .deliver(incoming, message.len(), &self.stop)
            .is_err()
        {
            // Stopping: the reader (and its verdict) went down with it.
            return Ok(Ok(None));
        }
        Ok(Ok(Some(StreamOut::new(tx, parking))))
    }

    /// An inline snapshot arrived whole and verified: decode, deliver,
    /// answer.
    fn inline_end(
        &mut self,
        id: ConnId,
        from: u64,
        peer: Option<&PeerShared>,
        buf: Vec<u8>,
    ) -> Result<(), Stopped> {
        let node_id = self.shared.config.node_id;
        let len = buf.len();
        let m = match M::decode(Bytes::from(buf)) {
            Ok(m) if check_addresses(node_id, from, &m).is_ok() => m,
            _ => {
                self.refuse(id, from, peer, AckStatus::Malformed, None);
                return Ok(());
            }
        };
        let size = len as u64;
        self.accounts
            .note(peer, Incident::SnapshotReceived { from, size });
        self.accounts
            .counters(peer)
            .lane(Lane::Snapshot)
            .msgs_received
            .fetch_add(1, Relaxed);
        let d = if m.class() == MessageClass::Proposal {
            &mut self.proposals
        } else {
            &mut self.messages
        };
        d.deliver(m, len, &self.stop)?;
        self.loop_handle.send(LoopCmd::SnapshotAck {
            conn: id,
            status: AckStatus::Ok,
        });
        Ok(())
    }

    /// Refuses an incoming snapshot: tells the sender why (and the loop
    /// closes the connection after that).
    fn refuse(
        &self,
        id: ConnId,
        from: u64,
        peer: Option<&PeerShared>,
        status: AckStatus,
        failure: Option<&SnapshotFailure>,
    ) {
        let refused = Incident::SnapshotReceiveFailed {
            from,
            status,
            failure,
        };
        self.accounts.note(peer, refused);
        self.loop_handle
            .send(LoopCmd::SnapshotAck { conn: id, status });
    }

    /// The verdict on a hello, sent to the loop typed.
    fn handshake(&mut self, id: ConnId, c: &mut Incoming, parsed: Result<HelloParse, HelloError>) {
        if parsed.is_err()
            && let State::Hello(h) = &c.state
            && h.looks_like_tls()
        {
            self.accounts
                .note(None, Incident::TlsToPlaintext { addr: c.peer_addr });
        }
        let reporter = &self.reporter;
        let verdict = self
            .acceptor
            .verdict(parsed, c.tls_node, |from| reporter.is_id_removed(from));
        match &verdict {
            Verdict::Accept {
                from,
                lane,
                checksums,
            } => {
                let (from, lane) = (*from, *lane);
                self.accounts.global.inbound_accepted.fetch_add(1, Relaxed);
                c.deframer.set_checksums(*checksums);
                if *checksums == Checksums::HeaderOnly {
                    let tls = &self.accounts.global.tls;
                    tls.header_only_checksums.fetch_add(1, Relaxed);
                }
                if lane == Lane::Snapshot {
                    c.snap = Some(SnapIn {
                        recv: SnapRecv::new(*checksums),
                        out: None,
                    });
                }
                debug!(
                    "node {}: accepted {lane} connection from node {from} ({:?})",
                    self.shared.config.node_id, c.peer_addr
                );
                c.state = State::Open { from, lane };
                if lane != Lane::Snapshot {
                    c.behind = self
                        .conns
                        .iter()
                        .find(|(_, o)| {
                            matches!(o.state, State::Open { from: f, lane: l }
                                if f == from && l == lane)
                        })
                        .map(|(&old, _)| old);
                }
            }
            Verdict::Reject { hello, reason } => {
                let claimed = verdict.claimed_sender();
                let detail = self
                    .acceptor
                    .reject_detail(hello.as_ref(), *reason, c.tls_node);
                let peer = claimed.and_then(|f| self.shared.peers.shared(f));
                let rejected = Incident::InboundRejected {
                    addr: c.peer_addr,
                    claimed,
                    reason: *reason,
                    detail: &detail,
                };
                self.accounts.note(peer.as_deref(), rejected);
                c.state = State::Done;
            }
            Verdict::Violation(v) => {
                let violation = Incident::Violation {
                    addr: c.peer_addr,
                    from: None,
                    violation: v,
                };
                self.accounts.note(None, violation);
                c.state = State::Done;
            }
        }
        self.loop_handle
            .send(LoopCmd::Verdict { conn: id, verdict });
    }

    /// The connection broke the protocol: counted, logged, closed.
    fn violation(
        &self,
        id: ConnId,
        c: &mut Incoming,
        peer: Option<&PeerShared>,
        from: Option<u64>,
        v: ProtocolViolation,
    ) {
        let violation = Incident::Violation {
            addr: c.peer_addr,
            from,
            violation: &v,
        };
        self.accounts.note(peer, violation);
        c.state = State::Done;
        self.loop_handle.send(LoopCmd::Close {
            conn: id,
            reason: CloseReason::PeerMisbehaved(v),
        });
    }

    /// The loop has closed the connection and every byte has been seen: a
    /// connection that ended inside a frame (or a hello) broke the protocol.
    fn finish(&self, c: &Incoming, reason: CloseReason) {
        let truncated = match &c.state {
            State::Open { .. } => c.deframer.pending_bytes() > 0,
            State::Hello(h) => !h.is_empty(),
            State::Done => false,
        };
        if truncated && reason == CloseReason::Eof {
            let from = match c.state {
                State::Open { from, .. } => Some(from),
                _ => None,
            };
            let peer = from.and_then(|f| self.shared.peers.shared(f));
            let violation = Incident::Violation {
                addr: c.peer_addr,
                from,
                violation: &ProtocolViolation::Truncated,
            };
            self.accounts.note(peer.as_deref(), violation);
        }
    }
}
