//! The event loop: one thread, one `mio::Poll`, every socket. It dials,
//! accepts, reads until `WouldBlock`, writes queued batches with vectored
//! writes, sends link heartbeats, enforces timeouts, and never blocks and
//! never runs user code (handshake decisions and message decoding happen on
//! the reader thread; reports go through the notifier thread).

use crate::config::Config;
use crate::error::{CloseReason, DropReason, ProtocolViolation};
use crate::io::stream::Stream;
use crate::io::{
    Batch, ConnId, Credit, LoopCmd, LoopHandle, Notice, PeerLink, Pools, ReaderMsg, Returned,
};
use crate::peer::{Backoff, Link, LinkAction, LinkState, Liveness, LivenessCheck};
use crate::snapshot::{SnapEvent, SnapId};
use crate::stats::{GlobalCounters, rate_limit};
use crate::wire::AckStatus;
use crate::wire::split::{Split, Splitter};
use crate::wire::{
    Deframer, FRAME_HEADER_LEN, FrameKind, HELLO_LEN, Hello, Lane, RESPONSE_LEN, RejectReason,
    Response, encode_frame, heartbeat_frame,
};
use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

const WAKER: Token = Token(0);
const UNREACHABLE: Option<DropReason> = Some(DropReason::Unreachable);
const LISTENER: Token = Token(1);
const FIRST_CONN: ConnId = 2;
/// Most buffers passed to one `write_vectored`.
const MAX_IOV: usize = 64;
/// Longest the loop sleeps without a timer due (a safety net, not a tick).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Small control bytes (hello, response, heartbeat) queued for writing.
struct Control {
    bytes: [u8; 32],
    len: usize,
}

impl Control {
    fn new(b: &[u8]) -> Control {
        let mut bytes = [0u8; 32];
        bytes[..b.len()].copy_from_slice(b);
        Control {
            bytes,
            len: b.len(),
        }
    }
}

enum Out {
    Batch(Batch),
    Control(Control),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Batch(b) => b.len(),
            Out::Control(c) => c.len,
        }
    }

    /// See [`Batch::slices`].
    fn slices<'a>(&'a self, skip: usize, iov: &mut [IoSlice<'a>]) -> usize {
        match self {
            Out::Batch(b) => b.slices(skip, iov),
            Out::Control(c) if skip < c.len && !iov.is_empty() => {
                iov[0] = IoSlice::new(&c.bytes[skip..c.len]);
                1
            }
            Out::Control(_) => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Open,
}

/// The sender side of a snapshot connection.
struct SnapOut {
    id: SnapId,
    events: Sender<SnapEvent>,
}

enum Kind {
    Outbound {
        peer: u64,
        lane: Lane,
        addr: SocketAddr,
        phase: Phase,
        response: Vec<u8>,
        deframer: Deframer,
        /// Set for a snapshot connection (not owned by a peer's lane).
        snap: Option<SnapOut>,
        /// Messages written to the socket, and how many of them the
        /// receiver has reported delivered: the difference is in flight,
        /// and counted as dropped if the connection dies.
        written: u64,
        acked: u64,
    },
    Inbound {
        credit: Arc<Credit>,
        accepted: Option<(u64, Lane)>,
        read_paused: bool,
        /// The delivered count last reported to the dialer.
        acked: u64,
        intake: Box<Intake>,
    },
}

/// How an inbound connection's bytes are read: where its frames start, the
/// start of a header kept from the last read, and a large frame being read
/// whole into a buffer of its own (so that the reader thread gets it in one
/// piece instead of copying it together from read-sized ones).
struct Intake {
    split: Splitter,
    carry: [u8; FRAME_HEADER_LEN],
    carry_len: usize,
    /// A frame being read whole, and how many of its bytes are in.
    direct: Option<(Vec<u8>, usize)>,
}

impl Intake {
    fn new(config: &Config) -> Box<Intake> {
        Box::new(Intake {
            split: Splitter::new(HELLO_LEN, config.read_chunk_len, config.max_frame_len),
            carry: [0; FRAME_HEADER_LEN],
            carry_len: 0,
            direct: None,
        })
    }

    /// Bytes read and not handed to the reader: a kept header start, or
    /// the part of a frame read so far.
    fn take_unsent(&mut self) -> Vec<u8> {
        let mut out = self.carry[..self.carry_len].to_vec();
        self.carry_len = 0;
        if let Some((mut buf, filled)) = self.direct.take() {
            buf.truncate(filled);
            out.extend_from_slice(&buf);
        }
        out
    }
}

struct Conn {
    stream: Stream,
    kind: Kind,
    out: VecDeque<Out>,
    /// Bytes of the front `out` entry already written.
    out_pos: usize,
    liveness: Liveness,
    opened: Instant,
    /// Close for this reason once `out` is flushed (after a reject response).
    closing: Option<CloseReason>,
}

impl Conn {
    fn new(stream: Stream, kind: Kind, now: Instant) -> Conn {
        Conn {
            stream,
            kind,
            out: VecDeque::new(),
            out_pos: 0,
            liveness: Liveness::new(now),
            opened: now,
            closing: None,
        }
    }
}

struct LoopLane {
    link: Link,
    conn: Option<ConnId>,
    returns: Sender<Returned>,
    /// Batches that arrived while the link was dialing or handshaking.
    held: VecDeque<Batch>,
    last_reject: Option<RejectReason>,
}

struct LoopPeer {
    link: Arc<PeerLink>,
    lanes: [LoopLane; 2],
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
    notice_tx: Sender<Notice>,
    global: Arc<GlobalCounters>,
    config: Config,
    epoch: Instant,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    peers: crate::transport::PeerMap<LoopPeer>,
    inbound_by: HashMap<(u64, Lane), ConnId>,
    snaps: HashMap<SnapId, ConnId>,
    /// An accept failed (e.g. out of file descriptors): retry from the timers.
    accept_retry: bool,
    scratch: Vec<u8>,
    dirty: Vec<ConnId>,
    next_timer: Instant,
    seed: u64,
    stopping: bool,
    /// Receive buffers handed back by the reader, for reuse.
    pools: Pools,
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::TlsContext>>,
}

/// Applies the socket options of the config to any TCP socket.
fn configure(sock: SockRef<'_>, config: &Config) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(idle) = config.tcp_keepalive {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    if let Some(n) = config.send_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    if let Some(n) = config.recv_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    Ok(())
}

fn dial(addr: SocketAddr, config: &Config) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    configure(SockRef::from(&sock), config)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

impl EventLoop {
    pub fn bind(
        config: Config,
        epoch: Instant,
        reader_tx: Sender<ReaderMsg>,
        notice_tx: Sender<Notice>,
        global: Arc<GlobalCounters>,
        pools: Pools,
        #[cfg(feature = "tls")] tls: Option<Arc<crate::tls::TlsContext>>,
    ) -> io::Result<EventLoop> {
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
        let seed = epoch.elapsed().as_nanos() as u64
            ^ (config.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Ok(EventLoop {
            poll,
            listener,
            local_addr,
            waker,
            wake_pending: Arc::new(AtomicBool::new(false)),
            cmd_tx,
            cmd_rx,
            reader_tx,
            notice_tx,
            global,
            scratch: vec![0u8; config.read_chunk_len],
            config,
            epoch,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            peers: Default::default(),
            inbound_by: HashMap::new(),
            snaps: HashMap::new(),
            accept_retry: false,
            dirty: Vec::new(),
            next_timer: Instant::now(),
            seed,
            stopping: false,
            pools,
            #[cfg(feature = "tls")]
            tls,
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
            let timeout = self
                .next_timer
                .saturating_duration_since(Instant::now())
                .min(MAX_SLEEP);
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
                        if ev.is_writable() || ev.is_error() {
                            self.writable(id);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(id);
                        }
                    }
                }
            }
            self.drain_commands();
            if self.stopping {
                break;
            }
            self.flush_dirty();
            if Instant::now() >= self.next_timer {
                self.run_timers(Instant::now());
            }
            self.global
                .connections
                .store(self.conns.len() as u64, Relaxed);
        }
        self.shutdown();
        self.global.connections.store(0, Relaxed);
    }

    // ----- commands -----

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                LoopCmd::AddPeer {
                    id,
                    addrs,
                    link,
                    returns,
                } => self.add_peer(id, addrs, link, returns),
                LoopCmd::RemovePeer { id } => self.remove_peer(id, DropReason::Removed),
                LoopCmd::UpdatePeer { id, addrs } => self.update_peer(id, addrs),
                LoopCmd::Batch { peer, lane, batch } => self.queue_batch(peer, lane, batch),
                LoopCmd::Accept { conn, from, lane } => self.accept_inbound(conn, from, lane),
                LoopCmd::Reject { conn, response } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.out.push_back(Out::Control(Control::new(&response)));
                        let reason = match Response::decode(&response) {
                            Some(Ok(Response::Reject(r))) => r,
                            _ => RejectReason::UnsupportedVersion,
                        };
                        c.closing = Some(CloseReason::Rejected(reason));
                        self.dirty.push(conn);
                    }
                }
                LoopCmd::Close { conn, reason } => self.close_inbound(conn, reason),
                LoopCmd::ResumeRead { conn } => {
                    if let Some(Conn {
                        kind: Kind::Inbound { read_paused, .. },
                        ..
                    }) = self.conns.get_mut(&conn)
                    {
                        *read_paused = false;
                        self.read(conn);
                    }
                }
                LoopCmd::OpenSnapshot { snap, peer, events } => {
                    self.open_snapshot(snap, peer, events)
                }
                LoopCmd::SnapshotData { snap, batch } => {
                    if let Some(&id) = self.snaps.get(&snap) {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.out.push_back(Out::Batch(batch));
                            c.liveness.handle_queued(Instant::now());
                            self.dirty.push(id);
                        }
                    }
                }
                LoopCmd::CloseSnapshot { snap } => {
                    if let Some(id) = self.snaps.remove(&snap) {
                        self.drop_conn(id, None);
                    }
                }
                LoopCmd::SnapshotAck { conn, status } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        let mut frame = Vec::with_capacity(16);
                        // A 1-byte payload always fits.
                        let _ = encode_frame(&mut frame, FrameKind::SnapshotAck, u32::MAX, |b| {
                            b.extend_from_slice(&status.encode())
                        });
                        c.out.push_back(Out::Control(Control::new(&frame)));
                        if status != AckStatus::Ok {
                            c.closing = Some(CloseReason::SnapshotRefused(status));
                        }
                        self.dirty.push(conn);
                    }
                }
                #[cfg(feature = "tls")]
                LoopCmd::ReloadTls(ctx) => {
                    info!(
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
        link: Arc<PeerLink>,
        returns: [Sender<Returned>; 2],
    ) {
        let now = Instant::now();
        let [r0, r1] = returns;
        let mut lane = |returns: Sender<Returned>, salt: u64| {
            self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15 ^ salt);
            LoopLane {
                link: Link::new(
                    addrs.clone(),
                    Backoff::new(
                        self.config.backoff_floor,
                        self.config.backoff_cap,
                        self.seed,
                    ),
                    self.config.dial_timeout,
                    self.config.handshake_timeout,
                    now,
                ),
                conn: None,
                returns,
                held: VecDeque::new(),
                last_reject: None,
            }
        };
        let lanes = [lane(r0, id), lane(r1, !id)];
        self.peers.insert(id, LoopPeer { link, lanes });
        self.next_timer = now;
    }

    /// Forgets a peer; its batches go back to the writers as dropped for
    /// `why` (`Removed`, or `Stopped` at shutdown).
    fn remove_peer(&mut self, id: u64, why: DropReason) {
        // Its inbound connections go too: a removed member must redial,
        // and then `is_id_removed` can refuse it.
        let inbound: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Inbound { accepted: Some((from, _)), .. } if from == id))
            .map(|(cid, _)| *cid)
            .collect();
        for cid in inbound {
            self.close_inbound(cid, CloseReason::PeerRemoved);
        }
        if let Some(mut p) = self.peers.remove(&id) {
            for lane in &mut p.lanes {
                if let Some(c) = lane.conn.take() {
                    if let Some(c) = self.drop_conn(c, Some((&lane.returns, why))) {
                        count_in_flight(&c, &p.link);
                    }
                }
                for b in lane.held.drain(..) {
                    give_back(&lane.returns, b, Some(why));
                }
            }
            for c in &p.link.connected {
                c.store(0, Release);
            }
        }
        let snaps: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.kind, Kind::Outbound { peer, snap: Some(_), .. } if peer == id),
            )
            .map(|(cid, _)| *cid)
            .collect();
        let reason = match why {
            DropReason::Stopped => CloseReason::Stopped,
            _ => CloseReason::PeerRemoved,
        };
        for cid in snaps {
            self.fail_snapshot(cid, reason.clone());
        }
    }

    fn update_peer(&mut self, id: u64, addrs: Vec<SocketAddr>) {
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut to_fail = Vec::new();
        for lane in Lane::QUEUED {
            let l = &mut p.lanes[lane.index()];
            if l.link.addrs() == addrs.as_slice() {
                continue; // nothing changed: leave the lane as it is
            }
            l.link.set_addrs(addrs.clone());
            let keep = match l.conn.and_then(|c| self.conns.get(&c)) {
                Some(Conn {
                    kind: Kind::Outbound { addr, .. },
                    ..
                }) => addrs.contains(addr),
                _ => false,
            };
            if !keep {
                to_fail.push(lane);
            }
        }
        for lane in to_fail {
            self.fail_lane(id, lane, CloseReason::PeerRemoved, now);
            if let Some(p) = self.peers.get_mut(&id) {
                p.lanes[lane.index()].link.restart(now);
            }
        }
        self.next_timer = now;
    }

    fn queue_batch(&mut self, peer: u64, lane: Lane, batch: Batch) {
        let Some(p) = self.peers.get_mut(&peer) else {
            // Removed: its writers are finishing and count their own drops.
            return;
        };
        let l = &mut p.lanes[lane.index()];
        match (l.link.state(), l.conn) {
            (LinkState::Connected { .. }, Some(c)) if self.conns.contains_key(&c) => {
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.out.push_back(Out::Batch(batch));
                    conn.liveness.handle_queued(Instant::now());
                    self.dirty.push(c);
                }
            }
            // Hold while a connection is being made, or about to be (a new
            // or readdressed peer, before its first dial); drop while the
            // link backs off after a failure.
            (LinkState::Dialing { .. } | LinkState::Handshaking { .. }, _) => {
                l.held.push_back(batch);
            }
            (LinkState::Waiting { at }, _) if at <= Instant::now() => {
                l.held.push_back(batch);
                self.next_timer = Instant::now();
            }
            _ => give_back(&l.returns, batch, UNREACHABLE),
        }
    }

    fn accept_inbound(&mut self, id: ConnId, from: u64, lane: Lane) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let Kind::Inbound { accepted, .. } = &mut c.kind {
            *accepted = Some((from, lane));
        }
        c.out
            .push_back(Out::Control(Control::new(&Response::Accept.encode())));
        c.liveness = Liveness::new(now);
        self.dirty.push(id);
        self.schedule(now + self.config.heartbeat_interval);
        // A newer connection of a lane replaces an older one (the peer
        // redialed); snapshots each have their own, concurrently.
        if lane != Lane::Snapshot {
            if let Some(old) = self.inbound_by.insert((from, lane), id) {
                if old != id {
                    self.close_inbound(old, CloseReason::Replaced);
                }
            }
        }
    }

    // ----- accepting -----

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, addr)) => {
                    if !self.make_room_for_inbound(addr) {
                        continue; // dropping `sock` closes it
                    }
                    let Some(mut stream) = self.stream(sock, None) else {
                        continue;
                    };
                    if let Err(e) = configure(SockRef::from(stream.sock()), &self.config) {
                        debug!(
                            "node {}: socket options for {addr}: {e}",
                            self.config.node_id
                        );
                    }
                    let id = self.next_id();
                    if let Err(e) = self.poll.registry().register(
                        stream.sock_mut(),
                        Token(id),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("node {}: cannot register {addr}: {e}", self.config.node_id);
                        continue;
                    }
                    let credit = Arc::new(Credit::default());
                    let now = Instant::now();
                    let kind = Kind::Inbound {
                        credit: credit.clone(),
                        accepted: None,
                        read_paused: false,
                        acked: 0,
                        intake: Intake::new(&self.config),
                    };
                    self.conns.insert(id, Conn::new(stream, kind, now));
                    let _ = self.reader_tx.send(ReaderMsg::Opened {
                        conn: id,
                        peer_addr: Some(addr),
                        credit,
                    });
                    self.next_timer = self.next_timer.min(now + self.config.handshake_timeout);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: log, count, and try again later.
                    self.global.accept_errors.fetch_add(1, Relaxed);
                    if rate_limit(
                        &self.global.error_logged_at,
                        self.epoch.elapsed(),
                        self.config.log_interval,
                    ) {
                        warn!("node {}: accept failed: {e}", self.config.node_id);
                    }
                    // Retry from the timers: the listener's readiness edge
                    // may not come again for the connections still queued.
                    self.accept_retry = true;
                    self.next_timer = Instant::now() + Duration::from_millis(10);
                    return;
                }
            }
        }
    }

    /// Keeps inbound connections within `max_inbound_connections`: when
    /// full, the oldest connection that has not completed its handshake
    /// makes room (peers that authenticated are never evicted for a
    /// stranger); if every one has, the new connection is refused.
    fn make_room_for_inbound(&mut self, addr: SocketAddr) -> bool {
        let inbound = self
            .conns
            .values()
            .filter(|c| matches!(c.kind, Kind::Inbound { .. }))
            .count();
        if inbound < self.config.max_inbound_connections {
            return true;
        }
        let oldest_stranger = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.kind, Kind::Inbound { accepted: None, .. }) && c.closing.is_none()
            })
            .min_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id);
        let logged = rate_limit(
            &self.global.error_logged_at,
            self.epoch.elapsed(),
            self.config.log_interval,
        );
        match oldest_stranger {
            Some(id) => {
                self.global.inbound_evicted.fetch_add(1, Relaxed);
                if logged {
                    warn!(
                        "node {}: {} inbound connections: closing the oldest one that has \
                         not completed its handshake to admit {addr}",
                        self.config.node_id, self.config.max_inbound_connections
                    );
                }
                self.close_inbound(id, CloseReason::Evicted);
                true
            }
            None => {
                self.global.inbound_refused.fetch_add(1, Relaxed);
                if logged {
                    warn!(
                        "node {}: refusing a connection from {addr}: {} inbound connections, \
                         all authenticated",
                        self.config.node_id, self.config.max_inbound_connections
                    );
                }
                false
            }
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

    /// Counts and logs (rate-limited) a connection refused by TLS.
    /// `who` says which connection, for the log line.
    fn note_tls(&self, reason: &CloseReason, who: impl FnOnce() -> String) {
        if let CloseReason::Tls(f) = reason {
            self.global.tls.count(f);
            if rate_limit(
                &self.global.tls_logged_at,
                self.epoch.elapsed(),
                self.config.log_interval,
            ) {
                warn!(
                    "node {}: TLS connection {} refused: {f}",
                    self.config.node_id,
                    who()
                );
            }
        }
    }

    /// Makes sure the timers run no later than `at`.
    fn schedule(&mut self, at: Instant) {
        self.next_timer = self.next_timer.min(at);
    }

    fn next_id(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        id
    }

    // ----- dialing -----

    /// Starts a non-blocking connect and registers the socket as a new
    /// outbound connection (of a lane, or of a snapshot).
    fn dial_conn(
        &mut self,
        peer: u64,
        lane: Lane,
        addr: SocketAddr,
        snap: Option<SnapOut>,
        now: Instant,
    ) -> io::Result<ConnId> {
        let id = self.next_id();
        let sock = dial(addr, &self.config)?;
        let mut stream = self
            .stream(sock, Some(addr))
            .ok_or_else(|| io::Error::other("TLS client setup failed"))?;
        self.poll.registry().register(
            stream.sock_mut(),
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let kind = Kind::Outbound {
            peer,
            lane,
            addr,
            phase: Phase::Connecting,
            response: Vec::with_capacity(RESPONSE_LEN),
            deframer: Deframer::new(0),
            snap,
            written: 0,
            acked: 0,
        };
        self.conns.insert(id, Conn::new(stream, kind, now));
        self.schedule(now + self.config.dial_timeout);
        Ok(id)
    }

    fn dial(&mut self, peer: u64, lane: Lane, addr: SocketAddr, now: Instant) {
        match self.dial_conn(peer, lane, addr, None, now) {
            Ok(id) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.lanes[lane.index()].conn = Some(id);
                }
            }
            Err(e) => self.fail_lane(peer, lane, CloseReason::Io(e.kind()), now),
        }
    }

    /// A writable (or error) event: completes a connect, then flushes.
    fn writable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let Kind::Outbound {
            peer,
            lane,
            phase: phase @ Phase::Connecting,
            ..
        } = &mut c.kind
        {
            let (peer, lane) = (*peer, *lane);
            let now = Instant::now();
            match c.stream.sock().take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return self.fail_outbound(id, peer, lane, CloseReason::Io(e.kind()), now);
                }
            }
            match c.stream.sock().peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    return self.fail_outbound(id, peer, lane, CloseReason::Io(e.kind()), now);
                }
            }
            *phase = Phase::Handshaking;
            let hello = Hello::new(lane, self.config.cluster_id, self.config.node_id, peer);
            c.out.push_back(Out::Control(Control::new(&hello.encode())));
            if lane != Lane::Snapshot {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.lanes[lane.index()].link.handle_connected(now);
                }
            }
            self.schedule(now + self.config.handshake_timeout);
        }
        self.flush(id);
    }

    // ----- reading -----

    fn read(&mut self, id: ConnId) {
        let cap = self.config.conn_read_cap;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let outcome = match &mut c.kind {
            Kind::Outbound { phase, .. } if *phase == Phase::Connecting => return,
            Kind::Outbound { .. } => return self.read_outbound(id),
            Kind::Inbound {
                credit,
                read_paused,
                intake,
                ..
            } => {
                if *read_paused {
                    return;
                }
                loop {
                    let filling = intake.direct.is_some() && c.closing.is_none();
                    if !filling && credit.inflight.load(SeqCst) >= cap && c.closing.is_none() {
                        // Out of credit: stop reading until the reader, on
                        // releasing credit, finds `paused` set and sends
                        // ResumeRead. Re-check after setting the flag, in
                        // case the release happened in between (SeqCst on
                        // both sides: store-then-load must not reorder).
                        // (A frame being read whole is finished first: its
                        // bytes count once it is handed over.)
                        credit.paused.store(true, SeqCst);
                        if credit.inflight.load(SeqCst) >= cap {
                            *read_paused = true;
                            break None;
                        }
                        credit.paused.store(false, SeqCst);
                    }
                    let kept = intake.carry_len;
                    let r = match &mut intake.direct {
                        Some((buf, filled)) if filling => c.stream.read(&mut buf[*filled..]),
                        _ => {
                            self.scratch[..kept].copy_from_slice(&intake.carry[..kept]);
                            c.stream.read(&mut self.scratch[kept..])
                        }
                    };
                    #[cfg(feature = "tls")]
                    if c.stream.take_established() {
                        match identify(&self.tls, &c.stream) {
                            Ok(node) => {
                                self.global.tls.handshakes.fetch_add(1, Relaxed);
                                let _ = self.reader_tx.send(ReaderMsg::Identity { conn: id, node });
                            }
                            Err(f) => break Some(CloseReason::Tls(f)),
                        }
                    }
                    match r {
                        Ok(0) => break Some(CloseReason::Eof),
                        Ok(n) => {
                            let now = Instant::now();
                            c.liveness.handle_read(now);
                            if c.closing.is_some() {
                                continue; // rejected: discard
                            }
                            self.next_timer = self.next_timer.min(now + self.config.ack_interval);
                            let hand = |bytes| hand_over(&self.reader_tx, id, credit, bytes);
                            if let Some((buf, filled)) = intake.direct.as_mut().filter(|_| filling)
                            {
                                *filled += n;
                                if *filled == buf.len() {
                                    hand(std::mem::take(buf));
                                    intake.direct = None;
                                }
                                continue;
                            }
                            intake.carry_len = 0;
                            let len = kept + n;
                            let (pass, direct) = match intake.split.split(&self.scratch[..len]) {
                                Split::Pass(pass) => {
                                    let keep = &self.scratch[pass..len];
                                    intake.carry[..keep.len()].copy_from_slice(keep);
                                    intake.carry_len = keep.len();
                                    (pass, None)
                                }
                                Split::Direct { at, total } => {
                                    let mut buf = self.pools.frame_buf(total);
                                    buf[..len - at].copy_from_slice(&self.scratch[at..len]);
                                    (at, Some((buf, len - at)))
                                }
                            };
                            intake.direct = direct;
                            if pass == 0 {
                                continue;
                            }
                            // A mostly full read is handed over as it is (no
                            // copy); a small one is copied out to its size,
                            // so that buffered bytes stay close to `inflight`.
                            hand(if pass >= self.scratch.len() / 2 {
                                let mut full =
                                    std::mem::replace(&mut self.scratch, self.pools.read_buf());
                                full.truncate(pass);
                                full
                            } else {
                                self.scratch[..pass].to_vec()
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Some(c.stream.close_reason(&e)),
                    }
                }
            }
        };
        if let Some(reason) = outcome {
            self.close_inbound(id, reason);
        }
    }

    fn read_outbound(&mut self, id: ConnId) {
        let now = Instant::now();
        let mut result: Result<(), CloseReason> = Ok(());
        let mut accepted = false;
        let mut rejected = None;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Kind::Outbound {
            peer,
            lane,
            phase,
            response,
            deframer,
            snap,
            written,
            acked,
            ..
        } = &mut c.kind
        else {
            return;
        };
        let (peer, lane) = (*peer, *lane);
        'read: loop {
            let r = c.stream.read(&mut self.scratch);
            #[cfg(feature = "tls")]
            if c.stream.take_established() {
                match identify(&self.tls, &c.stream) {
                    Ok(node) if node == peer => {
                        self.global.tls.handshakes.fetch_add(1, Relaxed);
                    }
                    Ok(got) => {
                        result = Err(CloseReason::Tls(crate::error::TlsFailure::WrongIdentity {
                            expected: peer,
                            got,
                        }));
                        break;
                    }
                    Err(f) => {
                        result = Err(CloseReason::Tls(f));
                        break;
                    }
                }
            }
            let n = match r {
                Ok(0) => {
                    result = Err(CloseReason::Eof);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(c.stream.close_reason(&e));
                    break;
                }
            };
            c.liveness.handle_read(now);
            let mut bytes = &self.scratch[..n];
            if *phase == Phase::Handshaking {
                let take = (RESPONSE_LEN - response.len()).min(bytes.len());
                response.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                match Response::decode(response) {
                    None => continue,
                    Some(Ok(Response::Accept)) => {
                        *phase = Phase::Open;
                        accepted = true;
                        // Frames from the acceptor: link heartbeats, and on a
                        // snapshot connection the one-byte verdict.
                        *deframer = Deframer::new(DELIVERED_LEN as u32);
                    }
                    Some(Ok(Response::Reject(r))) => {
                        rejected = Some(r);
                        result = Err(CloseReason::Rejected(r));
                        break;
                    }
                    Some(Err(_)) => {
                        result = Err(CloseReason::PeerMisbehaved(ProtocolViolation::BadResponse));
                        break;
                    }
                }
            }
            let mut cursor = deframer.feed(bytes);
            while let Some(f) = cursor.next() {
                match f {
                    Ok(f) if f.kind == FrameKind::Heartbeat && f.payload.is_empty() => {}
                    Ok(f) if f.kind == FrameKind::Delivered && snap.is_none() => {
                        // A batch being written may already be partly
                        // delivered: the bound is what was handed to this
                        // connection, not what was written whole.
                        let handed = *written
                            + c.out
                                .iter()
                                .map(|o| match o {
                                    Out::Batch(b) => b.msgs as u64,
                                    Out::Control(_) => 0,
                                })
                                .sum::<u64>();
                        match f.payload.try_into().map(u64::from_be_bytes) {
                            Ok(n) if n <= handed => *acked = (*acked).max(n),
                            _ => {
                                result = Err(CloseReason::PeerMisbehaved(
                                    ProtocolViolation::UnexpectedFrame,
                                ));
                                break 'read;
                            }
                        }
                    }
                    Ok(f) if f.kind == FrameKind::SnapshotAck && snap.is_some() => {
                        match (AckStatus::decode(f.payload), snap.as_ref()) {
                            (Ok(status), Some(s)) => {
                                let _ = s.events.send(SnapEvent::Ack(status));
                            }
                            _ => {
                                result = Err(CloseReason::PeerMisbehaved(
                                    ProtocolViolation::UnexpectedFrame,
                                ));
                                break 'read;
                            }
                        }
                    }
                    Ok(_) => {
                        result = Err(CloseReason::PeerMisbehaved(
                            ProtocolViolation::UnexpectedFrame,
                        ));
                        break 'read;
                    }
                    Err(e) => {
                        result = Err(CloseReason::PeerMisbehaved(ProtocolViolation::Frame(e)));
                        break 'read;
                    }
                }
            }
        }
        if lane == Lane::Snapshot {
            if accepted {
                if let Some(Conn {
                    kind: Kind::Outbound { snap: Some(s), .. },
                    liveness,
                    ..
                }) = self.conns.get_mut(&id)
                {
                    *liveness = Liveness::new(now);
                    let _ = s.events.send(SnapEvent::Accepted);
                }
                self.schedule(now + self.config.heartbeat_interval);
            }
            if let Err(reason) = result {
                self.fail_snapshot(id, reason);
            }
            return;
        }
        if accepted {
            self.lane_accepted(peer, lane, id, now);
        }
        if let Some(r) = rejected {
            self.lane_rejected(peer, lane, r);
        }
        if let Err(reason) = result {
            self.fail_lane(peer, lane, reason, now);
        }
    }

    fn lane_accepted(&mut self, peer: u64, lane: Lane, id: ConnId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let l = &mut p.lanes[lane.index()];
        let reconnect = l.link.handle_accepted(now);
        l.last_reject = None;
        if reconnect {
            p.link.counters.reconnects.fetch_add(1, Relaxed);
        }
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        p.link.connected[lane.index()].store(ns, Release);
        info!(
            "node {}: {lane} lane to peer {peer} connected{}",
            self.config.node_id,
            if reconnect { " again" } else { "" }
        );
        if let Some(c) = self.conns.get_mut(&id) {
            c.liveness = Liveness::new(now);
            let held = !l.held.is_empty();
            c.out.extend(l.held.drain(..).map(Out::Batch));
            if held {
                c.liveness.handle_queued(now);
            }
            self.dirty.push(id);
        }
        self.schedule(now + self.config.heartbeat_interval);
    }

    fn lane_rejected(&mut self, peer: u64, lane: Lane, r: RejectReason) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.link.counters.rejected_by_peer.fetch_add(1, Relaxed);
        let l = &mut p.lanes[lane.index()];
        let first = l.last_reject != Some(r);
        l.last_reject = Some(r);
        if first {
            warn!(
                "node {}: peer {peer} rejected our {lane} connection: {r}; backing off",
                self.config.node_id
            );
            let _ = self.notice_tx.send(Notice::Rejected(peer, r));
        } else {
            debug!(
                "node {}: peer {peer} rejected our {lane} connection again: {r}",
                self.config.node_id
            );
        }
    }

    // ----- writing -----

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush(id);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, id: ConnId) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let Kind::Outbound {
            phase: Phase::Connecting,
            ..
        } = c.kind
        {
            return;
        }
        let mut failed = c
            .stream
            .flush_pending()
            .err()
            .map(|e| c.stream.close_reason(&e));
        let mut wrote = false;
        while failed.is_none() && !c.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, o) in c.out.iter().enumerate() {
                n += o.slices(if i == 0 { c.out_pos } else { 0 }, &mut iov[n..]);
                if n == MAX_IOV {
                    break;
                }
            }
            match c.stream.write_vectored(&iov[..n]) {
                Ok(0) => {
                    failed = Some(CloseReason::Io(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(mut written) => {
                    wrote = true;
                    while written > 0 {
                        let front_left = c.out[0].len() - c.out_pos;
                        if written < front_left {
                            c.out_pos += written;
                            break;
                        }
                        written -= front_left;
                        c.out_pos = 0;
                        if let Some(Out::Batch(b)) = c.out.pop_front() {
                            match &mut c.kind {
                                Kind::Outbound { snap: Some(s), .. } => {
                                    let _ = s.events.send(SnapEvent::Written(b.buf));
                                }
                                Kind::Outbound {
                                    peer,
                                    lane,
                                    written,
                                    ..
                                } => {
                                    *written += b.msgs as u64;
                                    if let Some(p) = self.peers.get(peer) {
                                        give_back(&p.lanes[lane.index()].returns, b, None);
                                    }
                                }
                                Kind::Inbound { .. } => {}
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(c.stream.close_reason(&e));
                    break;
                }
            }
        }
        let mut due = None;
        if wrote {
            let pending = !c.out.is_empty();
            c.liveness.handle_written(now, pending);
            // The next heartbeat (or the write timeout) is counted from now.
            due = Some(
                now + if pending {
                    self.config.snapshot_progress_timeout
                } else {
                    self.config.heartbeat_interval
                },
            );
        }
        let done_closing = c
            .closing
            .clone()
            .filter(|_| c.out.is_empty() && !c.stream.has_pending());
        let outbound = match c.kind {
            Kind::Outbound { peer, lane, .. } => Some((peer, lane)),
            Kind::Inbound { .. } => None,
        };
        if let Some(at) = due {
            self.schedule(at);
        }
        match (failed, outbound) {
            (Some(reason), Some((peer, lane))) => self.fail_outbound(id, peer, lane, reason, now),
            (Some(reason), None) => self.close_inbound(id, reason),
            (None, None) => {
                if let Some(reason) = done_closing {
                    self.close_inbound(id, reason);
                }
            }
            _ => {}
        }
    }

    // ----- closing -----

    /// Closes a lane's connection (if any), hands its batches back as not
    /// written, and schedules the redial.
    fn fail_lane(&mut self, peer: u64, lane: Lane, reason: CloseReason, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let l = &mut p.lanes[lane.index()];
        let was_connected = l.link.is_connected();
        let conn = l.conn.take();
        let mut addr = None;
        if let Some(id) = conn {
            if let Some(mut c) = self.conns.remove(&id) {
                if let Kind::Outbound { addr: a, .. } = c.kind {
                    addr = Some(a);
                }
                let _ = self.poll.registry().deregister(c.stream.sock_mut());
                count_in_flight(&c, &p.link);
                for o in c.out.drain(..) {
                    if let Out::Batch(b) = o {
                        give_back(&l.returns, b, UNREACHABLE);
                    }
                }
            }
        }
        for b in l.held.drain(..) {
            give_back(&l.returns, b, UNREACHABLE);
        }
        let at = l.link.handle_failed(now);
        self.next_timer = self.next_timer.min(at);
        p.link.connected[lane.index()].store(0, Release);
        let target = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        let what = format!("{lane} lane to peer {peer} at {target}: {reason}");
        p.link.counters.set_last_error(what.clone());
        if was_connected {
            let _ = self.notice_tx.send(Notice::Unreachable(peer));
        }
        let quiet = matches!(reason, CloseReason::Rejected(_) | CloseReason::PeerRemoved);
        if !quiet
            && rate_limit(
                &p.link.counters.error_logged_at,
                now.saturating_duration_since(self.epoch),
                self.config.log_interval,
            )
        {
            if was_connected {
                warn!("node {}: lost {what}; redialing", self.config.node_id);
            } else {
                info!(
                    "node {}: cannot reach {what}; retrying in {:?}",
                    self.config.node_id,
                    at.saturating_duration_since(now)
                );
            }
        }
        self.note_tls(&reason, || format!("to peer {peer} ({lane} lane)"));
    }

    /// Closes an inbound connection and tells the reader.
    fn close_inbound(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        self.note_tls(&reason, || match c.stream.sock().peer_addr() {
            Ok(a) => format!("from {a}"),
            Err(_) => "from ?".into(),
        });
        let _ = self.poll.registry().deregister(c.stream.sock_mut());
        if let Kind::Inbound {
            accepted,
            intake,
            credit,
            ..
        } = &mut c.kind
        {
            if let Some(key) = accepted {
                if self.inbound_by.get(key) == Some(&id) {
                    self.inbound_by.remove(key);
                }
            }
            // The reader sees every byte that came, so that it can tell a
            // connection that ended inside a frame.
            let bytes = intake.take_unsent();
            if !bytes.is_empty() && c.closing.is_none() {
                hand_over(&self.reader_tx, id, credit, bytes);
            }
        }
        if reason == CloseReason::HandshakeTimeout {
            self.global.handshake_timeouts.fetch_add(1, Relaxed);
        }
        let _ = self.reader_tx.send(ReaderMsg::Closed { conn: id, reason });
    }

    /// Drops an outbound connection without rescheduling (peer removed, or
    /// a finished snapshot), handing lane batches back unwritten so that the
    /// writer counts them.
    fn drop_conn(
        &mut self,
        id: ConnId,
        returns: Option<(&Sender<Returned>, DropReason)>,
    ) -> Option<Conn> {
        let mut c = self.conns.remove(&id)?;
        let _ = self.poll.registry().deregister(c.stream.sock_mut());
        if let Some((returns, why)) = returns {
            for o in c.out.drain(..) {
                if let Out::Batch(b) = o {
                    give_back(returns, b, Some(why));
                }
            }
        }
        Some(c)
    }

    /// Ends a snapshot connection with a failure the sender is told of.
    fn fail_snapshot(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        self.note_tls(&reason, || "for a snapshot".into());
        let _ = self.poll.registry().deregister(c.stream.sock_mut());
        if let Kind::Outbound {
            snap: Some(snap),
            peer,
            ..
        } = c.kind
        {
            self.snaps.remove(&snap.id);
            let _ = snap.events.send(SnapEvent::Failed(format!(
                "connection to node {peer}: {reason}"
            )));
        }
    }

    /// Closes a failed outbound connection: a snapshot's, or a lane's (which
    /// is then redialed).
    fn fail_outbound(
        &mut self,
        id: ConnId,
        peer: u64,
        lane: Lane,
        reason: CloseReason,
        now: Instant,
    ) {
        if lane == Lane::Snapshot {
            self.fail_snapshot(id, reason);
        } else {
            self.fail_lane(peer, lane, reason, now);
        }
    }

    fn open_snapshot(&mut self, snap: SnapId, peer: u64, events: Sender<SnapEvent>) {
        let now = Instant::now();
        let Some(addr) = self
            .peers
            .get(&peer)
            .and_then(|p| p.lanes[Lane::Message.index()].link.current_addr())
        else {
            let _ = events.send(SnapEvent::Failed(format!("node {peer} is not a peer")));
            return;
        };
        let snap_out = SnapOut {
            id: snap,
            events: events.clone(),
        };
        match self.dial_conn(peer, Lane::Snapshot, addr, Some(snap_out), now) {
            Ok(id) => {
                self.snaps.insert(snap, id);
            }
            Err(e) => {
                let _ = events.send(SnapEvent::Failed(format!(
                    "dialing node {peer} at {addr}: {e}"
                )));
            }
        }
    }

    // ----- timers -----

    fn run_timers(&mut self, now: Instant) {
        if std::mem::take(&mut self.accept_retry) {
            self.accept_all();
        }
        let cfg = &self.config;
        let mut next = now + MAX_SLEEP;
        let mut dials = Vec::new();
        let mut timeouts = Vec::new();
        for (&id, p) in &mut self.peers {
            for lane in Lane::QUEUED {
                let l = &mut p.lanes[lane.index()];
                if l.link.timed_out(now) {
                    let reason = match l.link.state() {
                        LinkState::Dialing { .. } => CloseReason::DialTimeout,
                        _ => CloseReason::HandshakeTimeout,
                    };
                    timeouts.push((id, lane, reason));
                    continue;
                }
                match l.link.poll(now) {
                    LinkAction::Dial(addr) => dials.push((id, lane, addr)),
                    LinkAction::WaitUntil(t) => next = next.min(t),
                    LinkAction::Idle => {}
                }
            }
        }
        let mut closes = Vec::new();
        let mut fails = Vec::new();
        for (&id, c) in &mut self.conns {
            let established = match &c.kind {
                Kind::Outbound { phase, .. } => *phase == Phase::Open,
                Kind::Inbound { accepted, .. } => accepted.is_some(),
            };
            if let Kind::Outbound {
                snap: Some(_),
                peer,
                ..
            } = c.kind
            {
                if !established {
                    // Lanes have their link's deadlines; a snapshot
                    // connection has this one.
                    let deadline = c.opened + cfg.dial_timeout + cfg.handshake_timeout;
                    if now >= deadline {
                        fails.push((id, peer, Lane::Snapshot, CloseReason::DialTimeout));
                    } else {
                        next = next.min(deadline);
                    }
                    continue;
                }
            }
            if !established {
                if let Kind::Inbound { .. } = c.kind {
                    // Also bounds how long a reject response may take to
                    // flush to a peer that does not read.
                    let deadline = c.opened + cfg.handshake_timeout;
                    if now >= deadline {
                        let reason = c.closing.clone().unwrap_or(CloseReason::HandshakeTimeout);
                        closes.push((id, reason));
                    } else {
                        next = next.min(deadline);
                    }
                }
                continue;
            }
            // A lane whose writes are stuck while its peer keeps sending
            // heartbeats is backpressure, not failure: the queue fills and
            // drops are reported. Only a snapshot has a write deadline.
            let write_timeout = match c.kind {
                Kind::Outbound { snap: Some(_), .. } => Some(cfg.snapshot_progress_timeout),
                _ => None,
            };
            if let Kind::Inbound {
                read_paused: true, ..
            } = c.kind
            {
                // Silence while we are not reading is ours, not the peer's.
                c.liveness.handle_read(now);
            }
            if let Kind::Inbound {
                credit,
                accepted: Some((_, lane)),
                acked,
                ..
            } = &mut c.kind
            {
                // Tell the dialer how many of its messages are delivered,
                // so that only the rest counts as lost if this connection
                // dies. Keep looking while read bytes wait for the reader.
                let delivered = credit.delivered.load(Relaxed);
                if *lane != Lane::Snapshot && delivered != *acked {
                    *acked = delivered;
                    c.out
                        .push_back(Out::Control(Control::new(&delivered_frame(delivered))));
                    c.liveness.handle_queued(now);
                    self.dirty.push(id);
                }
                if credit.inflight.load(Relaxed) > 0 || delivered != *acked {
                    next = next.min(now + cfg.ack_interval);
                }
            }
            let check =
                c.liveness
                    .check(now, cfg.heartbeat_interval, cfg.read_timeout, write_timeout);
            let reason = match check {
                LivenessCheck::Ok => None,
                LivenessCheck::SendHeartbeat => {
                    c.out
                        .push_back(Out::Control(Control::new(&heartbeat_frame())));
                    c.liveness.handle_queued(now);
                    self.dirty.push(id);
                    None
                }
                LivenessCheck::ReadTimeout => Some(CloseReason::ReadTimeout),
                LivenessCheck::WriteTimeout => Some(CloseReason::WriteTimeout),
            };
            match (reason, &c.kind) {
                (Some(r), Kind::Outbound { peer, lane, .. }) => fails.push((id, *peer, *lane, r)),
                (Some(r), Kind::Inbound { .. }) => closes.push((id, r)),
                (None, _) => {
                    next = next.min(c.liveness.next_deadline(
                        cfg.heartbeat_interval,
                        cfg.read_timeout,
                        write_timeout,
                    ))
                }
            }
        }
        self.next_timer = next;
        for (peer, lane, reason) in timeouts {
            self.fail_lane(peer, lane, reason, now);
        }
        for (id, peer, lane, reason) in fails {
            self.fail_outbound(id, peer, lane, reason, now);
        }
        for (id, reason) in closes {
            if let Some(Conn {
                kind:
                    Kind::Inbound {
                        accepted: Some((from, lane)),
                        ..
                    },
                ..
            }) = self.conns.get(&id)
            {
                info!(
                    "node {}: closing inbound {lane} connection from {from}: {reason}",
                    self.config.node_id
                );
            }
            self.close_inbound(id, reason);
        }
        for (peer, lane, addr) in dials {
            self.dial(peer, lane, addr, now);
        }
        self.flush_dirty();
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
        for (_, mut c) in self.conns.drain() {
            let _ = self.poll.registry().deregister(c.stream.sock_mut());
        }
        let _ = self.poll.registry().deregister(&mut self.listener);
        debug!("node {}: event loop stopped", self.config.node_id);
    }
}

/// Bytes of a `delivered` frame's payload.
const DELIVERED_LEN: usize = 8;

/// A `delivered` frame: the count of messages delivered so far.
/// The node id in a TLS peer's certificate, once its handshake is done.
#[cfg(feature = "tls")]
fn identify(
    ctx: &Option<Arc<crate::tls::TlsContext>>,
    stream: &Stream,
) -> Result<u64, crate::error::TlsFailure> {
    let ctx = ctx
        .as_ref()
        .ok_or_else(|| crate::error::TlsFailure::Other("TLS context missing".into()))?;
    ctx.peer_id(stream.peer_certificates())
}

fn delivered_frame(n: u64) -> [u8; FRAME_HEADER_LEN + DELIVERED_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN + DELIVERED_LEN];
    let mut v = Vec::with_capacity(out.len());
    // An 8-byte payload always fits.
    let _ = encode_frame(&mut v, FrameKind::Delivered, u32::MAX, |b| {
        b.extend_from_slice(&n.to_be_bytes())
    });
    out.copy_from_slice(&v);
    out
}

/// Hands bytes read from inbound connection `id` to the reader; they use
/// read credit until the reader has decoded them.
fn hand_over(reader_tx: &Sender<ReaderMsg>, id: ConnId, credit: &Credit, bytes: Vec<u8>) {
    credit.inflight.fetch_add(bytes.len(), SeqCst);
    let _ = reader_tx.send(ReaderMsg::Data { conn: id, bytes });
}

/// Counts what a dying lane connection had written but the receiver had not
/// reported delivered: maybe lost, so counted as dropped (possibly twice,
/// if it did arrive after the last report).
fn count_in_flight(c: &Conn, link: &PeerLink) {
    if let Kind::Outbound {
        lane,
        written,
        acked,
        snap: None,
        ..
    } = c.kind
    {
        if written > acked {
            link.counters
                .count_drop(lane, DropReason::InFlight, written - acked);
        }
    }
}

/// Hands a batch back to its writer. The return channel has room for every
/// batch the writer may have out, so this never blocks; if it ever were
/// full, the buffer is simply freed.
fn give_back(returns: &Sender<Returned>, batch: Batch, dropped: Option<DropReason>) {
    let _ = returns.try_send(Returned { batch, dropped });
}
