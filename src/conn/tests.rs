//! Deterministic tests of the connection core: no sockets, no threads, a
//! simulated clock. A [`Pair`] wires a dialing lane ([`LaneLink`]) to an
//! accepting connection (the loop's [`InConn`] and the reader's rules)
//! through an in-memory pipe that moves at most `step` bytes per read or
//! write, so every rule is exercised with its input split at every byte.

use super::accept::{Acceptor, HelloBuf, Verdict};
use super::inbound::{Admission, Buffers, Credit, InConn, Inbounds, Intake};
use super::link::{Backoff, LaneLink, LinkEvent, Lost, Queued};
use super::outbound::{OutConn, OutEvent, Phase};
use super::receive::{SnapLimits, SnapRecv, SnapStep, lane_frame};
use super::snapshot::{ChunkEncoder, SnapshotFailure, Verifier, crc_of};
use super::{Batch, ConnId, Timing, Transmit};
use crate::config::Config;
use crate::error::{CloseReason, ProtocolViolation};
use crate::message::{Envelope, Message, MessageClass};
use crate::wire::{
    AckStatus, Checksums, Deframer, FRAME_HEADER_LEN, FrameKind, Hello, Lane, RejectReason,
    SnapshotEnd, encode_frame,
};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const NS: Duration = Duration::from_nanos(1);
const CLUSTER: u64 = 7;

fn config() -> Config {
    let mut c = Config::new(2, "127.0.0.1:0".parse().unwrap());
    c.cluster_id = CLUSTER;
    c
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Receive buffers for tests: always fresh.
struct Fresh(usize);

impl Buffers for Fresh {
    fn read_buf(&mut self) -> Vec<u8> {
        vec![0; self.0]
    }
    fn frame_buf(&mut self, len: usize) -> Vec<u8> {
        vec![0; len]
    }
}

/// Frames of `n` envelopes from node 1 to node 2, numbered from `first`.
fn batch(first: u32, n: u32, payload: usize) -> Batch {
    let mut buf = Vec::new();
    for i in first..first + n {
        let mut p = vec![(i % 251) as u8; payload];
        p.extend_from_slice(&i.to_be_bytes());
        let e = Envelope::new(2, 1, MessageClass::Other, p);
        encode_frame(&mut buf, FrameKind::Message, 1 << 20, |b| e.encode(b)).unwrap();
    }
    Batch::of(buf, n)
}

fn number(e: &Envelope) -> u32 {
    let p = &e.payload;
    u32::from_be_bytes(p[p.len() - 4..].try_into().unwrap())
}

/// Writes what `core` has queued, at most `step` bytes per write, into `pipe`.
fn write_all(core: &mut dyn Transmit, pipe: &mut Vec<u8>, step: usize, now: Instant) -> Vec<Batch> {
    let mut done = Vec::new();
    while core.can_write() && !core.outbox().is_empty() {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = core.outbox().slices(&mut iov);
        let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.to_vec()).collect();
        let k = step.min(bytes.len());
        pipe.extend_from_slice(&bytes[..k]);
        core.handle_written(k, now, &mut |b| done.push(b));
    }
    done
}

/// The reader thread's half of the acceptor, as far as the core's rules
/// go: the hello and its verdict, then frames decoded and counted.
struct ReaderHalf {
    acceptor: Acceptor,
    hello: HelloBuf,
    open: Option<(u64, Lane)>,
    done: bool,
    deframer: Deframer,
    removed: Vec<u64>,
    got: Vec<Envelope>,
    violation: Option<ProtocolViolation>,
}

impl ReaderHalf {
    fn new(cluster_id: u64) -> ReaderHalf {
        ReaderHalf {
            acceptor: Acceptor {
                cluster_id,
                node_id: 2,
                tls: false,
            },
            hello: HelloBuf::default(),
            open: None,
            done: false,
            deframer: Deframer::new(1 << 20),
            removed: Vec::new(),
            got: Vec::new(),
            violation: None,
        }
    }

    /// Consumes handed-over bytes; returns the verdict when the hello
    /// completes in them, and how many messages were accounted for.
    fn consume(&mut self, mut bytes: &[u8]) -> (Option<Verdict>, u64) {
        let mut verdict = None;
        if self.open.is_none() && !self.done {
            let (took, parsed) = self.hello.handle_bytes(bytes);
            bytes = &bytes[took..];
            let Some(parsed) = parsed else {
                return (None, 0);
            };
            let removed = self.removed.clone();
            let v = self
                .acceptor
                .verdict(parsed, None, |id| removed.contains(&id));
            match v {
                Verdict::Accept { from, lane, .. } => self.open = Some((from, lane)),
                _ => self.done = true,
            }
            verdict = Some(v);
        }
        let Some((from, _)) = self.open else {
            return (verdict, 0);
        };
        let mut n = 0;
        let mut cursor = self.deframer.feed(bytes);
        while let Some(f) = cursor.next() {
            let f = f.map_err(ProtocolViolation::Frame);
            match f.and_then(|f| {
                lane_frame::<Envelope>(2, from, f.kind, bytes::Bytes::copy_from_slice(f.payload))
            }) {
                Ok(Some((m, _))) => {
                    self.got.push(m);
                    n += 1;
                }
                Ok(None) => {}
                Err(v) => {
                    self.violation = Some(v);
                    break;
                }
            }
        }
        (verdict, n)
    }
}

/// A dialing lane of node 1 and the accepting connection of node 2,
/// wired through an in-memory pipe.
struct Pair {
    now: Instant,
    step: usize,
    link: LaneLink,
    next_id: ConnId,
    accept: Option<InConn>,
    credit: Credit,
    reader: ReaderHalf,
    to_acceptor: Vec<u8>,
    to_dialer: Vec<u8>,
    scratch: Vec<u8>,
    returned: Vec<Batch>,
    events: Vec<LinkEvent>,
    closed: Option<CloseReason>,
    config: Config,
}

impl Pair {
    fn new(step: usize) -> Pair {
        Pair::with(step, config(), CLUSTER)
    }

    fn with(step: usize, config: Config, acceptor_cluster: u64) -> Pair {
        let now = Instant::now();
        let hello = Hello::new(Lane::Message, CLUSTER, 1, 2);
        let backoff = Backoff::new(config.backoff_floor, config.backoff_cap, 99);
        let link = LaneLink::new(
            hello,
            vec![addr(1), addr(2)],
            backoff,
            Timing::of(&config),
            now,
        );
        Pair {
            now,
            step,
            link,
            next_id: 1,
            accept: None,
            credit: Credit::default(),
            reader: ReaderHalf::new(acceptor_cluster),
            to_acceptor: Vec::new(),
            to_dialer: Vec::new(),
            scratch: vec![0; config.read_chunk_len],
            returned: Vec::new(),
            events: Vec::new(),
            closed: None,
            config,
        }
    }

    /// Dials when due: a new connection, connected at once.
    fn dial(&mut self) -> SocketAddr {
        let a = self.link.poll_dial(self.now).expect("a dial is due");
        self.link.handle_dialing(self.next_id, a, self.now);
        self.next_id += 1;
        self.link.handle_connected(self.now);
        self.accept = Some(InConn::new(&self.config, self.now));
        self.credit = Credit::default();
        self.reader = ReaderHalf {
            removed: std::mem::take(&mut self.reader.removed),
            ..ReaderHalf::new(self.reader.acceptor.cluster_id)
        };
        self.to_acceptor.clear();
        self.to_dialer.clear();
        self.closed = None;
        a
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.link.poll_event() {
            self.events.push(e);
        }
    }

    /// Moves bytes both ways until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            if let Some((_, c)) = self.link.conn_mut() {
                self.returned
                    .extend(write_all(c, &mut self.to_acceptor, self.step, now));
            }
            if !self.to_acceptor.is_empty() && self.acceptor_reads() {
                moved = true;
            }
            if let Some(a) = &mut self.accept {
                write_all(a, &mut self.to_dialer, self.step, now);
                if let Some(r) = a.done_closing(false) {
                    self.closed = Some(r);
                    self.accept = None;
                }
            }
            if !self.to_dialer.is_empty() {
                moved = true;
                let bytes = std::mem::take(&mut self.to_dialer);
                for piece in bytes.chunks(self.step) {
                    self.link.handle_read(piece, now);
                }
            }
            self.collect_events();
            if !moved {
                return;
            }
        }
    }

    /// The acceptor reads what is in the pipe, `step` bytes per read (while
    /// it has read credit), and its reader half consumes what is handed
    /// over. Returns whether anything was read.
    fn acceptor_reads(&mut self) -> bool {
        let Some(a) = &mut self.accept else {
            self.to_acceptor.clear();
            return true;
        };
        let before = self.to_acceptor.len();
        let mut handed = Vec::new();
        while !self.to_acceptor.is_empty() && a.wants_read(&self.credit) {
            let room = a.read_into(&mut self.scratch);
            let n = room.len().min(self.step).min(self.to_acceptor.len());
            room[..n].copy_from_slice(&self.to_acceptor[..n]);
            self.to_acceptor.drain(..n);
            let mut bufs = Fresh(self.config.read_chunk_len);
            a.handle_read(
                n,
                self.now,
                &self.credit,
                &mut self.scratch,
                &mut bufs,
                &mut |b| handed.push(b),
            );
        }
        for b in handed {
            let (verdict, n) = self.reader.consume(&b);
            if let Some(v) = verdict {
                a.handle_verdict(&v, self.now);
            }
            self.credit.add_delivered(n);
            if self.credit.release(b.len(), self.config.conn_read_cap) {
                a.handle_resume();
            }
        }
        self.to_acceptor.len() < before
    }

    /// Lets `d` pass and runs every timer that is due. Afterwards no
    /// machine asks to be woken in the past (which would spin its driver).
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.link.handle_timeout(self.now);
        if let Some(a) = &mut self.accept
            && let Some(r) = a.handle_timeout(self.now, &self.credit)
        {
            self.closed = Some(r);
            self.accept = None;
        }
        self.collect_events();
        if let Some(t) = self.link.poll_timeout() {
            assert!(
                t > self.now || self.link.poll_dial(self.now).is_some(),
                "link wakes in the past"
            );
        }
        if let Some(t) = self.accept.as_ref().and_then(|a| a.poll_timeout()) {
            assert!(t > self.now, "acceptor wakes in the past");
        }
    }

    fn lost(&self) -> Vec<&Lost> {
        self.events
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Lost(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn connected(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, LinkEvent::Connected { .. }))
            .count()
    }
}

const STEPS: [usize; 12] = [1, 2, 3, 5, 7, 11, 12, 13, 31, 32, 33, 4096];

#[test]
fn handshake_and_messages_arrive_whole_and_in_order_at_every_split() {
    for step in (1..=40).chain(STEPS) {
        let mut p = Pair::new(step);
        // Batches queued before the dial are held, then written in order.
        assert!(matches!(
            p.link.queue_batch(batch(0, 3, 10), p.now),
            Queued::Held
        ));
        assert_eq!(p.dial(), addr(1));
        assert!(matches!(
            p.link.queue_batch(batch(3, 2, 700), p.now),
            Queued::Held
        ));
        p.run();
        assert_eq!(p.connected(), 1, "step {step}");
        assert_eq!(p.link.connected_since(), Some(p.now));
        assert!(matches!(
            p.link.queue_batch(batch(5, 4, 3), p.now),
            Queued::OnConn(1)
        ));
        p.run();
        let got: Vec<u32> = p.reader.got.iter().map(number).collect();
        assert_eq!(got, (0..9).collect::<Vec<_>>(), "step {step}");
        assert_eq!(p.returned.iter().map(|b| b.msgs).sum::<u32>(), 9);
        assert!(p.lost().is_empty() && p.reader.violation.is_none());
        // Written, not yet reported delivered: in flight.
        assert_eq!(p.link.conn().unwrap().1.in_flight(), 9);
        p.advance(p.config.ack_interval);
        p.run();
        assert_eq!(p.link.conn().unwrap().1.in_flight(), 0, "step {step}");
    }
}

#[test]
fn a_delivery_report_for_more_than_was_written_closes_the_connection() {
    for step in STEPS {
        let mut p = Pair::new(step);
        p.dial();
        p.run();
        p.link.queue_batch(batch(0, 2, 5), p.now);
        p.run();
        // The acceptor claims three delivered of two.
        let mut lie = Vec::new();
        encode_frame(&mut lie, FrameKind::Delivered, u32::MAX, |b| {
            b.extend_from_slice(&3u64.to_be_bytes())
        })
        .unwrap();
        for piece in lie.chunks(step) {
            p.link.handle_read(piece, p.now);
        }
        p.collect_events();
        let lost = p.lost();
        assert_eq!(lost.len(), 1, "step {step}");
        assert_eq!(
            lost[0].reason,
            CloseReason::PeerMisbehaved(ProtocolViolation::UnexpectedFrame)
        );
        assert!(lost[0].was_connected);
        // Both written and unreported: counted as in flight by the driver.
        assert_eq!(lost[0].in_flight, 2);
    }
    // Up to what was handed to the connection (a batch partly written) is
    // fine.
    let mut p = Pair::new(4096);
    p.dial();
    p.run();
    let c = p.link.conn_mut().unwrap().1;
    c.queue_batch(batch(0, 2, 5), p.now);
    let mut ok = Vec::new();
    encode_frame(&mut ok, FrameKind::Delivered, u32::MAX, |b| {
        b.extend_from_slice(&2u64.to_be_bytes())
    })
    .unwrap();
    p.link.handle_read(&ok, p.now);
    p.collect_events();
    assert!(p.lost().is_empty());
}

#[test]
fn a_silent_connection_is_declared_dead_exactly_at_the_read_timeout() {
    let mut p = Pair::new(64);
    p.dial();
    p.run();
    let accepted = p.now;
    let rt = p.config.read_timeout;
    // From now on nothing reaches the dialer (the acceptor's heartbeats are
    // lost), and the acceptor hears nothing either.
    let mut t = Duration::ZERO;
    while t + p.config.heartbeat_interval < rt {
        p.advance(p.config.heartbeat_interval);
        t += p.config.heartbeat_interval;
        if let Some((_, c)) = p.link.conn_mut() {
            write_all(c, &mut Vec::new(), 4096, p.now);
        }
    }
    assert!(p.lost().is_empty(), "{:?}", p.events);
    assert_eq!(p.link.poll_timeout(), Some(accepted + rt));
    p.advance(accepted + rt - NS - p.now);
    assert!(p.lost().is_empty(), "one nanosecond early");
    assert!(p.closed.is_none());
    p.advance(NS);
    let lost = p.lost();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].reason, CloseReason::ReadTimeout);
    assert_eq!(p.closed, Some(CloseReason::ReadTimeout), "the acceptor too");
}

#[test]
fn heartbeats_keep_an_idle_connection_alive() {
    let mut p = Pair::new(5);
    p.dial();
    p.run();
    for _ in 0..20 {
        p.advance(p.config.heartbeat_interval);
        p.run();
    }
    assert!(p.lost().is_empty() && p.closed.is_none());
    assert!(p.link.connected_since().is_some());
}

#[test]
fn read_credit_pauses_and_resumes_reading() {
    let mut c = config();
    c.conn_read_cap = 100;
    let cap = c.conn_read_cap;
    let now = Instant::now();
    let mut conn = InConn::new(&c, now);
    let credit = Credit::default();
    let mut scratch = vec![0u8; c.read_chunk_len];
    let mut handed = Vec::new();
    let mut reads = 0;
    // The reader takes nothing: reading stops once the credit is used up.
    while conn.wants_read(&credit) {
        let room = conn.read_into(&mut scratch);
        room[..10].fill(0xAB);
        conn.handle_read(
            10,
            now,
            &credit,
            &mut scratch,
            &mut Fresh(c.read_chunk_len),
            &mut |b| handed.push(b),
        );
        reads += 1;
        assert!(reads < 1000, "never paused");
    }
    let inflight: usize = handed.iter().map(|b| b.len()).sum();
    assert!(
        inflight >= cap && inflight < cap + 10 + FRAME_HEADER_LEN,
        "{inflight}"
    );
    assert_eq!(credit.inflight(), inflight);
    assert!(!conn.wants_read(&credit), "stays paused");
    // Releasing down to the cap does not resume (still out of credit)...
    assert!(!credit.release(inflight - cap, cap));
    // ...releasing below it does, once.
    assert!(credit.release(1, cap));
    assert!(!credit.release(0, cap));
    conn.handle_resume();
    assert!(conn.wants_read(&credit));
    // While paused, silence is ours: no read timeout.
    let mut p = Pair::new(4096);
    p.dial();
    p.run();
    let a = p.accept.as_mut().unwrap();
    p.credit.take(1 << 30);
    assert!(!a.wants_read(&p.credit));
    for _ in 0..10 {
        p.advance(p.config.read_timeout / 2);
        assert!(p.closed.is_none(), "timed out while not reading");
        p.run();
    }
}

#[test]
fn large_frames_are_read_whole_into_a_buffer_of_their_own_at_every_split() {
    let read = 1024;
    let mut stream = vec![0xEE; 32]; // a hello's worth
    let sizes = [5, 3000, 0, 70_000, 1, 1024, 1013];
    for (i, &n) in sizes.iter().enumerate() {
        encode_frame(&mut stream, FrameKind::Message, 1 << 20, |b| {
            b.extend((0..n).map(|j| (i + j) as u8))
        })
        .unwrap();
    }
    for step in [1, 7, 12, 13, 100, 1000, 1023, 1024, 5000] {
        let mut intake = Intake::new(read, 1 << 20);
        let mut scratch = vec![0u8; read];
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let room = intake.read_into(&mut scratch);
            let n = room.len().min(step).min(stream.len() - pos);
            room[..n].copy_from_slice(&stream[pos..pos + n]);
            pos += n;
            intake.handle_read(n, &mut scratch, &mut Fresh(read), &mut |b| out.push(b));
        }
        out.push(intake.take_unsent());
        let joined: Vec<u8> = out.concat();
        assert_eq!(joined, stream, "step {step}: bytes changed");
        // The 3000- and 70,000-byte frames each came as one buffer, exactly.
        for n in [3000, 70_000] {
            assert!(
                out.iter().any(|b| b.len() == FRAME_HEADER_LEN + n),
                "step {step}: frame of {n} not read whole"
            );
        }
    }
}

#[test]
fn a_rejected_handshake_backs_off_further_each_time_and_reports_a_new_reason_once() {
    for step in [1, 3, 8, 4096] {
        let mut p = Pair::with(step, config(), CLUSTER + 1);
        let mut gaps = Vec::new();
        for round in 0..4 {
            let dialed = p.dial();
            p.run();
            let lost = p.lost();
            assert_eq!(lost.len(), round + 1, "step {step} round {round}");
            let l = lost[round];
            assert_eq!(l.reason, CloseReason::Rejected(RejectReason::WrongCluster));
            assert!(!l.was_connected);
            assert_eq!(l.addr, Some(dialed));
            assert_eq!(
                p.closed,
                Some(CloseReason::Rejected(RejectReason::WrongCluster)),
                "the acceptor closes once the reject is written"
            );
            let at = l.retry_at;
            gaps.push(at - p.now);
            // Backing off: nothing to dial, batches are refused.
            assert_eq!(p.link.poll_dial(at - NS), None);
            assert!(matches!(
                p.link.queue_batch(batch(0, 1, 1), p.now),
                Queued::Refused(_)
            ));
            p.now = at;
        }
        assert!(gaps.windows(2).all(|w| w[1] > w[0]), "{gaps:?}");
        assert_eq!(p.link.backoff_failures(), 4);
        let firsts: Vec<bool> = p
            .events
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Rejected { first, .. } => Some(*first),
                _ => None,
            })
            .collect();
        assert_eq!(firsts, vec![true, false, false, false]);
        assert_eq!(p.connected(), 0);
    }
}

#[test]
fn failed_dials_rotate_addresses_and_a_lost_connection_redials_its_own_first() {
    let mut p = Pair::new(4096);
    assert_eq!(p.dial(), addr(1));
    p.advance(p.config.handshake_timeout);
    // The handshake was never answered (nothing ran): a handshake timeout.
    let l = p.lost()[0];
    assert_eq!(l.reason, CloseReason::HandshakeTimeout);
    let at = l.retry_at;
    p.now = at;
    assert_eq!(p.dial(), addr(2), "rotated");
    p.run();
    assert_eq!(p.connected(), 1);
    p.link.handle_failed(CloseReason::Eof, p.now);
    p.collect_events();
    let l = p.lost()[1];
    assert!(l.was_connected);
    assert!(
        l.retry_at - p.now < p.config.backoff_floor * 2,
        "backoff was reset"
    );
    p.now = l.retry_at;
    assert_eq!(
        p.dial(),
        addr(2),
        "an established address is tried again first"
    );
    p.run();
    assert!(matches!(
        p.events.last(),
        Some(LinkEvent::Connected { reconnect: true })
    ));
    // New addresses: the connection to one no longer listed is lost and the
    // lane redials at once, at the first new address.
    p.link.set_addrs(vec![addr(9)], p.now);
    p.collect_events();
    let l = p.lost()[2];
    assert_eq!(l.reason, CloseReason::PeerRemoved);
    assert_eq!(l.retry_at, p.now);
    assert_eq!(p.dial(), addr(9));
    assert_eq!(p.link.addrs(), &[addr(9)]);
}

#[test]
fn a_dying_connection_hands_back_what_it_did_not_write() {
    let mut p = Pair::new(4096);
    p.link.queue_batch(batch(0, 2, 5), p.now);
    p.dial();
    // Fails before the accept: the held batch comes back unsent.
    p.link.handle_failed(
        CloseReason::Io(std::io::ErrorKind::ConnectionRefused),
        p.now,
    );
    p.collect_events();
    let l = p.lost()[0];
    assert_eq!(l.unsent.iter().map(|b| b.msgs).sum::<u32>(), 2);
    assert_eq!(l.in_flight, 0);
    p.now = l.retry_at;
    p.dial();
    p.run();
    // One batch written (and not reported), one queued and not written.
    p.link.queue_batch(batch(0, 3, 5), p.now);
    p.run();
    let (_, c) = p.link.conn_mut().unwrap();
    c.queue_batch(batch(3, 4, 5), p.now);
    p.link.handle_failed(CloseReason::Eof, p.now);
    p.collect_events();
    let l = p.lost()[1];
    assert_eq!(l.in_flight, 3);
    assert_eq!(l.unsent.iter().map(|b| b.msgs).sum::<u32>(), 4);
    let (conn, unsent, in_flight) = p.link.remove();
    assert!(conn.is_none() && unsent.is_empty() && in_flight == 0);
}

#[test]
fn the_verdict_on_a_hello() {
    let me = Acceptor {
        cluster_id: CLUSTER,
        node_id: 2,
        tls: false,
    };
    let verdict = |h: Hello, removed: bool| {
        let mut buf = HelloBuf::default();
        let bytes = h.encode();
        // The hello may come a byte at a time.
        for i in 0..bytes.len() - 1 {
            assert_eq!(buf.handle_bytes(&bytes[i..i + 1]), (1, None));
        }
        let (took, parsed) = buf.handle_bytes(&bytes[31..]);
        assert_eq!(took, 1);
        me.verdict(parsed.unwrap(), None, |_| removed)
    };
    let ok = Hello::new(Lane::Append, CLUSTER, 1, 2);
    assert_eq!(
        verdict(ok, false),
        Verdict::Accept {
            from: 1,
            lane: Lane::Append,
            checksums: Checksums::Full,
        }
    );
    let reason = |v: Verdict| match v {
        Verdict::Reject { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(verdict(ok, true)), RejectReason::RemovedMember);
    let other_cluster = Hello::new(Lane::Message, CLUSTER + 1, 1, 2);
    assert_eq!(
        reason(verdict(other_cluster, false)),
        RejectReason::WrongCluster
    );
    let other_node = Hello::new(Lane::Message, CLUSTER, 1, 3);
    assert_eq!(
        reason(verdict(other_node, false)),
        RejectReason::WrongReceiver
    );
    // With TLS, the certificate must name the sender.
    let tls = Acceptor { tls: true, ..me };
    let parse = || {
        let mut b = HelloBuf::default();
        b.handle_bytes(&ok.encode()).1.unwrap()
    };
    assert!(matches!(
        tls.verdict(parse(), Some(1), |_| false),
        Verdict::Accept { .. }
    ));
    assert_eq!(
        reason(tls.verdict(parse(), Some(3), |_| false)),
        RejectReason::IdentityMismatch
    );
    // Header-only checksums: granted under TLS, refused in plaintext.
    let header_only = ok.with_checksums(Checksums::HeaderOnly);
    let parse_ho = || {
        let mut b = HelloBuf::default();
        b.handle_bytes(&header_only.encode()).1.unwrap()
    };
    assert_eq!(
        tls.verdict(parse_ho(), Some(1), |_| false),
        Verdict::Accept {
            from: 1,
            lane: Lane::Append,
            checksums: Checksums::HeaderOnly,
        }
    );
    assert_eq!(
        reason(me.verdict(parse_ho(), None, |_| false)),
        RejectReason::BadFlags
    );
    // Not a hello: no answer at all.
    let mut b = HelloBuf::default();
    let (_, parsed) = b.handle_bytes(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        me.verdict(parsed.unwrap(), None, |_| false),
        Verdict::Violation(ProtocolViolation::BadHello)
    );
}

#[test]
fn too_many_inbound_connections_evict_the_oldest_stranger_and_never_a_peer() {
    let c = config();
    let t0 = Instant::now();
    let mut ins = Inbounds::new(3);
    for id in 1..=3 {
        assert_eq!(ins.admission(), Admission::Admit);
        ins.insert(id, InConn::new(&c, t0 + id as u32 * MS));
    }
    assert_eq!(ins.admission(), Admission::Evict(1));
    let accept = Verdict::Accept {
        from: 9,
        lane: Lane::Message,
        checksums: Checksums::Full,
    };
    assert_eq!(ins.handle_verdict(1, &accept, t0), None);
    assert_eq!(ins.admission(), Admission::Evict(2));
    // A newer connection of the same sender and lane replaces the older.
    assert_eq!(ins.handle_verdict(2, &accept, t0), Some(1));
    ins.remove(1);
    ins.insert(4, InConn::new(&c, t0));
    assert_eq!(ins.handle_verdict(3, &accept, t0), Some(2));
    assert_eq!(ins.handle_verdict(4, &accept, t0), Some(3));
    // Every connection authenticated: the newcomer is refused.
    assert_eq!(ins.admission(), Admission::Refuse);
    assert_eq!(ins.accepted_from(9), vec![2, 3, 4]);
    // A reject on its way out is not evicted either (it closes by itself).
    let mut ins = Inbounds::new(1);
    ins.insert(7, InConn::new(&c, t0));
    let reject = Verdict::Reject {
        hello: None,
        reason: RejectReason::WrongCluster,
    };
    ins.handle_verdict(7, &reject, t0);
    assert_eq!(ins.admission(), Admission::Refuse);
}

#[test]
fn a_stranger_that_never_completes_its_hello_is_closed_at_the_handshake_timeout() {
    let c = config();
    let t0 = Instant::now();
    let mut conn = InConn::new(&c, t0);
    let credit = Credit::default();
    assert_eq!(conn.poll_timeout(), Some(t0 + c.handshake_timeout));
    assert_eq!(
        conn.handle_timeout(t0 + c.handshake_timeout - NS, &credit),
        None
    );
    assert_eq!(
        conn.handle_timeout(t0 + c.handshake_timeout, &credit),
        Some(CloseReason::HandshakeTimeout)
    );
}

/// A snapshot connection's dialing side, accepted, with frames from the
/// receiver fed `step` bytes at a time.
fn snapshot_conn(step: usize, from_receiver: &[u8]) -> Vec<OutEvent> {
    let c = config();
    let now = Instant::now();
    let hello = Hello::new(Lane::Snapshot, CLUSTER, 1, 2);
    let mut conn = OutConn::new(hello, addr(1), Timing::of(&c), now);
    conn.handle_connected(now);
    let mut wire = crate::wire::Response::Accept.encode().to_vec();
    wire.extend_from_slice(from_receiver);
    for piece in wire.chunks(step) {
        conn.handle_read(piece, now);
    }
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    frame_with(kind, payload, Checksums::Full)
}

fn frame_with(kind: FrameKind, payload: &[u8], mode: Checksums) -> Vec<u8> {
    let mut f = Vec::new();
    crate::wire::encode_frame_with(&mut f, kind, u32::MAX, mode, |b| {
        b.extend_from_slice(payload)
    })
    .unwrap();
    f
}

#[test]
fn a_snapshot_connection_hears_the_verdict_and_nothing_a_lane_would() {
    for step in [1, 2, 5, 13, 100] {
        let ack = frame(
            FrameKind::SnapshotAck,
            &AckStatus::ChecksumMismatch.encode(),
        );
        assert_eq!(
            snapshot_conn(step, &ack),
            vec![
                OutEvent::Accepted,
                OutEvent::SnapshotAck(AckStatus::ChecksumMismatch)
            ]
        );
        let delivered = frame(FrameKind::Delivered, &0u64.to_be_bytes());
        assert_eq!(
            snapshot_conn(step, &delivered)[1],
            OutEvent::Failed(CloseReason::PeerMisbehaved(
                ProtocolViolation::UnexpectedFrame
            ))
        );
    }
}

/// A whole inline snapshot stream of `data`, its frames as they go out.
fn inline_stream(data: &[u8], chunk: usize, mode: Checksums) -> Vec<Vec<u8>> {
    let mut enc = ChunkEncoder::new(data.len() as u64, chunk, 1 << 20, mode);
    let mut frames = vec![enc.begin_frame(None).unwrap()];
    let mut pos = 0;
    loop {
        let mut f = Vec::new();
        let room = enc.prepare(&mut f);
        let n = room.len().min(data.len() - pos);
        room[..n].copy_from_slice(&data[pos..pos + n]);
        pos += n;
        if !enc.seal(&mut f, n).unwrap() {
            break;
        }
        frames.push(f);
    }
    frames.push(enc.end_frame());
    frames
}

/// Runs a snapshot stream through a deframer (`step` bytes at a time) and
/// the receive machine, both expecting checksums as `mode` says; returns
/// what the machine asked for, or the frame error.
fn receive(frames: &[Vec<u8>], step: usize, mode: Checksums) -> Vec<String> {
    let wire: Vec<u8> = frames.concat();
    let mut d = Deframer::new(1 << 20);
    d.set_checksums(mode);
    let mut recv = SnapRecv::new(mode);
    let limits = SnapLimits {
        max_snapshot_len: 1 << 30,
        max_inline_len: 1 << 20,
    };
    let mut steps = Vec::new();
    for piece in wire.chunks(step) {
        let mut cursor = d.feed(piece);
        while let Some(f) = cursor.next() {
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    steps.push(format!("frame error {}", e.name()));
                    continue;
                }
            };
            match recv.handle(&f, limits).unwrap() {
                SnapStep::Nothing => {}
                SnapStep::Inline(buf) => steps.push(format!("inline {}", buf.len())),
                SnapStep::Refuse(s, _) => steps.push(format!("refuse {s}")),
                other => steps.push(format!("{other:?}")),
            }
        }
    }
    steps
}

#[test]
fn an_inline_snapshot_whose_size_or_checksum_is_wrong_is_never_reported_good() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let full = Checksums::Full;
    for step in [1, 11, 12, 13, 4096, 100_000] {
        let good = inline_stream(&data, 3000, full);
        assert_eq!(
            receive(&good, step, full),
            vec!["inline 10000"],
            "step {step}"
        );
        // A chunk whose data changed but whose frame checksum was made to
        // match: only the checksum of the whole catches it.
        let mut bad = good.clone();
        let payload = bad[2][FRAME_HEADER_LEN..].to_vec();
        let mut flipped = payload.clone();
        flipped[100] ^= 1;
        bad[2] = frame(FrameKind::SnapshotChunk, &flipped);
        assert_eq!(receive(&bad, step, full), vec!["refuse checksum_mismatch"]);
        // An end frame that announces another size.
        let mut bad = good.clone();
        let crc = crc_of(&[&data]);
        let end = SnapshotEnd { size: 9_999, crc };
        *bad.last_mut().unwrap() = frame(FrameKind::SnapshotEnd, &end.encode());
        assert_eq!(receive(&bad, step, full), vec!["refuse size_mismatch"]);
        // A chunk too many: refused as soon as the data passes the size.
        let mut bad = good.clone();
        let extra = bad[1].clone();
        bad.insert(2, extra);
        assert_eq!(receive(&bad, step, full), vec!["refuse size_mismatch"]);
        // A chunk missing.
        let mut bad = good.clone();
        bad.remove(1);
        assert_eq!(receive(&bad, step, full), vec!["refuse size_mismatch"]);
    }
}

#[test]
fn header_only_checksums_skip_the_payload_but_still_check_headers_and_sizes() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let ho = Checksums::HeaderOnly;
    for step in [1, 11, 12, 13, 4096, 100_000] {
        let good = inline_stream(&data, 3000, ho);
        // The end frame carries no checksum of the whole.
        let end_payload = &good.last().unwrap()[FRAME_HEADER_LEN..];
        assert_eq!(SnapshotEnd::decode(end_payload).unwrap().crc, 0);
        assert_eq!(
            receive(&good, step, ho),
            vec!["inline 10000"],
            "step {step}"
        );
        // A receiver that expects full checksums refuses the first frame
        // with a payload; one that expects header-only refuses full ones.
        assert_eq!(
            receive(&good, step, Checksums::Full),
            vec!["frame error bad_checksum"]
        );
        let full = inline_stream(&data, 3000, Checksums::Full);
        assert_eq!(receive(&full, step, ho), vec!["frame error bad_checksum"]);
        // A damaged header is still caught.
        let mut bad = good.clone();
        bad[1][5] = 0; // flags stay zero, but the length changes:
        bad[1][3] ^= 1;
        let got = receive(&bad, step, ho);
        assert_eq!(
            got.first().map(String::as_str),
            Some("frame error bad_checksum")
        );
        // Sizes are checked as with full checksums.
        let mut bad = good.clone();
        bad.remove(1);
        assert_eq!(receive(&bad, step, ho), vec!["refuse size_mismatch"]);
        let mut bad = good.clone();
        let end = SnapshotEnd {
            size: 9_999,
            crc: 0,
        };
        *bad.last_mut().unwrap() = frame_with(FrameKind::SnapshotEnd, &end.encode(), ho);
        assert_eq!(receive(&bad, step, ho), vec!["refuse size_mismatch"]);
    }
    // The verifier ignores the end frame's checksum in this mode only.
    let mut v = Verifier::new(3, ho);
    v.chunk(b"abc", None).unwrap();
    assert_eq!(
        v.end(&SnapshotEnd {
            size: 3,
            crc: 12345
        }),
        Ok(())
    );
    let mut v = Verifier::new(3, Checksums::Full);
    v.chunk(b"abc", None).unwrap();
    assert!(matches!(
        v.end(&SnapshotEnd {
            size: 3,
            crc: 12345
        }),
        Err(SnapshotFailure::ChecksumMismatch { .. })
    ));
}

#[test]
fn the_verifier_of_a_streamed_snapshot_checks_size_and_the_whole_checksum() {
    let a = vec![1u8; 5000];
    let b = vec![2u8; 3000];
    let crc = crc_of(&[&a, &b]);
    let whole = |chunks: &[&[u8]], end: SnapshotEnd| {
        let mut v = Verifier::new(8000, Checksums::Full);
        for c in chunks {
            v.chunk(c, None)?;
        }
        v.end(&end)
    };
    let end = SnapshotEnd { size: 8000, crc };
    assert_eq!(whole(&[&a, &b], end), Ok(()));
    // The checksum the frame decoder computed on the way is used as is.
    let mut v = Verifier::new(8000, Checksums::Full);
    v.chunk(&a, Some(crate::wire::crc::crc32c(&a))).unwrap();
    v.chunk(&b, None).unwrap();
    assert_eq!(v.end(&end), Ok(()));
    assert!(matches!(
        whole(&[&b, &a], end),
        Err(SnapshotFailure::ChecksumMismatch { .. })
    ));
    assert!(matches!(
        whole(&[&a], end),
        Err(SnapshotFailure::SizeMismatch { received: 5000, .. })
    ));
    assert_eq!(
        whole(&[&a, &b, &[0]], end),
        Err(SnapshotFailure::TooLong { size: 8000 })
    );
    let short_end = SnapshotEnd { size: 7999, crc };
    assert!(matches!(
        whole(&[&a, &b], short_end),
        Err(SnapshotFailure::SizeMismatch { end: 7999, .. })
    ));
}

#[test]
fn the_chunk_encoder_refuses_data_shorter_or_longer_than_announced() {
    let mut enc = ChunkEncoder::new(10, 4, 1 << 20, Checksums::Full);
    let mut sent = 0;
    let mut f = Vec::new();
    loop {
        let room = enc.prepare(&mut f);
        let n = room.len().min(10 - sent);
        sent += n;
        if !enc.seal(&mut f, n).unwrap() {
            break;
        }
        assert!(f.len() <= FRAME_HEADER_LEN + 4);
    }
    assert_eq!(sent, 10);
    let mut enc = ChunkEncoder::new(10, 4, 1 << 20, Checksums::Full);
    let room = enc.prepare(&mut f).len();
    assert_eq!(room, 4);
    assert_eq!(
        enc.seal(&mut f, 3),
        Err(SnapshotFailure::SourceShort { sent: 3, size: 10 })
    );
    let mut enc = ChunkEncoder::new(0, 4, 1 << 20, Checksums::Full);
    assert_eq!(
        enc.prepare(&mut f).len(),
        1,
        "a probe for data past the size"
    );
    assert_eq!(
        enc.seal(&mut f, 1),
        Err(SnapshotFailure::SourceLong { size: 0 })
    );
    let big = vec![0u8; 100];
    let enc = ChunkEncoder::new(1, 4, 50, Checksums::Full);
    assert_eq!(
        enc.begin_frame(Some(&big)),
        Err(SnapshotFailure::MessageTooLarge(109))
    );
}

#[test]
fn a_dial_that_does_not_connect_times_out_at_the_dial_timeout() {
    let c = config();
    let now = Instant::now();
    let mut conn = OutConn::new(
        Hello::new(Lane::Message, CLUSTER, 1, 2),
        addr(1),
        Timing::of(&c),
        now,
    );
    assert!(
        !conn.can_write(),
        "nothing is written before the connect completes"
    );
    assert_eq!(conn.poll_timeout(), Some(now + c.dial_timeout));
    conn.handle_timeout(now + c.dial_timeout - NS);
    assert_eq!(conn.poll_event(), None);
    conn.handle_timeout(now + c.dial_timeout);
    assert_eq!(
        conn.poll_event(),
        Some(OutEvent::Failed(CloseReason::DialTimeout))
    );
    assert_eq!(conn.phase(), Phase::Closed);
}

#[test]
fn no_connection_asks_to_be_woken_in_the_past_once_its_timers_ran() {
    // Inbound connections of every lane, read from, timers run: the next
    // deadline is always ahead (a deadline in the past makes the event
    // loop run its timers on every turn).
    let c = config();
    for lane in Lane::ALL {
        let t0 = Instant::now();
        let mut conn = InConn::new(&c, t0);
        let credit = Credit::default();
        let mut scratch = vec![0u8; c.read_chunk_len];
        let hello = Hello::new(lane, CLUSTER, 1, 2).encode();
        let room = conn.read_into(&mut scratch);
        room[..hello.len()].copy_from_slice(&hello);
        conn.handle_read(
            hello.len(),
            t0,
            &credit,
            &mut scratch,
            &mut Fresh(c.read_chunk_len),
            &mut |b| assert!(credit.release(b.len(), c.conn_read_cap) || credit.inflight() == 0),
        );
        conn.handle_verdict(
            &Verdict::Accept {
                from: 1,
                lane,
                checksums: Checksums::Full,
            },
            t0,
        );
        let mut now = t0;
        for i in 1..200u32 {
            now += MS * (i % 7);
            let room = conn.read_into(&mut scratch);
            let hb = crate::wire::heartbeat_frame();
            room[..hb.len()].copy_from_slice(&hb);
            conn.handle_read(
                hb.len(),
                now,
                &credit,
                &mut scratch,
                &mut Fresh(c.read_chunk_len),
                &mut |b| {
                    credit.release(b.len(), c.conn_read_cap);
                },
            );
            now += c.ack_interval;
            assert_eq!(conn.handle_timeout(now, &credit), None);
            let next = conn.poll_timeout().unwrap();
            assert!(
                next > now,
                "{lane} lane: wakes at {:?} before now",
                now - next
            );
            write_all(&mut conn, &mut Vec::new(), 4096, now);
        }
    }
    // Dialed connections, snapshot ones included.
    for lane in Lane::ALL {
        let now = Instant::now();
        let mut out = OutConn::new(
            Hello::new(lane, CLUSTER, 1, 2),
            addr(1),
            Timing::of(&c),
            now,
        );
        out.handle_connected(now);
        out.handle_read(&crate::wire::Response::Accept.encode(), now);
        let mut t = now;
        for _ in 0..50 {
            t += c.heartbeat_interval / 3;
            out.handle_read(&crate::wire::heartbeat_frame(), t);
            out.handle_timeout(t);
            write_all(&mut out, &mut Vec::new(), 4096, t);
            assert!(out.poll_timeout().unwrap() > t, "{lane} dialer");
        }
    }
}
