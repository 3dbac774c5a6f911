//! raftwire moves Raft messages between the members of a cluster over TCP,
//! on plain threads, with no async runtime: the network layer that raft-rs
//! and etcd's raft leave to their users.
//!
//! This page is a tutorial; every example compiles and runs (on 127.0.0.1).
//!
//! # 1. Start a transport and add peers
//!
//! A [`Transport`] binds its listener, starts its threads, and is ready.
//! Peers are dialed as soon as they are added and redialed forever, with
//! exponential backoff and jitter, until they are removed.
//!
//! ```
//! use raftwire::{Config, NoopReporter, Transport};
//!
//! # fn main() -> Result<(), raftwire::Error> {
//! let mut config = Config::new(1, "127.0.0.1:0".parse().unwrap());
//! config.cluster_id = 42; // connections from other clusters are rejected
//! let t: Transport = Transport::start(config, NoopReporter)?;
//! println!("node 1 listens on {}", t.local_addr());
//! t.add_peer(2, &["127.0.0.1:7002", "[::1]:7002"])?; // tried in turn
//! t.stop();
//! # Ok(())
//! # }
//! ```
//!
//! # 2. Send and receive
//!
//! [`Transport::send`] routes each message by its `to` and returns at once:
//! it never blocks. Received messages arrive on three crossbeam channels:
//! proposals on [`Transport::proposals`] (etcd's `propc`), appends on
//! [`Transport::appends`], and everything else (heartbeats, votes,
//! responses) on [`Transport::messages`]. The easy way to take them is
//! [`Transport::recv_timeout`] (or [`try_recv`](Transport::try_recv)): the
//! most urgent first, so a heartbeat is stepped before the appends that
//! queued ahead of it, and a follower does not time out while it works
//! through a backlog.
//!
//! ```
//! use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), raftwire::Error> {
//! let any = "127.0.0.1:0".parse().unwrap();
//! let a: Transport = Transport::start(Config::new(1, any), NoopReporter)?;
//! let b: Transport = Transport::start(Config::new(2, any), NoopReporter)?;
//! a.add_peer(2, &[b.local_addr()])?;
//!
//! a.send([
//!     Envelope::new(2, 1, MessageClass::Append, b"entries 5..9".to_vec()),
//!     Envelope::new(2, 1, MessageClass::Other, b"vote".to_vec()),
//!     Envelope::new(2, 1, MessageClass::Proposal, b"set x=1".to_vec()),
//! ]);
//!
//! let tick = Duration::from_millis(10);
//! let mut got = Vec::new();
//! while got.len() < 3 {
//!     match b.recv_timeout(tick) {
//!         Ok(m) => got.push(m.class), // raw_node.step(m)
//!         Err(_) => { /* raw_node.tick() */ }
//!     }
//! }
//! assert!(got.contains(&MessageClass::Append) && got.contains(&MessageClass::Proposal));
//! # Ok(())
//! # }
//! ```
//!
//! A Raft loop that has channels of its own (a tick, commands, the
//! [reporter](#4-reporting-back-to-raft)'s events)
//! `select!`s over those and all three transport channels, then takes what
//! else has arrived with [`Transport::try_iter`], in the same order:
//!
//! ```
//! use crossbeam_channel::{select, tick};
//! use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), raftwire::Error> {
//! let any = "127.0.0.1:0".parse().unwrap();
//! let a: Transport = Transport::start(Config::new(1, any), NoopReporter)?;
//! let b: Transport = Transport::start(Config::new(2, any), NoopReporter)?;
//! a.add_peer(2, &[b.local_addr()])?;
//! a.send([Envelope::new(2, 1, MessageClass::Other, b"vote".to_vec())]);
//!
//! let ticker = tick(Duration::from_millis(10));
//! let mut stepped = 0;
//! while stepped == 0 {
//!     select! {
//!         recv(b.messages()) -> m => { m.unwrap(); stepped += 1 }
//!         recv(b.proposals()) -> m => { m.unwrap(); stepped += 1 }
//!         recv(b.appends()) -> m => { m.unwrap(); stepped += 1 }
//!         recv(ticker) -> _ => { /* raw_node.tick() */ }
//!     }
//!     stepped += b.try_iter().take(4096).count(); // then handle the Ready
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Transport::try_send`] is the variant that gives a message back with
//! the reason it cannot be queued (full, unknown peer, paused, stopped).
//!
//! # 3. Your own message type
//!
//! The transport moves any type that implements [`Message`]: where it goes,
//! what [`MessageClass`] it is (which picks the lane and the receive
//! channel), and how it encodes. [`Envelope`] is the built-in one.
//!
//! ```
//! use raftwire::{Bytes, DecodeError, Message, MessageClass};
//!
//! #[derive(Debug, PartialEq)]
//! struct Heartbeat { to: u64, from: u64, term: u64 }
//!
//! impl Message for Heartbeat {
//!     fn to(&self) -> u64 { self.to }
//!     fn from(&self) -> u64 { self.from }
//!     fn class(&self) -> MessageClass { MessageClass::Other }
//!     fn encoded_len(&self) -> usize { 24 }
//!     fn encode(&self, out: &mut Vec<u8>) {
//!         for v in [self.to, self.from, self.term] {
//!             out.extend_from_slice(&v.to_be_bytes());
//!         }
//!     }
//!     fn decode(b: Bytes) -> Result<Self, DecodeError> {
//!         // Bytes from the network: never panic, say what is wrong.
//!         if b.len() != 24 {
//!             return Err(DecodeError(format!("heartbeat of {} bytes", b.len())));
//!         }
//!         let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
//!         Ok(Heartbeat { to: u(0), from: u(8), term: u(16) })
//!     }
//! }
//!
//! let h = Heartbeat { to: 2, from: 1, term: 7 };
//! let mut bytes = Vec::new();
//! h.encode(&mut bytes);
//! let bytes = Bytes::from(bytes);
//! assert_eq!(Heartbeat::decode(bytes.clone()).unwrap(), h);
//! assert!(Heartbeat::decode(bytes.slice(..5)).is_err());
//! ```
//!
//! Payloads are [`Bytes`] end to end. `decode` gets its frame as a slice
//! of the buffer the transport read it into: a type that keeps a payload
//! keeps a slice of it ([`Bytes::slice`]), not a copy, as [`Envelope`] and
//! raft-rs's messages do (entry data is a slice of the frame). A type that
//! holds a large payload as `Bytes` can also implement
//! [`Message::encode_owned`], returning it instead of copying it: the
//! transport then writes it to the socket from where it is ([`Envelope`]
//! does this).
//!
//! # 4. Reporting back to Raft
//!
//! Raft retries on its own; what it needs is to *know* when messages did
//! not get through. The transport calls a [`Reporter`]:
//! `report_unreachable(id)` when messages to `id` were dropped (coalesced:
//! at most once per peer per [`Config::unreachable_report_interval`]),
//! `report_snapshot(id, status)` for snapshots, `is_id_removed(id)` during
//! handshakes, and `report_rejected(id, reason)` when a peer refuses us.
//! Reporter methods run on transport threads and must return quickly.
//!
//! raft-rs's `RawNode` lives on one thread, so use [`ChannelReporter`]: it
//! turns the calls into [`ReportEvent`]s that the Raft thread applies.
//!
//! ```
//! use raftwire::{ChannelReporter, Config, Envelope, MessageClass, ReportEvent, Transport};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), raftwire::Error> {
//! let (reporter, events) = ChannelReporter::new();
//! let t: Transport = Transport::start(Config::new(1, "127.0.0.1:0".parse().unwrap()), reporter)?;
//! // Nothing listens on this address: the peer is unreachable.
//! let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
//! t.add_peer(2, &[dead])?;
//! t.send([Envelope::new(2, 1, MessageClass::Append, vec![0; 64])]);
//!
//! // On the Raft thread:
//! match events.recv_timeout(Duration::from_secs(5)).unwrap() {
//!     ReportEvent::Unreachable(id) => { assert_eq!(id, 2); /* raw_node.report_unreachable(id) */ }
//!     ReportEvent::Snapshot(id, status) => { /* raw_node.report_snapshot(id, status) */ }
//!     ReportEvent::Rejected(id, reason) => eprintln!("peer {id} refused us: {reason}"),
//!     other => eprintln!("a report this code does not know yet: {other:?}"),
//! }
//! assert_eq!(t.stats().peer(2).append_lane.dropped(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # 5. Membership
//!
//! [`add_peer`](Transport::add_peer), [`remove_peer`](Transport::remove_peer),
//! [`update_peer`](Transport::update_peer) (new addresses) and
//! [`add_remote`](Transport::add_remote) (a node being caught up before it
//! is a member) follow etcd's transport. [`active_since`](Transport::active_since)
//! and [`active_peers`](Transport::active_peers) say who is connected;
//! [`pause`](Transport::pause) / [`resume`](Transport::resume) cut a peer
//! off in both directions (handy to simulate partitions). A removed member
//! is refused at the handshake once the reporter's `is_id_removed` says so
//! ([`ChannelReporter::mark_removed`]).
//!
//! # 6. Snapshots
//!
//! [`Transport::send_snapshot`] streams a snapshot of any size on a
//! connection of its own, in checksummed chunks, reading from any
//! [`Read`](std::io::Read) while the peer's other lanes keep flowing. The
//! receiver gets an [`IncomingSnapshot`](snapshot::IncomingSnapshot) on
//! [`Transport::snapshots`], whose `data` streams from the socket as it is
//! read: memory stays at a few chunks on both sides whatever the size. Every
//! send ends in exactly one `report_snapshot`: `Finish` once the receiver
//! has read every byte and verified the length and the checksum of the
//! whole, `Failure` otherwise. A snapshot-class message passed to `send`
//! with its data inline (raft-rs's `MsgSnapshot`) takes the same path and
//! arrives on [`Transport::messages`] once complete.
//!
//! ```
//! use raftwire::{ChannelReporter, Config, Envelope, MessageClass, ReportEvent, SnapshotStatus, Transport};
//! use std::io::Read;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let any = "127.0.0.1:0".parse().unwrap();
//! let (reporter, events) = ChannelReporter::new();
//! let leader: Transport = Transport::start(Config::new(1, any), reporter)?;
//! let follower: Transport = Transport::start(Config::new(2, any), ChannelReporter::new().0)?;
//! leader.add_peer(2, &[follower.local_addr()])?;
//!
//! // Any Read will do: a file, a pipe, a generator. Here: 5 MB of zeros.
//! let size = 5_000_000u64;
//! let meta = Envelope::new(2, 1, MessageClass::Snapshot, b"index 42, term 3".to_vec());
//! leader.send_snapshot(meta, std::io::repeat(0).take(size), size)?;
//!
//! let mut incoming = follower.snapshots().recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(incoming.message.payload, &b"index 42, term 3"[..]);
//! let copied = std::io::copy(&mut incoming.data, &mut std::io::sink())?; // e.g. into a file
//! assert_eq!(copied, size);
//!
//! let event = events.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(event, ReportEvent::Snapshot(2, SnapshotStatus::Finish));
//! # Ok(())
//! # }
//! ```
//!
//! # 7. Limits and memory
//!
//! Every queue and buffer is bounded by a [`Config`] field; see its
//! documentation for the arithmetic. A full send queue drops (counted,
//! logged, reported); a caller who does not drain the receive channels
//! makes the transport stop reading sockets, so TCP pushes back and the
//! drops happen at the senders, where Raft is told.
//!
//! # 8. What failures look like
//!
//! | event | what happens |
//! |---|---|
//! | queue full, peer paused, message too large | dropped, counted per reason, logged (rate-limited), `report_unreachable` (coalesced) |
//! | unknown peer, message to self | dropped, counted, debug log |
//! | peer down | `report_unreachable`, redial with backoff; a restarted peer is back within the backoff cap |
//! | connection silent past `read_timeout` | closed, peer inactive, redialed |
//! | peer alive but not reading (its caller does not drain) | backpressure: the send queue fills, drops counted and reported; the connection stays |
//! | handshake rejected | both sides log the reason and count it; the dialer backs off; `report_rejected` |
//! | garbage, bad checksum, oversize, truncated, undecodable | that connection closed, logged, counted; no one else affected |
//! | snapshot short, long, corrupted, stalled, refused, peer lost | `report_snapshot(id, Failure)`, exactly once; the receiver's read fails |
//! | `stop()` | returns promptly; every thread joined, every socket closed |
//!
//! Everything is visible in [`Transport::stats`].
//!
//! # 9. The wire, and how the transport is built
//!
//! The protocol is specified byte by byte in `docs/PROTOCOL.md`. The codec
//! is internal; tests and fuzzers that play a peer by hand reach it as
//! `raftwire::testing::wire` (feature `testing`), with no stability promise.
//!
//! Inside, every rule of a connection (when to dial and how long to back
//! off, the handshake, delivery reports and what a dying connection leaves
//! in flight, link heartbeats and timeouts, read credit, large frames read
//! whole, snapshot framing and verification) is a state machine without
//! sockets, threads or clock reads: bytes and `now` go in, decisions come
//! out, and each rule is tested with its input split at every byte. The
//! threads are drivers around those machines: one event loop (`mio`) owns
//! every socket, a writer per peer lane batches, a reader decodes and
//! delivers, a notifier calls the [`Reporter`]. The README has the picture.
//! One shortcut: a heartbeat or vote sent while its peer's message lane is
//! idle is encoded on the calling thread and handed to the event loop
//! without waking the writer ([`Config::direct_send`], counted in
//! [`LaneStats::msgs_direct`](crate::stats::LaneStats::msgs_direct)); a
//! busy lane queues, and the writer batches.
//!
//! # 10. raft-rs
//!
//! With the cargo feature `raft-rs`, raft-rs's `raft::eraftpb::Message`
//! implements [`Message`], so a `Transport<raft::eraftpb::Message>` moves
//! raft-rs messages as they are: `MsgAppend` on the append lane,
//! `MsgSnapshot` on the snapshot path of section 6 (its data inline; it
//! arrives on [`messages`](Transport::messages) once complete, and the
//! sender's reporter gets exactly one `report_snapshot`), `MsgPropose` on
//! the leader's [`proposals`](Transport::proposals) channel, the rest on
//! the message lane; the local-only types (`MsgHup`, `MsgBeat`, …) are
//! refused. The module `raft_rs` has the details, and
//! `raft_rs::apply_report`, which turns the transport's [`ReportEvent`]s
//! into `RawNode::report_unreachable` and `RawNode::report_snapshot`
//! calls: everything raft needs to hear about what the network did.
//!
//! The thread that owns the `RawNode` steps what arrives, ticks, applies the
//! reports, and handles each `Ready` in the order raft-rs 0.7 requires.
//! Three of its fields go to [`send`](Transport::send), at three different
//! moments:
//!
//! 1. `ready.take_messages()`: at once, before anything is persisted (a
//!    leader's appends and heartbeats go out while it writes its own log);
//! 2. `ready.take_persisted_messages()`: only after the `Ready`'s entries
//!    and hard state are persisted (votes and append responses promise that
//!    they are);
//! 3. `light_ready.take_messages()`: after `advance`.
//!
//! A one-node cluster, so that the example runs on its own; members of a
//! real cluster are added with [`add_peer`](Transport::add_peer), and
//! `examples/cluster.rs` is the same loop for three nodes, with snapshots
//! and compaction.
//!
//! ```
//! # #[cfg(feature = "raft-rs")] mod tutorial {
//! use crossbeam_channel::{select, tick};
//! use raft::eraftpb::{ConfState, Entry, Message};
//! use raft::{RawNode, StateRole, storage::MemStorage};
//! use raftwire::{ChannelReporter, Config, Transport, raft_rs::apply_report};
//! use std::time::Duration;
//!
//! /// One `Ready`, in raft-rs 0.7's order.
//! fn on_ready(node: &mut RawNode<MemStorage>, t: &Transport<Message>, kv: &mut Vec<Entry>) {
//!     if !node.has_ready() {
//!         return;
//!     }
//!     let store = node.store().clone();
//!     let mut rd = node.ready();
//!     // Messages that need nothing persisted first: send them now.
//!     t.send(rd.take_messages());
//!     // A snapshot from the leader replaces the log (and the state machine,
//!     // from its data: MemStorage keeps no state machine, so a real node
//!     // serves snapshots from a Storage that puts it in `data`).
//!     if !rd.snapshot().is_empty() {
//!         store.wl().apply_snapshot(rd.snapshot().clone()).unwrap();
//!     }
//!     // Committed entries (persisted by earlier Readies): apply them.
//!     kv.extend(rd.take_committed_entries());
//!     // Persist the new entries and the hard state…
//!     store.wl().append(rd.entries()).unwrap();
//!     if let Some(hs) = rd.hs() {
//!         store.wl().set_hardstate(hs.clone());
//!     }
//!     // …and only then send the messages that promise they are persisted.
//!     t.send(rd.take_persisted_messages());
//!     // The light ready: a commit index, more messages, more to apply.
//!     let mut light = node.advance(rd);
//!     if let Some(commit) = light.commit_index() {
//!         store.wl().mut_hard_state().set_commit(commit);
//!     }
//!     t.send(light.take_messages());
//!     kv.extend(light.take_committed_entries());
//!     node.advance_apply();
//! }
//!
//! pub fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (reporter, events) = ChannelReporter::new();
//!     let t: Transport<Message> = Transport::start(Config::new(1, "127.0.0.1:0".parse()?), reporter)?;
//!     let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1], vec![])));
//!     let config = raft::Config { id: 1, ..Default::default() };
//!     let logger = slog::Logger::root(slog::Discard, slog::o!()); // or raft::default_logger()
//!     let mut node = RawNode::new(&config, storage, &logger)?;
//!     node.campaign()?; // alone, it wins at once; a real cluster elects after ticks
//!
//!     let ticker = tick(Duration::from_millis(100));
//!     let mut applied = Vec::new();
//!     let mut proposed = false;
//!     while !applied.iter().any(|e: &Entry| e.data.as_ref() == b"x=1") {
//!         select! {
//!             // Errors from step are raft's to judge (a response from a
//!             // node that is no longer a member, say): nothing to do.
//!             recv(t.messages()) -> m => { let _ = node.step(m?); }
//!             recv(t.proposals()) -> m => { let _ = node.step(m?); }
//!             recv(t.appends()) -> m => { let _ = node.step(m?); }
//!             // Unreachable → report_unreachable, Snapshot →
//!             // report_snapshot; a rejection's reason comes back.
//!             recv(events) -> ev => { apply_report(&mut node, ev?); }
//!             recv(ticker) -> _ => { node.tick(); }
//!             default(Duration::from_millis(10)) => {}
//!         }
//!         // What else has arrived, heartbeats and votes before appends.
//!         for m in t.try_iter().take(4096) {
//!             let _ = node.step(m);
//!         }
//!         if node.raft.state == StateRole::Leader && !proposed {
//!             node.propose(vec![], b"x=1".to_vec())?;
//!             proposed = true;
//!         }
//!         on_ready(&mut node, &t, &mut applied);
//!     }
//!     t.stop();
//!     Ok(())
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "raft-rs")]
//! #     tutorial::main().unwrap();
//! # }
//! ```
//!
//! # 11. Securing a cluster
//!
//! Plaintext is for loopback: without TLS, [`Config::validate`] refuses a
//! listen address other than loopback, and `add_peer` refuses such peer
//! addresses, unless you set [`Config::insecure_plaintext`] (anyone who
//! reaches a plaintext port can inject Raft messages). With the `tls`
//! feature, [`Config::tls`] runs every connection in mutual TLS 1.3: both
//! ends verify each other's certificate against the cluster's CA, the
//! certificate names the node (a URI `raftwire://<cluster>/<node>`), and a
//! member cannot speak as another. `docs/TLS.md` has the certificate
//! layout and the `openssl` commands that make one; `tls` has the details.
//!
//! ```
//! # #[cfg(feature = "tls")] mod tutorial {
//! use raftwire::tls::TlsConfig;
//! use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
//! # use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair, SanType};
//! # pub struct Pem { pub ca: String, issuer: Issuer<'static, KeyPair> }
//! # impl Pem {
//! #     pub fn ca() -> Pem {
//! #         let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
//! #         p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
//! #         let key = KeyPair::generate().unwrap();
//! #         let ca = p.self_signed(&key).unwrap().pem();
//! #         Pem { ca, issuer: Issuer::new(p, key) }
//! #     }
//! #     pub fn node(&self, uri: &str) -> (String, String) {
//! #         let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
//! #         p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
//! #         p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
//! #         let key = KeyPair::generate().unwrap();
//! #         (p.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
//! #     }
//! # }
//!
//! /// Node `id`'s transport, with its certificate and key (PEM) and the CA's.
//! fn start(id: u64, cert: &str, key: &str, ca: &str) -> Result<Transport, raftwire::Error> {
//!     let mut config = Config::new(id, "127.0.0.1:0".parse().unwrap());
//!     config.cluster_id = 7;
//!     config.tls = Some(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes(), ca.as_bytes())?);
//!     Transport::start(config, NoopReporter)
//! }
//!
//! pub fn main() -> Result<(), raftwire::Error> {
//!     // Certificates naming raftwire://7/1 and raftwire://7/2, from one CA.
//!     let pem = Pem::ca();
//!     let (cert1, key1) = pem.node(&raftwire::tls::node_uri(7, 1));
//!     let (cert2, key2) = pem.node(&raftwire::tls::node_uri(7, 2));
//!     let a = start(1, &cert1, &key1, &pem.ca)?;
//!     let b = start(2, &cert2, &key2, &pem.ca)?;
//!     a.add_peer(2, &[b.local_addr()])?;
//!     a.send([Envelope::new(2, 1, MessageClass::Other, b"over TLS".to_vec())]);
//!     let m = b.messages().recv().unwrap();
//!     assert_eq!(m.payload, &b"over TLS"[..]);
//!     assert!(b.stats().tls.handshakes >= 1); // one per connection, each verified
//!     Ok(())
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "tls")]
//! #     tutorial::main().unwrap();
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
mod conn;
pub mod error;
mod inbox;
mod io;
mod lanes;
pub mod message;
#[cfg(feature = "raft-rs")]
pub mod raft_rs;
pub mod reporter;
pub mod snapshot;
pub mod stats;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;
mod wire;

/// The payload currency (the `bytes` crate, re-exported so that the
/// version matches).
pub use bytes::{self, Bytes};
pub use config::Config;
pub use error::{
    CloseReason, ConfigError, DropReason, Error, ProtocolViolation, SendError, TlsFailure,
};
pub use message::{DecodeError, Envelope, Message, MessageClass};
pub use reporter::{ChannelReporter, NoopReporter, ReportEvent, Reporter, SnapshotStatus};
pub use stats::{LaneStats, PeerStats, Stats, TlsStats};
pub use transport::Transport;
pub use wire::{AckStatus, FrameError, Lane, RejectReason};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/TLS.md's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "tls"))]
#[doc = include_str!("../docs/TLS.md")]
pub struct TlsDocDoctests;
