//! The raftwire side: two transports in this process on 127.0.0.1 (node 1
//! sends, node 2 receives) and the consumer thread that polls node 2's
//! `messages()`, counting messages and bytes and timing heartbeats.
//!
//! Each workload is one function over a fresh [`Pair`].

use crate::common::{
    Stamp, Throughput, WINDOW, Window, emit, emit_percentiles, info, now_ns, pattern, percentile,
};
use crate::{Pilot, Plan, Run, Scale};
use crossbeam_channel::{Sender, TryRecvError, select};
use raftwire::{
    Bytes, ChannelReporter, Config, Envelope, Message, MessageClass, NoopReporter, ReportEvent,
    Reporter, SnapshotStatus, Transport,
};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const IMPL: &str = "raftwire";
/// The same transport with mutual TLS on every connection (feature `tls`).
pub const IMPL_TLS: &str = "raftwire-tls";

/// A CA and node certificates made in this process (never stored), so that
/// the TLS runs need no files.
#[cfg(feature = "tls")]
fn bench_tls(node_id: u64, cluster_id: u64) -> raftwire::tls::TlsConfig {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
    use std::sync::OnceLock;
    static CA: OnceLock<(String, Issuer<'static, KeyPair>)> = OnceLock::new();
    let (ca_pem, issuer) = CA.get_or_init(|| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let pem = p.self_signed(&key).expect("CA certificate").pem();
        (pem, Issuer::new(p, key))
    });
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("node params");
    let uri = raftwire::tls::node_uri(cluster_id, node_id);
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("URI"))];
    p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    let key = KeyPair::generate().expect("node key");
    let cert = p.signed_by(&key, issuer).expect("node certificate").pem();
    raftwire::tls::TlsConfig::from_pem(
        cert.as_bytes(),
        key.serialize_pem().as_bytes(),
        ca_pem.as_bytes(),
    )
    .expect("TLS config")
}

type Error = Box<dyn std::error::Error>;

/// Payload bytes of a heartbeat: the send timestamp.
const HB_PAYLOAD: usize = 8;
/// Untimed heartbeats before W3's timed ones (first-use costs).
const HB_WARMUP: u64 = 10;

/// A message type the workloads can send: appends of a payload from node 1
/// to node 2, and heartbeats that carry their send time.
pub trait BenchMsg: Message {
    /// What the notes call it.
    const NAME: &'static str;
    /// An append-class message carrying `payload` (shared, not copied).
    fn append(payload: Bytes) -> Self;
    /// A heartbeat-class (`MessageClass::Other`) message stamped `sent_ns`.
    fn heartbeat(sent_ns: u64) -> Self;
    /// A heartbeat's stamp.
    fn sent_ns(&self) -> Option<u64>;
    /// The payload bytes an append carries.
    fn payload_len(&self) -> usize;
}

impl BenchMsg for Envelope {
    const NAME: &'static str = "Envelope";
    fn append(payload: Bytes) -> Self {
        Envelope::new(2, 1, MessageClass::Append, payload)
    }
    fn heartbeat(sent_ns: u64) -> Self {
        Envelope::new(2, 1, MessageClass::Other, sent_ns.to_be_bytes().to_vec())
    }
    fn sent_ns(&self) -> Option<u64> {
        Some(u64::from_be_bytes(
            self.payload.get(..HB_PAYLOAD)?.try_into().ok()?,
        ))
    }
    fn payload_len(&self) -> usize {
        self.payload.len()
    }
}

/// raft-rs messages: a `MsgAppend` with one entry whose data is the
/// payload, and a `MsgHeartbeat` whose context is the stamp.
#[cfg(feature = "raft-rs")]
impl BenchMsg for raft::eraftpb::Message {
    const NAME: &'static str = "raft-rs MsgAppend (one entry)";
    fn append(payload: Bytes) -> Self {
        use raft::eraftpb::{Entry, EntryType, MessageType};
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.term = 7;
        e.index = 1_000_001;
        e.data = payload;
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.to, m.from, m.term, m.log_term, m.index, m.commit) = (2, 1, 7, 7, 1_000_000, 999_990);
        m.entries = vec![e].into();
        m
    }
    fn heartbeat(sent_ns: u64) -> Self {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        (m.to, m.from, m.term, m.commit) = (2, 1, 7, 999_990);
        m.context = sent_ns.to_be_bytes().to_vec().into();
        m
    }
    fn sent_ns(&self) -> Option<u64> {
        Some(u64::from_be_bytes(
            self.context.get(..HB_PAYLOAD)?.try_into().ok()?,
        ))
    }
    fn payload_len(&self) -> usize {
        self.entries.iter().map(|e| e.data.len()).sum()
    }
}

/// The configuration both nodes run with. Everything is the default except
/// the send-side bounds, which are raised so that the window alone limits
/// what is in flight and nothing needs to be dropped: a lane queue holds
/// `WINDOW` messages, and the append lane `WINDOW` messages of the largest
/// payload the workload sends. (The receive-side bounds never drop: a full
/// receive channel is backpressure.)
pub fn config<M: BenchMsg>(node_id: u64, append_payload: usize, imp: &str) -> Config {
    let mut c = Config::new(node_id, "127.0.0.1:0".parse().unwrap());
    if imp == IMPL_TLS {
        #[cfg(feature = "tls")]
        {
            c.tls = Some(bench_tls(node_id, c.cluster_id));
        }
        #[cfg(not(feature = "tls"))]
        panic!("{IMPL_TLS} needs the tls feature");
    }
    let append_len = M::append(vec![0; append_payload].into()).encoded_len();
    c.send_queue_len = c.send_queue_len.max(WINDOW as usize);
    c.append_queue_bytes = c.append_queue_bytes.max(WINDOW as usize * append_len);
    c
}

/// Node 1 and node 2, each a peer of the other, every lane connected.
pub struct Pair<M: BenchMsg> {
    pub tx: Transport<M>,
    pub rx: Transport<M>,
}

impl<M: BenchMsg> Pair<M> {
    pub fn start(append_payload: usize) -> Result<Pair<M>, Error> {
        Pair::start_with(append_payload, NoopReporter, IMPL)
    }

    /// A pair of implementation `imp` whose sender reports to `reporter`.
    pub fn start_with(
        append_payload: usize,
        reporter: impl Reporter,
        imp: &str,
    ) -> Result<Pair<M>, Error> {
        let tx = Transport::start(config::<M>(1, append_payload, imp), reporter)?;
        let rx = Transport::start(config::<M>(2, append_payload, imp), NoopReporter)?;
        tx.add_peer(2, &[rx.local_addr()])?;
        rx.add_peer(1, &[tx.local_addr()])?;
        wait_connected(&tx, 2)?;
        wait_connected(&rx, 1)?;
        print_config(tx.config(), M::NAME);
        Ok(Pair { tx, rx })
    }

    /// Every message dropped anywhere, on both nodes, for any reason.
    pub fn drops(&self) -> u64 {
        drops(&self.tx) + drops(&self.rx)
    }

    pub fn stop(self) {
        self.tx.stop();
        self.rx.stop();
    }
}

/// Waits until both of `t`'s lanes to `peer` are connected.
pub fn wait_connected<M: Message>(t: &Transport<M>, peer: u64) -> Result<(), Error> {
    wait_for("both lanes to connect", Duration::from_secs(10), || {
        let s = t.stats().peer(peer);
        s.message_lane.connected_since.is_some() && s.append_lane.connected_since.is_some()
    })
}

/// Every message one transport dropped, for any reason.
pub fn drops<M: Message>(t: &Transport<M>) -> u64 {
    let s = t.stats();
    s.peers
        .values()
        .map(|p| p.message_lane.dropped() + p.append_lane.dropped())
        .sum::<u64>()
        + s.dropped_unknown_peer
        + s.dropped_to_self
        + s.dropped_stopped
        + s.dropped_local_only
        + s.dropped_removed
}

/// What the consumer and the senders share.
struct Shared {
    /// Delivered append-class messages (the window's counter).
    window: Window,
    /// Payload bytes of delivered append-class messages.
    bytes: AtomicU64,
    /// Appends (warm-up included) after which the consumer stamps the end.
    total: AtomicU64,
    /// Delivered heartbeats.
    hb_received: AtomicU64,
    /// The consumer ends once it has this many heartbeats and `total` appends…
    hb_total: AtomicU64,
    /// …or when this is set.
    stop: AtomicBool,
    epoch: Instant,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            window: Window::for_current_thread(),
            bytes: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            hb_received: AtomicU64::new(0),
            hb_total: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }
}

struct Consumed {
    /// When the consumer counted append number `total`.
    end: Option<Stamp>,
    /// One-way latency of every heartbeat, in arrival order.
    hb_latency_ns: Vec<u64>,
}

/// The consumer's counts.
struct Counts {
    appends: u64,
    bytes: u64,
    heartbeats: u64,
    out: Consumed,
}

impl Counts {
    fn handle<M: BenchMsg>(&mut self, m: M, s: &Shared) {
        if m.class() == MessageClass::Other {
            let now = now_ns(s.epoch);
            let sent = m.sent_ns().unwrap_or(now);
            self.out.hb_latency_ns.push(now.saturating_sub(sent));
            self.heartbeats += 1;
            s.hb_received.store(self.heartbeats, Release);
            return;
        }
        self.appends += 1;
        self.bytes += m.payload_len() as u64;
        s.bytes.store(self.bytes, Relaxed);
        s.window.set_delivered(self.appends);
        if self.appends == s.total.load(Relaxed) {
            self.out.end = Some(Stamp::now());
        }
    }

    fn done(&self, s: &Shared) -> bool {
        s.stop.load(Acquire)
            || (self.appends >= s.total.load(Relaxed)
                && self.heartbeats >= s.hb_total.load(Acquire))
    }
}

/// The caller's side of node 2: a Raft loop that takes what is on
/// `messages()` first, then one append from `appends()` (empty when
/// `separate_appends` is turned off), and blocks on both when there is
/// nothing.
fn spawn_consumer<M: BenchMsg>(t: &Transport<M>, s: Arc<Shared>) -> JoinHandle<Consumed> {
    let (rx, apps) = (t.messages().clone(), t.appends().clone());
    std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || {
            let mut c = Counts {
                appends: 0,
                bytes: 0,
                heartbeats: 0,
                out: Consumed {
                    end: None,
                    hb_latency_ns: Vec::with_capacity(4096),
                },
            };
            loop {
                for m in rx.try_iter() {
                    c.handle(m, &s);
                }
                match apps.try_recv() {
                    Ok(m) => c.handle(m, &s),
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => select! {
                        recv(rx) -> m => match m {
                            Ok(m) => c.handle(m, &s),
                            Err(_) => break,
                        },
                        recv(apps) -> m => match m {
                            Ok(m) => c.handle(m, &s),
                            Err(_) => break,
                        },
                        default(Duration::from_millis(10)) => {}
                    },
                }
                if c.done(&s) {
                    break;
                }
            }
            c.out
        })
        .expect("spawn consumer")
}

pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

pub fn print_config(c: &Config, msg: &str) {
    let d = Config::new(c.node_id, c.listen_addr);
    info(&format!(
        "raftwire config ({msg}): defaults except send_queue_len={} (default {}), \
         append_queue_bytes={} (default {}); batch_max_bytes={} batch_max_msgs={} \
         max_inflight_batches={} recv_queue_len={} recv_queue_bytes={} conn_read_cap={} \
         read_chunk_len={} max_frame_len={}",
        c.send_queue_len,
        d.send_queue_len,
        c.append_queue_bytes,
        d.append_queue_bytes,
        c.batch_max_bytes,
        c.batch_max_msgs,
        c.max_inflight_batches,
        c.recv_queue_len,
        c.recv_queue_bytes,
        c.conn_read_cap,
        c.read_chunk_len,
        c.max_frame_len
    ));
}

/// W1, W2 and the curve points: append-class messages of one size under the
/// window, built before the clock starts, sent one per `send` call.
pub fn throughput<M: BenchMsg>(imp: &str, workload: &str, plan: &Plan) -> Result<(), Error> {
    let pair = Pair::<M>::start_with(plan.payload_len, NoopReporter, imp)?;
    let s = Shared::new();
    let consumer = spawn_consumer(&pair.rx, s.clone());
    let payload = Bytes::from(pattern(plan.payload_len));
    let build = |n: u64| -> Vec<M> { (0..n).map(|_| M::append(payload.clone())).collect() };
    let (mut sent, mut seen) = (0u64, 0u64);
    let mut send = |m: M, sent: &mut u64| {
        s.window.wait_for_room(*sent, &mut seen, || {});
        pair.tx.send(std::iter::once(m));
        *sent += 1;
    };

    // Warm-up on the same connections, untimed.
    let count = match plan.run {
        Run::Fixed { warmup, count } => {
            for m in build(warmup) {
                send(m, &mut sent);
            }
            wait_for("warm-up delivery", Duration::from_secs(60), || {
                s.window.delivered() >= sent
            })?;
            count
        }
        Run::Sized {
            pilot,
            target,
            max_bytes,
        } => {
            let mut p = Pilot::new(pilot);
            while p.running(sent, || s.window.delivered()) {
                send(M::append(payload.clone()), &mut sent);
            }
            let (n, took) = p.rate(s.window.delivered(), sent);
            wait_for("pilot delivery", Duration::from_secs(60), || {
                s.window.delivered() >= sent
            })?;
            plan.sized_count(n, took, target, max_bytes)
        }
    };
    let warm = sent;
    let mut msgs = build(count);
    let bytes0 = s.bytes.load(Relaxed);
    s.total.store(warm + count, Relaxed);

    let start = Stamp::now();
    // drain, not into_iter: the emptied vector is freed after the clock.
    for m in msgs.drain(..) {
        send(m, &mut sent);
    }
    let consumed = consumer.join().expect("consumer panicked");
    drop(msgs);
    let end = consumed
        .end
        .ok_or("consumer ended without the last message")?;
    let m = Throughput::between(start, end, count, s.bytes.load(Relaxed) - bytes0);
    m.emit(imp, workload);
    emit(imp, workload, "dropped", pair.drops() as f64);
    info(&format!(
        "{imp} {workload}: {}, warm-up {warm} msgs, timed {count} msgs of {} B",
        M::NAME,
        plan.payload_len
    ));
    pair.stop();
    Ok(())
}

/// Sends heartbeat-class messages every `interval` for `period`, each
/// stamped just before its `send` call. Returns how many were sent.
fn heartbeats<M: BenchMsg>(
    t: &Transport<M>,
    s: &Shared,
    period: Duration,
    interval: Duration,
) -> u64 {
    let n = (period.as_nanos() / interval.as_nanos()) as u64;
    let start = Instant::now();
    for i in 0..n {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        t.send(std::iter::once(M::heartbeat(now_ns(s.epoch))));
    }
    n
}

fn emit_latencies(workload: &str, lat_ns: &[u64], sent: u64) {
    let v = emit_percentiles(IMPL, workload, "hb", lat_ns);
    let us = |ns: u64| ns as f64 / 1e3;
    emit(IMPL, workload, "hb_count", v.len() as f64);
    info(&format!(
        "{IMPL} {workload}: {sent} heartbeats sent, {} received; p90 {:.0} µs, \
         p99.9 {:.0} µs, {} over 1 ms",
        v.len(),
        us(percentile(&v, 90.0)),
        us(percentile(&v, 99.9)),
        v.iter().filter(|&&ns| ns > 1_000_000).count()
    ));
}

fn warm_heartbeats<M: BenchMsg>(pair: &Pair<M>, s: &Shared) -> Result<(), Error> {
    for _ in 0..HB_WARMUP {
        pair.tx.send(std::iter::once(M::heartbeat(now_ns(s.epoch))));
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for("heartbeat warm-up", Duration::from_secs(10), || {
        s.hb_received.load(Acquire) >= HB_WARMUP
    })
}

/// W3-idle: heartbeats alone.
pub fn w3_idle<M: BenchMsg>(workload: &str, scale: &Scale) -> Result<(), Error> {
    let pair = Pair::<M>::start(HB_PAYLOAD)?;
    let s = Shared::new();
    s.total.store(0, Relaxed);
    s.hb_total.store(u64::MAX, Release);
    let consumer = spawn_consumer(&pair.rx, s.clone());
    warm_heartbeats(&pair, &s)?;
    let sent = heartbeats(&pair.tx, &s, scale.hb_period, scale.hb_interval);
    s.hb_total.store(HB_WARMUP + sent, Release);
    let got = wait_for("heartbeats", Duration::from_secs(10), || {
        s.hb_received.load(Acquire) >= HB_WARMUP + sent
    });
    s.stop.store(true, Release);
    let consumed = consumer.join().expect("consumer panicked");
    if let Err(e) = got {
        info(&format!("{IMPL} {workload}: {e}"));
    }
    emit_latencies(
        workload,
        &consumed.hb_latency_ns[HB_WARMUP as usize..],
        sent,
    );
    emit(IMPL, workload, "dropped", pair.drops() as f64);
    pair.stop();
    Ok(())
}

/// W3-load: the same heartbeats while W2-shaped appends (same payload, same
/// window) stream on the same pair for the whole heartbeat period. The
/// heartbeats start once the load is in steady state (the window has
/// filled once), and the load's payload MB/s is measured over the
/// heartbeat period. Every append shares one payload buffer (`Bytes`), so
/// the load allocates no payloads.
pub fn w3_load<M: BenchMsg>(workload: &str, scale: &Scale) -> Result<(), Error> {
    let len = scale.w2_payload;
    let pair = Pair::<M>::start(len)?;
    let s = Shared::new();
    let consumer = spawn_consumer(&pair.rx, s.clone());
    warm_heartbeats(&pair, &s)?;

    let template = Bytes::from(pattern(len));
    let (mut sent, mut seen) = (0u64, 0u64);
    let mut send_one = |sent: &mut u64| {
        let payload = template.clone();
        s.window.wait_for_room(*sent, &mut seen, || {});
        pair.tx.send(std::iter::once(M::append(payload)));
        *sent += 1;
    };
    for _ in 0..scale.w2_warmup {
        send_one(&mut sent);
    }
    wait_for("warm-up delivery", Duration::from_secs(60), || {
        s.window.delivered() >= sent
    })?;

    // The heartbeat thread waits for the load to be in steady state.
    let go = Arc::new(AtomicBool::new(false));
    let load_done = Arc::new(AtomicBool::new(false));
    let hb_thread = {
        let (t, s) = (pair.tx.clone(), s.clone());
        let (go, load_done) = (go.clone(), load_done.clone());
        let (period, interval) = (scale.hb_period, scale.hb_interval);
        std::thread::Builder::new()
            .name("heartbeats".into())
            .spawn(move || {
                while !go.load(Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let (t0, b0) = (Instant::now(), s.bytes.load(Relaxed));
                let sent = heartbeats(&t, &s, period, interval);
                s.hb_total.store(HB_WARMUP + sent, Release);
                let got = wait_for("heartbeats", Duration::from_secs(10), || {
                    s.hb_received.load(Acquire) >= HB_WARMUP + sent
                });
                let (t1, b1) = (Instant::now(), s.bytes.load(Relaxed));
                load_done.store(true, Release);
                let mbps = (b1 - b0) as f64 / 1e6 / (t1 - t0).as_secs_f64();
                (sent, got.is_ok(), mbps)
            })?
    };
    let ramp = Instant::now();
    while !load_done.load(Acquire) {
        if !go.load(Relaxed)
            && (sent - s.window.delivered() >= WINDOW || ramp.elapsed() > Duration::from_secs(5))
        {
            info(&format!(
                "{IMPL} {workload}: heartbeats start after {:.2} s of load, {} msgs in flight",
                ramp.elapsed().as_secs_f64(),
                sent - s.window.delivered()
            ));
            go.store(true, Release);
        }
        send_one(&mut sent);
    }
    let (hb_sent, all_arrived, load_mbps) = hb_thread.join().expect("heartbeat thread panicked");
    let drops = pair.drops();
    s.stop.store(true, Release);
    let consumed = consumer.join().expect("consumer panicked");
    if !all_arrived {
        info(&format!("{IMPL} {workload}: not every heartbeat arrived"));
    }
    emit_latencies(
        workload,
        &consumed.hb_latency_ns[HB_WARMUP as usize..],
        hb_sent,
    );
    emit(IMPL, workload, "load_payload_MBps", load_mbps);
    emit(IMPL, workload, "dropped", drops as f64);
    // What is still queued is dropped by stop(): the measurement is over.
    pair.stop();
    Ok(())
}

/// W4's data source: `left` bytes repeating a 64 KiB pattern, generated as
/// the transport reads them; stamps the first read (the first byte sent).
struct PatternSource {
    pattern: Vec<u8>,
    pos: usize,
    left: u64,
    first: Sender<Stamp>,
}

impl Read for PatternSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == 0 && self.left > 0 {
            let _ = self.first.try_send(Stamp::now());
        }
        let mut n = 0;
        while n < buf.len() && self.left > 0 {
            let off = self.pos % self.pattern.len();
            let k = (buf.len() - n)
                .min(self.pattern.len() - off)
                .min(self.left.min(usize::MAX as u64) as usize);
            buf[n..n + k].copy_from_slice(&self.pattern[off..off + k]);
            n += k;
            self.pos += k;
            self.left -= k as u64;
        }
        Ok(n)
    }
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// W4: one snapshot of `scale.w4_size` bytes, generated on the fly from a
/// 64 KiB pattern, read by the receiver's consumer into a 64 KiB buffer and
/// discarded. MB/s from the first byte the transport reads from the source
/// to the last byte the consumer reads; CPU of the whole process from the
/// `send_snapshot` call to then; peak RSS of the whole process.
pub fn w4(workload: &str, scale: &Scale) -> Result<(), Error> {
    let (reporter, events) = ChannelReporter::new();
    let pair = Pair::<Envelope>::start_with(HB_PAYLOAD, reporter, IMPL)?;
    let size = scale.w4_size;
    let (first_tx, first_rx) = crossbeam_channel::bounded(1);
    let source = PatternSource {
        pattern: pattern(64 << 10),
        pos: 0,
        left: size,
        first: first_tx,
    };
    let incoming = pair.rx.snapshots().clone();
    let consumer = std::thread::Builder::new().name("consumer".into()).spawn(
        move || -> Result<(u64, Stamp), String> {
            let mut snap = incoming
                .recv_timeout(Duration::from_secs(30))
                .map_err(|e| format!("no snapshot arrived: {e}"))?;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            loop {
                match snap.data.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got += n as u64;
                        std::hint::black_box(&buf[..n]);
                    }
                    Err(e) => return Err(format!("snapshot read failed after {got} B: {e}")),
                }
            }
            Ok((got, Stamp::now()))
        },
    )?;
    let start = Stamp::now();
    pair.tx.send_snapshot(
        Envelope::new(2, 1, MessageClass::Snapshot, Vec::new()),
        source,
        size,
    )?;
    let (got, end) = consumer.join().expect("consumer panicked")?;
    let first = first_rx
        .recv_timeout(Duration::from_secs(1))
        .map_err(|_| "the source was never read")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match events.recv_deadline(deadline) {
            Ok(ReportEvent::Snapshot(2, status)) => break status,
            Ok(_) => {}
            Err(_) => return Err("no snapshot report within 10 s".into()),
        }
    };
    if got != size || status != SnapshotStatus::Finish {
        return Err(format!("snapshot: received {got} of {size} B, reported {status:?}").into());
    }
    let secs = (end.at - first.at).as_secs_f64();
    emit(IMPL, workload, "snapshot_MBps", size as f64 / 1e6 / secs);
    emit(
        IMPL,
        workload,
        "peak_rss_MiB",
        peak_rss_mib().ok_or("no VmHWM in /proc/self/status")?,
    );
    emit(
        IMPL,
        workload,
        "cpu_s",
        end.cpu.saturating_sub(start.cpu).as_secs_f64(),
    );
    info(&format!(
        "{IMPL} {workload}: {size} B in {secs:.3} s, reported {status:?} \
         (timed phase: perf report --time {:.6},{:.6})",
        first.mono_s, end.mono_s
    ));
    pair.stop();
    Ok(())
}
