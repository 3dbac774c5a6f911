//! Snapshots as the application sees them on the receiving side: an
//! [`IncomingSnapshot`] with a [`SnapshotReader`] that streams the data
//! from the connection as it is read, in constant memory, and verifies the
//! size and the checksum of the whole before its last `read` returns 0.
//!
//! Sending is [`Transport::send_snapshot`](crate::Transport::send_snapshot):
//! a thread per snapshot reads the caller's data into checksummed chunk
//! frames on a connection of its own, and every send ends in exactly one
//! `report_snapshot`. The reader thread stops taking bytes off a snapshot
//! connection while the application is behind, so TCP holds the rest.

use crate::conn::snapshot::{SnapshotFailure, Verifier};
use crate::wire::SnapshotEnd;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A snapshot arriving from a peer: its message, its size, and a reader
/// over its data, streamed from the connection as it is read.
///
/// Read [`data`](IncomingSnapshot::data) to the end: the final `read`
/// returns `Ok(0)` only after the total length and the checksum of the
/// whole snapshot have been verified, and only then does the sender learn
/// that the snapshot arrived (its `report_snapshot(.., Finish)`). Dropping
/// the reader early fails the snapshot at the sender.
pub struct IncomingSnapshot<M> {
    /// The snapshot's message (for raft: the `MsgSnapshot` without data).
    pub message: M,
    /// Bytes of data announced by the sender.
    pub size: u64,
    /// The data.
    pub data: SnapshotReader,
}

impl<M: fmt::Debug> fmt::Debug for IncomingSnapshot<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingSnapshot")
            .field("message", &self.message)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What the reader thread passes to a [`SnapshotReader`].
pub(crate) enum SnapItem {
    /// Data: `buf[start..]` (the buffer may be the whole frame it came
    /// in), and its CRC-32C when the frame decoder computed it already.
    Chunk {
        buf: Vec<u8>,
        start: usize,
        crc: Option<u32>,
    },
    End(SnapshotEnd),
}

/// The reader thread sets `parked` when a stream's chunk channel was full;
/// the [`SnapshotReader`] wakes it after taking a chunk.
#[derive(Debug, Default)]
pub(crate) struct Parking {
    pub parked: AtomicBool,
}

/// How a [`SnapshotReader`] talks back to the transport (the reader thread
/// implements it): room for chunks, spent buffers, and the outcome, which
/// is counted, logged and, as the verdict, sent to the sender. Dropping it
/// releases the incoming-snapshot slot.
pub(crate) trait Feedback: Send + Sync {
    /// A chunk was taken from the channel: a parked stream may go on.
    fn taken(&self);
    /// A spent chunk buffer, for reuse.
    fn recycle(&self, buf: Vec<u8>);
    /// Every byte arrived and was verified: tell the sender `Ok`.
    fn verified(&self, size: u64);
    /// The snapshot failed here; `tell_sender`: the connection is still up
    /// and the sender gets the verdict.
    fn failed(&self, failure: &SnapshotFailure, tell_sender: bool);
}

/// The data of an [`IncomingSnapshot`]. Implements [`Read`].
///
/// Errors: `InvalidData` when the data is longer or shorter than announced
/// or the checksum of the whole does not match; `TimedOut` when no chunk
/// arrived within `snapshot_progress_timeout`; `ConnectionAborted` when the
/// connection was lost or the transport stopped. After an error, every
/// further read returns the same kind of error.
pub struct SnapshotReader {
    rx: Receiver<SnapItem>,
    cur: Vec<u8>,
    pos: usize,
    verifier: Verifier,
    state: ReadState,
    peer: u64,
    progress_timeout: Duration,
    feedback: Box<dyn Feedback>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    Verified,
    Failed(io::ErrorKind),
}

impl fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("peer", &self.peer)
            .field("size", &self.size())
            .field("received", &self.received())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    pub(crate) fn new(
        rx: Receiver<SnapItem>,
        size: u64,
        peer: u64,
        progress_timeout: Duration,
        feedback: Box<dyn Feedback>,
        checksums: crate::wire::Checksums,
    ) -> SnapshotReader {
        SnapshotReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            verifier: Verifier::new(size, checksums),
            state: ReadState::Reading,
            peer,
            progress_timeout,
            feedback,
        }
    }

    /// Bytes of data received so far.
    pub fn received(&self) -> u64 {
        self.verifier.progress().received
    }

    /// Bytes announced by the sender.
    pub fn size(&self) -> u64 {
        self.verifier.progress().size
    }

    fn fail(&mut self, failure: SnapshotFailure, tell_sender: bool) -> io::Error {
        let kind = failure.io_kind();
        self.state = ReadState::Failed(kind);
        self.feedback.failed(&failure, tell_sender);
        io::Error::new(kind, failure.to_string())
    }

    fn next_item(&mut self) -> io::Result<()> {
        let at = self.verifier.progress();
        let item = match self.rx.recv_timeout(self.progress_timeout) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                let after = self.progress_timeout;
                return Err(self.fail(SnapshotFailure::Stalled { after, at }, true));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(self.fail(SnapshotFailure::Lost(at), false));
            }
        };
        self.feedback.taken();
        match item {
            SnapItem::Chunk { buf, start, crc } => {
                if let Err(f) = self.verifier.chunk(&buf[start..], crc) {
                    return Err(self.fail(f, true));
                }
                // The spent buffer goes back to the event loop for reuse.
                self.feedback.recycle(std::mem::replace(&mut self.cur, buf));
                self.pos = start;
            }
            SnapItem::End(end) => {
                if let Err(f) = self.verifier.end(&end) {
                    return Err(self.fail(f, true));
                }
                self.state = ReadState::Verified;
                self.feedback.verified(at.size);
            }
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                ReadState::Verified => return Ok(0),
                ReadState::Failed(kind) => {
                    return Err(io::Error::new(kind, "snapshot failed"));
                }
                ReadState::Reading => {}
            }
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            self.next_item()?;
        }
    }
}

impl Drop for SnapshotReader {
    fn drop(&mut self) {
        if self.state == ReadState::Reading {
            let f = SnapshotFailure::Abandoned(self.verifier.progress());
            self.feedback.failed(&f, true);
        }
    }
}
