//! The reader thread's end of an incoming streamed snapshot: the bounded
//! channel of chunks to the application's `SnapshotReader`, the parking of
//! the stream while that channel is full, and the [`Feedback`] the
//! `SnapshotReader` reports through.

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, ReaderMsg, Recycler};
use super::peers::PeerShared;
use crate::conn::ConnId;
use crate::conn::snapshot::SnapshotFailure;
use crate::snapshot::{Feedback, Parking, SnapItem};
use crate::wire::AckStatus;
use crossbeam_channel::{Sender, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};

/// Whether a connection can go on being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Go,
    /// It waits: for its application to read, for the caller to drain,
    /// or for an older connection of the same sender and lane.
    Park,
}

/// The chunks of one streamed snapshot, on their way to its reader.
pub(crate) struct StreamOut {
    tx: Sender<SnapItem>,
    parking: Arc<Parking>,
    /// An item that did not fit: the stream is parked until the
    /// application takes one.
    pending: Option<SnapItem>,
}

impl StreamOut {
    pub fn new(tx: Sender<SnapItem>, parking: Arc<Parking>) -> StreamOut {
        StreamOut {
            tx,
            parking,
            pending: None,
        }
    }

    /// Offers an item to the application. When the channel is full, parks
    /// the stream (the `SnapshotReader` wakes it after taking an item);
    /// when the application is gone, drops the item.
    pub fn push(&mut self, item: SnapItem) -> Flow {
        debug_assert!(self.pending.is_none());
        self.pending = Some(item);
        self.push_pending()
    }

    /// Offers the parked item again, if there is one.
    pub fn push_pending(&mut self) -> Flow {
        let Some(item) = self.pending.take() else {
            return Flow::Go;
        };
        match self.tx.try_send(item) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => Flow::Go,
            Err(TrySendError::Full(item)) => {
                self.parking.parked.store(true, SeqCst);
                // The application may have taken an item between the two.
                match self.tx.try_send(item) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => Flow::Go,
                    Err(TrySendError::Full(item)) => {
                        self.pending = Some(item);
                        Flow::Park
                    }
                }
            }
        }
    }

    /// The connection was cut short: nothing waits for the parked item.
    pub fn abandon(&mut self) {
        self.pending = None;
    }
}

/// How one `SnapshotReader` talks back: through the reader thread (wake
/// the parked stream), the event loop (the verdict), and the accounts.
pub(crate) struct Port {
    pub conn: ConnId,
    pub from: u64,
    pub loop_handle: LoopHandle,
    pub reader_wake: Sender<ReaderMsg>,
    pub parking: Arc<Parking>,
    /// Incoming snapshots in progress, one of which is this one's.
    pub active: Arc<AtomicUsize>,
    pub peer: Option<Arc<PeerShared>>,
    pub accounts: Arc<Accounts>,
    pub recycler: Recycler,
}

impl Port {
    fn unpark(&self) {
        if self.parking.parked.swap(false, AcqRel) {
            let _ = self.reader_wake.send(ReaderMsg::Wake { conn: self.conn });
        }
    }

    fn verdict(&self, status: AckStatus) {
        self.loop_handle.send(LoopCmd::SnapshotAck {
            conn: self.conn,
            status,
        });
    }
}

impl Feedback for Port {
    fn taken(&self) {
        self.unpark();
    }

    fn recycle(&self, buf: Vec<u8>) {
        self.recycler.recycle(buf);
    }

    fn verified(&self, size: u64) {
        self.accounts.note(
            self.peer.as_deref(),
            Incident::SnapshotReceived {
                from: self.from,
                size,
            },
        );
        self.verdict(AckStatus::Ok);
    }

    fn failed(&self, failure: &SnapshotFailure, tell_sender: bool) {
        let status = failure.status();
        self.accounts.note(
            self.peer.as_deref(),
            Incident::SnapshotReceiveFailed {
                from: self.from,
                status,
                failure: Some(failure),
            },
        );
        if tell_sender {
            self.verdict(status);
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.active.fetch_sub(1, AcqRel);
        // Unpark the stream so the reader thread can discard the rest.
        self.unpark();
    }
}
