//! The inbound connection cap: strangers that never finish a handshake are
//! evicted to admit newcomers, and never displace authenticated peers.

mod common;
use common::*;
use raftwire::MessageClass;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Duration;

/// Whether the transport closed `s` (EOF or reset) within 5 s. A read that
/// times out means the connection is still open.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

#[test]
fn strangers_are_evicted_to_admit_a_peer() {
    let mut c1 = config(1);
    c1.max_inbound_connections = 4;
    c1.handshake_timeout = Duration::from_secs(5);
    let n1 = start(c1);
    // Ten silent strangers: the first four fill the cap, each later one
    // evicts the oldest.
    let mut strangers: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(n1.t.local_addr()).unwrap())
        .collect();
    wait_until("six evictions", 5, || n1.t.stats().inbound_evicted >= 6);
    for s in strangers.iter_mut().take(6) {
        assert!(closed_by_peer(s), "an old stranger was evicted");
    }
    // A real peer gets in (its two lanes evict two more strangers).
    let n2 = node(2);
    n2.t.add_peer(1, &[n1.t.local_addr()]).unwrap();
    n1.t.add_peer(2, &[n2.t.local_addr()]).unwrap();
    wait_connected(&n2.t, 1);
    n2.t.send([env(1, 2, MessageClass::Other, b"through")]);
    assert_eq!(recv_n(n1.t.messages(), 1, 5)[0].payload, &b"through"[..]);
    let s = n1.t.stats();
    assert_eq!(s.inbound_evicted, 8);
    assert_eq!(s.inbound_refused, 0);
    // The two evicted for the peer were the oldest strangers left.
    for s in strangers.iter_mut().skip(6).take(2) {
        assert!(closed_by_peer(s), "a stranger evicted for the peer");
    }
}

#[test]
fn authenticated_peers_are_never_evicted_for_a_stranger() {
    let mut c1 = config(1);
    c1.max_inbound_connections = 2;
    let nodes = vec![start(c1), node(2)];
    connect_all(&nodes);
    // Node 2's two lanes fill the cap: a stranger is refused at once.
    let mut stranger = TcpStream::connect(nodes[0].t.local_addr()).unwrap();
    assert!(closed_by_peer(&mut stranger));
    wait_until("refusal counted", 5, || {
        nodes[0].t.stats().inbound_refused >= 1
    });
    assert_eq!(nodes[0].t.stats().inbound_evicted, 0);
    nodes[1].t.send([env(1, 2, MessageClass::Other, b"still")]);
    assert_eq!(
        recv_n(nodes[0].t.messages(), 1, 5)[0].payload,
        &b"still"[..]
    );
    assert_eq!(nodes[1].t.stats().peer(1).reconnects, 0);
}
