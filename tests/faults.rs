//! Faults over real sockets on 127.0.0.1: hand-made clients and servers
//! that break the protocol, handshake rejections seen from both sides,
//! peers that die and come back, and connections that go silent.
//!
//! Every test asserts what arrived, what was reported and what was counted,
//! and that a legitimate peer exchanging traffic with the victim the whole
//! time lost nothing.
// Plays peers by hand with the wire codec (raftwire::testing::wire).
#![cfg(feature = "testing")]

mod common;
use common::*;

use crossbeam_channel::Receiver;
use raftwire::testing::wire::{
    Checksums, FrameKind, HELLO_LEN, Hello, Lane, RESPONSE_LEN, Response, encode_frame,
    heartbeat_frame,
};
use raftwire::{Envelope, Message, MessageClass, RejectReason, ReportEvent, Transport};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The cluster id `common::config` sets.
const CLUSTER: u64 = 7;
/// The victim of the bad-input tests.
const VICTIM: u64 = 1;
/// A peer of the victim whose id the hand-made clients claim.
const CLAIMED: u64 = 2;
/// The legitimate peer that talks to the victim throughout.
const GOOD: u64 = 3;

// ----- raw sockets -----

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// How a read loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    Eof,
    Reset,
}

/// Reads (and keeps) everything until the other side closes the
/// connection; panics if it is still open after `within`. Returns the bytes,
/// how it ended, and how long it took.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Closed, Duration) {
    let start = Instant::now();
    let deadline = start + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {within:?} ({} bytes read)",
            got.len()
        );
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Closed::Eof, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, Closed::Reset, start.elapsed());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Asserts that `bytes` are nothing but whole link heartbeat frames.
fn assert_only_heartbeats(bytes: &[u8]) {
    let hb = heartbeat_frame();
    assert_eq!(
        bytes.len() % hb.len(),
        0,
        "not whole heartbeat frames: {bytes:?}"
    );
    for f in bytes.chunks(hb.len()) {
        assert_eq!(f, hb, "expected only heartbeats, got {bytes:?}");
    }
}

/// Connects to `addr`, sends a valid hello and expects Accept.
fn handshake(addr: SocketAddr, from: u64, to: u64, lane: Lane) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&Hello::new(lane, CLUSTER, from, to).encode())
        .unwrap();
    let mut resp = [0u8; RESPONSE_LEN];
    s.read_exact(&mut resp).expect("handshake response");
    assert_eq!(Response::decode(&resp), Some(Ok(Response::Accept)));
    s
}

// ----- frames -----

fn message_frame(m: &Envelope) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame(&mut b, FrameKind::Message, u32::MAX, |out| m.encode(out)).unwrap();
    b
}

/// A frame with any header bytes, with a correct checksum.
fn raw_frame(len: u32, kind: u8, flags: u8, reserved: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + payload.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.push(kind);
    b.push(flags);
    b.extend_from_slice(&reserved);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..8]), payload);
    b.extend_from_slice(&crc.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn numbered(to: u64, from: u64, seq: u64) -> Envelope {
    env(to, from, MessageClass::Other, &seq.to_be_bytes())
}

fn seq_of(m: &Envelope) -> u64 {
    u64::from_be_bytes(m.payload[..].try_into().expect("an 8-byte sequence number"))
}

// ----- legitimate traffic -----

/// Sends numbered messages `first..` from `t` to `to`, one a millisecond,
/// until `stop`; returns the first number not sent. Every message must be
/// queued (a refusal fails the test when the thread is joined).
fn pump(t: &Transport<Envelope>, to: u64, first: u64, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let t = t.clone();
    thread::spawn(move || {
        let me = t.node_id();
        let mut seq = first;
        while !stop.load(Ordering::Relaxed) {
            t.try_send(numbered(to, me, seq))
                .unwrap_or_else(|e| panic!("message {seq} to {to} not queued: {e}"));
            seq += 1;
            // Pacing, not synchronisation.
            thread::sleep(Duration::from_millis(1));
        }
        seq
    })
}

/// Receives until every numbered message of `want` from `from` has
/// arrived, checks they came exactly and in order, and returns whatever
/// else was received (from other senders) meanwhile and right after.
fn expect_numbered(
    rx: &Receiver<Envelope>,
    from: u64,
    want: Range<u64>,
    secs: u64,
) -> Vec<Envelope> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut others = Vec::new();
    while (got.len() as u64) < want.end - want.start {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if m.from == from => got.push(seq_of(&m)),
            Ok(m) => others.push(m),
            Err(_) => panic!(
                "received {} of the {} messages {want:?} from {from}",
                got.len(),
                want.end - want.start
            ),
        }
    }
    assert_eq!(
        got,
        want.collect::<Vec<_>>(),
        "messages from {from} lost or reordered"
    );
    others.extend(rx.try_iter());
    others
}

/// The victim (node 1), a legitimate peer (node 3) connected both ways,
/// and a real node 2 that the victim knows as a peer (and dials), whose id
/// the hand-made clients claim. Node 2 does not know the victim, so it never
/// dials it: the only inbound connections "from 2" are the hand-made ones.
struct Bench {
    victim: Node,
    good: Node,
    _two: Node,
    stop: Arc<AtomicBool>,
    pumps: Vec<JoinHandle<u64>>,
    /// Next sequence number per direction: [victim -> good, good -> victim].
    next: [u64; 2],
}

const PHASE: u64 = 20;

impl Bench {
    fn new() -> Bench {
        let mut nodes = cluster(&[VICTIM, GOOD]);
        let good = nodes.pop().unwrap();
        let victim = nodes.pop().unwrap();
        let two = node(CLAIMED);
        victim.t.add_peer(CLAIMED, &[two.t.local_addr()]).unwrap();
        wait_connected(&victim.t, CLAIMED);
        let mut b = Bench {
            victim,
            good,
            _two: two,
            stop: Arc::new(AtomicBool::new(false)),
            pumps: Vec::new(),
            next: [0, 0],
        };
        // Before: both directions work.
        b.burst();
        let others = expect_numbered(b.victim.t.messages(), GOOD, 0..PHASE, 5);
        assert!(others.is_empty(), "unexpected messages: {others:?}");
        let others = expect_numbered(b.good.t.messages(), VICTIM, 0..PHASE, 5);
        assert!(others.is_empty(), "unexpected messages: {others:?}");
        b
    }

    /// Sends `PHASE` numbered messages each way.
    fn burst(&mut self) {
        let [a, b] = self.next;
        self.victim
            .t
            .send((a..a + PHASE).map(|s| numbered(GOOD, VICTIM, s)));
        self.good
            .t
            .send((b..b + PHASE).map(|s| numbered(VICTIM, GOOD, s)));
        self.next = [a + PHASE, b + PHASE];
    }

    /// Starts continuous traffic both ways.
    fn start_pumps(&mut self) {
        self.pumps = vec![
            pump(&self.victim.t, GOOD, self.next[0], self.stop.clone()),
            pump(&self.good.t, VICTIM, self.next[1], self.stop.clone()),
        ];
    }

    /// Stops the traffic, sends one more burst each way, and checks that
    /// every message sent since the first burst arrived, in order. Returns
    /// what the victim received from anyone else.
    fn finish(mut self) -> Vec<Envelope> {
        self.stop.store(true, Ordering::Relaxed);
        let ends: Vec<u64> = self.pumps.drain(..).map(|h| h.join().unwrap()).collect();
        assert!(
            ends[0] > self.next[0] + 10 && ends[1] > self.next[1] + 10,
            "the traffic pumps hardly ran ({ends:?} from {:?})",
            self.next
        );
        self.next = [ends[0], ends[1]];
        self.burst();
        let [to_good, to_victim] = self.next;
        let others = expect_numbered(self.victim.t.messages(), GOOD, PHASE..to_victim, 5);
        let from_victim = expect_numbered(self.good.t.messages(), VICTIM, PHASE..to_good, 5);
        assert!(
            from_victim.is_empty(),
            "unexpected at node 3: {from_victim:?}"
        );
        // The legitimate connections never broke.
        let v = self.victim.t.stats().peer(GOOD);
        let g = self.good.t.stats().peer(VICTIM);
        assert_unbroken("victim -> 3", &v);
        assert_unbroken("3 -> victim", &g);
        assert_eq!(v.message_lane.msgs_received, to_victim);
        assert_eq!(g.message_lane.msgs_received, to_good);
        others
    }
}

// ----- 1. bad input from a hand-made client -----

struct BadInput {
    /// Send a valid hello claiming node 2 (and expect Accept) first.
    hello: bool,
    /// Then one valid message from 2, which must be delivered.
    valid_first: bool,
    /// Then these bytes.
    bytes: Vec<u8>,
    /// Then close our sending side (a truncated stream).
    half_close: bool,
    /// Text the victim's `peer(2).last_error` must contain (hello cases).
    error_text: &'static str,
}

impl BadInput {
    /// The usual case: a valid hello as node 2 and one valid message from
    /// it, then `bytes`, which must close the connection and leave
    /// `error_text` in the victim's `peer(2).last_error`.
    fn after_a_valid_message(bytes: Vec<u8>, error_text: &'static str) -> BadInput {
        BadInput {
            hello: true,
            valid_first: true,
            bytes,
            half_close: false,
            error_text,
        }
    }
}

fn legit_from_claimed() -> Envelope {
    env(
        VICTIM,
        CLAIMED,
        MessageClass::Other,
        b"legit message from 2",
    )
}

/// A frame carrying `legit_from_claimed()` with a correct checksum, whose
/// header fields (kind, flags, reserved bytes) are given: only the header
/// can be wrong.
fn legit_frame_with_header(kind: u8, flags: u8, reserved: [u8; 2]) -> Vec<u8> {
    let mut payload = Vec::new();
    legit_from_claimed().encode(&mut payload);
    raw_frame(payload.len() as u32, kind, flags, reserved, &payload)
}

fn bad_input(case: BadInput) {
    let mut bench = Bench::new();
    let addr = bench.victim.t.local_addr();
    let before = bench.victim.t.stats();
    assert_eq!(before.peer(CLAIMED).last_error, None);
    bench.start_pumps();

    let mut s = if case.hello {
        handshake(addr, CLAIMED, VICTIM, Lane::Message)
    } else {
        connect(addr)
    };
    if case.valid_first {
        s.write_all(&message_frame(&legit_from_claimed())).unwrap();
    }
    s.write_all(&case.bytes).unwrap();
    if case.half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let (rest, how, took) = read_until_closed(&mut s, Duration::from_secs(2));
    println!("closed by the transport ({how:?}) after {took:?}");
    if case.hello {
        // After the Accept: link heartbeats at most, never anything else.
        assert_only_heartbeats(&rest);
    } else {
        assert!(rest.is_empty(), "a non-hello got an answer: {rest:?}");
    }

    let t = &bench.victim.t;
    wait_until("the protocol error to be counted", 2, || {
        t.stats().protocol_errors > before.protocol_errors
    });
    // Let the pumps run on a little after the violation, then check again
    // that it was counted once.
    wait_until("more legitimate traffic", 2, || {
        t.stats().peer(GOOD).message_lane.msgs_received
            >= before.peer(GOOD).message_lane.msgs_received + 50
    });
    let st = t.stats();
    assert_eq!(st.protocol_errors, before.protocol_errors + 1, "{st:?}");
    let p = st.peer(CLAIMED);
    if case.hello {
        assert_eq!(st.inbound_accepted, before.inbound_accepted + 1);
        assert_eq!(p.protocol_errors, 1, "{p:?}");
        let e = p.last_error.clone().expect("last_error set");
        assert!(
            e.contains(case.error_text),
            "last_error {e:?} does not mention {:?}",
            case.error_text
        );
    } else {
        assert_eq!(st.inbound_accepted, before.inbound_accepted);
        assert_eq!(p.protocol_errors, 0, "{p:?}");
        assert_eq!(p.last_error, None);
        assert_eq!(st.non_peers.protocol_errors, 0);
    }
    assert_eq!(st.peer(GOOD).protocol_errors, 0);
    let delivered_from_2 = p.message_lane.msgs_received;
    assert_eq!(delivered_from_2, u64::from(case.valid_first), "{p:?}");

    let others = bench.finish();
    if case.valid_first {
        assert_eq!(others, vec![legit_from_claimed()]);
    } else {
        assert!(
            others.is_empty(),
            "delivered from the bad client: {others:?}"
        );
    }
}

#[test]
fn garbage_instead_of_hello_is_closed_and_counted() {
    bad_input(BadInput {
        hello: false,
        valid_first: false,
        bytes: b"GET / HTTP/1.1\r\nHost: raft\r\n\r\n".to_vec(),
        half_close: false,
        error_text: "",
    });
}

#[test]
fn oversize_frame_length_is_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        raw_frame(u32::MAX, FrameKind::Message as u8, 0, [0, 0], &[]),
        "exceeds the limit",
    ));
}

#[test]
fn bad_checksum_is_closed_and_counted() {
    let mut f = message_frame(&env(
        VICTIM,
        CLAIMED,
        MessageClass::Other,
        b"damaged in transit",
    ));
    let last = f.len() - 1;
    f[last] ^= 0x40;
    bad_input(BadInput::after_a_valid_message(f, "checksum"));
}

#[test]
fn unknown_frame_kind_is_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        legit_frame_with_header(9, 0, [0, 0]),
        "unknown frame kind 9",
    ));
}

#[test]
fn nonzero_reserved_bytes_are_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        legit_frame_with_header(FrameKind::Message as u8, 0, [0, 1]),
        "reserved",
    ));
}

#[test]
fn nonzero_frame_flags_are_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        legit_frame_with_header(FrameKind::Message as u8, 0x80, [0, 0]),
        "reserved",
    ));
}

#[test]
fn truncated_frame_then_eof_is_counted() {
    let f = message_frame(&env(
        VICTIM,
        CLAIMED,
        MessageClass::Other,
        b"cut short by EOF",
    ));
    bad_input(BadInput {
        half_close: true,
        ..BadInput::after_a_valid_message(f[..20].to_vec(), "ended inside a frame")
    });
}

/// A message frame larger than a read (`read_chunk_len`), which the loop
/// reads whole into a buffer of its own.
fn large_frame() -> Vec<u8> {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 31) as u8).collect();
    message_frame(&Envelope::new(
        VICTIM,
        CLAIMED,
        MessageClass::Other,
        payload,
    ))
}

#[test]
fn large_frame_with_bad_checksum_is_closed_and_counted() {
    let mut f = large_frame();
    f[150_000] ^= 0x01;
    bad_input(BadInput::after_a_valid_message(f, "checksum"));
}

#[test]
fn large_frame_cut_short_then_eof_is_counted() {
    let f = large_frame();
    bad_input(BadInput {
        half_close: true,
        ..BadInput::after_a_valid_message(f[..200_000].to_vec(), "ended inside a frame")
    });
}

#[test]
fn frame_header_cut_short_then_eof_is_counted() {
    // Fewer bytes than a frame header: the loop keeps them for the next
    // read, and must still hand them to the reader at the end.
    let f = large_frame();
    bad_input(BadInput {
        half_close: true,
        ..BadInput::after_a_valid_message(f[..5].to_vec(), "ended inside a frame")
    });
}

#[test]
fn undecodable_envelope_is_closed_and_counted() {
    // A valid frame whose payload is shorter than the 17-byte envelope header.
    bad_input(BadInput::after_a_valid_message(
        raw_frame(5, FrameKind::Message as u8, 0, [0, 0], b"short"),
        "decode",
    ));
}

#[test]
fn message_from_another_sender_is_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        message_frame(&env(VICTIM, 4, MessageClass::Other, b"spoofed sender")),
        "claims sender 4",
    ));
}

#[test]
fn message_to_another_receiver_is_closed_and_counted() {
    bad_input(BadInput::after_a_valid_message(
        message_frame(&env(5, CLAIMED, MessageClass::Other, b"misrouted")),
        "addressed to 5",
    ));
}

// ----- 2. handshake rejections, both sides -----

/// The dialer's view of a rejection: the report event, the counters, the
/// last error, a bounded redial rate, and nothing delivered.
fn assert_rejected_with_backoff(acceptor: &Node, dialer: &Node, target: u64, reason: RejectReason) {
    let d = &dialer.t;
    let ev = wait_event(&dialer.events, 3, |e| {
        matches!(e, ReportEvent::Rejected(..))
    });
    assert_eq!(ev, ReportEvent::Rejected(target, reason));
    wait_until("both lanes rejected", 3, || {
        d.stats().peer(target).rejected_by_peer >= 2 && acceptor.t.stats().inbound_rejected >= 2
    });
    let p = d.stats().peer(target);
    let e = p.last_error.clone().expect("last_error set");
    assert!(
        e.contains(&reason.to_string()),
        "last_error {e:?} does not name {reason:?} ({reason})"
    );
    assert_eq!(d.active_since(target), None);

    // Over one second (a measurement window, not a wait for an event),
    // the dialer keeps retrying but backs off: with a 10 ms floor and a
    // 100 ms cap that is about a dozen attempts per lane, not thousands.
    let r0 = p.rejected_by_peer;
    let a0 = acceptor.t.stats().inbound_rejected;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        d.send([numbered(target, d.node_id(), sent)]);
        sent += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let window = start.elapsed();
    let r = d.stats().peer(target).rejected_by_peer - r0;
    let a = acceptor.t.stats().inbound_rejected - a0;
    println!(
        "{reason:?}: {r} rejections seen by the dialer, {a} counted by the acceptor in {window:?}"
    );
    assert!(
        r >= 2,
        "the dialer stopped retrying ({r} rejections in {window:?})"
    );
    assert!(
        r < 50,
        "the dialer spins: {r} rejections over two lanes in {window:?}"
    );
    assert!(
        a < 50,
        "the acceptor saw {a} rejected handshakes in {window:?}"
    );

    // Nothing got through.
    assert!(acceptor.t.messages().is_empty() && acceptor.t.proposals().is_empty());
    let st = acceptor.t.stats();
    let received: u64 = st
        .peers
        .values()
        .chain([&st.non_peers])
        .map(|p| p.message_lane.msgs_received + p.append_lane.msgs_received)
        .sum();
    assert_eq!(received, 0, "{st:?}");
    let p = d.stats().peer(target);
    assert_eq!(
        p.message_lane.msgs_sent + p.append_lane.msgs_sent,
        0,
        "{p:?}"
    );
    // The rejection event is sent once per lane and reason, not per attempt.
    let more = dialer
        .events
        .try_iter()
        .filter(|e| matches!(e, ReportEvent::Rejected(..)))
        .count();
    assert!(more <= 1, "{more} more rejection events");
}

#[test]
fn wrong_cluster_is_rejected_on_both_sides() {
    let acceptor = node(1);
    let mut c = config(2);
    c.cluster_id = CLUSTER + 1;
    let dialer = start(c);
    dialer.t.add_peer(1, &[acceptor.t.local_addr()]).unwrap();
    assert_rejected_with_backoff(&acceptor, &dialer, 1, RejectReason::WrongCluster);
    let st = acceptor.t.stats();
    // Node 2 is not the acceptor's peer: counted with the non-peers.
    assert!(st.non_peers.rejected_inbound >= 2, "{st:?}");
    assert_eq!(st.non_peers.rejected_inbound, st.inbound_rejected);
    assert_eq!(st.inbound_accepted, 0);
    assert_eq!(st.protocol_errors, 0);
}

#[test]
fn wrong_receiver_is_rejected_on_both_sides() {
    // The dialer (node 2) believes node 5 lives at node 1's address.
    let acceptor = node(1);
    let dialer = node(2);
    acceptor.t.add_peer(2, &[dialer.t.local_addr()]).unwrap();
    dialer.t.add_peer(5, &[acceptor.t.local_addr()]).unwrap();
    assert_rejected_with_backoff(&acceptor, &dialer, 5, RejectReason::WrongReceiver);
    let st = acceptor.t.stats();
    // Node 2 is the acceptor's peer: counted against it.
    let p = st.peer(2);
    assert!(p.rejected_inbound >= 2, "{p:?}");
    assert_eq!(p.rejected_inbound, st.inbound_rejected);
    assert_eq!(st.inbound_accepted, 0);
    // The acceptor's own connection to node 2 is fine.
    assert!(acceptor.t.active_since(2).is_some());
    assert_eq!(dialer.t.stats().peer(5).reconnects, 0);
}

#[test]
fn removed_member_is_rejected_on_both_sides() {
    let acceptor = node(1);
    acceptor.reporter.mark_removed(2);
    let dialer = node(2);
    dialer.t.add_peer(1, &[acceptor.t.local_addr()]).unwrap();
    assert_rejected_with_backoff(&acceptor, &dialer, 1, RejectReason::RemovedMember);
    let st = acceptor.t.stats();
    assert!(st.non_peers.rejected_inbound >= 2, "{st:?}");
    assert_eq!(st.non_peers.rejected_inbound, st.inbound_rejected);
    assert_eq!(st.inbound_accepted, 0);
    assert!(dialer.t.active_peers().is_empty());
}

#[test]
fn a_plaintext_node_refuses_header_only_checksums() {
    // Unchecked payloads are for TLS connections only: over plaintext the
    // hello flag is refused, so nothing goes unverified.
    let acceptor = node(1);
    let hello = Hello::new(Lane::Message, CLUSTER, 2, 1).with_checksums(Checksums::HeaderOnly);
    let bytes = hello.encode();
    assert_eq!(bytes[7], 1, "flag bit 0");
    let mut s = connect(acceptor.t.local_addr());
    s.write_all(&bytes).unwrap();
    let (got, _, _) = read_until_closed(&mut s, Duration::from_secs(2));
    assert_eq!(
        Response::decode(&got),
        Some(Ok(Response::Reject(RejectReason::BadFlags)))
    );
    let t = &acceptor.t;
    wait_until("the rejection to be counted", 2, || {
        t.stats().inbound_rejected == 1
    });
    assert_eq!(t.stats().inbound_accepted, 0);
    assert_eq!(t.stats().tls.header_only_checksums, 0);
}

#[test]
fn unsupported_version_is_answered_and_closed() {
    let acceptor = node(1);
    let mut hello = Hello::new(Lane::Message, CLUSTER, 2, 1);
    hello.version = 2;
    let bytes = hello.encode();
    assert_eq!(bytes.len(), HELLO_LEN);
    let mut s = connect(acceptor.t.local_addr());
    s.write_all(&bytes).unwrap();
    let (got, how, took) = read_until_closed(&mut s, Duration::from_secs(2));
    println!("rejected and closed ({how:?}) after {took:?}");
    assert_eq!(got.len(), RESPONSE_LEN, "{got:?}");
    assert_eq!(&got[..4], b"RFTW");
    assert_eq!(
        u16::from_be_bytes([got[4], got[5]]),
        1,
        "the acceptor's version"
    );
    assert_eq!(got[6], 1, "status reject");
    assert_eq!(got[7], RejectReason::UnsupportedVersion as u8);
    assert_eq!(got[7], 1);
    assert_eq!(
        Response::decode(&got),
        Some(Ok(Response::Reject(RejectReason::UnsupportedVersion)))
    );
    let t = &acceptor.t;
    wait_until("the rejection to be counted", 2, || {
        t.stats().inbound_rejected == 1
    });
    let st = t.stats();
    assert_eq!(st.non_peers.rejected_inbound, 1);
    assert_eq!(st.inbound_accepted, 0);
    assert_eq!(st.protocol_errors, 0);
    assert_eq!(st.handshake_timeouts, 0);
}

// ----- 3. a peer that goes down and comes back on the same address -----

#[test]
fn restarted_peer_is_redialed_without_help() {
    let mut nodes = cluster(&[1, 2]);
    let old = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let addr = old.t.local_addr();

    n1.t.send([numbered(2, 1, 0)]);
    let got = recv_n(old.t.messages(), 1, 3);
    assert_eq!(seq_of(&got[0]), 0);
    assert_eq!(n1.t.stats().peer(2).reconnects, 0);

    old.t.stop();
    drop(old);
    wait_event(&n1.events, 3, |e| *e == ReportEvent::Unreachable(2));
    wait_until("node 1 to see node 2 down", 3, || {
        n1.t.active_since(2).is_none()
    });

    let mut c = config(2);
    c.listen_addr = addr;
    let restarted_at = Instant::now();
    let new = start(c);
    assert_eq!(new.t.local_addr(), addr);

    // Send in a loop until one arrives; nothing is called on node 1 but send.
    let mut seq = 1;
    let first = loop {
        assert!(
            restarted_at.elapsed() < Duration::from_secs(2),
            "no message reached the restarted node within 2 s"
        );
        n1.t.send([numbered(2, 1, seq)]);
        seq += 1;
        if let Ok(m) = new.t.messages().recv_timeout(Duration::from_millis(5)) {
            break m;
        }
    };
    let took = restarted_at.elapsed();
    println!("delivery resumed {took:?} after the restart");
    assert_eq!(first.from, 1);
    assert!(seq_of(&first) >= 1 && seq_of(&first) < seq);
    // Everything sent from then on arrives, in order.
    let from = seq_of(&first) + 1;
    let mut rest = Vec::new();
    while let Ok(m) = new.t.messages().recv_timeout(Duration::from_millis(200)) {
        rest.push(seq_of(&m));
        if rest.len() as u64 == seq - from {
            break;
        }
    }
    assert_eq!(rest, (from..seq).collect::<Vec<_>>());
    wait_until("reconnects to be counted", 2, || {
        n1.t.stats().peer(2).reconnects >= 1
    });
    assert!(n1.t.active_since(2).is_some());
}

// ----- 4. silence past the read timeout -----

/// A server that answers every hello with Accept and then neither reads
/// nor writes. Each connection is handed over with its hello and the time
/// the Accept was written.
struct SilentServer {
    addr: SocketAddr,
    conns: Receiver<(Hello, Instant, TcpStream)>,
    /// Connections of other lanes, kept open (and silent).
    held: Vec<TcpStream>,
    _server: TestServer,
}

impl SilentServer {
    fn start() -> SilentServer {
        let (tx, conns) = crossbeam_channel::unbounded();
        let server = TestServer::start(move |mut s, _| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; HELLO_LEN];
            if s.read_exact(&mut b).is_ok() {
                let hello = match Hello::decode(&b) {
                    Some(Ok(raftwire::testing::wire::HelloParse::Hello(h))) => h,
                    other => panic!("not a hello: {other:?}"),
                };
                s.write_all(&Response::Accept.encode()).unwrap();
                let _ = tx.send((hello, Instant::now(), s));
            }
            None
        });
        SilentServer {
            addr: server.addr,
            conns,
            held: Vec::new(),
            _server: server,
        }
    }

    /// The next connection on `lane`, within `secs`; connections of the
    /// other lane are kept open meanwhile.
    fn next_on(&mut self, lane: Lane, secs: u64) -> (Hello, Instant, TcpStream) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let c = self
                .conns
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {lane} lane connection within {secs}s"));
            if c.0.lane == lane as u8 {
                return c;
            }
            self.held.push(c.2);
        }
    }
}

/// Most a silent connection may outlive `read_timeout` (500 ms in
/// `common::config`): the loop checks liveness at each connection's own
/// deadline, so only scheduling slack should be added.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(300);
const READ_TIMEOUT: Duration = Duration::from_millis(500);

#[test]
fn silent_server_is_dropped_after_read_timeout_and_redialed() {
    let mut server = SilentServer::start();
    let n1 = node(1);
    n1.t.add_peer(9, &[server.addr]).unwrap();
    let (hello, accepted_at, mut first) = server.next_on(Lane::Message, 3);
    assert_eq!(
        (hello.cluster_id, hello.from, hello.to),
        (CLUSTER, 1, 9),
        "{hello:?}"
    );
    wait_until("node 1 to see the lane up", 2, || {
        n1.t.active_since(9).is_some()
    });
    wait_until("node 1 to drop the silent connection", 3, || {
        n1.t.active_since(9).is_none()
    });
    let took = accepted_at.elapsed();
    println!("silent connection dropped {took:?} after the Accept (read_timeout {READ_TIMEOUT:?})");
    let e = n1.t.stats().peer(9).last_error.expect("last_error set");
    assert!(e.contains("read_timeout"), "{e:?}");
    wait_event(&n1.events, 2, |e| *e == ReportEvent::Unreachable(9));

    // The socket really was closed: EOF after whatever node 1 sent.
    let (bytes, how, _) = read_until_closed(&mut first, Duration::from_secs(2));
    assert_eq!(how, Closed::Eof);
    assert_only_heartbeats(&bytes);

    // And node 1 redials on its own.
    let (again, _, _second) = server.next_on(Lane::Message, 2);
    assert_eq!((again.from, again.to), (1, 9));
    wait_until("the redial to count as a reconnect", 2, || {
        n1.t.stats().peer(9).reconnects >= 1
    });

    // Timing last, so that everything above is checked even if it is off.
    assert_closed_at_read_timeout(took, &bytes);
}

#[test]
fn silent_client_is_closed_after_read_timeout() {
    let n1 = node(1);
    let mut s = handshake(n1.t.local_addr(), 2, 1, Lane::Append);
    let (bytes, how, took) = read_until_closed(&mut s, Duration::from_secs(3));
    println!("silent client closed ({how:?}) {took:?} after the Accept");
    assert_eq!(how, Closed::Eof);
    assert_only_heartbeats(&bytes);
    let st = n1.t.stats();
    assert_eq!(st.inbound_accepted, 1);
    assert_eq!(st.protocol_errors, 0);
    assert_eq!(st.handshake_timeouts, 0);
    assert_closed_at_read_timeout(took, &bytes);
}

/// A silent connection was closed about `read_timeout` after the Accept,
/// and node 1 kept sending heartbeats (every 50 ms) on it meanwhile.
fn assert_closed_at_read_timeout(took: Duration, bytes: &[u8]) {
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(50),
        "closed before read_timeout: {took:?}"
    );
    assert!(
        took < READ_TIMEOUT + READ_TIMEOUT_SLACK,
        "closed {took:?} after the Accept, read_timeout is {READ_TIMEOUT:?}"
    );
    let beats = bytes.len() / heartbeat_frame().len();
    assert!(
        beats >= 3,
        "node 1 sent {beats} heartbeats on an idle connection in {took:?} (interval 50 ms)"
    );
}

/// The converse of the two tests above: two healthy nodes with nothing to
/// say keep their connections, because link heartbeats (every 50 ms)
/// arrive well within the read timeout (500 ms).
#[test]
fn idle_healthy_pair_keeps_its_connections() {
    let nodes = cluster(&[1, 2]);
    let since: Vec<_> = nodes
        .iter()
        .map(|n| {
            let s = n.t.stats().peer(3 - n.t.node_id());
            [
                s.message_lane.connected_since,
                s.append_lane.connected_since,
            ]
        })
        .collect();
    // The connections as they were, with no reconnect and no error.
    let unchanged = || -> Result<(), String> {
        for (n, since) in nodes.iter().zip(&since) {
            let s = n.t.stats().peer(3 - n.t.node_id());
            let now = [
                s.message_lane.connected_since,
                s.append_lane.connected_since,
            ];
            if s.reconnects != 0 || s.last_error.is_some() || now != *since {
                return Err(format!(
                    "node {}: an idle healthy connection was dropped (connected since \
                     {now:?}, was {since:?}): {s:?}",
                    n.t.node_id()
                ));
            }
        }
        Ok(())
    };
    // An observation window of three read timeouts: nothing should happen,
    // checked throughout.
    holds_for("the idle healthy pair", READ_TIMEOUT * 3, &unchanged);
    unchanged().unwrap();
    // And the links still carry messages.
    nodes[0].t.send([numbered(2, 1, 0)]);
    nodes[1].t.send([numbered(1, 2, 0)]);
    assert_eq!(recv_n(nodes[1].t.messages(), 1, 2)[0], numbered(2, 1, 0));
    assert_eq!(recv_n(nodes[0].t.messages(), 1, 2)[0], numbered(1, 2, 0));
}

// ----- 5. no hello at all -----

#[test]
fn client_without_hello_is_closed_after_handshake_timeout() {
    let n1 = node(1);
    let addr = n1.t.local_addr();
    // One sends nothing, one sends a valid prefix of a hello and stops.
    let mut mute = connect(addr);
    let mut partial = connect(addr);
    partial
        .write_all(&Hello::new(Lane::Message, CLUSTER, 2, 1).encode()[..10])
        .unwrap();
    for (name, s) in [("mute", &mut mute), ("partial hello", &mut partial)] {
        let (bytes, how, took) = read_until_closed(s, Duration::from_secs(3));
        println!("{name} client closed ({how:?}) after {took:?}");
        assert!(bytes.is_empty(), "{name}: got {bytes:?}");
        assert!(
            took < Duration::from_millis(800),
            "{name}: closed too late: {took:?}"
        );
    }
    let t = &n1.t;
    wait_until("both handshake timeouts counted", 2, || {
        t.stats().handshake_timeouts == 2
    });
    let st = t.stats();
    assert_eq!(st.inbound_accepted, 0);
    assert_eq!(st.inbound_rejected, 0);
    assert_eq!(
        st.protocol_errors, 0,
        "a timeout is not a protocol error: {st:?}"
    );
}

#[test]
fn client_without_hello_is_not_closed_early() {
    let n1 = node(1);
    let started = Instant::now();
    let mut s = connect(n1.t.local_addr());
    let (bytes, _, _) = read_until_closed(&mut s, Duration::from_secs(3));
    let took = started.elapsed();
    assert!(bytes.is_empty(), "a mute client got {bytes:?}");
    println!("mute client closed {took:?} after connecting (handshake_timeout 500 ms)");
    assert!(
        took >= Duration::from_millis(450),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(800),
        "closed too late: {took:?}"
    );
    wait_until("the handshake timeout counted", 2, || {
        n1.t.stats().handshake_timeouts == 1
    });
}
