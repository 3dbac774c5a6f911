//! Fuzzes the snapshot stream decoding: the payload decoders of the
//! snapshot frames (`SnapshotBegin::decode`, `SnapshotEnd::decode`,
//! `AckStatus::decode`) and `Envelope::decode`, on arbitrary bytes and as a
//! frame stream through the `Deframer`.
//!
//! The receiving state machine itself lives inside the reader thread
//! (`src/io/reader.rs`, `consume_snapshot`, and the checks of
//! `SnapshotReader` in `src/snapshot.rs`), tied to channels and sockets, so
//! this target drives a faithful single-threaded model of it (`Receiver`
//! below) over the crate's real decoders.
//!
//! Input: byte 0 picks the mode (byte 0 % 3):
//!
//! * 0, payloads: the rest is given to each payload decoder; whatever
//!   decodes must re-encode to the same bytes, and what is refused must
//!   break a rule of docs/PROTOCOL.md §10/§12.
//! * 1, raw stream: byte 1 bit 0 repairs frame CRCs, then a frame limit and
//!   a chunk plan, then the stream bytes: decoded and run through the model
//!   receiver, whose invariants are checked.
//! * 2, well-formed stream: a valid snapshot stream is built from the input
//!   (data, chunk size, inline or not, the message), fed in chunks, and
//!   must deliver exactly what was sent; with one bit flipped anywhere in
//!   it, it must not be delivered at all.

#![no_main]

mod common;

use common::{ChunkPlan, Control};
use libfuzzer_sys::fuzz_target;
use raftwire::testing::wire::snapshot::{BEGIN_LEN, END_LEN, FLAG_INLINE};
use raftwire::testing::wire::{
    AckStatus, Deframer, FrameKind, SnapshotBegin, SnapshotEnd, encode_frame, heartbeat_frame,
};
use raftwire::{Envelope, Message, MessageClass};

/// The hello's sender and the receiving node.
const FROM: u64 = 1;
const LOCAL: u64 = 2;
/// Small limits for the model, so memory stays bounded while fuzzing.
const MAX_SNAPSHOT_LEN: u64 = 1 << 20;
const MAX_INLINE_LEN: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => payloads(rest),
        1 => raw_stream(rest),
        _ => well_formed(rest),
    }
});

fn payloads(p: &[u8]) {
    match SnapshotBegin::decode(p) {
        Ok((b, msg)) => {
            assert!(p.len() >= BEGIN_LEN && p[8] & !FLAG_INLINE == 0);
            assert_eq!(b.inline, p[8] & FLAG_INLINE != 0);
            assert!(!b.inline || msg.is_empty());
            let mut again = Vec::new();
            b.encode(&mut again, |o| o.extend_from_slice(msg));
            assert_eq!(again, p, "snapshot_begin does not re-encode");
        }
        Err(_) => assert!(
            p.len() < BEGIN_LEN
                || p[8] & !FLAG_INLINE != 0
                || (p[8] & FLAG_INLINE != 0 && p.len() != BEGIN_LEN)
        ),
    }
    match SnapshotEnd::decode(p) {
        Ok(e) => assert_eq!(e.encode()[..], *p, "snapshot_end does not re-encode"),
        Err(_) => assert_ne!(p.len(), END_LEN),
    }
    match AckStatus::decode(p) {
        Ok(s) => {
            assert_eq!(s.encode()[..], *p, "snapshot_ack does not re-encode");
            assert_eq!(AckStatus::from_u8(p[0]), Some(s));
        }
        Err(_) => assert!(p.len() != 1 || p[0] > 8),
    }
    match Envelope::decode(raftwire::Bytes::copy_from_slice(p)) {
        Ok(m) => {
            let mut again = Vec::new();
            m.encode(&mut again);
            assert_eq!(again, p, "envelope does not re-encode");
            assert_eq!(m.encoded_len(), p.len());
            assert_eq!(MessageClass::from_u8(p[16]), Some(m.class));
        }
        Err(_) => assert!(p.len() < 17 || p[16] > 3),
    }
}

/// How a snapshot stream ended for the receiver.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The stream is not over (more bytes needed).
    Open,
    /// Verified and delivered: the message and, unless inline, the data.
    Delivered { message: Envelope, data: Vec<u8> },
    /// Refused with a `snapshot_ack` status (then the connection closes).
    Refused(AckStatus),
    /// A protocol violation: the connection is closed.
    Violation(&'static str),
}

enum State {
    AwaitBegin,
    /// Between `snapshot_begin` and `snapshot_end`: `buf` holds the chunks
    /// so far, `crc` is their CRC-32C. `message` is the begin frame's;
    /// `None` for an inline snapshot, whose chunks are the message.
    Receiving {
        message: Option<Envelope>,
        size: u64,
        buf: Vec<u8>,
        crc: u32,
    },
    Finished,
}

/// The receiving side of a snapshot connection, after the accept: the
/// rules of `consume_snapshot`, `snapshot_begin` and `inline_end` in
/// src/io/reader.rs and of `SnapshotReader::next_item` in src/snapshot.rs.
struct Receiver {
    state: State,
    outcome: Outcome,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            state: State::AwaitBegin,
            outcome: Outcome::Open,
        }
    }

    fn finish(&mut self, o: Outcome) {
        // One verdict per stream.
        assert_eq!(self.outcome, Outcome::Open, "second verdict {o:?}");
        self.outcome = o;
        self.state = State::Finished;
    }

    fn violation(&mut self, why: &'static str) {
        if self.outcome == Outcome::Open {
            self.finish(Outcome::Violation(why));
        } else {
            // A violation after a verdict still closes the connection.
            self.state = State::Finished;
        }
    }

    fn frame(&mut self, kind: FrameKind, payload: &[u8]) {
        if let Outcome::Violation(_) = self.outcome {
            panic!("a frame after the connection was closed");
        }
        match (kind, &mut self.state) {
            (FrameKind::Heartbeat, _) if payload.is_empty() => {}
            (FrameKind::SnapshotBegin, State::AwaitBegin) => self.begin(payload),
            (
                FrameKind::SnapshotChunk,
                State::Receiving {
                    message,
                    size,
                    buf,
                    crc,
                },
            ) => {
                if (buf.len() + payload.len()) as u64 > *size {
                    return self.finish(Outcome::Refused(AckStatus::SizeMismatch));
                }
                buf.extend_from_slice(payload);
                *crc = crc32c::crc32c_append(*crc, payload);
                assert!(message.is_some() || buf.len() as u64 <= MAX_INLINE_LEN);
            }
            (FrameKind::SnapshotEnd, State::Receiving { .. }) => {
                let Ok(end) = SnapshotEnd::decode(payload) else {
                    return self.violation("unexpected_frame: bad snapshot_end");
                };
                let State::Receiving {
                    message,
                    size,
                    buf,
                    crc,
                } = std::mem::replace(&mut self.state, State::Finished)
                else {
                    unreachable!()
                };
                if end.size != size || buf.len() as u64 != size {
                    return self.finish(Outcome::Refused(AckStatus::SizeMismatch));
                }
                if end.crc != crc {
                    return self.finish(Outcome::Refused(AckStatus::ChecksumMismatch));
                }
                match message {
                    Some(message) => {
                        assert_eq!(crc32c::crc32c(&buf), end.crc);
                        self.finish(Outcome::Delivered { message, data: buf })
                    }
                    None => match Envelope::decode(raftwire::Bytes::copy_from_slice(&buf)) {
                        Ok(m) if m.from == FROM && m.to == LOCAL => {
                            self.finish(Outcome::Delivered {
                                message: m,
                                data: Vec::new(),
                            })
                        }
                        _ => self.finish(Outcome::Refused(AckStatus::Malformed)),
                    },
                }
            }
            // Refused or done: data is discarded.
            (FrameKind::SnapshotChunk | FrameKind::SnapshotEnd, State::Finished) => {}
            _ => self.violation("unexpected_frame"),
        }
    }

    fn begin(&mut self, payload: &[u8]) {
        let Ok((begin, msg)) = SnapshotBegin::decode(payload) else {
            return self.violation("unexpected_frame: bad snapshot_begin");
        };
        if begin.size > MAX_SNAPSHOT_LEN || (begin.inline && begin.size > MAX_INLINE_LEN) {
            return self.finish(Outcome::Refused(AckStatus::TooLarge));
        }
        let message = if begin.inline {
            assert!(msg.is_empty());
            None
        } else {
            let Ok(message) = Envelope::decode(raftwire::Bytes::copy_from_slice(msg)) else {
                return self.violation("decode");
            };
            if message.from != FROM {
                return self.violation("wrong_sender");
            }
            if message.to != LOCAL {
                return self.violation("wrong_receiver");
            }
            Some(message)
        };
        self.state = State::Receiving {
            message,
            size: begin.size,
            buf: Vec::new(),
            crc: 0,
        };
    }
}

/// Decodes `chunks` with limit `max` and runs the frames through the model.
fn receive(chunks: &[&[u8]], max: u32) -> Outcome {
    let mut d = Deframer::new(max);
    let mut r = Receiver::new();
    'feed: for chunk in chunks {
        let mut cursor = d.feed(chunk);
        while let Some(f) = cursor.next() {
            match f {
                Ok(f) => {
                    assert!(f.payload.len() <= max as usize);
                    r.frame(f.kind, f.payload);
                    if let Outcome::Violation(_) = r.outcome {
                        break 'feed;
                    }
                }
                Err(_) => {
                    r.violation("frame error");
                    break 'feed;
                }
            }
        }
    }
    r.outcome
}

fn raw_stream(rest: &[u8]) {
    let mut c = Control::new(rest);
    let fix = c.u8() & 1 != 0;
    let max = common::pick_max(&mut c);
    let plan = ChunkPlan::read(&mut c);
    let mut stream = c.rest().to_vec();
    if fix {
        common::fix_checksums(&mut stream);
    }
    let outcome = receive(&plan.split(&stream), max);
    // The same bytes in one piece give the same outcome.
    assert_eq!(
        outcome,
        receive(&[&stream], max),
        "outcome depends on chunking"
    );
    if let Outcome::Delivered { message, data } = &outcome {
        assert!(data.len() as u64 <= MAX_SNAPSHOT_LEN);
        assert_eq!((message.from, message.to), (FROM, LOCAL));
    }
}

/// Builds a valid stream from the input and checks it is delivered intact,
/// and that any single flipped bit keeps it from being delivered.
fn well_formed(rest: &[u8]) {
    let mut c = Control::new(rest);
    let opts = c.u8();
    let inline = opts & 1 != 0;
    let heartbeats = opts & 2 != 0;
    let chunk_len = 1 + (c.u8() as usize % 64) * if opts & 4 != 0 { 97 } else { 1 };
    let class = MessageClass::from_u8(c.u8() % 4).unwrap();
    let flip = c.u32();
    let plan = ChunkPlan::read(&mut c);
    let payload_len = c.u8() as usize;
    let payload = c.bytes(payload_len).to_vec();
    let data = c.rest().to_vec();

    let encode = |m: &Envelope| {
        let mut b = Vec::new();
        m.encode(&mut b);
        b
    };
    let message = Envelope::new(LOCAL, FROM, class, payload);
    // What must be delivered, and how it travels: inline, the data is
    // appended to the message, which is the stream's body; otherwise the
    // message goes in `snapshot_begin` and the data is the body.
    let (want, begin_msg, body) = if inline {
        let mut m = message;
        m.class = MessageClass::Snapshot;
        m.payload = [&m.payload[..], &data[..]].concat().into();
        let body = encode(&m);
        let want = Outcome::Delivered {
            message: m,
            data: Vec::new(),
        };
        (want, Vec::new(), body)
    } else {
        let begin_msg = encode(&message);
        (
            Outcome::Delivered {
                message,
                data: data.clone(),
            },
            begin_msg,
            data,
        )
    };
    let max = chunk_len.max(begin_msg.len() + BEGIN_LEN).max(END_LEN) as u32;
    let mut s = Vec::new();
    let begin = SnapshotBegin {
        size: body.len() as u64,
        inline,
    };
    encode_frame(&mut s, FrameKind::SnapshotBegin, max, |o| {
        begin.encode(o, |o| o.extend_from_slice(&begin_msg))
    })
    .unwrap();
    for piece in body.chunks(chunk_len) {
        if heartbeats {
            s.extend_from_slice(&heartbeat_frame());
        }
        encode_frame(&mut s, FrameKind::SnapshotChunk, max, |o| {
            o.extend_from_slice(piece)
        })
        .unwrap();
    }
    let end = SnapshotEnd {
        size: body.len() as u64,
        crc: crc32c::crc32c(&body),
    };
    encode_frame(&mut s, FrameKind::SnapshotEnd, max, |o| {
        o.extend_from_slice(&end.encode())
    })
    .unwrap();

    let limit = if inline {
        MAX_INLINE_LEN
    } else {
        MAX_SNAPSHOT_LEN
    };
    let too_large = body.len() as u64 > limit;
    let got = receive(&plan.split(&s), max);
    if too_large {
        assert_eq!(got, Outcome::Refused(AckStatus::TooLarge));
        return;
    }
    assert_eq!(got, want, "a valid stream was not delivered intact");

    let bit = flip as usize % (s.len() * 8);
    s[bit / 8] ^= 1 << (bit % 8);
    let got = receive(&plan.split(&s), max);
    assert!(
        !matches!(got, Outcome::Delivered { .. }),
        "bit {bit} flipped, still delivered: {got:?}"
    );
}
