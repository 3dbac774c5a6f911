//! The payloads of the snapshot stream's frames.
//!
//! A snapshot travels on a connection of its own (lane 2). After the
//! handshake the dialer sends one `SnapshotBegin` frame, any number of
//! `SnapshotChunk` frames carrying the data (each with the frame's own
//! CRC-32C), and one `SnapshotEnd` frame with the total length and the
//! CRC-32C of all the data; the acceptor answers with one `SnapshotAck`.
//!
//! ```text
//! SnapshotBegin payload          SnapshotEnd payload      SnapshotAck payload
//!  0..8  size (u64)               0..8  size (u64)         0  status (0 ok, else error)
//!  8     flags (bit 0: inline)    8..12 crc32c (u32)
//!  9..   the message (empty
//!        when inline)
//! ```

use byteorder::{BigEndian, ByteOrder};
use std::fmt;

/// Bytes of a `SnapshotBegin` payload before the message.
pub const BEGIN_LEN: usize = 9;
/// Bytes of a `SnapshotEnd` payload.
pub const END_LEN: usize = 12;
/// Bytes of a `SnapshotAck` payload.
pub const ACK_LEN: usize = 1;

/// Flag bit: the data is the encoded snapshot message itself (a message
/// that carries its snapshot inline); deliver it as an ordinary message.
pub const FLAG_INLINE: u8 = 1;

/// The opening of a snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBegin {
    /// Bytes of data that will follow in chunks.
    pub size: u64,
    /// The data is the encoded message itself.
    pub inline: bool,
}

/// Why a snapshot frame payload is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSnapshotFrame;

impl fmt::Display for BadSnapshotFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed snapshot frame payload")
    }
}

impl SnapshotBegin {
    /// Appends the payload: header, then `message` (empty when inline).
    pub fn encode(&self, out: &mut Vec<u8>, message: impl FnOnce(&mut Vec<u8>)) {
        let mut h = [0u8; BEGIN_LEN];
        BigEndian::write_u64(&mut h[0..8], self.size);
        h[8] = if self.inline { FLAG_INLINE } else { 0 };
        out.extend_from_slice(&h);
        message(out);
    }

    /// Splits a payload into the header and the message bytes.
    pub fn decode(payload: &[u8]) -> Result<(SnapshotBegin, &[u8]), BadSnapshotFrame> {
        if payload.len() < BEGIN_LEN || payload[8] & !FLAG_INLINE != 0 {
            return Err(BadSnapshotFrame);
        }
        let inline = payload[8] & FLAG_INLINE != 0;
        if inline && payload.len() != BEGIN_LEN {
            return Err(BadSnapshotFrame);
        }
        Ok((
            SnapshotBegin {
                size: BigEndian::read_u64(&payload[0..8]),
                inline,
            },
            &payload[BEGIN_LEN..],
        ))
    }
}

/// The close of a snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEnd {
    /// Total bytes of data sent.
    pub size: u64,
    /// CRC-32C of all the data, in order.
    pub crc: u32,
}

impl SnapshotEnd {
    /// The 12 payload bytes.
    pub fn encode(&self) -> [u8; END_LEN] {
        let mut b = [0u8; END_LEN];
        BigEndian::write_u64(&mut b[0..8], self.size);
        BigEndian::write_u32(&mut b[8..12], self.crc);
        b
    }

    /// Parses the payload.
    pub fn decode(payload: &[u8]) -> Result<SnapshotEnd, BadSnapshotFrame> {
        if payload.len() != END_LEN {
            return Err(BadSnapshotFrame);
        }
        Ok(SnapshotEnd {
            size: BigEndian::read_u64(&payload[0..8]),
            crc: BigEndian::read_u32(&payload[8..12]),
        })
    }
}

/// The receiver's verdict on a snapshot stream (the `SnapshotAck` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum AckStatus {
    /// Every byte was received, verified and consumed by the application.
    Ok = 0,
    /// The data was longer or shorter than announced.
    SizeMismatch = 1,
    /// The CRC-32C of the whole data did not match.
    ChecksumMismatch = 2,
    /// The announced size exceeds the receiver's limit.
    TooLarge = 3,
    /// The receiver already has its maximum of incoming snapshots.
    TooMany = 4,
    /// The application dropped the snapshot before reading all of it.
    Abandoned = 5,
    /// No data arrived within the receiver's progress timeout.
    Timeout = 6,
    /// The snapshot's message did not decode, or the stream was malformed.
    Malformed = 7,
    /// The receiver is stopping.
    Stopping = 8,
}

impl AckStatus {
    /// The status for a wire byte.
    pub fn from_u8(b: u8) -> Option<AckStatus> {
        Some(match b {
            0 => AckStatus::Ok,
            1 => AckStatus::SizeMismatch,
            2 => AckStatus::ChecksumMismatch,
            3 => AckStatus::TooLarge,
            4 => AckStatus::TooMany,
            5 => AckStatus::Abandoned,
            6 => AckStatus::Timeout,
            7 => AckStatus::Malformed,
            8 => AckStatus::Stopping,
            _ => return None,
        })
    }

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            AckStatus::Ok => "ok",
            AckStatus::SizeMismatch => "size_mismatch",
            AckStatus::ChecksumMismatch => "checksum_mismatch",
            AckStatus::TooLarge => "too_large",
            AckStatus::TooMany => "too_many",
            AckStatus::Abandoned => "abandoned",
            AckStatus::Timeout => "timeout",
            AckStatus::Malformed => "malformed",
            AckStatus::Stopping => "stopping",
        }
    }

    /// The one payload byte.
    pub fn encode(self) -> [u8; ACK_LEN] {
        [self as u8]
    }

    /// Parses the payload.
    pub fn decode(payload: &[u8]) -> Result<AckStatus, BadSnapshotFrame> {
        match payload {
            [b] => AckStatus::from_u8(*b).ok_or(BadSnapshotFrame),
            _ => Err(BadSnapshotFrame),
        }
    }
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_round_trip() {
        let mut out = Vec::new();
        SnapshotBegin {
            size: 1 << 40,
            inline: false,
        }
        .encode(&mut out, |b| b.extend_from_slice(b"msg"));
        let (b, msg) = SnapshotBegin::decode(&out).unwrap();
        assert_eq!(b.size, 1 << 40);
        assert!(!b.inline);
        assert_eq!(msg, b"msg");
        let mut out = Vec::new();
        SnapshotBegin {
            size: 5,
            inline: true,
        }
        .encode(&mut out, |_| {});
        assert_eq!(SnapshotBegin::decode(&out).unwrap().0.size, 5);
        assert!(SnapshotBegin::decode(&out[..8]).is_err());
        out[8] = 2;
        assert!(SnapshotBegin::decode(&out).is_err());
    }

    #[test]
    fn end_and_ack_round_trip() {
        let e = SnapshotEnd {
            size: 9,
            crc: 0xDEAD_BEEF,
        };
        assert_eq!(SnapshotEnd::decode(&e.encode()), Ok(e));
        assert!(SnapshotEnd::decode(&e.encode()[..11]).is_err());
        for b in 0..=8u8 {
            let s = AckStatus::from_u8(b).unwrap();
            assert_eq!(AckStatus::decode(&s.encode()), Ok(s));
        }
        assert!(AckStatus::decode(&[9]).is_err());
        assert!(AckStatus::decode(&[]).is_err());
    }
}
