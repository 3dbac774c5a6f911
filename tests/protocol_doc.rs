//! `docs/PROTOCOL.md` is the contract for the wire format: this test decodes
//! every byte example printed there with the crate's own code, re-encodes
//! what it decoded, and checks the code tables and defaults printed there.
//! A document that disagrees with the code, a required example that is
//! missing, or an example this test does not know how to check fails it.
// Plays peers by hand with the wire codec (raftwire::testing::wire).
#![cfg(feature = "testing")]

use raftwire::testing::wire::{
    Deframer, FRAME_HEADER_LEN, FrameKind, HELLO_LEN, Hello, HelloParse, Lane, MAGIC,
    PROTOCOL_VERSION, RESPONSE_LEN, RejectReason, Response, encode_frame, heartbeat_frame,
};
use raftwire::{Config, Envelope, Message, MessageClass};
use std::collections::BTreeMap;
use std::time::Duration;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// Examples the document must contain.
const REQUIRED: [&str; 5] = [
    "hello",
    "accept",
    "reject-wrong-cluster",
    "heartbeat",
    "message-frame",
];

/// Every example this test checks (the required ones and a few more).
const CHECKED: [&str; 10] = [
    "hello",
    "accept",
    "reject-wrong-cluster",
    "reject-unsupported-version",
    "hello-version-2-prefix",
    "not-a-hello",
    "heartbeat",
    "message-frame",
    "snapshot-end",
    "snapshot-ack-ok",
];

// ----- reading the document -----

/// Parses the hex of one example block: two-digit hex bytes separated by
/// white space, `#` starting a comment to the end of the line.
fn parse_hex(name: &str, body: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in body {
        let code = line.split('#').next().unwrap_or("");
        for token in code.split_whitespace() {
            assert!(
                token.len() == 2 && token.chars().all(|c| c.is_ascii_hexdigit()),
                "example `{name}`: `{token}` is not a two-digit hex byte"
            );
            bytes.push(u8::from_str_radix(token, 16).unwrap());
        }
    }
    assert!(!bytes.is_empty(), "example `{name}` has no bytes");
    bytes
}

/// Every ```` ```hex example=NAME ```` block of the document, by name.
fn examples() -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let is_hex = words.next() == Some("hex");
        let name = words.find_map(|w| w.strip_prefix("example="));
        let mut body = Vec::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            body.push(l);
        }
        assert!(closed, "unclosed code block starting at `{line}`");
        if !is_hex {
            continue;
        }
        let name = name.unwrap_or_else(|| panic!("hex block without example=NAME: `{line}`"));
        let bytes = parse_hex(name, &body);
        assert!(
            found.insert(name.to_string(), bytes).is_none(),
            "example `{name}` appears twice"
        );
    }
    found
}

fn example(name: &str) -> Vec<u8> {
    examples()
        .remove(name)
        .unwrap_or_else(|| panic!("example `{name}` is missing from docs/PROTOCOL.md"))
}

/// The lines of the section under the heading whose text is `title`, up to
/// the next heading (fenced blocks are skipped: their `#` are comments).
fn section(title: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut inside = false;
    let mut fenced = false;
    for line in DOC.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with('#') {
            if inside {
                break;
            }
            inside = line.trim_start_matches('#').trim() == title;
            continue;
        }
        if inside {
            out.push(line);
        }
    }
    assert!(
        !out.is_empty(),
        "section `{title}` is missing from docs/PROTOCOL.md"
    );
    out
}

/// The cells of the table rows of a section (header and rule rows included).
fn table_rows(title: &str) -> Vec<Vec<&'static str>> {
    section(title)
        .into_iter()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect()
        })
        .collect()
}

/// A code table: rows whose first cell is a number and whose second cell is
/// a `name` in backticks. Returns code → name.
fn code_table(title: &str) -> BTreeMap<u8, String> {
    let mut out = BTreeMap::new();
    for row in table_rows(title) {
        let Ok(code) = row[0].parse::<u8>() else {
            continue; // header or rule
        };
        let name = row
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("section `{title}`: row {row:?} has no `name` cell"));
        assert!(
            out.insert(code, name.to_string()).is_none(),
            "section `{title}`: code {code} listed twice"
        );
    }
    out
}

/// code → name for every byte that `name_of` knows.
fn code_names(name_of: impl Fn(u8) -> Option<String>) -> BTreeMap<u8, String> {
    (0..=u8::MAX)
        .filter_map(|b| name_of(b).map(|n| (b, n)))
        .collect()
}

/// Decodes a byte stream that must hold exactly one complete frame.
fn one_frame(bytes: &[u8], max: u32) -> (FrameKind, Vec<u8>) {
    let mut d = Deframer::new(max);
    let mut frames = Vec::new();
    let mut cursor = d.feed(bytes);
    while let Some(r) = cursor.next() {
        let f = r.unwrap_or_else(|e| panic!("frame does not decode: {e}"));
        frames.push((f.kind, f.payload.to_vec()));
    }
    assert_eq!(d.pending_bytes(), 0, "bytes left after the frame");
    assert_eq!(frames.len(), 1, "expected exactly one frame");
    frames.pop().unwrap()
}

// ----- the examples -----

#[test]
fn required_examples_are_present() {
    let found = examples();
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|n| !found.contains_key(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from docs/PROTOCOL.md: {missing:?}"
    );
}

#[test]
fn every_example_is_checked() {
    let unchecked: Vec<_> = examples()
        .into_keys()
        .filter(|n| !CHECKED.contains(&n.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "examples that this test does not check (add a check): {unchecked:?}"
    );
}

#[test]
fn hello_example() {
    let bytes = example("hello");
    assert_eq!(bytes.len(), HELLO_LEN);
    assert_eq!(bytes[0..4], MAGIC);
    let expected = Hello {
        version: PROTOCOL_VERSION,
        lane: Lane::Append as u8,
        flags: 0,
        cluster_id: 0x0000_0000_0000_00C1,
        from: 1,
        to: 2,
    };
    assert_eq!(Hello::decode(&bytes), Some(Ok(HelloParse::Hello(expected))));
    assert_eq!(Hello::new(Lane::Append, 0xC1, 1, 2).encode()[..], bytes[..]);
    // All 32 bytes are needed.
    for n in 0..HELLO_LEN {
        assert_eq!(Hello::decode(&bytes[..n]), None, "prefix of {n} bytes");
    }
    // Node 2 of cluster 0xC1 accepts it on the append lane.
    assert_eq!(expected.check(0xC1, 2, |_| false), Ok(Lane::Append));
    assert_eq!(
        expected.check(0xC2, 2, |_| false),
        Err(RejectReason::WrongCluster)
    );
}

#[test]
fn hello_version_2_prefix_example() {
    let bytes = example("hello-version-2-prefix");
    assert_eq!(bytes.len(), 6, "the version is known after six bytes");
    assert_eq!(bytes[0..4], MAGIC);
    for n in 0..bytes.len() {
        assert_eq!(Hello::decode(&bytes[..n]), None, "prefix of {n} bytes");
    }
    assert_eq!(Hello::decode(&bytes), Some(Ok(HelloParse::Unsupported(2))));
}

#[test]
fn not_a_hello_example() {
    let bytes = example("not-a-hello");
    // Bad magic is known from the first differing byte on.
    for n in 1..=bytes.len() {
        assert!(
            matches!(Hello::decode(&bytes[..n]), Some(Err(_))),
            "prefix of {n} bytes is not reported as bad magic"
        );
    }
}

fn check_response(name: &str, expected: Response) {
    let bytes = example(name);
    assert_eq!(bytes.len(), RESPONSE_LEN, "example `{name}`");
    assert_eq!(bytes[0..4], MAGIC, "example `{name}`");
    assert_eq!(
        u16::from_be_bytes([bytes[4], bytes[5]]),
        PROTOCOL_VERSION,
        "example `{name}`"
    );
    assert_eq!(
        Response::decode(&bytes),
        Some(Ok(expected)),
        "example `{name}`"
    );
    assert_eq!(expected.encode()[..], bytes[..], "example `{name}`");
    for n in 0..RESPONSE_LEN {
        assert_eq!(
            Response::decode(&bytes[..n]),
            None,
            "example `{name}`, prefix {n}"
        );
    }
}

#[test]
fn accept_example() {
    check_response("accept", Response::Accept);
}

#[test]
fn reject_wrong_cluster_example() {
    check_response(
        "reject-wrong-cluster",
        Response::Reject(RejectReason::WrongCluster),
    );
}

#[test]
fn reject_unsupported_version_example() {
    check_response(
        "reject-unsupported-version",
        Response::Reject(RejectReason::UnsupportedVersion),
    );
}

#[test]
fn heartbeat_example() {
    let bytes = example("heartbeat");
    assert_eq!(bytes.len(), FRAME_HEADER_LEN);
    assert_eq!(bytes[..], heartbeat_frame()[..]);
    // A dialer decodes the acceptor's frames with a payload limit of 0.
    assert_eq!(one_frame(&bytes, 0), (FrameKind::Heartbeat, Vec::new()));
}

#[test]
fn snapshot_end_example() {
    let bytes = example("snapshot-end");
    let (kind, payload) = one_frame(&bytes, 1 << 20);
    assert_eq!(kind, FrameKind::SnapshotEnd);
    let end = raftwire::testing::wire::SnapshotEnd::decode(&payload).unwrap();
    assert_eq!(end.size, 5);
    assert_eq!(end.crc, crc32c::crc32c(b"hello"));
    let mut again = Vec::new();
    encode_frame(&mut again, FrameKind::SnapshotEnd, 1 << 20, |b| {
        b.extend_from_slice(&end.encode())
    })
    .unwrap();
    assert_eq!(again, bytes);
}

#[test]
fn snapshot_ack_ok_example() {
    let bytes = example("snapshot-ack-ok");
    // A snapshot dialer decodes the acceptor's frames with a limit of 1.
    let (kind, payload) = one_frame(&bytes, 1);
    assert_eq!(kind, FrameKind::SnapshotAck);
    let status = raftwire::testing::wire::AckStatus::decode(&payload);
    assert_eq!(status, Ok(raftwire::testing::wire::AckStatus::Ok));
    let mut again = Vec::new();
    encode_frame(&mut again, FrameKind::SnapshotAck, 1, |b| {
        b.extend_from_slice(&status.unwrap().encode())
    })
    .unwrap();
    assert_eq!(again, bytes);
}

#[test]
fn snapshot_ack_table_matches_code() {
    let code = code_names(|b| {
        raftwire::testing::wire::AckStatus::from_u8(b).map(|s| s.name().to_string())
    });
    assert_eq!(code_table("Snapshot ack statuses"), code);
}

#[test]
fn message_frame_example() {
    let bytes = example("message-frame");
    let max = Config::new(2, "127.0.0.1:0".parse().unwrap()).max_frame_len;
    let (kind, payload) = one_frame(&bytes, max);
    assert_eq!(kind, FrameKind::Message);
    assert_eq!(payload.len(), bytes.len() - FRAME_HEADER_LEN);
    let envelope = <Envelope as Message>::decode(bytes::Bytes::copy_from_slice(&payload))
        .expect("envelope decodes");
    let expected = Envelope::new(2, 1, MessageClass::Other, b"hi".to_vec());
    assert_eq!(envelope, expected);

    let mut encoded = Vec::new();
    encode_frame(&mut encoded, FrameKind::Message, max, |b| {
        expected.encode(b)
    })
    .expect("within the limit");
    assert_eq!(encoded, bytes);

    // The limit is on the payload length: equal passes, one less fails.
    let len = payload.len() as u32;
    assert_eq!(one_frame(&bytes, len).0, FrameKind::Message);
    let mut d = Deframer::new(len - 1);
    let mut cursor = d.feed(&bytes);
    assert!(
        matches!(cursor.next(), Some(Err(_))),
        "oversize frame accepted"
    );
}

// ----- the tables -----

#[test]
fn lane_table_matches_code() {
    let code = code_names(|b| Lane::from_u8(b).map(|l| l.name().to_string()));
    assert_eq!(code_table("Lanes"), code);
}

#[test]
fn reject_reason_table_matches_code() {
    let code = code_names(|b| RejectReason::from_u8(b).map(|r| r.name().to_string()));
    assert_eq!(code_table("Reject reasons"), code);
}

#[test]
fn frame_kind_table_matches_code() {
    let code = code_names(|b| FrameKind::from_u8(b).map(|k| k.name().to_string()));
    assert_eq!(code_table("Frame kinds"), code);
}

#[test]
fn message_class_table_matches_code() {
    let code = code_names(|b| MessageClass::from_u8(b).map(|c| format!("{c:?}").to_lowercase()));
    assert_eq!(code_table("Message classes"), code);
    // And each class byte round-trips.
    for b in code.keys() {
        assert_eq!(MessageClass::from_u8(*b).map(MessageClass::to_u8), Some(*b));
    }
}

fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[test]
fn defaults_table_matches_config() {
    let c = Config::new(1, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.max_frame_len % (1 << 20), 0);
    let expected: BTreeMap<&str, String> = [
        (
            "max_frame_len",
            format!("{} MiB ({} bytes)", c.max_frame_len >> 20, c.max_frame_len),
        ),
        ("heartbeat_interval", duration(c.heartbeat_interval)),
        ("read_timeout", duration(c.read_timeout)),
        ("handshake_timeout", duration(c.handshake_timeout)),
        ("dial_timeout", duration(c.dial_timeout)),
        ("backoff_floor", duration(c.backoff_floor)),
        ("backoff_cap", duration(c.backoff_cap)),
    ]
    .into_iter()
    .collect();
    let mut documented = BTreeMap::new();
    for row in table_rows("9. Link heartbeats and timeouts") {
        let Some(field) = row[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue; // header or rule
        };
        documented.insert(field, row.get(1).copied().unwrap_or("").to_string());
    }
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "settings in the defaults table"
    );
    for (field, value) in &expected {
        assert_eq!(&documented[field], value, "default of `{field}`");
    }
}
