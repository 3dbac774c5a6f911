//! Frames: the unit of everything sent after the handshake.
//!
//! ```text
//!  0      4    5     6        8        12
//!  +------+----+-----+--------+--------+------------------+
//!  | len  |kind|flags|reserved| crc32c | payload (len B)  |
//!  +------+----+-----+--------+--------+------------------+
//! ```
//!
//! All integers are big-endian. `crc32c` is CRC-32C (Castagnoli) over the
//! first 8 header bytes followed by the payload, or over the 8 header bytes
//! alone on a connection whose dialer asked for [`Checksums::HeaderOnly`]
//! in its hello (only under TLS, whose AEAD authenticates every byte).
//! `flags` and `reserved` must be zero in protocol version 1. The length is checked against the
//! receiver's limit as soon as the 12-byte header is complete, before any
//! buffer is grown for the payload.

use super::crc::{self, Combiner};
use byteorder::{BigEndian, ByteOrder};
use std::fmt;

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 12;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// One encoded message (the message type's own encoding).
    Message = 1,
    /// A link heartbeat: empty payload, keeps an idle connection alive.
    Heartbeat = 2,
    /// Opens a snapshot stream: size, flags and the snapshot's message.
    SnapshotBegin = 3,
    /// A piece of snapshot data.
    SnapshotChunk = 4,
    /// Closes a snapshot stream: total size and CRC-32C of all the data.
    SnapshotEnd = 5,
    /// The receiver's verdict on a snapshot stream.
    SnapshotAck = 6,
    /// How many messages of this connection the receiver has delivered
    /// (u64, cumulative), sent back to the dialer of a lane.
    Delivered = 7,
}

impl FrameKind {
    /// A short stable name (as in docs/PROTOCOL.md).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Message => "message",
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::SnapshotBegin => "snapshot_begin",
            FrameKind::SnapshotChunk => "snapshot_chunk",
            FrameKind::SnapshotEnd => "snapshot_end",
            FrameKind::SnapshotAck => "snapshot_ack",
            FrameKind::Delivered => "delivered",
        }
    }

    /// The kind for a wire byte, if it is one this version knows.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Message),
            2 => Some(FrameKind::Heartbeat),
            3 => Some(FrameKind::SnapshotBegin),
            4 => Some(FrameKind::SnapshotChunk),
            5 => Some(FrameKind::SnapshotEnd),
            6 => Some(FrameKind::SnapshotAck),
            7 => Some(FrameKind::Delivered),
            _ => None,
        }
    }
}

/// A decoded frame, borrowing its payload from the decoder's input or buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's kind.
    pub kind: FrameKind,
    /// The payload bytes (checksum already verified).
    pub payload: &'a [u8],
    /// The CRC-32C of the payload alone, when the decoder computed it on
    /// the way (snapshot chunks of at least [`PAYLOAD_CRC_MIN`] bytes): a
    /// caller that checksums the payload again can use this instead.
    pub payload_crc: Option<u32>,
}

/// What a frame's checksum covers on one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Checksums {
    /// The 8 checksummed header bytes, then the payload.
    #[default]
    Full,
    /// The 8 header bytes only: the payload is not checksummed, because the
    /// connection's TLS record protection already authenticates it. Asked
    /// for by the dialer in its hello (flag bit 0), accepted only under TLS.
    HeaderOnly,
}

/// Snapshot chunks at least this long are checksummed payload first, and
/// the payload's own checksum is handed on ([`Frame::payload_crc`]).
pub const PAYLOAD_CRC_MIN: usize = 4096;

/// Why a byte stream is not a valid sequence of frames. Every variant means
/// the peer misbehaved (or the bytes were damaged): the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field exceeds the receiver's limit.
    Oversize {
        /// Length announced by the header.
        len: u32,
        /// The receiver's limit (`Config::max_frame_len`).
        max: u32,
    },
    /// The frame kind byte is not one this version knows.
    UnknownKind(u8),
    /// The flags or reserved bytes are not zero.
    NonZeroReserved,
    /// The checksum does not match the frame.
    BadChecksum {
        /// Checksum carried by the header.
        expected: u32,
        /// Checksum computed over the received bytes.
        actual: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize { len, max } => {
                write!(f, "frame length {len} exceeds the limit of {max} bytes")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::NonZeroReserved => write!(f, "frame flags or reserved bytes not zero"),
            FrameError::BadChecksum { expected, actual } => write!(
                f,
                "frame checksum mismatch (header {expected:#010x}, computed {actual:#010x})"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// A short stable name, used as a stats key and in log lines.
    pub fn name(&self) -> &'static str {
        match self {
            FrameError::Oversize { .. } => "oversize",
            FrameError::UnknownKind(_) => "unknown_kind",
            FrameError::NonZeroReserved => "nonzero_reserved",
            FrameError::BadChecksum { .. } => "bad_checksum",
        }
    }
}

struct Header {
    len: u32,
    kind: FrameKind,
    crc: u32,
}

fn parse_header(h: &[u8], max: u32) -> Result<Header, FrameError> {
    debug_assert!(h.len() >= FRAME_HEADER_LEN);
    let len = BigEndian::read_u32(&h[0..4]);
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    let kind = FrameKind::from_u8(h[4]).ok_or(FrameError::UnknownKind(h[4]))?;
    if h[5] != 0 || h[6] != 0 || h[7] != 0 {
        return Err(FrameError::NonZeroReserved);
    }
    let crc = BigEndian::read_u32(&h[8..12]);
    Ok(Header { len, kind, crc })
}

/// A frame's checksum: CRC-32C of the header's first 8 bytes, then (with
/// [`Checksums::Full`]) of the payload.
fn checksum(header: &[u8], payload: &[u8], mode: Checksums) -> u32 {
    match mode {
        Checksums::Full => crc::crc32c_append(header_crc(header), payload),
        Checksums::HeaderOnly => header_crc(header),
    }
}

/// The CRC-32C of a header's first 8 bytes.
fn header_crc(header: &[u8]) -> u32 {
    let mut h8 = [0u8; 8];
    h8.copy_from_slice(&header[0..8]);
    crc::crc8(&h8)
}

/// Checks a frame's checksum; returns the payload's own checksum when it
/// was computed on the way (large snapshot chunks).
fn verify(
    frame: &[u8],
    h: &Header,
    combiner: &mut Combiner,
    mode: Checksums,
) -> Result<Option<u32>, FrameError> {
    let payload = &frame[FRAME_HEADER_LEN..];
    let (actual, payload_crc) = if mode == Checksums::HeaderOnly {
        (header_crc(frame), None)
    } else if h.kind == FrameKind::SnapshotChunk && payload.len() >= PAYLOAD_CRC_MIN {
        let p = crc::crc32c(payload);
        let whole = combiner.combine(header_crc(frame), p, payload.len());
        (whole, Some(p))
    } else {
        (checksum(&frame[0..8], payload, mode), None)
    };
    if actual != h.crc {
        return Err(FrameError::BadChecksum {
            expected: h.crc,
            actual,
        });
    }
    Ok(payload_crc)
}

/// Appends a snapshot chunk frame whose payload is already in `out`
/// after `start + FRAME_HEADER_LEN`, filling in the header at `start`.
/// Returns the payload's own CRC-32C (computed once, for both the frame
/// checksum and the caller's checksum of the whole snapshot), or `None`
/// with [`Checksums::HeaderOnly`], where the payload is not checksummed.
pub(crate) fn seal_chunk_frame(
    out: &mut [u8],
    combiner: &mut Combiner,
    mode: Checksums,
) -> Option<u32> {
    let payload_len = out.len() - FRAME_HEADER_LEN;
    BigEndian::write_u32(&mut out[0..4], payload_len as u32);
    out[4] = FrameKind::SnapshotChunk as u8;
    out[5..8].fill(0);
    if mode == Checksums::HeaderOnly {
        let crc = header_crc(out);
        BigEndian::write_u32(&mut out[8..12], crc);
        return None;
    }
    let p = crc::crc32c(&out[FRAME_HEADER_LEN..]);
    let crc = if payload_len >= PAYLOAD_CRC_MIN {
        combiner.combine(header_crc(out), p, payload_len)
    } else {
        checksum(&out[0..8], &out[FRAME_HEADER_LEN..], mode)
    };
    BigEndian::write_u32(&mut out[8..12], crc);
    Some(p)
}

/// Appends one frame to `out`: reserves the header, lets `write_payload`
/// append the payload, then fills in length and checksum.
///
/// If the payload turns out longer than `max_len`, `out` is restored to its
/// previous length and `Err(payload_len)` is returned: the receiver would
/// reject such a frame, so it must not be sent.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    max_len: u32,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), usize> {
    encode_frame_with(out, kind, max_len, Checksums::Full, write_payload)
}

/// Like [`encode_frame`], with the checksum covering what `mode` says.
pub fn encode_frame_with(
    out: &mut Vec<u8>,
    kind: FrameKind,
    max_len: u32,
    mode: Checksums,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), usize> {
    encode_frame_owned(out, kind, max_len, 0, mode, |b| {
        write_payload(b);
        None
    })
    .map(|_| ())
}

/// Like [`encode_frame`], for a payload whose last bytes may come as a
/// buffer of their own (see [`Message::encode_owned`](crate::Message::encode_owned)).
/// Such a tail of at least `min_tail` bytes is not copied: it is returned,
/// to be written right after `out`. A shorter one is appended to `out`.
/// The checksum covers the whole payload either way (with
/// [`Checksums::Full`]).
pub(crate) fn encode_frame_owned(
    out: &mut Vec<u8>,
    kind: FrameKind,
    max_len: u32,
    min_tail: usize,
    mode: Checksums,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Option<bytes::Bytes>,
) -> Result<Option<bytes::Bytes>, usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let mut tail = write_payload(out);
    if let Some(t) = tail.take_if(|t| t.len() < min_tail) {
        out.extend_from_slice(&t);
    }
    let tail_len = tail.as_ref().map_or(0, |t| t.len());
    let payload_len = out.len() - start - FRAME_HEADER_LEN + tail_len;
    if payload_len > max_len as usize {
        out.truncate(start);
        return Err(payload_len);
    }
    let frame = &mut out[start..];
    BigEndian::write_u32(&mut frame[0..4], payload_len as u32);
    frame[4] = kind as u8;
    let mut crc = checksum(&frame[0..8], &frame[FRAME_HEADER_LEN..], mode);
    if let Some(t) = &tail
        && mode == Checksums::Full
    {
        crc = crc::crc32c_append(crc, t);
    }
    BigEndian::write_u32(&mut frame[8..12], crc);
    Ok(tail)
}

/// The 12 bytes of a link heartbeat frame (empty payload).
pub fn heartbeat_frame() -> [u8; FRAME_HEADER_LEN] {
    let mut b = [0u8; FRAME_HEADER_LEN];
    b[4] = FrameKind::Heartbeat as u8;
    // The same bytes whatever a connection's checksums: no payload.
    let crc = checksum(&b[0..8], &[], Checksums::Full);
    BigEndian::write_u32(&mut b[8..12], crc);
    b
}

/// A frame decoder for one connection, fed byte chunks of any size.
///
/// Complete frames are returned straight from the caller's chunk without a
/// copy; only a frame cut by a chunk boundary is assembled in the decoder's
/// own buffer, which therefore never holds more than one frame
/// (`FRAME_HEADER_LEN + max_len` bytes), and is sized only after the length
/// has passed the limit check.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use raftwire::testing::wire::{Deframer, FrameKind, encode_frame};
///
/// let mut bytes = Vec::new();
/// encode_frame(&mut bytes, FrameKind::Message, 1024, |b| b.extend_from_slice(b"hello")).unwrap();
/// let mut deframer = Deframer::new(1024);
/// let mut frames = Vec::new();
/// for piece in bytes.chunks(5) {
///     let mut cursor = deframer.feed(piece);
///     while let Some(frame) = cursor.next() {
///         frames.push(frame.unwrap().payload.to_vec());
///     }
/// }
/// assert_eq!(frames, vec![b"hello".to_vec()]);
/// # }
/// ```
#[derive(Debug)]
pub struct Deframer {
    combiner: Combiner,
    checksums: Checksums,
    partial: Vec<u8>,
    partial_done: bool,
    max_len: u32,
    failed: bool,
}

impl Deframer {
    /// A decoder accepting payloads of at most `max_len` bytes.
    pub fn new(max_len: u32) -> Deframer {
        Deframer {
            combiner: Combiner::default(),
            checksums: Checksums::Full,
            partial: Vec::new(),
            partial_done: false,
            max_len,
            failed: false,
        }
    }

    /// What the checksums of the frames to come cover (default
    /// [`Checksums::Full`]): set once the hello has been accepted.
    pub fn set_checksums(&mut self, mode: Checksums) {
        self.checksums = mode;
    }

    /// Starts decoding `input`; pull frames with [`Cursor::next`] until it
    /// returns `None`. Bytes of a trailing incomplete frame are kept for the
    /// next call.
    pub fn feed<'d, 'i>(&'d mut self, input: &'i [u8]) -> Cursor<'d, 'i> {
        Cursor { d: self, input }
    }

    /// Bytes held of a frame not yet complete. Non-zero when the connection
    /// ends means the last frame was truncated.
    pub fn pending_bytes(&self) -> usize {
        if self.partial_done {
            0
        } else {
            self.partial.len()
        }
    }

    /// Capacity currently held by the reassembly buffer.
    pub fn buffer_capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Whether an error has been returned; a failed decoder yields nothing more.
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

/// A pass over one input chunk; see [`Deframer::feed`].
#[derive(Debug)]
pub struct Cursor<'d, 'i> {
    d: &'d mut Deframer,
    input: &'i [u8],
}

impl<'d, 'i> Cursor<'d, 'i> {
    /// Input bytes not yet looked at (left when the caller stops early).
    /// After the decoder has failed, a new cursor reports its whole input
    /// as remaining: nothing of it will be looked at.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// The next complete frame, `None` when more input is needed, or an
    /// error after which the stream is unusable (the decoder stays failed).
    // A lending iterator: the frame may borrow the decoder's own buffer.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        if self.d.failed {
            return None;
        }
        if self.d.partial_done {
            self.d.partial.clear();
            self.d.partial_done = false;
        }
        if !self.d.partial.is_empty() {
            return self.next_from_partial();
        }
        self.next_from_input()
    }

    /// After [`next`](Cursor::next) returned a frame that was put together
    /// from more than one input (its payload is not part of this cursor's
    /// input): that frame's buffer, header included, handed over instead
    /// of being kept for the next frame. `None` for a frame of the input.
    pub fn take_reassembled(&mut self) -> Option<Vec<u8>> {
        if !self.d.partial_done {
            return None;
        }
        self.d.partial_done = false;
        Some(std::mem::take(&mut self.d.partial))
    }

    fn fail(&mut self, e: FrameError) -> Option<Result<Frame<'_>, FrameError>> {
        self.d.failed = true;
        self.d.partial = Vec::new();
        self.input = &[];
        Some(Err(e))
    }

    fn take_into_partial(&mut self, want: usize) {
        let n = want.min(self.input.len());
        self.d.partial.extend_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
    }

    fn next_from_partial(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        if self.d.partial.len() < FRAME_HEADER_LEN {
            self.take_into_partial(FRAME_HEADER_LEN - self.d.partial.len());
            if self.d.partial.len() < FRAME_HEADER_LEN {
                return None;
            }
        }
        let h = match parse_header(&self.d.partial, self.d.max_len) {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let total = FRAME_HEADER_LEN + h.len as usize;
        if self.d.partial.len() < total {
            // The length passed the limit check above: sizing is safe now.
            self.d.partial.reserve_exact(total - self.d.partial.len());
            self.take_into_partial(total - self.d.partial.len());
            if self.d.partial.len() < total {
                return None;
            }
        }
        let payload_crc = match verify(&self.d.partial, &h, &mut self.d.combiner, self.d.checksums)
        {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        self.d.partial_done = true;
        Some(Ok(Frame {
            kind: h.kind,
            payload: &self.d.partial[FRAME_HEADER_LEN..total],
            payload_crc,
        }))
    }

    fn next_from_input(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        if self.input.is_empty() {
            return None;
        }
        if self.input.len() < FRAME_HEADER_LEN {
            self.take_into_partial(FRAME_HEADER_LEN);
            return None;
        }
        let h = match parse_header(self.input, self.d.max_len) {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let total = FRAME_HEADER_LEN + h.len as usize;
        if self.input.len() < total {
            self.d.partial.reserve_exact(total);
            self.take_into_partial(total);
            return None;
        }
        let input: &'i [u8] = self.input;
        let frame = &input[..total];
        self.input = &input[total..];
        let payload_crc = match verify(frame, &h, &mut self.d.combiner, self.d.checksums) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        Some(Ok(Frame {
            kind: h.kind,
            payload: &frame[FRAME_HEADER_LEN..],
            payload_crc,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_chunks_are_ordinary_frames_with_their_payload_crc() {
        let mut combiner = Combiner::default();
        for len in [0usize, 1, 4095, 4096, 4097, 65_536, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 131 + len) as u8).collect();
            // The same bytes as the generic encoder: the wire is unchanged.
            let mut generic = Vec::new();
            encode_frame(&mut generic, FrameKind::SnapshotChunk, 1 << 21, |b| {
                b.extend_from_slice(&payload)
            })
            .unwrap();
            let mut sealed = vec![0xAA; FRAME_HEADER_LEN];
            sealed.extend_from_slice(&payload);
            let p = seal_chunk_frame(&mut sealed, &mut combiner, Checksums::Full).unwrap();
            assert_eq!(sealed, generic, "{len}");
            assert_eq!(p, crc::crc32c(&payload));
            // Header-only: the generic encoder's bytes too, and no payload CRC.
            let mut generic_ho = Vec::new();
            encode_frame_with(
                &mut generic_ho,
                FrameKind::SnapshotChunk,
                1 << 21,
                Checksums::HeaderOnly,
                |b| b.extend_from_slice(&payload),
            )
            .unwrap();
            let mut sealed_ho = vec![0xAA; FRAME_HEADER_LEN];
            sealed_ho.extend_from_slice(&payload);
            let none = seal_chunk_frame(&mut sealed_ho, &mut combiner, Checksums::HeaderOnly);
            assert_eq!((none, &sealed_ho), (None, &generic_ho), "{len}");
            // Decoded whole and split, the payload CRC comes along for large chunks.
            for split in [sealed.len(), sealed.len() / 2 + 1] {
                let mut d = Deframer::new(1 << 21);
                let mut c = d.feed(&sealed[..split]);
                let f = match c.next() {
                    Some(f) => f.unwrap(),
                    None => {
                        let mut c = d.feed(&sealed[split..]);
                        let f = c.next().unwrap().unwrap();
                        assert_eq!(f.payload, &payload[..]);
                        assert_eq!(f.payload_crc, Some(p).filter(|_| len >= PAYLOAD_CRC_MIN));
                        continue;
                    }
                };
                assert_eq!(f.payload, &payload[..]);
                assert_eq!(f.payload_crc, Some(p).filter(|_| len >= PAYLOAD_CRC_MIN));
            }
            // Any flipped bit (a sample of positions) is caught.
            for pos in (0..sealed.len()).step_by(sealed.len() / 7 + 1) {
                if (5..8).contains(&pos) {
                    continue; // reserved bytes: caught as NonZeroReserved
                }
                let mut bad = sealed.clone();
                bad[pos] ^= 0x10;
                let mut d = Deframer::new(1 << 21);
                let mut c = d.feed(&bad);
                let failed = c.next().map(|r| r.is_err());
                assert!(matches!(failed, Some(true) | None), "{len} flip at {pos}");
            }
        }
    }

    fn stream(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(&mut out, FrameKind::Message, 1 << 20, |b| {
                b.extend_from_slice(p)
            })
            .unwrap();
            out.extend_from_slice(&heartbeat_frame());
        }
        out
    }

    fn decode_all(
        d: &mut Deframer,
        pieces: &[&[u8]],
    ) -> Vec<Result<(FrameKind, Vec<u8>), FrameError>> {
        let mut got = Vec::new();
        for p in pieces {
            let mut c = d.feed(p);
            while let Some(r) = c.next() {
                got.push(r.map(|f| (f.kind, f.payload.to_vec())));
            }
        }
        got
    }

    fn expected(payloads: &[&[u8]]) -> Vec<Result<(FrameKind, Vec<u8>), FrameError>> {
        payloads
            .iter()
            .flat_map(|p| {
                [
                    Ok((FrameKind::Message, p.to_vec())),
                    Ok((FrameKind::Heartbeat, Vec::new())),
                ]
            })
            .collect()
    }

    #[test]
    fn every_split_point_two_pieces() {
        let payloads: Vec<&[u8]> = vec![b"", b"a", b"hello world", &[7u8; 300]];
        let bytes = stream(&payloads);
        for cut in 0..=bytes.len() {
            let mut d = Deframer::new(1 << 20);
            let got = decode_all(&mut d, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(got, expected(&payloads), "cut at {cut}");
            assert_eq!(d.pending_bytes(), 0);
        }
    }

    #[test]
    fn every_split_point_three_pieces() {
        let payloads: Vec<&[u8]> = vec![b"xy", &[1u8; 40]];
        let bytes = stream(&payloads);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut d = Deframer::new(1024);
                let got = decode_all(&mut d, &[&bytes[..a], &bytes[a..b], &bytes[b..]]);
                assert_eq!(got, expected(&payloads), "cuts at {a},{b}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let payloads: Vec<&[u8]> = vec![&[9u8; 1000], b"z"];
        let bytes = stream(&payloads);
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        let mut d = Deframer::new(4096);
        assert_eq!(decode_all(&mut d, &pieces), expected(&payloads));
    }

    #[test]
    fn truncated_frame_is_pending() {
        let bytes = stream(&[b"abcdef"]);
        for cut in 1..bytes.len() - FRAME_HEADER_LEN {
            let mut d = Deframer::new(1024);
            let got = decode_all(&mut d, &[&bytes[..cut]]);
            assert!(got.is_empty());
            assert_eq!(d.pending_bytes(), cut);
        }
    }

    #[test]
    fn oversize_rejected_before_allocation_at_every_split() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, FrameKind::Message, 1 << 20, |b| {
            b.extend_from_slice(&[0u8; 100])
        })
        .unwrap();
        for cut in 0..=bytes.len() {
            let mut d = Deframer::new(99);
            let got = decode_all(&mut d, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(got, vec![Err(FrameError::Oversize { len: 100, max: 99 })]);
            assert!(d.is_failed());
            assert!(d.buffer_capacity() < 99, "grew before the limit check");
        }
    }

    #[test]
    fn huge_length_does_not_allocate() {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        h[4] = 1;
        let mut d = Deframer::new(16 << 20);
        let got = decode_all(&mut d, &[&h[..4], &h[4..]]);
        assert!(matches!(got[0], Err(FrameError::Oversize { .. })));
        assert!(d.buffer_capacity() <= FRAME_HEADER_LEN * 2);
    }

    #[test]
    fn corrupt_byte_anywhere_is_detected() {
        let bytes = stream(&[b"payload bytes"]);
        let first = FRAME_HEADER_LEN + 13;
        for i in 0..first {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            let mut d = Deframer::new(1024);
            let got = decode_all(&mut d, &[&damaged]);
            match got.first() {
                Some(Err(_)) => {}
                // A damaged length may make the frame look longer: still waiting.
                None => assert!(i < 4),
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_kind_and_reserved() {
        let mut bytes = heartbeat_frame().to_vec();
        bytes[4] = 9;
        let mut d = Deframer::new(10);
        assert_eq!(
            decode_all(&mut d, &[&bytes]),
            vec![Err(FrameError::UnknownKind(9))]
        );
        let mut bytes = heartbeat_frame().to_vec();
        bytes[6] = 1;
        let mut d = Deframer::new(10);
        assert_eq!(
            decode_all(&mut d, &[&bytes]),
            vec![Err(FrameError::NonZeroReserved)]
        );
    }

    #[test]
    fn failed_decoder_yields_nothing_more() {
        let mut bytes = heartbeat_frame().to_vec();
        bytes[11] ^= 1;
        bytes.extend_from_slice(&heartbeat_frame());
        let mut d = Deframer::new(10);
        let got = decode_all(&mut d, &[&bytes, &heartbeat_frame()]);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Err(FrameError::BadChecksum { .. })));
    }

    #[test]
    fn frames_with_an_owned_tail_are_ordinary_frames() {
        for (head, tail, min_tail) in [
            (17, 5000, 4096),
            (17, 100, 4096),
            (0, 4096, 4096),
            (3, 0, 1),
        ] {
            let payload: Vec<u8> = (0..head + tail).map(|i| (i * 13) as u8).collect();
            for mode in [Checksums::Full, Checksums::HeaderOnly] {
                let mut plain = Vec::new();
                encode_frame_with(&mut plain, FrameKind::Message, 1 << 20, mode, |b| {
                    b.extend_from_slice(&payload)
                })
                .unwrap();
                let mut out = vec![9u8; 7];
                let t = encode_frame_owned(
                    &mut out,
                    FrameKind::Message,
                    1 << 20,
                    min_tail,
                    mode,
                    |b| {
                        b.extend_from_slice(&payload[..head]);
                        Some(bytes::Bytes::copy_from_slice(&payload[head..]))
                    },
                )
                .unwrap();
                assert_eq!(t.is_some(), tail >= min_tail);
                let mut joined = out[7..].to_vec();
                joined.extend_from_slice(&t.unwrap_or_default());
                assert_eq!(joined, plain, "head {head}, tail {tail}, {mode:?}");
            }
        }
        // Too long with its tail: refused, `out` as it was.
        let mut out = vec![1, 2, 3];
        let r = encode_frame_owned(
            &mut out,
            FrameKind::Message,
            100,
            10,
            Checksums::Full,
            |b| {
                b.extend_from_slice(&[0; 50]);
                Some(bytes::Bytes::from(vec![0; 60]))
            },
        );
        assert_eq!(r, Err(110));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn encode_refuses_oversize_payload() {
        let mut out = vec![1, 2, 3];
        let r = encode_frame(&mut out, FrameKind::Message, 4, |b| {
            b.extend_from_slice(b"12345")
        });
        assert_eq!(r, Err(5));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn header_only_frames_decode_at_every_split_and_check_their_header() {
        let ho = Checksums::HeaderOnly;
        let mut bytes = Vec::new();
        for n in [0usize, 1, 145, 5000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            encode_frame_with(&mut bytes, FrameKind::Message, 1 << 20, ho, |b| {
                b.extend_from_slice(&payload)
            })
            .unwrap();
            bytes.extend_from_slice(&heartbeat_frame());
        }
        for split in 0..=bytes.len() {
            let mut d = Deframer::new(1 << 20);
            d.set_checksums(ho);
            let got = decode_all(&mut d, &[&bytes[..split], &bytes[split..]]);
            let lens: Vec<usize> = got.iter().map(|r| r.as_ref().unwrap().1.len()).collect();
            assert_eq!(lens, vec![0, 0, 1, 0, 145, 0, 5000, 0], "split {split}");
        }
        // The checksum is the header's: a changed payload byte passes (TLS
        // guards it), a changed header byte does not.
        let mut one = Vec::new();
        encode_frame_with(&mut one, FrameKind::Message, 1 << 20, ho, |b| {
            b.extend_from_slice(b"hello")
        })
        .unwrap();
        assert_eq!(
            BigEndian::read_u32(&one[8..12]),
            crc::crc32c(&one[0..8]),
            "the CRC-32C of the first 8 header bytes"
        );
        let mut payload_changed = one.clone();
        payload_changed[FRAME_HEADER_LEN] ^= 1;
        let mut d = Deframer::new(1 << 20);
        d.set_checksums(ho);
        assert!(d.feed(&payload_changed).next().unwrap().is_ok());
        let mut header_changed = one.clone();
        header_changed[4] = FrameKind::Heartbeat as u8;
        let mut d = Deframer::new(1 << 20);
        d.set_checksums(ho);
        assert!(matches!(
            d.feed(&header_changed).next(),
            Some(Err(FrameError::BadChecksum { .. }))
        ));
        // A receiver expecting full checksums refuses the frame.
        let mut d = Deframer::new(1 << 20);
        assert!(matches!(
            d.feed(&one).next(),
            Some(Err(FrameError::BadChecksum { .. }))
        ));
    }
}

#[cfg(test)]
mod random_input {
    use super::*;
    use crate::wire::{Hello, Response};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Arbitrary bytes in arbitrary chunks never panic any decoder, and the
    /// frame decoder never buffers more than one maximal frame.
    #[test]
    fn decoders_survive_random_bytes() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..3000 {
            let len = (rng.next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the time, start with a valid frame so deeper paths run.
            if round % 2 == 0 {
                let mut valid = Vec::new();
                encode_frame(&mut valid, FrameKind::Message, 1 << 20, |b| {
                    b.extend_from_slice(&bytes[..len / 2])
                })
                .unwrap();
                valid.extend_from_slice(&bytes[len / 2..]);
                bytes = valid;
            }
            let max = 1 + (rng.next() % 512) as u32;
            let mut d = Deframer::new(max);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = 1 + (rng.next() as usize % rest.len());
                let mut c = d.feed(&rest[..n]);
                while let Some(r) = c.next() {
                    if let Ok(f) = r {
                        assert!(f.payload.len() <= max as usize);
                    }
                }
                rest = &rest[n..];
                assert!(d.pending_bytes() <= FRAME_HEADER_LEN + max as usize);
            }
            let _ = Hello::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
