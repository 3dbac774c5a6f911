//! The acceptor's verdict on a hello, as the reader thread reaches it: the
//! hello's bytes as they come, then the checks against this node's
//! identity, the user's `is_id_removed`, and (with TLS) the node id in the
//! dialer's certificate. The verdict goes to the event loop typed; the
//! loop's [`InConn`](super::inbound::InConn) writes the response.

use crate::error::ProtocolViolation;
use crate::wire::{Checksums, HELLO_LEN, Hello, HelloError, HelloParse, Lane, RejectReason};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The hello of one inbound connection, assembled from its first bytes.
#[derive(Debug, Default)]
pub(crate) struct HelloBuf {
    buf: [u8; HELLO_LEN],
    len: usize,
}

impl HelloBuf {
    /// Takes what it needs of `input`: how many bytes it took, and the
    /// hello (or why the bytes are not one) once that is known.
    pub fn handle_bytes(
        &mut self,
        input: &[u8],
    ) -> (usize, Option<Result<HelloParse, HelloError>>) {
        let take = (HELLO_LEN - self.len).min(input.len());
        self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;
        (take, Hello::decode(&self.buf[..self.len]))
    }

    /// Bytes of a hello that never completed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The dialer speaks TLS to a node that runs without it.
    pub fn looks_like_tls(&self) -> bool {
        self.len > 0 && self.buf[0] == TLS_HANDSHAKE_RECORD
    }
}

/// The acceptor's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Frames from `from` on `lane` follow, checksummed as `checksums` says.
    Accept {
        from: u64,
        lane: Lane,
        checksums: Checksums,
    },
    /// Answered with a reject, then closed. `hello` is what was refused
    /// (absent for an unsupported version, whose layout is unknown).
    Reject {
        hello: Option<Hello>,
        reason: RejectReason,
    },
    /// Not a raftwire hello: closed without an answer.
    Violation(ProtocolViolation),
}

impl Verdict {
    /// The id the dialer claims, if it got that far.
    pub fn claimed_sender(&self) -> Option<u64> {
        match self {
            Verdict::Accept { from, .. } => Some(*from),
            Verdict::Reject { hello, .. } => hello.map(|h| h.from),
            Verdict::Violation(_) => None,
        }
    }
}

/// Who this node is, for checking hellos.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acceptor {
    pub cluster_id: u64,
    pub node_id: u64,
    /// TLS is on: the certificate must name the sender.
    pub tls: bool,
}

impl Acceptor {
    /// The verdict on what [`HelloBuf::handle_bytes`] found. `tls_node` is
    /// the node id in the dialer's certificate; `is_removed` is the user's
    /// `Reporter::is_id_removed`, asked only of a hello that passed every
    /// other check.
    pub fn verdict(
        &self,
        parsed: Result<HelloParse, HelloError>,
        tls_node: Option<u64>,
        is_removed: impl FnOnce(u64) -> bool,
    ) -> Verdict {
        let hello = match parsed {
            Err(HelloError::BadMagic) => return Verdict::Violation(ProtocolViolation::BadHello),
            Ok(HelloParse::Unsupported(_)) => {
                return Verdict::Reject {
                    hello: None,
                    reason: RejectReason::UnsupportedVersion,
                };
            }
            Ok(HelloParse::Hello(h)) => h,
        };
        let checked = hello
            .check(self.cluster_id, self.node_id, is_removed)
            .and_then(|lane| {
                // With TLS, the certificate says who the dialer is.
                if self.tls && tls_node != Some(hello.from) {
                    Err(RejectReason::IdentityMismatch)
                } else if !self.tls && hello.checksums() == Checksums::HeaderOnly {
                    // Unchecked payloads only where TLS authenticates them.
                    Err(RejectReason::BadFlags)
                } else {
                    Ok(lane)
                }
            });
        match checked {
            Ok(lane) => Verdict::Accept {
                from: hello.from,
                lane,
                checksums: hello.checksums(),
            },
            Err(reason) => Verdict::Reject {
                hello: Some(hello),
                reason,
            },
        }
    }

    /// Why a hello was rejected, in words for the log.
    pub fn reject_detail(
        &self,
        hello: Option<&Hello>,
        reason: RejectReason,
        tls_node: Option<u64>,
    ) -> String {
        match (reason, hello) {
            (RejectReason::WrongCluster, Some(h)) => format!(
                "cluster {:#x}, ours is {:#x}",
                h.cluster_id, self.cluster_id
            ),
            (RejectReason::WrongReceiver, Some(h)) => format!("it meant to reach node {}", h.to),
            (RejectReason::IdentityMismatch, _) => format!(
                "(certificate: node {})",
                tls_node.map_or("?".to_string(), |n| n.to_string())
            ),
            (RejectReason::UnsupportedVersion, _) => "(its version is not ours)".into(),
            _ => String::new(),
        }
    }
}
