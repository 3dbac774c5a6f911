//! Errors, grouped by who is at fault: the caller (API misuse, [`Error`],
//! [`SendError`]), the peer (it misbehaved or is incompatible: a
//! [`CloseReason`] of a connection), or the network (I/O, timeouts).

use crate::wire::{FrameError, RejectReason};
use std::fmt;
use std::io;

/// A configuration field that is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's name in [`Config`](crate::Config).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A call on the transport that cannot be carried out. These are the
/// caller's mistakes (or a bind failure at start); none is ever a panic.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    Config(ConfigError),
    /// Binding the listener or starting a thread failed.
    Io(io::Error),
    /// A peer was given no addresses.
    NoAddresses {
        /// The peer.
        peer: u64,
    },
    /// A peer address could not be parsed or resolved.
    BadAddress {
        /// The peer.
        peer: u64,
        /// The address as given.
        addr: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The peer id is 0 or this node's own id.
    InvalidPeerId(u64),
    /// `add_peer` for an id that is already a peer.
    DuplicatePeer(u64),
    /// The id is not a peer or remote of this transport.
    UnknownPeer(u64),
    /// The transport has been stopped.
    Stopped,
    /// TLS could not be set up: a certificate, key or CA file that cannot
    /// be read or parsed, a key that does not match its certificate, or
    /// TLS asked of a transport started without it.
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::NoAddresses { peer } => write!(f, "peer {peer}: no addresses given"),
            Error::BadAddress { peer, addr, reason } => {
                write!(f, "peer {peer}: unusable address {addr:?}: {reason}")
            }
            Error::InvalidPeerId(id) => {
                write!(
                    f,
                    "invalid peer id {id}: must be non-zero and not this node's id"
                )
            }
            Error::DuplicatePeer(id) => write!(f, "peer {id} already exists"),
            Error::UnknownPeer(id) => write!(f, "peer {id} is not known to this transport"),
            Error::Stopped => f.write_str("the transport has been stopped"),
            Error::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            Error::Config(_) | Error::NoAddresses { .. } | Error::BadAddress { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            other => io::Error::other(other),
        }
    }
}

/// Why [`Transport::try_send`](crate::Transport::try_send) refused a
/// message; the message is given back.
#[derive(PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum SendError<M> {
    /// The peer's lane queue is full (in messages or in bytes).
    Full(M),
    /// The message's `to` is not a peer or remote.
    UnknownPeer(M),
    /// The message is addressed to this node itself.
    ToSelf(M),
    /// The message must never cross the network ([`Message::is_local_only`](crate::Message::is_local_only)).
    LocalOnly(M),
    /// The peer is paused.
    Paused(M),
    /// The encoded message is larger than `Config::max_frame_len`.
    TooLarge(M),
    /// The transport has been stopped.
    Stopped(M),
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m)
            | SendError::UnknownPeer(m)
            | SendError::ToSelf(m)
            | SendError::LocalOnly(m)
            | SendError::Paused(m)
            | SendError::TooLarge(m)
            | SendError::Stopped(m) => m,
        }
    }

    /// The message that was not sent, by reference.
    pub fn message(&self) -> &M {
        match self {
            SendError::Full(m)
            | SendError::UnknownPeer(m)
            | SendError::ToSelf(m)
            | SendError::LocalOnly(m)
            | SendError::Paused(m)
            | SendError::TooLarge(m)
            | SendError::Stopped(m) => m,
        }
    }

    /// The drop reason this error is counted under when `send` drops.
    pub fn reason(&self) -> DropReason {
        match self {
            SendError::Full(_) => DropReason::QueueFull,
            SendError::UnknownPeer(_) => DropReason::UnknownPeer,
            SendError::ToSelf(_) => DropReason::ToSelf,
            SendError::LocalOnly(_) => DropReason::LocalOnly,
            SendError::Paused(_) => DropReason::Paused,
            SendError::TooLarge(_) => DropReason::TooLarge,
            SendError::Stopped(_) => DropReason::Stopped,
        }
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendError::{:?}(..)", self.reason())
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message not sent: {}", self.reason().name())
    }
}

impl<M> std::error::Error for SendError<M> {}

/// Why a message was dropped; every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The peer's lane queue was full.
    QueueFull,
    /// The message's `to` was not a known peer.
    UnknownPeer,
    /// The message was addressed to this node.
    ToSelf,
    /// The message is local-only and must never cross the network.
    LocalOnly,
    /// The peer was paused.
    Paused,
    /// The encoding exceeded `max_frame_len`.
    TooLarge,
    /// The connection was down, or went down before the bytes were written.
    Unreachable,
    /// Written to a connection that died before the receiver reported the
    /// message delivered: maybe lost, maybe delivered (counted both ways).
    InFlight,
    /// The peer was removed while the message was queued.
    Removed,
    /// The transport was stopped (before `send`, or while the message was
    /// queued).
    Stopped,
}

impl DropReason {
    /// Every reason, in stats order.
    pub const ALL: [DropReason; 10] = [
        DropReason::QueueFull,
        DropReason::UnknownPeer,
        DropReason::ToSelf,
        DropReason::LocalOnly,
        DropReason::Paused,
        DropReason::TooLarge,
        DropReason::Unreachable,
        DropReason::InFlight,
        DropReason::Removed,
        DropReason::Stopped,
    ];

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::ToSelf => "to_self",
            DropReason::LocalOnly => "local_only",
            DropReason::Paused => "paused",
            DropReason::TooLarge => "too_large",
            DropReason::Unreachable => "unreachable",
            DropReason::InFlight => "in_flight",
            DropReason::Removed => "removed",
            DropReason::Stopped => "stopped",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent bytes that break the protocol.
    PeerMisbehaved(ProtocolViolation),
    /// The acceptor rejected our hello, or we rejected the peer's.
    Rejected(RejectReason),
    /// The peer closed the connection.
    Eof,
    /// A socket error.
    Io(io::ErrorKind),
    /// Nothing was received within `read_timeout`.
    ReadTimeout,
    /// A snapshot connection's writes did not move within
    /// `snapshot_progress_timeout`.
    WriteTimeout,
    /// The dial did not connect within `dial_timeout`.
    DialTimeout,
    /// The handshake did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// A newer connection from the same peer and lane replaced this one.
    Replaced,
    /// Closed to make room under `max_inbound_connections` before it had
    /// completed its handshake.
    Evicted,
    /// The peer was removed or its addresses changed.
    PeerRemoved,
    /// We refused an incoming snapshot (and told the sender why).
    SnapshotRefused(crate::wire::AckStatus),
    /// The transport is stopping.
    Stopped,
    /// TLS failed: the handshake, or the identity in the certificate.
    Tls(TlsFailure),
}

/// Why a TLS connection was refused (feature `tls`). Each is counted in
/// [`TlsStats`](crate::stats::TlsStats) and logged (rate-limited).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer does not speak TLS (a plaintext raftwire node, or something
    /// else): its first byte is not a TLS handshake record.
    NotTls,
    /// The peer's certificate does not chain to our CAs, its signature or
    /// encoding is bad, or it is not valid for its use.
    BadCertificate(String),
    /// The peer's certificate has expired or is not valid yet.
    Expired,
    /// The peer presented no certificate.
    NoCertificate,
    /// The certificate is valid but names no node id of this cluster.
    NoIdentity,
    /// The certificate names another node than the one we dialed.
    WrongIdentity {
        /// The node we dialed.
        expected: u64,
        /// The node the certificate names.
        got: u64,
    },
    /// The peer refused the handshake (it sent this TLS alert): usually it
    /// does not accept our certificate.
    RefusedByPeer(String),
    /// Any other TLS error.
    Other(String),
}

impl TlsFailure {
    /// A short stable name, used in stats and logs.
    pub fn name(&self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::BadCertificate(_) => "bad_certificate",
            TlsFailure::Expired => "expired",
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::NoIdentity => "no_identity",
            TlsFailure::WrongIdentity { .. } => "wrong_identity",
            TlsFailure::RefusedByPeer(_) => "refused_by_peer",
            TlsFailure::Other(_) => "other",
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls => f.write_str("the peer does not speak TLS (plaintext?)"),
            TlsFailure::BadCertificate(why) => write!(f, "peer certificate rejected: {why}"),
            TlsFailure::Expired => f.write_str("peer certificate expired or not yet valid"),
            TlsFailure::NoCertificate => f.write_str("the peer presented no certificate"),
            TlsFailure::NoIdentity => {
                f.write_str("the peer certificate names no node id of this cluster")
            }
            TlsFailure::WrongIdentity { expected, got } => write!(
                f,
                "the peer certificate names node {got}, but we dialed node {expected}"
            ),
            TlsFailure::RefusedByPeer(alert) => {
                write!(f, "the peer refused our handshake (alert: {alert})")
            }
            TlsFailure::Other(why) => write!(f, "TLS error: {why}"),
        }
    }
}

/// The ways a peer can break the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A frame was malformed.
    Frame(FrameError),
    /// The first bytes were not a raftwire hello.
    BadHello,
    /// The handshake response was not understood.
    BadResponse,
    /// A message payload did not decode.
    Decode(String),
    /// A message's `from` differs from the id of the connection's sender.
    WrongSender {
        /// Id the hello announced.
        expected: u64,
        /// Id the message carried.
        got: u64,
    },
    /// A message's `to` is not this node.
    WrongReceiver(u64),
    /// A frame kind that is not allowed in this direction or lane, or a
    /// link heartbeat with a payload.
    UnexpectedFrame,
    /// The connection ended in the middle of a frame.
    Truncated,
}

impl ProtocolViolation {
    /// A short stable name, used as a stats key.
    pub fn name(&self) -> &'static str {
        match self {
            ProtocolViolation::Frame(e) => e.name(),
            ProtocolViolation::BadHello => "bad_hello",
            ProtocolViolation::BadResponse => "bad_response",
            ProtocolViolation::Decode(_) => "decode",
            ProtocolViolation::WrongSender { .. } => "wrong_sender",
            ProtocolViolation::WrongReceiver(_) => "wrong_receiver",
            ProtocolViolation::UnexpectedFrame => "unexpected_frame",
            ProtocolViolation::Truncated => "truncated",
        }
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolViolation::Frame(e) => e.fmt(f),
            ProtocolViolation::BadHello => f.write_str("not a raftwire hello"),
            ProtocolViolation::BadResponse => f.write_str("unintelligible handshake response"),
            ProtocolViolation::Decode(e) => write!(f, "message decode failed: {e}"),
            ProtocolViolation::WrongSender { expected, got } => write!(
                f,
                "message claims sender {got} on a connection from {expected}"
            ),
            ProtocolViolation::WrongReceiver(to) => {
                write!(f, "message addressed to {to}, not to this node")
            }
            ProtocolViolation::UnexpectedFrame => f.write_str("frame kind not allowed here"),
            ProtocolViolation::Truncated => f.write_str("connection ended inside a frame"),
        }
    }
}

impl CloseReason {
    /// A short stable name.
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::PeerMisbehaved(v) => v.name(),
            CloseReason::Rejected(r) => r.name(),
            CloseReason::Eof => "eof",
            CloseReason::Io(_) => "io",
            CloseReason::ReadTimeout => "read_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::DialTimeout => "dial_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Replaced => "replaced",
            CloseReason::Evicted => "evicted",
            CloseReason::PeerRemoved => "peer_removed",
            CloseReason::SnapshotRefused(s) => s.name(),
            CloseReason::Stopped => "stopped",
            CloseReason::Tls(t) => t.name(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerMisbehaved(v) => write!(f, "peer misbehaved: {v}"),
            CloseReason::Rejected(r) => write!(f, "handshake rejected: {r}"),
            CloseReason::Eof => f.write_str("closed by peer"),
            CloseReason::Io(k) => write!(f, "I/O error: {k}"),
            CloseReason::ReadTimeout => f.write_str("nothing received within read_timeout"),
            CloseReason::WriteTimeout => {
                f.write_str("writes stalled past snapshot_progress_timeout")
            }
            CloseReason::DialTimeout => f.write_str("dial timed out"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timed out"),
            CloseReason::Replaced => f.write_str("replaced by a newer connection"),
            CloseReason::Evicted => {
                f.write_str("evicted before its handshake: too many inbound connections")
            }
            CloseReason::PeerRemoved => f.write_str("peer removed or readdressed"),
            CloseReason::SnapshotRefused(s) => write!(f, "snapshot refused: {s}"),
            CloseReason::Stopped => f.write_str("transport stopped"),
            CloseReason::Tls(t) => write!(f, "TLS: {t}"),
        }
    }
}
