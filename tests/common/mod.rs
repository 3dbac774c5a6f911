//! Helpers shared by the integration tests: real transports on 127.0.0.1,
//! and waits that poll a condition with a deadline instead of sleeping.
#![allow(dead_code)]

use crossbeam_channel::Receiver;
use raftwire::{ChannelReporter, Config, Envelope, MessageClass, ReportEvent, Transport};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A config for node `id` on an ephemeral loopback port, with timings
/// shortened so that failure tests finish quickly.
pub fn config(id: u64) -> Config {
    let mut c = Config::new(id, "127.0.0.1:0".parse().unwrap());
    c.cluster_id = 7;
    c.heartbeat_interval = Duration::from_millis(50);
    c.read_timeout = Duration::from_millis(500);
    c.dial_timeout = Duration::from_millis(500);
    c.handshake_timeout = Duration::from_millis(500);
    c.backoff_floor = Duration::from_millis(10);
    c.backoff_cap = Duration::from_millis(100);
    // Appends on `messages()` in arrival order beside the other classes:
    // these tests assert per-peer order across classes on one channel.
    // The default (three channels, `try_recv` taking the urgent first) is
    // tested in lanes.rs, roundtrip.rs and by the raft-rs clusters.
    c.separate_appends = false;
    c
}

pub struct Node {
    pub t: Transport<Envelope>,
    pub events: Receiver<ReportEvent>,
    pub reporter: ChannelReporter,
}

pub fn start(config: Config) -> Node {
    init_log();
    let (reporter, events) = ChannelReporter::new();
    let t = Transport::start(config, reporter.clone()).expect("start");
    Node {
        t,
        events,
        reporter,
    }
}

pub fn node(id: u64) -> Node {
    start(config(id))
}

/// Nodes that all know each other, with both lanes connected everywhere.
pub fn cluster(ids: &[u64]) -> Vec<Node> {
    cluster_with(ids, |_| {})
}

/// `cluster`, each node's `config` first changed by `tweak`.
pub fn cluster_with(ids: &[u64], tweak: impl Fn(&mut Config)) -> Vec<Node> {
    let nodes: Vec<Node> = ids
        .iter()
        .map(|&id| {
            let mut c = config(id);
            tweak(&mut c);
            start(c)
        })
        .collect();
    connect_all(&nodes);
    nodes
}

/// 4 KiB kernel socket buffers: many partial writes and short reads, so
/// that vectored slices, header bytes kept between reads and frames read
/// whole meet every cut.
pub fn small_socket_buffers(c: &mut Config) {
    c.send_buffer_size = Some(4096);
    c.recv_buffer_size = Some(4096);
}

/// A link's counters show it never broke: no reconnect, drop, protocol
/// error or last error.
pub fn assert_unbroken(who: &str, s: &raftwire::PeerStats) {
    assert_eq!(s.reconnects, 0, "{who} reconnected: {s:?}");
    assert_eq!(
        s.message_lane.dropped() + s.append_lane.dropped(),
        0,
        "{who}: {s:?}"
    );
    assert_eq!(s.protocol_errors, 0, "{who}: {s:?}");
    assert_eq!(s.last_error, None, "{who}: {s:?}");
}

pub fn connect_all(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.t.node_id() != b.t.node_id() {
                a.t.add_peer(b.t.node_id(), &[b.t.local_addr()]).unwrap();
            }
        }
    }
    for a in nodes {
        for b in nodes {
            if a.t.node_id() != b.t.node_id() {
                wait_connected(&a.t, b.t.node_id());
            }
        }
    }
}

/// Waits until `cond` holds, polling every millisecond, for at most `secs`.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `cond` for `dur` and fails as soon as it does not hold: checks that
/// a state stays put (a bounded poll loop, not a sleep).
pub fn holds_for(what: &str, dur: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        if let Err(why) = cond() {
            panic!("{what} stopped holding: {why}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until both lanes to `peer` are connected.
pub fn wait_connected(t: &Transport<Envelope>, peer: u64) {
    wait_until(
        &format!("{} -> {peer} message lane", t.node_id()),
        5,
        || t.active_since(peer).is_some(),
    );
    wait_until(&format!("{} -> {peer} append lane", t.node_id()), 5, || {
        t.stats().peer(peer).append_lane.connected_since.is_some()
    });
}

pub fn env(to: u64, from: u64, class: MessageClass, payload: &[u8]) -> Envelope {
    Envelope::new(to, from, class, payload.to_vec())
}

/// Receives exactly `n` messages from `rx`, failing after `secs`.
pub fn recv_n(rx: &Receiver<Envelope>, n: usize, secs: u64) -> Vec<Envelope> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) => got.push(m),
            Err(_) => panic!("received {} of {n} messages", got.len()),
        }
    }
    got
}

/// Waits for a report event matching `pred`.
pub fn wait_event(
    rx: &Receiver<ReportEvent>,
    secs: u64,
    mut pred: impl FnMut(&ReportEvent) -> bool,
) -> ReportEvent {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no matching report event within {secs}s"),
        }
    }
}

/// An address with nothing listening on it: bind a port, then free it.
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An `Other` message from `from` to `to` carrying the time it was made,
/// in nanoseconds since `epoch`: a heartbeat whose latency [`age`] measures.
pub fn stamped(to: u64, from: u64, epoch: Instant) -> Envelope {
    let now = epoch.elapsed().as_nanos() as u64;
    Envelope::new(to, from, MessageClass::Other, now.to_be_bytes().to_vec())
}

/// How long ago the [`stamped`] message `m` was made.
pub fn age(m: &Envelope, epoch: Instant) -> Duration {
    let sent = u64::from_be_bytes(m.payload[..8].try_into().expect("a stamped message"));
    Duration::from_nanos(epoch.elapsed().as_nanos() as u64 - sent)
}

/// Names of this process's threads that start with `prefix`, sorted.
pub fn live_threads(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The process's peak resident set size (VmHWM), in bytes.
pub fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status")
        * 1024
}

/// A hand-made server on 127.0.0.1 for behaviours a real transport will not
/// show. A thread polls a non-blocking listener and hands each connection
/// (in blocking mode) to the server's `serve` function, together with the
/// server's stop flag for any thread it starts for the connection; `serve`
/// may return such a thread. Dropping the server stops the accept thread,
/// then joins it and the connection threads; whatever `serve` holds (held
/// connections, channels) is dropped with it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(
        mut serve: impl FnMut(TcpStream, &Arc<AtomicBool>) -> Option<JoinHandle<()>> + Send + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        conns.extend(serve(s, &stopping));
                    }
                    // The server's own accept poll, not test synchronisation.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("test server accept: {e}"),
                }
            }
            drop(serve);
            for c in conns {
                let _ = c.join();
            }
        });
        TestServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
