//! The connection core: the protocol of every connection as sans-IO state
//! machines, in the style of quinn-proto. Nothing here owns a socket, a
//! thread or a clock: bytes, commands and `now` go in (`handle_*`),
//! decisions come out (`poll_event`, the [`Outbox`] to write, and
//! `poll_timeout` for the next deadline). The event loop
//! (`io::event_loop`) is a driver that moves bytes between sockets and
//! these machines; the reader thread (`io::reader`) decodes and delivers
//! with the rules of [`receive`] and [`accept`].
//!
//! One machine per role:
//!
//! | role | machine | what it decides |
//! |---|---|---|
//! | a peer's lane, dialing side | [`link::LaneLink`] around [`outbound::OutConn`] | when to dial which address, backoff, hello, the acceptor's response, delivery reports (what a dying connection leaves in flight), link heartbeats, liveness, holding batches while connecting |
//! | a snapshot, sending side | [`outbound::OutConn`] and [`snapshot::ChunkEncoder`] | the same handshake and liveness; chunk framing, size and whole-stream checksum |
//! | any inbound connection, loop side | [`inbound::InConn`] in [`inbound::Inbounds`] | frame boundaries and large frames read whole, read credit, the response to the verdict, delivery reports owed, heartbeats, read and handshake timeouts, eviction under `max_inbound_connections`, replacement by a newer connection |
//! | any inbound connection, reader side | [`accept`] and [`receive`] | the verdict on a hello, what each frame of a lane means, the snapshot receive machine and its one [`snapshot::Verifier`] |

pub(crate) mod accept;
pub(crate) mod inbound;
pub(crate) mod link;
pub(crate) mod liveness;
pub(crate) mod outbound;
pub(crate) mod receive;
pub(crate) mod snapshot;
#[cfg(test)]
mod tests;
pub(crate) mod turns;

use crate::config::Config;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

/// Identifies a connection for its whole life (never reused).
pub(crate) type ConnId = usize;

/// The timings every connection machine works with (from [`Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub heartbeat: Duration,
    pub read_timeout: Duration,
    pub ack_interval: Duration,
    pub dial_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A snapshot connection whose writes do not move for this long fails.
    pub snapshot_progress: Duration,
}

impl Timing {
    pub fn of(c: &Config) -> Timing {
        Timing {
            heartbeat: c.heartbeat_interval,
            read_timeout: c.read_timeout,
            ack_interval: c.ack_interval,
            dial_timeout: c.dial_timeout,
            handshake_timeout: c.handshake_timeout,
            snapshot_progress: c.snapshot_progress_timeout,
        }
    }
}

/// A batch of encoded frames from a writer, on its way to a socket.
#[derive(Debug)]
pub(crate) struct Batch {
    pub buf: Vec<u8>,
    /// Messages in the batch (0 for snapshot frames).
    pub msgs: u32,
    /// Large payload tails (`Message::encode_owned`), written from their
    /// own buffers: each `(at, bytes)` goes right after `buf[..at]`, in
    /// order of `at`.
    pub tails: Vec<(usize, bytes::Bytes)>,
}

impl Batch {
    /// A batch of bytes in one buffer.
    pub fn of(buf: Vec<u8>, msgs: u32) -> Batch {
        Batch {
            buf,
            msgs,
            tails: Vec::new(),
        }
    }

    /// Bytes in all, tails included.
    pub fn len(&self) -> usize {
        self.buf.len() + self.tails.iter().map(|(_, t)| t.len()).sum::<usize>()
    }

    /// Puts the batch's bytes from `skip` on into `iov`, as many slices as
    /// fit; returns how many it put.
    pub fn slices<'a>(&'a self, mut skip: usize, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut put = |s: &'a [u8]| {
            if skip >= s.len() {
                skip -= s.len();
            } else if n < iov.len() {
                iov[n] = IoSlice::new(&s[skip..]);
                skip = 0;
                n += 1;
            }
        };
        let mut pos = 0;
        for (at, t) in &self.tails {
            put(&self.buf[pos..*at]);
            put(t);
            pos = *at;
        }
        put(&self.buf[pos..]);
        n
    }
}

/// Longest control item: a hello (32 bytes); responses, heartbeats,
/// delivery reports and snapshot acks are shorter.
const CONTROL_MAX: usize = 32;

/// Small control bytes queued for writing.
#[derive(Debug)]
struct Control {
    bytes: [u8; CONTROL_MAX],
    len: usize,
}

#[derive(Debug)]
enum Out {
    Batch(Batch),
    Control(Control),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Batch(b) => b.len(),
            Out::Control(c) => c.len,
        }
    }

    fn slices<'a>(&'a self, skip: usize, iov: &mut [IoSlice<'a>]) -> usize {
        match self {
            Out::Batch(b) => b.slices(skip, iov),
            Out::Control(c) if skip < c.len && !iov.is_empty() => {
                iov[0] = IoSlice::new(&c.bytes[skip..c.len]);
                1
            }
            Out::Control(_) => 0,
        }
    }
}

/// What one connection has queued for its socket, in order: control
/// items (hello, response, heartbeats, reports) and batches of frames. The
/// driver writes [`slices`](Outbox::slices) and says how much went out
/// ([`advance`](Outbox::advance)); batches written whole come back for
/// their buffers to be reused.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    out: VecDeque<Out>,
    /// Bytes of the front item already written.
    pos: usize,
    /// Messages in the queued batches (the partly written one included).
    msgs: u64,
}

impl Outbox {
    /// Queues a control item of at most 32 bytes.
    pub fn push_control(&mut self, b: &[u8]) {
        debug_assert!(b.len() <= CONTROL_MAX);
        let mut bytes = [0u8; CONTROL_MAX];
        let len = b.len().min(CONTROL_MAX);
        bytes[..len].copy_from_slice(&b[..len]);
        self.out.push_back(Out::Control(Control { bytes, len }));
    }

    /// Queues a batch.
    pub fn push_batch(&mut self, b: Batch) {
        self.msgs += u64::from(b.msgs);
        self.out.push_back(Out::Batch(b));
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Messages in queued batches, written in part or not at all.
    pub fn queued_msgs(&self) -> u64 {
        self.msgs
    }

    /// The bytes to write next, as many slices as fit into `iov`.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, o) in self.out.iter().enumerate() {
            n += o.slices(if i == 0 { self.pos } else { 0 }, &mut iov[n..]);
            if n == iov.len() {
                break;
            }
        }
        n
    }

    /// `n` bytes of [`slices`](Outbox::slices) were written: every batch
    /// written whole goes to `done`, in order.
    pub fn advance(&mut self, mut n: usize, done: &mut dyn FnMut(Batch)) {
        while n > 0 {
            let Some(front) = self.out.front() else {
                debug_assert!(false, "more written than queued");
                return;
            };
            let left = front.len() - self.pos;
            if n < left {
                self.pos += n;
                return;
            }
            n -= left;
            self.pos = 0;
            if let Some(Out::Batch(b)) = self.out.pop_front() {
                self.msgs -= u64::from(b.msgs);
                done(b);
            }
        }
        // Empty batches and controls are skipped by `slices`: drop them.
        while matches!(self.out.front(), Some(o) if o.len() == 0) && self.pos == 0 {
            if let Some(Out::Batch(b)) = self.out.pop_front() {
                self.msgs -= u64::from(b.msgs);
                done(b);
            }
        }
    }

    /// Takes every queued batch (the partly written one included), for a
    /// connection that goes away.
    pub fn take_batches(&mut self) -> Vec<Batch> {
        self.pos = 0;
        self.msgs = 0;
        self.out
            .drain(..)
            .filter_map(|o| match o {
                Out::Batch(b) => Some(b),
                Out::Control(_) => None,
            })
            .collect()
    }
}

/// What every connection machine offers the driver for writing.
pub(crate) trait Transmit {
    /// What is queued for the socket.
    fn outbox(&self) -> &Outbox;
    /// Whether the socket may be written now (not while a dial is still
    /// in progress).
    fn can_write(&self) -> bool {
        true
    }
    /// `n` bytes of the outbox were written at `now`; batches written whole
    /// go to `done`.
    fn handle_written(&mut self, n: usize, now: Instant, done: &mut dyn FnMut(Batch));
}

#[cfg(test)]
mod outbox_tests {
    use super::*;

    #[test]
    fn batch_slices_give_every_byte_once_from_any_offset() {
        // buf "AAABB" with a tail after "AAA" and one at the end (and an
        // empty one, which must not matter).
        let b = Batch {
            buf: b"AAABB".to_vec(),
            msgs: 2,
            tails: vec![
                (3, b"xxxx"[..].into()),
                (5, bytes::Bytes::new()),
                (5, b"yy"[..].into()),
            ],
        };
        let whole = b"AAAxxxxBByy".to_vec();
        assert_eq!(b.len(), whole.len());
        for skip in 0..=whole.len() {
            for room in 1..6 {
                let mut iov = [IoSlice::new(&[]); 5];
                let n = b.slices(skip, &mut iov[..room]);
                let got: Vec<u8> = iov[..n].iter().flat_map(|s| s.to_vec()).collect();
                assert!(iov[..n].iter().all(|s| !s.is_empty()), "empty slice");
                assert!(whole[skip..].starts_with(&got), "skip {skip} room {room}");
                if room >= 4 {
                    assert_eq!(got, whole[skip..], "skip {skip} room {room}");
                }
            }
        }
        let plain = Batch::of(b"abc".to_vec(), 1);
        let mut iov = [IoSlice::new(&[]); 2];
        assert_eq!(plain.slices(1, &mut iov), 1);
        assert_eq!(&*iov[0], b"bc");
        assert_eq!(plain.slices(3, &mut iov), 0);
    }

    /// Writes the outbox `step` bytes at a time; returns the bytes and the
    /// batches handed back, in order.
    fn drain(o: &mut Outbox, step: usize) -> (Vec<u8>, Vec<u32>) {
        let (mut bytes, mut done) = (Vec::new(), Vec::new());
        while !o.is_empty() {
            let mut iov = [IoSlice::new(&[]); 4];
            let n = o.slices(&mut iov);
            let all: Vec<u8> = iov[..n].iter().flat_map(|s| s.to_vec()).collect();
            let k = step.min(all.len());
            bytes.extend_from_slice(&all[..k]);
            o.advance(k, &mut |b| done.push(b.msgs));
        }
        (bytes, done)
    }

    #[test]
    fn outbox_writes_every_byte_in_order_at_any_write_size() {
        for step in 1..12 {
            let mut o = Outbox::default();
            o.push_control(b"HEL");
            o.push_batch(Batch::of(b"abcd".to_vec(), 2));
            o.push_batch(Batch::of(Vec::new(), 0));
            o.push_control(b"hb");
            o.push_batch(Batch {
                buf: b"xy".to_vec(),
                msgs: 3,
                tails: vec![(1, b"TAIL"[..].into())],
            });
            assert_eq!(o.queued_msgs(), 5);
            let (bytes, done) = drain(&mut o, step);
            assert_eq!(bytes, b"HELabcdhbxTAILy", "step {step}");
            assert_eq!(done, vec![2, 0, 3], "step {step}");
            assert_eq!(o.queued_msgs(), 0);
        }
        let mut o = Outbox::default();
        o.push_batch(Batch::of(b"abcd".to_vec(), 2));
        o.advance(1, &mut |_| panic!("not whole"));
        assert_eq!(o.queued_msgs(), 2, "a partly written batch still counts");
        assert_eq!(o.take_batches().len(), 1);
        assert!(o.is_empty() && o.queued_msgs() == 0);
    }
}
