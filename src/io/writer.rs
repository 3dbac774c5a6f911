//! The writer of one peer lane: drains its queue, encodes frames into a
//! batch, and hands the batch to the event loop when the queue is empty or
//! the batch is full. At most `max_inflight_batches` batches are out at a
//! time; the loop hands spent buffers back, which is both the flow control
//! and the buffer reuse (no allocation per message or per batch once warm).

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, Returned};
use super::peers::{PeerShared, Queued};
use crate::config::Config;
use crate::conn::Batch;
use crate::error::DropReason;
use crate::lanes::QueuedLane;
use crate::message::Message;
use crate::wire::FrameKind;
use crate::wire::frame::{Checksums, encode_frame_owned};
use crossbeam_channel::{Receiver, select};
use log::error;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

/// Payload tails of at least this many bytes are written from the
/// message's own buffer (`Message::encode_owned`); shorter ones are copied
/// into the batch, where one more slice would cost more than the copy.
const MIN_OWNED_TAIL: usize = 16 << 10;

pub(crate) struct WriterCtx<M> {
    pub peer_id: u64,
    pub peer: Arc<PeerShared>,
    pub lane: QueuedLane,
    pub queue: Receiver<Queued<M>>,
    pub returns: Receiver<Returned>,
    pub close: Receiver<()>,
    pub stop: Receiver<()>,
    pub loop_handle: LoopHandle,
    pub accounts: Arc<Accounts>,
    pub config: Config,
}

pub(crate) struct Writer<M> {
    ctx: WriterCtx<M>,
    spare: Vec<Vec<u8>>,
    /// Batches handed to the loop and not yet handed back…
    inflight: usize,
    /// …and the messages in them.
    inflight_msgs: u64,
    /// What the frame checksums cover (the hello tells the receiver).
    checksums: Checksums,
    _m: PhantomData<fn() -> M>,
}

enum Wait<M> {
    Msg(Queued<M>),
    Returned(Returned),
    /// The peer was removed or the transport stopped.
    End(DropReason),
}

impl<M: Message> Writer<M> {
    pub fn new(ctx: WriterCtx<M>) -> Writer<M> {
        Writer {
            checksums: ctx.config.sent_checksums(),
            ctx,
            spare: Vec::new(),
            inflight: 0,
            inflight_msgs: 0,
            _m: PhantomData,
        }
    }

    pub fn run(mut self) {
        let reason = loop {
            // Busy path: take spent buffers and the next message without
            // the cost of a blocking select; block only when idle or full.
            while let Ok(r) = self.ctx.returns.try_recv() {
                let buf = self.account(r);
                self.keep_spare(buf);
            }
            let waited = if self.inflight >= self.ctx.config.max_inflight_batches {
                self.wait_returned()
            } else if let Ok(m) = self.ctx.queue.try_recv() {
                Wait::Msg(m)
            } else {
                self.wait_any()
            };
            match waited {
                Wait::Returned(r) => {
                    let buf = self.account(r);
                    self.keep_spare(buf);
                }
                Wait::Msg(first) => self.flush_batch(first),
                Wait::End(reason) => break reason,
            }
        };
        // Batches out at the loop come back (unwritten) when the loop learns
        // of the removal or stops; count them under the same reason. The
        // channel disconnects once the loop has let go of this peer.
        while self.inflight > 0 {
            match self.ctx.returns.recv_timeout(Duration::from_millis(500)) {
                Ok(r) => {
                    self.account(r);
                }
                Err(_) => break,
            }
        }
        // Batches the loop received after it let go of the peer (or never
        // received) will not come back.
        self.drop_msgs(reason, self.inflight_msgs);
        // Count what is still queued: it will never be sent.
        let mut n = 0u64;
        let queued = &self
            .ctx
            .peer
            .counters
            .lane(self.ctx.lane.lane())
            .queued_bytes;
        for q in self.ctx.queue.try_iter() {
            queued.fetch_sub(q.len, AcqRel);
            n += 1;
        }
        self.drop_msgs(reason, n);
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

    fn wait_any(&self) -> Wait<M> {
        let c = &self.ctx;
        select! {
            recv(c.queue) -> m => match m {
                Ok(m) => Wait::Msg(m),
                Err(_) => Wait::End(DropReason::Removed),
            },
            recv(c.returns) -> r => match r {
                Ok(r) => Wait::Returned(r),
                Err(_) => Wait::End(self.end_reason()),
            },
            recv(c.close) -> _ => Wait::End(DropReason::Removed),
            recv(c.stop) -> _ => Wait::End(DropReason::Stopped),
        }
    }

    /// The loop let go of this peer: because the transport stopped, or
    /// because the peer was removed.
    fn end_reason(&self) -> DropReason {
        match self.ctx.stop.try_recv() {
            Err(crossbeam_channel::TryRecvError::Disconnected) => DropReason::Stopped,
            _ => DropReason::Removed,
        }
    }

    fn wait_returned(&self) -> Wait<M> {
        let c = &self.ctx;
        select! {
            recv(c.returns) -> r => match r {
                Ok(r) => Wait::Returned(r),
                Err(_) => Wait::End(self.end_reason()),
            },
            recv(c.close) -> _ => Wait::End(DropReason::Removed),
            recv(c.stop) -> _ => Wait::End(DropReason::Stopped),
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
    fn flush_batch(&mut self, first: Queued<M>) {
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
            next = self.ctx.queue.try_recv().ok();
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
