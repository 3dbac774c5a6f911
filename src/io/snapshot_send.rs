//! The sender of one snapshot: a thread that opens a snapshot connection
//! through the event loop, reads the caller's data into chunk frames
//! (framed by `conn::snapshot::ChunkEncoder`), keeps at most
//! `snapshot_inflight_chunks` of them at the loop, waits for the
//! receiver's verdict, and reports the snapshot's fate exactly once.

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, SnapEvent, SnapId};
use super::peers::PeerShared;
use crate::config::Config;
use crate::conn::Batch;
use crate::conn::snapshot::{ChunkEncoder, SnapshotFailure};
use crate::reporter::{Reporter, SnapshotStatus};
use crate::wire::{AckStatus, FRAME_HEADER_LEN, Lane};
use crossbeam_channel::{Receiver, select};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Instant;

/// What a snapshot sender thread needs.
pub(crate) struct SendJob {
    pub snap: SnapId,
    pub to: u64,
    pub size: u64,
    /// `None` for an inline snapshot (the data is the encoded message).
    pub message: Option<Vec<u8>>,
    pub data: Box<dyn Read + Send>,
    pub config: Config,
    pub loop_handle: LoopHandle,
    pub reporter: Arc<dyn Reporter>,
    pub peer: Arc<PeerShared>,
    pub accounts: Arc<Accounts>,
    pub stop: Receiver<()>,
    /// Outgoing snapshots in progress, one of which is this one's.
    pub outgoing: Arc<AtomicUsize>,
}

/// Sends one snapshot and reports its fate exactly once.
pub(crate) fn run_sender(mut job: SendJob) {
    let mut data = std::mem::replace(&mut job.data, Box::new(io::empty()));
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let opened = job.loop_handle.send(LoopCmd::OpenSnapshot {
        snap: job.snap,
        peer: job.to,
        events: tx,
    });
    let result = if opened {
        Streamer::new(&job, rx).run(&job, &mut *data)
    } else {
        Err(SnapshotFailure::Stopped)
    };
    job.loop_handle
        .send(LoopCmd::CloseSnapshot { snap: job.snap });
    let (size, to) = (job.size, job.to);
    let status = match &result {
        Ok(()) => {
            let took = started.elapsed();
            job.accounts
                .note(Some(&job.peer), Incident::SnapshotSent { size, took });
            SnapshotStatus::Finish
        }
        Err(failure) => {
            let failed = Incident::SnapshotSendFailed {
                to,
                size: Some(size),
                failure,
            };
            job.accounts.note(Some(&job.peer), failed);
            SnapshotStatus::Failure
        }
    };
    job.outgoing.fetch_sub(1, AcqRel);
    job.reporter.report_snapshot(to, status);
}

struct Streamer {
    events: Receiver<SnapEvent>,
    /// Written chunk frames, for reuse.
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
    fn next_event(&mut self, job: &SendJob) -> Result<SnapEvent, SnapshotFailure> {
        let cfg = &job.config;
        let progress_at = self.progress + cfg.snapshot_progress_timeout;
        let until = progress_at.min(self.deadline);
        let wait = until.saturating_duration_since(Instant::now());
        select! {
            recv(self.events) -> e => e.map_err(|_| SnapshotFailure::Stopped),
            recv(job.stop) -> _ => Err(SnapshotFailure::Stopped),
            default(wait) => Err(if Instant::now() >= self.deadline {
                SnapshotFailure::TooSlow(cfg.snapshot_deadline(job.size))
            } else {
                SnapshotFailure::NoProgress(cfg.snapshot_progress_timeout)
            }),
        }
    }

    /// Handles an event; returns the receiver's verdict if it came (before
    /// the end, a verdict means the receiver gave up).
    fn handle(&mut self, e: SnapEvent) -> Result<Option<AckStatus>, SnapshotFailure> {
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

    /// Handles the events that came, without waiting; a verdict before the
    /// end is a failure. Also where a sender that never has to wait (the
    /// connection takes its chunks as fast as they are read) notices that
    /// the transport is stopping: `stop` waits for at most one chunk.
    fn handle_waiting(&mut self, job: &SendJob) -> Result<(), SnapshotFailure> {
        if let Err(crossbeam_channel::TryRecvError::Disconnected) = job.stop.try_recv() {
            return Err(SnapshotFailure::Stopped);
        }
        while let Ok(e) = self.events.try_recv() {
            if let Some(status) = self.handle(e)? {
                return Err(SnapshotFailure::Refused(status));
            }
        }
        Ok(())
    }

    fn push(&mut self, job: &SendJob, buf: Vec<u8>) -> Result<(), SnapshotFailure> {
        self.inflight += 1;
        let sent = job.loop_handle.send(LoopCmd::SnapshotData {
            snap: job.snap,
            batch: Batch::of(buf, 0),
        });
        if sent {
            Ok(())
        } else {
            Err(SnapshotFailure::Stopped)
        }
    }

    fn run(mut self, job: &SendJob, data: &mut (dyn Read + Send)) -> Result<(), SnapshotFailure> {
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
        let mut enc = ChunkEncoder::new(
            job.size,
            cfg.snapshot_chunk_len,
            cfg.max_frame_len,
            cfg.sent_checksums(),
        );
        self.push(job, enc.begin_frame(job.message.as_deref())?)?;

        // Stream the data.
        loop {
            while self.inflight >= cfg.snapshot_inflight_chunks {
                let e = self.next_event(job)?;
                if let Some(status) = self.handle(e)? {
                    return Err(SnapshotFailure::Refused(status));
                }
            }
            self.handle_waiting(job)?;
            let mut frame = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(cfg.snapshot_chunk_len + FRAME_HEADER_LEN));
            let got = read_full(data, enc.prepare(&mut frame))
                .map_err(|e| SnapshotFailure::Source(e.kind()))?;
            if !enc.seal(&mut frame, got)? {
                break;
            }
            job.peer
                .counters
                .lane(Lane::Snapshot)
                .bytes_sent
                .fetch_add(frame.len() as u64, Relaxed);
            self.push(job, frame)?;
        }

        // Close the stream and wait for the verdict.
        self.push(job, enc.end_frame())?;
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
                Some(status) => return Err(SnapshotFailure::Refused(status)),
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
