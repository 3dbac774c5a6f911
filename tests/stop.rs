//! stop() returns within a second whatever the peers are doing, and leaves
//! no thread and no listening socket behind. One test function, so that no
//! other test's transports share this process's thread list.

mod common;
use common::*;
use raftwire::{Envelope, Error, MessageClass, SendError};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Stops the node and checks: quick, no thread left, port closed.
fn stop_and_check(n: &Node, what: &str) {
    let prefix = n.t.thread_name_prefix();
    let addr = n.t.local_addr();
    // A thread names itself as it starts: wait until they all have.
    wait_until(&format!("{what}: threads visible"), 5, || {
        live_threads(&prefix).len() >= 3
    });
    let t0 = Instant::now();
    n.t.stop();
    let took = t0.elapsed();
    println!("{what}: stop took {took:?}");
    assert!(took < Duration::from_secs(1), "{what}: stop took {took:?}");
    // stop() joined every thread; the kernel may list a joined thread for
    // a moment longer while it tears the task down.
    wait_until(&format!("{what}: no thread left"), 2, || {
        live_threads(&prefix).is_empty()
    });
    let refused = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
    assert!(refused.is_err(), "{what}: port {addr} still accepts");
    assert!(matches!(
        n.t.add_peer(9, &["127.0.0.1:1"]),
        Err(Error::Stopped)
    ));
    assert!(matches!(
        n.t.try_send(Envelope::new(2, n.t.node_id(), MessageClass::Other, vec![])),
        Err(SendError::Stopped(_))
    ));
}

#[test]
fn stop_is_quick_and_complete_in_every_state() {
    // Peers down: dialing and backing off.
    let n = node(1);
    n.t.add_peer(2, &[dead_addr()]).unwrap();
    n.t.add_peer(3, &[dead_addr()]).unwrap();
    n.t.send((0..100).map(|_| env(2, 1, MessageClass::Append, &[0; 1000])));
    stop_and_check(&n, "peers down");

    // Mid-handshake: a listener that accepts and never answers the hello;
    // the writers hold batches and wait for buffers to come back.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(1);
    c.send_queue_len = 64;
    let n = start(c);
    n.t.add_peer(2, &[silent.local_addr().unwrap()]).unwrap();
    let sender = {
        let t = n.t.clone();
        std::thread::spawn(move || {
            let mut refused = 0u64;
            while !t.is_stopped() {
                for _ in 0..100 {
                    if let Err(e) = t.try_send(env(2, 1, MessageClass::Append, &[1; 4096])) {
                        assert!(matches!(e, SendError::Full(_) | SendError::Stopped(_)));
                        refused += 1;
                    }
                }
                std::thread::yield_now();
            }
            refused
        })
    };
    wait_until("queue full", 5, || {
        n.t.stats().peer(2).append_lane.queued_bytes == 64 * (4096 + 17)
    });
    stop_and_check(&n, "mid-handshake, mid-send");
    assert!(sender.join().unwrap() > 0, "the sender saw a full queue");
    drop(silent);

    // Mid-delivery: a connected peer floods while the caller does not
    // drain, so the reader is blocked delivering.
    let mut c = config(1);
    c.recv_queue_len = 8;
    let nodes = vec![start(c), node(2)];
    connect_all(&nodes);
    nodes[1]
        .t
        .send((0..5000).map(|_| env(1, 2, MessageClass::Other, &[2; 100])));
    wait_until("receiver blocked", 5, || nodes[0].t.messages().len() == 8);
    stop_and_check(&nodes[0], "mid-delivery");
    // The other side notices and reports the peer unreachable.
    wait_event(&nodes[1].events, 5, |e| {
        *e == raftwire::ReportEvent::Unreachable(1)
    });
    stop_and_check(&nodes[1], "peer stopped first");

    // Dropping the last handle stops too.
    let n = node(5);
    let prefix = n.t.thread_name_prefix();
    let addr = n.t.local_addr();
    drop(n);
    wait_until("no thread left after drop", 2, || {
        live_threads(&prefix).is_empty()
    });
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}
