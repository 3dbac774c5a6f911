//! One lane to one peer, dialing side, for as long as the peer is known:
//! which address to dial and when (rotation, exponential backoff with
//! jitter), the connection of the moment ([`OutConn`]), batches held while
//! it is being made, and what a lost connection leaves behind. This is
//! the lane's one state machine: waiting to dial, or a connection that is
//! connecting, handshaking or open.

use super::outbound::{Dialer, OutConn, OutEvent, Phase};
use super::{Batch, ConnId, Timing};
use crate::error::CloseReason;
use crate::wire::{Hello, RejectReason};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Exponential backoff with jitter: `floor · 2^n`, capped, plus up to a
/// quarter of random extra so that restarting peers do not dial in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    floor: Duration,
    cap: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(floor: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            floor,
            cap,
            failures: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self.floor.saturating_mul(1u32 << shift).min(self.cap);
        // xorshift64*: cheap and good enough for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let quarter = base.as_nanos() as u64 / 4;
        let jitter = if quarter == 0 { 0 } else { r % (quarter + 1) };
        base + Duration::from_nanos(jitter)
    }

    /// Forget past failures (after a successful handshake).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What a lane tells its driver.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The peer accepted the lane's connection (again, after a loss, when
    /// `reconnect`).
    Connected { reconnect: bool },
    /// The peer rejected the hello; `first` unless the last rejection had
    /// the same reason (a [`Lost`](LinkEvent::Lost) follows).
    Rejected { reason: RejectReason, first: bool },
    /// The connection failed or could not be made; the lane waits to redial.
    Lost(Lost),
}

/// What a lost connection leaves behind.
#[derive(Debug)]
pub(crate) struct Lost {
    /// The connection to close, if one was open or being made.
    pub conn: Option<ConnId>,
    /// The address it was made to.
    pub addr: Option<SocketAddr>,
    pub reason: CloseReason,
    /// It had been accepted (a loss the Raft layer hears of), not merely
    /// tried.
    pub was_connected: bool,
    /// Batches never written whole (held or queued): unreachable.
    pub unsent: Vec<Batch>,
    /// Messages written and not reported delivered: maybe lost.
    pub in_flight: u64,
    /// When the lane dials again.
    pub retry_at: Instant,
}

/// What became of a batch handed to a lane.
#[derive(Debug)]
pub(crate) enum Queued {
    /// On the open connection `conn`: write it.
    OnConn(ConnId),
    /// Held until the connection being made is accepted.
    Held,
    /// The lane is backing off after a failure: not deliverable now.
    Refused(Batch),
}

#[derive(Debug)]
enum State {
    /// No connection; the next dial is due at `at`.
    Waiting { at: Instant },
    /// A connection: connecting, handshaking or open.
    Conn { id: ConnId, conn: Box<OutConn> },
}

/// The dialing side of one lane to one peer.
#[derive(Debug)]
pub(crate) struct LaneLink {
    /// The hello every connection of this lane opens with.
    hello: Hello,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    backoff: Backoff,
    accepted_before: bool,
    last_reject: Option<RejectReason>,
    state: State,
    /// Batches that arrived while a connection was being made.
    held: VecDeque<Batch>,
    timing: Timing,
    events: VecDeque<LinkEvent>,
}

impl LaneLink {
    /// A lane to peer `hello.to` (on `hello.lane`) that dials its first
    /// address at once.
    pub fn new(
        hello: Hello,
        addrs: Vec<SocketAddr>,
        backoff: Backoff,
        timing: Timing,
        now: Instant,
    ) -> LaneLink {
        LaneLink {
            hello,
            addrs,
            next_addr: 0,
            backoff,
            accepted_before: false,
            last_reject: None,
            state: State::Waiting { at: now },
            held: VecDeque::new(),
            timing,
            events: VecDeque::new(),
        }
    }

    /// The peer's addresses, in dialing order.
    #[cfg(test)]
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address dialed last (or to be dialed next).
    pub fn current_addr(&self) -> Option<SocketAddr> {
        match &self.state {
            State::Conn { conn, .. } => Some(conn.addr()),
            State::Waiting { .. } => self
                .addrs
                .get(self.next_addr % self.addrs.len().max(1))
                .copied(),
        }
    }

    /// The connection of the moment, if any.
    pub fn conn(&self) -> Option<(ConnId, &OutConn)> {
        match &self.state {
            State::Conn { id, conn } => Some((*id, conn)),
            State::Waiting { .. } => None,
        }
    }

    pub fn conn_mut(&mut self) -> Option<(ConnId, &mut OutConn)> {
        match &mut self.state {
            State::Conn { id, conn } => Some((*id, conn)),
            State::Waiting { .. } => None,
        }
    }

    /// Since when the lane's connection has been accepted, if it is.
    pub fn connected_since(&self) -> Option<Instant> {
        match self.conn().map(|(_, c)| c.phase()) {
            Some(Phase::Open { since }) => Some(since),
            _ => None,
        }
    }

    /// The address to dial, once a dial is due.
    pub fn poll_dial(&self, now: Instant) -> Option<SocketAddr> {
        match self.state {
            State::Waiting { at } if now >= at && !self.addrs.is_empty() => {
                Some(self.addrs[self.next_addr % self.addrs.len()])
            }
            _ => None,
        }
    }

    /// The dial to `addr` that [`poll_dial`](LaneLink::poll_dial) asked for
    /// is under way as connection `id`.
    pub fn handle_dialing(&mut self, id: ConnId, addr: SocketAddr, now: Instant) {
        let conn = Box::new(OutConn::new(self.hello, addr, self.timing, now));
        self.state = State::Conn { id, conn };
    }

    /// The TCP connect completed.
    pub fn handle_connected(&mut self, now: Instant) {
        if let Some((_, c)) = self.conn_mut() {
            c.handle_connected(now);
        }
    }

    /// Bytes from the peer on the lane's connection.
    pub fn handle_read(&mut self, bytes: &[u8], now: Instant) {
        if let Some((_, c)) = self.conn_mut() {
            c.handle_read(bytes, now);
        }
        self.take_conn_events(now);
    }

    /// The dial or the socket failed (seen by the driver).
    pub fn handle_failed(&mut self, reason: CloseReason, now: Instant) {
        match self.conn_mut() {
            Some((_, c)) => c.handle_failed(reason),
            None => self.lose(reason, now),
        }
        self.take_conn_events(now);
    }

    /// Deadlines of the connection of the moment.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, c)) = self.conn_mut() {
            c.handle_timeout(now);
        }
        self.take_conn_events(now);
    }

    /// When [`handle_timeout`](LaneLink::handle_timeout) or
    /// [`poll_dial`](LaneLink::poll_dial) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { at } if !self.addrs.is_empty() => Some(*at),
            State::Waiting { .. } => None,
            State::Conn { conn, .. } => conn.poll_timeout(),
        }
    }

    /// A batch from the lane's writer.
    pub fn queue_batch(&mut self, batch: Batch, now: Instant) -> Queued {
        match &mut self.state {
            State::Conn { id, conn } if conn.is_open() => {
                conn.queue_batch(batch, now);
                Queued::OnConn(*id)
            }
            // Hold while a connection is being made, or about to be (a new
            // or readdressed peer, before its first dial).
            State::Conn { .. } => {
                self.held.push_back(batch);
                Queued::Held
            }
            State::Waiting { at } if *at <= now => {
                self.held.push_back(batch);
                Queued::Held
            }
            // Backing off after a failure: drop (the writer reports it).
            State::Waiting { .. } => Queued::Refused(batch),
        }
    }

    /// New addresses. A connection to an address still listed is kept;
    /// otherwise it is lost (`PeerRemoved`) and the lane redials at once.
    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        if self.addrs == addrs {
            return; // nothing changed: leave the lane as it is
        }
        let keep = self.conn().is_some_and(|(_, c)| addrs.contains(&c.addr()));
        self.addrs = addrs;
        self.next_addr = 0;
        if !keep {
            self.lose(CloseReason::PeerRemoved, now);
            self.backoff.reset();
            self.state = State::Waiting { at: now };
            if let Some(LinkEvent::Lost(l)) = self.events.back_mut() {
                l.retry_at = now;
            }
        }
    }

    /// The peer is removed (or the transport stops): the connection of the
    /// moment (to close), every batch not written, and what was in flight.
    pub fn remove(&mut self) -> (Option<ConnId>, Vec<Batch>, u64) {
        let mut unsent = Vec::new();
        let (mut conn, mut in_flight) = (None, 0);
        if let State::Conn { id, conn: c } = &mut self.state {
            conn = Some(*id);
            in_flight = c.in_flight();
            unsent = c.take_batches();
        }
        unsent.extend(self.held.drain(..));
        self.state = State::Waiting {
            at: Instant::now() + Duration::from_secs(3600),
        };
        self.addrs.clear();
        (conn, unsent, in_flight)
    }

    /// The next thing the driver must know.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn take_conn_events(&mut self, now: Instant) {
        while let Some(e) = self.conn_mut().and_then(|(_, c)| c.poll_event()) {
            match e {
                OutEvent::Accepted => {
                    self.backoff.reset();
                    self.last_reject = None;
                    let reconnect = std::mem::replace(&mut self.accepted_before, true);
                    let held: Vec<Batch> = self.held.drain(..).collect();
                    if let Some((_, c)) = self.conn_mut() {
                        for b in held {
                            c.queue_batch(b, now);
                        }
                    }
                    self.events.push_back(LinkEvent::Connected { reconnect });
                }
                OutEvent::Rejected(reason) => {
                    let first = self.last_reject != Some(reason);
                    self.last_reject = Some(reason);
                    self.events.push_back(LinkEvent::Rejected { reason, first });
                }
                // Only a lane's connection sends this, and it fails on it.
                OutEvent::SnapshotAck(_) => {}
                OutEvent::Failed(reason) => self.lose(reason, now),
            }
        }
    }

    /// The connection is gone (or the dial failed): rotate to the next
    /// address unless an accepted connection was lost (its address is tried
    /// again first), and back off.
    fn lose(&mut self, reason: CloseReason, now: Instant) {
        let (mut conn, mut addr, mut in_flight) = (None, None, 0);
        let mut unsent = Vec::new();
        let mut was_connected = false;
        if let State::Conn { id, conn: c } = &mut self.state {
            was_connected = c.was_accepted();
            conn = Some(*id);
            addr = Some(c.addr());
            in_flight = c.in_flight();
            unsent = c.take_batches();
        }
        unsent.extend(self.held.drain(..));
        if !was_connected && !self.addrs.is_empty() {
            self.next_addr = (self.next_addr + 1) % self.addrs.len();
        }
        let retry_at = now + self.backoff.next_delay();
        self.state = State::Waiting { at: retry_at };
        self.events.push_back(LinkEvent::Lost(Lost {
            conn,
            addr,
            reason,
            was_connected,
            unsent,
            in_flight,
            retry_at,
        }));
    }

    #[cfg(test)]
    pub fn backoff_failures(&self) -> u32 {
        self.backoff.failures()
    }
}

impl Dialer for LaneLink {
    fn phase(&self) -> Option<Phase> {
        self.conn().map(|(_, c)| c.phase())
    }
    fn handle_connected(&mut self, now: Instant) {
        LaneLink::handle_connected(self, now)
    }
    fn handle_read(&mut self, bytes: &[u8], now: Instant) {
        LaneLink::handle_read(self, bytes, now)
    }
    fn handle_failed(&mut self, reason: CloseReason, now: Instant) {
        LaneLink::handle_failed(self, reason, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_caps_and_jitters_within_a_quarter() {
        let mut b = Backoff::new(50 * MS, 400 * MS, 42);
        let bases = [50, 100, 200, 400, 400, 400];
        for base in bases {
            let d = b.next_delay();
            assert!(
                d >= base * MS && d <= base * MS + base * MS / 4,
                "{d:?} for {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() < 63 * MS);
    }

    #[test]
    fn backoff_jitter_differs_between_seeds() {
        let a: Vec<_> = (0..5)
            .map({
                let mut b = Backoff::new(100 * MS, 1000 * MS, 1);
                move |_| b.next_delay()
            })
            .collect();
        let c: Vec<_> = (0..5)
            .map({
                let mut b = Backoff::new(100 * MS, 1000 * MS, 7);
                move |_| b.next_delay()
            })
            .collect();
        assert_ne!(a, c);
    }
}
