//! The receive channels' bounds: a channel bounded in messages by
//! crossbeam and in bytes by the sizes of what it holds. Delivery waits
//! (backpressure) instead of dropping; see `io::reader`.

use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use std::collections::VecDeque;
use std::time::Duration;

/// The transport is stopping; the reader ends.
pub(crate) struct Stopped;

/// Sends between two looks at the channel's length while the byte bound is
/// far: keeps the list of sizes short without reading the consumer's end of
/// the channel (another core's cache line) for every message.
const PRUNE_EVERY: usize = 64;

/// A receive channel bounded in messages (by the channel) and in bytes (by
/// tracking the sizes of what is still in it: the channel is FIFO, so its
/// length says how many of the oldest sends have been consumed).
///
/// `bytes` counts what was sent and not yet seen consumed, so it may be
/// more than the channel holds, never less: the bound is checked against
/// it first, and only a message that would not fit looks at the channel.
pub(crate) struct Delivery<M> {
    tx: Sender<M>,
    sizes: VecDeque<usize>,
    bytes: usize,
    max_bytes: usize,
    unpruned: usize,
}

impl<M> Delivery<M> {
    pub fn new(tx: Sender<M>, max_bytes: usize) -> Self {
        Delivery {
            tx,
            sizes: VecDeque::new(),
            bytes: 0,
            max_bytes,
            unpruned: 0,
        }
    }

    fn prune(&mut self) {
        self.unpruned = 0;
        let held = self.tx.len();
        while self.sizes.len() > held {
            if let Some(s) = self.sizes.pop_front() {
                self.bytes -= s;
            }
        }
    }

    fn fits(&self, size: usize) -> bool {
        self.bytes == 0 || self.bytes + size <= self.max_bytes
    }

    /// Whether a message of `size` bytes is within the byte bound now.
    fn has_room_for(&mut self, size: usize) -> bool {
        if self.fits(size) {
            return true;
        }
        self.prune();
        self.fits(size)
    }

    fn sent(&mut self, size: usize) {
        self.sizes.push_back(size);
        self.bytes += size;
        self.unpruned += 1;
        if self.unpruned >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Puts the message in the channel if it has room now; gives it back
    /// if not.
    pub fn try_deliver(&mut self, m: M, size: usize) -> Result<Result<(), M>, Stopped> {
        if !self.has_room_for(size) {
            return Ok(Err(m));
        }
        match self.tx.try_send(m) {
            Ok(()) => {
                self.sent(size);
                Ok(Ok(()))
            }
            Err(TrySendError::Full(m)) => Ok(Err(m)),
            Err(TrySendError::Disconnected(_)) => Err(Stopped),
        }
    }

    /// Blocks until the message is in the channel, or the transport stops.
    pub fn deliver(&mut self, m: M, size: usize, stop: &Receiver<()>) -> Result<(), Stopped> {
        // Over the byte bound: wait for the caller to drain. The channel
        // cannot signal a drain, so look again every millisecond; this only
        // happens while the caller is behind.
        while !self.has_room_for(size) {
            select! {
                recv(stop) -> _ => return Err(Stopped),
                default(Duration::from_millis(1)) => {}
            }
        }
        // The common case costs one try_send; only a full channel waits.
        match self.tx.try_send(m) {
            Ok(()) => {}
            // Every receiver is gone: only possible while stopping.
            Err(TrySendError::Disconnected(_)) => return Err(Stopped),
            Err(TrySendError::Full(m)) => select! {
                send(self.tx, m) -> r => {
                    if r.is_err() {
                        return Err(Stopped);
                    }
                }
                recv(stop) -> _ => return Err(Stopped),
            },
        }
        self.sent(size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_bounded_in_bytes_and_resumes_after_a_drain() {
        let (tx, rx) = crossbeam_channel::bounded(100);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1000);
        d.deliver(1u32, 600, &stop).ok().unwrap();
        d.deliver(2u32, 400, &stop).ok().unwrap();
        assert_eq!(d.bytes, 1000);
        // A third would exceed the bound: it waits until the caller drains.
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let first = rx.recv().unwrap();
            (first, rx)
        });
        d.deliver(3u32, 300, &stop).ok().unwrap();
        let (first, rx) = drainer.join().unwrap();
        assert_eq!(first, 1);
        assert_eq!(d.bytes, 700);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3]);
        // One message larger than the bound passes an empty channel.
        d.deliver(4u32, 5000, &stop).ok().unwrap();
        assert_eq!(rx.recv().unwrap(), 4);
    }

    #[test]
    fn delivery_sizes_stay_few_while_the_caller_keeps_up() {
        let (tx, rx) = crossbeam_channel::bounded(10_000);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1 << 20);
        for i in 0..10_000u32 {
            d.deliver(i, 100, &stop).ok().unwrap();
            assert_eq!(rx.try_recv(), Ok(i));
            assert!(d.sizes.len() <= PRUNE_EVERY, "{} sizes kept", d.sizes.len());
            assert_eq!(d.bytes, d.sizes.len() * 100);
        }
        // Never less than what the channel holds.
        d.deliver(7, 100, &stop).ok().unwrap();
        assert!(d.bytes >= 100 * rx.len());
    }

    #[test]
    fn delivery_wait_ends_when_the_transport_stops() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut d = Delivery::new(tx, 1000);
        d.deliver(1u32, 10, &stop).ok().unwrap();
        drop(stop_tx);
        assert!(d.deliver(2u32, 10, &stop).is_err());
    }
}
