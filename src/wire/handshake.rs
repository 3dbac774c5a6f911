//! The handshake: the dialer sends a [`Hello`], the acceptor answers with a
//! [`Response`] that accepts or rejects with a [`RejectReason`].
//!
//! ```text
//! Hello (32 bytes)                          Response (8 bytes)
//!  0..4   magic "RFTW"                        0..4  magic "RFTW"
//!  4..6   version (u16)                       4..6  acceptor's version (u16)
//!  6      lane (0 message, 1 append,          6     status (0 accept, 1 reject)
//!         2 snapshot)
//!  7      flags (bit 0: header-only           7     reason (0 if accepted)
//!         checksums, TLS only)
//!  8..16  cluster id (u64)
//! 16..24  sender (from) id (u64)
//! 24..32  intended receiver (to) id (u64)
//! ```
//!
//! The first six bytes (magic and version) keep their meaning in every
//! future version, so an acceptor can answer "unsupported version" to a hello
//! whose remaining layout it does not know.

use super::frame::Checksums;
use byteorder::{BigEndian, ByteOrder};
use std::fmt;

/// The four bytes that open every raftwire hello and response.
pub const MAGIC: [u8; 4] = *b"RFTW";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes in a hello.
pub const HELLO_LEN: usize = 32;
/// Bytes in a response.
pub const RESPONSE_LEN: usize = 8;
/// Hello flag: the frames this dialer sends are checksummed over their
/// header only ([`Checksums::HeaderOnly`]). An acceptor grants it only on a
/// TLS connection and rejects it with [`RejectReason::BadFlags`] otherwise.
pub const FLAG_HEADER_CHECKSUMS: u8 = 0x01;

/// A connection's lane: each lane has its own connection, queue and writer,
/// so that nothing on one lane waits behind another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[non_exhaustive]
pub enum Lane {
    /// Heartbeats, votes, responses and proposals: small and urgent.
    Message = 0,
    /// Log appends.
    Append = 1,
    /// One snapshot stream: a connection of its own per snapshot.
    Snapshot = 2,
}

impl Lane {
    /// Every lane, in wire order.
    pub const ALL: [Lane; 3] = [Lane::Message, Lane::Append, Lane::Snapshot];

    /// The lane for a wire byte.
    pub fn from_u8(b: u8) -> Option<Lane> {
        match b {
            0 => Some(Lane::Message),
            1 => Some(Lane::Append),
            2 => Some(Lane::Snapshot),
            _ => None,
        }
    }

    /// Index into per-lane arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Message => "message",
            Lane::Append => "append",
            Lane::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an acceptor refused a connection. Sent on the wire as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RejectReason {
    /// The hello's version is not one the acceptor speaks.
    UnsupportedVersion = 1,
    /// The hello's cluster id differs from the acceptor's.
    WrongCluster = 2,
    /// The hello names another node as its receiver.
    WrongReceiver = 3,
    /// The sender has been removed from the cluster (`Reporter::is_id_removed`).
    RemovedMember = 4,
    /// The lane byte is not a known lane.
    UnknownLane = 5,
    /// The hello's sender id is the acceptor's own id.
    SameId = 6,
    /// Flags that this version does not understand were set.
    BadFlags = 7,
    /// The hello's sender id is not the node id named by the dialer's TLS
    /// certificate (only with TLS).
    IdentityMismatch = 8,
}

impl RejectReason {
    /// The reason for a wire byte; unknown bytes are kept as `None`.
    pub fn from_u8(b: u8) -> Option<RejectReason> {
        Some(match b {
            1 => RejectReason::UnsupportedVersion,
            2 => RejectReason::WrongCluster,
            3 => RejectReason::WrongReceiver,
            4 => RejectReason::RemovedMember,
            5 => RejectReason::UnknownLane,
            6 => RejectReason::SameId,
            7 => RejectReason::BadFlags,
            8 => RejectReason::IdentityMismatch,
            _ => return None,
        })
    }

    /// A short stable name, used as a stats key and in log lines.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::WrongCluster => "wrong_cluster",
            RejectReason::WrongReceiver => "wrong_receiver",
            RejectReason::RemovedMember => "removed_member",
            RejectReason::UnknownLane => "unknown_lane",
            RejectReason::SameId => "same_id",
            RejectReason::BadFlags => "bad_flags",
            RejectReason::IdentityMismatch => "identity_mismatch",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::UnsupportedVersion => "unsupported protocol version",
            RejectReason::WrongCluster => "wrong cluster id",
            RejectReason::WrongReceiver => "wrong receiver id",
            RejectReason::RemovedMember => "sender was removed from the cluster",
            RejectReason::UnknownLane => "unknown lane",
            RejectReason::SameId => "sender has the receiver's own id",
            RejectReason::BadFlags => "unknown hello flags",
            RejectReason::IdentityMismatch => {
                "sender id differs from the node id in its TLS certificate"
            }
        })
    }
}

/// The dialer's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken by the dialer.
    pub version: u16,
    /// The lane byte as sent (validated by [`Hello::check`]).
    pub lane: u8,
    /// Flags byte: [`FLAG_HEADER_CHECKSUMS`] or nothing.
    pub flags: u8,
    /// The dialer's cluster id.
    pub cluster_id: u64,
    /// The dialer's node id.
    pub from: u64,
    /// The node id the dialer means to reach.
    pub to: u64,
}

/// A byte sequence that is not a hello at all: the connection is closed
/// without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::BadMagic => f.write_str("not a raftwire hello (bad magic)"),
        }
    }
}

impl std::error::Error for HelloError {}

/// What the acceptor learned from the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloParse {
    /// A complete version-1 hello (not yet checked against local identity).
    Hello(Hello),
    /// A raftwire hello of a version this crate does not speak: reject with
    /// [`RejectReason::UnsupportedVersion`].
    Unsupported(u16),
}

impl Hello {
    /// A version-1 hello.
    pub fn new(lane: Lane, cluster_id: u64, from: u64, to: u64) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            lane: lane as u8,
            flags: 0,
            cluster_id,
            from,
            to,
        }
    }

    /// The same hello, announcing what the dialer's frame checksums cover.
    pub fn with_checksums(mut self, mode: Checksums) -> Hello {
        self.flags &= !FLAG_HEADER_CHECKSUMS;
        if mode == Checksums::HeaderOnly {
            self.flags |= FLAG_HEADER_CHECKSUMS;
        }
        self
    }

    /// What the checksums of the dialer's frames cover.
    pub fn checksums(&self) -> Checksums {
        if self.flags & FLAG_HEADER_CHECKSUMS != 0 {
            Checksums::HeaderOnly
        } else {
            Checksums::Full
        }
    }

    /// The 32 wire bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        BigEndian::write_u16(&mut b[4..6], self.version);
        b[6] = self.lane;
        b[7] = self.flags;
        BigEndian::write_u64(&mut b[8..16], self.cluster_id);
        BigEndian::write_u64(&mut b[16..24], self.from);
        BigEndian::write_u64(&mut b[24..32], self.to);
        b
    }

    /// Parses the start of a connection. `None` means more bytes are needed.
    /// Bad magic is reported as soon as the first differing byte arrives.
    pub fn decode(bytes: &[u8]) -> Option<Result<HelloParse, HelloError>> {
        let m = bytes.len().min(4);
        if bytes[..m] != MAGIC[..m] {
            return Some(Err(HelloError::BadMagic));
        }
        if bytes.len() < 6 {
            return None;
        }
        let version = BigEndian::read_u16(&bytes[4..6]);
        if version != PROTOCOL_VERSION {
            return Some(Ok(HelloParse::Unsupported(version)));
        }
        if bytes.len() < HELLO_LEN {
            return None;
        }
        Some(Ok(HelloParse::Hello(Hello {
            version,
            lane: bytes[6],
            flags: bytes[7],
            cluster_id: BigEndian::read_u64(&bytes[8..16]),
            from: BigEndian::read_u64(&bytes[16..24]),
            to: BigEndian::read_u64(&bytes[24..32]),
        })))
    }

    /// Checks a hello against the acceptor's identity; `is_removed` answers
    /// whether a sender id was removed from the cluster.
    pub fn check(
        &self,
        cluster_id: u64,
        local_id: u64,
        is_removed: impl FnOnce(u64) -> bool,
    ) -> Result<Lane, RejectReason> {
        if self.version != PROTOCOL_VERSION {
            return Err(RejectReason::UnsupportedVersion);
        }
        if self.flags & !FLAG_HEADER_CHECKSUMS != 0 {
            return Err(RejectReason::BadFlags);
        }
        let lane = Lane::from_u8(self.lane).ok_or(RejectReason::UnknownLane)?;
        if self.cluster_id != cluster_id {
            return Err(RejectReason::WrongCluster);
        }
        if self.to != local_id {
            return Err(RejectReason::WrongReceiver);
        }
        if self.from == local_id {
            return Err(RejectReason::SameId);
        }
        if is_removed(self.from) {
            return Err(RejectReason::RemovedMember);
        }
        Ok(lane)
    }
}

/// The acceptor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The connection is accepted; frames may follow.
    Accept,
    /// The connection is refused; the acceptor closes it after this.
    Reject(RejectReason),
}

/// A response that could not be understood: the dialer closes and backs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// An unknown status byte, or an unknown reason byte in a reject.
    Malformed {
        /// The status byte.
        status: u8,
        /// The reason byte.
        reason: u8,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::BadMagic => f.write_str("handshake response has bad magic"),
            ResponseError::Malformed { status, reason } => write!(
                f,
                "malformed handshake response (status {status}, reason {reason})"
            ),
        }
    }
}

impl std::error::Error for ResponseError {}

impl Response {
    /// The 8 wire bytes.
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        BigEndian::write_u16(&mut b[4..6], PROTOCOL_VERSION);
        if let Response::Reject(r) = self {
            b[6] = 1;
            b[7] = *r as u8;
        }
        b
    }

    /// Parses a response; `None` means more bytes are needed.
    pub fn decode(bytes: &[u8]) -> Option<Result<Response, ResponseError>> {
        let m = bytes.len().min(4);
        if bytes[..m] != MAGIC[..m] {
            return Some(Err(ResponseError::BadMagic));
        }
        if bytes.len() < RESPONSE_LEN {
            return None;
        }
        let (status, reason) = (bytes[6], bytes[7]);
        Some(match (status, reason) {
            (0, 0) => Ok(Response::Accept),
            (1, r) => RejectReason::from_u8(r)
                .map(Response::Reject)
                .ok_or(ResponseError::Malformed { status, reason }),
            _ => Err(ResponseError::Malformed { status, reason }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_at_every_prefix() {
        let h = Hello::new(Lane::Append, 0xC1, 7, 9);
        let b = h.encode();
        for n in 0..HELLO_LEN {
            assert_eq!(Hello::decode(&b[..n]), None, "prefix {n}");
        }
        assert_eq!(Hello::decode(&b), Some(Ok(HelloParse::Hello(h))));
        assert_eq!(h.check(0xC1, 9, |_| false), Ok(Lane::Append));
    }

    #[test]
    fn bad_magic_detected_early() {
        assert_eq!(Hello::decode(b"G"), Some(Err(HelloError::BadMagic)));
        assert_eq!(Hello::decode(b"RFX"), Some(Err(HelloError::BadMagic)));
        assert_eq!(
            Hello::decode(b"GET / HTTP/1.1\r\n"),
            Some(Err(HelloError::BadMagic))
        );
    }

    #[test]
    fn other_version_known_after_six_bytes() {
        let mut b = Hello::new(Lane::Message, 1, 2, 3).encode();
        b[4..6].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(Hello::decode(&b[..5]), None);
        assert_eq!(Hello::decode(&b[..6]), Some(Ok(HelloParse::Unsupported(2))));
    }

    #[test]
    fn every_reject_reason() {
        let ok = Hello::new(Lane::Message, 5, 2, 3);
        assert_eq!(ok.check(6, 3, |_| false), Err(RejectReason::WrongCluster));
        assert_eq!(ok.check(5, 4, |_| false), Err(RejectReason::WrongReceiver));
        assert_eq!(
            ok.check(5, 3, |id| id == 2),
            Err(RejectReason::RemovedMember)
        );
        let same = Hello::new(Lane::Message, 5, 3, 3);
        assert_eq!(same.check(5, 3, |_| false), Err(RejectReason::SameId));
        let mut lane = ok;
        lane.lane = 9;
        assert_eq!(lane.check(5, 3, |_| false), Err(RejectReason::UnknownLane));
        for bit in 1..8 {
            let mut flags = ok;
            flags.flags = 1 << bit;
            assert_eq!(flags.check(5, 3, |_| false), Err(RejectReason::BadFlags));
        }
        // Header-only checksums pass here; the acceptor allows them only
        // under TLS (conn::accept).
        let header_only = ok.with_checksums(Checksums::HeaderOnly);
        assert_eq!(header_only.encode()[7], FLAG_HEADER_CHECKSUMS);
        assert_eq!(header_only.check(5, 3, |_| false), Ok(Lane::Message));
        assert_eq!(header_only.checksums(), Checksums::HeaderOnly);
        assert_eq!(ok.checksums(), Checksums::Full);
        assert_eq!(header_only.with_checksums(Checksums::Full), ok);
    }

    #[test]
    fn response_round_trip() {
        let all = [
            Response::Accept,
            Response::Reject(RejectReason::UnsupportedVersion),
            Response::Reject(RejectReason::WrongCluster),
            Response::Reject(RejectReason::WrongReceiver),
            Response::Reject(RejectReason::RemovedMember),
            Response::Reject(RejectReason::UnknownLane),
            Response::Reject(RejectReason::SameId),
            Response::Reject(RejectReason::BadFlags),
        ];
        for r in all {
            let b = r.encode();
            for n in 0..RESPONSE_LEN {
                assert_eq!(Response::decode(&b[..n]), None);
            }
            assert_eq!(Response::decode(&b), Some(Ok(r)));
        }
        assert!(matches!(
            Response::decode(b"RFTW\0\x01\x02\x00"),
            Some(Err(ResponseError::Malformed { .. }))
        ));
        assert!(matches!(
            Response::decode(b"RFTW\0\x01\x01\x63"),
            Some(Err(ResponseError::Malformed { .. }))
        ));
    }
}
