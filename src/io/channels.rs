//! What the threads send each other: commands to the event loop (and the
//! handle that wakes it at most once per drain), bytes and connection news
//! for the reader, batches handed back to writers, events for a snapshot
//! sender, notices for the notifier, and the pools that return spent
//! receive buffers to the loop.

use crate::conn::accept::Verdict;
use crate::conn::inbound::{Buffers, Credit};
use crate::conn::snapshot::SnapshotFailure;
use crate::conn::{Batch, ConnId};
use crate::error::{CloseReason, DropReason};
use crate::lanes::{PerLane, QueuedLane};
use crate::reporter::SnapshotStatus;
use crate::wire::{AckStatus, RejectReason};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Identifies one outgoing snapshot for its whole life.
pub(crate) type SnapId = u64;

/// A batch handed back to its writer: written (`dropped: None`), or not,
/// and why: `Unreachable` (no connection), `Removed` or `Stopped`.
#[derive(Debug)]
pub(crate) struct Returned {
    pub batch: Batch,
    pub dropped: Option<DropReason>,
}

/// Commands to the event loop.
pub(crate) enum LoopCmd {
    AddPeer {
        id: u64,
        addrs: Vec<SocketAddr>,
        peer: Arc<super::peers::PeerShared>,
        returns: PerLane<Sender<Returned>>,
    },
    RemovePeer {
        id: u64,
    },
    UpdatePeer {
        id: u64,
        addrs: Vec<SocketAddr>,
    },
    Batch {
        peer: u64,
        lane: QueuedLane,
        batch: Batch,
    },
    /// From the reader: its verdict on a connection's hello.
    Verdict {
        conn: ConnId,
        verdict: Verdict,
    },
    /// From the reader: close this connection (it broke the protocol).
    Close {
        conn: ConnId,
        reason: CloseReason,
    },
    /// From the reader: the connection's read credit is available again.
    ResumeRead {
        conn: ConnId,
    },
    /// From a snapshot sender: dial a snapshot connection to `peer`.
    OpenSnapshot {
        snap: SnapId,
        peer: u64,
        events: Sender<SnapEvent>,
    },
    /// From a snapshot sender: frames to write on its connection.
    SnapshotData {
        snap: SnapId,
        batch: Batch,
    },
    /// From a snapshot sender: it is done; close its connection.
    CloseSnapshot {
        snap: SnapId,
    },
    /// From a snapshot receiver: write this verdict (and close the
    /// connection after it unless it is `Ok`; the sender closes then).
    SnapshotAck {
        conn: ConnId,
        status: AckStatus,
    },
    /// New TLS certificates, key and CAs for connections made from now on.
    #[cfg(feature = "tls")]
    ReloadTls(Arc<crate::tls::TlsContext>),
    Stop,
}

/// Sends commands to the loop, waking it at most once per drain.
#[derive(Clone)]
pub(crate) struct LoopHandle {
    tx: Sender<LoopCmd>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

impl LoopHandle {
    pub fn new(tx: Sender<LoopCmd>, waker: Arc<Waker>, wake_pending: Arc<AtomicBool>) -> Self {
        LoopHandle {
            tx,
            waker,
            wake_pending,
        }
    }

    /// Queues a command. Returns false if the loop is gone.
    pub fn send(&self, cmd: LoopCmd) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed wake means the loop is gone; the command is moot.
            let _ = self.waker.wake();
        }
        true
    }
}

/// Events from the event loop to a snapshot sender.
#[derive(Debug)]
pub(crate) enum SnapEvent {
    /// The peer accepted the snapshot connection.
    Accepted,
    /// A batch was written; here is its buffer back.
    Written(Vec<u8>),
    /// The receiver's verdict.
    Ack(AckStatus),
    /// The connection failed or could not be made.
    Failed(SnapshotFailure),
}

/// Messages from the loop to the reader, about inbound connections.
pub(crate) enum ReaderMsg {
    Opened {
        conn: ConnId,
        peer_addr: Option<SocketAddr>,
        credit: Arc<Credit>,
    },
    /// The TLS handshake of this connection completed and its certificate
    /// names node `node` (sent before any of its data).
    #[cfg(feature = "tls")]
    Identity {
        conn: ConnId,
        node: u64,
    },
    Data {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    /// From a snapshot's reader: room for more chunks of this stream.
    Wake {
        conn: ConnId,
    },
}

/// Things for the notifier thread to tell the reporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
    Rejected(u64, RejectReason),
    Forget(u64),
}

/// Read buffers the reader keeps for reuse…
const SPENT_READ_BUFFERS: usize = 8;
/// …and whole-frame buffers (each at most `2 × conn_read_cap`).
const SPENT_FRAME_BUFFERS: usize = 2;

/// Receive buffers on their way back to the event loop for its next reads:
/// read-sized buffers, and the buffers large frames were read into whole.
/// Both pools are small and bounded; other buffers are freed.
#[derive(Clone)]
pub(crate) struct Recycler {
    reads: Sender<Vec<u8>>,
    frames: Sender<Vec<u8>>,
    read_len: usize,
    frame_max: usize,
}

impl Recycler {
    pub fn recycle(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == self.read_len {
            let _ = self.reads.try_send(buf);
        } else if cap > self.read_len && cap <= self.frame_max {
            let _ = self.frames.try_send(buf);
        }
    }
}

/// A read buffer shared by the messages sliced from it: when the last
/// slice is dropped (on whichever thread holds it), the buffer goes back to
/// the pools.
struct Pooled {
    buf: Vec<u8>,
    to: Recycler,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.to.recycle(std::mem::take(&mut self.buf));
    }
}

impl Recycler {
    /// `buf` as a [`Bytes`] to slice payloads from, recycled once the last
    /// slice is gone.
    pub fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            to: self.clone(),
        })
    }
}

/// The event loop's end of the [`Recycler`].
pub(crate) struct Pools {
    reads: Receiver<Vec<u8>>,
    frames: Receiver<Vec<u8>>,
    read_len: usize,
}

impl Buffers for Pools {
    fn read_buf(&mut self) -> Vec<u8> {
        take_buf(&self.reads, self.read_len)
    }

    fn frame_buf(&mut self, len: usize) -> Vec<u8> {
        take_buf(&self.frames, len)
    }
}

/// A spent buffer from `pool` resized to `len` (only what it grows by is
/// zeroed), or a new one if the pool has none big enough.
fn take_buf(pool: &Receiver<Vec<u8>>, len: usize) -> Vec<u8> {
    match pool.try_recv() {
        Ok(mut b) if b.capacity() >= len => {
            b.resize(len, 0);
            b
        }
        _ => vec![0u8; len],
    }
}

/// The two ends of the receive-buffer pools of one transport.
pub(crate) fn buffer_pools(config: &crate::config::Config) -> (Recycler, Pools) {
    let (reads_tx, reads) = crossbeam_channel::bounded(SPENT_READ_BUFFERS);
    let (frames_tx, frames) = crossbeam_channel::bounded(SPENT_FRAME_BUFFERS);
    let recycler = Recycler {
        reads: reads_tx,
        frames: frames_tx,
        read_len: config.read_chunk_len,
        frame_max: 2 * config.conn_read_cap.max(config.read_chunk_len),
    };
    let pools = Pools {
        reads,
        frames,
        read_len: config.read_chunk_len,
    };
    (recycler, pools)
}
