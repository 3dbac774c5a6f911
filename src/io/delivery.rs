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

/// What a message in a receive channel costs against the byte bound: the
/// memory it keeps alive. A message that owns its bytes costs their number;
/// one whose payload is a slice of a shared read buffer keeps the whole
/// buffer alive, and consecutive messages of one buffer share one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub bytes: usize,
    /// The shared buffer (its address and capacity), or `None`.
    pub buffer: Option<(usize, usize)>,
}

impl Charge {
    /// A slice of the buffer at `addr`, of `cap` bytes.
    pub fn shared(addr: usize, cap: usize) -> Charge {
        Charge {
            bytes: cap,
            buffer: Some((addr, cap)),
        }
    }
}

impl From<usize> for Charge {
    fn from(bytes: usize) -> Charge {
        Charge {
            bytes,
            buffer: None,
        }
    }
}

/// A receive channel bounded in messages (by the channel) and in bytes (by
/// tracking the sizes of what is still in it: the channel is FIFO, so its
/// length says how many of the oldest sends have been consumed).
///
/// `bytes` counts what was sent and not yet seen consumed, so it may be
/// more than the channel holds, never less: the bound is checked against
/// it first, and only a message that would not fit looks at the channel.
pub(crate) struct Delivery<M> {
    tx: Sender<M>,
    sizes: VecDeque<Charge>,
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
                self.bytes -= s.bytes;
            }
        }
    }

    /// Whether the last message sent (still counted) shares `c`'s buffer:
    /// then the buffer is charged already.
    fn continues(&self, c: Charge) -> bool {
        c.buffer.is_some() && self.sizes.back().is_some_and(|b| b.buffer == c.buffer)
    }

    fn fits(&self, c: Charge) -> bool {
        let cost = if self.continues(c) { 0 } else { c.bytes };
        self.bytes == 0 || self.bytes + cost <= self.max_bytes
    }

    /// Whether a message costing `c` is within the byte bound now.
    fn has_room_for(&mut self, c: Charge) -> bool {
        if self.fits(c) {
            return true;
        }
        self.prune();
        self.fits(c)
    }

    fn sent(&mut self, c: Charge) {
        if self.continues(c) {
            // The buffer's charge moves to the newest of its messages:
            // the buffer lives until that one is consumed.
            let back = self.sizes.back_mut().expect("continues");
            let moved = std::mem::take(&mut back.bytes);
            self.sizes.push_back(Charge { bytes: moved, ..c });
        } else {
            self.sizes.push_back(c);
            self.bytes += c.bytes;
        }
        self.unpruned += 1;
        if self.unpruned >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Puts the message in the channel if it has room now; gives it back
    /// if not.
    pub fn try_deliver(&mut self, m: M, size: impl Into<Charge>) -> Result<Result<(), M>, Stopped> {
        let size = size.into();
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
    pub fn deliver(
        &mut self,
        m: M,
        size: impl Into<Charge>,
        stop: &Receiver<()>,
    ) -> Result<(), Stopped> {
        let size = size.into();
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
    fn messages_sliced_from_one_buffer_share_its_charge_until_the_last_is_taken() {
        let (tx, rx) = crossbeam_channel::bounded(100);
        let mut d = Delivery::new(tx, 1000);
        let a = Charge::shared(0x1000, 600);
        let b = Charge::shared(0x9000, 600);
        // Three slices of buffer a: charged once.
        for i in 0..3u32 {
            d.try_deliver(i, a).ok().unwrap().unwrap();
        }
        assert_eq!(d.bytes, 600);
        // Buffer b would pass the bound while a's slices wait.
        assert!(d.try_deliver(9u32, b).ok().unwrap().is_err());
        // Taking a's first two slices keeps a alive: still no room.
        assert_eq!((rx.recv(), rx.recv()), (Ok(0), Ok(1)));
        assert!(d.try_deliver(9u32, b).ok().unwrap().is_err());
        assert_eq!(d.bytes, 600);
        // The last one frees it.
        assert_eq!(rx.recv(), Ok(2));
        d.try_deliver(9u32, b).ok().unwrap().unwrap();
        assert_eq!(d.bytes, 600);
        // A message of its own between two slices of b: b charged again
        // (more than it holds, never less).
        d.try_deliver(10u32, 50).ok().unwrap().unwrap();
        assert!(d.try_deliver(11u32, b).ok().unwrap().is_err());
        assert_eq!(d.bytes, 650);
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
