//! Membership and flow control at the transport's API, over real sockets on
//! 127.0.0.1: adding, removing and readdressing peers, remotes, pausing,
//! liveness (`active_since`), drops and how they are counted and reported,
//! typed errors for misuse, and concurrent senders through clones.
// Plays peers by hand with the wire codec (raftwire::testing::wire).
#![cfg(feature = "testing")]

mod common;
use common::*;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use raftwire::testing::wire::{HELLO_LEN, Hello, HelloParse, Lane, Response, heartbeat_frame};
use raftwire::{
    DropReason, Envelope, Error, MessageClass, NoopReporter, ReportEvent, SendError, Transport,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use MessageClass::{Append, Other, Proposal};

const MS: Duration = Duration::from_millis(1);

// ----- helpers -----

/// A numbered message payload.
fn num(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn num_of(m: &Envelope) -> u64 {
    u64::from_be_bytes(m.payload[..8].try_into().unwrap())
}

fn drain(events: &Receiver<ReportEvent>) {
    while events.try_recv().is_ok() {}
}

/// How a [`FakePeer`] treats the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeMode {
    /// Accepts TCP connections and never reads or answers: the dialer stays
    /// in the handshake and holds its batches.
    Mute,
    /// Answers every hello with Accept, sends link heartbeats, and reports
    /// when the dialer closes the connection.
    Live,
    /// Answers the first hello of each lane with Accept and then goes
    /// silent (no heartbeats, no close); later connections are held mute.
    AcceptThenSilent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeEvent {
    Accepted(Lane),
    Closed(Lane),
}

/// A hand-made raftwire acceptor, for behaviours a real transport will not
/// show (never answering, going silent) and for watching connections from
/// the remote side.
struct FakePeer {
    events: Receiver<FakeEvent>,
    tcp_accepts: Arc<AtomicUsize>,
    server: TestServer,
}

impl FakePeer {
    fn start(mode: FakeMode) -> FakePeer {
        let (tx, events) = crossbeam_channel::unbounded();
        let tcp_accepts = Arc::new(AtomicUsize::new(0));
        let accepts = tcp_accepts.clone();
        let mut held = Vec::new();
        let mut answered = [false; 2];
        let server = TestServer::start(move |mut s, stop| {
            accepts.fetch_add(1, Ordering::SeqCst);
            match mode {
                FakeMode::Mute => held.push(s),
                FakeMode::AcceptThenSilent => {
                    if let Some(lane) = read_hello(&mut s)
                        && !answered[lane.index()]
                    {
                        answered[lane.index()] = true;
                        s.write_all(&Response::Accept.encode()).unwrap();
                        let _ = tx.send(FakeEvent::Accepted(lane));
                    }
                    held.push(s);
                }
                FakeMode::Live => {
                    let (tx, stop) = (tx.clone(), stop.clone());
                    return Some(std::thread::spawn(move || serve_live(s, tx, stop)));
                }
            }
            None
        });
        FakePeer {
            events,
            tcp_accepts,
            server,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn accepts(&self) -> usize {
        self.tcp_accepts.load(Ordering::SeqCst)
    }

    /// The next `n` events, failing after `secs`.
    fn next_events(&self, n: usize, secs: u64) -> Vec<FakeEvent> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.events
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("fake peer saw {i} of {n} expected events"))
            })
            .collect()
    }

    /// Expects the next two events, within `secs`, to be `event` on each
    /// lane (in either order).
    fn expect_on_both_lanes(&self, event: fn(Lane) -> FakeEvent, secs: u64) {
        let mut got = self.next_events(2, secs);
        got.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(got, vec![event(Lane::Append), event(Lane::Message)]);
    }
}

fn read_hello(s: &mut TcpStream) -> Option<Lane> {
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut b = [0u8; HELLO_LEN];
    s.read_exact(&mut b).ok()?;
    match Hello::decode(&b) {
        Some(Ok(HelloParse::Hello(h))) => Lane::from_u8(h.lane),
        _ => None,
    }
}

/// Accepts the hello, then reads and discards whatever comes, sends a link
/// heartbeat every 40 ms, and reports the close.
fn serve_live(mut s: TcpStream, tx: Sender<FakeEvent>, stop: Arc<AtomicBool>) {
    let Some(lane) = read_hello(&mut s) else {
        return;
    };
    if s.write_all(&Response::Accept.encode()).is_err() {
        return;
    }
    let _ = tx.send(FakeEvent::Accepted(lane));
    s.set_read_timeout(Some(20 * MS)).unwrap();
    let mut last_hb = Instant::now();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if last_hb.elapsed() >= 40 * MS {
            if s.write_all(&heartbeat_frame()).is_err() {
                break;
            }
            last_hb = Instant::now();
        }
    }
    let _ = tx.send(FakeEvent::Closed(lane));
}

/// `try_send`s numbered messages until the queue refuses one with `Full`,
/// checks that the refused message came back intact, and returns how many
/// were queued before.
fn fill_until_full(t: &Transport<Envelope>, to: u64, payload_len: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut queued = 0u64;
    loop {
        let mut payload = vec![0xAB; payload_len.max(8)];
        payload[..8].copy_from_slice(&num(queued));
        let m = Envelope::new(to, t.node_id(), Other, payload);
        match t.try_send(m.clone()) {
            Ok(()) => queued += 1,
            Err(SendError::Full(back)) => {
                assert_eq!(back, m, "Full must give the message back intact");
                return queued;
            }
            Err(e) => panic!("expected Ok or Full, got {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "queue never filled ({queued} messages queued)"
        );
    }
}

// ----- add_peer / remove_peer -----

#[test]
fn remove_peer_drops_sends_and_readding_resumes_delivery() {
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.t.send([env(2, 1, Other, b"before")]);
    assert_eq!(recv_n(b.t.messages(), 1, 5)[0].payload, &b"before"[..]);

    a.t.remove_peer(2).unwrap();
    assert!(a.t.peers().is_empty());
    assert!(a.t.active_peers().is_empty());
    assert_eq!(a.t.active_since(2), None);
    assert!(!a.t.stats().peers.contains_key(&2));

    // `send` to the removed id drops and counts every message, both lanes.
    a.t.send([
        env(2, 1, Other, b"x"),
        env(2, 1, Append, b"y"),
        env(2, 1, Proposal, b"z"),
    ]);
    assert_eq!(a.t.stats().dropped_unknown_peer, 3);
    // `try_send` gives the message back and does not count it.
    let m = env(2, 1, Other, b"given back");
    match a.t.try_send(m.clone()) {
        Err(SendError::UnknownPeer(back)) => assert_eq!(back, m),
        other => panic!("expected UnknownPeer, got {other:?}"),
    }
    assert_eq!(a.t.stats().dropped_unknown_peer, 3);
    assert_eq!(
        b.t.messages().recv_timeout(300 * MS),
        Err(RecvTimeoutError::Timeout),
        "nothing may reach a removed peer"
    );
    assert!(b.t.proposals().is_empty());

    // Removal does not refuse the removed node's inbound connections (only
    // Reporter::is_id_removed does): its messages arrive, counted as from a
    // non-peer.
    b.t.send([env(1, 2, Other, b"from the removed node")]);
    assert_eq!(
        recv_n(a.t.messages(), 1, 5)[0].payload,
        &b"from the removed node"[..]
    );
    assert_eq!(a.t.stats().non_peers.message_lane.msgs_received, 1);

    // Re-adding dials afresh and delivery resumes.
    let accepted_before = b.t.stats().inbound_accepted;
    a.t.add_peer(2, &[b.t.local_addr()]).unwrap();
    assert_eq!(a.t.peers(), vec![2]);
    wait_connected(&a.t, 2);
    assert_eq!(a.t.active_peers(), vec![2]);
    assert!(
        b.t.stats().inbound_accepted >= accepted_before + 2,
        "the re-added peer must be dialed again on both lanes"
    );
    a.t.send([env(2, 1, Other, b"after"), env(2, 1, Append, b"after")]);
    let got = recv_n(b.t.messages(), 2, 5);
    assert!(got.iter().all(|m| m.payload == b"after"[..]), "{got:?}");
    assert!(b.t.messages().is_empty());
    wait_until("re-added peer counts its sends", 5, || {
        let s = a.t.stats().peer(2);
        s.message_lane.msgs_sent == 1 && s.append_lane.msgs_sent == 1
    });
    assert_eq!(a.t.stats().peer(2).message_lane.dropped(), 0);
}

#[test]
fn remove_peer_closes_its_connections_at_the_remote() {
    let fake = FakePeer::start(FakeMode::Live);
    let a = node(1);
    a.t.add_peer(2, &[fake.addr()]).unwrap();
    wait_connected(&a.t, 2);
    fake.expect_on_both_lanes(FakeEvent::Accepted, 5);
    assert!(
        fake.events.is_empty(),
        "no connection closed before removal"
    );
    let accepts = fake.accepts();

    a.t.remove_peer(2).unwrap();
    fake.expect_on_both_lanes(FakeEvent::Closed, 3);
    // A removed peer is not redialed.
    assert_eq!(
        fake.events.recv_timeout(300 * MS),
        Err(RecvTimeoutError::Timeout)
    );
    assert_eq!(fake.accepts(), accepts, "removed peer was dialed again");
}

// ----- update_peer -----

#[test]
fn update_peer_redirects_to_a_restarted_peer_on_a_new_port() {
    let mut nodes = cluster(&[1, 2]);
    let old2 = nodes.pop().unwrap();
    let a = &nodes[0];
    let old_addr = old2.t.local_addr();
    // Bound while the old node still holds its port, so the port differs.
    let new2 = node(2);
    let new_addr = new2.t.local_addr();
    assert_ne!(old_addr, new_addr);
    new2.t.add_peer(1, &[a.t.local_addr()]).unwrap();

    drain(&a.events);
    old2.t.stop();
    wait_event(&a.events, 5, |e| *e == ReportEvent::Unreachable(2));
    wait_until("lane to the stopped node is down", 5, || {
        a.t.active_since(2).is_none()
    });

    // Before update_peer: nothing reaches the new node 2; every message is
    // dropped as unreachable.
    let n = 20;
    a.t.send((0..n).map(|i| env(2, 1, Other, &num(i))));
    wait_until("pre-update messages counted unreachable", 5, || {
        a.t.stats()
            .peer(2)
            .message_lane
            .dropped_for(DropReason::Unreachable)
            == n
    });
    assert!(new2.t.messages().is_empty());
    assert_eq!(a.t.active_since(2), None);

    a.t.update_peer(2, &[new_addr]).unwrap();
    wait_connected(&a.t, 2);
    a.t.send((100..110).map(|i| env(2, 1, Other, &num(i))));
    let got: Vec<u64> = recv_n(new2.t.messages(), 10, 5)
        .iter()
        .map(num_of)
        .collect();
    assert_eq!(got, (100..110).collect::<Vec<_>>());
    assert!(new2.t.messages().is_empty());
    assert_eq!(new2.t.stats().peer(1).message_lane.msgs_received, 10);
    assert_eq!(a.t.stats().peer(2).message_lane.dropped(), n);
}

// ----- add_remote -----

#[test]
fn add_remote_is_sent_to_but_not_listed_and_add_peer_promotes_it() {
    let nodes = cluster(&[1, 2]);
    let a = &nodes[0];
    let r = node(3);
    // Node 3 dials back so that the link is not one-way (see
    // one_way_link_to_an_idle_remote_stays_up).
    r.t.add_peer(1, &[a.t.local_addr()]).unwrap();
    a.t.add_remote(3, &[r.t.local_addr()]).unwrap();
    wait_connected(&a.t, 3);
    let since3 = a.t.active_since(3).expect("remote is active");
    let since2 = a.t.active_since(2).expect("member is active");
    assert_eq!(a.t.active_peers(), vec![2], "remotes are not listed");
    assert_eq!(a.t.peers(), vec![2, 3]);

    a.t.send([env(3, 1, Append, b"catch up"), env(3, 1, Other, b"vote")]);
    let mut got: Vec<Vec<u8>> = recv_n(r.t.messages(), 2, 5)
        .into_iter()
        .map(|m| m.payload.to_vec())
        .collect();
    got.sort();
    assert_eq!(got, vec![b"catch up".to_vec(), b"vote".to_vec()]);

    // add_remote for an id already present (remote or member) is Ok and
    // changes nothing, not even the addresses.
    a.t.add_remote(3, &[dead_addr()]).unwrap();
    a.t.add_remote(2, &[dead_addr()]).unwrap();
    a.t.send([env(3, 1, Other, b"still there")]);
    a.t.send([env(2, 1, Other, b"still a member")]);
    assert_eq!(recv_n(r.t.messages(), 1, 5)[0].payload, &b"still there"[..]);
    assert_eq!(
        recv_n(nodes[1].t.messages(), 1, 5)[0].payload,
        &b"still a member"[..]
    );
    assert_eq!(a.t.active_since(3), Some(since3));
    assert_eq!(a.t.active_since(2), Some(since2));
    assert_eq!(a.t.active_peers(), vec![2]);
    assert_eq!(a.t.peers(), vec![2, 3]);
    assert_eq!(a.t.stats().peer(3).reconnects, 0);

    // add_peer on a remote promotes it; the connection (same address) stays.
    a.t.add_peer(3, &[r.t.local_addr()]).unwrap();
    wait_until("promoted remote listed", 5, || a.t.active_peers() == [2, 3]);
    assert_eq!(a.t.active_since(3), Some(since3));
    match a.t.add_peer(3, &[r.t.local_addr()]) {
        Err(Error::DuplicatePeer(3)) => {}
        other => panic!("expected DuplicatePeer(3), got {other:?}"),
    }
    a.t.send([env(3, 1, Other, b"member now")]);
    assert_eq!(recv_n(r.t.messages(), 1, 5)[0].payload, &b"member now"[..]);
    assert_eq!(a.t.stats().peer(3).reconnects, 0);
}

// ----- pause / resume -----

#[test]
fn pause_drops_both_ways_and_resume_restores_traffic() {
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let since = a.t.active_since(2).unwrap();
    drain(&a.events);

    a.t.pause(2).unwrap();
    a.t.send((0..10).map(|i| env(2, 1, Other, &num(i))));
    a.t.send([env(2, 1, Append, b"entries")]);
    let s = a.t.stats().peer(2);
    assert_eq!(s.message_lane.dropped_for(DropReason::Paused), 10);
    assert_eq!(s.append_lane.dropped_for(DropReason::Paused), 1);
    assert_eq!(s.message_lane.dropped() + s.append_lane.dropped(), 11);
    wait_event(&a.events, 2, |e| *e == ReportEvent::Unreachable(2));
    let m = env(2, 1, Other, b"try");
    match a.t.try_send(m.clone()) {
        Err(SendError::Paused(back)) => assert_eq!(back, m),
        other => panic!("expected Paused, got {other:?}"),
    }
    assert_eq!(a.t.stats().peer(2).dropped_for(DropReason::Paused), 11);

    // Messages from the paused peer are dropped on receipt and counted.
    b.t.send((0..25).map(|i| env(1, 2, Other, &num(i))));
    b.t.send([env(1, 2, Proposal, b"p"), env(1, 2, Append, b"e")]);
    wait_until("receipts from paused peer dropped", 5, || {
        a.t.stats().peer(2).received_dropped_paused == 27
    });
    assert!(a.t.messages().is_empty() && a.t.proposals().is_empty());
    let s = a.t.stats().peer(2);
    assert_eq!(
        s.message_lane.msgs_received + s.append_lane.msgs_received,
        0
    );
    // The connections stayed up.
    assert_eq!(a.t.active_since(2), Some(since));

    a.t.resume(2).unwrap();
    a.t.send([env(2, 1, Other, b"resumed")]);
    let got = recv_n(b.t.messages(), 1, 5);
    assert_eq!(
        got[0].payload,
        &b"resumed"[..],
        "paused messages must never arrive"
    );
    b.t.send([env(1, 2, Other, b"back")]);
    assert_eq!(recv_n(a.t.messages(), 1, 5)[0].payload, &b"back"[..]);
    let s = a.t.stats().peer(2);
    assert_eq!(s.message_lane.msgs_received, 1);
    assert_eq!(s.received_dropped_paused, 27);
    assert!(b.t.messages().is_empty() && a.t.messages().is_empty());
}

// ----- active_since / active_peers -----

#[test]
fn active_since_tracks_the_message_lane_and_clears_when_the_peer_stops() {
    let a = node(1);
    assert_eq!(a.t.active_since(2), None);
    assert!(a.t.active_peers().is_empty());

    a.t.add_peer(2, &[dead_addr()]).unwrap();
    wait_until("a failed dial", 5, || {
        a.t.stats().peer(2).last_error.is_some()
    });
    assert_eq!(a.t.active_since(2), None);
    assert!(a.t.active_peers().is_empty());
    assert_eq!(a.t.peers(), vec![2]);

    let b = node(2);
    b.t.add_peer(1, &[a.t.local_addr()]).unwrap();
    let before = Instant::now();
    a.t.update_peer(2, &[b.t.local_addr()]).unwrap();
    wait_until("message lane up", 5, || a.t.active_since(2).is_some());
    let since = a.t.active_since(2).unwrap();
    assert!(since >= before && since <= Instant::now());
    assert_eq!(a.t.active_peers(), vec![2]);
    let s = a.t.stats().peer(2);
    assert_eq!(s.active_since, Some(since));
    assert_eq!(s.message_lane.connected_since, Some(since));

    b.t.stop();
    let stopped = Instant::now();
    wait_until("active_since cleared", 3, || a.t.active_since(2).is_none());
    let took = stopped.elapsed();
    let read_timeout = a.t.config().read_timeout;
    assert!(
        took <= read_timeout + 100 * MS,
        "active_since cleared {took:?} after the peer stopped"
    );
    assert!(a.t.active_peers().is_empty());
    assert_eq!(a.t.stats().peer(2).active_since, None);
}

#[test]
fn active_since_clears_after_the_read_timeout_when_the_peer_goes_silent() {
    let fake = FakePeer::start(FakeMode::AcceptThenSilent);
    let a = node(1);
    a.t.add_peer(2, &[fake.addr()]).unwrap();
    wait_connected(&a.t, 2);
    let since = a.t.active_since(2).unwrap();
    assert_eq!(a.t.active_peers(), vec![2]);
    drain(&a.events);

    wait_until("read timeout closes the silent lane", 3, || {
        a.t.active_since(2).is_none()
    });
    let after = since.elapsed();
    let last_error = a.t.stats().peer(2).last_error.unwrap_or_default();
    let read_timeout = a.t.config().read_timeout;
    assert!(
        after + 10 * MS >= read_timeout,
        "closed {after:?} after connecting, before the read timeout"
    );
    assert!(
        after <= read_timeout + 250 * MS,
        "closed only {after:?} after connecting ({last_error})"
    );
    assert!(
        last_error.contains("read_timeout"),
        "last_error: {last_error:?}"
    );
    assert!(a.t.active_peers().is_empty());
    wait_event(&a.events, 2, |e| *e == ReportEvent::Unreachable(2));
}

#[test]
fn idle_cluster_stays_connected_past_the_read_timeout() {
    // Link heartbeats alone must keep idle connections up: active_since
    // stays the same instant on both sides and nothing reconnects.
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let since_a = a.t.active_since(2).unwrap();
    let since_b = b.t.active_since(1).unwrap();
    let read_timeout = a.t.config().read_timeout;
    holds_for("the idle two-way link", 3 * read_timeout, || {
        let (sa, sb) = (a.t.stats().peer(2), b.t.stats().peer(1));
        if a.t.active_since(2) != Some(since_a)
            || b.t.active_since(1) != Some(since_b)
            || sa.reconnects + sb.reconnects != 0
        {
            return Err(format!(
                "1->2 active_since {:?}, last error {:?}; 2->1 active_since {:?}, \
                 last error {:?}; reconnects {} / {}",
                a.t.active_since(2),
                sa.last_error,
                b.t.active_since(1),
                sb.last_error,
                sa.reconnects,
                sb.reconnects
            ));
        }
        Ok(())
    });
    assert_eq!(a.t.active_peers(), vec![2]);
    assert_eq!(b.t.active_peers(), vec![1]);
}

#[test]
fn one_way_link_to_an_idle_remote_stays_up() {
    // Node 3 knows nobody: only node 1 dials, and nothing but link
    // heartbeats crosses. The link must stay up well past the read timeout.
    let a = node(1);
    let r = node(3);
    a.t.add_remote(3, &[r.t.local_addr()]).unwrap();
    wait_connected(&a.t, 3);
    let since = a.t.active_since(3).unwrap();
    let read_timeout = a.t.config().read_timeout;
    holds_for("the idle one-way link", 3 * read_timeout, || {
        let s = a.t.stats().peer(3);
        if a.t.active_since(3) != Some(since) || s.reconnects != 0 {
            return Err(format!(
                "active_since {:?} (was {since:?}), {} reconnects, last error {:?}",
                a.t.active_since(3),
                s.reconnects,
                s.last_error
            ));
        }
        Ok(())
    });
    assert_eq!(r.t.stats().inbound_accepted, 2);
}

// ----- unknown peer, self -----

#[test]
fn unknown_peer_and_self_are_dropped_counted_and_not_reported() {
    let nodes = cluster(&[1, 2]);
    let a = &nodes[0];
    drain(&a.events);

    a.t.send([
        env(9, 1, Other, b"a"),
        env(9, 1, Append, b"b"),
        env(9, 1, Proposal, b"c"),
    ]);
    a.t.send([env(1, 1, Other, b"me"), env(1, 1, Append, b"me")]);
    let s = a.t.stats();
    assert_eq!(s.dropped_unknown_peer, 3);
    assert_eq!(s.dropped_to_self, 2);
    assert!(!s.peers.contains_key(&9));
    assert_eq!(s.peer(2).dropped_for(DropReason::UnknownPeer), 0);

    let m = env(9, 1, Other, b"unknown");
    match a.t.try_send(m.clone()) {
        Err(SendError::UnknownPeer(back)) => assert_eq!(back, m),
        other => panic!("expected UnknownPeer, got {other:?}"),
    }
    let m = env(1, 1, Proposal, b"self");
    match a.t.try_send(m.clone()) {
        Err(SendError::ToSelf(back)) => assert_eq!(back, m),
        other => panic!("expected ToSelf, got {other:?}"),
    }
    let s = a.t.stats();
    assert_eq!((s.dropped_unknown_peer, s.dropped_to_self), (3, 2));

    assert_eq!(
        a.events.recv_timeout(300 * MS),
        Err(RecvTimeoutError::Timeout),
        "unknown-peer and to-self drops are not reported"
    );
    assert!(a.t.messages().is_empty() && a.t.proposals().is_empty());
    assert!(nodes[1].t.messages().is_empty());
}

// ----- queue full -----

#[test]
fn burst_to_an_unreachable_peer_counts_drops_and_coalesces_reports() {
    let mut cfg = config(1);
    cfg.send_queue_len = 4;
    let interval = cfg.unreachable_report_interval;
    let a = start(cfg);
    a.t.add_peer(2, &[dead_addr()]).unwrap();
    let batch: Vec<Envelope> = (0..250).map(|i| env(2, 1, Other, &num(i))).collect();

    let window = 300 * MS;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut reports = 0u64;
    let mut count = |e: ReportEvent| {
        assert_eq!(e, ReportEvent::Unreachable(2));
        reports += 1;
    };
    while started.elapsed() < window {
        a.t.send(batch.iter().cloned());
        sent += batch.len() as u64;
        a.events.try_iter().for_each(&mut count);
    }
    a.events.try_iter().for_each(&mut count);
    let elapsed = started.elapsed();
    let most = (elapsed.as_nanos() / interval.as_nanos()) as u64 + 1;
    assert!(sent >= 2000, "only {sent} messages sent in the burst");
    assert!(
        (1..=most).contains(&reports),
        "{reports} unreachable reports in {elapsed:?} for {sent} sends \
         (expected 1..={most} at one per {interval:?})"
    );

    // Every message is accounted for: refused by the full queue, or
    // dequeued and dropped because the peer cannot be reached.
    wait_until("every message counted as dropped", 5, || {
        a.t.stats().peer(2).message_lane.dropped() == sent
    });
    let s = a.t.stats().peer(2).message_lane;
    assert!(s.dropped_for(DropReason::QueueFull) > 0, "{s:?}");
    assert_eq!(
        s.dropped_for(DropReason::QueueFull) + s.dropped_for(DropReason::Unreachable),
        sent,
        "{s:?}"
    );
    assert_eq!(s.queued_bytes, 0);
    assert_eq!(s.msgs_sent, 0);
}

#[test]
fn try_send_gives_the_message_back_when_the_queue_is_full() {
    let fake = FakePeer::start(FakeMode::Mute);
    let mut cfg = config(1);
    cfg.send_queue_len = 4;
    let a = start(cfg);
    a.t.add_peer(2, &[fake.addr()]).unwrap();
    // Both lanes connected at the TCP level: batches are held from now on.
    wait_until("both lanes dialed", 5, || fake.accepts() >= 2);

    let queued = fill_until_full(&a.t, 2, 8);
    assert!(queued >= 4, "only {queued} queued before Full");
    let s = a.t.stats().peer(2);
    assert_eq!(
        s.dropped_for(DropReason::QueueFull),
        0,
        "a refused try_send is not a drop"
    );
    assert!(s.message_lane.queued_bytes > 0);
    // The lanes are independent: the append lane still has room.
    a.t.try_send(env(2, 1, Append, b"entries")).unwrap();

    // `send` into the full queue drops, counts and reports.
    drain(&a.events);
    a.t.send((0..100).map(|i| env(2, 1, Other, &num(i))));
    assert!(
        a.t.stats()
            .peer(2)
            .message_lane
            .dropped_for(DropReason::QueueFull)
            > 0
    );
    wait_event(&a.events, 2, |e| *e == ReportEvent::Unreachable(2));

    // Removing the peer drops what is still queued or held for it, and
    // says so: the peer's entry leaves stats(), its drops stay counted.
    let s = a.t.stats().peer(2);
    // Accepted: the try_sends, the append, and the burst minus its drops.
    let accepted = queued + 1 + 100 - s.dropped_for(DropReason::QueueFull);
    let pending = accepted
        - s.message_lane.msgs_sent
        - s.append_lane.msgs_sent
        - s.dropped_for(DropReason::Unreachable);
    a.t.remove_peer(2).unwrap();
    let after = a.t.stats();
    assert!(!after.peers.contains_key(&2));
    assert_eq!(
        after.dropped_removed, pending,
        "every queued or held message counted: queued {queued}, before removal {s:?}"
    );
}

#[test]
fn try_send_reports_full_at_the_byte_bound() {
    let fake = FakePeer::start(FakeMode::Mute);
    let mut cfg = config(1);
    cfg.send_queue_len = 10_000;
    cfg.message_queue_bytes = 1000;
    let a = start(cfg);
    a.t.add_peer(2, &[fake.addr()]).unwrap();
    wait_until("both lanes dialed", 5, || fake.accepts() >= 2);

    let queued = fill_until_full(&a.t, 2, 200);
    assert!(queued >= 1, "an empty queue takes a message");
    assert!(
        queued < 1000,
        "{queued} messages of 217 bytes queued under a 1000-byte bound"
    );
    let q = a.t.stats().peer(2).message_lane.queued_bytes;
    assert!(q > 0 && q <= 1000, "queued_bytes {q} outside the bound");
}

// ----- API misuse -----

#[test]
fn api_misuse_returns_typed_errors() {
    let mut bad = config(1);
    bad.node_id = 0;
    match Transport::<Envelope>::start(bad, NoopReporter) {
        Err(Error::Config(e)) => assert_eq!(e.field, "node_id"),
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(_) => panic!("node_id 0 was accepted"),
    }
    let mut bad = config(1);
    bad.read_timeout = bad.heartbeat_interval;
    match Transport::<Envelope>::start(bad, NoopReporter) {
        Err(Error::Config(e)) => assert_eq!(e.field, "read_timeout"),
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(_) => panic!("read_timeout below two heartbeats was accepted"),
    }

    let a = node(1);
    let none: &[SocketAddr] = &[];
    match a.t.add_peer(2, none) {
        Err(Error::NoAddresses { peer: 2 }) => {}
        other => panic!("expected NoAddresses, got {other:?}"),
    }
    match a.t.add_peer(2, &["not an address"]) {
        Err(Error::BadAddress { peer: 2, addr, .. }) => assert_eq!(addr, "not an address"),
        other => panic!("expected BadAddress, got {other:?}"),
    }
    match a.t.add_remote(2, &["127.0.0.1:99999"]) {
        Err(Error::BadAddress { peer: 2, addr, .. }) => assert_eq!(addr, "127.0.0.1:99999"),
        other => panic!("expected BadAddress, got {other:?}"),
    }
    assert!(a.t.peers().is_empty(), "a failed add must add nothing");
    for id in [0, 1] {
        match a.t.add_peer(id, &[dead_addr()]) {
            Err(Error::InvalidPeerId(got)) => assert_eq!(got, id),
            other => panic!("expected InvalidPeerId({id}), got {other:?}"),
        }
        match a.t.add_remote(id, &[dead_addr()]) {
            Err(Error::InvalidPeerId(got)) => assert_eq!(got, id),
            other => panic!("expected InvalidPeerId({id}), got {other:?}"),
        }
    }

    let addr2 = dead_addr();
    a.t.add_peer(2, &[addr2]).unwrap();
    match a.t.add_peer(2, &[addr2]) {
        Err(Error::DuplicatePeer(2)) => {}
        other => panic!("expected DuplicatePeer(2), got {other:?}"),
    }
    match a.t.update_peer(2, none) {
        Err(Error::NoAddresses { peer: 2 }) => {}
        other => panic!("expected NoAddresses, got {other:?}"),
    }
    match a.t.update_peer(2, &["nowhere"]) {
        Err(Error::BadAddress { peer: 2, .. }) => {}
        other => panic!("expected BadAddress, got {other:?}"),
    }

    let unknown: [(&str, u64, Result<(), Error>); 5] = [
        ("remove_peer", 9, a.t.remove_peer(9)),
        ("update_peer", 9, a.t.update_peer(9, &[dead_addr()])),
        ("pause", 9, a.t.pause(9)),
        ("resume", 9, a.t.resume(9)),
        ("remove_peer twice", 2, {
            a.t.remove_peer(2).unwrap();
            a.t.remove_peer(2)
        }),
    ];
    for (call, id, r) in unknown {
        match r {
            Err(Error::UnknownPeer(got)) => assert_eq!(got, id, "{call}"),
            other => panic!("{call}: expected UnknownPeer({id}), got {other:?}"),
        }
    }
    assert!(a.t.peers().is_empty());
    assert!(!a.t.is_stopped());
}

#[test]
fn every_call_after_stop_returns_stopped() {
    let nodes = cluster(&[1, 2]);
    let a = &nodes[0];
    a.t.stop();
    a.t.stop(); // idempotent
    assert!(a.t.is_stopped());
    let addr = nodes[1].t.local_addr();
    let calls: [(&str, Result<(), Error>); 7] = [
        ("add_peer", a.t.add_peer(3, &[addr])),
        ("add_remote", a.t.add_remote(3, &[addr])),
        ("remove_peer", a.t.remove_peer(2)),
        ("update_peer", a.t.update_peer(2, &[addr])),
        ("pause", a.t.pause(2)),
        ("resume", a.t.resume(2)),
        ("add_peer invalid", a.t.add_peer(0, &[addr])),
    ];
    for (call, r) in calls {
        match r {
            Err(Error::Stopped) => {}
            other => panic!("{call} after stop: expected Stopped, got {other:?}"),
        }
    }
    for to in [2, 9, 1] {
        let m = env(to, 1, Other, b"late");
        match a.t.try_send(m.clone()) {
            Err(SendError::Stopped(back)) => assert_eq!(back, m),
            other => panic!("try_send to {to} after stop: expected Stopped, got {other:?}"),
        }
    }
    assert_eq!(a.t.active_since(2), None);
    assert!(a.t.active_peers().is_empty());
    assert_eq!(a.t.peers(), vec![2], "peers stay listed for stats");
    assert!(nodes[1].t.messages().is_empty());
}

/// `Stats::dropped_stopped` is documented as "Messages dropped by `send`
/// after `stop`": every such message, whatever its `to`.
#[test]
fn send_after_stop_counts_every_message_in_dropped_stopped() {
    let nodes = cluster(&[1, 2]);
    let a = &nodes[0];
    a.t.stop();
    drain(&a.events);
    a.t.send([env(9, 1, Other, b"unknown")]);
    a.t.send([env(1, 1, Other, b"self")]);
    a.t.send([env(2, 1, Other, b"peer"), env(2, 1, Append, b"peer")]);
    let s = a.t.stats();
    assert_eq!(s.dropped_unknown_peer, 0);
    assert_eq!(s.dropped_to_self, 0);
    assert!(a.events.is_empty(), "drops after stop are not reported");
    assert_eq!(
        s.dropped_stopped,
        4,
        "send after stop to a known peer is not in dropped_stopped \
         (per-peer drops: {:?} / {:?})",
        s.peer(2).message_lane.drops,
        s.peer(2).append_lane.drops
    );
}

// ----- concurrent senders -----

#[test]
fn concurrent_senders_through_clones_deliver_everything_in_order() {
    fn handle_is<T: Clone + Send + Sync + 'static>() {}
    handle_is::<Transport<Envelope>>();

    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 1000;
    let nodes = cluster(&[1, 2]);
    let senders: Vec<_> = (0..THREADS)
        .map(|th| {
            let t = nodes[0].t.clone();
            std::thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    let mut p = th.to_be_bytes().to_vec();
                    p.extend_from_slice(&seq.to_be_bytes());
                    let m = Envelope::new(2, 1, Other, p);
                    if th % 2 == 0 {
                        t.send([m]);
                    } else {
                        // 4000 messages fit the default queue of 4096.
                        t.try_send(m).expect("queue has room");
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread");
    }
    assert!(!nodes[0].t.is_stopped(), "dropping clones must not stop it");

    let got = recv_n(nodes[1].t.messages(), (THREADS * PER_THREAD) as usize, 10);
    let mut per_thread = vec![Vec::new(); THREADS as usize];
    for m in &got {
        assert_eq!((m.to, m.from, m.class), (2, 1, Other));
        let th = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
        let seq = u64::from_be_bytes(m.payload[8..16].try_into().unwrap());
        per_thread[th as usize].push(seq);
    }
    for (th, seqs) in per_thread.iter().enumerate() {
        assert_eq!(
            *seqs,
            (0..PER_THREAD).collect::<Vec<_>>(),
            "thread {th}'s messages out of order or missing"
        );
    }
    assert!(nodes[1].t.messages().is_empty());
    wait_until("all counted as sent", 5, || {
        nodes[0].t.stats().peer(2).message_lane.msgs_sent == THREADS * PER_THREAD
    });
    assert_eq!(nodes[0].t.stats().peer(2).message_lane.dropped(), 0);
    assert_eq!(
        nodes[1].t.stats().peer(1).message_lane.msgs_received,
        THREADS * PER_THREAD
    );
}

#[test]
fn removing_a_peer_closes_its_inbound_connections_so_a_removed_member_is_refused() {
    let nodes = cluster(&[1, 2]);
    // Node 1 learns that 2 was removed, and forgets it.
    nodes[0].reporter.mark_removed(2);
    nodes[0].t.remove_peer(2).unwrap();
    // Node 2's open connections to node 1 were closed; its redials are
    // refused as a removed member.
    wait_event(&nodes[1].events, 5, |e| {
        *e == ReportEvent::Rejected(1, raftwire::RejectReason::RemovedMember)
    });
    assert!(nodes[1].t.active_since(1).is_none());
    nodes[1].t.send([env(1, 2, Other, b"ignored")]);
    assert!(
        nodes[0]
            .t
            .messages()
            .recv_timeout(Duration::from_millis(300))
            .is_err()
    );
    assert!(nodes[0].t.stats().inbound_rejected >= 1);
}

#[test]
fn update_peer_with_the_same_addresses_keeps_the_connections() {
    let nodes = cluster(&[1, 2]);
    let since = nodes[0].t.active_since(2).unwrap();
    nodes[0]
        .t
        .update_peer(2, &[nodes[1].t.local_addr()])
        .unwrap();
    // The loop handles the update before this message: a reconnect would
    // have shown by the time it arrives.
    nodes[0].t.send([env(2, 1, Other, b"after")]);
    assert_eq!(
        recv_n(nodes[1].t.messages(), 1, 5)[0].payload,
        &b"after"[..]
    );
    assert_eq!(nodes[0].t.active_since(2), Some(since));
    let s = nodes[0].t.stats().peer(2);
    assert_eq!((s.reconnects, s.message_lane.dropped()), (0, 0));
}
