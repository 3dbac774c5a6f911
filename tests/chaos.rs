//! Chaos: a five-node raft-rs cluster over real raftwire transports on
//! 127.0.0.1, every node reaching every other node through a
//! [`FaultProxy`] of its own (node `a` dials peer `b` at proxy `a→b`:
//! twenty proxies), under a random fault schedule while a client proposes
//! throughout.
//!
//! The schedule alternates fault windows (2–2.8 s) with healing windows
//! (0.4–0.9 s). A fault window holds one primary fault (a partition made by
//! blackholing or refusing-and-cutting proxies so that the leader or a
//! minority is cut off, a one-way partition, a split with no majority at
//! all, a node restart on the same disk and address, a restart plus an
//! isolation, slow links, or flapping connections), often with slow links
//! (delays, throttles), connection cuts and log compaction on top. The
//! schedule is drawn from a seeded RNG before the cluster starts, so a seed
//! and a duration name it; "the leader" in a fault is whoever leads when
//! the window opens (the cluster's own timing, and so who leads, differs
//! from run to run). A client thread proposes unique keys (`k<n>=v<n>`),
//! ten every 10 ms, through the leader (one batch in five through a
//! follower, which forwards it), and counts a key acknowledged once some
//! node has applied it.
//!
//! At the end everything is healed, the nodes converge and are stopped, and
//! the test checks that
//! * every index up to the final commit index was applied as an entry by
//!   some node, and every two nodes that applied an index applied the same
//!   entry (snapshots carry the rest), with identical state machines;
//! * every proposal the client saw applied (acknowledged) is in the final
//!   state machines, and nothing that was never proposed is;
//! * at most one leader was seen per term;
//! * progress: in every window that lasted at least 2 s with a majority of
//!   the nodes running and mutually connected (slow links count as
//!   connected, blocked ones and stopped nodes do not), the highest commit
//!   index seen in the cluster advanced.
//!
//! Environment: `RAFTWIRE_CHAOS_SEED` replays a schedule (decimal or
//! `0x` hex; printed at the start), `RAFTWIRE_CHAOS_SECS` sets how long the
//! faults go on (default 26 s; the whole test takes about 27 s):
//!
//! ```text
//! RAFTWIRE_CHAOS_SECS=600 cargo test --features raft-rs,testing --test chaos -- --nocapture
//! ```
#![cfg(all(feature = "raft-rs", feature = "testing"))]

mod raft_support;

use raft::StateRole;
use raft_support::*;
use raftwire::Stats;
use raftwire::testing::{Direction, FaultProxy};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cluster size; ids are 1..=N.
const N: u64 = 5;
/// How long the faults go on by default.
const DEFAULT_SECS: f64 = 26.0;
/// A window at least this long with a connected majority must progress.
const PROGRESS_WINDOW: Duration = Duration::from_secs(2);
/// How often the controller samples the nodes.
const POLL: Duration = Duration::from_millis(10);
/// Proposals per client batch.
const BATCH: u64 = 10;
/// How long the client waits to see a key applied before giving up on it
/// (never re-proposed: every key is proposed once).
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Time between two client batches.
const BATCH_EVERY: Duration = Duration::from_millis(10);
/// Most keys waiting for their acknowledgement per node proposed through.
const MAX_PENDING: u64 = 200;
/// Bound on the first election and on the final convergence.
const ELECTION_SECS: u64 = 10;
const CONVERGE_SECS: u64 = 20;

// ---------------------------------------------------------------------------
// A small deterministic RNG (splitmix64): the schedule is a function of the
// seed.
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

fn env_seed() -> u64 {
    match std::env::var("RAFTWIRE_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("RAFTWIRE_CHAOS_SEED={s:?}: {e}"))
        }
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Rng(t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)).next_u64()
        }
    }
}

fn env_secs() -> f64 {
    match std::env::var("RAFTWIRE_CHAOS_SECS") {
        Ok(s) => {
            let v: f64 = s
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("RAFTWIRE_CHAOS_SECS={s:?}: {e}"));
            assert!(v > 0.0, "RAFTWIRE_CHAOS_SECS must be positive");
            v
        }
        Err(_) => DEFAULT_SECS,
    }
}

// ---------------------------------------------------------------------------
// The schedule.
// ---------------------------------------------------------------------------

/// A directed link: node `.0` sends to node `.1` through proxy `.0→.1`.
type Link = (u64, u64);

fn links() -> Vec<Link> {
    let mut v = Vec::new();
    for a in 1..=N {
        for b in 1..=N {
            if a != b {
                v.push((a, b));
            }
        }
    }
    v
}

/// How a link is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Both directions of the proxy blackholed: connections stay open and
    /// go silent (half-open); new ones hang in the handshake.
    Blackhole,
    /// New connections reset on accept, current ones reset.
    RefuseCut,
}

/// The primary fault of a window. Node roles are positions in the window's
/// permutation of the ids (`p0`, `p1`, …); with `leader_first`, the leader
/// at the time the window opens is swapped into `p0`.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing but what the overlays add (between fault windows: nothing).
    Heal,
    /// `p0..p(k-1)` cut off from the rest.
    Isolate { k: usize, how: Block },
    /// `p0` cannot send to anyone (`outbound`) or cannot receive.
    OneWay { outbound: bool, how: Block },
    /// `{p0,p1} | {p2,p3} | {p4}`: no majority anywhere.
    Split { how: Block },
    /// `p0` stopped (RawNode and Transport dropped) for the window, then
    /// started again on the same disk and address.
    Restart,
    /// `p0` stopped and `p1` cut off: three nodes left.
    RestartIsolate { how: Block },
    /// Slow links only (delays, throttles) on many proxies.
    Degrade,
    /// Connection cuts only, many of them.
    Flap,
}

/// Latency and bandwidth of one proxy for a window.
#[derive(Debug, Clone, Copy)]
struct Slow {
    link: Link,
    delay: Duration,
    /// Bytes per second, sender to receiver.
    throttle: Option<u64>,
}

struct Plan {
    fault: Fault,
    leader_first: bool,
    perm: Vec<u64>,
    dur: Duration,
    slow: Vec<Slow>,
    /// When (from the window's start) to cut which proxies' connections.
    cuts: Vec<(Duration, Vec<Link>)>,
    /// When to checkpoint and compact every running node's log.
    compact_at: Option<Duration>,
}

impl Plan {
    fn heal(dur: Duration) -> Plan {
        Plan {
            fault: Fault::Heal,
            leader_first: false,
            perm: (1..=N).collect(),
            dur,
            slow: Vec::new(),
            cuts: Vec::new(),
            compact_at: None,
        }
    }

    fn kind(&self) -> &'static str {
        match self.fault {
            Fault::Heal => "heal",
            Fault::Isolate { k: 1, .. } if self.leader_first => "isolate leader",
            Fault::Isolate { .. } => "isolate minority",
            Fault::OneWay { .. } => "one-way partition",
            Fault::Split { .. } => "split, no majority",
            Fault::Restart => "restart",
            Fault::RestartIsolate { .. } => "restart + isolate",
            Fault::Degrade => "slow links",
            Fault::Flap => "flapping connections",
        }
    }

    fn block(&self) -> Option<Block> {
        match self.fault {
            Fault::Isolate { how, .. }
            | Fault::OneWay { how, .. }
            | Fault::Split { how }
            | Fault::RestartIsolate { how } => Some(how),
            _ => None,
        }
    }

    /// The window's faults for the summary table, for a resolved
    /// permutation and the leader when the window opened.
    fn describe(&self, perm: &[u64], leader: Option<u64>) -> String {
        // Who leads is said next to the node it is.
        let name = |id: u64| {
            if leader == Some(id) {
                format!("{id} (leader)")
            } else {
                id.to_string()
            }
        };
        let mut what = match self.fault {
            Fault::Heal | Fault::Degrade | Fault::Flap => String::new(),
            Fault::Isolate { k, .. } => {
                let mut w = format!("{} cut off", fmt_ids(perm[..k].to_vec()));
                if let Some(l) = leader.filter(|l| perm[..k].contains(l)) {
                    let _ = write!(w, " (leader {l})");
                }
                w
            }
            Fault::OneWay { outbound: true, .. } => format!("{} cannot send", name(perm[0])),
            Fault::OneWay {
                outbound: false, ..
            } => format!("{} cannot receive", name(perm[0])),
            Fault::Split { .. } => format!(
                "{}|{}|{}",
                fmt_ids(perm[0..2].to_vec()),
                fmt_ids(perm[2..4].to_vec()),
                fmt_ids(perm[4..].to_vec())
            ),
            Fault::Restart => format!("{} restarted", name(perm[0])),
            Fault::RestartIsolate { .. } => {
                format!("{} restarted, {} cut off", name(perm[0]), name(perm[1]))
            }
        };
        if let Some(b) = self.block() {
            let _ = write!(
                what,
                " [{}]",
                match b {
                    Block::Blackhole => "blackhole",
                    Block::RefuseCut => "refuse+cut",
                }
            );
        }
        if !self.slow.is_empty() {
            let _ = write!(what, " +{} slow", self.slow.len());
        }
        if !self.cuts.is_empty() {
            let _ = write!(what, " +{} cuts", self.cuts.len());
        }
        if self.compact_at.is_some() {
            what.push_str(" +compact");
        }
        what
    }

    /// The nodes stopped and the links blocked, for a resolved permutation.
    fn effects(&self, p: &[u64]) -> (BTreeSet<u64>, BTreeSet<Link>) {
        let mut down = BTreeSet::new();
        let mut blocked = BTreeSet::new();
        let mut cross = |a: &[u64], b: &[u64]| {
            for &x in a {
                for &y in b {
                    blocked.insert((x, y));
                    blocked.insert((y, x));
                }
            }
        };
        match self.fault {
            Fault::Heal | Fault::Degrade | Fault::Flap => {}
            Fault::Isolate { k, .. } => cross(&p[..k], &p[k..]),
            Fault::OneWay { outbound, .. } => {
                for &y in &p[1..] {
                    blocked.insert(if outbound { (p[0], y) } else { (y, p[0]) });
                }
            }
            Fault::Split { .. } => {
                cross(&p[0..2], &p[2..]);
                cross(&p[2..4], &p[4..]);
            }
            Fault::Restart => {
                down.insert(p[0]);
            }
            Fault::RestartIsolate { .. } => {
                down.insert(p[0]);
                cross(&p[1..2], &p[2..]);
            }
        }
        (down, blocked)
    }
}

fn draw_block(rng: &mut Rng) -> Block {
    if rng.percent(50) {
        Block::Blackhole
    } else {
        Block::RefuseCut
    }
}

fn draw_slow(rng: &mut Rng, percent: u64) -> Vec<Slow> {
    let mut v = Vec::new();
    for link in links() {
        if rng.percent(percent) {
            let delay = rng.millis(1, 40);
            let throttle = rng.percent(40).then(|| (1 << 20) + rng.below(3 << 20));
            v.push(Slow {
                link,
                delay,
                throttle,
            });
        }
    }
    v
}

fn draw_cuts(rng: &mut Rng, count: u64, dur: Duration) -> Vec<(Duration, Vec<Link>)> {
    let all = links();
    let span = dur.as_millis() as u64 - 200;
    let mut cuts: Vec<(Duration, Vec<Link>)> = (0..count)
        .map(|_| {
            let at = Duration::from_millis(100 + rng.below(span));
            let n = 1 + rng.below(4);
            let links = (0..n)
                .map(|_| all[rng.below(all.len() as u64) as usize])
                .collect();
            (at, links)
        })
        .collect();
    cuts.sort_by_key(|c| c.0);
    cuts
}

fn draw_fault_window(rng: &mut Rng, dur: Duration) -> Plan {
    let mut perm: Vec<u64> = (1..=N).collect();
    rng.shuffle(&mut perm);
    let roll = rng.below(100);
    let coin = rng.percent(50);
    let how = draw_block(rng);
    let (fault, leader_first) = match roll {
        0..18 => (Fault::Isolate { k: 1, how }, true),
        18..36 => (
            Fault::Isolate {
                k: if coin { 1 } else { 2 },
                how,
            },
            rng.percent(30),
        ),
        36..46 => (
            Fault::OneWay {
                outbound: coin,
                how,
            },
            rng.percent(50),
        ),
        46..54 => (Fault::Split { how }, false),
        54..70 => (Fault::Restart, coin),
        70..78 => (Fault::RestartIsolate { how }, coin),
        78..89 => (Fault::Degrade, false),
        _ => (Fault::Flap, false),
    };
    let slow = match fault {
        Fault::Degrade => draw_slow(rng, 60),
        _ if rng.percent(30) => draw_slow(rng, 30),
        _ => Vec::new(),
    };
    let cuts = match fault {
        Fault::Flap => {
            let n = 6 + rng.below(7);
            draw_cuts(rng, n, dur)
        }
        _ if rng.percent(25) => {
            let n = 2 + rng.below(5);
            draw_cuts(rng, n, dur)
        }
        _ => Vec::new(),
    };
    let compact_at = rng
        .percent(40)
        .then(|| Duration::from_millis(200 + rng.below(dur.as_millis() as u64 - 400)));
    Plan {
        fault,
        leader_first,
        perm,
        dur,
        slow,
        cuts,
        compact_at,
    }
}

/// Fault windows and healing windows, alternating, filling `secs`; a last
/// healing window takes what is left.
fn schedule(rng: &mut Rng, secs: f64) -> Vec<Plan> {
    let total = Duration::from_secs_f64(secs);
    let mut t = Duration::ZERO;
    let mut plans: Vec<Plan> = Vec::new();
    loop {
        let left = total.saturating_sub(t);
        if left < Duration::from_millis(2_800 + 400) {
            // What is left goes to the last healing window.
            match plans.last_mut() {
                Some(last) => last.dur += left,
                None => plans.push(Plan::heal(left)),
            }
            return plans;
        }
        let dur = rng.millis(2_000, 2_800);
        plans.push(draw_fault_window(rng, dur));
        let heal = rng.millis(400, 900);
        plans.push(Plan::heal(heal));
        t += dur + heal;
    }
}

/// The largest set of at least three running nodes that are all mutually
/// connected (every link between them up both ways), if there is one.
fn connected_majority(down: &BTreeSet<u64>, blocked: &BTreeSet<Link>) -> Option<Vec<u64>> {
    let up = |a: u64, b: u64| !blocked.contains(&(a, b)) && !blocked.contains(&(b, a));
    let mut best: Option<Vec<u64>> = None;
    for mask in 0u32..(1 << N) {
        let set: Vec<u64> = (1..=N).filter(|id| mask & (1 << (id - 1)) != 0).collect();
        if set.len() as u64 <= N / 2 || set.iter().any(|id| down.contains(id)) {
            continue;
        }
        let clique = set.iter().all(|&a| set.iter().all(|&b| a == b || up(a, b)));
        if clique && best.as_ref().is_none_or(|b| b.len() < set.len()) {
            best = Some(set);
        }
    }
    best
}

fn fmt_ids(ids: impl IntoIterator<Item = u64>) -> String {
    let mut ids: Vec<u64> = ids.into_iter().collect();
    ids.sort_unstable();
    let v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", v.join(","))
}

// ---------------------------------------------------------------------------
// The cluster, shared by the controller (faults, restarts) and the client.
// ---------------------------------------------------------------------------

struct Cluster {
    /// By index id-1; `None` while a node is stopped.
    nodes: Mutex<Vec<Option<Node>>>,
    addrs: Vec<SocketAddr>,
    disks: Vec<Disk>,
    routes: Vec<Routes>,
    seed: u64,
}

fn ix(id: u64) -> usize {
    (id - 1) as usize
}

impl Cluster {
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Node>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status of every running node; fails if a node's raft thread has
    /// died (its panic is printed above).
    fn statuses(&self) -> Vec<Status> {
        let nodes = self.lock();
        let mut v = Vec::new();
        for n in nodes.iter().flatten() {
            let s = n.status();
            assert!(
                n.is_running() || s.removed,
                "seed {}: node {}'s raft thread died",
                self.seed,
                n.id
            );
            v.push(s);
        }
        v
    }

    /// The running node that says it leads, at the highest term.
    fn leader(&self) -> Option<Status> {
        self.statuses()
            .into_iter()
            .filter(|s| s.role == Some(StateRole::Leader))
            .max_by_key(|s| s.term)
    }

    fn with_node<R>(&self, id: u64, f: impl FnOnce(&Node) -> R) -> Option<R> {
        self.lock()[ix(id)].as_ref().map(f)
    }

    fn take(&self, id: u64) -> Node {
        self.lock()[ix(id)].take().expect("node running")
    }

    fn put(&self, node: Node) {
        let i = ix(node.id);
        let mut nodes = self.lock();
        assert!(nodes[i].is_none());
        nodes[i] = Some(node);
    }

    fn running(&self) -> Vec<u64> {
        self.lock().iter().flatten().map(|n| n.id).collect()
    }
}

// ---------------------------------------------------------------------------
// The client: proposes unique keys through the leader (one batch in five
// through a follower, which forwards them), without waiting for earlier
// batches, and records which it saw applied.
// ---------------------------------------------------------------------------

fn key(k: u64) -> String {
    format!("k{k}")
}

fn value(k: u64) -> String {
    format!("v{k}")
}

#[derive(Default)]
struct ClientLog {
    /// Keys handed to a node (0..proposed, each once).
    proposed: u64,
    /// Keys seen applied (so committed) on some node, and when.
    acked: Vec<(u64, Instant)>,
    /// Keys not seen applied within `ACK_WAIT`: they may or may not commit.
    abandoned: u64,
    /// Batches (of `BATCH` keys) proposed through a follower.
    via_follower: u64,
    /// Time with no leader to propose to.
    no_leader: Duration,
    /// Batches held back because `MAX_PENDING` keys were waiting at the
    /// node they would have gone to.
    held_back: u64,
}

fn client(cluster: Arc<Cluster>, stop: Arc<AtomicBool>) -> ClientLog {
    let mut rng = Rng(cluster.seed ^ 0xC11E_0000_0000_0001);
    let mut log = ClientLog::default();
    // key → (the node it was proposed through, when).
    let mut pending: BTreeMap<u64, (u64, Instant)> = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
        let t0 = Instant::now();
        // Acknowledgements: applied on any node means committed.
        if !pending.is_empty() {
            for disk in &cluster.disks {
                let st = disk.lock();
                let now = Instant::now();
                pending.retain(|&k, _| {
                    let applied = st.sm.kv.get(&key(k)).is_some_and(|v| *v == value(k));
                    if applied {
                        log.acked.push((k, now));
                    }
                    !applied
                });
            }
            let before = pending.len();
            pending.retain(|_, (_, at)| at.elapsed() < ACK_WAIT);
            log.abandoned += (before - pending.len()) as u64;
        }
        // The next batch.
        match cluster.leader() {
            None => log.no_leader += BATCH_EVERY,
            Some(leader) => {
                let mut via = leader.id;
                if rng.percent(20) {
                    let followers: Vec<u64> = cluster
                        .statuses()
                        .iter()
                        .filter(|s| {
                            s.id != leader.id && s.leader == leader.id && s.term == leader.term
                        })
                        .map(|s| s.id)
                        .collect();
                    if !followers.is_empty() {
                        via = followers[rng.below(followers.len() as u64) as usize];
                    }
                }
                let waiting = pending.values().filter(|(v, _)| *v == via).count();
                if waiting as u64 + BATCH > MAX_PENDING {
                    log.held_back += 1;
                } else {
                    let keys: Vec<u64> = (log.proposed..log.proposed + BATCH).collect();
                    let sent = cluster.with_node(via, |n| {
                        for &k in &keys {
                            n.propose(put(&key(k), &value(k)));
                        }
                    });
                    if sent.is_some() {
                        let now = Instant::now();
                        pending.extend(keys.iter().map(|&k| (k, (via, now))));
                        log.proposed += BATCH;
                        log.via_follower += u64::from(via != leader.id);
                    }
                }
            }
        }
        if let Some(rest) = BATCH_EVERY.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    log.abandoned += pending.len() as u64;
    log
}

// ---------------------------------------------------------------------------
// The controller.
// ---------------------------------------------------------------------------

/// What one window did.
struct Record {
    kind: &'static str,
    what: String,
    start: Duration,
    dur: Duration,
    majority: Option<Vec<u64>>,
    commit_start: u64,
    commit_end: u64,
    first_advance: Option<Duration>,
    leader_start: Option<u64>,
    leader_end: Option<u64>,
}

impl Record {
    /// Whether the progress rule applies to this window.
    fn checked(&self) -> bool {
        self.majority.is_some() && self.dur >= PROGRESS_WINDOW
    }

    fn progressed(&self) -> bool {
        self.commit_end > self.commit_start
    }
}

/// Counters summed over every instance of every node (a restart starts new
/// counters).
#[derive(Default)]
struct Totals {
    times_leader: u64,
    proposals_dropped: u64,
    unreachable_reports: u64,
    snapshot_reports: u64,
    snapshots_sent_raft: u64,
    msgs_sent: u64,
    reconnects: u64,
    drops: BTreeMap<String, u64>,
    protocol_errors: u64,
    handshake_timeouts: u64,
    snapshots_sent: u64,
    snapshots_send_failed: u64,
    snapshots_received: u64,
    local_only: u64,
    /// Messages a node received on the wrong channel (`Status::misrouted`).
    misrouted: u64,
}

impl Totals {
    fn add(&mut self, s: &Status, t: &Stats) {
        self.times_leader += s.times_leader;
        self.proposals_dropped += s.proposals_dropped;
        self.unreachable_reports += s.unreachable_reports();
        self.misrouted += s.misrouted;
        self.snapshot_reports += s.snapshot_reports;
        self.snapshots_sent_raft += s.snapshots_sent;
        self.protocol_errors += t.protocol_errors;
        self.handshake_timeouts += t.handshake_timeouts;
        self.local_only += t.dropped_local_only;
        for p in t.peers.values() {
            self.msgs_sent += p.message_lane.msgs_sent + p.append_lane.msgs_sent;
            self.reconnects += p.reconnects;
            self.snapshots_sent += p.snapshots_sent;
            self.snapshots_send_failed += p.snapshots_send_failed;
            self.snapshots_received += p.snapshots_received;
            self.local_only += p.received_local_only;
            for lane in [&p.message_lane, &p.append_lane, &p.snapshot_lane] {
                for (reason, n) in &lane.drops {
                    *self.drops.entry(format!("{reason:?}")).or_default() += n;
                }
            }
        }
    }
}

struct Chaos {
    cluster: Arc<Cluster>,
    proxies: BTreeMap<Link, FaultProxy>,
    /// term → the node seen leading it.
    leaders: BTreeMap<u64, u64>,
    /// The highest commit index seen on any node.
    high_commit: u64,
    totals: Totals,
    records: Vec<Record>,
    t0: Instant,
    restarts: u64,
    restart_time: Duration,
    blocked_links: u64,
    slow_links: u64,
    cut_calls: u64,
    compactions: u64,
    kinds: BTreeMap<&'static str, u64>,
}

impl Chaos {
    fn observe_one(&mut self, s: &Status) {
        self.high_commit = self.high_commit.max(s.commit);
        if s.role == Some(StateRole::Leader) {
            let l = *self.leaders.entry(s.term).or_insert(s.id);
            assert_eq!(
                l, s.id,
                "seed {}: two leaders in term {}: {l} and {}",
                self.cluster.seed, s.term, s.id
            );
        }
    }

    fn observe(&mut self) -> Vec<Status> {
        let sts = self.cluster.statuses();
        for s in &sts {
            self.observe_one(s);
        }
        sts
    }

    fn stop_node(&mut self, id: u64) {
        let t = Instant::now();
        let mut node = self.cluster.take(id);
        let stats = node.t.stats();
        node.stop();
        // The last status, published before the thread ended.
        let s = node.status();
        self.observe_one(&s);
        self.totals.add(&s, &stats);
        self.restart_time += t.elapsed();
    }

    fn start_node(&mut self, id: u64) {
        let t = Instant::now();
        let c = &self.cluster;
        let node = Node::start_routed(
            id,
            c.addrs[ix(id)],
            c.disks[ix(id)].clone(),
            &c.routes[ix(id)],
        );
        c.put(node);
        self.restarts += 1;
        self.restart_time += t.elapsed();
    }

    fn compact_all(&mut self) {
        for id in self.cluster.running() {
            if self.cluster.with_node(id, |n| n.compact()).is_some() {
                self.compactions += 1;
            }
        }
    }

    fn heal_proxies(&self) {
        for p in self.proxies.values() {
            p.pass();
        }
    }

    fn run_window(&mut self, plan: &Plan) {
        let leader = self.cluster.leader().map(|s| s.id);
        let mut perm = plan.perm.clone();
        if plan.leader_first
            && let Some(l) = leader
        {
            let at = perm.iter().position(|&x| x == l).unwrap();
            perm.swap(0, at);
        }
        let (down, blocked) = plan.effects(&perm);
        *self.kinds.entry(plan.kind()).or_default() += 1;

        // Apply the fault.
        for &id in &down {
            self.stop_node(id);
        }
        let how = plan.block();
        for l in &blocked {
            let p = &self.proxies[l];
            match how.expect("a blocking fault") {
                Block::Blackhole => p.blackhole(Direction::Both, true),
                Block::RefuseCut => {
                    p.refuse(true);
                    p.cut();
                }
            }
        }
        for s in &plan.slow {
            let p = &self.proxies[&s.link];
            p.set_delay(Direction::Both, s.delay);
            p.set_throttle(Direction::ClientToServer, s.throttle);
        }
        self.blocked_links += blocked.len() as u64;
        self.slow_links += plan.slow.len() as u64;

        let majority = connected_majority(&down, &blocked);
        let what = plan.describe(&perm, leader);

        // Hold it, sampling.
        let t0 = Instant::now();
        self.observe();
        let commit_start = self.high_commit;
        let leader_start = self.cluster.leader().map(|s| s.id);
        let mut first_advance = None;
        let mut next_cut = 0;
        let mut compacted = plan.compact_at.is_none();
        // A connection accepted just as `refuse` went on may have escaped
        // the first cut.
        let mut recut = (how == Some(Block::RefuseCut)).then_some(Duration::from_millis(50));
        loop {
            let el = t0.elapsed();
            if el >= plan.dur {
                break;
            }
            while next_cut < plan.cuts.len() && plan.cuts[next_cut].0 <= el {
                for l in &plan.cuts[next_cut].1 {
                    self.proxies[l].cut();
                    self.cut_calls += 1;
                }
                next_cut += 1;
            }
            if recut.is_some_and(|at| at <= el) {
                for l in &blocked {
                    self.proxies[l].cut();
                }
                recut = None;
            }
            if !compacted && plan.compact_at.is_some_and(|at| at <= el) {
                self.compact_all();
                compacted = true;
            }
            self.observe();
            if first_advance.is_none() && self.high_commit > commit_start {
                first_advance = Some(t0.elapsed());
            }
            std::thread::sleep(POLL.min(plan.dur.saturating_sub(t0.elapsed())));
        }
        self.observe();
        let dur = t0.elapsed();
        let commit_end = self.high_commit;
        let leader_end = self.cluster.leader().map(|s| s.id);

        // Heal.
        self.heal_proxies();
        for &id in &down {
            self.start_node(id);
        }
        self.records.push(Record {
            kind: plan.kind(),
            what,
            start: t0 - self.t0,
            dur,
            majority,
            commit_start,
            commit_end,
            first_advance,
            leader_start,
            leader_end,
        });
    }
}

fn print_summary(
    chaos: &Chaos,
    log: &ClientLog,
    final_commit: u64,
    final_keys: usize,
    secs: f64,
    took: Duration,
) {
    let seed = chaos.cluster.seed;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== chaos summary: seed {seed} (RAFTWIRE_CHAOS_SEED={seed}), {secs} s of faults, \
         whole test {took:.1?}"
    );
    let _ = writeln!(
        out,
        "{:>3} {:>7} {:>6}  {:<21} {:<52} {:<11} {:>13} {:>8} {:>6} {:>6}  progress",
        "#", "start", "dur", "fault", "detail", "majority", "commit", "first+", "acked", "leader"
    );
    for (i, r) in chaos.records.iter().enumerate() {
        let acked = log
            .acked
            .iter()
            .filter(|(_, at)| {
                let t = at.saturating_duration_since(chaos.t0);
                t >= r.start && t < r.start + r.dur
            })
            .count();
        let verdict = match (r.checked(), r.progressed()) {
            (true, true) => "ok (checked)",
            (true, false) => "NONE (checked: FAIL)",
            (false, true) => "yes",
            (false, false) => "none",
        };
        let leader = |l: Option<u64>| l.map_or("-".to_string(), |l| l.to_string());
        let _ = writeln!(
            out,
            "{:>3} {:>6.2}s {:>5.2}s  {:<21} {:<52} {:<11} {:>6}→{:<6} {:>8} {:>6} {:>3}→{:<2}  {verdict}",
            i + 1,
            r.start.as_secs_f64(),
            r.dur.as_secs_f64(),
            r.kind,
            r.what,
            r.majority.clone().map_or("none".to_string(), fmt_ids),
            r.commit_start,
            r.commit_end,
            r.first_advance
                .map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64())),
            acked,
            leader(r.leader_start),
            leader(r.leader_end),
        );
    }
    let checked: Vec<&Record> = chaos.records.iter().filter(|r| r.checked()).collect();
    let worst = checked
        .iter()
        .filter_map(|r| r.first_advance)
        .max()
        .unwrap_or_default();
    let t = &chaos.totals;
    let _ = writeln!(
        out,
        "faults: {:?}; {} links blocked, {} slowed, {} proxy cuts, {} restarts \
         ({:.2?} stopping and starting), {} compactions",
        chaos.kinds,
        chaos.blocked_links,
        chaos.slow_links,
        chaos.cut_calls,
        chaos.restarts,
        chaos.restart_time,
        chaos.compactions
    );
    let (mut accepted, mut refused, mut reset) = (0, 0, 0);
    for p in chaos.proxies.values() {
        let s = p.stats();
        accepted += s.accepted;
        refused += s.refused;
        reset += s.cut;
    }
    let _ = writeln!(
        out,
        "proxies: {accepted} connections accepted, {refused} refused, {reset} reset by cuts"
    );
    let _ = writeln!(
        out,
        "client: {} proposed in {} batches ({} through a follower, {} held back), {} \
         acknowledged, {} not acknowledged within {:?} ({} keys in the final state), {:.2?} \
         without a leader",
        log.proposed,
        log.proposed / BATCH,
        log.via_follower,
        log.held_back,
        log.acked.len(),
        log.abandoned,
        ACK_WAIT,
        final_keys,
        log.no_leader
    );
    let _ = writeln!(
        out,
        "raft: final commit index {final_commit}, {} terms with a leader seen (last term {}), \
         {} times a node became leader, {} proposals dropped by raft, {} unreachable and {} \
         snapshot reports, {} MsgSnapshot sent",
        chaos.leaders.len(),
        chaos.leaders.keys().last().copied().unwrap_or(0),
        t.times_leader,
        t.proposals_dropped,
        t.unreachable_reports,
        t.snapshot_reports,
        t.snapshots_sent_raft
    );
    let _ = writeln!(
        out,
        "transport: {} messages sent, {} reconnects, drops {:?}, {} protocol errors, {} \
         handshake timeouts, snapshots {} sent / {} failed / {} received",
        t.msgs_sent,
        t.reconnects,
        t.drops,
        t.protocol_errors,
        t.handshake_timeouts,
        t.snapshots_sent,
        t.snapshots_send_failed,
        t.snapshots_received
    );
    let _ = writeln!(
        out,
        "progress: {} of {} windows checked (>= {:?} with a connected majority), {} progressed; \
         slowest first advance in a checked window {:.2?}",
        checked.len(),
        chaos.records.len(),
        PROGRESS_WINDOW,
        checked.iter().filter(|r| r.progressed()).count(),
        worst
    );
    println!("{out}");
}

#[test]
fn five_nodes_through_fault_proxies_stay_consistent_and_make_progress() {
    let t_test = Instant::now();
    init_log();
    let seed = env_seed();
    let secs = env_secs();
    println!(
        "chaos: seed {seed} (replay with RAFTWIRE_CHAOS_SEED={seed}), {secs} s of faults \
         (RAFTWIRE_CHAOS_SECS)"
    );
    let mut rng = Rng(seed);
    let plans = schedule(&mut rng, secs);

    // Transports first (their addresses), then a proxy per directed link,
    // then the nodes, which dial their peers through the proxies.
    let started: Vec<Wire> = (1..=N)
        .map(|id| start_transport(id, any_port(), Duration::ZERO))
        .collect();
    let addrs: Vec<SocketAddr> = started.iter().map(|(t, ..)| t.local_addr()).collect();
    let members: BTreeMap<u64, String> =
        (1..=N).map(|id| (id, addrs[ix(id)].to_string())).collect();
    let proxies: BTreeMap<Link, FaultProxy> = links()
        .into_iter()
        .map(|(a, b)| ((a, b), FaultProxy::start(addrs[ix(b)]).expect("proxy")))
        .collect();
    let routes: Vec<Routes> = (1..=N)
        .map(|a| {
            (1..=N)
                .filter(|&b| b != a)
                .map(|b| (b, proxies[&(a, b)].addr().to_string()))
                .collect()
        })
        .collect();
    let disks: Vec<Disk> = (1..=N).map(|_| Disk::founding(&members)).collect();
    let mut nodes = Vec::new();
    for (id, (t, reporter, events)) in (1..=N).zip(started) {
        let routes = routes[ix(id)].clone();
        add_peers(&t, id, &routes);
        let disk = disks[ix(id)].clone();
        nodes.push(Some(Node::run_routed(
            id, t, reporter, events, disk, routes,
        )));
    }
    let cluster = Arc::new(Cluster {
        nodes: Mutex::new(nodes),
        addrs,
        disks,
        routes,
        seed,
    });
    cluster.with_node(1, |n| n.campaign());
    wait_until(&format!("a leader (seed {seed})"), ELECTION_SECS, || {
        cluster.leader().is_some()
    });

    // Chaos, with the client proposing throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let client_thread: JoinHandle<ClientLog> = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        std::thread::Builder::new()
            .name("chaos-client".into())
            .spawn(move || client(cluster, stop))
            .unwrap()
    };
    let mut chaos = Chaos {
        cluster: cluster.clone(),
        proxies,
        leaders: BTreeMap::new(),
        high_commit: 0,
        totals: Totals::default(),
        records: Vec::new(),
        t0: Instant::now(),
        restarts: 0,
        restart_time: Duration::ZERO,
        blocked_links: 0,
        slow_links: 0,
        cut_calls: 0,
        compactions: 0,
        kinds: BTreeMap::new(),
    };
    for plan in &plans {
        chaos.run_window(plan);
    }
    stop.store(true, Ordering::Release);
    let log = client_thread.join().expect("client thread");

    // Heal everything (the last window already did) and wait until every
    // node has applied the leader's commit index and the leader has nothing
    // uncommitted, so that nothing more will be applied.
    chaos.heal_proxies();
    let deadline = Instant::now() + Duration::from_secs(CONVERGE_SECS);
    let (final_commit, final_leader) = loop {
        let sts = chaos.observe();
        assert_eq!(sts.len() as u64, N);
        if let Some(l) = sts.iter().find(|s| s.role == Some(StateRole::Leader)) {
            let c = l.commit;
            let settled = l.last_index == c
                && sts.iter().all(|s| {
                    s.applied == c && s.commit == c && s.term == l.term && s.leader == l.id
                });
            if settled {
                break (c, l.id);
            }
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the nodes did not converge within {CONVERGE_SECS}s after healing: {sts:#?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };

    // Stop every node, followers first: the disks are final.
    let mut stopped: Vec<Node> = Vec::new();
    let order: Vec<u64> = (1..=N)
        .filter(|&id| id != final_leader)
        .chain([final_leader])
        .collect();
    for id in order {
        let mut node = cluster.take(id);
        let stats = node.t.stats();
        node.stop();
        chaos.totals.add(&node.status(), &stats);
        stopped.push(node);
    }
    for p in chaos.proxies.values() {
        p.stop();
    }
    stopped.sort_by_key(|n| n.id);
    let final_keys = stopped[0].disk.lock().sm.kv.len();
    print_summary(
        &chaos,
        &log,
        final_commit,
        final_keys,
        secs,
        t_test.elapsed(),
    );

    // 1. Every node applied up to the same index.
    let all: Vec<&Node> = stopped.iter().collect();
    for n in &all {
        assert_eq!(
            n.disk.sm().applied,
            final_commit,
            "seed {seed}: node {} stopped at another applied index",
            n.id
        );
    }
    // 2. Agreement: where two nodes applied the same index, the same entry;
    //    and every index was applied as an entry by someone (the nodes
    //    that skipped it got it in a snapshot of a state that includes it).
    check_histories(&all);
    let mut covered = BTreeSet::new();
    for n in &all {
        for a in n.disk.history() {
            if let Applied::Entry { index, .. } = a {
                covered.insert(index);
            }
        }
    }
    let missing: Vec<u64> = (2..=final_commit)
        .filter(|i| !covered.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: indexes committed but applied as an entry by no node: {missing:?}"
    );
    // Identical state machines holding everything anyone ever applied.
    let sm = check_identical(&all);
    // 3. Every acknowledged proposal is there; nothing else is.
    let lost: Vec<u64> = log
        .acked
        .iter()
        .map(|&(k, _)| k)
        .filter(|&k| sm.kv.get(&key(k)) != Some(&value(k)))
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged proposals missing from the final state, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    for (k, v) in &sm.kv {
        let n: u64 = k
            .strip_prefix('k')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("seed {seed}: unexpected key {k:?}"));
        assert!(n < log.proposed, "seed {seed}: {k} was never proposed");
        assert_eq!(*v, value(n), "seed {seed}: {k} has the wrong value");
    }
    assert!(
        sm.kv.len() >= log.acked.len(),
        "seed {seed}: fewer keys than acknowledgements"
    );
    // 4. Nothing local-only crossed the network, and every message came
    //    on the receive channel of its class.
    assert_eq!(
        chaos.totals.local_only, 0,
        "seed {seed}: local-only messages"
    );
    assert_eq!(
        chaos.totals.misrouted, 0,
        "seed {seed}: messages on the wrong receive channel"
    );
    // 5. Progress wherever a majority was connected long enough.
    let stalled: Vec<usize> = chaos
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.checked() && !r.progressed())
        .map(|(i, _)| i + 1)
        .collect();
    assert!(
        stalled.is_empty(),
        "seed {seed}: no progress in windows {stalled:?}, each at least {PROGRESS_WINDOW:?} \
         with a connected majority (see the table above)"
    );
    assert!(
        log.acked.len() as u64 > 0,
        "seed {seed}: nothing was acknowledged"
    );
}
