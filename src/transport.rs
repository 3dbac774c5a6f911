//! The handle users hold: send, receive channels, membership, stats, stop.
//! A façade over the running transport (`io::runtime`): it checks what the
//! caller asks and says what went wrong; the threads do the rest.

use crate::config::Config;
use crate::error::{DropReason, Error, SendError};
use crate::io::channels::{LoopCmd, Notice};
use crate::io::peers::PeerKind;
use crate::io::runtime::Runtime;
use crate::lanes::QueuedLane;
use crate::message::{Envelope, Message};
use crate::reporter::Reporter;
use crate::snapshot::IncomingSnapshot;
use crate::stats::Stats;
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, TryRecvError};
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

/// A running transport. Cheap to clone; every clone drives the same
/// threads and sockets, and the handle is `Send + Sync`, so any number of
/// threads may send. The transport stops when [`stop`](Transport::stop) is
/// called or the last clone is dropped.
pub struct Transport<M: Message = Envelope> {
    rt: Arc<Runtime<M>>,
    _guard: Arc<StopGuard<M>>,
}

impl<M: Message> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            rt: self.rt.clone(),
            _guard: self._guard.clone(),
        }
    }
}

impl<M: Message> std::fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.rt.config().node_id)
            .field("local_addr", &self.rt.local_addr)
            .field("peers", &self.rt.shared.peers.ids())
            .field("stopped", &self.rt.is_stopped())
            .finish_non_exhaustive()
    }
}

/// Stops the transport when the last user handle goes away (threads hold
/// the runtime's parts, not the guard).
struct StopGuard<M: Message>(Arc<Runtime<M>>);

impl<M: Message> Drop for StopGuard<M> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<M: Message> Transport<M> {
    /// Binds the listener and starts the event loop, reader and notifier
    /// threads. Peers are added afterwards with [`add_peer`](Transport::add_peer).
    pub fn start(config: Config, reporter: impl Reporter) -> Result<Transport<M>, Error> {
        let rt = Runtime::start(config, Arc::new(reporter))?;
        Ok(Transport {
            _guard: Arc::new(StopGuard(rt.clone())),
            rt,
        })
    }

    /// The address the listener is bound to (the real port when the
    /// configured port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.rt.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.rt.config().node_id
    }

    /// The configuration the transport runs with.
    pub fn config(&self) -> &Config {
        self.rt.config()
    }

    /// Queues messages for their peers (routed by `to`) and returns at once.
    /// A message that cannot be queued (full queue, unknown peer, paused
    /// peer, too large, local-only, stopped) is dropped and counted; for
    /// drops that mean the peer is not being reached (full, paused, too
    /// large) the reporter is told `report_unreachable(to)`, coalesced per
    /// peer. A snapshot-class message starts its snapshot stream (see
    /// [`send_snapshot`](Transport::send_snapshot)); one that cannot start
    /// is reported `report_snapshot(to, Failure)`.
    pub fn send(&self, msgs: impl IntoIterator<Item = M>) {
        let peers = self.rt.shared.peers.read();
        for m in msgs {
            if let Err(e) = self.rt.route(&peers, m) {
                self.rt.record_send_drop(&peers, &e);
            }
        }
    }

    /// Streams a snapshot to `msg.to()` on a connection of its own: `msg`
    /// goes first (for raft: the `MsgSnapshot`, its data left out), then
    /// `size` bytes read from `data`, in chunks, in constant memory, while
    /// the peer's message and append lanes keep flowing.
    ///
    /// Every call that returns `Ok` ends in exactly one
    /// `Reporter::report_snapshot(to, ..)`: `Finish` once the receiver has
    /// read and verified every byte, `Failure` otherwise (size mismatch
    /// either way, checksum, connection lost, timeouts, peer removed or
    /// paused or unknown, receiver refused, too many snapshots at once,
    /// transport stopped). Only a call after `stop` returns an error, and
    /// is not reported.
    ///
    /// `data` is read on a thread of the transport; a source that blocks
    /// forever keeps that thread (and `stop`) waiting.
    pub fn send_snapshot<R: Read + Send + 'static>(
        &self,
        msg: M,
        data: R,
        size: u64,
    ) -> Result<(), Error> {
        match self.rt.send_snapshot(msg, data, size) {
            Ok(()) => Ok(()),
            Err(SendError::Stopped(_)) => Err(Error::Stopped),
            Err(e) => {
                self.rt.record_send_drop(&self.rt.shared.peers.read(), &e);
                Ok(())
            }
        }
    }

    /// Snapshots arriving from peers, each with a reader over its data.
    /// (Snapshot-class messages that carried their data inline arrive on
    /// [`messages`](Transport::messages) instead, once complete.)
    pub fn snapshots(&self) -> &Receiver<IncomingSnapshot<M>> {
        &self.rt.snapshots_rx
    }

    /// Queues one message, or gives it back with the reason it cannot be
    /// queued. A refused message is not counted as a drop and not reported:
    /// the caller has it back.
    /// A snapshot-class message starts its snapshot stream (see
    /// [`send_snapshot`](Transport::send_snapshot)); `Full` then means
    /// `max_outgoing_snapshots` are already in flight.
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        self.rt.route(&self.rt.shared.peers.read(), msg)
    }

    /// The most urgent message that has arrived, if any: heartbeats, votes
    /// and responses ([`messages`](Transport::messages)) first, then
    /// [`proposals`](Transport::proposals), then
    /// [`appends`](Transport::appends), so a Raft loop steps a heartbeat
    /// before the appends queued ahead of it. One take in 16 serves the
    /// channels the other way round, so appends are never starved (an
    /// urgent message then waits behind at most one append).
    /// `Disconnected` once the transport has stopped and every channel is
    /// empty.
    pub fn try_recv(&self) -> Result<M, TryRecvError> {
        let rt = &self.rt;
        let channels = [&rt.messages_rx, &rt.proposals_rx, &rt.appends_rx];
        let turn = rt.take_turn.load(Relaxed);
        let mut disconnected = 0;
        for i in crate::inbox::order(turn) {
            match channels[i].try_recv() {
                Ok(m) => {
                    rt.take_turn.store(turn.wrapping_add(1), Relaxed);
                    return Ok(m);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => disconnected += 1,
            }
        }
        Err(if disconnected == channels.len() {
            TryRecvError::Disconnected
        } else {
            TryRecvError::Empty
        })
    }

    /// Like [`try_recv`](Transport::try_recv), waiting up to `timeout` for
    /// something to arrive: the whole receive side of a simple Raft loop,
    /// its tick being the timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<M, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let rt = &self.rt;
        loop {
            match self.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let mut sel = Select::new();
            for rx in [&rt.messages_rx, &rt.proposals_rx, &rt.appends_rx] {
                sel.recv(rx);
            }
            // Readiness only: the message is then taken in priority order
            // (another thread may have taken it meanwhile: look again).
            if sel.ready_deadline(deadline).is_err() {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }

    /// What has arrived, in [`try_recv`](Transport::try_recv)'s order,
    /// without waiting: for the batch a Raft loop takes after its
    /// `select!` woke up (bound it with `take`).
    pub fn try_iter(&self) -> impl Iterator<Item = M> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }

    /// Received messages other than proposals (etcd's `recvc`), and other
    /// than appends unless [`Config::separate_appends`] is off. Poll it, or
    /// `select!` over it with your own channels (with
    /// [`proposals`](Transport::proposals) and
    /// [`appends`](Transport::appends)), or take all three in priority
    /// order with [`try_recv`](Transport::try_recv).
    pub fn messages(&self) -> &Receiver<M> {
        &self.rt.messages_rx
    }

    /// Received proposals (`MessageClass::Proposal`, etcd's `propc`).
    pub fn proposals(&self) -> &Receiver<M> {
        &self.rt.proposals_rx
    }

    /// Received appends (`MessageClass::Append`), unless
    /// [`Config::separate_appends`] is turned off; then they arrive on
    /// [`messages`](Transport::messages) and this channel stays empty.
    ///
    /// ```
    /// # use raftwire::{Config, Envelope, MessageClass, NoopReporter, Transport};
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), raftwire::Error> {
    /// let node: Transport<Envelope> =
    ///     Transport::start(Config::new(2, "127.0.0.1:0".parse().unwrap()), NoopReporter)?;
    /// // A Raft loop with channels of its own select!s over all three,
    /// // then takes what else has arrived, heartbeats and votes first:
    /// let ticker = crossbeam_channel::tick(Duration::from_millis(10));
    /// crossbeam_channel::select! {
    ///     recv(node.messages()) -> m => { /* raw_node.step(m?) */ }
    ///     recv(node.proposals()) -> m => { /* raw_node.step(m?) */ }
    ///     recv(node.appends()) -> m => { /* raw_node.step(m?) */ }
    ///     recv(ticker) -> _ => { /* raw_node.tick() */ }
    /// }
    /// for m in node.try_iter().take(4096) {
    ///     // raw_node.step(m)
    /// #   let _ = m;
    /// }
    /// node.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn appends(&self) -> &Receiver<M> {
        &self.rt.appends_rx
    }

    /// Adds a cluster member and starts dialing it (both lanes), with
    /// backoff, forever, until it is removed. Adding an id that is a remote
    /// promotes it to a member and takes the new addresses.
    pub fn add_peer<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        self.add(id, addrs, PeerKind::Member)
    }

    /// Adds a remote: a node that is not (yet) a member but must be caught
    /// up, such as a member being added. It is sent to like a peer but is
    /// not listed by [`active_peers`](Transport::active_peers). Adding an id
    /// that is already a peer or remote does nothing.
    pub fn add_remote<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        match self.add(id, addrs, PeerKind::Remote) {
            Err(Error::DuplicatePeer(_)) => Ok(()),
            r => r,
        }
    }

    fn add<A: ToString>(&self, id: u64, addrs: &[A], kind: PeerKind) -> Result<(), Error> {
        self.check_running()?;
        if id == 0 || id == self.node_id() {
            return Err(Error::InvalidPeerId(id));
        }
        let addrs = resolve(self.rt.config(), id, addrs)?;
        let mut peers = self.rt.shared.peers.write();
        if let Some(p) = peers.get(&id) {
            if kind == PeerKind::Member && p.kind() == PeerKind::Remote {
                p.set_kind(PeerKind::Member);
                self.rt.loop_handle.send(LoopCmd::UpdatePeer { id, addrs });
                return Ok(());
            }
            return Err(Error::DuplicatePeer(id));
        }
        let entry = self.rt.spawn_peer(id, addrs, kind).map_err(Error::Io)?;
        peers.insert(id, entry);
        Ok(())
    }

    /// Removes a peer or remote: closes its connections and ends its
    /// writers; messages still queued for it are dropped and counted in
    /// [`Stats::dropped_removed`] (the peer's own entry leaves `stats()`).
    /// Inbound connections from it are not refused by this alone: make
    /// [`Reporter::is_id_removed`] say so.
    pub fn remove_peer(&self, id: u64) -> Result<(), Error> {
        self.check_running()?;
        let entry = self
            .rt
            .shared
            .peers
            .write()
            .remove(&id)
            .ok_or(Error::UnknownPeer(id))?;
        self.rt.loop_handle.send(LoopCmd::RemovePeer { id });
        self.rt.accounts().notify(Notice::Forget(id));
        entry.finish();
        // The peer's entry leaves stats(); keep its last drops visible.
        let removed: u64 = entry
            .counters()
            .lanes
            .iter()
            .map(|l| l.drops[DropReason::Removed.index()].load(Relaxed))
            .sum();
        self.rt
            .accounts()
            .global
            .dropped_removed
            .fetch_add(removed, Relaxed);
        Ok(())
    }

    /// Replaces a peer's addresses. Connections to an address that is no
    /// longer listed are closed and redialed at the new ones.
    pub fn update_peer<A: ToString>(&self, id: u64, addrs: &[A]) -> Result<(), Error> {
        self.check_running()?;
        let addrs = resolve(self.rt.config(), id, addrs)?;
        if !self.rt.shared.peers.contains(id) {
            return Err(Error::UnknownPeer(id));
        }
        self.rt.loop_handle.send(LoopCmd::UpdatePeer { id, addrs });
        Ok(())
    }

    /// Since when the peer's message lane has been connected, or `None`
    /// while it is not (etcd's `ActiveSince`).
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        let epoch = self.rt.accounts().epoch();
        self.rt
            .shared
            .peers
            .shared(id)
            .and_then(|p| p.connected_since(epoch, QueuedLane::Message))
    }

    /// Members (not remotes) whose message lane is connected, sorted.
    pub fn active_peers(&self) -> Vec<u64> {
        let epoch = self.rt.accounts().epoch();
        let peers = self.rt.shared.peers.read();
        let mut ids: Vec<u64> = peers
            .values()
            .filter(|p| p.kind() == PeerKind::Member)
            .filter(|p| {
                p.shared
                    .connected_since(epoch, QueuedLane::Message)
                    .is_some()
            })
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every member and remote id, sorted.
    pub fn peers(&self) -> Vec<u64> {
        self.rt.shared.peers.ids()
    }

    /// Stops traffic with a peer: messages to it are dropped (counted as
    /// `paused`, reported unreachable) and messages from it are dropped on
    /// receipt (counted). Connections stay up. Used to simulate partitions.
    pub fn pause(&self, id: u64) -> Result<(), Error> {
        self.set_paused(id, true)
    }

    /// Undoes [`pause`](Transport::pause).
    pub fn resume(&self, id: u64) -> Result<(), Error> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: u64, paused: bool) -> Result<(), Error> {
        self.check_running()?;
        let p = self
            .rt
            .shared
            .peers
            .shared(id)
            .ok_or(Error::UnknownPeer(id))?;
        p.paused.store(paused, Release);
        Ok(())
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let acc = self.rt.accounts();
        let epoch = acc.epoch();
        let g = &acc.global;
        let peers = self.rt.shared.peers.read();
        Stats {
            peers: peers
                .iter()
                .map(|(id, p)| {
                    let since = p
                        .shared
                        .connected
                        .map(|lane, _| p.shared.connected_since(epoch, lane));
                    (*id, p.counters().snapshot(since))
                })
                .collect(),
            non_peers: acc.non_peers.snapshot(Default::default()),
            dropped_unknown_peer: g.dropped_unknown_peer.load(Relaxed),
            dropped_to_self: g.dropped_to_self.load(Relaxed),
            dropped_stopped: g.dropped_stopped.load(Relaxed),
            dropped_local_only: g.dropped_local_only.load(Relaxed),
            dropped_removed: g.dropped_removed.load(Relaxed),
            inbound_accepted: g.inbound_accepted.load(Relaxed),
            inbound_rejected: g.inbound_rejected.load(Relaxed),
            protocol_errors: g.protocol_errors.load(Relaxed),
            handshake_timeouts: g.handshake_timeouts.load(Relaxed),
            connections: g.connections.load(Relaxed),
            inbound_evicted: g.inbound_evicted.load(Relaxed),
            inbound_refused: g.inbound_refused.load(Relaxed),
            tls: g.tls.snapshot(),
            accept_errors: g.accept_errors.load(Relaxed),
        }
    }

    /// Stops the transport: closes every socket and the listener, ends and
    /// joins every thread, and drops what is still queued (counted as
    /// `stopped`). Later calls return [`Error::Stopped`]; `send` drops.
    /// Idempotent; also done when the last handle is dropped.
    pub fn stop(&self) {
        self.rt.shutdown();
    }

    /// Whether [`stop`](Transport::stop) has been called.
    pub fn is_stopped(&self) -> bool {
        self.rt.is_stopped()
    }

    /// The prefix of every thread name of this transport (`raftwire<N>-`),
    /// for tests that check no thread outlives `stop`.
    pub fn thread_name_prefix(&self) -> String {
        format!("raftwire{}-", self.rt.instance)
    }

    /// Replaces this node's TLS certificate chain, key and CAs (feature
    /// `tls`): connections made from now on, in both directions, use the
    /// new ones; open connections keep their session. The new
    /// configuration is checked first (an unreadable key, a key that does
    /// not match the certificate, no CA): on error nothing changes.
    ///
    /// A transport started without TLS cannot switch to it
    /// ([`Error::Tls`]).
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self, tls: crate::tls::TlsConfig) -> Result<(), Error> {
        self.check_running()?;
        if !self.rt.config().has_tls() {
            return Err(Error::Tls(
                "this transport was started without TLS; TLS cannot be turned on while it runs"
                    .into(),
            ));
        }
        let ctx = crate::tls::TlsContext::build(&tls, self.rt.config().cluster_id)?;
        self.rt.loop_handle.send(LoopCmd::ReloadTls(Arc::new(ctx)));
        Ok(())
    }

    fn check_running(&self) -> Result<(), Error> {
        if self.rt.is_stopped() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }
}

fn resolve<A: ToString>(config: &Config, peer: u64, addrs: &[A]) -> Result<Vec<SocketAddr>, Error> {
    if addrs.is_empty() {
        return Err(Error::NoAddresses { peer });
    }
    let mut out = Vec::new();
    for a in addrs {
        let s = a.to_string();
        let resolved = s.to_socket_addrs().map_err(|e| Error::BadAddress {
            peer,
            addr: s.clone(),
            reason: e.to_string(),
        })?;
        let before = out.len();
        out.extend(resolved);
        if let Some(open) = out[before..]
            .iter()
            .find(|a| !config.plaintext_allowed(**a))
        {
            return Err(Error::BadAddress {
                peer,
                addr: s,
                reason: format!(
                    "{open} is not a loopback address and this transport runs without TLS \
                     (set Config::tls, or Config::insecure_plaintext if the network is trusted)"
                ),
            });
        }
        if out.len() == before {
            return Err(Error::BadAddress {
                peer,
                addr: s,
                reason: "resolved to no address".into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_sync_clone_debug() {
        fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
        assert_send_sync::<Transport<Envelope>>();
        let t: Transport = Transport::start(
            Config::new(1, "127.0.0.1:0".parse().unwrap()),
            crate::NoopReporter,
        )
        .unwrap();
        t.add_peer(3, &["127.0.0.1:9"]).unwrap();
        let shown = format!("{t:?}");
        assert!(
            shown.contains("node_id: 1") && shown.contains("peers: [3]"),
            "{shown}"
        );
        t.stop();
        assert!(format!("{t:?}").contains("stopped: true"));
    }
}
