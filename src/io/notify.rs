//! The notifier thread: the one place that calls `report_unreachable` and
//! `report_rejected`, so that no caller thread and not the event loop ever
//! runs reporter code, and so that reports are coalesced per peer.

use super::channels::Notice;
use crate::reporter::Reporter;
use crossbeam_channel::{Receiver, select};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type ClearPending = Box<dyn Fn(u64) + Send>;

pub(crate) struct Notifier {
    reporter: Arc<dyn Reporter>,
    notices: Receiver<Notice>,
    stop: Receiver<()>,
    coalescer: Coalescer,
    clear_pending: ClearPending,
}

impl Notifier {
    pub fn new(
        reporter: Arc<dyn Reporter>,
        notices: Receiver<Notice>,
        stop: Receiver<()>,
        interval: Duration,
        clear_pending: ClearPending,
    ) -> Notifier {
        Notifier {
            reporter,
            notices,
            stop,
            coalescer: Coalescer::new(interval),
            clear_pending,
        }
    }

    pub fn run(mut self) {
        loop {
            let timeout = self
                .coalescer
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            select! {
                recv(self.notices) -> n => match n {
                    Ok(n) => self.handle(n),
                    Err(_) => return,
                },
                recv(self.stop) -> _ => return,
                default(timeout) => {}
            }
            for id in self.coalescer.poll_due(Instant::now()) {
                self.reporter.report_unreachable(id);
            }
        }
    }

    fn handle(&mut self, n: Notice) {
        match n {
            Notice::Unreachable(id) => {
                // Clear first: a drop after this point sends a new notice.
                (self.clear_pending)(id);
                if self.coalescer.handle(id, Instant::now()) {
                    self.reporter.report_unreachable(id);
                }
            }
            Notice::Rejected(id, reason) => self.reporter.report_rejected(id, reason),
            Notice::Snapshot(id, status) => self.reporter.report_snapshot(id, status),
            Notice::Forget(id) => self.coalescer.forget(id),
        }
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
