//! The message trait the transport moves, and the built-in [`Envelope`].

use crate::wire::Lane;
use byteorder::{BigEndian, ByteOrder};
use bytes::Bytes;
use std::fmt;

/// How a message travels and where it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageClass {
    /// A log append (raft's `MsgAppend`): travels on the append lane.
    Append,
    /// A proposal forwarded to the leader (`MsgPropose`): travels on the
    /// message lane and is delivered on [`Transport::proposals`](crate::Transport::proposals).
    Proposal,
    /// A snapshot carried inline in a message (`MsgSnapshot`): travels on
    /// a snapshot connection of its own, so it never delays heartbeats or
    /// appends, and its fate is reported with `report_snapshot`.
    Snapshot,
    /// Everything else: heartbeats, votes, responses. Message lane.
    Other,
}

impl MessageClass {
    /// The lane a message of this class travels on.
    pub fn lane(self) -> Lane {
        match self {
            MessageClass::Append => Lane::Append,
            MessageClass::Snapshot => Lane::Snapshot,
            MessageClass::Proposal | MessageClass::Other => Lane::Message,
        }
    }

    /// The class for its wire byte in an [`Envelope`].
    pub fn from_u8(b: u8) -> Option<MessageClass> {
        Some(match b {
            0 => MessageClass::Other,
            1 => MessageClass::Append,
            2 => MessageClass::Proposal,
            3 => MessageClass::Snapshot,
            _ => return None,
        })
    }

    /// The class's wire byte in an [`Envelope`].
    pub fn to_u8(self) -> u8 {
        match self {
            MessageClass::Other => 0,
            MessageClass::Append => 1,
            MessageClass::Proposal => 2,
            MessageClass::Snapshot => 3,
        }
    }
}

/// A message that could not be decoded from a frame's payload. The sender
/// misbehaved: the connection it came on is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message decode error: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// What the transport needs to know about a message: where it goes, what
/// class it is, and how it turns into bytes and back.
///
/// `encode` runs on the peer's writer thread and `decode` on the reader
/// thread; neither may panic on any input (`decode` sees bytes from the
/// network).
pub trait Message: Send + Sized + 'static {
    /// The receiving node's id.
    fn to(&self) -> u64;
    /// The sending node's id.
    fn from(&self) -> u64;
    /// The class, which picks the lane and the receive channel.
    fn class(&self) -> MessageClass;
    /// The number of bytes [`encode`](Message::encode) will append. Used to
    /// bound queues in bytes before the message is encoded.
    fn encoded_len(&self) -> usize;
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Encodes a message the transport is done with (it is being sent):
    /// like [`encode`](Message::encode), except that the last bytes of the
    /// encoding may be returned as a buffer of their own instead of being
    /// appended to `out` (a large payload the message already holds as
    /// [`Bytes`]). The transport then writes that buffer to the socket from
    /// where it is, with no copy. `out`'s new bytes followed by the
    /// returned ones must be exactly what `encode` appends. The default
    /// calls `encode`.
    ///
    /// ```
    /// use raftwire::{Envelope, Message, MessageClass};
    ///
    /// let m = Envelope::new(2, 1, MessageClass::Append, vec![7; 100_000]);
    /// let mut whole = Vec::new();
    /// m.encode(&mut whole);
    /// let mut head = Vec::new();
    /// let tail = m.encode_owned(&mut head).unwrap();
    /// assert_eq!(head.len(), raftwire::message::ENVELOPE_HEADER_LEN);
    /// assert_eq!([&head[..], &tail[..]].concat(), whole);
    /// ```
    fn encode_owned(self, out: &mut Vec<u8>) -> Option<Bytes> {
        self.encode(out);
        None
    }
    /// Decodes a message from exactly the bytes `encode` produced.
    ///
    /// `bytes` is a slice of the buffer the frame was read into (or a
    /// buffer of its own, for a large frame): a decoder that keeps part of
    /// it, such as a payload, should keep a slice
    /// ([`Bytes::slice`]) rather than a copy. A slice keeps its whole read
    /// buffer alive; the transport counts that buffer against
    /// [`Config::recv_queue_bytes`](crate::Config::recv_queue_bytes) while
    /// the message waits in a receive channel.
    fn decode(bytes: Bytes) -> Result<Self, DecodeError>;
    /// Whether this message must never cross the network (raft's `MsgHup`,
    /// `MsgBeat`, …). `send` refuses such messages
    /// ([`SendError::LocalOnly`](crate::SendError::LocalOnly)) and a
    /// receiver drops any that arrive, counting them. Default: none is.
    fn is_local_only(&self) -> bool {
        false
    }
}

/// A plain message: addresses, a class and opaque payload bytes.
///
/// Its encoding is `to (u64 BE) | from (u64 BE) | class (u8) | payload`.
///
/// ```
/// use raftwire::{Envelope, Message, MessageClass};
///
/// let m = Envelope::new(2, 1, MessageClass::Append, &b"entries"[..]);
/// let mut bytes = Vec::new();
/// m.encode(&mut bytes);
/// assert_eq!(bytes.len(), m.encoded_len());
/// let back = Envelope::decode(bytes.into()).unwrap();
/// assert_eq!(back, m);
/// assert_eq!(back.payload, &b"entries"[..]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// The receiving node.
    pub to: u64,
    /// The sending node.
    pub from: u64,
    /// The message class.
    pub class: MessageClass,
    /// Opaque payload. A received one is a slice of the buffer its frame
    /// was read into; one being sent is written from where it is when it
    /// is large (no copy into the batch).
    pub payload: Bytes,
}

/// Bytes an [`Envelope`] adds to its payload.
pub const ENVELOPE_HEADER_LEN: usize = 17;

impl Envelope {
    /// A new envelope. The payload is anything that turns into [`Bytes`]
    /// without a copy: a `Vec<u8>`, a `&'static [u8]`, a `String`, `Bytes`.
    pub fn new(to: u64, from: u64, class: MessageClass, payload: impl Into<Bytes>) -> Envelope {
        Envelope {
            to,
            from,
            class,
            payload: payload.into(),
        }
    }

    fn header(&self) -> [u8; ENVELOPE_HEADER_LEN] {
        let mut h = [0u8; ENVELOPE_HEADER_LEN];
        BigEndian::write_u64(&mut h[0..8], self.to);
        BigEndian::write_u64(&mut h[8..16], self.from);
        h[16] = self.class.to_u8();
        h
    }
}

impl Message for Envelope {
    fn to(&self) -> u64 {
        self.to
    }
    fn from(&self) -> u64 {
        self.from
    }
    fn class(&self) -> MessageClass {
        self.class
    }
    fn encoded_len(&self) -> usize {
        ENVELOPE_HEADER_LEN + self.payload.len()
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.payload);
    }
    fn encode_owned(self, out: &mut Vec<u8>) -> Option<Bytes> {
        out.extend_from_slice(&self.header());
        Some(self.payload)
    }
    fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(DecodeError(format!(
                "envelope of {} bytes is shorter than its {ENVELOPE_HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let class = MessageClass::from_u8(bytes[16])
            .ok_or_else(|| DecodeError(format!("unknown envelope class {}", bytes[16])))?;
        Ok(Envelope {
            to: BigEndian::read_u64(&bytes[0..8]),
            from: BigEndian::read_u64(&bytes[8..16]),
            class,
            payload: bytes.slice(ENVELOPE_HEADER_LEN..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_rejects_short_and_bad_class() {
        assert!(Envelope::decode(Bytes::from_static(&[0u8; 16])).is_err());
        let mut b = vec![0u8; 17];
        b[16] = 4;
        assert!(Envelope::decode(b.into()).is_err());
    }

    #[test]
    fn classes_round_trip_and_lanes() {
        for c in [
            MessageClass::Append,
            MessageClass::Proposal,
            MessageClass::Snapshot,
            MessageClass::Other,
        ] {
            assert_eq!(MessageClass::from_u8(c.to_u8()), Some(c));
        }
        assert_eq!(MessageClass::Append.lane(), Lane::Append);
        assert_eq!(MessageClass::Snapshot.lane(), Lane::Snapshot);
        assert_eq!(MessageClass::Other.lane(), Lane::Message);
        assert_eq!(MessageClass::Proposal.lane(), Lane::Message);
    }
}
