//! What the frames of an accepted inbound connection mean, as the reader
//! thread decodes them: on a message or append lane, link heartbeats and
//! messages (which must come from the connection's sender and be for this
//! node); on a snapshot connection, the snapshot receive machine
//! ([`SnapRecv`]). Delivery (channels, backpressure, counters) is the
//! reader's; the rules are here.

use super::snapshot::{SnapshotFailure, Verifier};
use crate::error::ProtocolViolation;
use crate::message::Message;
use crate::wire::{AckStatus, Checksums, Frame, FrameKind, SnapshotBegin, SnapshotEnd};
use bytes::Bytes;

/// One frame of a message or append lane, its payload as the reader holds
/// it (a slice of the read buffer): `Ok(None)` for a link heartbeat, the
/// message and its encoded size otherwise.
pub(crate) fn lane_frame<M: Message>(
    node_id: u64,
    from: u64,
    kind: FrameKind,
    payload: Bytes,
) -> Result<Option<(M, usize)>, ProtocolViolation> {
    match kind {
        FrameKind::Heartbeat if payload.is_empty() => Ok(None),
        FrameKind::Message => {
            let len = payload.len();
            let m = M::decode(payload).map_err(|e| ProtocolViolation::Decode(e.0))?;
            check_addresses(node_id, from, &m)?;
            Ok(Some((m, len)))
        }
        _ => Err(ProtocolViolation::UnexpectedFrame),
    }
}

/// A message must come from the connection's sender and be for this node.
pub(crate) fn check_addresses<M: Message>(
    node_id: u64,
    from: u64,
    m: &M,
) -> Result<(), ProtocolViolation> {
    if m.from() != from {
        return Err(ProtocolViolation::WrongSender {
            expected: from,
            got: m.from(),
        });
    }
    if m.to() != node_id {
        return Err(ProtocolViolation::WrongReceiver(m.to()));
    }
    Ok(())
}

/// The receiver's size limits for snapshots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapLimits {
    pub max_snapshot_len: u64,
    pub max_inline_len: u64,
}

#[derive(Debug)]
enum SnapState {
    /// Accepted, waiting for the `SnapshotBegin` frame.
    AwaitBegin,
    /// A streamed snapshot: chunks and the end go to its `SnapshotReader`,
    /// which verifies them.
    Streaming,
    /// An inline snapshot being assembled (grown as chunks arrive, never
    /// beyond the announced size) and verified.
    Inline { buf: Vec<u8>, verifier: Verifier },
    /// Ended, refused or abandoned: only heartbeats, or data to discard.
    Finished,
}

/// What a snapshot frame asks of the reader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SnapStep<'a> {
    /// Nothing (a heartbeat, data assembled, or data discarded).
    Nothing,
    /// A streamed snapshot begins: decode `message`, check it, take an
    /// incoming slot, then call [`SnapRecv::streaming`] (or refuse).
    Begin { size: u64, message: &'a [u8] },
    /// A chunk of a streamed snapshot: pass the payload on.
    Chunk,
    /// The end of a streamed snapshot: pass it on (the reader verifies).
    End(SnapshotEnd),
    /// An inline snapshot arrived whole and verified: decode and deliver it.
    Inline(Vec<u8>),
    /// Refuse the snapshot with this verdict (the stream is finished).
    Refuse(AckStatus, Option<SnapshotFailure>),
}

/// The receiving side of one snapshot connection.
#[derive(Debug)]
pub(crate) struct SnapRecv {
    state: SnapState,
    checksums: Checksums,
}

impl Default for SnapRecv {
    fn default() -> Self {
        SnapRecv::new(Checksums::Full)
    }
}

impl SnapRecv {
    /// A stream whose sender checksums as its hello said.
    pub fn new(checksums: Checksums) -> SnapRecv {
        SnapRecv {
            state: SnapState::AwaitBegin,
            checksums,
        }
    }

    /// What the sender's checksums cover (and so what a verifier checks).
    pub fn checksums(&self) -> Checksums {
        self.checksums
    }

    /// One frame from the sender.
    pub fn handle<'f>(
        &mut self,
        frame: &Frame<'f>,
        limits: SnapLimits,
    ) -> Result<SnapStep<'f>, ProtocolViolation> {
        let p = frame.payload;
        match (frame.kind, &mut self.state) {
            (FrameKind::Heartbeat, _) if p.is_empty() => Ok(SnapStep::Nothing),
            (FrameKind::SnapshotBegin, SnapState::AwaitBegin) => {
                let (begin, message) =
                    SnapshotBegin::decode(p).map_err(|_| ProtocolViolation::UnexpectedFrame)?;
                if begin.size > limits.max_snapshot_len
                    || (begin.inline && begin.size > limits.max_inline_len)
                {
                    self.state = SnapState::Finished;
                    return Ok(SnapStep::Refuse(AckStatus::TooLarge, None));
                }
                if begin.inline {
                    self.state = SnapState::Inline {
                        buf: Vec::new(),
                        verifier: Verifier::new(begin.size, self.checksums),
                    };
                    return Ok(SnapStep::Nothing);
                }
                Ok(SnapStep::Begin {
                    size: begin.size,
                    message,
                })
            }
            (FrameKind::SnapshotChunk, SnapState::Streaming) => Ok(SnapStep::Chunk),
            (FrameKind::SnapshotChunk, SnapState::Inline { buf, verifier }) => {
                match verifier.chunk(p, frame.payload_crc) {
                    Ok(()) => {
                        buf.extend_from_slice(p);
                        Ok(SnapStep::Nothing)
                    }
                    Err(f) => {
                        self.state = SnapState::Finished;
                        Ok(SnapStep::Refuse(f.status(), Some(f)))
                    }
                }
            }
            (FrameKind::SnapshotEnd, SnapState::Streaming) => {
                let end = SnapshotEnd::decode(p).map_err(|_| ProtocolViolation::UnexpectedFrame)?;
                self.state = SnapState::Finished;
                Ok(SnapStep::End(end))
            }
            (FrameKind::SnapshotEnd, SnapState::Inline { .. }) => {
                let end = SnapshotEnd::decode(p).map_err(|_| ProtocolViolation::UnexpectedFrame)?;
                let SnapState::Inline { buf, verifier } =
                    std::mem::replace(&mut self.state, SnapState::Finished)
                else {
                    return Ok(SnapStep::Nothing);
                };
                Ok(match verifier.end(&end) {
                    Ok(()) => SnapStep::Inline(buf),
                    Err(f) => SnapStep::Refuse(f.status(), Some(f)),
                })
            }
            // The application dropped the reader or we refused: discard.
            (FrameKind::SnapshotChunk | FrameKind::SnapshotEnd, SnapState::Finished) => {
                Ok(SnapStep::Nothing)
            }
            _ => Err(ProtocolViolation::UnexpectedFrame),
        }
    }

    /// The streamed snapshot that [`SnapStep::Begin`] announced is
    /// accepted: its chunks follow.
    pub fn streaming(&mut self) {
        self.state = SnapState::Streaming;
    }

    /// The snapshot was refused or abandoned: the rest is discarded.
    pub fn finish(&mut self) {
        self.state = SnapState::Finished;
    }
}
