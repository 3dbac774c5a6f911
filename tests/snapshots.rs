//! Snapshots over real sockets: streamed, verified, constant memory, and
//! every send ends in exactly one report.
// Plays peers by hand with the wire codec (raftwire::testing::wire).
#![cfg(feature = "testing")]

mod common;
use common::*;
use raftwire::{Envelope, MessageClass, ReportEvent, SnapshotStatus, Transport};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// `len` bytes of a position-dependent pattern, generated on the fly.
struct Pattern {
    pos: u64,
    len: u64,
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte_at(self.pos + k as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn pattern(len: u64) -> Pattern {
    Pattern { pos: 0, len }
}

/// Reads a snapshot to its end, checking every byte against the pattern.
fn read_and_check(r: &mut impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(at);
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, byte_at(at + k as u64), "byte {} differs", at + k as u64);
        }
        at += n as u64;
    }
}

/// The next snapshot arriving at `n` (failing after 5 s).
fn next_snapshot(n: &Node) -> raftwire::snapshot::IncomingSnapshot<Envelope> {
    n.t.snapshots()
        .recv_timeout(Duration::from_secs(5))
        .expect("a snapshot arrives")
}

fn snapshot_msg(to: u64, from: u64) -> Envelope {
    Envelope::new(to, from, MessageClass::Snapshot, b"snapshot meta".to_vec())
}

/// Node `from` starts sending node `to` a snapshot of `size` bytes of the
/// pattern.
fn send_pattern(from: &Node, to: u64, size: u64) {
    from.t
        .send_snapshot(snapshot_msg(to, from.t.node_id()), pattern(size), size)
        .unwrap();
}

/// Starts a 64 MiB snapshot from node 1 to node 2 of a connected pair and
/// reads its first MiB at node 2: returns the snapshot in mid-stream.
fn snapshot_in_mid_stream(nodes: &[Node]) -> raftwire::snapshot::IncomingSnapshot<Envelope> {
    send_pattern(&nodes[0], 2, 64 << 20);
    let mut inc = next_snapshot(&nodes[1]);
    let mut buf = vec![0u8; 1 << 20];
    inc.data.read_exact(&mut buf).unwrap();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == byte_at(i as u64)),
        "the first MiB differs"
    );
    inc
}

/// Collects snapshot reports for `peer` until `quiet` passes with none
/// new, after at least one arrived (or `secs` pass).
fn snapshot_reports(
    events: &crossbeam_channel::Receiver<ReportEvent>,
    peer: u64,
    secs: u64,
) -> Vec<SnapshotStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    loop {
        let wait = if got.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(300)
        };
        match events.recv_timeout(wait) {
            Ok(ReportEvent::Snapshot(p, s)) if p == peer => got.push(s),
            Ok(_) => {}
            Err(_) => return got,
        }
    }
}

fn snap_threads(t: &Transport<Envelope>) -> usize {
    live_threads(&format!("{}snap", t.thread_name_prefix())).len()
}

#[test]
fn a_streamed_snapshot_arrives_intact_and_is_reported_once() {
    let nodes = cluster(&[1, 2]);
    let size = 10 << 20;
    send_pattern(&nodes[0], 2, size);
    let mut inc = next_snapshot(&nodes[1]);
    assert_eq!(inc.message, snapshot_msg(2, 1));
    assert_eq!(inc.size, size);
    assert_eq!(read_and_check(&mut inc.data).unwrap(), size);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Finish]
    );
    let s = nodes[0].t.stats().peer(2);
    assert_eq!((s.snapshots_sent, s.snapshots_send_failed), (1, 0));
    assert_eq!(nodes[1].t.stats().peer(1).snapshots_received, 1);
    wait_until("snapshot thread gone", 5, || snap_threads(&nodes[0].t) == 0);
    wait_settled(&nodes);
    // Empty snapshots work too.
    send_pattern(&nodes[0], 2, 0);
    let mut inc = next_snapshot(&nodes[1]);
    assert_eq!(inc.size, 0);
    assert_eq!(read_and_check(&mut inc.data).unwrap(), 0);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Finish]
    );
}

#[test]
fn snapshots_arrive_intact_through_small_socket_buffers_and_odd_chunk_sizes() {
    // 4 KiB kernel buffers cut every chunk frame into many short reads; the
    // chunk sizes put frames just under, at and over a read, and well over.
    for chunk in [64 << 10, (64 << 10) - 12, (64 << 10) - 11, 300_001] {
        let nodes = cluster_with(&[1, 2], |c| {
            small_socket_buffers(c);
            c.snapshot_chunk_len = chunk;
        });
        let size = 3 << 20;
        send_pattern(&nodes[0], 2, size);
        let mut inc = next_snapshot(&nodes[1]);
        assert_eq!(
            read_and_check(&mut inc.data).unwrap(),
            size,
            "chunk {chunk}"
        );
        assert_eq!(
            snapshot_reports(&nodes[0].events, 2, 5),
            vec![SnapshotStatus::Finish],
            "chunk {chunk}"
        );
        assert_eq!(nodes[1].t.stats().protocol_errors, 0);
    }
}

#[test]
fn an_inline_snapshot_message_takes_the_snapshot_path() {
    let nodes = cluster(&[1, 2]);
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| byte_at(i as u64)).collect();
    let m = Envelope::new(2, 1, MessageClass::Snapshot, payload);
    nodes[0].t.send([m.clone()]);
    let got = recv_n(nodes[1].t.messages(), 1, 5);
    assert_eq!(got, vec![m]);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Finish]
    );
    let s = nodes[0].t.stats().peer(2);
    // Not on the message or append lanes.
    assert_eq!(s.message_lane.msgs_sent + s.append_lane.msgs_sent, 0);
    assert_eq!(s.snapshots_sent, 1);
}

#[test]
fn wrong_sizes_fail_with_exactly_one_report() {
    let nodes = cluster(&[1, 2]);
    // Short: the data ends before the announced size. Long: it goes on
    // past it. The sender may fail before the receiver has seen anything;
    // if the receiver has seen the start, its reader must fail too.
    for (len, announced) in [(1000u64, 5000u64), (3 << 20, 2 << 20)] {
        nodes[0]
            .t
            .send_snapshot(snapshot_msg(2, 1), pattern(len), announced)
            .unwrap();
        assert_eq!(
            snapshot_reports(&nodes[0].events, 2, 5),
            vec![SnapshotStatus::Failure],
            "{len} bytes announced as {announced}"
        );
        if let Ok(mut inc) = nodes[1]
            .t
            .snapshots()
            .recv_timeout(Duration::from_millis(500))
        {
            assert!(read_and_check(&mut inc.data).is_err());
        }
    }
    let s = nodes[0].t.stats().peer(2);
    assert_eq!((s.snapshots_sent, s.snapshots_send_failed), (0, 2));
    assert!(s.last_error.unwrap().contains("announced"));
    assert_eq!(nodes[1].t.stats().peer(1).snapshots_received, 0);
    wait_until("snapshot threads gone", 5, || {
        snap_threads(&nodes[0].t) == 0
    });
}

/// A TCP proxy that flips one byte once `after` bytes have passed from the
/// client to the server.
fn corrupting_proxy(target: std::net::SocketAddr, after: u64) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(target) else {
                return;
            };
            let mut back_c = client.try_clone().unwrap();
            let mut back_s = server.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = io::copy(&mut back_s, &mut back_c);
                let _ = back_c.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut seen = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if seen <= after && after < seen + n as u64 {
                        buf[(after - seen) as usize] ^= 0x20;
                    }
                    seen += n as u64;
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_corrupted_chunk_fails_the_snapshot() {
    let n1 = node(1);
    let n2 = node(2);
    n2.t.add_peer(1, &[n1.t.local_addr()]).unwrap();
    // Lanes and snapshots from 1 to 2 go through the proxy; flip a byte
    // 2 MB into the stream (inside the snapshot's data).
    let proxy = corrupting_proxy(n2.t.local_addr(), 2_000_000);
    n1.t.add_peer(2, &[proxy]).unwrap();
    wait_connected(&n1.t, 2);
    send_pattern(&n1, 2, 8 << 20);
    let mut inc = next_snapshot(&n2);
    let err = read_and_check(&mut inc.data).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(
        snapshot_reports(&n1.events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    assert!(n2.t.stats().peer(1).protocol_errors >= 1);
    // The bad checksum closed only the snapshot connection.
    n1.t.send([env(2, 1, MessageClass::Other, b"still here")]);
    assert_eq!(recv_n(n2.t.messages(), 1, 5)[0].payload, &b"still here"[..]);
}

#[test]
fn receiver_stopped_mid_stream_fails_the_snapshot() {
    let nodes = cluster(&[1, 2]);
    let mut inc = snapshot_in_mid_stream(&nodes);
    nodes[1].t.stop();
    // The reader fails too, with a clear error rather than a hang.
    assert!(read_and_check(&mut inc.data).is_err());
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    wait_until("snapshot thread gone", 5, || snap_threads(&nodes[0].t) == 0);
}

#[test]
fn sender_stopped_mid_stream_reports_failure_once() {
    let nodes = cluster(&[1, 2]);
    let mut inc = snapshot_in_mid_stream(&nodes);
    let t0 = Instant::now();
    nodes[0].t.stop();
    assert!(t0.elapsed() < Duration::from_secs(1));
    wait_until("snapshot thread gone", 2, || snap_threads(&nodes[0].t) == 0);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 2),
        vec![SnapshotStatus::Failure]
    );
    let err = read_and_check(&mut inc.data).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(nodes[1].t.stats().peer(1).snapshots_receive_failed, 1);
}

#[test]
fn a_receiver_that_stops_reading_fails_the_snapshot_after_the_progress_timeout() {
    let mut c1 = config(1);
    c1.snapshot_progress_timeout = Duration::from_millis(500);
    let nodes = vec![start(c1), node(2)];
    connect_all(&nodes);
    let t0 = Instant::now();
    send_pattern(&nodes[0], 2, 256 << 20);
    let inc = next_snapshot(&nodes[1]);
    // Hold the reader without reading.
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    let took = t0.elapsed();
    println!("stalled receiver detected after {took:?}");
    assert!(took >= Duration::from_millis(500));
    // Found by the sender's progress timer or by its connection's write
    // timer (the same timeout on a snapshot connection).
    let why = nodes[0].t.stats().peer(2).last_error.unwrap();
    assert!(why.contains("progress") || why.contains("stalled"), "{why}");
    drop(inc);
    // Messages kept flowing.
    nodes[0].t.send([env(2, 1, MessageClass::Other, b"ok")]);
    assert_eq!(recv_n(nodes[1].t.messages(), 1, 5)[0].payload, &b"ok"[..]);
}

#[test]
fn the_concurrency_limit_fails_the_extra_snapshot_at_once() {
    let mut c1 = config(1);
    c1.max_outgoing_snapshots = 2;
    let nodes = vec![start(c1), node(2)];
    connect_all(&nodes);
    let size = 4 << 20;
    for _ in 0..3 {
        send_pattern(&nodes[0], 2, size);
    }
    // The third fails at once, before anything is read.
    let first = wait_event(&nodes[0].events, 5, |e| {
        matches!(e, ReportEvent::Snapshot(..))
    });
    assert_eq!(first, ReportEvent::Snapshot(2, SnapshotStatus::Failure));
    for _ in 0..2 {
        let mut inc = next_snapshot(&nodes[1]);
        assert_eq!(read_and_check(&mut inc.data).unwrap(), size);
    }
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Finish, SnapshotStatus::Finish]
    );
    wait_settled(&nodes);
    // The receiving side has a limit too.
    let mut c2 = config(2);
    c2.max_incoming_snapshots = 1;
    let nodes = vec![node(1), start(c2)];
    connect_all(&nodes);
    send_pattern(&nodes[0], 2, size);
    let held = next_snapshot(&nodes[1]);
    send_pattern(&nodes[0], 2, size);
    let refused = wait_event(&nodes[0].events, 5, |e| {
        matches!(e, ReportEvent::Snapshot(..))
    });
    assert_eq!(refused, ReportEvent::Snapshot(2, SnapshotStatus::Failure));
    drop(held);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
}

#[test]
fn snapshots_to_unknown_or_paused_peers_fail_with_one_report() {
    let nodes = cluster(&[1, 2]);
    send_pattern(&nodes[0], 9, 10);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 9, 5),
        vec![SnapshotStatus::Failure]
    );
    nodes[0].t.pause(2).unwrap();
    send_pattern(&nodes[0], 2, 10);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    nodes[0].t.stop();
    assert!(matches!(
        nodes[0]
            .t
            .send_snapshot(snapshot_msg(2, 1), pattern(10), 10),
        Err(raftwire::Error::Stopped)
    ));
}

/// Both nodes of a connected pair hold exactly their four lane connections
/// again: no snapshot connection was leaked.
fn wait_settled(nodes: &[Node]) {
    for n in nodes {
        wait_until("only the lane connections left", 5, || {
            n.t.stats().connections == 4
        });
    }
}

/// A hand-made snapshot sender: connects to `to` as node `from` on the
/// snapshot lane and returns the stream after the accept.
fn raw_snapshot_conn(to: &Node, from: u64) -> TcpStream {
    use raftwire::testing::wire::{Hello, Lane, RESPONSE_LEN, Response};
    let mut s = TcpStream::connect(to.t.local_addr()).unwrap();
    s.write_all(&Hello::new(Lane::Snapshot, 7, from, to.t.node_id()).encode())
        .unwrap();
    let mut r = [0u8; RESPONSE_LEN];
    s.read_exact(&mut r).unwrap();
    assert_eq!(Response::decode(&r), Some(Ok(Response::Accept)));
    s
}

fn frame(kind: raftwire::testing::wire::FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    raftwire::testing::wire::encode_frame(&mut out, kind, u32::MAX, |b| {
        b.extend_from_slice(payload)
    })
    .unwrap();
    out
}

fn begin(size: u64, msg: &Envelope) -> Vec<u8> {
    use raftwire::Message;
    let mut p = Vec::new();
    raftwire::testing::wire::SnapshotBegin {
        size,
        inline: false,
    }
    .encode(&mut p, |b| msg.encode(b));
    frame(raftwire::testing::wire::FrameKind::SnapshotBegin, &p)
}

/// Reads frames until a snapshot ack arrives; returns its status.
fn read_ack(s: &mut TcpStream) -> raftwire::testing::wire::AckStatus {
    use raftwire::testing::wire::{AckStatus, Deframer, FrameKind};
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut d = Deframer::new(1);
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the ack");
        let mut c = d.feed(&buf[..n]);
        while let Some(f) = c.next() {
            let f = f.unwrap();
            if f.kind == FrameKind::SnapshotAck {
                return AckStatus::decode(f.payload).unwrap();
            }
        }
    }
}

#[test]
fn the_receiver_verifies_the_whole_snapshot_checksum_and_size() {
    use raftwire::testing::wire::{AckStatus, FrameKind, SnapshotEnd};
    let n2 = node(2);
    for (declared_end, want) in [
        (
            SnapshotEnd {
                size: 5,
                crc: crc32c::crc32c(b"hellO"),
            },
            AckStatus::ChecksumMismatch,
        ),
        (
            SnapshotEnd {
                size: 4,
                crc: crc32c::crc32c(b"hello"),
            },
            AckStatus::SizeMismatch,
        ),
        (
            SnapshotEnd {
                size: 5,
                crc: crc32c::crc32c(b"hello"),
            },
            AckStatus::Ok,
        ),
    ] {
        let mut s = raw_snapshot_conn(&n2, 1);
        s.write_all(&begin(5, &snapshot_msg(2, 1))).unwrap();
        s.write_all(&frame(FrameKind::SnapshotChunk, b"hel"))
            .unwrap();
        s.write_all(&frame(FrameKind::SnapshotChunk, b"lo"))
            .unwrap();
        s.write_all(&frame(FrameKind::SnapshotEnd, &declared_end.encode()))
            .unwrap();
        let mut inc = next_snapshot(&n2);
        let mut data = Vec::new();
        let r = inc.data.read_to_end(&mut data);
        assert_eq!(read_ack(&mut s), want);
        if want == AckStatus::Ok {
            assert_eq!(data, b"hello");
            r.unwrap();
        } else {
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
    }
    let s = n2.t.stats().non_peers;
    assert_eq!((s.snapshots_received, s.snapshots_receive_failed), (1, 2));
}

#[test]
fn the_receiver_times_out_a_sender_that_stalls() {
    use raftwire::testing::wire::{AckStatus, FrameKind};
    let mut c2 = config(2);
    c2.snapshot_progress_timeout = Duration::from_millis(300);
    let n2 = start(c2);
    let mut s = raw_snapshot_conn(&n2, 1);
    s.write_all(&begin(1000, &snapshot_msg(2, 1))).unwrap();
    s.write_all(&frame(FrameKind::SnapshotChunk, &[7; 100]))
        .unwrap();
    let mut inc = next_snapshot(&n2);
    let t0 = Instant::now();
    let mut data = Vec::new();
    let err = inc.data.read_to_end(&mut data).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(data.len(), 100);
    assert_eq!(read_ack(&mut s), AckStatus::Timeout);
}

#[test]
fn removing_the_peer_fails_its_snapshot() {
    let nodes = cluster(&[1, 2]);
    send_pattern(&nodes[0], 2, 64 << 20);
    let inc = next_snapshot(&nodes[1]);
    nodes[0].t.remove_peer(2).unwrap();
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    drop(inc);
    wait_until("no connections left at node 1", 5, || {
        nodes[0].t.stats().connections == 2
    });
    wait_until("snapshot thread gone", 5, || snap_threads(&nodes[0].t) == 0);
}

#[test]
fn a_snapshot_slower_than_the_minimum_rate_fails() {
    let mut c1 = config(1);
    c1.snapshot_progress_timeout = Duration::from_millis(500);
    c1.snapshot_min_rate = 1 << 30; // 1 GiB/s: 16 MiB may take 0.5 s + 16 ms
    let nodes = vec![start(c1), node(2)];
    connect_all(&nodes);
    send_pattern(&nodes[0], 2, 16 << 20);
    let mut inc = next_snapshot(&nodes[1]);
    // Read steadily but slowly: 64 KiB every 10 ms (progress never stops).
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match inc.data.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e),
            }
        }
    });
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Failure]
    );
    assert!(
        nodes[0]
            .t
            .stats()
            .peer(2)
            .last_error
            .unwrap()
            .contains("longer than")
    );
    assert!(reader.join().unwrap().is_err());
    wait_settled(&nodes);
}

#[test]
fn try_send_of_a_snapshot_message_takes_the_snapshot_path() {
    let nodes = cluster(&[1, 2]);
    let m = Envelope::new(2, 1, MessageClass::Snapshot, vec![9; 100_000]);
    nodes[0].t.try_send(m.clone()).unwrap();
    assert_eq!(recv_n(nodes[1].t.messages(), 1, 5), vec![m]);
    assert_eq!(
        snapshot_reports(&nodes[0].events, 2, 5),
        vec![SnapshotStatus::Finish]
    );
    // Refusals give the message back.
    let to_nobody = Envelope::new(9, 1, MessageClass::Snapshot, vec![1]);
    assert!(matches!(
        nodes[0].t.try_send(to_nobody),
        Err(raftwire::SendError::UnknownPeer(_))
    ));
}
