//! Per-peer decisions as pure state machines: when to dial which address,
//! how long to back off, when a connection is dead, when to report a peer
//! unreachable. Time is passed in (`now`); nothing here touches a socket or
//! reads a clock, so every rule is tested without either.

use std::collections::HashMap;
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

/// Where one outbound lane connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Waiting to dial (at or after `at`).
    Waiting { at: Instant },
    /// TCP connect in progress; fails at `deadline`.
    Dialing { deadline: Instant },
    /// Hello sent, waiting for the response; fails at `deadline`.
    Handshaking { deadline: Instant },
    /// Accepted by the peer since `since`.
    Connected { since: Instant },
}

/// What the driver should do for a link now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkAction {
    /// Dial this address.
    Dial(SocketAddr),
    /// Nothing until the given instant (or an event).
    WaitUntil(Instant),
    /// Nothing time-driven (connected).
    Idle,
}

/// The dialing side of one lane to one peer.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    state: LinkState,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    backoff: Backoff,
    dial_timeout: Duration,
    handshake_timeout: Duration,
    accepted_before: bool,
}

impl Link {
    pub fn new(
        addrs: Vec<SocketAddr>,
        backoff: Backoff,
        dial_timeout: Duration,
        handshake_timeout: Duration,
        now: Instant,
    ) -> Link {
        Link {
            state: LinkState::Waiting { at: now },
            addrs,
            next_addr: 0,
            backoff,
            dial_timeout,
            handshake_timeout,
            accepted_before: false,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// The peer's addresses, in dialing order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address dialed last (or to be dialed next).
    pub fn current_addr(&self) -> Option<SocketAddr> {
        self.addrs
            .get(self.next_addr % self.addrs.len().max(1))
            .copied()
    }

    /// Replace the address list; the next dial starts from its first entry.
    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.addrs = addrs;
        self.next_addr = 0;
    }

    /// Time-driven decisions: returns the address to dial when it is time.
    pub fn poll(&mut self, now: Instant) -> LinkAction {
        match self.state {
            LinkState::Waiting { at } if now >= at && !self.addrs.is_empty() => {
                let addr = self.addrs[self.next_addr % self.addrs.len()];
                self.state = LinkState::Dialing {
                    deadline: now + self.dial_timeout,
                };
                LinkAction::Dial(addr)
            }
            LinkState::Waiting { at } => LinkAction::WaitUntil(at),
            LinkState::Dialing { deadline } | LinkState::Handshaking { deadline } => {
                LinkAction::WaitUntil(deadline)
            }
            LinkState::Connected { .. } => LinkAction::Idle,
        }
    }

    /// Whether a dial or handshake has overrun its deadline.
    pub fn timed_out(&self, now: Instant) -> bool {
        match self.state {
            LinkState::Dialing { deadline } | LinkState::Handshaking { deadline } => {
                now >= deadline
            }
            _ => false,
        }
    }

    /// The TCP connection is up and the hello has been queued.
    pub fn handle_connected(&mut self, now: Instant) {
        self.state = LinkState::Handshaking {
            deadline: now + self.handshake_timeout,
        };
    }

    /// The peer accepted the hello. Returns true when this is a reconnect
    /// (the link had been accepted before).
    pub fn handle_accepted(&mut self, now: Instant) -> bool {
        self.state = LinkState::Connected { since: now };
        self.backoff.reset();
        std::mem::replace(&mut self.accepted_before, true)
    }

    /// The dial, handshake or connection failed: rotate to the next address
    /// and back off. Returns when the next dial is due.
    pub fn handle_failed(&mut self, now: Instant) -> Instant {
        if !matches!(self.state, LinkState::Connected { .. }) && !self.addrs.is_empty() {
            self.next_addr = (self.next_addr + 1) % self.addrs.len();
        }
        let at = now + self.backoff.next_delay();
        self.state = LinkState::Waiting { at };
        at
    }

    /// Redial now (addresses changed).
    pub fn restart(&mut self, now: Instant) {
        self.backoff.reset();
        self.state = LinkState::Waiting { at: now };
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, LinkState::Connected { .. })
    }

    #[cfg(test)]
    pub fn backoff_failures(&self) -> u32 {
        self.backoff.failures()
    }
}

/// Liveness of one established connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    last_read: Instant,
    last_write: Instant,
    /// When pending writes last made progress (or became pending).
    write_progress: Instant,
    write_pending: bool,
}

/// What a liveness check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LivenessCheck {
    Ok,
    SendHeartbeat,
    ReadTimeout,
    WriteTimeout,
}

impl Liveness {
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            last_read: now,
            last_write: now,
            write_progress: now,
            write_pending: false,
        }
    }

    pub fn handle_read(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// Bytes were written; `still_pending` says whether more wait.
    pub fn handle_written(&mut self, now: Instant, still_pending: bool) {
        self.last_write = now;
        self.write_progress = now;
        self.write_pending = still_pending;
    }

    /// Bytes were queued for writing.
    pub fn handle_queued(&mut self, now: Instant) {
        if !self.write_pending {
            self.write_pending = true;
            self.write_progress = now;
        }
    }

    pub fn check(
        &self,
        now: Instant,
        heartbeat: Duration,
        read_timeout: Duration,
        write_timeout: Option<Duration>,
    ) -> LivenessCheck {
        if now.saturating_duration_since(self.last_read) >= read_timeout {
            return LivenessCheck::ReadTimeout;
        }
        if let Some(wt) = write_timeout {
            if self.write_pending && now.saturating_duration_since(self.write_progress) >= wt {
                return LivenessCheck::WriteTimeout;
            }
        }
        if !self.write_pending && now.saturating_duration_since(self.last_write) >= heartbeat {
            return LivenessCheck::SendHeartbeat;
        }
        LivenessCheck::Ok
    }

    /// The next instant at which `check` may change its answer.
    pub fn next_deadline(
        &self,
        heartbeat: Duration,
        read_timeout: Duration,
        write_timeout: Option<Duration>,
    ) -> Instant {
        let read = self.last_read + read_timeout;
        let other = match (self.write_pending, write_timeout) {
            (true, Some(wt)) => self.write_progress + wt,
            (true, None) => read,
            (false, _) => self.last_write + heartbeat,
        };
        read.min(other)
    }
}

/// Coalesces unreachable reports: at most one per peer per interval, and a
/// report that falls inside the interval is deferred, never lost.
#[derive(Debug)]
pub(crate) struct Coalescer {
    interval: Duration,
    last: HashMap<u64, Instant>,
    deferred: HashMap<u64, Instant>,
}

impl Coalescer {
    pub fn new(interval: Duration) -> Coalescer {
        Coalescer {
            interval,
            last: HashMap::new(),
            deferred: HashMap::new(),
        }
    }

    /// A peer was found unreachable. Returns true if it should be reported now.
    pub fn handle(&mut self, id: u64, now: Instant) -> bool {
        match self.last.get(&id) {
            Some(&t) if now.saturating_duration_since(t) < self.interval => {
                self.deferred.entry(id).or_insert(t + self.interval);
                false
            }
            _ => {
                self.last.insert(id, now);
                self.deferred.remove(&id);
                true
            }
        }
    }

    /// Peers whose deferred report is due now.
    pub fn poll_due(&mut self, now: Instant) -> Vec<u64> {
        let due: Vec<u64> = self
            .deferred
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.deferred.remove(id);
            self.last.insert(*id, now);
        }
        due
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }

    /// Forget a peer (removed).
    pub fn forget(&mut self, id: u64) {
        self.last.remove(&id);
        self.deferred.remove(&id);
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

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]
    }

    #[test]
    fn link_dials_rotates_and_backs_off() {
        let t0 = Instant::now();
        let mut l = Link::new(
            addrs(),
            Backoff::new(50 * MS, 400 * MS, 3),
            100 * MS,
            100 * MS,
            t0,
        );
        assert_eq!(l.poll(t0), LinkAction::Dial(addrs()[0]));
        assert_eq!(l.poll(t0), LinkAction::WaitUntil(t0 + 100 * MS));
        assert!(l.timed_out(t0 + 100 * MS));
        let at = l.handle_failed(t0 + 100 * MS);
        assert!(at >= t0 + 150 * MS);
        assert_eq!(l.poll(at - MS), LinkAction::WaitUntil(at));
        assert_eq!(l.poll(at), LinkAction::Dial(addrs()[1]));
        l.handle_connected(at);
        assert!(matches!(l.state(), LinkState::Handshaking { .. }));
        assert!(!l.handle_accepted(at));
        assert!(l.is_connected());
        assert_eq!(l.poll(at), LinkAction::Idle);
        // Losing an established connection redials the same address first.
        let at2 = l.handle_failed(at + MS);
        assert!(at2 < at + 70 * MS, "backoff was reset by the accept");
        assert_eq!(l.poll(at2), LinkAction::Dial(addrs()[1]));
        l.handle_connected(at2);
        assert!(l.handle_accepted(at2), "second accept is a reconnect");
    }

    #[test]
    fn rejected_links_back_off_further_each_time() {
        let t0 = Instant::now();
        let mut l = Link::new(
            addrs(),
            Backoff::new(10 * MS, 1000 * MS, 3),
            100 * MS,
            100 * MS,
            t0,
        );
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            assert!(matches!(l.poll(now), LinkAction::Dial(_)));
            l.handle_connected(now);
            let at = l.handle_failed(now);
            gaps.push(at - now);
            now = at;
        }
        assert!(gaps.windows(2).all(|w| w[1] > w[0]), "{gaps:?}");
        assert_eq!(l.backoff_failures(), 5);
    }

    #[test]
    fn liveness_heartbeat_and_timeouts() {
        let t0 = Instant::now();
        let (hb, rt, wt) = (100 * MS, 300 * MS, Some(500 * MS));
        let mut l = Liveness::new(t0);
        assert_eq!(l.check(t0, hb, rt, wt), LivenessCheck::Ok);
        assert_eq!(l.check(t0 + hb, hb, rt, wt), LivenessCheck::SendHeartbeat);
        l.handle_written(t0 + hb, false);
        l.handle_read(t0 + 250 * MS);
        assert_eq!(l.check(t0 + 150 * MS, hb, rt, wt), LivenessCheck::Ok);
        assert_eq!(l.next_deadline(hb, rt, wt), t0 + 200 * MS);
        assert_eq!(
            l.check(t0 + 550 * MS, hb, rt, wt),
            LivenessCheck::ReadTimeout
        );
        let mut l = Liveness::new(t0);
        l.handle_queued(t0);
        for i in 1..5 {
            l.handle_read(t0 + i * 100 * MS);
        }
        assert_eq!(l.check(t0 + 450 * MS, hb, rt, wt), LivenessCheck::Ok);
        assert_eq!(
            l.check(t0 + 500 * MS, hb, rt, wt),
            LivenessCheck::WriteTimeout
        );
        l.handle_written(t0 + 450 * MS, true);
        assert_eq!(l.check(t0 + 500 * MS, hb, rt, wt), LivenessCheck::Ok);
        // Without a write deadline (lanes), stuck writes are backpressure.
        assert_eq!(
            l.check(t0 + 2000 * MS, hb, 5000 * MS, None),
            LivenessCheck::Ok
        );
    }

    #[test]
    fn coalescer_reports_once_per_interval_and_defers_the_rest() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100 * MS);
        assert!(c.handle(1, t0));
        assert!(c.handle(2, t0));
        for i in 1..50 {
            assert!(!c.handle(1, t0 + i * MS));
        }
        assert_eq!(c.next_deadline(), Some(t0 + 100 * MS));
        assert!(c.poll_due(t0 + 99 * MS).is_empty());
        assert_eq!(c.poll_due(t0 + 100 * MS), vec![1]);
        assert_eq!(c.next_deadline(), None);
        assert!(!c.handle(1, t0 + 150 * MS));
        assert!(c.handle(2, t0 + 150 * MS));
        c.forget(1);
        assert!(c.handle(1, t0 + 151 * MS));
    }
}
