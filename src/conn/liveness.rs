//! Liveness of one established connection: when to send a link heartbeat,
//! when silence means the peer is gone, when stuck writes mean failure.

use std::time::{Duration, Instant};

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
        if let Some(wt) = write_timeout
            && self.write_pending
            && now.saturating_duration_since(self.write_progress) >= wt
        {
            return LivenessCheck::WriteTimeout;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

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
}
