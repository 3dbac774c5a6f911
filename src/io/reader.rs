//! The reader thread: answers handshakes, decodes frames and delivers
//! messages into the receive channels.
//!
//! Receive-side overload is handled by backpressure, never by dropping: when
//! the caller does not drain a receive channel, delivery blocks, the reader
//! stops taking bytes off inbound connections, their read credit runs out,
//! the event loop stops reading those sockets, TCP windows close, and the
//! senders' queues fill, which is where drops happen and are reported to
//! Raft. Connections are served round-robin, at most
//! `reader_fairness_budget` frames at a time, so a flood from one peer
//! delays another peer's messages by at most a few budgets of deliveries.

use crate::error::{CloseReason, ProtocolViolation};
use crate::io::{ConnId, Credit, LoopCmd, LoopHandle, ReaderMsg, Recycler};
use crate::message::{Message, MessageClass};
use crate::reporter::Reporter;
use crate::snapshot::{IncomingSnapshot, Parking, ReaderParts, SnapItem, SnapshotReader};
use crate::stats::{PeerCounters, rate_limit};
use crate::transport::{Inner, PeerHandle};
use crate::wire::{AckStatus, SnapshotBegin, SnapshotEnd};
use crate::wire::{
    Cursor, Deframer, FRAME_HEADER_LEN, Frame, FrameKind, HELLO_LEN, Hello, HelloParse, Lane,
    RejectReason, Response,
};
use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use log::{debug, info, warn};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Duration;

/// The transport is stopping; the reader ends.
struct Stopped;

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

/// Sends between two looks at the channel's length while the byte bound is
/// far: keeps the list of sizes short without reading the consumer's end of
/// the channel (another core's cache line) for every message.
const PRUNE_EVERY: usize = 64;

/// Messages of one connection accounted for (delivered, or dropped and
/// counted) by one call of `consume`: added to the count the event loop
/// acknowledges to the sender once per call (and before any wait), not per
/// message, which would write a cache line the loop reads on every read.
#[derive(Default)]
struct Tally(u64);

impl Tally {
    fn publish(&mut self, credit: &Credit) {
        if self.0 > 0 {
            credit.delivered.fetch_add(self.0, Relaxed);
            self.0 = 0;
        }
    }
}

/// A receive channel bounded in messages (by the channel) and in bytes (by
/// tracking the sizes of what is still in it: the channel is FIFO, so its
/// length says how many of the oldest sends have been consumed).
///
/// `bytes` counts what was sent and not yet seen consumed, so it may be
/// more than the channel holds, never less: the bound is checked against
/// it first, and only a message that would not fit looks at the channel.
struct Delivery<M> {
    tx: Sender<M>,
    sizes: VecDeque<usize>,
    bytes: usize,
    max_bytes: usize,
    unpruned: usize,
}

impl<M> Delivery<M> {
    fn new(tx: Sender<M>, max_bytes: usize) -> Self {
        Delivery {
            tx,
            sizes: VecDeque::new(),
            bytes: 0,
            max_bytes,
            unpruned: 0,
        }
    }

    fn prune(&mut self) {
        self.unpruned = 0;
        let held = self.tx.len();
        while self.sizes.len() > held {
            if let Some(s) = self.sizes.pop_front() {
                self.bytes -= s;
            }
        }
    }

    fn fits(&self, size: usize) -> bool {
        self.bytes == 0 || self.bytes + size <= self.max_bytes
    }

    /// Whether a message of `size` bytes is within the byte bound now.
    fn has_room_for(&mut self, size: usize) -> bool {
        if self.fits(size) {
            return true;
        }
        self.prune();
        self.fits(size)
    }

    fn sent(&mut self, size: usize) {
        self.sizes.push_back(size);
        self.bytes += size;
        self.unpruned += 1;
        if self.unpruned >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Puts the message in the channel if it has room now; gives it back
    /// if not.
    fn try_deliver(&mut self, m: M, size: usize) -> Result<Result<(), M>, Stopped> {
        if !self.has_room_for(size) {
            return Ok(Err(m));
        }
        match self.tx.try_send(m) {
            Ok(()) => {
                self.sent(size);
                Ok(Ok(()))
            }
            Err(TrySendError::Full(m)) => Ok(Err(m)),
            Err(TrySendError::Disconnected(_)) => Err(Stopped),
        }
    }

    /// Blocks until the message is in the channel, or the transport stops.
    fn deliver(&mut self, m: M, size: usize, stop: &Receiver<()>) -> Result<(), Stopped> {
        // Over the byte bound: wait for the caller to drain. The channel
        // cannot signal a drain, so look again every millisecond; this only
        // happens while the caller is behind.
        while !self.has_room_for(size) {
            select! {
                recv(stop) -> _ => return Err(Stopped),
                default(Duration::from_millis(1)) => {}
            }
        }
        // The common case costs one try_send; only a full channel waits.
        match self.tx.try_send(m) {
            Ok(()) => {}
            // Every receiver is gone: only possible while stopping.
            Err(TrySendError::Disconnected(_)) => return Err(Stopped),
            Err(TrySendError::Full(m)) => select! {
                send(self.tx, m) -> r => {
                    if r.is_err() {
                        return Err(Stopped);
                    }
                }
                recv(stop) -> _ => return Err(Stopped),
            },
        }
        self.sent(size);
        Ok(())
    }
}

enum State {
    /// Waiting for the hello.
    Hello(Vec<u8>),
    /// Accepted: frames from `from` on `lane`.
    Open { from: u64, lane: Lane },
    /// Rejected or failed: further bytes are discarded.
    Done,
}

/// Where an inbound snapshot stream stands.
enum SnapIn {
    /// Accepted, waiting for the `SnapshotBegin` frame.
    AwaitBegin,
    /// Chunks go to the application's `SnapshotReader`; `pending` holds one
    /// that did not fit (the stream is parked until the reader takes one).
    Stream {
        tx: Sender<SnapItem>,
        parking: Arc<Parking>,
        pending: Option<SnapItem>,
    },
    /// An inline snapshot being assembled.
    Inline { buf: Vec<u8>, size: u64, crc: u32 },
    /// The end was passed on, or the snapshot was refused or abandoned:
    /// only heartbeats may follow; data is discarded.
    Finished,
}

/// Whether a connection can go on being served.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    /// A snapshot stream waits for its application to read.
    Park,
}

struct InConn {
    peer_addr: Option<SocketAddr>,
    credit: Arc<Credit>,
    state: State,
    deframer: Deframer,
    chunks: VecDeque<Vec<u8>>,
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
    inner: Arc<Inner<M>>,
    reporter: Arc<dyn Reporter>,
    input: Receiver<ReaderMsg>,
    loop_handle: LoopHandle,
    messages: Delivery<M>,
    proposals: Delivery<M>,
    /// With `separate_appends`.
    appends: Delivery<M>,
    /// Appends that found the appends channel full, each holding back its
    /// connection (at most one per connection), in arrival order.
    held: VecDeque<(ConnId, M, usize)>,
    snapshots: Delivery<IncomingSnapshot<M>>,
    /// For `SnapshotReader`s to wake this thread.
    wake_tx: Sender<ReaderMsg>,
    recycler: Recycler,
    incoming_snapshots: Arc<AtomicUsize>,
    stop: Receiver<()>,
    conns: HashMap<ConnId, InConn>,
    ready: VecDeque<ConnId>,
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
        inner: Arc<Inner<M>>,
        reporter: Arc<dyn Reporter>,
        input: Receiver<ReaderMsg>,
        loop_handle: LoopHandle,
        out: Outputs<M>,
        stop: Receiver<()>,
    ) -> Self {
        let max_bytes = inner.config.recv_queue_bytes;
        Reader {
            inner,
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
            ready: VecDeque::new(),
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
            if let Some(id) = self.ready.pop_front() {
                if self.serve(id).is_err() {
                    return;
                }
            }
        }
    }

    fn handle_input(&mut self, m: ReaderMsg) {
        match m {
            ReaderMsg::Opened {
                conn,
                peer_addr,
                credit,
            } => {
                self.conns.insert(
                    conn,
                    InConn {
                        peer_addr,
                        credit,
                        state: State::Hello(Vec::with_capacity(HELLO_LEN)),
                        deframer: Deframer::new(self.inner.config.max_frame_len),
                        chunks: VecDeque::new(),
                        offset: 0,
                        closed: None,
                        queued: false,
                        snap: None,
                        behind: None,
                        tls_node: None,
                    },
                );
            }
            #[cfg(feature = "tls")]
            ReaderMsg::Identity { conn, node } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.tls_node = Some(node);
                }
            }
            ReaderMsg::Data { conn, bytes } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.chunks.push_back(bytes);
                    if !c.queued {
                        c.queued = true;
                        self.ready.push_back(conn);
                    }
                }
            }
            ReaderMsg::Closed { conn, reason } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.closed = Some(reason);
                    if !c.queued {
                        c.queued = true;
                        self.ready.push_back(conn);
                    }
                }
            }
            ReaderMsg::Wake { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if !c.queued {
                        c.queued = true;
                        self.ready.push_back(conn);
                    }
                }
            }
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
            if let Some(c) = self.conns.get_mut(&id) {
                if !c.queued {
                    c.queued = true;
                    self.ready.push_back(id);
                }
            }
        }
        Ok(())
    }

    /// Serves one connection for up to one fairness budget of frames.
    fn serve(&mut self, id: ConnId) -> Result<(), Stopped> {
        let Some(mut c) = self.conns.remove(&id) else {
            return Ok(());
        };
        c.queued = false;
        if self.held.iter().any(|(h, _, _)| *h == id) {
            // Woken when its held append is delivered.
            self.conns.insert(id, c);
            return Ok(());
        }
        if c.behind.is_some_and(|old| self.conns.contains_key(&old)) {
            // Woken when the older connection finishes.
            self.conns.insert(id, c);
            return Ok(());
        }
        c.behind = None;
        if c.closed.is_some() {
            // A stream cut short is a failed snapshot: nothing waits for
            // its parked chunk any more.
            if let Some(SnapIn::Stream { pending, .. }) = &mut c.snap {
                *pending = None;
            }
        } else if push_pending(&mut c.snap) == Flow::Park {
            self.conns.insert(id, c);
            return Ok(());
        }
        let mut budget = Budget {
            frames: self.inner.config.reader_fairness_budget,
            bytes: self.inner.config.read_chunk_len,
        };
        let peer = match c.state {
            State::Open { from, .. } => self.peer(from),
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
            let parked = matches!(result, Ok(Flow::Park));
            if off < len && matches!(c.state, State::Open { .. }) {
                c.offset = off;
                c.chunks.push_front(chunk);
            } else {
                c.offset = 0;
                release(
                    &c.credit,
                    len,
                    self.inner.config.conn_read_cap,
                    id,
                    &self.loop_handle,
                );
                // Reused by the loop for its next reads: no allocation and
                // no zeroing (the pools are small; the rest is freed).
                self.recycler.recycle(chunk);
            }
            result?;
            if parked {
                // Woken by the SnapshotReader when it takes a chunk.
                self.conns.insert(id, c);
                return Ok(());
            }
        }
        if c.chunks.is_empty() {
            if let Some(reason) = c.closed.take() {
                self.finish(id, &c, reason);
                // Let a newer connection of the same sender and lane go on.
                for (&next, n) in self.conns.iter_mut() {
                    if n.behind == Some(id) {
                        n.behind = None;
                        if !n.queued {
                            n.queued = true;
                            self.ready.push_back(next);
                        }
                    }
                }
                return Ok(());
            }
        } else {
            c.queued = true;
            self.ready.push_back(id);
        }
        self.conns.insert(id, c);
        Ok(())
    }

    fn peer(&self, id: u64) -> Option<Arc<PeerHandle<M>>> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn counters<'a>(&'a self, peer: Option<&'a PeerHandle<M>>) -> &'a PeerCounters {
        peer.map(|p| p.counters()).unwrap_or(&self.inner.non_peers)
    }

    /// Consumes bytes of one chunk from `*off`: the hello, then frames.
    fn consume(
        &mut self,
        id: ConnId,
        c: &mut InConn,
        chunk: &mut Vec<u8>,
        off: &mut usize,
        budget: &mut Budget,
        peer: Option<&PeerHandle<M>>,
    ) -> Result<Flow, Stopped> {
        if let State::Hello(buf) = &mut c.state {
            let take = (HELLO_LEN - buf.len()).min(chunk.len() - *off);
            buf.extend_from_slice(&chunk[*off..*off + take]);
            *off += take;
            match Hello::decode(buf) {
                None => return Ok(Flow::Go),
                Some(parsed) => {
                    self.handshake(id, c, parsed);
                }
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
                looked_up = self.peer(from);
                looked_up.as_deref()
            }
        };
        if lane == Lane::Snapshot {
            return self.consume_snapshot(id, c, from, chunk, off, budget, peer);
        }
        let mut cursor = c.deframer.feed(&chunk[*off..]);
        let mut violation = None;
        let mut flow = Flow::Go;
        let counters = peer.map(|p| p.counters()).unwrap_or(&self.inner.non_peers);
        let lc = counters.lane(lane);
        // (Lost if the transport stops meanwhile: nothing is acknowledged
        // after that.)
        let mut tally = Tally::default();
        while let Some(frame) = budget.next(&mut cursor) {
            let frame = match frame {
                Ok(f) => f,
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            };
            match handle_frame::<M>(&self.inner, from, frame) {
                Ok(None) => {}
                Ok(Some((m, size))) => {
                    // Accounted for here from now on, whatever happens
                    // next: the sender may stop counting it as in flight.
                    tally.0 += 1;
                    if peer.is_some_and(|p| p.paused.load(Relaxed)) {
                        counters.received_dropped_paused.fetch_add(1, Relaxed);
                        continue;
                    }
                    if m.is_local_only() {
                        counters.received_local_only.fetch_add(1, Relaxed);
                        if rate_limit(
                            &counters.error_logged_at,
                            self.inner.now(),
                            self.inner.config.log_interval,
                        ) {
                            warn!(
                                "node {}: dropped a local-only message received from node {from} \
                                 (it must never cross the network)",
                                self.inner.config.node_id
                            );
                        }
                        continue;
                    }
                    // Counted before the caller can see it.
                    lc.msgs_received.fetch_add(1, Relaxed);
                    lc.bytes_received
                        .fetch_add((size + FRAME_HEADER_LEN) as u64, Relaxed);
                    let d = match m.class() {
                        MessageClass::Proposal => &mut self.proposals,
                        MessageClass::Append if self.inner.config.separate_appends => {
                            // A full appends channel holds back this
                            // connection only, not the reader.
                            if let Err(m) = self.appends.try_deliver(m, size)? {
                                self.held.push_back((id, m, size));
                                flow = Flow::Park;
                                break;
                            }
                            continue;
                        }
                        _ => &mut self.messages,
                    };
                    if let Err(m) = d.try_deliver(m, size)? {
                        // About to wait for the caller: what was delivered
                        // so far is acknowledged first.
                        tally.publish(&c.credit);
                        d.deliver(m, size, &self.stop)?;
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

    /// Consumes frames of a snapshot connection.
    #[allow(clippy::too_many_arguments)]
    fn consume_snapshot(
        &mut self,
        id: ConnId,
        c: &mut InConn,
        from: u64,
        chunk: &mut Vec<u8>,
        off: &mut usize,
        budget: &mut Budget,
        peer: Option<&PeerHandle<M>>,
    ) -> Result<Flow, Stopped> {
        let mut snap = c.snap.take().unwrap_or(SnapIn::AwaitBegin);
        let mut cursor = c.deframer.feed(&chunk[*off..]);
        let mut violation = None;
        let mut flow = Flow::Go;
        // A chunk frame that is the whole input buffer: the buffer itself
        // goes to the application (after the cursor lets go of it).
        let mut whole_chunk = None;
        while flow == Flow::Go {
            let frame = match budget.next(&mut cursor) {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(v)) => {
                    violation = Some(v);
                    break;
                }
            };
            let counters = self.counters(peer);
            counters
                .lane(Lane::Snapshot)
                .bytes_received
                .fetch_add((frame.payload.len() + FRAME_HEADER_LEN) as u64, Relaxed);
            let step = match (frame.kind, &mut snap) {
                (FrameKind::Heartbeat, _) if frame.payload.is_empty() => Ok(None),
                (FrameKind::SnapshotBegin, SnapIn::AwaitBegin) => {
                    self.snapshot_begin(id, from, frame.payload, peer)
                }
                (
                    FrameKind::SnapshotChunk,
                    SnapIn::Stream {
                        tx,
                        pending,
                        parking,
                        ..
                    },
                ) => {
                    let p = frame.payload;
                    if p.len() + FRAME_HEADER_LEN == chunk.len()
                        && std::ptr::eq(p.as_ptr(), chunk[FRAME_HEADER_LEN..].as_ptr())
                    {
                        // The last frame of this input, so nothing follows
                        // it in this loop.
                        whole_chunk = Some(frame.payload_crc);
                    } else {
                        *pending = Some(SnapItem::Chunk {
                            buf: p.to_vec(),
                            start: 0,
                            crc: frame.payload_crc,
                        });
                        if push(tx, pending, parking) == Flow::Park {
                            flow = Flow::Park;
                        }
                    }
                    Ok(None)
                }
                (FrameKind::SnapshotChunk, SnapIn::Inline { buf, size, crc }) => {
                    if (buf.len() + frame.payload.len()) as u64 > *size {
                        self.refuse(id, from, peer, AckStatus::SizeMismatch);
                        Ok(Some(SnapIn::Finished))
                    } else {
                        buf.extend_from_slice(frame.payload);
                        *crc = match frame.payload_crc {
                            Some(p) => crate::wire::crc::combine(*crc, p, frame.payload.len()),
                            None => crc32c::crc32c_append(*crc, frame.payload),
                        };
                        Ok(None)
                    }
                }
                (
                    FrameKind::SnapshotEnd,
                    SnapIn::Stream {
                        tx,
                        pending,
                        parking,
                        ..
                    },
                ) => {
                    match SnapshotEnd::decode(frame.payload) {
                        Ok(end) => {
                            *pending = Some(SnapItem::End(end));
                            if push(tx, pending, parking) == Flow::Park {
                                flow = Flow::Park;
                            }
                            // Keep the stream until the end is taken.
                            Ok(None)
                        }
                        Err(_) => Err(ProtocolViolation::UnexpectedFrame),
                    }
                }
                (FrameKind::SnapshotEnd, SnapIn::Inline { .. }) => {
                    match SnapshotEnd::decode(frame.payload) {
                        Ok(end) => {
                            let SnapIn::Inline { buf, size, crc } =
                                std::mem::replace(&mut snap, SnapIn::Finished)
                            else {
                                unreachable!("matched Inline above")
                            };
                            self.inline_end(id, from, peer, buf, size, crc, end)?;
                            Ok(Some(SnapIn::Finished))
                        }
                        Err(_) => Err(ProtocolViolation::UnexpectedFrame),
                    }
                }
                // The application dropped the reader or we refused: discard.
                (FrameKind::SnapshotChunk | FrameKind::SnapshotEnd, SnapIn::Finished) => Ok(None),
                _ => Err(ProtocolViolation::UnexpectedFrame),
            };
            match step {
                Ok(Some(next)) => snap = next,
                Ok(None) => {}
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            }
            // An end that went through completes the stream.
            if let SnapIn::Stream { pending: None, .. } = &snap {
                if frame.kind == FrameKind::SnapshotEnd {
                    snap = SnapIn::Finished;
                }
            }
        }
        *off = chunk.len() - cursor.remaining();
        if let (
            Some(crc),
            SnapIn::Stream {
                tx,
                pending,
                parking,
            },
        ) = (whole_chunk, &mut snap)
        {
            *pending = Some(SnapItem::Chunk {
                buf: std::mem::take(chunk),
                start: FRAME_HEADER_LEN,
                crc,
            });
            if push(tx, pending, parking) == Flow::Park {
                flow = Flow::Park;
            }
        }
        c.snap = Some(snap);
        if let Some(v) = violation {
            c.snap = Some(SnapIn::Finished);
            self.violation(id, c, peer, Some(from), v);
            *off = chunk.len();
            return Ok(Flow::Go);
        }
        Ok(flow)
    }

    /// A `SnapshotBegin` frame: checks the limits, then hands the
    /// application an `IncomingSnapshot` (or starts assembling an inline one).
    fn snapshot_begin(
        &mut self,
        id: ConnId,
        from: u64,
        payload: &[u8],
        peer: Option<&PeerHandle<M>>,
    ) -> Result<Option<SnapIn>, ProtocolViolation> {
        let cfg = &self.inner.config;
        let (begin, msg) =
            SnapshotBegin::decode(payload).map_err(|_| ProtocolViolation::UnexpectedFrame)?;
        let too_large = begin.size > cfg.max_snapshot_len
            || (begin.inline && begin.size > cfg.max_inline_snapshot_len as u64);
        if too_large {
            self.refuse(id, from, peer, AckStatus::TooLarge);
            return Ok(Some(SnapIn::Finished));
        }
        if begin.inline {
            // Grown as chunks arrive, never beyond the announced size.
            return Ok(Some(SnapIn::Inline {
                buf: Vec::new(),
                size: begin.size,
                crc: 0,
            }));
        }
        let m = M::decode(msg).map_err(|e| ProtocolViolation::Decode(e.0))?;
        check_addresses(&self.inner, from, &m)?;
        let active = self.incoming_snapshots.fetch_add(1, AcqRel);
        if active >= cfg.max_incoming_snapshots {
            self.incoming_snapshots.fetch_sub(1, AcqRel);
            self.refuse(id, from, peer, AckStatus::TooMany);
            return Ok(Some(SnapIn::Finished));
        }
        let counters = peer
            .map(|p| p.link.counters.clone())
            .unwrap_or_else(|| self.inner.non_peers.clone());
        counters
            .lane(Lane::Snapshot)
            .msgs_received
            .fetch_add(1, Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(cfg.snapshot_inflight_chunks);
        let parking = Arc::new(Parking::default());
        let reader = SnapshotReader::new(ReaderParts {
            rx,
            size: begin.size,
            conn: id,
            peer: from,
            loop_handle: self.loop_handle.clone(),
            reader_wake: self.wake_tx.clone(),
            parking: parking.clone(),
            active: self.incoming_snapshots.clone(),
            counters,
            progress_timeout: cfg.snapshot_progress_timeout,
            recycler: self.recycler.clone(),
        });
        info!(
            "node {}: receiving a snapshot of {} bytes from node {from}",
            cfg.node_id, begin.size
        );
        let incoming = IncomingSnapshot {
            message: m,
            size: begin.size,
            data: reader,
        };
        if self
            .snapshots
            .deliver(incoming, msg.len(), &self.stop)
            .is_err()
        {
            // Stopping: the reader (and its verdict) went down with it.
            return Ok(Some(SnapIn::Finished));
        }
        Ok(Some(SnapIn::Stream {
            tx,
            parking,
            pending: None,
        }))
    }

    /// The end of an inline snapshot: verify, decode, deliver, answer.
    #[allow(clippy::too_many_arguments)]
    fn inline_end(
        &mut self,
        id: ConnId,
        from: u64,
        peer: Option<&PeerHandle<M>>,
        buf: Vec<u8>,
        size: u64,
        crc: u32,
        end: SnapshotEnd,
    ) -> Result<(), Stopped> {
        if end.size != size || buf.len() as u64 != size {
            self.refuse(id, from, peer, AckStatus::SizeMismatch);
            return Ok(());
        }
        if end.crc != crc {
            self.refuse(id, from, peer, AckStatus::ChecksumMismatch);
            return Ok(());
        }
        let m = match M::decode(&buf) {
            Ok(m) if check_addresses(&self.inner, from, &m).is_ok() => m,
            _ => {
                self.refuse(id, from, peer, AckStatus::Malformed);
                return Ok(());
            }
        };
        let counters = self.counters(peer);
        counters.snapshots_received.fetch_add(1, Relaxed);
        counters
            .lane(Lane::Snapshot)
            .msgs_received
            .fetch_add(1, Relaxed);
        let d = if m.class() == MessageClass::Proposal {
            &mut self.proposals
        } else {
            &mut self.messages
        };
        d.deliver(m, buf.len(), &self.stop)?;
        self.loop_handle.send(LoopCmd::SnapshotAck {
            conn: id,
            status: AckStatus::Ok,
        });
        Ok(())
    }

    /// Refuses an incoming snapshot: tells the sender why and closes.
    fn refuse(&self, id: ConnId, from: u64, peer: Option<&PeerHandle<M>>, status: AckStatus) {
        let counters = self.counters(peer);
        counters.snapshots_receive_failed.fetch_add(1, Relaxed);
        counters.set_last_error(format!("incoming snapshot refused: {status}"));
        warn!(
            "node {}: refusing a snapshot from node {from}: {status}",
            self.inner.config.node_id
        );
        self.loop_handle
            .send(LoopCmd::SnapshotAck { conn: id, status });
    }

    fn handshake(
        &mut self,
        id: ConnId,
        c: &mut InConn,
        parsed: Result<HelloParse, crate::wire::HelloError>,
    ) {
        let cfg = &self.inner.config;
        let hello = match parsed {
            Err(_) => {
                let g = &self.inner.global;
                if matches!(&c.state, State::Hello(b) if b.first() == Some(&0x16))
                    && rate_limit(&g.tls_logged_at, self.inner.now(), cfg.log_interval)
                {
                    warn!(
                        "node {}: the connection from {:?} starts like a TLS handshake, but \
                         this node runs without TLS (is Config::tls missing here?)",
                        cfg.node_id, c.peer_addr
                    );
                }
                self.violation(id, c, None, None, ProtocolViolation::BadHello);
                return;
            }
            Ok(HelloParse::Unsupported(v)) => {
                self.reject(
                    id,
                    c,
                    None,
                    RejectReason::UnsupportedVersion,
                    &format!("version {v}"),
                );
                return;
            }
            Ok(HelloParse::Hello(h)) => h,
        };
        let reporter = &self.reporter;
        let checked = hello
            .check(cfg.cluster_id, cfg.node_id, |from| {
                reporter.is_id_removed(from)
            })
            .and_then(|lane| {
                // With TLS, the certificate says who the dialer is.
                if cfg.has_tls() && c.tls_node != Some(hello.from) {
                    self.inner.global.tls.wrong_identity.fetch_add(1, Relaxed);
                    Err(RejectReason::IdentityMismatch)
                } else {
                    Ok(lane)
                }
            });
        match checked {
            Ok(lane) => {
                self.inner.global.inbound_accepted.fetch_add(1, Relaxed);
                debug!(
                    "node {}: accepted {lane} connection from node {} ({:?})",
                    cfg.node_id, hello.from, c.peer_addr
                );
                c.state = State::Open {
                    from: hello.from,
                    lane,
                };
                if lane != Lane::Snapshot {
                    c.behind = self
                        .conns
                        .iter()
                        .find(|(_, o)| {
                            matches!(o.state, State::Open { from: f, lane: l }
                                if f == hello.from && l == lane)
                        })
                        .map(|(&old, _)| old);
                }
                self.loop_handle.send(LoopCmd::Accept {
                    conn: id,
                    from: hello.from,
                    lane,
                });
            }
            Err(reason) => {
                let detail = match reason {
                    RejectReason::WrongCluster => format!(
                        "cluster {:#x}, ours is {:#x}",
                        hello.cluster_id, cfg.cluster_id
                    ),
                    RejectReason::WrongReceiver => {
                        format!("it meant to reach node {}", hello.to)
                    }
                    RejectReason::IdentityMismatch => format!(
                        "(certificate: node {})",
                        c.tls_node.map_or("?".to_string(), |n| n.to_string())
                    ),
                    _ => String::new(),
                };
                self.reject(id, c, Some(hello.from), reason, &detail);
            }
        }
    }

    fn reject(
        &mut self,
        id: ConnId,
        c: &mut InConn,
        from: Option<u64>,
        reason: RejectReason,
        detail: &str,
    ) {
        let g = &self.inner.global;
        g.inbound_rejected.fetch_add(1, Relaxed);
        let peer = from.and_then(|f| self.peer(f));
        let counters = self.counters(peer.as_deref());
        counters.rejected_inbound.fetch_add(1, Relaxed);
        let slot = if peer.is_some() {
            &counters.error_logged_at
        } else {
            &g.error_logged_at
        };
        if rate_limit(slot, self.inner.now(), self.inner.config.log_interval) {
            warn!(
                "node {}: rejected connection from {:?} (claims node {}): {reason} {detail}",
                self.inner.config.node_id,
                c.peer_addr,
                from.map_or("?".to_string(), |f| f.to_string()),
            );
        }
        c.state = State::Done;
        self.loop_handle.send(LoopCmd::Reject {
            conn: id,
            response: Response::Reject(reason).encode(),
        });
    }

    fn violation(
        &self,
        id: ConnId,
        c: &mut InConn,
        peer: Option<&PeerHandle<M>>,
        from: Option<u64>,
        v: ProtocolViolation,
    ) {
        let g = &self.inner.global;
        g.protocol_errors.fetch_add(1, Relaxed);
        let counters = self.counters(peer);
        if from.is_some() {
            counters.protocol_errors.fetch_add(1, Relaxed);
            counters.set_last_error(format!("inbound connection closed: {v}"));
        }
        let slot = if peer.is_some() {
            &counters.error_logged_at
        } else {
            &g.error_logged_at
        };
        if rate_limit(slot, self.inner.now(), self.inner.config.log_interval) {
            warn!(
                "node {}: closing connection from {:?} (node {}): {v}",
                self.inner.config.node_id,
                c.peer_addr,
                from.map_or("?".to_string(), |f| f.to_string()),
            );
        }
        c.state = State::Done;
        self.loop_handle.send(LoopCmd::Close {
            conn: id,
            reason: CloseReason::PeerMisbehaved(v),
        });
    }

    /// The loop has closed the connection and every byte has been seen.
    fn finish(&mut self, id: ConnId, c: &InConn, reason: CloseReason) {
        let truncated = match &c.state {
            State::Open { .. } => c.deframer.pending_bytes() > 0,
            State::Hello(buf) => !buf.is_empty(),
            State::Done => false,
        };
        if truncated && reason == CloseReason::Eof {
            let g = &self.inner.global;
            g.protocol_errors.fetch_add(1, Relaxed);
            let (peer, from) = match c.state {
                State::Open { from, .. } => (self.peer(from), Some(from)),
                _ => (None, None),
            };
            let counters = self.counters(peer.as_deref());
            if from.is_some() {
                counters.protocol_errors.fetch_add(1, Relaxed);
                counters.set_last_error(format!(
                    "inbound connection closed: {}",
                    ProtocolViolation::Truncated
                ));
            }
            if rate_limit(
                &g.error_logged_at,
                self.inner.now(),
                self.inner.config.log_interval,
            ) {
                warn!(
                    "node {}: connection from {:?} (node {}) ended inside a frame",
                    self.inner.config.node_id,
                    c.peer_addr,
                    from.map_or("?".to_string(), |f| f.to_string())
                );
            }
        } else if let State::Open { from, lane } = c.state {
            info!(
                "node {}: inbound {lane} connection from node {from} closed: {reason}",
                self.inner.config.node_id
            );
        }
        let _ = id;
    }
}

/// Checks and decodes one frame of a message or append lane. `Ok(None)`
/// for a link heartbeat.
fn handle_frame<M: Message>(
    inner: &Inner<M>,
    from: u64,
    frame: Frame<'_>,
) -> Result<Option<(M, usize)>, ProtocolViolation> {
    match frame.kind {
        FrameKind::Heartbeat if frame.payload.is_empty() => Ok(None),
        FrameKind::Message => {
            let m = M::decode(frame.payload).map_err(|e| ProtocolViolation::Decode(e.0))?;
            check_addresses(inner, from, &m)?;
            Ok(Some((m, frame.payload.len())))
        }
        _ => Err(ProtocolViolation::UnexpectedFrame),
    }
}

/// A message must come from the connection's sender and be for us.
fn check_addresses<M: Message>(
    inner: &Inner<M>,
    from: u64,
    m: &M,
) -> Result<(), ProtocolViolation> {
    if m.from() != from {
        return Err(ProtocolViolation::WrongSender {
            expected: from,
            got: m.from(),
        });
    }
    if m.to() != inner.config.node_id {
        return Err(ProtocolViolation::WrongReceiver(m.to()));
    }
    Ok(())
}

/// Offers a stream's pending item to its application. When the channel is
/// full, parks the stream (the `SnapshotReader` wakes it after taking an
/// item); when the application is gone, drops the item.
fn push(tx: &Sender<SnapItem>, pending: &mut Option<SnapItem>, parking: &Parking) -> Flow {
    let Some(item) = pending.take() else {
        return Flow::Go;
    };
    match tx.try_send(item) {
        Ok(()) => Flow::Go,
        Err(TrySendError::Disconnected(_)) => Flow::Go,
        Err(TrySendError::Full(item)) => {
            parking.parked.store(true, SeqCst);
            // The reader may have taken an item between the two: try again.
            match tx.try_send(item) {
                Ok(()) => Flow::Go,
                Err(TrySendError::Disconnected(_)) => Flow::Go,
                Err(TrySendError::Full(item)) => {
                    *pending = Some(item);
                    Flow::Park
                }
            }
        }
    }
}

/// Pushes a parked stream's pending item, if any.
fn push_pending(snap: &mut Option<SnapIn>) -> Flow {
    match snap {
        Some(SnapIn::Stream {
            tx,
            pending,
            parking,
            ..
        }) => {
            let was_end = matches!(pending, Some(SnapItem::End(_)));
            let flow = push(tx, pending, parking);
            if was_end && flow == Flow::Go {
                *snap = Some(SnapIn::Finished);
            }
            flow
        }
        _ => Flow::Go,
    }
}

/// Returns read credit for consumed bytes; resumes reading if the loop had
/// stopped for lack of it.
fn release(credit: &Credit, n: usize, cap: usize, conn: ConnId, loop_handle: &LoopHandle) {
    let left = credit.inflight.fetch_sub(n, SeqCst) - n;
    if left < cap && credit.paused.swap(false, SeqCst) {
        loop_handle.send(LoopCmd::ResumeRead { conn });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_bounded_in_bytes_and_resumes_after_a_drain() {
        let (tx, rx) = crossbeam_channel::bounded(100);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1000);
        d.deliver(1u32, 600, &stop).ok().unwrap();
        d.deliver(2u32, 400, &stop).ok().unwrap();
        assert_eq!(d.bytes, 1000);
        // A third would exceed the bound: it waits until the caller drains.
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let first = rx.recv().unwrap();
            (first, rx)
        });
        d.deliver(3u32, 300, &stop).ok().unwrap();
        let (first, rx) = drainer.join().unwrap();
        assert_eq!(first, 1);
        assert_eq!(d.bytes, 700);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3]);
        // One message larger than the bound passes an empty channel.
        d.deliver(4u32, 5000, &stop).ok().unwrap();
        assert_eq!(rx.recv().unwrap(), 4);
    }

    #[test]
    fn delivery_sizes_stay_few_while_the_caller_keeps_up() {
        let (tx, rx) = crossbeam_channel::bounded(10_000);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1 << 20);
        for i in 0..10_000u32 {
            d.deliver(i, 100, &stop).ok().unwrap();
            assert_eq!(rx.try_recv(), Ok(i));
            assert!(d.sizes.len() <= PRUNE_EVERY, "{} sizes kept", d.sizes.len());
            assert_eq!(d.bytes, d.sizes.len() * 100);
        }
        // Never less than what the channel holds.
        d.deliver(7, 100, &stop).ok().unwrap();
        assert!(d.bytes >= 100 * rx.len());
    }

    #[test]
    fn delivery_wait_ends_when_the_transport_stops() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1000);
        d.deliver(1u32, 10, &stop).ok().unwrap();
        drop(stop_tx);
        assert!(d.deliver(2u32, 10, &stop).is_err());
    }
}
