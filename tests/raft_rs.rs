//! raft-rs clusters over raftwire on 127.0.0.1: every node a `RawNode` on
//! its own thread with its own `Transport<eraftpb::Message>`. Elections,
//! replication, restarts, snapshots, partitions and membership changes,
//! each checked for identical logs and state machines and for no loss of
//! anything committed.
#![cfg(feature = "raft-rs")]

mod raft_support;

use raft::StateRole;
use raft::eraftpb::ConfChangeType;
use raft_support::*;
use raftwire::{ChannelReporter, RejectReason, ReportEvent, Reporter, Transport};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn refs(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

/// Three founding members with a leader (node 1 campaigns, to be quick
/// about it), `keys` proposed through the leader and applied everywhere.
/// Returns the nodes and the leader.
fn three_with_keys(keys: u64) -> (Vec<Node>, u64) {
    let nodes = cluster(3);
    nodes[0].campaign();
    let leader = wait_leader(&refs(&nodes), 8);
    propose_all(&refs(&nodes), 0..keys, 10, |l| l);
    wait_converged(&refs(&nodes), 5);
    (nodes, leader)
}

/// Every node's history of applied entries is the same sequence.
fn assert_same_logs(nodes: &[&Node]) {
    let first = nodes[0].disk.history();
    for n in &nodes[1..] {
        let h = n.disk.history();
        assert_eq!(
            h.len(),
            first.len(),
            "node {} applied a different number of entries",
            n.id
        );
        assert!(h == first, "node {} applied a different log", n.id);
    }
}

#[test]
fn a_leader_is_elected_and_replaced_when_it_stops() {
    let mut nodes = cluster(3);
    let t0 = Instant::now();
    let leader = wait_leader(&refs(&nodes), 8);
    let elected_in = t0.elapsed();
    let st: Vec<Status> = nodes.iter().map(|n| n.status()).collect();
    // Election safety: at most one leader per term.
    for s in &st {
        let leaders = st
            .iter()
            .filter(|o| o.term == s.term && o.role == Some(StateRole::Leader))
            .count();
        assert!(leaders <= 1, "{st:?}");
    }
    let term = by_id(&refs(&nodes), leader).status().term;
    assert!(
        term >= 2,
        "the founding snapshot is term 1; an election raises it"
    );
    // The leader's empty entry commits everywhere.
    wait_applied(&refs(&nodes), 2, 5);
    wait_converged(&refs(&nodes), 5);

    // The leader goes away; the other two elect one of themselves.
    let reports_about_leader = |n: &Node| n.status().unreachable.get(&leader).copied();
    let before: BTreeMap<u64, Option<u64>> = nodes
        .iter()
        .map(|n| (n.id, reports_about_leader(n)))
        .collect();
    let i = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes[i].stop();
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let next = wait_leader(&rest, 8);
    assert_ne!(next, leader);
    assert!(by_id(&rest, next).status().term > term);
    // The survivors noticed: raft was told the old leader is unreachable
    // (reports from before the stop, while the connections came up, do
    // not count).
    wait_until("an unreachable report for the stopped leader", 5, || {
        rest.iter().any(|n| reports_about_leader(n) > before[&n.id])
    });
    eprintln!("first election took {elected_in:?}");
}

#[test]
fn ten_thousand_proposals_commit_with_identical_logs() {
    let nodes = cluster(3);
    let all = refs(&nodes);
    nodes[0].campaign();
    let leader = wait_leader(&all, 8);
    let follower = all.iter().find(|n| n.id != leader).unwrap().id;
    // Half through the leader, half forwarded by a follower (MsgPropose on
    // the proposals channel).
    let took =
        propose_all(&all, 0..5_000, 20, |l| l) + propose_all(&all, 5_000..10_000, 20, |_| follower);
    let at = wait_converged(&all, 10);
    assert_same_logs(&all);
    let sm = check_identical(&all);
    for i in 0..10_000 {
        assert_eq!(
            sm.kv.get(&format!("key{i}")).map(String::as_str),
            Some(&*format!("v{i}"))
        );
    }
    // The forwarded proposals crossed the network as proposals: on the
    // message lane, delivered on the leader's proposals() channel, and
    // nothing anywhere on the wrong channel.
    let stats = by_id(&all, leader).t.stats();
    assert!(stats.peer(follower).message_lane.msgs_received > 0);
    assert!(stats.peer(follower).append_lane.msgs_sent > 0);
    assert!(by_id(&all, leader).status().proposals_received > 0);
    for n in &all {
        assert_eq!(n.status().misrouted, 0, "node {}", n.id);
    }
    eprintln!(
        "10,000 proposals applied in {took:?} ({:.0}/s), commit index {at}",
        10_000.0 / took.as_secs_f64()
    );
}

#[test]
fn a_restarted_follower_catches_up_from_its_own_storage() {
    let (mut nodes, leader) = three_with_keys(1_000);

    // A follower stops: its RawNode and Transport are dropped; its disk stays.
    let fi = nodes.iter().position(|n| n.id != leader).unwrap();
    let (fid, faddr, fdisk) = (nodes[fi].id, nodes[fi].addr, nodes[fi].disk.clone());
    let applied_before = fdisk.sm().applied;
    nodes[fi].stop();
    drop(nodes.remove(fi));
    propose_all(&refs(&nodes), 1_000..3_000, 10, |l| l);
    let others = addresses(&refs(&nodes));

    // It starts again on the same disk and address and catches up through
    // the log (nothing was compacted, so no snapshot is needed).
    nodes.push(Node::start(fid, faddr, fdisk, &others));
    let at = wait_converged(&refs(&nodes), 8);
    assert!(at >= applied_before + 2_000);
    let restarted = by_id(&refs(&nodes), fid).status();
    assert_eq!(by_id(&refs(&nodes), fid).disk.lock().snapshots_applied, 0);
    assert_eq!(restarted.applied, at);
    assert_same_logs(&refs(&nodes));
    let sm = check_identical(&refs(&nodes));
    assert_eq!(sm.kv.len(), 3_000);
}

#[test]
fn compaction_makes_a_lagging_follower_catch_up_through_a_snapshot() {
    let (nodes, leader) = three_with_keys(1_000);
    let all = refs(&nodes);

    let lagging = all.iter().find(|n| n.id != leader).unwrap().id;
    isolate(&all, lagging);
    let rest: Vec<&Node> = all.iter().copied().filter(|n| n.id != lagging).collect();
    propose_all(&rest, 1_000..3_000, 10, |l| l);
    let at = wait_converged(&rest, 5);
    let lag_applied = by_id(&all, lagging).status().applied;
    assert!(lag_applied < at);

    // Compact both connected nodes: the entries the lagging node needs
    // are gone, only a snapshot can bring it up to date.
    let checkpoint = by_id(&rest, leader).compact();
    for n in &rest {
        if n.id != leader {
            n.compact();
        }
    }
    assert!(checkpoint >= 3_000);
    wait_until("compaction", 5, || {
        rest.iter()
            .all(|n| n.status().first_index > lag_applied + 1)
    });

    heal(&all, lagging);
    let lag = by_id(&all, lagging);
    wait_until("the lagging node to install a snapshot", 8, || {
        lag.disk.lock().snapshots_applied > 0
    });
    propose_all(&all, 3_000..3_100, 10, |l| l);
    wait_converged(&all, 8);
    let history = lag.disk.history();
    assert!(
        history
            .iter()
            .any(|a| matches!(a, Applied::Snapshot { index, .. } if *index >= checkpoint)),
        "the lagging node's history shows no snapshot at or past {checkpoint}"
    );
    // The MsgSnapshot took the transport's snapshot path, which reported
    // the outcome to the leader's raft.
    let l = by_id(&all, leader);
    assert!(l.status().snapshots_sent > 0);
    wait_until("the snapshot's report", 5, || {
        l.status().snapshot_reports > 0
    });
    let ls = l.t.stats().peer(lagging);
    assert!(ls.snapshots_sent >= 1, "{ls:?}");
    assert!(lag.t.stats().peer(leader).snapshots_received >= 1);
    let sm = check_identical(&all);
    assert_eq!(sm.kv.len(), 3_100);
    // The snapshot carried the address book too.
    assert_eq!(sm.members.len(), 3);
}

#[test]
fn an_isolated_leader_is_replaced_and_steps_down_after_healing() {
    let (nodes, old) = three_with_keys(500);
    let all = refs(&nodes);
    let old_term = by_id(&all, old).status().term;
    let reports_before = by_id(&all, old).status().unreachable_reports();

    isolate(&all, old);
    // What the isolated leader accepts cannot commit.
    for i in 0..50 {
        by_id(&all, old).propose(put(&format!("lost{i}"), "x"));
    }
    let rest: Vec<&Node> = all.iter().copied().filter(|n| n.id != old).collect();
    let new = wait_leader(&rest, 8);
    assert_ne!(new, old);
    assert!(by_id(&rest, new).status().term > old_term);
    propose_all(&rest, 500..1_500, 10, |l| l);
    // With check_quorum the old leader notices it lost its quorum.
    wait_until("the old leader to step down", 8, || {
        by_id(&all, old).status().role != Some(StateRole::Leader)
    });

    heal(&all, old);
    let leader = wait_leader(&all, 8);
    assert_ne!(leader, old, "the healed old leader must not take over");
    let st = by_id(&all, old).status();
    assert_eq!(st.role, Some(StateRole::Follower));
    assert_eq!(st.leader, leader);
    propose_all(&all, 1_500..1_600, 10, |l| l);
    wait_converged(&all, 8);
    let sm = check_identical(&all);
    assert_eq!(sm.kv.len(), 1_600);
    assert!(sm.kv.keys().all(|k| !k.starts_with("lost")));
    // The isolation was seen by the transport: the old leader's messages to
    // its paused peers were dropped and reported.
    assert!(by_id(&all, old).status().unreachable_reports() > reports_before);
}

#[test]
fn a_node_is_added_through_a_conf_change_and_another_removed_and_rejected() {
    let (mut nodes, leader) = three_with_keys(200);

    // Node 4 starts empty, knowing only the founders' addresses.
    let founders = addresses(&refs(&nodes));
    let n4 = Node::start(4, any_port(), Disk::empty(), &founders);
    let addr4 = n4.addr.to_string();
    nodes.push(n4);
    let all = refs(&nodes);
    let l = by_id(&all, leader);

    // First a learner (a remote on every transport: caught up, no vote)…
    l.conf_change(conf_change(ConfChangeType::AddLearnerNode, 4, &addr4));
    wait_until("4 to be a learner everywhere", 8, || {
        all.iter().all(|n| n.status().learners.contains(&4))
    });
    let n4 = by_id(&all, 4);
    assert!(
        n4.disk.lock().snapshots_applied >= 1,
        "an empty node starts from a snapshot"
    );
    for n in &all[..3] {
        assert!(n.t.peers().contains(&4));
        assert!(!n.t.active_peers().contains(&4), "a remote is not a member");
    }
    // …then a voter (promoted to a member on every transport).
    l.conf_change(conf_change(ConfChangeType::AddNode, 4, &addr4));
    wait_until("4 to be a voter everywhere", 8, || {
        all.iter().all(|n| n.status().voters.contains(&4))
    });
    wait_until(
        "4 to be an active member of the founders' transports",
        5,
        || all[..3].iter().all(|n| n.t.active_peers().contains(&4)),
    );
    // The new member forwards proposals like any other.
    propose_all(&all, 200..1_200, 10, |_| 4);
    wait_converged(&all, 8);
    check_identical(&all);

    // Remove a founder that is not the leader.
    let gone = all
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader && id != 4)
        .unwrap();
    let rest: Vec<&Node> = all.iter().copied().filter(|n| n.id != gone).collect();
    by_id(&all, leader).conf_change(conf_change(ConfChangeType::RemoveNode, gone, ""));
    wait_until("the removal to apply on the others", 8, || {
        rest.iter().all(|n| !n.status().voters.contains(&gone))
    });
    for n in &rest {
        assert!(!n.t.peers().contains(&gone));
        assert!(n.reporter.is_id_removed(gone));
    }
    propose_all(&rest, 1_200..1_500, 10, |l| l);
    wait_converged(&rest, 8);

    // The removed node comes back (its own view may predate its removal):
    // every remaining member refuses its connections.
    let old_addr = by_id(&all, gone).addr;
    let i = nodes.iter().position(|n| n.id == gone).unwrap();
    let mut removed = nodes.remove(i);
    removed.stop();
    let (reporter, events) = ChannelReporter::new();
    let t: Transport<Msg> = Transport::start(transport_config(gone, old_addr), reporter).unwrap();
    let rest: Vec<&Node> = nodes.iter().collect();
    for n in &rest {
        t.add_peer(n.id, &[n.addr]).unwrap();
    }
    let mut refused_by = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused_by.len() < rest.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ReportEvent::Rejected(id, RejectReason::RemovedMember)) => {
                refused_by.insert(id);
            }
            Ok(_) => {}
            Err(_) => panic!("rejected only by {refused_by:?}"),
        }
    }
    let stats = t.stats();
    for n in &rest {
        assert!(stats.peer(n.id).rejected_by_peer > 0);
        assert!(n.t.stats().inbound_rejected > 0);
    }
    t.stop();

    // The cluster without it is intact.
    propose_all(&rest, 1_500..1_600, 10, |l| l);
    wait_converged(&rest, 8);
    let sm = check_identical(&rest);
    assert_eq!(sm.kv.len(), 1_600);
    let members: BTreeMap<u64, String> = sm.members.clone();
    assert!(!members.contains_key(&gone));
    assert_eq!(members.get(&4), Some(&addr4));
}
