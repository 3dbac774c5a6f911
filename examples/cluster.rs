//! A replicated key-value store: three raft-rs nodes, each a `RawNode` on
//! its own thread with its own raftwire `Transport` over real TCP on
//! 127.0.0.1.
//!
//! ```text
//! cargo run --release --features raft-rs --example cluster [-- --proposals N]
//! ```
//!
//! In one process (the default) it elects a leader, commits `--proposals`
//! puts (10,000 by default) and prints progress and a summary; then it cuts
//! one follower off, keeps committing, compacts the log so that the
//! follower can only catch up through a snapshot, heals the partition, and
//! checks that the three state machines are identical (the exit status is
//! 1 if they are not).
//!
//! The same program runs one node per process, so that you can start three
//! terminals and kill one:
//!
//! ```text
//! cargo run --release --features raft-rs --example cluster -- --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! cargo run --release --features raft-rs --example cluster -- --id 2 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! cargo run --release --features raft-rs --example cluster -- --id 3 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! ```
//!
//! Each process proposes its own `--proposals` puts (forwarded to the
//! leader when it is a follower), then keeps running and prints its state
//! every second, with a digest of its state machine that should match the
//! others'. Kill the leader: the other two elect a new one. Start it again:
//! it replays its state file (raft's log, hard state and a snapshot of the
//! map, in `--data-dir`, by default `raftwire-cluster/` in the system's
//! temporary directory) and catches up, through a snapshot if the others
//! compacted past it. Delete the files to start a new cluster.
//! `--run-for SECS` makes a process exit on its own.
//!
//! The `RawNode` loop is in [`Driver::on_ready`]; how the transport's
//! reports reach raft is in [`Driver::report`].

use crossbeam_channel::{Receiver, Sender, select, tick};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, MessageType, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};
use raftwire::raft_rs::apply_report;
use raftwire::{ChannelReporter, Config, RejectReason, ReportEvent, Stats, Transport};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Msg = raft::eraftpb::Message;

/// Raft's clock: one tick every 10 ms, an election after 30 to 60 ticks
/// without a leader, a heartbeat every 3.
const TICK: Duration = Duration::from_millis(10);

fn raft_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        // What the state machine already holds; raft hands over the
        // committed entries after it again.
        applied,
        election_tick: 30,
        heartbeat_tick: 3,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

fn transport_config(id: u64, addr: SocketAddr) -> Config {
    let mut c = Config::new(id, addr);
    c.cluster_id = 0x00C1_05FE;
    c.heartbeat_interval = Duration::from_millis(100);
    c.read_timeout = Duration::from_millis(600);
    // A MsgSnapshot carries the whole state machine inline: allow 1 GiB.
    c.max_inline_snapshot_len = 1 << 30;
    c
}

// ----------------------------------------------------------------------------
// The state machine: a key-value map. Its bytes are a snapshot's data.
// ----------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Kv {
    map: BTreeMap<String, String>,
    applied: u64,
}

impl Kv {
    fn apply(&mut self, data: &[u8]) {
        let s = String::from_utf8_lossy(data);
        if let Some((k, v)) = s.split_once('=') {
            self.map.insert(k.to_string(), v.to_string());
        }
    }

    /// `count | (key len | key | value len | value)*`, big-endian lengths.
    fn encode(&self) -> Vec<u8> {
        let mut out = (self.map.len() as u64).to_be_bytes().to_vec();
        for (k, v) in &self.map {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    fn decode(mut b: &[u8], applied: u64) -> Result<Kv, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err("snapshot data is truncated".into());
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        fn string(b: &mut &[u8]) -> Result<String, String> {
            let n = u32::from_be_bytes(take(b, 4)?.try_into().unwrap()) as usize;
            String::from_utf8(take(b, n)?.to_vec()).map_err(|e| e.to_string())
        }
        let n = u64::from_be_bytes(take(&mut b, 8)?.try_into().unwrap());
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = string(&mut b)?;
            map.insert(k, string(&mut b)?);
        }
        Ok(Kv { map, applied })
    }

    /// FNV-1a over the encoding: equal digests, equal maps (in practice).
    fn digest(&self) -> u64 {
        self.encode().iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

// ----------------------------------------------------------------------------
// Storage: raft-rs's MemStorage for the log and hard state, plus the state
// machine, so that a snapshot carries the data a lagging node needs.
// ----------------------------------------------------------------------------

/// `MemStorage::snapshot` holds no application data (it stores only the
/// log), so snapshots are made here: the key-value map at its applied
/// index, with the configuration at that index.
#[derive(Clone)]
struct Disk {
    log: MemStorage,
    kv: Arc<Mutex<Kv>>,
    /// Index and term of the entry the log was last compacted up to (or of
    /// the last installed snapshot).
    compacted: Arc<Mutex<(u64, u64)>>,
}

impl Disk {
    fn empty() -> Disk {
        Disk {
            log: MemStorage::new(),
            kv: Arc::default(),
            compacted: Arc::default(),
        }
    }

    /// Every founding member starts from the same snapshot at index 1 that
    /// names the voters, as raft-rs recommends; its data is an empty map.
    fn founding(voters: impl IntoIterator<Item = u64>) -> Disk {
        let mut snap = Snapshot {
            data: Kv::default().encode().into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = 1;
        md.term = 1;
        md.set_conf_state(ConfState::from((voters, vec![])));
        let disk = Disk::empty();
        disk.install(&snap).expect("founding snapshot");
        disk
    }

    fn kv(&self) -> MutexGuard<'_, Kv> {
        self.kv.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot_now(&self) -> raft::Result<Snapshot> {
        let (applied, data) = {
            let kv = self.kv();
            (kv.applied, kv.encode())
        };
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = applied;
        md.term = self.term(applied)?;
        md.set_conf_state(self.log.initial_state()?.conf_state);
        Ok(snap)
    }

    /// Discards the log up to the applied index (kept: the entry at it, so
    /// that its term stays known). Returns that index.
    fn compact(&self) -> raft::Result<u64> {
        let applied = self.kv().applied;
        let term = self.term(applied)?;
        self.log.wl().compact(applied)?;
        *self.compacted.lock().unwrap() = (applied, term);
        Ok(applied)
    }

    /// Installs a snapshot from the leader: log, state machine, and the
    /// compaction point.
    fn install(&self, snap: &Snapshot) -> Result<(), String> {
        let md = snap.get_metadata();
        let kv = Kv::decode(&snap.data, md.index)?;
        self.log
            .wl()
            .apply_snapshot(snap.clone())
            .map_err(|e| e.to_string())?;
        *self.kv() = kv;
        *self.compacted.lock().unwrap() = (md.index, md.term);
        Ok(())
    }
}

impl Storage for Disk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (index, term) = *self.compacted.lock().unwrap();
        if idx == index {
            return Ok(term);
        }
        self.log.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.snapshot_now()?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

// ----------------------------------------------------------------------------
// In the one-node-per-process mode, a file keeps what raft must not forget.
// ----------------------------------------------------------------------------

/// An append-only file of raft's durable state: entries, hard states and
/// snapshots (`tag (u8) | length (u32 BE) | protobuf`), replayed at start so
/// that a killed node comes back with its log and its vote (raft-rs panics
/// when a node that lost its log is told of a commit past its end). It is
/// rewritten from the current state when the log is compacted. Records
/// reach the OS before raft is told they are persisted; a real store would
/// also fsync there, to survive a power cut and not just a killed process.
struct Wal {
    path: PathBuf,
    out: BufWriter<File>,
}

const REC_ENTRY: u8 = 1;
const REC_HARD_STATE: u8 = 2;
const REC_SNAPSHOT: u8 = 3;

impl Wal {
    /// Opens the file, replaying it into a disk if it has anything.
    fn open(path: &Path) -> std::io::Result<(Wal, Option<Disk>)> {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(path) {
            f.read_to_end(&mut bytes)?;
        }
        let disk = Disk::replay(&bytes).map_err(std::io::Error::other)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let wal = Wal {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, out),
        };
        Ok((wal, disk))
    }

    fn record(&mut self, tag: u8, m: &impl protobuf::Message) -> std::io::Result<()> {
        let b = m.write_to_bytes().map_err(std::io::Error::other)?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&(b.len() as u32).to_be_bytes())?;
        self.out.write_all(&b)
    }

    /// Rewrites the file as `disk` is now: a snapshot of the state machine,
    /// the entries after it, the hard state.
    fn rewrite(&mut self, disk: &Disk) -> std::io::Result<()> {
        let snap = disk.snapshot_now().map_err(std::io::Error::other)?;
        let after = snap.get_metadata().index + 1;
        let last = disk.log.last_index().map_err(std::io::Error::other)?;
        let entries = if after <= last {
            disk.log
                .entries(after, last + 1, None, GetEntriesContext::empty(false))
                .map_err(std::io::Error::other)?
        } else {
            Vec::new()
        };
        let tmp = self.path.with_extension("tmp");
        let mut w = Wal {
            path: tmp.clone(),
            out: BufWriter::new(File::create(&tmp)?),
        };
        w.record(REC_SNAPSHOT, &snap)?;
        for e in &entries {
            w.record(REC_ENTRY, e)?;
        }
        w.record(REC_HARD_STATE, disk.log.rl().hard_state())?;
        w.out.flush()?;
        drop(w);
        std::fs::rename(&tmp, &self.path)?;
        self.out.flush()?;
        let out = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        self.out = BufWriter::with_capacity(1 << 20, out);
        Ok(())
    }
}

impl Disk {
    /// A disk from a file's records, or `None` for an empty file. A record
    /// cut short by a crash ends the replay.
    fn replay(mut b: &[u8]) -> Result<Option<Disk>, String> {
        let mut disk: Option<Disk> = None;
        while b.len() >= 5 {
            let len = u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
            if b.len() < 5 + len {
                break;
            }
            let (tag, body) = (b[0], &b[5..5 + len]);
            b = &b[5 + len..];
            let bad = |e: protobuf::ProtobufError| format!("corrupt state file: {e}");
            match (tag, &disk) {
                (REC_SNAPSHOT, _) => {
                    let mut snap = Snapshot::default();
                    snap.merge_from_bytes(body).map_err(bad)?;
                    let d = disk.take().unwrap_or_else(Disk::empty);
                    d.install(&snap)?;
                    disk = Some(d);
                }
                (REC_ENTRY, Some(d)) => {
                    let mut e = Entry::default();
                    e.merge_from_bytes(body).map_err(bad)?;
                    let (first, last) = (d.log.first_index().unwrap(), d.log.last_index().unwrap());
                    if e.index < first || e.index > last + 1 {
                        return Err(format!(
                            "corrupt state file: entry {} outside {first}..={}",
                            e.index,
                            last + 1
                        ));
                    }
                    d.log.wl().append(&[e]).map_err(|e| e.to_string())?;
                }
                (REC_HARD_STATE, Some(d)) => {
                    let mut hs = HardState::default();
                    hs.merge_from_bytes(body).map_err(bad)?;
                    d.log.wl().set_hardstate(hs);
                }
                _ => return Err(format!("corrupt state file: record {tag} out of place")),
            }
        }
        Ok(disk)
    }
}

// ----------------------------------------------------------------------------
// A node: RawNode + Transport on one thread, driven through a channel.
// ----------------------------------------------------------------------------

enum Cmd {
    Propose(Vec<u8>),
    /// Compact the log up to the applied index (on the raft thread, between
    /// two Readies).
    Compact,
    Stop,
}

/// What a node shows the outside, updated after every round of its loop.
#[derive(Debug, Clone, Default)]
struct Status {
    role: Option<StateRole>,
    term: u64,
    leader: u64,
    commit: u64,
    applied: u64,
    first_index: u64,
    unreachable_reports: u64,
    snapshots_sent: u64,
    snapshots_installed: u64,
}

struct Node {
    id: u64,
    t: Transport<Msg>,
    disk: Disk,
    status: Arc<Mutex<Status>>,
    cmds: Sender<Cmd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Starts a node on its transport and disk, with every other member
    /// as a peer; with a `wal`, what it persists also goes to a file.
    fn start(
        id: u64,
        t: Transport<Msg>,
        events: Receiver<ReportEvent>,
        peers: &BTreeMap<u64, SocketAddr>,
        disk: Disk,
        wal: Option<Wal>,
    ) -> Node {
        for (&p, addr) in peers {
            if p != id {
                t.add_peer(p, &[addr]).expect("add peer");
            }
        }
        // raft-rs logs through slog; send it to the `log` facade.
        let logger = slog::Logger::root(
            slog::Drain::fuse(slog_stdlog::StdLog),
            slog::o!("raft_id" => id),
        );
        let applied = disk.kv().applied;
        let raw = RawNode::new(&raft_config(id, applied), disk.clone(), &logger).expect("RawNode");
        let status = Arc::new(Mutex::new(Status::default()));
        let (cmds, cmd_rx) = crossbeam_channel::unbounded();
        let mut driver = Driver {
            id,
            raw,
            t: t.clone(),
            events,
            cmds: cmd_rx,
            disk: disk.clone(),
            wal,
            status: status.clone(),
            counts: Status::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("node-{id}"))
            .spawn(move || driver.run())
            .expect("spawn");
        Node {
            id,
            t,
            disk,
            status,
            cmds,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    fn propose(&self, data: Vec<u8>) {
        let _ = self.cmds.send(Cmd::Propose(data));
    }

    fn compact(&self) {
        let _ = self.cmds.send(Cmd::Compact);
    }

    /// Whether the raft thread is still running (it ends on `stop`, or if
    /// raft panics).
    fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    fn stop(&self) {
        let _ = self.cmds.send(Cmd::Stop);
        if let Some(h) = self.thread.lock().unwrap().take() {
            let _ = h.join();
        }
        self.t.stop();
    }
}

struct Driver {
    id: u64,
    raw: RawNode<Disk>,
    t: Transport<Msg>,
    events: Receiver<ReportEvent>,
    cmds: Receiver<Cmd>,
    disk: Disk,
    wal: Option<Wal>,
    status: Arc<Mutex<Status>>,
    counts: Status,
}

/// Inputs of one kind taken per round before the node handles its Ready.
const BATCH: usize = 4096;

impl Driver {
    fn run(&mut self) {
        let ticker = tick(TICK);
        loop {
            // Wait for anything: a message, a proposal, a report, a
            // command, or the tick…
            select! {
                recv(self.t.messages()) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(self.t.proposals()) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(self.t.appends()) -> m => if let Ok(m) = m { let _ = self.raw.step(m); },
                recv(self.events) -> e => if let Ok(e) = e { self.report(e) },
                recv(self.cmds) -> c => match c {
                    Ok(c) => if !self.command(c) { return },
                    Err(_) => return,
                },
                recv(ticker) -> _ => { self.raw.tick(); },
            }
            // …then take what else has arrived, so that one Ready covers a
            // whole batch.
            // …heartbeats, votes and responses before proposals and
            // appends (Transport::try_iter's order).
            for m in self.t.try_iter().take(BATCH).collect::<Vec<_>>() {
                let _ = self.raw.step(m);
            }
            for e in self.events.try_iter().take(BATCH).collect::<Vec<_>>() {
                self.report(e);
            }
            for c in self.cmds.try_iter().take(BATCH).collect::<Vec<_>>() {
                if !self.command(c) {
                    return;
                }
            }
            self.on_ready();
            self.publish();
        }
    }

    /// Handles a command; false means stop.
    fn command(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Propose(data) => {
                // A follower forwards the proposal to the leader (MsgPropose,
                // which arrives on the leader's proposals() channel); with no
                // leader it is dropped (an error here) and the client must
                // retry, as `commit_all` does.
                let _ = self.raw.propose(vec![], data);
            }
            Cmd::Compact => {
                if let Err(e) = self.disk.compact() {
                    eprintln!("node {}: compaction failed: {e}", self.id);
                }
                self.persist(|w, d| w.rewrite(d));
            }
            Cmd::Stop => return false,
        }
        true
    }

    /// The transport's reports, applied on the raft thread.
    fn report(&mut self, ev: ReportEvent) {
        match ev {
            ReportEvent::Unreachable(_) => self.counts.unreachable_reports += 1,
            ReportEvent::Snapshot(id, status) => {
                println!("node {}: snapshot to node {id}: {status:?}", self.id)
            }
            _ => {}
        }
        // Unreachable → report_unreachable; Snapshot → report_snapshot.
        if let Some(reason) = apply_report(&mut self.raw, ev) {
            eprintln!("node {}: a peer refused our connection: {reason}", self.id);
            if reason == RejectReason::RemovedMember {
                eprintln!("node {}: removed from the cluster", self.id);
            }
        }
    }

    /// Hands raft's messages to the transport. `send` never blocks; what
    /// cannot be sent is dropped, counted and reported back as unreachable.
    /// A `MsgSnapshot` (the whole state machine inline) takes the
    /// transport's snapshot path, on a connection of its own, and its fate
    /// comes back as a `ReportEvent::Snapshot`.
    fn send(&mut self, msgs: Vec<Msg>) {
        self.counts.snapshots_sent += msgs
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count() as u64;
        self.t.send(msgs);
    }

    /// Writes to the state file, if there is one; a node that cannot
    /// persist must not go on.
    fn persist(&mut self, f: impl FnOnce(&mut Wal, &Disk) -> std::io::Result<()>) {
        if let Some(w) = self.wal.as_mut()
            && let Err(e) = f(w, &self.disk)
        {
            eprintln!("node {}: cannot write {}: {e}", self.id, w.path.display());
            std::process::exit(2);
        }
    }

    /// One Ready, in the order raft-rs 0.7 requires.
    fn on_ready(&mut self) {
        if !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        // 1. Messages that need nothing persisted first (a leader's appends
        //    and heartbeats): send them now, in parallel with persisting.
        let msgs = rd.take_messages();
        self.send(msgs);
        // 2. A snapshot from the leader replaces log and state machine.
        if !rd.snapshot().is_empty() {
            if let Err(e) = self.disk.install(rd.snapshot()) {
                eprintln!("node {}: cannot install snapshot: {e}", self.id);
                std::process::exit(2);
            }
            self.counts.snapshots_installed += 1;
            self.persist(|w, d| w.rewrite(d));
        }
        // 3. Apply committed entries (persisted by earlier Readies).
        let committed = rd.take_committed_entries();
        self.apply(committed);
        // 4. Persist new entries and the hard state…
        self.disk.log.wl().append(rd.entries()).expect("append");
        if let Some(hs) = rd.hs() {
            self.disk.log.wl().set_hardstate(hs.clone());
        }
        let hs = rd.hs().cloned();
        self.persist(|w, _| {
            for e in rd.entries() {
                w.record(REC_ENTRY, e)?;
            }
            if let Some(hs) = &hs {
                w.record(REC_HARD_STATE, hs)?;
            }
            w.out.flush()
        });
        // 5. …and only then send the messages that promise they are
        //    persisted (votes, append responses).
        let msgs = rd.take_persisted_messages();
        self.send(msgs);
        // 6. Advance; the light ready brings a commit index, more messages
        //    and more committed entries.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.disk.log.wl().mut_hard_state().set_commit(commit);
            let hs = self.disk.log.rl().hard_state().clone();
            self.persist(|w, _| w.record(REC_HARD_STATE, &hs));
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed);
        self.raw.advance_apply();
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let mut kv = self.disk.kv();
        for e in entries {
            // The cluster's membership never changes here; a conf change
            // entry would be applied with raw.apply_conf_change.
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                kv.apply(&e.data);
            }
            kv.applied = e.index;
        }
    }

    fn publish(&mut self) {
        let r = &self.raw.raft;
        let c = &self.counts;
        *self.status.lock().unwrap() = Status {
            role: Some(r.state),
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.disk.kv().applied,
            first_index: r.raft_log.first_index(),
            ..c.clone()
        };
    }
}

// ----------------------------------------------------------------------------
// Running it.
// ----------------------------------------------------------------------------

struct Args {
    proposals: u64,
    id: Option<u64>,
    peers: BTreeMap<u64, SocketAddr>,
    run_for: Option<Duration>,
    data_dir: Option<PathBuf>,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "{why}\n\nusage: cluster [--proposals N]\n       \
         cluster --id ID --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
         [--proposals N] [--run-for SECS] [--data-dir DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        proposals: 10_000,
        id: None,
        peers: BTreeMap::new(),
        run_for: None,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--proposals" => {
                args.proposals = val().parse().unwrap_or_else(|_| usage("--proposals N"))
            }
            "--id" => args.id = Some(val().parse().unwrap_or_else(|_| usage("--id ID"))),
            "--data-dir" => args.data_dir = Some(PathBuf::from(val())),
            "--run-for" => {
                let s: u64 = val().parse().unwrap_or_else(|_| usage("--run-for SECS"));
                args.run_for = Some(Duration::from_secs(s));
            }
            "--peers" => {
                for p in val().split(',') {
                    let (id, addr) = p
                        .split_once('=')
                        .unwrap_or_else(|| usage(&format!("bad peer {p:?}: want ID=HOST:PORT")));
                    let id: u64 = id
                        .parse()
                        .unwrap_or_else(|_| usage(&format!("bad id in {p:?}")));
                    let addr: SocketAddr = addr
                        .parse()
                        .unwrap_or_else(|_| usage(&format!("bad address in {p:?}")));
                    args.peers.insert(id, addr);
                }
            }
            "-h" | "--help" => usage("a 3-node raft-rs key-value store over raftwire"),
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    match args.id {
        Some(id) if !args.peers.contains_key(&id) => usage("--id must be one of --peers"),
        None if !args.peers.is_empty() => usage("--peers needs --id"),
        _ => {}
    }
    args
}

fn main() {
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Warn)
        .parse_default_env()
        .try_init();
    let args = parse_args();
    let ok = match args.id {
        Some(id) => one_node(id, &args),
        None => three_nodes(&args),
    };
    std::process::exit(if ok { 0 } else { 1 });
}

/// Waits for `cond`, polling every millisecond, for at most `secs`.
fn wait(what: &str, secs: u64, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > Duration::from_secs(secs) {
            eprintln!("gave up waiting for {what} after {secs}s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}

/// The leader that all the given nodes agree on.
fn agreed_leader(nodes: &[&Node]) -> Option<u64> {
    let st: Vec<Status> = nodes.iter().map(|n| n.status()).collect();
    let l = st[0].leader;
    let leads = nodes
        .iter()
        .zip(&st)
        .any(|(n, s)| n.id == l && s.role == Some(StateRole::Leader));
    (l != 0 && leads && st.iter().all(|s| s.leader == l && s.term == st[0].term)).then_some(l)
}

fn key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:08}")
}

/// Proposes `{prefix}{i}` for every i in `range` through `via()` (the
/// leader, or a node that forwards to it), with at most `WINDOW` in
/// flight, until every one is applied on `watch`; proposes again those
/// that were lost (with a leader change, for example). Prints progress
/// once a second. `None` if `deadline` passed first or a node died.
fn commit_all<'a>(
    via: &dyn Fn() -> Option<&'a Node>,
    watch: &Node,
    prefix: &str,
    range: std::ops::Range<u64>,
    label: &str,
    deadline: Option<Instant>,
) -> Option<Duration> {
    const WINDOW: usize = 2048;
    let t0 = Instant::now();
    let total = range.end - range.start;
    let mut next = range.start;
    // Proposed, not yet seen applied.
    let mut in_flight = std::collections::BTreeSet::new();
    let mut last_print = Instant::now();
    let mut last_progress = (0, Instant::now());
    let propose = |node: &Node, i: u64| {
        node.propose(format!("{}=v{i}", key(prefix, i)).into_bytes());
    };
    loop {
        {
            let kv = watch.disk.kv();
            in_flight.retain(|&i| !kv.map.contains_key(&key(prefix, i)));
        }
        let done = next - range.start - in_flight.len() as u64;
        if done == total {
            break;
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(1) {
            // Nothing applied for a while: those proposals were lost.
            if let Some(node) = via() {
                for &i in &in_flight {
                    propose(node, i);
                }
            }
            last_progress.1 = Instant::now();
        }
        if let Some(node) = via() {
            let mut batch = Vec::new();
            {
                let kv = watch.disk.kv();
                while in_flight.len() + batch.len() < WINDOW && next < range.end {
                    // Applied already (before a restart, say): nothing to do.
                    if !kv.map.contains_key(&key(prefix, next)) {
                        batch.push(next);
                    }
                    next += 1;
                }
            }
            for i in batch {
                propose(node, i);
                in_flight.insert(i);
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let st = watch.status();
            println!(
                "  {label}: {done}/{total} applied (node {} is {:?}, term {}, leader {}, commit {})",
                watch.id,
                st.role.unwrap_or(StateRole::Follower),
                st.term,
                st.leader,
                st.commit
            );
            last_print = Instant::now();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || !watch.is_alive() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(t0.elapsed())
}

/// Transport counters of one node, summed over peers and lanes (snapshot
/// streams included): messages and bytes sent, messages dropped.
fn totals(s: &Stats) -> (u64, u64, u64) {
    let mut msgs = 0;
    let mut bytes = 0;
    let mut drops = 0;
    for p in s.peers.values() {
        for l in [&p.message_lane, &p.append_lane, &p.snapshot_lane] {
            msgs += l.msgs_sent;
            bytes += l.bytes_sent;
            drops += l.dropped();
        }
    }
    (msgs, bytes, drops)
}

/// Pauses (or resumes) all traffic between node `cut` and the others, in
/// both directions: a network partition.
fn partition(all: &[&Node], cut: u64, on: bool) {
    for n in all {
        for p in n.t.peers() {
            if n.id == cut || p == cut {
                let r = if on { n.t.pause(p) } else { n.t.resume(p) };
                r.expect("pause/resume");
            }
        }
    }
}

fn three_nodes(args: &Args) -> bool {
    // Three transports on free ports; each node knows the others' addresses.
    let mut started = Vec::new();
    for id in 1..=3u64 {
        let (reporter, events) = ChannelReporter::new();
        let t: Transport<Msg> = Transport::start(
            transport_config(id, "127.0.0.1:0".parse().unwrap()),
            reporter,
        )
        .expect("start transport");
        println!("node {id} listens on {}", t.local_addr());
        started.push((id, t, events));
    }
    let peers: BTreeMap<u64, SocketAddr> = started
        .iter()
        .map(|(id, t, _)| (*id, t.local_addr()))
        .collect();
    let nodes: Vec<Node> = started
        .into_iter()
        .map(|(id, t, events)| {
            let disk = Disk::founding(peers.keys().copied());
            Node::start(id, t, events, &peers, disk, None)
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    let node = |id: u64| -> &Node { all.iter().find(|n| n.id == id).unwrap() };
    let leader_of = |group: &[&Node]| -> Option<&Node> { agreed_leader(group).map(node) };

    // 1. An election.
    let mut leader = 0;
    let took = wait("a leader", 10, || {
        leader = agreed_leader(&all).unwrap_or(0);
        leader != 0
    });
    println!(
        "\nnode {leader} was elected leader of term {} in {took:.2?}",
        node(leader).status().term
    );

    // 2. The proposals, through whoever leads.
    println!("committing {} proposals", args.proposals);
    let took = commit_all(
        &|| leader_of(&all),
        node(leader),
        "key",
        0..args.proposals,
        "phase 1",
        Some(Instant::now() + Duration::from_secs(600)),
    )
    .expect("phase 1 did not finish");
    let rate = args.proposals as f64 / took.as_secs_f64();
    wait("the followers to apply everything", 10, || {
        let c = node(leader).status().commit;
        all.iter().all(|n| n.status().applied == c)
    });
    println!(
        "phase 1: {} proposals committed and applied on all nodes in {took:.2?} \
         ({rate:.0} proposals/s); commit index {}",
        args.proposals,
        node(leader).status().commit
    );
    print_summary(&all);

    // 3. Cut a follower off and keep going without it.
    let leader = agreed_leader(&all).unwrap_or(leader);
    let cut = all.iter().map(|n| n.id).find(|&id| id != leader).unwrap();
    partition(&all, cut, true);
    let rest: Vec<&Node> = all.iter().copied().filter(|n| n.id != cut).collect();
    let behind = node(cut).status().applied;
    println!("\nphase 2: node {cut} cut off (paused both ways) at applied index {behind}");
    let more = (args.proposals / 2).max(1000);
    let took = commit_all(
        &|| leader_of(&rest),
        node(leader),
        "more",
        0..more,
        "phase 2",
        Some(Instant::now() + Duration::from_secs(600)),
    )
    .expect("phase 2 did not finish");
    wait("the connected nodes to converge", 10, || {
        let c = rest.iter().map(|n| n.status().commit).max().unwrap();
        rest.iter().all(|n| n.status().applied == c)
    });
    for n in &rest {
        n.compact();
    }
    wait("the compaction", 10, || {
        rest.iter().all(|n| n.status().first_index > behind + 1)
    });
    println!(
        "  {more} more committed without node {cut} in {took:.2?}; logs of nodes {:?} compacted \
         to index {}: node {cut}, at {behind}, can only catch up through a snapshot",
        rest.iter().map(|n| n.id).collect::<Vec<_>>(),
        rest.iter().map(|n| n.status().first_index).min().unwrap()
    );

    // 4. Heal, and watch it catch up.
    partition(&all, cut, false);
    let took = wait("the cut-off node to catch up", 20, || {
        let c = rest.iter().map(|n| n.status().commit).max().unwrap();
        node(cut).status().applied >= c
    });
    let st = node(cut).status();
    println!(
        "\nphase 3: healed; node {cut} caught up to index {} in {took:.2?} through {} snapshot(s)",
        st.applied, st.snapshots_installed
    );

    // 5. Every state machine must be the same.
    wait("all nodes to apply the same index", 10, || {
        let a = all[0].status().applied;
        all.iter()
            .all(|n| n.status().applied == a && n.status().commit == a)
    });
    let kvs: Vec<Kv> = all.iter().map(|n| n.disk.kv().clone()).collect();
    let same = kvs.iter().all(|kv| *kv == kvs[0]);
    let expected = args.proposals + more;
    println!("\nsummary:");
    print_summary(&all);
    for (n, kv) in all.iter().zip(&kvs) {
        println!(
            "  node {}: {} keys, applied index {}, digest {:016x}",
            n.id,
            kv.map.len(),
            kv.applied,
            kv.digest()
        );
    }
    let complete = kvs[0].map.len() as u64 == expected;
    println!("stopping the nodes (the others log the connections that close)");
    for n in &all {
        n.stop();
    }
    if same && complete && st.snapshots_installed > 0 {
        println!("OK: the three state machines are identical ({expected} keys)");
        true
    } else {
        println!(
            "FAILED: identical={same}, keys={} of {expected}, snapshots installed by node {cut}={}",
            kvs[0].map.len(),
            st.snapshots_installed
        );
        false
    }
}

fn print_summary(nodes: &[&Node]) {
    for n in nodes {
        let s = n.status();
        let (msgs, bytes, drops) = totals(&n.t.stats());
        println!(
            "  node {}: {:<12} term {:>2}  commit {:>6}  applied {:>6}  sent {msgs:>7} msgs / {:>7.2} MiB  \
             dropped {drops}  unreachable reports {}  snapshots sent {} / installed {}",
            n.id,
            format!("{:?}", s.role.unwrap_or(StateRole::Follower)),
            s.term,
            s.commit,
            s.applied,
            bytes as f64 / (1 << 20) as f64,
            s.unreachable_reports,
            s.snapshots_sent,
            s.snapshots_installed,
        );
    }
}

fn one_node(id: u64, args: &Args) -> bool {
    let (reporter, events) = ChannelReporter::new();
    let addr = args.peers[&id];
    let t: Transport<Msg> = match Transport::start(transport_config(id, addr), reporter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("node {id}: cannot start on {addr}: {e}");
            return false;
        }
    };
    println!("node {id} listens on {}", t.local_addr());
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("raftwire-cluster"));
    let path = dir.join(format!("node{id}.state"));
    let opened = std::fs::create_dir_all(&dir).and_then(|()| Wal::open(&path));
    let (wal, disk) = match opened {
        Ok(x) => x,
        Err(e) => {
            eprintln!("node {id}: cannot use {}: {e}", path.display());
            return false;
        }
    };
    let disk = match disk {
        Some(d) => {
            println!(
                "node {id}: restarting from {} (log up to index {}; delete the file to start afresh)",
                path.display(),
                d.log.last_index().unwrap_or(0)
            );
            d
        }
        None => {
            println!("node {id}: new state in {}", path.display());
            Disk::founding(args.peers.keys().copied())
        }
    };
    let mut wal = wal;
    if let Err(e) = wal.rewrite(&disk) {
        eprintln!("node {id}: cannot write {}: {e}", path.display());
        return false;
    }
    let node = Node::start(id, t, events, &args.peers, disk, Some(wal));
    let started = Instant::now();
    // Compact whenever this many entries have been applied since the last
    // time, so that the state file stays small and a node that was down a
    // long time catches up through a snapshot.
    const COMPACT_EVERY: u64 = 5_000;

    let deadline = args.run_for.map(|d| started + d);
    match commit_all(
        &|| Some(&node),
        &node,
        &format!("n{id}-"),
        0..args.proposals,
        "proposals",
        deadline,
    ) {
        Some(took) => println!(
            "node {id}: all {} of its proposals applied in {took:.2?} ({:.0}/s)",
            args.proposals,
            args.proposals as f64 / took.as_secs_f64()
        ),
        None if !node.is_alive() => {
            eprintln!("node {id}: the raft thread ended");
            return false;
        }
        None => println!("node {id}: --run-for ended before its proposals were applied"),
    }
    let ticker = tick(Duration::from_secs(1));
    loop {
        let _ = ticker.recv();
        let s = node.status();
        if s.applied > s.first_index + COMPACT_EVERY {
            node.compact();
        }
        let kv = node.disk.kv().clone();
        let (msgs, bytes, drops) = totals(&node.t.stats());
        println!(
            "node {id}: {:?} term {} leader {} commit {} applied {} keys {} digest {:016x} | \
             sent {msgs} msgs / {bytes} B, dropped {drops}, unreachable reports {}, \
             snapshots sent {} / installed {}, active peers {:?}",
            s.role.unwrap_or(StateRole::Follower),
            s.term,
            s.leader,
            s.commit,
            s.applied,
            kv.map.len(),
            kv.digest(),
            s.unreachable_reports,
            s.snapshots_sent,
            s.snapshots_installed,
            node.t.active_peers(),
        );
        if !node.is_alive() {
            eprintln!("node {id}: the raft thread ended");
            return false;
        }
        if args.run_for.is_some_and(|d| started.elapsed() >= d) {
            node.stop();
            return true;
        }
    }
}
