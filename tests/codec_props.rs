//! Property tests for the wire codec (frames, handshake, snapshot frame
//! payloads, `Envelope`), driven by a seeded xorshift generator.
//!
//! Every case draws from a generator seeded by its own case seed. On a
//! failure the test prints the base seed and the failing case's seed;
//! replay with
//!
//! ```text
//! RAFTWIRE_PROP_SEED=0x<case seed> RAFTWIRE_PROP_CASES=1 cargo test --test codec_props <name>
//! ```
//!
//! `RAFTWIRE_PROP_SEED` (decimal or `0x` hex) replaces the fixed base seed
//! and `RAFTWIRE_PROP_CASES` the number of cases of every test (each has its
//! own default, sized so that a test takes well under 2 s in a debug build).
// Plays peers by hand with the wire codec (raftwire::testing::wire).
#![cfg(feature = "testing")]

use raftwire::testing::wire::snapshot::{BEGIN_LEN, FLAG_INLINE};
use raftwire::testing::wire::{
    AckStatus, Deframer, FRAME_HEADER_LEN, Frame, FrameError, FrameKind, HELLO_LEN, Hello,
    HelloError, HelloParse, Lane, MAGIC, PROTOCOL_VERSION, RESPONSE_LEN, RejectReason, Response,
    ResponseError, SnapshotBegin, SnapshotEnd, encode_frame, heartbeat_frame,
};
use raftwire::{Envelope, Message, MessageClass};
use std::fmt;

// ---------------------------------------------------------------------------
// The generator and the case runner.

const DEFAULT_SEED: u64 = 0x5EED_C0DE_C0FF_EE01;

/// xorshift64* seeded through splitmix64.
struct Rng(u64);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let s = splitmix64(seed);
        Rng(if s == 0 { DEFAULT_SEED } else { s })
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// A u64 that is often an edge value.
    fn id(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 + self.below(7),
            3 => 1 << self.below(64),
            _ => self.next_u64(),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

/// The seed of case `i`: the base seed itself for case 0, so that a failing
/// case replays alone with its own seed and one case.
fn case_seed(base: u64, i: u64) -> u64 {
    if i == 0 {
        base
    } else {
        splitmix64(base ^ splitmix64(i))
    }
}

/// Prints how to replay the case if the test panics while it is alive.
struct Replay {
    test: &'static str,
    base: u64,
    case: u64,
    seed: u64,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n{}: FAILED at case {} (base seed {:#018x}, case seed {:#018x}).\n\
                 Replay this case: RAFTWIRE_PROP_SEED={:#x} RAFTWIRE_PROP_CASES=1 \
                 cargo test --test codec_props {}\n\
                 Replay the run:   RAFTWIRE_PROP_SEED={:#x} cargo test --test codec_props {}\n",
                self.test,
                self.case,
                self.base,
                self.seed,
                self.seed,
                self.test,
                self.base,
                self.test
            );
        }
    }
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} case {} seed {:#x}; replay: RAFTWIRE_PROP_SEED={:#x} RAFTWIRE_PROP_CASES=1]",
            self.test, self.case, self.seed, self.seed
        )
    }
}

/// Runs `check` for each case with a generator of its own.
fn run(test: &'static str, default_cases: u64, mut check: impl FnMut(&mut Rng, &Replay)) {
    let base = env_u64("RAFTWIRE_PROP_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("RAFTWIRE_PROP_CASES").unwrap_or(default_cases);
    for case in 0..cases {
        let seed = case_seed(base, case);
        let replay = Replay {
            test,
            base,
            case,
            seed,
        };
        check(&mut Rng::new(seed), &replay);
    }
}

// ---------------------------------------------------------------------------
// Chunking, decoding and a reference decoder.

/// Cuts `bytes` into pieces in one of several styles: one byte at a time,
/// small pieces, mixed (1 byte, small, large, empty), or large pieces.
fn chunk<'a>(rng: &mut Rng, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    // Feeding a large stream one byte at a time is slow in a debug build:
    // that style is kept for streams up to 64 KiB.
    let style = if bytes.len() <= 64 << 10 {
        rng.below(5)
    } else {
        1 + rng.below(4)
    };
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = match style {
            0 => 1,
            1 => rng.range(1, 16),
            2 | 3 => match rng.below(8) {
                0 => 0,
                1 | 2 => 1,
                3 | 4 => rng.range(1, 64),
                5 | 6 => rng.range(1, 64 << 10),
                _ => rest.len(),
            },
            _ => rng.range(1, 256 << 10),
        };
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

type Decoded = Vec<Result<(FrameKind, Vec<u8>), FrameError>>;

/// Feeds the pieces to `d` and collects everything it yields, checking the
/// invariants every caller relies on after each piece.
fn deframe(d: &mut Deframer, max: u32, pieces: &[&[u8]], ctx: &Replay) -> Decoded {
    let mut got: Decoded = Vec::new();
    for piece in pieces {
        let failed_before = d.is_failed();
        let mut cursor = d.feed(piece);
        while let Some(r) = cursor.next() {
            if got.iter().any(Result::is_err) {
                let what = r.as_ref().map(|f| f.kind);
                panic!("{ctx} something was yielded after an error: {what:?}");
            }
            got.push(r.map(|f: Frame<'_>| {
                assert!(
                    f.payload.len() <= max as usize,
                    "{ctx} a {}-byte payload passed the limit {max}",
                    f.payload.len()
                );
                (f.kind, f.payload.to_vec())
            }));
        }
        // Until the decoder fails, `None` means the piece was used up.
        if !failed_before {
            assert_eq!(cursor.remaining(), 0, "{ctx} input left behind");
        }
        assert!(
            d.pending_bytes() <= FRAME_HEADER_LEN + max as usize,
            "{ctx} {} bytes pending, limit {max}",
            d.pending_bytes()
        );
        assert_eq!(d.is_failed(), got.iter().any(Result::is_err), "{ctx}");
    }
    got
}

/// CRC-32C, bitwise from the definition (independent of the crate's).
fn crc32c_ref(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The frame rules of docs/PROTOCOL.md §6–§8 applied to the whole input at
/// once: the frames, then the first error if any, and the bytes pending.
fn reference_decode(bytes: &[u8], max: u32) -> (Decoded, usize) {
    let mut out: Decoded = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < FRAME_HEADER_LEN {
            return (out, rest.len());
        }
        let len = u32::from_be_bytes(rest[0..4].try_into().unwrap());
        let kind = FrameKind::from_u8(rest[4]);
        let err = if len > max {
            Some(FrameError::Oversize { len, max })
        } else if kind.is_none() {
            Some(FrameError::UnknownKind(rest[4]))
        } else if rest[5..8] != [0, 0, 0] {
            Some(FrameError::NonZeroReserved)
        } else {
            None
        };
        if let Some(e) = err {
            out.push(Err(e));
            return (out, 0);
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if rest.len() < total {
            return (out, rest.len());
        }
        let mut covered = rest[0..8].to_vec();
        covered.extend_from_slice(&rest[FRAME_HEADER_LEN..total]);
        let expected = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let actual = crc32c_ref(&covered);
        if expected != actual {
            out.push(Err(FrameError::BadChecksum { expected, actual }));
            return (out, 0);
        }
        out.push(Ok((kind.unwrap(), rest[FRAME_HEADER_LEN..total].to_vec())));
        rest = &rest[total..];
    }
}

fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, u32::MAX, |b| b.extend_from_slice(payload)).unwrap();
    out
}

fn random_class(rng: &mut Rng) -> MessageClass {
    MessageClass::from_u8(rng.below(4) as u8).unwrap()
}

fn random_kind(rng: &mut Rng) -> FrameKind {
    FrameKind::from_u8(1 + rng.below(6) as u8).unwrap()
}

/// A payload length: mostly up to 64 KiB (often tiny), sometimes up to 1 MiB.
fn payload_len(rng: &mut Rng) -> usize {
    match rng.below(40) {
        0..=11 => rng.range(0, 64),
        12..=37 => rng.range(0, 64 << 10),
        _ => rng.range(64 << 10, 1 << 20),
    }
}

// ---------------------------------------------------------------------------
// Frames and envelopes.

/// encode → decode is the identity for any sequence of envelopes (with
/// link heartbeats between them), however the byte stream is cut.
#[test]
fn envelopes_round_trip_under_any_chunking() {
    run("envelopes_round_trip_under_any_chunking", 48, |rng, ctx| {
        let n = rng.range(1, 6);
        let mut sent = Vec::new();
        for _ in 0..n {
            let len = payload_len(rng);
            let payload = rng.bytes(len);
            sent.push(Envelope::new(
                rng.id(),
                rng.id(),
                random_class(rng),
                payload,
            ));
        }
        let largest = sent.iter().map(Message::encoded_len).max().unwrap();
        // Sometimes exactly the largest frame's length: a frame at the limit
        // is accepted.
        let max = if rng.chance(1, 3) {
            largest
        } else {
            rng.range(largest, 16 << 20)
        } as u32;
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for m in &sent {
            if rng.chance(1, 3) {
                stream.extend_from_slice(&heartbeat_frame());
                expected.push(None);
            }
            encode_frame(&mut stream, FrameKind::Message, max, |b| m.encode(b))
                .unwrap_or_else(|len| panic!("{ctx} {len} bytes refused by limit {max}"));
            expected.push(Some(m.clone()));
        }
        let frame_bytes: usize = sent
            .iter()
            .map(|m| FRAME_HEADER_LEN + m.encoded_len())
            .sum::<usize>()
            + FRAME_HEADER_LEN * expected.iter().filter(|e| e.is_none()).count();
        assert_eq!(stream.len(), frame_bytes, "{ctx} encoded_len disagrees");

        let pieces = chunk(rng, &stream);
        let mut d = Deframer::new(max);
        let got = deframe(&mut d, max, &pieces, ctx);
        assert_eq!(d.pending_bytes(), 0, "{ctx} bytes left pending");
        assert_eq!(got.len(), expected.len(), "{ctx} frame count");
        for (i, (g, want)) in got.into_iter().zip(&expected).enumerate() {
            let (kind, payload) = g.unwrap_or_else(|e| panic!("{ctx} frame {i}: {e}"));
            match want {
                None => {
                    assert_eq!((kind, payload.len()), (FrameKind::Heartbeat, 0), "{ctx}")
                }
                Some(m) => {
                    assert_eq!(kind, FrameKind::Message, "{ctx} frame {i}");
                    let back = Envelope::decode(bytes::Bytes::copy_from_slice(&payload))
                        .unwrap_or_else(|e| panic!("{ctx} frame {i}: {e}"));
                    assert!(back == *m, "{ctx} frame {i}: envelope changed");
                }
            }
        }

        // A limit one byte short refuses the largest message and leaves the
        // buffer as it was.
        let big = sent.iter().find(|m| m.encoded_len() == largest).unwrap();
        let mut out = vec![7u8; 3];
        let r = encode_frame(&mut out, FrameKind::Message, largest as u32 - 1, |b| {
            big.encode(b)
        });
        assert_eq!(r, Err(largest), "{ctx}");
        assert_eq!(out, [7, 7, 7], "{ctx}");
    });
}

/// Envelope encoding is canonical: whatever decodes re-encodes to the same
/// bytes, and whatever fails breaks a rule of docs/PROTOCOL.md §10.
#[test]
fn envelope_decode_matches_the_spec() {
    run("envelope_decode_matches_the_spec", 3000, |rng, ctx| {
        let len = rng.range(0, 40);
        let mut b = rng.bytes(len);
        if len > 16 && rng.chance(2, 3) {
            b[16] = rng.below(5) as u8;
        }
        match Envelope::decode(bytes::Bytes::copy_from_slice(&b)) {
            Ok(m) => {
                let mut again = Vec::new();
                m.encode(&mut again);
                assert_eq!(again, b, "{ctx}");
                assert_eq!(m.encoded_len(), b.len(), "{ctx}");
                assert_eq!(m.to, u64::from_be_bytes(b[0..8].try_into().unwrap()));
                assert_eq!(m.from, u64::from_be_bytes(b[8..16].try_into().unwrap()));
                assert_eq!(m.class.to_u8(), b[16], "{ctx}");
            }
            Err(_) => assert!(b.len() < 17 || b[16] > 3, "{ctx} valid bytes refused"),
        }
    });
}

// ---------------------------------------------------------------------------
// Handshake.

/// Feeds `bytes` in pieces to `decode` as a connection would: the first
/// answer it gives must be the answer for the complete bytes, and it must
/// not come before the bytes that decide it.
fn incremental<T: PartialEq + fmt::Debug>(
    rng: &mut Rng,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Option<T>,
    ctx: &Replay,
) -> Option<(T, usize)> {
    let mut buf = Vec::new();
    for piece in chunk(rng, bytes) {
        buf.extend_from_slice(piece);
        if let Some(r) = decode(&buf) {
            for n in 0..buf.len() {
                if decode(&buf[..n]).is_some() {
                    // Decided earlier than this piece: then it must agree.
                    assert_eq!(decode(&buf[..n]), Some(decode(&buf).unwrap()), "{ctx}");
                }
            }
            assert_eq!(
                decode(bytes),
                Some(r),
                "{ctx} answer changed with more bytes"
            );
            return decode(&buf).map(|r| (r, buf.len()));
        }
    }
    None
}

fn random_hello(rng: &mut Rng) -> Hello {
    Hello {
        version: if rng.chance(3, 4) {
            PROTOCOL_VERSION
        } else {
            rng.byte() as u16 * if rng.chance(1, 2) { 1 } else { 257 }
        },
        lane: if rng.chance(3, 4) {
            rng.below(4) as u8
        } else {
            rng.byte()
        },
        flags: if rng.chance(3, 4) { 0 } else { rng.byte() },
        cluster_id: rng.id(),
        from: rng.id(),
        to: rng.id(),
    }
}

/// Hello and Response: encode → decode is the identity (under any
/// chunking), decisions come as early as the protocol says and never
/// change, and `check` applies the rules of §3 in their order.
#[test]
fn handshake_round_trips() {
    run("handshake_round_trips", 2000, |rng, ctx| {
        let h = random_hello(rng);
        let bytes = h.encode();
        assert_eq!(&bytes[0..4], &MAGIC, "{ctx}");
        let (parsed, used) = incremental(rng, &bytes, Hello::decode, ctx)
            .unwrap_or_else(|| panic!("{ctx} a whole hello is undecided"));
        if h.version == PROTOCOL_VERSION {
            assert_eq!(parsed, Ok(HelloParse::Hello(h)), "{ctx}");
            assert_eq!(used, HELLO_LEN, "{ctx} decided before 32 bytes");
            for n in 0..HELLO_LEN {
                assert_eq!(Hello::decode(&bytes[..n]), None, "{ctx} prefix {n}");
            }
        } else {
            assert_eq!(parsed, Ok(HelloParse::Unsupported(h.version)), "{ctx}");
            // Known from the first six bytes on, whatever follows.
            assert_eq!(Hello::decode(&bytes[..5]), None, "{ctx}");
            assert_eq!(Hello::decode(&bytes[..6]), Some(parsed), "{ctx}");
        }

        // Identity checks, in the order of docs/PROTOCOL.md §3.
        let cluster = if rng.chance(3, 4) {
            h.cluster_id
        } else {
            rng.id()
        };
        let local = match rng.below(4) {
            0 => h.from,
            1 => rng.id(),
            _ => h.to,
        };
        let removed = rng.chance(1, 4);
        let want = if h.version != PROTOCOL_VERSION {
            Err(RejectReason::UnsupportedVersion)
        } else if h.flags & !raftwire::testing::wire::handshake::FLAG_HEADER_CHECKSUMS != 0 {
            // Bit 0 (header-only checksums) is known; the acceptor decides
            // on it with the TLS state (conn::accept).
            Err(RejectReason::BadFlags)
        } else if h.lane > 2 {
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
        assert_eq!(h.check(cluster, local, |_| removed), want, "{ctx} {h:?}");

        // Responses: every valid one round-trips, at any chunking.
        let r = match rng.below(8) {
            0 => Response::Accept,
            n => Response::Reject(RejectReason::from_u8(n as u8).unwrap()),
        };
        let rb = r.encode();
        let (parsed, used) = incremental(rng, &rb, Response::decode, ctx).unwrap();
        assert_eq!((parsed, used), (Ok(r), RESPONSE_LEN), "{ctx}");
        for n in 0..RESPONSE_LEN {
            assert_eq!(Response::decode(&rb[..n]), None, "{ctx}");
        }
        // Trailing bytes (the first frames) do not change the answer.
        let mut more = rb.to_vec();
        let extra = rng.range(0, 20);
        more.extend_from_slice(&rng.bytes(extra));
        assert_eq!(Response::decode(&more), Some(Ok(r)), "{ctx}");
    });
}

/// Arbitrary bytes given to the handshake decoders: no panic, and every
/// answer follows the protocol (bad magic as soon as a byte differs,
/// malformed exactly for statuses and reasons the protocol does not define,
/// and whatever decodes re-encodes).
#[test]
fn handshake_decoders_on_arbitrary_bytes() {
    run("handshake_decoders_on_arbitrary_bytes", 4000, |rng, ctx| {
        let len = rng.range(0, 40);
        let mut b = rng.bytes(len);
        // Mostly with the magic, sometimes with one byte of it wrong.
        let m = b.len().min(4);
        if rng.chance(3, 4) {
            b[..m].copy_from_slice(&MAGIC[..m]);
            if m > 0 && rng.chance(1, 4) {
                b[rng.below(m as u64) as usize] ^= 1 << rng.below(8);
            }
        }
        if b.len() >= 6 && rng.chance(1, 2) {
            b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        }
        if b.len() >= 8 && rng.chance(1, 2) {
            b[6] = rng.below(3) as u8;
            b[7] = rng.below(9) as u8;
        }
        let magic_ok = b[..b.len().min(4)] == MAGIC[..b.len().min(4)];

        match Hello::decode(&b) {
            None => assert!(magic_ok && b.len() < HELLO_LEN, "{ctx}"),
            Some(Err(HelloError::BadMagic)) => assert!(!magic_ok, "{ctx}"),
            Some(Ok(HelloParse::Unsupported(v))) => {
                assert!(magic_ok && v != PROTOCOL_VERSION, "{ctx}");
                assert_eq!(v.to_be_bytes(), [b[4], b[5]], "{ctx}");
            }
            Some(Ok(HelloParse::Hello(h))) => {
                assert_eq!(h.encode(), b[..HELLO_LEN], "{ctx}");
            }
        }

        match Response::decode(&b) {
            None => assert!(magic_ok && b.len() < RESPONSE_LEN, "{ctx}"),
            Some(Err(ResponseError::BadMagic)) => assert!(!magic_ok, "{ctx}"),
            Some(Err(ResponseError::Malformed { status, reason })) => {
                assert_eq!((status, reason), (b[6], b[7]), "{ctx}");
                let defined = match status {
                    0 => reason == 0,
                    1 => (1..=7).contains(&reason),
                    _ => false,
                };
                assert!(!defined, "{ctx} a defined response refused");
            }
            Some(Ok(r)) => {
                let e = r.encode();
                assert_eq!((&e[0..4], &e[6..8]), (&b[0..4], &b[6..8]), "{ctx}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Snapshot frames.

/// The snapshot frame payloads round-trip, alone and as a whole stream
/// (begin, chunks, end, then the ack) through the frame decoder.
#[test]
fn snapshot_payloads_round_trip() {
    run("snapshot_payloads_round_trip", 120, |rng, ctx| {
        // SnapshotBegin, with and without the inline flag.
        let inline = rng.chance(1, 3);
        let size = match rng.below(3) {
            0 => rng.below(1 << 20),
            1 => rng.next_u64(),
            _ => rng.id(),
        };
        let msg = if inline {
            Vec::new()
        } else {
            let m = Envelope::new(rng.id(), rng.id(), random_class(rng), {
                let n = rng.range(0, 300);
                rng.bytes(n)
            });
            let mut b = Vec::new();
            m.encode(&mut b);
            b
        };
        let begin = SnapshotBegin { size, inline };
        let mut bp = Vec::new();
        begin.encode(&mut bp, |b| b.extend_from_slice(&msg));
        assert_eq!(bp.len(), BEGIN_LEN + msg.len(), "{ctx}");
        let (b2, m2) = SnapshotBegin::decode(&bp).unwrap_or_else(|_| panic!("{ctx}"));
        assert_eq!((b2, m2), (begin, &msg[..]), "{ctx}");
        if inline {
            // An inline begin carries no message.
            let mut longer = bp.clone();
            longer.push(rng.byte());
            assert!(SnapshotBegin::decode(&longer).is_err(), "{ctx}");
        }
        // Unknown flag bits are refused.
        let mut bad = bp.clone();
        bad[8] |= 1 << rng.range(1, 7);
        assert!(SnapshotBegin::decode(&bad).is_err(), "{ctx}");

        // SnapshotEnd and every ack status.
        let end = SnapshotEnd {
            size: rng.next_u64(),
            crc: rng.next_u64() as u32,
        };
        assert_eq!(SnapshotEnd::decode(&end.encode()), Ok(end), "{ctx}");
        let status = AckStatus::from_u8(rng.below(9) as u8).unwrap();
        assert_eq!(AckStatus::decode(&status.encode()), Ok(status), "{ctx}");

        // A whole stream of random data, cut anyhow.
        let data_len = match rng.below(4) {
            0 => 0,
            1 => rng.range(1, 100),
            _ => rng.range(100, 256 << 10),
        };
        let chunk_len = match rng.below(3) {
            0 => rng.range(1, 16),
            _ => rng.range(1, 64 << 10),
        };
        // Tiny chunks cost a frame each: keep those streams short.
        let data_len = if chunk_len < 16 {
            data_len.min(4096)
        } else {
            data_len
        };
        let data = rng.bytes(data_len);
        let mut stream = Vec::new();
        let max = (chunk_len.max(BEGIN_LEN + msg.len()).max(12)) as u32;
        let begin = SnapshotBegin {
            size: data.len() as u64,
            inline,
        };
        encode_frame(&mut stream, FrameKind::SnapshotBegin, max, |b| {
            begin.encode(b, |b| b.extend_from_slice(&msg))
        })
        .unwrap();
        for piece in data.chunks(chunk_len) {
            encode_frame(&mut stream, FrameKind::SnapshotChunk, max, |b| {
                b.extend_from_slice(piece)
            })
            .unwrap();
        }
        let end = SnapshotEnd {
            size: data.len() as u64,
            crc: crc32c_ref(&data),
        };
        encode_frame(&mut stream, FrameKind::SnapshotEnd, max, |b| {
            b.extend_from_slice(&end.encode())
        })
        .unwrap();
        encode_frame(&mut stream, FrameKind::SnapshotAck, max, |b| {
            b.extend_from_slice(&status.encode())
        })
        .unwrap();

        let pieces = chunk(rng, &stream);
        let mut d = Deframer::new(max);
        let got = deframe(&mut d, max, &pieces, ctx);
        assert_eq!(d.pending_bytes(), 0, "{ctx}");
        let mut frames = got.into_iter().map(|r| r.unwrap());
        let (k, p) = frames.next().unwrap();
        assert_eq!(k, FrameKind::SnapshotBegin, "{ctx}");
        let (b3, m3) = SnapshotBegin::decode(&p).unwrap();
        assert_eq!(
            (b3.size, b3.inline, m3),
            (data.len() as u64, inline, &msg[..]),
            "{ctx}"
        );
        let mut received = Vec::new();
        let mut crc = 0u32;
        let mut tail = Vec::new();
        for (k, p) in frames {
            match k {
                FrameKind::SnapshotChunk if tail.is_empty() => {
                    crc = crc32c::crc32c_append(crc, &p);
                    received.extend_from_slice(&p);
                }
                _ => tail.push((k, p)),
            }
        }
        assert!(received == data, "{ctx} data changed");
        assert_eq!(tail.len(), 2, "{ctx}");
        assert_eq!(tail[0].0, FrameKind::SnapshotEnd, "{ctx}");
        let e = SnapshotEnd::decode(&tail[0].1).unwrap();
        assert_eq!((e.size, e.crc), (received.len() as u64, crc), "{ctx}");
        assert_eq!(tail[1].0, FrameKind::SnapshotAck, "{ctx}");
        assert_eq!(AckStatus::decode(&tail[1].1), Ok(status), "{ctx}");
    });
}

/// Arbitrary payloads given to the snapshot payload decoders: no panic, and
/// acceptance exactly as docs/PROTOCOL.md §12 defines it.
#[test]
fn snapshot_decoders_on_arbitrary_bytes() {
    run("snapshot_decoders_on_arbitrary_bytes", 4000, |rng, ctx| {
        let len = rng.range(0, 30);
        let mut p = rng.bytes(len);
        if len > 8 && rng.chance(1, 2) {
            p[8] = rng.below(4) as u8;
        }
        match SnapshotBegin::decode(&p) {
            Ok((b, msg)) => {
                assert!(p.len() >= BEGIN_LEN && p[8] & !FLAG_INLINE == 0, "{ctx}");
                assert!(!b.inline || msg.is_empty(), "{ctx}");
                let mut again = Vec::new();
                b.encode(&mut again, |o| o.extend_from_slice(msg));
                assert_eq!(again, p, "{ctx}");
            }
            Err(_) => assert!(
                p.len() < BEGIN_LEN
                    || p[8] & !FLAG_INLINE != 0
                    || (p[8] == FLAG_INLINE && p.len() > BEGIN_LEN),
                "{ctx} a valid begin refused"
            ),
        }
        match SnapshotEnd::decode(&p) {
            Ok(e) => assert_eq!(e.encode()[..], p[..], "{ctx}"),
            Err(_) => assert_ne!(p.len(), 12, "{ctx}"),
        }
        let one = &p[..p.len().min(1 + rng.below(2) as usize)];
        match AckStatus::decode(one) {
            Ok(s) => assert_eq!(s.encode()[..], *one, "{ctx}"),
            Err(_) => assert!(one.len() != 1 || one[0] > 8, "{ctx}"),
        }
    });
}

// ---------------------------------------------------------------------------
// The decoder on hostile input.

/// Bytes that look like frames: valid frames, frames with a random header
/// field, random bytes, lengths near the limit, so that every check is hit.
fn hostile_stream(rng: &mut Rng, max: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.range(0, 6) {
        let len = match rng.below(4) {
            0 => 0,
            1 => rng.range(0, 64),
            2 => (max as usize).min(4096),
            _ => ((max as usize) + 1).min(4096),
        };
        let payload = rng.bytes(len);
        let kind = if rng.chance(7, 8) {
            random_kind(rng)
        } else {
            FrameKind::Message
        };
        let mut f = frame(kind, &payload);
        match rng.below(10) {
            0 => f[4] = rng.byte(),                                 // kind
            1 => f[5 + rng.below(3) as usize] = rng.byte(),         // flags, reserved
            2 => f[rng.below(4) as usize] = rng.byte(),             // length
            3 => f[8 + rng.below(4) as usize] ^= 1 << rng.below(8), // crc
            4 => {
                f = {
                    let n = rng.range(0, 40);
                    rng.bytes(n)
                }
            } // noise
            5 => f.truncate(rng.range(0, f.len())),                 // cut short
            _ => {}
        }
        out.extend_from_slice(&f);
    }
    out
}

/// Arbitrary bytes in arbitrary pieces never panic the decoder; it yields
/// exactly what a one-shot reference decoder of the protocol yields (the
/// frames, then the first error and nothing after it) and holds the same
/// pending bytes; it never buffers more than one maximal frame.
#[test]
fn decoder_never_panics_and_stops_at_the_first_error() {
    run(
        "decoder_never_panics_and_stops_at_the_first_error",
        3000,
        |rng, ctx| {
            let max = match rng.below(4) {
                0 => rng.below(2) as u32,
                1 => rng.below(64) as u32,
                2 => rng.below(4096) as u32,
                _ => rng.below(16 << 20) as u32,
            };
            let bytes = if rng.chance(1, 4) {
                let n = rng.range(0, 300);
                rng.bytes(n)
            } else {
                hostile_stream(rng, max)
            };
            let pieces = chunk(rng, &bytes);
            let mut d = Deframer::new(max);
            let got = deframe(&mut d, max, &pieces, ctx);
            let (want, pending) = reference_decode(&bytes, max);
            assert_eq!(got, want, "{ctx} max {max}, {} bytes", bytes.len());
            assert_eq!(d.pending_bytes(), pending, "{ctx}");
            assert!(
                d.buffer_capacity() <= (FRAME_HEADER_LEN + max as usize).max(2 * FRAME_HEADER_LEN),
                "{ctx} buffer of {} bytes for limit {max}",
                d.buffer_capacity()
            );
            // Once failed, more input (even valid frames) yields nothing.
            if d.is_failed() {
                let more = frame(FrameKind::Heartbeat, &[]);
                let mut c = d.feed(&more);
                assert!(c.next().is_none(), "{ctx} a failed decoder yielded");
            }
        },
    );
}

/// One flipped bit anywhere in a stream of frames is detected: the frames
/// before the damaged one decode as sent, and the damaged one gives an error
/// or is still incomplete: never a valid frame in its place.
#[test]
fn a_flipped_bit_is_always_detected() {
    run("a_flipped_bit_is_always_detected", 120, |rng, ctx| {
        let n = rng.range(1, 4);
        let mut frames = Vec::new();
        for _ in 0..n {
            let len = if rng.chance(1, 2) {
                rng.range(0, 40)
            } else {
                rng.range(0, 2048)
            };
            let payload = rng.bytes(len);
            frames.push((random_kind(rng), payload));
        }
        let max = frames.iter().map(|f| f.1.len()).max().unwrap() as u32 + rng.below(3000) as u32;
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for (k, p) in &frames {
            starts.push(stream.len());
            stream.extend_from_slice(&frame(*k, p));
        }
        // Every bit of a short stream, else 32 random bits.
        let bits: Vec<usize> = if stream.len() <= 64 {
            (0..stream.len() * 8).collect()
        } else {
            (0..32)
                .map(|_| rng.below(stream.len() as u64 * 8) as usize)
                .collect()
        };
        for bit in bits {
            let mut damaged = stream.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let hit = starts.iter().rposition(|&s| s <= bit / 8).unwrap();
            // Chunking is checked elsewhere: cut only some of the streams.
            let pieces = if rng.chance(1, 4) {
                chunk(rng, &damaged)
            } else {
                vec![&damaged[..]]
            };
            let mut d = Deframer::new(max);
            let got = deframe(&mut d, max, &pieces, ctx);
            assert!(
                got.len() <= hit + 1,
                "{ctx} bit {bit}: extra frames {got:?}"
            );
            for (i, g) in got.iter().enumerate().take(hit) {
                assert_eq!(
                    g,
                    &Ok(frames[i].clone()),
                    "{ctx} bit {bit}: frame {i} before the damage changed"
                );
            }
            match got.get(hit) {
                None => assert!(d.pending_bytes() > 0, "{ctx} bit {bit}: frame vanished"),
                Some(Err(_)) => {}
                Some(Ok(f)) => panic!("{ctx} bit {bit} (frame {hit}) undetected: {f:?}"),
            }
        }
    });
}
