//! Fault injection for tests (cargo feature `testing`): a TCP proxy that
//! sits between two nodes and delays, throttles, resets or blackholes their
//! connections, per direction, switchable while traffic flows.
//!
//! A [`FaultProxy`] listens on `127.0.0.1` and forwards every connection it
//! accepts to one target address. To break the link from node 1 to node 2
//! only, start a proxy in front of node 2 and give node 1 the proxy's
//! address for peer 2; give each peer its own proxy to fault peers
//! independently. Everything runs on plain threads (no async runtime), and
//! memory is bounded: each direction of a connection forwards through a
//! fixed window of buffers.
//!
//! ```
//! use raftwire::testing::{Direction, FaultProxy};
//! use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
//! use std::time::{Duration, Instant};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let any = "127.0.0.1:0".parse()?;
//! let n1: Transport = Transport::start(Config::new(1, any), NoopReporter)?;
//! let n2: Transport = Transport::start(Config::new(2, any), NoopReporter)?;
//!
//! // Node 1 reaches node 2 only through the proxy.
//! let proxy = FaultProxy::start(n2.local_addr())?;
//! n1.add_peer(2, &[proxy.addr()])?;
//!
//! // 50 ms more latency from node 1 to node 2.
//! proxy.set_delay(Direction::ClientToServer, Duration::from_millis(50));
//! let sent_at = Instant::now();
//! n1.send([Envelope::new(2, 1, MessageClass::Other, b"late".to_vec())]);
//! let m = n2.messages().recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(m.payload, &b"late"[..]);
//! assert!(sent_at.elapsed() >= Duration::from_millis(50));
//!
//! // Reset every connection (RST, mid-frame if need be); node 1 redials.
//! proxy.pass();
//! assert!(proxy.cut() >= 1);
//! let deadline = Instant::now() + Duration::from_secs(5);
//! loop {
//!     n1.send([Envelope::new(2, 1, MessageClass::Other, b"again".to_vec())]);
//!     if let Ok(m) = n2.messages().recv_timeout(Duration::from_millis(20)) {
//!         assert_eq!(m.payload, &b"again"[..]);
//!         break;
//!     }
//!     assert!(Instant::now() < deadline, "node 1 did not come back");
//! }
//! assert!(proxy.stats().accepted >= 2);
//!
//! // Joins every thread of the proxy and closes its listener.
//! proxy.stop();
//! # Ok(())
//! # }
//! ```
//!
//! # Faults
//!
//! | call | effect |
//! |---|---|
//! | [`set_delay`](FaultProxy::set_delay) | every byte arrives this much later (latency, not a rate limit) |
//! | [`set_throttle`](FaultProxy::set_throttle) | at most this many bytes per second |
//! | [`blackhole`](FaultProxy::blackhole) | nothing is read or written any more: data stops silently, connections stay open (half-open) |
//! | [`cut`](FaultProxy::cut) | every current connection is reset (RST to both ends); new ones are accepted |
//! | [`refuse`](FaultProxy::refuse) | new connections are reset as soon as they are accepted |
//! | [`pass`](FaultProxy::pass) | all of the above cleared (connections already cut stay cut) |
//!
//! "Client" is the side that connected to the proxy (the dialer), "server"
//! the target.
//!
//! # Costs
//!
//! Each proxied connection uses four threads (a reader and a writer per
//! direction) and at most 2 MiB of buffers (16 chunks of 64 KiB per
//! direction, allocated as needed), plus the accept thread. Waiting
//! threads look at the faults every few milliseconds, and `stop` returns
//! within about 50 ms (up to a second while a connection to an unreachable
//! target is still being attempted). It is a test tool: it trusts its
//! clients and its target.

/// The wire codec (frames, handshake, snapshot frame payloads), for tests
/// and fuzz targets that play a peer by hand: build hellos, frames and
/// snapshot streams byte by byte, or decode what a node wrote. It is not
/// part of the stable API (docs/PROTOCOL.md is the specification).
pub mod wire {
    pub use crate::wire::*;
}

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use socket2::SockRef;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bytes per read, and most bytes in one forwarded chunk.
const CHUNK: usize = 64 << 10;
/// Chunks read and not yet written, per direction of a connection: the
/// window that lets a delay keep data in flight. Memory per connection is
/// at most `2 * WINDOW * CHUNK` (2 MiB), allocated as it is needed.
const WINDOW: usize = 16;
/// How often a waiting thread looks again at the faults and the stop flag.
const TICK: Duration = Duration::from_millis(5);
/// Socket read and write timeouts: how long a thread may sit in a blocking
/// call before it looks at the flags again (cut and stop also wake readers
/// at once).
const IO_POLL: Duration = Duration::from_millis(50);
/// How long a connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A direction of the traffic through a [`FaultProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// From the side that connected to the proxy to the target.
    ClientToServer,
    /// From the target back to the side that connected.
    ServerToClient,
    /// Both directions.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::ClientToServer => &[0],
            Direction::ServerToClient => &[1],
            Direction::Both => &[0, 1],
        }
    }
}

/// Counters of a [`FaultProxy`], from [`FaultProxy::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// TCP connections the listener accepted (refused ones included).
    pub accepted: u64,
    /// Connections reset at once because [`FaultProxy::refuse`] was on.
    pub refused: u64,
    /// Connections reset by [`FaultProxy::cut`].
    pub cut: u64,
    /// Connections closed because the target could not be reached.
    pub target_unreachable: u64,
    /// Connections being forwarded right now (accepted and not yet ended).
    pub open: u64,
    /// Bytes written to the target.
    pub client_to_server_bytes: u64,
    /// Bytes written back to the clients.
    pub server_to_client_bytes: u64,
}

impl ProxyStats {
    /// Bytes forwarded in one direction (both: the sum).
    pub fn bytes(&self, dir: Direction) -> u64 {
        match dir {
            Direction::ClientToServer => self.client_to_server_bytes,
            Direction::ServerToClient => self.server_to_client_bytes,
            Direction::Both => self.client_to_server_bytes + self.server_to_client_bytes,
        }
    }
}

/// State shared by the handle and every thread of one proxy.
struct Shared {
    instance: u64,
    target: Mutex<SocketAddr>,
    stopping: AtomicBool,
    refuse: AtomicBool,
    /// Per direction: delay in nanoseconds.
    delay_ns: [AtomicU64; 2],
    /// Per direction: bytes per second, 0 for no limit.
    throttle: [AtomicU64; 2],
    blackhole: [AtomicBool; 2],
    bytes: [AtomicU64; 2],
    accepted: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    target_unreachable: AtomicU64,
    open: AtomicU64,
    /// Live connections, for `cut` and `stop`.
    conns: Mutex<Vec<Weak<Conn>>>,
    /// One thread per connection (each joins its own helpers).
    conn_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Acquire)
    }

    fn blackholed(&self, dir: usize) -> bool {
        self.blackhole[dir].load(Acquire)
    }

    fn delay(&self, dir: usize) -> Duration {
        Duration::from_nanos(self.delay_ns[dir].load(Acquire))
    }

    fn throttle(&self, dir: usize) -> u64 {
        self.throttle[dir].load(Acquire)
    }
}

/// Locks a mutex whatever a panicking holder left behind (the data here is
/// always consistent: lists of handles and an address).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One proxied connection: the accepted socket and, once connected, the
/// socket to the target. The sockets close when the last thread of the
/// connection lets go of it.
struct Conn {
    client: TcpStream,
    server: OnceLock<TcpStream>,
    aborted: AtomicBool,
}

impl Conn {
    /// Resets the connection: both sockets will close with an RST (linger
    /// zero) once the threads let go, and blocked readers wake at once.
    fn abort(&self) {
        self.aborted.store(true, Release);
        for s in [Some(&self.client), self.server.get()]
            .into_iter()
            .flatten()
        {
            let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            let _ = s.shutdown(Shutdown::Read);
        }
    }

    fn aborted(&self) -> bool {
        self.aborted.load(Acquire)
    }
}

/// A fault-injecting TCP proxy. See the [module documentation](self).
///
/// Every method takes `&self` and may be called from any thread while
/// traffic flows. [`stop`](FaultProxy::stop) (or dropping the proxy)
/// resets every connection, closes the listener and joins every thread the
/// proxy started.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: Mutex<Option<Arc<TcpListener>>>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("stats", &self.stats())
            .finish()
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(1);

impl FaultProxy {
    /// Starts a proxy on an ephemeral port of `127.0.0.1` that forwards to
    /// `target`, with no fault set.
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        FaultProxy::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), target)
    }

    /// Starts a proxy listening on `listen` (port 0 picks a free port) that
    /// forwards to `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = Arc::new(TcpListener::bind(listen)?);
        let addr = listener.local_addr()?;
        let instance = INSTANCES.fetch_add(1, Relaxed);
        let shared = Arc::new(Shared {
            instance,
            target: Mutex::new(target),
            stopping: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            delay_ns: Default::default(),
            throttle: Default::default(),
            blackhole: Default::default(),
            bytes: Default::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            target_unreachable: AtomicU64::new(0),
            open: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            conn_threads: Mutex::new(Vec::new()),
        });
        let accept_thread = {
            let shared = shared.clone();
            let listener = listener.clone();
            thread::Builder::new()
                .name(format!("fproxy{instance}-accept"))
                .spawn(move || accept_loop(&shared, &listener))?
        };
        Ok(FaultProxy {
            shared,
            addr,
            listener: Mutex::new(Some(listener)),
            accept_thread: Mutex::new(Some(accept_thread)),
        })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        *lock(&self.shared.target)
    }

    /// Forwards connections accepted from now on to `target` (connections
    /// already forwarded keep theirs).
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = target;
    }

    /// Delays every byte in `dir` by `delay` (zero: no delay), counted
    /// from when the proxy read it. Applies to bytes not yet written,
    /// including those already read; connection setup is not delayed.
    /// Throughput under a delay is bounded by the proxy's window (1 MiB per
    /// direction of a connection) per `delay`.
    pub fn set_delay(&self, dir: Direction, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        for &i in dir.indices() {
            self.shared.delay_ns[i].store(ns, Release);
        }
    }

    /// Limits `dir` to `bytes_per_sec` per connection (`None`: no limit).
    /// Bytes are paced in pieces of about 20 ms worth.
    pub fn set_throttle(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        let v = bytes_per_sec.map_or(0, |b| b.max(1));
        for &i in dir.indices() {
            self.shared.throttle[i].store(v, Release);
        }
    }

    /// Blackholes `dir` (or lifts it): the proxy stops reading from the
    /// sending side and writing to the receiving side, so data stops
    /// flowing without any error or close: the half-open case. Connections
    /// accepted while client-to-server is blackholed are not forwarded to
    /// the target until it is lifted (the dialer's handshake goes
    /// unanswered). Lifting it resumes the connections that are still open.
    pub fn blackhole(&self, dir: Direction, on: bool) {
        for &i in dir.indices() {
            self.shared.blackhole[i].store(on, Release);
        }
    }

    /// While on, every new connection is reset as soon as it is accepted
    /// (the target is never dialed); open connections are left alone.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Release);
    }

    /// Resets every current connection: both the client and the target get
    /// an RST (`SO_LINGER` zero), whatever was in flight is lost, mid-frame
    /// or not. New connections are accepted as usual. Returns how many
    /// connections were reset.
    pub fn cut(&self) -> usize {
        let conns: Vec<Arc<Conn>> = {
            let mut list = lock(&self.shared.conns);
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut n = 0;
        for c in &conns {
            if !c.aborted() {
                c.abort();
                n += 1;
            }
        }
        self.shared.cut.fetch_add(n as u64, Relaxed);
        n
    }

    /// Clears every fault: no delay, no throttle, no blackhole, no refusal.
    pub fn pass(&self) {
        self.set_delay(Direction::Both, Duration::ZERO);
        self.set_throttle(Direction::Both, None);
        self.blackhole(Direction::Both, false);
        self.refuse(false);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Relaxed),
            refused: s.refused.load(Relaxed),
            cut: s.cut.load(Relaxed),
            target_unreachable: s.target_unreachable.load(Relaxed),
            open: s.open.load(Relaxed),
            client_to_server_bytes: s.bytes[0].load(Relaxed),
            server_to_client_bytes: s.bytes[1].load(Relaxed),
        }
    }

    /// The prefix of the name of every thread of this proxy
    /// (`fproxy<N>-`), for tests that check that none outlives
    /// [`stop`](FaultProxy::stop).
    pub fn thread_name_prefix(&self) -> String {
        format!("fproxy{}-", self.shared.instance)
    }

    /// Whether [`stop`](FaultProxy::stop) has been called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping()
    }

    /// Stops the proxy: resets every connection, closes the listener, and
    /// joins every thread it started. Idempotent; also done on drop.
    pub fn stop(&self) {
        let s = &self.shared;
        s.stopping.store(true, Release);
        let accept = lock(&self.accept_thread).take();
        if let Some(listener) = lock(&self.listener).as_ref() {
            // Wake the blocked accept: on Linux shutting a listener down
            // does it; elsewhere a connection to ourselves does.
            let _ = SockRef::from(&**listener).shutdown(Shutdown::Read);
            if accept.as_ref().is_some_and(|t| !t.is_finished()) {
                let mut wake = self.addr;
                if wake.ip().is_unspecified() {
                    wake.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
                }
                let _ = TcpStream::connect_timeout(&wake, CONNECT_TIMEOUT);
            }
        }
        if let Some(t) = accept {
            let _ = t.join();
        }
        // The accept thread held the other reference: this closes it.
        lock(&self.listener).take();
        // No connection can be added any more.
        let conns: Vec<Arc<Conn>> = std::mem::take(&mut *lock(&s.conns))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for c in &conns {
            c.abort();
        }
        drop(conns);
        let threads = std::mem::take(&mut *lock(&s.conn_threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut next_conn = 0u64;
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let client = match accepted {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                // Out of descriptors and the like: do not spin.
                thread::sleep(IO_POLL);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Relaxed);
        if shared.refuse.load(Acquire) {
            let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            shared.refused.fetch_add(1, Relaxed);
            continue; // dropping `client` resets it
        }
        let _ = client.set_nodelay(true);
        let _ = client.set_read_timeout(Some(IO_POLL));
        let _ = client.set_write_timeout(Some(IO_POLL));
        let conn = Arc::new(Conn {
            client,
            server: OnceLock::new(),
            aborted: AtomicBool::new(false),
        });
        {
            let mut list = lock(&shared.conns);
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&conn));
        }
        shared.open.fetch_add(1, Relaxed);
        next_conn += 1;
        let spawned = {
            let shared = shared.clone();
            let conn = conn.clone();
            thread::Builder::new()
                .name(format!("fproxy{}-c{next_conn}", shared.instance))
                .spawn(move || {
                    run_conn(&shared, &conn, next_conn);
                    shared.open.fetch_sub(1, Relaxed);
                })
        };
        let mut threads = lock(&shared.conn_threads);
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => {
                conn.abort();
                shared.open.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Sleeps for `d`, in ticks, unless the connection ends first. Returns
/// false if it did.
fn nap(shared: &Shared, conn: &Conn, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if shared.stopping() || conn.aborted() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(TICK));
    }
}

/// Connects a connection to the target and forwards both directions until
/// they end. Runs on the connection's own thread, which starts and joins
/// three helpers (one reader and one writer per direction).
fn run_conn(shared: &Arc<Shared>, conn: &Arc<Conn>, n: u64) {
    // A blackholed link does not let the connection through yet.
    while shared.blackholed(0) {
        if !nap(shared, conn, TICK) {
            conn.abort();
            return;
        }
    }
    let target = *lock(&shared.target);
    let server = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            // Pass the refusal on to the client.
            shared.target_unreachable.fetch_add(1, Relaxed);
            conn.abort();
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_read_timeout(Some(IO_POLL));
    let _ = server.set_write_timeout(Some(IO_POLL));
    let _ = conn.server.set(server);
    if conn.aborted() || shared.stopping() {
        conn.abort(); // again: now the server socket is there to reset
        return;
    }
    let mut helpers = Vec::new();
    let mut inline = None;
    for dir in 0..2 {
        let (full_tx, full_rx) = bounded::<Chunk>(WINDOW + 1);
        let (free_tx, free_rx) = bounded::<Vec<u8>>(WINDOW);
        for _ in 0..WINDOW {
            let _ = free_tx.send(Vec::new());
        }
        let reader = {
            let (shared, conn) = (shared.clone(), conn.clone());
            move || read_side(&shared, &conn, dir, full_tx, free_rx)
        };
        let writer = {
            let (shared, conn) = (shared.clone(), conn.clone());
            move || write_side(&shared, &conn, dir, full_rx, free_tx)
        };
        let name = |role: &str| {
            let d = if dir == 0 { "cs" } else { "sc" };
            format!("fproxy{}-c{n}{d}{role}", shared.instance)
        };
        match thread::Builder::new().name(name("r")).spawn(reader) {
            Ok(t) => helpers.push(t),
            Err(_) => {
                conn.abort();
                break;
            }
        }
        if dir == 1 {
            inline = Some(writer);
        } else {
            match thread::Builder::new().name(name("w")).spawn(writer) {
                Ok(t) => helpers.push(t),
                Err(_) => {
                    conn.abort();
                    break;
                }
            }
        }
    }
    if let Some(writer) = inline {
        writer();
    }
    for t in helpers {
        let _ = t.join();
    }
}

/// Bytes read from one side, on their way to the other. `buf` is `None`
/// for the end of the stream.
struct Chunk {
    buf: Option<Vec<u8>>,
    len: usize,
    read_at: Instant,
}

fn sides(conn: &Conn, dir: usize) -> Option<(&TcpStream, &TcpStream)> {
    let server = conn.server.get()?;
    Some(if dir == 0 {
        (&conn.client, server)
    } else {
        (server, &conn.client)
    })
}

fn read_side(
    shared: &Shared,
    conn: &Conn,
    dir: usize,
    out: Sender<Chunk>,
    free: Receiver<Vec<u8>>,
) {
    let Some((mut src, _)) = sides(conn, dir) else {
        return;
    };
    let mut spare: Option<Vec<u8>> = None;
    loop {
        if shared.stopping() || conn.aborted() {
            return;
        }
        if shared.blackholed(dir) {
            if !nap(shared, conn, TICK) {
                return;
            }
            continue;
        }
        let mut buf = match spare.take() {
            Some(b) => b,
            None => match free.recv_timeout(IO_POLL) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        if buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        match src.read(&mut buf) {
            Ok(0) => {
                if !conn.aborted() {
                    let _ = out.send(Chunk {
                        buf: None,
                        len: 0,
                        read_at: Instant::now(),
                    });
                }
                return;
            }
            Ok(len) => {
                let chunk = Chunk {
                    buf: Some(buf),
                    len,
                    read_at: Instant::now(),
                };
                if out.send(chunk).is_err() {
                    return; // the writer ended: the connection is over
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                spare = Some(buf);
            }
            Err(_) => {
                // Reset by its end: pass the reset on.
                conn.abort();
                return;
            }
        }
    }
}

/// Paces writes to a byte rate.
struct Pacer {
    /// When the next byte may be written.
    next: Instant,
}

impl Pacer {
    /// How many bytes may be written now (of `want`), or how long to wait.
    fn allow(&mut self, rate: u64, want: usize) -> Result<usize, Duration> {
        let now = Instant::now();
        if rate == 0 {
            self.next = now;
            return Ok(want);
        }
        if self.next > now {
            return Err(self.next - now);
        }
        // About 20 ms worth at a time, at least one byte.
        let piece = usize::try_from(rate / 50).unwrap_or(usize::MAX).max(1);
        Ok(want.min(piece))
    }

    fn spent(&mut self, rate: u64, n: usize) {
        if rate == 0 {
            return;
        }
        let took = Duration::from_secs_f64(n as f64 / rate as f64);
        self.next = self.next.max(Instant::now()) + took;
    }
}

fn write_side(
    shared: &Shared,
    conn: &Conn,
    dir: usize,
    input: Receiver<Chunk>,
    free: Sender<Vec<u8>>,
) {
    let Some((_, mut dst)) = sides(conn, dir) else {
        return;
    };
    let mut pacer = Pacer {
        next: Instant::now(),
    };
    loop {
        if shared.stopping() || conn.aborted() {
            return;
        }
        let chunk = match input.recv_timeout(IO_POLL) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // The delay counts from when the bytes were read, whatever the
        // setting was then.
        loop {
            // A delay too long to represent never ends.
            let left = match chunk.read_at.checked_add(shared.delay(dir)) {
                Some(due) => due.saturating_duration_since(Instant::now()),
                None => TICK,
            };
            if left.is_zero() {
                break;
            }
            if !nap(shared, conn, left.min(TICK)) {
                return;
            }
        }
        let Some(buf) = chunk.buf else {
            // End of stream: pass it on once the link lets it through.
            while shared.blackholed(dir) {
                if !nap(shared, conn, TICK) {
                    return;
                }
            }
            let _ = dst.shutdown(Shutdown::Write);
            return;
        };
        let mut off = 0;
        while off < chunk.len {
            if shared.stopping() || conn.aborted() {
                return;
            }
            if shared.blackholed(dir) {
                if !nap(shared, conn, TICK) {
                    return;
                }
                continue;
            }
            let rate = shared.throttle(dir);
            let n = match pacer.allow(rate, chunk.len - off) {
                Ok(n) => n,
                Err(wait) => {
                    if !nap(shared, conn, wait.min(TICK)) {
                        return;
                    }
                    continue;
                }
            };
            match dst.write(&buf[off..off + n]) {
                Ok(0) => {
                    conn.abort();
                    return;
                }
                Ok(w) => {
                    off += w;
                    shared.bytes[dir].fetch_add(w as u64, Relaxed);
                    pacer.spent(rate, w);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    conn.abort();
                    return;
                }
            }
        }
        // Never blocks: there are exactly WINDOW buffers.
        let _ = free.try_send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_the_rate() {
        let mut p = Pacer {
            next: Instant::now(),
        };
        assert_eq!(p.allow(0, 1000), Ok(1000));
        // 20 ms worth at 5000 B/s.
        assert_eq!(p.allow(5000, 1000), Ok(100));
        p.spent(5000, 100);
        let wait = p.allow(5000, 1000).unwrap_err();
        assert!(wait > Duration::from_millis(10) && wait <= Duration::from_millis(20));
        // Very low rates still move a byte at a time.
        let mut p = Pacer {
            next: Instant::now(),
        };
        assert_eq!(p.allow(10, 1000), Ok(1));
        // No limit clears any debt.
        p.spent(10, 1);
        assert_eq!(p.allow(0, 7), Ok(7));
    }

    #[test]
    fn proxy_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<FaultProxy>();
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::Both.indices(), &[0, 1]);
        let s = ProxyStats {
            client_to_server_bytes: 3,
            server_to_client_bytes: 4,
            ..ProxyStats::default()
        };
        assert_eq!(s.bytes(Direction::ClientToServer), 3);
        assert_eq!(s.bytes(Direction::ServerToClient), 4);
        assert_eq!(s.bytes(Direction::Both), 7);
    }
}
