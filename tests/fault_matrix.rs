//! The fault matrix: real transports on 127.0.0.1 under the faults of
//! `raftwire::testing::FaultProxy` and hand-made hostile clients.
//!
//! Every case asserts three things besides its own outcome: nothing
//! panicked (a panic hook counts panics on transport and proxy threads, and
//! every transport thread is still there), a bystander pair of nodes that
//! exchanges numbered messages the whole time lost nothing and never
//! reconnected, and the transport still serves. Each prints a recovery
//! figure.
//!
//! Run with `cargo test --features testing --test fault_matrix -- --nocapture`
//! to see the figures. (The stalled-receiver case measures the process's
//! peak memory, so it lives alone in `tests/fault_stall.rs`.)
#![cfg(feature = "testing")]

mod common;
use common::*;

use crossbeam_channel::Receiver;
use raftwire::testing::wire::{HELLO_LEN, Hello, Lane};
use raftwire::testing::{Direction, FaultProxy};
use raftwire::{DropReason, Envelope, MessageClass, ReportEvent, Transport};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The cluster id `common::config` sets.
const CLUSTER: u64 = 7;

// ----- no panic -----

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on the threads of transports and proxies (the test's own
/// assertion failures are not counted: they fail the test anyway).
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = thread::current().name().unwrap_or("").to_string();
            if name.starts_with("raftwire") || name.starts_with("fproxy") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a transport or proxy thread panicked (see the output)"
    );
}

/// The threads of a transport, to compare before and after a fault: a
/// thread that died (a panic) is missing afterwards. Waits until all of
/// them (loop, reader, notifier, two writers per peer) have started and
/// named themselves.
fn threads_of(t: &Transport<Envelope>) -> Vec<String> {
    let want = 3 + 2 * t.peers().len();
    let prefix = t.thread_name_prefix();
    wait_until(&format!("node {}'s {want} threads", t.node_id()), 5, || {
        live_threads(&prefix).len() >= want
    });
    live_threads(&prefix)
}

// ----- numbered messages -----

fn numbered(to: u64, from: u64, class: MessageClass, seq: u64) -> Envelope {
    Envelope::new(to, from, class, seq.to_be_bytes().to_vec())
}

fn seq_of(m: &Envelope) -> u64 {
    u64::from_be_bytes(
        m.payload[..8]
            .try_into()
            .expect("an 8-byte sequence number"),
    )
}

/// Sends numbered `Other` messages `first..` from `from` to `to`, one
/// every 5 ms, until one arrives; returns it, the next sequence number
/// unsent, and how long it took. Panics after `secs`.
fn send_until_one_arrives(
    from: &Transport<Envelope>,
    to: &Transport<Envelope>,
    first: u64,
    secs: u64,
) -> (Envelope, u64, Duration) {
    let start = Instant::now();
    let mut seq = first;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no message from {} reached {} within {secs} s",
            from.node_id(),
            to.node_id()
        );
        from.send([numbered(
            to.node_id(),
            from.node_id(),
            MessageClass::Other,
            seq,
        )]);
        seq += 1;
        if let Ok(m) = to.messages().recv_timeout(Duration::from_millis(5)) {
            return (m, seq, start.elapsed());
        }
    }
}

/// Receives numbered messages from `from` until `want` have arrived;
/// returns their sequence numbers (panics after `secs`).
fn recv_seqs(rx: &Receiver<Envelope>, from: u64, want: usize, secs: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if m.from == from => got.push(seq_of(&m)),
            Ok(m) => panic!("unexpected message from {}: {m:?}", m.from),
            Err(_) => panic!("received {} of {want} messages from {from}", got.len()),
        }
    }
    got
}

// ----- the bystanders -----

/// Bystander messages each way, at least.
const MIN_BYSTANDER: u64 = 50;

/// Two nodes exchanging numbered messages both ways (one a millisecond)
/// while a fault hits one of them elsewhere. Each receiving side is drained
/// by a collector thread; `finish` checks that everything arrived, in
/// order, that their link never broke, that neither node lost a thread,
/// and that no transport or proxy thread panicked.
struct Bystanders {
    a: Transport<Envelope>,
    b: Transport<Envelope>,
    /// The threads of `a` and `b` at the start.
    threads: (Vec<String>, Vec<String>),
    stop: Arc<AtomicBool>,
    pumps: Vec<JoinHandle<u64>>,
    /// Per direction: how many messages the pump sent so far.
    progress: Vec<Arc<AtomicU64>>,
    /// Per direction: how many messages the pump sent, once it is known.
    ends: Vec<Arc<AtomicU64>>,
    collectors: Vec<JoinHandle<Vec<u64>>>,
}

impl Bystanders {
    fn start(a: &Transport<Envelope>, b: &Transport<Envelope>) -> Bystanders {
        let threads = (threads_of(a), threads_of(b));
        let stop = Arc::new(AtomicBool::new(false));
        let mut pumps = Vec::new();
        let mut ends = Vec::new();
        let mut progress = Vec::new();
        let mut collectors = Vec::new();
        for (tx, rx) in [(a, b), (b, a)] {
            let end = Arc::new(AtomicU64::new(u64::MAX));
            let sent = Arc::new(AtomicU64::new(0));
            pumps.push({
                let (t, to, stop) = (tx.clone(), rx.node_id(), stop.clone());
                let progress = sent.clone();
                thread::spawn(move || {
                    let me = t.node_id();
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = t.try_send(numbered(to, me, MessageClass::Other, seq)) {
                            panic!("bystander message {seq} from {me} to {to} not queued: {e}");
                        }
                        seq += 1;
                        progress.store(seq, Ordering::Relaxed);
                        // Pacing, not synchronisation.
                        thread::sleep(Duration::from_millis(1));
                    }
                    seq
                })
            });
            collectors.push({
                let (t, from, end, stop) = (rx.clone(), tx.node_id(), end.clone(), stop.clone());
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut stopped_at = None;
                    loop {
                        if let Ok(m) = t.messages().recv_timeout(Duration::from_millis(20)) {
                            assert_eq!(m.from, from, "unexpected message at node {}", t.node_id());
                            got.push(seq_of(&m));
                        }
                        if got.len() as u64 >= end.load(Ordering::Acquire) {
                            return got;
                        }
                        if stop.load(Ordering::Relaxed) {
                            let at = *stopped_at.get_or_insert_with(Instant::now);
                            if at.elapsed() > Duration::from_secs(5) {
                                return got;
                            }
                        }
                    }
                })
            });
            ends.push(end);
            progress.push(sent);
        }
        Bystanders {
            a: a.clone(),
            b: b.clone(),
            threads,
            stop,
            pumps,
            progress,
            ends,
            collectors,
        }
    }

    /// Stops the traffic and checks it: every message arrived, in order,
    /// and the link between the two never dropped, reconnected or erred.
    /// Then checks that both nodes still have the threads they started with
    /// and that nothing panicked.
    fn finish(self) {
        // Some traffic each way even if the fault was over quickly.
        wait_until("bystander traffic", 5, || {
            self.progress
                .iter()
                .all(|p| p.load(Ordering::Relaxed) >= MIN_BYSTANDER)
        });
        self.stop.store(true, Ordering::Relaxed);
        let sent: Vec<u64> = self
            .pumps
            .into_iter()
            .map(|p| p.join().expect("a bystander pump failed"))
            .collect();
        for (end, n) in self.ends.iter().zip(&sent) {
            end.store(*n, Ordering::Release);
        }
        let got: Vec<Vec<u64>> = self
            .collectors
            .into_iter()
            .map(|c| c.join().expect("a bystander collector failed"))
            .collect();
        let names = [
            format!("{} -> {}", self.a.node_id(), self.b.node_id()),
            format!("{} -> {}", self.b.node_id(), self.a.node_id()),
        ];
        for ((name, n), got) in names.iter().zip(&sent).zip(&got) {
            assert!(
                *n >= MIN_BYSTANDER,
                "{name}: the bystander pump hardly ran ({n})"
            );
            assert_eq!(got.len() as u64, *n, "{name}: bystander messages lost");
            assert!(
                got.iter().copied().eq(0..*n),
                "{name}: bystander messages reordered"
            );
        }
        for (t, other) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let s = t.stats().peer(other.node_id());
            assert_unbroken(&format!("{} -> {}", t.node_id(), other.node_id()), &s);
        }
        println!(
            "bystanders: {} and {} messages, all delivered in order, link never broke",
            sent[0], sent[1]
        );
        assert_eq!((threads_of(&self.a), threads_of(&self.b)), self.threads);
        assert_no_panics();
    }
}

/// Node 1 and a bystander node 3, connected both ways, plus node 2 that
/// node 1 reaches only through a fault proxy (node 2 reaches node 1
/// directly).
struct ProxiedPair {
    n1: Node,
    n2: Node,
    n3: Node,
    proxy: FaultProxy,
}

fn proxied_pair() -> ProxiedPair {
    watch_panics();
    let mut nodes = cluster(&[1, 3]);
    let n3 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let n2 = node(2);
    let proxy = FaultProxy::start(n2.t.local_addr()).expect("proxy");
    n1.t.add_peer(2, &[proxy.addr()]).unwrap();
    n2.t.add_peer(1, &[n1.t.local_addr()]).unwrap();
    wait_connected(&n1.t, 2);
    wait_connected(&n2.t, 1);
    ProxiedPair { n1, n2, n3, proxy }
}

/// Node `from` sends numbered `Other` messages `seqs` to node `to`: all
/// arrive, in order, with nothing from anyone else in between.
fn send_and_expect(from: &Node, to: &Node, seqs: std::ops::Range<u64>) {
    let (f, t) = (from.t.node_id(), to.t.node_id());
    from.t
        .send(seqs.clone().map(|s| numbered(t, f, MessageClass::Other, s)));
    assert_eq!(
        recv_seqs(to.t.messages(), f, seqs.clone().count(), 3),
        seqs.collect::<Vec<_>>()
    );
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ----- 0. the proxy itself -----

/// An echo server for the proxy's own tests: every connection gets back
/// what it sends. Ends when dropped.
fn echo_server() -> TestServer {
    TestServer::start(|mut s, stopping| {
        let stopping = stopping.clone();
        Some(thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 16 << 10];
            while !stopping.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        }))
    })
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Sends `msg` and reads it back; returns how long the round trip took.
fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let t = Instant::now();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, msg);
    t.elapsed()
}

/// Reads until the other side closes; returns whether it was a reset.
fn read_to_close(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still open after {within:?}");
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Connects and expects a reset: of the connection attempt itself, or of
/// the connection right after.
fn assert_reset_on_arrival(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(mut s) => assert!(read_to_close(&mut s, Duration::from_secs(2)), "not a reset"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn proxy_faults_do_what_they_say_and_stop_leaves_nothing() {
    watch_panics();
    let echo = echo_server();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let prefix = proxy.thread_name_prefix();
    let mut a = client(proxy.addr());
    let mut b = client(proxy.addr());

    // Pass-through.
    let base = echo_round_trip(&mut a, b"hello");
    echo_round_trip(&mut b, b"world");

    // Delay: each direction adds its own.
    proxy.set_delay(Direction::ClientToServer, Duration::from_millis(60));
    proxy.set_delay(Direction::ServerToClient, Duration::from_millis(40));
    let delayed = echo_round_trip(&mut a, b"slow");
    println!("round trip {base:?} plain, {delayed:?} with 60 + 40 ms of delay");
    assert!(delayed >= Duration::from_millis(100), "{delayed:?}");
    assert!(delayed < Duration::from_millis(400), "{delayed:?}");
    // A delay is latency, not a rate: 256 KiB come back in about the same.
    let big: Vec<u8> = (0..256u32 << 10).map(|i| (i * 7) as u8).collect();
    let t = echo_round_trip(&mut a, &big);
    assert!(
        t < Duration::from_millis(1500),
        "256 KiB under 100 ms delay took {t:?}"
    );
    proxy.set_delay(Direction::Both, Duration::ZERO);

    // Throttle: 100 KiB at 200 KiB/s is about half a second.
    proxy.set_throttle(Direction::ClientToServer, Some(200 << 10));
    let t = echo_round_trip(&mut a, &big[..100 << 10]);
    println!("100 KiB at 200 KiB/s: {t:?}");
    assert!(t >= Duration::from_millis(400), "{t:?}");
    assert!(t < Duration::from_millis(1200), "{t:?}");
    proxy.set_throttle(Direction::Both, None);

    // Blackhole: nothing comes back, nothing errs, until it is lifted.
    proxy.blackhole(Direction::ServerToClient, true);
    a.write_all(b"held").unwrap();
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4];
    let e = a.read(&mut buf).expect_err("blackholed, yet data came");
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    proxy.blackhole(Direction::ServerToClient, false);
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"held");
    // A connection made while client-to-server is blackholed reaches the
    // target only once it is lifted.
    proxy.blackhole(Direction::Both, true);
    let mut c = client(proxy.addr());
    c.write_all(b"late").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(c.read(&mut buf).is_err(), "blackholed, yet data came");
    proxy.pass();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late");

    // Cut: every connection reset; new ones work.
    let open = proxy.stats().open;
    assert_eq!(open, 3, "{:?}", proxy.stats());
    assert_eq!(proxy.cut(), 3);
    for s in [&mut a, &mut b, &mut c] {
        assert!(read_to_close(s, Duration::from_secs(2)), "not a reset");
    }
    let mut d = client(proxy.addr());
    echo_round_trip(&mut d, b"after the cut");

    // Refuse: new connections reset at once, open ones untouched.
    proxy.refuse(true);
    assert_reset_on_arrival(proxy.addr());
    echo_round_trip(&mut d, b"still here");
    proxy.pass();
    let mut f = client(proxy.addr());
    echo_round_trip(&mut f, b"welcome back");

    // A target that is gone: connections are reset.
    proxy.set_target(
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    );
    assert_reset_on_arrival(proxy.addr());

    let echoed = (5 + 5 + 4 + (256 << 10) + (100 << 10) + 4 + 4 + 13 + 10 + 12) as u64;
    // A counter moves just after its write returns: poll for it.
    wait_until("the byte counters", 2, || {
        proxy.stats().bytes(Direction::Both) == 2 * echoed
    });
    let st = proxy.stats();
    println!("{st:?}");
    assert_eq!(st.accepted, 7);
    assert_eq!(st.refused, 1);
    assert_eq!(st.cut, 3);
    assert_eq!(st.target_unreachable, 1);
    assert_eq!(st.client_to_server_bytes, echoed);
    assert_eq!(st.server_to_client_bytes, echoed);

    // Stop: quick even with bytes held in a delay and a blackhole, every
    // thread joined, the listener closed.
    proxy.set_delay(Direction::ClientToServer, Duration::from_secs(3600));
    proxy.blackhole(Direction::ServerToClient, true);
    d.write_all(b"never arrives").unwrap();
    f.write_all(b"never comes back").unwrap();
    assert!(!live_threads(&prefix).is_empty());
    let t = Instant::now();
    proxy.stop();
    let took = t.elapsed();
    println!("stop took {took:?}");
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    // Joined threads may stay listed for a moment while the kernel tears
    // them down.
    wait_until("no proxy thread left", 2, || {
        live_threads(&prefix).is_empty()
    });
    assert!(proxy.is_stopped());
    assert!(
        TcpStream::connect_timeout(&proxy.addr(), Duration::from_millis(500)).is_err(),
        "the proxy's port still accepts"
    );
    // The connections that were open are reset.
    assert!(read_to_close(&mut d, Duration::from_secs(2)));
    assert!(read_to_close(&mut f, Duration::from_secs(2)));
    drop(proxy);
    assert_no_panics();
}

// ----- 1. a peer killed and restarted -----

#[test]
fn peer_killed_and_restarted_behind_a_proxy_is_back_within_the_backoff() {
    let ProxiedPair { n1, n2, n3, proxy } = proxied_pair();
    let addr = n2.t.local_addr();
    let bystanders = Bystanders::start(&n1.t, &n3.t);
    send_and_expect(&n1, &n2, 0..20);

    // Kill node 2. Node 1 notices through the proxy (which passes the
    // close on) and reports it.
    let killed_at = Instant::now();
    n2.t.stop();
    drop(n2);
    wait_until("node 1 to see node 2 down", 3, || {
        n1.t.active_since(2).is_none()
    });
    let noticed = killed_at.elapsed();
    wait_event(&n1.events, 3, |e| *e == ReportEvent::Unreachable(2));

    // Restart it on the same port, behind the same proxy.
    let mut c = config(2);
    c.listen_addr = addr;
    let n2 = start(c);
    assert_eq!(n2.t.local_addr(), addr);
    n2.t.add_peer(1, &[n1.t.local_addr()]).unwrap();
    let (first, next, took) = send_until_one_arrives(&n1.t, &n2.t, 1000, 3);
    println!(
        "peer restart: node 1 saw it go in {} ms; delivery resumed {} ms after the restart \
         (backoff 10-100 ms)",
        ms(noticed),
        ms(took)
    );
    assert!(took < Duration::from_secs(1), "recovered in {took:?}");
    // Everything sent after the first delivered message arrives, in order.
    let from = seq_of(&first) + 1;
    n1.t.send((next..next + 20).map(|s| numbered(2, 1, MessageClass::Other, s)));
    let rest = recv_seqs(n2.t.messages(), 1, (next + 20 - from) as usize, 3);
    assert_eq!(rest, (from..next + 20).collect::<Vec<_>>());

    assert!(proxy.stats().accepted >= 4, "{:?}", proxy.stats());
    // The append lane redials on its own backoff schedule.
    let t1 = &n1.t;
    wait_until("both lanes reconnected", 5, || {
        t1.stats().peer(2).reconnects >= 2
    });
    bystanders.finish();
}

// ----- 2. a connection reset in the middle of a frame -----

const MIB: usize = 1 << 20;

/// A 1 MiB append whose bytes all depend on its sequence number, so a
/// message spliced from two streams would not pass `check_append`.
fn big_append(seq: u64) -> Envelope {
    let mut payload = vec![(seq % 251) as u8; MIB];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    Envelope::new(2, 1, MessageClass::Append, payload)
}

fn check_append(m: &Envelope) -> u64 {
    let seq = seq_of(m);
    assert_eq!(m.payload.len(), MIB, "append {seq} has the wrong length");
    // Sampled (every 4 KiB, and the last byte): the test is built without
    // optimisation, and the check must not be what slows the stream down.
    let fill = (seq % 251) as u8;
    assert!(
        m.payload[8..].iter().step_by(4096).all(|&b| b == fill) && m.payload[MIB - 1] == fill,
        "append {seq} is corrupted"
    );
    seq
}

#[test]
fn connection_reset_mid_frame_reconnects_and_accounts_for_every_message() {
    let ProxiedPair { n1, n2, n3, proxy } = proxied_pair();
    let bystanders = Bystanders::start(&n1.t, &n3.t);
    const TOTAL: u64 = 150;
    let cut_after = [20u64, 60, 100];

    // Node 2's caller: checks and records every append.
    let (seen_tx, seen) = crossbeam_channel::unbounded::<(u64, Instant)>();
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let (t, done) = (n2.t.clone(), done.clone());
        thread::spawn(move || {
            use crossbeam_channel::RecvTimeoutError::*;
            loop {
                match t.messages().recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => {
                        assert_eq!(m.from, 1);
                        let _ = seen_tx.send((check_append(&m), Instant::now()));
                    }
                    Err(Timeout) if done.load(Ordering::Relaxed) => return,
                    Err(Timeout) => {}
                    Err(Disconnected) => return,
                }
            }
        })
    };
    // Node 1 streams appends, keeping about 4 MiB queued, and (like Raft,
    // which probes an unreachable peer instead of streaming to it) holds
    // off while its append lane is down.
    let queued = Arc::new(AtomicU64::new(0));
    let sender = {
        let (t, queued) = (n1.t.clone(), queued.clone());
        thread::spawn(move || {
            for seq in 0..TOTAL {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let s = t.stats().peer(2).append_lane;
                    if s.queued_bytes <= 4 * MIB as u64 && s.connected_since.is_some() {
                        break;
                    }
                    assert!(Instant::now() < deadline, "node 1's append lane is stuck");
                    thread::sleep(Duration::from_millis(1));
                }
                t.send([big_append(seq)]);
                queued.store(seq + 1, Ordering::Release);
            }
        })
    };

    let mut delivered = Vec::new();
    let mut recoveries = Vec::new();
    // Receives until `done` holds for the last append delivered.
    let wait_for = |delivered: &mut Vec<u64>, done: &dyn Fn(u64) -> bool, what: &str| -> Instant {
        loop {
            match seen.recv_timeout(Duration::from_secs(5)) {
                Ok((s, at)) => {
                    delivered.push(s);
                    if done(s) {
                        return at;
                    }
                }
                Err(_) => panic!("{what}: {} appends delivered", delivered.len()),
            }
        }
    };
    for &after in &cut_after {
        wait_for(&mut delivered, &|s| s + 1 >= after, "before a cut");
        let first_after = queued.load(Ordering::Acquire);
        let before = delivered.len();
        let written = n1.t.stats().peer(2).append_lane.msgs_sent;
        let cut_at = Instant::now();
        let reset = proxy.cut();
        assert!(reset >= 2, "the cut reset {reset} connections");
        let t1 = &n1.t;
        wait_until("node 1's append lane to reconnect", 3, || {
            t1.stats()
                .peer(2)
                .append_lane
                .connected_since
                .is_some_and(|t| t > cut_at)
        });
        let reconnected = cut_at.elapsed();
        let next = wait_for(&mut delivered, &|s| s >= first_after, "after a cut");
        let took = next.saturating_duration_since(cut_at);
        recoveries.push(took);
        println!(
            "cut with {before} appends delivered, {written} written and {first_after} queued: \
             node 1 reconnected in {} ms; the first append queued after the cut was delivered \
             {} ms after it",
            ms(reconnected),
            ms(took)
        );
    }
    sender.join().expect("sender");

    // Wait for node 1 to account for every message (written or dropped)
    // and for node 2 to receive what was written.
    let t1 = &n1.t;
    // (A message written to a connection that then died counts as sent and
    // as dropped `in_flight`: it may or may not have arrived.)
    wait_until("node 1's queue to drain", 10, || {
        let s = t1.stats().peer(2).append_lane;
        s.queued_bytes == 0
            && s.msgs_sent + s.dropped() - s.dropped_for(DropReason::InFlight) == TOTAL
    });
    let s = t1.stats().peer(2).append_lane;
    let deadline = Instant::now() + Duration::from_secs(3);
    while (delivered.len() as u64) < s.msgs_sent && Instant::now() < deadline {
        if let Ok((seq, _)) = seen.recv_timeout(Duration::from_millis(100)) {
            delivered.push(seq);
        }
    }
    done.store(true, Ordering::Relaxed);
    collector.join().expect("collector");
    delivered.extend(seen.try_iter().map(|(seq, _)| seq));
    let lost = s.msgs_sent.saturating_sub(delivered.len() as u64);
    println!(
        "{TOTAL} appends of 1 MiB, {} cuts: {} delivered, {} dropped at the sender ({:?}), \
         {lost} written but never delivered; recovery after each cut: {:?} ms",
        cut_after.len(),
        delivered.len(),
        s.dropped(),
        s.drops,
        recoveries.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    // In order, no duplicates, and the stream went on after the last cut.
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    assert!(*delivered.last().unwrap() >= TOTAL - 10, "{delivered:?}");
    assert!(n1.t.stats().peer(2).reconnects >= 3);
    // A reset is the network's doing, not a protocol violation.
    assert_eq!(n2.t.stats().protocol_errors, 0);
    assert_eq!(
        n2.t.stats().peer(1).append_lane.msgs_received,
        delivered.len() as u64
    );
    for r in &recoveries {
        assert!(*r < Duration::from_secs(2), "recovery took {r:?}");
    }
    bystanders.finish();
    // Every message is delivered or counted as dropped at the sender
    // (possibly both: `in_flight` counts what the receiver had not yet
    // reported delivered when the connection died).
    let in_flight = s.dropped_for(DropReason::InFlight);
    assert!(
        delivered.len() as u64 + in_flight >= s.msgs_sent,
        "{lost} appends were counted as sent by node 1, never delivered to node 2, and \
         not counted as lost in flight ({in_flight})"
    );
    assert!(delivered.len() as u64 + s.dropped() >= TOTAL);
}

// ----- 3. a blackholed (half-open) peer -----

#[test]
fn blackholed_peer_is_detected_within_the_read_timeout_and_recovers() {
    let ProxiedPair { n1, n2, n3, proxy } = proxied_pair();
    let bystanders = Bystanders::start(&n1.t, &n3.t);
    send_and_expect(&n1, &n2, 0..20);
    let since_2_to_1 = n2.t.active_since(1);

    let holed_at = Instant::now();
    proxy.blackhole(Direction::Both, true);
    // Messages sent into the hole: delivered later or counted as dropped.
    let mut sent = 20u64;
    n1.t.send((sent..sent + 20).map(|s| numbered(2, 1, MessageClass::Other, s)));
    sent += 20;
    let t1 = &n1.t;
    wait_until("node 1 to declare node 2 dead", 3, || {
        t1.active_since(2).is_none()
    });
    let detected = holed_at.elapsed();
    let err = t1.stats().peer(2).last_error.expect("last_error set");
    wait_event(&n1.events, 2, |e| *e == ReportEvent::Unreachable(2));
    assert!(err.contains("read_timeout"), "last_error: {err:?}");
    // Node 2's own link to node 1 does not go through the proxy.
    assert_eq!(n2.t.active_since(1), since_2_to_1);

    // Heal it.
    proxy.pass();
    let (_, next, took) = send_until_one_arrives(&n1.t, &n2.t, 1000, 3);
    println!(
        "blackhole: detected after {} ms (read_timeout 500 ms, last error {err:?}); \
         traffic resumed {} ms after the heal",
        ms(detected),
        ms(took)
    );
    assert!(
        detected >= Duration::from_millis(400) && detected < Duration::from_millis(900),
        "detected after {detected:?}, read_timeout is 500 ms"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    sent += next - 1000;
    // Every message is written or counted as dropped at the sender.
    let mut delivered = 21 + n2.t.messages().try_iter().count() as u64;
    // (Written into the dead connection counts as sent and as dropped
    // `in_flight`.)
    wait_until("node 1 to account for every message", 5, || {
        let s = t1.stats().peer(2).message_lane;
        s.queued_bytes == 0
            && s.msgs_sent + s.dropped() - s.dropped_for(DropReason::InFlight) == sent
    });
    let s = t1.stats().peer(2).message_lane;
    // Whatever was written on a live connection arrives (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(1);
    while delivered < s.msgs_sent && Instant::now() < deadline {
        if n2
            .t
            .messages()
            .recv_timeout(Duration::from_millis(50))
            .is_ok()
        {
            delivered += 1;
        }
    }
    println!(
        "blackhole: {sent} messages to node 2: {} written, {} dropped at the sender ({:?}), \
         {delivered} delivered, {} written into the dead connection and lost",
        s.msgs_sent,
        s.dropped(),
        s.drops,
        s.msgs_sent.saturating_sub(delivered)
    );
    // What went into the dead connection is not lost silently.
    assert!(delivered + s.dropped_for(DropReason::InFlight) >= s.msgs_sent);
    bystanders.finish();
}

// ----- 4. slowloris -----

/// A raw client that sends a valid hello one byte every `every`, until the
/// transport closes the connection. Returns how many bytes it sent and
/// after how long it was closed.
fn slowloris(addr: SocketAddr, from: u64, every: Duration) -> (usize, Duration) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let hello = Hello::new(Lane::Message, CLUSTER, from, 1).encode();
    // The read doubles as the pacing and as the close detector.
    s.set_read_timeout(Some(every)).unwrap();
    let mut buf = [0u8; 64];
    for (i, b) in hello.iter().enumerate() {
        if s.write_all(&[*b]).is_err() {
            return (i, start.elapsed());
        }
        let tick = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (i + 1, start.elapsed()),
                Ok(n) => panic!("slowloris got an answer: {:?}", &buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return (i + 1, start.elapsed());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if tick.elapsed() >= every {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("slowloris read: {e}"),
            }
        }
    }
    panic!("slowloris completed its hello after {:?}", start.elapsed());
}

#[test]
fn slowloris_clients_are_closed_by_the_handshake_timeout_while_a_peer_gets_in() {
    watch_panics();
    const CLIENTS: usize = 50;
    let mut c = config(1);
    c.handshake_timeout = Duration::from_secs(1);
    let victim = start(c);
    let addr = victim.t.local_addr();
    let attack_start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| thread::spawn(move || slowloris(addr, 100 + i as u64, Duration::from_millis(100))))
        .collect();
    let t = &victim.t;
    wait_until("the slowloris connections to be accepted", 5, || {
        t.stats().connections >= CLIENTS as u64
    });

    // A legitimate peer arrives in the middle of the attack.
    let joined_at = Instant::now();
    let good = node(3);
    connect_all_pair(&victim, &good);
    let joined = joined_at.elapsed();
    let bystanders = Bystanders::start(&victim.t, &good.t);
    assert!(
        attack_start.elapsed() < Duration::from_millis(900),
        "the peer joined after the attack ended"
    );

    let results: Vec<(usize, Duration)> = clients
        .into_iter()
        .map(|c| c.join().expect("slowloris client"))
        .collect();
    wait_until("every handshake timeout counted", 3, || {
        t.stats().handshake_timeouts >= CLIENTS as u64
    });
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    let fastest = results.iter().map(|r| r.1).min().unwrap();
    let most = results.iter().map(|r| r.0).max().unwrap();
    println!(
        "slowloris: {CLIENTS} clients closed after {} to {} ms (handshake_timeout 1 s), \
         at most {most} of {HELLO_LEN} hello bytes sent; a legitimate peer connected in {} ms \
         meanwhile",
        ms(fastest),
        ms(slowest),
        ms(joined)
    );
    assert!(fastest >= Duration::from_millis(900), "{fastest:?}");
    assert!(slowest < Duration::from_millis(1600), "{slowest:?}");
    assert!(most < HELLO_LEN);
    assert!(joined < Duration::from_millis(500), "{joined:?}");
    bystanders.finish();
    let st = t.stats();
    assert_eq!(st.handshake_timeouts, CLIENTS as u64, "{st:?}");
    assert_eq!(st.protocol_errors, 0);
    assert_eq!(st.inbound_accepted, 2, "node 3's two lanes");
    wait_until("only node 3's connections left", 2, || {
        t.stats().connections == 4
    });
    assert_no_panics();
}

/// Connects two nodes both ways and waits for every lane.
fn connect_all_pair(a: &Node, b: &Node) {
    a.t.add_peer(b.t.node_id(), &[b.t.local_addr()]).unwrap();
    b.t.add_peer(a.t.node_id(), &[a.t.local_addr()]).unwrap();
    wait_connected(&a.t, b.t.node_id());
    wait_connected(&b.t, a.t.node_id());
}

// ----- 5. a client spewing garbage -----

/// Garbage forever: connects, writes random bytes until the transport
/// closes the connection, and again, until `until`. Returns the number of
/// connections, each of which the transport closed.
fn spew(addr: SocketAddr, seed: u64, until: Instant) -> (u64, u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut conns = 0;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        conns += 1;
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        loop {
            for chunk in buf.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
            }
            // Never the hello's magic.
            buf[0] = b'G';
            match s.write(&buf) {
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                        "spewer: {e}"
                    );
                    break;
                }
            }
            if Instant::now() >= until {
                // Not our close: wait for the transport's.
                read_to_close(&mut s, Duration::from_secs(2));
                break;
            }
        }
    }
    (conns, bytes)
}

#[test]
fn garbage_spewers_are_closed_and_counted_while_a_peer_is_unaffected() {
    watch_panics();
    let mut nodes = cluster(&[1, 3]);
    let good = nodes.pop().unwrap();
    let victim = nodes.pop().unwrap();
    let bystanders = Bystanders::start(&victim.t, &good.t);
    let addr = victim.t.local_addr();
    let until = Instant::now() + Duration::from_secs(2);
    let spewers: Vec<_> = (0..4u64)
        .map(|i| thread::spawn(move || spew(addr, 0x9E37_79B9_7F4A_7C15 ^ i, until)))
        .collect();
    let (conns, bytes) = spewers
        .into_iter()
        .map(|s| s.join().expect("spewer"))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let t = &victim.t;
    let counted_at = Instant::now();
    wait_until("every garbage connection counted", 3, || {
        t.stats().protocol_errors >= conns
    });
    let st = t.stats();
    println!(
        "garbage: {conns} connections ({bytes} bytes) in 2 s, all closed by the transport and \
         counted ({} protocol errors, the last within {} ms)",
        st.protocol_errors,
        ms(counted_at.elapsed())
    );
    assert!(conns >= 10, "only {conns} garbage connections");
    assert_eq!(st.protocol_errors, conns, "{st:?}");
    assert_eq!(st.handshake_timeouts, 0);
    assert_eq!(st.inbound_accepted, 2, "only node 3's lanes got in");
    // They never got near a peer's counters.
    assert_eq!(st.peer(3).protocol_errors, 0);
    bystanders.finish();
    wait_until("only node 3's connections left", 2, || {
        t.stats().connections == 4
    });
    assert_no_panics();
}
