//! Every message class crosses between two transports exactly, on the
//! right channel, in order within a lane; routing per peer.

mod common;
use common::*;
use raftwire::{Envelope, MessageClass};

const CLASSES: [MessageClass; 4] = [
    MessageClass::Append,
    MessageClass::Proposal,
    MessageClass::Snapshot,
    MessageClass::Other,
];

#[test]
fn every_class_round_trips_exactly_both_ways() {
    // Five inline snapshots go out at once: allow that many in flight.
    // The default delivery: appends on a channel of their own.
    let nodes = cluster_with(&[1, 2], |c| {
        c.max_outgoing_snapshots = 8;
        c.separate_appends = true;
    });
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (nodes[a].t.node_id(), nodes[b].t.node_id());
        let mut sent = Vec::new();
        for (i, class) in CLASSES.iter().enumerate() {
            for size in [0usize, 1, 17, 4096, 300_000] {
                let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
                sent.push(Envelope::new(to, from, *class, payload));
            }
        }
        nodes[a].t.send(sent.clone());
        let proposals = recv_n(nodes[b].t.proposals(), 5, 5);
        let mut others = recv_n(nodes[b].t.appends(), 5, 5);
        assert!(others.iter().all(|m| m.class == MessageClass::Append));
        others.extend(recv_n(nodes[b].t.messages(), 10, 5));
        let want_props: Vec<_> = sent
            .iter()
            .filter(|m| m.class == MessageClass::Proposal)
            .cloned()
            .collect();
        assert_eq!(proposals, want_props);
        // Order holds within a lane; the lanes interleave freely, and each
        // inline snapshot has a connection of its own.
        for lane_classes in [&[MessageClass::Append][..], &[MessageClass::Other][..]] {
            let want: Vec<_> = sent
                .iter()
                .filter(|m| lane_classes.contains(&m.class))
                .cloned()
                .collect();
            let got: Vec<_> = others
                .iter()
                .filter(|m| lane_classes.contains(&m.class))
                .cloned()
                .collect();
            assert_eq!(got, want);
        }
        let mut want_snaps: Vec<_> = sent
            .iter()
            .filter(|m| m.class == MessageClass::Snapshot)
            .cloned()
            .collect();
        let mut got_snaps: Vec<_> = others
            .iter()
            .filter(|m| m.class == MessageClass::Snapshot)
            .cloned()
            .collect();
        want_snaps.sort_by_key(|m| m.payload.len());
        got_snaps.sort_by_key(|m| m.payload.len());
        assert_eq!(got_snaps, want_snaps);
        // The sender counts a snapshot once the receiver's verdict is back.
        wait_until("snapshot verdicts", 5, || {
            nodes[a].t.stats().peer(to).snapshots_sent == 5
        });
        let s = nodes[a].t.stats().peer(to);
        assert_eq!(s.message_lane.msgs_sent, 10);
        assert_eq!(s.append_lane.msgs_sent, 5);
        let r = nodes[b].t.stats().peer(from);
        assert_eq!(r.message_lane.msgs_received, 10);
        assert_eq!(r.append_lane.msgs_received, 5);
        assert_eq!(r.snapshots_received, 5);
        assert_eq!(s.message_lane.dropped() + s.append_lane.dropped(), 0);
    }
}

#[test]
fn routing_goes_to_the_named_peer_only() {
    let nodes = cluster(&[1, 2, 3]);
    let msgs: Vec<Envelope> = (0..100u32)
        .map(|i| {
            let to = if i % 2 == 0 { 2 } else { 3 };
            env(to, 1, MessageClass::Other, &i.to_be_bytes())
        })
        .collect();
    nodes[0].t.send(msgs);
    let to2 = recv_n(nodes[1].t.messages(), 50, 5);
    let to3 = recv_n(nodes[2].t.messages(), 50, 5);
    assert!(to2.iter().all(|m| m.to == 2 && m.from == 1));
    assert!(to3.iter().all(|m| m.to == 3 && m.from == 1));
    let numbers = |got: &[Envelope]| -> Vec<u32> {
        got.iter()
            .map(|m| u32::from_be_bytes(m.payload[..].try_into().unwrap()))
            .collect()
    };
    assert_eq!(
        numbers(&to2),
        (0..100).filter(|i| i % 2 == 0).collect::<Vec<_>>()
    );
    assert_eq!(
        numbers(&to3),
        (0..100).filter(|i| i % 2 == 1).collect::<Vec<_>>()
    );
    assert!(nodes[1].t.messages().is_empty() && nodes[2].t.messages().is_empty());
}

#[test]
fn messages_sent_right_after_add_peer_are_delivered() {
    // Held while the first connection is made, not dropped.
    for round in 0..20u8 {
        let a = node(1);
        let b = node(2);
        a.t.add_peer(2, &[b.t.local_addr()]).unwrap();
        a.t.send([
            env(2, 1, MessageClass::Other, &[round]),
            env(2, 1, MessageClass::Append, &[round]),
        ]);
        let mut got = recv_n(b.t.messages(), 2, 5);
        got.sort_by_key(|m| m.class.to_u8());
        assert_eq!(
            got,
            vec![
                env(2, 1, MessageClass::Other, &[round]),
                env(2, 1, MessageClass::Append, &[round]),
            ],
            "round {round}"
        );
        let s = a.t.stats().peer(2);
        assert_eq!(s.message_lane.dropped() + s.append_lane.dropped(), 0);
    }
}

/// Sizes around the places where the data path changes: payloads written
/// from their own buffer from 16 KiB on, frames read whole once longer
/// than a read (`read_chunk_len`, 64 KiB by default; 29 bytes of frame and
/// envelope header), and a few reads' worth.
#[test]
fn sizes_around_every_path_boundary_arrive_exactly_through_small_socket_buffers() {
    let nodes = cluster_with(&[1, 2], small_socket_buffers);
    let read = 64 << 10;
    let mut sizes = vec![0usize, 1, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1];
    for edge in [read - 29, read - 12, read] {
        sizes.extend([edge - 1, edge, edge + 1]);
    }
    sizes.extend([3 * read + 5, 1 << 20]);
    let mut sent = Vec::new();
    for round in 0..3 {
        for (i, &size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7 + round) as u8).collect();
            sent.push(Envelope::new(2, 1, MessageClass::Append, payload));
            // A small message between the large ones, on the same lane.
            sent.push(Envelope::new(
                2,
                1,
                MessageClass::Append,
                vec![round as u8; 3],
            ));
        }
    }
    nodes[0].t.send(sent.clone());
    let got = recv_n(nodes[1].t.messages(), sent.len(), 10);
    for (k, (g, w)) in got.iter().zip(&sent).enumerate() {
        assert!(
            g == w,
            "message {k} ({} bytes) arrived changed",
            w.payload.len()
        );
    }
    let s = nodes[1].t.stats();
    assert_eq!(s.protocol_errors, 0);
    assert_eq!(nodes[0].t.stats().peer(2).append_lane.dropped(), 0);
}
