//! The event loop's dialed connections: a lane's, driven through its
//! [`LaneLink`](crate::conn::link::LaneLink), and a snapshot's, through
//! its [`OutConn`](crate::conn::outbound::OutConn). Connects, reads, and
//! what their machines decide (connected, rejected, lost; a snapshot's
//! verdict).

use super::{EventLoop, Owner, SnapOut, Sock, UNREACHABLE, deregister, give_back};
use crate::conn::link::LinkEvent;
use crate::conn::outbound::{Dialer, OutConn, OutEvent, Phase};
use crate::conn::snapshot::SnapshotFailure;
use crate::conn::turns::{Class, Ready};
use crate::conn::{ConnId, Transmit};
use crate::error::{CloseReason, DropReason};
use crate::io::account::Incident;
use crate::io::channels::{SnapEvent, SnapId};
#[cfg(feature = "tls")]
use crate::io::stream::identify;
use crate::io::stream::{connect_result, dial};
use crate::lanes::QueuedLane;
use crate::wire::{Hello, Lane};
use crossbeam_channel::Sender;
use mio::{Interest, Token};
use std::io;
use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl EventLoop {
    /// Acts on what a lane's machine decided.
    pub(super) fn link_events(&mut self, peer: u64, lane: QueuedLane) {
        let now = Instant::now();
        let epoch = self.accounts.epoch();
        while let Some(p) = self.peers.get_mut(&peer) {
            let l = &mut p.lanes[lane];
            let Some(event) = l.link.poll_event() else {
                let (at, conn) = (l.link.poll_timeout(), l.link.conn());
                if let Some((id, c)) = conn
                    && !c.outbox().is_empty()
                {
                    self.mark(id, Ready::WRITE);
                }
                self.schedule(at);
                return;
            };
            match event {
                LinkEvent::Connected { reconnect } => {
                    // Counted (reconnects) before it is published.
                    self.accounts
                        .note(Some(&p.shared), Incident::LaneConnected { lane, reconnect });
                    p.shared
                        .set_connected(epoch, lane, l.link.connected_since());
                }
                LinkEvent::Rejected { reason, first } => self.accounts.note(
                    Some(&p.shared),
                    Incident::RejectedByPeer {
                        lane,
                        reason,
                        first,
                    },
                ),
                LinkEvent::Lost(lost) => {
                    if let Some(id) = lost.conn {
                        deregister(&self.poll, &mut self.socks, id);
                    }
                    for b in lost.unsent {
                        give_back(&l.returns, b, UNREACHABLE);
                    }
                    self.accounts.note(
                        Some(&p.shared),
                        Incident::Dropped {
                            lane,
                            reason: DropReason::InFlight,
                            n: lost.in_flight,
                        },
                    );
                    self.accounts.note(
                        Some(&p.shared),
                        Incident::LaneLost {
                            lane,
                            addr: lost.addr,
                            reason: &lost.reason,
                            was_connected: lost.was_connected,
                            retry_in: lost.retry_at.saturating_duration_since(now),
                        },
                    );
                    // Published last: whoever sees the lane down also sees
                    // why (last_error) and what was dropped.
                    p.shared.set_connected(epoch, lane, None);
                }
            }
        }
    }

    /// Acts on what a snapshot connection's machine decided.
    pub(super) fn snap_events(&mut self, snap: SnapId) {
        while let Some(s) = self.snaps.get_mut(&snap) {
            let Some(event) = s.core.poll_event() else {
                if !s.core.outbox().is_empty() {
                    self.turns.push(s.conn, Class::Bulk, Ready::WRITE);
                }
                let at = s.core.poll_timeout();
                self.schedule(at);
                return;
            };
            match event {
                OutEvent::Accepted => {
                    let _ = s.events.send(SnapEvent::Accepted);
                }
                OutEvent::SnapshotAck(status) => {
                    let _ = s.events.send(SnapEvent::Ack(status));
                }
                // The failure that follows says it.
                OutEvent::Rejected(_) => {}
                OutEvent::Failed(reason) => {
                    self.fail_snapshot(snap, SnapshotFailure::Connection(reason))
                }
            }
        }
    }

    /// Ends a snapshot connection with a failure its sender is told of.
    pub(super) fn fail_snapshot(&mut self, snap: SnapId, failure: SnapshotFailure) {
        if let Some(s) = self.snaps.remove(&snap) {
            deregister(&self.poll, &mut self.socks, s.conn);
            let _ = s.events.send(SnapEvent::Failed(failure));
        }
    }

    /// Starts a connect to `addr` and registers its socket.
    pub(super) fn dial_sock(&mut self, addr: SocketAddr, owner: Owner) -> io::Result<ConnId> {
        let sock = dial(addr, &self.config)?;
        let mut stream = self
            .stream(sock, Some(addr))
            .ok_or_else(|| io::Error::other("TLS client setup failed"))?;
        let id = self.next_id();
        self.poll.registry().register(
            stream.sock_mut(),
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let sock = Sock {
            stream,
            owner,
            credit: None,
        };
        self.socks.insert(id, sock);
        Ok(id)
    }

    pub(super) fn dial_lane(
        &mut self,
        peer: u64,
        lane: QueuedLane,
        addr: SocketAddr,
        now: Instant,
    ) {
        let dialed = self.dial_sock(addr, Owner::Lane(peer, lane));
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let link = &mut p.lanes[lane].link;
        match dialed {
            Ok(id) => link.handle_dialing(id, addr, now),
            Err(e) => link.handle_failed(CloseReason::Io(e.kind()), now),
        }
        self.link_events(peer, lane);
    }

    pub(super) fn open_snapshot(
        &mut self,
        snap: SnapId,
        peer: u64,
        events: Sender<SnapEvent>,
        now: Instant,
    ) {
        let Some(addr) = self
            .peers
            .get(&peer)
            .and_then(|p| p.lanes.message.link.current_addr())
        else {
            let _ = events.send(SnapEvent::Failed(SnapshotFailure::NotAPeer));
            return;
        };
        match self.dial_sock(addr, Owner::Snapshot(snap)) {
            Ok(conn) => {
                let cfg = &self.config;
                let hello = Hello::new(Lane::Snapshot, cfg.cluster_id, cfg.node_id, peer)
                    .with_checksums(cfg.sent_checksums());
                let core = OutConn::new(hello, addr, self.timing, now);
                self.schedule(core.poll_timeout());
                self.snaps.insert(snap, SnapOut { conn, core, events });
            }
            Err(e) => {
                let _ = events.send(SnapEvent::Failed(SnapshotFailure::Dial(e.kind())));
            }
        }
    }

    /// The dialing machine a socket feeds, if it is a dialed one.
    pub(super) fn dialer(&mut self, owner: Owner) -> Option<&mut dyn Dialer> {
        match owner {
            Owner::Lane(peer, lane) => Some(&mut self.peers.get_mut(&peer)?.lanes[lane].link),
            Owner::Snapshot(snap) => Some(&mut self.snaps.get_mut(&snap)?.core),
            Owner::Inbound => None,
        }
    }

    /// Acts on what a dialing machine decided.
    pub(super) fn dialer_events(&mut self, owner: Owner) {
        match owner {
            Owner::Lane(peer, lane) => self.link_events(peer, lane),
            Owner::Snapshot(snap) => self.snap_events(snap),
            Owner::Inbound => {}
        }
    }

    /// A writable (or error) event: completes a connect, then flushes.
    pub(super) fn writable(&mut self, id: ConnId, budget: usize) {
        let Some(owner) = self.socks.get(&id).map(|s| s.owner) else {
            return;
        };
        let now = Instant::now();
        if let Some(Some(Phase::Connecting { .. })) = self.dialer(owner).map(|d| d.phase()) {
            let Some(result) = self.socks.get(&id).map(|s| connect_result(&s.stream)) else {
                return;
            };
            let Some(d) = self.dialer(owner) else {
                return;
            };
            match result {
                Ok(true) => d.handle_connected(now),
                Ok(false) => return,
                Err(reason) => d.handle_failed(reason, now),
            }
            self.dialer_events(owner);
        }
        self.flush(id, budget);
    }

    /// Reads a dialed connection until it would block, feeding its machine.
    pub(super) fn read_outbound(&mut self, id: ConnId, owner: Owner) {
        let mut scratch = std::mem::take(&mut self.scratch);
        // Nothing to read before the connect completes, or after a failure.
        while let Some(Some(Phase::Handshaking { .. } | Phase::Open { .. })) =
            self.dialer(owner).map(|d| d.phase())
        {
            let Some(sock) = self.socks.get_mut(&id) else {
                break;
            };
            let r = sock.stream.read(&mut scratch);
            let failure = match &r {
                Ok(0) => Some(CloseReason::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Some(sock.stream.close_reason(e)),
                Ok(_) => None,
            };
            #[cfg(feature = "tls")]
            let failure = self.check_identity(id, owner).err().or(failure);
            let now = Instant::now();
            let Some(d) = self.dialer(owner) else {
                break;
            };
            match (failure, r) {
                (Some(reason), _) => d.handle_failed(reason, now),
                (None, Ok(n)) => d.handle_read(&scratch[..n], now),
                (None, Err(_)) => {}
            }
        }
        self.scratch = scratch;
    }

    /// With TLS, once the handshake of a dialed connection completes: the
    /// certificate must name the peer dialed.
    #[cfg(feature = "tls")]
    pub(super) fn check_identity(&mut self, id: ConnId, owner: Owner) -> Result<(), CloseReason> {
        let peer = match owner {
            Owner::Lane(peer, _) => peer,
            Owner::Snapshot(snap) => match self.snaps.get(&snap) {
                Some(s) => s.core.peer(),
                None => return Ok(()),
            },
            Owner::Inbound => return Ok(()),
        };
        let Some(sock) = self.socks.get_mut(&id) else {
            return Ok(());
        };
        if !sock.stream.take_established() {
            return Ok(());
        }
        match identify(&self.tls, &sock.stream) {
            Ok(node) if node == peer => {
                self.accounts.global.tls.handshakes.fetch_add(1, Relaxed);
                Ok(())
            }
            Ok(got) => Err(CloseReason::Tls(crate::error::TlsFailure::WrongIdentity {
                expected: peer,
                got,
            })),
            Err(f) => Err(CloseReason::Tls(f)),
        }
    }
}
