//! The event loop: one thread, one `mio::Poll`, every socket. It is a
//! driver for the connection core (`conn`): readiness becomes bytes fed to
//! a connection's machine, the machine's outbox is written with vectored
//! writes until the socket would block, and the machines' `poll_timeout`s
//! set the timer. It dials and accepts sockets, never blocks and never runs
//! user code: hellos are judged and frames decoded on the reader thread,
//! reports go through the notifier thread.

mod accepted;
mod dialed;

use super::account::{Accounts, Incident};
use super::channels::{LoopCmd, LoopHandle, Pools, ReaderMsg, Returned, SnapEvent, SnapId};
use super::peers::{PeerMap, PeerShared};
use super::stream::{Stream, configure};
use crate::config::Config;
use crate::conn::inbound::{Credit, Inbounds};
use crate::conn::link::{Backoff, LaneLink, Queued};
use crate::conn::outbound::OutConn;
use crate::conn::snapshot::SnapshotFailure;
use crate::conn::turns::{Class, Ready, Turns};
use crate::conn::{Batch, ConnId, Timing, Transmit};
use crate::error::{CloseReason, DropReason};
use crate::lanes::{PerLane, QueuedLane};
use crate::wire::Hello;
use crossbeam_channel::{Receiver, Sender};
use log::{debug, error};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: ConnId = 2;
const UNREACHABLE: Option<DropReason> = Some(DropReason::Unreachable);
/// Most buffers passed to one `write_vectored`.
const MAX_IOV: usize = 64;
/// Longest the loop sleeps without a timer due (a safety net, not a tick).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Bytes a bulk connection (an append lane, a snapshot) may read or write
/// in one turn of the loop before the next turn's urgent traffic.
const BULK_SLICE: usize = 256 << 10;

/// Whose machine a socket feeds.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// A peer's lane (its [`LaneLink`]).
    Lane(u64, QueuedLane),
    /// An outgoing snapshot.
    Snapshot(SnapId),
    /// An inbound connection (in [`Inbounds`]).
    Inbound,
}

struct Sock {
    stream: Stream,
    owner: Owner,
    /// Inbound connections: the read credit shared with the reader.
    credit: Option<Arc<Credit>>,
}

struct LoopLane {
    link: LaneLink,
    /// Where written (and unwritten) batches go back to the lane's writer.
    returns: Sender<Returned>,
}

struct LoopPeer {
    shared: Arc<PeerShared>,
    lanes: PerLane<LoopLane>,
}

/// An outgoing snapshot's connection.
struct SnapOut {
    conn: ConnId,
    core: OutConn,
    events: Sender<SnapEvent>,
}

/// What the loop is given when it starts.
pub(crate) struct LoopParts {
    pub config: Config,
    pub reader_tx: Sender<ReaderMsg>,
    pub accounts: Arc<Accounts>,
    pub pools: Pools,
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<crate::tls::TlsContext>>,
}

pub(crate) struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
    cmd_tx: Sender<LoopCmd>,
    cmd_rx: Receiver<LoopCmd>,
    reader_tx: Sender<ReaderMsg>,
    accounts: Arc<Accounts>,
    config: Config,
    timing: Timing,
    socks: HashMap<ConnId, Sock>,
    next_conn: ConnId,
    peers: PeerMap<LoopPeer>,
    inbounds: Inbounds,
    snaps: HashMap<SnapId, SnapOut>,
    /// An accept failed (e.g. out of file descriptors): retry from the timers.
    accept_retry: bool,
    scratch: Vec<u8>,
    /// Which connections the next turn serves, and how much bulk work
    /// each may do.
    turns: Turns,
    turn: Vec<(ConnId, Class, Ready)>,
    next_timer: Instant,
    seed: u64,
    stopping: bool,
    /// Receive buffers handed back by the reader, for reuse.
    pools: Pools,
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::TlsContext>>,
}

/// Writes what `core` has queued until the socket would block, or until
/// `budget` bytes are written: `Ok(true)` when output is left for the next
/// turn.
fn write_out(
    stream: &mut Stream,
    core: &mut dyn Transmit,
    now: Instant,
    budget: usize,
    done: &mut dyn FnMut(Batch),
) -> Result<bool, CloseReason> {
    if !core.can_write() {
        return Ok(false);
    }
    stream
        .flush_pending()
        .map_err(|e| stream.close_reason(&e))?;
    let mut written = 0usize;
    while !core.outbox().is_empty() {
        if written >= budget {
            return Ok(true);
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = core.outbox().slices(&mut iov);
        let r = if n == 0 {
            Ok(0) // only empty items left: let the outbox drop them
        } else {
            match stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(CloseReason::Io(io::ErrorKind::WriteZero)),
                r => r,
            }
        };
        match r {
            Ok(k) => {
                written += k;
                core.handle_written(k, now, done)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream.close_reason(&e)),
        }
    }
    Ok(false)
}

/// Hands a batch back to its writer. The return channel has room for every
/// batch the writer may have out, so this never blocks; if it ever were
/// full, the buffer is simply freed.
fn give_back(returns: &Sender<Returned>, batch: Batch, dropped: Option<DropReason>) {
    let _ = returns.try_send(Returned { batch, dropped });
}

fn deregister(poll: &Poll, socks: &mut HashMap<ConnId, Sock>, id: ConnId) -> Option<Sock> {
    let mut s = socks.remove(&id)?;
    let _ = poll.registry().deregister(s.stream.sock_mut());
    Some(s)
}

impl EventLoop {
    pub fn bind(parts: LoopParts) -> io::Result<EventLoop> {
        let config = parts.config;
        let addr = config.listen_addr;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        configure(SockRef::from(&sock), &config)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(sock.into());
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let seed = parts.accounts.epoch().elapsed().as_nanos() as u64
            ^ (config.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Ok(EventLoop {
            poll,
            listener,
            local_addr,
            waker,
            wake_pending: Arc::new(AtomicBool::new(false)),
            cmd_tx,
            cmd_rx,
            reader_tx: parts.reader_tx,
            accounts: parts.accounts,
            scratch: vec![0u8; config.read_chunk_len],
            timing: Timing::of(&config),
            inbounds: Inbounds::new(config.max_inbound_connections),
            config,
            socks: HashMap::new(),
            next_conn: FIRST_CONN,
            peers: PeerMap::default(),
            snaps: HashMap::new(),
            accept_retry: false,
            turns: Turns::new(BULK_SLICE),
            turn: Vec::new(),
            next_timer: Instant::now(),
            seed,
            stopping: false,
            pools: parts.pools,
            #[cfg(feature = "tls")]
            tls: parts.tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> LoopHandle {
        LoopHandle::new(
            self.cmd_tx.clone(),
            self.waker.clone(),
            self.wake_pending.clone(),
        )
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            // A turn with work left (bulk slices, queued output) is served
            // at once: look for new readiness, but do not sleep.
            let timeout = if self.turns.is_pending() {
                Duration::ZERO
            } else {
                self.next_timer
                    .saturating_duration_since(Instant::now())
                    .min(MAX_SLEEP)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!("node {}: event loop poll failed: {e}", self.config.node_id);
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.wake_pending.store(false, Release),
                    LISTENER => self.accept_all(),
                    Token(id) => {
                        let ready = Ready {
                            read: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                            write: ev.is_writable() || ev.is_error(),
                        };
                        self.mark(id, ready);
                    }
                }
            }
            self.drain_commands();
            if self.stopping {
                break;
            }
            self.serve_turn();
            if Instant::now() >= self.next_timer {
                self.run_timers(Instant::now());
            }
            self.accounts
                .global
                .connections
                .store(self.socks.len() as u64, Relaxed);
        }
        self.shutdown();
        self.accounts.global.connections.store(0, Relaxed);
    }

    /// Connection `id` is ready (or has output queued): it is served in
    /// the next turn, urgent connections before bulk ones.
    fn mark(&mut self, id: ConnId, ready: Ready) {
        let class = self.class(id);
        self.turns.push(id, class, ready);
    }

    /// How urgent a connection's traffic is.
    fn class(&mut self, id: ConnId) -> Class {
        match self.socks.get(&id).map(|s| s.owner) {
            Some(Owner::Lane(_, QueuedLane::Append) | Owner::Snapshot(_)) => Class::Bulk,
            Some(Owner::Inbound) => {
                let lane = self.inbounds.get_mut(id).and_then(|c| c.accepted());
                Class::of(lane.map(|(_, l)| l))
            }
            _ => Class::Urgent,
        }
    }

    /// Serves one turn: urgent connections first, then bulk ones, each
    /// within its budget.
    fn serve_turn(&mut self) {
        let mut turn = std::mem::take(&mut self.turn);
        self.turns.take_turn(&mut turn);
        for &(id, class, ready) in &turn {
            let budget = self.turns.budget(class);
            if ready.write {
                self.writable(id, budget);
            }
            if ready.read {
                self.read(id, budget);
            }
        }
        self.turn = turn;
    }

    /// Makes sure the timers run no later than `at`.
    fn schedule(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.next_timer = self.next_timer.min(at);
        }
    }

    fn next_id(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        id
    }

    // ----- commands -----

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            let now = Instant::now();
            match cmd {
                LoopCmd::AddPeer {
                    id,
                    addrs,
                    peer,
                    returns,
                } => self.add_peer(id, addrs, peer, returns),
                LoopCmd::RemovePeer { id } => self.remove_peer(id, DropReason::Removed),
                LoopCmd::UpdatePeer { id, addrs } => {
                    for lane in QueuedLane::BOTH {
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.lanes[lane].link.set_addrs(addrs.clone(), now);
                            self.link_events(id, lane);
                        }
                    }
                }
                LoopCmd::Batch { peer, lane, batch } => self.queue_batch(peer, lane, batch, now),
                LoopCmd::Verdict { conn, verdict } => self.verdict(conn, verdict, now),
                LoopCmd::Close { conn, reason } => self.close_inbound(conn, reason),
                LoopCmd::ResumeRead { conn } => {
                    if let Some(c) = self.inbounds.get_mut(conn) {
                        c.handle_resume();
                        self.mark(conn, Ready::READ);
                    }
                }
                LoopCmd::OpenSnapshot { snap, peer, events } => {
                    self.open_snapshot(snap, peer, events, now)
                }
                LoopCmd::SnapshotData { snap, batch } => {
                    if let Some(s) = self.snaps.get_mut(&snap) {
                        s.core.queue_batch(batch, now);
                        self.turns.push(s.conn, Class::Bulk, Ready::WRITE);
                    }
                }
                LoopCmd::CloseSnapshot { snap } => {
                    if let Some(s) = self.snaps.remove(&snap) {
                        deregister(&self.poll, &mut self.socks, s.conn);
                    }
                }
                LoopCmd::SnapshotAck { conn, status } => {
                    if let Some(c) = self.inbounds.get_mut(conn) {
                        c.queue_snapshot_ack(status, now);
                        self.mark(conn, Ready::WRITE);
                    }
                }
                #[cfg(feature = "tls")]
                LoopCmd::ReloadTls(ctx) => {
                    log::info!(
                        "node {}: TLS certificates reloaded; new connections use them",
                        self.config.node_id
                    );
                    self.tls = Some(ctx);
                }
                LoopCmd::Stop => {
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    fn add_peer(
        &mut self,
        id: u64,
        addrs: Vec<SocketAddr>,
        shared: Arc<PeerShared>,
        returns: PerLane<Sender<Returned>>,
    ) {
        let now = Instant::now();
        let (cfg, timing, seed) = (&self.config, self.timing, &mut self.seed);
        let mut lane = |lane: QueuedLane, returns| {
            // Each lane its own jitter, so that lanes do not redial in step.
            let salt = if lane == QueuedLane::Message { id } else { !id };
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15 ^ salt);
            let hello = Hello::new(lane.lane(), cfg.cluster_id, cfg.node_id, id)
                .with_checksums(cfg.sent_checksums());
            let backoff = Backoff::new(cfg.backoff_floor, cfg.backoff_cap, *seed);
            LoopLane {
                link: LaneLink::new(hello, addrs.clone(), backoff, timing, now),
                returns,
            }
        };
        let lanes = PerLane {
            message: lane(QueuedLane::Message, returns.message),
            append: lane(QueuedLane::Append, returns.append),
        };
        self.peers.insert(id, LoopPeer { shared, lanes });
        self.next_timer = now;
    }

    /// Forgets a peer; its batches go back to the writers as dropped for
    /// `why` (`Removed`, or `Stopped` at shutdown).
    fn remove_peer(&mut self, id: u64, why: DropReason) {
        // Its inbound connections go too: a removed member must redial,
        // and then `is_id_removed` can refuse it.
        for cid in self.inbounds.accepted_from(id) {
            self.close_inbound(cid, CloseReason::PeerRemoved);
        }
        if let Some(mut p) = self.peers.remove(&id) {
            let epoch = self.accounts.epoch();
            for (lane, l) in p.lanes.iter_mut() {
                let (conn, unsent, in_flight) = l.link.remove();
                if let Some(c) = conn {
                    deregister(&self.poll, &mut self.socks, c);
                }
                for b in unsent {
                    give_back(&l.returns, b, Some(why));
                }
                self.accounts.note(
                    Some(&p.shared),
                    Incident::Dropped {
                        lane,
                        reason: DropReason::InFlight,
                        n: in_flight,
                    },
                );
                p.shared.set_connected(epoch, lane, None);
            }
        }
        let reason = match why {
            DropReason::Stopped => CloseReason::Stopped,
            _ => CloseReason::PeerRemoved,
        };
        let snaps: Vec<SnapId> = self
            .snaps
            .iter()
            .filter(|(_, s)| s.core.peer() == id)
            .map(|(snap, _)| *snap)
            .collect();
        for snap in snaps {
            self.fail_snapshot(snap, SnapshotFailure::Connection(reason.clone()));
        }
    }

    fn queue_batch(&mut self, peer: u64, lane: QueuedLane, batch: Batch, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            // Removed: its writers are finishing and count their own drops.
            return;
        };
        let l = &mut p.lanes[lane];
        match l.link.queue_batch(batch, now) {
            Queued::OnConn(id) => self.mark(id, Ready::WRITE),
            Queued::Held => {
                let at = l.link.poll_timeout();
                self.schedule(at);
            }
            Queued::Refused(b) => give_back(&l.returns, b, UNREACHABLE),
        }
    }

    /// A socket failed: tells its machine.
    fn fail_conn(&mut self, id: ConnId, reason: CloseReason) {
        let Some(owner) = self.socks.get(&id).map(|s| s.owner) else {
            return;
        };
        match owner {
            Owner::Lane(peer, lane) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.lanes[lane].link.handle_failed(reason, Instant::now());
                    self.link_events(peer, lane);
                }
            }
            Owner::Snapshot(snap) => self.fail_snapshot(snap, SnapshotFailure::Connection(reason)),
            Owner::Inbound => self.close_inbound(id, reason),
        }
    }

    fn read(&mut self, id: ConnId, budget: usize) {
        match self.socks.get(&id).map(|s| s.owner) {
            Some(Owner::Inbound) => self.read_inbound(id, budget),
            Some(owner) => {
                self.read_outbound(id, owner);
                self.dialer_events(owner);
            }
            None => {}
        }
    }

    /// Wraps a new socket: in TLS when configured (as the client when
    /// dialing `dial`, else as the server).
    fn stream(&mut self, sock: TcpStream, dial: Option<SocketAddr>) -> Option<Stream> {
        #[cfg(feature = "tls")]
        if let Some(ctx) = &self.tls {
            let conn = match dial {
                Some(addr) => ctx.client_conn(addr).map(rustls::Connection::from),
                None => ctx.server_conn().map(rustls::Connection::from),
            };
            return match conn {
                Ok(conn) => Some(Stream::tls(sock, conn)),
                Err(e) => {
                    error!("node {}: cannot start TLS: {e}", self.config.node_id);
                    None
                }
            };
        }
        let _ = dial;
        Some(Stream::plain(sock))
    }

    // ----- writing -----

    /// Writes what connection `id` has queued, at most `budget` bytes.
    fn flush(&mut self, id: ConnId, budget: usize) {
        let now = Instant::now();
        let Some(sock) = self.socks.get_mut(&id) else {
            return;
        };
        let (result, at) = match sock.owner {
            Owner::Lane(peer, lane) => {
                let Some(l) = self.peers.get_mut(&peer).map(|p| &mut p.lanes[lane]) else {
                    return;
                };
                let returns = &l.returns;
                let Some((_, conn)) = l.link.conn_mut() else {
                    return;
                };
                let r = write_out(&mut sock.stream, conn, now, budget, &mut |b| {
                    give_back(returns, b, None)
                });
                (r, conn.poll_timeout())
            }
            Owner::Snapshot(snap) => {
                let Some(s) = self.snaps.get_mut(&snap) else {
                    return;
                };
                let events = &s.events;
                let r = write_out(&mut sock.stream, &mut s.core, now, budget, &mut |b| {
                    let _ = events.send(SnapEvent::Written(b.buf));
                });
                (r, s.core.poll_timeout())
            }
            Owner::Inbound => {
                let Some(c) = self.inbounds.get_mut(id) else {
                    return;
                };
                let r = write_out(&mut sock.stream, c, now, budget, &mut |_| {});
                let r = match (r, c.done_closing(sock.stream.has_pending())) {
                    (Ok(false), Some(reason)) => Err(reason),
                    (r, _) => r,
                };
                (r, c.poll_timeout())
            }
        };
        self.schedule(at);
        match result {
            Ok(true) => self.turns.again(id, Ready::WRITE),
            Ok(false) => {}
            Err(reason) => self.fail_conn(id, reason),
        }
    }

    // ----- timers -----

    fn run_timers(&mut self, now: Instant) {
        self.next_timer = now + MAX_SLEEP;
        if std::mem::take(&mut self.accept_retry) {
            self.accept_all();
        }
        let lanes: Vec<(u64, QueuedLane)> = self
            .peers
            .keys()
            .flat_map(|&id| QueuedLane::BOTH.map(|l| (id, l)))
            .collect();
        for (peer, lane) in lanes {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let link = &mut p.lanes[lane].link;
            link.handle_timeout(now);
            match link.poll_dial(now) {
                Some(addr) => self.dial_lane(peer, lane, addr, now),
                None => self.link_events(peer, lane),
            }
        }
        let snaps: Vec<SnapId> = self.snaps.keys().copied().collect();
        for snap in snaps {
            if let Some(s) = self.snaps.get_mut(&snap) {
                s.core.handle_timeout(now);
                self.snap_events(snap);
            }
        }
        let mut closes = Vec::new();
        for (id, c) in self.inbounds.iter_mut() {
            let Some(credit) = self.socks.get(&id).and_then(|s| s.credit.as_ref()) else {
                continue;
            };
            match c.handle_timeout(now, credit) {
                Some(reason) => closes.push((id, reason)),
                None => {
                    if !c.outbox().is_empty() {
                        let lane = c.accepted().map(|(_, l)| l);
                        self.turns.push(id, Class::of(lane), Ready::WRITE);
                    }
                    if let Some(at) = c.poll_timeout() {
                        self.next_timer = self.next_timer.min(at);
                    }
                }
            }
        }
        for (id, reason) in closes {
            self.close_inbound(id, reason);
        }
        // Anything scheduled by the failures and dials above.
        if self.next_timer < now {
            self.next_timer = now;
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove_peer(id, DropReason::Stopped);
        }
        for (_, mut s) in self.socks.drain() {
            let _ = self.poll.registry().deregister(s.stream.sock_mut());
        }
        let _ = self.poll.registry().deregister(&mut self.listener);
        debug!("node {}: event loop stopped", self.config.node_id);
    }
}
