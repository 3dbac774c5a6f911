//! Snapshot streams, as bytes: the sender's chunk framing
//! ([`ChunkEncoder`]: the begin frame, chunk frames read straight from the
//! caller's data, the end frame with the size and CRC-32C of the whole),
//! the one [`Verifier`] of size and whole-stream checksum that both the
//! inline path (on the reader thread) and a streamed snapshot's
//! `SnapshotReader` (on the application's thread) use, and the typed
//! [`SnapshotFailure`] of either side.

use crate::error::CloseReason;
use crate::wire::crc::Combiner;
use crate::wire::frame::{Checksums, encode_frame_with, seal_chunk_frame};
use crate::wire::{AckStatus, FRAME_HEADER_LEN, FrameKind, SnapshotBegin, SnapshotEnd};
use std::fmt;
use std::io;
use std::time::Duration;

/// Why a snapshot failed, on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SnapshotFailure {
    // ----- sending -----
    /// The target is not a peer.
    NotAPeer,
    /// The snapshot connection could not be dialed.
    Dial(io::ErrorKind),
    /// The snapshot connection failed.
    Connection(CloseReason),
    /// The receiver refused it, or gave up on it (its verdict).
    Refused(AckStatus),
    /// The snapshot's message does not fit in a frame.
    MessageTooLarge(usize),
    /// Reading the caller's data failed.
    Source(io::ErrorKind),
    /// The caller's data ended before the announced size.
    SourceShort { sent: u64, size: u64 },
    /// The caller's data goes on past the announced size.
    SourceLong { size: u64 },
    /// No chunk was written for this long.
    NoProgress(Duration),
    /// The whole snapshot took longer than this.
    TooSlow(Duration),
    /// The transport stopped.
    Stopped,
    /// No thread could be started to send it.
    NoThread(io::ErrorKind),
    // ----- receiving -----
    /// More data than announced.
    TooLong { size: u64 },
    /// The data, or the end frame, disagrees with the announced size.
    SizeMismatch { size: u64, received: u64, end: u64 },
    /// The CRC-32C of the whole data does not match the sender's.
    ChecksumMismatch { sender: u32, received: u32 },
    /// No data arrived for this long while the application waited.
    Stalled { after: Duration, at: Progress },
    /// The connection was lost (or the transport stopped) mid-stream.
    Lost(Progress),
    /// The application dropped the reader before the end.
    Abandoned(Progress),
}

/// How far an incoming snapshot had come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub received: u64,
    pub size: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} bytes", self.received, self.size)
    }
}

impl SnapshotFailure {
    /// The receiver's verdict for this failure (what the sender is told).
    pub fn status(&self) -> AckStatus {
        match self {
            SnapshotFailure::TooLong { .. } | SnapshotFailure::SizeMismatch { .. } => {
                AckStatus::SizeMismatch
            }
            SnapshotFailure::ChecksumMismatch { .. } => AckStatus::ChecksumMismatch,
            SnapshotFailure::Stalled { .. } => AckStatus::Timeout,
            SnapshotFailure::Abandoned(_) => AckStatus::Abandoned,
            SnapshotFailure::Refused(s) => *s,
            SnapshotFailure::Stopped | SnapshotFailure::Lost(_) => AckStatus::Stopping,
            _ => AckStatus::Malformed,
        }
    }

    /// The error kind a receiving application's `read` returns for it.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            SnapshotFailure::TooLong { .. }
            | SnapshotFailure::SizeMismatch { .. }
            | SnapshotFailure::ChecksumMismatch { .. } => io::ErrorKind::InvalidData,
            SnapshotFailure::Stalled { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::ConnectionAborted,
        }
    }
}

impl fmt::Display for SnapshotFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotFailure::NotAPeer => f.write_str("the target is not a peer"),
            SnapshotFailure::Dial(e) => write!(f, "dialing failed: {e}"),
            SnapshotFailure::Connection(r) => write!(f, "connection failed: {r}"),
            SnapshotFailure::Refused(s) => write!(f, "the receiver refused it: {s}"),
            SnapshotFailure::MessageTooLarge(n) => {
                write!(f, "snapshot message of {n} bytes exceeds max_frame_len")
            }
            SnapshotFailure::Source(e) => write!(f, "reading the snapshot data failed: {e}"),
            SnapshotFailure::SourceShort { sent, size } => write!(
                f,
                "the data ended after {sent} of the announced {size} bytes"
            ),
            SnapshotFailure::SourceLong { size } => {
                write!(f, "the data is longer than the announced {size} bytes")
            }
            SnapshotFailure::NoProgress(d) => write!(f, "no progress for {d:?}"),
            SnapshotFailure::TooSlow(d) => write!(f, "took longer than {d:?}"),
            SnapshotFailure::Stopped => f.write_str("transport stopped"),
            SnapshotFailure::NoThread(e) => write!(f, "cannot start a snapshot thread: {e}"),
            SnapshotFailure::TooLong { size } => {
                write!(f, "more data than the announced {size} bytes")
            }
            SnapshotFailure::SizeMismatch {
                size,
                received,
                end,
            } => write!(
                f,
                "size mismatch: announced {size}, received {received}, end frame says {end}"
            ),
            SnapshotFailure::ChecksumMismatch { sender, received } => write!(
                f,
                "checksum mismatch: sender {sender:#010x}, received data {received:#010x}"
            ),
            SnapshotFailure::Stalled { after, at } => write!(f, "no data for {after:?} after {at}"),
            SnapshotFailure::Lost(at) => write!(f, "connection lost after {at}"),
            SnapshotFailure::Abandoned(at) => write!(f, "dropped by the application after {at}"),
        }
    }
}

/// Checks a snapshot's data against what the sender announced: never more
/// than the size, and at the end frame exactly the size and the CRC-32C of
/// the whole. On a connection with [`Checksums::HeaderOnly`] (TLS
/// authenticates the bytes) the sender computes no checksum, and only the
/// size is checked.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    size: u64,
    received: u64,
    crc: u32,
    combiner: Combiner,
    checksums: Checksums,
}

impl Verifier {
    pub fn new(size: u64, checksums: Checksums) -> Verifier {
        Verifier {
            size,
            received: 0,
            crc: 0,
            combiner: Combiner::default(),
            checksums,
        }
    }

    /// How far the data has come.
    pub fn progress(&self) -> Progress {
        Progress {
            received: self.received,
            size: self.size,
        }
    }

    /// The next piece of data; `crc` is its CRC-32C when the frame decoder
    /// computed it on the way (large chunks), so it is not computed again.
    pub fn chunk(&mut self, data: &[u8], crc: Option<u32>) -> Result<(), SnapshotFailure> {
        let received = self.received + data.len() as u64;
        if received > self.size {
            return Err(SnapshotFailure::TooLong { size: self.size });
        }
        self.received = received;
        if self.checksums == Checksums::Full {
            self.crc = match crc {
                Some(p) => self.combiner.combine(self.crc, p, data.len()),
                None => crate::wire::crc::crc32c_append(self.crc, data),
            };
        }
        Ok(())
    }

    /// The end frame: the data is whole and intact, or why not.
    pub fn end(&self, end: &SnapshotEnd) -> Result<(), SnapshotFailure> {
        if end.size != self.size || self.received != self.size {
            return Err(SnapshotFailure::SizeMismatch {
                size: self.size,
                received: self.received,
                end: end.size,
            });
        }
        if self.checksums == Checksums::Full && end.crc != self.crc {
            return Err(SnapshotFailure::ChecksumMismatch {
                sender: end.crc,
                received: self.crc,
            });
        }
        Ok(())
    }
}

/// The frames of one outgoing snapshot stream: a begin frame, chunk frames
/// whose payload is read straight into the frame buffer, and an end frame
/// with the size and the CRC-32C of all the data (0 with
/// [`Checksums::HeaderOnly`], where nothing is checksummed but headers).
/// The data must be exactly as long as announced: a source that ends early
/// or goes on is a failure.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    size: u64,
    sent: u64,
    crc: u32,
    combiner: Combiner,
    chunk_len: usize,
    max_frame_len: u32,
    checksums: Checksums,
}

impl ChunkEncoder {
    /// A stream of `size` bytes in chunks of `chunk_len` (at most
    /// `max_frame_len`, which `Config::validate` ensures), its frames
    /// checksummed as `checksums` says.
    pub fn new(
        size: u64,
        chunk_len: usize,
        max_frame_len: u32,
        checksums: Checksums,
    ) -> ChunkEncoder {
        ChunkEncoder {
            size,
            sent: 0,
            crc: 0,
            combiner: Combiner::default(),
            chunk_len: chunk_len.max(1),
            max_frame_len,
            checksums,
        }
    }

    /// The opening frame: the size, and the snapshot's encoded message
    /// (`None` for an inline snapshot, whose data is the message itself).
    pub fn begin_frame(&self, message: Option<&[u8]>) -> Result<Vec<u8>, SnapshotFailure> {
        let begin = SnapshotBegin {
            size: self.size,
            inline: message.is_none(),
        };
        let mut buf = Vec::with_capacity(64 + message.map_or(0, |m| m.len()));
        encode_frame_with(
            &mut buf,
            FrameKind::SnapshotBegin,
            self.max_frame_len,
            self.checksums,
            |b| begin.encode(b, |b| b.extend_from_slice(message.unwrap_or(&[]))),
        )
        .map_err(SnapshotFailure::MessageTooLarge)?;
        Ok(buf)
    }

    /// Makes `frame` (a spare buffer, reused at its length) ready for the
    /// next read of data: room for a header, then for the bytes due. At the
    /// end that is one byte past the announced size, to catch a source
    /// that is longer.
    pub fn prepare<'a>(&self, frame: &'a mut Vec<u8>) -> &'a mut [u8] {
        let want = (self.size - self.sent).min(self.chunk_len as u64) as usize;
        // Only growth is zeroed.
        frame.resize(FRAME_HEADER_LEN + want.max(1), 0);
        &mut frame[FRAME_HEADER_LEN..]
    }

    /// `got` bytes were read into the room [`prepare`](ChunkEncoder::prepare)
    /// made (fewer than the room only where the source ended). `Ok(true)`:
    /// `frame` is now a chunk frame to send; `Ok(false)`: the data ended
    /// exactly as announced, send the [`end_frame`](ChunkEncoder::end_frame).
    pub fn seal(&mut self, frame: &mut Vec<u8>, got: usize) -> Result<bool, SnapshotFailure> {
        let want = (self.size - self.sent).min(self.chunk_len as u64) as usize;
        if want == 0 {
            return if got > 0 {
                Err(SnapshotFailure::SourceLong { size: self.size })
            } else {
                Ok(false)
            };
        }
        if got < want {
            return Err(SnapshotFailure::SourceShort {
                sent: self.sent + got as u64,
                size: self.size,
            });
        }
        frame.truncate(FRAME_HEADER_LEN + got);
        if let Some(p) = seal_chunk_frame(frame, &mut self.combiner, self.checksums) {
            self.crc = self.combiner.combine(self.crc, p, got);
        }
        self.sent += got as u64;
        Ok(true)
    }

    /// The closing frame.
    pub fn end_frame(&self) -> Vec<u8> {
        let mut end = Vec::with_capacity(FRAME_HEADER_LEN + 16);
        let e = SnapshotEnd {
            size: self.sent,
            crc: self.crc,
        };
        // 12 bytes fit any max_frame_len that fits a chunk.
        let _ = encode_frame_with(
            &mut end,
            FrameKind::SnapshotEnd,
            u32::MAX,
            self.checksums,
            |b| b.extend_from_slice(&e.encode()),
        );
        end
    }
}

/// The CRC-32C of `a ++ b` (for tests that build streams by hand).
#[cfg(test)]
pub(crate) fn crc_of(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| {
        crate::wire::crc::combine(c, crate::wire::crc::crc32c(p), p.len())
    })
}
