//! The threads: the event loop that owns every socket, a writer per peer
//! lane, the reader that decodes and delivers, and the notifier that calls
//! the reporter. They talk through the channels and commands defined here.

pub(crate) mod event_loop;
pub(crate) mod notify;
pub(crate) mod reader;
pub(crate) mod stream;
pub(crate) mod writer;

use crate::error::CloseReason;
use crate::stats::PeerCounters;
use crate::wire::{Lane, RESPONSE_LEN};
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Identifies a connection for its whole life (never reused).
pub(crate) type ConnId = usize;

/// A batch of encoded frames from a writer, on its way to a socket.
#[derive(Debug)]
pub(crate) struct Batch {
    pub buf: Vec<u8>,
    pub msgs: u32,
    /// Large payload tails (`Message::encode_owned`), written from their
    /// own buffers: each `(at, bytes)` goes right after `buf[..at]`, in
    /// order of `at`.
    pub tails: Vec<(usize, Vec<u8>)>,
}

impl Batch {
    /// A batch of bytes in one buffer.
    pub fn of(buf: Vec<u8>, msgs: u32) -> Batch {
        Batch {
            buf,
            msgs,
            tails: Vec::new(),
        }
    }

    /// Bytes in all, tails included.
    pub fn len(&self) -> usize {
        self.buf.len() + self.tails.iter().map(|(_, t)| t.len()).sum::<usize>()
    }

    /// Puts the batch's bytes from `skip` on into `iov`, as many slices as
    /// fit; returns how many it put.
    pub fn slices<'a>(&'a self, mut skip: usize, iov: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut put = |s: &'a [u8]| {
            if skip >= s.len() {
                skip -= s.len();
            } else if n < iov.len() {
                iov[n] = std::io::IoSlice::new(&s[skip..]);
                skip = 0;
                n += 1;
            }
        };
        let mut pos = 0;
        for (at, t) in &self.tails {
            put(&self.buf[pos..*at]);
            put(t);
            pos = *at;
        }
        put(&self.buf[pos..]);
        n
    }
}

/// A batch handed back to its writer: written (`dropped: None`), or not,
/// and why: `Unreachable` (no connection), `Removed` or `Stopped`.
#[derive(Debug)]
pub(crate) struct Returned {
    pub batch: Batch,
    pub dropped: Option<crate::error::DropReason>,
}

/// State the loop shares with the rest of the transport about one peer.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub counters: Arc<PeerCounters>,
    /// Per lane: nanoseconds since the transport epoch (+1) at which the
    /// lane's outbound connection was accepted; 0 while it is not connected.
    /// The message lane's value is the peer's `active_since`.
    pub connected: [AtomicU64; 2],
}

/// Commands to the event loop.
/// A message in a lane's send queue, with the encoded size `send` counted
/// into the queue's byte bound (so the writer need not compute it again).
pub(crate) struct Queued<M> {
    pub msg: M,
    pub len: u64,
}

pub(crate) enum LoopCmd {
    AddPeer {
        id: u64,
        addrs: Vec<SocketAddr>,
        link: Arc<PeerLink>,
        returns: [Sender<Returned>; 2],
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
        lane: Lane,
        batch: Batch,
    },
    /// From the reader: the hello was accepted.
    Accept {
        conn: ConnId,
        from: u64,
        lane: Lane,
    },
    /// From the reader: write this response, then close.
    Reject {
        conn: ConnId,
        response: [u8; RESPONSE_LEN],
    },
    /// From the reader: close this connection.
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
        snap: crate::snapshot::SnapId,
        peer: u64,
        events: Sender<crate::snapshot::SnapEvent>,
    },
    /// From a snapshot sender: frames to write on its connection.
    SnapshotData {
        snap: crate::snapshot::SnapId,
        batch: Batch,
    },
    /// From a snapshot sender: it is done; close its connection.
    CloseSnapshot {
        snap: crate::snapshot::SnapId,
    },
    /// From a snapshot receiver: write this verdict (and close the
    /// connection after it unless it is `Ok`; the sender closes then).
    SnapshotAck {
        conn: ConnId,
        status: crate::wire::AckStatus,
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

/// The event loop's end of the [`Recycler`].
pub(crate) struct Pools {
    reads: Receiver<Vec<u8>>,
    frames: Receiver<Vec<u8>>,
    read_len: usize,
}

impl Pools {
    /// A read buffer of `read_chunk_len` bytes (its contents are garbage).
    pub fn read_buf(&self) -> Vec<u8> {
        take_buf(&self.reads, self.read_len)
    }

    /// A buffer of exactly `len` bytes for a frame read whole.
    pub fn frame_buf(&self, len: usize) -> Vec<u8> {
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

/// Read credit of one inbound connection: bytes handed to the reader and
/// not yet decoded. The loop stops reading a socket whose credit is used up.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    pub inflight: AtomicUsize,
    pub paused: AtomicBool,
    /// Messages of this connection the reader has delivered (or dropped
    /// and counted itself): what the loop acknowledges to the sender.
    pub delivered: AtomicU64,
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
    Snapshot(u64, crate::reporter::SnapshotStatus),
    Rejected(u64, crate::wire::RejectReason),
    Forget(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    #[test]
    fn batch_slices_give_every_byte_once_from_any_offset() {
        // buf "AAABB" with a tail after "AAA" and one at the end (and an
        // empty one, which must not matter).
        let b = Batch {
            buf: b"AAABB".to_vec(),
            msgs: 2,
            tails: vec![(3, b"xxxx".to_vec()), (5, Vec::new()), (5, b"yy".to_vec())],
        };
        let whole = b"AAAxxxxBByy".to_vec();
        assert_eq!(b.len(), whole.len());
        for skip in 0..=whole.len() {
            for room in 1..6 {
                let mut iov = [IoSlice::new(&[]); 5];
                let n = b.slices(skip, &mut iov[..room]);
                let got: Vec<u8> = iov[..n].iter().flat_map(|s| s.to_vec()).collect();
                assert!(iov[..n].iter().all(|s| !s.is_empty()), "empty slice");
                assert!(whole[skip..].starts_with(&got), "skip {skip} room {room}");
                if room >= 4 {
                    assert_eq!(got, whole[skip..], "skip {skip} room {room}");
                }
            }
        }
        let plain = Batch::of(b"abc".to_vec(), 1);
        let mut iov = [IoSlice::new(&[]); 2];
        assert_eq!(plain.slices(1, &mut iov), 1);
        assert_eq!(&*iov[0], b"bc");
        assert_eq!(plain.slices(3, &mut iov), 0);
    }
}
