//! Snapshots: streamed in chunks on a connection of their own, checksummed
//! chunk by chunk and as a whole, in constant memory on both sides, and
//! every send ends in exactly one `report_snapshot`.
//!
//! The sending side is a thread per snapshot (`run_sender`) that reads
//! the caller's data source into chunk frames and hands them to the event
//! loop, at most `snapshot_inflight_chunks` at a time. The receiving side
//! hands the application an [`IncomingSnapshot`] whose [`SnapshotReader`]
//! pulls chunks from the connection as it is read; the reader thread stops
//! taking bytes off that socket while the application is behind, so TCP
//! holds the rest.

use crate::config::Config;
use crate::io::{Batch, ConnId, LoopCmd, LoopHandle, ReaderMsg, Recycler};
use crate::message::Message;
use crate::reporter::{Reporter, SnapshotStatus};
use crate::stats::PeerCounters;
use crate::wire::crc::Combiner;
use crate::wire::frame::seal_chunk_frame;
use crate::wire::{
    AckStatus, FRAME_HEADER_LEN, FrameKind, Lane, SnapshotBegin, SnapshotEnd, encode_frame,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use log::{info, warn};
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

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
    /// in), and its CRC-32C when the reader thread computed it already.
    Chunk {
        buf: Vec<u8>,
        start: usize,
        crc: Option<u32>,
    },
    End(SnapshotEnd),
}

/// The shared half between the reader thread and a [`SnapshotReader`]: the
/// reader thread sets `parked` when the chunk channel was full; the
/// `SnapshotReader` wakes it after taking a chunk.
#[derive(Debug, Default)]
pub(crate) struct Parking {
    pub parked: AtomicBool,
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
    size: u64,
    received: u64,
    crc: u32,
    combiner: Combiner,
    state: ReadState,
    conn: ConnId,
    peer: u64,
    loop_handle: LoopHandle,
    reader_wake: Sender<ReaderMsg>,
    parking: Arc<Parking>,
    active: Arc<AtomicUsize>,
    counters: Arc<PeerCounters>,
    progress_timeout: Duration,
    recycler: Recycler,
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
            .field("size", &self.size)
            .field("received", &self.received)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

pub(crate) struct ReaderParts {
    pub rx: Receiver<SnapItem>,
    pub size: u64,
    pub conn: ConnId,
    pub peer: u64,
    pub loop_handle: LoopHandle,
    pub reader_wake: Sender<ReaderMsg>,
    pub parking: Arc<Parking>,
    pub active: Arc<AtomicUsize>,
    pub counters: Arc<PeerCounters>,
    pub progress_timeout: Duration,
    pub recycler: Recycler,
}

impl SnapshotReader {
    pub(crate) fn new(p: ReaderParts) -> SnapshotReader {
        SnapshotReader {
            rx: p.rx,
            cur: Vec::new(),
            pos: 0,
            size: p.size,
            received: 0,
            crc: 0,
            combiner: Combiner::default(),
            state: ReadState::Reading,
            conn: p.conn,
            peer: p.peer,
            loop_handle: p.loop_handle,
            reader_wake: p.reader_wake,
            parking: p.parking,
            active: p.active,
            counters: p.counters,
            progress_timeout: p.progress_timeout,
            recycler: p.recycler,
        }
    }

    /// Bytes of data received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes announced by the sender.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&mut self, status: AckStatus, kind: io::ErrorKind, why: String) -> io::Error {
        self.state = ReadState::Failed(kind);
        self.counters.snapshots_receive_failed.fetch_add(1, Relaxed);
        warn!("snapshot from node {}: {why}", self.peer);
        self.loop_handle.send(LoopCmd::SnapshotAck {
            conn: self.conn,
            status,
        });
        io::Error::new(kind, why)
    }

    fn next_item(&mut self) -> io::Result<bool> {
        let item = match self.rx.recv_timeout(self.progress_timeout) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                let why = format!(
                    "no data for {:?} after {} of {} bytes",
                    self.progress_timeout, self.received, self.size
                );
                return Err(self.fail(AckStatus::Timeout, io::ErrorKind::TimedOut, why));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = format!(
                    "connection lost after {} of {} bytes",
                    self.received, self.size
                );
                self.state = ReadState::Failed(io::ErrorKind::ConnectionAborted);
                self.counters.snapshots_receive_failed.fetch_add(1, Relaxed);
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, why));
            }
        };
        // A slot is free: let the reader thread continue with this stream.
        if self.parking.parked.swap(false, AcqRel) {
            let _ = self.reader_wake.send(ReaderMsg::Wake { conn: self.conn });
        }
        match item {
            SnapItem::Chunk { buf, start, crc } => {
                let c = &buf[start..];
                self.received += c.len() as u64;
                if self.received > self.size {
                    let why = format!("more data than the announced {} bytes", self.size);
                    return Err(self.fail(
                        AckStatus::SizeMismatch,
                        io::ErrorKind::InvalidData,
                        why,
                    ));
                }
                self.crc = match crc {
                    Some(p) => self.combiner.combine(self.crc, p, c.len()),
                    None => crc32c::crc32c_append(self.crc, c),
                };
                // The spent buffer goes back to the event loop for reuse.
                self.recycler.recycle(std::mem::replace(&mut self.cur, buf));
                self.pos = start;
                Ok(true)
            }
            SnapItem::End(end) => {
                if end.size != self.size || self.received != self.size {
                    let why = format!(
                        "size mismatch: announced {}, received {}, end frame says {}",
                        self.size, self.received, end.size
                    );
                    return Err(self.fail(
                        AckStatus::SizeMismatch,
                        io::ErrorKind::InvalidData,
                        why,
                    ));
                }
                if end.crc != self.crc {
                    let why = format!(
                        "checksum mismatch: sender {:#010x}, received data {:#010x}",
                        end.crc, self.crc
                    );
                    return Err(self.fail(
                        AckStatus::ChecksumMismatch,
                        io::ErrorKind::InvalidData,
                        why,
                    ));
                }
                self.state = ReadState::Verified;
                self.counters.snapshots_received.fetch_add(1, Relaxed);
                self.loop_handle.send(LoopCmd::SnapshotAck {
                    conn: self.conn,
                    status: AckStatus::Ok,
                });
                info!(
                    "snapshot of {} bytes from node {} received and verified",
                    self.size, self.peer
                );
                Ok(false)
            }
        }
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
            self.counters.snapshots_receive_failed.fetch_add(1, Relaxed);
            warn!(
                "snapshot from node {} dropped after {} of {} bytes",
                self.peer, self.received, self.size
            );
            self.loop_handle.send(LoopCmd::SnapshotAck {
                conn: self.conn,
                status: AckStatus::Abandoned,
            });
        }
        self.active.fetch_sub(1, AcqRel);
        // Unpark the stream so the reader thread can discard the rest.
        if self.parking.parked.swap(false, AcqRel) {
            let _ = self.reader_wake.send(ReaderMsg::Wake { conn: self.conn });
        }
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
    Failed(String),
}

/// Identifies one outgoing snapshot for its whole life.
pub(crate) type SnapId = u64;

/// What a snapshot sender thread needs.
pub(crate) struct SendJob {
    pub snap: SnapId,
    pub peer: u64,
    pub size: u64,
    /// `None` for an inline snapshot (the data is the encoded message).
    pub message: Option<Vec<u8>>,
    pub data: Box<dyn Read + Send>,
    pub config: Config,
    pub loop_handle: LoopHandle,
    pub reporter: Arc<dyn Reporter>,
    pub counters: Arc<PeerCounters>,
    pub stop: Receiver<()>,
    pub outgoing: Arc<AtomicUsize>,
}

/// Sends one snapshot and reports its fate exactly once.
pub(crate) fn run_sender(mut job: SendJob) {
    let mut data = std::mem::replace(&mut job.data, Box::new(io::empty()));
    let (tx, rx) = crossbeam_channel::unbounded();
    let (peer, snap) = (job.peer, job.snap);
    let started = Instant::now();
    let result = if job.loop_handle.send(LoopCmd::OpenSnapshot {
        snap,
        peer,
        events: tx,
    }) {
        Streamer::new(&job, rx).run(&job, &mut *data)
    } else {
        Err("transport stopped".to_string())
    };
    job.loop_handle.send(LoopCmd::CloseSnapshot { snap });
    let status = match &result {
        Ok(()) => {
            job.counters.snapshots_sent.fetch_add(1, Relaxed);
            job.counters
                .lane(Lane::Snapshot)
                .msgs_sent
                .fetch_add(1, Relaxed);
            info!(
                "snapshot of {} bytes to node {peer} delivered in {:?}",
                job.size,
                started.elapsed()
            );
            SnapshotStatus::Finish
        }
        Err(why) => {
            job.counters.snapshots_send_failed.fetch_add(1, Relaxed);
            job.counters
                .set_last_error(format!("snapshot to node {peer} failed: {why}"));
            warn!(
                "snapshot of {} bytes to node {peer} failed: {why}",
                job.size
            );
            SnapshotStatus::Failure
        }
    };
    job.outgoing.fetch_sub(1, AcqRel);
    job.reporter.report_snapshot(peer, status);
}

struct Streamer {
    events: Receiver<SnapEvent>,
    spare: Vec<Vec<u8>>,
    inflight: usize,
    deadline: Instant,
    progress: Instant,
}

impl Streamer {
    fn new(job: &SendJob, events: Receiver<SnapEvent>) -> Streamer {
        let now = Instant::now();
        Streamer {
            events,
            spare: Vec::new(),
            inflight: 0,
            deadline: now + job.config.snapshot_deadline(job.size),
            progress: now,
        }
    }

    /// Waits for the next event, failing on stop and on timeouts.
    fn next_event(&mut self, job: &SendJob) -> Result<SnapEvent, String> {
        let progress_at = self.progress + job.config.snapshot_progress_timeout;
        let until = progress_at.min(self.deadline);
        let wait = until.saturating_duration_since(Instant::now());
        select! {
            recv(self.events) -> e => e.map_err(|_| "transport stopped".to_string()),
            recv(job.stop) -> _ => Err("transport stopped".to_string()),
            default(wait) => Err(if Instant::now() >= self.deadline {
                format!("took longer than {:?}", job.config.snapshot_deadline(job.size))
            } else {
                format!("no progress for {:?}", job.config.snapshot_progress_timeout)
            }),
        }
    }

    /// Handles an event while streaming; an ack before the end is a
    /// failure (the receiver gave up).
    fn handle(&mut self, e: SnapEvent) -> Result<Option<AckStatus>, String> {
        match e {
            SnapEvent::Written(buf) => {
                self.inflight -= 1;
                self.progress = Instant::now();
                // Kept at its length: refilling it overwrites, no zeroing.
                self.spare.push(buf);
                Ok(None)
            }
            SnapEvent::Ack(status) => Ok(Some(status)),
            SnapEvent::Failed(why) => Err(why),
            SnapEvent::Accepted => Ok(None),
        }
    }

    fn push(&mut self, job: &SendJob, buf: Vec<u8>) -> Result<(), String> {
        self.inflight += 1;
        let sent = job.loop_handle.send(LoopCmd::SnapshotData {
            snap: job.snap,
            batch: Batch::of(buf, 0),
        });
        if sent {
            Ok(())
        } else {
            Err("transport stopped".to_string())
        }
    }

    fn run(mut self, job: &SendJob, data: &mut (dyn Read + Send)) -> Result<(), String> {
        // Connect.
        loop {
            match self.next_event(job)? {
                SnapEvent::Accepted => break,
                SnapEvent::Failed(why) => return Err(why),
                other => {
                    self.handle(other)?;
                }
            }
        }
        self.progress = Instant::now();
        let cfg = &job.config;
        let max = cfg.max_frame_len;
        let mut buf = Vec::with_capacity(64);
        let begin = SnapshotBegin {
            size: job.size,
            inline: job.message.is_none(),
        };
        let message = job.message.as_deref().unwrap_or(&[]);
        encode_frame(&mut buf, FrameKind::SnapshotBegin, max, |b| {
            begin.encode(b, |b| b.extend_from_slice(message))
        })
        .map_err(|n| format!("snapshot message of {n} bytes exceeds max_frame_len"))?;
        self.push(job, buf)?;

        // Stream the data.
        let mut sent: u64 = 0;
        let mut crc = 0u32;
        let mut combiner = Combiner::default();
        loop {
            while self.inflight >= cfg.snapshot_inflight_chunks {
                let e = self.next_event(job)?;
                if let Some(status) = self.handle(e)? {
                    return Err(format!("receiver gave up: {status}"));
                }
            }
            while let Ok(e) = self.events.try_recv() {
                if let Some(status) = self.handle(e)? {
                    return Err(format!("receiver gave up: {status}"));
                }
            }
            let mut frame = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(cfg.snapshot_chunk_len + 64));
            let want = (job.size - sent).min(cfg.snapshot_chunk_len as u64) as usize;
            // Read at least one byte past the announced size to catch data
            // that is longer than announced. `snapshot_chunk_len` is at most
            // `max_frame_len` (Config::validate), so the frame fits.
            let probe = if want == 0 { 1 } else { want };
            // A reused buffer keeps its length: only growth is zeroed.
            frame.resize(FRAME_HEADER_LEN + probe, 0);
            let got = read_full(data, &mut frame[FRAME_HEADER_LEN..])
                .map_err(|e| format!("reading the snapshot data failed: {e}"))?;
            frame.truncate(FRAME_HEADER_LEN + got);
            let payload_crc = seal_chunk_frame(&mut frame, &mut combiner);
            if want == 0 {
                if got > 0 {
                    return Err(format!(
                        "the data is longer than the announced {} bytes",
                        job.size
                    ));
                }
                break;
            }
            if got < want {
                return Err(format!(
                    "the data ended after {} of the announced {} bytes",
                    sent + got as u64,
                    job.size
                ));
            }
            crc = combiner.combine(crc, payload_crc, got);
            sent += got as u64;
            job.counters
                .lane(Lane::Snapshot)
                .bytes_sent
                .fetch_add(frame.len() as u64, Relaxed);
            self.push(job, frame)?;
        }

        // Close the stream and wait for the verdict.
        let mut end = Vec::with_capacity(32);
        encode_frame(&mut end, FrameKind::SnapshotEnd, max, |b| {
            b.extend_from_slice(&SnapshotEnd { size: sent, crc }.encode())
        })
        .map_err(|_| "max_frame_len too small for the end frame".to_string())?;
        self.push(job, end)?;
        loop {
            let e = self.next_event(job)?;
            match self.handle(e)? {
                Some(AckStatus::Ok) => {
                    // Every byte was consumed, so every write completed;
                    // the last Written events are on their way.
                    while self.inflight > 0 {
                        let e = self.next_event(job)?;
                        self.handle(e)?;
                    }
                    return Ok(());
                }
                Some(status) => return Err(format!("receiver refused: {status}")),
                None => {}
            }
        }
    }
}

/// Reads until `buf` is full or the source ends.
fn read_full(r: &mut (dyn Read + Send), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encodes a message for the inline snapshot path.
pub(crate) fn encode_inline<M: Message>(m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.encoded_len());
    m.encode(&mut out);
    out
}
