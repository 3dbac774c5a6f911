//! The writer of one peer lane: drains its queue, encodes frames into a
//! batch, and hands the batch to the event loop when the queue is empty or
//! the batch is full. At most `max_inflight_batches` batches are out at a
//! time; the loop hands spent buffers back, which is both the flow control
//! and the buffer reuse (no allocation per message or per batch once warm).

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, Returned};
use super::peers::{DirectSend, PeerShared, Queued};
use crate::config::Config;
use crate::conn::Batch;
use crate::error::DropReason;
use crate::lanes::QueuedLane;
use crate::message::Message;
use crate::wire::FrameKind;
use crate::wire::frame::{Checksums, encode_frame_owned};
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, select};
use log::error;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Payload tails of at least this many bytes are written from the
/// message's own buffer (`Message::encode_owned`); shorter ones are copied
/// into the batch, where one more slice would cost more than the copy.
const MIN_OWNED_TAIL: usize = 16 << 10;

pub(crate) struct WriterCtx {
    pub peer_id: u64,
    pub peer: Arc<PeerShared>,
    pub lane: QueuedLane,
    pub returns: Receiver<Returned>,
    pub close: Receiver<()>,
    pub stop: Receiver<()>,
    pub loop_handle: LoopHandle,
    pub accounts: Arc<Accounts>,
    pub config: Config,
}

/// The writer thread of one lane. What it encodes with, the [`Encoder`],
/// is shared (behind a lock) with callers that send directly on an idle
/// lane ([`DirectSend`]); the queue is taken from only under that lock, so
/// a direct send can never overtake a message taken from the queue.
pub(crate) struct Writer<M> {
    enc: Arc<Mutex<Encoder<M>>>,
    queue: Receiver<Queued<M>>,
    returns: Receiver<Returned>,
    close: Receiver<()>,
    stop: Receiver<()>,
    /// The encoder is shared with direct senders (`share` was called).
    shared: bool,
}

/// What the writer thread woke for.
enum Woke<M> {
    /// Look at the queue and the returned batches again.
    Look,
    /// The next message (taken from the queue of an unshared lane).
    Msg(Queued<M>),
    /// The peer was removed or the transport stopped.
    End(DropReason),
}

/// Encodes a lane's messages into batches and hands them to the event
/// loop; accounts for the batches the loop hands back.
pub(crate) struct Encoder<M> {
    ctx: WriterCtx,
    spare: Vec<Vec<u8>>,
    /// Batches handed to the loop and not yet handed back…
    inflight: usize,
    /// …and the messages in them.
    inflight_msgs: u64,
    /// What the frame checksums cover (the hello tells the receiver).
    checksums: Checksums,
    /// The writer thread has finished: nothing may be sent any more.
    ended: bool,
    _m: PhantomData<fn() -> M>,
}

/// Whether a channel that is never sent on has been closed (its sender
/// dropped).
fn closed(rx: &Receiver<()>) -> bool {
    !matches!(rx.try_recv(), Err(TryRecvError::Empty))
}

impl<M: Message> Writer<M> {
    /// The writer thread of a lane ([`share`](Writer::share) hands its
    /// encoder to direct senders).
    pub fn new(ctx: WriterCtx, queue: Receiver<Queued<M>>) -> Writer<M> {
        Writer {
            shared: false,
            queue,
            returns: ctx.returns.clone(),
            close: ctx.close.clone(),
            stop: ctx.stop.clone(),
            enc: Arc::new(Mutex::new(Encoder {
                checksums: ctx.config.sent_checksums(),
                ctx,
                spare: Vec::new(),
                inflight: 0,
                inflight_msgs: 0,
                ended: false,
                _m: PhantomData,
            })),
        }
    }

    /// The encoder, for direct sends on this lane.
    pub fn share(&mut self) -> Arc<Mutex<Encoder<M>>> {
        self.shared = true;
        self.enc.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Encoder<M>> {
        self.enc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn run(self) {
        let max_inflight = self.lock().ctx.config.max_inflight_batches;
        let reason = loop {
            // Busy path: take spent buffers and the next messages without
            // waiting; wait only when idle or when every batch is out.
            let full = {
                let mut enc = self.lock();
                if enc.absorb_returns() {
                    // The loop let go of this peer.
                    break self.end_reason();
                }
                let full = enc.inflight >= max_inflight;
                if !full {
                    match self.queue.try_recv() {
                        Ok(first) => {
                            enc.flush_batch(first, Some(&self.queue));
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break DropReason::Removed,
                        Err(TryRecvError::Empty) => {}
                    }
                }
                full
            };
            match self.wait(full) {
                Woke::Look => {}
                Woke::Msg(first) => self.lock().flush_batch(first, Some(&self.queue)),
                Woke::End(reason) => break reason,
            }
        };
        let mut enc = self.lock();
        enc.ended = true;
        // Batches out at the loop come back (unwritten) when the loop learns
        // of the removal or stops; count them under the same reason. The
        // channel disconnects once the loop has let go of this peer.
        while enc.inflight > 0 {
            match self.returns.recv_timeout(Duration::from_millis(500)) {
                Ok(r) => {
                    enc.account(r);
                }
                Err(_) => break,
            }
        }
        // Batches the loop received after it let go of the peer (or never
        // received) will not come back.
        let lost = enc.inflight_msgs;
        enc.drop_msgs(reason, lost);
        // Count what is still queued: it will never be sent.
        let mut n = 0u64;
        let queued = &enc.ctx.peer.counters.lane(enc.ctx.lane.lane()).queued_bytes;
        for q in self.queue.try_iter() {
            queued.fetch_sub(q.len, AcqRel);
            n += 1;
        }
        enc.drop_msgs(reason, n);
    }

    /// Waits until a returned batch or (unless `full`) the queue has
    /// something (or is disconnected), or the lane ends.
    fn wait(&self, full: bool) -> Woke<M> {
        if full {
            // Only a returned batch can make progress: take it here (the
            // queue is not touched, so order needs no lock).
            return select! {
                recv(self.returns) -> r => self.took_back(r),
                recv(self.close) -> _ => Woke::End(DropReason::Removed),
                recv(self.stop) -> _ => Woke::End(DropReason::Stopped),
            };
        }
        if !self.shared {
            // Nobody else sends on this lane: take the message at once.
            return select! {
                recv(self.queue) -> m => match m {
                    Ok(m) => Woke::Msg(m),
                    Err(_) => Woke::End(DropReason::Removed),
                },
                recv(self.returns) -> r => self.took_back(r),
                recv(self.close) -> _ => Woke::End(DropReason::Removed),
                recv(self.stop) -> _ => Woke::End(DropReason::Stopped),
            };
        }
        // A direct send must not overtake a message taken from the queue,
        // so the queue is taken from only under the lock: wait for it
        // without taking.
        let mut sel = Select::new();
        sel.recv(&self.returns);
        sel.recv(&self.close);
        sel.recv(&self.stop);
        sel.recv(&self.queue);
        sel.ready();
        if closed(&self.stop) {
            Woke::End(DropReason::Stopped)
        } else if closed(&self.close) {
            Woke::End(DropReason::Removed)
        } else {
            Woke::Look
        }
    }

    /// A batch came back from the loop, or (`Err`) the loop let go.
    fn took_back(&self, r: Result<Returned, crossbeam_channel::RecvError>) -> Woke<M> {
        let Ok(r) = r else {
            return Woke::End(self.end_reason());
        };
        self.lock().take_back(r);
        Woke::Look
    }

    /// The loop let go of this peer: because the transport stopped, or
    /// because the peer was removed.
    fn end_reason(&self) -> DropReason {
        if closed(&self.stop) {
            DropReason::Stopped
        } else {
            DropReason::Removed
        }
    }
}

impl<M: Message> DirectSend<M> for Mutex<Encoder<M>> {
    fn try_direct(&self, m: Queued<M>, queue: &Sender<Queued<M>>) -> Result<(), Queued<M>> {
        // Never wait for the writer thread: it may be encoding a batch.
        let Ok(mut enc) = self.try_lock() else {
            return Err(m);
        };
        let gone = enc.absorb_returns();
        // Idle: nothing in flight and nothing queued (checked under the
        // lock, which the writer holds whenever it takes from the queue).
        if gone || enc.ended || enc.inflight > 0 || !queue.is_empty() {
            return Err(m);
        }
        let c = &enc.ctx;
        let lane = c.peer.counters.lane(c.lane.lane());
        // Counted in and out of the queue's bytes like a queued message.
        lane.queued_bytes.fetch_add(m.len, AcqRel);
        lane.msgs_direct.fetch_add(1, Relaxed);
        enc.flush_batch(m, None);
        Ok(())
    }
}

impl<M: Message> Encoder<M> {
    /// Accounts for one batch the loop handed back and keeps its buffer.
    fn take_back(&mut self, r: Returned) {
        let buf = self.account(r);
        self.keep_spare(buf);
    }

    /// Accounts for every batch the loop has handed back so far. True if
    /// the loop has let go of the lane (the channel is disconnected).
    fn absorb_returns(&mut self) -> bool {
        loop {
            match self.ctx.returns.try_recv() {
                Ok(r) => self.take_back(r),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Counts (and, where it means the peer is not reached, logs and
    /// reports) `n` messages dropped for `reason`.
    fn drop_msgs(&self, reason: DropReason, n: u64) {
        if n > 0 {
            let c = &self.ctx;
            let dropped = Incident::Dropped {
                lane: c.lane,
                reason,
                n,
            };
            c.accounts.note(Some(&c.peer), dropped);
        }
    }

    /// Counts a batch the loop handed back: sent, or dropped (reported
    /// only when unreachable: removal and stop are the user's doing).
    /// Returns the buffer.
    fn account(&mut self, r: Returned) -> Vec<u8> {
        let msgs = r.batch.msgs as u64;
        self.inflight -= 1;
        self.inflight_msgs -= msgs;
        let c = &self.ctx;
        match r.dropped {
            None => {
                let lane = c.peer.counters.lane(c.lane.lane());
                lane.msgs_sent.fetch_add(msgs, Relaxed);
                lane.bytes_sent.fetch_add(r.batch.len() as u64, Relaxed);
            }
            Some(reason) => self.drop_msgs(reason, msgs),
        }
        // The tails (the messages' own payloads) are freed here, off the
        // event loop's thread.
        r.batch.buf
    }

    fn keep_spare(&mut self, mut buf: Vec<u8>) {
        let c = &self.ctx;
        // Keep warm buffers, but not one that grew for a giant message.
        if buf.capacity() <= 2 * c.config.batch_max_bytes + c.config.max_frame_len as usize / 4
            && self.spare.len() < c.config.max_inflight_batches
        {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Encodes `first` and whatever else is queued, up to the batch caps,
    /// and hands the batch to the loop.
    /// `more`: the queue to take further messages from (the writer
    /// thread's turn), or none (a direct send of one message).
    fn flush_batch(&mut self, first: Queued<M>, more: Option<&Receiver<Queued<M>>>) {
        let cfg = &self.ctx.config;
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(cfg.batch_max_bytes + 1024));
        let mut msgs = 0u32;
        let mut tails = Vec::new();
        let mut tails_len = 0;
        let mut dequeued_bytes = 0u64;
        let mut too_large = 0u64;
        let mut next = Some(first);
        while let Some(q) = next.take() {
            dequeued_bytes += q.len;
            let encoded = encode_frame_owned(
                &mut buf,
                FrameKind::Message,
                cfg.max_frame_len,
                MIN_OWNED_TAIL,
                self.checksums,
                |b| q.msg.encode_owned(b),
            );
            match encoded {
                Ok(tail) => {
                    msgs += 1;
                    if let Some(t) = tail {
                        tails_len += t.len();
                        tails.push((buf.len(), t));
                    }
                }
                Err(_) => too_large += 1,
            }
            if buf.len() + tails_len >= cfg.batch_max_bytes || msgs as usize >= cfg.batch_max_msgs {
                break;
            }
            next = more.and_then(|q| q.try_recv().ok());
        }
        let c = &self.ctx;
        c.peer
            .counters
            .lane(c.lane.lane())
            .queued_bytes
            .fetch_sub(dequeued_bytes, AcqRel);
        if too_large > 0 {
            // encoded_len() promised less than encode() wrote.
            error!(
                "node {}: {too_large} message(s) to peer {} encoded larger than max_frame_len; \
                 dropped (Message::encoded_len disagrees with encode)",
                c.config.node_id, c.peer_id
            );
            self.drop_msgs(DropReason::TooLarge, too_large);
        }
        if buf.is_empty() {
            self.spare.push(buf);
            return;
        }
        let batch = Batch { buf, msgs, tails };
        self.inflight += 1;
        self.inflight_msgs += msgs as u64;
        let sent = self.ctx.loop_handle.send(LoopCmd::Batch {
            peer: self.ctx.peer_id,
            lane: self.ctx.lane,
            batch,
        });
        if !sent {
            // The loop is gone: the transport is stopping.
            self.inflight -= 1;
            self.inflight_msgs -= msgs as u64;
            self.drop_msgs(DropReason::Stopped, msgs as u64);
        }
    }
}
