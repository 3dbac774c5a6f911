//! Helpers shared by the integration tests: real transports on 127.0.0.1,
//! and waits that poll a condition with a deadline instead of sleeping.
#![allow(dead_code)]

use crossbeam_channel::Receiver;
use raftwire::{ChannelReporter, Config, Envelope, MessageClass, ReportEvent, Transport};
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
    let nodes: Vec<Node> = ids.iter().map(|&id| node(id)).collect();
    connect_all(&nodes);
    nodes
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
