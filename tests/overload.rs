//! Receive-side overload: the reader stops reading instead of dropping, so
//! drops happen (visibly) at the sender; and a flood from one peer cannot
//! starve another peer's heartbeats beyond the caller's own drain rate.

mod common;
use common::*;
use raftwire::{DropReason, Envelope, MessageClass};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn a_caller_that_does_not_drain_loses_nothing_silently() {
    let mut c2 = config(2);
    c2.recv_queue_len = 256;
    let mut c1 = config(1);
    c1.send_queue_len = 1024;
    let nodes = vec![start(c1), start(c2)];
    connect_all(&nodes);
    let total = 60_000u32;
    for i in 0..total {
        nodes[0].t.send([Envelope::new(
            2,
            1,
            MessageClass::Append,
            i.to_be_bytes().repeat(64),
        )]);
    }
    // Nothing drained yet: the receive channel is full and the rest waits
    // in sockets and queues (or was dropped at the sender, counted).
    let rx = nodes[1].t.messages();
    wait_until("receive channel full", 5, || rx.len() == 256);
    let dropped_at_sender = nodes[0].t.stats().peer(2).append_lane.dropped();
    assert!(
        dropped_at_sender > 0,
        "the sender's bounded queue overflowed"
    );
    assert!(
        nodes[0]
            .t
            .stats()
            .peer(2)
            .append_lane
            .dropped_for(DropReason::QueueFull)
            > 0
    );
    wait_event(&nodes[0].events, 2, |e| {
        *e == raftwire::ReportEvent::Unreachable(2)
    });
    // Drain everything; what arrived plus what the sender counted as
    // dropped is exactly what was sent, and what arrived is in order.
    let mut got = Vec::new();
    wait_until("sender finished", 10, || {
        got.extend(rx.try_iter());
        let s = nodes[0].t.stats().peer(2).append_lane;
        s.queued_bytes == 0
            && s.msgs_sent + s.dropped() == total as u64
            && got.len() as u64 == s.msgs_sent
    });
    let s = nodes[0].t.stats().peer(2).append_lane;
    assert_eq!(got.len() as u64 + s.dropped(), total as u64);
    let seq: Vec<u32> = got
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect();
    assert!(
        seq.windows(2).all(|w| w[0] < w[1]),
        "order kept within the lane"
    );
    assert_eq!(
        nodes[1].t.stats().peer(1).append_lane.msgs_received,
        got.len() as u64
    );
}

#[test]
fn a_flood_from_one_peer_does_not_starve_another_peers_heartbeats() {
    let mut c3 = config(3);
    c3.recv_queue_len = 64;
    let nodes = vec![node(1), node(2), start(c3)];
    connect_all(&nodes);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Node 1 floods node 3 with small appends, far faster than node 3's
    // caller drains.
    let flooder = {
        let t = nodes[0].t.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Envelope> = (0..256)
                    .map(|_| Envelope::new(3, 1, MessageClass::Append, vec![1; 100]))
                    .collect();
                t.send(batch);
                sent += 256;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };
    // Node 3's caller: 100 µs of work per message.
    let consumer = {
        let rx = nodes[2].t.messages().clone();
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut floods = 0u64;
            let deadline = Instant::now() + Duration::from_secs(8);
            while lat.len() < 50 && Instant::now() < deadline {
                let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                if m.from == 2 {
                    lat.push(age(&m, epoch));
                } else {
                    floods += 1;
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(100) {
                    std::hint::spin_loop();
                }
            }
            (lat, floods)
        })
    };
    // Let the flood build up in node 3's connection buffers.
    let t3 = nodes[2].t.clone();
    wait_until("flood backlog", 5, || {
        t3.stats().peer(1).append_lane.msgs_received > 5_000
    });
    for _ in 0..50 {
        nodes[1].t.send([stamped(3, 2, epoch)]);
        // Pacing, not synchronisation.
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut lat, floods) = consumer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    lat.sort();
    assert_eq!(lat.len(), 50);
    let s1 = nodes[0].t.stats().peer(3).append_lane;
    println!(
        "heartbeat latency p50 {:?} max {:?}; flood: {sent} offered, {} written, {} dropped \
         at the sender, {floods} consumed",
        lat[25],
        lat[49],
        s1.msgs_sent,
        s1.dropped()
    );
    // The flood outran the consumer by far: it was throttled at the sender.
    assert!(s1.dropped() > 0);
    // In the same time the consumer drained only a few hundred flood
    // messages per heartbeat interval; ~1 MiB of read credit (10,000
    // messages = 1 s of the caller's work) could sit ahead of a heartbeat
    // if the reader served connections first-come-first-served.
    assert!(lat[49] < Duration::from_millis(300), "max {:?}", lat[49]);
}
