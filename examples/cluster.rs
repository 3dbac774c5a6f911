//! A 3-node cluster on 127.0.0.1 exchanging Raft-shaped `Envelope`
//! messages: node 1 plays leader (appends and heartbeats to the others,
//! who answer and forward proposals), then node 3 goes down and comes back
//! on the same port, and the program prints what the transport did and
//! reported throughout.
//!
//! ```text
//! cargo run --release --example cluster [-- --rounds N]
//! ```

use raftwire::{ChannelReporter, Config, Envelope, MessageClass, ReportEvent, Stats, Transport};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Node {
    id: u64,
    t: Transport<Envelope>,
    events: crossbeam_channel::Receiver<ReportEvent>,
}

fn start(id: u64, addr: SocketAddr) -> Node {
    let mut config = Config::new(id, addr);
    config.cluster_id = 0x00C1_05FE;
    config.heartbeat_interval = Duration::from_millis(100);
    config.read_timeout = Duration::from_millis(600);
    let (reporter, events) = ChannelReporter::new();
    let t = Transport::start(config, reporter).expect("start transport");
    Node { id, t, events }
}

fn connect(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.id != b.id {
                match a.t.add_peer(b.id, &[b.t.local_addr()]) {
                    Ok(()) | Err(raftwire::Error::DuplicatePeer(_)) => {}
                    Err(e) => panic!("add_peer: {e}"),
                }
            }
        }
    }
}

fn wait_active(node: &Node, peers: &[u64]) -> Duration {
    let t0 = Instant::now();
    while !peers.iter().all(|p| node.t.active_peers().contains(p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "peers never connected"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}

/// One round of leader traffic: an append and a heartbeat to each follower,
/// each follower acks both and forwards a proposal to the leader.
fn round(leader: &Node, followers: &[&Node], i: u64, entry: &[u8]) -> usize {
    for f in followers {
        leader.t.send([
            Envelope::new(f.id, leader.id, MessageClass::Append, entry.to_vec()),
            Envelope::new(
                f.id,
                leader.id,
                MessageClass::Other,
                i.to_be_bytes().to_vec(),
            ),
        ]);
    }
    let mut handled = 0;
    for f in followers {
        // Followers handle whatever has arrived (a real node would step
        // these into raft); ack each and propose once per round.
        for m in f.t.messages().try_iter() {
            handled += 1;
            f.t.send([Envelope::new(
                m.from,
                f.id,
                MessageClass::Other,
                b"ack".to_vec(),
            )]);
        }
        f.t.send([Envelope::new(
            leader.id,
            f.id,
            MessageClass::Proposal,
            format!("set k{i}").into_bytes(),
        )]);
    }
    handled
}

fn drain_leader(leader: &Node) -> (usize, usize) {
    (
        leader.t.messages().try_iter().count(),
        leader.t.proposals().try_iter().count(),
    )
}

fn print_stats(name: &str, s: &Stats) {
    for (peer, p) in &s.peers {
        println!(
            "  {name} -> {peer}: sent {} msgs / {} B, received {} msgs / {} B, dropped {} ({:?}), reconnects {}",
            p.message_lane.msgs_sent + p.append_lane.msgs_sent,
            p.message_lane.bytes_sent + p.append_lane.bytes_sent,
            p.message_lane.msgs_received + p.append_lane.msgs_received,
            p.message_lane.bytes_received + p.append_lane.bytes_received,
            p.message_lane.dropped() + p.append_lane.dropped(),
            p.message_lane
                .drops
                .iter()
                .map(|(r, n)| format!("message lane {}={n}", r.name()))
                .chain(
                    p.append_lane
                        .drops
                        .iter()
                        .map(|(r, n)| format!("append lane {}={n}", r.name()))
                )
                .collect::<Vec<_>>(),
            p.reconnects,
        );
    }
}

fn main() {
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Warn)
        .parse_default_env()
        .try_init();
    let rounds: u64 = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .map(|s| s.parse().expect("--rounds N"))
        .unwrap_or(2000);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();

    let n1 = start(1, any);
    let n2 = start(2, any);
    let mut n3 = start(3, any);
    for n in [&n1, &n2, &n3] {
        println!("node {} listening on {}", n.id, n.t.local_addr());
    }
    connect(&[&n1, &n2, &n3]);
    let took = wait_active(&n1, &[2, 3]);
    wait_active(&n2, &[1, 3]);
    wait_active(&n3, &[1, 2]);
    println!("all lanes connected in {took:?}");

    // Phase 1: steady traffic.
    let entry = vec![0x5A; 1024];
    let t0 = Instant::now();
    let (mut handled, mut acks, mut proposals) = (0, 0, 0);
    for i in 0..rounds {
        handled += round(&n1, &[&n2, &n3], i, &entry);
        let (a, p) = drain_leader(&n1);
        acks += a;
        proposals += p;
    }
    // Every follower got an append and a heartbeat per round and acks each.
    let want = 2 * rounds as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (proposals < want || acks < handled || handled < 2 * want) && Instant::now() < deadline {
        for f in [&n2, &n3] {
            for m in f.t.messages().try_iter() {
                handled += 1;
                f.t.send([Envelope::new(
                    m.from,
                    f.id,
                    MessageClass::Other,
                    b"ack".to_vec(),
                )]);
            }
        }
        let (a, p) = drain_leader(&n1);
        acks += a;
        proposals += p;
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "phase 1: {rounds} rounds in {secs:.3}s: followers handled {handled} messages, \
         leader got {acks} acks and {proposals}/{want} proposals ({:.0} msgs/s)",
        (handled + acks + proposals) as f64 / secs
    );

    // Phase 2: node 3 goes down; the leader keeps sending.
    let addr3 = n3.t.local_addr();
    n3.t.stop();
    println!("phase 2: node 3 stopped");
    let t_down = Instant::now();
    let mut reported = None;
    let mut i = rounds;
    while reported.is_none() && t_down.elapsed() < Duration::from_secs(5) {
        round(&n1, &[&n2], i, &entry);
        n1.t.send([Envelope::new(3, 1, MessageClass::Append, entry.clone())]);
        drain_leader(&n1);
        i += 1;
        reported = n1
            .events
            .try_iter()
            .find(|e| *e == ReportEvent::Unreachable(3))
            .map(|_| t_down.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  node 1 reported node 3 unreachable after {:?}; active peers of node 1: {:?}",
        reported.expect("unreachable report"),
        n1.t.active_peers()
    );

    // Phase 3: node 3 restarts on the same address; nobody calls anything.
    n3 = start(3, addr3);
    connect(&[&n3, &n1, &n2]);
    let t_up = Instant::now();
    let mut back = None;
    while back.is_none() && t_up.elapsed() < Duration::from_secs(5) {
        n1.t.send([Envelope::new(3, 1, MessageClass::Other, b"ping".to_vec())]);
        if n3.t.messages().try_iter().any(|m| m.from == 1) {
            back = Some(t_up.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "phase 3: node 3 restarted on {addr3}; delivery from node 1 resumed after {:?}",
        back.expect("delivery resumed")
    );

    println!("summary:");
    for n in [&n1, &n2, &n3] {
        print_stats(&format!("node {}", n.id), &n.t.stats());
        let events: Vec<ReportEvent> = n.events.try_iter().collect();
        let unreachable = events
            .iter()
            .filter(|e| matches!(e, ReportEvent::Unreachable(_)))
            .count();
        println!(
            "  node {}: {unreachable} more unreachable report(s) since",
            n.id
        );
    }
    for n in [n1, n2, n3] {
        n.t.stop();
    }
    println!("all transports stopped");
}
