//! W5: what a raft-rs user gets. Three raft-rs 0.7 `RawNode`s (protobuf
//! codec, `MemStorage`) in this process, each on a thread of its own beside
//! its own `Transport<eraftpb::Message>` on 127.0.0.1 (raftwire's default
//! configuration; `apply_report` hands the transport's reports to raft).
//! Node 1 campaigns; once it leads and its first entry is committed, it
//! keeps [`WINDOW`] proposals of the measured size outstanding (proposed
//! and not yet committed) and, in the `-bulk` variants, [`BULK_WINDOW`]
//! entries of 1 MiB beside them. A proposal is committed when the leader's
//! `Ready` (or `LightReady`) hands it over in its committed entries: the
//! latency runs from just before `RawNode::propose` to then, on the one
//! monotonic clock.
//!
//! The timed phase starts `Scale::w5_warmup` after the first proposal and
//! lasts `Scale::w5_duration`; proposals/s counts the measured entries
//! committed in it, and latency percentiles are over the proposals made in
//! it (proposals continue until the last of those has committed, so the
//! tail is measured under the same load). Every node compacts its log as
//! it applies (the leader no further than its slowest follower has
//! matched), so no follower needs a snapshot and memory stays bounded.

use crate::Scale;
use crate::common::{Stamp, emit, emit_percentiles, info, pattern, percentile};
use crate::pair::{IMPL, drops, print_config, wait_connected};
use crossbeam_channel::{Receiver, select, tick};
use raft::eraftpb::{ConfState, Entry, Message as Msg};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use raftwire::raft_rs::apply_report;
use raftwire::{ChannelReporter, Config, ReportEvent, Transport};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const NODES: [u64; 3] = [1, 2, 3];
const LEADER: u64 = 1;
/// Measured proposals outstanding at the leader.
pub const WINDOW: usize = 256;
/// 1 MiB entries outstanding at the leader in the `-bulk` variants.
pub const BULK_WINDOW: usize = 4;
pub const BULK_LEN: usize = 1 << 20;
/// How often every node ticks raft.
const TICK: Duration = Duration::from_millis(10);
/// Entry data: a tag, the proposal's sequence number (8 bytes, big
/// endian), then the pattern up to the entry's size.
const SMALL: u8 = 0;
const BULK: u8 = 1;
const HEADER: usize = 9;
/// A node compacts its log once it has applied this many entries or bytes
/// since it last did.
const COMPACT_ENTRIES: u64 = 8192;
const COMPACT_BYTES: u64 = 64 << 20;
/// Most inputs of each kind handled before the node looks at its Ready.
const BATCH: usize = 4096;
/// The longest the measured proposals may take to commit once the timed
/// phase is over, and to get a leader at the start.
const LIMIT: Duration = Duration::from_secs(30);

/// raft-rs's configuration on every node: an election timeout of 1–2 s
/// (100 ticks of 10 ms), so that a busy 2-core machine does not start an
/// election in the middle of a run; appends of up to 1 MiB of entries,
/// 256 of them in flight per follower (raft-rs's default).
fn raft_config(id: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 100,
        heartbeat_tick: 10,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

/// What the leader measured.
struct Outcome {
    start: Stamp,
    end: Stamp,
    /// Measured entries committed in the timed phase.
    committed: u64,
    /// Bytes of 1 MiB entries committed in the timed phase.
    bulk_bytes: u64,
    /// Commit latency of every measured proposal made in the timed phase.
    latency_ns: Vec<u64>,
    /// Proposals raft refused (`ProposalDropped`).
    refused: u64,
    term: u64,
}

/// The leader's proposer: its windows and what it measured.
struct Proposer {
    small: Vec<u8>,
    big: Option<Vec<u8>>,
    warmup: Duration,
    duration: Duration,
    next_seq: u64,
    /// Outstanding measured proposals, oldest first: sequence number, when
    /// proposed, whether proposed in the timed phase.
    pending: VecDeque<(u64, Instant, bool)>,
    bulk_pending: usize,
    created: Instant,
    /// When the first proposal was made.
    first: Option<Instant>,
    start: Option<Stamp>,
    end: Option<Stamp>,
    committed: u64,
    bulk_bytes: u64,
    latency_ns: Vec<u64>,
    refused: u64,
    term: u64,
}

impl Proposer {
    fn new(size: usize, bulk: bool, scale: &Scale) -> Proposer {
        let entry = |tag: u8, len: usize| {
            let mut d = pattern(len.max(HEADER));
            d[0] = tag;
            d
        };
        Proposer {
            small: entry(SMALL, size),
            big: bulk.then(|| entry(BULK, BULK_LEN)),
            warmup: scale.w5_warmup,
            duration: scale.w5_duration,
            next_seq: 0,
            pending: VecDeque::with_capacity(WINDOW),
            bulk_pending: 0,
            created: Instant::now(),
            first: None,
            start: None,
            end: None,
            committed: 0,
            bulk_bytes: 0,
            latency_ns: Vec::new(),
            refused: 0,
            term: 0,
        }
    }

    fn timed(&self) -> bool {
        self.start.is_some() && self.end.is_none()
    }

    /// Moves the phases on and tops the windows up. Returns whether the
    /// run is over (every proposal of the timed phase committed).
    fn step(&mut self, raw: &mut RawNode<MemStorage>) -> Result<bool, String> {
        let now = Instant::now();
        if raw.raft.state != StateRole::Leader {
            return match self.first {
                Some(_) => Err(format!("node {LEADER} lost the leadership during the run")),
                None if now - self.created > LIMIT => Err(format!("no leader after {LIMIT:?}")),
                None => Ok(false),
            };
        }
        let first = match self.first {
            Some(t) => t,
            // Its term's first entry must be committed before it proposes.
            None if raw.raft.raft_log.committed < raw.raft.raft_log.last_index() => {
                return Ok(false);
            }
            None => {
                self.term = raw.raft.term;
                *self.first.insert(now)
            }
        };
        if self.start.is_none() && now - first >= self.warmup {
            self.start = Some(Stamp::now());
        }
        if let (Some(s), None) = (self.start, self.end)
            && now - s.at >= self.duration
        {
            self.end = Some(Stamp::now());
        }
        if let Some(e) = self.end {
            if !self.pending.iter().any(|p| p.2) {
                return Ok(true);
            }
            if now - e.at > LIMIT {
                return Err(format!(
                    "proposals not committed {LIMIT:?} after the timed phase"
                ));
            }
        }
        while self.pending.len() < WINDOW {
            let seq = self.next_seq;
            let mut data = self.small.clone();
            data[1..HEADER].copy_from_slice(&seq.to_be_bytes());
            let at = Instant::now();
            if raw.propose(vec![], data).is_err() {
                self.refused += 1;
                break;
            }
            self.pending.push_back((seq, at, self.timed()));
            self.next_seq += 1;
        }
        while let Some(big) = self
            .big
            .as_ref()
            .filter(|_| self.bulk_pending < BULK_WINDOW)
        {
            if raw.propose(vec![], big.clone()).is_err() {
                self.refused += 1;
                break;
            }
            self.bulk_pending += 1;
        }
        Ok(false)
    }

    /// A committed entry's data, seen at the leader.
    fn committed(&mut self, data: &[u8], at: Instant) {
        let timed = self.timed();
        match data.first() {
            Some(&SMALL) if data.len() >= HEADER => {
                let seq = u64::from_be_bytes(data[1..HEADER].try_into().expect("8 bytes"));
                while let Some(&(s, proposed, measured)) = self.pending.front() {
                    if s > seq {
                        break;
                    }
                    self.pending.pop_front();
                    if s == seq && measured {
                        self.latency_ns.push((at - proposed).as_nanos() as u64);
                    }
                }
                self.committed += u64::from(timed);
            }
            Some(&BULK) => {
                self.bulk_pending = self.bulk_pending.saturating_sub(1);
                if timed {
                    self.bulk_bytes += data.len() as u64;
                }
            }
            _ => {}
        }
    }

    fn outcome(self) -> Result<Outcome, String> {
        let (Some(start), Some(end)) = (self.start, self.end) else {
            return Err("the timed phase never ended".into());
        };
        Ok(Outcome {
            start,
            end,
            committed: self.committed,
            bulk_bytes: self.bulk_bytes,
            latency_ns: self.latency_ns,
            refused: self.refused,
            term: self.term,
        })
    }
}

/// One node: a `RawNode` over `MemStorage` beside its transport.
struct Node {
    id: u64,
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    t: Transport<Msg>,
    events: Receiver<ReportEvent>,
    stop: Arc<AtomicBool>,
    applied: u64,
    /// Entries and bytes applied since the log was last compacted.
    since_compact: (u64, u64),
    snapshots: u64,
    proposer: Option<Proposer>,
}

impl Node {
    /// The node's loop, until `stop` is set; the leader sets it when the
    /// run is over or has failed.
    fn run(mut self) -> Result<Option<Outcome>, String> {
        let r = self.run_loop();
        if self.proposer.is_some() {
            self.stop.store(true, Release);
        }
        r?;
        if self.snapshots > 0 {
            info(&format!(
                "node {}: {} snapshots applied",
                self.id, self.snapshots
            ));
        }
        self.proposer.map(Proposer::outcome).transpose()
    }

    fn run_loop(&mut self) -> Result<(), String> {
        let ticker = tick(TICK);
        let (msgs, props) = (self.t.messages().clone(), self.t.proposals().clone());
        let apps = self.t.appends().clone();
        let events = self.events.clone();
        while !self.stop.load(Acquire) {
            // What was stepped commits entries, which makes room in the
            // leader's windows; the proposals that fill them go out at once.
            self.on_ready()?;
            if let Some(p) = &mut self.proposer {
                if p.step(&mut self.raw)? {
                    return Ok(());
                }
                self.on_ready()?;
            }
            select! {
                recv(msgs) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(props) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(apps) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(events) -> e => if let Ok(e) = e { apply_report(&mut self.raw, e); },
                recv(ticker) -> _ => { self.raw.tick(); },
            }
            // Heartbeats and votes before proposals and appends.
            for m in self.t.try_iter().take(BATCH) {
                let _ = self.raw.step(m);
            }
            for e in events.try_iter().take(BATCH) {
                apply_report(&mut self.raw, e);
            }
        }
        Ok(())
    }

    /// The raft-rs 0.7 Ready loop, with `MemStorage` as the log.
    fn on_ready(&mut self) -> Result<(), String> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.t.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.snapshots += 1;
            let snap = rd.snapshot().clone();
            self.storage
                .wl()
                .apply_snapshot(snap)
                .map_err(|e| format!("node {}: apply snapshot: {e}", self.id))?;
        }
        self.apply(rd.take_committed_entries());
        self.storage
            .wl()
            .append(rd.entries())
            .map_err(|e| format!("node {}: append: {e}", self.id))?;
        if let Some(hs) = rd.hs() {
            self.storage.wl().set_hardstate(hs.clone());
        }
        self.t.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage.wl().mut_hard_state().set_commit(commit);
        }
        self.t.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        self.compact()
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let at = Instant::now();
        for e in entries {
            self.applied = e.index;
            self.since_compact.0 += 1;
            self.since_compact.1 += e.data.len() as u64;
            if let Some(p) = &mut self.proposer {
                p.committed(&e.data, at);
            }
        }
    }

    /// Drops applied entries from the log, on the leader only those every
    /// follower has.
    fn compact(&mut self) -> Result<(), String> {
        if self.since_compact.0 < COMPACT_ENTRIES && self.since_compact.1 < COMPACT_BYTES {
            return Ok(());
        }
        let mut upto = self.applied;
        if self.raw.raft.state == StateRole::Leader {
            let prs = self.raw.raft.prs();
            for id in NODES.into_iter().filter(|&id| id != self.id) {
                upto = upto.min(prs.get(id).map_or(0, |p| p.matched));
            }
        }
        self.since_compact = (0, 0);
        self.storage
            .wl()
            .compact(upto)
            .map_err(|e| format!("node {}: compact to {upto}: {e}", self.id))
    }
}

/// W5 with measured entries of `size` bytes, with a stream of 1 MiB
/// entries beside them if `bulk`.
pub fn run(workload: &str, size: usize, bulk: bool, scale: &Scale) -> Result<(), Error> {
    let mut wires = Vec::new();
    for id in NODES {
        let (reporter, events) = ChannelReporter::new();
        let t = Transport::<Msg>::start(Config::new(id, "127.0.0.1:0".parse()?), reporter)?;
        wires.push((id, t, events));
    }
    for (id, t, _) in &wires {
        for (peer, other, _) in wires.iter().filter(|w| w.0 != *id) {
            t.add_peer(*peer, &[other.local_addr()])?;
        }
    }
    for (id, t, _) in &wires {
        for peer in NODES.into_iter().filter(|p| p != id) {
            wait_connected(t, peer)?;
        }
    }
    print_config(wires[0].1.config(), "raft-rs eraftpb::Message, W5");
    let transports: Vec<Transport<Msg>> = wires.iter().map(|w| w.1.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut threads = Vec::new();
    for (id, t, events) in wires {
        let storage = MemStorage::new_with_conf_state(ConfState {
            voters: NODES.to_vec(),
            ..Default::default()
        });
        let mut raw = RawNode::new(&raft_config(id), storage.clone(), &logger)?;
        if id == LEADER {
            raw.campaign()?;
        }
        let node = Node {
            id,
            raw,
            storage,
            t,
            events,
            stop: stop.clone(),
            applied: 0,
            since_compact: (0, 0),
            snapshots: 0,
            proposer: (id == LEADER).then(|| Proposer::new(size, bulk, scale)),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-node-{id}"))
            .spawn(move || node.run())?;
        threads.push(thread);
    }
    let mut outcome = None;
    let mut failed = Vec::new();
    for th in threads {
        match th
            .join()
            .map_err(|_| "a raft node thread panicked".to_string())
        {
            Ok(Ok(o)) => outcome = outcome.or(o),
            Ok(Err(e)) | Err(e) => {
                stop.store(true, Release);
                failed.push(e);
            }
        }
    }
    let dropped: u64 = transports.iter().map(drops).sum();
    for t in &transports {
        t.stop();
    }
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    let o = outcome.ok_or("the leader reported nothing")?;
    let secs = (o.end.at - o.start.at).as_secs_f64();
    emit(IMPL, workload, "proposals_per_s", o.committed as f64 / secs);
    let v = emit_percentiles(IMPL, workload, "commit", &o.latency_ns);
    if bulk {
        emit(
            IMPL,
            workload,
            "bulk_MBps",
            o.bulk_bytes as f64 / 1e6 / secs,
        );
    } else {
        let cpu = o.end.cpu.saturating_sub(o.start.cpu).as_secs_f64();
        emit(
            IMPL,
            workload,
            "cpu_us_per_proposal",
            cpu * 1e6 / o.committed.max(1) as f64,
        );
    }
    emit(IMPL, workload, "dropped", dropped as f64);
    emit(IMPL, workload, "proposals_dropped", o.refused as f64);
    info(&format!(
        "{IMPL} {workload}: {} entries of {size} B committed in {secs:.3} s (window {WINDOW}{}), \
         term {}; commit latency of {} proposals: p90 {:.0} µs, p99.9 {:.0} µs \
         (timed phase: perf report --time {:.6},{:.6})",
        o.committed,
        if bulk {
            format!(", and {BULK_WINDOW} entries of 1 MiB")
        } else {
            String::new()
        },
        o.term,
        v.len(),
        percentile(&v, 90.0) as f64 / 1e3,
        percentile(&v, 99.9) as f64 / 1e3,
        o.start.mono_s,
        o.end.mono_s
    ));
    Ok(())
}
