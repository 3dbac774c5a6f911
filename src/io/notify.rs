//! The notifier thread: the one place that calls `report_unreachable` and
//! `report_rejected`, so that no caller thread and not the event loop ever
//! runs reporter code, and so that reports are coalesced per peer.

use crate::io::Notice;
use crate::peer::Coalescer;
use crate::reporter::Reporter;
use crossbeam_channel::{Receiver, select};
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
