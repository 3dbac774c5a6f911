//! Fuzzes the handshake codec: `Hello::decode`, `Hello::check` and
//! `Response::decode` on arbitrary bytes, with round-trip properties for
//! everything that decodes.
//!
//! Input layout:
//!
//! ```text
//! bytes 0..8    acceptor's cluster id    bytes 8..16  acceptor's node id
//! byte 16       bit 0: the sender counts as removed;
//!               bit 1: take the ids from the hello (so checks pass more often)
//! rest          the bytes, decoded as a Hello and as a Response
//! ```

#![no_main]

mod common;

use common::Control;
use libfuzzer_sys::fuzz_target;
use raftwire::testing::wire::{
    HELLO_LEN, Hello, HelloError, HelloParse, Lane, MAGIC, PROTOCOL_VERSION, RESPONSE_LEN,
    RejectReason, Response, ResponseError, handshake::FLAG_HEADER_CHECKSUMS,
};
use std::fmt::Debug;

fuzz_target!(|data: &[u8]| {
    let mut c = Control::new(data);
    let cluster = c.u64();
    let local = c.u64();
    let flags = c.u8();
    let bytes = c.rest();

    hello(bytes, cluster, local, flags);
    response(bytes);
    hello_fields_round_trip(data);
});

/// Decodes every prefix of `bytes` up to `len + 1` bytes (`len`: the
/// message's length) and checks that the answer is stable: once the decoder
/// has decided, more bytes never change it. Returns the answer for all of
/// `bytes`.
fn decode_prefixes<T: PartialEq + Debug>(
    bytes: &[u8],
    len: usize,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut decided = None;
    for n in 0..=bytes.len().min(len + 1) {
        let r = decode(&bytes[..n]);
        match &decided {
            None => decided = r,
            Some(d) => assert_eq!(Some(d), r.as_ref(), "answer changed at {n} bytes"),
        }
    }
    let full = decode(bytes);
    assert_eq!(decided, full);
    full
}

/// Whether `bytes` starts like `MAGIC` (as far as it goes).
fn starts_like_magic(bytes: &[u8]) -> bool {
    let n = bytes.len().min(MAGIC.len());
    bytes[..n] == MAGIC[..n]
}

/// A hello: its answer is stable as bytes arrive and agrees with the
/// bytes; one that decodes is checked against the acceptor's ids.
fn hello(bytes: &[u8], cluster: u64, local: u64, flags: u8) {
    let full = decode_prefixes(bytes, HELLO_LEN, Hello::decode);
    let magic_ok = starts_like_magic(bytes);
    match full {
        None => {
            assert!(magic_ok);
            let version_known = bytes.len() >= 6;
            assert!(bytes.len() < HELLO_LEN);
            if version_known {
                assert_eq!(&bytes[4..6], &PROTOCOL_VERSION.to_be_bytes());
            }
        }
        Some(Err(HelloError::BadMagic)) => assert!(!magic_ok),
        Some(Ok(HelloParse::Unsupported(v))) => {
            assert!(magic_ok && bytes.len() >= 6);
            assert_eq!(v.to_be_bytes(), [bytes[4], bytes[5]]);
            assert_ne!(v, PROTOCOL_VERSION);
        }
        Some(Ok(HelloParse::Hello(h))) => {
            assert!(bytes.len() >= HELLO_LEN);
            assert_eq!(h.encode(), bytes[..HELLO_LEN], "hello does not re-encode");
            assert_eq!(h.version, PROTOCOL_VERSION);
            let (cluster, local) = if flags & 2 != 0 {
                (h.cluster_id, h.to)
            } else {
                (cluster, local)
            };
            check(&h, cluster, local, flags & 1 != 0);
        }
    }
}

/// `Hello::check` against the rules of docs/PROTOCOL.md §3, in their order.
fn check(h: &Hello, cluster: u64, local: u64, removed: bool) {
    let mut asked = None;
    let r = h.check(cluster, local, |id| {
        asked = Some(id);
        removed
    });
    let want = if h.version != PROTOCOL_VERSION {
        Err(RejectReason::UnsupportedVersion)
    } else if h.flags & !FLAG_HEADER_CHECKSUMS != 0 {
        // Bit 0 is known here; the acceptor decides on it with TLS.
        Err(RejectReason::BadFlags)
    } else if Lane::from_u8(h.lane).is_none() {
        Err(RejectReason::UnknownLane)
    } else if h.cluster_id != cluster {
        Err(RejectReason::WrongCluster)
    } else if h.to != local {
        Err(RejectReason::WrongReceiver)
    } else if h.from == local {
        Err(RejectReason::SameId)
    } else if removed {
        Err(RejectReason::RemovedMember)
    } else {
        Ok(Lane::from_u8(h.lane).unwrap())
    };
    assert_eq!(
        r, want,
        "check({h:?}, {cluster}, {local}, removed={removed})"
    );
    if let Ok(lane) = r {
        assert_eq!(lane as u8, h.lane);
        assert_eq!(asked, Some(h.from));
    }
    // The application is asked about removal only once every other check passed.
    if asked.is_some() {
        assert!(matches!(r, Ok(_) | Err(RejectReason::RemovedMember)));
    }
}

/// A response: its answer is stable as bytes arrive and agrees with the
/// bytes; one that decodes re-encodes.
fn response(bytes: &[u8]) {
    let full = decode_prefixes(bytes, RESPONSE_LEN, Response::decode);
    let magic_ok = starts_like_magic(bytes);
    match full {
        None => assert!(magic_ok && bytes.len() < RESPONSE_LEN),
        Some(Err(ResponseError::BadMagic)) => assert!(!magic_ok),
        Some(Err(ResponseError::Malformed { status, reason })) => {
            assert!(magic_ok);
            assert_eq!((status, reason), (bytes[6], bytes[7]));
            let known = match status {
                0 => reason == 0,
                1 => RejectReason::from_u8(reason).is_some(),
                _ => false,
            };
            assert!(!known, "a valid response reported malformed");
        }
        Some(Ok(r)) => {
            // The version field is informational: decoding ignores it and
            // encoding writes our own.
            let mut b = bytes[..RESPONSE_LEN].to_vec();
            b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
            assert_eq!(r.encode(), b[..], "response does not re-encode");
            assert_eq!(Response::decode(&r.encode()), Some(Ok(r)));
        }
    }
}

/// Any hello built from fields (not only well-formed ones) survives
/// encode → decode, or decodes as the unsupported version it carries.
fn hello_fields_round_trip(data: &[u8]) {
    let mut c = Control::new(data);
    let h = Hello {
        version: (c.u8() as u16) % 4,
        lane: c.u8(),
        flags: c.u8(),
        cluster_id: c.u64(),
        from: c.u64(),
        to: c.u64(),
    };
    let b = h.encode();
    let want = if h.version == PROTOCOL_VERSION {
        HelloParse::Hello(h)
    } else {
        HelloParse::Unsupported(h.version)
    };
    assert_eq!(Hello::decode(&b), Some(Ok(want)));
    if let Some(reason) = RejectReason::from_u8(c.u8() % 9) {
        let r = Response::Reject(reason);
        assert_eq!(Response::decode(&r.encode()), Some(Ok(r)));
    } else {
        assert_eq!(
            Response::decode(&Response::Accept.encode()),
            Some(Ok(Response::Accept))
        );
    }
}
