//! Transport configuration: identity, address, and every limit.

use crate::error::ConfigError;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a [`Transport`](crate::Transport) needs to start. Build it
/// with [`Config::new`] and adjust fields; [`Config::validate`] (called by
/// `Transport::start`) says what is wrong, if anything.
///
/// The defaults work on loopback and on a LAN. Memory is bounded by these
/// numbers: per peer and lane, a send queue of at most `send_queue_len`
/// messages and `send_queue_bytes` bytes plus `max_inflight_batches`
/// batches of about `batch_max_bytes`; per inbound connection, at most
/// `conn_read_cap` bytes read but not yet decoded plus one frame being
/// read (`max_frame_len`); on the receive channels, at most
/// `recv_queue_len` messages and about `recv_queue_bytes` bytes each. For
/// reuse, a transport keeps up to 8 spent read buffers (`read_chunk_len`)
/// and 2 spent frame buffers of at most `2 × conn_read_cap`.
///
/// ```
/// use raftwire::Config;
/// use std::time::Duration;
///
/// let mut config = Config::new(1, "127.0.0.1:0".parse().unwrap());
/// config.cluster_id = 0xC0FFEE;
/// config.read_timeout = Duration::from_secs(3);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id. Non-zero (raft reserves 0 for "none").
    pub node_id: u64,
    /// The cluster id; connections from another cluster are rejected.
    pub cluster_id: u64,
    /// Address to listen on. Port 0 picks a free port; read the bound
    /// address with [`Transport::local_addr`](crate::Transport::local_addr).
    pub listen_addr: SocketAddr,

    /// Largest frame payload accepted or sent, in bytes. A message whose
    /// encoding is larger is dropped at the sender (counted as `too_large`).
    pub max_frame_len: u32,
    /// Per peer and lane: most messages queued for the writer.
    pub send_queue_len: usize,
    /// Per peer, message lane: most bytes queued (encoded size).
    pub message_queue_bytes: usize,
    /// Per peer, append lane: most bytes queued (encoded size).
    pub append_queue_bytes: usize,
    /// A writer flushes a batch when it reaches this many bytes…
    pub batch_max_bytes: usize,
    /// …or this many messages (or when its queue is empty).
    pub batch_max_msgs: usize,
    /// Per peer and lane: batches handed to the event loop but not yet
    /// written to the socket. The writer waits when this many are out.
    pub max_inflight_batches: usize,

    /// Capacity of each receive channel (`messages()`, `proposals()` and
    /// `appends()`), in messages.
    pub recv_queue_len: usize,
    /// Bytes (encoded size) that each receive channel may hold before the
    /// reader stops delivering and, through TCP, the senders slow down.
    pub recv_queue_bytes: usize,
    /// Deliver append-class messages on [`Transport::appends`](crate::Transport::appends)
    /// instead of `messages()` (default `true`). Appends then never queue
    /// in front of heartbeats and votes on the receive side either, and a
    /// full appends channel holds back only the append lanes (the reader
    /// serves the other connections meanwhile).
    /// [`Transport::try_recv`](crate::Transport::try_recv) and
    /// [`recv_timeout`](crate::Transport::recv_timeout) take from all three
    /// channels, urgent messages first; a loop that `select!`s must include
    /// `appends()`. `false`: everything but proposals on `messages()`, in
    /// arrival order (appends and heartbeats then share one queue).
    pub separate_appends: bool,
    /// Send heartbeats, votes and other message-lane messages from the
    /// calling thread when their lane is idle (default `true`): if nothing
    /// is queued or in flight on the peer's message lane, `send` encodes
    /// the message itself and hands it to the event loop, so it does not
    /// wait for the lane's writer thread to wake (one thread hand-off
    /// fewer; on a loaded machine a wake-up can take a scheduler slice).
    /// A busy lane queues as before and its writer batches. `false`:
    /// every message goes through the writer thread.
    pub direct_send: bool,
    /// Per inbound connection: bytes read from the socket and not yet
    /// decoded. Past it the event loop stops reading that socket.
    pub conn_read_cap: usize,
    /// Most inbound connections at once. When full, the oldest connection
    /// that has not completed its handshake is closed to admit a new one;
    /// authenticated peers are never evicted for a stranger.
    pub max_inbound_connections: usize,
    /// Size of each read from a socket (at least 1 KiB). Frames longer than
    /// this are read whole, into a buffer of their own.
    pub read_chunk_len: usize,
    /// Frames decoded from one connection before the reader serves the next
    /// one (fairness between peers).
    pub reader_fairness_budget: usize,

    /// An idle connection sends a link heartbeat this often.
    pub heartbeat_interval: Duration,
    /// A connection that has received nothing for this long is closed (the
    /// peer vanished or stopped). Must be at least twice `heartbeat_interval`.
    pub read_timeout: Duration,
    /// A receiver tells each dialer how many of its messages it has
    /// delivered at most this often (while messages arrive); what a dying
    /// connection had written beyond that count is counted as dropped.
    /// Shorter means fewer messages counted as dropped in flight that had
    /// in fact arrived; each report is a 20-byte frame.
    pub ack_interval: Duration,
    /// A dial that has not connected within this time fails.
    pub dial_timeout: Duration,
    /// An inbound connection that has not completed the handshake within
    /// this time is closed.
    pub handshake_timeout: Duration,
    /// First redial delay after a failure.
    pub backoff_floor: Duration,
    /// Largest redial delay (before jitter, which adds up to a quarter).
    pub backoff_cap: Duration,
    /// Bytes of snapshot data per chunk frame (at most `max_frame_len`).
    pub snapshot_chunk_len: usize,
    /// Chunks of one snapshot in flight at a time: handed to the event loop
    /// by the sender, or buffered for the application by the receiver.
    pub snapshot_inflight_chunks: usize,
    /// Largest snapshot accepted or sent, in bytes.
    pub max_snapshot_len: u64,
    /// Largest snapshot-class message accepted with its data inline (the
    /// receiver assembles it in memory before delivering it).
    pub max_inline_snapshot_len: usize,
    /// Snapshots sent at the same time; one more fails at once.
    pub max_outgoing_snapshots: usize,
    /// Snapshots received at the same time; one more is refused.
    pub max_incoming_snapshots: usize,
    /// A snapshot fails when no chunk has moved for this long (sender: no
    /// chunk written; receiver: no chunk arrived while the application was
    /// waiting for one).
    pub snapshot_progress_timeout: Duration,
    /// A snapshot fails when it takes longer than `snapshot_progress_timeout`
    /// plus its size at this rate (bytes per second).
    pub snapshot_min_rate: u64,
    /// `report_unreachable` is called at most once per peer per interval.
    pub unreachable_report_interval: Duration,
    /// Drop and error log lines are rate-limited to one per peer and reason
    /// per interval (the counters in `stats()` see every event).
    pub log_interval: Duration,

    /// TCP keepalive idle time for every socket (`None` disables).
    pub tcp_keepalive: Option<Duration>,
    /// `SO_SNDBUF` for every socket (`None` keeps the system default).
    pub send_buffer_size: Option<usize>,
    /// `SO_RCVBUF` for every socket (`None` keeps the system default).
    pub recv_buffer_size: Option<usize>,

    /// Mutual TLS for every connection (feature `tls`; see
    /// [`raftwire::tls`](crate::tls)). `None`: plaintext, which
    /// [`validate`](Config::validate) accepts only on loopback addresses
    /// unless `insecure_plaintext` says otherwise.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Allow plaintext on addresses other than loopback. Without TLS,
    /// anyone who can reach the port and guess the cluster id can inject
    /// Raft messages, so plaintext must be asked for: with this `false`
    /// (the default) and no TLS, a non-loopback `listen_addr` fails
    /// validation and a non-loopback peer address is refused by
    /// [`add_peer`](crate::Transport::add_peer). Set it only on a network
    /// you trust entirely (or behind a TLS tunnel of your own).
    pub insecure_plaintext: bool,
}

impl Config {
    /// A configuration with default limits and timings.
    pub fn new(node_id: u64, listen_addr: SocketAddr) -> Config {
        Config {
            node_id,
            cluster_id: 0,
            listen_addr,
            max_frame_len: 16 << 20,
            send_queue_len: 4096,
            message_queue_bytes: 8 << 20,
            append_queue_bytes: 64 << 20,
            batch_max_bytes: 256 << 10,
            batch_max_msgs: 1024,
            max_inflight_batches: 4,
            recv_queue_len: 4096,
            recv_queue_bytes: 64 << 20,
            separate_appends: true,
            direct_send: true,
            conn_read_cap: 1 << 20,
            max_inbound_connections: 256,
            read_chunk_len: 64 << 10,
            reader_fairness_budget: 64,
            heartbeat_interval: Duration::from_millis(500),
            read_timeout: Duration::from_secs(3),
            ack_interval: Duration::from_millis(2),
            dial_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(3),
            backoff_floor: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            snapshot_chunk_len: 1 << 20,
            snapshot_inflight_chunks: 4,
            max_snapshot_len: 1 << 40,
            max_inline_snapshot_len: 256 << 20,
            max_outgoing_snapshots: 4,
            max_incoming_snapshots: 4,
            snapshot_progress_timeout: Duration::from_secs(10),
            snapshot_min_rate: 1 << 20,
            unreachable_report_interval: Duration::from_millis(100),
            log_interval: Duration::from_secs(1),
            tcp_keepalive: Some(Duration::from_secs(30)),
            send_buffer_size: None,
            recv_buffer_size: None,
            #[cfg(feature = "tls")]
            tls: None,
            insecure_plaintext: false,
        }
    }

    /// What the checksums of the frames this node sends on the connections
    /// it dials cover: the header only under TLS (unless
    /// [`TlsConfig::with_payload_checksums`](crate::tls::TlsConfig::with_payload_checksums)
    /// asks for more), header and payload otherwise.
    pub(crate) fn sent_checksums(&self) -> crate::wire::Checksums {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls
            && !t.payload_checksums()
        {
            return crate::wire::Checksums::HeaderOnly;
        }
        crate::wire::Checksums::Full
    }

    /// Checks every field; the error names the first field that is wrong
    /// and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, why: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError {
                field,
                reason: why.into(),
            })
        }
        if self.node_id == 0 {
            return bad("node_id", "must be non-zero (0 means \"no node\" in raft)");
        }
        if self.max_frame_len == 0 || self.max_frame_len > 1 << 30 {
            return bad("max_frame_len", "must be between 1 byte and 1 GiB");
        }
        let nonzero = [
            ("send_queue_len", self.send_queue_len),
            ("message_queue_bytes", self.message_queue_bytes),
            ("append_queue_bytes", self.append_queue_bytes),
            ("batch_max_bytes", self.batch_max_bytes),
            ("batch_max_msgs", self.batch_max_msgs),
            ("max_inflight_batches", self.max_inflight_batches),
            ("recv_queue_len", self.recv_queue_len),
            ("recv_queue_bytes", self.recv_queue_bytes),
            ("conn_read_cap", self.conn_read_cap),
            ("read_chunk_len", self.read_chunk_len),
            ("max_inbound_connections", self.max_inbound_connections),
            ("reader_fairness_budget", self.reader_fairness_budget),
            ("snapshot_chunk_len", self.snapshot_chunk_len),
            ("snapshot_inflight_chunks", self.snapshot_inflight_chunks),
            ("max_inline_snapshot_len", self.max_inline_snapshot_len),
            ("max_outgoing_snapshots", self.max_outgoing_snapshots),
            ("max_incoming_snapshots", self.max_incoming_snapshots),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return bad(field, "must be at least 1");
            }
        }
        if self.read_chunk_len < 1024 {
            // The event loop keeps up to a frame header's bytes from one
            // read in front of the next: a read must have room for more.
            return bad("read_chunk_len", "must be at least 1024 bytes");
        }
        let durations = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("read_timeout", self.read_timeout),
            ("ack_interval", self.ack_interval),
            ("dial_timeout", self.dial_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("backoff_floor", self.backoff_floor),
            ("backoff_cap", self.backoff_cap),
            ("snapshot_progress_timeout", self.snapshot_progress_timeout),
            (
                "unreachable_report_interval",
                self.unreachable_report_interval,
            ),
            ("log_interval", self.log_interval),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return bad(field, "must be longer than zero");
            }
        }
        if self.read_timeout < self.heartbeat_interval * 2 {
            return bad(
                "read_timeout",
                format!(
                    "must be at least twice heartbeat_interval ({:?}), or idle connections \
                     would time out between heartbeats",
                    self.heartbeat_interval
                ),
            );
        }
        if self.snapshot_chunk_len > self.max_frame_len as usize {
            return bad("snapshot_chunk_len", "must not exceed max_frame_len");
        }
        if self.snapshot_min_rate == 0 {
            return bad("snapshot_min_rate", "must be at least 1 byte per second");
        }
        if self.backoff_cap < self.backoff_floor {
            return bad("backoff_cap", "must not be below backoff_floor");
        }
        if self
            .tcp_keepalive
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return bad(
                "tcp_keepalive",
                "must be at least one second (TCP counts in seconds)",
            );
        }
        if self.send_buffer_size == Some(0) || self.recv_buffer_size == Some(0) {
            return bad(
                "send_buffer_size/recv_buffer_size",
                "must be non-zero when set",
            );
        }
        if !self.plaintext_allowed(self.listen_addr) {
            return bad(
                "insecure_plaintext",
                format!(
                    "listening on {} (not loopback) without TLS would let anyone who reaches \
                     it inject messages: set `tls` (feature `tls`), or set \
                     `insecure_plaintext = true` if this network is trusted",
                    self.listen_addr
                ),
            );
        }
        Ok(())
    }

    /// Whether this node uses TLS.
    pub(crate) fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// Whether talking to or listening on `addr` is allowed: always with
    /// TLS; without it only on loopback, unless `insecure_plaintext`.
    pub(crate) fn plaintext_allowed(&self, addr: SocketAddr) -> bool {
        self.has_tls() || self.insecure_plaintext || addr.ip().is_loopback()
    }

    /// How long a snapshot of `size` bytes may take in all.
    pub(crate) fn snapshot_deadline(&self, size: u64) -> Duration {
        self.snapshot_progress_timeout + Duration::from_secs(size / self.snapshot_min_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(1, "127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = cfg();
        c.node_id = 0;
        assert_eq!(c.validate().unwrap_err().field, "node_id");
        let mut c = cfg();
        c.send_queue_len = 0;
        assert_eq!(c.validate().unwrap_err().field, "send_queue_len");
        let mut c = cfg();
        c.read_timeout = c.heartbeat_interval;
        assert_eq!(c.validate().unwrap_err().field, "read_timeout");
        let mut c = cfg();
        c.read_chunk_len = 1023;
        assert_eq!(c.validate().unwrap_err().field, "read_chunk_len");
        c.read_chunk_len = 1024;
        c.validate().unwrap();
        let mut c = cfg();
        c.backoff_cap = Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().field, "backoff_cap");
        let mut c = Config::new(1, "0.0.0.0:0".parse().unwrap());
        assert_eq!(c.validate().unwrap_err().field, "insecure_plaintext");
        c.insecure_plaintext = true;
        c.validate().unwrap();
        let mut c = cfg();
        c.dial_timeout = Duration::ZERO;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "dial_timeout");
        assert!(e.to_string().contains("dial_timeout"));
    }
}
