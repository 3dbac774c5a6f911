//! A raft-rs test harness over real raftwire transports on 127.0.0.1.
//!
//! Each [`Node`] runs a `RawNode` on its own thread, beside its own
//! `Transport<eraftpb::Message>`, and applies committed entries to a small
//! key-value state machine. Tests drive it through a command channel
//! (propose, conf change, campaign, compact, stop) and observe it through a
//! shared [`Status`] and the node's [`Disk`].
//!
//! What survives a restart is the [`Disk`]: raft's log and hard state (a
//! `MemStorage`), the point the log was compacted to, the state machine
//! with its applied index (serialized into the snapshots served to
//! followers that fell behind the compacted log), and the history of
//! applied entries that the tests compare. Restarting a node
//! drops its `RawNode` and `Transport` and starts new ones on the same
//! `Disk`, with `Config::applied` set to what the state machine holds.
//!
//! A node may be given [`Routes`]: for some peers, the address to dial
//! instead of the one in the replicated address book (a fault-injecting
//! proxy in front of that peer, say). Routes are the node's own, not part
//! of the replicated state, and survive restarts only if the test passes
//! them again.
#![allow(dead_code)]

// The integration tests' shared helpers: the transport timings and the
// polling wait.
#[path = "../common/mod.rs"]
mod common;

pub use common::{init_log, wait_until};

use crossbeam_channel::{Receiver, Sender, select, tick};
use protobuf::Message as _;
use raft::eraftpb::{
    self, ConfChange, ConfChangeType, ConfState, Entry, EntryType, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};
use raftwire::raft_rs::apply_report;
use raftwire::{ChannelReporter, Config, ReportEvent, Transport};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub type Msg = eraftpb::Message;

/// Per node: peer id → the address this node dials for that peer, in place
/// of the address book's.
pub type Routes = BTreeMap<u64, String>;

/// How often a node ticks raft.
pub const TICK: Duration = Duration::from_millis(10);

/// The integration tests' shortened timings (`common::config`), on `addr`,
/// with unreachable reports at most every 20 ms so that raft hears of a
/// lost peer quickly.
pub fn transport_config(id: u64, addr: SocketAddr) -> Config {
    let mut c = common::config(id);
    c.listen_addr = addr;
    c.unreachable_report_interval = Duration::from_millis(20);
    c
}

/// What a node runs on: its transport, the reporter the transport reports
/// to, and the channel those reports arrive on.
pub type Wire = (Transport<Msg>, ChannelReporter, Receiver<ReportEvent>);

/// Starts node `id`'s transport on `addr` (port 0 for any). Binding is
/// retried for up to `bind_for` (a restarted node takes back its port).
pub fn start_transport(id: u64, addr: SocketAddr, bind_for: Duration) -> Wire {
    init_log();
    let (reporter, events) = ChannelReporter::new();
    let deadline = Instant::now() + bind_for;
    loop {
        match Transport::start(transport_config(id, addr), reporter.clone()) {
            Ok(t) => return (t, reporter, events),
            Err(e) if Instant::now() < deadline => {
                log::warn!("node {id}: binding {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("node {id}: binding {addr}: {e}"),
        }
    }
}

/// Adds every peer in `peers` (id → address) but `id` itself to `t` as a
/// member.
pub fn add_peers(t: &Transport<Msg>, id: u64, peers: &BTreeMap<u64, String>) {
    for (&p, a) in peers {
        if p != id {
            t.add_peer(p, &[a.as_str()]).expect("add_peer");
        }
    }
}

pub fn raft_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// The state machine and its serialization (the snapshot's data).
// ---------------------------------------------------------------------------

/// A key-value map plus the cluster's address book (members and learners
/// with the address from their ConfChange's context), so that a node that
/// catches up through a snapshot also learns where its peers are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub kv: BTreeMap<String, String>,
    pub members: BTreeMap<u64, String>,
    pub applied: u64,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!("need {n} bytes, have {}", b.len()));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn take_u64(b: &mut &[u8]) -> Result<u64, String> {
    Ok(u64::from_be_bytes(take(b, 8)?.try_into().unwrap()))
}

fn take_str(b: &mut &[u8]) -> Result<String, String> {
    let n = u32::from_be_bytes(take(b, 4)?.try_into().unwrap()) as usize;
    String::from_utf8(take(b, n)?.to_vec()).map_err(|e| e.to_string())
}

impl StateMachine {
    /// `members count | (id, addr)* | kv count | (key, value)*`. The applied
    /// index is the snapshot's own index, not part of the data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.members.len() as u64).to_be_bytes());
        for (id, addr) in &self.members {
            out.extend_from_slice(&id.to_be_bytes());
            put_bytes(&mut out, addr.as_bytes());
        }
        out.extend_from_slice(&(self.kv.len() as u64).to_be_bytes());
        for (k, v) in &self.kv {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
        out
    }

    pub fn decode(mut b: &[u8], applied: u64) -> Result<StateMachine, String> {
        let b = &mut b;
        let mut sm = StateMachine {
            applied,
            ..Default::default()
        };
        for _ in 0..take_u64(b)? {
            let id = take_u64(b)?;
            sm.members.insert(id, take_str(b)?);
        }
        for _ in 0..take_u64(b)? {
            let k = take_str(b)?;
            sm.kv.insert(k, take_str(b)?);
        }
        if !b.is_empty() {
            return Err(format!("{} trailing bytes", b.len()));
        }
        Ok(sm)
    }
}

/// A proposal's data: `key=value`.
pub fn put(key: &str, value: &str) -> Vec<u8> {
    format!("{key}={value}").into_bytes()
}

/// One applied entry, as a test compares them, or a snapshot that replaced
/// a stretch of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Entry {
        index: u64,
        term: u64,
        kind: EntryType,
        data: Vec<u8>,
    },
    Snapshot {
        index: u64,
        term: u64,
    },
}

impl Applied {
    pub fn index(&self) -> u64 {
        match self {
            Applied::Entry { index, .. } | Applied::Snapshot { index, .. } => *index,
        }
    }
}

// ---------------------------------------------------------------------------
// Durable state and the Storage that raft reads.
// ---------------------------------------------------------------------------

pub struct DiskState {
    /// The latest compaction point: taken at compaction, or received from
    /// the leader (its data is the state machine's bytes then).
    pub checkpoint: Snapshot,
    pub sm: StateMachine,
    pub history: Vec<Applied>,
    pub snapshots_applied: u64,
}

/// What a node keeps across a restart. Cheap to clone (shared).
#[derive(Clone)]
pub struct Disk {
    pub raft: MemStorage,
    state: Arc<Mutex<DiskState>>,
}

impl Disk {
    /// A disk for one of the founding members: everyone starts from the
    /// same snapshot at index 1 (voters and their addresses), so that a
    /// node added later, whose disk is empty, catches up from a snapshot
    /// that carries the first configuration too.
    pub fn founding(members: &BTreeMap<u64, String>) -> Disk {
        let sm = StateMachine {
            members: members.clone(),
            applied: 1,
            ..Default::default()
        };
        let mut snap = Snapshot {
            data: sm.encode().into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = 1;
        md.term = 1;
        md.set_conf_state(ConfState::from((members.keys().copied(), vec![])));
        let raft = MemStorage::new();
        raft.wl().apply_snapshot(snap.clone()).unwrap();
        Disk {
            raft,
            state: Arc::new(Mutex::new(DiskState {
                checkpoint: snap,
                sm,
                history: vec![Applied::Snapshot { index: 1, term: 1 }],
                snapshots_applied: 0,
            })),
        }
    }

    /// An empty disk, for a node that joins an existing cluster.
    pub fn empty() -> Disk {
        Disk {
            raft: MemStorage::new(),
            state: Arc::new(Mutex::new(DiskState {
                checkpoint: Snapshot::default(),
                sm: StateMachine::default(),
                history: Vec::new(),
                snapshots_applied: 0,
            })),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sm(&self) -> StateMachine {
        self.lock().sm.clone()
    }

    pub fn history(&self) -> Vec<Applied> {
        self.lock().history.clone()
    }

    /// Installs a snapshot received from the leader: raft's storage, the
    /// compaction point, and the state machine.
    fn install_snapshot(&self, snap: &Snapshot) -> Result<StateMachine, String> {
        let md = snap.get_metadata();
        let sm = StateMachine::decode(&snap.data, md.index)?;
        self.raft
            .wl()
            .apply_snapshot(snap.clone())
            .map_err(|e| e.to_string())?;
        let mut st = self.lock();
        st.checkpoint = snap.clone();
        st.sm = sm.clone();
        st.history.push(Applied::Snapshot {
            index: md.index,
            term: md.term,
        });
        st.snapshots_applied += 1;
        Ok(sm)
    }

    /// A snapshot of the state machine as it is now, at its applied index.
    pub fn snapshot_now(&self) -> raft::Result<Snapshot> {
        let (applied, data) = {
            let st = self.lock();
            (st.sm.applied, st.sm.encode())
        };
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = applied;
        md.term = self.term(applied)?;
        // Conf changes are applied in order with the entries, so the stored
        // conf state is the one at `applied`.
        md.set_conf_state(self.raft.initial_state()?.conf_state);
        Ok(snap)
    }

    /// Takes a checkpoint at the applied index and discards the log before
    /// it. Returns the checkpoint's index.
    pub fn compact(&self) -> raft::Result<u64> {
        let snap = self.snapshot_now()?;
        let index = snap.get_metadata().index;
        let mut st = self.lock();
        if index <= st.checkpoint.get_metadata().index {
            return Ok(st.checkpoint.get_metadata().index);
        }
        st.checkpoint = snap;
        // Keep the entry at `index` so the log is never empty (MemStorage
        // cannot say the term of a compacted index otherwise).
        self.raft.wl().compact(index)?;
        Ok(index)
    }
}

impl Storage for Disk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.raft.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.raft.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let st = self.lock();
            let md = st.checkpoint.get_metadata();
            if md.index == idx && idx > 0 {
                return Ok(md.term);
            }
        }
        self.raft.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.raft.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.raft.last_index()
    }

    /// A snapshot taken now, with the state machine in its data (what
    /// `MemStorage::snapshot` cannot give: it stores no state machine). A
    /// fresh one, not the last checkpoint, so that its configuration
    /// includes the node it is for: a node being added refuses a snapshot
    /// that predates its addition.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.snapshot_now()?;
        if snap.get_metadata().index < request_index || snap.is_empty() {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

// ---------------------------------------------------------------------------
// The node thread.
// ---------------------------------------------------------------------------

pub enum Cmd {
    Propose(Vec<u8>),
    ConfChange(ConfChange),
    Campaign,
    /// Checkpoint at the applied index and compact; answers the index.
    Compact(Sender<u64>),
    Stop,
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub id: u64,
    pub role: Option<StateRole>,
    pub term: u64,
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Set when this node applied its own removal; its thread has ended.
    pub removed: bool,
    pub proposals_dropped: u64,
    /// `ReportEvent::Unreachable` events, by peer.
    pub unreachable: BTreeMap<u64, u64>,
    pub snapshot_reports: u64,
    /// MsgPropose messages that arrived on `proposals()`.
    pub proposals_received: u64,
    /// Messages on the wrong receive channel: a MsgPropose on `messages()`
    /// or anything else on `proposals()`.
    pub misrouted: u64,
    /// MsgSnapshot messages this node handed to the transport.
    pub snapshots_sent: u64,
    /// Times this node became leader (since this instance started).
    pub times_leader: u64,
}

impl Status {
    /// Unreachable reports about any peer.
    pub fn unreachable_reports(&self) -> u64 {
        self.unreachable.values().sum()
    }
}

pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    pub t: Transport<Msg>,
    pub reporter: ChannelReporter,
    pub disk: Disk,
    pub status: Arc<Mutex<Status>>,
    cmds: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts a node on `disk`, listening on `addr` (port 0 for any), with
    /// `peers` (id → address) added to its transport as members.
    pub fn start(id: u64, addr: SocketAddr, disk: Disk, peers: &BTreeMap<u64, String>) -> Node {
        let (t, reporter, events) = start_transport(id, addr, Duration::ZERO);
        add_peers(&t, id, peers);
        Node::run(id, t, reporter, events, disk)
    }

    /// Starts a node on `disk`, listening on `addr`, that dials each peer
    /// in `routes` at the route's address, whatever the address book says.
    /// Binding `addr` is retried for a while (a restarted node takes back
    /// its port).
    pub fn start_routed(id: u64, addr: SocketAddr, disk: Disk, routes: &Routes) -> Node {
        let (t, reporter, events) = start_transport(id, addr, Duration::from_secs(5));
        add_peers(&t, id, routes);
        Node::run_routed(id, t, reporter, events, disk, routes.clone())
    }

    /// Starts a node on an already started transport (so that tests can
    /// learn every address before the disks are made).
    pub fn run(
        id: u64,
        t: Transport<Msg>,
        reporter: ChannelReporter,
        events: Receiver<ReportEvent>,
        disk: Disk,
    ) -> Node {
        Node::run_routed(id, t, reporter, events, disk, Routes::new())
    }

    /// [`run`](Node::run), with [`Routes`] that override the address book.
    pub fn run_routed(
        id: u64,
        t: Transport<Msg>,
        reporter: ChannelReporter,
        events: Receiver<ReportEvent>,
        disk: Disk,
        routes: Routes,
    ) -> Node {
        let applied = disk.lock().sm.applied;
        let logger = slog::Logger::root(
            slog::Drain::fuse(slog_stdlog::StdLog),
            slog::o!("raft_id" => id),
        );
        let raw = RawNode::new(&raft_config(id, applied), disk.clone(), &logger).expect("RawNode");
        let status = Arc::new(Mutex::new(Status {
            id,
            ..Default::default()
        }));
        let (cmds, cmd_rx) = crossbeam_channel::unbounded();
        let mut driver = Driver {
            id,
            raw,
            t: t.clone(),
            reporter: reporter.clone(),
            events,
            cmds: cmd_rx,
            disk: disk.clone(),
            status: status.clone(),
            stats: Status::default(),
            removed: false,
            routes,
            was_leader: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-node-{id}"))
            .spawn(move || driver.run())
            .unwrap();
        Node {
            id,
            addr: t.local_addr(),
            t,
            reporter,
            disk,
            status,
            cmds,
            thread: Some(thread),
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    pub fn propose(&self, data: Vec<u8>) {
        let _ = self.cmds.send(Cmd::Propose(data));
    }

    pub fn conf_change(&self, cc: ConfChange) {
        let _ = self.cmds.send(Cmd::ConfChange(cc));
    }

    pub fn campaign(&self) {
        let _ = self.cmds.send(Cmd::Campaign);
    }

    /// Checkpoints and compacts this node's log; returns the checkpoint index.
    pub fn compact(&self) -> u64 {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmds.send(Cmd::Compact(tx)).expect("node running");
        rx.recv_timeout(Duration::from_secs(5)).expect("compact")
    }

    /// Stops the raft thread and the transport; the disk stays.
    pub fn stop(&mut self) {
        let _ = self.cmds.send(Cmd::Stop);
        if let Some(h) = self.thread.take() {
            h.join().expect("node thread panicked");
        }
        self.t.stop();
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Stop);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        self.t.stop();
    }
}

struct Driver {
    id: u64,
    raw: RawNode<Disk>,
    t: Transport<Msg>,
    reporter: ChannelReporter,
    events: Receiver<ReportEvent>,
    cmds: Receiver<Cmd>,
    disk: Disk,
    status: Arc<Mutex<Status>>,
    /// Counters kept by the driver, copied into `status`.
    stats: Status,
    removed: bool,
    routes: Routes,
    was_leader: bool,
}

/// Most inputs of each kind handled before the node looks at its Ready, so
/// that a flood of one kind cannot starve ticks or the others.
const BATCH: usize = 4096;

impl Driver {
    fn run(&mut self) {
        // On a restart, the transport must know every member the disk knows.
        let sm = self.disk.sm();
        self.sync_members(&sm, false);
        let ticker = tick(TICK);
        loop {
            select! {
                recv(self.t.messages()) -> m => if let Ok(m) = m { self.step(m, false) },
                recv(self.t.proposals()) -> m => if let Ok(m) = m { self.step(m, true) },
                recv(self.t.appends()) -> m => if let Ok(m) = m { self.step(m, false) },
                recv(self.events) -> e => if let Ok(e) = e { self.report(e) },
                recv(self.cmds) -> c => match c {
                    Ok(Cmd::Stop) | Err(_) => return,
                    Ok(c) => if !self.command(c) { return },
                },
                recv(ticker) -> _ => { self.raw.tick(); },
            }
            // Take whatever else has arrived, in bounded batches.
            for m in self.t.messages().try_iter().take(BATCH).collect::<Vec<_>>() {
                self.step(m, false);
            }
            for m in self
                .t
                .proposals()
                .try_iter()
                .take(BATCH)
                .collect::<Vec<_>>()
            {
                self.step(m, true);
            }
            for m in self.t.appends().try_iter().take(BATCH).collect::<Vec<_>>() {
                self.step(m, false);
            }
            for e in self.events.try_iter().take(BATCH).collect::<Vec<_>>() {
                self.report(e);
            }
            for c in self.cmds.try_iter().take(BATCH).collect::<Vec<_>>() {
                if matches!(c, Cmd::Stop) || !self.command(c) {
                    return;
                }
            }
            self.on_ready();
            self.publish();
            if self.removed {
                return;
            }
        }
    }

    /// Steps a message that arrived on `proposals()` (`proposal`) or on
    /// `messages()`, counting which channel it came on.
    fn step(&mut self, m: Msg, proposal: bool) {
        if (m.get_msg_type() == MessageType::MsgPropose) != proposal {
            self.stats.misrouted += 1;
        } else if proposal {
            self.stats.proposals_received += 1;
        }
        // Responses from nodes that are no longer members are refused
        // (StepPeerNotFound); nothing else to do with them.
        let _ = self.raw.step(m);
    }

    fn report(&mut self, ev: ReportEvent) {
        match ev {
            ReportEvent::Unreachable(id) => *self.stats.unreachable.entry(id).or_default() += 1,
            ReportEvent::Snapshot(..) => self.stats.snapshot_reports += 1,
            _ => {}
        }
        apply_report(&mut self.raw, ev);
    }

    fn command(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Propose(data) => {
                if self.raw.propose(vec![], data).is_err() {
                    self.stats.proposals_dropped += 1;
                }
            }
            Cmd::ConfChange(cc) => {
                if self.raw.propose_conf_change(vec![], cc).is_err() {
                    self.stats.proposals_dropped += 1;
                }
            }
            Cmd::Campaign => {
                let _ = self.raw.campaign();
            }
            Cmd::Compact(reply) => {
                let index = self.disk.compact().expect("compact");
                let _ = reply.send(index);
            }
            Cmd::Stop => return false,
        }
        true
    }

    /// Every message goes through `send`, which never blocks; an inline
    /// `MsgSnapshot` takes the transport's snapshot path, whose outcome
    /// comes back as a `ReportEvent::Snapshot`.
    fn send(&mut self, msgs: Vec<Msg>) {
        self.stats.snapshots_sent += msgs
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count() as u64;
        self.t.send(msgs);
    }

    /// The raft-rs 0.7 Ready loop.
    fn on_ready(&mut self) {
        if !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        // 1. Messages that may go before anything is persisted.
        let msgs = rd.take_messages();
        self.send(msgs);
        // 2. A snapshot from the leader: install it (storage, checkpoint,
        //    state machine) before anything else.
        if !rd.snapshot().is_empty() {
            let sm = self
                .disk
                .install_snapshot(rd.snapshot())
                .expect("install snapshot");
            self.sync_members(&sm, true);
        }
        // 3. Committed entries (already persisted in earlier Readies).
        let committed = rd.take_committed_entries();
        self.apply(committed);
        // 4. Persist the new entries and hard state…
        self.disk.raft.wl().append(rd.entries()).expect("append");
        if let Some(hs) = rd.hs() {
            self.disk.raft.wl().set_hardstate(hs.clone());
        }
        // 5. …and only then send what had to wait for them (votes, append
        //    responses).
        let msgs = rd.take_persisted_messages();
        self.send(msgs);
        // 6. The light ready: commit index, more messages, more entries.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.disk.raft.wl().mut_hard_state().set_commit(commit);
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed);
        self.raw.advance_apply();
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if self.removed {
                return;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    let s = String::from_utf8_lossy(&e.data);
                    let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                    self.disk.lock().sm.kv.insert(k.to_string(), v.to_string());
                }
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).expect("conf change entry");
                    self.apply_conf_change(&cc);
                }
                EntryType::EntryConfChangeV2 => panic!("the harness proposes no ConfChangeV2"),
            }
            let mut st = self.disk.lock();
            st.sm.applied = e.index;
            st.history.push(Applied::Entry {
                index: e.index,
                term: e.term,
                kind: e.get_entry_type(),
                data: e.data.to_vec(),
            });
        }
    }

    fn apply_conf_change(&mut self, cc: &ConfChange) {
        let cs = self.raw.apply_conf_change(cc).expect("apply conf change");
        self.disk.raft.wl().set_conf_state(cs);
        let id = cc.node_id;
        match cc.get_change_type() {
            kind @ (ConfChangeType::AddLearnerNode | ConfChangeType::AddNode) => {
                let addr = String::from_utf8_lossy(&cc.context).to_string();
                self.disk.lock().sm.members.insert(id, addr.clone());
                if id != self.id {
                    self.connect(id, &addr, kind == ConfChangeType::AddLearnerNode);
                }
            }
            ConfChangeType::RemoveNode => {
                self.disk.lock().sm.members.remove(&id);
                if id == self.id {
                    log::info!("node {}: removed from the cluster, stopping", self.id);
                    self.removed = true;
                    return;
                }
                self.reporter.mark_removed(id);
                let _ = self.t.remove_peer(id);
            }
        }
    }

    /// The configuration as of the last applied conf change (or snapshot).
    fn conf_state(&self) -> ConfState {
        self.disk
            .raft
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }

    /// Adds `id` to the transport, dialled at its route if it has one,
    /// else at `book` (the address book's entry): a member as a peer, a
    /// `learner` as a remote (sent to, caught up, not a member yet; adding
    /// it as a peer later promotes it). An id the transport already knows
    /// gets the address, unless it is routed: a routed peer's address never
    /// changes, so its lanes are left be.
    fn connect(&self, id: u64, book: &str, learner: bool) {
        let dial = self.routes.get(&id).map_or(book, String::as_str);
        let r = if learner {
            self.t.add_remote(id, &[dial])
        } else {
            self.t.add_peer(id, &[dial])
        };
        match r {
            Ok(()) => {}
            Err(raftwire::Error::DuplicatePeer(_)) if self.routes.contains_key(&id) => {}
            Err(raftwire::Error::DuplicatePeer(_)) => {
                let _ = self.t.update_peer(id, &[dial]);
            }
            Err(e) => log::warn!("node {}: adding {id} at {dial}: {e}", self.id),
        }
    }

    /// Adds every member of the address book to the transport (members as
    /// peers, learners as remotes), after a restart or a snapshot; after a
    /// snapshot (`prune`), also removes peers the snapshot does not list.
    fn sync_members(&mut self, sm: &StateMachine, prune: bool) {
        let cs = self.conf_state();
        for (&id, addr) in &sm.members {
            if id != self.id {
                self.connect(id, addr, cs.learners.contains(&id));
            }
        }
        if !prune {
            return;
        }
        for id in self.t.peers() {
            if !sm.members.contains_key(&id)
                && !cs.voters.contains(&id)
                && !cs.learners.contains(&id)
            {
                let _ = self.t.remove_peer(id);
            }
        }
    }

    fn publish(&mut self) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        if is_leader && !self.was_leader {
            self.stats.times_leader += 1;
        }
        self.was_leader = is_leader;
        let r = &self.raw.raft;
        let cs = self.conf_state();
        *self.status.lock().unwrap() = Status {
            id: self.id,
            role: Some(r.state),
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.disk.lock().sm.applied,
            first_index: r.raft_log.first_index(),
            last_index: r.raft_log.last_index(),
            voters: cs.voters,
            learners: cs.learners,
            removed: self.removed,
            ..self.stats.clone()
        };
    }
}

// ---------------------------------------------------------------------------
// Clusters and waiting.
// ---------------------------------------------------------------------------

/// `n` founding members, ids 1..=n, each with its own transport on
/// 127.0.0.1 and a disk that starts from the same snapshot.
pub fn cluster(n: u64) -> Vec<Node> {
    let started: Vec<(u64, Wire)> = (1..=n)
        .map(|id| (id, start_transport(id, any_port(), Duration::ZERO)))
        .collect();
    let members: BTreeMap<u64, String> = started
        .iter()
        .map(|(id, (t, ..))| (*id, t.local_addr().to_string()))
        .collect();
    started
        .into_iter()
        .map(|(id, (t, reporter, events))| {
            Node::run(id, t, reporter, events, Disk::founding(&members))
        })
        .collect()
}

/// 127.0.0.1, any free port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn addresses(nodes: &[&Node]) -> BTreeMap<u64, String> {
    nodes.iter().map(|n| (n.id, n.addr.to_string())).collect()
}

/// The leader that every listed running node agrees on (same leader, same
/// term, and it considers itself leader), waiting up to `secs`.
pub fn wait_leader(nodes: &[&Node], secs: u64) -> u64 {
    let mut leader = 0;
    wait_until("an agreed leader", secs, || {
        let st: Vec<Status> = nodes.iter().map(|n| n.status()).collect();
        let l = st[0].leader;
        let term = st[0].term;
        let agreed = l != 0
            && st.iter().all(|s| s.leader == l && s.term == term)
            && st
                .iter()
                .any(|s| s.id == l && s.role == Some(StateRole::Leader));
        if agreed {
            leader = l;
        }
        agreed
    });
    leader
}

pub fn by_id<'a>(nodes: &'a [&'a Node], id: u64) -> &'a Node {
    nodes.iter().find(|n| n.id == id).expect("node")
}

/// Proposes `key{i}=v{i}` for every i in `keys` until each is applied on
/// the current leader, re-proposing what was dropped (for example during
/// an election) after `retry` without progress. Proposals go to
/// `via(leader)`: the leader itself or a follower that forwards them.
pub fn propose_all(
    nodes: &[&Node],
    keys: std::ops::Range<u64>,
    secs: u64,
    via: impl Fn(u64) -> u64,
) -> Duration {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let key = |i: u64| format!("key{i}");
    let mut pending: Vec<u64> = keys.collect();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} proposals not applied after {secs}s",
            pending.len()
        );
        let leader = wait_leader(
            nodes,
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1),
        );
        let target = by_id(nodes, via(leader));
        for &i in &pending {
            target.propose(put(&key(i), &format!("v{i}")));
        }
        // Wait for progress; stop waiting once all are in, or after a
        // second without any.
        let lnode = by_id(nodes, leader);
        let mut last_seen = (pending.len(), Instant::now());
        loop {
            let sm = lnode.disk.sm();
            pending.retain(|&i| !sm.kv.contains_key(&key(i)));
            if pending.is_empty() {
                break;
            }
            if pending.len() < last_seen.0 {
                last_seen = (pending.len(), Instant::now());
            } else if last_seen.1.elapsed() > Duration::from_secs(1) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    t0.elapsed()
}

/// Waits until every listed node has applied at least `index`.
pub fn wait_applied(nodes: &[&Node], index: u64, secs: u64) {
    wait_until(&format!("every node to apply {index}"), secs, || {
        nodes.iter().all(|n| n.status().applied >= index)
    });
}

/// Waits until all listed nodes have applied the same index and it is the
/// leader's commit index, then returns it.
pub fn wait_converged(nodes: &[&Node], secs: u64) -> u64 {
    let mut at = 0;
    wait_until("the nodes to converge", secs, || {
        let st: Vec<Status> = nodes.iter().map(|n| n.status()).collect();
        let c = st.iter().map(|s| s.commit).max().unwrap();
        at = c;
        st.iter().all(|s| s.applied == c && s.commit == c)
    });
    at
}

/// Cuts node `id` off from every other node, both directions.
pub fn isolate(nodes: &[&Node], id: u64) {
    set_paused(nodes, id, true);
}

/// Undoes [`isolate`].
pub fn heal(nodes: &[&Node], id: u64) {
    set_paused(nodes, id, false);
}

/// Pauses or resumes every link between node `id` and the others, on both
/// ends.
fn set_paused(nodes: &[&Node], id: u64, paused: bool) {
    for n in nodes {
        for p in n.t.peers() {
            if n.id == id || p == id {
                let r = if paused { n.t.pause(p) } else { n.t.resume(p) };
                r.unwrap();
            }
        }
    }
}

/// Checks the histories of applied entries against each other: at every
/// index that two nodes both applied, they applied the same entry (term,
/// type and data). Returns every key-value pair that any node applied.
pub fn check_histories(nodes: &[&Node]) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<u64, (u64, Applied)> = BTreeMap::new();
    let mut all_kv = BTreeMap::new();
    for n in nodes {
        let h = n.disk.history();
        let mut last = 0;
        for a in h {
            assert!(
                a.index() >= last,
                "node {}: history goes back from {last} to {}",
                n.id,
                a.index()
            );
            last = a.index();
            if let Applied::Entry {
                index, kind, data, ..
            } = &a
            {
                if *kind == EntryType::EntryNormal && !data.is_empty() {
                    let s = String::from_utf8_lossy(data).to_string();
                    let (k, v) = s.split_once('=').unwrap();
                    all_kv.insert(k.to_string(), v.to_string());
                }
                match seen.get(index) {
                    Some((other, b)) => assert_eq!(
                        &a, b,
                        "nodes {} and {other} applied different entries at {index}",
                        n.id
                    ),
                    None => {
                        seen.insert(*index, (n.id, a.clone()));
                    }
                }
            }
        }
    }
    all_kv
}

/// The state machines of all listed nodes are identical, and every
/// key-value pair that any of them ever applied is in it (nothing that was
/// committed is lost).
pub fn check_identical(nodes: &[&Node]) -> StateMachine {
    let all_kv = check_histories(nodes);
    let first = nodes[0].disk.sm();
    for n in &nodes[1..] {
        let sm = n.disk.sm();
        assert_eq!(sm.applied, first.applied, "node {} applied index", n.id);
        assert!(
            sm == first,
            "node {} state machine differs from node {}'s ({} vs {} keys)",
            n.id,
            nodes[0].id,
            sm.kv.len(),
            first.kv.len()
        );
    }
    for (k, v) in &all_kv {
        assert_eq!(
            first.kv.get(k),
            Some(v),
            "{k}={v} was applied somewhere but is not in the final state"
        );
    }
    first
}

pub fn conf_change(kind: ConfChangeType, id: u64, addr: &str) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(kind);
    cc.node_id = id;
    cc.context = addr.as_bytes().to_vec().into();
    cc
}
