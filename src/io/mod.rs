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
use crossbeam_channel::Sender;
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
}

/// A batch handed back to its writer: written (`dropped: None`), or not,
/// and why: `Unreachable` (no connection), `Removed` or `Stopped`.
#[derive(Debug)]
pub(crate) struct Returned {
    pub buf: Vec<u8>,
    pub msgs: u32,
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
